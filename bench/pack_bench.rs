//! Packed executables: `cargo run --release --example pack_bench [-- RUNS]`
//!
//! Starts a local registry (Debian's docker-registry) with the busybox fixture and a
//! ~100 MB image (busybox plus 100 MB of incompressible files), then measures, with the
//! binaries in target/release (build them first: ./scripts/setup or cargo build --release
//! --workspace):
//! - warm `./app run -- true` against `smolvm machine run --image same -- true` (goal <= 1.0)
//! - host overhead from exec to VMM start (SMOLVM_TRACE "vmm spawned"; goal <= 10 ms)
//! - the extra cost of a cold first run of the ~100 MB pack (empty section cache), measured
//!   on the "vmm spawned" mark, where all extraction and verification has happened (goal <= 150 ms)
//! - `pack create` time for the ~100 MB image, image already cached and from nothing (goal <= 3 s)
//! - stub size (goal <= 12 MB stripped) and the packed busybox app's size (goal <= 25 MB)

#[path = "common.rs"]
mod common;
use smolvm_registry::testutil::{self, Format, Security, TestRegistry};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

struct Bench {
    home: tempfile::TempDir,
    release: PathBuf,
}

impl Bench {
    fn env(&self, c: &mut Command) {
        let h = self.home.path();
        c.env("XDG_CONFIG_HOME", h.join("config"))
            .env("XDG_CACHE_HOME", h.join("cache"))
            .env("XDG_DATA_HOME", h.join("data"))
            .env("XDG_RUNTIME_DIR", h.join("run"));
    }

    /// Runs a command; returns its wall time in ms and the SMOLVM_TRACE marks it printed.
    fn timed(&self, program: &Path, args: &[&str]) -> (f64, Vec<(String, f64)>) {
        let mut c = Command::new(program);
        c.args(args).env("SMOLVM_TRACE", "1");
        self.env(&mut c);
        let start = Instant::now();
        let out = c.output().expect("runs");
        let wall = start.elapsed().as_secs_f64() * 1000.0;
        assert!(
            out.status.success(),
            "{} {:?}: {}",
            program.display(),
            args,
            String::from_utf8_lossy(&out.stderr)
        );
        let marks = String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("smolvm-trace")?.trim_start();
                let (ms, name) = rest.split_once(" ms  ")?;
                Some((name.to_string(), ms.trim().parse().ok()?))
            })
            .collect();
        (wall, marks)
    }

    fn smolvm(&self) -> PathBuf {
        self.release.join("smolvm")
    }
}

fn mark(marks: &[(String, f64)], name: &str) -> f64 {
    marks
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, ms)| *ms)
        .unwrap_or(f64::NAN)
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .map_or(10, |r| r.parse().expect("RUNS is a number"));
    let release = common::release_dir();
    for bin in ["smolvm", "smolvm-stub"] {
        assert!(
            release.join(bin).exists(),
            "{} missing: cargo build --release --workspace",
            release.join(bin).display()
        );
    }
    let b = Bench {
        home: tempfile::tempdir().unwrap(),
        release,
    };
    for d in ["config/smolvm", "cache", "data", "run"] {
        std::fs::create_dir_all(b.home.path().join(d)).unwrap();
    }
    let reg = TestRegistry::start(Security::Plain).expect("docker-registry starts");
    reg.write_config(&b.home.path().join("config/smolvm/config.toml"));
    let busybox = testutil::busybox().unwrap();
    let mut big = testutil::random_layers(100 << 20, 4, 7).unwrap();
    big.layers.insert(0, busybox.layers[0].clone());
    big.config = busybox.config.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        testutil::push_image(&reg, "bench/busybox:1", &busybox, Format::Oci)
            .await
            .unwrap();
        testutil::push_image(&reg, "bench/big:1", &big, Format::Oci)
            .await
            .unwrap();
    });
    let small_ref = format!("{}/bench/busybox:1", reg.host());
    let big_ref = format!("{}/bench/big:1", reg.host());
    let out = b.home.path().join("apps");
    std::fs::create_dir_all(&out).unwrap();
    let vm = ["--cpus", "1", "--mem", "512"];

    // pack create of the ~100 MB image: from nothing (pull + root filesystem + pack), then
    // with the image cached.
    let big_app = out.join("big");
    let mut args = vec![
        "pack",
        "create",
        "-q",
        "-I",
        &big_ref,
        "-o",
        big_app.to_str().unwrap(),
        "--single-file",
    ];
    args.extend(vm);
    let (create_cold, _) = b.timed(&b.smolvm(), &args);
    let create_warm = common::median((0..3).map(|_| b.timed(&b.smolvm(), &args).0).collect());

    let small_app = out.join("bb");
    let mut args = vec![
        "pack",
        "create",
        "-q",
        "-I",
        &small_ref,
        "-o",
        small_app.to_str().unwrap(),
        "--single-file",
    ];
    args.extend(vm);
    b.timed(&b.smolvm(), &args);

    // Warm runs, interleaved.
    let mut run_args = vec!["machine", "run", "-q", "-I", &small_ref];
    run_args.extend(vm);
    run_args.extend(["--", "true"]);
    b.timed(&small_app, &["run", "--", "true"]);
    b.timed(&b.smolvm(), &run_args);
    let (mut app_walls, mut smol_walls, mut app_spawn, mut smol_spawn) =
        (vec![], vec![], vec![], vec![]);
    for _ in 0..runs {
        let (w, m) = b.timed(&small_app, &["run", "--", "true"]);
        app_walls.push(w);
        app_spawn.push(mark(&m, "vmm spawned"));
        let (w, m) = b.timed(&b.smolvm(), &run_args);
        smol_walls.push(w);
        smol_spawn.push(mark(&m, "vmm spawned"));
    }

    // Cold first runs of the ~100 MB pack against warm ones: the extra work all happens
    // before the VMM starts.
    let sections = b.home.path().join("cache/smolvm/sections");
    let (mut cold, mut warm) = (vec![], vec![]);
    for _ in 0..runs.min(5) {
        let _ = std::fs::remove_dir_all(&sections);
        cold.push(mark(
            &b.timed(&big_app, &["run", "--", "true"]).1,
            "vmm spawned",
        ));
        warm.push(mark(
            &b.timed(&big_app, &["run", "--", "true"]).1,
            "vmm spawned",
        ));
    }

    let stub_size = std::fs::metadata(b.release.join("smolvm-stub"))
        .unwrap()
        .len();
    let app_size = std::fs::metadata(&small_app).unwrap().len();
    let big_size = std::fs::metadata(&big_app).unwrap().len();
    println!(
        "pack benchmark, {} runs; {}",
        runs,
        common::host_conditions()
    );
    println!("VM: 1 vCPU, 512 MiB (TCG on this host)");
    let (a, s) = (
        common::median(app_walls.clone()),
        common::median(smol_walls.clone()),
    );
    println!(
        "warm `./app run -- true`                  median {a:7.0} ms  (min {:.0})",
        app_walls.iter().cloned().fold(f64::MAX, f64::min)
    );
    println!(
        "`smolvm machine run --image same -- true` median {s:7.0} ms  (min {:.0})",
        smol_walls.iter().cloned().fold(f64::MAX, f64::min)
    );
    println!(
        "ratio app / smolvm                        {:.3}  (goal <= 1.0)",
        a / s
    );
    println!(
        "host overhead exec -> VMM start: app {:.2} ms, smolvm {:.2} ms  (goal <= 10 ms; ms since main())",
        common::median(app_spawn),
        common::median(smol_spawn)
    );
    let (c, w) = (common::median(cold.clone()), common::median(warm.clone()));
    println!(
        "~100 MB pack ({} MB): VMM start cold {c:.1} ms, warm {w:.1} ms: first-run extra {:.1} ms  (goal <= 150 ms)",
        big_size / 1_000_000,
        c - w
    );
    println!(
        "pack create of the ~100 MB image: {create_warm:.0} ms with the image cached (goal <= 3 s), {create_cold:.0} ms from nothing (pull + root filesystem + pack)"
    );
    println!(
        "stub: {:.1} MB stripped (goal <= 12 MB); packed busybox app: {:.1} MB (goal <= 25 MB)",
        stub_size as f64 / 1e6,
        app_size as f64 / 1e6
    );
}
