//! Feeds arbitrary files to the `.smolmachine` reader and does with an accepted one what
//! smolvm does: open it, verify and extract its sections. Nothing may panic, and what
//! [`parse`] accepts must hold together.

#![no_main]

use std::fs;
use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sha2::{Digest as _, Sha256};
use smolvm_pack_format::{Compression, FOOTER_LEN, Footer, Manifest, Pack, parse};
use tempfile::TempDir;

/// Sections larger than this uncompressed are not extracted: the fuzzer would spend its
/// time writing, and the bound itself is tested in packer/tests/format.rs.
const MAX_EXTRACT: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    read_like_smolvm(data);
    if let Some(fixed) = with_matching_digests(data) {
        read_like_smolvm(&fixed);
    }
});

fn read_like_smolvm(data: &[u8]) {
    let Ok((manifest, start)) = parse(data) else {
        return;
    };
    static DIR: OnceLock<TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| TempDir::new().unwrap()).path();
    let path = dir.join("pack");
    fs::write(&path, data).unwrap();
    let pack = Pack::open(&path).expect("Pack::open refused what parse accepted");
    assert_eq!(pack.manifest(), &manifest);
    assert_eq!(pack.payload_start(), start);
    for s in &manifest.sections {
        let stored = pack.stored_bytes(s.kind).unwrap();
        assert_eq!(stored.len() as u64, s.length);
        let verified = pack.verify_section(s.kind);
        if let Some((offset, len)) = pack.file_range(s.kind) {
            assert_eq!(&data[offset as usize..(offset + len) as usize], stored);
        }
        if s.uncompressed_size <= MAX_EXTRACT {
            extract(&pack, s.kind, &dir.join(s.kind.as_str()), verified.is_ok());
        }
    }
    for entry in fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name();
        assert!(
            !name.to_string_lossy().starts_with('.'),
            "{name:?} left behind"
        );
    }
}

fn extract(pack: &Pack, kind: smolvm_pack_format::SectionKind, dest: &Path, verified: bool) {
    let _ = fs::remove_file(dest);
    match pack.extract_section(kind, dest) {
        Ok(()) => {
            assert!(verified, "{kind} extracted though its digest is wrong");
            let size = fs::metadata(dest).unwrap().len();
            assert_eq!(size, pack.section(kind).unwrap().uncompressed_size);
        }
        Err(_) => assert!(!dest.exists(), "a failed extraction left {kind} behind"),
    }
}

/// `data` with its digests made to match: each section's `sha256` set to its stored
/// bytes' (so that the decoder sees whatever the section holds), and the footer's
/// manifest digest to the rewritten manifest's. Without this nearly every mutation of a
/// manifest or a section would stop at a digest check.
fn with_matching_digests(data: &[u8]) -> Option<Vec<u8>> {
    let footer = Footer::from_file_end(data).ok()?;
    let start = usize::try_from(footer.payload_len)
        .ok()
        .and_then(|len| data.len().checked_sub(len))?;
    let from = start.checked_add(usize::try_from(footer.manifest_offset).ok()?)?;
    let to = from.checked_add(usize::try_from(footer.manifest_len).ok()?)?;
    let mut manifest: Manifest = serde_json::from_slice(data.get(from..to)?).ok()?;
    for s in &mut manifest.sections {
        let a = usize::try_from(s.offset).ok()?.checked_add(start)?;
        let b = a.checked_add(usize::try_from(s.length).ok()?)?;
        if let Some(stored) = data.get(a..b.min(from)) {
            s.sha256 = digest(stored);
            if s.compression == Compression::None {
                s.uncompressed_sha256 = s.sha256.clone();
            }
        }
    }
    let json = serde_json::to_vec(&manifest).ok()?;
    let mut out = data[..from].to_vec();
    out.extend_from_slice(&json);
    let fixed = Footer {
        manifest_sha256: Sha256::digest(&json).into(),
        manifest_len: json.len() as u64,
        payload_len: (out.len() - start + FOOTER_LEN) as u64,
        ..footer
    };
    out.extend_from_slice(&fixed.to_bytes());
    Some(out)
}

fn digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .fold("sha256:".to_string(), |s, b| s + &format!("{b:02x}"))
}
