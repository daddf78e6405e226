//! Uploading blobs and manifests to one repository: the base for pushing `.smolmachine`
//! artifacts, and what the test fixtures are pushed with. Blobs go up in one request
//! (monolithic: ~4x faster than chunked on loopback) from memory; each call is one attempt.

use bytes::Bytes;

use crate::config::Config;
use crate::digest::Digest;
use crate::pull::{PullOptions, RegistryError};
use crate::reference::Reference;
use crate::transport::Endpoint;

/// A connection to the repository of one reference, with the config's credentials and
/// transport rules.
pub struct Pusher {
    endpoint: Endpoint,
    image: Reference,
}

impl Pusher {
    /// Prepares uploads to `image`'s repository (nothing is sent yet); timeouts as in
    /// [`PullOptions::default`].
    pub async fn connect(config: &Config, image: &Reference) -> Result<Pusher, RegistryError> {
        let options = PullOptions::default();
        let endpoint = Endpoint::new(
            config,
            image.registry(),
            image.repository(),
            options.connect_timeout,
            options.read_gap_timeout,
        )
        .await?;
        Ok(Pusher {
            endpoint,
            image: image.clone(),
        })
    }

    /// Uploads `data` as a blob and returns its digest.
    pub async fn push_blob(&self, data: Bytes) -> Result<Digest, RegistryError> {
        let digest = Digest::of(&data);
        self.endpoint
            .push_blob(&self.image, &digest, data)
            .await
            .map_err(|f| f.into_error(&self.endpoint.registry, &format!("blob {digest}")))?;
        Ok(digest)
    }

    /// Uploads a manifest (or index) under the reference's tag and returns its digest.
    /// `media_type` must be the one inside the manifest.
    pub async fn push_manifest(
        &self,
        manifest: Bytes,
        media_type: &str,
    ) -> Result<Digest, RegistryError> {
        let digest = Digest::of(&manifest);
        let tag = self.image.tag().unwrap_or("latest");
        self.endpoint
            .push_manifest(&self.image, tag, manifest, media_type)
            .await
            .map_err(|f| f.into_error(&self.endpoint.registry, &format!("manifest {tag}")))?;
        Ok(digest)
    }
}
