//! `smolvm machine create|start|stop|delete|status|ls|exec|resize`: persistent machines.
//!
//! The catalogue (`MachineStore`, SQLite) says which machines exist; each machine's
//! directory says how to boot it; its supervisor's lock says whether it runs. Commands that
//! only look (`status`, `ls`) never start or stop anything.

use crate::image;
use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;
use smolfile::{Overrides, Purpose};
use smolvm_runtime::machine::{
    self, MachineDir, MachineError, MachineRecord, MachineSpec, MachineStore, Status, StoreError,
};
use smolvm_runtime::{BackendKind, Disk, GuestAssets, NetworkSpec, attach};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

/// The machine commands act on when `--name` is not given.
pub const DEFAULT_NAME: &str = "default";
/// How long `stop` waits for a clean power-off before killing the VM.
const STOP_LIMIT: Duration = Duration::from_secs(30);

#[derive(Args)]
pub struct NameArg {
    /// The machine [default: default]
    #[arg(short, long, default_value = DEFAULT_NAME)]
    pub name: String,
}

#[derive(Args)]
pub struct CreateArgs {
    /// The new machine's name (ASCII letters, digits, '-', '_'; at most 64)
    #[arg(default_value = DEFAULT_NAME)]
    name: String,
    /// Boot this OCI image instead of the bare VM
    #[arg(short = 'I', long, value_name = "REF", conflicts_with = "from")]
    image: Option<String>,
    /// Start from a pack: a .smolmachine file, a packed executable, or a registry reference
    /// (pulled into the cache; no image pull, no rebuild)
    #[arg(long, value_name = "FILE|REF")]
    from: Option<String>,
    /// Read the machine from a Smolfile (flags override it)
    #[arg(short = 's', long, value_name = "FILE")]
    smolfile: Option<PathBuf>,
    /// vCPUs [default: 4]
    #[arg(long)]
    cpus: Option<u32>,
    /// Memory in MiB [default: 8192]
    #[arg(long = "mem", value_name = "MiB")]
    memory: Option<u32>,
    /// Size of the /workspace disk in GiB [default: 20]
    #[arg(long, value_name = "GiB")]
    storage: Option<u32>,
    /// Size of the writable layer over the root filesystem in GiB [default: 2]
    #[arg(long, value_name = "GiB")]
    overlay: Option<u32>,
    /// Share a host directory: HOST:GUEST[:ro]
    #[arg(short, long = "volume", value_name = "HOST:GUEST[:ro]")]
    volume: Vec<String>,
    /// Default environment of commands (KEY=VALUE, or KEY to copy it from here)
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Default working directory of commands
    #[arg(short, long, value_name = "DIR")]
    workdir: Option<String>,
    /// A shell command run on every start (repeatable, in order; each must succeed)
    #[arg(long, value_name = "CMD")]
    init: Vec<String>,
    #[command(flatten)]
    net: crate::machine::NetArgs,
    #[command(flatten)]
    fetch: crate::image::FetchArgs,
    /// VM backend used each time it starts
    #[arg(long, default_value = "auto", value_parser = ["auto", "krun", "qemu"])]
    backend: String,
}

#[derive(Args)]
pub struct ExecArgs {
    #[command(flatten)]
    name: NameArg,
    /// Keep stdin open and forward it to the command
    #[arg(short, long)]
    interactive: bool,
    /// Run the command on a terminal (PTY)
    #[arg(short, long)]
    tty: bool,
    /// Print output as it arrives (always the case; kept for scripts written for other tools)
    #[arg(long)]
    stream: bool,
    /// Set an environment variable (KEY=VALUE, or KEY to copy it from here)
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory (created if missing)
    #[arg(short, long, value_name = "DIR")]
    workdir: Option<String>,
    /// Run as this user (name, uid, name:group or uid:gid)
    #[arg(short, long)]
    user: Option<String>,
    /// Kill the command after this long (e.g. 30s, 5m); smolvm then exits with 124
    #[arg(long, value_name = "DURATION", value_parser = smolfile::parse_duration)]
    timeout: Option<Duration>,
    /// The command and its arguments (default: a shell)
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

#[derive(Args)]
pub struct ResizeArgs {
    #[command(flatten)]
    name: NameArg,
    /// vCPUs (from the next start)
    #[arg(long)]
    cpus: Option<u32>,
    /// Memory in MiB (from the next start)
    #[arg(long = "mem", value_name = "MiB")]
    memory: Option<u32>,
    /// Grow the /workspace disk to this many GiB (machine stopped)
    #[arg(long, value_name = "GiB")]
    storage: Option<u32>,
    /// Grow the writable layer to this many GiB (machine stopped)
    #[arg(long, value_name = "GiB")]
    overlay: Option<u32>,
}

/// Removes a half-created machine (its directory and its row) unless it was completed.
struct Reservation<'a> {
    store: &'a MachineStore,
    name: String,
    dir: MachineDir,
    done: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(self.dir.path());
            let _ = self.store.remove(&self.name);
        }
    }
}

pub fn create(a: CreateArgs) -> anyhow::Result<i32> {
    machine::validate_name(&a.name)?;
    let store = MachineStore::open_default()?;
    // Fail fast on a taken name, before a pull; `reserve` below settles races.
    if store.get(&a.name).is_ok() {
        return Err(StoreError::Exists(a.name).into());
    }
    let kind: BackendKind = a.backend.parse().map_err(anyhow::Error::msg)?;
    // Bad flags are refused before a pull (the Smolfile's values were validated with it).
    check_resources(
        a.cpus.unwrap_or(smolfile::DEFAULT_CPUS),
        a.memory.unwrap_or(smolfile::DEFAULT_MEMORY_MIB),
    )?;
    let smolfile = crate::smolfile_cmd::load(a.smolfile.as_deref())?;
    let volumes = a
        .volume
        .iter()
        .map(|v| smolvm_runtime::volume::parse_flag(v).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut overrides = Overrides {
        image: a.image,
        env: attach::env_flags(&a.env, false).map_err(anyhow::Error::msg)?,
        workdir: a.workdir,
        cpus: a.cpus,
        memory: a.memory,
        storage: a.storage,
        overlay: a.overlay,
        init: a.init,
        volumes,
        platform: a.fetch.platform.clone(),
        ..Default::default()
    };
    a.net.apply(&mut overrides);
    let rt = crate::runtime()?;
    let base = smolfile::merge(Purpose::Create, smolfile.as_ref(), &overrides, None);
    // Checked now (no -p without a network), kept for every start.
    let network = smolvm_runtime::network::settings(&base);
    NetworkSpec::from_settings(&network).map_err(anyhow::Error::msg)?;
    // Checked now (they must be directories), kept as absolute paths for every start.
    smolvm_runtime::volume::shares(&base.volumes, smolvm_protocol::ShareFs::NineP)?;

    if let Some(from) = &a.from {
        let (path, _) = crate::pack::locate_pack(&rt, from, &a.fetch)?;
        let pack = smolvm_stub::locate(&path)?;
        let app = smolvm_stub::App::new(pack, a.name.clone())?;
        let run = &app.pack().manifest().run;
        let config = smolfile::ImageConfig {
            entrypoint: run.entrypoint.clone(),
            cmd: run.cmd.clone(),
            env: run.env.clone(),
            workdir: run.workdir.clone(),
            user: run.user.clone(),
        };
        let eff = smolfile::merge(
            Purpose::Create,
            smolfile.as_ref(),
            &overrides,
            Some(&config),
        );
        let source = format!("pack {}", app.pack().path().display());
        let digest = app
            .pack()
            .manifest()
            .image
            .as_ref()
            .map(|i| i.digest.as_str());
        let dir = store.reserve(&a.name, &source, digest)?;
        let mut reservation = Reservation {
            store: &store,
            name: a.name.clone(),
            dir,
            done: false,
        };
        let backend = smolvm_runtime::backend::select(kind)?;
        let res = &app.pack().manifest().resources;
        let sizes = smolvm_stub::DiskSizes {
            overlay_gib: a.overlay.or(smolfile.as_ref().and_then(|s| s.overlay)),
            storage_gib: a.storage.or(smolfile.as_ref().and_then(|s| s.storage)),
        };
        let mut spec = app.provision(&reservation.dir, backend.as_ref(), sizes, false)?;
        spec.backend = a.backend.clone();
        spec.cpus = a
            .cpus
            .or(smolfile.as_ref().and_then(|s| s.cpus))
            .unwrap_or(res.cpus);
        spec.memory_mib = a
            .memory
            .or(smolfile.as_ref().and_then(|s| s.memory))
            .unwrap_or(res.memory_mib);
        apply_effective(&mut spec, &eff);
        // The pack's network, with the flags and Smolfile on top.
        spec.network = smolvm_runtime::network::layered(&spec.network, &network);
        NetworkSpec::from_settings(&spec.network).map_err(anyhow::Error::msg)?;
        check_resources(spec.cpus, spec.memory_mib)?;
        reservation.dir.write_spec(&spec)?;
        store.mark_ready(&a.name)?;
        reservation.done = true;
        println!("created machine {} from {from}", a.name);
        return Ok(0);
    }

    let assets = GuestAssets::locate()?;
    let image = image::prepare_for(&rt, &base, &a.fetch)?;
    let eff = smolfile::merge(
        Purpose::Create,
        smolfile.as_ref(),
        &overrides,
        image.as_ref().map(|i| i.record.image_config()).as_ref(),
    );
    let source = match &image {
        Some(i) => format!("image {}", i.record.reference),
        None => "bare".to_string(),
    };
    let dir = store.reserve(
        &a.name,
        &source,
        image.as_ref().map(|i| i.record.manifest_digest.as_str()),
    )?;
    let reservation = Reservation {
        store: &store,
        name: a.name.clone(),
        dir,
        done: false,
    };
    let dir = &reservation.dir;
    dir.create()?;
    let rootfs = match &image {
        Some(i) => Some(Disk::file(
            machine::ROOTFS_SERIAL,
            dir.adopt(&i.rootfs, "rootfs.img")?,
            true,
        )),
        None => None,
    };
    dir.create_disks(&assets.ext4_template, eff.overlay, eff.storage)?;
    let mut spec = MachineSpec {
        name: a.name.clone(),
        backend: a.backend.clone(),
        cpus: eff.cpus,
        memory_mib: eff.memory,
        kernel: assets.kernel.clone(),
        initramfs: assets.initramfs.clone(),
        rootfs,
        hostname: a.name.clone(),
        init: vec![],
        env: vec![],
        workdir: None,
        user: None,
        health: None,
        restart: Default::default(),
        volumes: vec![],
        network,
    };
    apply_effective(&mut spec, &eff);
    dir.write_spec(&spec)?;
    store.mark_ready(&a.name)?;
    let mut reservation = reservation;
    reservation.done = true;
    println!("created machine {} ({source})", a.name);
    Ok(0)
}

/// The bounds a Smolfile's `cpus` and `memory` obey, for flags too.
fn check_resources(cpus: u32, memory_mib: u32) -> anyhow::Result<()> {
    if !(1..=smolfile::MAX_CPUS).contains(&cpus) {
        bail!("--cpus {cpus}: expected 1 to {}", smolfile::MAX_CPUS);
    }
    if !(smolfile::MIN_MEMORY_MIB..=smolfile::MAX_MEMORY_MIB).contains(&memory_mib) {
        bail!(
            "--mem {memory_mib}: expected {} to {} MiB",
            smolfile::MIN_MEMORY_MIB,
            smolfile::MAX_MEMORY_MIB
        );
    }
    Ok(())
}

/// The settings a Smolfile and flags decide for a machine's commands.
fn apply_effective(spec: &mut MachineSpec, eff: &smolfile::Effective) {
    spec.volumes = eff
        .volumes
        .iter()
        .map(|v| {
            let host = v.host.canonicalize().unwrap_or_else(|_| v.host.clone());
            let ro = if v.read_only { ":ro" } else { "" };
            format!("{}:{}{ro}", host.display(), v.guest)
        })
        .collect();
    spec.init = eff.init.clone();
    spec.env = eff.env.clone();
    spec.workdir = eff.workdir.clone();
    spec.user = eff.user.clone();
    spec.health = eff
        .health
        .as_ref()
        .map(machine::health_check)
        .or(spec.health.take());
    spec.restart = (&eff.restart).into();
}

/// A machine that exists and was completely created.
fn open(name: &str) -> anyhow::Result<(MachineStore, MachineRecord, MachineDir)> {
    let store = MachineStore::open_default()?;
    let record = store.get(name)?;
    if !record.ready {
        bail!(
            "machine {name} was not completely created (its `create` was interrupted or is still running); remove it with `smolvm machine delete {name}` and create it again"
        );
    }
    let dir = store.dir(name);
    Ok((store, record, dir))
}

pub fn start(name: &str) -> anyhow::Result<i32> {
    let (store, _, dir) = open(name)?;
    let exe = std::env::current_exe().context("finding this program to run the supervisor")?;
    match dir.start(&exe) {
        Ok(()) => {}
        Err(MachineError::AlreadyRunning) => bail!("machine {name} is already running"),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("starting machine {name}"))),
    }
    store.record_started(name)?;
    println!("machine {name} is running");
    Ok(0)
}

pub fn stop(name: &str) -> anyhow::Result<i32> {
    let (store, _, dir) = open(name)?;
    let rt = crate::runtime()?;
    if rt.block_on(dir.stop(STOP_LIMIT))? {
        store.record_stopped(name)?;
        println!("machine {name} stopped");
    } else {
        println!("machine {name} is not running");
    }
    Ok(0)
}

pub fn delete(name: &str, force: bool) -> anyhow::Result<i32> {
    let store = MachineStore::open_default()?;
    store.get(name)?;
    let dir = store.dir(name);
    if let Status::Running { .. } = dir.status() {
        if !force {
            bail!(
                "machine {name} is running; stop it first (`smolvm machine stop --name {name}`) or delete with -f"
            );
        }
        crate::runtime()?.block_on(dir.stop(STOP_LIMIT))?;
    }
    if let Ok(socket) = dir.socket() {
        let _ = std::fs::remove_file(socket);
    }
    match std::fs::remove_dir_all(dir.path()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", dir.path().display())),
    }
    store.remove(name)?;
    println!("deleted machine {name}");
    Ok(0)
}

/// What `status --json` and `ls --json` print for one machine.
#[derive(Serialize)]
struct MachineView {
    #[serde(flatten)]
    record: MachineRecord,
    #[serde(flatten)]
    status: Status,
    cpus: Option<u32>,
    memory_mib: Option<u32>,
    /// The network settings; absent when the machine has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    network: Option<smolvm_runtime::NetworkSettings>,
    /// Bytes the machine's files occupy on the host (disks are sparse).
    disk_usage: u64,
    dir: PathBuf,
}

fn view(store: &MachineStore, record: MachineRecord) -> MachineView {
    let dir = store.dir(&record.name);
    let spec = dir.read_spec().ok();
    let disk_usage = std::fs::read_dir(dir.path())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.blocks() * 512)
        .sum();
    MachineView {
        status: if record.ready {
            dir.status()
        } else {
            Status::Stopped
        },
        cpus: spec.as_ref().map(|s| s.cpus),
        memory_mib: spec.as_ref().map(|s| s.memory_mib),
        network: spec.and_then(|s| s.network.enabled.then_some(s.network)),
        disk_usage,
        dir: dir.path().to_path_buf(),
        record,
    }
}

fn state(v: &MachineView) -> &'static str {
    match (v.record.ready, v.status) {
        (false, _) => "incomplete",
        (true, Status::Running { .. }) => "running",
        (true, Status::Stopped) => "stopped",
    }
}

pub fn status(name: &str, json: bool) -> anyhow::Result<i32> {
    let store = MachineStore::open_default()?;
    let v = view(&store, store.get(name)?);
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    println!("name:      {}", v.record.name);
    match v.status {
        Status::Running { pid } => println!("state:     running (supervisor pid {pid})"),
        Status::Stopped => println!("state:     {}", state(&v)),
    }
    println!("source:    {}", v.record.source);
    if let (Some(c), Some(m)) = (v.cpus, v.memory_mib) {
        println!("resources: {c} vCPU, {m} MiB");
    }
    if let Some(n) = &v.network {
        println!("network:   {}", describe_network(n));
    }
    println!(
        "disk:      {} used",
        crate::machine::human_bytes(v.disk_usage)
    );
    println!("directory: {}", v.dir.display());
    Ok(0)
}

/// One line: what the guest may reach, and the port forwards.
fn describe_network(n: &smolvm_runtime::NetworkSettings) -> String {
    let mut egress = if n.localhost_only {
        "host loopback only".to_string()
    } else if n.allow_hosts.is_empty() && n.allow_cidrs.is_empty() {
        "outbound allowed".to_string()
    } else {
        format!(
            "outbound only to {}",
            n.allow_hosts
                .iter()
                .chain(&n.allow_cidrs)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    if !n.ports.is_empty() {
        egress.push_str(&format!("; ports {}", n.ports.join(", ")));
    }
    egress
}

pub fn list(json: bool) -> anyhow::Result<i32> {
    let store = MachineStore::open_default()?;
    let views: Vec<MachineView> = store.list()?.into_iter().map(|r| view(&store, r)).collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&views)?);
        return Ok(0);
    }
    println!(
        "{:<24} {:<11} {:>5} {:>9} {:>10}  SOURCE",
        "NAME", "STATE", "CPUS", "MEMORY", "DISK"
    );
    for v in &views {
        println!(
            "{:<24} {:<11} {:>5} {:>9} {:>10}  {}",
            v.record.name,
            state(v),
            v.cpus.map(|c| c.to_string()).unwrap_or_default(),
            v.memory_mib.map(|m| format!("{m} MiB")).unwrap_or_default(),
            crate::machine::human_bytes(v.disk_usage),
            v.record.source
        );
    }
    Ok(0)
}

pub fn exec(a: ExecArgs) -> anyhow::Result<i32> {
    attach::check_tty_flags(a.interactive, a.tty).map_err(anyhow::Error::msg)?;
    let name = &a.name.name;
    let (_, _, dir) = open(name)?;
    let spec = dir.read_spec()?;
    let flags = attach::env_flags(&a.env, a.tty).map_err(anyhow::Error::msg)?;
    let env = smolfile::merge_env([&spec.env[..], &flags]);
    let argv = if a.command.is_empty() {
        vec!["/bin/sh".to_string()]
    } else {
        a.command
    };
    let exec = smolvm_protocol::Exec {
        argv,
        env,
        workdir: a.workdir.or(spec.workdir),
        user: a.user.or(spec.user),
        tty: attach::tty_size(a.tty),
        stdin: a.interactive,
        timeout_ms: a.timeout.map(|d| d.as_millis() as u64),
    };
    let rt = crate::runtime()?;
    let outcome = rt.block_on(async {
        let client = match dir.connect().await {
            Ok(c) => c,
            Err(MachineError::NotRunning) => bail!(
                "machine {name} is not running; start it with `smolvm machine start --name {name}`"
            ),
            Err(e) => return Err(e.into()),
        };
        let stream = client.exec(exec)?;
        Ok(attach::attach(stream, a.interactive, a.tty).await)
    })?;
    rt.shutdown_background();
    attach::report(&outcome, a.timeout);
    Ok(outcome.exit_code())
}

pub fn resize(a: ResizeArgs) -> anyhow::Result<i32> {
    let name = &a.name.name;
    let (_, _, dir) = open(name)?;
    if a.cpus.is_none() && a.memory.is_none() && a.storage.is_none() && a.overlay.is_none() {
        bail!("nothing to resize: give --cpus, --mem, --storage or --overlay");
    }
    let running = matches!(dir.status(), Status::Running { .. });
    let mut spec = dir.read_spec()?;
    spec.cpus = a.cpus.unwrap_or(spec.cpus);
    spec.memory_mib = a.memory.unwrap_or(spec.memory_mib);
    check_resources(spec.cpus, spec.memory_mib)?;
    let disks = [
        ("--storage", dir.storage_disk(), a.storage),
        ("--overlay", dir.overlay_disk(), a.overlay),
    ];
    if running && disks.iter().any(|(_, _, g)| g.is_some()) {
        bail!("machine {name} is running; stop it before growing its disks");
    }
    // Check every disk before changing any.
    for (flag, disk, gib) in &disks {
        if let Some(gib) = gib {
            let current = std::fs::metadata(disk)
                .with_context(|| format!("reading {}", disk.display()))?
                .len();
            if (u64::from(*gib) << 30) < current {
                bail!(
                    "{flag} {gib} would shrink the disk (now {} GiB); disks only grow",
                    current.div_ceil(1 << 30)
                );
            }
        }
    }
    for (_, disk, gib) in &disks {
        if let Some(gib) = gib {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(disk)
                .with_context(|| format!("opening {}", disk.display()))?;
            f.set_len(u64::from(*gib) << 30)?;
            f.sync_all()?;
        }
    }
    dir.write_spec(&spec)?;
    println!(
        "machine {name}: {} vCPU, {} MiB{}",
        spec.cpus,
        spec.memory_mib,
        if running && (a.cpus.is_some() || a.memory.is_some()) {
            " (from its next start)"
        } else {
            ""
        }
    );
    Ok(0)
}

pub fn monitor(name: &str) -> anyhow::Result<i32> {
    use smolvm_runtime::machine::monitor::{MonitorEnd, Transition, monitor};
    let (store, _, _) = open(name)?;
    let exe = std::env::current_exe().context("finding this program to run the supervisor")?;
    let rt = crate::runtime()?;
    let mut log = |t: Transition| {
        let what = match t {
            Transition::Started => "started".to_string(),
            Transition::Healthy => "healthy".to_string(),
            Transition::CheckFailed(n, why) => format!("health check failed ({n} in a row): {why}"),
            Transition::Unhealthy(why) => format!("unhealthy: {why}"),
            Transition::Died => "the VM stopped unexpectedly".to_string(),
            Transition::Restarting(wait) => format!("restarting in {} s", wait.as_secs()),
            Transition::StoppedByUser => "stopped (by `machine stop`); leaving it stopped".into(),
            Transition::GaveUp(n) => format!("giving up after {n} restarts in a row"),
        };
        println!(
            "{} machine {name}: {what}",
            humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        );
    };
    let end = rt.block_on(async {
        tokio::select! {
            end = monitor(&store, name, &exe, &mut log) => end.map(Some),
            _ = tokio::signal::ctrl_c() => Ok(None),
        }
    })?;
    Ok(match end {
        None | Some(MonitorEnd::PolicyStop) => 0,
        Some(MonitorEnd::GaveUp) => 1,
    })
}

#[derive(Args)]
pub struct CpArgs {
    /// What to copy: a host path, or NAME:/path in a machine
    src: String,
    /// Where to: a host path, or NAME:/path in a machine
    dst: String,
    /// Copy directories (and everything in them)
    #[arg(short, long)]
    recursive: bool,
    /// No progress bar
    #[arg(short, long)]
    quiet: bool,
}

/// `NAME:/path` names a path in machine NAME; anything else is a host path.
fn machine_path(arg: &str) -> Option<(&str, &str)> {
    let (name, path) = arg.split_once(':')?;
    (machine::validate_name(name).is_ok() && path.starts_with('/')).then_some((name, path))
}

pub fn cp(a: CpArgs) -> anyhow::Result<i32> {
    use smolvm_runtime::copy;
    let (name, upload) = match (machine_path(&a.src), machine_path(&a.dst)) {
        (None, Some((name, _))) => (name, true),
        (Some((name, _)), None) => (name, false),
        (Some(_), Some(_)) => bail!("copy between two machines through the host, in two steps"),
        (None, None) => bail!(
            "one side must be a machine path, NAME:/absolute/path (e.g. smolvm machine cp ./f default:/workspace/f)"
        ),
    };
    let (_, _, dir) = open(name)?;
    let rt = crate::runtime()?;
    let report = rt.block_on(async {
        let client = match dir.connect().await {
            Ok(c) => c,
            Err(MachineError::NotRunning) => bail!(
                "machine {name} is not running; start it with `smolvm machine start --name {name}`"
            ),
            Err(e) => return Err(e.into()),
        };
        let mut bar = None;
        let progress = |p: copy::Progress| {
            let b = bar
                .get_or_insert_with(|| crate::progress::transfer_bar("copying", p.total, a.quiet));
            b.set_position(p.bytes);
        };
        let report = if upload {
            let (_, guest) = machine_path(&a.dst).expect("checked above");
            copy::upload(
                &client,
                std::path::Path::new(&a.src),
                guest,
                a.recursive,
                progress,
            )
            .await
        } else {
            let (_, guest) = machine_path(&a.src).expect("checked above");
            copy::download(
                &client,
                guest,
                std::path::Path::new(&a.dst),
                a.recursive,
                progress,
            )
            .await
        };
        Ok(report?)
    })?;
    if !a.quiet {
        eprintln!(
            "copied {} in {:.1} s",
            crate::machine::human_bytes(report.bytes),
            report.elapsed.as_secs_f64()
        );
    }
    Ok(0)
}

/// Machine `name`'s root filesystem as it is now, as a squashfs image in `scratch`, and its
/// spec. A stopped machine is started for this and stopped again.
pub fn snapshot(
    rt: &tokio::runtime::Runtime,
    name: &str,
    scratch: &std::path::Path,
    quiet: bool,
) -> anyhow::Result<(PathBuf, MachineSpec)> {
    let (_, _, dir) = open(name)?;
    let spec = dir.read_spec()?;
    let was_running = matches!(dir.status(), Status::Running { .. });
    if !was_running {
        let exe = std::env::current_exe().context("finding this program to run the supervisor")?;
        dir.start(&exe)
            .with_context(|| format!("starting machine {name} to snapshot it"))?;
    }
    let tar = scratch.join("root.tar");
    let copied = rt.block_on(async {
        let client = dir.connect().await?;
        let bar = crate::progress::transfer_bar(&format!("reading {name}"), None, quiet);
        let report =
            smolvm_runtime::copy::snapshot_root(&client, &tar, |p| bar.set_position(p.bytes)).await;
        bar.finish_and_clear();
        anyhow::Ok(report?)
    });
    if !was_running {
        rt.block_on(dir.stop(STOP_LIMIT))?;
    }
    copied.with_context(|| format!("reading the root filesystem of machine {name}"))?;
    let sqfs = scratch.join("rootfs.sqfs");
    let layer = smolvm_pack::rootfs::Layer::new(&tar, "application/vnd.oci.image.layer.v1.tar");
    smolvm_pack::rootfs::build_rootfs(&[layer], &sqfs, &Default::default())
        .with_context(|| format!("building a root filesystem image from machine {name}"))?;
    std::fs::remove_file(&tar)?;
    Ok((sqfs, spec))
}
