//! Early boot: the filesystems every Linux user space expects, and a console for messages.

use crate::sys::{self, mount};
use std::os::fd::AsRawFd;
use std::path::Path;

const NOSUID: libc::c_ulong = libc::MS_NOSUID;
const NODEV: libc::c_ulong = libc::MS_NODEV;
const NOEXEC: libc::c_ulong = libc::MS_NOEXEC;

/// Mounts the agent's own pseudo-filesystems. Errors are fatal: without them nothing works.
pub fn early_mounts() -> std::io::Result<()> {
    mount(
        "proc",
        Path::new("/proc"),
        "proc",
        NOSUID | NODEV | NOEXEC,
        "",
    )?;
    mount(
        "sysfs",
        Path::new("/sys"),
        "sysfs",
        NOSUID | NODEV | NOEXEC,
        "",
    )?;
    mount(
        "devtmpfs",
        Path::new("/dev"),
        "devtmpfs",
        NOSUID,
        "mode=0755",
    )?;
    console_to_stdio();
    mount(
        "devpts",
        Path::new("/dev/pts"),
        "devpts",
        NOSUID | NOEXEC,
        "gid=5,mode=0620,ptmxmode=0666",
    )?;
    mount(
        "tmpfs",
        Path::new("/dev/shm"),
        "tmpfs",
        NOSUID | NODEV,
        "mode=1777",
    )?;
    mount(
        "tmpfs",
        Path::new("/tmp"),
        "tmpfs",
        NOSUID | NODEV,
        "mode=1777",
    )?;
    mount(
        "tmpfs",
        Path::new("/run"),
        "tmpfs",
        NOSUID | NODEV,
        "mode=0755",
    )?;
    mount(
        "cgroup2",
        Path::new("/sys/fs/cgroup"),
        "cgroup2",
        NOSUID | NODEV | NOEXEC,
        "nsdelegate",
    )?;
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(target, link);
    }
    // Loopback is the only network a VM has without --net.
    crate::net::loopback_up();
    Ok(())
}

/// The initramfs has no /dev/console node, so the kernel starts PID 1 without stdio.
/// Once devtmpfs is mounted, give it one so messages reach the VM console.
fn console_to_stdio() {
    if let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors.
            unsafe { libc::dup2(f.as_raw_fd(), fd) };
        }
    }
}

pub fn set_hostname(name: &str) {
    if let Err(e) = sys::sethostname(name) {
        eprintln!("smolvm-agent: sethostname {name}: {e}");
    }
}

/// The value of `smolvm.<key>=` on the kernel command line.
pub fn cmdline_param(key: &str) -> Option<String> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").ok()?;
    let prefix = format!("smolvm.{key}=");
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&prefix).map(String::from))
}
