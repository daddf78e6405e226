//! Packs through a registry: `cargo run --release --example distribute_bench [-- RUNS]`
//!
//! Starts a local registry (Debian's docker-registry on 127.0.0.1) and writes a ~100 MB
//! synthetic pack (a 100 MiB incompressible root filesystem section, stored uncompressed as
//! real ones are, plus small kernel and initramfs sections), then measures, in process,
//! with the library calls `smolvm pack push` and `pack pull` make (median of RUNS, default 3):
//! - push to an empty repository (every blob uploaded, monolithic, streamed from the file)
//! - push again (every blob found by HEAD: nothing uploaded)
//! - pull into an empty cache, rebuilding the byte-identical .smolmachine at a path
//!   (blobs streamed to the cache and verified, then the file written, verified and fsynced)
//!
//! Anchors on this machine: oci-client blob pull ~500 MB/s to a file, monolithic push
//! ~190 MB/s.

#[path = "common.rs"]
mod common;
use smolvm_pack::distribute::{pull_pack, push_pack};
use smolvm_pack::format::{
    Compression, Manifest, SectionInput, SectionKind, SectionSource, write_pack,
};
use smolvm_registry::testutil::{Security, TestRegistry};
use smolvm_registry::{BlobCache, Event, Progress, PullOptions, Puller, Reference};
use std::sync::Arc;
use std::time::Instant;

/// Incompressible bytes from a fixed seed (xorshift), so every run packs the same file.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .map_or(3, |r| r.parse().expect("RUNS is a number"));
    let dir = tempfile::tempdir().unwrap();
    let pack = dir.path().join("bench.smolmachine");
    let section = |kind, data: Vec<u8>, compression| SectionInput {
        kind,
        source: SectionSource::Bytes(data),
        compression,
    };
    let manifest = Manifest {
        platform: "linux/amd64".into(),
        host_platform: "linux/amd64".into(),
        created: "2026-11-22T00:00:00Z".into(),
        smolvm_version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    };
    write_pack(
        &pack,
        manifest,
        vec![
            section(SectionKind::Kernel, noise(4 << 20, 1), Compression::Zstd),
            section(SectionKind::Initramfs, noise(2 << 20, 2), Compression::Zstd),
            section(SectionKind::Rootfs, noise(100 << 20, 3), Compression::None),
        ],
    )
    .unwrap();
    let size = std::fs::metadata(&pack).unwrap().len();
    let mb = size as f64 / 1e6;
    let quiet: Arc<dyn Progress> = Arc::new(|_: &Event<'_>| {});
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let (mut push, mut repush, mut pull) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        // A fresh registry each run, so the first push uploads everything.
        let reg = TestRegistry::start(Security::Plain).expect("docker-registry starts");
        let config = reg.write_config(&dir.path().join("config.toml"));
        let reference = Reference::parse(&format!("{}/bench/pack:1", reg.host()), None).unwrap();
        let started = Instant::now();
        let pushed = rt
            .block_on(push_pack(&config, &pack, &reference, quiet.clone()))
            .unwrap();
        push.push(started.elapsed().as_secs_f64());
        assert_eq!(pushed.blobs_present, 0);
        let started = Instant::now();
        let again = rt
            .block_on(push_pack(&config, &pack, &reference, quiet.clone()))
            .unwrap();
        repush.push(started.elapsed().as_secs_f64());
        assert_eq!(again.blobs_uploaded, 0);

        let cache = dir.path().join(format!("cache-{run}"));
        let puller = Puller::new(
            config,
            BlobCache::open(&cache).unwrap(),
            PullOptions::default(),
        );
        let out = dir.path().join(format!("pulled-{run}.smolmachine"));
        let started = Instant::now();
        let pulled = rt
            .block_on(pull_pack(&puller, &reference, Some(&out), quiet.clone()))
            .unwrap();
        pull.push(started.elapsed().as_secs_f64());
        assert_eq!(pulled.digest, pushed.pack_digest);
        std::fs::remove_dir_all(&cache).unwrap();
        std::fs::remove_file(&out).unwrap();
    }
    let rate = |secs: &[f64]| mb / common::median(secs.to_vec());
    let list = |secs: &[f64]| {
        secs.iter()
            .map(|s| format!("{:.0}", mb / s))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "pack: {mb:.1} MB (rootfs 104.9 MB uncompressed, kernel 4.2 MB + initramfs 2.1 MB zstd of noise); registry: docker-registry on 127.0.0.1; {runs} runs, {} CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "push, empty repository:   {:>6.0} MB/s  (runs {})",
        rate(&push),
        list(&push)
    );
    println!(
        "push again, all present:  {:>6.0} ms",
        common::median(repush) * 1000.0
    );
    println!(
        "pull to a file, empty cache: {:>6.0} MB/s  (runs {})",
        rate(&pull),
        list(&pull)
    );
}
