//! Files that must survive: written to a temporary name, synced, renamed.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

fn temp_name(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `bytes` to `path` atomically (0600): a crash leaves the old file or the new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = temp_name(path);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        io::Write::write_all(&mut f, bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => Ok(()),
    }
}

/// A new disk image at `dest` of `size` bytes holding the template's filesystem: only the
/// template's data extents are copied (the rest stays a hole), then the file is extended.
/// The guest grows the filesystem to the disk on its next boot.
pub fn disk_from_template(template: &Path, dest: &Path, size: u64) -> io::Result<()> {
    if dest.exists() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} already exists; a disk is never replaced",
                dest.display()
            ),
        ));
    }
    let src = File::open(template)?;
    let len = src.metadata()?.len();
    if size < len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a disk must be at least {} MiB", len >> 20),
        ));
    }
    let tmp = temp_name(dest);
    let result = (|| {
        let dst = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        copy_data_extents(&src, &dst, len)?;
        dst.set_len(size)?;
        dst.sync_all()?;
        // A link, not a rename: it fails if `dest` appeared meanwhile instead of replacing it.
        std::fs::hard_link(&tmp, dest)?;
        std::fs::remove_file(&tmp)?;
        sync_dir(dest)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Copies the data regions of `src` (found with SEEK_DATA/SEEK_HOLE) to the same offsets
/// in `dst`, leaving holes as holes.
fn copy_data_extents(src: &File, dst: &File, len: u64) -> io::Result<()> {
    let mut pos: i64 = 0;
    while (pos as u64) < len {
        // SAFETY: lseek on a descriptor we hold.
        let data = unsafe { libc::lseek(src.as_raw_fd(), pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                return Ok(()); // only a hole is left
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(src.as_raw_fd(), data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io::Error::last_os_error());
        }
        let (mut off_in, mut off_out) = (data, data);
        while off_in < hole {
            // SAFETY: copy_file_range between our descriptors with valid offset pointers.
            let n = unsafe {
                libc::copy_file_range(
                    src.as_raw_fd(),
                    &mut off_in,
                    dst.as_raw_fd(),
                    &mut off_out,
                    (hole - off_in) as usize,
                    0,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            if n == 0 {
                break;
            }
        }
        pos = hole;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};

    #[test]
    fn disks_keep_the_template_data_and_its_holes() {
        let dir = tempfile::tempdir().unwrap();
        let template = dir.path().join("t.img");
        let mut t = File::create(&template).unwrap();
        t.write_all(b"superblock").unwrap();
        t.seek(SeekFrom::Start(8 << 20)).unwrap();
        t.write_all(b"journal").unwrap();
        t.set_len(16 << 20).unwrap();
        let disk = dir.path().join("d.img");
        disk_from_template(&template, &disk, 1 << 30).unwrap();
        let meta = std::fs::metadata(&disk).unwrap();
        assert_eq!(meta.len(), 1 << 30);
        use std::os::unix::fs::MetadataExt;
        assert!(
            meta.blocks() * 512 < 1 << 20,
            "holes were filled: {} bytes allocated",
            meta.blocks() * 512
        );
        let mut d = File::open(&disk).unwrap();
        let mut buf = [0u8; 10];
        d.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"superblock");
        d.seek(SeekFrom::Start(8 << 20)).unwrap();
        d.read_exact(&mut buf[..7]).unwrap();
        assert_eq!(&buf[..7], b"journal");
        // An existing disk is never replaced, and a disk smaller than the template is refused.
        assert!(disk_from_template(&template, &disk, 1 << 30).is_err());
        let small = disk_from_template(&template, &dir.path().join("s.img"), 1 << 20).unwrap_err();
        assert!(small.to_string().contains("at least 16 MiB"), "{small}");
        assert!(
            std::fs::read_dir(dir.path()).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".tmp-"))
        );
    }
}
