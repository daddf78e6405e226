//! Flattens layers into one [`Tree`], the way overlayfs stacks them.
//!
//! Each layer is first read into its own "upper" tree, then merged onto the image so
//! far. Reading the whole layer before merging makes whiteouts and opaque markers work
//! whatever their position in the archive: `.wh.<name>` removes `<name>` of lower layers
//! only, `.wh..wh..opq` hides everything lower in its directory but keeps what the same
//! layer puts there. Whiteout entries never reach the image.
//!
//! Rules for hostile paths (nothing is ever written on the host; these decide the tree):
//! - A leading `/` is dropped: `/etc/passwd` is `etc/passwd`, as docker does.
//! - `.` and empty components are dropped; `..` removes the previous component, and an
//!   entry whose `..` would climb above the root is refused.
//! - Paths are never resolved through symlinks. When a path goes through a name that is
//!   not a directory (`evil -> /etc`, then `evil/passwd`), a directory replaces that
//!   name, as in docker's overlay2 where the upper layer's directory hides a lower
//!   symlink; `evil/passwd` ends up at `/evil/passwd` inside the image.
//! - Hardlink targets are image paths (a leading `/` is dropped); one that climbs above
//!   the root, does not exist when the link is read, or is a directory is refused. The
//!   target is looked up in this layer so far, then in the layers below unless hidden.
//! - Entry counts, path lengths and name lengths are limited.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use super::LayerError;
use super::archive::{Archive, DataError, Entry, EntryKind, Limits, lossy};
use super::squashfs::{MAX_NAME_LEN, split_xattr_name};
use super::tree::{Content, Kind, Meta, Node, NodeId, ROOT, Tree, Xattr};

/// Longest symlink target the kernel follows (`PATH_MAX` minus the terminating NUL).
const MAX_SYMLINK_LEN: usize = 4095;
/// Device numbers squashfs (and Linux's `dev_t` encoding it uses) can hold.
const MAX_MAJOR: u32 = 0xfff;
const MAX_MINOR: u32 = 0xf_ffff;
const OPAQUE: &[u8] = b".wh..wh..opq";
const WHITEOUT: &[u8] = b".wh.";

/// A layer's view of one name in a directory.
#[derive(Default)]
struct Slot {
    /// `.wh.<name>` was seen: the name is removed from lower layers.
    whiteout: bool,
    node: Option<Upper>,
}

enum Upper {
    Dir(UpperDir),
    /// A new inode, or an existing one for a hardlink.
    Leaf(NodeId),
}

#[derive(Default)]
struct UpperDir {
    /// `None` for directories the layer only implies as parents.
    meta: Option<Meta>,
    opaque: bool,
    children: BTreeMap<Box<[u8]>, Slot>,
}

impl UpperDir {
    /// The directory at `path`, created as needed; a non-directory on the way is replaced.
    fn dir_at(&mut self, path: &[Box<[u8]>]) -> &mut UpperDir {
        let mut dir = self;
        for name in path {
            let slot = dir.children.entry(name.clone()).or_default();
            if !matches!(slot.node, Some(Upper::Dir(_))) {
                slot.node = Some(Upper::Dir(UpperDir::default()));
            }
            let Some(Upper::Dir(next)) = &mut slot.node else {
                unreachable!("set just above")
            };
            dir = next;
        }
        dir
    }
}

/// What a path names in the image being built.
enum Found {
    Node(NodeId),
    Dir,
    Missing,
}

/// Why a layer could not be applied: its contents, or the scratch file.
pub(crate) enum ApplyError {
    Layer(LayerError),
    Scratch(io::Error),
}

impl From<LayerError> for ApplyError {
    fn from(e: LayerError) -> Self {
        ApplyError::Layer(e)
    }
}

/// Builds the image tree layer by layer; file contents go to the scratch file.
pub(crate) struct Flattener<'a> {
    pub tree: Tree,
    spool: &'a File,
    /// End of the used part of the scratch file.
    pub spool_len: u64,
    /// Entries read over all layers.
    pub entries: u64,
    /// xattrs whose namespace squashfs cannot store (e.g. `system.`).
    pub xattrs_dropped: u64,
    max_entries: u64,
    limits: Limits,
}

impl<'a> Flattener<'a> {
    pub(crate) fn new(spool: &'a File, max_entries: u64, limits: Limits) -> Self {
        Flattener {
            tree: Tree::new(),
            spool,
            spool_len: 0,
            entries: 0,
            xattrs_dropped: 0,
            max_entries,
            limits,
        }
    }

    /// Reads one layer archive and merges it onto the image.
    pub(crate) fn apply_layer(&mut self, reader: impl Read) -> Result<(), ApplyError> {
        let mut archive = Archive::new(reader, self.limits);
        let mut upper = UpperDir::default();
        while let Some(entry) = archive.next_entry()? {
            self.entries += 1;
            if self.entries > self.max_entries {
                return Err(LayerError::TooManyEntries {
                    limit: self.max_entries,
                }
                .into());
            }
            self.apply_entry(&mut archive, &mut upper, entry)?;
        }
        archive.drain()?;
        self.merge(ROOT, upper);
        Ok(())
    }

    fn apply_entry<R: Read>(
        &mut self,
        archive: &mut Archive<R>,
        upper: &mut UpperDir,
        entry: Entry,
    ) -> Result<(), ApplyError> {
        let path = normalize(&entry.path, self.limits.max_path_len).map_err(|reason| {
            reason.into_error(
                &entry.path,
                LayerError::PathEscapesRoot {
                    entry: lossy(&entry.path),
                },
            )
        })?;
        let Some((name, parents)) = path.split_last() else {
            if entry.kind != EntryKind::Dir {
                return Err(LayerError::RootNotDirectory {
                    entry: lossy(&entry.path),
                }
                .into());
            }
            upper.meta = Some(self.meta(&entry));
            return Ok(());
        };
        if let Some(target) = name.strip_prefix(WHITEOUT) {
            let dir = upper.dir_at(parents);
            if **name == *OPAQUE {
                dir.opaque = true;
            } else if target.starts_with(WHITEOUT) {
                // Other `.wh..wh.` names are aufs bookkeeping (hardlink dirs); docker skips them.
            } else if target.is_empty() || target == b"." || target == b".." {
                return Err(LayerError::BadWhiteout {
                    entry: lossy(&entry.path),
                }
                .into());
            } else {
                dir.children.entry(target.into()).or_default().whiteout = true;
            }
            return Ok(());
        }
        let meta = self.meta(&entry);
        let leaf = match entry.kind {
            EntryKind::Dir => {
                let slot = upper
                    .dir_at(parents)
                    .children
                    .entry(name.clone())
                    .or_default();
                match &mut slot.node {
                    Some(Upper::Dir(dir)) => dir.meta = Some(meta),
                    _ => {
                        slot.node = Some(Upper::Dir(UpperDir {
                            meta: Some(meta),
                            ..UpperDir::default()
                        }))
                    }
                }
                return Ok(());
            }
            EntryKind::Hardlink => self.resolve_hardlink(upper, &entry)?,
            EntryKind::File => {
                let content = self.spool_data(archive, &entry)?;
                self.tree.push(Node {
                    meta,
                    kind: Kind::File(content),
                })
            }
            EntryKind::Symlink => {
                if entry.link.len() > MAX_SYMLINK_LEN {
                    return Err(LayerError::SymlinkTooLong {
                        entry: lossy(&entry.path),
                        len: entry.link.len(),
                    }
                    .into());
                }
                self.tree.push(Node {
                    meta,
                    kind: Kind::Symlink(entry.link.clone().into()),
                })
            }
            EntryKind::CharDev | EntryKind::BlockDev => {
                let (major, minor) = (entry.major, entry.minor);
                if major > MAX_MAJOR || minor > MAX_MINOR {
                    let entry = lossy(&entry.path);
                    return Err(LayerError::DeviceNumberTooLarge {
                        entry,
                        major,
                        minor,
                    }
                    .into());
                }
                let kind = if entry.kind == EntryKind::CharDev {
                    Kind::CharDev { major, minor }
                } else {
                    Kind::BlockDev { major, minor }
                };
                self.tree.push(Node { meta, kind })
            }
            EntryKind::Fifo => self.tree.push(Node {
                meta,
                kind: Kind::Fifo,
            }),
        };
        upper
            .dir_at(parents)
            .children
            .entry(name.clone())
            .or_default()
            .node = Some(Upper::Leaf(leaf));
        Ok(())
    }

    /// Copies a regular file's data to the end of the scratch file. Runs of zeros are
    /// skipped, leaving holes, so sparse files and zero bombs cost no disk.
    fn spool_data<R: Read>(
        &mut self,
        archive: &mut Archive<R>,
        entry: &Entry,
    ) -> Result<Content, ApplyError> {
        let content = Content {
            offset: self.spool_len,
            len: entry.size,
        };
        let spool = self.spool;
        archive
            .read_data(entry, |offset, bytes| {
                if super::squashfs::is_zero(bytes) {
                    Ok(())
                } else {
                    spool.write_all_at(bytes, content.offset + offset)
                }
            })
            .map_err(|e| match e {
                DataError::Layer(e) => ApplyError::Layer(e),
                DataError::Sink(e) => ApplyError::Scratch(e),
            })?;
        self.spool_len += entry.size;
        Ok(content)
    }

    fn resolve_hardlink(&self, upper: &UpperDir, entry: &Entry) -> Result<NodeId, LayerError> {
        let (path, target) = (lossy(&entry.path), lossy(&entry.link));
        let comps = normalize(&entry.link, self.limits.max_path_len).map_err(|reason| {
            reason.into_error(
                &entry.link,
                LayerError::HardlinkEscapesRoot {
                    entry: path.clone(),
                    target: target.clone(),
                },
            )
        })?;
        match self.lookup(upper, &comps) {
            Found::Node(id) => Ok(id),
            Found::Dir => Err(LayerError::HardlinkToDirectory {
                entry: path,
                target,
            }),
            Found::Missing => Err(LayerError::HardlinkTargetMissing {
                entry: path,
                target,
            }),
        }
    }

    /// Looks `path` up in the current layer, falling through to the image so far where
    /// the layer neither whites the name out nor makes its directory opaque.
    fn lookup(&self, upper: &UpperDir, path: &[Box<[u8]>]) -> Found {
        let mut up = Some(upper);
        let mut low = Some(ROOT);
        for (i, name) in path.iter().enumerate() {
            let last = i + 1 == path.len();
            let slot = up.and_then(|d| d.children.get(name));
            let lower_visible = !up.is_some_and(|d| d.opaque) && !slot.is_some_and(|s| s.whiteout);
            let lower = low
                .filter(|_| lower_visible)
                .and_then(|d| self.tree.children(d)?.get(name).copied());
            match slot.and_then(|s| s.node.as_ref()) {
                Some(Upper::Leaf(id)) => {
                    return if last {
                        Found::Node(*id)
                    } else {
                        Found::Missing
                    };
                }
                Some(Upper::Dir(dir)) => {
                    up = Some(dir);
                    low = lower.filter(|&id| self.tree.is_dir(id));
                }
                None => match lower {
                    Some(id) if self.tree.is_dir(id) => {
                        up = None;
                        low = Some(id);
                    }
                    Some(id) if last => return Found::Node(id),
                    _ => return Found::Missing,
                },
            }
        }
        Found::Dir
    }

    /// Applies one layer's tree onto directory `dir` of the image.
    fn merge(&mut self, dir: NodeId, upper: UpperDir) {
        if let Some(meta) = upper.meta {
            self.tree.node_mut(dir).meta = meta;
        }
        if upper.opaque {
            self.tree.children_mut(dir).clear();
        }
        for (name, slot) in upper.children {
            if slot.whiteout {
                self.tree.children_mut(dir).remove(&name);
            }
            match slot.node {
                None => {}
                Some(Upper::Leaf(id)) => {
                    self.tree.children_mut(dir).insert(name, id);
                }
                Some(Upper::Dir(sub)) => {
                    let existing = self.tree.children(dir).and_then(|c| c.get(&name).copied());
                    let target = match existing.filter(|&id| self.tree.is_dir(id)) {
                        Some(id) => id,
                        None => {
                            let id = self.tree.push(Node {
                                meta: Meta::implied_dir(),
                                kind: Kind::Dir(BTreeMap::new()),
                            });
                            self.tree.children_mut(dir).insert(name, id);
                            id
                        }
                    };
                    self.merge(target, sub);
                }
            }
        }
    }

    /// Permission bits, owner, time and storable xattrs of an entry. Later records of the
    /// same xattr name win, as when a tool sets an attribute twice.
    fn meta(&mut self, entry: &Entry) -> Meta {
        let mut by_name = BTreeMap::new();
        for x in &entry.xattrs {
            if split_xattr_name(&x.name).is_some() {
                by_name.insert(x.name.clone(), x.value.clone());
            } else {
                self.xattrs_dropped += 1;
            }
        }
        Meta {
            mode: (entry.mode & 0o7777) as u16,
            uid: entry.uid,
            gid: entry.gid,
            mtime: entry.mtime,
            xattrs: by_name
                .into_iter()
                .map(|(name, value)| Xattr { name, value })
                .collect(),
        }
    }
}

/// Why a path was refused by [`normalize`].
enum PathRefusal {
    Escapes,
    /// Longer than the limit carried.
    TooLong(usize),
    NameTooLong(usize),
}

impl PathRefusal {
    /// The error for this refusal; `escapes` is the caller's error for climbing out.
    fn into_error(self, path: &[u8], escapes: LayerError) -> LayerError {
        match self {
            PathRefusal::Escapes => escapes,
            PathRefusal::TooLong(limit) => LayerError::PathTooLong {
                entry: lossy(&path[..path.len().min(256)]),
                len: path.len(),
                limit,
            },
            PathRefusal::NameTooLong(len) => LayerError::NameTooLong {
                entry: lossy(path),
                len,
            },
        }
    }
}

/// Splits an archive path into components under the image root (see the module docs).
fn normalize(path: &[u8], max_len: usize) -> Result<Vec<Box<[u8]>>, PathRefusal> {
    if path.len() > max_len {
        return Err(PathRefusal::TooLong(max_len));
    }
    let mut comps: Vec<Box<[u8]>> = Vec::new();
    for comp in path.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                comps.pop().ok_or(PathRefusal::Escapes)?;
            }
            name if name.len() > MAX_NAME_LEN => return Err(PathRefusal::NameTooLong(name.len())),
            name => comps.push(name.into()),
        }
    }
    Ok(comps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(path: &str) -> Vec<String> {
        let Ok(comps) = normalize(path.as_bytes(), 4096) else {
            panic!("{path} refused")
        };
        comps
            .iter()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect()
    }

    #[test]
    fn paths_are_made_relative_and_clean() {
        assert_eq!(names("/etc/passwd"), ["etc", "passwd"]);
        assert_eq!(names("./usr//bin/./env"), ["usr", "bin", "env"]);
        assert_eq!(names("a/b/../c"), ["a", "c"]);
        assert!(names("./").is_empty());
        assert!(names("/").is_empty());
    }

    #[test]
    fn climbing_above_the_root_is_refused() {
        for path in ["..", "../etc/passwd", "a/../../b", "/../etc/shadow"] {
            assert!(
                matches!(normalize(path.as_bytes(), 4096), Err(PathRefusal::Escapes)),
                "{path}"
            );
        }
    }

    #[test]
    fn long_paths_and_names_are_refused() {
        assert!(matches!(
            normalize(&[b'a'; 101], 100),
            Err(PathRefusal::TooLong(100))
        ));
        let long_name = format!("dir/{}", "n".repeat(256));
        assert!(matches!(
            normalize(long_name.as_bytes(), 4096),
            Err(PathRefusal::NameTooLong(256))
        ));
        assert!(normalize("n".repeat(255).as_bytes(), 4096).is_ok());
    }
}
