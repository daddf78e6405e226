//! The stub executable packs are appended to: reading it (the ELF image only, without any
//! payload a previous pack left), checking its platform, and writing packed executables.

use crate::format::{self, ALIGN};
use object::{Architecture, Object, ObjectSection, ObjectSegment};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why a stub cannot be used.
#[derive(Debug, Error)]
pub enum StubError {
    /// The file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// To which file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Not an executable this crate knows how to pack into.
    #[error("{path} is not a smolvm stub (an ELF executable): {reason}")]
    NotElf {
        /// The file.
        path: PathBuf,
        /// What the ELF parser said.
        reason: String,
    },
    /// An executable for another CPU.
    #[error("{path} is a stub for {found:?}; packs for this host need an x86_64 stub")]
    WrongPlatform {
        /// The file.
        path: PathBuf,
        /// Its architecture.
        found: Architecture,
    },
}

/// A stub's ELF image: the bytes every packed executable starts with.
pub struct Stub {
    /// The executable without any appended payload.
    pub bytes: Vec<u8>,
    /// How many payload bytes an old pack had left after the image (now removed).
    pub stripped: u64,
}

/// Reads a stub, dropping a payload appended to it before.
pub fn read_stub(path: &Path) -> Result<Stub, StubError> {
    let mut bytes = std::fs::read(path).map_err(|source| StubError::Io {
        action: "read",
        path: path.into(),
        source,
    })?;
    let end = {
        let elf = object::File::parse(&*bytes).map_err(|e| StubError::NotElf {
            path: path.into(),
            reason: e.to_string(),
        })?;
        if elf.architecture() != Architecture::X86_64 {
            return Err(StubError::WrongPlatform {
                path: path.into(),
                found: elf.architecture(),
            });
        }
        image_end(&elf, bytes.len() as u64)
    };
    // Whatever follows the ELF image is an old payload (with its alignment padding).
    let cut = end;
    debug_assert!(format::payload_start(&bytes).is_none_or(|start| start >= end));
    let stripped = bytes.len() as u64 - cut;
    bytes.truncate(cut as usize);
    Ok(Stub { bytes, stripped })
}

/// The end of the ELF image: past every segment, section and header table.
fn image_end(elf: &object::File, file_len: u64) -> u64 {
    let mut end = 0u64;
    for seg in elf.segments() {
        let (off, len) = seg.file_range();
        end = end.max(off + len);
    }
    for sec in elf.sections() {
        if let Some((off, len)) = sec.file_range() {
            end = end.max(off + len);
        }
    }
    if let object::File::Elf64(e) = elf {
        use object::read::elf::FileHeader;
        let header = e.elf_header();
        let endian = e.endian();
        let sh_end = header.e_shoff(endian)
            + u64::from(header.e_shnum(endian)) * u64::from(header.e_shentsize(endian));
        let ph_end = header.e_phoff(endian)
            + u64::from(header.e_phnum(endian)) * u64::from(header.e_phentsize(endian));
        end = end.max(sh_end).max(ph_end);
    }
    end.min(file_len)
}

/// Writes an executable: the stub, then (with a payload) zero padding to a 4 KiB boundary
/// and the pack's bytes, so its sections stay aligned in the file. Atomic, mode 0755.
pub fn write_executable(stub: &Stub, payload: Option<&Path>, out: &Path) -> Result<u64, StubError> {
    let err = |action| {
        move |source| StubError::Io {
            action,
            path: out.into(),
            source,
        }
    };
    let dir = out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".smolvm-exe-")
        .tempfile_in(dir)
        .map_err(err("create a temp file for"))?;
    let f = tmp.as_file_mut();
    f.write_all(&stub.bytes).map_err(err("write"))?;
    let mut len = stub.bytes.len() as u64;
    if let Some(payload) = payload {
        let pad = len.next_multiple_of(ALIGN) - len;
        f.write_all(&vec![0; pad as usize]).map_err(err("write"))?;
        let mut src = std::fs::File::open(payload).map_err(|source| StubError::Io {
            action: "read",
            path: payload.into(),
            source,
        })?;
        len += pad + io::copy(&mut src, f).map_err(err("write"))?;
    }
    f.set_permissions(std::fs::Permissions::from_mode(0o755))
        .map_err(err("set permissions of"))?;
    f.sync_all().map_err(err("sync"))?;
    tmp.persist(out).map_err(|e| err("rename into")(e.error))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err("sync the directory of"))?;
    Ok(len)
}
