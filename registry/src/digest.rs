//! SHA-256 content digests (`sha256:<64 lowercase hex>`), the cache's only key.

use std::fmt;

use sha2::{Digest as _, Sha256};

const PREFIX: &str = "sha256:";

/// A validated `sha256:<64 lowercase hex>` digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

/// Why a string is not a digest this crate can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unsupported digest {0:?}: expected \"sha256:\" followed by exactly 64 lowercase hex characters"
)]
pub struct DigestError(pub String);

impl Digest {
    /// Parses `text`; other algorithms (sha512) are refused, the cache keys on sha256.
    pub fn parse(text: &str) -> Result<Digest, DigestError> {
        let hex = text.strip_prefix(PREFIX).unwrap_or("");
        if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Digest(text.to_owned()))
        } else {
            Err(DigestError(text.to_owned()))
        }
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_hasher(Sha256::new_with_prefix(bytes))
    }

    /// The digest a SHA-256 hasher has computed (for data hashed as it streams).
    pub fn from_hasher(hasher: Sha256) -> Digest {
        Digest(format!("{PREFIX}{}", hex::encode(hasher.finalize())))
    }

    /// The 64 hex characters, the blob's file name in the cache.
    pub fn hex(&self) -> &str {
        &self.0[PREFIX.len()..]
    }

    /// The whole `sha256:...` text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_hashes() {
        let empty = Digest::of(b"");
        assert_eq!(
            empty.as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(Digest::parse(empty.as_str()), Ok(empty.clone()));
        assert_eq!(empty.hex().len(), 64);
        for bad in [
            "sha256:abc",
            "sha512:00",
            &empty.as_str().to_uppercase(),
            "",
        ] {
            assert_eq!(
                Digest::parse(bad).unwrap_err().to_string(),
                format!(
                    "unsupported digest {bad:?}: expected \"sha256:\" followed by exactly 64 lowercase hex characters"
                )
            );
        }
    }
}
