//! OCI registry access for smolvm: normalised image references, the registry config
//! (credentials, plain HTTP, custom CAs, mirrors), and pulls into a verified
//! content-addressed blob cache.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use smolvm_registry::{BlobCache, Config, PullOptions, Puller};
//!
//! let config = Config::load_default()?;
//! let image = config.parse_reference("alpine:3.20")?;
//! let puller = Puller::new(config, BlobCache::open_default()?, PullOptions::default());
//! let pulled = puller.pull(&image, Arc::new(|_: &smolvm_registry::Event<'_>| {})).await?;
//! println!("{} layers", pulled.layers.len());
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

pub mod cache;
pub mod config;
pub mod digest;
mod fsutil;
pub mod pull;
pub mod push;
pub mod reference;
pub mod transport;

#[cfg(feature = "test-registry")]
pub mod testutil;

pub use cache::{BlobCache, CacheError};
pub use config::{Config, ConfigError, Credentials, Password, RegistryConfig, login, logout};
pub use digest::{Digest, DigestError};
/// The OCI image types this crate returns (`ImageConfiguration` and friends).
pub use oci_spec::image as oci;
pub use pull::{
    Event, Layer, Progress, PullOptions, PullPolicy, PulledArtifact, PulledImage, Puller,
    RegistryError, Transfer, host_platform,
};
pub use push::{Blob, BlobSource, Pushed, Pusher};
pub use reference::{Reference, ReferenceError};
pub use smolfile::Platform;
