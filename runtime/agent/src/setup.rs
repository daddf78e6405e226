//! Assembling the root filesystem commands run in: a read-only lower layer, a writable
//! upper layer, overlayfs on top, and the pseudo-filesystems and /etc files a process expects.

use crate::sys::{self, mount};
use crate::{disk, rootpath};
use smolvm_protocol::{Lower, Mount, Setup, ShareFs, Upper};
use std::path::{Path, PathBuf};

/// Where the built-in busybox userland lives in the initramfs.
const BARE_ROOT: &str = "/rootfs";
const LOWER: &str = "/smolvm/lower";
const UPPER: &str = "/smolvm/upper";
/// The root commands run in.
pub const ROOT: &str = "/smolvm/root";
/// 9p mount options. 512000 bytes is the largest message the 6.1 kernel's virtio transport
/// takes (more is clamped), and bigger messages are what make 9p reads fast. `cache=mmap`
/// caches nothing but what shared mmap needs, so every read and stat goes to the host and
/// sees its changes at once (live sharing), while programs that mmap files still work.
const NINEP_OPTIONS: &str = "trans=virtio,version=9p2000.L,msize=512000,cache=mmap";
/// Guest directories a share may not cover (the host refuses them too).
const RESERVED: [&str; 3] = ["proc", "sys", "dev"];

/// What `apply` built: where commands run, and which mounts hold persistent data.
pub struct Root {
    pub path: PathBuf,
    pub persistent: Vec<PathBuf>,
}

pub fn apply(setup: &Setup) -> Result<Root, String> {
    crate::init::set_hostname(&setup.hostname);
    if let Some(net) = &setup.network {
        crate::net::configure(net).map_err(|e| format!("configuring the network: {e}"))?;
    }
    let lower = match &setup.lower {
        Lower::Bare => PathBuf::from(BARE_ROOT),
        Lower::Disk { serial, fstype } => {
            let device = disk::by_serial(serial)?;
            mount(
                &device.to_string_lossy(),
                Path::new(LOWER),
                fstype,
                libc::MS_RDONLY,
                "",
            )
            .map_err(|e| e.to_string())?;
            PathBuf::from(LOWER)
        }
    };
    match &setup.upper {
        Upper::Tmpfs => {
            mount("tmpfs", Path::new(UPPER), "tmpfs", 0, "mode=0755").map_err(|e| e.to_string())?
        }
        Upper::Disk { serial } => mount_ext4(serial, Path::new(UPPER))?,
    }
    let (data, work) = (Path::new(UPPER).join("data"), Path::new(UPPER).join("work"));
    for d in [&data, &work] {
        std::fs::create_dir_all(d).map_err(|e| format!("create {}: {e}", d.display()))?;
    }
    let root = PathBuf::from(ROOT);
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        data.display(),
        work.display()
    );
    mount("overlay", &root, "overlay", 0, &opts).map_err(|e| e.to_string())?;
    inner_mounts(&root).map_err(|e| e.to_string())?;
    write_etc(
        &root,
        &setup.hostname,
        &crate::net::resolv_conf(setup.network.as_ref()),
    )
    .map_err(|e| format!("writing /etc files: {e}"))?;
    let workspace = root.join("workspace");
    std::fs::create_dir_all(&workspace).map_err(|e| format!("create /workspace: {e}"))?;
    open_up_when_fresh(&workspace);
    let mut persistent = Vec::new();
    if let Upper::Disk { .. } = setup.upper {
        persistent.push(PathBuf::from(UPPER));
    }
    if let Some(serial) = &setup.workspace {
        mount_ext4(serial, &workspace)?;
        open_up_when_fresh(&workspace);
        persistent.insert(0, workspace);
    }
    for m in &setup.mounts {
        mount_share(&root, m).map_err(|e| format!("volume {}: {e}", m.guest_path))?;
    }
    Ok(Root {
        path: root,
        persistent,
    })
}

/// `/workspace` belongs to whoever runs commands in the machine, whatever the image's user:
/// like /tmp it is world-writable with the sticky bit. Only a fresh one (root's, 0755, empty
/// but for lost+found) is changed, so a mode the user set is kept.
fn open_up_when_fresh(dir: &Path) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Ok(meta) = std::fs::metadata(dir) else {
        return;
    };
    let fresh = meta.uid() == 0
        && meta.mode() & 0o7777 == 0o755
        && std::fs::read_dir(dir)
            .is_ok_and(|mut d| d.all(|e| e.is_ok_and(|e| e.file_name() == "lost+found")));
    if fresh {
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1777));
    }
}

/// Mounts a host share at its guest path inside `root`, creating the mount point. The path
/// is resolved inside the root, so an image's symlink cannot send it elsewhere.
fn mount_share(root: &Path, m: &Mount) -> Result<(), String> {
    let at = rootpath::resolve(root, &m.guest_path);
    let inside = at.strip_prefix(root).unwrap_or(&at);
    let top = inside.components().next().map(|c| c.as_os_str());
    if top.is_none_or(|t| RESERVED.iter().any(|r| t == *r)) {
        return Err(format!(
            "the path leads to /{} in the image (through a symlink); choose another guest path",
            inside.display()
        ));
    }
    let (fstype, options) = match m.fs {
        ShareFs::NineP => ("9p", NINEP_OPTIONS),
        ShareFs::Virtiofs => ("virtiofs", ""),
    };
    let flags = if m.read_only { libc::MS_RDONLY } else { 0 };
    mount(&m.tag, &at, fstype, flags, options).map_err(|e| e.to_string())
}

/// Mounts a persistent ext4 disk and grows its filesystem to the disk's size.
fn mount_ext4(serial: &str, at: &Path) -> Result<(), String> {
    let device = disk::by_serial(serial)?;
    mount(&device.to_string_lossy(), at, "ext4", libc::MS_NOATIME, "")
        .map_err(|e| e.to_string())?;
    disk::grow_ext4(&device, at).map_err(|e| e.to_string())?;
    Ok(())
}

fn inner_mounts(root: &Path) -> std::io::Result<()> {
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount("proc", &root.join("proc"), "proc", flags, "")?;
    mount("sysfs", &root.join("sys"), "sysfs", flags, "")?;
    mount(
        "cgroup2",
        &root.join("sys/fs/cgroup"),
        "cgroup2",
        flags,
        "nsdelegate",
    )?;
    sys::bind(Path::new("/dev"), &root.join("dev"), true)?;
    mount(
        "tmpfs",
        &root.join("run"),
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=0755",
    )?;
    Ok(())
}

fn write_etc(root: &Path, hostname: &str, resolv_conf: &str) -> std::io::Result<()> {
    let etc = root.join("etc");
    std::fs::create_dir_all(&etc)?;
    let files = [
        ("hostname", format!("{hostname}\n")),
        (
            "hosts",
            format!(
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
            ),
        ),
        ("resolv.conf", resolv_conf.to_string()),
    ];
    for (name, content) in files {
        let path = etc.join(name);
        // Images often make these symlinks into /run; replace them with real files.
        if path
            .symlink_metadata()
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false)
        {
            std::fs::remove_file(&path)?;
        }
        std::fs::write(&path, content)?;
    }
    Ok(())
}
