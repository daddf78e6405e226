//! Crash-safe file writes: a uniquely named temp file in the target's directory, fsync,
//! rename over the target, fsync the directory. A reader sees the old file or the whole
//! new one, never a half-written one, and concurrent writers never share a temp file.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Temp files start with this, so nothing mistakes them for finished entries.
pub(crate) const TEMP_PREFIX: &str = ".tmp-";

/// A new, empty temp file next to `target`, created with `mode`.
pub(crate) fn create_temp(target: &Path, mode: u32) -> io::Result<(File, PathBuf)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = target.parent().unwrap_or(Path::new("."));
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    let temp = dir.join(format!(
        "{TEMP_PREFIX}{name}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let file = OpenOptions::new()
        .write(true)
        .read(true)
        .create_new(true)
        .mode(mode)
        .open(&temp)?;
    Ok((file, temp))
}

/// Makes the finished temp file `temp` the file at `target`, durably.
pub(crate) fn commit(file: File, temp: &Path, target: &Path) -> io::Result<()> {
    file.sync_all()?;
    drop(file);
    std::fs::rename(temp, target)?;
    if let Some(dir) = target.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically with permissions `mode`.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let (mut file, temp) = create_temp(path, mode)?;
    let written = file
        .write_all(bytes)
        .and_then(|()| commit(file, &temp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

/// Creates `dir` and its parents with `mode` (only the ones it creates).
pub(crate) fn create_dir_all(dir: &Path, mode: u32) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
}

/// An XDG base directory: `$<xdg_var>` when set and non-empty, else `$HOME/<home_subdir>`;
/// `None` when neither is set.
pub(crate) fn xdg_dir(xdg_var: &str, home_subdir: &str) -> Option<PathBuf> {
    resolve_xdg(
        std::env::var_os(xdg_var),
        std::env::var_os("HOME"),
        home_subdir,
    )
}

fn resolve_xdg(
    xdg: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
    home_subdir: &str,
) -> Option<PathBuf> {
    match xdg.filter(|v| !v.is_empty()) {
        Some(dir) => Some(PathBuf::from(dir)),
        None => home.map(|h| PathBuf::from(h).join(home_subdir)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn xdg_variable_wins_over_home() {
        let some = |s: &str| Some(std::ffi::OsString::from(s));
        assert_eq!(
            resolve_xdg(some("/x"), some("/home/u"), ".cache"),
            Some(PathBuf::from("/x"))
        );
        assert_eq!(
            resolve_xdg(some(""), some("/home/u"), ".cache"),
            Some(PathBuf::from("/home/u/.cache")),
            "an empty variable counts as unset, as the XDG spec says"
        );
        assert_eq!(
            resolve_xdg(None, some("/home/u"), ".config"),
            Some(PathBuf::from("/home/u/.config"))
        );
        assert_eq!(resolve_xdg(None, None, ".config"), None);
    }

    #[test]
    fn replaces_whole_files_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.json");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temp file left behind");
    }

    #[test]
    fn failed_write_names_the_error() {
        let err = write_atomic(Path::new("/nonexistent-dir/f"), b"x", 0o600).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
