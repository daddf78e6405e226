//! The `.smolmachine` format: round trips through sidecars and executables, determinism,
//! and what a reader says about truncated, corrupt, tampered and hostile files.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use smolvm_pack_format::{
    ALIGN, Compression, FOOTER_LEN, Footer, FormatError, FormatVersion, HealthCheck, ImageInfo,
    MAX_SECTION_SIZE, Manifest, Network, Pack, Resources, RunConfig, SectionInput, SectionKind,
    SectionSource, has_payload, parse, payload_start, write_pack,
};
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------
// Fixtures

/// Incompressible bytes, different for each seed.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Compressible bytes.
fn text(seed: u64, len: usize) -> Vec<u8> {
    format!("section {seed}: the quick brown fox jumps over the lazy dog. ")
        .into_bytes()
        .into_iter()
        .cycle()
        .take(len)
        .collect()
}

/// A manifest with every field set to something other than its default.
fn full_manifest() -> Manifest {
    Manifest {
        format_version: FormatVersion::CURRENT,
        image: Some(ImageInfo {
            reference: "python:3.12-alpine".into(),
            digest: format!("sha256:{}", "ab".repeat(32)),
        }),
        platform: "linux/amd64".into(),
        host_platform: "linux/arm64".into(),
        created: "2026-11-22T08:00:00Z".into(),
        smolvm_version: "0.1.0".into(),
        run: RunConfig {
            entrypoint: vec!["/usr/bin/python3".into()],
            cmd: vec!["-c".into(), "print(1)".into()],
            env: vec!["PATH=/usr/bin:/bin".into(), "LANG=C.UTF-8".into()],
            workdir: Some("/srv".into()),
            user: Some("1000:1000".into()),
        },
        resources: Resources {
            cpus: 2,
            memory_mib: 1024,
            storage_gib: 10,
            overlay_gib: 1,
        },
        network: Network {
            enabled: true,
            allow_hosts: vec!["pypi.org".into()],
            allow_cidrs: vec!["10.0.0.0/8".into()],
            ports: vec!["8080:80".into()],
            localhost_only: false,
        },
        health: Some(HealthCheck {
            exec: vec!["/bin/true".into()],
            interval_ms: 5000,
            timeout_ms: 2000,
            startup_grace_ms: 1000,
            retries: 5,
        }),
        sections: Vec::new(),
    }
}

/// A bare VM's manifest: no image, no health check, defaults everywhere.
fn bare_manifest() -> Manifest {
    Manifest {
        platform: "linux/amd64".into(),
        host_platform: "linux/amd64".into(),
        created: "2026-11-22T08:00:00Z".into(),
        smolvm_version: "0.1.0".into(),
        ..Manifest::default()
    }
}

/// The data of every section kind: sizes that are not multiples of ALIGN, so that
/// padding is needed between them.
fn section_data() -> Vec<(SectionKind, Vec<u8>)> {
    vec![
        (SectionKind::Kernel, text(1, 20_000)),
        (SectionKind::Initramfs, noise(2, 9_000)),
        (SectionKind::Rootfs, noise(3, 13_001)),
        (SectionKind::OverlayTemplate, text(4, 5_000)),
        (SectionKind::StorageTemplate, vec![0; 70_000]),
    ]
}

/// Inputs for `data` with `compression` for every section; odd kinds come from files in
/// `dir`, even ones from memory, so both sources are exercised.
fn inputs(
    dir: &Path,
    data: &[(SectionKind, Vec<u8>)],
    compression: impl Fn(SectionKind) -> Compression,
) -> Vec<SectionInput> {
    data.iter()
        .enumerate()
        .map(|(i, (kind, bytes))| {
            let source = if i % 2 == 1 {
                let path = dir.join(format!("{kind}.in"));
                fs::write(&path, bytes).unwrap();
                SectionSource::File(path)
            } else {
                SectionSource::Bytes(bytes.clone())
            };
            SectionInput {
                kind: *kind,
                source,
                compression: compression(*kind),
            }
        })
        .collect()
}

/// A small pack of kernel (zstd), initramfs and rootfs (uncompressed).
fn small_pack(dir: &Path) -> Vec<u8> {
    let data = vec![
        (SectionKind::Kernel, text(1, 6_000)),
        (SectionKind::Initramfs, noise(2, 700)),
        (SectionKind::Rootfs, noise(3, 5_000)),
    ];
    let out = dir.join("small.smolmachine");
    let compression = |k| match k {
        SectionKind::Kernel => Compression::Zstd,
        _ => Compression::None,
    };
    write_pack(&out, full_manifest(), inputs(dir, &data, compression)).unwrap();
    fs::read(out).unwrap()
}

/// A stub executable's bytes: ELF-looking, not a multiple of ALIGN long.
fn stub() -> Vec<u8> {
    let mut stub = b"\x7fELF\x02\x01\x01\0".to_vec();
    stub.resize(5_000, 0xa5);
    stub
}

/// `stub` padded to ALIGN with `payload` appended: what pack creation makes.
fn executable(stub: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut exe = stub.to_vec();
    exe.resize(exe.len().next_multiple_of(ALIGN as usize), 0);
    exe.extend_from_slice(payload);
    exe
}

fn open_bytes(dir: &Path, name: &str, bytes: &[u8]) -> Result<Pack, FormatError> {
    let path = dir.join(name);
    fs::write(&path, bytes).unwrap();
    Pack::open(&path)
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .fold("sha256:".to_string(), |s, b| s + &format!("{b:02x}"))
}

fn err(bytes: &[u8]) -> FormatError {
    match parse(bytes) {
        Ok(_) => panic!("parsed"),
        Err(e) => e,
    }
}

/// The payload start and manifest range of a valid pack.
fn manifest_range(bytes: &[u8]) -> (usize, std::ops::Range<usize>) {
    let f = Footer::from_file_end(bytes).unwrap();
    let start = bytes.len() - f.payload_len as usize;
    let from = start + f.manifest_offset as usize;
    (start, from..from + f.manifest_len as usize)
}

/// Replaces the manifest with `edit(manifest)` and fixes the footer up to match (digest,
/// length, payload length): what a tamperer or a buggy writer would produce.
fn with_manifest_bytes(bytes: &[u8], edit: impl FnOnce(&[u8]) -> Vec<u8>) -> Vec<u8> {
    let footer = Footer::from_file_end(bytes).unwrap();
    let (start, range) = manifest_range(bytes);
    let json = edit(&bytes[range.clone()]);
    let mut out = bytes[..range.start].to_vec();
    out.extend_from_slice(&json);
    let fixed = Footer {
        manifest_sha256: Sha256::digest(&json).into(),
        manifest_len: json.len() as u64,
        payload_len: (out.len() - start + FOOTER_LEN) as u64,
        ..footer
    };
    out.extend_from_slice(&fixed.to_bytes());
    out
}

/// [`with_manifest_bytes`] on the manifest as JSON.
fn with_manifest(bytes: &[u8], edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    with_manifest_bytes(bytes, |json| {
        let mut v: Value = serde_json::from_slice(json).unwrap();
        edit(&mut v);
        serde_json::to_vec(&v).unwrap()
    })
}

/// The manifest entry of `kind` in a manifest's JSON.
fn section_mut<'a>(v: &'a mut Value, kind: &str) -> &'a mut Value {
    v["sections"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|s| s["kind"] == kind)
        .unwrap()
}

/// Overwrites footer bytes `at..` with `value`, leaving the rest as it is.
fn with_footer_bytes(bytes: &[u8], at: usize, value: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let from = out.len() - FOOTER_LEN + at;
    out[from..from + value.len()].copy_from_slice(value);
    out
}

/// Names of the files in `dir`.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

// ---------------------------------------------------------------------------------------
// Round trips

/// Writes every kind with `compression`, reads it back through `path`, and checks every
/// field, every section's bytes, digests and alignment.
fn check_round_trip(
    dir: &Path,
    path: &Path,
    expect_start: u64,
    compression: impl Fn(SectionKind) -> Compression + Copy,
) {
    let data = section_data();
    let pack = Pack::open(path).unwrap();
    assert_eq!(pack.path(), path);
    assert_eq!(pack.payload_start(), expect_start);
    let m = pack.manifest();
    let mut expected = full_manifest();
    expected.sections = m.sections.clone();
    assert_eq!(*m, expected);
    let kinds: Vec<SectionKind> = m.sections.iter().map(|s| s.kind).collect();
    assert_eq!(kinds, SectionKind::ALL);

    let file = fs::read(path).unwrap();
    for (kind, bytes) in &data {
        let s = pack.section(*kind).unwrap();
        assert_eq!(s.compression, compression(*kind), "{kind}");
        assert_eq!(s.offset % ALIGN, 0, "{kind}");
        assert_eq!(s.uncompressed_size, bytes.len() as u64, "{kind}");
        assert_eq!(s.uncompressed_sha256, sha256(bytes), "{kind}");
        let stored = pack.stored_bytes(*kind).unwrap();
        assert_eq!(s.length, stored.len() as u64);
        assert_eq!(s.sha256, sha256(stored), "{kind}");
        pack.verify_section(*kind).unwrap();
        match s.compression {
            Compression::None => {
                assert_eq!(stored, &bytes[..], "{kind}");
                let (offset, len) = pack.file_range(*kind).unwrap();
                assert_eq!(offset % ALIGN, 0, "{kind}: absolute offset {offset}");
                assert_eq!(&file[offset as usize..(offset + len) as usize], &bytes[..]);
            }
            Compression::Zstd => {
                // Initramfs and rootfs are noise, the others compress.
                let noise = matches!(kind, SectionKind::Initramfs | SectionKind::Rootfs);
                assert!(noise || stored.len() < bytes.len() / 4, "{kind}");
                assert_eq!(pack.file_range(*kind), None, "{kind}");
            }
        }
        let dest = dir.join(format!("{kind}.out"));
        pack.extract_section(*kind, &dest).unwrap();
        assert!(fs::read(&dest).unwrap() == *bytes, "{kind}");
    }
}

#[test]
fn round_trip_every_field_and_kind_in_a_sidecar() {
    for compression in [Compression::None, Compression::Zstd] {
        let dir = TempDir::new().unwrap();
        let out = dir.path().join("app.smolmachine");
        let data = section_data();
        let summary = write_pack(
            &out,
            full_manifest(),
            inputs(dir.path(), &data, |_| compression),
        )
        .unwrap();
        assert_eq!(summary.total, fs::metadata(&out).unwrap().len());
        let pack = Pack::open(&out).unwrap();
        let described: Vec<_> = pack
            .manifest()
            .sections
            .iter()
            .map(|s| (s.kind, s.length, s.uncompressed_size))
            .collect();
        assert_eq!(summary.sections, described);
        check_round_trip(dir.path(), &out, 0, |_| compression);
    }
}

#[test]
fn round_trip_mixed_compression_in_an_executable() {
    let dir = TempDir::new().unwrap();
    let compression = |k| match k {
        SectionKind::Rootfs | SectionKind::Initramfs => Compression::None,
        _ => Compression::Zstd,
    };
    let sidecar = dir.path().join("app.smolmachine");
    let data = section_data();
    write_pack(
        &sidecar,
        full_manifest(),
        inputs(dir.path(), &data, compression),
    )
    .unwrap();
    let payload = fs::read(&sidecar).unwrap();
    let exe = executable(&stub(), &payload);
    let path = dir.path().join("app");
    fs::write(&path, &exe).unwrap();

    assert!(has_payload(&exe));
    assert_eq!(payload_start(&exe), Some(8192));
    check_round_trip(dir.path(), &path, 8192, compression);
    // Stripping the payload gives back the padded stub, ready for a new payload.
    assert_eq!(&exe[..8192], &executable(&stub(), &[])[..]);
    // The stub's bytes are not the pack's business: cutting them off still reads.
    let (manifest, start) = parse(&exe[4096..]).unwrap();
    assert_eq!((manifest, start), (parse(&payload).unwrap().0, 4096));
}

#[test]
fn a_bare_vm_pack_has_no_rootfs_and_null_image_and_health() {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("bare.smolmachine");
    let data = vec![
        (SectionKind::Kernel, text(1, 100)),
        (SectionKind::Initramfs, text(2, 100)),
    ];
    write_pack(
        &out,
        bare_manifest(),
        inputs(dir.path(), &data, |_| Compression::Zstd),
    )
    .unwrap();
    let bytes = fs::read(&out).unwrap();
    let json: Value = serde_json::from_slice(&bytes[manifest_range(&bytes).1]).unwrap();
    assert_eq!(json["image"], Value::Null);
    assert_eq!(json["health"], Value::Null);
    assert_eq!(json["run"]["workdir"], Value::Null);

    let pack = Pack::open(&out).unwrap();
    assert_eq!(pack.manifest().resources, Resources::default());
    assert_eq!(
        Resources::default(),
        Resources {
            cpus: 4,
            memory_mib: 8192,
            storage_gib: 20,
            overlay_gib: 2
        }
    );
    assert_eq!(pack.section(SectionKind::Rootfs), None);
    assert_eq!(pack.file_range(SectionKind::Rootfs), None);
    assert!(matches!(
        pack.stored_bytes(SectionKind::Rootfs),
        Err(FormatError::MissingSection {
            kind: SectionKind::Rootfs
        })
    ));
    let e = pack
        .extract_section(SectionKind::Rootfs, &dir.path().join("rootfs"))
        .unwrap_err();
    assert_eq!(e.to_string(), "the pack has no rootfs section");
}

#[test]
fn empty_sections_round_trip() {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("empty.smolmachine");
    let data = vec![
        (SectionKind::Kernel, Vec::new()),
        (SectionKind::Initramfs, Vec::new()),
    ];
    let compression = |k| match k {
        SectionKind::Kernel => Compression::Zstd,
        _ => Compression::None,
    };
    write_pack(
        &out,
        bare_manifest(),
        inputs(dir.path(), &data, compression),
    )
    .unwrap();
    let pack = Pack::open(&out).unwrap();
    for kind in SectionKind::REQUIRED {
        let dest = dir.path().join(kind.as_str());
        pack.extract_section(kind, &dest).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"");
    }
}

// ---------------------------------------------------------------------------------------
// Determinism

#[test]
fn the_same_inputs_give_the_same_bytes() {
    let dir = TempDir::new().unwrap();
    let mut data = section_data();
    // Larger than two 8 MiB zstd jobs, so that compression runs on several workers.
    data[0].1 = text(9, 20 << 20);
    let zstd = |_| Compression::Zstd;
    let a = dir.path().join("a.smolmachine");
    let b = dir.path().join("b.smolmachine");
    write_pack(&a, full_manifest(), inputs(dir.path(), &data, zstd)).unwrap();
    // Input order and whatever the caller put in `sections` and `format_version` don't
    // matter.
    let mut reversed = inputs(dir.path(), &data, zstd);
    reversed.reverse();
    let mut m = full_manifest();
    m.format_version = FormatVersion { major: 9, minor: 9 };
    m.sections = Pack::open(&a).unwrap().manifest().sections.clone();
    write_pack(&b, m, reversed).unwrap();
    assert!(fs::read(&a).unwrap() == fs::read(&b).unwrap());
    let kernel = Pack::open(&a).unwrap();
    let kernel = kernel.section(SectionKind::Kernel).unwrap();
    assert!(kernel.length < 1 << 20, "{} bytes", kernel.length);
}

#[test]
fn the_manifest_is_pretty_json_in_declaration_order() {
    let dir = TempDir::new().unwrap();
    let bytes = small_pack(dir.path());
    let json = std::str::from_utf8(&bytes[manifest_range(&bytes).1]).unwrap();
    let keys: Vec<&str> = json
        .lines()
        .filter(|l| l.starts_with("  \""))
        .map(|l| l.trim().split('"').nth(1).unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "format_version",
            "image",
            "platform",
            "host_platform",
            "created",
            "smolvm_version",
            "run",
            "resources",
            "network",
            "health",
            "sections"
        ]
    );
}

// ---------------------------------------------------------------------------------------
// Finding the payload

#[test]
fn payload_detection_on_plain_files_and_packs() {
    let dir = TempDir::new().unwrap();
    let plain = stub();
    assert!(!has_payload(&plain));
    assert_eq!(payload_start(&plain), None);
    assert!(!has_payload(b"SMOLMACH"));
    assert!(!has_payload(b""));

    let pack = small_pack(dir.path());
    assert!(has_payload(&pack));
    assert_eq!(payload_start(&pack), Some(0));
    let exe = executable(&plain, &pack);
    assert_eq!(payload_start(&exe), Some(8192));

    // A payload of another version can still be found (and stripped).
    let v2 = with_footer_bytes(&exe, 56, &2u16.to_le_bytes());
    assert_eq!(payload_start(&v2), Some(8192));
    // A payload length the file cannot hold is no payload.
    let bad = with_footer_bytes(&exe, 48, &(exe.len() as u64 + 1).to_le_bytes());
    assert!(has_payload(&bad));
    assert_eq!(payload_start(&bad), None);
    let bad = with_footer_bytes(&exe, 48, &79u64.to_le_bytes());
    assert_eq!(payload_start(&bad), None);
}

#[test]
fn open_reports_the_path_of_a_missing_file_and_refuses_an_empty_one() {
    let dir = TempDir::new().unwrap();
    let missing = dir.path().join("missing.smolmachine");
    let e = Pack::open(&missing).unwrap_err();
    assert!(matches!(e, FormatError::Open { ref path, .. } if *path == missing));
    assert!(
        e.to_string()
            .starts_with(&format!("cannot open {}: ", missing.display()))
    );

    let e = open_bytes(dir.path(), "empty", b"").unwrap_err();
    assert!(matches!(e, FormatError::TooShort { len: 0 }), "{e}");
    assert_eq!(
        e.to_string(),
        "not a smolvm pack: the file is 0 bytes, too short to hold the 80-byte footer"
    );
}

// ---------------------------------------------------------------------------------------
// Truncation and corruption

#[test]
fn every_truncation_is_an_error() {
    let dir = TempDir::new().unwrap();
    let pack = small_pack(dir.path());
    let exe = executable(&stub(), &pack);
    for bytes in [&pack, &exe] {
        for len in 0..bytes.len() {
            let e = err(&bytes[..len]);
            assert!(
                matches!(
                    e,
                    FormatError::TooShort { .. } | FormatError::BadMagic { .. }
                ),
                "{len}: {e}"
            );
        }
    }
    let e = err(&pack[..pack.len() - 1]);
    assert!(
        e.to_string()
            .starts_with("not a smolvm pack (or a truncated one): the file does not end"),
        "{e}"
    );
}

#[test]
fn a_file_missing_the_start_of_its_payload_is_truncated() {
    let dir = TempDir::new().unwrap();
    let pack = small_pack(dir.path());
    let exe = executable(&stub(), &pack);
    for cut in [8193, 8192 + 4096, exe.len() - FOOTER_LEN] {
        let e = err(&exe[cut..]);
        let (payload_len, file_len) = (pack.len() as u64, (exe.len() - cut) as u64);
        assert!(
            matches!(e, FormatError::Truncated { payload_len: p, file_len: f } if (p, f) == (payload_len, file_len)),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            format!(
                "the file ends before its payload (truncated?): the footer gives a payload of \
                 {payload_len} bytes, the file has {file_len}"
            )
        );
    }
}

#[test]
fn a_corrupt_section_is_named_by_verify_and_extract() {
    let dir = TempDir::new().unwrap();
    let pack = small_pack(dir.path());
    let out = TempDir::new().unwrap();
    for kind in [
        SectionKind::Kernel,
        SectionKind::Initramfs,
        SectionKind::Rootfs,
    ] {
        let good = open_bytes(dir.path(), "good", &pack).unwrap();
        let s = good.section(kind).unwrap().clone();
        for at in [0, s.length / 2, s.length - 1] {
            let mut bad = pack.clone();
            bad[(s.offset + at) as usize] ^= 0x40;
            // Section contents are not hashed when opening.
            let p = open_bytes(dir.path(), "bad", &bad).unwrap();
            let found = sha256(p.stored_bytes(kind).unwrap());
            let expected_msg = format!(
                "section {kind} is corrupt: sha256 mismatch (expected {}, found {found}); the \
                 file was damaged or modified — get a fresh copy",
                s.sha256
            );
            let e = p.verify_section(kind).unwrap_err();
            assert!(
                matches!(&e, FormatError::SectionCorrupt { kind: k, .. } if *k == kind),
                "{e}"
            );
            assert_eq!(e.to_string(), expected_msg);
            let dest = out.path().join("dest");
            let e = p.extract_section(kind, &dest).unwrap_err();
            assert_eq!(e.to_string(), expected_msg);
            assert!(listing(out.path()).is_empty(), "{:?}", listing(out.path()));
            // The other sections are intact.
            for other in SectionKind::REQUIRED.into_iter().filter(|&k| k != kind) {
                p.verify_section(other).unwrap();
            }
        }
    }
}

#[test]
fn any_corrupt_manifest_byte_is_a_digest_mismatch() {
    let dir = TempDir::new().unwrap();
    let pack = small_pack(dir.path());
    let (_, range) = manifest_range(&pack);
    let expected = sha256(&pack[range.clone()]);
    for at in range {
        let mut bad = pack.clone();
        bad[at] ^= 0x01;
        match err(&bad) {
            FormatError::ManifestCorrupt { expected: e, found } => {
                assert_eq!(e, expected);
                assert_ne!(found, expected);
            }
            e => panic!("byte {at}: {e}"),
        }
    }
    let mut bad = pack.clone();
    bad[manifest_range(&pack).1.start] = b'[';
    assert!(
        err(&bad)
            .to_string()
            .starts_with("the manifest is corrupt: sha256 mismatch (expected sha256:")
    );
}

/// Every single-bit flip in the footer is an error, and the one its field calls for.
#[test]
fn every_corrupt_footer_byte_is_the_specific_error() {
    let dir = TempDir::new().unwrap();
    let pack = small_pack(dir.path());
    let exe = executable(&stub(), &pack);
    for bytes in [&pack, &exe] {
        for at in 0..FOOTER_LEN {
            for bit in [0x01, 0x80] {
                let mut bad = bytes.clone();
                bad[bytes.len() - FOOTER_LEN + at] ^= bit;
                let e = err(&bad);
                let ok = match at {
                    0..32 => matches!(e, FormatError::ManifestCorrupt { .. }),
                    // A shifted or resized manifest range: out of the payload, or
                    // different bytes.
                    32..48 => matches!(
                        e,
                        FormatError::ManifestOutOfBounds { .. }
                            | FormatError::ManifestCorrupt { .. }
                    ),
                    // A longer payload than the file (sidecar), or a shifted start:
                    // everything moves, so the manifest is out of bounds or differs.
                    48..56 => matches!(
                        e,
                        FormatError::Truncated { .. }
                            | FormatError::ManifestOutOfBounds { .. }
                            | FormatError::ManifestCorrupt { .. }
                    ),
                    56..58 => matches!(e, FormatError::UnsupportedVersion { .. }),
                    58..60 => matches!(e, FormatError::VersionMismatch { .. }),
                    60..72 => matches!(e, FormatError::ReservedNotZero { .. }),
                    _ => matches!(e, FormatError::BadMagic { .. }),
                };
                assert!(ok, "footer byte {at} bit {bit:#x}: {e}");
            }
        }
    }
}

#[test]
fn footer_field_errors_carry_their_values() {
    let dir = TempDir::new().unwrap();
    let pack = small_pack(dir.path());
    let len = pack.len() as u64;
    let limit = len - FOOTER_LEN as u64;

    let e = err(&with_footer_bytes(&pack, 72, b"SMOLMACX"));
    assert!(matches!(e, FormatError::BadMagic { found } if &found == b"SMOLMACX"));
    assert_eq!(
        e.to_string(),
        "not a smolvm pack (or a truncated one): the file does not end with the footer magic \
         \"SMOLMACH\" (found \"SMOLMACX\")"
    );

    let e = err(&with_footer_bytes(&pack, 64, &[1]));
    assert!(matches!(e, FormatError::ReservedNotZero { found } if found[4] == 1));
    assert_eq!(
        e.to_string(),
        "the pack footer's reserved bytes are not zero (found \"\\x00\\x00\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\"): \
         the file is damaged or was not written by smolvm"
    );

    let e = err(&with_footer_bytes(&pack, 48, &79u64.to_le_bytes()));
    assert!(
        matches!(e, FormatError::PayloadTooSmall { payload_len: 79 }),
        "{e}"
    );
    let e = err(&with_footer_bytes(&pack, 48, &u64::MAX.to_le_bytes()));
    assert!(
        matches!(e, FormatError::Truncated { payload_len: u64::MAX, file_len } if file_len == len),
        "{e}"
    );

    // The manifest reaching into the footer, or past the end of the address space.
    let f = Footer::from_file_end(&pack).unwrap();
    let e = err(&with_footer_bytes(
        &pack,
        40,
        &(f.manifest_len + 1).to_le_bytes(),
    ));
    assert!(
        matches!(e, FormatError::ManifestOutOfBounds { offset, len, limit: l }
            if (offset, len, l) == (f.manifest_offset, f.manifest_len + 1, limit)),
        "{e}"
    );
    let e = err(&with_footer_bytes(&pack, 32, &u64::MAX.to_le_bytes()));
    assert!(
        matches!(
            e,
            FormatError::ManifestOutOfBounds {
                offset: u64::MAX,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        format!(
            "the manifest (offset {}, length {}) does not lie within the first {limit} bytes of \
             the payload, before the footer: the file is damaged",
            u64::MAX,
            f.manifest_len
        )
    );
}

// ---------------------------------------------------------------------------------------
// Versions and unknown fields

#[test]
fn a_newer_major_is_refused_with_advice_and_an_older_one_too() {
    let dir = TempDir::new().unwrap();
    let pack = small_pack(dir.path());
    // A 2.0 pack may have any manifest shape and use the reserved bytes.
    let v2 = with_manifest_bytes(&pack, |_| br#"{"sections": "elsewhere"}"#.to_vec());
    let v2 = with_footer_bytes(&v2, 56, &[2, 0, 3, 0, 0xff]);
    let e = err(&v2);
    assert!(matches!(
        e,
        FormatError::UnsupportedVersion {
            found_major: 2,
            found_minor: 3,
            supported: 1
        }
    ));
    assert_eq!(
        e.to_string(),
        "this pack uses format 2.3; this smolvm reads format 1.x: upgrade smolvm"
    );

    let v0 = with_footer_bytes(&pack, 56, &[0, 0, 9, 0]);
    assert_eq!(
        err(&v0).to_string(),
        "this pack uses format 0.9, which this smolvm (format 1.x) no longer reads: pack it \
         again with this smolvm"
    );

    // The manifest's version is checked as well as the footer's.
    let m2 = with_manifest(&pack, |v| {
        v["format_version"] = json!({"major": 2, "minor": 0})
    });
    assert!(matches!(
        err(&m2),
        FormatError::UnsupportedVersion { found_major: 2, .. }
    ));
}

#[test]
fn a_newer_minor_with_unknown_fields_is_read() {
    let dir = TempDir::new().unwrap();
    let pack = small_pack(dir.path());
    let (original, _) = parse(&pack).unwrap();
    let newer = with_manifest(&pack, |v| {
        v["format_version"]["minor"] = json!(7);
        v["signature"] = json!({"alg": "ed25519", "sig": "..."});
        v["run"]["stop_signal"] = json!("SIGTERM");
        v["resources"]["gpus"] = json!(1);
        section_mut(v, "rootfs")["verity_root"] = json!("abc");
    });
    let newer = with_footer_bytes(&newer, 58, &7u16.to_le_bytes());
    let (manifest, start) = parse(&newer).unwrap();
    assert_eq!(start, 0);
    assert_eq!(
        manifest.format_version,
        FormatVersion { major: 1, minor: 7 }
    );
    assert_eq!(
        Manifest {
            format_version: FormatVersion::CURRENT,
            ..manifest
        },
        original
    );

    // The footer and the manifest must agree.
    let e = err(&with_footer_bytes(&pack, 58, &7u16.to_le_bytes()));
    assert_eq!(
        e.to_string(),
        "the manifest says format 1.1 but the footer says 1.7: the file is damaged"
    );
}

#[test]
fn missing_optional_fields_take_their_defaults() {
    let dir = TempDir::new().unwrap();
    let pack = small_pack(dir.path());
    let minimal = with_manifest(&pack, |v| {
        let o = v.as_object_mut().unwrap();
        for key in ["image", "run", "resources", "network", "health"] {
            o.remove(key);
        }
    });
    let (m, _) = parse(&minimal).unwrap();
    assert_eq!(m.image, None);
    assert_eq!(m.run, RunConfig::default());
    assert_eq!(m.resources, Resources::default());
    assert_eq!(m.network, Network::default());
    assert!(!m.network.enabled);
    assert_eq!(m.health, None);

    // A 1.0 manifest has no network.localhost_only: it is off.
    let older = with_manifest(&pack, |v| {
        v["network"] = json!({"enabled": true, "allow_hosts": ["pypi.org"]});
    });
    let (m, _) = parse(&older).unwrap();
    assert!(m.network.enabled && !m.network.localhost_only);
    let newer = with_manifest(&pack, |v| {
        v["network"] = json!({"enabled": true, "allow_hosts": ["host.smolvm.internal"], "localhost_only": true});
    });
    assert!(parse(&newer).unwrap().0.network.localhost_only);

    let partial = with_manifest(&pack, |v| {
        v["resources"] = json!({"cpus": 1});
        v["health"] = json!({"exec": ["true"]});
    });
    let (m, _) = parse(&partial).unwrap();
    assert_eq!(
        m.resources,
        Resources {
            cpus: 1,
            ..Resources::default()
        }
    );
    assert_eq!(
        m.health,
        Some(HealthCheck {
            exec: vec!["true".into()],
            interval_ms: 30_000,
            timeout_ms: 10_000,
            startup_grace_ms: 0,
            retries: 3,
        })
    );

    // Required fields are required.
    let e = err(&with_manifest(&pack, |v| {
        v.as_object_mut().unwrap().remove("platform");
    }));
    assert!(
        e.to_string()
            .starts_with("the manifest is invalid: missing field `platform` at line 1 column "),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------
// Tampered manifests (with a matching digest)

/// `edit` applied to a valid small pack's manifest gives `check(error)`.
fn tampered(edit: impl FnOnce(&mut Value)) -> FormatError {
    let dir = TempDir::new().unwrap();
    err(&with_manifest(&small_pack(dir.path()), edit))
}

#[test]
fn misaligned_out_of_bounds_and_overlapping_sections_are_refused() {
    let e = tampered(|v| section_mut(v, "rootfs")["offset"] = json!(12_289));
    assert!(
        matches!(
            e,
            FormatError::Misaligned {
                kind: SectionKind::Rootfs,
                offset: 12_289
            }
        ),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "section rootfs starts at offset 12289, not a multiple of 4096: the file is damaged"
    );

    // Into the manifest.
    let e = tampered(|v| {
        let s = section_mut(v, "rootfs");
        s["length"] = json!(5_000 + 4096);
        s["uncompressed_size"] = json!(5_000 + 4096);
    });
    assert!(
        matches!(
            e,
            FormatError::SectionOutOfBounds {
                kind: SectionKind::Rootfs,
                offset: 8192,
                length: 9096,
                limit: 13192
            }
        ),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "section rootfs (offset 8192, length 9096) does not lie within the section area, the \
         first 13192 bytes of the payload: the file is damaged"
    );

    // Past the end of the address space.
    let e = tampered(|v| {
        let s = section_mut(v, "initramfs");
        s["offset"] = json!(u64::MAX - 4095);
    });
    assert!(
        matches!(e, FormatError::SectionOutOfBounds { kind: SectionKind::Initramfs, offset, length: 700, .. } if offset == u64::MAX - 4095),
        "{e}"
    );

    // The small pack: kernel at 0 (compressed to less than a page), initramfs at 4096
    // (700 bytes), rootfs at 8192 (5000 bytes).
    let e = tampered(|v| section_mut(v, "rootfs")["offset"] = json!(4096));
    assert!(
        matches!(
            e,
            FormatError::SectionOverlap {
                kind: SectionKind::Rootfs,
                offset: 4096,
                other: SectionKind::Initramfs,
                other_end: 4796,
            }
        ),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "section rootfs at offset 4096 overlaps section initramfs, which ends at 4796: the \
         file is damaged"
    );
    let e = tampered(|v| section_mut(v, "initramfs")["offset"] = json!(0));
    assert!(
        matches!(
            e,
            FormatError::SectionOverlap {
                kind: SectionKind::Initramfs,
                offset: 0,
                other: SectionKind::Kernel,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn inconsistent_section_entries_are_refused_by_name() {
    let e = tampered(|v| section_mut(v, "rootfs")["kind"] = json!("kernel"));
    assert!(
        matches!(
            e,
            FormatError::DuplicateSection {
                kind: SectionKind::Kernel
            }
        ),
        "{e}"
    );
    assert_eq!(e.to_string(), "the pack has two kernel sections");

    let e = tampered(|v| {
        v["sections"].as_array_mut().unwrap().remove(0);
    });
    assert!(
        matches!(
            e,
            FormatError::MissingSection {
                kind: SectionKind::Kernel
            }
        ),
        "{e}"
    );
    let e = tampered(|v| v["sections"] = json!([]));
    assert_eq!(e.to_string(), "the pack has no kernel section");

    let e = tampered(|v| section_mut(v, "kernel")["compression"] = json!("lz4"));
    assert!(
        matches!(e, FormatError::UnknownCompression { kind: SectionKind::Kernel, ref value } if value == "lz4"),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "section kernel uses unknown compression \"lz4\" (known: none, zstd)"
    );

    let e = tampered(|v| section_mut(v, "rootfs")["kind"] = json!("firmware"));
    assert!(matches!(e, FormatError::UnknownSectionKind { ref value } if value == "firmware"));

    let e = tampered(|v| {
        let s = section_mut(v, "rootfs");
        s["uncompressed_size"] = json!(4_000);
    });
    assert!(
        matches!(
            e,
            FormatError::SizeMismatch {
                kind: SectionKind::Rootfs,
                length: 5_000,
                uncompressed_size: 4_000
            }
        ),
        "{e}"
    );

    let other = format!("sha256:{}", "0".repeat(64));
    let e = tampered(|v| section_mut(v, "rootfs")["uncompressed_sha256"] = json!(other));
    assert!(
        matches!(
            e,
            FormatError::DigestsDiffer {
                kind: SectionKind::Rootfs
            }
        ),
        "{e}"
    );

    for bad in [
        format!("sha256:{}", "A".repeat(64)),
        format!("sha256:{}", "0".repeat(63)),
        format!("sha512:{}", "0".repeat(64)),
        "0".repeat(71),
    ] {
        let e = tampered(|v| section_mut(v, "initramfs")["sha256"] = json!(bad));
        assert!(
            matches!(e, FormatError::BadDigest { kind: SectionKind::Initramfs, field: "sha256", ref value } if *value == bad),
            "{e}"
        );
    }

    let e =
        tampered(|v| section_mut(v, "kernel")["uncompressed_size"] = json!(MAX_SECTION_SIZE + 1));
    assert!(
        matches!(e, FormatError::TooLarge { kind: SectionKind::Kernel, size, max } if size == max + 1),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        format!(
            "section kernel is {} bytes uncompressed, more than the limit of {} bytes",
            MAX_SECTION_SIZE + 1,
            MAX_SECTION_SIZE
        )
    );
}

#[test]
fn wrong_types_and_non_json_carry_serdes_message() {
    let e = tampered(|v| section_mut(v, "kernel")["offset"] = json!("zero"));
    assert!(matches!(e, FormatError::ManifestInvalid(_)), "{e}");
    assert!(
        e.to_string()
            .starts_with("the manifest is invalid: invalid type: string \"zero\", expected u64"),
        "{e}"
    );

    // Larger than any u64: refused by serde rather than wrapped.
    let dir = TempDir::new().unwrap();
    let pack = small_pack(dir.path());
    let huge = with_manifest_bytes(&pack, |json| {
        String::from_utf8(json.to_vec())
            .unwrap()
            .replacen("\"offset\": 0", "\"offset\": 18446744073709551616", 1)
            .into_bytes()
    });
    assert!(
        matches!(err(&huge), FormatError::ManifestInvalid(_)),
        "{}",
        err(&huge)
    );

    let e = err(&with_manifest_bytes(&pack, |_| b"not json".to_vec()));
    assert!(
        e.to_string()
            .starts_with("the manifest is invalid: expected ident"),
        "{e}"
    );
    let e = err(&with_manifest_bytes(&pack, |_| Vec::new()));
    assert!(matches!(e, FormatError::ManifestInvalid(_)), "{e}");
}

// ---------------------------------------------------------------------------------------
// Decompression bounds and extraction safety

/// A pack whose kernel is `data` compressed with zstd.
fn zstd_kernel_pack(dir: &Path, kernel: SectionSource) -> Vec<u8> {
    let out = dir.join("k.smolmachine");
    let sections = vec![
        SectionInput {
            kind: SectionKind::Kernel,
            source: kernel,
            compression: Compression::Zstd,
        },
        SectionInput {
            kind: SectionKind::Initramfs,
            source: SectionSource::Bytes(b"init".to_vec()),
            compression: Compression::None,
        },
    ];
    write_pack(&out, bare_manifest(), sections).unwrap();
    fs::read(out).unwrap()
}

/// Extracts the kernel of `bytes` into an empty directory, expecting an error, and checks
/// that nothing was left behind.
fn extract_kernel_err(bytes: &[u8]) -> FormatError {
    let dir = TempDir::new().unwrap();
    let pack = open_bytes(dir.path(), "pack", bytes).unwrap();
    let out = TempDir::new().unwrap();
    let e = pack
        .extract_section(SectionKind::Kernel, &out.path().join("vmlinux"))
        .unwrap_err();
    assert!(listing(out.path()).is_empty(), "{:?}", listing(out.path()));
    e
}

#[test]
fn a_zstd_bomb_stops_at_the_declared_size() {
    let dir = TempDir::new().unwrap();
    // 256 MiB of zeros compress to a few KiB.
    let big = dir.path().join("zeros");
    fs::File::create(&big).unwrap().set_len(256 << 20).unwrap();
    let pack = zstd_kernel_pack(dir.path(), SectionSource::File(big));
    let stored = parse(&pack).unwrap().0.sections[0].length;
    assert!(stored < 64 << 10, "{stored} bytes");
    let bomb = with_manifest(&pack, |v| {
        section_mut(v, "kernel")["uncompressed_size"] = json!(4096)
    });
    let e = extract_kernel_err(&bomb);
    assert!(
        matches!(
            e,
            FormatError::DecompressedTooLarge {
                kind: SectionKind::Kernel,
                declared: 4096
            }
        ),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "section kernel decompresses to more than its declared 4096 bytes; extraction stopped \
         there: the pack is damaged or hostile"
    );
}

#[test]
fn a_size_or_digest_lie_is_an_error_naming_the_section() {
    let dir = TempDir::new().unwrap();
    let data = text(5, 100_000);
    let pack = zstd_kernel_pack(dir.path(), SectionSource::Bytes(data.clone()));

    let short = with_manifest(&pack, |v| {
        section_mut(v, "kernel")["uncompressed_size"] = json!(99_999)
    });
    assert!(matches!(
        extract_kernel_err(&short),
        FormatError::DecompressedTooLarge {
            kind: SectionKind::Kernel,
            declared: 99_999
        }
    ));
    let long = with_manifest(&pack, |v| {
        section_mut(v, "kernel")["uncompressed_size"] = json!(100_001)
    });
    let e = extract_kernel_err(&long);
    assert!(
        matches!(
            e,
            FormatError::DecompressedSize {
                kind: SectionKind::Kernel,
                declared: 100_001,
                actual: 100_000
            }
        ),
        "{e}"
    );

    let wrong = format!("sha256:{}", "1".repeat(64));
    let lie = with_manifest(&pack, |v| {
        section_mut(v, "kernel")["uncompressed_sha256"] = json!(wrong)
    });
    let e = extract_kernel_err(&lie);
    assert_eq!(
        e.to_string(),
        format!(
            "section kernel is corrupt: its decompressed data has sha256 {}, not the declared \
             {wrong}; the pack is damaged or was modified — get a fresh copy",
            sha256(&data)
        )
    );
}

/// Stored bytes that match their digest but are not zstd: the decoder's error, named.
#[test]
fn garbage_with_a_matching_digest_is_a_decompression_error() {
    let dir = TempDir::new().unwrap();
    let pack = zstd_kernel_pack(dir.path(), SectionSource::Bytes(text(6, 10_000)));
    let (m, _) = parse(&pack).unwrap();
    let k = &m.sections[0];
    for garbage in [
        // Not a zstd frame at all.
        vec![0x55; k.length as usize],
        // A frame cut short, with zeros after it.
        {
            let mut cut = pack[..k.length as usize / 2].to_vec();
            cut.resize(k.length as usize, 0);
            cut
        },
    ] {
        let mut bad = pack.clone();
        bad[..k.length as usize].copy_from_slice(&garbage);
        let digest = sha256(&garbage);
        let bad = with_manifest(&bad, |v| section_mut(v, "kernel")["sha256"] = json!(digest));
        let e = extract_kernel_err(&bad);
        assert!(
            matches!(
                e,
                FormatError::Decompress {
                    kind: SectionKind::Kernel,
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with("section kernel cannot be decompressed: "),
            "{e}"
        );
    }
}

#[test]
fn a_failed_extraction_keeps_the_old_destination() {
    let dir = TempDir::new().unwrap();
    let pack = small_pack(dir.path());
    let mut bad = pack.clone();
    let (m, _) = parse(&pack).unwrap();
    let rootfs = m
        .sections
        .iter()
        .find(|s| s.kind == SectionKind::Rootfs)
        .unwrap();
    bad[rootfs.offset as usize + 10] ^= 1;
    let p = open_bytes(dir.path(), "bad", &bad).unwrap();
    let out = TempDir::new().unwrap();
    let dest = out.path().join("rootfs.img");
    fs::write(&dest, b"previous").unwrap();
    assert!(p.extract_section(SectionKind::Rootfs, &dest).is_err());
    assert_eq!(fs::read(&dest).unwrap(), b"previous");
    assert_eq!(listing(out.path()), ["rootfs.img"]);

    // An extraction into a directory that does not exist names the section and path.
    let nowhere = out.path().join("no/such/dir/rootfs.img");
    let e = p
        .extract_section(SectionKind::Kernel, &nowhere)
        .unwrap_err();
    assert!(
        e.to_string().starts_with(&format!(
            "cannot extract section kernel to {}: ",
            nowhere.display()
        )),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------
// Writer errors

#[test]
fn the_writer_refuses_duplicate_or_missing_sections_and_leaves_nothing() {
    let dir = TempDir::new().unwrap();
    let out_dir = TempDir::new().unwrap();
    let out = out_dir.path().join("x.smolmachine");
    let data = vec![
        (SectionKind::Kernel, text(1, 10)),
        (SectionKind::Initramfs, text(2, 10)),
        (SectionKind::Kernel, text(3, 10)),
    ];
    let e = write_pack(
        &out,
        bare_manifest(),
        inputs(dir.path(), &data, |_| Compression::None),
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            FormatError::DuplicateSection {
                kind: SectionKind::Kernel
            }
        ),
        "{e}"
    );

    let e = write_pack(
        &out,
        bare_manifest(),
        inputs(dir.path(), &data[1..2], |_| Compression::None),
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            FormatError::MissingSection {
                kind: SectionKind::Kernel
            }
        ),
        "{e}"
    );

    // An unreadable input after a written section: no pack, no temporary file.
    let missing = dir.path().join("missing-initramfs");
    let sections = vec![
        SectionInput {
            kind: SectionKind::Kernel,
            source: SectionSource::Bytes(text(1, 100_000)),
            compression: Compression::Zstd,
        },
        SectionInput {
            kind: SectionKind::Initramfs,
            source: SectionSource::File(missing.clone()),
            compression: Compression::None,
        },
    ];
    let e = write_pack(&out, bare_manifest(), sections).unwrap_err();
    assert!(
        matches!(e, FormatError::Input { kind: SectionKind::Initramfs, ref path, .. } if *path == missing),
        "{e}"
    );
    assert!(
        e.to_string().starts_with(&format!(
            "cannot read the initramfs section's input {}: ",
            missing.display()
        )),
        "{e}"
    );
    assert!(
        listing(out_dir.path()).is_empty(),
        "{:?}",
        listing(out_dir.path())
    );

    let e = write_pack(
        &out_dir.path().join("no/such/dir/x.smolmachine"),
        bare_manifest(),
        inputs(dir.path(), &data[..2], |_| Compression::None),
    )
    .unwrap_err();
    assert!(matches!(e, FormatError::Output { .. }), "{e}");
}

/// An input whose length is not the one it had when opened (here a device that reports 0
/// bytes and reads forever) is refused rather than cut short.
#[test]
fn the_writer_refuses_an_input_that_changes() {
    let out_dir = TempDir::new().unwrap();
    let out = out_dir.path().join("x.smolmachine");
    for compression in [Compression::None, Compression::Zstd] {
        let sections = vec![
            SectionInput {
                kind: SectionKind::Kernel,
                source: SectionSource::Bytes(b"k".to_vec()),
                compression,
            },
            SectionInput {
                kind: SectionKind::Initramfs,
                source: SectionSource::File("/dev/zero".into()),
                compression,
            },
        ];
        let e = write_pack(&out, bare_manifest(), sections).unwrap_err();
        assert!(
            matches!(
                e,
                FormatError::InputChanged {
                    kind: SectionKind::Initramfs,
                    len: 0,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "the initramfs section's input /dev/zero changed while it was being packed (it was 0 \
             bytes when opened); pack again once it is complete"
        );
    }
    assert!(listing(out_dir.path()).is_empty());
}

#[test]
fn the_writer_replaces_an_existing_file_and_leaves_no_temporary() {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("app.smolmachine");
    fs::File::create(&out).unwrap().write_all(b"old").unwrap();
    // 0666 less the umask, as any new file.
    let plain_mode = fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    let data = vec![
        (SectionKind::Kernel, text(1, 10)),
        (SectionKind::Initramfs, text(2, 10)),
    ];
    write_pack(
        &out,
        bare_manifest(),
        inputs(dir.path(), &data, |_| Compression::None),
    )
    .unwrap();
    Pack::open(&out).unwrap();
    let mode = fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, plain_mode & 0o644, "{mode:o}");
    let names: Vec<String> = listing(dir.path())
        .into_iter()
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}
