//! Thin wrappers over the Linux syscalls PID 1 needs.

use std::ffi::CString;
use std::io;
use std::path::Path;

fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL in paths we build")
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    // A remount changes an existing mount; anything else needs its mount point.
    if flags & libc::MS_REMOUNT == 0 {
        std::fs::create_dir_all(target)?;
    }
    let target_c = cstr(&target.to_string_lossy());
    let data_c = cstr(data);
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    check(unsafe {
        libc::mount(
            cstr(source).as_ptr(),
            target_c.as_ptr(),
            cstr(fstype).as_ptr(),
            flags,
            if data.is_empty() {
                std::ptr::null()
            } else {
                data_c.as_ptr().cast()
            },
        )
    })
    .map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("mount {fstype} on {}: {e}", target.display()),
        )
    })
}

pub fn bind(source: &Path, target: &Path, recursive: bool) -> io::Result<()> {
    let flags = libc::MS_BIND | if recursive { libc::MS_REC } else { 0 };
    mount(&source.to_string_lossy(), target, "", flags, "")
}

pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: pointer and length describe a valid buffer.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })
}

pub fn set_clock(unix_ns: u64) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: (unix_ns / 1_000_000_000) as i64,
        tv_nsec: (unix_ns % 1_000_000_000) as i64,
    };
    // SAFETY: valid timespec pointer.
    check(unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) })
}

/// `CLOCK_BOOTTIME` in microseconds: time since the kernel started.
pub fn boottime_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

pub fn kill(pid: i32, signal: i32) {
    // SAFETY: plain syscall; a stale pid only yields ESRCH.
    unsafe { libc::kill(pid, signal) };
}

/// Stops every process (SIGTERM, up to `grace` to exit, then SIGKILL) and makes the
/// persistent filesystems clean: synced and remounted read-only, so the next boot mounts them
/// without journal recovery.
pub fn quiesce(grace: std::time::Duration, persistent: &[std::path::PathBuf]) {
    kill(-1, libc::SIGTERM);
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline && other_processes_exist() {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    kill(-1, libc::SIGKILL);
    // SAFETY: sync takes no arguments.
    unsafe { libc::sync() };
    for path in persistent {
        let _ = mount("", path, "", libc::MS_REMOUNT | libc::MS_RDONLY, "");
    }
}

/// Whether any process besides PID 1 (and kernel threads) is left.
fn other_processes_exist() -> bool {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            let name = e.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
                return false;
            };
            // Kernel threads have an empty cmdline.
            pid != 1 && std::fs::read(e.path().join("cmdline")).is_ok_and(|c| !c.is_empty())
        })
}

/// Flushes every filesystem and resets the VM, which both VMMs treat as power-off
/// (QEMU runs with `-no-reboot`, libkrun exits on reset). Never returns.
pub fn power_off() -> ! {
    // SAFETY: sync and reboot take no pointers.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    // reboot(2) only returns on error; nothing sensible is left to do but wait.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
