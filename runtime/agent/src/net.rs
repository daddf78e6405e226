//! Guest network interfaces: `lo` always; the VM's virtio-net interface when the host gives
//! the VM a network. Configured with interface ioctls (no DHCP, no `ip` binary): the
//! address is the host's to choose and the agent's ready path spawns no process.

use smolvm_protocol::NetworkSetup;
use std::io;
use std::net::Ipv4Addr;

/// An `AF_INET` datagram socket used only for interface ioctls.
struct IoctlSocket(libc::c_int);

impl IoctlSocket {
    fn new() -> io::Result<IoctlSocket> {
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(IoctlSocket(fd))
    }

    /// An `ifreq` naming `name`.
    fn request(name: &str) -> libc::ifreq {
        // SAFETY: ifreq is plain data; all zeroes is valid.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (i, b) in name.bytes().take(libc::IFNAMSIZ - 1).enumerate() {
            req.ifr_name[i] = b as libc::c_char;
        }
        req
    }

    fn ioctl<T>(&self, what: &str, request: libc::Ioctl, arg: &mut T) -> io::Result<()> {
        // SAFETY: `arg` is the structure this ioctl request takes.
        if unsafe { libc::ioctl(self.0, request, arg as *mut T) } < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
        }
        Ok(())
    }

    fn up(&self, name: &str) -> io::Result<()> {
        let mut req = Self::request(name);
        self.ioctl("SIOCGIFFLAGS", libc::SIOCGIFFLAGS, &mut req)?;
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        unsafe {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        }
        self.ioctl("SIOCSIFFLAGS", libc::SIOCSIFFLAGS, &mut req)
    }

    fn set_addr(
        &self,
        name: &str,
        what: &str,
        request: libc::Ioctl,
        ip: Ipv4Addr,
    ) -> io::Result<()> {
        let mut req = Self::request(name);
        req.ifr_ifru.ifru_addr = sockaddr(ip);
        self.ioctl(what, request, &mut req)
    }

    fn set_mtu(&self, name: &str, mtu: u16) -> io::Result<()> {
        let mut req = Self::request(name);
        req.ifr_ifru.ifru_mtu = mtu.into();
        self.ioctl("SIOCSIFMTU", libc::SIOCSIFMTU, &mut req)
    }

    fn default_route(&self, gateway: Ipv4Addr) -> io::Result<()> {
        // SAFETY: rtentry is plain data; all zeroes is valid.
        let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
        rt.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
        rt.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
        rt.rt_gateway = sockaddr(gateway);
        rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        self.ioctl("SIOCADDRT", libc::SIOCADDRT, &mut rt)
    }
}

/// `ip` as the generic `sockaddr` interface and route ioctls take.
fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size on Linux.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

impl Drop for IoctlSocket {
    fn drop(&mut self) {
        // SAFETY: our own descriptor.
        unsafe { libc::close(self.0) };
    }
}

/// Brings `lo` up (`ip link set lo up`).
pub fn loopback_up() {
    if let Ok(s) = IoctlSocket::new() {
        let _ = s.up("lo");
    }
}

/// The interface whose MAC address is `mac`.
fn interface_with_mac(mac: [u8; 6]) -> io::Result<String> {
    let want = mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    for entry in std::fs::read_dir("/sys/class/net")? {
        let entry = entry?;
        let address = std::fs::read_to_string(entry.path().join("address")).unwrap_or_default();
        if address.trim() == want {
            return Ok(entry.file_name().to_string_lossy().into_owned());
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "no network interface has MAC address {want} (is CONFIG_VIRTIO_NET in the kernel?)"
        ),
    ))
}

/// `ip link set IF mtu M up; ip addr add A/P dev IF; ip route add default via G`.
pub fn configure(net: &NetworkSetup) -> io::Result<()> {
    let name = interface_with_mac(net.mac)?;
    let s = IoctlSocket::new()?;
    let mask = Ipv4Addr::from(
        u32::MAX
            .checked_shl(32 - u32::from(net.prefix_len))
            .unwrap_or(0),
    );
    s.set_mtu(&name, net.mtu)?;
    s.set_addr(&name, "SIOCSIFADDR", libc::SIOCSIFADDR, net.address)?;
    s.set_addr(&name, "SIOCSIFNETMASK", libc::SIOCSIFNETMASK, mask)?;
    s.up(&name)?;
    s.default_route(net.gateway)
}

/// `/etc/resolv.conf` for the guest.
pub fn resolv_conf(net: Option<&NetworkSetup>) -> String {
    match net {
        None => {
            "# This VM has no network (smolvm runs VMs without one unless --net is given).\n".into()
        }
        Some(n) => n
            .nameservers
            .iter()
            .map(|ns| format!("nameserver {ns}\n"))
            .collect(),
    }
}
