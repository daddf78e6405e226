//! Errors of the root filesystem builder: what failed, on which layer and entry, with
//! the offending value.

use std::io;
use std::path::PathBuf;

/// Why [`build_rootfs`](super::build_rootfs) failed.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// A layer could not be read or its contents are refused.
    #[error("layer {}: {source}", layer.display())]
    Layer {
        /// The layer file.
        layer: PathBuf,
        /// What is wrong with it.
        source: LayerError,
    },
    /// The scratch file that holds file contents during the build failed.
    #[error("scratch file in {}: {source}", dir.display())]
    Scratch {
        /// Directory of the scratch file (the output's directory).
        dir: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Writing, syncing or renaming the output failed.
    #[error("output {}: {source}", path.display())]
    Output {
        /// The output path asked for.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// squashfs stores at most 65536 distinct uids and gids.
    #[error("the image uses {count} distinct uids and gids; squashfs holds at most 65536")]
    TooManyIds {
        /// Distinct ids found.
        count: usize,
    },
    /// A [`BuildOptions`](super::BuildOptions) value is out of range.
    #[error("invalid option {name} = {value}: {reason}")]
    InvalidOption {
        /// Field name.
        name: &'static str,
        /// The value given.
        value: String,
        /// The allowed range.
        reason: &'static str,
    },
}

/// What is wrong with one layer. Entry paths are shown as they appear in the archive.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The layer file could not be opened.
    #[error("cannot open: {0}")]
    Open(io::Error),
    /// The media type is not an OCI or Docker layer type.
    #[error("unsupported media type {0:?}")]
    UnsupportedMediaType(String),
    /// Reading or decompressing failed: a corrupt or truncated gzip/zstd stream.
    #[error("read failed (corrupt or truncated stream?): {0}")]
    Read(io::Error),
    /// The archive ends inside a header.
    #[error("truncated: the archive ends inside the header at byte {offset}")]
    TruncatedHeader {
        /// Position of the header in the uncompressed archive.
        offset: u64,
    },
    /// The archive ends before an entry's declared data.
    #[error("entry {entry:?} is truncated: {declared} bytes declared, the layer ends after {read}")]
    TruncatedEntry {
        /// Entry path.
        entry: String,
        /// Size in the header.
        declared: u64,
        /// Bytes present.
        read: u64,
    },
    /// A header's checksum does not match its bytes.
    #[error("header at byte {offset} has a bad checksum (not a tar archive, or corrupt)")]
    Checksum {
        /// Position of the header.
        offset: u64,
    },
    /// A numeric header field or PAX record cannot be parsed.
    #[error("header at byte {offset}: invalid {field}")]
    BadField {
        /// Position of the header.
        offset: u64,
        /// Which field.
        field: &'static str,
    },
    /// A PAX or GNU long-name header is larger than the limit.
    #[error(
        "header at byte {offset}: {kind} extension of {size} bytes exceeds the {limit}-byte limit"
    )]
    ExtensionTooLarge {
        /// Position of the header.
        offset: u64,
        /// `pax` or `long name`.
        kind: &'static str,
        /// Declared size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A sparse file's map is inconsistent.
    #[error("entry {entry:?}: bad sparse map: {reason}")]
    BadSparse {
        /// Entry path.
        entry: String,
        /// What is inconsistent.
        reason: &'static str,
    },
    /// A tar entry type that has no meaning in an image (volume labels, multi-volume...).
    #[error("entry {entry:?}: unsupported tar entry type {type_flag:?}")]
    UnsupportedType {
        /// Entry path.
        entry: String,
        /// The type byte.
        type_flag: char,
    },
    /// The entry path climbs above the image root with `..`.
    #[error("entry {entry:?} climbs above the image root")]
    PathEscapesRoot {
        /// Entry path.
        entry: String,
    },
    /// The entry path is longer than the limit.
    #[error("entry path of {len} bytes exceeds the {limit}-byte limit: {entry:?}")]
    PathTooLong {
        /// Entry path (possibly cut).
        entry: String,
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A path component is longer than 255 bytes.
    #[error("entry {entry:?} has a name of {len} bytes; the limit is 255")]
    NameTooLong {
        /// Entry path.
        entry: String,
        /// Length of the long component.
        len: usize,
    },
    /// A symlink target is longer than the limit.
    #[error("symlink {entry:?} has a target of {len} bytes; the limit is 4095")]
    SymlinkTooLong {
        /// Entry path.
        entry: String,
        /// Target length.
        len: usize,
    },
    /// A device number beyond 12 bits of major or 20 bits of minor.
    #[error("device {entry:?} has number {major}:{minor}; the limits are 4095:1048575")]
    DeviceNumberTooLarge {
        /// Entry path.
        entry: String,
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// Something other than a directory names the image root.
    #[error("entry {entry:?} would replace the root directory with a non-directory")]
    RootNotDirectory {
        /// Entry path.
        entry: String,
    },
    /// A whiteout that names nothing (`.wh.`, `.wh..`).
    #[error("whiteout {entry:?} does not name an entry")]
    BadWhiteout {
        /// Entry path.
        entry: String,
    },
    /// A hardlink target climbs above the image root.
    #[error("hardlink {entry:?} points outside the image root: {target:?}")]
    HardlinkEscapesRoot {
        /// Entry path.
        entry: String,
        /// Link target as written.
        target: String,
    },
    /// A hardlink target does not exist (never did, or was whited out).
    #[error("hardlink {entry:?} points to {target:?}, which does not exist at that point")]
    HardlinkTargetMissing {
        /// Entry path.
        entry: String,
        /// Link target as written.
        target: String,
    },
    /// A hardlink to a directory.
    #[error("hardlink {entry:?} points to directory {target:?}")]
    HardlinkToDirectory {
        /// Entry path.
        entry: String,
        /// Link target as written.
        target: String,
    },
    /// More entries than [`BuildOptions::max_entries`](super::BuildOptions::max_entries),
    /// counted over all layers so far.
    #[error("layer has more than {limit} entries (counted over this and earlier layers)")]
    TooManyEntries {
        /// The limit.
        limit: u64,
    },
}
