//! Packs through a real OCI registry (Debian's `docker-registry` on loopback):
//! `smolvm pack push`, `pack pull` and `pack run REF`, driven through the CLI as a user would.

mod common;
use common::*;
use smolvm_pack::format::{
    Compression, Manifest, SectionInput, SectionKind, SectionSource, write_pack,
};
use smolvm_registry::testutil::{self, Fault, Format, Proxy, Security, TestRegistry};
use smolvm_registry::{BlobCache, Config, Digest, PullOptions, Puller, Pusher, Reference};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;

struct World {
    home: Home,
    reg: TestRegistry,
    /// Where packs are made.
    out: PathBuf,
    /// The working directory of every command (pulls without -o write here).
    cwd: PathBuf,
    rt: tokio::runtime::Runtime,
}

impl World {
    fn new(security: Security) -> World {
        let home = Home::new();
        let reg = TestRegistry::start(security).expect("docker-registry starts");
        std::fs::create_dir_all(home.config_file().parent().unwrap()).unwrap();
        reg.write_config(&home.config_file());
        let out = home.dir.path().join("out");
        let cwd = home.dir.path().join("cwd");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::create_dir_all(&cwd).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        World {
            home,
            reg,
            out,
            cwd,
            rt,
        }
    }

    /// `host/name` in this test's registry.
    fn reference(&self, name: &str) -> String {
        format!("{}/{name}", self.reg.host())
    }

    /// Packs the busybox fixture (1 vCPU, 512 MiB) and returns its .smolmachine.
    fn busybox_pack(&self) -> PathBuf {
        let image = self.reference("fixtures/busybox:1");
        self.rt
            .block_on(testutil::push_image(
                &self.reg,
                "fixtures/busybox:1",
                &testutil::busybox().unwrap(),
                Format::Oci,
            ))
            .unwrap();
        let exe = self.out.join("bb");
        let out = self.smolvm(&[
            "pack",
            "create",
            "-q",
            "-I",
            &image,
            "-o",
            exe.to_str().unwrap(),
            "--cpus",
            "1",
            "--mem",
            "512",
            "-e",
            "FOO=pulled",
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        self.out.join("bb.smolmachine")
    }

    fn smolvm(&self, args: &[&str]) -> Output {
        self.home
            .smolvm()
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .current_dir(&self.cwd)
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs a command that must succeed with `--json`, and returns its summary.
    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.smolvm(&all);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn config(&self) -> Config {
        Config::load(&self.home.config_file()).unwrap()
    }

    /// The index `reference` points to, as the registry serves it.
    fn index(&self, reference: &str) -> serde_json::Value {
        let reference = Reference::parse(reference, None).unwrap();
        let bytes = self.rt.block_on(async {
            let pusher = Pusher::connect(&self.config(), &reference).await.unwrap();
            pusher
                .fetch_manifest(reference.tag().unwrap())
                .await
                .unwrap()
        });
        serde_json::from_slice(&bytes.expect("the tag exists").1).unwrap()
    }
}

fn sha256(path: &Path) -> String {
    Digest::of(&std::fs::read(path).unwrap()).to_string()
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

#[test]
fn push_then_pull_over_tls_with_auth_gives_the_same_bytes_and_a_second_push_uploads_nothing() {
    let w = World::new(Security::TlsBasicAuth);
    let pack = w.busybox_pack();
    let tag = w.reference("team/bb:1");

    let first = w.json(&["pack", "push", pack.to_str().unwrap(), &tag]);
    let sections = 5; // kernel, initramfs, rootfs and two disk templates
    assert_eq!(
        first["blobs_uploaded"].as_u64().unwrap() + first["blobs_present"].as_u64().unwrap(),
        1 + sections,
        "{first}"
    );
    assert!(first["blobs_uploaded"].as_u64().unwrap() >= 4, "{first}");
    assert_eq!(first["digest"], sha256(&pack));
    assert_eq!(first["size"], std::fs::metadata(&pack).unwrap().len());
    assert_eq!(first["platform"], "linux/amd64");

    // Nothing changed: every blob is found by HEAD, and the manifests come out the same.
    let second = w.json(&["pack", "push", pack.to_str().unwrap(), &tag]);
    assert_eq!(second["blobs_uploaded"], 0, "{second}");
    assert_eq!(second["bytes_uploaded"], 0, "{second}");
    assert_eq!(second["blobs_present"], 1 + sections);
    assert_eq!(second["index_digest"], first["index_digest"]);
    assert_eq!(second["manifest_digest"], first["manifest_digest"]);

    // The artifact as another OCI client sees it.
    let index = w.index(&tag);
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    let entry = &index["manifests"][0];
    assert_eq!(entry["artifactType"], "application/vnd.smolvm.machine.v1");
    assert_eq!(entry["platform"]["architecture"], "amd64");
    assert_eq!(entry["digest"], first["manifest_digest"]);
    let cache = w.home.dir.path().join("inspect-cache");
    let puller = Puller::new(
        w.config(),
        BlobCache::open(&cache).unwrap(),
        PullOptions::default(),
    );
    let artifact =
        w.rt.block_on(puller.pull_artifact(
            &Reference::parse(&tag, None).unwrap(),
            Some("application/vnd.smolvm.machine.v1"),
            Arc::new(|_: &smolvm_registry::Event<'_>| {}),
        ))
        .unwrap();
    assert_eq!(
        artifact.config.media_type,
        "application/vnd.smolvm.machine.config.v1+json"
    );
    let media_types: Vec<&str> = artifact
        .layers
        .iter()
        .map(|l| l.media_type.as_str())
        .collect();
    assert_eq!(
        media_types,
        [
            "application/vnd.smolvm.machine.section.kernel.v1+zstd",
            "application/vnd.smolvm.machine.section.initramfs.v1+zstd",
            "application/vnd.smolvm.machine.section.rootfs.v1",
            "application/vnd.smolvm.machine.section.overlay-template.v1+zstd",
            "application/vnd.smolvm.machine.section.storage-template.v1+zstd",
        ]
    );
    let annotations = artifact.manifest.annotations().clone().unwrap();
    assert_eq!(
        annotations["org.opencontainers.image.title"],
        "bb.smolmachine"
    );
    assert_eq!(
        annotations["org.opencontainers.image.created"],
        "2023-11-14T22:13:20Z"
    );
    assert_eq!(annotations["dev.smolvm.platform"], "linux/amd64");
    assert_eq!(annotations["dev.smolvm.version"], env!("CARGO_PKG_VERSION"));
    let file = std::fs::read(&pack).unwrap();
    let footer = &file[file.len() - 80..];
    assert_eq!(
        artifact.config.digest.hex(),
        footer[..32]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
        "the config blob is the pack's manifest (the footer holds its digest)"
    );

    // Pull with -o: the same .smolmachine next to a fresh executable made of the local stub.
    let exe = w.out.join("pulled");
    let pulled = w.json(&["pack", "pull", &tag, "-o", exe.to_str().unwrap()]);
    let sidecar = w.out.join("pulled.smolmachine");
    assert!(same_bytes(&pack, &sidecar), "the pulled pack differs");
    assert_eq!(pulled["digest"], sha256(&pack));
    assert_eq!(pulled["index_digest"], first["index_digest"]);
    assert_eq!(pulled["blobs_downloaded"], 1 + sections - 1, "{pulled}"); // two templates share a blob
    assert!(
        same_bytes(&w.out.join("bb"), &exe),
        "the executable is the stub"
    );

    // By digest, without -o: ./NAME.smolmachine, from the cache (nothing downloaded).
    let by_digest = format!(
        "{}@{}",
        w.reference("team/bb"),
        first["index_digest"].as_str().unwrap()
    );
    let again = w.json(&["pack", "pull", &by_digest]);
    assert!(same_bytes(&pack, &w.cwd.join("bb.smolmachine")));
    assert_eq!(again["blobs_downloaded"], 0, "{again}");
    assert_eq!(again["path"], "bb.smolmachine");
    let by_manifest = format!(
        "{}@{}",
        w.reference("team/bb"),
        first["manifest_digest"].as_str().unwrap()
    );
    let manifest_pull = w.json(&["pack", "pull", &by_manifest]);
    assert_eq!(manifest_pull["digest"], sha256(&pack));
    assert_eq!(manifest_pull["index_digest"], serde_json::Value::Null);
}

/// A pack for a platform we cannot build here (arm64): real format, fake section bytes.
fn fake_arm64_pack(dir: &Path) -> PathBuf {
    let path = dir.join("fake-arm64.smolmachine");
    let manifest = Manifest {
        platform: "linux/arm64".into(),
        host_platform: "linux/arm64".into(),
        created: "2026-11-22T08:00:00Z".into(),
        smolvm_version: "0.1.0".into(),
        ..Default::default()
    };
    let section = |kind, bytes: &[u8]| SectionInput {
        kind,
        source: SectionSource::Bytes(bytes.to_vec()),
        compression: Compression::Zstd,
    };
    write_pack(
        &path,
        manifest,
        vec![
            section(SectionKind::Kernel, b"not really an arm64 kernel"),
            section(SectionKind::Initramfs, b"not really an initramfs"),
        ],
    )
    .unwrap();
    path
}

#[test]
fn platforms_merge_into_one_index_and_a_pull_picks_one() {
    let w = World::new(Security::Plain);
    let pack = w.busybox_pack();
    let arm = fake_arm64_pack(&w.out);
    let tag = w.reference("multi/bb:1");
    let amd64 = w.json(&["pack", "push", pack.to_str().unwrap(), &tag]);
    let arm64 = w.json(&["pack", "push", arm.to_str().unwrap(), &tag]);
    assert_eq!(arm64["platform"], "linux/arm64");
    // Pushing amd64 again replaces its entry rather than adding one.
    let again = w.json(&["pack", "push", pack.to_str().unwrap(), &tag]);
    assert_eq!(again["index_digest"], arm64["index_digest"]);

    let index = w.index(&tag);
    let entries: Vec<(String, String)> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["platform"]["architecture"].as_str().unwrap().to_owned(),
                e["digest"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        entries,
        [
            (
                "amd64".into(),
                amd64["manifest_digest"].as_str().unwrap().into()
            ),
            (
                "arm64".into(),
                arm64["manifest_digest"].as_str().unwrap().into()
            ),
        ]
    );

    let pulled = w.json(&["pack", "pull", &tag, "--platform", "linux/arm64"]);
    assert_eq!(pulled["platform"], "linux/arm64");
    assert!(same_bytes(&arm, &w.cwd.join("bb.smolmachine")));
    w.json(&["pack", "pull", &tag]);
    assert!(same_bytes(&pack, &w.cwd.join("bb.smolmachine")));

    let out = w.smolvm(&["pack", "pull", &tag, "--platform", "linux/s390x"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out)
            .contains("has no image for platform linux/s390x; available: linux/amd64, linux/arm64"),
        "{}",
        stderr(&out)
    );

    // A tag holding a container image is not overwritten, and is not pulled as a pack.
    let image = w.reference("fixtures/busybox:1");
    let out = w.smolvm(&["pack", "push", pack.to_str().unwrap(), &image]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains(
            "holds a single manifest (not an index), not smolvm packs; push to another tag"
        ),
        "{}",
        stderr(&out)
    );
    let out = w.smolvm(&["pack", "pull", &image]);
    assert!(
        stderr(&out).contains(
            "is a container image, not an artifact of type application/vnd.smolvm.machine.v1"
        ),
        "{}",
        stderr(&out)
    );
}

#[test]
fn wrong_passwords_and_bad_references_say_what_to_do() {
    let w = World::new(Security::BasicAuth);
    let arm = fake_arm64_pack(&w.out);
    std::fs::write(
        w.home.config_file(),
        format!(
            "[registries.\"{}\"]\nusername = \"smolvm\"\npassword_env = \"WRONG_PASSWORD\"\n",
            w.reg.host()
        ),
    )
    .unwrap();
    let tag = w.reference("auth/x:1");
    for args in [
        vec!["pack", "push", arm.to_str().unwrap(), &tag],
        vec!["pack", "pull", &tag],
    ] {
        let out = w
            .home
            .smolvm()
            .env("WRONG_PASSWORD", "not-the-password")
            .current_dir(&w.cwd)
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(125), "{args:?}");
        assert!(
            stderr(&out).contains(&format!(
                "authentication to {} failed: check the username/password in",
                w.reg.host()
            )),
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(
            !stderr(&out).contains("not-the-password"),
            "a password was printed"
        );
    }

    let digest_rule = "expected a digest of \"sha256:\" and exactly 64 lowercase hex characters";
    let hex = "a".repeat(64);
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["pack".into(), "pull".into(), "x/y@sha256:abc".into()],
            digest_rule.into(),
        ),
        (
            vec![
                "pack".into(),
                "pull".into(),
                format!("x/y@sha256:{}", hex.to_uppercase()),
            ],
            digest_rule.into(),
        ),
        (
            vec!["pack".into(), "pull".into(), "x/Y:1".into()],
            "invalid reference \"x/Y:1\"".into(),
        ),
        (
            vec!["pack".into(), "run".into(), "no-such-file@sha256:1".into()],
            "no-such-file@sha256:1 is no file, and invalid reference".into(),
        ),
        (
            vec![
                "pack".into(),
                "push".into(),
                arm.to_str().unwrap().into(),
                format!("{}/x@sha256:{hex}", w.reg.host()),
            ],
            "it names a digest; push to a tag (NAME:TAG) instead".into(),
        ),
    ];
    for (args, expected) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = w.smolvm(&args);
        assert_eq!(out.status.code(), Some(125), "{args:?}");
        assert!(
            stderr(&out).contains(&expected),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let out = w.smolvm(&["pack", "pull", "x/Y:1"]);
    let message = stderr(&out);
    assert!(
        message.contains("lowercase"),
        "the rule is stated: {message}"
    );
}

#[test]
fn a_tampered_blob_in_the_registry_is_refused_and_nothing_is_written() {
    let w = World::new(Security::Plain);
    let pack = w.busybox_pack();
    let tag = w.reference("tamper/bb:1");
    w.json(&["pack", "push", pack.to_str().unwrap(), &tag]);
    let opened = smolvm_pack::format::Pack::open(&pack).unwrap();
    let rootfs = opened.section(SectionKind::Rootfs).unwrap();
    let digest = Digest::parse(&rootfs.sha256).unwrap();
    let stored = w.reg.blob_data_path(&digest);
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[4096] ^= 0xff;
    std::fs::write(&stored, &bytes).unwrap();

    let exe = w.out.join("t");
    let out = w.smolvm(&["pack", "pull", &tag, "-o", exe.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains(&format!("digest mismatch for {digest}")),
        "{}",
        stderr(&out)
    );
    assert!(!exe.exists() && !w.out.join("t.smolmachine").exists());
    let left: Vec<_> = std::fs::read_dir(&w.out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "temp files left: {left:?}");
    assert!(
        w.home.cached_files(digest.hex()).is_empty(),
        "the bad blob stays out of the cache"
    );
}

#[test]
fn a_killed_pull_resumes_and_concurrent_pulls_both_succeed() {
    let w = World::new(Security::Plain);
    let pack = w.busybox_pack();
    let tag = "resume/bb:1";
    w.json(&["pack", "push", pack.to_str().unwrap(), &w.reference(tag)]);
    let size = std::fs::metadata(&pack).unwrap().len();

    // Through a proxy that stops forwarding halfway: the pull hangs mid-way and is killed.
    let proxy = w.rt.block_on(Proxy::start(
        w.reg.host(),
        Fault::StallAlwaysAfter(size / 2),
    ));
    let mut child = w
        .home
        .smolvm()
        .current_dir(&w.cwd)
        .args(["pack", "pull", "-q", &format!("{}/{tag}", proxy.host)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let blobs = w.home.cache().join("blobs/sha256");
    let finished = || {
        std::fs::read_dir(&blobs)
            .map(|d| {
                d.flatten()
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .count()
            })
            .unwrap_or(0)
    };
    // Manifests (2) and at least one blob are in; then the transfer stalls.
    assert!(wait_for(30, || finished() >= 3), "nothing arrived");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the pull finished before it was killed"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!w.cwd.join("bb.smolmachine").exists());
    {
        let _guard = w.rt.enter();
        drop(proxy);
    }

    // The next pull keeps what was verified and fetches the rest.
    let resumed = w.json(&["pack", "pull", &w.reference(tag)]);
    assert!(resumed["blobs_cached"].as_u64().unwrap() >= 1, "{resumed}");
    assert!(
        resumed["blobs_downloaded"].as_u64().unwrap() >= 1,
        "{resumed}"
    );
    assert!(same_bytes(&pack, &w.cwd.join("bb.smolmachine")));

    // A connection cut mid-blob is resumed with a Range request inside one pull.
    let cut =
        w.rt.block_on(Proxy::start(w.reg.host(), Fault::CutOnceAfter(size / 4)));
    let fresh = Home::new();
    std::fs::create_dir_all(fresh.config_file().parent().unwrap()).unwrap();
    let out = fresh
        .smolvm()
        .current_dir(&w.cwd)
        .args([
            "pack",
            "pull",
            "--json",
            &format!("{}/{tag}", cut.host),
            "-o",
            "cut",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["resumed"], 1, "{summary}");
    assert!(same_bytes(&pack, &w.cwd.join("cut.smolmachine")));
    {
        let _guard = w.rt.enter();
        drop(cut);
    }

    // Two processes pulling the same pack into one empty cache at once both succeed.
    let shared = Home::new();
    std::fs::create_dir_all(shared.config_file().parent().unwrap()).unwrap();
    let children: Vec<_> = ["one", "two"]
        .iter()
        .map(|name| {
            shared
                .smolvm()
                .current_dir(&w.cwd)
                .args(["pack", "pull", "-q", &w.reference(tag), "-o", name])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    assert!(same_bytes(&pack, &w.cwd.join("one.smolmachine")));
    assert!(same_bytes(&pack, &w.cwd.join("two.smolmachine")));
}

#[test]
fn pack_run_boots_a_pushed_pack_by_reference() {
    let w = World::new(Security::Plain);
    let pack = w.busybox_pack();
    let tag = w.reference("run/bb:1");
    w.json(&["pack", "push", pack.to_str().unwrap(), &tag]);
    // A fresh user: nothing cached, the pack comes from the registry.
    let fresh = Home::new();
    std::fs::create_dir_all(fresh.config_file().parent().unwrap()).unwrap();
    let out = fresh
        .smolvm()
        .args([
            "pack",
            "run",
            "-q",
            &tag,
            "--",
            "sh",
            "-c",
            "echo booted $FOO",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "booted pulled\n");
    let cached = fresh.cached_files(".smolmachine");
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert!(
        same_bytes(&pack, &cached[0]),
        "the cached pack is the pushed one"
    );
}
