//! Uploading blobs and manifests to one repository: what `.smolmachine` artifacts are
//! pushed with, and the test fixtures too.
//!
//! A blob is first looked up with a HEAD request and skipped when the repository has it;
//! otherwise it goes up in one request (monolithic: ~4x faster than chunked on loopback),
//! streamed from memory or from a range of a file in [`CHUNK`]-sized reads, so memory does
//! not grow with the blob. Each call is one attempt: a failed push is simply run again.

use std::io::SeekFrom;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::config::Config;
use crate::digest::Digest;
use crate::pull::{Event, Progress, PullOptions, RegistryError};
use crate::reference::Reference;
use crate::transport::Endpoint;

/// Bytes read from a file per chunk of an upload.
pub const CHUNK: usize = 1 << 20;

/// Where a blob's bytes come from.
#[derive(Debug, Clone)]
pub enum BlobSource {
    /// Bytes in memory (manifests' configs, small fixtures).
    Bytes(Bytes),
    /// `size` bytes of a file starting at `offset` (a section of a pack).
    File {
        /// The file.
        path: PathBuf,
        /// Where the blob starts in it.
        offset: u64,
    },
}

/// A blob to upload: its digest and size are known beforehand, so that the registry can
/// be asked whether it has it, and verifies what arrives against them.
#[derive(Debug, Clone)]
pub struct Blob {
    /// The blob's digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Its bytes.
    pub source: BlobSource,
}

impl Blob {
    /// A blob of bytes in memory (its digest is computed here).
    pub fn bytes(data: impl Into<Bytes>) -> Blob {
        let data = data.into();
        Blob {
            digest: Digest::of(&data),
            size: data.len() as u64,
            source: BlobSource::Bytes(data),
        }
    }

    /// `size` bytes of `path` from `offset`, which hash to `digest` (the registry refuses
    /// the upload if they don't).
    pub fn file_range(path: PathBuf, offset: u64, size: u64, digest: Digest) -> Blob {
        Blob {
            digest,
            size,
            source: BlobSource::File { path, offset },
        }
    }
}

/// What [`Pusher::push_blob`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// The repository had the blob already: nothing was sent.
    Present,
    /// The blob was uploaded.
    Uploaded,
}

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

    /// The reference this pusher uploads to.
    pub fn reference(&self) -> &Reference {
        &self.image
    }

    /// Uploads `blob` unless the repository has it. Reports `Cached` (present), or
    /// `Started`, `Progress` as chunks are read, and `Finished`.
    pub async fn push_blob(
        &self,
        blob: &Blob,
        progress: Arc<dyn Progress>,
    ) -> Result<Pushed, RegistryError> {
        let Blob { digest, size, .. } = blob;
        let what = format!("blob {digest}");
        let fail =
            |f: crate::transport::Failure| f.into_upload_error(&self.endpoint.registry, &what);
        if self
            .endpoint
            .has_blob(&self.image, digest)
            .await
            .map_err(fail)?
        {
            progress.event(&Event::Cached {
                digest,
                size: *size,
            });
            return Ok(Pushed::Present);
        }
        progress.event(&Event::Started {
            digest,
            size: *size,
        });
        let result = match &blob.source {
            BlobSource::Bytes(data) => {
                let chunk = Ok(data.clone());
                let stream = futures_util::stream::once(async move { chunk });
                self.endpoint
                    .push_blob(&self.image, digest, *size, stream)
                    .await
            }
            BlobSource::File { path, offset } => {
                let read_error = |source| RegistryError::Read {
                    path: path.clone(),
                    source,
                };
                let mut file = tokio::fs::File::open(path).await.map_err(read_error)?;
                file.seek(SeekFrom::Start(*offset))
                    .await
                    .map_err(read_error)?;
                let chunks = FileChunks {
                    file,
                    path: path.clone(),
                    remaining: *size,
                    done: 0,
                    size: *size,
                    digest: digest.clone(),
                    progress: progress.clone(),
                };
                let stream = futures_util::stream::unfold(chunks, |mut chunks| async move {
                    let chunk = chunks.next().await?;
                    Some((chunk, chunks))
                });
                self.endpoint
                    .push_blob(&self.image, digest, *size, stream)
                    .await
            }
        };
        result.map_err(fail)?;
        progress.event(&Event::Finished { digest });
        Ok(Pushed::Uploaded)
    }

    /// Uploads a manifest (or index) under `tag`, or by its digest without one, and returns
    /// its digest. `media_type` must be the one inside the manifest.
    pub async fn push_manifest(
        &self,
        manifest: Bytes,
        media_type: &str,
        tag: Option<&str>,
    ) -> Result<Digest, RegistryError> {
        let digest = Digest::of(&manifest);
        let what = match tag {
            Some(tag) => format!("manifest {tag}"),
            None => format!("manifest {digest}"),
        };
        self.endpoint
            .push_manifest(&self.image, tag, manifest, media_type)
            .await
            .map_err(|f| f.into_upload_error(&self.endpoint.registry, &what))?;
        Ok(digest)
    }

    /// The manifest (or index) `tag` points to now, with its digest; `None` when the tag
    /// (or the repository) does not exist.
    pub async fn fetch_manifest(
        &self,
        tag: &str,
    ) -> Result<Option<(Digest, Bytes)>, RegistryError> {
        let what = format!("manifest {tag}");
        let fail =
            |f: crate::transport::Failure| f.into_upload_error(&self.endpoint.registry, &what);
        let digest = match self.endpoint.resolve_tag(&self.image, tag).await {
            Ok(digest) => digest,
            Err(crate::transport::Failure::Fatal(RegistryError::NotFound { .. })) => {
                return Ok(None);
            }
            Err(f) => return Err(fail(f)),
        };
        let bytes = self
            .endpoint
            .manifest(&self.image, &digest)
            .await
            .map_err(fail)?;
        Ok(Some((digest, bytes)))
    }
}

/// Reads a file range in [`CHUNK`]s for an upload's body, reporting progress.
struct FileChunks {
    file: tokio::fs::File,
    path: PathBuf,
    remaining: u64,
    done: u64,
    size: u64,
    digest: Digest,
    progress: Arc<dyn Progress>,
}

impl FileChunks {
    /// The next chunk, `None` at the end. A file shorter than announced is an error (the
    /// registry would refuse the upload anyway).
    async fn next(&mut self) -> Option<oci_client::errors::Result<Bytes>> {
        if self.remaining == 0 {
            return None;
        }
        let want = self.remaining.min(CHUNK as u64) as usize;
        let mut buf = vec![0; want];
        if let Err(e) = self.file.read_exact(&mut buf).await {
            self.remaining = 0;
            return Some(Err(oci_client::errors::OciDistributionError::IoError(
                std::io::Error::new(e.kind(), format!("{}: {e}", self.path.display())),
            )));
        }
        self.remaining -= want as u64;
        self.done += want as u64;
        self.progress.event(&Event::Progress {
            digest: &self.digest,
            done: self.done,
            size: self.size,
        });
        Some(Ok(Bytes::from(buf)))
    }
}
