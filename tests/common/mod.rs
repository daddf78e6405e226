//! Shared helpers for end-to-end tests: they drive the real `smolvm` binary, which boots
//! real microVMs (qemu/TCG on machines without hardware virtualization).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_smolvm"))
}

/// The guest assets the tests boot: `$SMOLVM_GUEST_DIR`, else the ones ./scripts/build-guest
/// wrote next to the binaries (target/guest, or $CARGO_TARGET_DIR/guest).
pub fn guest_dir() -> PathBuf {
    std::env::var_os("SMOLVM_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| bin().parent().unwrap().join("../guest"))
}

/// Fails (never skips) when what the VM tests need is missing, with the fix.
pub fn require_vm_prerequisites() {
    let guest_dir = guest_dir();
    for f in ["vmlinux", "initramfs.cpio"] {
        assert!(
            guest_dir.join(f).is_file(),
            "{} is missing: run ./scripts/setup (it builds the guest kernel and agent) before the tests",
            guest_dir.join(f).display()
        );
    }
}

/// A `smolvm` command isolated from other tests: its own runtime directory.
pub fn smolvm(rundir: &Path) -> Command {
    require_vm_prerequisites();
    let mut c = Command::new(bin());
    c.env("XDG_RUNTIME_DIR", rundir)
        .env_remove("SMOLVM_TRACE")
        .stdin(Stdio::null());
    c
}

/// `smolvm machine run` with small resources (boots are the cost of these tests), then `args`.
pub fn run_vm(rundir: &Path, args: &[&str]) -> Output {
    let mut c = smolvm(rundir);
    c.args(["machine", "run", "--cpus", "1", "--mem", "512"])
        .args(args);
    c.output().expect("smolvm runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// Child processes of `pid` (from /proc), for checking nothing is left running.
pub fn children(pid: u32) -> Vec<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

pub fn alive(pid: u32) -> bool {
    // Zombies count as gone: they hold no resources but a pid.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.split(") ").nth(1).unwrap_or("").starts_with('Z'))
        .unwrap_or(false)
}

/// Waits up to `secs` for `f` to hold.
pub fn wait_for(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    f()
}

/// A smolvm user's world in temp dirs: config, cache and runtime directories of its own.
pub struct Home {
    pub dir: tempfile::TempDir,
}

impl Home {
    pub fn new() -> Home {
        let dir = tempdir();
        for d in ["config", "cache", "run"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        Home { dir }
    }

    pub fn config_file(&self) -> PathBuf {
        self.dir.path().join("config/smolvm/config.toml")
    }

    pub fn cache(&self) -> PathBuf {
        self.dir.path().join("cache/smolvm")
    }

    pub fn smolvm(&self) -> Command {
        let mut c = smolvm(&self.dir.path().join("run"));
        c.env("XDG_CONFIG_HOME", self.dir.path().join("config"))
            .env("XDG_CACHE_HOME", self.dir.path().join("cache"))
            .env("XDG_DATA_HOME", self.dir.path().join("data"))
            .env_remove("SMOLVM_DATA_DIR");
        c
    }

    /// Runs `smolvm args...` and returns its output.
    pub fn cmd(&self, args: &[&str]) -> Output {
        self.smolvm().args(args).output().unwrap()
    }

    /// Runs `smolvm args...`, which must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "smolvm {} failed:\n{}{}",
            args.join(" "),
            stdout(&out),
            stderr(&out)
        );
        stdout(&out)
    }

    /// `machine run` with small resources and `args`.
    /// `machine exec -n machine -- sh -c script`, which must succeed; its stdout.
    pub fn sh(&self, machine: &str, script: &str) -> String {
        self.ok(&["machine", "exec", "-n", machine, "--", "sh", "-c", script])
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.smolvm()
            .args(["machine", "run", "--cpus", "1", "--mem", "512"])
            .args(args)
            .output()
            .unwrap()
    }

    /// Regular files under the cache whose path contains `part`.
    pub fn cached_files(&self, part: &str) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.push(p);
                }
            }
        }
        let mut all = Vec::new();
        walk(&self.cache(), &mut all);
        all.into_iter()
            .filter(|p| p.to_string_lossy().contains(part))
            .collect()
    }
}

/// A machine's directory in `home`'s data directory.
pub fn machine_dir(home: &Home, name: &str) -> PathBuf {
    home.dir.path().join("data/smolvm/machines").join(name)
}

/// The pid of a running machine's supervisor (from `machine status --json`).
pub fn supervisor_pid(home: &Home, name: &str) -> u32 {
    let json: serde_json::Value =
        serde_json::from_str(&home.ok(&["machine", "status", "-n", name, "--json"])).unwrap();
    assert_eq!(json["state"], "running", "{json}");
    json["pid"].as_u64().unwrap() as u32
}

/// A process's resident memory in KiB (0 once it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
