//! Test support for this crate and for other crates' tests and benchmarks (feature
//! `test-registry`): a real registry (Debian's `docker-registry`) per test, and
//! deterministic fixture images built from Debian packages without Docker.
//!
//! Needs the `docker-registry`, `apache2-utils` (htpasswd), `openssl` and `dpkg` packages,
//! and `apt-get download` access for the package-based fixtures.

mod fixtures;
mod layer;
mod proxy;
mod push;
mod server;

pub use fixtures::{
    Image, busybox, fake_platform, fixture_cache_dir, multilayer, python, random_layers,
};
pub use layer::{LayerBlob, LayerBuilder};
pub use proxy::{Fault, Proxy};
pub use push::{Format, PushedImage, push_image, push_index};
pub use server::{Security, TestRegistry};
