//! Can this host run VMs with hardware virtualization? Detection and plain-words reasons.

use std::fmt;
use std::path::PathBuf;

/// Why KVM cannot be used here, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmUnusable {
    /// The device node does not exist.
    NoDevice(PathBuf),
    /// The device exists but this user may not open it.
    NoPermission(PathBuf),
    /// The CPU does not expose VT-x/AMD-V (no `vmx`/`svm` flag), as on a nested kvm-pvm host.
    NoCpuSupport { pvm: bool },
    /// Opening or querying the device failed otherwise.
    Broken(String),
}

impl fmt::Display for KvmUnusable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvmUnusable::NoDevice(p) => write!(
                f,
                "{} does not exist: load the KVM module (modprobe kvm_intel or kvm_amd) and enable virtualization (VT-x/AMD-V) in the firmware",
                p.display()
            ),
            KvmUnusable::NoPermission(p) => write!(
                f,
                "no permission to open {}: add your user to the kvm group (sudo usermod -aG kvm $USER, then log in again)",
                p.display()
            ),
            KvmUnusable::NoCpuSupport { pvm: true } => write!(
                f,
                "this host is a nested kvm-pvm VM: /dev/kvm exists but the CPU exposes no hardware virtualization (no vmx/svm flag), so standard guests cannot run on it; use the qemu backend (software emulation) or a host with VT-x/AMD-V"
            ),
            KvmUnusable::NoCpuSupport { pvm: false } => write!(
                f,
                "the CPU exposes no hardware virtualization (no vmx/svm flag in /proc/cpuinfo): enable VT-x/AMD-V in the firmware, or on a cloud VM choose an instance type with nested virtualization"
            ),
            KvmUnusable::Broken(e) => write!(f, "KVM is present but unusable: {e}"),
        }
    }
}

/// The KVM device path: `SMOLVM_KVM_DEVICE` or `/dev/kvm`.
pub fn kvm_device() -> PathBuf {
    std::env::var_os("SMOLVM_KVM_DEVICE")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/dev/kvm".into())
}

/// Checks whether hardware-accelerated VMs can run here.
pub fn kvm() -> Result<(), KvmUnusable> {
    let dev = kvm_device();
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&dev)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(KvmUnusable::NoDevice(dev));
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(KvmUnusable::NoPermission(dev));
        }
        Err(e) => {
            return Err(KvmUnusable::Broken(format!(
                "opening {}: {e}",
                dev.display()
            )));
        }
    };
    const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
    // SAFETY: an argument-less ioctl on a descriptor we hold open.
    let version = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            KVM_GET_API_VERSION,
            0,
        )
    };
    if version != 12 {
        return Err(KvmUnusable::Broken(format!(
            "{} is not a KVM device (API version {version})",
            dev.display()
        )));
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpu_supports_virt(&cpuinfo).map_err(|_| KvmUnusable::NoCpuSupport { pvm: is_pvm_host() })
}

fn cpu_supports_virt(cpuinfo: &str) -> Result<(), ()> {
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or("");
    if flags.split_whitespace().any(|f| f == "vmx" || f == "svm") {
        Ok(())
    } else {
        Err(())
    }
}

/// A kvm-pvm host announces itself in the kernel log and on the command line.
fn is_pvm_host() -> bool {
    std::fs::read_to_string("/proc/cmdline").is_ok_and(|c| c.contains("pvm"))
        || std::path::Path::new("/sys/module/kvm_pvm").exists()
}

/// The host's TSC frequency in kHz: from sysfs where the kernel exports it, else the
/// `cpu MHz` the kernel reports (the TSC rate on the virtual machines that lack sysfs's).
pub fn tsc_khz() -> Option<u64> {
    if let Ok(s) = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/tsc_freq_khz")
        && let Ok(khz) = s.trim().parse()
    {
        return Some(khz);
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    cpu_mhz_khz(&cpuinfo)
}

fn cpu_mhz_khz(cpuinfo: &str) -> Option<u64> {
    let line = cpuinfo.lines().find(|l| l.starts_with("cpu MHz"))?;
    let mhz: f64 = line.split(':').nth(1)?.trim().parse().ok()?;
    (mhz > 0.0).then(|| (mhz * 1000.0).round() as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn tsc_rate_comes_from_cpu_mhz() {
        assert_eq!(
            cpu_mhz_khz("processor\t: 0\ncpu MHz\t\t: 2000.000\n"),
            Some(2_000_000)
        );
        assert_eq!(cpu_mhz_khz("cpu MHz\t\t: 2893.205\n"), Some(2_893_205));
        assert_eq!(cpu_mhz_khz("flags: fpu\n"), None);
    }

    use super::*;

    #[test]
    fn cpu_flags_decide_support() {
        assert!(cpu_supports_virt("processor: 0\nflags\t\t: fpu vme vmx sse\n").is_ok());
        assert!(cpu_supports_virt("flags\t\t: fpu svm\n").is_ok());
        assert!(cpu_supports_virt("flags\t\t: fpu vme sse avx2 rdrand\n").is_err());
        assert!(cpu_supports_virt("").is_err());
    }

    #[test]
    fn reasons_say_what_to_do() {
        let msg = KvmUnusable::NoPermission("/dev/kvm".into()).to_string();
        assert!(msg.contains("usermod -aG kvm"), "{msg}");
        let msg = KvmUnusable::NoDevice("/dev/kvm".into()).to_string();
        assert!(msg.contains("modprobe"), "{msg}");
        assert!(
            KvmUnusable::NoCpuSupport { pvm: true }
                .to_string()
                .contains("kvm-pvm")
        );
    }
}
