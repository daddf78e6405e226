//! Pulling an image (or any OCI artifact) into the blob cache: resolve the reference to a
//! manifest (picking the requested platform from an index), then stream the config and
//! layers to files, each checked against its descriptor's digest and size before it enters
//! the cache.
//!
//! Transfers retry transient failures (connection errors, 5xx, 429, a read gap longer than
//! [`PullOptions::read_gap_timeout`]) with exponential backoff; a broken blob download
//! resumes from the bytes already written with an HTTP `Range` request. The retry budget
//! starts again whenever an attempt made progress, so a slow but moving transfer finishes.
//! Nothing is printed: callers watch a [`Progress`].

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use smolfile::Platform;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::cache::{BlobCache, CacheError};
use crate::config::{Config, ConfigError};
use crate::digest::{Digest, DigestError};
use crate::reference::Reference;
use crate::transport::{Endpoint, Failure, MANIFEST_MEDIA_TYPES, find};

/// When to ask the registry what a tag points to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullPolicy {
    /// Resolve tags at the registry every time (a HEAD request); blobs come from the cache.
    #[default]
    Always,
    /// Use the digest a tag resolved to last time when it is cached; else resolve it.
    Missing,
    /// Never contact a registry: everything must be cached.
    Never,
}

/// Tunables for [`Puller`].
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// The platform picked from a multi-platform index (default: the host's).
    pub platform: Platform,
    /// When tags are resolved at the registry.
    pub policy: PullPolicy,
    /// Blobs downloaded at once.
    pub max_concurrent_downloads: usize,
    /// Retries after a transient failure without progress, before giving up.
    pub retries: u32,
    /// The first retry's delay; each next one doubles, up to [`MAX_BACKOFF`].
    pub backoff: Duration,
    /// A connection that delivers no byte for this long is abandoned and retried.
    pub read_gap_timeout: Duration,
    /// Limit for establishing a TCP (and TLS) connection.
    pub connect_timeout: Duration,
}

/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            platform: host_platform(),
            policy: PullPolicy::Always,
            max_concurrent_downloads: 4,
            retries: 5,
            backoff: Duration::from_millis(250),
            read_gap_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// `linux/<arch of this machine>` in OCI's spelling.
pub fn host_platform() -> Platform {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    Platform {
        os: "linux".into(),
        architecture: architecture.into(),
        variant: None,
    }
}

/// A pulled image: everything is in the cache and verified.
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// The reference as requested (normalised).
    pub reference: Reference,
    /// The platform image manifest's digest (what the config and layers hang off).
    pub manifest_digest: Digest,
    /// The index the reference named, when it named a multi-platform one.
    pub index_digest: Option<Digest>,
    /// The config blob's digest.
    pub config_digest: Digest,
    /// The parsed image config: `config()` holds Entrypoint, Cmd, Env, WorkingDir, User.
    pub config: ImageConfiguration,
    /// The layers, bottom first.
    pub layers: Vec<Layer>,
    /// What this pull transferred.
    pub transfer: Transfer,
}

/// A pulled manifest and every blob it names, in the cache and verified: what
/// [`Puller::pull_artifact`] returns for any OCI artifact (an image, a `.smolmachine`).
#[derive(Debug, Clone)]
pub struct PulledArtifact {
    /// The reference as requested (normalised).
    pub reference: Reference,
    /// The platform image manifest's digest (what the config and layers hang off).
    pub manifest_digest: Digest,
    /// The index the reference named, when it named a multi-platform one.
    pub index_digest: Option<Digest>,
    /// The manifest (its `artifact_type()` and `annotations()` included).
    pub manifest: ImageManifest,
    /// The config blob.
    pub config: Layer,
    /// The layers, in manifest order.
    pub layers: Vec<Layer>,
    /// What this pull transferred.
    pub transfer: Transfer,
}

/// One layer blob in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// Its digest (the compressed blob's).
    pub digest: Digest,
    /// e.g. `application/vnd.oci.image.layer.v1.tar+gzip`.
    pub media_type: String,
    /// The blob file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
}

/// Counters for one pull.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transfer {
    /// Blobs (config and layers) fetched from a registry.
    pub blobs_downloaded: u64,
    /// Blobs found in the cache.
    pub blobs_cached: u64,
    /// Blob bytes received (a restarted download counts twice).
    pub bytes_downloaded: u64,
    /// Downloads continued with a `Range` request after a failure.
    pub resumed: u64,
    /// Attempts retried after a transient failure.
    pub retries: u64,
}

/// What a pull reports as it goes. Digests identify blobs; sizes are bytes.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// The blob is already where it is going: in the cache (a pull) or in the repository
    /// (a push). Nothing is transferred.
    Cached {
        /// The blob.
        digest: &'a Digest,
        /// Its size.
        size: u64,
    },
    /// A download starts.
    Started {
        /// The blob.
        digest: &'a Digest,
        /// Its size.
        size: u64,
    },
    /// Bytes arrived.
    Progress {
        /// The blob.
        digest: &'a Digest,
        /// Bytes of it written so far.
        done: u64,
        /// Its size.
        size: u64,
    },
    /// An attempt failed transiently; the next one starts after `delay`.
    Retrying {
        /// What was being fetched (a blob digest, a manifest, a tag).
        what: &'a str,
        /// 1 for the first retry.
        attempt: u32,
        /// The wait before it.
        delay: Duration,
        /// Why the attempt failed.
        reason: &'a str,
    },
    /// A blob is verified and in the cache.
    Finished {
        /// The blob.
        digest: &'a Digest,
    },
}

/// Receives [`Event`]s, e.g. to drive a progress bar. Called from several tasks at once.
pub trait Progress: Send + Sync {
    /// Handles one event; should return quickly.
    fn event(&self, event: &Event<'_>);
}

impl<F: Fn(&Event<'_>) + Send + Sync> Progress for F {
    fn event(&self, event: &Event<'_>) {
        self(event)
    }
}

/// Why a pull or push failed; each says what to do about it where there is something to do.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The config file is unusable (or a `password_env` is unset).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The cache could not be written, or a blob failed verification.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// A descriptor names a digest this crate does not handle.
    #[error(transparent)]
    Digest(#[from] DigestError),
    /// The registry has no such repository, tag or digest.
    #[error("image not found: {reference}")]
    NotFound {
        /// The reference, on the registry that was asked.
        reference: String,
    },
    /// The registry wants credentials and none are configured.
    #[error(
        "{registry} requires authentication: run smolvm login {registry}, or set username and password_env under [registries.\"{registry}\"] in {}",
        config.display()
    )]
    AuthRequired {
        /// The registry.
        registry: String,
        /// The config file to edit.
        config: PathBuf,
    },
    /// The configured credentials were refused.
    #[error(
        "authentication to {registry} failed: check the username/password in {} or run smolvm login {registry}",
        config.display()
    )]
    AuthFailed {
        /// The registry.
        registry: String,
        /// The config file holding the credentials.
        config: PathBuf,
    },
    /// The registry's TLS certificate was rejected.
    #[error(
        "TLS certificate of {registry} was rejected ({detail}): if the registry uses a private CA, set ca_file = \"/path/to/ca.pem\" under [registries.\"{registry}\"] in {}",
        config.display()
    )]
    Certificate {
        /// The registry.
        registry: String,
        /// rustls's reason.
        detail: String,
        /// The config file to edit.
        config: PathBuf,
    },
    /// The `ca_file` cannot be read or is not a PEM certificate.
    #[error("ca_file {} for {registry} is unusable: {detail}", path.display())]
    CaFile {
        /// The registry.
        registry: String,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// A transfer kept failing transiently.
    #[error("fetching {what} from {registry} failed after {attempts} attempts: {reason}")]
    GaveUp {
        /// The registry.
        registry: String,
        /// What was being fetched.
        what: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        reason: String,
    },
    /// An upload failed (pushes make one attempt: run the push again, it skips what the
    /// registry already has).
    #[error("uploading {what} to {registry} failed: {reason}; run the push again to continue")]
    UploadFailed {
        /// The registry.
        registry: String,
        /// What was being uploaded.
        what: String,
        /// Why.
        reason: String,
    },
    /// A file to upload could not be read.
    #[error("cannot read {} to upload it: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The registry answered with an error this crate does not retry.
    #[error("registry {registry}: {detail}")]
    Server {
        /// The registry.
        registry: String,
        /// Its answer.
        detail: String,
    },
    /// The index has no entry for the requested platform.
    #[error(
        "{reference} has no image for platform {wanted}; available: {available}; choose one with --platform"
    )]
    NoPlatform {
        /// The reference.
        reference: String,
        /// The platform asked for.
        wanted: String,
        /// The index's platforms, comma-separated.
        available: String,
    },
    /// A manifest this crate cannot use (schema 1, an artifact, bad JSON).
    #[error("manifest {digest} of {reference}: {detail}")]
    BadManifest {
        /// The reference.
        reference: String,
        /// The manifest's digest.
        digest: Digest,
        /// What is wrong.
        detail: String,
    },
    /// The manifest is an artifact of another type than the one asked for (or an image
    /// where an artifact was expected, or the other way round).
    #[error("{reference} is {found}, not {expected}")]
    WrongArtifactType {
        /// The reference.
        reference: String,
        /// What was asked for.
        expected: String,
        /// What the manifest is (`an image`, `an artifact of type ...`).
        found: String,
    },
    /// The image config blob is not a valid image config.
    #[error("image config {digest}: {detail}")]
    BadConfig {
        /// The config blob's digest.
        digest: Digest,
        /// The parser's message.
        detail: String,
    },
    /// [`PullPolicy::Never`] and something is not cached.
    #[error("{what} is not in the cache and the pull policy forbids contacting the registry")]
    NotCached {
        /// What is missing.
        what: String,
    },
    /// Both the mirror and the registry failed.
    #[error("mirror {mirror} failed ({mirror_error}), and so did {registry}: {error}")]
    Mirror {
        /// The mirror.
        mirror: String,
        /// Why the mirror failed.
        mirror_error: Box<RegistryError>,
        /// The original registry.
        registry: String,
        /// Why the original registry failed.
        error: Box<RegistryError>,
    },
}

/// Pulls images into a cache using a config's registry settings.
#[derive(Clone)]
pub struct Puller {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    cache: BlobCache,
    options: PullOptions,
}

/// Per-pull state shared by the download tasks.
struct Job {
    inner: Arc<Inner>,
    endpoint: Endpoint,
    image: Reference,
    progress: Arc<dyn Progress>,
    stats: Stats,
}

#[derive(Default)]
struct Stats {
    downloaded: AtomicU64,
    cached: AtomicU64,
    bytes: AtomicU64,
    resumed: AtomicU64,
    retries: AtomicU64,
}

/// A blob to fetch, from a manifest's descriptor.
#[derive(Clone)]
struct Blob {
    digest: Digest,
    size: u64,
    media_type: String,
}

impl Puller {
    /// A puller with `config`'s registries writing into `cache`.
    pub fn new(config: Config, cache: BlobCache, options: PullOptions) -> Puller {
        Puller {
            inner: Arc::new(Inner {
                config,
                cache,
                options,
            }),
        }
    }

    /// The cache this puller writes to.
    pub fn cache(&self) -> &BlobCache {
        &self.inner.cache
    }

    /// Pulls the image `image`. With a `mirror` configured for its registry the mirror is
    /// tried first and the registry itself on any failure, as docker does.
    pub async fn pull(
        &self,
        image: &Reference,
        progress: Arc<dyn Progress>,
    ) -> Result<PulledImage, RegistryError> {
        let pulled = self.pull_artifact(image, None, progress).await?;
        let config_bytes = self.cache().read_verified(&pulled.config.digest)?;
        let config = serde_json::from_slice::<ImageConfiguration>(&config_bytes).map_err(|e| {
            RegistryError::BadConfig {
                digest: pulled.config.digest.clone(),
                detail: e.to_string(),
            }
        })?;
        Ok(PulledImage {
            reference: pulled.reference,
            manifest_digest: pulled.manifest_digest,
            index_digest: pulled.index_digest,
            config_digest: pulled.config.digest,
            config,
            layers: pulled.layers,
            transfer: pulled.transfer,
        })
    }

    /// Pulls the manifest `image` names (for this puller's platform when it names an index)
    /// and every blob of it. `artifact_type` is the manifest's `artifactType` to insist on,
    /// `None` for a container image (a manifest without one); a mismatch is refused before
    /// any blob is fetched. Mirrors are used as in [`Puller::pull`].
    pub async fn pull_artifact(
        &self,
        image: &Reference,
        artifact_type: Option<&str>,
        progress: Arc<dyn Progress>,
    ) -> Result<PulledArtifact, RegistryError> {
        let registry = image.registry();
        let Some(mirror) = self.inner.config.registry(registry).mirror else {
            return self
                .pull_from(image, registry, artifact_type, progress)
                .await;
        };
        match self
            .pull_from(image, &mirror, artifact_type, progress.clone())
            .await
        {
            Ok(pulled) => Ok(pulled),
            Err(mirror_error) => self
                .pull_from(image, registry, artifact_type, progress)
                .await
                .map_err(|error| RegistryError::Mirror {
                    mirror,
                    mirror_error: Box::new(mirror_error),
                    registry: registry.to_owned(),
                    error: Box::new(error),
                }),
        }
    }

    async fn pull_from(
        &self,
        image: &Reference,
        registry: &str,
        artifact_type: Option<&str>,
        progress: Arc<dyn Progress>,
    ) -> Result<PulledArtifact, RegistryError> {
        let options = &self.inner.options;
        let endpoint = Endpoint::new(
            &self.inner.config,
            registry,
            image.repository(),
            options.connect_timeout,
            options.read_gap_timeout,
        )
        .await?;
        let job = Arc::new(Job {
            inner: self.inner.clone(),
            endpoint,
            image: image.clone(),
            progress,
            stats: Stats::default(),
        });
        job.run(artifact_type).await
    }
}

impl Job {
    fn cache(&self) -> &BlobCache {
        &self.inner.cache
    }

    fn policy(&self) -> PullPolicy {
        self.inner.options.policy
    }

    async fn run(
        self: &Arc<Self>,
        artifact_type: Option<&str>,
    ) -> Result<PulledArtifact, RegistryError> {
        let top = self.resolve().await?;
        let (manifest_digest, manifest, index_digest) = match self.manifest(&top).await? {
            Manifest::Image(manifest) => (top, manifest, None),
            Manifest::Index(index) => {
                let chosen = self.choose_platform(&index)?;
                match self.manifest(&chosen).await? {
                    Manifest::Image(manifest) => (chosen, manifest, Some(top)),
                    Manifest::Index(_) => {
                        return Err(
                            self.bad_manifest(&chosen, "an index entry points to another index")
                        );
                    }
                }
            }
        };
        let found = manifest.artifact_type().as_ref().map(|t| t.to_string());
        if found.as_deref() != artifact_type {
            let describe = |t: Option<&str>| match t {
                Some(t) => format!("an artifact of type {t}"),
                None => "a container image".to_owned(),
            };
            return Err(RegistryError::WrongArtifactType {
                reference: self.image.to_string(),
                expected: describe(artifact_type),
                found: describe(found.as_deref()),
            });
        }
        if let (Some(_), None) = (self.image.tag(), self.image.digest()) {
            let top = index_digest.as_ref().unwrap_or(&manifest_digest);
            self.cache().record_tag(&self.image.to_string(), top)?;
        }

        let mut blobs = vec![descriptor_blob(manifest.config())?];
        for layer in manifest.layers() {
            blobs.push(descriptor_blob(layer)?);
        }
        // A blob named twice (two identical layers) is fetched once.
        let mut unique: Vec<Blob> = Vec::new();
        for blob in &blobs {
            if !unique.iter().any(|b| b.digest == blob.digest) {
                unique.push(blob.clone());
            }
        }
        self.fetch_all(unique).await?;
        let mut layers = blobs.into_iter().map(|blob| Layer {
            path: self.cache().blob_path(&blob.digest),
            digest: blob.digest,
            media_type: blob.media_type,
            size: blob.size,
        });
        let config = layers.next().expect("the config blob is first");
        let stats = &self.stats;
        Ok(PulledArtifact {
            reference: self.image.clone(),
            manifest_digest,
            index_digest,
            manifest: *manifest,
            config,
            layers: layers.collect(),
            transfer: Transfer {
                blobs_downloaded: stats.downloaded.load(Ordering::Relaxed),
                blobs_cached: stats.cached.load(Ordering::Relaxed),
                bytes_downloaded: stats.bytes.load(Ordering::Relaxed),
                resumed: stats.resumed.load(Ordering::Relaxed),
                retries: stats.retries.load(Ordering::Relaxed),
            },
        })
    }

    /// The digest the reference names: its own digest (never re-resolved), else the tag's.
    async fn resolve(&self) -> Result<Digest, RegistryError> {
        if let Some(digest) = self.image.digest() {
            return Ok(digest.clone());
        }
        let tag = self.image.tag().unwrap_or("latest");
        let remembered = match self.policy() {
            PullPolicy::Always => None,
            PullPolicy::Missing | PullPolicy::Never => {
                self.cache().tag_digest(&self.image.to_string())
            }
        };
        match (remembered, self.policy()) {
            (Some(digest), _) => Ok(digest),
            (None, PullPolicy::Never) => Err(RegistryError::NotCached {
                what: self.image.to_string(),
            }),
            (None, _) => {
                let what = format!("tag {tag}");
                self.retrying(&what, || self.endpoint.resolve_tag(&self.image, tag))
                    .await
            }
        }
    }

    /// The manifest `digest`, from the cache or the registry (then cached).
    async fn manifest(&self, digest: &Digest) -> Result<Manifest, RegistryError> {
        let bytes = match self.cache().read_verified(digest) {
            Ok(bytes) => bytes,
            Err(CacheError::Missing(_)) if self.policy() == PullPolicy::Never => {
                return Err(RegistryError::NotCached {
                    what: format!("manifest {digest} of {}", self.image),
                });
            }
            Err(CacheError::Missing(_) | CacheError::Mismatch { .. }) => {
                let what = format!("manifest {digest}");
                let bytes = self
                    .retrying(&what, || self.endpoint.manifest(&self.image, digest))
                    .await?;
                self.cache().put(digest, &bytes)?;
                bytes.to_vec()
            }
            Err(e) => return Err(e.into()),
        };
        self.parse_manifest(digest, &bytes)
    }

    fn parse_manifest(&self, digest: &Digest, bytes: &[u8]) -> Result<Manifest, RegistryError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Probe {
            schema_version: u32,
            media_type: Option<String>,
            manifests: Option<serde::de::IgnoredAny>,
        }
        let bad = |detail: String| self.bad_manifest(digest, &detail);
        let probe: Probe =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not a manifest: {e}")))?;
        if probe.schema_version != 2 {
            return Err(bad(format!(
                "schema version {} is not supported (only OCI and Docker schema 2)",
                probe.schema_version
            )));
        }
        let is_index = match probe.media_type.as_deref() {
            Some(t) if !MANIFEST_MEDIA_TYPES.contains(&t) => {
                return Err(bad(format!(
                    "media type {t} is not an image manifest or index (expected one of {})",
                    MANIFEST_MEDIA_TYPES.join(", ")
                )));
            }
            Some(t) => t.contains("index") || t.contains("list"),
            None => probe.manifests.is_some(),
        };
        if is_index {
            serde_json::from_slice(bytes).map(|i| Manifest::Index(Box::new(i)))
        } else {
            serde_json::from_slice(bytes).map(|m| Manifest::Image(Box::new(m)))
        }
        .map_err(|e| bad(e.to_string()))
    }

    fn bad_manifest(&self, digest: &Digest, detail: &str) -> RegistryError {
        RegistryError::BadManifest {
            reference: self.image.to_string(),
            digest: digest.clone(),
            detail: detail.to_owned(),
        }
    }

    /// The index entry for the requested platform; a requested variant must match, an
    /// unrequested one matches any.
    fn choose_platform(&self, index: &ImageIndex) -> Result<Digest, RegistryError> {
        let wanted = &self.inner.options.platform;
        let entries: Vec<_> = index
            .manifests()
            .iter()
            .filter_map(|m| Some((m, m.platform().as_ref()?)))
            .collect();
        let chosen = entries.iter().find(|(_, p)| {
            p.os().to_string() == wanted.os
                && p.architecture().to_string() == wanted.architecture
                && wanted
                    .variant
                    .as_ref()
                    .is_none_or(|v| p.variant().as_ref() == Some(v))
        });
        match chosen {
            Some((entry, _)) => Ok(Digest::parse(entry.digest().as_ref())?),
            None => Err(RegistryError::NoPlatform {
                reference: self.image.to_string(),
                wanted: wanted.to_string(),
                available: entries
                    .iter()
                    .map(|(_, p)| match p.variant() {
                        Some(v) => format!("{}/{}/{v}", p.os(), p.architecture()),
                        None => format!("{}/{}", p.os(), p.architecture()),
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Fetches `blobs` into the cache with bounded concurrency. The first failure cancels
    /// the rest and waits until their temp files are gone.
    async fn fetch_all(self: &Arc<Self>, blobs: Vec<Blob>) -> Result<(), RegistryError> {
        let permits = Arc::new(Semaphore::new(
            self.inner.options.max_concurrent_downloads.max(1),
        ));
        let mut tasks = JoinSet::new();
        for blob in blobs {
            let (job, permits) = (self.clone(), permits.clone());
            tasks.spawn(async move {
                let _permit = permits
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed");
                job.fetch_blob(&blob).await
            });
        }
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    // Wait for the others to wind down, so their temp files are gone when
                    // the error reaches the caller.
                    tasks.abort_all();
                    while tasks.join_next().await.is_some() {}
                    return Err(e);
                }
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => unreachable!("tasks are only cancelled after the first error"),
            }
        }
        Ok(())
    }

    /// One blob into the cache: skipped when present, else downloaded, resumed on failure.
    async fn fetch_blob(&self, blob: &Blob) -> Result<(), RegistryError> {
        let Blob { digest, size, .. } = blob;
        if self.cache().contains(digest, *size) {
            self.stats.cached.fetch_add(1, Ordering::Relaxed);
            self.progress.event(&Event::Cached {
                digest,
                size: *size,
            });
            return Ok(());
        }
        if self.policy() == PullPolicy::Never {
            return Err(RegistryError::NotCached {
                what: format!("blob {digest} of {}", self.image),
            });
        }
        self.progress.event(&Event::Started {
            digest,
            size: *size,
        });
        let mut partial = self.cache().begin(digest, *size)?;
        let what = format!("blob {digest}");
        let mut backoff = Backoff::new(&self.inner.options);
        loop {
            let start = partial.written();
            let outcome = self.download(blob, &mut partial).await;
            match outcome {
                Ok(()) => break,
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Transient(reason)) => {
                    if partial.written() > start {
                        backoff.progressed();
                    }
                    self.wait(&mut backoff, &what, reason).await?;
                }
            }
        }
        // Synchronous on purpose (the fsync blocks a worker for a few ms): with no await
        // inside, a cancelled pull never leaves a finish running behind its back.
        partial.finish()?;
        self.stats.downloaded.fetch_add(1, Ordering::Relaxed);
        self.progress.event(&Event::Finished { digest });
        Ok(())
    }

    /// One attempt: request the rest of the blob and append it.
    async fn download(
        &self,
        blob: &Blob,
        partial: &mut crate::cache::PartialBlob,
    ) -> Result<(), Failure> {
        let offset = partial.written();
        let (mut stream, whole) = self
            .endpoint
            .blob(&self.image, &blob.digest, blob.size, offset)
            .await?;
        if offset > 0 {
            if whole {
                partial.restart().map_err(RegistryError::from)?;
            } else {
                self.stats.resumed.fetch_add(1, Ordering::Relaxed);
            }
        }
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => {
                    self.stats
                        .bytes
                        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    partial.write(&bytes).map_err(RegistryError::from)?;
                    self.progress.event(&Event::Progress {
                        digest: &blob.digest,
                        done: partial.written(),
                        size: blob.size,
                    });
                }
                // oci-client's own check of a whole (200) response: ours, with the
                // numbers, runs in finish().
                Err(e) if find::<oci_client::errors::DigestError>(&e).is_some() => break,
                Err(e) => return Err(self.endpoint.network_failure(&e)),
            }
        }
        if partial.written() < blob.size {
            return Err(Failure::Transient(format!(
                "connection closed after {} of {} bytes",
                partial.written(),
                blob.size
            )));
        }
        Ok(())
    }

    /// Runs `attempt` until it succeeds, fails fatally, or the retries run out.
    async fn retrying<T, F: Future<Output = Result<T, Failure>>>(
        &self,
        what: &str,
        attempt: impl Fn() -> F,
    ) -> Result<T, RegistryError> {
        let mut backoff = Backoff::new(&self.inner.options);
        loop {
            match attempt().await {
                Ok(value) => return Ok(value),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Transient(reason)) => self.wait(&mut backoff, what, reason).await?,
            }
        }
    }

    /// Sleeps before the next attempt, or gives up with `reason`.
    async fn wait(
        &self,
        backoff: &mut Backoff,
        what: &str,
        reason: String,
    ) -> Result<(), RegistryError> {
        let Some(delay) = backoff.next() else {
            return Err(RegistryError::GaveUp {
                registry: self.endpoint.registry.clone(),
                what: what.to_owned(),
                attempts: backoff.attempts,
                reason,
            });
        };
        self.stats.retries.fetch_add(1, Ordering::Relaxed);
        self.progress.event(&Event::Retrying {
            what,
            attempt: backoff.failures,
            delay,
            reason: &reason,
        });
        tokio::time::sleep(delay).await;
        Ok(())
    }
}

/// Exponential backoff: `base`, `2 * base`, ... up to [`MAX_BACKOFF`], `retries` times in a
/// row; progress resets the count.
struct Backoff {
    base: Duration,
    retries: u32,
    failures: u32,
    attempts: u32,
}

impl Backoff {
    fn new(options: &PullOptions) -> Backoff {
        Backoff {
            base: options.backoff,
            retries: options.retries,
            failures: 0,
            attempts: 0,
        }
    }

    fn progressed(&mut self) {
        self.failures = 0;
    }

    /// The delay before the next attempt, or `None` when out of retries.
    fn next(&mut self) -> Option<Duration> {
        self.attempts += 1;
        if self.failures >= self.retries {
            return None;
        }
        self.failures += 1;
        Some(
            self.base
                .saturating_mul(1 << (self.failures - 1).min(16))
                .min(MAX_BACKOFF),
        )
    }
}

enum Manifest {
    Image(Box<ImageManifest>),
    Index(Box<ImageIndex>),
}

fn descriptor_blob(descriptor: &oci_spec::image::Descriptor) -> Result<Blob, RegistryError> {
    Ok(Blob {
        digest: Digest::parse(descriptor.digest().as_ref())?,
        size: descriptor.size(),
        media_type: descriptor.media_type().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_resets_on_progress() {
        let options = PullOptions {
            retries: 3,
            backoff: Duration::from_secs(4),
            ..PullOptions::default()
        };
        let mut backoff = Backoff::new(&options);
        let delays: Vec<_> = std::iter::from_fn(|| backoff.next()).collect();
        assert_eq!(delays, [4, 8, 10].map(Duration::from_secs));
        assert_eq!(backoff.attempts, 4);
        backoff.progressed();
        assert_eq!(backoff.next(), Some(Duration::from_secs(4)));
    }

    #[test]
    fn host_platform_is_linux() {
        let p = host_platform();
        assert_eq!(p.os, "linux");
        assert!(Platform::parse(&p.to_string()).is_ok(), "{p}");
    }
}
