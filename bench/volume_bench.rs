//! Volumes: `cargo run --release --example volume_bench [-- RUNS]`
//!
//! Reads a 200 MiB file of incompressible data inside a VM (1 vCPU, 1024 MiB; TCG on a host
//! without hardware virtualization), guest page cache dropped before every read, from:
//! - the image's root filesystem (squashfs on virtio-blk), the image served by a local
//!   registry (Debian's docker-registry) with the busybox fixture plus the file;
//! - a `-v HOST:GUEST:ro` volume as smolvm mounts it (9p, msize 512000, cache=mmap);
//! - the same volume remounted with other 9p options, to show what the choice is worth.
//!
//! Each read is done with `cat` (small reads, as most tools do) and `dd bs=1M`. Needs the
//! binaries in target/release (cargo build --release --workspace) and the guest assets.

#[path = "common.rs"]
mod common;
use smolvm_registry::testutil::{self, Format, Security, TestRegistry};
use std::collections::BTreeMap;
use std::io::Read;
use std::process::Command;

const SIZE: usize = 200 << 20;

/// The 9p mounts compared: guest path and options (the first is smolvm's own mount).
const VARIANTS: [(&str, &str); 3] = [
    ("/vol", "smolvm: msize=512000,cache=mmap"),
    ("/v-loose", "msize=512000,cache=loose"),
    ("/v-small", "msize=65536,cache=mmap"),
];

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .map_or(3, |r| r.parse().expect("RUNS is a number"));
    let release = common::release_dir();
    let smolvm = release.join("smolvm");
    assert!(
        smolvm.exists(),
        "{} missing: cargo build --release --workspace",
        smolvm.display()
    );
    let home = tempfile::tempdir().unwrap();
    for d in ["config/smolvm", "cache", "run", "share"] {
        std::fs::create_dir_all(home.path().join(d)).unwrap();
    }
    let reg = TestRegistry::start(Security::Plain).expect("docker-registry starts");
    reg.write_config(&home.path().join("config/smolvm/config.toml"));
    let busybox = testutil::busybox().unwrap();
    let mut image = testutil::random_layers(SIZE, 1, 11).unwrap();
    image.layers.insert(0, busybox.layers[0].clone());
    image.config = busybox.config.clone();
    // Root in the guest: dropping caches and remounting need it.
    image.config["User"] = "root".into();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(testutil::push_image(
            &reg,
            "bench/big:1",
            &image,
            Format::Oci,
        ))
        .unwrap();
    let reference = format!("{}/bench/big:1", reg.host());
    let share = home.path().join("share");
    let mut data = vec![0u8; SIZE];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut data)
        .unwrap();
    std::fs::write(share.join("big.bin"), &data).unwrap();
    drop(data);

    // Every extra mount is a volume of its own (a 9p channel takes one mount), remounted
    // with the options under test. Each read starts with an empty guest page cache.
    let mut script = String::from(
        "r() { echo 3 > /proc/sys/vm/drop_caches; a=$(cut -d' ' -f1 /proc/uptime); \"$@\" > /dev/null 2>&1 || echo FAILED \"$@\"; b=$(cut -d' ' -f1 /proc/uptime); echo \"$a $b\"; }\n",
    );
    for (i, (path, opts)) in VARIANTS.iter().enumerate().skip(1) {
        let opts = opts.split_once(": ").map_or(*opts, |(_, o)| o);
        script.push_str(&format!(
            "umount {path} && mount -t 9p -o ro,trans=virtio,version=9p2000.L,{opts} smolvm.vol{i} {path} || echo FAILED mount {path}\n"
        ));
    }
    let mut files = vec![(
        "image rootfs (squashfs, virtio-blk)".to_string(),
        "/data-0.bin".to_string(),
    )];
    for (path, opts) in VARIANTS {
        files.push((format!("volume, 9p {opts}"), format!("{path}/big.bin")));
    }
    for (_, f) in &files {
        script.push_str(&format!(
            "echo \"cat {f} $(r cat {f})\"\necho \"dd {f} $(r dd if={f} of=/dev/null bs=1M)\"\n"
        ));
    }

    let mut results: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for run in 0..runs {
        let mut c = Command::new(&smolvm);
        c.args([
            "machine", "run", "-q", "--cpus", "1", "--mem", "1024", "-I", &reference,
        ]);
        for (path, _) in VARIANTS {
            c.arg("-v").arg(format!("{}:{path}:ro", share.display()));
        }
        c.args(["--", "sh", "-c", &script]);
        let h = home.path();
        c.env("XDG_CONFIG_HOME", h.join("config"))
            .env("XDG_CACHE_HOME", h.join("cache"))
            .env("XDG_RUNTIME_DIR", h.join("run"));
        let out = c.output().expect("smolvm runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && !text.contains("FAILED"),
            "run {run}: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in text.lines() {
            let w: Vec<&str> = line.split_whitespace().collect();
            let [tool, file, a, b] = w[..] else {
                panic!("unexpected output line {line:?}")
            };
            let secs = b.parse::<f64>().unwrap() - a.parse::<f64>().unwrap();
            results
                .entry((file.to_string(), tool.to_string()))
                .or_default()
                .push(secs);
        }
    }

    println!(
        "volume benchmark: {runs} runs, 200 MiB incompressible file, guest cache dropped before each read; {}",
        common::host_conditions()
    );
    println!("VM: 1 vCPU, 1024 MiB; MB/s = 10^6 bytes/s, median (min-max) of the runs");
    for (what, file) in &files {
        let mut row = format!("{what:<45}");
        for tool in ["cat", "dd"] {
            let secs = &results[&(file.clone(), tool.to_string())];
            let mbs = |s: f64| SIZE as f64 / 1e6 / s;
            let (lo, hi) = secs
                .iter()
                .fold((f64::MAX, f64::MIN), |(l, h), &s| (l.min(s), h.max(s)));
            row.push_str(&format!(
                "  {tool} {:6.0} MB/s ({:.0}-{:.0})",
                mbs(common::median(secs.clone())),
                mbs(hi),
                mbs(lo)
            ));
        }
        println!("{row}");
    }
}
