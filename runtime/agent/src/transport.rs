//! The agent's channel to the host: a virtio-serial port (QEMU) or a vsock connection
//! (libkrun), chosen by `smolvm.transport=` on the kernel command line.

use crate::fdio::{FdStream, owned};
use smolvm_protocol::{VIRTIO_PORT_NAME, VSOCK_PORT};
use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

/// How long to wait for the device or the host to appear.
const CONNECT_LIMIT: Duration = Duration::from_secs(30);
const VMADDR_CID_HOST: u32 = 2;

pub async fn connect() -> io::Result<FdStream> {
    let fd = match crate::init::cmdline_param("transport").as_deref() {
        Some("vsock") => vsock()?,
        Some("virtio-serial") | None => virtio_port()?,
        Some(other) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unknown smolvm.transport={other}"),
            ));
        }
    };
    FdStream::new(fd)
}

/// Finds `/dev/vportNpM` whose port name is ours. The port appears shortly after the
/// virtio-serial device probes, so wait for it.
fn virtio_port() -> io::Result<OwnedFd> {
    let start = Instant::now();
    loop {
        if let Ok(entries) = std::fs::read_dir("/sys/class/virtio-ports") {
            for e in entries.flatten() {
                let name = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
                if name.trim() == VIRTIO_PORT_NAME {
                    let dev = format!("/dev/{}", e.file_name().to_string_lossy());
                    if let Ok(f) = std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(&dev)
                    {
                        return Ok(f.into());
                    }
                }
            }
        }
        if start.elapsed() > CONNECT_LIMIT {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "no virtio-serial port named {VIRTIO_PORT_NAME} appeared within {CONNECT_LIMIT:?}"
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Connects to the host (CID 2); libkrun relays the connection to the host's unix socket.
fn vsock() -> io::Result<OwnedFd> {
    let start = Instant::now();
    loop {
        // SAFETY: creating a socket; ownership is taken immediately.
        let fd = owned(unsafe {
            libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0)
        })?;
        // SAFETY: sockaddr_vm is plain data; zeroed then filled in.
        let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
        addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        addr.svm_cid = VMADDR_CID_HOST;
        addr.svm_port = VSOCK_PORT;
        // SAFETY: valid address of the right length.
        let r = unsafe {
            libc::connect(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                (&addr as *const libc::sockaddr_vm).cast(),
                std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
            )
        };
        if r == 0 {
            return Ok(fd);
        }
        let err = io::Error::last_os_error();
        if start.elapsed() > CONNECT_LIMIT {
            return Err(io::Error::new(
                err.kind(),
                format!("vsock connect to the host port {VSOCK_PORT}: {err}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
