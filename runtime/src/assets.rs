//! Finding the guest kernel and the agent's initramfs on this host.

use std::path::{Path, PathBuf};
use thiserror::Error;

pub const KERNEL_FILE: &str = "vmlinux";
pub const INITRAMFS_FILE: &str = "initramfs.cpio";
pub const EXT4_TEMPLATE_FILE: &str = "ext4.img";

/// The guest-side files every VM boots from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestAssets {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// An empty ext4 filesystem that writable disks start from.
    pub ext4_template: PathBuf,
}

#[derive(Debug, Error)]
#[error(
    "the guest kernel and agent were not found (looked in: {searched}). Build them with ./scripts/setup, or point SMOLVM_GUEST_DIR at a directory holding {KERNEL_FILE}, {INITRAMFS_FILE} and {EXT4_TEMPLATE_FILE}"
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

    /// What a VM boots from these assets.
    pub fn boot(&self) -> crate::backend::Boot {
        crate::backend::Boot {
            kernel: self.kernel.clone(),
            initramfs: self.initramfs.clone(),
        }
    }

    /// The assets in `dir`, if all the files are there.
    pub fn in_dir(dir: &Path) -> Option<GuestAssets> {
        let file = |name: &str| {
            let p = dir.join(name);
            p.is_file().then(|| p.canonicalize().unwrap_or(p))
        };
        Some(GuestAssets {
            kernel: file(KERNEL_FILE)?,
            initramfs: file(INITRAMFS_FILE)?,
            ext4_template: file(EXT4_TEMPLATE_FILE)?,
        })
    }
}
