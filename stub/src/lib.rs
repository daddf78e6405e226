//! Running packed machines: what a packed executable does with its payload, shared with
//! `smolvm pack run`.
//!
//! A pack's kernel and initramfs become files in the section cache on first use. Its root
//! filesystem is read in place from the pack file when the backend can (QEMU), after being
//! verified once; otherwise it is materialized too. Nothing is written next to the pack.

use serde::Serialize;
use smolvm_pack_format::cache::{CachedSection, SectionCache, SectionError};
use smolvm_pack_format::{FormatError, Pack, SectionKind};
use smolvm_protocol::{Exec, Lower, Setup, Upper};
use smolvm_runtime::attach::Outcome;
use smolvm_runtime::backend::{self, Backend, BackendKind, Boot, Disk, NoBackend};
use smolvm_runtime::machine::{self, MachineDir, MachineError, MachineSpec, Status};
use smolvm_runtime::run::{RunRequest, run_ephemeral};
use smolvm_runtime::{NetworkSettings, NetworkSpec, VmError, VmSpec, network, trace};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The platform this build of smolvm runs on.
pub const HOST_PLATFORM: &str = "linux/amd64";

#[derive(Debug, Error)]
pub enum AppError {
    #[error("{}: {source}", path.display())]
    Format { path: PathBuf, source: FormatError },
    #[error("no machine is packed into {exe} and there is no {sidecar} next to it")]
    NoPayload { exe: PathBuf, sidecar: PathBuf },
    #[error(
        "this machine was packed for {packed} hosts; this host is {HOST_PLATFORM}: pack it again on (or for) this platform"
    )]
    WrongHost { packed: String },
    #[error(transparent)]
    Section(#[from] SectionError),
    #[error(transparent)]
    Backend(#[from] NoBackend),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Machine(#[from] MachineError),
    #[error(transparent)]
    Volume(#[from] smolvm_runtime::volume::VolumeError),
    #[error("{0}")]
    Invalid(String),
}

/// A packed machine, ready to run.
pub struct App {
    pack: Pack,
    /// How the user calls it (the executable's name).
    pub name: String,
    cache: SectionCache,
}

/// The pack in `exe` itself, else in `<exe>.smolmachine` next to it.
pub fn locate(exe: &Path) -> Result<Pack, AppError> {
    match Pack::open(exe) {
        Ok(p) => return Ok(p),
        Err(FormatError::BadMagic { .. } | FormatError::TooShort { .. }) => {}
        Err(source) => {
            return Err(AppError::Format {
                path: exe.to_path_buf(),
                source,
            });
        }
    }
    let mut sidecar = exe.as_os_str().to_owned();
    sidecar.push(".smolmachine");
    let sidecar = PathBuf::from(sidecar);
    if !sidecar.exists() {
        return Err(AppError::NoPayload {
            exe: exe.to_path_buf(),
            sidecar,
        });
    }
    Pack::open(&sidecar).map_err(|source| AppError::Format {
        path: sidecar,
        source,
    })
}

/// Options of an ephemeral run.
#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub cpus: Option<u32>,
    pub memory: Option<u32>,
    pub timeout_ms: Option<u64>,
    pub interactive: bool,
    pub tty: Option<smolvm_protocol::TtySize>,
    pub backend: Option<BackendKind>,
    pub force_extract: bool,
    /// Host directories shared with the guest (`-v`).
    pub volumes: Vec<smolfile::Volume>,
    pub net: NetFlags,
}

/// The network flags of `run` and `start`.
#[derive(Debug, Clone, Default)]
pub struct NetFlags {
    /// `--net`: a network even if the pack has none.
    pub net: bool,
    /// `-p`: port forwards on top of the pack's.
    pub publish: Vec<smolfile::Port>,
}

impl App {
    /// A pack to inspect or run (running checks that it was packed for this host).
    pub fn new(pack: Pack, name: String) -> Result<App, AppError> {
        Ok(App {
            pack,
            name,
            cache: SectionCache::open_default()?,
        })
    }

    fn check_host(&self) -> Result<(), AppError> {
        let host = &self.pack.manifest().host_platform;
        if host != HOST_PLATFORM {
            return Err(AppError::WrongHost {
                packed: host.clone(),
            });
        }
        Ok(())
    }

    pub fn pack(&self) -> &Pack {
        &self.pack
    }

    /// Everything a VM of this pack boots from, made ready at once: kernel, initramfs and
    /// root filesystem (extracted or verified) on separate threads, as a first run's cost
    /// is that work.
    fn prepare(&self, backend: &dyn Backend, force: bool) -> Result<Prepared, AppError> {
        let (kernel, initramfs, rootfs) = std::thread::scope(|s| {
            let section = |kind| s.spawn(move || self.cache.materialize(&self.pack, kind, force));
            let (kernel, initramfs) = (
                section(SectionKind::Kernel),
                section(SectionKind::Initramfs),
            );
            let rootfs = self.rootfs(backend, force);
            (
                kernel.join().expect("no panic"),
                initramfs.join().expect("no panic"),
                rootfs,
            )
        });
        let (kernel, initramfs, rootfs) = (kernel?, initramfs?, rootfs?);
        let extracted = kernel.extracted
            || initramfs.extracted
            || matches!(&rootfs, Some((_, Some(c))) if c.extracted);
        trace::mark(if extracted {
            "sections extracted"
        } else {
            "sections cached"
        });
        // The cache only grows when something was extracted: then keep it under its cap,
        // least recently used first (entries in use, these among them, are locked and stay).
        if extracted {
            self.cache
                .evict(smolvm_pack_format::cache::max_bytes_from_env());
        }
        let boot = Boot {
            kernel: kernel.path.clone(),
            initramfs: initramfs.path.clone(),
        };
        let mut held = vec![kernel, initramfs];
        let rootfs = rootfs.map(|(disk, cached)| {
            held.extend(cached);
            disk
        });
        Ok(Prepared {
            boot,
            rootfs,
            _held: held,
        })
    }

    /// The root filesystem disk: read in place when the backend can, else from the cache.
    fn rootfs(
        &self,
        backend: &dyn Backend,
        force: bool,
    ) -> Result<Option<(Disk, Option<CachedSection>)>, AppError> {
        if self.pack.section(SectionKind::Rootfs).is_none() {
            return Ok(None);
        }
        if backend.reads_in_place()
            && let Some(range) = self.pack.file_range(SectionKind::Rootfs)
        {
            self.cache
                .verify_in_place(&self.pack, SectionKind::Rootfs)?;
            let disk = Disk {
                id: machine::ROOTFS_SERIAL.into(),
                path: self.pack.path().to_path_buf(),
                read_only: true,
                range: Some(range),
            };
            return Ok(Some((disk, None)));
        }
        let cached = self
            .cache
            .materialize(&self.pack, SectionKind::Rootfs, force)?;
        Ok(Some((
            Disk::file(machine::ROOTFS_SERIAL, cached.path.clone(), true),
            Some(cached),
        )))
    }

    /// The pack's network settings with `--net` and `-p` on top, checked.
    fn network(&self, flags: &NetFlags) -> Result<NetworkSettings, AppError> {
        let more = NetworkSettings {
            enabled: flags.net,
            ports: flags.publish.iter().map(ToString::to_string).collect(),
            ..Default::default()
        };
        let settings = network::layered(&self.pack.manifest().network, &more);
        NetworkSpec::from_settings(&settings).map_err(AppError::Invalid)?;
        Ok(settings)
    }

    /// The command the pack runs by default: its entrypoint and cmd.
    pub fn default_command(&self) -> Vec<String> {
        let run = &self.pack.manifest().run;
        run.entrypoint.iter().chain(&run.cmd).cloned().collect()
    }

    fn exec_request(&self, command: Vec<String>, env: &[String], workdir: Option<String>) -> Exec {
        let run = &self.pack.manifest().run;
        Exec {
            argv: command,
            // Flags win per key over the pack's environment.
            env: smolfile::merge_env([&run.env[..], env]),
            workdir: workdir.or_else(|| run.workdir.clone()),
            user: run.user.clone(),
            ..Default::default()
        }
    }

    fn command_or_default(&self, command: Vec<String>) -> Result<Vec<String>, AppError> {
        let argv = if command.is_empty() {
            self.default_command()
        } else {
            command
        };
        if argv.is_empty() {
            return Err(AppError::Invalid(
                "this machine has no default command: give one after --".into(),
            ));
        }
        Ok(argv)
    }

    /// An ephemeral VM from the pack, running one command.
    pub async fn run(&self, o: RunOptions) -> Result<Outcome, AppError> {
        self.check_host()?;
        let network =
            NetworkSpec::from_settings(&self.network(&o.net)?).map_err(AppError::Invalid)?;
        let backend = backend::select(o.backend.unwrap_or(BackendKind::Auto))?;
        let (shares, mounts) = smolvm_runtime::volume::shares(&o.volumes, backend.share_fs())?;
        // `prepared` holds the cache entries (shared locks) until the VM is gone.
        let prepared = self.prepare(backend.as_ref(), o.force_extract)?;
        let lower = match prepared.rootfs {
            Some(_) => Lower::Disk {
                serial: machine::ROOTFS_SERIAL.into(),
                fstype: "squashfs".into(),
            },
            None => Lower::Bare,
        };
        let disks: Vec<Disk> = prepared.rootfs.iter().cloned().collect();
        let res = &self.pack.manifest().resources;
        let mut exec = self.exec_request(self.command_or_default(o.command)?, &o.env, o.workdir);
        exec.tty = o.tty;
        exec.stdin = o.interactive;
        exec.timeout_ms = o.timeout_ms;
        let req = RunRequest {
            vm: VmSpec {
                backend,
                cpus: o.cpus.unwrap_or(res.cpus),
                memory_mib: o.memory.unwrap_or(res.memory_mib),
                boot: prepared.boot.clone(),
                disks,
                shares,
                network,
            },
            setup: Setup {
                hostname: self.name.clone(),
                lower,
                upper: Upper::Tmpfs,
                workspace: None,
                mounts,
                network: None,
            },
            init: vec![],
            exec,
            stdin: o.interactive,
        };
        let outcome = run_ephemeral(req).await?;
        drop(prepared);
        Ok(outcome)
    }

    /// Where this executable's daemon machine keeps its disks: one per pack file, under
    /// `$XDG_DATA_HOME/smolvm/packs/<name>-<hash of the pack file's path>`.
    pub fn machine_dir(&self) -> Result<MachineDir, AppError> {
        let base = machine::data_dir().map_err(|e| AppError::Invalid(e.to_string()))?;
        let path = self
            .pack
            .path()
            .canonicalize()
            .unwrap_or_else(|_| self.pack.path().to_path_buf());
        let hash = smolvm_runtime::digest_hex(path.to_string_lossy().as_bytes());
        Ok(MachineDir::new(base.join("packs").join(format!(
            "{}-{}",
            self.name,
            &hash[..12]
        ))))
    }

    /// Fills `dir` with everything a persistent machine of this pack boots from, owned by
    /// the machine (links to the section cache, see [`MachineDir::adopt`]), and creates its
    /// writable disks (sizes from the pack unless given) if they do not exist yet. Returns
    /// the machine's spec with the pack's defaults; the caller adjusts and writes it.
    pub fn provision(
        &self,
        dir: &MachineDir,
        backend: &dyn Backend,
        sizes: DiskSizes,
        force: bool,
    ) -> Result<MachineSpec, AppError> {
        self.check_host()?;
        dir.create()?;
        let sections = [
            (SectionKind::Kernel, "vmlinux"),
            (SectionKind::Initramfs, "initramfs.cpio"),
            (SectionKind::Rootfs, "rootfs.img"),
        ];
        let mut owned = Vec::new();
        for (kind, file) in sections {
            if self.pack.section(kind).is_none() {
                owned.push(None);
                continue;
            }
            let cached = self.cache.materialize(&self.pack, kind, force)?;
            owned.push(Some(dir.adopt(&cached.path, file)?));
        }
        let res = &self.pack.manifest().resources;
        for (kind, disk, gib) in [
            (
                SectionKind::OverlayTemplate,
                dir.overlay_disk(),
                sizes.overlay_gib.unwrap_or(res.overlay_gib),
            ),
            (
                SectionKind::StorageTemplate,
                dir.storage_disk(),
                sizes.storage_gib.unwrap_or(res.storage_gib),
            ),
        ] {
            if !disk.exists() {
                let template = self.cache.materialize(&self.pack, kind, force)?;
                smolvm_runtime::fsutil::disk_from_template(
                    &template.path,
                    &disk,
                    u64::from(gib) << 30,
                )
                .map_err(|e| AppError::Invalid(format!("creating {}: {e}", disk.display())))?;
            }
        }
        let [Some(kernel), Some(initramfs), rootfs] =
            <[Option<PathBuf>; 3]>::try_from(owned).expect("three sections")
        else {
            return Err(AppError::Invalid(
                "the pack has no kernel or no initramfs section".into(),
            ));
        };
        let run = &self.pack.manifest().run;
        Ok(MachineSpec {
            name: self.name.clone(),
            backend: backend.kind().to_string(),
            cpus: res.cpus,
            memory_mib: res.memory_mib,
            kernel,
            initramfs,
            rootfs: rootfs.map(|p| Disk::file(machine::ROOTFS_SERIAL, p, true)),
            hostname: self.name.clone(),
            init: vec![],
            env: run.env.clone(),
            workdir: run.workdir.clone(),
            user: run.user.clone(),
            health: self.pack.manifest().health.clone(),
            restart: Default::default(),
            volumes: vec![],
            network: self.pack.manifest().network.clone(),
        })
    }

    /// Starts the pack's daemon machine (`exe` runs its supervisor: this program).
    pub fn start(
        &self,
        exe: &Path,
        cpus: Option<u32>,
        memory: Option<u32>,
        kind: BackendKind,
        force: bool,
        net: &NetFlags,
    ) -> Result<(), AppError> {
        let network = self.network(net)?;
        let dir = self.machine_dir()?;
        if let Status::Running { .. } = dir.status() {
            return Err(MachineError::AlreadyRunning.into());
        }
        let backend = backend::select(kind)?;
        let mut spec = self.provision(&dir, backend.as_ref(), DiskSizes::default(), force)?;
        spec.cpus = cpus.unwrap_or(spec.cpus);
        spec.memory_mib = memory.unwrap_or(spec.memory_mib);
        spec.network = network;
        dir.write_spec(&spec)?;
        Ok(dir.start(exe)?)
    }

    /// Runs a command in the daemon machine, attached to our stdio.
    pub async fn exec(
        &self,
        command: Vec<String>,
        env: &[String],
        workdir: Option<String>,
        interactive: bool,
        tty: Option<smolvm_protocol::TtySize>,
    ) -> Result<Outcome, AppError> {
        let client = self.machine_dir()?.connect().await?;
        let mut exec = self.exec_request(self.command_or_default(command)?, env, workdir);
        exec.tty = tty;
        exec.stdin = interactive;
        let stream = client.exec(exec).map_err(MachineError::from)?;
        Ok(smolvm_runtime::attach::attach(stream, interactive, tty.is_some()).await)
    }

    pub async fn stop(&self) -> Result<bool, AppError> {
        Ok(self
            .machine_dir()?
            .stop(std::time::Duration::from_secs(30))
            .await?)
    }

    pub fn status(&self) -> Result<Status, AppError> {
        Ok(self.machine_dir()?.status())
    }

    /// What `info` prints.
    pub fn info(&self) -> Result<Info, AppError> {
        let m = self.pack.manifest();
        Ok(Info {
            name: self.name.clone(),
            pack: self.pack.path().to_path_buf(),
            embedded: self.pack.payload_start() > 0,
            manifest: serde_json::to_value(m).expect("a manifest serialises"),
            sections: m
                .sections
                .iter()
                .map(|s| SectionInfo {
                    kind: s.kind.as_str(),
                    stored: s.length,
                    size: s.uncompressed_size,
                    compression: s.compression.as_str(),
                    cached: self.cache.path_of(&s.uncompressed_sha256).exists(),
                })
                .collect(),
            machine: self.status()?,
        })
    }
}

/// `info` for people.
pub fn describe(info: &Info) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let m = &info.manifest;
    let _ = writeln!(
        out,
        "{}: {}",
        info.name,
        m["image"]["reference"].as_str().unwrap_or("bare VM")
    );
    let _ = writeln!(
        out,
        "  pack:      {} ({})",
        info.pack.display(),
        if info.embedded {
            "inside the executable"
        } else {
            "sidecar file"
        }
    );
    let _ = writeln!(
        out,
        "  platform:  {} (packed for {} hosts)",
        m["platform"].as_str().unwrap_or("?"),
        m["host_platform"].as_str().unwrap_or("?")
    );
    let _ = writeln!(
        out,
        "  created:   {} by smolvm {}",
        m["created"].as_str().unwrap_or("?"),
        m["smolvm_version"].as_str().unwrap_or("?")
    );
    let run = &m["run"];
    let argv: Vec<String> = ["entrypoint", "cmd"]
        .iter()
        .flat_map(|k| run[*k].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    let _ = writeln!(
        out,
        "  command:   {}",
        if argv.is_empty() {
            "(none)".into()
        } else {
            argv.join(" ")
        }
    );
    let r = &m["resources"];
    let _ = writeln!(
        out,
        "  resources: {} vCPU, {} MiB",
        r["cpus"], r["memory_mib"]
    );
    let _ = writeln!(out, "  sections:");
    for s in &info.sections {
        let _ = writeln!(
            out,
            "    {:<17} {:>10} stored ({}), {:>10} {}",
            s.kind,
            s.stored,
            s.compression,
            s.size,
            if s.cached { "cached" } else { "" }
        );
    }
    let _ = writeln!(
        out,
        "  machine:   {}",
        match info.machine {
            Status::Running { .. } => "running",
            Status::Stopped => "stopped",
        }
    );
    out
}

/// What a VM of a pack boots from, and the cache entries it holds while it runs.
/// Sizes of a machine's writable disks in GiB; `None` takes the pack's.
#[derive(Debug, Default, Clone, Copy)]
pub struct DiskSizes {
    pub overlay_gib: Option<u32>,
    pub storage_gib: Option<u32>,
}

struct Prepared {
    boot: Boot,
    rootfs: Option<Disk>,
    /// Locks on the cache entries the VM boots from, so pruning keeps them while it runs.
    _held: Vec<CachedSection>,
}

/// What `info --json` reports.
#[derive(Debug, Serialize)]
pub struct Info {
    pub name: String,
    pub pack: PathBuf,
    /// Whether the pack is inside the executable (else a sidecar file).
    pub embedded: bool,
    pub manifest: serde_json::Value,
    pub sections: Vec<SectionInfo>,
    pub machine: Status,
}

#[derive(Debug, Serialize)]
pub struct SectionInfo {
    pub kind: &'static str,
    pub stored: u64,
    pub size: u64,
    pub compression: &'static str,
    /// Whether it is materialized in the section cache.
    pub cached: bool,
}
