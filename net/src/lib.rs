//! smolvm's network: a userspace TCP/IP stack (smoltcp) on the host end of the guest's
//! virtio-net device. It terminates the guest's TCP connections and UDP flows and relays
//! them from ordinary host sockets, answers the guest's DNS, forwards host ports into the
//! guest, and applies one egress policy to every path out. No TAP device, no root.
//!
//! ```no_run
//! # async fn f() -> Result<(), smolvm_net::NetError> {
//! use smolvm_net::{NetConfig, Network, Rules};
//! let config = NetConfig::new(Rules::default(), vec![], "/run/vm/net.sock".into())?;
//! let net = Network::start(config).await?; // port forwards are bound here, before boot
//! // start the VMM with its NIC connected to net.socket_path(); give the guest net.guest()
//! # Ok(()) }
//! ```

mod config;
mod device;
pub mod dns;
pub mod frame;
mod log;
pub mod policy;
mod relay;
mod stack;
mod udp;

pub use config::{
    ConfigError, DEFAULT_SUBNET, DNS_UPSTREAM_ENV, GATEWAY_MAC, GUEST_MAC, HOST_NAME, MTU,
    NetConfig, PortForward, SUBNET_ENV, Subnet, dns_upstreams_from_env,
};
pub use policy::{Denied, Rules};

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

#[derive(Debug, Error)]
pub enum NetError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "cannot forward port {addr} (-p {spec}): it is already in use on the host; stop what listens there or choose another host port"
    )]
    PortInUse { addr: SocketAddr, spec: String },
    #[error("cannot forward port {addr} (-p {spec}): {source}")]
    Bind {
        addr: SocketAddr,
        spec: String,
        source: std::io::Error,
    },
    #[error("listening on the network socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// How the guest configures its interface (sent to the agent at boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestConfig {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    /// The gateway: the stack answers DNS there.
    pub nameserver: Ipv4Addr,
    pub mtu: u16,
    pub mac: [u8; 6],
}

/// A running network. Dropping it stops the stack, the forwards and every relayed flow.
pub struct Network {
    socket_path: PathBuf,
    guest: GuestConfig,
    tasks: Vec<JoinHandle<()>>,
}

impl Network {
    /// Binds the port forwards (failing now if a port is taken), listens on
    /// `config.socket_path` for the VMM, and runs the stack on the current tokio runtime
    /// once the VMM connects.
    pub async fn start(config: NetConfig) -> Result<Network, NetError> {
        let mut listeners = Vec::new();
        for f in &config.forwards {
            let spec = format!("{}:{}", f.host, f.guest_port);
            let listener = std::net::TcpListener::bind(f.host).map_err(|source| {
                if source.kind() == std::io::ErrorKind::AddrInUse {
                    NetError::PortInUse {
                        addr: f.host,
                        spec: spec.clone(),
                    }
                } else {
                    NetError::Bind {
                        addr: f.host,
                        spec: spec.clone(),
                        source,
                    }
                }
            })?;
            listener
                .set_nonblocking(true)
                .and_then(|()| TcpListener::from_std(listener))
                .map(|l| listeners.push((l, f.guest_port)))
                .map_err(|source| NetError::Bind {
                    addr: f.host,
                    spec,
                    source,
                })?;
        }
        let _ = std::fs::remove_file(&config.socket_path);
        let vmm = UnixListener::bind(&config.socket_path).map_err(|source| NetError::Socket {
            path: config.socket_path.clone(),
            source,
        })?;

        let log = log::Log::new(config.log.clone());
        let policy = Arc::new(policy::Policy::new(config.rules.clone()));
        let (events_tx, events) = mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for (listener, guest_port) in listeners {
            let events = events_tx.clone();
            tasks.push(tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    if events
                        .send(stack::Event::Accepted { guest_port, stream })
                        .is_err()
                    {
                        return;
                    }
                }
            }));
        }
        let stack = stack::Stack::new(&config, policy, log, events_tx, events);
        let path = config.socket_path.clone();
        tasks.push(tokio::spawn(async move {
            // The socket is in the VM's private directory: the VMM is the one to connect.
            if let Ok((stream, _)) = vmm.accept().await {
                let _ = std::fs::remove_file(&path);
                stack.run(stream).await;
            }
        }));
        let subnet = config.subnet;
        Ok(Network {
            socket_path: config.socket_path,
            guest: GuestConfig {
                address: subnet.guest(),
                prefix_len: subnet.prefix,
                gateway: subnet.gateway(),
                nameserver: subnet.gateway(),
                mtu: MTU as u16,
                mac: GUEST_MAC.0,
            },
            tasks,
        })
    }

    /// The unix socket the VMM connects the guest's NIC to.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// The guest side of the network.
    pub fn guest(&self) -> GuestConfig {
        self.guest
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
