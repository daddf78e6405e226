//! One running VM: its VMM process, its private run directory and its agent connection.

use crate::agent::{AgentClient, AgentError};
use crate::backend::{
    Backend, BackendError, Boot, ConfigError, Disk, NetDevice, NoBackend, Share, VmConfig,
};
use crate::network::NetworkSpec;
use crate::rundir::RunDir;
use crate::trace;
use smolvm_protocol::NetworkSetup;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::net::UnixListener;

/// How long a VM may take from VMM start to agent handshake (`SMOLVM_BOOT_TIMEOUT`, seconds).
const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// What to boot.
#[derive(Clone)]
pub struct VmSpec {
    /// From [`backend::select`].
    pub backend: Arc<dyn Backend>,
    pub cpus: u32,
    pub memory_mib: u32,
    pub boot: Boot,
    pub disks: Vec<Disk>,
    /// Host directories served to the guest; [`crate::volume::shares`] makes them.
    pub shares: Vec<Share>,
    /// A network (virtio-net to the host's userspace stack); `None`: loopback only.
    pub network: Option<NetworkSpec>,
}

#[derive(Debug, Error)]
pub enum VmError {
    #[error(transparent)]
    Backend(#[from] NoBackend),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    BackendSetup(#[from] BackendError),
    #[error("creating the VM's runtime directory: {0}")]
    RunDir(std::io::Error),
    #[error("listening on the agent socket {path}: {source}")]
    Listen {
        path: String,
        source: std::io::Error,
    },
    #[error("starting the VMM ({vmm}): {source}")]
    Spawn { vmm: String, source: std::io::Error },
    #[error("the VM stopped before its agent answered ({vmm} {status}){log}")]
    EarlyExit {
        vmm: String,
        status: String,
        log: String,
    },
    #[error(
        "the VM did not answer within {secs} s ({vmm}); set SMOLVM_BOOT_TIMEOUT to wait longer{log}"
    )]
    BootTimeout { vmm: String, secs: u64, log: String },
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Network(#[from] smolvm_net::NetError),
}

pub struct Vm {
    agent: AgentClient,
    child: tokio::process::Child,
    backend: String,
    run_dir: RunDir,
    network: Option<smolvm_net::Network>,
}

impl Vm {
    /// Starts the VMM and waits for the agent's handshake.
    pub async fn boot(spec: &VmSpec) -> Result<Vm, VmError> {
        let backend = &spec.backend;
        let run_dir = RunDir::create("vm").map_err(VmError::RunDir)?;
        let mut cfg = VmConfig::new(
            spec.cpus,
            spec.memory_mib,
            spec.boot.clone(),
            run_dir.path().to_path_buf(),
        )?;
        cfg.disks = spec.disks.clone();
        cfg.shares = spec.shares.clone();
        let network = match &spec.network {
            Some(n) => {
                let mut config = smolvm_net::NetConfig::new(
                    n.rules.clone(),
                    n.forwards.clone(),
                    run_dir.join("net.sock"),
                )
                .map_err(smolvm_net::NetError::from)?;
                config.log = n.log.clone();
                let net = smolvm_net::Network::start(config).await?;
                cfg.net = Some(NetDevice {
                    socket: net.socket_path().to_path_buf(),
                    mac: net.guest().mac,
                });
                Some(net)
            }
            None => None,
        };
        trace::mark(&format!("config ready ({})", backend.describe()));

        let listener = UnixListener::bind(&cfg.agent_socket).map_err(|source| VmError::Listen {
            path: cfg.agent_socket.display().to_string(),
            source,
        })?;
        let mut cmd = backend.command(&cfg)?;
        let log = std::fs::File::create(run_dir.join("vmm.log")).map_err(VmError::RunDir)?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().map_err(VmError::RunDir)?)
            .stderr(log)
            // Its own process group: a Ctrl-C at the terminal is forwarded to the guest by us,
            // it must not kill the VMM directly.
            .process_group(0);
        let parent = std::process::id() as i32;
        // SAFETY: prctl and getppid are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                // The VMM dies with us, even if we are SIGKILLed.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let vmm = backend.describe();
        let mut child = tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| VmError::Spawn {
                vmm: vmm.clone(),
                source,
            })?;
        trace::mark("vmm spawned");

        let limit = std::env::var("SMOLVM_BOOT_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_BOOT_TIMEOUT);
        let child_pid = child.id().unwrap_or(0) as i32;
        let connect = async {
            loop {
                let (stream, _) = listener.accept().await?;
                // Only the VMM we started may speak for the guest.
                if stream.peer_cred().ok().and_then(|c| c.pid()) == Some(child_pid) {
                    return Ok::<_, std::io::Error>(stream);
                }
            }
        };
        let stream = tokio::select! {
            s = connect => s.map_err(|source| VmError::Listen { path: cfg.agent_socket.display().to_string(), source })?,
            status = child.wait() => {
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                return Err(VmError::EarlyExit { vmm, status, log: log_tail(run_dir.path()) });
            }
            _ = tokio::time::sleep(limit) => {
                return Err(VmError::BootTimeout { vmm, secs: limit.as_secs(), log: log_tail(run_dir.path()) });
            }
        };
        // The socket file has served its purpose.
        let _ = std::fs::remove_file(&cfg.agent_socket);
        let handshake = AgentClient::handshake(stream);
        let agent = tokio::select! {
            a = handshake => a?,
            status = child.wait() => {
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                return Err(VmError::EarlyExit { vmm, status, log: log_tail(run_dir.path()) });
            }
            _ = tokio::time::sleep(limit) => {
                return Err(VmError::BootTimeout { vmm, secs: limit.as_secs(), log: log_tail(run_dir.path()) });
            }
        };
        let host_ready = trace::now_ms();
        let r = &agent.ready;
        // The guest's clock starts at kernel entry; map its timestamps onto ours.
        trace::at(
            host_ready - (r.ready_us as f64 / 1000.0),
            "kernel entry (from guest boot clock)",
        );
        trace::at(
            host_ready - ((r.ready_us - r.init_us) as f64 / 1000.0),
            "agent (PID 1) started",
        );
        trace::mark("agent handshake done");
        Ok(Vm {
            agent,
            child,
            backend: vmm,
            run_dir,
            network,
        })
    }

    /// The guest side of the VM's network, for the agent's `setup`.
    pub fn network_setup(&self) -> Option<NetworkSetup> {
        self.network.as_ref().map(|n| {
            let g = n.guest();
            NetworkSetup {
                mac: g.mac,
                address: g.address,
                prefix_len: g.prefix_len,
                gateway: g.gateway,
                nameservers: vec![g.nameserver],
                mtu: g.mtu,
            }
        })
    }

    pub fn agent(&self) -> &AgentClient {
        &self.agent
    }

    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// Asks the guest to power off and waits for the VMM to exit (killing it if it does not).
    pub async fn shutdown(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.agent.shutdown()).await;
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        trace::mark("vm stopped");
    }

    /// After the agent connection broke: how the VMM ended, and the end of its logs.
    pub async fn failure_report(&mut self) -> String {
        let status = match tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await {
            Ok(Ok(s)) => format!("{} exited ({s})", self.backend),
            _ => format!("{} is still running", self.backend),
        };
        format!("{status}{}", log_tail(self.run_dir.path()))
    }
}

/// The last lines of the VMM's own output and of the guest console, for error messages.
fn log_tail(run_dir: &Path) -> String {
    let mut out = String::new();
    for (name, what) in [("vmm.log", "VMM output"), ("console.log", "guest console")] {
        let Ok(text) = std::fs::read_to_string(run_dir.join(name)) else {
            continue;
        };
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        if lines.is_empty() {
            continue;
        }
        out.push_str(&format!("\n--- last lines of the {what} ---\n"));
        out.push_str(&lines[lines.len().saturating_sub(15)..].join("\n"));
    }
    out
}
