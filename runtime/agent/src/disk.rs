//! Block devices: found by serial number, and ext4 filesystems grown to their disk's size.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `/dev/vdX` whose virtio-blk serial is `serial`. Devices probe before PID 1 starts, but
/// wait a little in case one is still being registered.
pub fn by_serial(serial: &str) -> Result<PathBuf, String> {
    let start = Instant::now();
    loop {
        if let Ok(entries) = std::fs::read_dir("/sys/block") {
            for e in entries.flatten() {
                let found = std::fs::read_to_string(e.path().join("serial")).unwrap_or_default();
                if found.trim_end_matches(['\0', '\n']) == serial {
                    return Ok(Path::new("/dev").join(e.file_name()));
                }
            }
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err(format!("no disk with serial {serial:?} appeared"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
/// `_IOW('f', 16, __u64)`: grow a mounted ext4 filesystem to this many blocks.
const EXT4_IOC_RESIZE_FS: libc::c_ulong = 0x4008_6610;

/// Grows the ext4 filesystem on `device`, mounted at `mountpoint`, to fill the device.
/// Disks are made from a small template and enlarged on the host; this is where the
/// filesystem catches up (online, so no tool is needed in the guest). Returns the new
/// size in bytes when it grew.
pub fn grow_ext4(device: &Path, mountpoint: &Path) -> io::Result<Option<u64>> {
    let mut dev = File::open(device)?;
    let mut size = 0u64;
    // SAFETY: BLKGETSIZE64 writes a u64 through the pointer.
    if unsafe { libc::ioctl(dev.as_raw_fd(), BLKGETSIZE64, &mut size) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // The superblock sits at byte 1024: block count (lo at 4, hi at 0x150), log block size at 24.
    let mut sb = [0u8; 1024];
    dev.seek(SeekFrom::Start(1024))?;
    dev.read_exact(&mut sb)?;
    let u32_at = |o: usize| u32::from_le_bytes(sb[o..o + 4].try_into().unwrap()) as u64;
    if u16::from_le_bytes([sb[0x38], sb[0x39]]) != 0xEF53 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} holds no ext4 filesystem", device.display()),
        ));
    }
    let block_size = 1024u64 << u32_at(24);
    let blocks = u32_at(4) | (u32_at(0x150) << 32);
    let wanted = size / block_size;
    if wanted <= blocks {
        return Ok(None);
    }
    let dir = File::open(mountpoint)?;
    // SAFETY: the ioctl reads a u64 block count through the pointer.
    if unsafe { libc::ioctl(dir.as_raw_fd(), EXT4_IOC_RESIZE_FS, &wanted) } < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!(
                "growing the filesystem on {} to {size} bytes: {e}",
                device.display()
            ),
        ));
    }
    Ok(Some(size))
}
