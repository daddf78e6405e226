//! Writes the seed corpus of the `pack_reader` fuzz target: small valid packs of every
//! shape (bare and full manifests, both compressions, empty sections, an executable).
//!
//! `cargo run --release --features seed --example seed` (in fuzz/); the corpus directory
//! is `corpus/pack_reader` beside this crate's Cargo.toml unless given as an argument.

use std::fs;
use std::path::{Path, PathBuf};

use smolvm_pack_format::{
    ALIGN, Compression, HealthCheck, ImageInfo, Manifest, SectionInput, SectionKind, SectionSource,
    write_pack,
};

fn main() {
    let dir = std::env::args_os().nth(1).map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/pack_reader"),
        PathBuf::from,
    );
    fs::create_dir_all(&dir).unwrap();
    let bare = Manifest {
        platform: "linux/amd64".into(),
        host_platform: "linux/amd64".into(),
        created: "2026-11-22T08:00:00Z".into(),
        smolvm_version: "0.1.0".into(),
        ..Manifest::default()
    };
    let mut full = bare.clone();
    full.image = Some(ImageInfo {
        reference: "alpine:3".into(),
        digest: format!("sha256:{}", "0".repeat(64)),
    });
    full.run.cmd = vec!["/bin/sh".into(), "-c".into(), "echo hi".into()];
    full.run.env = vec!["A=1".into()];
    full.run.workdir = Some("/".into());
    full.network.ports = vec!["8080:80".into()];
    full.health = Some(HealthCheck {
        exec: vec!["true".into()],
        ..HealthCheck::default()
    });

    let text = |n: usize| b"smolvm ".repeat(n);
    let section = |kind, data: Vec<u8>, compression| SectionInput {
        kind,
        source: SectionSource::Bytes(data),
        compression,
    };
    // Spelled out: `None` alone would read as Option's.
    let (none, zstd) = (Compression::None, Compression::Zstd);
    use SectionKind::*;
    let seeds = [
        (
            "bare",
            bare.clone(),
            vec![
                section(Kernel, text(40), zstd),
                section(Initramfs, text(10), none),
            ],
        ),
        (
            "empty-sections",
            bare,
            vec![
                section(Kernel, Vec::new(), zstd),
                section(Initramfs, Vec::new(), none),
            ],
        ),
        (
            "full",
            full.clone(),
            vec![
                section(Kernel, text(300), zstd),
                section(Initramfs, b"init".to_vec(), zstd),
                section(Rootfs, text(20), none),
                section(OverlayTemplate, vec![0; 3000], zstd),
                section(StorageTemplate, vec![0; 100], none),
            ],
        ),
        (
            "uncompressed",
            full,
            vec![
                section(Kernel, text(5), none),
                section(Initramfs, text(6), none),
                section(Rootfs, text(7), none),
            ],
        ),
    ];
    for (name, manifest, sections) in seeds {
        let path = dir.join(format!("{name}.smolmachine"));
        write_pack(&path, manifest, sections).unwrap();
        if name == "full" {
            // The same payload appended to a stub, padded to ALIGN.
            let mut exe = b"\x7fELF\x02\x01\x01\0".to_vec();
            exe.resize(100, 1);
            exe.resize(ALIGN as usize, 0);
            exe.extend(fs::read(&path).unwrap());
            fs::write(dir.join("executable"), exe).unwrap();
        }
    }
    println!("seeds written to {}", dir.display());
}
