//! Writing packs, deterministically: the same manifest and section bytes always give the
//! same file.

use std::fs::{File, Permissions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::{
    ALIGN, Compression, FOOTER_LEN, Footer, FormatError, FormatVersion, MAX_SECTION_SIZE, Manifest,
    SectionEntry, SectionKind, digest_string,
};

/// zstd level of compressed sections: zstd's default, as for the root filesystem image.
const ZSTD_LEVEL: i32 = 3;
/// Most zstd worker threads. The output does not depend on the number (see
/// `compressed_output_does_not_depend_on_workers`); each costs tens of MiB of buffers,
/// and past a few the SHA-256 on the calling thread is the bottleneck.
const MAX_WORKERS: u32 = 4;

/// Where a section's data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SectionSource {
    /// A file, streamed: for large sections.
    File(PathBuf),
    /// Bytes in memory: for small sections.
    Bytes(Vec<u8>),
}

/// One section to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionInput {
    /// What it holds.
    pub kind: SectionKind,
    /// Its uncompressed data.
    pub source: SectionSource,
    /// How to store it. [`Compression::None`] lets a VMM read it in place.
    pub compression: Compression,
}

/// What [`write_pack`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteSummary {
    /// Each section in file order: kind, stored length, uncompressed length.
    pub sections: Vec<(SectionKind, u64, u64)>,
    /// Length of the file.
    pub total: u64,
}

/// Writes a pack to `out`: `sections` in [`SectionKind`] order whatever their order in
/// the list, then `manifest` with its `sections` and `format_version` filled in, then the
/// footer.
///
/// Sections are streamed, hashing as they are copied or compressed, so memory use does
/// not grow with their size. Compressed sections use zstd level 3 on up to four worker
/// threads with the frame's content size set and no checksum: the bytes do not depend on
/// the machine. Nothing here reads the clock: `manifest.created` is the caller's.
///
/// The pack is written to a temporary file in `out`'s directory, synced, and renamed over
/// `out`, so `out` is either its old self or the complete pack, even after a crash. The
/// file's mode is 0644 less the umask.
pub fn write_pack(
    out: &Path,
    mut manifest: Manifest,
    mut sections: Vec<SectionInput>,
) -> Result<WriteSummary, FormatError> {
    sections.sort_by_key(|s| s.kind);
    for pair in sections.windows(2) {
        if pair[0].kind == pair[1].kind {
            return Err(FormatError::DuplicateSection { kind: pair[0].kind });
        }
    }
    for kind in SectionKind::REQUIRED {
        if !sections.iter().any(|s| s.kind == kind) {
            return Err(FormatError::MissingSection { kind });
        }
    }

    let out_err = |source| FormatError::Output {
        path: out.to_path_buf(),
        source,
    };
    let dir = match out.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".smolmachine-")
        .suffix(".tmp")
        .permissions(Permissions::from_mode(0o644))
        .tempfile_in(dir)
        .map_err(out_err)?;
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_WORKERS as usize) as u32;

    let mut w = Counted {
        inner: BufWriter::with_capacity(1 << 20, tmp.as_file()),
        len: 0,
    };
    let mut entries = Vec::with_capacity(sections.len());
    for input in sections {
        let padding = w.len.next_multiple_of(ALIGN) - w.len;
        io::copy(&mut io::repeat(0).take(padding), &mut w).map_err(out_err)?;
        entries.push(write_section(input, &mut w, workers, out)?);
    }

    manifest.format_version = FormatVersion::CURRENT;
    manifest.sections = entries;
    let json = serde_json::to_vec_pretty(&manifest).expect("a manifest always serializes");
    let footer = Footer {
        manifest_sha256: Sha256::digest(&json).into(),
        manifest_offset: w.len,
        manifest_len: json.len() as u64,
        payload_len: w.len + json.len() as u64 + FOOTER_LEN as u64,
        version: FormatVersion::CURRENT,
    };
    w.write_all(&json).map_err(out_err)?;
    w.write_all(&footer.to_bytes()).map_err(out_err)?;
    w.inner.flush().map_err(out_err)?;
    drop(w);

    tmp.as_file().sync_all().map_err(out_err)?;
    tmp.persist(out).map_err(|e| out_err(e.error))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(out_err)?;
    Ok(WriteSummary {
        sections: manifest
            .sections
            .iter()
            .map(|s| (s.kind, s.length, s.uncompressed_size))
            .collect(),
        total: footer.payload_len,
    })
}

/// Copies one section to `w` at its current position (already aligned) and describes it.
fn write_section<W: Write>(
    input: SectionInput,
    w: &mut Counted<W>,
    workers: u32,
    out: &Path,
) -> Result<SectionEntry, FormatError> {
    let kind = input.kind;
    let (mut reader, len, path): (Box<dyn Read>, u64, Option<&PathBuf>) = match &input.source {
        SectionSource::Bytes(bytes) => (Box::new(&bytes[..]), bytes.len() as u64, None),
        SectionSource::File(path) => {
            let in_err = |source| FormatError::Input {
                kind,
                path: path.clone(),
                source,
            };
            let file = File::open(path).map_err(in_err)?;
            let len = file.metadata().map_err(in_err)?.len();
            (Box::new(file), len, Some(path))
        }
    };
    if len > MAX_SECTION_SIZE {
        return Err(FormatError::TooLarge {
            kind,
            size: len,
            max: MAX_SECTION_SIZE,
        });
    }
    let offset = w.len;
    let c = copy_section(&mut reader, len, input.compression, workers, &mut *w).map_err(
        |e| match (e, path) {
            (CopyError::Write(source), _) => FormatError::Output {
                path: out.to_path_buf(),
                source,
            },
            (CopyError::Read(source), Some(path)) => FormatError::Input {
                kind,
                path: path.clone(),
                source,
            },
            (CopyError::Changed, Some(path)) => FormatError::InputChanged {
                kind,
                path: path.clone(),
                len,
            },
            (CopyError::Read(_) | CopyError::Changed, None) => {
                unreachable!("bytes in memory neither fail to read nor change")
            }
        },
    )?;
    Ok(SectionEntry {
        kind,
        offset,
        length: w.len - offset,
        sha256: digest_string(&c.stored_sha256),
        compression: input.compression,
        uncompressed_size: len,
        uncompressed_sha256: digest_string(&c.uncompressed_sha256),
    })
}

/// Digests of a copied section.
struct Copied {
    stored_sha256: [u8; 32],
    uncompressed_sha256: [u8; 32],
}

/// A copy failed reading the input, writing (or compressing) the output, or found the
/// input's length not the one it had when opened.
enum CopyError {
    Read(io::Error),
    Write(io::Error),
    Changed,
}

/// Streams `input`, which must be exactly `len` bytes long, to `out`, compressed as
/// asked, hashing both sides.
fn copy_section<W: Write>(
    input: &mut impl Read,
    len: u64,
    compression: Compression,
    workers: u32,
    out: W,
) -> Result<Copied, CopyError> {
    let mut stored = Hashing {
        inner: out,
        hasher: Sha256::new(),
    };
    let mut uncompressed = Sha256::new();
    let mut limited = input.by_ref().take(len);
    let size = match compression {
        Compression::None => pump(&mut limited, &mut uncompressed, &mut stored)?,
        Compression::Zstd => {
            let mut enc = zstd_encoder(&mut stored, len, workers).map_err(CopyError::Write)?;
            let size = pump(&mut limited, &mut uncompressed, &mut enc)?;
            // zstd refuses to end a frame short of the pledged size: check that first.
            if size == len {
                enc.finish().map_err(CopyError::Write)?;
            }
            size
        }
    };
    // A file that shrank, or grew (it would be cut short), is not what was asked for.
    if size != len || input.read(&mut [0]).map_err(CopyError::Read)? != 0 {
        return Err(CopyError::Changed);
    }
    Ok(Copied {
        stored_sha256: stored.hasher.finalize().into(),
        uncompressed_sha256: uncompressed.finalize().into(),
    })
}

/// The fixed zstd parameter set. Multi-threaded output (workers >= 1) is the same for any
/// number of workers but differs from single-threaded output (0 workers), so 0 is never
/// used. The pledged size makes small inputs use small windows and puts the content size
/// in the frame header; with a fixed size it is deterministic too.
fn zstd_encoder<W: Write>(
    out: W,
    len: u64,
    workers: u32,
) -> io::Result<zstd::stream::write::Encoder<'static, W>> {
    let mut enc = zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)?;
    enc.multithread(workers.max(1))?;
    enc.include_checksum(false)?;
    enc.include_contentsize(true)?;
    enc.set_pledged_src_size(Some(len))?;
    Ok(enc)
}

/// Copies `input` to `out`, hashing what it reads; returns the byte count.
fn pump(
    input: &mut impl Read,
    hasher: &mut Sha256,
    out: &mut impl Write,
) -> Result<u64, CopyError> {
    let mut buf = vec![0; 1 << 20];
    let mut total = 0;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(CopyError::Write)?;
        total += n as u64;
    }
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A writer that counts what passes through it: the position in the pack.
struct Counted<W> {
    inner: W,
    len: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compress(data: &[u8], workers: u32) -> Vec<u8> {
        let mut out = Vec::new();
        copy_section(
            &mut &data[..],
            data.len() as u64,
            Compression::Zstd,
            workers,
            &mut out,
        )
        .ok()
        .expect("compresses");
        out
    }

    /// zstd's multi-threaded output depends on its parameters, not on the number of
    /// workers: a pack is the same on a machine with 1 or 64 CPUs. The input spans several
    /// zstd jobs (8 MiB each at level 3), so the workers really split it.
    #[test]
    fn compressed_output_does_not_depend_on_workers() {
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let data: Vec<u8> = (0..20 << 20)
            .map(|i: u32| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Half predictable, half noise: compressible, but not trivially.
                if i.is_multiple_of(2) {
                    (i / 1024) as u8
                } else {
                    x as u8 & 0x0f
                }
            })
            .collect();
        let one = compress(&data, 1);
        assert!(one.len() < data.len() / 2, "{} bytes", one.len());
        for workers in [2, 3, 4] {
            assert!(
                compress(&data, workers) == one,
                "{workers} workers differ from 1"
            );
        }
        assert_eq!(zstd::stream::decode_all(&one[..]).unwrap(), data);
    }
}
