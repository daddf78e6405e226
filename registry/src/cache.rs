//! The content-addressed blob cache: `<root>/blobs/sha256/<hex>` holds blobs (layers,
//! configs, manifests) whose SHA-256 is their name, and `<root>/refs/` remembers which
//! manifest digest a tag last resolved to.
//!
//! An entry only appears by rename after its digest and size were checked and the data
//! fsynced, so whatever sits under its final name is whole. Writers use unique temp names,
//! so two processes fetching the same blob both succeed (the second rename replaces the
//! first with identical bytes).

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::fsutil;

const BLOB_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o755;
/// Network reads arrive in small chunks; batching them saves most write syscalls.
const WRITE_BUFFER: usize = 1 << 20;

/// A temp file untouched this long belongs to a dead process: a live download writes at
/// least once per read-gap timeout plus backoff, both well under this.
pub const STALE_TEMP_AGE: Duration = Duration::from_secs(3600);

/// A blob cache rooted at a directory.
#[derive(Debug, Clone)]
pub struct BlobCache {
    root: PathBuf,
}

/// What went wrong in the cache; each names the file or digest.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Neither `XDG_CACHE_HOME` nor `HOME` is set.
    #[error("cannot find the cache directory: set HOME or XDG_CACHE_HOME")]
    NoHome,
    /// A file operation failed.
    #[error("blob cache: cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done (`create`, `read`, `write`, `rename into place`).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The bytes do not hash to the digest they were fetched as, or have the wrong size.
    #[error(
        "digest mismatch for {digest}: expected {expected_size} bytes with that digest, got {actual_size} bytes hashing to {actual}"
    )]
    Mismatch {
        /// The digest that was asked for.
        digest: Digest,
        /// The size the descriptor gave.
        expected_size: u64,
        /// What arrived.
        actual: Digest,
        /// How many bytes arrived.
        actual_size: u64,
    },
    /// The blob is not in the cache.
    #[error("blob {0} is not in the cache")]
    Missing(Digest),
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CacheError {
    let path = path.to_owned();
    move |source| CacheError::Io {
        action,
        path,
        source,
    }
}

/// `$XDG_CACHE_HOME/smolvm`, else `~/.cache/smolvm`.
pub fn default_dir() -> Result<PathBuf, CacheError> {
    let base = fsutil::xdg_dir("XDG_CACHE_HOME", ".cache").ok_or(CacheError::NoHome)?;
    Ok(base.join("smolvm"))
}

impl BlobCache {
    /// Opens (creating) the cache at `root`.
    pub fn open(root: &Path) -> Result<BlobCache, CacheError> {
        let cache = BlobCache {
            root: root.to_owned(),
        };
        for dir in [cache.blob_dir(), cache.ref_dir()] {
            fsutil::create_dir_all(&dir, DIR_MODE).map_err(io_error("create", &dir))?;
        }
        cache.remove_stale_temp_files();
        Ok(cache)
    }

    /// Deletes temp files left by processes that died mid-download. Best effort: a file
    /// that cannot be removed now is tried again on the next open.
    fn remove_stale_temp_files(&self) {
        let Ok(entries) = std::fs::read_dir(self.blob_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let stale = entry
                .file_name()
                .to_string_lossy()
                .starts_with(fsutil::TEMP_PREFIX)
                && entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > STALE_TEMP_AGE));
            if stale {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Opens the cache at [`default_dir`].
    pub fn open_default() -> Result<BlobCache, CacheError> {
        BlobCache::open(&default_dir()?)
    }

    /// The cache's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    fn ref_dir(&self) -> PathBuf {
        self.root.join("refs")
    }

    /// Where the blob `digest` lives (whether or not it is there yet).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blob_dir().join(digest.hex())
    }

    /// Whether the blob is present with `size` bytes: the cheap check used before a
    /// download. Entries are only ever renamed in whole and verified, so this suffices
    /// unless someone edited the cache; [`BlobCache::verify`] rehashes.
    pub fn contains(&self, digest: &Digest, size: u64) -> bool {
        std::fs::metadata(self.blob_path(digest)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    /// Rehashes the blob; a corrupt one is deleted so the next pull fetches it again.
    pub fn verify(&self, digest: &Digest) -> Result<(), CacheError> {
        self.read_verified(digest).map(drop)
    }

    /// Reads a whole blob (manifests, configs) after checking its digest; a corrupt one is
    /// deleted and reported as [`CacheError::Mismatch`].
    pub fn read_verified(&self, digest: &Digest) -> Result<Vec<u8>, CacheError> {
        let path = self.blob_path(digest);
        let mut bytes = Vec::new();
        match File::open(&path).and_then(|mut f| f.read_to_end(&mut bytes)) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(CacheError::Missing(digest.clone()));
            }
            Err(e) => return Err(io_error("read", &path)(e)),
        }
        let actual = Digest::of(&bytes);
        if &actual != digest {
            let _ = std::fs::remove_file(&path);
            return Err(CacheError::Mismatch {
                digest: digest.clone(),
                expected_size: bytes.len() as u64,
                actual,
                actual_size: bytes.len() as u64,
            });
        }
        Ok(bytes)
    }

    /// Stores `bytes` as the blob `digest`, refusing bytes with another digest.
    pub fn put(&self, digest: &Digest, bytes: &[u8]) -> Result<PathBuf, CacheError> {
        let mut partial = self.begin(digest, bytes.len() as u64)?;
        partial.write(bytes)?;
        partial.finish()
    }

    /// Starts writing the blob `digest` of `size` bytes to a fresh temp file.
    pub(crate) fn begin(&self, digest: &Digest, size: u64) -> Result<PartialBlob, CacheError> {
        let target = self.blob_path(digest);
        let (file, temp) = fsutil::create_temp(&target, BLOB_MODE)
            .map_err(io_error("create a temp file for", &target))?;
        Ok(PartialBlob {
            file: Some(BufWriter::with_capacity(WRITE_BUFFER, file)),
            temp,
            target,
            hasher: Sha256::new(),
            written: 0,
            digest: digest.clone(),
            size,
        })
    }

    /// The manifest digest `reference` (a tag reference's canonical text) resolved to last.
    pub fn tag_digest(&self, reference: &str) -> Option<Digest> {
        let text = std::fs::read(self.ref_path(reference)).ok()?;
        let entry: RefEntry = serde_json::from_slice(&text).ok()?;
        // Guards against a (practically impossible) file-name collision.
        (entry.reference == reference)
            .then(|| Digest::parse(&entry.digest).ok())
            .flatten()
    }

    /// Remembers that `reference` resolved to `digest`.
    pub fn record_tag(&self, reference: &str, digest: &Digest) -> Result<(), CacheError> {
        let entry = RefEntry {
            reference: reference.to_owned(),
            digest: digest.to_string(),
        };
        let path = self.ref_path(reference);
        let json = serde_json::to_vec_pretty(&entry).expect("a RefEntry serialises");
        fsutil::write_atomic(&path, &json, BLOB_MODE).map_err(io_error("write", &path))
    }

    /// Deletes a blob (for pruning); a blob that is not there is not an error.
    pub fn remove(&self, digest: &Digest) -> Result<(), CacheError> {
        let path = self.blob_path(digest);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error("remove", &path)(e)),
            _ => Ok(()),
        }
    }

    /// Forgets every tag that resolved to one of `digests` (the images being pruned), so a
    /// later pull resolves them afresh; returns how many were forgotten.
    pub fn forget_tags_to(&self, digests: &[Digest]) -> Result<usize, CacheError> {
        let dir = self.ref_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_error("list", &dir)(e)),
        };
        let mut forgotten = 0;
        for entry in entries.flatten() {
            let Ok(text) = std::fs::read(entry.path()) else {
                continue;
            };
            let Ok(r) = serde_json::from_slice::<RefEntry>(&text) else {
                continue;
            };
            if digests.iter().any(|d| d.as_str() == r.digest) {
                std::fs::remove_file(entry.path()).map_err(io_error("remove", &entry.path()))?;
                forgotten += 1;
            }
        }
        Ok(forgotten)
    }

    /// One small JSON file per tag, named by the hash of the reference: concurrent pulls of
    /// different tags never rewrite a shared file, so no update is lost without a lock.
    fn ref_path(&self, reference: &str) -> PathBuf {
        let name = Digest::of(reference.as_bytes());
        self.ref_dir().join(format!("{}.json", name.hex()))
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct RefEntry {
    reference: String,
    digest: String,
}

/// A blob being written: bytes go to a temp file and into the hash as they arrive. Dropping
/// it unfinished removes the temp file.
pub(crate) struct PartialBlob {
    file: Option<BufWriter<File>>,
    temp: PathBuf,
    target: PathBuf,
    hasher: Sha256,
    written: u64,
    digest: Digest,
    size: u64,
}

impl PartialBlob {
    /// Bytes written so far: where a resumed download continues.
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// Appends `bytes`; more bytes than the descriptor's size is a mismatch right away.
    pub(crate) fn write(&mut self, bytes: &[u8]) -> Result<(), CacheError> {
        if self.written + bytes.len() as u64 > self.size {
            self.hasher.update(bytes);
            self.written += bytes.len() as u64;
            return Err(self.mismatch());
        }
        let file = self.file.as_mut().expect("file is open until finish");
        file.write_all(bytes)
            .map_err(io_error("write", &self.temp))?;
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Throws away what was written, for a server that answers a range request with the
    /// whole blob.
    pub(crate) fn restart(&mut self) -> Result<(), CacheError> {
        let file = self.file.as_mut().expect("file is open until finish");
        file.flush()
            .and_then(|()| file.get_ref().set_len(0))
            .and_then(|()| file.rewind())
            .map_err(io_error("truncate", &self.temp))?;
        self.hasher = Sha256::new();
        self.written = 0;
        Ok(())
    }

    fn mismatch(&self) -> CacheError {
        CacheError::Mismatch {
            digest: self.digest.clone(),
            expected_size: self.size,
            actual: Digest::from_hasher(self.hasher.clone()),
            actual_size: self.written,
        }
    }

    /// Checks size and digest, then moves the blob into place durably.
    pub(crate) fn finish(mut self) -> Result<PathBuf, CacheError> {
        if self.written != self.size || Digest::from_hasher(self.hasher.clone()) != self.digest {
            return Err(self.mismatch());
        }
        let file = self.file.take().expect("file is open until finish");
        file.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|file| fsutil::commit(file, &self.temp, &self.target))
            .map_err(|e| {
                let _ = std::fs::remove_file(&self.temp);
                io_error("rename into place", &self.target)(e)
            })?;
        Ok(self.target.clone())
    }
}

impl Drop for PartialBlob {
    fn drop(&mut self) {
        // After a successful finish the temp name no longer exists; removing it is a no-op.
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn stores_verifies_and_rejects() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path()).unwrap();
        let digest = Digest::of(b"hello");
        assert!(!cache.contains(&digest, 5));
        cache.put(&digest, b"hello").unwrap();
        assert!(cache.contains(&digest, 5));
        assert!(!cache.contains(&digest, 4), "a wrong size is not a hit");
        cache.verify(&digest).unwrap();
        assert_eq!(cache.read_verified(&digest).unwrap(), b"hello");

        let err = cache.put(&digest, b"hellO").unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "digest mismatch for {digest}: expected 5 bytes with that digest, got 5 bytes hashing to {}",
                Digest::of(b"hellO")
            )
        );
        let err = cache.put(&digest, b"hello!").unwrap_err();
        assert!(
            matches!(err, CacheError::Mismatch { actual_size: 6, .. }),
            "{err}"
        );
        assert_eq!(
            names(&cache.blob_dir()),
            vec![digest.hex().to_owned()],
            "no temp files"
        );
    }

    #[test]
    fn verify_deletes_a_corrupt_blob() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path()).unwrap();
        let digest = Digest::of(b"data");
        cache.put(&digest, b"data").unwrap();
        std::fs::write(cache.blob_path(&digest), b"DATA").unwrap();
        assert!(
            cache.contains(&digest, 4),
            "the cheap check cannot see this"
        );
        assert!(matches!(
            cache.verify(&digest),
            Err(CacheError::Mismatch { .. })
        ));
        assert!(!cache.blob_path(&digest).exists());
        assert!(matches!(cache.verify(&digest), Err(CacheError::Missing(_))));
    }

    #[test]
    fn partial_blob_restart_and_drop() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path()).unwrap();
        let digest = Digest::of(b"abcdef");
        let mut partial = cache.begin(&digest, 6).unwrap();
        partial.write(b"xyz").unwrap();
        partial.restart().unwrap();
        assert_eq!(partial.written(), 0);
        partial.write(b"abc").unwrap();
        partial.write(b"def").unwrap();
        partial.finish().unwrap();
        assert_eq!(std::fs::read(cache.blob_path(&digest)).unwrap(), b"abcdef");

        let other = Digest::of(b"other");
        let mut partial = cache.begin(&other, 5).unwrap();
        partial.write(b"ot").unwrap();
        drop(partial);
        assert_eq!(names(&cache.blob_dir()), vec![digest.hex().to_owned()]);
    }

    #[test]
    fn open_removes_only_stale_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path()).unwrap();
        let (old, fresh) = (
            cache.blob_dir().join(".tmp-old"),
            cache.blob_dir().join(".tmp-fresh"),
        );
        let hours_ago = std::time::SystemTime::now() - 2 * STALE_TEMP_AGE;
        File::create(&old).unwrap().set_modified(hours_ago).unwrap();
        File::create(&fresh).unwrap();
        let digest = Digest::of(b"kept");
        cache.put(&digest, b"kept").unwrap();
        File::options()
            .write(true)
            .open(cache.blob_path(&digest))
            .unwrap()
            .set_modified(hours_ago)
            .unwrap();
        BlobCache::open(dir.path()).unwrap();
        assert_eq!(
            names(&cache.blob_dir()),
            vec![".tmp-fresh".to_owned(), digest.hex().to_owned()],
            "an old finished blob stays; an old temp file goes; a live one stays"
        );
    }

    #[test]
    fn remembers_tags() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path()).unwrap();
        let digest = Digest::of(b"manifest");
        assert_eq!(cache.tag_digest("r/a:1"), None);
        cache.record_tag("r/a:1", &digest).unwrap();
        assert_eq!(cache.tag_digest("r/a:1"), Some(digest));
        assert_eq!(cache.tag_digest("r/a:2"), None);
    }
}
