//! Benchmark of `build_rootfs` on a synthetic image shaped like a Debian Python install.
//!
//! `cargo run --release -p smolvm-pack --example rootfs_bench [-- RUNS [ZSTD_LEVEL [SCALE]]]`
//!
//! Generates three deterministic gzip layers (base system, Python, app) in a temporary
//! directory, about 100 MB of file content: many small text files (`.py`-like, compress
//! well), some medium ones, and a few large binaries (`.so`-like, half random), plus
//! whiteouts, symlinks and hardlinks. Then builds the image RUNS times (default 3) and
//! prints wall time, throughput over the file bytes, peak RSS of the build, counts,
//! image size, machine and date. Generation is not timed.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Duration;

use smolvm_pack::rootfs::{BuildOptions, Layer, build_rootfs};
use tar::{EntryType, Header};

const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// xorshift64*: deterministic and fast enough to make 100 MB quickly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const WORDS: &[&str] = &[
    "def",
    "return",
    "self",
    "import",
    "from",
    "class",
    "if",
    "else",
    "for",
    "in",
    "None",
    "True",
    "False",
    "raise",
    "value",
    "name",
    "path",
    "data",
    "result",
    "args",
    "kwargs",
    "try",
    "except",
    "with",
    "as",
    "len",
    "str",
    "int",
    "dict",
    "list",
    "os",
    "sys",
    "=",
    "(",
    ")",
    ":",
    "\n    ",
    "\n        ",
    "\n",
    "# ",
    "yield",
    "lambda",
    "assert",
    "not",
];

/// Source-code-like text: compresses about 4:1 with zstd, like real `.py` files.
fn text(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        out.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes());
        out.push(b' ');
        if rng.below(8) == 0 {
            out.extend_from_slice(format!("x{}", rng.below(500)).as_bytes());
        }
    }
    out.truncate(len);
    out
}

/// Machine-code-like bytes: runs of random bytes between runs of repeated patterns,
/// compressing about 2:1 like shared libraries.
fn binary(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 512);
    while out.len() < len {
        let run = 64 + rng.below(448) as usize;
        if rng.below(2) == 0 {
            out.extend((0..run).map(|_| rng.next() as u8));
        } else {
            let byte = rng.next() as u8;
            out.extend(
                std::iter::repeat_n(byte, run / 4).chain((0..run - run / 4).map(|i| (i % 7) as u8)),
            );
        }
    }
    out.truncate(len);
    out
}

struct LayerWriter {
    tar: tar::Builder<flate2::write::GzEncoder<BufWriter<File>>>,
    files: u64,
    bytes: u64,
}

impl LayerWriter {
    fn create(path: &Path) -> Self {
        let gz = flate2::write::GzEncoder::new(
            BufWriter::new(File::create(path).unwrap()),
            flate2::Compression::fast(),
        );
        LayerWriter {
            tar: tar::Builder::new(gz),
            files: 0,
            bytes: 0,
        }
    }

    fn entry(&mut self, path: &str, kind: EntryType, mode: u32, data: &[u8], link: Option<&str>) {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        if let Some(link) = link {
            h.set_link_name(link).unwrap();
        }
        self.tar.append_data(&mut h, path, data).unwrap();
        self.files += 1;
        self.bytes += data.len() as u64;
    }

    fn finish(self) -> (u64, u64) {
        self.tar
            .into_inner()
            .unwrap()
            .finish()
            .unwrap()
            .flush()
            .unwrap();
        (self.files, self.bytes)
    }
}

/// One layer of `count` files under `prefix` with a realistic size mix, totalling
/// roughly `target` bytes.
fn fill(w: &mut LayerWriter, rng: &mut Rng, prefix: &str, count: usize, target: u64) {
    let mut dirs = Vec::new();
    for d in 0..count / 40 + 1 {
        let dir = format!("{prefix}/pkg{d}");
        w.entry(&format!("{dir}/"), EntryType::Directory, 0o755, &[], None);
        dirs.push(dir);
    }
    let big_budget = target / 3;
    let mut big = 0;
    for i in 0..count {
        let dir = &dirs[rng.below(dirs.len() as u64) as usize];
        let roll = rng.below(100);
        let (name, data) = if roll < 3 && big < big_budget {
            let len = 500_000 + rng.below(2_500_000) as usize;
            big += len as u64;
            (format!("{dir}/lib{i}.so"), binary(rng, len))
        } else if roll < 20 {
            (format!("{dir}/mod{i}.pyc"), {
                let len = 1_000 + rng.below(30_000) as usize;
                binary(rng, len)
            })
        } else {
            (format!("{dir}/mod{i}.py"), {
                let len = 100 + rng.below(12_000) as usize;
                text(rng, len)
            })
        };
        w.entry(
            &name,
            EntryType::Regular,
            if name.ends_with(".so") { 0o755 } else { 0o644 },
            &data,
            None,
        );
        if i % 97 == 0 {
            w.entry(
                &format!("{name}.link"),
                EntryType::Symlink,
                0o777,
                &[],
                Some(&name),
            );
        }
        if i % 211 == 0 {
            w.entry(
                &format!("{name}.hard"),
                EntryType::Link,
                0o644,
                &[],
                Some(&name),
            );
        }
    }
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Resets the peak RSS counter so that it measures the build, not the generation.
fn reset_peak_rss() {
    // Best effort: Linux >= 4.0 resets VmHWM when "5" is written here.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map_or("unknown".into(), |v| {
            v.trim_start_matches([' ', '\t', ':']).to_string()
        })
}

/// UTC date from the system clock (civil-from-days, proleptic Gregorian).
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .map_or(3, |r| r.parse().expect("RUNS must be a number"));
    let zstd_level: i32 = std::env::args()
        .nth(2)
        .map_or(BuildOptions::default().zstd_level, |l| {
            l.parse().expect("ZSTD_LEVEL must be a number")
        });
    // Multiplies file counts and sizes, to watch memory on larger images.
    let scale: usize = std::env::args()
        .nth(3)
        .map_or(1, |s| s.parse().expect("SCALE must be a number"));
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut layers = Vec::new();
    let mut generated = (0, 0);
    for (i, (prefix, count, target)) in [
        ("usr/lib/x86_64-linux-gnu", 1500, 35 << 20),
        ("usr/lib/python3.11", 6000, 55 << 20),
        ("app", 500, 10 << 20),
    ]
    .into_iter()
    .enumerate()
    {
        let path = dir.path().join(format!("layer{i}.tar.gz"));
        let mut w = LayerWriter::create(&path);
        fill(
            &mut w,
            &mut rng,
            prefix,
            count * scale,
            target * scale as u64,
        );
        if i == 2 {
            // The app layer deletes part of the Python install, as `pip uninstall` would.
            w.entry(
                "usr/lib/python3.11/pkg3/.wh..wh..opq",
                EntryType::Regular,
                0o644,
                &[],
                None,
            );
            w.entry(
                "usr/lib/python3.11/.wh.pkg4",
                EntryType::Regular,
                0o644,
                &[],
                None,
            );
        }
        let (files, bytes) = w.finish();
        generated = (generated.0 + files, generated.1 + bytes);
        layers.push(Layer::new(path, GZIP));
    }
    let layer_bytes: u64 = layers
        .iter()
        .map(|l| std::fs::metadata(&l.path).unwrap().len())
        .sum();
    println!(
        "input: {} layers, {} entries, {:.1} MB of file content, {:.1} MB gzip",
        layers.len(),
        generated.0,
        generated.1 as f64 / 1e6,
        layer_bytes as f64 / 1e6
    );

    let out = dir.path().join("rootfs.img");
    let opts = BuildOptions {
        zstd_level,
        ..BuildOptions::default()
    };
    let mut times = Vec::new();
    let mut summary = None;
    let mut peak = 0;
    for run in 1..=runs {
        reset_peak_rss();
        let s = build_rootfs(&layers, &out, &opts).unwrap_or_else(|e| panic!("build failed: {e}"));
        peak = peak.max(peak_rss_kib());
        println!("run {run}: {:.3} s", s.elapsed.as_secs_f64());
        times.push(s.elapsed);
        summary = Some(s);
    }
    let s = summary.expect("at least one run");
    times.sort();
    let median: Duration = times[times.len() / 2];
    println!(
        "image: {} entries read, {} inodes, {:.1} MB of files -> {:.1} MB image",
        s.entries,
        s.inodes,
        s.file_bytes as f64 / 1e6,
        s.image_bytes as f64 / 1e6
    );
    println!(
        "build: median {:.3} s, best {:.3} s over {runs} runs, {:.0} MB/s of file content, peak RSS {:.1} MiB",
        median.as_secs_f64(),
        times[0].as_secs_f64(),
        s.file_bytes as f64 / 1e6 / median.as_secs_f64(),
        peak as f64 / 1024.0
    );
    println!(
        "settings: zstd level {}, 128 KiB blocks, {} threads",
        opts.zstd_level,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "machine: {} cpus, {}; {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model(),
        utc_now()
    );
}
