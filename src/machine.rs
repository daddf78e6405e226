//! `smolvm machine ...`

use crate::image;
use crate::lifecycle;
use anyhow::bail;
use clap::{Args, Subcommand};
use smolfile::{Overrides, Purpose};
use smolvm_pack::image::ImageStore;
use smolvm_protocol::{Exec, Lower, Setup, Upper};
use smolvm_runtime::run::{RunRequest, run_ephemeral};
use smolvm_runtime::{BackendKind, Disk, GuestAssets, VmSpec, attach};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Subcommand)]
pub enum MachineCommand {
    /// Run a command in a new, ephemeral microVM that is gone when the command ends
    Run(Box<RunArgs>),
    /// List the images in the local cache
    Images {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Remove cached images (and their layers) that nothing is using
    Prune {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Create a persistent machine (it keeps its files across commands and restarts)
    Create(Box<lifecycle::CreateArgs>),
    /// Start a machine
    Start(lifecycle::NameArg),
    /// Stop a machine (its guest syncs and powers off)
    Stop(lifecycle::NameArg),
    /// Delete a machine and everything it owns
    Delete {
        /// The machine
        name: String,
        /// Stop it first if it runs
        #[arg(short, long)]
        force: bool,
    },
    /// Show one machine's state
    Status {
        #[command(flatten)]
        name: lifecycle::NameArg,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// List machines
    #[command(alias = "list")]
    Ls {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Run a command in a running machine
    Exec(Box<lifecycle::ExecArgs>),
    /// Change a machine's vCPUs or memory, or grow its disks
    Resize(lifecycle::ResizeArgs),
    /// Watch a machine's health check and apply its restart policy (foreground)
    Monitor(lifecycle::NameArg),
    /// Copy files between the host and a running machine (NAME:/path on one side)
    Cp(lifecycle::CpArgs),
}

#[derive(Args)]
pub struct RunArgs {
    /// Keep stdin open and forward it to the command
    #[arg(short, long)]
    interactive: bool,
    /// Run the command on a terminal (PTY)
    #[arg(short, long)]
    tty: bool,
    /// Set an environment variable (KEY=VALUE, or KEY to copy it from this environment)
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory for the command (created if missing)
    #[arg(short, long, value_name = "DIR")]
    workdir: Option<String>,
    /// Number of vCPUs [default: 4]
    #[arg(long)]
    cpus: Option<u32>,
    /// Memory in MiB [default: 8192]
    #[arg(long = "mem", value_name = "MiB")]
    memory: Option<u32>,
    /// Share a host directory with the guest, live (HOST:GUEST or HOST:GUEST:ro; repeatable)
    #[arg(short = 'v', long = "volume", value_name = "HOST:GUEST[:ro]", value_parser = smolvm_runtime::volume::parse_flag)]
    volumes: Vec<smolfile::Volume>,
    /// Read the workload from a Smolfile (flags override it)
    #[arg(short = 's', long, value_name = "FILE")]
    smolfile: Option<PathBuf>,
    /// Boot this OCI image instead of the bare VM (e.g. alpine:3.20, registry:5000/app@sha256:...)
    #[arg(short = 'I', long, value_name = "REF")]
    image: Option<String>,
    #[command(flatten)]
    fetch: crate::image::FetchArgs,
    /// Kill the command after this long (e.g. 30s, 5m); smolvm then exits with 124
    #[arg(long, value_name = "DURATION", value_parser = smolfile::parse_duration)]
    timeout: Option<Duration>,
    #[command(flatten)]
    net: NetArgs,
    /// VM backend: krun needs hardware virtualization, qemu also runs without it
    #[arg(long, default_value = "auto", value_parser = ["auto", "krun", "qemu"])]
    backend: String,
    /// The command and its arguments (default: a shell)
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

/// The network flags of `machine run` and `machine create`.
#[derive(Args)]
pub struct NetArgs {
    /// Give the VM a network (outbound TCP/UDP and DNS through the host; off by default)
    #[arg(long)]
    net: bool,
    /// Allow egress only to this host (repeatable; *.example.com for subdomains); implies --net
    #[arg(long = "allow-host", value_name = "NAME", value_parser = smolfile::HostPattern::parse)]
    allow_hosts: Vec<smolfile::HostPattern>,
    /// Allow egress only to this IPv4/IPv6 network (repeatable); implies --net
    #[arg(long = "allow-cidr", value_name = "CIDR", value_parser = smolfile::Cidr::parse)]
    allow_cidrs: Vec<smolfile::Cidr>,
    /// Allow egress only to the host's loopback, as host.smolvm.internal; implies --net
    #[arg(long)]
    outbound_localhost_only: bool,
    /// Forward a host port to a guest port: HOST:GUEST or IP:HOST:GUEST (repeatable; needs a network)
    #[arg(short = 'p', long = "publish", value_name = "[IP:]HOST:GUEST", value_parser = smolfile::Port::parse)]
    publish: Vec<smolfile::Port>,
}

impl NetArgs {
    /// The flags as merge overrides (they add to a Smolfile's lists).
    pub fn apply(self, o: &mut Overrides) {
        o.net = self.net;
        o.allow_hosts = self.allow_hosts;
        o.allow_cidrs = self.allow_cidrs;
        o.localhost_only = self.outbound_localhost_only;
        o.ports = self.publish;
    }
}

pub fn dispatch(cmd: MachineCommand) -> anyhow::Result<i32> {
    match cmd {
        MachineCommand::Run(args) => run(*args),
        MachineCommand::Images { json } => images(json),
        MachineCommand::Prune { json } => prune(json),
        MachineCommand::Create(a) => lifecycle::create(*a),
        MachineCommand::Start(n) => lifecycle::start(&n.name),
        MachineCommand::Stop(n) => lifecycle::stop(&n.name),
        MachineCommand::Delete { name, force } => lifecycle::delete(&name, force),
        MachineCommand::Status { name, json } => lifecycle::status(&name.name, json),
        MachineCommand::Ls { json } => lifecycle::list(json),
        MachineCommand::Exec(a) => lifecycle::exec(*a),
        MachineCommand::Resize(a) => lifecycle::resize(a),
        MachineCommand::Monitor(n) => lifecycle::monitor(&n.name),
        MachineCommand::Cp(a) => lifecycle::cp(a),
    }
}

fn run(args: RunArgs) -> anyhow::Result<i32> {
    attach::check_tty_flags(args.interactive, args.tty).map_err(anyhow::Error::msg)?;
    // Before anything slow (a pull): can a VM run here at all?
    let backend = smolvm_runtime::backend::select(
        args.backend
            .parse::<BackendKind>()
            .map_err(anyhow::Error::msg)?,
    )?;
    let boot = GuestAssets::locate()?.boot();
    let smolfile = crate::smolfile_cmd::load(args.smolfile.as_deref())?;
    let env = attach::env_flags(&args.env, args.tty).map_err(anyhow::Error::msg)?;
    let mut overrides = Overrides {
        image: args.image,
        cmd: args.command,
        env,
        workdir: args.workdir,
        cpus: args.cpus,
        memory: args.memory,
        platform: args.fetch.platform.clone(),
        volumes: args.volumes,
        ..Default::default()
    };
    args.net.apply(&mut overrides);
    let rt = crate::runtime()?;
    // The image (if any) comes from the merge; its config then takes part in a second one.
    let first = smolfile::merge(Purpose::Run, smolfile.as_ref(), &overrides, None);
    // Before anything slow: every volume's host directory must be there.
    let (shares, mounts) = smolvm_runtime::volume::shares(&first.volumes, backend.share_fs())?;
    let image = image::prepare_for(&rt, &first, &args.fetch)?;
    let eff = smolfile::merge(
        Purpose::Run,
        smolfile.as_ref(),
        &overrides,
        image.as_ref().map(|i| i.record.image_config()).as_ref(),
    );
    let network = smolvm_runtime::NetworkSpec::from_effective(&eff).map_err(anyhow::Error::msg)?;
    let mut argv = eff.argv();
    if argv.is_empty() {
        if image.is_some() {
            bail!("the image has no Entrypoint or Cmd: give a command after --");
        }
        argv = vec!["/bin/sh".into()];
    }
    let (lower, disks) = match &image {
        Some(i) => (
            Lower::Disk {
                serial: "rootfs".into(),
                fstype: "squashfs".into(),
            },
            vec![Disk::file("rootfs", i.rootfs.clone(), true)],
        ),
        None => (Lower::Bare, Vec::new()),
    };
    let exec = Exec {
        argv,
        env: eff.env,
        workdir: eff.workdir,
        user: eff.user,
        tty: attach::tty_size(args.tty),
        stdin: args.interactive,
        timeout_ms: args.timeout.map(|d| d.as_millis() as u64),
    };
    let req = RunRequest {
        vm: VmSpec {
            backend,
            cpus: eff.cpus,
            memory_mib: eff.memory,
            boot,
            disks,
            shares,
            network,
        },
        setup: Setup {
            hostname: "smolvm".into(),
            lower,
            upper: Upper::Tmpfs,
            workspace: None,
            mounts,
            // Filled in from the VM's network once it has booted.
            network: None,
        },
        init: eff.init,
        exec,
        stdin: args.interactive,
    };
    let outcome = rt.block_on(run_ephemeral(req))?;
    // A blocked read of our stdin must not keep the process alive.
    rt.shutdown_background();
    drop(image);
    attach::report(&outcome, args.timeout);
    Ok(outcome.exit_code())
}

fn images(json: bool) -> anyhow::Result<i32> {
    let records = ImageStore::open_default()?.list()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&records)?);
        return Ok(0);
    }
    println!(
        "{:<48} {:<13} {:<12} {:>9}  PULLED",
        "REFERENCE", "PLATFORM", "DIGEST", "SIZE"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for r in records {
        println!(
            "{:<48} {:<13} {:<12} {:>9}  {}",
            r.reference,
            r.platform,
            crate::progress::short(&r.manifest_digest),
            human_bytes(r.rootfs_size),
            ago(now.saturating_sub(r.pulled_at))
        );
    }
    Ok(0)
}

fn prune(json: bool) -> anyhow::Result<i32> {
    let store = ImageStore::open_default()?;
    let blobs = smolvm_registry::BlobCache::open_default()?;
    // No persistent machine can hold an image yet, so every image not in use goes.
    let report = store.prune(&blobs, &|_| false)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for r in &report.removed {
            println!(
                "removed {} ({})",
                r.reference,
                crate::progress::short(&r.manifest_digest)
            );
        }
        for r in &report.in_use {
            println!("kept {} (in use by a running VM)", r.reference);
        }
        println!("freed {}", human_bytes(report.bytes_freed));
    }
    Ok(0)
}

pub fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

fn ago(secs: u64) -> String {
    match secs {
        s if s < 60 => "just now".into(),
        s if s < 3600 => format!("{} minutes ago", s / 60),
        s if s < 86400 => format!("{} hours ago", s / 3600),
        s => format!("{} days ago", s / 86400),
    }
}
