//! `smolvm machine run --image` against a real registry (Debian's docker-registry on
//! 127.0.0.1) with fixture images built from Debian packages.

mod common;
use common::*;
use serde_json::json;
use smolvm_registry::testutil::{self, Format, Security, TestRegistry};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn registry(security: Security, home: &Home) -> TestRegistry {
    let reg = TestRegistry::start(security)
        .expect("docker-registry starts (apt-get install docker-registry)");
    std::fs::create_dir_all(home.config_file().parent().unwrap()).unwrap();
    reg.write_config(&home.config_file());
    reg
}

#[test]
fn image_config_platform_choice_cache_and_prune() {
    let home = Home::new();
    let reg = registry(Security::Plain, &home);
    let rt = rt();
    let busybox = testutil::busybox().unwrap();
    let arm = testutil::fake_platform("arm64").unwrap();
    rt.block_on(async {
        let a = testutil::push_image(&reg, "fixtures/busybox:amd64", &busybox, Format::Oci)
            .await
            .unwrap();
        let b = testutil::push_image(&reg, "fixtures/busybox:arm64", &arm, Format::Oci)
            .await
            .unwrap();
        testutil::push_index(&reg, "fixtures/busybox:1", &[&a, &b], Format::Oci)
            .await
            .unwrap();
    });
    let image = format!("{}/fixtures/busybox:1", reg.host());

    // The index resolves to this host's platform; Env, WorkingDir and User come from the
    // image config (User `user` is 1000:1000 in the image's /etc/passwd).
    let out = home.run(&[
        "-I",
        &image,
        "--",
        "sh",
        "-c",
        "echo $GREETING; pwd; id -u; id -g; echo $HOME",
    ]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "hello\n/home/user\n1000\n1000\n/home/user\n");

    // A platform the index lacks is refused with the ones it has.
    let out = home.run(&[
        "-I",
        &image,
        "--platform",
        "linux/s390x",
        "--pull",
        "always",
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(125));
    let err = stderr(&out);
    assert!(
        err.contains("no image for platform linux/s390x; available: linux/amd64, linux/arm64"),
        "{err}"
    );

    let out = home
        .smolvm()
        .args(["machine", "images", "--json"])
        .output()
        .unwrap();
    let images: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(images.as_array().unwrap().len(), 1, "{images}");
    assert_eq!(images[0]["reference"], json!(image));
    assert_eq!(images[0]["platform"], json!("linux/amd64"));
    assert_eq!(images[0]["user"], json!("user"));

    // The second run needs no registry at all: the tag, the manifest and the root
    // filesystem all come from the cache.
    drop(reg);
    let out = home
        .smolvm()
        .env("SMOLVM_TRACE", "1")
        .args([
            "machine", "run", "--cpus", "1", "--mem", "512", "-I", &image, "--", "echo", "again",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "again\n");
    assert!(
        stderr(&out).contains("image ready (cached)"),
        "{}",
        stderr(&out)
    );

    // Pruning removes the image, its blobs and its tag.
    let out = home
        .smolvm()
        .args(["machine", "prune", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["removed"].as_array().unwrap().len(), 1);
    assert!(
        home.cached_files("/images/").is_empty(),
        "{:?}",
        home.cached_files("/images/")
    );
    assert!(
        home.cached_files("/blobs/").is_empty(),
        "{:?}",
        home.cached_files("/blobs/")
    );
    let out = home.run(&["-I", &image, "--pull", "never", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("not in the cache"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn layers_flatten_with_whiteouts_opaque_dirs_owners_and_hardlinks() {
    let home = Home::new();
    let reg = registry(Security::Plain, &home);
    let busybox = testutil::busybox().unwrap();
    let multi = testutil::multilayer().unwrap();
    // busybox at the bottom gives the multilayer tree a shell to be inspected with.
    let image = testutil::Image {
        architecture: "amd64".into(),
        config: json!({ "Env": ["PATH=/bin"], "Entrypoint": ["/bin/busybox"] }),
        layers: busybox
            .layers
            .iter()
            .chain(&multi.layers)
            .cloned()
            .collect(),
    };
    rt().block_on(testutil::push_image(
        &reg,
        "fixtures/multi:1",
        &image,
        Format::Docker,
    ))
    .unwrap();
    let script = "ls a opaque | tr '\\n' ' '; echo; \
                  stat -c '%a %u:%g %n' bin/su-like data/secret; \
                  [ $(stat -c %i a/keep) = $(stat -c %i a/link) ] && echo keep-link-shared; \
                  [ $(stat -c %i a/added) = $(stat -c %i a/added-link) ] && echo added-link-shared; \
                  readlink data/link; cat data/link";
    let out = home.run(&[
        "-I",
        &format!("{}/fixtures/multi:1", reg.host()),
        "-w",
        "/",
        "--",
        "sh",
        "-c",
        script,
    ]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "a: added added-link keep link  opaque: new \n\
         4755 0:0 bin/su-like\n600 1000:1000 data/secret\n\
         keep-link-shared\nadded-link-shared\n../a/keep\nkeep\n"
    );
}

#[test]
fn python_image_runs_with_its_standard_library() {
    let home = Home::new();
    let reg = registry(Security::Plain, &home);
    rt().block_on(testutil::push_image(
        &reg,
        "fixtures/python:3.11",
        &testutil::python().unwrap(),
        Format::Oci,
    ))
    .unwrap();
    let out = home.run(&[
        "-I",
        &format!("{}/fixtures/python:3.11", reg.host()),
        "--",
        "python3",
        "-c",
        "import json, sys; print(json.dumps({'ok': True, 'v': sys.version_info[:2]}))",
    ]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "{\"ok\": true, \"v\": [3, 11]}\n");
}

#[test]
fn tls_with_basic_auth_works_and_a_wrong_password_is_explained() {
    let home = Home::new();
    let reg = registry(Security::TlsBasicAuth, &home);
    rt().block_on(testutil::push_image(
        &reg,
        "private/busybox:1",
        &testutil::busybox().unwrap(),
        Format::Oci,
    ))
    .unwrap();
    let image = format!("{}/private/busybox:1", reg.host());
    let out = home.run(&["-I", &image, "--", "echo", "over-tls"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "over-tls\n");

    // Save a wrong password with `smolvm login`, and pull again.
    let mut login = home
        .smolvm()
        .args(["login", reg.host(), "-u", "smolvm"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    login
        .stdin
        .take()
        .unwrap()
        .write_all(b"wrong-password\n")
        .unwrap();
    assert!(login.wait().unwrap().success());
    let out = home.run(&["-I", &image, "--pull", "always", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("authentication to {} failed", reg.host())),
        "{err}"
    );
    assert!(err.contains("smolvm login"), "{err}");
    assert!(
        !err.contains("wrong-password"),
        "a secret was printed: {err}"
    );
    // And the config holding it is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(home.config_file())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let list = home
        .smolvm()
        .args(["config", "registries", "list"])
        .output()
        .unwrap();
    assert!(
        !stdout(&list).contains("wrong-password") && stdout(&list).contains("password: set"),
        "{}",
        stdout(&list)
    );
}

#[test]
fn a_tampered_layer_is_rejected_and_nothing_is_cached() {
    let home = Home::new();
    let reg = registry(Security::Plain, &home);
    let pushed = rt()
        .block_on(testutil::push_image(
            &reg,
            "fixtures/busybox:1",
            &testutil::busybox().unwrap(),
            Format::Oci,
        ))
        .unwrap();
    let layer = &pushed.layers[0];
    let stored = reg.blob_data_path(layer);
    let mut bytes = std::fs::read(&stored).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&stored, bytes).unwrap();

    let out = home.run(&[
        "-I",
        &format!("{}/fixtures/busybox:1", reg.host()),
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(125));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("digest mismatch for {layer}")),
        "{err}"
    );
    assert!(
        home.cached_files(layer.hex()).is_empty(),
        "the bad blob was cached"
    );
    let temps: Vec<_> = home
        .cached_files("")
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(".tmp"))
        .collect();
    assert!(temps.is_empty(), "temp files left: {temps:?}");
    assert!(
        home.cached_files("/images/").is_empty(),
        "an image was recorded"
    );
}

#[test]
fn unknown_images_tags_and_bad_references_are_clear_errors() {
    let home = Home::new();
    let reg = registry(Security::Plain, &home);
    let out = home.run(&[
        "-I",
        &format!("{}/nothing/here:1", reg.host()),
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains(&format!("image not found: {}/nothing/here:1", reg.host())),
        "{}",
        stderr(&out)
    );

    let out = home.run(&["-I", "Bad/Upper:x", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("invalid reference \"Bad/Upper:x\""),
        "{}",
        stderr(&out)
    );

    let out = home.run(&["-I", "alpine@sha256:abc", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out)
            .contains("\"sha256:\" and exactly 64 lowercase hex characters, found \"sha256:abc\""),
        "{}",
        stderr(&out)
    );
}
