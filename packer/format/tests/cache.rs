//! The section cache: extraction once, verification of what it finds, runs that never wait
//! on each other, and eviction that spares entries in use.

use smolvm_pack_format::cache::SectionCache;
use smolvm_pack_format::{
    Compression, Manifest, Pack, SectionInput, SectionKind, SectionSource, write_pack,
};
use std::sync::mpsc;
use std::time::Duration;

fn pack(dir: &std::path::Path) -> Pack {
    let out = dir.join("app.smolmachine");
    let manifest = Manifest {
        platform: "linux/amd64".into(),
        host_platform: "linux/amd64".into(),
        created: "2026-11-22T08:00:00Z".into(),
        smolvm_version: "0.1.0".into(),
        ..Manifest::default()
    };
    let section = |kind, byte: u8| SectionInput {
        kind,
        source: SectionSource::Bytes(vec![byte; 300_000]),
        compression: Compression::Zstd,
    };
    write_pack(
        &out,
        manifest,
        vec![
            section(SectionKind::Kernel, b'k'),
            section(SectionKind::Initramfs, b'i'),
        ],
    )
    .unwrap();
    Pack::open(&out).unwrap()
}

/// Runs `f` on a thread and fails the test if it does not finish in time (a deadlock).
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .expect("the cache blocked: a user of an entry made another wait")
}

#[test]
fn sections_are_extracted_once_and_a_damaged_entry_is_extracted_again() {
    let tmp = tempfile::tempdir().unwrap();
    let pack = pack(tmp.path());
    let cache = SectionCache::open(&tmp.path().join("cache")).unwrap();
    let first = cache
        .materialize(&pack, SectionKind::Kernel, false)
        .unwrap();
    assert!(first.extracted);
    assert_eq!(std::fs::read(&first.path).unwrap(), vec![b'k'; 300_000]);
    let path = first.path.clone();
    drop(first);
    let again = cache
        .materialize(&pack, SectionKind::Kernel, false)
        .unwrap();
    assert!(!again.extracted);
    drop(again);
    // Same length, other bytes, and no marker of this boot: re-hashed, found wrong, replaced.
    let _ = std::fs::remove_file(path.with_extension("boot"));
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::write(&path, vec![b'x'; 300_000]).unwrap();
    let repaired = cache
        .materialize(&pack, SectionKind::Kernel, false)
        .unwrap();
    assert!(repaired.extracted);
    assert_eq!(std::fs::read(&repaired.path).unwrap(), vec![b'k'; 300_000]);
}

#[test]
fn users_of_entries_never_wait_for_each_other_in_any_order() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    pack(&dir);
    let open = move || {
        let p = Pack::open(&dir.join("app.smolmachine")).unwrap();
        (p, SectionCache::open(&dir.join("cache")).unwrap())
    };
    // Two "runs" hold one section each (as a running VM does), then each asks for the
    // other's: with an exclusive lock taken up front this deadlocked.
    let (a_pack, a_cache) = open();
    let (b_pack, b_cache) = open();
    let a_kernel = a_cache
        .materialize(&a_pack, SectionKind::Kernel, false)
        .unwrap();
    let b_initramfs = b_cache
        .materialize(&b_pack, SectionKind::Initramfs, false)
        .unwrap();
    let a = std::thread::spawn(move || {
        a_cache
            .materialize(&a_pack, SectionKind::Initramfs, false)
            .map(|s| s.extracted)
    });
    let b = within(10, move || {
        b_cache
            .materialize(&b_pack, SectionKind::Kernel, false)
            .map(|s| s.extracted)
    });
    assert!(!b.unwrap(), "the kernel was extracted already");
    assert!(!a.join().unwrap().unwrap());
    drop((a_kernel, b_initramfs));
}

#[test]
fn eviction_spares_entries_in_use() {
    let tmp = tempfile::tempdir().unwrap();
    let pack = pack(tmp.path());
    let cache = SectionCache::open(&tmp.path().join("cache")).unwrap();
    let kernel = cache
        .materialize(&pack, SectionKind::Kernel, false)
        .unwrap();
    let initramfs = cache
        .materialize(&pack, SectionKind::Initramfs, false)
        .unwrap();
    let (kernel_path, initramfs_path) = (kernel.path.clone(), initramfs.path.clone());
    drop(initramfs);
    cache.evict(0);
    assert!(kernel_path.exists(), "an entry in use was evicted");
    assert!(!initramfs_path.exists(), "an unused entry was kept");
    drop(kernel);
    cache.evict(0);
    assert!(!kernel_path.exists());
    assert_eq!(cache.size(), 0);
}
