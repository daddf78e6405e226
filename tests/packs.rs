//! Packed executables end to end: `smolvm pack create` from fixture images in a real
//! registry, then the executables run as a user would run them.

mod common;
use common::*;
use smolvm_registry::testutil::{self, Format, Security, TestRegistry};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

struct Packs {
    home: Home,
    reg: TestRegistry,
    out: PathBuf,
}

impl Packs {
    fn new() -> Packs {
        let home = Home::new();
        let reg = TestRegistry::start(Security::Plain).expect("docker-registry starts");
        std::fs::create_dir_all(home.config_file().parent().unwrap()).unwrap();
        reg.write_config(&home.config_file());
        let out = home.dir.path().join("apps");
        std::fs::create_dir_all(&out).unwrap();
        Packs { home, reg, out }
    }

    fn push(&self, repo: &str, image: &testutil::Image) -> String {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(testutil::push_image(&self.reg, repo, image, Format::Oci))
            .unwrap();
        format!("{}/{repo}", self.reg.host())
    }

    fn create(&self, args: &[&str]) -> Output {
        let out = self
            .home
            .smolvm()
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .args(["pack", "create", "-q"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "pack create failed: {}",
            stderr(&out)
        );
        out
    }

    /// Runs a packed executable with this test's home.
    fn app(&self, exe: &Path) -> Command {
        let mut c = Command::new(exe);
        for (k, v) in self.home.smolvm().get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c.env("XDG_DATA_HOME", self.home.dir.path().join("data"))
            .stdin(Stdio::null());
        c
    }
}

#[test]
fn busybox_packs_run_in_both_modes_deterministically_and_anywhere() {
    let p = Packs::new();
    let image = p.push("fixtures/busybox:1", &testutil::busybox().unwrap());
    let app = p.out.join("bb");
    let created = p.create(&[
        "-I",
        &image,
        "-o",
        app.to_str().unwrap(),
        "--cpus",
        "1",
        "--mem",
        "512",
        "-e",
        "FOO=packed",
    ]);
    assert!(
        stderr(&created).contains("pack total"),
        "{}",
        stderr(&created)
    );
    let sidecar = p.out.join("bb.smolmachine");
    assert!(sidecar.exists());

    // Env, workdir and user come from the image, FOO from pack create; stdin arrives; the
    // exit status propagates.
    let mut child = p
        .app(&app)
        .args([
            "run",
            "-i",
            "-e",
            "BAR=flag",
            "--",
            "sh",
            "-c",
            "read line; echo \"$line $GREETING $FOO $BAR\"; pwd; id -u; exit 42",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from-stdin\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(42), "stderr: {}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "from-stdin hello packed flag\n/home/user\n1000\n"
    );

    // info: a sidecar pack, its sections now cached (the kernel and initramfs), the root
    // filesystem read in place.
    let info: serde_json::Value = serde_json::from_slice(
        &p.app(&app)
            .args(["info", "--json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(info["embedded"], false);
    assert_eq!(
        info["manifest"]["image"]["reference"],
        serde_json::json!(image)
    );
    assert_eq!(info["manifest"]["created"], "2023-11-14T22:13:20Z");
    let cached: Vec<(String, bool)> = info["sections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["kind"].as_str().unwrap().to_string(),
                s["cached"].as_bool().unwrap(),
            )
        })
        .collect();
    assert!(
        cached.contains(&("kernel".into(), true)) && cached.contains(&("rootfs".into(), false)),
        "{cached:?}"
    );

    // Packing the same inputs again gives the same bytes, for the executable and the pack.
    let again = p.out.join("again");
    p.create(&[
        "-I",
        &image,
        "-o",
        again.to_str().unwrap(),
        "--cpus",
        "1",
        "--mem",
        "512",
        "-e",
        "FOO=packed",
    ]);
    assert!(
        std::fs::read(&sidecar).unwrap() == std::fs::read(p.out.join("again.smolmachine")).unwrap(),
        "sidecars differ"
    );
    assert!(
        std::fs::read(&app).unwrap() == std::fs::read(&again).unwrap(),
        "executables differ"
    );

    // One file, copied elsewhere, runs on its own.
    let single = p.out.join("bb-single");
    p.create(&[
        "-I",
        &image,
        "-o",
        single.to_str().unwrap(),
        "--single-file",
        "--cpus",
        "1",
        "--mem",
        "512",
    ]);
    assert!(!p.out.join("bb-single.smolmachine").exists());
    let elsewhere = p.home.dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::copy(&single, elsewhere.join("tool")).unwrap();
    std::fs::write(
        elsewhere.join("note.txt"),
        "from a copy, through a volume\n",
    )
    .unwrap();
    // A packed executable shares host directories too (relative to where it runs).
    let out = p
        .app(&elsewhere.join("tool"))
        .current_dir(&elsewhere)
        .args(["run", "-v", ".:/host:ro", "--", "cat", "/host/note.txt"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "from a copy, through a volume\n");
    let info: serde_json::Value = serde_json::from_slice(
        &p.app(&elsewhere.join("tool"))
            .args(["info", "--json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(info["embedded"], true);

    // smolvm inspects both forms.
    let out = p
        .home
        .smolvm()
        .args(["pack", "inspect", single.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        stdout(&out).contains("inside the executable") && stdout(&out).contains("rootfs"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn python_packs_into_one_executable() {
    let p = Packs::new();
    let image = p.push("fixtures/python:3.11", &testutil::python().unwrap());
    let app = p.out.join("py");
    p.create(&[
        "-I",
        &image,
        "-o",
        app.to_str().unwrap(),
        "--single-file",
        "--cpus",
        "1",
        "--mem",
        "512",
    ]);
    let out = p
        .app(&app)
        .args([
            "run",
            "--",
            "python3",
            "-c",
            "import json; print(json.dumps([1, 2]))",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "[1, 2]\n");
}

#[test]
fn started_machine_keeps_workspace_and_root_changes_across_stop_and_start() {
    let p = Packs::new();
    let image = p.push("fixtures/busybox:1", &testutil::busybox().unwrap());
    let app = p.out.join("daemon");
    p.create(&[
        "-I",
        &image,
        "-o",
        app.to_str().unwrap(),
        "--cpus",
        "1",
        "--mem",
        "512",
    ]);
    let run = |args: &[&str]| {
        let out = p.app(&app).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        stdout(&out)
    };
    run(&["start"]);
    assert!(run(&["status"]).contains("is running"));
    // Root-owned writes under /etc and the workspace, as the image's user 1000 cannot.
    run(&["exec", "--", "sh", "-c", "echo kept > /workspace/file"]);
    let out = p
        .app(&app)
        .args(["exec", "--", "sh", "-c", "exit 3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    run(&["stop"]);
    assert!(run(&["status"]).contains("is stopped"));
    run(&["start"]);
    assert_eq!(run(&["exec", "--", "cat", "/workspace/file"]), "kept\n");
    run(&["stop"]);
    let out = p.app(&app).args(["exec", "--", "true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("not running"), "{}", stderr(&out));
}

#[test]
fn two_first_runs_at_once_both_succeed_and_a_wiped_cache_is_rebuilt() {
    let p = Packs::new();
    let image = p.push("fixtures/busybox:1", &testutil::busybox().unwrap());
    let app = p.out.join("twice");
    p.create(&[
        "-I",
        &image,
        "-o",
        app.to_str().unwrap(),
        "--single-file",
        "--cpus",
        "1",
        "--mem",
        "512",
    ]);
    let sections = p.home.cache().join("sections");
    let _ = std::fs::remove_dir_all(&sections);
    let spawn = |word: &str| {
        p.app(&app)
            .args(["run", "--", "echo", word])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("one"), spawn("two"));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_eq!(
        (a.status.code(), stdout(&a)),
        (Some(0), "one\n".into()),
        "{}",
        stderr(&a)
    );
    assert_eq!(
        (b.status.code(), stdout(&b)),
        (Some(0), "two\n".into()),
        "{}",
        stderr(&b)
    );
    let entries = |dir: &Path| std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
    assert!(entries(&sections.join("sha256")) > 0);
    assert!(
        std::fs::read_dir(sections.join("sha256"))
            .unwrap()
            .all(|e| !e.unwrap().file_name().to_string_lossy().contains(".tmp")),
        "a temp file was left in the cache"
    );

    // The cache is wiped while the executable lives on: the next run extracts again.
    std::fs::remove_dir_all(&sections).unwrap();
    let out = p
        .app(&app)
        .args(["run", "--", "echo", "again"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "again\n");

    // Pruning removes what no VM uses.
    let out = p
        .home
        .smolvm()
        .args(["pack", "prune", "--json"])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["removed"].as_u64().unwrap() >= 2, "{report}");
    assert_eq!(entries(&sections.join("sha256")), 0);
}

#[test]
fn damaged_packs_are_refused_with_the_reason() {
    let p = Packs::new();
    let image = p.push("fixtures/busybox:1", &testutil::busybox().unwrap());
    let app = p.out.join("bad");
    p.create(&[
        "-I",
        &image,
        "-o",
        app.to_str().unwrap(),
        "--cpus",
        "1",
        "--mem",
        "512",
    ]);
    let sidecar = p.out.join("bad.smolmachine");
    let original = std::fs::read(&sidecar).unwrap();
    let info: serde_json::Value = serde_json::from_slice(
        &p.app(&app)
            .args(["info", "--json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let section = |kind: &str| {
        info["manifest"]["sections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["kind"] == kind)
            .unwrap()
            .clone()
    };
    let run = || p.app(&app).args(["run", "--", "true"]).output().unwrap();

    // A flipped byte in the root filesystem (read in place): refused, naming the section.
    let mut bytes = original.clone();
    let rootfs = section("rootfs");
    bytes[(rootfs["offset"].as_u64().unwrap() + 100) as usize] ^= 1;
    std::fs::write(&sidecar, &bytes).unwrap();
    let out = run();
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("section rootfs is corrupt"),
        "{}",
        stderr(&out)
    );

    // A flipped byte in the compressed kernel, with nothing cached yet: refused.
    let _ = std::fs::remove_dir_all(p.home.cache().join("sections"));
    let mut bytes = original.clone();
    bytes[(section("kernel")["offset"].as_u64().unwrap() + 1000) as usize] ^= 1;
    std::fs::write(&sidecar, &bytes).unwrap();
    let out = run();
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("section kernel is corrupt"),
        "{}",
        stderr(&out)
    );

    // A damaged manifest.
    let mut bytes = original.clone();
    let n = bytes.len();
    bytes[n - 200] ^= 0x20;
    std::fs::write(&sidecar, &bytes).unwrap();
    let out = run();
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("manifest"), "{}", stderr(&out));

    // A truncated single-file executable.
    let single = p.out.join("cut");
    p.create(&[
        "-I",
        &image,
        "-o",
        single.to_str().unwrap(),
        "--single-file",
    ]);
    let full = std::fs::read(&single).unwrap();
    std::fs::write(&single, &full[..full.len() - 4096]).unwrap();
    let out = p.app(&single).args(["run", "--", "true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(125));
    let err = stderr(&out);
    assert!(
        err.contains("no machine is packed into") || err.contains("truncated"),
        "{err}"
    );

    // -o must name the executable, not the pack.
    let out = p
        .home
        .smolvm()
        .args(["pack", "create", "-I", &image, "-o", "x.smolmachine"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("use -o x"), "{}", stderr(&out));
}
