//! The fixed-size footer at the end of a pack: how a reader finds everything else.

use super::{FOOTER_LEN, FORMAT_MAJOR, FormatError, FormatVersion, MAGIC};

/// The last [`FOOTER_LEN`] bytes of a pack. All integers are little-endian.
///
/// | bytes | field |
/// |---|---|
/// | `[0..32)` | SHA-256 of the manifest bytes |
/// | `[32..40)` | manifest offset, from the payload start |
/// | `[40..48)` | manifest length |
/// | `[48..56)` | payload length, from the payload start through the end of the footer |
/// | `[56..58)` | format major |
/// | `[58..60)` | format minor |
/// | `[60..72)` | reserved, zero |
/// | `[72..80)` | [`MAGIC`] |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    /// SHA-256 of the manifest bytes.
    pub manifest_sha256: [u8; 32],
    /// Offset of the manifest from the payload start.
    pub manifest_offset: u64,
    /// Length of the manifest.
    pub manifest_len: u64,
    /// Length of the payload, footer included: the payload starts at
    /// `file length - payload_len`.
    pub payload_len: u64,
    /// Format version of the pack.
    pub version: FormatVersion,
}

const RESERVED: std::ops::Range<usize> = 60..72;

impl Footer {
    /// Reads the footer at the end of `file`, checking the magic, the major version and
    /// the reserved bytes, in that order (a future major may use the reserved bytes).
    /// Offsets and lengths are not checked against the file here; [`parse`](super::parse)
    /// does that.
    pub fn from_file_end(file: &[u8]) -> Result<Footer, FormatError> {
        let Some(start) = file.len().checked_sub(FOOTER_LEN) else {
            return Err(FormatError::TooShort { len: file.len() });
        };
        let b: &[u8; FOOTER_LEN] = file[start..].try_into().expect("FOOTER_LEN bytes");
        let magic: [u8; 8] = b[72..80].try_into().expect("8 bytes");
        if magic != MAGIC {
            return Err(FormatError::BadMagic { found: magic });
        }
        let version = FormatVersion {
            major: u16::from_le_bytes([b[56], b[57]]),
            minor: u16::from_le_bytes([b[58], b[59]]),
        };
        check_version(version)?;
        if b[RESERVED].iter().any(|&x| x != 0) {
            return Err(FormatError::ReservedNotZero {
                found: b[RESERVED].try_into().expect("12 bytes"),
            });
        }
        Ok(Footer {
            manifest_sha256: b[0..32].try_into().expect("32 bytes"),
            manifest_offset: le_u64(b, 32),
            manifest_len: le_u64(b, 40),
            payload_len: le_u64(b, 48),
            version,
        })
    }

    /// The footer's bytes.
    pub fn to_bytes(&self) -> [u8; FOOTER_LEN] {
        let mut b = [0; FOOTER_LEN];
        b[0..32].copy_from_slice(&self.manifest_sha256);
        b[32..40].copy_from_slice(&self.manifest_offset.to_le_bytes());
        b[40..48].copy_from_slice(&self.manifest_len.to_le_bytes());
        b[48..56].copy_from_slice(&self.payload_len.to_le_bytes());
        b[56..58].copy_from_slice(&self.version.major.to_le_bytes());
        b[58..60].copy_from_slice(&self.version.minor.to_le_bytes());
        b[72..80].copy_from_slice(&MAGIC);
        b
    }
}

/// The payload length field of a file that ends with [`MAGIC`], unchecked: what
/// [`payload_start`](super::payload_start) needs even from a pack of another version.
pub(super) fn raw_payload_len(file: &[u8]) -> Option<u64> {
    let start = file.len().checked_sub(FOOTER_LEN)?;
    file.ends_with(&MAGIC).then(|| le_u64(&file[start..], 48))
}

/// Refuses a major version other than [`FORMAT_MAJOR`]; any minor is accepted.
pub(super) fn check_version(v: FormatVersion) -> Result<(), FormatError> {
    if v.major == FORMAT_MAJOR {
        Ok(())
    } else {
        Err(FormatError::UnsupportedVersion {
            found_major: v.major,
            found_minor: v.minor,
            supported: FORMAT_MAJOR,
        })
    }
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
