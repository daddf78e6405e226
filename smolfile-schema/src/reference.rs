//! OCI image references, checked for syntax only (no network, no normalisation).
//!
//! The grammar is Docker's: `[registry[:port]/][namespace/]name[:tag][@sha256:<64 hex>]`.
//! The first path component is the registry when it contains `.` or `:` or is
//! `localhost`; otherwise the whole path is the repository (`alpine`, `library/alpine`).
//! Filling in `docker.io/library/` and `:latest` is left to the code that pulls.

use std::fmt;

use crate::values::parse_decimal;

/// A syntactically valid image reference, split into its parts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageReference {
    /// Registry host with optional port (`ghcr.io`, `localhost:5000`), when one was written.
    pub registry: Option<String>,
    /// Slash-separated lowercase path (`alpine`, `org/app`).
    pub repository: String,
    /// Tag (`3.20`), when one was written.
    pub tag: Option<String>,
    /// Digest (`sha256:` and 64 lowercase hex characters), when one was written.
    pub digest: Option<String>,
}

/// Docker's limit on registry plus repository.
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;
const DIGEST_PREFIX: &str = "sha256:";

/// Parses `reference`; the error says what was expected and quotes the offending part.
pub fn parse(reference: &str) -> Result<ImageReference, String> {
    if reference.is_empty() {
        return Err(format!(
            "expected an image reference like alpine:3.20 or ghcr.io/org/app:1.0, found {reference:?}"
        ));
    }
    let (name, digest) = match reference.split_once('@') {
        Some((name, digest)) => (name, Some(check_digest(digest)?)),
        None => (reference, None),
    };
    // A colon after the last slash starts the tag; one before it belongs to a registry port.
    let (name, tag) = match name.rfind(':') {
        Some(colon) if !name[colon..].contains('/') => {
            (&name[..colon], Some(check_tag(&name[colon + 1..])?))
        }
        _ => (name, None),
    };
    let (registry, repository) = match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            (Some(check_registry(first)?), rest)
        }
        _ => (None, name),
    };
    if let Some(bad) = repository.split('/').find(|c| !is_path_component(c)) {
        return Err(format!(
            "expected lowercase repository path components matching [a-z0-9]+([._-][a-z0-9]+)*, found {bad:?}"
        ));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "expected an image name of at most {MAX_NAME_LEN} characters, found {} characters",
            name.len()
        ));
    }
    Ok(ImageReference {
        registry,
        repository: repository.to_owned(),
        tag,
        digest,
    })
}

impl fmt::Display for ImageReference {
    /// The reference as written: parsing the output gives back an equal value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(registry) = &self.registry {
            write!(f, "{registry}/")?;
        }
        f.write_str(&self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for ImageReference {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        parse(s)
    }
}

fn check_digest(digest: &str) -> Result<String, String> {
    let hex = digest.strip_prefix(DIGEST_PREFIX).unwrap_or("");
    if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(digest.to_owned())
    } else {
        Err(format!(
            "expected a digest of \"sha256:\" and exactly 64 lowercase hex characters, found {digest:?}"
        ))
    }
}

fn check_tag(tag: &str) -> Result<String, String> {
    let mut bytes = tag.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
    let rest_ok = bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if first_ok && rest_ok && tag.len() <= MAX_TAG_LEN {
        Ok(tag.to_owned())
    } else {
        Err(format!(
            "expected a tag of 1 to {MAX_TAG_LEN} characters from [A-Za-z0-9_.-], not starting with \".\" or \"-\", found {tag:?}"
        ))
    }
}

/// `host[:port]`, where host is DNS labels or a bracketed IPv6 address.
fn check_registry(registry: &str) -> Result<String, String> {
    let (host, port) = match registry.rsplit_once(':') {
        // An unbracketed IPv6 address is ambiguous with a port, as in Docker.
        Some((host, port)) if !port.contains(']') => (host, Some(port)),
        _ => (registry, None),
    };
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(ipv6) => ipv6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => !host.is_empty() && host.split('.').all(is_domain_label),
    };
    let port_ok = port.is_none_or(|p| parse_decimal::<u16>(p).is_some_and(|n| n > 0));
    if host_ok && port_ok {
        Ok(registry.to_owned())
    } else {
        Err(format!(
            "expected a registry host like ghcr.io or localhost:5000, found {registry:?}"
        ))
    }
}

fn is_domain_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    !bytes.is_empty()
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-')
}

/// `[a-z0-9]+` runs joined by one separator each: `.`, `_`, `__` or any number of `-`
/// (Docker's exact rule, slightly wider than `[._-]`).
fn is_path_component(component: &str) -> bool {
    let is_alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    component.starts_with(is_alnum)
        && component.ends_with(is_alnum)
        && component.split(is_alnum).all(|separator| {
            matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(s: &str) -> (Option<String>, String, Option<String>, Option<String>) {
        let r = parse(s).unwrap();
        assert_eq!(r.to_string(), s, "display gives back the input");
        (r.registry, r.repository, r.tag, r.digest)
    }

    #[test]
    fn splits_valid_references() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(parts("alpine"), (None, "alpine".into(), None, None));
        assert_eq!(
            parts("python:3.12-alpine"),
            (None, "python".into(), s("3.12-alpine"), None)
        );
        assert_eq!(
            parts("library/alpine:3.20"),
            (None, "library/alpine".into(), s("3.20"), None)
        );
        assert_eq!(
            parts("ghcr.io/org/app:v1"),
            (s("ghcr.io"), "org/app".into(), s("v1"), None)
        );
        assert_eq!(
            parts("localhost:5000/app"),
            (s("localhost:5000"), "app".into(), None, None)
        );
        assert_eq!(
            parts("localhost/app"),
            (s("localhost"), "app".into(), None, None)
        );
        assert_eq!(
            parts("[::1]:5000/app:1"),
            (s("[::1]:5000"), "app".into(), s("1"), None)
        );
        assert_eq!(
            parts(&format!("alpine:3@{digest}")),
            (None, "alpine".into(), s("3"), Some(digest.clone()))
        );
        assert_eq!(
            parts(&format!("a/b@{digest}")),
            (None, "a/b".into(), None, Some(digest))
        );
        assert_eq!(
            parts("my__app/x--y.z_w"),
            (None, "my__app/x--y.z_w".into(), None, None)
        );
        assert_eq!(
            parts("Registry.Example.COM/app").0,
            s("Registry.Example.COM")
        );
    }

    #[test]
    fn explains_invalid_references() {
        let path_msg = |found: &str| {
            format!(
                "expected lowercase repository path components matching [a-z0-9]+([._-][a-z0-9]+)*, found {found:?}"
            )
        };
        assert_eq!(
            parse("").unwrap_err(),
            "expected an image reference like alpine:3.20 or ghcr.io/org/app:1.0, found \"\""
        );
        assert_eq!(parse("Alpine").unwrap_err(), path_msg("Alpine"));
        assert_eq!(parse("org//app").unwrap_err(), path_msg(""));
        assert_eq!(parse("app-").unwrap_err(), path_msg("app-"));
        assert_eq!(parse("a___b").unwrap_err(), path_msg("a___b"));
        assert_eq!(parse("a._b").unwrap_err(), path_msg("a._b"));
        assert_eq!(
            parse("alpine@sha256:abc").unwrap_err(),
            "expected a digest of \"sha256:\" and exactly 64 lowercase hex characters, found \"sha256:abc\""
        );
        assert!(parse(&format!("alpine@sha256:{}", "A".repeat(64))).is_err());
        assert!(parse(&format!("alpine@md5:{}", "a".repeat(64))).is_err());
        let tag_msg = |found: &str| {
            format!(
                "expected a tag of 1 to 128 characters from [A-Za-z0-9_.-], not starting with \".\" or \"-\", found {found:?}"
            )
        };
        assert_eq!(parse("alpine:").unwrap_err(), tag_msg(""));
        assert_eq!(parse("alpine:-x").unwrap_err(), tag_msg("-x"));
        assert_eq!(
            parse(&format!("a:{}", "x".repeat(129))).unwrap_err(),
            tag_msg(&"x".repeat(129))
        );
        assert!(parse(&format!("a:{}", "x".repeat(128))).is_ok());
        assert_eq!(
            parse("reg_istry.io/app").unwrap_err(),
            "expected a registry host like ghcr.io or localhost:5000, found \"reg_istry.io\""
        );
        assert!(parse("localhost:0/app").is_err());
        assert!(parse("localhost:99999/app").is_err());
        assert!(parse("[nope]:5000/app").is_err());
        assert_eq!(
            parse(&format!("{}/{}", "a".repeat(200), "b".repeat(60))).unwrap_err(),
            "expected an image name of at most 255 characters, found 261 characters"
        );
    }
}
