//! `smolvm pack ...`: make packed executables, run and inspect packs, push and pull them
//! through OCI registries, prune their cache.

use crate::image;
use crate::progress::PullProgress;
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use smolfile::{Overrides, Purpose};
use smolvm_pack::distribute;
use smolvm_pack::format::{
    self, Compression, ImageInfo, Manifest, Resources, RunConfig, SectionInput, SectionKind,
    SectionSource, write_pack,
};
use smolvm_pack::sections::SectionCache;
use smolvm_pack::stub;
use smolvm_registry::{BlobCache, Config, PullOptions, PullPolicy, Puller, Reference};
use smolvm_runtime::GuestAssets;
use smolvm_runtime::attach;
use smolvm_stub::{App, HOST_PLATFORM, RunOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Subcommand)]
pub enum PackCommand {
    /// Pack an image (or a Smolfile) into an executable that boots it as a microVM
    Create(Box<CreateArgs>),
    /// Run a command in an ephemeral VM from a .smolmachine file or a pushed pack
    Run(RunArgs),
    /// Push a .smolmachine to an OCI registry (merged into the tag's per-platform index)
    Push(PushArgs),
    /// Pull a pushed pack: the identical .smolmachine, and with -o the executable too
    Pull(PullArgs),
    /// Show what a .smolmachine (or a packed executable) holds
    Inspect {
        /// The .smolmachine file or packed executable
        file: PathBuf,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Remove cached pack sections that no running VM uses
    Prune {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct CreateArgs {
    /// The image to pack (e.g. python:3.12-alpine)
    #[arg(short = 'I', long, value_name = "REF")]
    image: Option<String>,
    /// Pack a persistent machine as it is now: its root filesystem with every change made
    /// in it (not /workspace), its environment and working directory
    #[arg(long, value_name = "NAME", conflicts_with_all = ["image", "smolfile"])]
    from_vm: Option<String>,
    /// Read what to pack from a Smolfile ([artifact] settings apply; flags override it)
    #[arg(short = 's', long, value_name = "FILE")]
    smolfile: Option<PathBuf>,
    /// The executable to write; the pack goes to PATH.smolmachine next to it
    #[arg(short, long, value_name = "PATH")]
    output: PathBuf,
    /// Append the pack to the executable: one file, nothing next to it
    #[arg(long)]
    single_file: bool,
    /// Default vCPUs of the packed machine [default: 4]
    #[arg(long)]
    cpus: Option<u32>,
    /// Default memory of the packed machine, in MiB [default: 8192]
    #[arg(long = "mem", value_name = "MiB")]
    memory: Option<u32>,
    /// Override the image's entrypoint
    #[arg(long, value_name = "PROGRAM")]
    entrypoint: Option<String>,
    /// Set an environment variable in the packed machine
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Default working directory
    #[arg(short, long, value_name = "DIR")]
    workdir: Option<String>,
    /// The stub executable to pack into [default: smolvm-stub next to smolvm]
    #[arg(long, value_name = "PATH")]
    stub: Option<PathBuf>,
    #[command(flatten)]
    fetch: crate::image::FetchArgs,
    /// The default command's arguments (the image's Cmd otherwise)
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

#[derive(Args)]
pub struct PushArgs {
    /// The .smolmachine to push (or a packed executable: its pack is pushed)
    file: PathBuf,
    /// Where to: [REGISTRY/][NAMESPACE/]NAME[:TAG] (TAG defaults to latest)
    reference: String,
    /// Print a JSON summary on stdout
    #[arg(long)]
    json: bool,
    /// No progress output
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Args)]
pub struct PullArgs {
    /// The pack: [REGISTRY/][NAMESPACE/]NAME[:TAG][@sha256:DIGEST]
    reference: String,
    /// Write the executable PATH and its pack PATH.smolmachine [default: ./NAME.smolmachine only]
    #[arg(short, long, value_name = "PATH")]
    output: Option<PathBuf>,
    /// The guest platform to take from the tag's index (default: this host's)
    #[arg(long, value_name = "OS/ARCH", value_parser = smolfile::Platform::parse)]
    platform: Option<smolfile::Platform>,
    /// The stub executable to write with -o [default: smolvm-stub next to smolvm]
    #[arg(long, value_name = "PATH")]
    stub: Option<PathBuf>,
    /// Print a JSON summary on stdout
    #[arg(long)]
    json: bool,
    /// No progress output
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Args)]
pub struct RunArgs {
    /// A .smolmachine file, or a pushed pack's reference (pulled into the cache)
    #[arg(value_name = "FILE|REF")]
    pack: String,
    #[command(flatten)]
    fetch: crate::image::FetchArgs,
    /// Keep stdin open and forward it to the command
    #[arg(short, long)]
    interactive: bool,
    /// Run the command on a terminal (PTY)
    #[arg(short, long)]
    tty: bool,
    /// Set an environment variable
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory for the command
    #[arg(short, long, value_name = "DIR")]
    workdir: Option<String>,
    /// Kill the command after this long; then exit with 124
    #[arg(long, value_name = "DURATION", value_parser = smolfile::parse_duration)]
    timeout: Option<Duration>,
    /// Share a host directory with the guest, live (HOST:GUEST or HOST:GUEST:ro; repeatable)
    #[arg(short = 'v', long = "volume", value_name = "HOST:GUEST[:ro]", value_parser = smolvm_runtime::volume::parse_flag)]
    volumes: Vec<smolfile::Volume>,
    /// Give the VM a network even if the machine was packed without one (its allow lists apply)
    #[arg(long)]
    net: bool,
    /// Forward a host port to a guest port: HOST:GUEST or IP:HOST:GUEST (repeatable)
    #[arg(short = 'p', long = "publish", value_name = "[IP:]HOST:GUEST", value_parser = smolfile::Port::parse)]
    publish: Vec<smolfile::Port>,
    /// The command and its arguments (default: the pack's entrypoint and cmd)
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

pub fn dispatch(cmd: PackCommand) -> anyhow::Result<i32> {
    match cmd {
        PackCommand::Create(args) => create(*args),
        PackCommand::Run(args) => run(args),
        PackCommand::Push(args) => push(args),
        PackCommand::Pull(args) => pull(args),
        PackCommand::Inspect { file, json } => {
            let pack = smolvm_stub::locate(&file).or_else(|_| {
                format::Pack::open(&file).map_err(|source| smolvm_stub::AppError::Format {
                    path: file.clone(),
                    source,
                })
            })?;
            let name = file.file_name().map(|n| {
                n.to_string_lossy()
                    .trim_end_matches(".smolmachine")
                    .to_string()
            });
            let info = App::new(pack, name.unwrap_or_default())?.info()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                print!("{}", smolvm_stub::describe(&info));
            }
            Ok(0)
        }
        PackCommand::Prune { json } => {
            let report = SectionCache::open_default()?.evict(0);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "removed {} cached sections ({} MiB); kept {} in use by running VMs",
                    report.removed,
                    report.bytes_freed >> 20,
                    report.in_use
                );
            }
            Ok(0)
        }
    }
}

fn run(a: RunArgs) -> anyhow::Result<i32> {
    attach::check_tty_flags(a.interactive, a.tty).map_err(anyhow::Error::msg)?;
    let rt = crate::runtime()?;
    let (path, name) = locate_pack(&rt, &a.pack, &a.fetch)?;
    let pack = format::Pack::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let app = App::new(pack, name)?;
    let opts = RunOptions {
        env: attach::env_flags(&a.env, a.tty).map_err(anyhow::Error::msg)?,
        command: a.command,
        workdir: a.workdir,
        timeout_ms: a.timeout.map(|d| d.as_millis() as u64),
        interactive: a.interactive,
        tty: attach::tty_size(a.tty),
        volumes: a.volumes,
        net: smolvm_stub::NetFlags {
            net: a.net,
            publish: a.publish,
        },
        ..Default::default()
    };
    let outcome = rt.block_on(app.run(opts))?;
    rt.shutdown_background();
    attach::report(&outcome, a.timeout);
    Ok(outcome.exit_code())
}

fn create(a: CreateArgs) -> anyhow::Result<i32> {
    let started = Instant::now();
    check_output(&a.output)?;
    let stub = load_stub(a.stub.as_deref())?;
    let assets = GuestAssets::locate()?;
    let smolfile = crate::smolfile_cmd::load(a.smolfile.as_deref())?;
    let env = attach::env_flags(&a.env, false).map_err(anyhow::Error::msg)?;
    let overrides = Overrides {
        image: a.image,
        entrypoint: a.entrypoint.map(|e| vec![e]),
        cmd: a.command,
        env,
        workdir: a.workdir,
        cpus: a.cpus,
        memory: a.memory,
        platform: a.fetch.platform.clone(),
        ..Default::default()
    };
    let first = smolfile::merge(Purpose::Pack, smolfile.as_ref(), &overrides, None);
    if first.image.is_none() && smolfile.is_none() && a.from_vm.is_none() {
        bail!(
            "say what to pack: --image REF, --from-vm NAME, or --smolfile FILE (a Smolfile without an image packs the bare VM)"
        );
    }
    let rt = crate::runtime()?;
    let scratch = tempfile::tempdir_in(
        a.output
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    )?;
    let machine = match &a.from_vm {
        Some(name) => Some(crate::lifecycle::snapshot(
            &rt,
            name,
            scratch.path(),
            a.fetch.quiet,
        )?),
        None => None,
    };
    let image = image::prepare_for(&rt, &first, &a.fetch)?;
    let config = match (&image, &machine) {
        (Some(i), _) => Some(i.record.image_config()),
        (None, Some((_, spec))) => Some(smolfile::ImageConfig {
            env: spec.env.clone(),
            workdir: spec.workdir.clone(),
            user: spec.user.clone(),
            ..Default::default()
        }),
        (None, None) => None,
    };
    let eff = smolfile::merge(
        Purpose::Pack,
        smolfile.as_ref(),
        &overrides,
        config.as_ref(),
    );

    let manifest = Manifest {
        image: image.as_ref().map(|i| ImageInfo {
            reference: i.record.reference.clone(),
            digest: i.record.manifest_digest.clone(),
        }),
        platform: image
            .as_ref()
            .map_or_else(|| HOST_PLATFORM.to_string(), |i| i.record.platform.clone()),
        host_platform: HOST_PLATFORM.into(),
        created: created(image.as_ref().and_then(|i| i.record.created.clone())),
        smolvm_version: env!("CARGO_PKG_VERSION").into(),
        run: RunConfig {
            entrypoint: eff.entrypoint.clone(),
            cmd: eff.cmd.clone(),
            env: eff.env.clone(),
            workdir: eff.workdir.clone(),
            user: eff.user.clone(),
        },
        resources: Resources {
            cpus: eff.cpus,
            memory_mib: eff.memory,
            storage_gib: eff.storage,
            overlay_gib: eff.overlay,
        },
        network: smolvm_runtime::network::settings(&eff),
        health: eff
            .health
            .as_ref()
            .map(smolvm_runtime::machine::health_check),
        ..Default::default()
    };
    let file = |kind, path: &Path, compression| SectionInput {
        kind,
        source: SectionSource::File(path.to_path_buf()),
        compression,
    };
    let mut sections = vec![
        file(SectionKind::Kernel, &assets.kernel, Compression::Zstd),
        file(SectionKind::Initramfs, &assets.initramfs, Compression::Zstd),
        file(
            SectionKind::OverlayTemplate,
            &assets.ext4_template,
            Compression::Zstd,
        ),
        file(
            SectionKind::StorageTemplate,
            &assets.ext4_template,
            Compression::Zstd,
        ),
    ];
    // The root filesystem is squashfs, compressed already: stored as is, it can be read in
    // place from the pack.
    let rootfs = image
        .as_ref()
        .map(|i| &i.rootfs)
        .or(machine.as_ref().map(|(sqfs, _)| sqfs));
    if let Some(rootfs) = rootfs {
        sections.push(file(SectionKind::Rootfs, rootfs, Compression::None));
    }
    let sidecar = sidecar_path(&a.output);
    let pack_path = if a.single_file {
        temp_pack_path(&a.output)
    } else {
        sidecar.clone()
    };
    let written = write_pack(&pack_path, manifest, sections)
        .with_context(|| format!("writing {}", pack_path.display()))?;
    let exe_len = stub::write_executable(
        &stub,
        a.single_file.then_some(pack_path.as_path()),
        &a.output,
    );
    if a.single_file {
        let _ = std::fs::remove_file(&pack_path);
    }
    let exe_len = exe_len?;

    eprintln!(
        "packed {} in {:.2} s",
        a.from_vm
            .as_ref()
            .map(|n| format!("machine {n}"))
            .or(first.image.clone())
            .unwrap_or_else(|| "the bare VM".into()),
        started.elapsed().as_secs_f64()
    );
    for (kind, stored, size) in &written.sections {
        eprintln!(
            "  {:<17} {:>9} KiB stored  ({:>9} KiB unpacked)",
            kind.as_str(),
            stored >> 10,
            size >> 10
        );
    }
    eprintln!("  {:<17} {:>9} KiB", "pack total", written.total >> 10);
    if a.single_file {
        eprintln!(
            "wrote {} ({} KiB, the pack inside)",
            a.output.display(),
            exe_len >> 10
        );
    } else {
        eprintln!(
            "wrote {} ({} KiB) and {}",
            a.output.display(),
            exe_len >> 10,
            sidecar.display()
        );
    }
    Ok(0)
}

/// The stub executables are written with: `--stub PATH`, else `smolvm-stub` next to smolvm.
fn load_stub(path: Option<&Path>) -> anyhow::Result<stub::Stub> {
    let path = match path {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()?.with_file_name("smolvm-stub"),
    };
    if !path.exists() {
        bail!(
            "the stub {} is missing: reinstall with ./scripts/setup, or pass --stub PATH",
            path.display()
        );
    }
    Ok(stub::read_stub(&path)?)
}

/// `-o` names the executable; its pack goes next to it as PATH.smolmachine.
fn check_output(output: &Path) -> anyhow::Result<()> {
    if output.extension().is_some_and(|e| e == "smolmachine") {
        bail!(
            "-o names the executable to write, and the pack goes next to it as PATH.smolmachine: use -o {}",
            output.with_extension("").display()
        );
    }
    Ok(())
}

fn push(a: PushArgs) -> anyhow::Result<i32> {
    let config = Config::load_default()?;
    let reference = config.parse_reference(&a.reference)?;
    let progress = Arc::new(PullProgress::new(a.quiet));
    let rt = crate::runtime()?;
    let pushed = rt.block_on(distribute::push_pack(
        &config, &a.file, &reference, progress,
    ))?;
    if a.json {
        let summary = serde_json::json!({
            "reference": pushed.reference.to_string(),
            "index_digest": pushed.index_digest.as_str(),
            "manifest_digest": pushed.manifest_digest.as_str(),
            "digest": pushed.pack_digest.as_str(),
            "size": pushed.size,
            "platform": pushed.platform,
            "blobs_uploaded": pushed.blobs_uploaded,
            "blobs_present": pushed.blobs_present,
            "bytes_uploaded": pushed.bytes_uploaded,
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        eprintln!(
            "pushed {} ({}, {} KiB) to {}@{}: {} blobs uploaded ({} KiB), {} already there",
            a.file.display(),
            pushed.platform,
            pushed.size >> 10,
            pushed.reference,
            pushed.index_digest,
            pushed.blobs_uploaded,
            pushed.bytes_uploaded >> 10,
            pushed.blobs_present
        );
    }
    Ok(0)
}

fn pull(a: PullArgs) -> anyhow::Result<i32> {
    let config = Config::load_default()?;
    let reference = config.parse_reference(&a.reference)?;
    let (sidecar, stub) = match &a.output {
        Some(output) => {
            check_output(output)?;
            (sidecar_path(output), Some(load_stub(a.stub.as_deref())?))
        }
        None => (
            PathBuf::from(format!("{}.smolmachine", repository_name(&reference))),
            None,
        ),
    };
    let rt = crate::runtime()?;
    let pulled = rt.block_on(pull_pack_into(
        config,
        &reference,
        Some(&sidecar),
        a.platform,
        PullPolicy::Always,
        a.quiet,
    ))?;
    if let (Some(stub), Some(output)) = (&stub, &a.output) {
        stub::write_executable(stub, None, output)?;
    }
    let t = &pulled.transfer;
    if a.json {
        let summary = serde_json::json!({
            "reference": pulled.reference.to_string(),
            "path": pulled.path,
            "executable": a.output,
            "digest": pulled.digest.as_str(),
            "size": pulled.size,
            "platform": pulled.platform,
            "manifest_digest": pulled.manifest_digest.as_str(),
            "index_digest": pulled.index_digest.as_ref().map(|d| d.as_str()),
            "blobs_downloaded": t.blobs_downloaded,
            "blobs_cached": t.blobs_cached,
            "bytes_downloaded": t.bytes_downloaded,
            "resumed": t.resumed,
            "retries": t.retries,
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        let exe = match &a.output {
            Some(o) => format!("{} and ", o.display()),
            None => String::new(),
        };
        eprintln!(
            "pulled {} ({}): wrote {exe}{} ({} KiB, {}); {} blobs downloaded ({} KiB), {} cached",
            pulled.reference,
            pulled.platform,
            pulled.path.display(),
            pulled.size >> 10,
            pulled.digest,
            t.blobs_downloaded,
            t.bytes_downloaded >> 10,
            t.blobs_cached
        );
    }
    Ok(0)
}

/// A pack named on the command line: a file (`.smolmachine` or packed executable), else a
/// reference pulled into the cache. Returns its path and the name its VMs get.
pub fn locate_pack(
    rt: &tokio::runtime::Runtime,
    arg: &str,
    fetch: &crate::image::FetchArgs,
) -> anyhow::Result<(PathBuf, String)> {
    if Path::new(arg).exists() {
        let path = PathBuf::from(arg);
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned());
        return Ok((path, name.unwrap_or_default()));
    }
    let config = Config::load_default()?;
    let reference = config
        .parse_reference(arg)
        .map_err(|e| anyhow::anyhow!("{arg} is no file, and {e}"))?;
    let pulled = rt.block_on(pull_pack_into(
        config,
        &reference,
        None,
        fetch.platform.clone(),
        fetch.pull.into(),
        fetch.quiet,
    ))?;
    Ok((pulled.path, repository_name(&reference)))
}

/// Pulls a pack to `dest` (the cache with `None`) with progress bars.
async fn pull_pack_into(
    config: Config,
    reference: &Reference,
    dest: Option<&Path>,
    platform: Option<smolfile::Platform>,
    policy: PullPolicy,
    quiet: bool,
) -> anyhow::Result<distribute::PulledPack> {
    let mut options = PullOptions {
        policy,
        ..Default::default()
    };
    if let Some(p) = platform {
        options.platform = p;
    }
    let puller = Puller::new(config, BlobCache::open_default()?, options);
    let progress = Arc::new(PullProgress::new(quiet));
    Ok(distribute::pull_pack(&puller, reference, dest, progress).await?)
}

/// The last component of a reference's repository (`acme/py` → `py`): a pulled pack's name.
fn repository_name(reference: &Reference) -> String {
    let repository = reference.repository();
    repository
        .rsplit('/')
        .next()
        .unwrap_or(repository)
        .to_owned()
}

fn sidecar_path(exe: &Path) -> PathBuf {
    let mut p = exe.as_os_str().to_owned();
    p.push(".smolmachine");
    PathBuf::from(p)
}

fn temp_pack_path(exe: &Path) -> PathBuf {
    let mut p = exe.as_os_str().to_owned();
    p.push(format!(".{}.pack-tmp", std::process::id()));
    PathBuf::from(p)
}

/// The pack's creation time, chosen so packing the same inputs gives the same bytes:
/// `SOURCE_DATE_EPOCH` when set, else the image's own creation time, else the epoch.
fn created(image_created: Option<String>) -> String {
    if let Some(secs) = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        return humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + Duration::from_secs(secs),
        )
        .to_string();
    }
    image_created
        .and_then(|c| humantime::parse_rfc3339_weak(&c).ok())
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}
