//! Private per-VM runtime directories (sockets, console logs), removed when the VM ends.
//!
//! They live under `$XDG_RUNTIME_DIR/smolvm` or `/tmp/smolvm-<uid>` (mode 0700, owned by
//! us). A directory's name carries the owning process id, so one left behind by a process
//! that was killed is swept the next time any smolvm process creates one.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    /// Creates `<base>/<kind>-<pid>-<n>`, sweeping stale siblings first.
    pub fn create(kind: &str) -> io::Result<RunDir> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let base = base_dir()?;
        sweep(&base);
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = base.join(format!("{kind}-{pid}-{n}"));
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(RunDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The private directory for runtime files (0700, ours): `$XDG_RUNTIME_DIR/smolvm` or
/// `/tmp/smolvm-<uid>`.
pub fn base_dir() -> io::Result<PathBuf> {
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let base = match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(d) if d.is_dir() => d.join("smolvm"),
        _ => std::env::temp_dir().join(format!("smolvm-{uid}")),
    };
    match std::fs::DirBuilder::new().mode(0o700).create(&base) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("creating {}: {e}", base.display()),
            ));
        }
    }
    // In a shared /tmp someone else could have made it first: it must be ours and private.
    let meta = std::fs::symlink_metadata(&base)?;
    if !meta.is_dir() || meta.uid() != uid || meta.permissions().mode() & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a private directory owned by uid {uid}; remove it and retry",
                base.display()
            ),
        ));
    }
    Ok(base)
}

/// Removes directories whose owning process no longer exists.
fn sweep(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.split('-').nth(1).and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if !process_alive(pid) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

pub fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 || *libc::__errno_location() == libc::EPERM }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_are_private_removed_on_drop_and_stale_ones_swept() {
        let d = RunDir::create("test").unwrap();
        let path = d.path().to_path_buf();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // A directory left by a process that no longer exists (pid 2^22+1 is above pid_max).
        let stale = path.parent().unwrap().join("test-4194305-0");
        std::fs::create_dir_all(&stale).unwrap();
        let d2 = RunDir::create("test").unwrap();
        assert!(!stale.exists(), "stale directory was not swept");
        assert!(
            path.exists(),
            "a live process's directory must survive the sweep"
        );
        drop(d);
        assert!(!path.exists());
        drop(d2);
    }
}
