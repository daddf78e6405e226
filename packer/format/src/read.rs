//! Reading packs: validation of a whole file's bytes, and [`Pack`], a validated pack file
//! whose sections can be verified, extracted or read in place.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::footer::{check_version, raw_payload_len};
use super::{
    ALIGN, Compression, FOOTER_LEN, Footer, FormatError, MAX_MANIFEST_LEN, MAX_SECTION_SIZE,
    Manifest, SectionEntry, SectionKind, digest_string, sha256_string,
};

/// Whether extracted data is forced to disk before it is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync the file and its directory: the data survives a power loss.
    Synced,
    /// Leave it to the page cache: it survives any process crash, not the kernel's.
    Unsynced,
}

/// Does `bytes` (a whole file) end with a pack footer's magic? Cheap; says nothing about
/// whether the pack is valid.
pub fn has_payload(bytes: &[u8]) -> bool {
    raw_payload_len(bytes).is_some()
}

/// Where the payload appended to `bytes` (a whole file) begins, if the file ends with a
/// footer whose payload length fits in the file. Nothing else is checked, so that an old
/// payload of any version can be stripped from an executable: `&bytes[..start]` is the
/// stub and its padding.
pub fn payload_start(bytes: &[u8]) -> Option<u64> {
    let payload_len = raw_payload_len(bytes)?;
    let file_len = bytes.len() as u64;
    (FOOTER_LEN as u64..=file_len)
        .contains(&payload_len)
        .then(|| file_len - payload_len)
}

/// Validates a whole file's bytes (a sidecar, or an executable with a payload appended)
/// and returns its manifest and the payload's absolute start in `bytes`.
///
/// Checks, in order: the footer (length, magic, major version, reserved bytes); the
/// payload length against the file; the manifest's range (inside the payload, before
/// the footer), size, SHA-256 and JSON; the manifest's version against the footer's;
/// then every section: known kind and compression, well-formed digests, aligned offset,
/// range inside the section area `[0, manifest offset)`, no duplicate kind, no overlap,
/// uncompressed size at most [`MAX_SECTION_SIZE`], size and digests consistent when
/// uncompressed; and kernel and initramfs present. Section contents are not hashed here
/// ([`Pack::verify_section`] does that).
pub fn parse(bytes: &[u8]) -> Result<(Manifest, u64), FormatError> {
    let footer = Footer::from_file_end(bytes)?;
    let file_len = bytes.len() as u64;
    if footer.payload_len < FOOTER_LEN as u64 {
        return Err(FormatError::PayloadTooSmall {
            payload_len: footer.payload_len,
        });
    }
    if footer.payload_len > file_len {
        return Err(FormatError::Truncated {
            payload_len: footer.payload_len,
            file_len,
        });
    }
    let start = file_len - footer.payload_len;
    let limit = footer.payload_len - FOOTER_LEN as u64;
    let manifest_end = footer.manifest_offset.checked_add(footer.manifest_len);
    if manifest_end.is_none_or(|end| end > limit) {
        return Err(FormatError::ManifestOutOfBounds {
            offset: footer.manifest_offset,
            len: footer.manifest_len,
            limit,
        });
    }
    if footer.manifest_len > MAX_MANIFEST_LEN {
        return Err(FormatError::ManifestTooLarge {
            len: footer.manifest_len,
            max: MAX_MANIFEST_LEN,
        });
    }
    // In bounds of `bytes`, checked above: start + offset + len <= start + limit.
    let from = (start + footer.manifest_offset) as usize;
    let json = &bytes[from..from + footer.manifest_len as usize];
    let found = Sha256::digest(json);
    if found[..] != footer.manifest_sha256 {
        return Err(FormatError::ManifestCorrupt {
            expected: digest_string(&footer.manifest_sha256),
            found: digest_string(&found),
        });
    }
    let manifest = parse_manifest(json, &footer)?;
    check_sections(&manifest.sections, footer.manifest_offset)?;
    Ok((manifest, start))
}

/// The part of the manifest read before the rest: its version (a pack of another major
/// may not have the same shape) and the names of section kinds and compressions, so that
/// an unknown one is reported with its section rather than as a bare serde error.
#[derive(Deserialize)]
struct Probe {
    format_version: super::FormatVersion,
    #[serde(default)]
    sections: Vec<ProbeSection>,
}

#[derive(Deserialize)]
struct ProbeSection {
    kind: String,
    compression: String,
}

fn parse_manifest(json: &[u8], footer: &Footer) -> Result<Manifest, FormatError> {
    let probe: Probe = serde_json::from_slice(json).map_err(FormatError::ManifestInvalid)?;
    check_version(probe.format_version)?;
    if probe.format_version != footer.version {
        return Err(FormatError::VersionMismatch {
            footer: footer.version,
            manifest: probe.format_version,
        });
    }
    for s in &probe.sections {
        let Some(kind) = SectionKind::ALL.into_iter().find(|k| k.as_str() == s.kind) else {
            return Err(FormatError::UnknownSectionKind {
                value: s.kind.clone(),
            });
        };
        if !Compression::ALL.iter().any(|c| c.as_str() == s.compression) {
            return Err(FormatError::UnknownCompression {
                kind,
                value: s.compression.clone(),
            });
        }
    }
    serde_json::from_slice(json).map_err(FormatError::ManifestInvalid)
}

/// Checks every section entry on its own, then their ranges together.
fn check_sections(sections: &[SectionEntry], limit: u64) -> Result<(), FormatError> {
    let mut seen = [false; SectionKind::ALL.len()];
    for s in sections {
        // Duplicates first: it also bounds the number of sections checked below.
        if std::mem::replace(&mut seen[s.kind as usize], true) {
            return Err(FormatError::DuplicateSection { kind: s.kind });
        }
        check_section(s, limit)?;
    }
    let mut by_offset: Vec<&SectionEntry> = sections.iter().collect();
    by_offset.sort_by_key(|s| (s.offset, s.length));
    for pair in by_offset.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        // Both ranges are in bounds, so this does not overflow.
        let a_end = a.offset + a.length;
        if b.offset < a_end {
            return Err(FormatError::SectionOverlap {
                kind: b.kind,
                offset: b.offset,
                other: a.kind,
                other_end: a_end,
            });
        }
    }
    for kind in SectionKind::REQUIRED {
        if !seen[kind as usize] {
            return Err(FormatError::MissingSection { kind });
        }
    }
    Ok(())
}

fn check_section(s: &SectionEntry, limit: u64) -> Result<(), FormatError> {
    let kind = s.kind;
    for (field, value) in [
        ("sha256", &s.sha256),
        ("uncompressed_sha256", &s.uncompressed_sha256),
    ] {
        if !is_digest(value) {
            return Err(FormatError::BadDigest {
                kind,
                field,
                value: value.clone(),
            });
        }
    }
    if !s.offset.is_multiple_of(ALIGN) {
        return Err(FormatError::Misaligned {
            kind,
            offset: s.offset,
        });
    }
    if s.offset.checked_add(s.length).is_none_or(|end| end > limit) {
        return Err(FormatError::SectionOutOfBounds {
            kind,
            offset: s.offset,
            length: s.length,
            limit,
        });
    }
    if s.uncompressed_size > MAX_SECTION_SIZE {
        return Err(FormatError::TooLarge {
            kind,
            size: s.uncompressed_size,
            max: MAX_SECTION_SIZE,
        });
    }
    if s.compression == Compression::None {
        if s.length != s.uncompressed_size {
            return Err(FormatError::SizeMismatch {
                kind,
                length: s.length,
                uncompressed_size: s.uncompressed_size,
            });
        }
        if s.sha256 != s.uncompressed_sha256 {
            return Err(FormatError::DigestsDiffer { kind });
        }
    }
    Ok(())
}

fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// A pack file, mapped and validated by [`parse`]: a sidecar, or an executable with a
/// payload appended.
///
/// The file must not be changed while the `Pack` is open (it is memory-mapped): a change
/// shows through, and only the digest checks of [`Pack::verify_section`] and
/// [`Pack::extract_section`] would notice it.
#[derive(Debug)]
pub struct Pack {
    path: PathBuf,
    map: Mmap,
    payload_start: u64,
    manifest: Manifest,
}

impl Pack {
    /// Opens and validates the pack at `path` (see [`parse`] for what is checked).
    /// Validation errors don't name the path; add it when reporting them.
    pub fn open(path: &Path) -> Result<Pack, FormatError> {
        let open_err = |source| FormatError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(open_err)?;
        // SAFETY: the map is read-only and every offset used into it was validated
        // against its length; a concurrent change of the file is documented above.
        let map = unsafe { Mmap::map(&file) }.map_err(open_err)?;
        let (manifest, payload_start) = parse(&map)?;
        Ok(Pack {
            path: path.to_path_buf(),
            map,
            payload_start,
            manifest,
        })
    }

    /// The validated manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The path the pack was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Absolute offset of the payload in the file: 0 for a sidecar, the padded stub's
    /// length for an executable.
    pub fn payload_start(&self) -> u64 {
        self.payload_start
    }

    /// The manifest entry of the section of `kind`, if the pack has one.
    pub fn section(&self, kind: SectionKind) -> Option<&SectionEntry> {
        self.manifest.sections.iter().find(|s| s.kind == kind)
    }

    /// The section's stored (possibly compressed) bytes, unverified.
    pub fn stored_bytes(&self, kind: SectionKind) -> Result<&[u8], FormatError> {
        let s = self
            .section(kind)
            .ok_or(FormatError::MissingSection { kind })?;
        // In bounds: parse checked offset + length against the payload.
        let from = (self.payload_start + s.offset) as usize;
        Ok(&self.map[from..from + s.length as usize])
    }

    /// Checks the SHA-256 of the section's stored bytes against the manifest.
    pub fn verify_section(&self, kind: SectionKind) -> Result<(), FormatError> {
        let found = sha256_string(self.stored_bytes(kind)?);
        let expected = &self.section(kind).expect("stored_bytes found it").sha256;
        if &found != expected {
            return Err(FormatError::SectionCorrupt {
                kind,
                expected: expected.clone(),
                found,
            });
        }
        Ok(())
    }

    /// Writes the section's uncompressed data to `dest`, checking its stored and
    /// uncompressed SHA-256 and size. Decompression stops one byte past the declared
    /// uncompressed size, so a zstd bomb costs at most that much disk.
    ///
    /// The data goes to a temporary file in `dest`'s directory, which is synced and then
    /// renamed over `dest`: on any failure `dest` is untouched and no temporary file is
    /// left behind. The file is created with mode 0600.
    pub fn extract_section(&self, kind: SectionKind, dest: &Path) -> Result<(), FormatError> {
        self.extract_section_with(kind, dest, Durability::Synced)
    }

    /// [`Pack::extract_section`], choosing whether the data is synced to disk before the
    /// rename: a cache that can tell whether the machine went down since it wrote an entry
    /// (and then re-verifies it) can skip the sync, which is much of the cost of a first run.
    pub fn extract_section_with(
        &self,
        kind: SectionKind,
        dest: &Path,
        durability: Durability,
    ) -> Result<(), FormatError> {
        let stored = self.stored_bytes(kind)?;
        let entry = self.section(kind).expect("stored_bytes found it");
        let dest_err = |source| FormatError::Extract {
            kind,
            path: dest.to_path_buf(),
            source,
        };
        let dir = match dest.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let mut tmp = tempfile::Builder::new()
            .prefix(".smolvm-extract-")
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(dest_err)?;
        match entry.compression {
            Compression::None => unpack(entry, stored, tmp.as_file_mut(), dest),
            Compression::Zstd => {
                self.verify_section(kind)?;
                let decoder = zstd::stream::read::Decoder::with_buffer(stored)
                    .map_err(|source| FormatError::Decompress { kind, source })?;
                unpack(entry, decoder, tmp.as_file_mut(), dest)
            }
        }?;
        if durability == Durability::Synced {
            tmp.as_file().sync_all().map_err(dest_err)?;
        }
        tmp.persist(dest).map_err(|e| dest_err(e.error))?;
        if durability == Durability::Synced {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(dest_err)?;
        }
        Ok(())
    }

    /// Absolute `(offset, length)` of an uncompressed section in the file, for a VMM to
    /// read it in place; `None` if the pack has no such section or it is compressed.
    /// Unverified: call [`Pack::verify_section`] first to trust the bytes.
    pub fn file_range(&self, kind: SectionKind) -> Option<(u64, u64)> {
        let s = self.section(kind)?;
        (s.compression == Compression::None).then(|| (self.payload_start + s.offset, s.length))
    }
}

/// Copies a section's uncompressed data from `data` to `out`, reading at most one byte
/// more than declared, and checks its size and digest.
/// Writes `data` at the current position, seeking over whole zero blocks instead of writing
/// them: the kernel's alignment padding and the empty space of disk templates stay holes,
/// which is less to write and less disk used.
fn write_sparse(out: &mut File, data: &[u8]) -> io::Result<()> {
    const BLOCK: usize = 4096;
    let mut run_start = 0;
    let mut i = 0;
    while i < data.len() {
        let end = (i + BLOCK).min(data.len());
        if data[i..end].iter().all(|&b| b == 0) {
            out.write_all(&data[run_start..i])?;
            out.seek(io::SeekFrom::Current((end - i) as i64))?;
            run_start = end;
        }
        i = end;
    }
    out.write_all(&data[run_start..])
}

fn unpack(
    entry: &SectionEntry,
    data: impl Read,
    out: &mut File,
    dest: &Path,
) -> Result<(), FormatError> {
    let kind = entry.kind;
    let declared = entry.uncompressed_size;
    let mut data = data.take(declared + 1);
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 256 * 1024];
    let mut total = 0;
    loop {
        let n = match data.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // Only a decoder fails to read; a slice does not.
            Err(source) => return Err(FormatError::Decompress { kind, source }),
        };
        total += n as u64;
        if total > declared {
            return Err(FormatError::DecompressedTooLarge { kind, declared });
        }
        hasher.update(&buf[..n]);
        write_sparse(out, &buf[..n]).map_err(|source| FormatError::Extract {
            kind,
            path: dest.to_path_buf(),
            source,
        })?;
    }
    // Trailing zeros were skipped: the length makes them a hole.
    out.set_len(total).map_err(|source| FormatError::Extract {
        kind,
        path: dest.to_path_buf(),
        source,
    })?;
    if total != declared {
        return Err(FormatError::DecompressedSize {
            kind,
            declared,
            actual: total,
        });
    }
    let found = digest_string(&hasher.finalize());
    if found != entry.uncompressed_sha256 {
        let expected = entry.uncompressed_sha256.clone();
        return Err(match entry.compression {
            Compression::None => FormatError::SectionCorrupt {
                kind,
                expected,
                found,
            },
            Compression::Zstd => FormatError::DecompressedCorrupt {
                kind,
                expected,
                found,
            },
        });
    }
    Ok(())
}
