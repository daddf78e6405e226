//! Finding the guest kernel and the agent's initramfs on this host.

use std::path::{Path, PathBuf};
use thiserror::Error;

pub const KERNEL_FILE: &str = "vmlinux";
pub const INITRAMFS_FILE: &str = "initramfs.cpio";

/// The guest-side files every VM boots from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestAssets {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
}

#[derive(Debug, Error)]
#[error(
    "the guest kernel and agent were not found (looked in: {searched}). Build them with ./scripts/setup, or point SMOLVM_GUEST_DIR at a directory holding {KERNEL_FILE} and {INITRAMFS_FILE}"
)]
pub struct AssetsNotFound {
    searched: String,
}

impl GuestAssets {
    /// Looks in `$SMOLVM_GUEST_DIR`, then next to the executable: `../share/smolvm/guest`
    /// (an installed layout) and `../guest` (a cargo `target/` directory).
    pub fn locate() -> Result<GuestAssets, AssetsNotFound> {
        let mut dirs = Vec::new();
        if let Some(d) = std::env::var_os("SMOLVM_GUEST_DIR") {
            dirs.push(PathBuf::from(d));
        } else if let Some(exe_dir) = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_path_buf))
        {
            dirs.push(exe_dir.join("../share/smolvm/guest"));
            dirs.push(exe_dir.join("../guest"));
        }
        dirs.iter()
            .find_map(|d| GuestAssets::in_dir(d))
            .ok_or_else(|| AssetsNotFound {
                searched: dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The assets in `dir`, if both files are there.
    pub fn in_dir(dir: &Path) -> Option<GuestAssets> {
        let a = GuestAssets {
            kernel: dir.join(KERNEL_FILE),
            initramfs: dir.join(INITRAMFS_FILE),
        };
        (a.kernel.is_file() && a.initramfs.is_file()).then(|| GuestAssets {
            kernel: a.kernel.canonicalize().unwrap_or(a.kernel),
            initramfs: a.initramfs.canonicalize().unwrap_or(a.initramfs),
        })
    }
}
