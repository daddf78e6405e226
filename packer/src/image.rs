//! The local image store: each pulled image's root filesystem, built once and kept by
//! manifest digest.
//!
//! ```text
//! <cache>/images/sha256/<manifest hex>/image.json    what the image is and how to run it
//! <cache>/images/sha256/<manifest hex>/rootfs.sqfs   its layers, flattened (see crate::rootfs)
//! ```
//!
//! An entry is built in a temporary directory and renamed into place whole, so a crash
//! never leaves a half-built entry under a real name. A VM using an image holds a shared
//! lock on its `image.json`; pruning takes the exclusive lock without waiting and skips
//! images that are in use.

use crate::rootfs::{self, BuildOptions, BuildSummary, Layer, RootfsError};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use smolvm_pack_format::cache::flock;
use smolvm_registry::{BlobCache, Digest, Progress, PulledImage, Puller, Reference, RegistryError};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

const RECORD: &str = "image.json";
const ROOTFS: &str = "rootfs.sqfs";

/// What is known about a stored image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The reference it was pulled as (normalised).
    pub reference: String,
    /// The platform image manifest's digest: the store's key.
    pub manifest_digest: String,
    /// `os/arch` of the image.
    pub platform: String,
    /// The image config's `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// The image config's `Cmd`.
    pub cmd: Vec<String>,
    /// The image config's `Env`.
    pub env: Vec<String>,
    /// The image config's `WorkingDir`.
    pub workdir: Option<String>,
    /// The image config's `User`.
    pub user: Option<String>,
    /// SHA-256 of `rootfs.sqfs`, checked when the entry was built.
    pub rootfs_sha256: String,
    /// Size of `rootfs.sqfs` in bytes, checked on every use.
    pub rootfs_size: u64,
    /// Every blob the image came from (index, manifest, config, layers), for pruning.
    pub blobs: Vec<String>,
    /// When it was pulled, in seconds since the Unix epoch.
    pub pulled_at: u64,
    /// The image config's `created` (RFC 3339), if it has one.
    #[serde(default)]
    pub created: Option<String>,
}

impl ImageRecord {
    /// The parts of the image config a Smolfile or flags can override.
    pub fn image_config(&self) -> smolfile::ImageConfig {
        smolfile::ImageConfig {
            entrypoint: self.entrypoint.clone(),
            cmd: self.cmd.clone(),
            env: self.env.clone(),
            workdir: self.workdir.clone(),
            user: self.user.clone(),
        }
    }
}

/// An image ready to boot. While this value lives the image cannot be pruned.
#[derive(Debug)]
pub struct LocalImage {
    /// What the image is.
    pub record: ImageRecord,
    /// The root filesystem image to attach read-only.
    pub rootfs: PathBuf,
    /// Whether this call built the root filesystem (false: it was already stored).
    pub built: Option<BuildSummary>,
    _lock: File,
}

/// Why an image could not be made ready.
#[derive(Debug, Error)]
pub enum ImageError {
    /// Pulling failed.
    #[error(transparent)]
    Pull(#[from] RegistryError),
    /// The layers could not be turned into a root filesystem.
    #[error("building the root filesystem of {reference}: {source}")]
    Build {
        /// The image.
        reference: String,
        /// Why.
        source: RootfsError,
    },
    /// A store file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// To which file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// No cache directory could be found.
    #[error("cannot find the cache directory: set HOME or XDG_CACHE_HOME")]
    NoCacheDir,
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ImageError {
    let path = path.to_owned();
    move |source| ImageError::Io {
        action,
        path,
        source,
    }
}

/// What [`ImageStore::prune`] did.
#[derive(Debug, Default, Serialize)]
pub struct PruneReport {
    /// Images removed.
    pub removed: Vec<ImageRecord>,
    /// Images kept because a VM is using them right now.
    pub in_use: Vec<ImageRecord>,
    /// Bytes of root filesystems and blobs freed.
    pub bytes_freed: u64,
}

/// The image store under a cache directory.
pub struct ImageStore {
    dir: PathBuf,
}

impl ImageStore {
    /// The store under `cache_root` (the same root the blob cache uses).
    pub fn open(cache_root: &Path) -> Result<ImageStore, ImageError> {
        let dir = cache_root.join("images").join("sha256");
        std::fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
        Ok(ImageStore { dir })
    }

    /// The store in the default cache directory (`$XDG_CACHE_HOME/smolvm` or `~/.cache/smolvm`).
    pub fn open_default() -> Result<ImageStore, ImageError> {
        let root = smolvm_registry::cache::default_dir().map_err(|_| ImageError::NoCacheDir)?;
        ImageStore::open(&root)
    }

    fn entry(&self, manifest: &Digest) -> PathBuf {
        self.dir.join(manifest.hex())
    }

    /// Pulls `reference` (as the puller's policy says) and returns its root filesystem,
    /// building it if this manifest has none yet. `building` is called before a build starts.
    pub async fn ensure(
        &self,
        puller: &Puller,
        reference: &Reference,
        progress: Arc<dyn Progress>,
        building: &(dyn Fn() + Sync),
    ) -> Result<LocalImage, ImageError> {
        let pulled = puller.pull(reference, progress).await?;
        if let Some(image) = self.open_entry(&pulled.manifest_digest)? {
            return Ok(image);
        }
        building();
        let dir = self.dir.clone();
        let entry = self.entry(&pulled.manifest_digest);
        let summary = tokio::task::spawn_blocking(move || build_entry(&dir, &entry, &pulled))
            .await
            .expect("the build task does not panic")?;
        let mut image = self
            .open_entry(&Digest::parse(&summary.0).expect("a digest we wrote"))?
            .expect("the entry was just published");
        image.built = Some(summary.1);
        Ok(image)
    }

    /// The stored image for `manifest`, locked against pruning; `None` when there is none
    /// (or it was pruned while we waited for the lock).
    pub fn open_entry(&self, manifest: &Digest) -> Result<Option<LocalImage>, ImageError> {
        let entry = self.entry(manifest);
        let record_path = entry.join(RECORD);
        let lock = match File::open(&record_path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("open", &record_path)(e)),
        };
        flock(&lock, libc::LOCK_SH).map_err(io_error("lock", &record_path))?;
        // Pruning removes the entry while holding the exclusive lock: once we hold the shared
        // one, an entry that is still linked stays until we let go.
        if !record_path.exists() {
            return Ok(None);
        }
        let record = read_record(&record_path)?;
        let rootfs = entry.join(ROOTFS);
        let size = std::fs::metadata(&rootfs).map(|m| m.len()).ok();
        if size != Some(record.rootfs_size) {
            // Damaged (someone edited the cache): rebuild rather than boot it.
            drop(lock);
            remove_entry(&entry)?;
            return Ok(None);
        }
        Ok(Some(LocalImage {
            record,
            rootfs,
            built: None,
            _lock: lock,
        }))
    }

    /// Every stored image, newest first.
    pub fn list(&self) -> Result<Vec<ImageRecord>, ImageError> {
        let mut records = Vec::new();
        for e in std::fs::read_dir(&self.dir)
            .map_err(io_error("list", &self.dir))?
            .flatten()
        {
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            if let Ok(r) = read_record(&e.path().join(RECORD)) {
                records.push(r);
            }
        }
        records.sort_by(|a, b| {
            b.pulled_at
                .cmp(&a.pulled_at)
                .then(a.reference.cmp(&b.reference))
        });
        Ok(records)
    }

    /// Removes every image `keep` rejects that no VM is using, with the blobs only it used
    /// and the tags that pointed at it.
    pub fn prune(
        &self,
        blobs: &BlobCache,
        keep: &dyn Fn(&ImageRecord) -> bool,
    ) -> Result<PruneReport, ImageError> {
        let mut report = PruneReport::default();
        let all = self.list()?;
        let mut kept_blobs: Vec<&str> = Vec::new();
        let mut doomed = Vec::new();
        for r in &all {
            if keep(r) {
                kept_blobs.extend(r.blobs.iter().map(String::as_str));
                continue;
            }
            let manifest = Digest::parse(&r.manifest_digest).map_err(|e| ImageError::Io {
                action: "read",
                path: self.dir.clone(),
                source: io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
            })?;
            let entry = self.entry(&manifest);
            let record_path = entry.join(RECORD);
            let Ok(lock) = File::open(&record_path) else {
                continue;
            };
            if flock(&lock, libc::LOCK_EX | libc::LOCK_NB).is_err() {
                kept_blobs.extend(r.blobs.iter().map(String::as_str));
                report.in_use.push(r.clone());
                continue;
            }
            report.bytes_freed += r.rootfs_size;
            remove_entry(&entry)?;
            drop(lock);
            doomed.push((r.clone(), manifest));
        }
        let mut forgotten = Vec::new();
        for (r, manifest) in doomed {
            for blob in &r.blobs {
                if kept_blobs.contains(&blob.as_str()) {
                    continue;
                }
                if let Ok(d) = Digest::parse(blob) {
                    report.bytes_freed += std::fs::metadata(blobs.blob_path(&d))
                        .map(|m| m.len())
                        .unwrap_or(0);
                    blobs.remove(&d).map_err(|e| ImageError::Io {
                        action: "remove",
                        path: blobs.blob_path(&d),
                        source: io::Error::other(e.to_string()),
                    })?;
                }
            }
            forgotten.push(manifest);
            report.removed.push(r);
        }
        blobs
            .forget_tags_to(&forgotten)
            .map_err(|e| ImageError::Io {
                action: "forget tags in",
                path: blobs.root().join("refs"),
                source: io::Error::other(e.to_string()),
            })?;
        Ok(report)
    }
}

/// Builds an entry in a temporary directory and renames it into place. Returns the
/// manifest digest and the build summary.
fn build_entry(
    store: &Path,
    entry: &Path,
    pulled: &PulledImage,
) -> Result<(String, BuildSummary), ImageError> {
    let tmp = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(store)
        .map_err(io_error("create a build directory in", store))?;
    let layers: Vec<Layer> = pulled
        .layers
        .iter()
        .map(|l| Layer::new(&l.path, &l.media_type))
        .collect();
    let rootfs_path = tmp.path().join(ROOTFS);
    let summary = rootfs::build_rootfs(&layers, &rootfs_path, &BuildOptions::default()).map_err(
        |source| ImageError::Build {
            reference: pulled.reference.to_string(),
            source,
        },
    )?;
    let (sha256, size) = hash_file(&rootfs_path)?;
    let config = pulled.config.config();
    let list = |v: Option<&Vec<String>>| v.cloned().unwrap_or_default();
    let record = ImageRecord {
        reference: pulled.reference.to_string(),
        manifest_digest: pulled.manifest_digest.to_string(),
        platform: format!("{}/{}", pulled.config.os(), pulled.config.architecture()),
        entrypoint: list(config.as_ref().and_then(|c| c.entrypoint().as_ref())),
        cmd: list(config.as_ref().and_then(|c| c.cmd().as_ref())),
        env: list(config.as_ref().and_then(|c| c.env().as_ref())),
        workdir: config
            .as_ref()
            .and_then(|c| c.working_dir().clone())
            .filter(|w| !w.is_empty()),
        user: config
            .as_ref()
            .and_then(|c| c.user().clone())
            .filter(|u| !u.is_empty()),
        rootfs_sha256: sha256,
        rootfs_size: size,
        blobs: std::iter::once(&pulled.manifest_digest)
            .chain(pulled.index_digest.as_ref())
            .chain([&pulled.config_digest])
            .chain(pulled.layers.iter().map(|l| &l.digest))
            .map(|d| d.to_string())
            .collect(),
        created: pulled.config.created().clone(),
        pulled_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    let record_path = tmp.path().join(RECORD);
    let json = serde_json::to_vec_pretty(&record).expect("a record serialises");
    std::fs::write(&record_path, json).map_err(io_error("write", &record_path))?;
    for f in [&record_path, &rootfs_path] {
        File::open(f)
            .and_then(|f| f.sync_all())
            .map_err(io_error("sync", f))?;
    }
    let tmp = tmp.keep();
    match std::fs::rename(&tmp, entry) {
        Ok(()) => {}
        // Another process built the same image at the same time: keep theirs.
        Err(_) if entry.join(RECORD).exists() => {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(io_error("publish", entry)(e));
        }
    }
    File::open(store)
        .and_then(|d| d.sync_all())
        .map_err(io_error("sync", store))?;
    Ok((record.manifest_digest, summary))
}

fn read_record(path: &Path) -> Result<ImageRecord, ImageError> {
    let bytes = std::fs::read(path).map_err(io_error("read", path))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| io_error("parse", path)(io::Error::new(io::ErrorKind::InvalidData, e)))
}

fn hash_file(path: &Path) -> Result<(String, u64), ImageError> {
    let mut f = File::open(path).map_err(io_error("open", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0;
    loop {
        let n = f.read(&mut buf).map_err(io_error("read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    let hex: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((format!("sha256:{hex}"), size))
}

/// Moves the entry aside first, so it disappears from its real name in one step.
fn remove_entry(entry: &Path) -> Result<(), ImageError> {
    let name = entry.file_name().unwrap_or_default().to_string_lossy();
    let doomed = entry.with_file_name(format!(".prune-{name}-{}", std::process::id()));
    std::fs::rename(entry, &doomed).map_err(io_error("remove", entry))?;
    std::fs::remove_dir_all(&doomed).map_err(io_error("remove", &doomed))
}
