//! Copying between the host and a VM (`smolvm_runtime::copy`), end to end: one real VM with
//! the real agent, a writable tmpfs root, and every case checked in it.

mod common;
use common::*;
use sha2::{Digest, Sha256};
use smolvm_protocol::{CopyKind, ErrorKind, Exec, Lower, Setup, Upper};
use smolvm_runtime::copy::{self, CopyError, Progress};
use smolvm_runtime::{AgentClient, BackendKind, GuestAssets, Vm, VmSpec, attach, backend};
use std::io::Write;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const MIB: u64 = 1024 * 1024;

/// Writes `size` bytes of pseudo-random (incompressible) data; returns their SHA-256.
fn random_file(path: &Path, size: u64, seed: u64) -> Vec<u8> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut hash = Sha256::new();
    let mut x = seed | 1;
    let mut block = vec![0u8; MIB as usize];
    for _ in 0..size / MIB {
        for word in block.chunks_mut(8) {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        hash.update(&block);
        f.write_all(&block).unwrap();
    }
    f.flush().unwrap();
    hash.finalize().to_vec()
}

fn sha256_of(path: &Path) -> Vec<u8> {
    use std::io::Read;
    let mut hash = Sha256::new();
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    loop {
        match f.read(&mut buf).unwrap() {
            0 => return hash.finalize().to_vec(),
            n => hash.update(&buf[..n]),
        }
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

/// Runs a shell command in the guest; returns its output (and fails on a non-zero exit).
async fn sh(agent: &AgentClient, script: &str) -> String {
    let stream = agent
        .exec(Exec {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            ..Default::default()
        })
        .unwrap();
    let (outcome, out) = attach::collect(stream).await;
    let out = String::from_utf8_lossy(&out).into_owned();
    assert_eq!(outcome.exit_code(), 0, "{script}: {outcome:?} {out}");
    out
}

/// Names in a host directory, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Whether `f` holds within a few seconds (the far side cleans up asynchronously).
async fn eventually(mut f: impl AsyncFnMut() -> bool) -> bool {
    for _ in 0..100 {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn copies_both_ways_in_one_vm() {
    require_vm_prerequisites();
    let assets =
        GuestAssets::in_dir(&guest_dir()).expect("guest assets: run ./scripts/build-guest");
    let vm = Vm::boot(&VmSpec {
        backend: backend::select(BackendKind::Auto).unwrap(),
        cpus: 1,
        memory_mib: 512,
        boot: assets.boot(),
        disks: vec![],
        shares: vec![],
        network: None,
    })
    .await
    .unwrap();
    let agent = vm.agent();
    agent
        .setup(Setup {
            hostname: "cp".into(),
            lower: Lower::Bare,
            upper: Upper::Tmpfs,
            workspace: None,
            mounts: vec![],
            network: None,
        })
        .await
        .unwrap();
    let dir = tempdir();
    let host = dir.path();

    // --- 200 MB both ways, verified by SHA-256, mode kept ---------------------------------
    let size = 200 * MIB;
    let big = host.join("big.bin");
    let digest = random_file(&big, size, 42);
    std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o640)).unwrap();
    let mut last = None;
    let up = copy::upload(agent, &big, "/root/big.bin", false, |p| last = Some(p))
        .await
        .unwrap();
    assert_eq!((up.kind, up.bytes), (CopyKind::File, size));
    assert_eq!(
        last,
        Some(Progress {
            bytes: size,
            total: Some(size)
        })
    );
    assert_eq!(sh(agent, "stat -c %a /root/big.bin").await, "640\n");
    let back = host.join("back.bin");
    let down = copy::download(agent, "/root/big.bin", &back, false, |_| {})
        .await
        .unwrap();
    assert_eq!(down.bytes, size);
    assert!(
        sha256_of(&back) == digest,
        "the 200 MB file came back different"
    );
    assert_eq!(mode(&back), 0o640);
    std::fs::remove_file(&back).unwrap();
    sh(agent, "rm /root/big.bin").await;

    // --- directories with -r: nested dirs, a symlink, an empty dir, modes ------------------
    let tree = host.join("src/tree");
    std::fs::create_dir_all(tree.join("a/b/c")).unwrap();
    std::fs::create_dir(tree.join("empty")).unwrap();
    std::fs::write(tree.join("a/b/c/deep.txt"), b"deep\n").unwrap();
    std::fs::write(tree.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(tree.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&tree, std::fs::Permissions::from_mode(0o750)).unwrap();
    symlink("a/b/c/deep.txt", tree.join("link")).unwrap();
    let err = copy::upload(agent, &tree, "/root", false, |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, CopyError::IsDirectory { .. }), "{err}");
    assert!(err.to_string().contains("copy it with -r"), "{err}");
    // An existing directory receives the copy under the source's name, as with cp.
    copy::upload(agent, &tree, "/root", true, |_| {})
        .await
        .unwrap();
    assert_eq!(
        sh(
            agent,
            "cd /root/tree && find . | sort && readlink link && stat -c %a . run.sh && ./run.sh"
        )
        .await,
        ".\n./a\n./a/b\n./a/b/c\n./a/b/c/deep.txt\n./empty\n./link\n./run.sh\na/b/c/deep.txt\n750\n755\nhi\n"
    );
    let err = copy::download(agent, "/root/tree", host, false, |_| {})
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("/root/tree is a directory: copy it with -r"),
        "{err}"
    );
    let out = host.join("out");
    std::fs::create_dir(&out).unwrap();
    let report = copy::download(agent, "/root/tree", &out, true, |_| {})
        .await
        .unwrap();
    assert_eq!(report.kind, CopyKind::Dir);
    let got = out.join("tree");
    assert_eq!(
        std::fs::read(got.join("a/b/c/deep.txt")).unwrap(),
        b"deep\n"
    );
    assert_eq!(
        std::fs::read_link(got.join("link")).unwrap(),
        Path::new("a/b/c/deep.txt")
    );
    assert!(names(&got.join("empty")).is_empty());
    assert_eq!(mode(&got), 0o750);
    assert_eq!(mode(&got.join("run.sh")), 0o755);

    // --- an existing destination is replaced, directories included --------------------------
    let v2 = host.join("v2/tree");
    std::fs::create_dir_all(&v2).unwrap();
    std::fs::write(v2.join("only-in-v2"), b"v2\n").unwrap();
    copy::upload(agent, &v2, "/root", true, |_| {})
        .await
        .unwrap();
    assert_eq!(
        sh(agent, "ls -A /root/tree; cat /root/tree/only-in-v2").await,
        "only-in-v2\nv2\n"
    );
    copy::download(agent, "/root/tree", &out, true, |_| {})
        .await
        .unwrap();
    assert_eq!(names(&out), ["tree"], "old tree and temporaries are gone");
    assert_eq!(names(&out.join("tree")), ["only-in-v2"]);
    let small = host.join("f.txt");
    std::fs::write(&small, b"new\n").unwrap();
    sh(agent, "echo old > /root/f.txt").await;
    copy::upload(agent, &small, "/root/f.txt", false, |_| {})
        .await
        .unwrap();
    assert_eq!(sh(agent, "cat /root/f.txt").await, "new\n");

    // --- an interrupted copy leaves the old destination and nothing else ---------------------
    let medium = host.join("medium.bin");
    let medium_digest = random_file(&medium, 64 * MIB, 7);
    let cut = Arc::new(tokio::sync::Notify::new());
    let notify = cut.clone();
    tokio::select! {
        r = copy::upload(agent, &medium, "/root/f.txt", false, move |p| if p.bytes >= 8 * MIB { notify.notify_one() }) => {
            panic!("the upload was to be interrupted, it ended: {r:?}")
        }
        _ = cut.notified() => {}
    }
    assert!(
        eventually(async || sh(agent, "ls -A /root").await == "f.txt\ntree\n").await,
        "a temporary was left in the guest: {}",
        sh(agent, "ls -A /root").await
    );
    assert_eq!(sh(agent, "cat /root/f.txt").await, "new\n");
    copy::upload(agent, &medium, "/root/medium.bin", false, |_| {})
        .await
        .unwrap();
    let kept = host.join("kept.bin");
    std::fs::write(&kept, b"old\n").unwrap();
    let notify = cut.clone();
    tokio::select! {
        r = copy::download(agent, "/root/medium.bin", &kept, false, move |p| if p.bytes >= 8 * MIB { notify.notify_one() }) => {
            panic!("the download was to be interrupted, it ended: {r:?}")
        }
        _ = cut.notified() => {}
    }
    let host_names = || names(host);
    assert!(
        eventually(async || !host_names().iter().any(|n| n.contains("smolvm-cp"))).await,
        "a temporary was left on the host: {:?}",
        host_names()
    );
    assert_eq!(std::fs::read(&kept).unwrap(), b"old\n");
    // The agent is fine afterwards: the same copy now completes.
    copy::download(agent, "/root/medium.bin", &kept, false, |_| {})
        .await
        .unwrap();
    assert!(sha256_of(&kept) == medium_digest);

    // --- errors name the path ----------------------------------------------------------------
    let err = copy::download(agent, "/no/such/file", host, false, |_| {})
        .await
        .unwrap_err();
    match &err {
        CopyError::Guest { path, reply } => {
            assert_eq!(path, "/no/such/file");
            assert_eq!(reply.kind, ErrorKind::NotFound);
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("/no/such/file"), "{err}");
    assert!(
        !err.to_string().contains("/smolvm/root"),
        "agent paths leak: {err}"
    );
    let err = copy::upload(agent, &small, "/no/such/dir/f.txt", false, |_| {})
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("the directory /no/such/dir does not exist"),
        "{err}"
    );
    let missing = host.join("missing");
    let err = copy::upload(agent, &missing, "/root", false, |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, CopyError::Host { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
    let err = copy::download(agent, "relative/path", host, false, |_| {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("must be absolute"), "{err}");

    vm.shutdown().await;
}
