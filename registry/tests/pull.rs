//! Pulls against a real `docker-registry` on loopback: caching, digests, platforms, auth,
//! TLS, tampering, resume, stalls, concurrency, mirrors and pull policies.

mod common;

use std::time::{Duration, Instant};

use common::{blob_files, counter, puller, puller_with};
use smolvm_registry::testutil::{self, Format, Security, TestRegistry};
use smolvm_registry::testutil::{Fault, Proxy};
use smolvm_registry::{
    CacheError, Config, Platform, PullOptions, PullPolicy, Reference, RegistryError,
};

fn reference(text: &str) -> Reference {
    Reference::parse(text, None).unwrap()
}

fn quick() -> PullOptions {
    PullOptions {
        backoff: Duration::from_millis(20),
        read_gap_timeout: Duration::from_secs(5),
        ..PullOptions::default()
    }
}

async fn registry_with_busybox(
    security: Security,
    format: Format,
) -> (TestRegistry, testutil::PushedImage) {
    let registry = TestRegistry::start(security).unwrap();
    let image = testutil::busybox().unwrap();
    let pushed = testutil::push_image(&registry, "busybox:1", &image, format)
        .await
        .unwrap();
    (registry, pushed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_busybox_into_an_empty_cache_then_serves_it_from_the_cache() {
    let (registry, pushed) = registry_with_busybox(Security::Plain, Format::Oci).await;
    let dir = tempfile::tempdir().unwrap();
    let puller = puller(&registry, dir.path(), quick());
    let image = reference(&pushed.reference);

    let progress = counter();
    let pulled = puller.pull(&image, progress.clone()).await.unwrap();
    assert_eq!(pulled.manifest_digest, pushed.manifest_digest);
    assert_eq!(pulled.index_digest, None);
    assert_eq!(pulled.config_digest, pushed.config_digest);
    assert_eq!(pulled.transfer.blobs_downloaded, 2, "config + 1 layer");
    assert_eq!(progress.started(), 2);
    assert_eq!(pulled.layers.len(), 1);
    let layer = &pulled.layers[0];
    assert_eq!(layer.digest, pushed.layers[0]);
    assert_eq!(
        layer.media_type,
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert_eq!(std::fs::metadata(&layer.path).unwrap().len(), layer.size);
    puller.cache().verify(&layer.digest).unwrap();
    puller.cache().verify(&pulled.config_digest).unwrap();
    let config = pulled.config.config().as_ref().unwrap();
    assert_eq!(
        config.entrypoint().as_deref(),
        Some(&["/bin/busybox".to_owned()][..])
    );
    assert_eq!(config.cmd().as_deref(), Some(&["sh".to_owned()][..]));
    assert_eq!(config.user().as_deref(), Some("user"));
    assert_eq!(config.working_dir().as_deref(), Some("/home/user"));
    assert!(
        config
            .env()
            .as_ref()
            .unwrap()
            .contains(&"GREETING=hello".to_owned())
    );

    let again = counter();
    let second = puller.pull(&image, again.clone()).await.unwrap();
    assert_eq!(again.started(), 0, "no blob is downloaded twice");
    assert_eq!(second.transfer.blobs_downloaded, 0);
    assert_eq!(second.transfer.blobs_cached, 2);
    assert_eq!(second.layers, pulled.layers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_docker_schema2_manifests() {
    let (registry, pushed) = registry_with_busybox(Security::Plain, Format::Docker).await;
    let dir = tempfile::tempdir().unwrap();
    let pulled = puller(&registry, dir.path(), quick())
        .pull(&reference(&pushed.reference), counter())
        .await
        .unwrap();
    assert_eq!(pulled.manifest_digest, pushed.manifest_digest);
    assert_eq!(
        pulled.layers[0].media_type,
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
    assert_eq!(pulled.config.architecture().to_string(), "amd64");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_reference_never_resolves_the_tag() {
    let (registry, pushed) = registry_with_busybox(Security::Plain, Format::Oci).await;
    // Move the tag elsewhere: a digest pull must still get the original image.
    let other = testutil::fake_platform("amd64").unwrap();
    testutil::push_image(&registry, "busybox:1", &other, Format::Oci)
        .await
        .unwrap();
    let proxy = Proxy::start(registry.host(), Fault::None).await;
    let dir = tempfile::tempdir().unwrap();
    let config = Config::load(&dir.path().join("none.toml")).unwrap();
    let image = reference(&format!(
        "{}/busybox:1@{}",
        proxy.host, pushed.manifest_digest
    ));
    let pulled = puller_with(config, dir.path(), quick())
        .pull(&image, counter())
        .await
        .unwrap();
    assert_eq!(pulled.manifest_digest, pushed.manifest_digest);
    assert_eq!(pulled.layers[0].digest, pushed.layers[0]);
    let requests = proxy.requests();
    assert!(!requests.is_empty());
    assert!(
        requests.iter().all(|r| !r.contains("/manifests/1 ")),
        "the tag was contacted: {requests:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_resolves_to_the_requested_platform() {
    for format in [Format::Oci, Format::Docker] {
        let (registry, amd64) = registry_with_busybox(Security::Plain, format).await;
        let arm = testutil::fake_platform("arm64").unwrap();
        let arm64 = testutil::push_image(&registry, "busybox:arm", &arm, format)
            .await
            .unwrap();
        let index = testutil::push_index(&registry, "busybox:multi", &[&amd64, &arm64], format)
            .await
            .unwrap();
        let image = reference(&format!("{}/busybox:multi", registry.host()));
        let dir = tempfile::tempdir().unwrap();

        let pulled = puller(&registry, dir.path(), quick())
            .pull(&image, counter())
            .await
            .unwrap();
        assert_eq!(
            pulled.manifest_digest, amd64.manifest_digest,
            "host platform is amd64"
        );
        assert_eq!(pulled.index_digest, Some(index.clone()));

        let options = PullOptions {
            platform: Platform::parse("linux/arm64").unwrap(),
            ..quick()
        };
        let pulled = puller(&registry, dir.path(), options)
            .pull(&image, counter())
            .await
            .unwrap();
        assert_eq!(pulled.manifest_digest, arm64.manifest_digest);
        assert_eq!(pulled.config.architecture().to_string(), "arm64");

        let options = PullOptions {
            platform: Platform::parse("linux/s390x").unwrap(),
            ..quick()
        };
        let err = puller(&registry, dir.path(), options)
            .pull(&image, counter())
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{image} has no image for platform linux/s390x; available: linux/amd64, linux/arm64; choose one with --platform"
            )
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_credentials_say_what_to_do() {
    let (registry, pushed) = registry_with_busybox(Security::BasicAuth, Format::Oci).await;
    let image = reference(&pushed.reference);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    let host = registry.host();

    smolvm_registry::login(&path, host, "smolvm", "wrong-password").unwrap();
    let err = puller_with(Config::load(&path).unwrap(), dir.path(), quick())
        .pull(&image, counter())
        .await
        .unwrap_err();
    let message = err.to_string();
    assert_eq!(
        message,
        format!(
            "authentication to {host} failed: check the username/password in {} or run smolvm login {host}",
            path.display()
        )
    );
    assert!(!message.contains("wrong-password"));

    let empty = Config::load(&dir.path().join("absent.toml")).unwrap();
    let err = puller_with(empty, dir.path(), quick())
        .pull(&image, counter())
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::AuthRequired { .. }), "{err}");
    assert!(err.to_string().starts_with(&format!(
        "{host} requires authentication: run smolvm login {host}"
    )));

    let (user, password) = registry.credentials().unwrap();
    smolvm_registry::login(&path, host, user, password).unwrap();
    let pulled = puller_with(Config::load(&path).unwrap(), dir.path(), quick())
        .pull(&image, counter())
        .await
        .unwrap();
    assert_eq!(pulled.manifest_digest, pushed.manifest_digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_auth_needs_the_test_ca() {
    let (registry, pushed) = registry_with_busybox(Security::TlsBasicAuth, Format::Oci).await;
    let image = reference(&pushed.reference);
    let dir = tempfile::tempdir().unwrap();
    let pulled = puller(&registry, dir.path(), quick())
        .pull(&image, counter())
        .await
        .unwrap();
    assert_eq!(pulled.manifest_digest, pushed.manifest_digest);

    // HTTPS on loopback without the CA: rejected, and the message points at ca_file.
    let path = dir.path().join("no-ca.toml");
    let (user, password) = registry.credentials().unwrap();
    let text = format!(
        "[registries.\"{}\"]\ninsecure = false\nusername = \"{user}\"\npassword = \"{password}\"\n",
        registry.host()
    );
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let started = Instant::now();
    let err = puller_with(
        Config::load(&path).unwrap(),
        tempfile::tempdir().unwrap().path(),
        quick(),
    )
    .pull(&image, counter())
    .await
    .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a certificate error is not retried"
    );
    let message = err.to_string();
    assert!(
        matches!(err, RegistryError::Certificate { .. }),
        "{message}"
    );
    assert!(
        message.starts_with(&format!(
            "TLS certificate of {} was rejected (",
            registry.host()
        )),
        "{message}"
    );
    assert!(
        message.contains("UnknownIssuer") || message.contains("unknown issuer"),
        "{message}"
    );
    assert!(message.contains(&format!(
        "set ca_file = \"/path/to/ca.pem\" under [registries.\"{}\"]",
        registry.host()
    )));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_file_that_is_no_certificate_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, path) = (dir.path().join("ca.pem"), dir.path().join("config.toml"));
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(
        &path,
        "[registries.\"127.0.0.1:9\"]\nca_file = \"ca.pem\"\n",
    )
    .unwrap();
    let image = reference("127.0.0.1:9/app:1");
    let err = puller_with(Config::load(&path).unwrap(), dir.path(), quick())
        .pull(&image, counter())
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, RegistryError::CaFile { .. }), "{message}");
    assert!(
        message.starts_with(&format!(
            "ca_file {} for 127.0.0.1:9 is unusable: ",
            ca.display()
        )),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_blob_is_rejected_and_leaves_nothing_behind() {
    let (registry, pushed) = registry_with_busybox(Security::Plain, Format::Oci).await;
    let layer = &pushed.layers[0];
    let data_path = registry.blob_data_path(layer);
    let mut data = std::fs::read(&data_path).unwrap();
    let middle = data.len() / 2;
    data[middle] ^= 0xff;
    std::fs::write(&data_path, &data).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let err = puller(&registry, dir.path(), quick())
        .pull(&reference(&pushed.reference), counter())
        .await
        .unwrap_err();
    match &err {
        RegistryError::Cache(CacheError::Mismatch {
            digest,
            expected_size,
            actual_size,
            ..
        }) => {
            assert_eq!(digest, layer);
            assert_eq!(
                (*expected_size, *actual_size),
                (data.len() as u64, data.len() as u64)
            );
        }
        other => panic!("expected a digest mismatch, got {other}"),
    }
    let message = err.to_string();
    assert!(
        message.starts_with(&format!(
            "digest mismatch for {layer}: expected {} bytes",
            data.len()
        )),
        "{message}"
    );
    let files = blob_files(dir.path());
    assert!(
        !files.contains(&layer.hex().to_owned()),
        "the bad layer was cached"
    );
    assert!(
        files.iter().all(|f| !f.starts_with('.')),
        "temp files left: {files:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_images_and_tags_are_not_found() {
    let (registry, _) = registry_with_busybox(Security::Plain, Format::Oci).await;
    let dir = tempfile::tempdir().unwrap();
    let puller = puller(&registry, dir.path(), quick());
    for name in ["nope", "busybox:nope"] {
        let image = reference(&format!("{}/{name}", registry.host()));
        let err = puller.pull(&image, counter()).await.unwrap_err();
        assert_eq!(err.to_string(), format!("image not found: {image}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_download_resumes_with_a_range_request() {
    let registry = TestRegistry::start(Security::Plain).unwrap();
    let image = testutil::random_layers(4 << 20, 1, 42).unwrap();
    let size = image.layers[0].data.len() as u64;
    let pushed = testutil::push_image(&registry, "big:1", &image, Format::Oci)
        .await
        .unwrap();
    let proxy = Proxy::start(registry.host(), Fault::CutOnceAfter(1 << 20)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = Config::load(&dir.path().join("none.toml")).unwrap();
    let options = PullOptions {
        max_concurrent_downloads: 1,
        ..quick()
    };
    let pulled = puller_with(config, dir.path(), options)
        .pull(&reference(&format!("{}/big:1", proxy.host)), counter())
        .await
        .unwrap();
    assert_eq!(pulled.layers[0].digest, pushed.layers[0]);
    assert_eq!(pulled.transfer.resumed, 1);
    assert!(
        pulled.transfer.bytes_downloaded < size + (1 << 20),
        "resumed, not restarted: {} bytes for a {size}-byte layer",
        pulled.transfer.bytes_downloaded
    );
    let layer_path = format!("/blobs/{}", pushed.layers[0]);
    let ranges: Vec<String> = proxy
        .requests()
        .iter()
        .filter(|r| r.contains(&layer_path))
        .filter_map(|r| {
            r.lines()
                .find_map(|l| l.strip_prefix("range: ").map(str::to_owned))
        })
        .collect();
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert_eq!(ranges[0], "bytes=0-");
    let resumed_at: u64 = ranges[1]
        .strip_prefix("bytes=")
        .unwrap()
        .trim_end_matches('-')
        .parse()
        .unwrap();
    assert!(resumed_at > 0 && resumed_at <= 1 << 20, "{ranges:?}");
    puller_with(Config::default(), dir.path(), quick())
        .cache()
        .verify(&pushed.layers[0])
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_registry_hits_the_read_gap_timeout() {
    let registry = TestRegistry::start(Security::Plain).unwrap();
    let image = testutil::random_layers(2 << 20, 1, 7).unwrap();
    let pushed = testutil::push_image(&registry, "big:1", &image, Format::Oci)
        .await
        .unwrap();
    let gap = Duration::from_millis(400);
    let options = PullOptions {
        read_gap_timeout: gap,
        retries: 1,
        ..quick()
    };

    // Stalls once: the attempt is abandoned after the gap and the retry finishes the blob.
    let proxy = Proxy::start(registry.host(), Fault::StallOnceAfter(512 << 10)).await;
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let pulled = puller_with(Config::default(), dir.path(), options.clone())
        .pull(&reference(&format!("{}/big:1", proxy.host)), counter())
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(pulled.layers[0].digest, pushed.layers[0]);
    assert!(pulled.transfer.retries >= 1);

    // Stalls every time: the pull gives up within a bounded time and says why.
    let proxy = Proxy::start(registry.host(), Fault::StallAlwaysAfter(512 << 10)).await;
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let err = puller_with(Config::default(), dir.path(), options)
        .pull(&reference(&format!("{}/big:1", proxy.host)), counter())
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let message = err.to_string();
    assert!(matches!(err, RegistryError::GaveUp { .. }), "{message}");
    assert!(
        message.contains(&format!(
            "no data from {} for 400ms (read timeout)",
            proxy.host
        )),
        "{message}"
    );
    assert!(
        blob_files(dir.path()).iter().all(|f| !f.starts_with('.')),
        "temp files left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_of_the_same_image_both_succeed() {
    let registry = TestRegistry::start(Security::Plain).unwrap();
    let image = testutil::random_layers(8 << 20, 3, 3).unwrap();
    let pushed = testutil::push_image(&registry, "big:1", &image, Format::Oci)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let image = reference(&pushed.reference);
    // Separate pullers on one cache directory, as two processes would be.
    let pulls = (0..2).map(|_| {
        let (puller, image) = (puller(&registry, dir.path(), quick()), image.clone());
        tokio::spawn(async move { puller.pull(&image, counter()).await })
    });
    for pull in pulls.collect::<Vec<_>>() {
        let pulled = pull.await.unwrap().unwrap();
        assert_eq!(pulled.manifest_digest, pushed.manifest_digest);
    }
    let cache = puller(&registry, dir.path(), quick());
    for layer in &pushed.layers {
        cache.cache().verify(layer).unwrap();
    }
    assert!(blob_files(dir.path()).iter().all(|f| !f.starts_with('.')));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_is_tried_first_and_the_registry_after_it() {
    let (origin, pushed) = registry_with_busybox(Security::Plain, Format::Oci).await;
    let mirror = TestRegistry::start(Security::Plain).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");

    // Docker Hub served from a local mirror: `busybox` means docker.io/library/busybox.
    let image = testutil::busybox().unwrap();
    testutil::push_image(&mirror, "library/busybox:latest", &image, Format::Oci)
        .await
        .unwrap();
    std::fs::write(
        &path,
        format!(
            "[registries.\"docker.io\"]\nmirror = \"{}\"\n",
            mirror.host()
        ),
    )
    .unwrap();
    let config = Config::load(&path).unwrap();
    let pulled = puller_with(config.clone(), dir.path(), quick())
        .pull(&config.parse_reference("busybox").unwrap(), counter())
        .await
        .unwrap();
    assert_eq!(
        pulled.manifest_digest, pushed.manifest_digest,
        "same bytes, same digest"
    );

    // The mirror lacks the image: the original registry serves it.
    std::fs::write(
        &path,
        format!(
            "[registries.\"{}\"]\nmirror = \"{}\"\n",
            origin.host(),
            mirror.host()
        ),
    )
    .unwrap();
    let config = Config::load(&path).unwrap();
    let pulled = puller_with(config.clone(), dir.path(), quick())
        .pull(&reference(&pushed.reference), counter())
        .await
        .unwrap();
    assert_eq!(pulled.manifest_digest, pushed.manifest_digest);

    // Neither has it: both failures are reported.
    let missing = reference(&format!("{}/absent:1", origin.host()));
    let err = puller_with(config, dir.path(), quick())
        .pull(&missing, counter())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "mirror {m} failed (image not found: {m}/absent:1), and so did {o}: image not found: {o}/absent:1",
            m = mirror.host(),
            o = origin.host()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_policies_use_the_remembered_tag() {
    let (registry, pushed) = registry_with_busybox(Security::Plain, Format::Oci).await;
    let dir = tempfile::tempdir().unwrap();
    let image = reference(&pushed.reference);
    let never = PullOptions {
        policy: PullPolicy::Never,
        ..quick()
    };
    let err = puller(&registry, dir.path(), never.clone())
        .pull(&image, counter())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{image} is not in the cache and the pull policy forbids contacting the registry")
    );
    let config = registry.write_config(&dir.path().join("config.toml"));
    puller(&registry, dir.path(), quick())
        .pull(&image, counter())
        .await
        .unwrap();
    drop(registry);

    // The registry is gone: Never and Missing work from the cache alone.
    for policy in [PullPolicy::Never, PullPolicy::Missing] {
        let options = PullOptions { policy, ..quick() };
        let pulled = puller_with(config.clone(), dir.path(), options)
            .pull(&image, counter())
            .await
            .unwrap();
        assert_eq!(pulled.manifest_digest, pushed.manifest_digest, "{policy:?}");
    }
    let always = PullOptions {
        retries: 0,
        ..quick()
    };
    let err = puller_with(config, dir.path(), always)
        .pull(&image, counter())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("cannot connect to 127.0.0.1:"),
        "{err}"
    );
}
