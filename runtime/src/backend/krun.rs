//! The libkrun backend: libkrun linked statically into this binary, KVM only.
//!
//! `krun_start_enter` never returns on success: it runs the VM and then `_exit`s the whole
//! process. So each VM runs in a dedicated child process, this same executable started as
//! `<exe> __vmm-krun <config.json>` (see [`vmm_entry`]); the parent talks to the agent over
//! the unix socket that libkrun connects the guest's vsock port to.
//!
//! What libkrun is told, and why:
//! - our own ELF `vmlinux` and initramfs (`krun_set_kernel`, format 1): no libkrunfw;
//! - an explicit kernel command line. It replaces libkrun's default prolog, so it keeps
//!   `console=hvc0` (libkrun's implicit console), `reboot=k` (libkrun exits on the keyboard
//!   controller reset) and `panic=-1`; libkrun appends the `virtio_mmio.device=` entries;
//! - no `krun_set_exec`/`krun_set_env`: with a NULL envp libkrun would copy the host
//!   environment onto the 2048-byte command line and cut the device entries off;
//! - vsock without TSI (`krun_disable_implicit_vsock` + `krun_add_vsock(ctx, 0)`): TSI needs
//!   guest kernel patches we do not carry; port [`VSOCK_PORT`] maps to our unix socket with
//!   `listen = false`, i.e. the guest connects and libkrun connects to the host's socket;
//! - the console (hvc0) written to the VM's console log with `krun_set_console_output`;
//! - with a network, `krun_add_net_unixstream` on the stack's socket, with no offload
//!   features (the stack wants whole, checksummed frames) and no DHCP (the agent
//!   configures the interface).

use super::{Backend, BackendError, BackendKind, Disk, NetDevice, Share, VmConfig};
use serde::{Deserialize, Serialize};
use smolvm_protocol::{ShareFs, VSOCK_PORT};
use std::path::PathBuf;
use std::process::Command;

/// Whether this binary was built with libkrun.
pub const BUILT: bool = cfg!(feature = "krun");
/// The hidden subcommand a VMM child process is started with.
pub const VMM_SUBCOMMAND: &str = "__vmm-krun";
/// `KRUN_KERNEL_FORMAT_ELF` in libkrun.h.
pub const KERNEL_FORMAT_ELF: u32 = 1;
/// The x86_64 kernel command line limit libkrun enforces.
pub const CMDLINE_MAX: usize = 2048;

pub struct Krun;

/// Everything the VMM child process needs, passed as a JSON file in the VM's run directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KrunConfig {
    pub cpus: u8,
    pub memory_mib: u32,
    pub kernel: PathBuf,
    pub kernel_format: u32,
    pub initramfs: PathBuf,
    pub cmdline: String,
    pub disks: Vec<Disk>,
    pub shares: Vec<Share>,
    pub vsock_port: u32,
    pub agent_socket: PathBuf,
    pub console_log: PathBuf,
    /// A virtio-net device on the host stack's unix stream socket
    /// (`krun_add_net_unixstream`), when the VM has a network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<NetDevice>,
}

impl KrunConfig {
    pub fn from_vm(cfg: &VmConfig) -> KrunConfig {
        KrunConfig {
            cpus: cfg.cpus,
            memory_mib: cfg.memory_mib,
            kernel: cfg.boot.kernel.clone(),
            kernel_format: KERNEL_FORMAT_ELF,
            initramfs: cfg.boot.initramfs.clone(),
            cmdline: cfg.kernel_cmdline("hvc0", "k", "vsock", &["nomodule"]),
            disks: cfg.disks.clone(),
            shares: cfg.shares.clone(),
            vsock_port: VSOCK_PORT,
            agent_socket: cfg.agent_socket.clone(),
            console_log: cfg.console_log.clone(),
            net: cfg.net.clone(),
        }
    }
}

impl Backend for Krun {
    fn kind(&self) -> BackendKind {
        BackendKind::Krun
    }

    fn describe(&self) -> String {
        "krun (libkrun, KVM)".into()
    }

    /// `krun_add_disk` takes a path and nothing else.
    fn reads_in_place(&self) -> bool {
        false
    }

    /// libkrun's built-in virtio-fs server (`krun_add_virtiofs3`), read-only on the host
    /// side when asked.
    fn share_fs(&self) -> ShareFs {
        ShareFs::Virtiofs
    }

    fn command(&self, cfg: &VmConfig) -> Result<Command, BackendError> {
        if let Some(d) = cfg.disks.iter().find(|d| d.range.is_some()) {
            return Err(BackendError::RangeUnsupported {
                backend: "krun",
                disk: d.id.clone(),
            });
        }
        let config = KrunConfig::from_vm(cfg);
        let path = cfg.run_dir.join("krun.json");
        std::fs::write(&path, serde_json::to_vec(&config).expect("serializable")).map_err(
            |source| BackendError::WriteConfig {
                path: path.clone(),
                source,
            },
        )?;
        let exe = std::env::current_exe().map_err(BackendError::CurrentExe)?;
        let mut cmd = Command::new(exe);
        cmd.arg(VMM_SUBCOMMAND).arg(path);
        Ok(cmd)
    }
}

/// Call first thing in `main` of every binary that can run VMs: when this process was
/// started as a krun VMM, it becomes the VM and never returns.
pub fn vmm_entry() {
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|a| a == VMM_SUBCOMMAND) {
        let path = args.next().map(PathBuf::from).unwrap_or_default();
        let code = match std::fs::read(&path)
            .map_err(|e| format!("reading {}: {e}", path.display()))
            .and_then(|b| {
                serde_json::from_slice::<KrunConfig>(&b)
                    .map_err(|e| format!("parsing {}: {e}", path.display()))
            }) {
            Ok(config) => match run(&config) {
                Ok(never) => match never {},
                Err(e) => {
                    eprintln!("smolvm: krun VMM: {e}");
                    1
                }
            },
            Err(e) => {
                eprintln!("smolvm: krun VMM: {e}");
                2
            }
        };
        std::process::exit(code);
    }
}

#[cfg(feature = "krun")]
fn run(config: &KrunConfig) -> Result<std::convert::Infallible, String> {
    use krun as k;
    use std::ffi::CString;

    fn cstr(what: &str, s: &str) -> Result<CString, String> {
        CString::new(s).map_err(|_| format!("{what} contains a NUL byte"))
    }
    fn path(what: &str, p: &std::path::Path) -> Result<CString, String> {
        cstr(what, &p.to_string_lossy())
    }
    fn check(call: &str, r: i32) -> Result<i32, String> {
        if r < 0 {
            Err(format!(
                "{call} failed: {}",
                std::io::Error::from_raw_os_error(-r)
            ))
        } else {
            Ok(r)
        }
    }
    if config.cmdline.len() >= CMDLINE_MAX {
        return Err(format!(
            "kernel command line is {} bytes, over libkrun's {CMDLINE_MAX}",
            config.cmdline.len()
        ));
    }
    let kernel = path("kernel path", &config.kernel)?;
    let initramfs = path("initramfs path", &config.initramfs)?;
    let cmdline = cstr("kernel command line", &config.cmdline)?;
    let socket = path("agent socket path", &config.agent_socket)?;
    let console = path("console log path", &config.console_log)?;
    let net = match &config.net {
        Some(n) => Some((path("network socket path", &n.socket)?, n.mac)),
        None => None,
    };
    let disks = config
        .disks
        .iter()
        .map(|d| {
            Ok((
                cstr("disk id", &d.id)?,
                path("disk path", &d.path)?,
                d.read_only,
            ))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let shares = config
        .shares
        .iter()
        .map(|s| {
            Ok((
                cstr("share tag", &s.tag)?,
                path("shared directory", &s.host_path)?,
                s.read_only,
            ))
        })
        .collect::<Result<Vec<_>, String>>()?;

    let level = if std::env::var_os("SMOLVM_KRUN_DEBUG").is_some() {
        4
    } else {
        1
    };
    k::krun_set_log_level(level);
    let ctx = check("krun_create_ctx", k::krun_create_ctx())? as u32;
    check(
        "krun_set_vm_config",
        k::krun_set_vm_config(ctx, config.cpus, config.memory_mib),
    )?;
    check(
        "krun_disable_implicit_vsock",
        k::krun_disable_implicit_vsock(ctx),
    )?;
    check("krun_add_vsock", k::krun_add_vsock(ctx, 0))?;
    // SAFETY: every pointer below is a valid NUL-terminated string that outlives the call;
    // libkrun copies what it keeps.
    unsafe {
        check(
            "krun_set_console_output",
            k::krun_set_console_output(ctx, console.as_ptr()),
        )?;
        check(
            "krun_add_vsock_port2",
            k::krun_add_vsock_port2(ctx, config.vsock_port, socket.as_ptr(), false),
        )?;
        if let Some((socket, mac)) = &net {
            check(
                "krun_add_net_unixstream",
                k::krun_add_net_unixstream(ctx, socket.as_ptr(), -1, mac.as_ptr(), 0, 0),
            )?;
        }
        for (id, p, ro) in &disks {
            check(
                "krun_add_disk",
                k::krun_add_disk(ctx, id.as_ptr(), p.as_ptr(), *ro),
            )?;
        }
        // shm_size 0: no DAX window, as krun_add_virtiofs does.
        for (tag, p, ro) in &shares {
            check(
                "krun_add_virtiofs3",
                k::krun_add_virtiofs3(ctx, tag.as_ptr(), p.as_ptr(), 0, *ro),
            )?;
        }
        check(
            "krun_set_kernel",
            k::krun_set_kernel(
                ctx,
                kernel.as_ptr(),
                config.kernel_format,
                initramfs.as_ptr(),
                cmdline.as_ptr(),
            ),
        )?;
    }
    // Only returns on failure; on success the VM runs and libkrun exits the process.
    let r = k::krun_start_enter(ctx);
    Err(format!(
        "krun_start_enter failed: {}",
        std::io::Error::from_raw_os_error(-r)
    ))
}

#[cfg(not(feature = "krun"))]
fn run(_: &KrunConfig) -> Result<std::convert::Infallible, String> {
    Err("this smolvm was built without the krun backend".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Boot;

    fn vm() -> VmConfig {
        let boot = Boot {
            kernel: "/g/vmlinux".into(),
            initramfs: "/g/initramfs.cpio".into(),
        };
        let mut c = VmConfig::new(4, 8192, boot, "/run/smolvm/vm-1-0".into()).unwrap();
        c.verbose_console = false;
        c.disks
            .push(Disk::file("root", "/c/root.sqfs".into(), true));
        c.shares.push(Share {
            tag: "smolvm.vol0".into(),
            host_path: "/home/u/data".into(),
            read_only: true,
        });
        c
    }

    #[test]
    fn boots_our_elf_kernel_and_initramfs() {
        let k = KrunConfig::from_vm(&vm());
        assert_eq!(k.kernel, PathBuf::from("/g/vmlinux"));
        assert_eq!(k.kernel_format, KERNEL_FORMAT_ELF);
        assert_eq!(k.initramfs, PathBuf::from("/g/initramfs.cpio"));
        assert_eq!((k.cpus, k.memory_mib), (4, 8192));
    }

    #[test]
    fn cmdline_keeps_what_libkrun_relies_on_and_leaves_room_for_devices() {
        let k = KrunConfig::from_vm(&vm());
        let words: Vec<&str> = k.cmdline.split(' ').collect();
        for required in [
            "console=hvc0",
            "reboot=k",
            "panic=-1",
            "smolvm.transport=vsock",
            "random.trust_cpu=on",
        ] {
            assert!(
                words.contains(&required),
                "{required} missing from {:?}",
                k.cmdline
            );
        }
        // No init=: the kernel runs /init from our initramfs (the agent), not libkrun's init.
        assert!(!k.cmdline.contains("init="));
        // No host environment leaks onto the command line.
        assert!(!k.cmdline.contains("PATH=") && !k.cmdline.contains("HOME="));
        // Each virtio_mmio.device= entry is ~40 bytes; leave room for a dozen devices.
        assert!(
            k.cmdline.len() + 12 * 48 < CMDLINE_MAX,
            "{} bytes",
            k.cmdline.len()
        );
    }

    #[test]
    fn agent_vsock_port_maps_to_the_host_socket() {
        let k = KrunConfig::from_vm(&vm());
        assert_eq!(k.vsock_port, VSOCK_PORT);
        assert_eq!(
            k.agent_socket,
            PathBuf::from("/run/smolvm/vm-1-0/agent.sock")
        );
        assert_eq!(
            k.console_log,
            PathBuf::from("/run/smolvm/vm-1-0/console.log")
        );
        assert_eq!(
            k.disks,
            vec![Disk::file("root", "/c/root.sqfs".into(), true)]
        );
    }

    #[test]
    fn shares_reach_the_child_as_read_only_virtiofs() {
        let k = KrunConfig::from_vm(&vm());
        assert_eq!(
            k.shares,
            vec![Share {
                tag: "smolvm.vol0".into(),
                host_path: "/home/u/data".into(),
                read_only: true,
            }]
        );
        assert_eq!(Krun.share_fs(), ShareFs::Virtiofs);
    }

    #[test]
    fn the_network_device_reaches_the_child_only_when_asked() {
        let k = KrunConfig::from_vm(&vm());
        assert_eq!(k.net, None);
        let json = serde_json::to_string(&k).unwrap();
        assert!(!json.contains("net"), "{json}");
        let mut cfg = vm();
        cfg.net = Some(NetDevice {
            socket: "/run/smolvm/vm-1-0/net.sock".into(),
            mac: [2, 0x53, 0x4d, 0, 0, 2],
        });
        let k = KrunConfig::from_vm(&cfg);
        assert_eq!(k.net, cfg.net);
        let back: KrunConfig = serde_json::from_slice(&serde_json::to_vec(&k).unwrap()).unwrap();
        assert_eq!(
            back.net.unwrap().socket,
            PathBuf::from("/run/smolvm/vm-1-0/net.sock")
        );
    }

    #[test]
    fn a_disk_range_is_refused_rather_than_misread() {
        let mut cfg = vm();
        cfg.disks.push(Disk {
            id: "packed".into(),
            path: "/app".into(),
            read_only: true,
            range: Some((4096, 8192)),
        });
        assert!(!Krun.reads_in_place());
        match Krun.command(&cfg) {
            Err(BackendError::RangeUnsupported {
                backend: "krun",
                disk,
            }) => assert_eq!(disk, "packed"),
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn config_round_trips_through_the_file_the_child_reads() {
        let k = KrunConfig::from_vm(&vm());
        let back: KrunConfig = serde_json::from_slice(&serde_json::to_vec(&k).unwrap()).unwrap();
        assert_eq!(back, k);
    }

    #[test]
    fn the_vmm_child_is_this_executable_with_the_hidden_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = vm();
        cfg.run_dir = dir.path().to_path_buf();
        let cmd = Krun.command(&cfg).unwrap();
        assert_eq!(cmd.get_program(), std::env::current_exe().unwrap());
        let args: Vec<_> = cmd.get_args().collect();
        assert_eq!(args[0], VMM_SUBCOMMAND);
        assert_eq!(args[1], dir.path().join("krun.json"));
        let written: KrunConfig =
            serde_json::from_slice(&std::fs::read(dir.path().join("krun.json")).unwrap()).unwrap();
        assert_eq!(written, KrunConfig::from_vm(&cfg));
    }
}
