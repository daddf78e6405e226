//! smolvm-pack: the `.smolmachine` format, OCI image layers to a root filesystem image,
//! and pack creation.
//!
//! [`format`](mod@format) reads (always) and writes (with `create`) the `.smolmachine`
//! format: the guest kernel, initramfs, root filesystem image and disk templates of a VM,
//! with a JSON manifest and a footer, as a sidecar file or appended to the stub executable.
//! [`sections`] turns a pack's sections into files on first use, in a shared,
//! content-addressed cache.
//!
//! With the `create` feature (on by default):
//! - [`rootfs::build_rootfs`] flattens the ordered layers of an OCI image into one
//!   squashfs (zstd) image for the guest's read-only root, preserving owners, modes,
//!   devices, hardlinks and xattrs without privileges. See [`rootfs`].
//! - [`image::ImageStore`] pulls an image and keeps its root filesystem by manifest digest,
//!   so the second run of an image does no work but a digest check.
//!
//! The packed-executable stub depends on this crate with `default-features = false` and
//! so carries none of the image-building code.

#![warn(missing_docs)]

pub mod format;
#[cfg(feature = "create")]
pub mod image;
#[cfg(feature = "create")]
pub mod rootfs;
pub mod sections;
#[cfg(feature = "create")]
pub mod stub;
