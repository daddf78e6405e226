//! The fixture images are what they claim: Python imports json, the multi-layer image
//! carries its whiteouts, opaque dir, hard links and setuid file through a push and pull,
//! and building is deterministic.

use std::io::Read;
use std::path::Path;
use std::process::Command;

use std::sync::Arc;

use smolvm_registry::testutil::{self, Format, Security, TestRegistry};
use smolvm_registry::{BlobCache, Event, Layer, PullOptions, Puller, Reference};

/// (path, entry type, mode, uid, link target) of every entry of a pulled layer.
fn entries(layer: &Layer) -> Vec<(String, tar::EntryType, u32, u64, Option<String>)> {
    let file = std::fs::File::open(&layer.path).unwrap();
    let reader: Box<dyn Read> = if layer.media_type.ends_with("+gzip") {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut archive = tar::Archive::new(reader);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let h = e.header();
            (
                e.path().unwrap().to_string_lossy().into_owned(),
                h.entry_type(),
                h.mode().unwrap(),
                h.uid().unwrap(),
                e.link_name()
                    .unwrap()
                    .map(|l| l.to_string_lossy().into_owned()),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_multilayer_image_survives_a_round_trip() {
    let registry = TestRegistry::start(Security::Plain).unwrap();
    let image = testutil::multilayer().unwrap();
    let pushed = testutil::push_image(&registry, "layers:1", &image, Format::Oci)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let reference = Reference::parse(&pushed.reference, None).unwrap();
    let config = registry.write_config(&dir.path().join("config.toml"));
    let cache = BlobCache::open(&dir.path().join("cache")).unwrap();
    let pulled = Puller::new(config, cache, PullOptions::default())
        .pull(&reference, Arc::new(|_: &Event<'_>| {}))
        .await
        .unwrap();
    assert_eq!(pulled.layers.len(), 3);
    let diff_ids: Vec<String> = pulled.config.rootfs().diff_ids().to_vec();
    assert_eq!(diff_ids.len(), 3);

    let one = entries(&pulled.layers[0]);
    let find = |entries: &[(String, tar::EntryType, u32, u64, Option<String>)], path: &str| {
        entries
            .iter()
            .find(|e| e.0 == path)
            .cloned()
            .unwrap_or_else(|| panic!("{path} missing"))
    };
    let su = find(&one, "bin/su-like");
    assert_eq!((su.2, su.3), (0o4755, 0), "setuid and root-owned");
    let link = find(&one, "a/link");
    assert_eq!(
        (link.1, link.4.as_deref()),
        (tar::EntryType::Link, Some("a/keep"))
    );

    let two = entries(&pulled.layers[1]);
    assert_eq!(
        pulled.layers[1].media_type,
        "application/vnd.oci.image.layer.v1.tar"
    );
    find(&two, "a/.wh.gone");
    find(&two, "opaque/.wh..wh..opq");
    assert_eq!(find(&two, "a/added-link").1, tar::EntryType::Link);

    let three = entries(&pulled.layers[2]);
    let secret = find(&three, "data/secret");
    assert_eq!((secret.2, secret.3), (0o600, 1000));
    assert_eq!(find(&three, "data/link").4.as_deref(), Some("../a/keep"));
}

#[test]
fn busybox_has_applets_users_and_a_stable_digest() {
    let a = testutil::busybox().unwrap();
    let b = testutil::busybox().unwrap();
    assert_eq!(
        a.layers[0].data, b.layers[0].data,
        "built once, byte-identical"
    );
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&a.layers[0].data[..]));
    let mut names = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        if name == "etc/passwd" {
            let mut text = String::new();
            entry.read_to_string(&mut text).unwrap();
            assert!(text.contains("user:x:1000:1000:"), "{text}");
        }
        names.push(name);
    }
    for expected in [
        "bin/busybox",
        "bin/sh",
        "bin/ls",
        "home/user/",
        "tmp/",
        "etc/passwd",
    ] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing");
    }
}

#[test]
fn python_imports_json() {
    let image = testutil::python().unwrap();
    let root = tempfile::tempdir().unwrap();
    tar::Archive::new(flate2::read::GzDecoder::new(&image.layers[0].data[..]))
        .unpack(root.path())
        .unwrap();
    let root = root.path();
    assert_eq!(
        std::fs::read_link(root.join("usr/bin/python3")).unwrap(),
        Path::new("python3.11")
    );
    // The image's own loader and libraries run its interpreter: nothing comes from the host.
    let libs = format!(
        "{}:{}",
        root.join("lib/x86_64-linux-gnu").display(),
        root.join("usr/lib/x86_64-linux-gnu").display()
    );
    let output = Command::new(root.join("lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"))
        .arg("--library-path")
        .arg(libs)
        .arg(root.join("usr/bin/python3.11"))
        .args(["-c", "import json; print(json.dumps({'ok': [1, 2]}))"])
        .env_clear()
        .env("PYTHONHOME", root.join("usr"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "{\"ok\": [1, 2]}\n"
    );
}
