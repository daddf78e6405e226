//! The QEMU backend: `qemu-system-x86_64 -M microvm`, KVM when usable, else TCG.
//!
//! The agent's channel is a virtio-serial port whose chardev connects (as a client) to the
//! unix socket the host already listens on, so there is no race and no polling for a socket.

use super::{Backend, BackendError, BackendKind, VmConfig};
use smolvm_protocol::{ShareFs, VIRTIO_PORT_NAME};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const BINARY: &str = "qemu-system-x86_64";

pub struct Qemu {
    pub binary: PathBuf,
    /// Use KVM (hardware virtualization) rather than TCG.
    pub kvm: bool,
    /// The host's TSC frequency, which a TCG guest's TSC runs at.
    pub tsc_khz: Option<u64>,
}

impl Qemu {
    pub fn new(binary: PathBuf, kvm: bool) -> Qemu {
        Qemu {
            binary,
            kvm,
            tsc_khz: if kvm { None } else { crate::virt::tsc_khz() },
        }
    }
}

/// `$SMOLVM_QEMU`, or `qemu-system-x86_64` on `PATH`.
pub fn locate() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("SMOLVM_QEMU") {
        let p = PathBuf::from(p);
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(format!(
                "SMOLVM_QEMU={} is not an executable file",
                p.display()
            ))
        };
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(BINARY))
        .find(|p| is_executable(p))
        .ok_or_else(|| format!("{BINARY} was not found on PATH (apt-get install qemu-system-x86, or set SMOLVM_QEMU)"))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A raw disk as a `-blockdev` JSON value (no escaping issues with paths). A range is read
/// in place with the raw driver's offset/size; writes go through to the host on the
/// guest's flushes (cache=writeback).
fn blockdev(i: usize, d: &super::Disk) -> String {
    let mut node = serde_json::json!({
        "driver": "raw",
        "node-name": format!("disk{i}"),
        "read-only": d.read_only,
        "cache": {"direct": false, "no-flush": false},
        "file": {"driver": "file", "filename": d.path, "read-only": d.read_only},
    });
    if let Some((offset, size)) = d.range {
        node["offset"] = offset.into();
        node["size"] = size.into();
    }
    node.to_string()
}

/// QEMU option values are comma-separated; a literal comma is written twice.
fn escape(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

impl Qemu {
    pub fn args(&self, cfg: &VmConfig) -> Vec<OsString> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |parts: &[&str]| a.extend(parts.iter().map(|s| s.to_string()));
        // microvm without ACPI: QEMU appends virtio_mmio.device= entries to the command line.
        // The CMOS RTC stays: x86 Linux always reads it at boot, and without one it spins
        // for a second waiting for an update flag that never clears. Under TCG the guest
        // also needs the PIT and PIC.
        let machine = if self.kvm {
            "microvm,x-option-roms=off,rtc=on,acpi=off,pit=off,pic=off"
        } else {
            "microvm,x-option-roms=off,rtc=on,acpi=off,pit=on,pic=on"
        };
        push(&["-M", machine]);
        if self.kvm {
            push(&["-accel", "kvm", "-cpu", "host"]);
        } else {
            push(&["-accel", "tcg", "-cpu", "max"]);
        }
        let (smp, mem) = (cfg.cpus.to_string(), format!("{}M", cfg.memory_mib));
        push(&["-smp", &smp, "-m", &mem]);
        push(&[
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ]);
        // QEMU's own seccomp filter: no spawning, no privilege changes, no obsolete syscalls.
        push(&[
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        ]);
        // Under TCG the guest TSC ticks at the host's TSC rate, but the kernel cannot
        // calibrate it against the emulated PIT and would fall back to a 10 ms jiffies clock.
        // Tell it the rate instead.
        let tsc = match (self.kvm, self.tsc_khz) {
            (false, Some(khz)) => vec![format!("tsc_early_khz={khz}"), "tsc=reliable".to_string()],
            _ => vec![],
        };
        let tsc: Vec<&str> = tsc.iter().map(String::as_str).collect();
        let cmdline = cfg.kernel_cmdline("ttyS0", "t", "virtio-serial", &tsc);
        push(&[
            "-kernel",
            &escape(&cfg.boot.kernel),
            "-initrd",
            &escape(&cfg.boot.initramfs),
        ]);
        push(&["-append", &cmdline]);
        push(&[
            "-chardev",
            &format!("file,id=console,path={}", escape(&cfg.console_log)),
            "-serial",
            "chardev:console",
        ]);
        push(&[
            "-chardev",
            &format!("socket,id=agent,path={}", escape(&cfg.agent_socket)),
        ]);
        push(&["-device", "virtio-serial-device"]);
        push(&[
            "-device",
            &format!("virtserialport,chardev=agent,name={VIRTIO_PORT_NAME}"),
        ]);
        push(&[
            "-object",
            "rng-random,id=rng,filename=/dev/urandom",
            "-device",
            "virtio-rng-device,rng=rng",
        ]);
        // Pages the guest frees are reported and dropped from QEMU's memory (free page
        // reporting), so an idle machine gives back what a burst used.
        push(&["-device", "virtio-balloon-device,free-page-reporting=on"]);
        if let Some(net) = &cfg.net {
            // QEMU connects (server=off) to the socket our network stack listens on.
            push(&[
                "-netdev",
                &format!(
                    "stream,id=net0,server=off,addr.type=unix,addr.path={}",
                    escape(&net.socket)
                ),
                "-device",
                &format!("virtio-net-device,netdev=net0,mac={}", net.mac_string()),
            ]);
        }
        for (i, d) in cfg.disks.iter().enumerate() {
            push(&[
                "-blockdev",
                &blockdev(i, d),
                "-device",
                &format!("virtio-blk-device,drive=disk{i},serial={}", d.id),
            ]);
        }
        for s in &cfg.shares {
            push(&[
                "-fsdev",
                &fsdev(s),
                "-device",
                &format!("virtio-9p-device,fsdev={},mount_tag={}", s.tag, s.tag),
            ]);
        }
        a.into_iter().map(OsString::from).collect()
    }
}

/// A shared directory served over 9p by QEMU's `local` backend.
///
/// `security_model=none`: files are created and accessed as the user QEMU runs as, with the
/// modes the guest asks for; ownership changes the host does not permit are ignored rather
/// than failing. This works without root (`passthrough` needs root to chown) and keeps the
/// files ordinary ones on the host (`mapped-xattr` would store the guest's owners and modes
/// in xattrs and create files `0600` on the host). The guest sees the host's owners and
/// modes, and can never reach more than the user running smolvm can.
/// `multidevs=remap`: a directory holding other mounts keeps unique inode numbers.
fn fsdev(s: &super::Share) -> String {
    let mut opts = format!(
        "local,id={},path={},security_model=none,multidevs=remap",
        s.tag,
        escape(&s.host_path)
    );
    if s.read_only {
        opts.push_str(",readonly=on");
    }
    opts
}

impl Backend for Qemu {
    fn kind(&self) -> BackendKind {
        BackendKind::Qemu
    }

    fn describe(&self) -> String {
        if self.kvm {
            "qemu (KVM)".into()
        } else {
            "qemu (TCG software emulation)".into()
        }
    }

    fn reads_in_place(&self) -> bool {
        true
    }

    fn share_fs(&self) -> ShareFs {
        ShareFs::NineP
    }

    fn command(&self, cfg: &VmConfig) -> Result<Command, BackendError> {
        let mut cmd = Command::new(&self.binary);
        cmd.args(self.args(cfg));
        Ok(cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Boot, Disk, Share};

    fn config() -> VmConfig {
        let boot = Boot {
            kernel: "/k/vmlinux".into(),
            initramfs: "/k/initramfs.cpio".into(),
        };
        let mut c = VmConfig::new(2, 512, boot, "/run/x,y".into()).unwrap();
        c.verbose_console = false;
        c.disks
            .push(Disk::file("root", "/img/a,b.sqfs".into(), true));
        c.disks.push(Disk {
            id: "packed".into(),
            path: "/apps/app".into(),
            read_only: true,
            range: Some((8192, 4096)),
        });
        c.disks
            .push(Disk::file("storage", "/m/storage.img".into(), false));
        c.shares = vec![
            Share {
                tag: "smolvm.vol0".into(),
                host_path: "/home/u/src,v2".into(),
                read_only: false,
            },
            Share {
                tag: "smolvm.vol1".into(),
                host_path: "/data".into(),
                read_only: true,
            },
        ];
        c
    }

    fn args(kvm: bool) -> Vec<String> {
        Qemu {
            binary: "qemu".into(),
            kvm,
            tsc_khz: Some(2_000_000),
        }
        .args(&config())
        .into_iter()
        .map(|s| s.into_string().unwrap())
        .collect()
    }

    fn value_of<'a>(a: &'a [String], flag: &str) -> Vec<&'a str> {
        a.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn tcg_keeps_the_timers_a_guest_needs_to_calibrate() {
        let a = args(false);
        assert_eq!(
            value_of(&a, "-M"),
            ["microvm,x-option-roms=off,rtc=on,acpi=off,pit=on,pic=on"]
        );
        let cmdline = value_of(&a, "-append")[0];
        assert!(
            cmdline.contains("tsc_early_khz=2000000 tsc=reliable"),
            "{cmdline}"
        );
        assert_eq!(value_of(&a, "-accel"), ["tcg"]);
        assert_eq!(value_of(&a, "-cpu"), ["max"]);
        assert!(
            a.contains(&"-no-reboot".to_string()),
            "a guest reset must end QEMU"
        );
    }

    #[test]
    fn kvm_uses_the_host_cpu() {
        let a = args(true);
        assert_eq!(value_of(&a, "-accel"), ["kvm"]);
        assert_eq!(value_of(&a, "-cpu"), ["host"]);
        assert!(
            !value_of(&a, "-append")[0].contains("tsc_early_khz"),
            "KVM guests use kvmclock"
        );
    }

    #[test]
    fn agent_channel_connects_to_the_host_socket() {
        let a = args(false);
        assert!(value_of(&a, "-chardev").contains(&"socket,id=agent,path=/run/x,,y/agent.sock"));
        assert!(
            value_of(&a, "-device").contains(&"virtserialport,chardev=agent,name=smolvm.agent")
        );
        let cmdline = value_of(&a, "-append")[0];
        assert!(cmdline.contains("smolvm.transport=virtio-serial"));
        assert!(
            cmdline.contains("console=ttyS0")
                && cmdline.contains("reboot=t")
                && cmdline.contains("panic=-1")
        );
        assert!(cmdline.ends_with("quiet"));
        assert!(value_of(&a, "-device").contains(&"virtio-balloon-device,free-page-reporting=on"));
    }

    #[test]
    fn no_network_device_unless_asked_and_a_stream_netdev_when_asked() {
        let a = args(false);
        assert!(
            value_of(&a, "-netdev").is_empty(),
            "networking is off by default"
        );
        let mut cfg = config();
        cfg.net = Some(crate::backend::NetDevice {
            socket: "/run/x,y/net.sock".into(),
            mac: [2, 0x53, 0x4d, 0, 0, 2],
        });
        let a: Vec<String> = Qemu {
            binary: "qemu".into(),
            kvm: false,
            tsc_khz: None,
        }
        .args(&cfg)
        .into_iter()
        .map(|s| s.into_string().unwrap())
        .collect();
        assert_eq!(
            value_of(&a, "-netdev"),
            ["stream,id=net0,server=off,addr.type=unix,addr.path=/run/x,,y/net.sock"]
        );
        assert!(
            value_of(&a, "-device")
                .contains(&"virtio-net-device,netdev=net0,mac=02:53:4d:00:00:02")
        );
    }

    #[test]
    fn disks_are_json_blockdevs_with_serials_ranges_and_flushes() {
        let a = args(false);
        let nodes: Vec<serde_json::Value> = value_of(&a, "-blockdev")
            .iter()
            .map(|b| serde_json::from_str(b).unwrap())
            .collect();
        assert_eq!(nodes.len(), 3);
        // A comma in a path needs no escaping in JSON.
        assert_eq!(nodes[0]["file"]["filename"], "/img/a,b.sqfs");
        assert_eq!(nodes[0]["read-only"], true);
        assert!(nodes[0].get("offset").is_none());
        // A section of a packed executable is read in place.
        assert_eq!(
            (nodes[1]["offset"].as_u64(), nodes[1]["size"].as_u64()),
            (Some(8192), Some(4096))
        );
        // Writable disks pass the guest's flushes to the host.
        assert_eq!(nodes[2]["read-only"], false);
        assert_eq!(nodes[2]["cache"]["no-flush"], false);
        let devices: Vec<&str> = value_of(&a, "-device")
            .into_iter()
            .filter(|d| d.starts_with("virtio-blk-device"))
            .collect();
        assert_eq!(
            devices,
            [
                "virtio-blk-device,drive=disk0,serial=root",
                "virtio-blk-device,drive=disk1,serial=packed",
                "virtio-blk-device,drive=disk2,serial=storage"
            ]
        );
        assert_eq!(value_of(&a, "-smp"), ["2"]);
        assert_eq!(value_of(&a, "-m"), ["512M"]);
    }

    #[test]
    fn shares_are_9p_devices_rootless_and_read_only_when_asked() {
        let a = args(false);
        assert_eq!(
            value_of(&a, "-fsdev"),
            [
                "local,id=smolvm.vol0,path=/home/u/src,,v2,security_model=none,multidevs=remap",
                "local,id=smolvm.vol1,path=/data,security_model=none,multidevs=remap,readonly=on"
            ]
        );
        let devices: Vec<&str> = value_of(&a, "-device")
            .into_iter()
            .filter(|d| d.starts_with("virtio-9p-device"))
            .collect();
        assert_eq!(
            devices,
            [
                "virtio-9p-device,fsdev=smolvm.vol0,mount_tag=smolvm.vol0",
                "virtio-9p-device,fsdev=smolvm.vol1,mount_tag=smolvm.vol1"
            ]
        );
        assert_eq!(Qemu::new("qemu".into(), false).share_fs(), ShareFs::NineP);
    }
}
