//! The typed, validated Smolfile.

use std::time::Duration;

use crate::reference::ImageReference;
use crate::values::{Cidr, HostPattern, Platform, Port, RestartPolicy, Volume};

/// vCPUs when neither a flag nor the Smolfile says.
pub const DEFAULT_CPUS: u32 = 4;
/// Most vCPUs a VM can have: the guest kernel is built with `NR_CPUS=32`.
pub const MAX_CPUS: u32 = 32;
/// Guest memory in MiB when neither a flag nor the Smolfile says.
pub const DEFAULT_MEMORY_MIB: u32 = 8192;
/// Least guest memory in MiB that boots the kernel and agent with room to work.
pub const MIN_MEMORY_MIB: u32 = 128;
/// Most guest memory in MiB (1 TiB).
pub const MAX_MEMORY_MIB: u32 = 1_048_576;
/// Persistent storage disk size in GiB when not given.
pub const DEFAULT_STORAGE_GIB: u32 = 20;
/// Writable overlay size in GiB when not given.
pub const DEFAULT_OVERLAY_GIB: u32 = 2;
/// Smallest storage or overlay disk in GiB.
pub const MIN_DISK_GIB: u32 = 1;

/// A parsed and validated Smolfile. Fields mirror the file; `None` and empty mean
/// "not written", so that [`merge`](crate::merge) can apply flags and image defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Smolfile {
    /// `image`: the OCI image to run; `None` means the built-in bare VM.
    pub image: Option<ImageReference>,
    /// `entrypoint`: replaces the image's entrypoint (and drops the image's cmd).
    pub entrypoint: Option<Vec<String>>,
    /// `cmd`: replaces the image's cmd.
    pub cmd: Option<Vec<String>>,
    /// `env`: `KEY=VALUE` entries, in file order.
    pub env: Vec<String>,
    /// `workdir`: absolute guest directory the command starts in.
    pub workdir: Option<String>,
    /// `cpus`: vCPUs, 1..=[`MAX_CPUS`].
    pub cpus: Option<u32>,
    /// `memory`: guest memory in MiB, [`MIN_MEMORY_MIB`]..=[`MAX_MEMORY_MIB`].
    pub memory: Option<u32>,
    /// `net`: give the guest a network (also implied by `[network]` allow lists).
    pub net: bool,
    /// `storage`: persistent storage disk in GiB.
    pub storage: Option<u32>,
    /// `overlay`: writable overlay over the image in GiB.
    pub overlay: Option<u32>,
    /// `[network]`: egress allow lists.
    pub network: Network,
    /// `[dev]`: settings for `machine run` and `machine create`.
    pub dev: Dev,
    /// `[artifact]`: settings for `pack create`.
    pub artifact: Artifact,
    /// `[health]`: the check `machine monitor` runs; `None` when absent.
    pub health: Option<Health>,
    /// `[restart]`: what to do when the workload exits.
    pub restart: Restart,
    /// `[auth]`: credentials forwarded into the guest.
    pub auth: Auth,
}

/// `[network]`: where the guest may connect. Any rule set here implies `net`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Network {
    /// `allow_hosts`: hostnames (optionally `*.` wildcards) the guest may reach.
    pub allow_hosts: Vec<HostPattern>,
    /// `allow_cidrs`: IPv4/IPv6 networks the guest may reach.
    pub allow_cidrs: Vec<Cidr>,
    /// `outbound_localhost_only`: egress only to the host's loopback.
    pub localhost_only: bool,
}

/// `[dev]`: development-time settings, used by `machine run` and `machine create`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dev {
    /// `volumes`: host directories mounted into the guest.
    pub volumes: Vec<Volume>,
    /// `ports`: host ports forwarded to the guest.
    pub ports: Vec<Port>,
    /// `init`: shell command lines run in order on every VM start.
    pub init: Vec<String>,
    /// `env`: `KEY=VALUE` entries added after the top-level `env`.
    pub env: Vec<String>,
    /// `workdir`: replaces the top-level `workdir`.
    pub workdir: Option<String>,
}

/// `[artifact]`: settings baked into a packed executable by `pack create`; each one
/// wins over its top-level counterpart when packing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Artifact {
    /// `cpus`: default vCPUs of the packed executable.
    pub cpus: Option<u32>,
    /// `memory`: default guest memory in MiB of the packed executable.
    pub memory: Option<u32>,
    /// `entrypoint`: entrypoint of the packed executable.
    pub entrypoint: Option<Vec<String>>,
    /// `cmd`: default arguments of the packed executable.
    pub cmd: Option<Vec<String>>,
    /// `oci_platform`: the image platform to pack (`linux/arm64`); the host's when `None`.
    pub oci_platform: Option<Platform>,
}

/// `[health]`: a command whose success means the workload is healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// `exec`: the command and its arguments (not a shell line), run in the guest.
    pub exec: Vec<String>,
    /// `interval`: time between checks.
    pub interval: Duration,
    /// `timeout`: a check running longer than this failed.
    pub timeout: Duration,
    /// `startup_grace`: failures this soon after start do not count.
    pub startup_grace: Duration,
    /// `retries`: consecutive failures before the workload is unhealthy.
    pub retries: u32,
}

impl Health {
    /// `interval` when not given.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
    /// `timeout` when not given.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
    /// `startup_grace` when not given.
    pub const DEFAULT_STARTUP_GRACE: Duration = Duration::ZERO;
    /// `retries` when not given.
    pub const DEFAULT_RETRIES: u32 = 3;
}

/// `[restart]`: the restart policy of the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restart {
    /// `policy`: when to restart.
    pub policy: RestartPolicy,
    /// `max_retries`: give up after this many restarts in a row; `None` never gives up.
    pub max_retries: Option<u32>,
    /// `max_backoff`: the longest wait between restarts (waits double up to this).
    pub max_backoff: Duration,
}

impl Restart {
    /// `max_backoff` when not given.
    pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(300);
}

/// No `[restart]` table: never restart.
impl Default for Restart {
    fn default() -> Self {
        Restart {
            policy: RestartPolicy::Never,
            max_retries: None,
            max_backoff: Self::DEFAULT_MAX_BACKOFF,
        }
    }
}

/// `[auth]`: credentials the guest may use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Auth {
    /// `ssh_agent`: forward the host's SSH agent socket into the guest.
    pub ssh_agent: bool,
}
