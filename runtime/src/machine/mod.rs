//! Persistent VMs: a machine directory, and a supervisor process per running machine.
//!
//! ```text
//! <dir>/machine.json   what to boot (MachineSpec)
//! <dir>/overlay.img    ext4: the writable layer over the root filesystem (persists)
//! <dir>/storage.img    ext4: /workspace (persists)
//! <dir>/lock           held (flock) by the supervisor for its whole life
//! <dir>/supervisor.log what the supervisor and the machine's init commands printed
//! ```
//!
//! `start` launches `<exe> __supervise <dir>` in its own session. The supervisor boots the
//! VM, sets up the persistent root, runs the init commands, then serves a control socket.
//! Clients speak the agent protocol to it: it answers the handshake itself and relays each
//! stream to the agent, so the code that talks to an ephemeral VM talks to a machine too.
//! The lock makes "running" a fact the kernel keeps: a supervisor that was killed holds
//! nothing, so there are no stale locks or pid files to second-guess.

pub mod monitor;
pub mod proxy;
pub mod store;
mod supervisor;

pub use store::{MachineRecord, MachineStore, StoreError, data_dir, validate_name};
pub use supervisor::supervise_entry;

use crate::agent::{AgentClient, AgentError};
use crate::backend::{BackendKind, Boot, Disk};
use serde::{Deserialize, Serialize};
pub use smolvm_pack_format::HealthCheck;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use thiserror::Error;

/// The hidden subcommand a supervisor process is started with.
pub const SUPERVISE_SUBCOMMAND: &str = "__supervise";
/// Serials of a machine's disks in the guest.
pub const ROOTFS_SERIAL: &str = "rootfs";
pub const OVERLAY_SERIAL: &str = "overlay";
pub const STORAGE_SERIAL: &str = "storage";

/// Everything a supervisor needs to boot a machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineSpec {
    pub name: String,
    pub backend: String,
    pub cpus: u32,
    pub memory_mib: u32,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// The read-only root filesystem image; none for the bare VM.
    pub rootfs: Option<Disk>,
    pub hostname: String,
    /// Shell command lines run on every start, in order; each must succeed.
    #[serde(default)]
    pub init: Vec<String>,
    /// Defaults for commands: environment (`KEY=VALUE`), working directory, user.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    /// The `[health]` check `machine monitor` runs, and what it does when it fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Host directories shared live, `HOST:GUEST[:ro]` with an absolute host path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// The network the supervisor hosts for the VM; off by default.
    #[serde(default, skip_serializing_if = "is_off")]
    pub network: crate::NetworkSettings,
}

fn is_off(n: &crate::NetworkSettings) -> bool {
    *n == crate::NetworkSettings::default()
}

/// A Smolfile's `[health]` as machines and packs store it.
pub fn health_check(h: &smolfile::Health) -> HealthCheck {
    HealthCheck {
        exec: h.exec.clone(),
        interval_ms: h.interval.as_millis() as u64,
        timeout_ms: h.timeout.as_millis() as u64,
        startup_grace_ms: h.startup_grace.as_millis() as u64,
        retries: h.retries,
    }
}

/// When `machine monitor` restarts the machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestartPolicy {
    /// `never`, `always`, `on-failure` or `unless-stopped`.
    pub policy: String,
    pub max_retries: Option<u32>,
    pub max_backoff_ms: u64,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        (&smolfile::Restart::default()).into()
    }
}

impl From<&smolfile::Restart> for RestartPolicy {
    fn from(r: &smolfile::Restart) -> Self {
        RestartPolicy {
            policy: r.policy.as_str().to_string(),
            max_retries: r.max_retries,
            max_backoff_ms: r.max_backoff.as_millis() as u64,
        }
    }
}

impl MachineSpec {
    pub fn boot(&self) -> Boot {
        Boot {
            kernel: self.kernel.clone(),
            initramfs: self.initramfs.clone(),
        }
    }

    pub fn backend_kind(&self) -> Result<BackendKind, MachineError> {
        self.backend.parse().map_err(MachineError::Spec)
    }
}

#[derive(Debug, Error)]
pub enum MachineError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("invalid machine description: {0}")]
    Spec(String),
    #[error("the machine is already running")]
    AlreadyRunning,
    #[error("the machine is not running; start it first")]
    NotRunning,
    #[error("the machine did not start: {0}")]
    StartFailed(String),
    #[error(transparent)]
    Agent(#[from] AgentError),
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> MachineError {
    let path = path.to_owned();
    move |source| MachineError::Io {
        action,
        path,
        source,
    }
}

/// Whether a machine's supervisor is alive, and its pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Status {
    Running { pid: u32 },
    Stopped,
}

/// A machine's directory.
#[derive(Debug, Clone)]
pub struct MachineDir {
    path: PathBuf,
}

impl MachineDir {
    pub fn new(path: impl Into<PathBuf>) -> MachineDir {
        MachineDir { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn overlay_disk(&self) -> PathBuf {
        self.file("overlay.img")
    }

    pub fn storage_disk(&self) -> PathBuf {
        self.file("storage.img")
    }

    pub fn log(&self) -> PathBuf {
        self.file("supervisor.log")
    }

    /// The control socket. It lives in the private runtime directory, named after this
    /// directory: a unix socket path may be at most 107 bytes, machine paths can be longer.
    pub fn socket(&self) -> io::Result<PathBuf> {
        let key = self
            .path
            .canonicalize()
            .unwrap_or_else(|_| self.path.clone());
        let digest = crate::digest_hex(key.to_string_lossy().as_bytes());
        Ok(crate::rundir::base_dir()?.join(format!("machine-{}.sock", &digest[..24])))
    }

    /// Creates the directory (private to the user).
    pub fn create(&self) -> Result<(), MachineError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.path)
            .map_err(io_error("create", &self.path))
    }

    pub fn write_spec(&self, spec: &MachineSpec) -> Result<(), MachineError> {
        let json = serde_json::to_vec_pretty(spec).expect("a spec serialises");
        crate::fsutil::write_atomic(&self.file("machine.json"), &json)
            .map_err(io_error("write", &self.file("machine.json")))
    }

    pub fn read_spec(&self) -> Result<MachineSpec, MachineError> {
        let path = self.file("machine.json");
        let bytes = std::fs::read(&path).map_err(io_error("read", &path))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| MachineError::Spec(format!("{}: {e}", path.display())))
    }

    /// Gives the machine its own link to `src` (a cache entry, an image's root filesystem),
    /// named `name` in its directory: pruning a cache then never takes what a machine boots
    /// from. A hard link, or a copy across filesystems; an older one is replaced atomically.
    pub fn adopt(&self, src: &Path, name: &str) -> Result<PathBuf, MachineError> {
        let dest = self.file(name);
        let tmp = self.file(&format!(".{name}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let result = std::fs::hard_link(src, &tmp)
            .or_else(|e| match e.raw_os_error() {
                Some(libc::EXDEV) | Some(libc::EPERM) => {
                    std::fs::copy(src, &tmp)?;
                    File::open(&tmp)?.sync_all()
                }
                _ => Err(e),
            })
            .and_then(|()| std::fs::rename(&tmp, &dest));
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_error("link", src)(e));
        }
        Ok(dest)
    }

    /// Creates the writable disks from the ext4 template if they do not exist yet (a disk
    /// that exists is never touched: it holds the user's data).
    pub fn create_disks(
        &self,
        template: &Path,
        overlay_gib: u32,
        storage_gib: u32,
    ) -> Result<(), MachineError> {
        for (disk, gib) in [
            (self.overlay_disk(), overlay_gib),
            (self.storage_disk(), storage_gib),
        ] {
            if !disk.exists() {
                crate::fsutil::disk_from_template(template, &disk, u64::from(gib) << 30)
                    .map_err(io_error("create the disk", &disk))?;
            }
        }
        Ok(())
    }

    /// Whether the supervisor runs: it holds the lock for its whole life.
    pub fn status(&self) -> Status {
        let Ok(f) = File::open(self.file("lock")) else {
            return Status::Stopped;
        };
        // SAFETY: a non-blocking flock probe on a descriptor we hold.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
            return Status::Stopped;
        }
        let mut pid = String::new();
        let _ = (&f).read_to_string(&mut pid);
        Status::Running {
            pid: pid.trim().parse().unwrap_or(0),
        }
    }

    /// Starts the supervisor with `exe` (this program) and waits until the machine is
    /// ready or has failed to start.
    pub fn start(&self, exe: &Path) -> Result<(), MachineError> {
        if matches!(self.status(), Status::Running { .. }) {
            return Err(MachineError::AlreadyRunning);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .map_err(io_error("open", &self.log()))?;
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two descriptors. Only the read end is close-on-exec: the
        // write end is how the supervisor reports readiness.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), 0) } < 0 {
            return Err(io_error("create a pipe for", &self.path)(
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: the two descriptors were just created and are owned here.
        let (ready_r, ready_w) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: setting close-on-exec on our own descriptor.
        unsafe { libc::fcntl(ready_r.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        let mut cmd = Command::new(exe);
        cmd.arg(SUPERVISE_SUBCOMMAND)
            .arg(&self.path)
            .arg(ready_w.as_raw_fd().to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io_error("open", &self.log()))?)
            .stderr(log);
        // SAFETY: setsid is async-signal-safe. A session of its own: the supervisor outlives
        // this process and its terminal.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        cmd.spawn()
            .map_err(|e| MachineError::StartFailed(format!("starting {}: {e}", exe.display())))?;
        drop(ready_w);
        let mut report = String::new();
        let _ = File::from(ready_r).read_to_string(&mut report);
        match report.strip_prefix("ready") {
            Some(_) => Ok(()),
            None if !report.trim().is_empty() => {
                Err(MachineError::StartFailed(report.trim().to_string()))
            }
            None => Err(MachineError::StartFailed(format!(
                "the supervisor exited without a word; see {}",
                self.log().display()
            ))),
        }
    }

    /// Connects to the running machine's supervisor.
    pub async fn connect(&self) -> Result<AgentClient, MachineError> {
        let socket = self
            .socket()
            .map_err(io_error("find the socket of", &self.path))?;
        let stream = tokio::net::UnixStream::connect(&socket)
            .await
            .map_err(|_| MachineError::NotRunning)?;
        Ok(AgentClient::handshake(stream).await?)
    }

    /// Stops the machine: the guest syncs and unmounts its disks, the VM powers off, the
    /// supervisor exits. A supervisor that does not finish in `limit` is killed (its VM dies
    /// with it). Returns false when it was not running.
    pub async fn stop(&self, limit: Duration) -> Result<bool, MachineError> {
        let Status::Running { pid } = self.status() else {
            return Ok(false);
        };
        if let Ok(client) = self.connect().await {
            let _ = tokio::time::timeout(limit, client.shutdown()).await;
        }
        let deadline = Instant::now() + limit;
        while matches!(self.status(), Status::Running { .. }) {
            if Instant::now() > deadline {
                if pid > 0 {
                    // SAFETY: signalling the supervisor whose pid its lock file names.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(true)
    }
}
