//! The JSON manifest of a pack: what the VM is (image, platform, how to run it) and where
//! each section is.
//!
//! Unknown fields are ignored (a newer minor version may add some); missing optional
//! fields take their defaults. Field order in the JSON is the declaration order here, and
//! nothing is a map, so the same manifest always serializes to the same bytes.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{FORMAT_MAJOR, FORMAT_MINOR};

/// A format version: `major` changes break readers, `minor` changes don't.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FormatVersion {
    /// Readers refuse a major other than their own.
    pub major: u16,
    /// Readers accept any minor of their major.
    pub minor: u16,
}

impl FormatVersion {
    /// The version this crate writes.
    pub const CURRENT: FormatVersion = FormatVersion {
        major: FORMAT_MAJOR,
        minor: FORMAT_MINOR,
    };
}

impl Default for FormatVersion {
    fn default() -> Self {
        Self::CURRENT
    }
}

impl fmt::Display for FormatVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The manifest of a pack.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Manifest {
    /// Version of the format; equal to the footer's.
    pub format_version: FormatVersion,
    /// The OCI image the root filesystem was built from; `None` for a bare VM.
    #[serde(default)]
    pub image: Option<ImageInfo>,
    /// Guest platform, `os/arch` as in OCI (`linux/amd64`).
    pub platform: String,
    /// Platform of the stub executable the pack was made with (`linux/amd64`).
    pub host_platform: String,
    /// When the pack was made: RFC 3339, UTC, whole seconds (`2026-11-22T08:00:00Z`).
    /// Chosen by whoever packs, so that a rebuild can reproduce the same bytes.
    pub created: String,
    /// Version of smolvm that wrote the pack.
    pub smolvm_version: String,
    /// The command the VM runs.
    #[serde(default)]
    pub run: RunConfig,
    /// CPU, memory and disk sizes.
    #[serde(default)]
    pub resources: Resources,
    /// Network access.
    #[serde(default)]
    pub network: Network,
    /// Health check of a long-running VM, if any.
    #[serde(default)]
    pub health: Option<HealthCheck>,
    /// The sections, in [`SectionKind`] order as written. [`write_pack`](super::write_pack)
    /// fills this in.
    #[serde(default)]
    pub sections: Vec<SectionEntry>,
}

/// The OCI image a pack was made from.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ImageInfo {
    /// The reference as given (`python:3.12-alpine`).
    pub reference: String,
    /// The digest of the image manifest that was packed (`sha256:...`).
    pub digest: String,
}

/// How the VM's command is run, as in an OCI image config.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RunConfig {
    /// Prefix of the command line.
    pub entrypoint: Vec<String>,
    /// Default arguments after the entrypoint; replaced by the user's arguments.
    pub cmd: Vec<String>,
    /// Environment, `KEY=VALUE`.
    pub env: Vec<String>,
    /// Working directory; `None` for `/`.
    pub workdir: Option<String>,
    /// User (`name`, `uid` or `uid:gid`); `None` for root.
    pub user: Option<String>,
}

/// Resources of the VM. The defaults are smolfile's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Resources {
    /// vCPUs.
    pub cpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Persistent storage disk in GiB.
    pub storage_gib: u32,
    /// Writable overlay disk in GiB.
    pub overlay_gib: u32,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            cpus: 4,
            memory_mib: 8192,
            storage_gib: 20,
            overlay_gib: 2,
        }
    }
}

/// Network access of the VM; off unless enabled.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Network {
    /// Whether the VM has a network device at all.
    pub enabled: bool,
    /// Host names the guest may reach; empty means no restriction by name.
    pub allow_hosts: Vec<String>,
    /// Address ranges the guest may reach (`10.0.0.0/8`); empty means no restriction.
    pub allow_cidrs: Vec<String>,
    /// Port forwards, `HOST:GUEST` (`8080:80`).
    pub ports: Vec<String>,
    /// Egress only to the host's loopback (since format 1.1). Writers that set it also
    /// write `allow_hosts = ["host.smolvm.internal"]` and no CIDRs, which a 1.0 reader
    /// (ignoring this field) enforces as the same policy.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub localhost_only: bool,
}

/// A command run in the guest periodically to tell whether the VM is healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HealthCheck {
    /// Command and arguments (not a shell line).
    pub exec: Vec<String>,
    /// Time between checks.
    pub interval_ms: u64,
    /// How long one check may take.
    pub timeout_ms: u64,
    /// Time after start during which failures don't count.
    pub startup_grace_ms: u64,
    /// Consecutive failures before the VM is unhealthy.
    pub retries: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            exec: Vec::new(),
            interval_ms: 30_000,
            timeout_ms: 10_000,
            startup_grace_ms: 0,
            retries: 3,
        }
    }
}

/// Where one section is and how to check it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SectionEntry {
    /// What the section holds.
    pub kind: SectionKind,
    /// Offset from the payload start; a multiple of [`ALIGN`](super::ALIGN).
    pub offset: u64,
    /// Stored (possibly compressed) length in bytes.
    pub length: u64,
    /// `sha256:<hex>` of the stored bytes.
    pub sha256: String,
    /// How the stored bytes are compressed.
    pub compression: Compression,
    /// Length after decompression; equal to `length` without compression.
    pub uncompressed_size: u64,
    /// `sha256:<hex>` of the uncompressed bytes; equal to `sha256` without compression.
    pub uncompressed_sha256: String,
}

/// What a section holds. The order of the variants is the order of sections in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SectionKind {
    /// The guest kernel (ELF vmlinux). Required.
    Kernel,
    /// The initramfs with the guest agent (cpio). Required.
    Initramfs,
    /// The read-only root filesystem image (squashfs); bare VM packs have none.
    Rootfs,
    /// An empty ext4 image for the writable overlay disk.
    OverlayTemplate,
    /// An empty ext4 image for the persistent storage disk.
    StorageTemplate,
}

impl SectionKind {
    /// Every kind, in file order.
    pub const ALL: [SectionKind; 5] = [
        SectionKind::Kernel,
        SectionKind::Initramfs,
        SectionKind::Rootfs,
        SectionKind::OverlayTemplate,
        SectionKind::StorageTemplate,
    ];

    /// The kinds every pack must have.
    pub const REQUIRED: [SectionKind; 2] = [SectionKind::Kernel, SectionKind::Initramfs];

    /// The name used in the manifest (`overlay-template`).
    pub fn as_str(self) -> &'static str {
        match self {
            SectionKind::Kernel => "kernel",
            SectionKind::Initramfs => "initramfs",
            SectionKind::Rootfs => "rootfs",
            SectionKind::OverlayTemplate => "overlay-template",
            SectionKind::StorageTemplate => "storage-template",
        }
    }
}

impl fmt::Display for SectionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a section's bytes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// As they are: a VMM can read the section in place.
    None,
    /// One or more zstd frames.
    Zstd,
}

impl Compression {
    /// Every compression, as named in the manifest by [`Compression::as_str`].
    pub const ALL: [Compression; 2] = [Compression::None, Compression::Zstd];

    /// The name used in the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd => "zstd",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names in messages and the reader's kind check are the serde names.
    #[test]
    fn names_match_serde() {
        for kind in SectionKind::ALL {
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{kind}\""));
        }
        for c in Compression::ALL {
            assert_eq!(serde_json::to_string(&c).unwrap(), format!("\"{c}\""));
        }
    }
}
