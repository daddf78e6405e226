//! File copy throughput between the host and a VM: `cargo run --release --example cp_bench [-- MB RUNS]`
//!
//! Boots one VM (1 vCPU, 512 MiB, writable tmpfs root) from the guest assets in
//! `$SMOLVM_GUEST_DIR`, else the ones ./scripts/build-guest wrote (target/guest), then copies a
//! file of incompressible data (default 200 MB) into it and back out RUNS times (default 3)
//! with `smolvm_runtime::copy`, the engine of `smolvm machine cp`, and prints the median
//! MB/s each way with the conditions (backend, load average).

#[path = "common.rs"]
mod common;
use smolvm_protocol::{Exec, Lower, Setup, Upper};
use smolvm_runtime::{BackendKind, GuestAssets, Vm, VmSpec, attach, backend, copy};
use std::io::Write;
use std::path::PathBuf;

fn guest_dir() -> PathBuf {
    std::env::var_os("SMOLVM_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().expect("own path");
            // target/release/examples/cp_bench -> target/guest
            exe.parent().unwrap().join("../../guest")
        })
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("usage: cp_bench [MB RUNS]"))
        .collect();
    let mb = args.first().copied().unwrap_or(200);
    let runs = args.get(1).copied().unwrap_or(3);
    let size = mb * 1_000_000;

    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.bin");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&src).unwrap());
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..size / 8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        f.write_all(&x.to_le_bytes()).unwrap();
    }
    f.flush().unwrap();
    drop(f);

    let assets = GuestAssets::in_dir(&guest_dir())
        .expect("guest assets not found: run ./scripts/build-guest or set SMOLVM_GUEST_DIR");
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
            hostname: "bench".into(),
            lower: Lower::Bare,
            upper: Upper::Tmpfs,
            workspace: None,
            mounts: vec![],
            network: None,
        })
        .await
        .unwrap();

    let (mut up, mut down) = (Vec::new(), Vec::new());
    let back = dir.path().join("back.bin");
    for _ in 0..runs {
        let r = copy::upload(agent, &src, "/root/bench.bin", false, |_| {})
            .await
            .unwrap();
        up.push(size as f64 / 1e6 / r.elapsed.as_secs_f64());
        let r = copy::download(agent, "/root/bench.bin", &back, false, |_| {})
            .await
            .unwrap();
        down.push(size as f64 / 1e6 / r.elapsed.as_secs_f64());
        assert_eq!(std::fs::metadata(&back).unwrap().len(), size);
        // The guest's tmpfs holds one copy at a time.
        let rm = agent
            .exec(Exec {
                argv: vec!["rm".into(), "/root/bench.bin".into()],
                ..Default::default()
            })
            .unwrap();
        let (outcome, _) = attach::collect(rm).await;
        assert_eq!(outcome.exit_code(), 0);
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "cp_bench: {mb} MB file, {runs} runs, VM 1 vCPU / 512 MiB, tmpfs root, backend {}, load average {}",
        vm.backend(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "upload   (host -> VM): median {:.1} MB/s  (runs: {})",
        common::median(up.clone()),
        fmt(&up)
    );
    println!(
        "download (VM -> host): median {:.1} MB/s  (runs: {})",
        common::median(down.clone()),
        fmt(&down)
    );
    vm.shutdown().await;
}

fn fmt(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
}
