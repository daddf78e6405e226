//! Pushing fixture images and indexes to a [`TestRegistry`], as OCI or Docker schema 2.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;

use super::fixtures::Image;
use super::server::TestRegistry;
use crate::digest::Digest;
use crate::reference::Reference;
use crate::transport::{Endpoint, Failure};

/// Which manifest flavour to push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OCI image manifest / image index.
    Oci,
    /// Docker image manifest v2 schema 2 / manifest list.
    Docker,
}

impl Format {
    fn manifest(self) -> &'static str {
        match self {
            Format::Oci => "application/vnd.oci.image.manifest.v1+json",
            Format::Docker => "application/vnd.docker.distribution.manifest.v2+json",
        }
    }

    fn index(self) -> &'static str {
        match self {
            Format::Oci => "application/vnd.oci.image.index.v1+json",
            Format::Docker => "application/vnd.docker.distribution.manifest.list.v2+json",
        }
    }

    fn config(self) -> &'static str {
        match self {
            Format::Oci => "application/vnd.oci.image.config.v1+json",
            Format::Docker => "application/vnd.docker.container.image.v1+json",
        }
    }

    fn layer(self, oci_media_type: &str) -> String {
        match (self, oci_media_type.ends_with("+gzip")) {
            (Format::Oci, _) => oci_media_type.to_owned(),
            (Format::Docker, true) => "application/vnd.docker.image.rootfs.diff.tar.gzip".into(),
            (Format::Docker, false) => "application/vnd.docker.image.rootfs.diff.tar".into(),
        }
    }
}

/// What a push put where.
#[derive(Debug, Clone)]
pub struct PushedImage {
    /// `127.0.0.1:<port>/<repository>:<tag>`.
    pub reference: String,
    /// The manifest's digest.
    pub manifest_digest: Digest,
    /// The manifest's size.
    pub manifest_size: u64,
    /// The manifest's media type.
    pub media_type: &'static str,
    /// The config blob's digest.
    pub config_digest: Digest,
    /// The layer blobs' digests, bottom first.
    pub layers: Vec<Digest>,
    /// The image's architecture (`amd64`).
    pub architecture: String,
}

async fn endpoint(
    registry: &TestRegistry,
    reference: &str,
) -> io::Result<(Endpoint, Reference, String)> {
    let image = Reference::parse(&format!("{}/{reference}", registry.host()), None)
        .map_err(io::Error::other)?;
    let dir = tempfile::tempdir()?;
    let config = registry.write_config(&dir.path().join("config.toml"));
    let timeout = Duration::from_secs(30);
    let endpoint = Endpoint::new(
        &config,
        registry.host(),
        image.repository(),
        timeout,
        timeout,
    )
    .await
    .map_err(io::Error::other)?;
    let tag = image.tag().unwrap_or("latest").to_owned();
    Ok((endpoint, image, tag))
}

fn failed(failure: Failure) -> io::Error {
    match failure {
        Failure::Fatal(e) => io::Error::other(e),
        Failure::Transient(reason) => io::Error::other(reason),
    }
}

/// Pushes `image` as `reference` (`repository:tag`, relative to the registry).
pub async fn push_image(
    registry: &TestRegistry,
    reference: &str,
    image: &Image,
    format: Format,
) -> io::Result<PushedImage> {
    let (endpoint, target, tag) = endpoint(registry, reference).await?;
    let config = Bytes::from(image.config_json());
    let config_digest = Digest::of(&config);
    let mut layers = Vec::new();
    for layer in &image.layers {
        let digest = Digest::of(&layer.data);
        endpoint
            .push_blob(&target, &digest, Bytes::from(layer.data.clone()))
            .await
            .map_err(failed)?;
        layers.push(json!({
            "mediaType": format.layer(layer.media_type),
            "digest": digest.as_str(),
            "size": layer.data.len(),
        }));
    }
    endpoint
        .push_blob(&target, &config_digest, config.clone())
        .await
        .map_err(failed)?;
    // mediaType is set explicitly: registries need it to tell manifests from indexes.
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": format.manifest(),
        "config": { "mediaType": format.config(), "digest": config_digest.as_str(), "size": config.len() },
        "layers": layers,
    }))?;
    let manifest_digest = Digest::of(&manifest);
    let manifest_size = manifest.len() as u64;
    endpoint
        .push_manifest(&target, &tag, Bytes::from(manifest), format.manifest())
        .await
        .map_err(failed)?;
    Ok(PushedImage {
        reference: target.to_string(),
        manifest_digest,
        manifest_size,
        media_type: format.manifest(),
        config_digest,
        layers: image.layers.iter().map(|l| Digest::of(&l.data)).collect(),
        architecture: image.architecture.clone(),
    })
}

/// Pushes an index of already pushed `images` (same repository) as `reference`; returns
/// the index's digest.
pub async fn push_index(
    registry: &TestRegistry,
    reference: &str,
    images: &[&PushedImage],
    format: Format,
) -> io::Result<Digest> {
    let (endpoint, target, tag) = endpoint(registry, reference).await?;
    let manifests: Vec<_> = images
        .iter()
        .map(|image| {
            json!({
                "mediaType": image.media_type,
                "digest": image.manifest_digest.as_str(),
                "size": image.manifest_size,
                "platform": { "architecture": image.architecture, "os": "linux" },
            })
        })
        .collect();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": format.index(),
        "manifests": manifests,
    }))?;
    let digest = Digest::of(&index);
    endpoint
        .push_manifest(&target, &tag, Bytes::from(index), format.index())
        .await
        .map_err(failed)?;
    Ok(digest)
}
