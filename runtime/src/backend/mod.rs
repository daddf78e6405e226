//! VM backends: one trait, two implementations (libkrun and QEMU), and the choice between
//! them. A backend turns a validated [`VmConfig`] into the command line of a VMM process;
//! everything after that (supervising the process, talking to the agent) is shared.

pub mod krun;
pub mod qemu;

use crate::virt::{self, KvmUnusable};
use smolvm_protocol::ShareFs;
use std::fmt;
use std::path::PathBuf;
use std::process::Command;
use std::str::FromStr;
use thiserror::Error;

/// vCPU limit (the guest kernel is built with `NR_CPUS=32`) and memory floor: the same
/// bounds a Smolfile is validated against.
pub use smolfile::{MAX_CPUS, MIN_MEMORY_MIB};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// krun when hardware virtualization is usable, else qemu.
    Auto,
    Krun,
    Qemu,
}

impl FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(BackendKind::Auto),
            "krun" => Ok(BackendKind::Krun),
            "qemu" => Ok(BackendKind::Qemu),
            _ => Err(format!(
                "unknown backend {s:?}: expected auto, krun or qemu"
            )),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Auto => "auto",
            BackendKind::Krun => "krun",
            BackendKind::Qemu => "qemu",
        })
    }
}

/// A disk attached as virtio-blk. The guest finds it by its serial number (`id`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Disk {
    /// Short identifier, also the disk's serial number in the guest (at most 20 bytes).
    pub id: String,
    pub path: PathBuf,
    pub read_only: bool,
    /// Only this range of `path` is the disk (a section of a packed executable), when the
    /// backend [`Backend::reads_in_place`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<(u64, u64)>,
}

impl Disk {
    /// A whole file as a disk.
    pub fn file(id: &str, path: PathBuf, read_only: bool) -> Disk {
        Disk {
            id: id.into(),
            path,
            read_only,
            range: None,
        }
    }
}

/// A host directory the VMM serves to the guest (9p on qemu, virtio-fs on krun). The agent
/// mounts it by `tag` where a [`smolvm_protocol::Mount`] says; [`crate::volume::shares`]
/// makes both from volume specs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Share {
    /// The device's tag in the guest (short, unique within the VM).
    pub tag: String,
    /// An existing directory, absolute and free of symlinks.
    pub host_path: PathBuf,
    /// The VMM refuses writes, whatever the guest does.
    pub read_only: bool,
}

/// What a VM boots: the guest kernel (ELF `vmlinux`) and the agent's initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boot {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
}

/// Everything needed to start one VM. Build it with [`VmConfig::new`], which validates.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub cpus: u8,
    pub memory_mib: u32,
    pub boot: Boot,
    pub disks: Vec<Disk>,
    pub shares: Vec<Share>,
    /// The unix socket the host listens on; the VMM connects the agent's channel to it.
    pub agent_socket: PathBuf,
    /// Where the guest console (kernel messages, agent errors) is written.
    pub console_log: PathBuf,
    /// Private directory for this VM's files.
    pub run_dir: PathBuf,
    /// Show kernel messages on the console instead of booting `quiet`.
    pub verbose_console: bool,
    /// The guest's virtio-net device, when the VM has a network.
    pub net: Option<NetDevice>,
}

/// A virtio-net device whose frames go to the host's network stack over a unix stream
/// socket (4-byte big-endian length before each frame).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetDevice {
    /// The socket the stack listens on; the VMM connects to it.
    pub socket: PathBuf,
    pub mac: [u8; 6],
}

impl NetDevice {
    /// `02:53:4d:00:00:02`, as QEMU's `mac=` takes it.
    pub fn mac_string(&self) -> String {
        self.mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

#[derive(Debug, Error, PartialEq)]
pub enum ConfigError {
    #[error("--cpus {0} is out of range: a VM has 1 to {MAX_CPUS} vCPUs")]
    Cpus(u32),
    #[error("--mem {0} MiB is too small: a VM needs at least {MIN_MEMORY_MIB} MiB")]
    Memory(u32),
}

impl VmConfig {
    pub fn new(
        cpus: u32,
        memory_mib: u32,
        boot: Boot,
        run_dir: PathBuf,
    ) -> Result<VmConfig, ConfigError> {
        if cpus == 0 || cpus > MAX_CPUS {
            return Err(ConfigError::Cpus(cpus));
        }
        if memory_mib < MIN_MEMORY_MIB {
            return Err(ConfigError::Memory(memory_mib));
        }
        Ok(VmConfig {
            cpus: cpus as u8,
            memory_mib,
            boot,
            disks: Vec::new(),
            shares: Vec::new(),
            agent_socket: run_dir.join("agent.sock"),
            console_log: run_dir.join("console.log"),
            run_dir,
            verbose_console: std::env::var_os("SMOLVM_CONSOLE").is_some_and(|v| v != "0"),
            net: None,
        })
    }

    /// The kernel command line, given the backend's console device and reset method.
    fn kernel_cmdline(
        &self,
        console: &str,
        reboot: &str,
        transport: &str,
        extra: &[&str],
    ) -> String {
        let mut parts = vec![
            format!("console={console}"),
            format!("reboot={reboot}"),
            // A guest panic resets the VM at once; the host learns the outcome from the agent.
            "panic=-1".to_string(),
            // Nothing may wait for entropy at boot.
            "random.trust_cpu=on".to_string(),
            format!("smolvm.transport={transport}"),
        ];
        parts.extend(extra.iter().map(|s| s.to_string()));
        if !self.verbose_console {
            parts.push("quiet".into());
        }
        parts.join(" ")
    }
}

#[derive(Debug, Error)]
pub enum BackendError {
    #[error("writing the VMM configuration {path}: {source}")]
    WriteConfig {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("finding the smolvm executable to run the VMM: {0}")]
    CurrentExe(std::io::Error),
    #[error("the {backend} backend cannot use part of a file as disk {disk}")]
    RangeUnsupported { backend: &'static str, disk: String },
}

/// A way to run VMs.
pub trait Backend: Send + Sync {
    fn kind(&self) -> BackendKind;
    /// Human description, e.g. `qemu (TCG software emulation)`.
    fn describe(&self) -> String;
    /// The VMM process that runs `config`.
    fn command(&self, config: &VmConfig) -> Result<Command, BackendError>;
    /// Whether a disk can be a byte range of a larger file ([`Disk::range`]); otherwise the
    /// range must be copied out to a file of its own first.
    fn reads_in_place(&self) -> bool;
    /// How this backend serves [`Share`]s, which the agent needs to mount them.
    fn share_fs(&self) -> ShareFs;
}

/// Why no backend can run.
#[derive(Debug, Error)]
pub enum NoBackend {
    #[error(
        "the krun backend needs hardware virtualization: {0}. Use --backend qemu to run with software emulation instead"
    )]
    KrunNeedsKvm(KvmUnusable),
    #[error(
        "this smolvm was built without the krun backend (cargo feature \"krun\"); use --backend qemu"
    )]
    KrunNotBuilt,
    #[error("the qemu backend is not available: {0}")]
    QemuMissing(String),
    #[error(
        "no VM backend can run on this host:\n  krun: {kvm}\n  qemu: {qemu}\nInstall QEMU (apt-get install qemu-system-x86) to run VMs with software emulation, or use a host with hardware virtualization"
    )]
    NoneUsable { kvm: String, qemu: String },
}

/// Picks the backend for `kind` on this host.
pub fn select(kind: BackendKind) -> Result<std::sync::Arc<dyn Backend>, NoBackend> {
    let kvm = virt::kvm();
    match kind {
        BackendKind::Krun => match (kvm, krun::BUILT) {
            (_, false) => Err(NoBackend::KrunNotBuilt),
            (Err(why), true) => Err(NoBackend::KrunNeedsKvm(why)),
            (Ok(()), true) => Ok(std::sync::Arc::new(krun::Krun)),
        },
        BackendKind::Qemu => {
            let binary = qemu::locate().map_err(NoBackend::QemuMissing)?;
            Ok(std::sync::Arc::new(qemu::Qemu::new(binary, kvm.is_ok())))
        }
        BackendKind::Auto => {
            if kvm.is_ok() && krun::BUILT {
                return Ok(std::sync::Arc::new(krun::Krun));
            }
            match qemu::locate() {
                Ok(binary) => Ok(std::sync::Arc::new(qemu::Qemu::new(binary, kvm.is_ok()))),
                Err(qemu) => Err(NoBackend::NoneUsable {
                    kvm: match kvm {
                        Err(why) => why.to_string(),
                        Ok(()) => "not built into this smolvm".into(),
                    },
                    qemu,
                }),
            }
        }
    }
}

/// The backends usable on this host, for `--version`.
pub fn available() -> Vec<String> {
    [BackendKind::Krun, BackendKind::Qemu]
        .into_iter()
        .filter_map(|k| select(k).ok().map(|b| b.describe()))
        .collect()
}
