//! Errors of reading and writing packs: what is wrong, in which section, with the values
//! found. Reading errors don't carry the pack's path: the caller adds it.

use std::io;
use std::path::PathBuf;

use super::{FormatVersion, SectionKind};

/// Why a pack could not be read, verified, extracted or written.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The pack file could not be opened or mapped.
    #[error("cannot open {}: {source}", path.display())]
    Open {
        /// The pack.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The file is shorter than a footer.
    #[error(
        "not a smolvm pack: the file is {len} bytes, too short to hold the {}-byte footer",
        super::FOOTER_LEN
    )]
    TooShort {
        /// File length.
        len: usize,
    },
    /// The file does not end with [`MAGIC`](super::MAGIC).
    #[error(
        "not a smolvm pack (or a truncated one): the file does not end with the footer magic \
         \"SMOLMACH\" (found \"{}\")",
        found.escape_ascii()
    )]
    BadMagic {
        /// The last 8 bytes of the file.
        found: [u8; 8],
    },
    /// The pack's major version is not the one this crate reads.
    #[error("{}", version_message(*found_major, *found_minor, *supported))]
    UnsupportedVersion {
        /// Major version of the pack.
        found_major: u16,
        /// Minor version of the pack.
        found_minor: u16,
        /// The major version this crate reads.
        supported: u16,
    },
    /// The footer's reserved bytes are not zero.
    #[error(
        "the pack footer's reserved bytes are not zero (found \"{}\"): the file is damaged \
         or was not written by smolvm",
        found.escape_ascii()
    )]
    ReservedNotZero {
        /// The 12 reserved bytes.
        found: [u8; 12],
    },
    /// The footer's payload length is smaller than the footer itself.
    #[error(
        "the pack footer gives a payload length of {payload_len} bytes, less than the footer \
         itself: the file is damaged"
    )]
    PayloadTooSmall {
        /// Payload length from the footer.
        payload_len: u64,
    },
    /// The footer's payload length is larger than the file.
    #[error(
        "the file ends before its payload (truncated?): the footer gives a payload of \
         {payload_len} bytes, the file has {file_len}"
    )]
    Truncated {
        /// Payload length from the footer.
        payload_len: u64,
        /// File length.
        file_len: u64,
    },
    /// The manifest's range is not inside the payload, before the footer.
    #[error(
        "the manifest (offset {offset}, length {len}) does not lie within the first {limit} \
         bytes of the payload, before the footer: the file is damaged"
    )]
    ManifestOutOfBounds {
        /// Manifest offset from the footer.
        offset: u64,
        /// Manifest length from the footer.
        len: u64,
        /// Payload length less the footer.
        limit: u64,
    },
    /// The manifest is larger than [`MAX_MANIFEST_LEN`](super::MAX_MANIFEST_LEN).
    #[error("the manifest is {len} bytes, more than the {max} bytes a reader accepts")]
    ManifestTooLarge {
        /// Manifest length from the footer.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The manifest's SHA-256 is not the one in the footer.
    #[error(
        "the manifest is corrupt: sha256 mismatch (expected {expected}, found {found}); the \
         file was damaged or modified — get a fresh copy"
    )]
    ManifestCorrupt {
        /// Digest in the footer.
        expected: String,
        /// Digest of the manifest bytes.
        found: String,
    },
    /// The manifest is not JSON, or a field has the wrong type or is missing.
    #[error("the manifest is invalid: {0}")]
    ManifestInvalid(#[source] serde_json::Error),
    /// The manifest's version differs from the footer's.
    #[error(
        "the manifest says format {manifest} but the footer says {footer}: the file is damaged"
    )]
    VersionMismatch {
        /// Version in the footer.
        footer: FormatVersion,
        /// Version in the manifest.
        manifest: FormatVersion,
    },
    /// A section of a kind this crate does not know.
    #[error(
        "the manifest has a section of unknown kind {value:?} (known: kernel, initramfs, \
         rootfs, overlay-template, storage-template)"
    )]
    UnknownSectionKind {
        /// The kind as written.
        value: String,
    },
    /// A section with a compression this crate does not know.
    #[error("section {kind} uses unknown compression {value:?} (known: none, zstd)")]
    UnknownCompression {
        /// The section.
        kind: SectionKind,
        /// The compression as written.
        value: String,
    },
    /// A digest field is not `sha256:` and 64 lowercase hex digits.
    #[error("section {kind}: {field} {value:?} is not \"sha256:\" and 64 lowercase hex digits")]
    BadDigest {
        /// The section.
        kind: SectionKind,
        /// `sha256` or `uncompressed_sha256`.
        field: &'static str,
        /// The value as written.
        value: String,
    },
    /// Two sections of the same kind.
    #[error("the pack has two {kind} sections")]
    DuplicateSection {
        /// The kind.
        kind: SectionKind,
    },
    /// A section that the pack needs, or that was asked for, is not there.
    #[error("the pack has no {kind} section")]
    MissingSection {
        /// The kind.
        kind: SectionKind,
    },
    /// A section's offset is not a multiple of [`ALIGN`](super::ALIGN).
    #[error(
        "section {kind} starts at offset {offset}, not a multiple of {}: the file is damaged",
        super::ALIGN
    )]
    Misaligned {
        /// The section.
        kind: SectionKind,
        /// Its offset.
        offset: u64,
    },
    /// A section's range is not inside the section area (before the manifest).
    #[error(
        "section {kind} (offset {offset}, length {length}) does not lie within the section \
         area, the first {limit} bytes of the payload: the file is damaged"
    )]
    SectionOutOfBounds {
        /// The section.
        kind: SectionKind,
        /// Its offset.
        offset: u64,
        /// Its stored length.
        length: u64,
        /// The manifest's offset, where the section area ends.
        limit: u64,
    },
    /// Two sections share bytes.
    #[error(
        "section {kind} at offset {offset} overlaps section {other}, which ends at {other_end}: \
         the file is damaged"
    )]
    SectionOverlap {
        /// The later section.
        kind: SectionKind,
        /// Its offset.
        offset: u64,
        /// The earlier section.
        other: SectionKind,
        /// Where the earlier section ends.
        other_end: u64,
    },
    /// An uncompressed section whose length and uncompressed size differ.
    #[error(
        "section {kind} is not compressed, yet its length {length} differs from its \
         uncompressed size {uncompressed_size}"
    )]
    SizeMismatch {
        /// The section.
        kind: SectionKind,
        /// Stored length.
        length: u64,
        /// Declared uncompressed size.
        uncompressed_size: u64,
    },
    /// An uncompressed section whose two digests differ.
    #[error("section {kind} is not compressed, yet its sha256 and uncompressed_sha256 differ")]
    DigestsDiffer {
        /// The section.
        kind: SectionKind,
    },
    /// A section larger than [`MAX_SECTION_SIZE`](super::MAX_SECTION_SIZE) uncompressed.
    #[error("section {kind} is {size} bytes uncompressed, more than the limit of {max} bytes")]
    TooLarge {
        /// The section.
        kind: SectionKind,
        /// Its uncompressed size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// A section's stored bytes don't have the SHA-256 in the manifest.
    #[error(
        "section {kind} is corrupt: sha256 mismatch (expected {expected}, found {found}); the \
         file was damaged or modified — get a fresh copy"
    )]
    SectionCorrupt {
        /// The section.
        kind: SectionKind,
        /// Digest in the manifest.
        expected: String,
        /// Digest of the bytes.
        found: String,
    },
    /// A compressed section's data is not a valid zstd stream.
    #[error("section {kind} cannot be decompressed: {source}; the pack is damaged")]
    Decompress {
        /// The section.
        kind: SectionKind,
        /// The decoder's error.
        source: io::Error,
    },
    /// A compressed section decompresses to more than its declared size.
    #[error(
        "section {kind} decompresses to more than its declared {declared} bytes; extraction \
         stopped there: the pack is damaged or hostile"
    )]
    DecompressedTooLarge {
        /// The section.
        kind: SectionKind,
        /// Declared uncompressed size.
        declared: u64,
    },
    /// A compressed section decompresses to fewer bytes than declared.
    #[error(
        "section {kind} decompresses to {actual} bytes, not its declared {declared}: the pack is damaged"
    )]
    DecompressedSize {
        /// The section.
        kind: SectionKind,
        /// Declared uncompressed size.
        declared: u64,
        /// Bytes produced.
        actual: u64,
    },
    /// A compressed section's decompressed data doesn't have the declared SHA-256.
    #[error(
        "section {kind} is corrupt: its decompressed data has sha256 {found}, not the \
         declared {expected}; the pack is damaged or was modified — get a fresh copy"
    )]
    DecompressedCorrupt {
        /// The section.
        kind: SectionKind,
        /// `uncompressed_sha256` in the manifest.
        expected: String,
        /// Digest of the decompressed data.
        found: String,
    },
    /// Writing an extracted section failed.
    #[error("cannot extract section {kind} to {}: {source}", path.display())]
    Extract {
        /// The section.
        kind: SectionKind,
        /// The destination asked for.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Reading a section's input file failed (writing a pack).
    #[error("cannot read the {kind} section's input {}: {source}", path.display())]
    Input {
        /// The section.
        kind: SectionKind,
        /// The input file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A section's input file changed size while it was being packed.
    #[error(
        "the {kind} section's input {} changed while it was being packed (it was {len} bytes \
         when opened); pack again once it is complete",
        path.display()
    )]
    InputChanged {
        /// The section.
        kind: SectionKind,
        /// The input file.
        path: PathBuf,
        /// Its length when opened.
        len: u64,
    },
    /// Writing, syncing or renaming the pack failed.
    #[error("cannot write the pack {}: {source}", path.display())]
    Output {
        /// The output path asked for.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

fn version_message(major: u16, minor: u16, supported: u16) -> String {
    if major > supported {
        format!(
            "this pack uses format {major}.{minor}; this smolvm reads format {supported}.x: \
             upgrade smolvm"
        )
    } else {
        format!(
            "this pack uses format {major}.{minor}, which this smolvm (format {supported}.x) \
             no longer reads: pack it again with this smolvm"
        )
    }
}
