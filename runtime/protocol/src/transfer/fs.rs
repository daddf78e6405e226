//! The filesystem side of a copy: reading a file or a tree into a stream, and receiving one
//! atomically.
//!
//! A received copy is *staged* under a temporary name in the destination's directory (a
//! file written and fsynced, or a tree extracted), and only [`Staged::commit`] puts it in
//! place: a rename for a file or a new directory, an atomic exchange
//! (`renameat2(RENAME_EXCHANGE)`) for a directory that replaces another, whose old contents
//! are then removed. Whatever fails or is abandoned before that leaves the destination as
//! it was, and dropping the [`Staged`] removes the temporary.
//!
//! Extraction trusts nothing in the tar stream (the host extracts what an untrusted guest
//! sends): paths must be relative and stay below the destination, nothing is created
//! through a symlink or over a directory's parent that is not a directory, hardlinks may
//! only point at regular files extracted earlier, and devices, FIFOs and sockets are
//! refused. Set-user-ID and set-group-ID bits are never copied, as `cp` without `-p`.

use super::CHUNK;
use crate::message::CopyKind;
use std::ffi::CString;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, BufRead, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{
    DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt, symlink,
};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// The permission bits a copy keeps.
pub const MODE_MASK: u32 = 0o1777;

/// Where a copy of something named `name` lands when asked to go to `dst`: inside `dst` when
/// that is an existing directory (as `cp` does), else `dst` itself.
pub fn target(dst: &Path, name: &str) -> io::Result<PathBuf> {
    if !dst.is_dir() {
        return Ok(dst.to_path_buf());
    }
    let mut parts = Path::new(name).components();
    match (parts.next(), parts.next()) {
        (Some(Component::Normal(n)), None) => Ok(dst.join(n)),
        _ => Err(invalid(format!(
            "cannot copy into the directory {}: the source has no file name ({name:?}); name the destination in full",
            dst.display()
        ))),
    }
}

/// What a copy of `kind` may replace at `target`: nothing, or the same kind of thing (a
/// directory only by a directory, anything else only by a file).
pub fn check_replaceable(target: &Path, kind: CopyKind) -> io::Result<()> {
    let existing = match fs::symlink_metadata(target) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(context(e, "looking at", target)),
        Ok(m) => m,
    };
    match (kind, existing.is_dir()) {
        (CopyKind::File, true) => Err(invalid(format!(
            "{} is a directory: a file cannot replace it",
            target.display()
        ))),
        (CopyKind::Dir, false) => Err(invalid(format!(
            "{} exists and is not a directory: a directory cannot replace it",
            target.display()
        ))),
        _ => Ok(()),
    }
}

/// A received copy under its temporary name, next to where it goes. Dropped without
/// [`Staged::commit`], it is removed.
#[derive(Debug)]
pub struct Staged {
    temp: PathBuf,
    target: PathBuf,
    kind: CopyKind,
}

impl Staged {
    fn new(target: &Path, kind: CopyKind) -> io::Result<Staged> {
        check_replaceable(target, kind)?;
        let temp = temp_name(target)?;
        match kind {
            CopyKind::File => {
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&temp)
            }
            .map(drop),
            CopyKind::Dir => fs::DirBuilder::new().mode(0o700).create(&temp),
        }
        .map_err(|e| context(e, "creating", &temp))?;
        Ok(Staged {
            temp,
            target: target.to_path_buf(),
            kind,
        })
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Puts the copy in place atomically, replacing what was there.
    pub fn commit(self) -> io::Result<()> {
        check_replaceable(&self.target, self.kind)?;
        let exists = fs::symlink_metadata(&self.target).is_ok();
        match (self.kind, exists) {
            (CopyKind::Dir, true) => {
                rename2(&self.temp, &self.target, libc::RENAME_EXCHANGE)?;
                // The temporary name now holds the old tree; `drop` removes it. The new one
                // is in place whatever happens to the old one.
            }
            (CopyKind::Dir, false) => rename2(&self.temp, &self.target, libc::RENAME_NOREPLACE)?,
            (CopyKind::File, _) => fs::rename(&self.temp, &self.target)
                .map_err(|e| context(e, "renaming", &self.target))?,
        }
        sync_parent(&self.target)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = match fs::symlink_metadata(&self.temp) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&self.temp),
            Ok(_) => fs::remove_file(&self.temp),
            Err(_) => Ok(()),
        };
    }
}

/// A fresh name in `target`'s directory, hidden and recognisable: `.NAME.smolvm-cp-PID-N`.
fn temp_name(target: &Path) -> io::Result<PathBuf> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let name = target
        .file_name()
        .ok_or_else(|| invalid(format!("{} has no file name", target.display())))?;
    let parent = parent_of(target);
    if !parent.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "the directory {} does not exist: create it first",
                parent.display()
            ),
        ));
    }
    Ok(parent.join(format!(
        ".{}.smolvm-cp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )))
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn rename2(from: &Path, to: &Path, flags: libc::c_uint) -> io::Result<()> {
    let (f, t) = (cstring(from)?, cstring(to)?);
    // SAFETY: two valid NUL-terminated paths, relative to the working directory.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            flags,
        )
    };
    if r < 0 {
        return Err(context(io::Error::last_os_error(), "renaming onto", to));
    }
    Ok(())
}

fn cstring(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| invalid(format!("{p:?} contains a NUL")))
}

fn sync_parent(path: &Path) -> io::Result<()> {
    let dir = parent_of(path);
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| context(e, "syncing", dir))
}

/// Receives a file of `mode` (and `size`, when known) for `target`: written and fsynced
/// under a temporary name.
pub fn receive_file(
    target: &Path,
    mode: u32,
    size: Option<u64>,
    data: &mut impl BufRead,
) -> io::Result<Staged> {
    let staged = Staged::new(target, CopyKind::File)?;
    let mut received = 0;
    let mut file = OpenOptions::new()
        .write(true)
        .open(&staged.temp)
        .map_err(|e| context(e, "opening", &staged.temp))?;
    let write_err = |e| context(e, "writing", target);
    loop {
        let chunk = data.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        file.write_all(chunk).map_err(write_err)?;
        let n = chunk.len();
        data.consume(n);
        received += n as u64;
    }
    if let Some(size) = size.filter(|&s| s != received) {
        return Err(invalid(format!(
            "{}: received {received} bytes where {size} were announced; nothing was changed",
            target.display(),
        )));
    }
    file.set_permissions(fs::Permissions::from_mode(mode & MODE_MASK))
        .map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    Ok(staged)
}

/// Receives a directory tree of `mode` for `target` from a tar stream: extracted safely into
/// a temporary directory, every file fsynced.
pub fn receive_dir(target: &Path, mode: u32, data: &mut impl Read) -> io::Result<Staged> {
    let staged = Staged::new(target, CopyKind::Dir)?;
    extract(&staged.temp, data).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("extracting into {}: {e}", target.display()),
        )
    })?;
    fs::set_permissions(&staged.temp, fs::Permissions::from_mode(mode & MODE_MASK))
        .map_err(|e| context(e, "setting the mode of", target))?;
    File::open(&staged.temp)
        .and_then(|d| d.sync_all())
        .map_err(|e| context(e, "syncing", target))?;
    Ok(staged)
}

/// Extracts a tar stream below `root` (an empty directory of ours), trusting nothing in it.
fn extract(root: &Path, data: &mut impl Read) -> io::Result<()> {
    let mut archive = tar::Archive::new(data);
    let mut dirs: Vec<(PathBuf, u32)> = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = entry.path()?.into_owned();
        let rel = relative(&name)?;
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            continue;
        }
        let mode = entry.header().mode()? & MODE_MASK;
        let path = root.join(&rel);
        if rel.as_os_str().is_empty() {
            if kind.is_dir() {
                continue; // the root itself: its mode travels in the request
            }
            return Err(invalid(format!("entry {name:?} has an empty path")));
        }
        make_parents(root, &rel)?;
        let bad = |what: &str| invalid(format!("{}: {what}", name.display()));
        if kind.is_dir() {
            match fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(bad("a directory entry where a non-directory was")),
                Err(_) => fs::create_dir(&path)?,
            }
            dirs.push((path, mode));
            continue;
        }
        remove_non_dir(&path).map_err(|_| bad("replaces a directory"))?;
        if kind.is_file() || kind == tar::EntryType::Continuous {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW)
                .mode(0o600)
                .open(&path)?;
            let mut written = 0;
            loop {
                let n = entry.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                file.write_all(&buf[..n])?;
                written += n as u64;
            }
            if written != entry.size() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{}: the stream ends inside this file", name.display()),
                ));
            }
            file.set_permissions(fs::Permissions::from_mode(mode))?;
            if let Ok(mtime) = entry.header().mtime() {
                let _ = file
                    .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime));
            }
            file.sync_all()?;
        } else if kind.is_symlink() {
            let to = entry
                .link_name()?
                .ok_or_else(|| bad("a symlink without a target"))?;
            // The target is only data: nothing below is ever created through a symlink.
            symlink(&to, &path)?;
        } else if kind.is_hard_link() {
            let to = entry
                .link_name()?
                .ok_or_else(|| bad("a hardlink without a target"))?;
            let to_rel = relative(&to)?;
            make_parents_exist(root, &to_rel)?;
            let existing = root.join(&to_rel);
            if !fs::symlink_metadata(&existing).is_ok_and(|m| m.is_file()) {
                return Err(bad(&format!(
                    "a hardlink to {}, which is not a regular file extracted before it",
                    to.display()
                )));
            }
            fs::hard_link(&existing, &path)?;
        } else {
            return Err(bad(&format!(
                "{kind:?} entries (device nodes, FIFOs, sockets) are not copied"
            )));
        }
    }
    // Modes last (deepest first), so a read-only directory can still be filled.
    for (dir, mode) in dirs.iter().rev() {
        fs::set_permissions(dir, fs::Permissions::from_mode(*mode))?;
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// `name` as a relative path that stays below the extraction root.
fn relative(name: &Path) -> io::Result<PathBuf> {
    let mut rel = PathBuf::new();
    for c in name.components() {
        match c {
            Component::Normal(part) => rel.push(part),
            Component::CurDir => {}
            _ => {
                return Err(invalid(format!(
                    "entry {} leaves the destination (absolute, or with `..`)",
                    name.display()
                )));
            }
        }
    }
    Ok(rel)
}

/// Creates the missing parents of `rel` below `root`; every existing one must be a real
/// directory (never a symlink), so nothing is written outside `root`.
fn make_parents(root: &Path, rel: &Path) -> io::Result<()> {
    let mut dir = root.to_path_buf();
    for part in rel.parent().into_iter().flat_map(Path::components) {
        dir.push(part);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(through_non_dir(rel, &dir, root)),
            Err(_) => fs::create_dir(&dir)?,
        }
    }
    Ok(())
}

/// Like [`make_parents`] but creates nothing: for the target of a hardlink.
fn make_parents_exist(root: &Path, rel: &Path) -> io::Result<()> {
    let mut dir = root.to_path_buf();
    for part in rel.parent().into_iter().flat_map(Path::components) {
        dir.push(part);
        if !fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
            return Err(through_non_dir(rel, &dir, root));
        }
    }
    Ok(())
}

fn through_non_dir(rel: &Path, dir: &Path, root: &Path) -> io::Error {
    invalid(format!(
        "entry {} goes through {}, which is not a directory (a symlink?)",
        rel.display(),
        dir.strip_prefix(root).unwrap_or(dir).display()
    ))
}

/// A later entry replaces an earlier one of the same name, as tar does; never a directory.
fn remove_non_dir(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Err(io::ErrorKind::IsADirectory.into()),
        Ok(_) => fs::remove_file(path),
        Err(_) => Ok(()),
    }
}

/// What `send` will send from `src`: its kind, mode and (for a file) size.
pub fn describe(src: &Path) -> io::Result<(CopyKind, u32, Option<u64>)> {
    let meta = fs::metadata(src).map_err(|e| context(e, "reading", src))?;
    let mode = meta.mode() & MODE_MASK;
    if meta.is_dir() {
        Ok((CopyKind::Dir, mode, None))
    } else if meta.is_file() {
        Ok((CopyKind::File, mode, Some(meta.len())))
    } else {
        Err(invalid(format!(
            "{} is not a regular file or a directory (devices, FIFOs and sockets are not copied)",
            src.display()
        )))
    }
}

/// Writes `src` to `out`: a file's bytes, or a directory's contents as a tar stream.
pub fn send(src: &Path, kind: CopyKind, out: &mut impl Write) -> io::Result<()> {
    match kind {
        CopyKind::File => {
            let mut file = Exact::open(src)?;
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                out.write_all(&buf[..n])?;
            }
        }
        CopyKind::Dir => {
            let mut tar = tar::Builder::new(out);
            add_tree(&mut tar, src, Path::new(""), None)?;
            tar.finish()
        }
    }
}

/// The directory `src` as a tar stream for a root filesystem image: only what lies on its
/// own filesystem (a mount point below it becomes an empty directory), with device nodes
/// and FIFOs kept (sockets are skipped: they are not files one can pack).
pub fn send_snapshot(src: &Path, out: &mut impl Write) -> io::Result<()> {
    let dev = fs::metadata(src)
        .map_err(|e| context(e, "reading", src))?
        .dev();
    let mut tar = tar::Builder::new(out);
    add_tree(&mut tar, src, Path::new(""), Some(dev))?;
    tar.finish()
}

/// A file read for exactly the size it had when opened: one that shrinks while being copied
/// is an error, not a short or corrupt copy (a tar header already announced its size).
struct Exact {
    file: io::Take<File>,
    left: u64,
    path: PathBuf,
}

impl Exact {
    fn open(path: &Path) -> io::Result<Exact> {
        let file = File::open(path).map_err(|e| context(e, "opening", path))?;
        let size = file.metadata()?.len();
        Ok(Exact {
            file: file.take(size),
            left: size,
            path: path.to_path_buf(),
        })
    }
}

impl Read for Exact {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self
            .file
            .read(buf)
            .map_err(|e| context(e, "reading", &self.path))?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(invalid(format!(
                "{} shrank while being copied",
                self.path.display()
            )));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Appends `dir`'s entries under `rel`. With `one_fs`, a snapshot of that device: other
/// filesystems are not entered, special files are kept.
fn add_tree<W: Write>(
    tar: &mut tar::Builder<W>,
    dir: &Path,
    rel: &Path,
    one_fs: Option<u64>,
) -> io::Result<()> {
    let mut entries = fs::read_dir(dir)
        .and_then(|d| d.collect::<io::Result<Vec<_>>>())
        .map_err(|e| context(e, "reading the directory", dir))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let name = rel.join(e.file_name());
        let meta = fs::symlink_metadata(&path).map_err(|e| context(e, "reading", &path))?;
        let ft = meta.file_type();
        if meta.is_dir() {
            tar.append_data(&mut header_for(&meta, 0), &name, io::empty())?;
            if one_fs.is_none_or(|dev| meta.dev() == dev) {
                add_tree(tar, &path, &name, one_fs)?;
            }
        } else if meta.is_file() {
            let file = Exact::open(&path)?;
            tar.append_data(&mut header_for(&meta, file.left), &name, file)?;
        } else if ft.is_symlink() {
            let to = fs::read_link(&path).map_err(|e| context(e, "reading the symlink", &path))?;
            tar.append_link(&mut header_for(&meta, 0), &name, to)?;
        } else if one_fs.is_some() {
            if ft.is_socket() {
                continue; // meaningless in an image
            }
            let mut h = header_for(&meta, 0);
            if ft.is_char_device() || ft.is_block_device() {
                let (major, minor) = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
                h.set_device_major(major)?;
                h.set_device_minor(minor)?;
            }
            tar.append_data(&mut h, &name, io::empty())?;
        } else {
            return Err(invalid(format!(
                "{} is a device node, FIFO or socket: these are not copied",
                path.display()
            )));
        }
    }
    Ok(())
}

fn header_for(meta: &Metadata, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_metadata_in_mode(meta, tar::HeaderMode::Complete);
    h.set_size(size);
    h
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// `e`, saying what was being done to which path.
pub fn context(e: io::Error, doing: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{doing} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar entry written byte by byte, so it can say what no honest builder would.
    fn raw_entry(ar: &mut Vec<u8>, name: &str, kind: tar::EntryType, link: &str, data: &[u8]) {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        ar.extend_from_slice(h.as_bytes());
        ar.extend_from_slice(data);
        ar.resize(ar.len().div_ceil(512) * 512, 0);
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn hostile_tars_are_refused_and_nothing_lands_outside() {
        use tar::EntryType as T;
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("victim"), b"precious").unwrap();
        let parent = dir.path().join("parent");
        fs::create_dir(&parent).unwrap();
        let out = outside.to_str().unwrap().to_string();
        let victim = format!("{out}/victim");
        // (what, entries as (name, type, link target), what the error must say)
        type Entries<'a> = Vec<(&'a str, T, &'a str)>;
        let cases: Vec<(&str, Entries, &str)> = vec![
            (
                "dot-dot",
                vec![("../outside/evil", T::Regular, "")],
                "leaves the destination",
            ),
            (
                "absolute",
                vec![(victim.as_str(), T::Regular, "")],
                "leaves the destination",
            ),
            (
                "through a symlink",
                vec![
                    ("link", T::Symlink, out.as_str()),
                    ("link/evil", T::Regular, ""),
                ],
                "goes through link",
            ),
            (
                "through a relative symlink",
                vec![
                    ("up", T::Symlink, "../outside"),
                    ("up/victim", T::Regular, ""),
                ],
                "goes through up",
            ),
            (
                "hardlink with dot-dot",
                vec![("h", T::Link, "../outside/victim")],
                "leaves the destination",
            ),
            (
                "absolute hardlink",
                vec![("h", T::Link, victim.as_str())],
                "leaves the destination",
            ),
            (
                "hardlink to a symlink pointing out",
                vec![("s", T::Symlink, victim.as_str()), ("h", T::Link, "s")],
                "not a regular file",
            ),
            (
                "hardlink through a symlink",
                vec![("s", T::Symlink, out.as_str()), ("h", T::Link, "s/victim")],
                "goes through s",
            ),
            ("device node", vec![("null", T::Char, "")], "not copied"),
            ("fifo", vec![("fifo", T::Fifo, "")], "not copied"),
        ];
        for (what, entries, expected) in cases {
            let mut ar = Vec::new();
            for (name, kind, link) in entries {
                raw_entry(
                    &mut ar,
                    name,
                    kind,
                    link,
                    if kind == T::Regular { b"evil" } else { b"" },
                );
            }
            ar.extend_from_slice(&[0; 1024]);
            let target = parent.join("copy");
            let err = receive_dir(&target, 0o755, &mut &ar[..]).unwrap_err();
            assert!(err.to_string().contains(expected), "{what}: {err}");
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{what}: {err}");
            assert_eq!(names(&outside), ["victim"], "{what}: wrote outside");
            assert_eq!(
                fs::read(outside.join("victim")).unwrap(),
                b"precious",
                "{what}"
            );
            assert!(
                names(&parent).is_empty(),
                "{what}: left {:?}",
                names(&parent)
            );
        }
    }

    #[test]
    fn trees_round_trip_with_modes_symlinks_hardlinks_and_empty_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("a/b/c")).unwrap();
        fs::create_dir(src.join("empty")).unwrap();
        fs::write(src.join("a/b/c/deep.txt"), b"deep").unwrap();
        fs::write(src.join("run.sh"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(src.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(src.join("secret"), vec![7u8; 300_000]).unwrap();
        fs::set_permissions(src.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(src.join("a/b"), fs::Permissions::from_mode(0o750)).unwrap();
        symlink("a/b/c/deep.txt", src.join("link")).unwrap();
        symlink("/nowhere/at/all", src.join("dangling")).unwrap();
        let long = "n".repeat(120);
        fs::write(src.join("a").join(&long), b"long name").unwrap();

        let mut stream = Vec::new();
        send(&src, CopyKind::Dir, &mut stream).unwrap();
        let target = dir.path().join("dst");
        let staged = receive_dir(&target, 0o711, &mut &stream[..]).unwrap();
        assert!(!target.exists(), "nothing is in place before the commit");
        staged.commit().unwrap();

        assert_eq!(mode(&target), 0o711);
        assert_eq!(fs::read(target.join("a/b/c/deep.txt")).unwrap(), b"deep");
        assert_eq!(
            fs::read(target.join("a").join(&long)).unwrap(),
            b"long name"
        );
        assert_eq!(fs::read(target.join("secret")).unwrap(), vec![7u8; 300_000]);
        assert_eq!(mode(&target.join("run.sh")), 0o755);
        assert_eq!(mode(&target.join("secret")), 0o600);
        assert_eq!(mode(&target.join("a/b")), 0o750);
        assert_eq!(
            fs::read_link(target.join("link")).unwrap(),
            Path::new("a/b/c/deep.txt")
        );
        assert_eq!(
            fs::read_link(target.join("dangling")).unwrap(),
            Path::new("/nowhere/at/all")
        );
        assert!(names(&target.join("empty")).is_empty());
        assert_eq!(names(dir.path()), ["dst", "src"], "no temporaries left");

        // Hardlinks to earlier entries are kept as hardlinks.
        let mut ar = Vec::new();
        raw_entry(&mut ar, "f", tar::EntryType::Regular, "", b"shared");
        raw_entry(&mut ar, "g", tar::EntryType::Link, "f", b"");
        ar.extend_from_slice(&[0; 1024]);
        let linked = dir.path().join("linked");
        receive_dir(&linked, 0o755, &mut &ar[..])
            .unwrap()
            .commit()
            .unwrap();
        assert_eq!(fs::read(linked.join("g")).unwrap(), b"shared");
        assert_eq!(fs::metadata(linked.join("g")).unwrap().nlink(), 2);
    }

    #[test]
    fn replacing_is_atomic_and_failures_leave_the_old_destination() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        fs::write(&file, b"old").unwrap();

        // A short stream, or a staged copy dropped before its commit, changes nothing.
        let err = receive_file(&file, 0o644, Some(10), &mut &b"new"[..]).unwrap_err();
        assert!(err.to_string().contains("3 bytes where 10"), "{err}");
        drop(receive_file(&file, 0o644, Some(3), &mut &b"new"[..]).unwrap());
        assert_eq!(fs::read(&file).unwrap(), b"old");
        assert_eq!(names(dir.path()), ["file"]);

        let staged = receive_file(&file, 0o4751, Some(3), &mut &b"new"[..]).unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"old", "in place only on commit");
        staged.commit().unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"new");
        assert_eq!(mode(&file), 0o751, "the set-user-ID bit is not copied");

        // A directory replaces a directory by exchange; the old tree is removed.
        let tree = dir.path().join("tree");
        fs::create_dir(&tree).unwrap();
        fs::write(tree.join("old-file"), b"old").unwrap();
        let src = dir.path().join("src");
        fs::create_dir(&src).unwrap();
        fs::write(src.join("new-file"), vec![1u8; 100_000]).unwrap();
        let mut stream = Vec::new();
        send(&src, CopyKind::Dir, &mut stream).unwrap();
        // Cut in the middle of the file's data: an error, and the old tree stays.
        let err = receive_dir(&tree, 0o755, &mut &stream[..50_000]).unwrap_err();
        assert!(err.to_string().contains("ends inside this file"), "{err}");
        assert_eq!(names(&tree), ["old-file"]);
        receive_dir(&tree, 0o755, &mut &stream[..])
            .unwrap()
            .commit()
            .unwrap();
        assert_eq!(names(&tree), ["new-file"]);
        assert_eq!(
            names(dir.path()),
            ["file", "src", "tree"],
            "old tree and temporaries gone"
        );

        // Kinds are not mixed up, and the error says which path.
        let err = receive_file(&tree, 0o644, None, &mut &b"x"[..]).unwrap_err();
        assert!(err.to_string().contains("is a directory"), "{err}");
        let err = receive_dir(&file, 0o755, &mut &stream[..]).unwrap_err();
        assert!(err.to_string().contains("is not a directory"), "{err}");
        let err = receive_file(
            &dir.path().join("no/such/dir/f"),
            0o644,
            None,
            &mut &b""[..],
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("no/such/dir does not exist"),
            "{err}"
        );
    }

    #[test]
    fn an_existing_directory_receives_the_copy_under_the_source_name() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            target(dir.path(), "f.txt").unwrap(),
            dir.path().join("f.txt")
        );
        let new = dir.path().join("new");
        assert_eq!(target(&new, "f.txt").unwrap(), new);
        for bad in ["", "..", "a/b", "/"] {
            let err = target(dir.path(), bad).unwrap_err();
            assert!(
                err.to_string().contains("name the destination"),
                "{bad:?}: {err}"
            );
        }
    }
}
