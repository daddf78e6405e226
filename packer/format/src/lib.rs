//! smolvm-pack-format: the `.smolmachine` format: a VM's guest-side files (kernel, initramfs, root filesystem
//! image, disk templates) in one seekable, verifiable file.
//!
//! A payload is a run of independent sections, each starting at a multiple of [`ALIGN`]
//! from the payload start, then a JSON [`Manifest`] that describes them (offset, length,
//! SHA-256, compression), then an [`FOOTER_LEN`]-byte [`Footer`] at the very end of the
//! file. The same bytes are a standalone sidecar file, or are appended to the stub
//! executable (padded to [`ALIGN`] first) to make one self-contained executable: a reader
//! finds the payload from the footer alone, as `file length - payload length`.
//!
//! ```text
//! payload start                                                        end of file
//! | kernel |pad| initramfs |pad| rootfs ... |pad| ... | manifest JSON | footer (80) |
//!  ^ offsets of sections are multiples of 4096 from the payload start
//! ```
//!
//! Reading ([`parse`], [`Pack`]) and writing ([`write_pack`]); [`cache`] turns a pack's
//! sections into files on first use. This crate is all the packed-executable stub needs of
//! packs: it knows nothing of images or registries. docs/FORMAT.md is the full specification.
//!
//! Every value a reader takes from a file is validated before it is used (see [`parse`]),
//! and every section error names the section: a damaged or hostile file gives a
//! [`FormatError`], never a panic, an out-of-bounds read or unbounded decompression.

#![warn(missing_docs)]

pub mod cache;
mod error;
mod footer;
mod manifest;
mod read;
mod write;

pub use error::FormatError;
pub use footer::Footer;
pub use manifest::{
    Compression, FormatVersion, HealthCheck, ImageInfo, Manifest, Network, Resources, RunConfig,
    SectionEntry, SectionKind,
};
pub use read::{Durability, Pack, has_payload, parse, payload_start};
pub use write::{SectionInput, SectionSource, WriteSummary, write_pack};

/// The last 8 bytes of every pack.
pub const MAGIC: [u8; 8] = *b"SMOLMACH";
/// Major format version this crate reads and writes; a pack of another major is refused.
pub const FORMAT_MAJOR: u16 = 1;
/// Minor format version this crate writes; packs of any minor of [`FORMAT_MAJOR`] are read.
pub const FORMAT_MINOR: u16 = 1;
/// Alignment of section offsets, relative to the payload start: a page, so that a VMM can
/// map or read an uncompressed section in place.
pub const ALIGN: u64 = 4096;
/// Size of the [`Footer`] at the end of a pack.
pub const FOOTER_LEN: usize = 80;
/// Largest uncompressed section a reader accepts (64 GiB): bounds what an extraction may
/// write, whatever a manifest claims.
pub const MAX_SECTION_SIZE: u64 = 64 << 30;
/// Largest manifest a reader parses (16 MiB; real ones are a few KiB).
pub const MAX_MANIFEST_LEN: u64 = 16 << 20;

/// `sha256:` and the lowercase hex of `hash`, the form digests take in a manifest.
fn digest_string(hash: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(7 + hash.len() * 2);
    s.push_str("sha256:");
    for b in hash {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
    s
}

/// SHA-256 of `bytes` as a manifest digest string.
fn sha256_string(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    digest_string(&sha2::Sha256::digest(bytes))
}
