//! Deterministic layer tarballs: entries in the order added, fixed mtime, numeric owners,
//! no host metadata, gzip with a zero header timestamp. The same calls give the same bytes.

use std::io::{self, Write};
use std::path::Path;

use tar::{EntryType, Header};

use crate::digest::Digest;

/// The mtime of every entry (2023-11-14), as with `SOURCE_DATE_EPOCH`.
pub const MTIME: u64 = 1_700_000_000;
/// OCI media type of an uncompressed layer.
pub const MEDIA_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI media type of a gzip layer.
pub const MEDIA_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// A finished layer blob.
#[derive(Debug, Clone)]
pub struct LayerBlob {
    /// The blob as pushed (gzip or plain tar).
    pub data: Vec<u8>,
    /// Its OCI media type.
    pub media_type: &'static str,
    /// Digest of the uncompressed tar (the config's `rootfs.diff_ids`).
    pub diff_id: Digest,
}

/// Builds one layer tarball.
pub struct LayerBuilder {
    tar: tar::Builder<Vec<u8>>,
}

impl Default for LayerBuilder {
    fn default() -> Self {
        LayerBuilder::new()
    }
}

impl LayerBuilder {
    /// An empty layer.
    pub fn new() -> LayerBuilder {
        LayerBuilder {
            tar: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: EntryType, mode: u32, uid: u64, size: u64) -> Header {
        let mut header = Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(uid);
        header.set_gid(uid);
        header.set_mtime(MTIME);
        header.set_size(size);
        header
    }

    /// A directory (`path` without a trailing slash) owned by `uid`:`uid`.
    pub fn dir_owned(&mut self, path: &str, mode: u32, uid: u64) -> io::Result<&mut Self> {
        let mut header = Self::header(EntryType::Directory, mode, uid, 0);
        self.tar
            .append_data(&mut header, format!("{path}/"), io::empty())?;
        Ok(self)
    }

    /// A directory owned by root.
    pub fn dir(&mut self, path: &str, mode: u32) -> io::Result<&mut Self> {
        self.dir_owned(path, mode, 0)
    }

    /// A regular file owned by `uid`:`uid`.
    pub fn file_owned(
        &mut self,
        path: &str,
        mode: u32,
        uid: u64,
        data: &[u8],
    ) -> io::Result<&mut Self> {
        let mut header = Self::header(EntryType::Regular, mode, uid, data.len() as u64);
        self.tar.append_data(&mut header, path, data)?;
        Ok(self)
    }

    /// A regular file owned by root.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<&mut Self> {
        self.file_owned(path, mode, 0, data)
    }

    /// A symbolic link `path` -> `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<&mut Self> {
        let mut header = Self::header(EntryType::Symlink, 0o777, 0, 0);
        self.tar.append_link(&mut header, path, target)?;
        Ok(self)
    }

    /// A hard link `path` to the earlier entry `target` of this layer.
    pub fn hardlink(&mut self, path: &str, target: &str) -> io::Result<&mut Self> {
        let mut header = Self::header(EntryType::Link, 0o644, 0, 0);
        self.tar.append_link(&mut header, path, target)?;
        Ok(self)
    }

    /// Deletes `path` of lower layers (an `.wh.` whiteout file).
    pub fn whiteout(&mut self, path: &str) -> io::Result<&mut Self> {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let entry = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        self.file(&entry, 0o644, b"")
    }

    /// Hides everything lower layers put in directory `dir` (an opaque whiteout).
    pub fn opaque(&mut self, dir: &str) -> io::Result<&mut Self> {
        self.file(&format!("{dir}/.wh..wh..opq"), 0o644, b"")
    }

    /// Adds the tree at `root` (from `dpkg-deb -x`) in sorted order, owned by root, keeping
    /// modes, symlinks and hard links.
    pub fn tree(&mut self, root: &Path) -> io::Result<&mut Self> {
        let mut seen = std::collections::HashMap::new();
        self.tree_below(root, root, &mut seen)?;
        Ok(self)
    }

    fn tree_below(
        &mut self,
        root: &Path,
        dir: &Path,
        seen: &mut std::collections::HashMap<(u64, u64), String>,
    ) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let name = path
                .strip_prefix(root)
                .expect("below root")
                .to_string_lossy()
                .into_owned();
            let meta = std::fs::symlink_metadata(&path)?;
            let mode = meta.mode() & 0o7777;
            if meta.file_type().is_symlink() {
                self.symlink(&name, &std::fs::read_link(&path)?.to_string_lossy())?;
            } else if meta.is_dir() {
                self.dir(&name, mode)?;
                self.tree_below(root, &path, seen)?;
            } else if let Some(first) = (meta.nlink() > 1)
                .then(|| seen.get(&(meta.dev(), meta.ino())))
                .flatten()
            {
                self.hardlink(&name, &first.clone())?;
            } else {
                if meta.nlink() > 1 {
                    seen.insert((meta.dev(), meta.ino()), name.clone());
                }
                self.file(&name, mode, &std::fs::read(&path)?)?;
            }
        }
        Ok(())
    }

    /// Finishes the tarball, gzip-compressed or not.
    pub fn finish(self, gzip: bool) -> io::Result<LayerBlob> {
        let tar = self.tar.into_inner()?;
        let diff_id = Digest::of(&tar);
        if !gzip {
            return Ok(LayerBlob {
                data: tar,
                media_type: MEDIA_TAR,
                diff_id,
            });
        }
        // GzBuilder writes mtime 0 and no file name: the output depends on the input only.
        let mut encoder =
            flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::default());
        encoder.write_all(&tar)?;
        Ok(LayerBlob {
            data: encoder.finish()?,
            media_type: MEDIA_TAR_GZIP,
            diff_id,
        })
    }
}
