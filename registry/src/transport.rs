//! One registry endpoint: which scheme and trust roots it gets, its credentials, and the
//! translation of `oci-client` failures into errors that say what to do.
//!
//! Loopback registries (`localhost`, `127.0.0.0/8`, `[::1]`) are reached over plain HTTP
//! without configuration, as docker does; everything else uses HTTPS unless its config
//! table says `insecure = true`. `insecure = false`, or a `ca_file` (a PEM trust root added
//! to the system's), makes a loopback registry use HTTPS too.

use std::error::Error as StdError;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use oci_client::client::{
    BlobResponse, Certificate, CertificateEncoding, ClientConfig, ClientProtocol, SizedStream,
};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE, OciDescriptor,
};
use oci_client::secrets::RegistryAuth;

use crate::config::Config;
use crate::digest::Digest;
use crate::pull::RegistryError;
use crate::reference::{self, Reference};

/// Manifest types a pull accepts: OCI and Docker schema 2, single images and indexes.
pub(crate) const MANIFEST_MEDIA_TYPES: [&str; 4] = [
    OCI_IMAGE_MEDIA_TYPE,
    OCI_IMAGE_INDEX_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE,
];

/// How a failed attempt is handled: given up on at once, or retried after a backoff.
pub(crate) enum Failure {
    Fatal(RegistryError),
    Transient(String),
}

impl Failure {
    /// The error for an upload, which is not retried (pushes make one attempt).
    pub(crate) fn into_upload_error(self, registry: &str, what: &str) -> RegistryError {
        match self {
            Failure::Fatal(error) => error,
            Failure::Transient(reason) => RegistryError::UploadFailed {
                registry: registry.to_owned(),
                what: what.to_owned(),
                reason,
            },
        }
    }
}

impl From<RegistryError> for Failure {
    fn from(error: RegistryError) -> Failure {
        Failure::Fatal(error)
    }
}

/// A connection to one registry for one repository.
pub(crate) struct Endpoint {
    /// The registry as configured and shown (`docker.io`, `127.0.0.1:5000`).
    pub(crate) registry: String,
    client: oci_client::Client,
    auth: RegistryAuth,
    repository: String,
    config_path: PathBuf,
    read_gap: Duration,
}

/// Whether `registry` (`host[:port]`) is on this machine.
pub fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => registry.split(':').next().unwrap_or(""),
    };
    host == "localhost"
        || host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
        || host.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_loopback())
}

impl Endpoint {
    /// Prepares requests to `registry` for `repository`; nothing is sent yet.
    pub(crate) async fn new(
        config: &Config,
        registry: &str,
        repository: &str,
        connect_timeout: Duration,
        read_gap: Duration,
    ) -> Result<Endpoint, RegistryError> {
        // reqwest is built without a default provider (aws-lc is slow to build); a provider
        // the host program installed first is kept.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let settings = config.registry(registry);
        let host = reference::api_host(registry).to_owned();
        // An explicit setting wins; a ca_file means TLS is wanted.
        let plain_http = settings
            .insecure
            .unwrap_or(settings.ca_file.is_none() && is_loopback(registry));
        let mut client_config = ClientConfig {
            protocol: if plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            read_timeout: Some(read_gap),
            connect_timeout: Some(connect_timeout),
            use_monolithic_push: true,
            platform_resolver: None,
            ..ClientConfig::default()
        };
        if let Some(ca_file) = &settings.ca_file {
            let data = std::fs::read(ca_file).map_err(|e| RegistryError::CaFile {
                registry: registry.to_owned(),
                path: ca_file.clone(),
                detail: e.to_string(),
            })?;
            client_config.extra_root_certificates.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data,
            });
        }
        // With our settings only certificate parsing can make this fail.
        let client = oci_client::Client::try_from(client_config).map_err(|e| {
            let detail = error_chain(&e);
            match &settings.ca_file {
                Some(path) => RegistryError::CaFile {
                    registry: registry.to_owned(),
                    path: path.clone(),
                    detail,
                },
                None => RegistryError::Server {
                    registry: registry.to_owned(),
                    detail: format!("cannot set up an HTTP client: {detail}"),
                },
            }
        })?;
        let auth = match config.credentials(registry)? {
            Some((username, password)) => RegistryAuth::Basic(username, password),
            None => RegistryAuth::Anonymous,
        };
        // pull_blob* take no auth argument: the client must hold it before the first call.
        client.store_auth_if_needed(&host, &auth).await;
        Ok(Endpoint {
            registry: registry.to_owned(),
            client,
            auth,
            repository: repository.to_owned(),
            config_path: config.path().to_owned(),
            read_gap,
        })
    }

    /// The `oci-client` reference for a tag or digest in this endpoint's repository.
    fn oci_reference(&self, tag: Option<&str>, digest: Option<&Digest>) -> oci_client::Reference {
        let host = reference::api_host(&self.registry).to_owned();
        match (tag, digest) {
            (_, Some(digest)) => oci_client::Reference::with_digest(
                host,
                self.repository.clone(),
                digest.to_string(),
            ),
            (tag, None) => oci_client::Reference::with_tag(
                host,
                self.repository.clone(),
                tag.unwrap_or("latest").to_owned(),
            ),
        }
    }

    /// Resolves `tag` to a manifest digest with a HEAD request (GET when the registry
    /// sends no digest header).
    pub(crate) async fn resolve_tag(
        &self,
        image: &Reference,
        tag: &str,
    ) -> Result<Digest, Failure> {
        let digest = self
            .client
            .fetch_manifest_digest(&self.oci_reference(Some(tag), None), &self.auth)
            .await
            .map_err(|e| self.failure(e, image))?;
        Digest::parse(&digest).map_err(|e| Failure::Fatal(e.into()))
    }

    /// Fetches the manifest `digest`; `oci-client` checks the bytes against it.
    pub(crate) async fn manifest(
        &self,
        image: &Reference,
        digest: &Digest,
    ) -> Result<Bytes, Failure> {
        let (bytes, _) = self
            .client
            .pull_manifest_raw(
                &self.oci_reference(None, Some(digest)),
                &self.auth,
                &MANIFEST_MEDIA_TYPES,
            )
            .await
            .map_err(|e| self.failure(e, image))?;
        Ok(bytes)
    }

    /// Streams blob `digest` from byte `offset`; `true` with the stream when the server sent
    /// the whole blob instead of the range.
    pub(crate) async fn blob(
        &self,
        image: &Reference,
        digest: &Digest,
        size: u64,
        offset: u64,
    ) -> Result<(SizedStream, bool), Failure> {
        let descriptor = OciDescriptor {
            digest: digest.to_string(),
            size: size as i64,
            ..OciDescriptor::default()
        };
        // Always a range request (`bytes=0-` at first): a 206 answer is not hashed a second
        // time inside oci-client, and a 200 tells us the server ignores ranges.
        let response = self
            .client
            .pull_blob_stream_partial(
                &self.oci_reference(None, Some(digest)),
                &descriptor,
                offset,
                None,
            )
            .await
            .map_err(|e| self.failure(e, image))?;
        Ok(match response {
            BlobResponse::Partial(stream) => (stream, false),
            BlobResponse::Full(stream) => (stream, true),
        })
    }

    /// Whether the repository has blob `digest` (a HEAD request).
    pub(crate) async fn has_blob(
        &self,
        image: &Reference,
        digest: &Digest,
    ) -> Result<bool, Failure> {
        self.client
            .blob_exists(&self.oci_reference(None, Some(digest)), digest.as_str())
            .await
            .map_err(|e| self.failure(e, image))
    }

    /// Uploads blob `digest` of `size` bytes from `data` in one request (monolithic: ~4x
    /// faster than chunked on loopback); the body is streamed, never held whole.
    pub(crate) async fn push_blob<S>(
        &self,
        image: &Reference,
        digest: &Digest,
        size: u64,
        data: S,
    ) -> Result<(), Failure>
    where
        S: futures_util::Stream<Item = oci_client::errors::Result<Bytes>> + Send + 'static,
    {
        self.client
            .push_blob_stream(
                &self.oci_reference(None, Some(digest)),
                data,
                digest.as_str(),
                Some(size),
            )
            .await
            .map(drop)
            .map_err(|e| self.failure(e, image))
    }

    /// Uploads manifest bytes under `tag`, or under their digest without one, with
    /// `media_type` as the content type.
    pub(crate) async fn push_manifest(
        &self,
        image: &Reference,
        tag: Option<&str>,
        bytes: Bytes,
        media_type: &str,
    ) -> Result<(), Failure> {
        let content_type = reqwest::header::HeaderValue::from_str(media_type).map_err(|e| {
            Failure::Fatal(self.registry_error(format!("media type {media_type:?}: {e}")))
        })?;
        let digest = Digest::of(&bytes);
        let target = match tag {
            Some(tag) => self.oci_reference(Some(tag), None),
            None => self.oci_reference(None, Some(&digest)),
        };
        self.client
            .push_manifest_raw(&target, bytes, content_type)
            .await
            .map(drop)
            .map_err(|e| self.failure(e, image))
    }

    /// Classifies an `oci-client` error for `image` on this endpoint.
    pub(crate) fn failure(&self, error: OciDistributionError, image: &Reference) -> Failure {
        let not_found = || {
            Failure::Fatal(RegistryError::NotFound {
                reference: image.with_registry(&self.registry).to_string(),
            })
        };
        match error {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => Failure::Fatal(self.auth_error()),
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::BlobUnknown
                            | OciErrorCode::NotFound
                    )
                }) {
                    not_found()
                } else if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
                {
                    Failure::Fatal(self.auth_error())
                } else if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Toomanyrequests))
                {
                    Failure::Transient(format!("{}: too many requests", self.registry))
                } else {
                    let detail = envelope
                        .errors
                        .iter()
                        .map(|e| format!("{:?}: {}", e.code, e.message))
                        .collect::<Vec<_>>()
                        .join("; ");
                    Failure::Fatal(self.registry_error(detail))
                }
            }
            OciDistributionError::ServerError { code, message, .. } => match code {
                404 => not_found(),
                401 | 403 => Failure::Fatal(self.auth_error()),
                429 | 500.. => Failure::Transient(format!(
                    "{} answered HTTP {code}: {}",
                    self.registry,
                    message.trim()
                )),
                _ => {
                    Failure::Fatal(self.registry_error(format!("HTTP {code}: {}", message.trim())))
                }
            },
            // A HEAD (blob_exists) reports a refusal as a plain HTTP status.
            OciDistributionError::RequestError(e)
                if e.status()
                    .is_some_and(|s| s.as_u16() == 401 || s.as_u16() == 403) =>
            {
                Failure::Fatal(self.auth_error())
            }
            OciDistributionError::RequestError(e)
                if e.status().is_some_and(|s| s.as_u16() == 404) =>
            {
                not_found()
            }
            OciDistributionError::RequestError(e) => self.network_failure(&e),
            OciDistributionError::IoError(e) => self.network_failure(&e),
            other => Failure::Fatal(self.registry_error(error_chain(&other))),
        }
    }

    /// Classifies an error from the HTTP layer (connecting, TLS, reading the body).
    pub(crate) fn network_failure(&self, error: &(dyn StdError + 'static)) -> Failure {
        if let Some(tls) = find::<rustls::Error>(error) {
            return Failure::Fatal(RegistryError::Certificate {
                registry: self.registry.clone(),
                detail: tls.to_string(),
                config: self.config_path.clone(),
            });
        }
        match find::<reqwest::Error>(error) {
            Some(e) if e.is_timeout() => Failure::Transient(format!(
                "no data from {} for {:?} (read timeout)",
                self.registry, self.read_gap
            )),
            Some(e) if e.is_connect() => Failure::Transient(format!(
                "cannot connect to {}: {}",
                self.registry,
                error_chain(e)
            )),
            _ => Failure::Transient(format!("{}: {}", self.registry, error_chain(error))),
        }
    }

    fn auth_error(&self) -> RegistryError {
        let (registry, config) = (self.registry.clone(), self.config_path.clone());
        match self.auth {
            RegistryAuth::Anonymous => RegistryError::AuthRequired { registry, config },
            _ => RegistryError::AuthFailed { registry, config },
        }
    }

    fn registry_error(&self, detail: String) -> RegistryError {
        RegistryError::Server {
            registry: self.registry.clone(),
            detail,
        }
    }
}

/// The first error of type `T` in `error`'s source chain, looking inside `io::Error`s too
/// (their `source()` skips the wrapped error itself).
pub(crate) fn find<'a, T: StdError + 'static>(
    mut error: &'a (dyn StdError + 'static),
) -> Option<&'a T> {
    loop {
        if let Some(found) = error.downcast_ref::<T>() {
            return Some(found);
        }
        let inner = error
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn StdError + 'static));
        error = inner.or_else(|| error.source())?;
    }
}

/// `error` and its causes joined with `: `, skipping repeats.
pub(crate) fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
            "[::1]",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "ghcr.io",
            "10.0.0.1:5000",
            "localhost.example.com",
            "[::2]:5000",
            "128.0.0.1",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
