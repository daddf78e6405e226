//! smolvm-pack: OCI images to root filesystem images, and packs of them.
//!
//! - [`rootfs::build_rootfs`] flattens the ordered layers of an OCI image into one
//!   squashfs (zstd) image for the guest's read-only root, preserving owners, modes,
//!   devices, hardlinks and xattrs without privileges. See [`rootfs`].
//! - [`image::ImageStore`] pulls an image and keeps its root filesystem by manifest digest,
//!   so the second run of an image does no work but a digest check.
//! - [`distribute`] pushes packs to OCI registries as artifacts and pulls them back byte
//!   for byte ([`distribute::pull_pack`]).
//! - [`stub`] reads the stub executable packs are appended to, and writes packed executables.
//!
//! The `.smolmachine` format itself and the section cache live in the small
//! `smolvm-pack-format` crate (re-exported here as [`format`](mod@format) and [`sections`]),
//! which is all the packed-executable stub depends on: it carries none of the image
//! building or registry code.

#![warn(missing_docs)]

/// The `.smolmachine` format (the `smolvm-pack-format` crate).
pub use smolvm_pack_format as format;
/// The section cache (from `smolvm-pack-format`).
pub use smolvm_pack_format::cache as sections;

pub mod distribute;
pub mod image;
pub mod rootfs;
pub mod stub;
