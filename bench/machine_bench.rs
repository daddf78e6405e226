//! Persistent machines: `cargo run --release --example machine_bench [-- RUNS [CPUS MEM_MIB]]`
//!
//! With the binaries in target/release (./scripts/setup, or cargo build --release
//! --workspace), in a private data directory, on a bare machine, measures:
//! - `machine start` to the first `exec` answered (start returns when the machine serves)
//! - a warm `machine exec -- true` round trip (a new client process each time, as a user runs it)
//! - the host RSS of an idle machine's supervisor (its own memory, not the VMM's)
//! - `machine stop`

#[path = "common.rs"]
mod common;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

struct Bench {
    home: tempfile::TempDir,
    smolvm: PathBuf,
}

impl Bench {
    fn run(&self, args: &[&str]) -> (f64, String) {
        let h = self.home.path();
        let start = Instant::now();
        let out = Command::new(&self.smolvm)
            .args(args)
            .env("XDG_DATA_HOME", h.join("data"))
            .env("XDG_RUNTIME_DIR", h.join("run"))
            .env_remove("SMOLVM_DATA_DIR")
            .output()
            .expect("smolvm runs");
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        assert!(
            out.status.success(),
            "smolvm {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (ms, String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let runs: usize = args
        .next()
        .map_or(5, |r| r.parse().expect("RUNS is a number"));
    let cpus = args.next().unwrap_or_else(|| "1".into());
    let mem = args.next().unwrap_or_else(|| "512".into());
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let b = Bench {
        home: tempfile::tempdir().unwrap(),
        smolvm: root.join("target/release/smolvm"),
    };
    std::fs::create_dir_all(b.home.path().join("run")).unwrap();
    b.run(&["machine", "create", "bench", "--cpus", &cpus, "--mem", &mem]);

    let (mut start_ready, mut stops, mut rss) = (Vec::new(), Vec::new(), Vec::new());
    let mut execs = Vec::new();
    for _ in 0..runs {
        let (start, _) = b.run(&["machine", "start", "-n", "bench"]);
        let (first, _) = b.run(&["machine", "exec", "-n", "bench", "--", "true"]);
        start_ready.push(start + first);
        for _ in 0..10 {
            execs.push(b.run(&["machine", "exec", "-n", "bench", "--", "true"]).0);
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
        let (_, status) = b.run(&["machine", "status", "-n", "bench", "--json"]);
        let json: serde_json::Value = serde_json::from_str(&status).unwrap();
        rss.push(common::rss_kib(json["pid"].as_u64().unwrap() as u32) as f64);
        stops.push(b.run(&["machine", "stop", "-n", "bench"]).0);
    }
    b.run(&["machine", "delete", "bench"]);

    let kvm = if std::fs::metadata("/dev/kvm").is_ok() {
        "present"
    } else {
        "absent"
    };
    println!("machine_bench: {runs} runs, bare machine, {cpus} vCPU / {mem} MiB, /dev/kvm {kvm}");
    println!(
        "  start -> first exec answered  {:8.0} ms (median)",
        common::median(start_ready)
    );
    println!(
        "  warm exec -- true round trip  {:8.1} ms (median of {})",
        common::median(execs.clone()),
        execs.len()
    );
    println!(
        "  idle supervisor RSS           {:8.0} KiB (median)",
        common::median(rss)
    );
    println!(
        "  stop                          {:8.0} ms (median)",
        common::median(stops)
    );
}
