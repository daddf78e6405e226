//! Image references normalised the way docker does, on top of the syntax-only
//! [`smolfile::reference::parse`].
//!
//! `alpine` becomes `docker.io/library/alpine:latest` (or `<default_registry>/alpine:latest`
//! when the config names one); a reference with a digest is immutable: the digest is what
//! gets pulled and any tag next to it is only kept for display.

use std::fmt;

use crate::digest::Digest;

/// Docker Hub's name in references and in the config.
pub const DOCKER_HUB: &str = "docker.io";
/// The host Docker Hub's registry API is served from.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// Other spellings of Docker Hub that normalise to [`DOCKER_HUB`].
const DOCKER_HUB_ALIASES: [&str; 2] = ["index.docker.io", DOCKER_HUB_API];
const DEFAULT_TAG: &str = "latest";

/// A fully qualified image reference: registry, repository and a tag and/or digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

/// A reference that cannot be used, with the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid reference {input:?}: {rule}")]
pub struct ReferenceError {
    /// The text as given.
    pub input: String,
    /// The rule, e.g. what a digest must look like.
    pub rule: String,
}

impl Reference {
    /// Parses and normalises `text`. `default_registry` replaces Docker Hub for references
    /// that name no registry (the config's `default_registry`).
    pub fn parse(text: &str, default_registry: Option<&str>) -> Result<Reference, ReferenceError> {
        let error = |rule: String| ReferenceError {
            input: text.to_owned(),
            rule,
        };
        let parsed = smolfile::reference::parse(text).map_err(error)?;
        let registry = match parsed.registry {
            Some(registry) => normalise_host(&registry),
            None => match default_registry {
                Some(default) => normalise_host(&check_host(default).map_err(error)?),
                None => DOCKER_HUB.to_owned(),
            },
        };
        // Docker Hub's official images live under `library/`.
        let repository = if registry == DOCKER_HUB && !parsed.repository.contains('/') {
            format!("library/{}", parsed.repository)
        } else {
            parsed.repository
        };
        let digest = parsed
            .digest
            .map(|d| Digest::parse(&d).map_err(|e| error(e.to_string())))
            .transpose()?;
        let tag = match (parsed.tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_owned()),
            (tag, _) => tag,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The registry as written in references and config tables (`docker.io`, `127.0.0.1:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path (`library/alpine`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, when the reference has one (`latest` is filled in when neither tag nor
    /// digest was given).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, when the reference pins one: then the tag is never resolved.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The same repository on another registry (a mirror).
    pub fn with_registry(&self, registry: &str) -> Reference {
        Reference {
            registry: normalise_host(registry),
            ..self.clone()
        }
    }

    /// The same repository pinned to `digest` (no tag).
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            tag: None,
            digest: Some(digest),
            ..self.clone()
        }
    }
}

/// The host the registry API of `registry` is served from.
pub fn api_host(registry: &str) -> &str {
    if registry == DOCKER_HUB {
        DOCKER_HUB_API
    } else {
        registry
    }
}

/// Checks a `host[:port]` written alone (config keys, `default_registry`, `mirror`),
/// with the same rule as in a reference.
pub(crate) fn check_host(host: &str) -> Result<String, String> {
    let parsed = smolfile::reference::parse(&format!("{host}/x"));
    match parsed {
        Ok(r) if r.registry.as_deref() == Some(host) => Ok(normalise_host(host)),
        _ => Err(format!(
            "expected a registry host like ghcr.io, docker.io or localhost:5000, found {host:?}"
        )),
    }
}

/// Host names are case-insensitive; Docker Hub has several names for one registry.
fn normalise_host(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    if DOCKER_HUB_ALIASES.contains(&host.as_str()) {
        DOCKER_HUB.to_owned()
    } else {
        host
    }
}

impl fmt::Display for Reference {
    /// The canonical form, e.g. `docker.io/library/alpine:latest`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_docker() {
        let d = format!("sha256:{}", "a".repeat(64));
        let table: &[(&str, Option<&str>, String)] = &[
            ("alpine", None, "docker.io/library/alpine:latest".into()),
            ("alpine:3.20", None, "docker.io/library/alpine:3.20".into()),
            (
                "library/alpine",
                None,
                "docker.io/library/alpine:latest".into(),
            ),
            ("org/app:1", None, "docker.io/org/app:1".into()),
            (
                "docker.io/alpine",
                None,
                "docker.io/library/alpine:latest".into(),
            ),
            (
                "index.docker.io/alpine",
                None,
                "docker.io/library/alpine:latest".into(),
            ),
            (
                "registry-1.docker.io/a/b",
                None,
                "docker.io/a/b:latest".into(),
            ),
            ("Ghcr.IO/org/app", None, "ghcr.io/org/app:latest".into()),
            (
                "localhost:5000/app",
                None,
                "localhost:5000/app:latest".into(),
            ),
            ("localhost/app:x", None, "localhost/app:x".into()),
            ("[::1]:5000/app", None, "[::1]:5000/app:latest".into()),
            (
                "alpine",
                Some("127.0.0.1:5000"),
                "127.0.0.1:5000/alpine:latest".into(),
            ),
            ("org/app", Some("ghcr.io"), "ghcr.io/org/app:latest".into()),
            ("quay.io/a/b", Some("ghcr.io"), "quay.io/a/b:latest".into()),
            (
                "alpine",
                Some("docker.io"),
                "docker.io/library/alpine:latest".into(),
            ),
            (
                &format!("alpine@{d}"),
                None,
                format!("docker.io/library/alpine@{d}"),
            ),
            (
                &format!("alpine:3@{d}"),
                None,
                format!("docker.io/library/alpine:3@{d}"),
            ),
        ];
        for (input, default, expected) in table {
            let r = Reference::parse(input, *default).unwrap();
            assert_eq!(&r.to_string(), expected, "{input} with default {default:?}");
            // Canonical output is a fixed point.
            assert_eq!(Reference::parse(expected, Some("elsewhere.io")).unwrap(), r);
        }
    }

    #[test]
    fn digest_wins_over_tag() {
        let d = format!("sha256:{}", "b".repeat(64));
        let r = Reference::parse(&format!("127.0.0.1:5000/app:1@{d}"), None).unwrap();
        assert_eq!(r.tag(), Some("1"));
        assert_eq!(r.digest().map(Digest::as_str), Some(d.as_str()));
        let pinned = Reference::parse(&format!("app@{d}"), None).unwrap();
        assert_eq!(
            pinned.tag(),
            None,
            "no :latest is invented next to a digest"
        );
    }

    #[test]
    fn api_hosts() {
        assert_eq!(api_host("docker.io"), "registry-1.docker.io");
        assert_eq!(api_host("ghcr.io"), "ghcr.io");
        let r = Reference::parse("alpine", None).unwrap();
        assert_eq!(api_host(r.registry()), DOCKER_HUB_API);
        assert_eq!(
            r.with_registry("127.0.0.1:5000").to_string(),
            "127.0.0.1:5000/library/alpine:latest"
        );
    }

    #[test]
    fn bad_references_state_the_rule() {
        let table = [
            (
                "x@sha256:abc",
                None,
                "invalid reference \"x@sha256:abc\": expected a digest of \"sha256:\" and exactly 64 lowercase hex characters, found \"sha256:abc\"",
            ),
            (
                "Alpine",
                None,
                "invalid reference \"Alpine\": expected lowercase repository path components matching [a-z0-9]+([._-][a-z0-9]+)*, found \"Alpine\"",
            ),
            (
                "alpine:",
                None,
                "invalid reference \"alpine:\": expected a tag of 1 to 128 characters from [A-Za-z0-9_.-], not starting with \".\" or \"-\", found \"\"",
            ),
            (
                "",
                None,
                "invalid reference \"\": expected an image reference like alpine:3.20 or ghcr.io/org/app:1.0, found \"\"",
            ),
            (
                "alpine",
                Some("not a host"),
                "invalid reference \"alpine\": expected a registry host like ghcr.io, docker.io or localhost:5000, found \"not a host\"",
            ),
        ];
        for (input, default, message) in table {
            assert_eq!(
                Reference::parse(input, default).unwrap_err().to_string(),
                message
            );
        }
    }

    #[test]
    fn checks_hosts() {
        assert_eq!(check_host("LocalHost:5000"), Ok("localhost:5000".into()));
        assert_eq!(check_host("index.docker.io"), Ok("docker.io".into()));
        assert_eq!(check_host("[::1]:443"), Ok("[::1]:443".into()));
        for bad in ["", "a/b", "host:0", "under_score.io", "myregistry"] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
    }
}
