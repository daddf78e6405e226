//! OCI image layers to one read-only root filesystem image (squashfs, zstd).
//!
//! [`build_rootfs`] reads the layers in order, flattens them with OCI whiteouts and
//! opaque directories applied, and writes a squashfs image that the guest mounts from
//! virtio-blk. Everything comes from the archives' metadata: nothing is extracted, no
//! chown or mknod runs on the host, so owners, modes, devices and xattrs are preserved
//! without privileges. The host sees only the output file and, in the output's
//! directory, an unnamed scratch file (contents of regular files, with holes) and the
//! temporary output that is renamed into place.
//!
//! The same layers always give the same bytes: entries are sorted, the superblock
//! time is zero, compression settings are fixed, and nothing depends on hash order,
//! thread timing, the host's uid or umask.
//!
//! See `flatten` for the rules applied to hostile paths and hardlinks.

mod archive;
mod error;
mod flatten;
mod squashfs;
mod tree;

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use error::{LayerError, RootfsError};

use archive::Limits;
use flatten::{ApplyError, Flattener};
use squashfs::{WriteError, WriteOptions};

/// Media types accepted as image layers. The compression is read from the data's first
/// bytes rather than from the type, as containerd and docker do: registries and tools
/// mislabel layers, and a gzip/zstd/tar magic number is unambiguous.
pub const LAYER_MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

/// Largest PAX extension header or sparse map read into memory (xattr values live there).
const MAX_EXTENSION: u64 = 1 << 20;

/// One image layer on disk, lowest first in the list given to [`build_rootfs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// The layer blob (a tar, possibly gzip- or zstd-compressed).
    pub path: PathBuf,
    /// Its media type from the image manifest; one of [`LAYER_MEDIA_TYPES`].
    pub media_type: String,
}

impl Layer {
    /// A layer at `path` with `media_type`.
    pub fn new(path: impl Into<PathBuf>, media_type: impl Into<String>) -> Self {
        Layer {
            path: path.into(),
            media_type: media_type.into(),
        }
    }
}

/// Limits and settings of a build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOptions {
    /// Most archive entries read over all layers, whiteouts included, before the build
    /// stops with [`LayerError::TooManyEntries`]: bounds the memory of the tree.
    pub max_entries: u64,
    /// Longest entry path or link target in bytes, at most 4096
    /// ([`LayerError::PathTooLong`]).
    pub max_path_len: usize,
    /// zstd level of data and metadata blocks, 1 to 22. The default, 3, is zstd's own:
    /// on the `rootfs_bench` image level 6 made the image 0.7% smaller and the build
    /// twice as slow.
    pub zstd_level: i32,
    /// Compression threads; 0 means one per available CPU.
    pub threads: usize,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            max_entries: 1_000_000,
            max_path_len: 4096,
            zstd_level: 3,
            threads: 0,
        }
    }
}

/// What a build produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSummary {
    /// Archive entries read over all layers.
    pub entries: u64,
    /// Inodes in the image (hardlinks share one).
    pub inodes: u32,
    /// Regular file bytes in the image, holes included.
    pub file_bytes: u64,
    /// Size of the image file.
    pub image_bytes: u64,
    /// xattrs left out because squashfs stores only `user.`, `trusted.` and `security.`.
    pub xattrs_dropped: u64,
    /// Wall time of the build.
    pub elapsed: Duration,
}

/// Flattens `layers` (lowest first) into a squashfs image at `out`.
///
/// The image is written to a temporary file next to `out`, synced, and renamed over
/// `out`, so `out` is either the old file or the complete new image, even after a crash.
///
/// ```no_run
/// use smolvm_pack::rootfs::{build_rootfs, BuildOptions, Layer};
///
/// let layers = [Layer::new("blobs/sha256/ab12...", "application/vnd.oci.image.layer.v1.tar+gzip")];
/// let summary = build_rootfs(&layers, "rootfs.squashfs".as_ref(), &BuildOptions::default())?;
/// println!("{} inodes, {} bytes", summary.inodes, summary.image_bytes);
/// # Ok::<(), smolvm_pack::rootfs::RootfsError>(())
/// ```
pub fn build_rootfs(
    layers: &[Layer],
    out: &Path,
    opts: &BuildOptions,
) -> Result<BuildSummary, RootfsError> {
    let started = Instant::now();
    check_options(opts)?;
    let dir = match out.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let scratch_err = |source| RootfsError::Scratch {
        dir: dir.to_path_buf(),
        source,
    };
    // Unnamed (O_TMPFILE): it disappears with the process, even on a crash.
    let spool = tempfile::tempfile_in(dir).map_err(scratch_err)?;
    let limits = Limits {
        max_path_len: opts.max_path_len,
        max_extension: MAX_EXTENSION,
    };
    let mut flat = Flattener::new(&spool, opts.max_entries, limits);
    for layer in layers {
        let layer_err = |source| RootfsError::Layer {
            layer: layer.path.clone(),
            source,
        };
        let reader = open_layer(layer).map_err(layer_err)?;
        flat.apply_layer(reader).map_err(|e| match e {
            ApplyError::Layer(source) => layer_err(source),
            ApplyError::Scratch(source) => scratch_err(source),
        })?;
    }
    // Holes at the end of the last file must read as zeros, not as end of file.
    spool.set_len(flat.spool_len).map_err(scratch_err)?;

    let out_err = |source| RootfsError::Output {
        path: out.to_path_buf(),
        source,
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".rootfs-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(out_err)?;
    let threads = match opts.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let write_opts = WriteOptions {
        zstd_level: opts.zstd_level,
        threads,
    };
    let stats =
        squashfs::write_image(&flat.tree, &spool, tmp.as_file_mut(), &write_opts).map_err(|e| {
            match e {
                WriteError::Io(source) => out_err(source),
                WriteError::TooManyIds(count) => RootfsError::TooManyIds { count },
            }
        })?;
    tmp.as_file().sync_all().map_err(out_err)?;
    tmp.persist(out).map_err(|e| out_err(e.error))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(out_err)?;

    Ok(BuildSummary {
        entries: flat.entries,
        inodes: stats.inodes,
        file_bytes: file_bytes(&flat.tree),
        image_bytes: stats.bytes,
        xattrs_dropped: flat.xattrs_dropped,
        elapsed: started.elapsed(),
    })
}

fn check_options(opts: &BuildOptions) -> Result<(), RootfsError> {
    let invalid = |name, value: String, reason| {
        Err(RootfsError::InvalidOption {
            name,
            value,
            reason,
        })
    };
    if !(1..=22).contains(&opts.zstd_level) {
        return invalid("zstd_level", opts.zstd_level.to_string(), "must be 1 to 22");
    }
    // PATH_MAX. It also bounds directory depth (2048), which the tree walks recurse on.
    if !(1..=4096).contains(&opts.max_path_len) {
        return invalid(
            "max_path_len",
            opts.max_path_len.to_string(),
            "must be 1 to 4096",
        );
    }
    if opts.max_entries >= u64::from(u32::MAX) {
        return invalid(
            "max_entries",
            opts.max_entries.to_string(),
            "must be below 2^32",
        );
    }
    Ok(())
}

/// Opens a layer and undoes its compression, recognised by magic number.
fn open_layer(layer: &Layer) -> Result<Box<dyn Read>, LayerError> {
    if !LAYER_MEDIA_TYPES.contains(&layer.media_type.as_str()) {
        return Err(LayerError::UnsupportedMediaType(layer.media_type.clone()));
    }
    let mut reader = BufReader::with_capacity(
        256 * 1024,
        File::open(&layer.path).map_err(LayerError::Open)?,
    );
    let head = reader.fill_buf().map_err(LayerError::Read)?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        // Multi-member: some tools write a layer as several concatenated gzip streams.
        Box::new(flate2::bufread::MultiGzDecoder::new(reader))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(reader).map_err(LayerError::Read)?)
    } else {
        Box::new(reader)
    })
}

/// Bytes of regular files reachable in the image, each inode counted once.
fn file_bytes(tree: &tree::Tree) -> u64 {
    let mut seen = vec![false; tree.nodes.len()];
    let mut stack = vec![tree::ROOT];
    let mut total = 0;
    while let Some(id) = stack.pop() {
        for &child in tree.children(id).into_iter().flat_map(|c| c.values()) {
            if std::mem::replace(&mut seen[child as usize], true) {
                continue;
            }
            match &tree.node(child).kind {
                tree::Kind::Dir(_) => stack.push(child),
                tree::Kind::File(content) => total += content.len,
                _ => {}
            }
        }
    }
    total
}
