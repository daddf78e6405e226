//! How command-line flags, a Smolfile and the image's own config combine into what
//! actually runs. One function, so every command applies the same rules.

use crate::model::{
    Artifact, DEFAULT_CPUS, DEFAULT_MEMORY_MIB, DEFAULT_OVERLAY_GIB, DEFAULT_STORAGE_GIB, Dev,
    Health, Restart, Smolfile,
};
use crate::values::{Cidr, HostPattern, Platform, Port, Volume};

/// Which command is asking: `[dev]` applies to running and creating, `[artifact]` to packing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `machine run`: an ephemeral VM.
    Run,
    /// `machine create`: a persistent named machine.
    Create,
    /// `pack create`: an executable artifact.
    Pack,
}

/// What the command line says. Empty and `None` mean "no flag given".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--image`.
    pub image: Option<String>,
    /// `--entrypoint`.
    pub entrypoint: Option<Vec<String>>,
    /// Arguments after `--`; empty means none were given.
    pub cmd: Vec<String>,
    /// `-e KEY=VALUE`, in order.
    pub env: Vec<String>,
    /// `-v HOST:GUEST[:ro]`, parsed with [`Volume::parse`].
    pub volumes: Vec<Volume>,
    /// `-p HOST:GUEST`, parsed with [`Port::parse`].
    pub ports: Vec<Port>,
    /// `--init`, in order.
    pub init: Vec<String>,
    /// `--workdir`.
    pub workdir: Option<String>,
    /// `--cpus`.
    pub cpus: Option<u32>,
    /// `--memory` in MiB.
    pub memory: Option<u32>,
    /// `--net`.
    pub net: bool,
    /// `--allow-host`, parsed with [`HostPattern::parse`].
    pub allow_hosts: Vec<HostPattern>,
    /// `--allow-cidr`, parsed with [`Cidr::parse`].
    pub allow_cidrs: Vec<Cidr>,
    /// `--outbound-localhost-only`.
    pub localhost_only: bool,
    /// `--storage` in GiB.
    pub storage: Option<u32>,
    /// `--overlay` in GiB.
    pub overlay: Option<u32>,
    /// `--oci-platform`.
    pub platform: Option<Platform>,
}

/// The parts of an OCI image's config that a Smolfile or flags can override.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`, `KEY=VALUE`.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub workdir: Option<String>,
    /// `User`.
    pub user: Option<String>,
}

/// The merged result: what to boot and run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    /// The image to use; `None` means the built-in bare VM.
    pub image: Option<String>,
    /// The entrypoint.
    pub entrypoint: Vec<String>,
    /// Arguments after the entrypoint.
    pub cmd: Vec<String>,
    /// `KEY=VALUE`, one per key, in the order keys were first seen.
    pub env: Vec<String>,
    /// Starting directory in the guest; the guest's default when `None`.
    pub workdir: Option<String>,
    /// User to run as (from the image); root when `None`.
    pub user: Option<String>,
    /// Bind mounts, at most one per guest path.
    pub volumes: Vec<Volume>,
    /// Port forwards, at most one per host address and port.
    pub ports: Vec<Port>,
    /// Shell command lines to run on every start, in order.
    pub init: Vec<String>,
    /// vCPUs.
    pub cpus: u32,
    /// Guest memory in MiB.
    pub memory: u32,
    /// Whether the guest has a network.
    pub net: bool,
    /// Hostnames the guest may reach; empty with `net` means no host limit.
    pub allow_hosts: Vec<HostPattern>,
    /// Networks the guest may reach; empty with `net` means no address limit.
    pub allow_cidrs: Vec<Cidr>,
    /// Egress only to the host's loopback.
    pub localhost_only: bool,
    /// Persistent storage disk in GiB.
    pub storage: u32,
    /// Writable overlay in GiB.
    pub overlay: u32,
    /// Health check, if any.
    pub health: Option<Health>,
    /// Restart policy.
    pub restart: Restart,
    /// Forward the host's SSH agent.
    pub ssh_agent: bool,
    /// Image platform to pack; only set when packing or given as a flag.
    pub platform: Option<Platform>,
}

impl Effective {
    /// The full command line: entrypoint followed by cmd.
    pub fn argv(&self) -> Vec<String> {
        self.entrypoint.iter().chain(&self.cmd).cloned().collect()
    }
}

/// Combines flags, the Smolfile and the image config. Precedence, highest first:
///
/// - image: `--image`, Smolfile `image`, none (bare VM).
/// - entrypoint: `--entrypoint`, `[artifact].entrypoint` (packing), `entrypoint`, image.
/// - cmd: args after `--`, `[artifact].cmd` (packing), `cmd`, image — but the image's
///   cmd is dropped once the entrypoint is overridden, as Docker does, because it was
///   written for the image's entrypoint.
/// - env: image, then `env`, then `[dev].env` (run/create), then `-e`; later wins per key.
/// - workdir: `--workdir`, `[dev].workdir` (run/create), `workdir`, image.
/// - volumes, ports, init: `[dev]` lists (run/create) then flags; a flag replaces a
///   Smolfile volume on the same guest path or port on the same host address and port.
/// - cpus, memory: flag, `[artifact]` (packing), top level, defaults. storage, overlay:
///   flag, Smolfile, defaults.
/// - net: on if `--net`, `net = true`, or any egress rule (allowed host or CIDR,
///   localhost only) from either side; localhost only holds if either side sets it.
/// - platform: `--oci-platform`, `[artifact].oci_platform` (packing).
pub fn merge(
    purpose: Purpose,
    smolfile: Option<&Smolfile>,
    cli: &Overrides,
    image: Option<&ImageConfig>,
) -> Effective {
    let (no_smolfile, no_image, no_dev, no_artifact) = (
        Smolfile::default(),
        ImageConfig::default(),
        Dev::default(),
        Artifact::default(),
    );
    let file = smolfile.unwrap_or(&no_smolfile);
    let image = image.unwrap_or(&no_image);
    let (dev, artifact) = match purpose {
        Purpose::Run | Purpose::Create => (&file.dev, &no_artifact),
        Purpose::Pack => (&no_dev, &file.artifact),
    };

    let entrypoint = cli
        .entrypoint
        .as_ref()
        .or(artifact.entrypoint.as_ref())
        .or(file.entrypoint.as_ref());
    let cmd = if !cli.cmd.is_empty() {
        cli.cmd.clone()
    } else if let Some(cmd) = artifact.cmd.as_ref().or(file.cmd.as_ref()) {
        cmd.clone()
    } else if entrypoint.is_some() {
        // The image's cmd was written as arguments to the image's entrypoint.
        Vec::new()
    } else {
        image.cmd.clone()
    };
    let allow_hosts = latest_per_key(
        file.network
            .allow_hosts
            .iter()
            .chain(&cli.allow_hosts)
            .cloned(),
        Clone::clone,
    );
    let allow_cidrs = latest_per_key(
        file.network
            .allow_cidrs
            .iter()
            .chain(&cli.allow_cidrs)
            .copied(),
        |c| *c,
    );
    let localhost_only = cli.localhost_only || file.network.localhost_only;

    Effective {
        image: cli
            .image
            .clone()
            .or_else(|| file.image.as_ref().map(ToString::to_string)),
        entrypoint: entrypoint.unwrap_or(&image.entrypoint).clone(),
        cmd,
        env: merge_env([&image.env[..], &file.env, &dev.env, &cli.env]),
        workdir: cli
            .workdir
            .clone()
            .or_else(|| dev.workdir.clone())
            .or_else(|| file.workdir.clone())
            .or_else(|| image.workdir.clone()),
        user: image.user.clone(),
        volumes: latest_per_key(dev.volumes.iter().chain(&cli.volumes).cloned(), |v| {
            v.guest.clone()
        }),
        ports: latest_per_key(dev.ports.iter().chain(&cli.ports).copied(), |p| {
            (p.ip, p.host)
        }),
        init: dev.init.iter().chain(&cli.init).cloned().collect(),
        cpus: cli
            .cpus
            .or(artifact.cpus)
            .or(file.cpus)
            .unwrap_or(DEFAULT_CPUS),
        memory: cli
            .memory
            .or(artifact.memory)
            .or(file.memory)
            .unwrap_or(DEFAULT_MEMORY_MIB),
        net: cli.net
            || file.net
            || localhost_only
            || !allow_hosts.is_empty()
            || !allow_cidrs.is_empty(),
        allow_hosts,
        allow_cidrs,
        localhost_only,
        storage: cli.storage.or(file.storage).unwrap_or(DEFAULT_STORAGE_GIB),
        overlay: cli.overlay.or(file.overlay).unwrap_or(DEFAULT_OVERLAY_GIB),
        health: file.health.clone(),
        restart: file.restart,
        ssh_agent: file.auth.ssh_agent,
        platform: cli
            .platform
            .clone()
            .or_else(|| artifact.oci_platform.clone()),
    }
}

/// `KEY=VALUE` lists merged in order: a later entry wins for its key, in the place where
/// the key first appeared.
pub fn merge_env<'a>(layers: impl IntoIterator<Item = &'a [String]>) -> Vec<String> {
    latest_per_key(layers.into_iter().flatten().cloned(), |entry| {
        entry
            .split_once('=')
            .map_or(entry.clone(), |(key, _)| key.to_string())
    })
}

/// Keeps one item per key: a later item replaces an earlier one in the earlier one's
/// place, so the order is that of first appearance.
fn latest_per_key<T, K: PartialEq>(
    items: impl IntoIterator<Item = T>,
    key: impl Fn(&T) -> K,
) -> Vec<T> {
    let mut kept: Vec<T> = Vec::new();
    for item in items {
        let k = key(&item);
        match kept.iter().position(|earlier| key(earlier) == k) {
            Some(i) => kept[i] = item,
            None => kept.push(item),
        }
    }
    kept
}
