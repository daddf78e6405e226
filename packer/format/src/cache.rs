//! The section cache: pack sections turned into files on first use, shared by every pack
//! and keyed by the SHA-256 of their contents.
//!
//! ```text
//! <cache>/sections/sha256/<hex>        a section's contents, uncompressed (read-only)
//! <cache>/sections/sha256/<hex>.lock   exclusive while being written; shared while in use
//! <cache>/sections/sha256/<hex>.boot   the boot id under which the entry was last known good
//! <cache>/sections/verified/<key>      a pack file's in-place section was verified
//! ```
//!
//! Entries are not fsynced (that was much of a first run's cost). Data in the page cache
//! survives any process crash; only a kernel crash or power loss can lose it, and either
//! means a new boot id. So an entry whose marker names another boot is hashed once before
//! it is used again, and extracted anew if it does not match.
//!
//! Two first runs at once both succeed: the second waits for the first's exclusive lock and
//! then finds the file. An entry appears under its name only once extracted and verified
//! (temp file, fsync, rename), so a half-written entry is never used. Entries a VM uses are
//! held with a shared lock, which eviction respects.

use crate::{Durability, FormatError, Pack, SectionKind};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;
use thiserror::Error;

/// Default size cap, overridden with `SMOLVM_SECTION_CACHE_MAX` (bytes, or with a `G`/`M` suffix).
pub const DEFAULT_MAX_BYTES: u64 = 8 << 30;

/// Why a section could not be made available.
#[derive(Debug, Error)]
pub enum SectionError {
    /// The pack itself is damaged.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The pack has no such section.
    #[error("the pack has no {0} section")]
    Missing(SectionKind),
    /// A cache file could not be used.
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

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SectionError {
    let path = path.to_owned();
    move |source| SectionError::Io {
        action,
        path,
        source,
    }
}

/// A section as a file. While this lives, the entry is not evicted.
#[derive(Debug)]
pub struct CachedSection {
    /// The file.
    pub path: PathBuf,
    /// Whether this call extracted it (false: it was cached).
    pub extracted: bool,
    _lock: File,
}

/// What [`SectionCache::evict`] did.
#[derive(Debug, Default, serde::Serialize)]
pub struct EvictReport {
    /// Entries removed.
    pub removed: usize,
    /// Bytes freed.
    pub bytes_freed: u64,
    /// Entries kept because a running VM uses them.
    pub in_use: usize,
    /// Bytes left in the cache.
    pub bytes_left: u64,
}

/// The cache under a directory.
pub struct SectionCache {
    dir: PathBuf,
}

impl SectionCache {
    /// The cache in `<cache_root>/sections`.
    pub fn open(cache_root: &Path) -> Result<SectionCache, SectionError> {
        let dir = cache_root.join("sections");
        for d in [dir.join("sha256"), dir.join("verified")] {
            std::fs::create_dir_all(&d).map_err(io_error("create", &d))?;
        }
        Ok(SectionCache { dir })
    }

    /// The cache under `$XDG_CACHE_HOME/smolvm` (or `~/.cache/smolvm`).
    pub fn open_default() -> Result<SectionCache, SectionError> {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .ok_or(SectionError::NoCacheDir)?;
        SectionCache::open(&base.join("smolvm"))
    }

    /// Where the section with contents `digest` (`sha256:<hex>`) is cached, present or not.
    pub fn path_of(&self, digest: &str) -> PathBuf {
        self.dir
            .join("sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    /// The section `kind` of `pack` as a file, extracting and verifying it the first time
    /// (or every time with `force`).
    pub fn materialize(
        &self,
        pack: &Pack,
        kind: SectionKind,
        force: bool,
    ) -> Result<CachedSection, SectionError> {
        let entry = pack.section(kind).ok_or(SectionError::Missing(kind))?;
        let path = self.path_of(&entry.uncompressed_sha256);
        let lock_path = path.with_extension("lock");
        let lock = File::create(&lock_path).map_err(io_error("open", &lock_path))?;
        let boot = boot_id();
        let marker = path.with_extension("boot");
        let good = || {
            let present =
                std::fs::metadata(&path).is_ok_and(|m| m.len() == entry.uncompressed_size);
            present
                && (boot.is_some() && std::fs::read_to_string(&marker).ok() == boot
                    || hex_of_file(&path).is_ok_and(|h| {
                        h == entry.uncompressed_sha256.trim_start_matches("sha256:")
                    }))
        };
        // Users of an entry hold it shared for as long as their VM runs, so an entry that
        // is good is only ever checked under the shared lock: taking the exclusive one first
        // would make every run wait for every other run of the pack to end (and two runs
        // materializing sections on parallel threads deadlock). Only an extraction needs the
        // exclusive lock, taken without waiting on users: if that fails, someone else is
        // extracting or using it, so wait for their shared turn and look again.
        let mut attempts = 0;
        let extracted = loop {
            flock(&lock, libc::LOCK_SH).map_err(io_error("lock", &lock_path))?;
            if !force && good() {
                break false;
            }
            let exclusive = if attempts < 50 {
                libc::LOCK_EX | libc::LOCK_NB
            } else {
                // Users keep a bad entry busy: wait for them rather than spin.
                libc::LOCK_EX
            };
            attempts += 1;
            if flock(&lock, exclusive).is_err() {
                std::thread::sleep(std::time::Duration::from_millis(20));
                continue;
            }
            if !force && good() {
                break false; // extracted by someone else meanwhile
            }
            let _ = std::fs::remove_file(&path);
            // Without a boot id to tell a reboot by, fall back to syncing.
            let durability = if boot.is_some() {
                Durability::Unsynced
            } else {
                Durability::Synced
            };
            pack.extract_section_with(kind, &path, durability)?;
            let _ = std::fs::set_permissions(
                &path,
                std::os::unix::fs::PermissionsExt::from_mode(0o444),
            );
            if let Some(boot) = &boot {
                let _ = std::fs::write(&marker, boot);
            }
            break true;
        };
        if !extracted {
            if let Some(boot) = &boot
                && std::fs::read_to_string(&marker).ok().as_ref() != Some(boot)
            {
                let _ = std::fs::write(&marker, boot);
            }
            // Last use, for eviction order.
            let _ = File::open(&path).and_then(|f| f.set_modified(SystemTime::now()));
        }
        // Readers share; eviction needs the exclusive lock.
        flock(&lock, libc::LOCK_SH).map_err(io_error("lock", &lock_path))?;
        Ok(CachedSection {
            path,
            extracted,
            _lock: lock,
        })
    }

    /// Checks an uncompressed section where it lies in the pack file, once per version of
    /// the file: a marker keyed by the file's device, inode, size and modification time and
    /// by the section's digest records that it was verified. Returns whether it hashed now.
    pub fn verify_in_place(&self, pack: &Pack, kind: SectionKind) -> Result<bool, SectionError> {
        let entry = pack.section(kind).ok_or(SectionError::Missing(kind))?;
        let meta = std::fs::metadata(pack.path()).map_err(io_error("read", pack.path()))?;
        let key = format!(
            "{}:{}:{}:{}:{}:{}",
            meta.dev(),
            meta.ino(),
            meta.len(),
            meta.mtime_nsec() + meta.mtime() * 1_000_000_000,
            entry.offset,
            entry.sha256
        );
        let marker = self.dir.join("verified").join(hex_sha256(key.as_bytes()));
        if marker.exists() {
            return Ok(false);
        }
        pack.verify_section(kind)?;
        File::create(&marker).map_err(io_error("create", &marker))?;
        Ok(true)
    }

    /// Bytes the cache's entries use.
    pub fn size(&self) -> u64 {
        self.entries().iter().map(|(_, len, _)| len).sum()
    }

    fn entries(&self) -> Vec<(PathBuf, u64, SystemTime)> {
        let dir = self.dir.join("sha256");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = e.path();
            if path.extension().is_some() {
                continue; // lock files
            }
            if let Ok(m) = e.metadata() {
                out.push((
                    path,
                    m.len(),
                    m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                ));
            }
        }
        out.sort_by_key(|(_, _, used)| *used);
        out
    }

    /// Removes least recently used entries until the cache holds at most `max_bytes`,
    /// never one a running VM uses. `max_bytes = 0` removes everything not in use.
    pub fn evict(&self, max_bytes: u64) -> EvictReport {
        let entries = self.entries();
        let mut report = EvictReport {
            bytes_left: entries.iter().map(|(_, len, _)| len).sum(),
            ..Default::default()
        };
        for (path, len, _) in entries {
            if report.bytes_left <= max_bytes && max_bytes > 0 {
                break;
            }
            let lock_path = path.with_extension("lock");
            let Ok(lock) = File::create(&lock_path) else {
                continue;
            };
            if flock(&lock, libc::LOCK_EX | libc::LOCK_NB).is_err() {
                report.in_use += 1;
                continue;
            }
            if std::fs::remove_file(&path).is_ok() {
                let _ = std::fs::remove_file(path.with_extension("boot"));
                let _ = std::fs::remove_file(&lock_path);
                report.removed += 1;
                report.bytes_freed += len;
                report.bytes_left -= len;
            }
        }
        if max_bytes == 0 {
            // Verification markers are cheap to recreate.
            for e in std::fs::read_dir(self.dir.join("verified"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
        report
    }
}

/// The cache size cap: `SMOLVM_SECTION_CACHE_MAX` or [`DEFAULT_MAX_BYTES`].
pub fn max_bytes_from_env() -> u64 {
    let Ok(v) = std::env::var("SMOLVM_SECTION_CACHE_MAX") else {
        return DEFAULT_MAX_BYTES;
    };
    let v = v.trim();
    let (num, mult) = match v.chars().last() {
        Some('G' | 'g') => (&v[..v.len() - 1], 1u64 << 30),
        Some('M' | 'm') => (&v[..v.len() - 1], 1 << 20),
        _ => (v, 1),
    };
    num.parse::<u64>()
        .map(|n| n * mult)
        .unwrap_or(DEFAULT_MAX_BYTES)
}

/// This boot of the kernel: changes exactly when the machine has gone down.
fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn hex_of_file(path: &Path) -> io::Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut hasher = sha2::Sha256::new();
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match f.read(&mut buf)? {
            0 => break,
            n => hasher.update(&buf[..n]),
        }
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `flock(2)` on `f` with `op` (`LOCK_SH`, `LOCK_EX`, with or without `LOCK_NB`); a
/// blocking wait interrupted by a signal is resumed. The lock goes when `f` is closed.
pub fn flock(f: &File, op: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: flock on a descriptor we hold.
        if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
