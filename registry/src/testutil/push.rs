//! Pushing fixture images and indexes to a [`TestRegistry`], as OCI or Docker schema 2.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Value, json};

use super::fixtures::Image;
use super::server::TestRegistry;
use crate::digest::Digest;
use crate::pull::{Event, Progress};
use crate::push::{Blob, Pusher};
use crate::reference::Reference;

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

/// No progress display.
fn quiet() -> Arc<dyn Progress> {
    Arc::new(|_: &Event<'_>| {})
}

/// A pusher for `reference` (relative to the registry) with the registry's credentials.
async fn connect(registry: &TestRegistry, reference: &str) -> io::Result<(Pusher, Reference)> {
    let image = Reference::parse(&format!("{}/{reference}", registry.host()), None)
        .map_err(io::Error::other)?;
    let dir = tempfile::tempdir()?;
    let config = registry.write_config(&dir.path().join("config.toml"));
    let pusher = Pusher::connect(&config, &image)
        .await
        .map_err(io::Error::other)?;
    Ok((pusher, image))
}

/// Pushes `manifest` (mediaType set explicitly: registries need it to tell manifests from
/// indexes) and returns its digest and size.
async fn push_manifest(
    pusher: &Pusher,
    manifest: &Value,
    media_type: &str,
) -> io::Result<(Digest, u64)> {
    let bytes = Bytes::from(serde_json::to_vec(manifest)?);
    let size = bytes.len() as u64;
    let digest = pusher
        .push_manifest(
            bytes,
            media_type,
            Some(pusher.reference().tag().unwrap_or("latest")),
        )
        .await
        .map_err(io::Error::other)?;
    Ok((digest, size))
}

/// Pushes `image` as `reference` (`repository:tag`, relative to the registry).
pub async fn push_image(
    registry: &TestRegistry,
    reference: &str,
    image: &Image,
    format: Format,
) -> io::Result<PushedImage> {
    let (pusher, target) = connect(registry, reference).await?;
    let mut layers = Vec::new();
    let mut descriptors = Vec::new();
    for layer in &image.layers {
        let blob = Blob::bytes(layer.data.clone());
        pusher
            .push_blob(&blob, quiet())
            .await
            .map_err(io::Error::other)?;
        let digest = blob.digest;
        descriptors.push(json!({
            "mediaType": format.layer(layer.media_type),
            "digest": digest.as_str(),
            "size": layer.data.len(),
        }));
        layers.push(digest);
    }
    let config = image.config_json();
    let config_size = config.len();
    let config = Blob::bytes(config);
    pusher
        .push_blob(&config, quiet())
        .await
        .map_err(io::Error::other)?;
    let config_digest = config.digest;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": format.manifest(),
        "config": { "mediaType": format.config(), "digest": config_digest.as_str(), "size": config_size },
        "layers": descriptors,
    });
    let (manifest_digest, manifest_size) =
        push_manifest(&pusher, &manifest, format.manifest()).await?;
    Ok(PushedImage {
        reference: target.to_string(),
        manifest_digest,
        manifest_size,
        media_type: format.manifest(),
        config_digest,
        layers,
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
    let (pusher, _) = connect(registry, reference).await?;
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
    let index = json!({ "schemaVersion": 2, "mediaType": format.index(), "manifests": manifests });
    Ok(push_manifest(&pusher, &index, format.index()).await?.0)
}
