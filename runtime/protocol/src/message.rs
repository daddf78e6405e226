//! Control messages: the JSON payloads of control frames.
//!
//! Every message is an object with a `"type"` field. Receivers ignore fields they do not
//! know, so a newer peer can add optional fields without a protocol version bump.

use serde::{Deserialize, Serialize};

/// The protocol versions one side can speak, inclusive.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionRange {
    pub min: u32,
    pub max: u32,
}

impl VersionRange {
    /// The highest version both ranges contain.
    pub fn negotiate(self, other: VersionRange) -> Option<u32> {
        let hi = self.max.min(other.max);
        (hi >= self.min.max(other.min)).then_some(hi)
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    // --- connection set-up, on stream 0 -----------------------------------------------
    /// Agent -> host, first message: who the agent is and when it started.
    Ready(Ready),
    /// Host -> agent: the chosen version and the host's clock.
    Hello(Hello),
    /// Agent -> host: the handshake is complete.
    HelloOk { version: u32 },

    // --- requests: the first message on a new stream, host -> agent ---------------------
    /// Prepare the root filesystem commands run in. Answered by `done` or `error`.
    Setup(Setup),
    /// Run a process. Answered by `started` then `exit`, or by `error`.
    Exec(Exec),
    /// Liveness check. Answered by `pong`.
    Ping,
    /// Flush filesystems and power the VM off. Answered by `done` just before power-off.
    Shutdown,
    /// Copy a file or directory out of the guest root. Answered by `copying`, the data on
    /// stdout, eof, then `done`; or by `error` at any point.
    CopyOut(CopyOut),
    /// Copy a file or directory into the guest root: the host sends the data on stdin, then
    /// eof. Answered by `done` once the copy is in place, or by `error`.
    CopyIn(CopyIn),

    // --- host -> agent on an exec stream ------------------------------------------------
    /// The terminal changed size (PTY execs only).
    Resize(TtySize),
    /// Deliver a signal to the process (`SIGKILL` to its whole process group cancels it).
    Signal { signal: i32 },

    // --- host -> agent on a copy stream ----------------------------------------------------
    /// Abandon the copy: the agent removes what it staged, leaves the destination as it was
    /// and answers `error`.
    Cancel,

    // --- agent -> host replies ------------------------------------------------------------
    /// The process is running.
    Started { pid: u32 },
    /// What a `copy_out` sends; its data follows on stdout.
    Copying(Copying),
    /// The process ended; all its output has been sent. Ends the stream.
    Exit(ExitStatus),
    /// Answer to `ping`. Ends the stream.
    Pong,
    /// A request without a richer answer succeeded. Ends the stream.
    Done,
    /// A request failed. Ends the stream.
    Error(ErrorReply),
}

impl Message {
    /// Whether this message is the last one the agent sends on its stream.
    pub fn ends_stream(&self) -> bool {
        matches!(
            self,
            Message::Exit(_) | Message::Pong | Message::Done | Message::Error(_)
        )
    }

    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Message {
        Message::Error(ErrorReply {
            kind,
            message: message.into(),
        })
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Ready {
    pub protocol: VersionRange,
    pub agent_version: String,
    /// Guest `CLOCK_BOOTTIME` when the agent (PID 1) started, in microseconds: the time the
    /// kernel took from its entry to user space.
    pub init_us: u64,
    /// Guest `CLOCK_BOOTTIME` when this message was sent, in microseconds.
    pub ready_us: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Hello {
    pub version: u32,
    /// The host's `CLOCK_REALTIME` in nanoseconds since the Unix epoch; the guest sets its clock from it.
    pub unix_time_ns: u64,
}

/// How the root filesystem for commands is assembled: a read-only lower layer with a
/// writable upper layer on top (overlayfs), and optionally a disk at `/workspace`.
///
/// Disks are named by their serial number (`/sys/block/vd*/serial`), which both backends
/// set, rather than by probe order.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Setup {
    pub hostname: String,
    pub lower: Lower,
    pub upper: Upper,
    /// Serial of an ext4 disk to mount at `/workspace` (grown to the disk's size first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    /// Host directories shared with the guest, mounted in this order after everything else
    /// (a parent before anything inside it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// Configure the VM's network interface; without it the guest has only loopback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkSetup>,
}

/// A host directory the VMM shares with the guest, and where it appears in the root.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The device's tag (9p `mount_tag`, virtio-fs tag), as the VMM was told.
    pub tag: String,
    /// Absolute path inside the command root; created when missing.
    pub guest_path: String,
    /// Mounted read-only (the VMM enforces it too).
    #[serde(default)]
    pub read_only: bool,
    pub fs: ShareFs,
}

/// How the VMM shares a host directory.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareFs {
    /// 9P2000.L over virtio (QEMU's `virtio-9p-device`).
    #[serde(rename = "9p")]
    NineP,
    /// virtio-fs (libkrun's built-in server).
    #[serde(rename = "virtiofs")]
    Virtiofs,
}

/// The guest side of the VM network: a static address on the one virtio-net interface, a
/// default route through the gateway, and the resolver written to `/etc/resolv.conf`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct NetworkSetup {
    /// The interface's MAC address, which names it among the guest's interfaces.
    pub mac: [u8; 6],
    pub address: std::net::Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: std::net::Ipv4Addr,
    pub nameservers: Vec<std::net::Ipv4Addr>,
    pub mtu: u16,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Lower {
    /// The built-in userland that ships in the agent's initramfs (busybox).
    Bare,
    /// A read-only filesystem image on the disk with this serial.
    Disk { serial: String, fstype: String },
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Upper {
    /// Changes live in guest memory and vanish with the VM.
    Tmpfs,
    /// Changes persist on the ext4 disk with this serial (grown to the disk's size first).
    Disk { serial: String },
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtySize {
    pub rows: u16,
    pub cols: u16,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct Exec {
    /// Program and arguments. `argv[0]` is looked up in `PATH` (from `env`) when it has no `/`.
    pub argv: Vec<String>,
    /// The complete environment, as `KEY=VALUE`.
    pub env: Vec<String>,
    /// Working directory; created if missing, as `docker run -w` does. Default `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// `name`, `uid`, `name:group` or `uid:gid`, resolved in the guest root's `/etc/passwd`
    /// and `/etc/group`. Default root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Run on a new PTY of this size (stdout carries the terminal output, no stderr).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<TtySize>,
    /// Whether the host will send stdin. Without it the process reads `/dev/null`.
    #[serde(default)]
    pub stdin: bool,
    /// Kill the process group this many milliseconds after start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// What a copy carries: one regular file's bytes, or a directory tree as a tar stream.
///
/// The tar stream holds the directory's contents (not the directory itself) with relative
/// paths: directories, regular files, symlinks and hardlinks to earlier entries only.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CopyKind {
    File,
    Dir,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CopyOut {
    /// Absolute path inside the guest root.
    pub path: String,
    /// Whether a directory may be copied (`cp -r`); without it a directory is an error.
    #[serde(default)]
    pub recursive: bool,
    /// A whole-filesystem snapshot (`pack create --from-vm`): stay on the directory's own
    /// filesystem (other mounts appear as empty directories), and keep device nodes and
    /// FIFOs, owners included, instead of refusing them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub snapshot: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CopyIn {
    /// Absolute path inside the guest root. When it is an existing directory the copy goes
    /// inside it, as `name`; otherwise the copy is created (or replaced) at `path`.
    pub path: String,
    /// The source's file name.
    pub name: String,
    pub kind: CopyKind,
    /// Permission bits of the file, or of the directory itself.
    pub mode: u32,
    /// The file's size: the agent refuses a stream of any other length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
pub struct Copying {
    pub kind: CopyKind,
    /// Permission bits of the file, or of the directory itself.
    pub mode: u32,
    /// The file's size (absent for a directory's tar stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExitStatus {
    /// Exit code when the process exited normally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// Signal number when the process was killed by a signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// The process was killed because its timeout expired.
    #[serde(default)]
    pub timed_out: bool,
}

impl ExitStatus {
    /// The status a shell would report: the code, or 128 + the signal number.
    pub fn shell_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => 255,
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ErrorReply {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The command (or a file) does not exist.
    NotFound,
    /// The command exists but cannot be executed, or access was denied.
    PermissionDenied,
    /// The request was malformed or made no sense in this state.
    InvalidRequest,
    /// The agent does not support this request.
    Unsupported,
    /// Anything else that went wrong in the guest.
    Io,
}

impl ErrorKind {
    /// The exit status a shell uses for this failure to start a command (127 not found, 126
    /// cannot execute), so scripts see what they would see locally.
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::NotFound => 127,
            ErrorKind::PermissionDenied => 126,
            _ => 125,
        }
    }
}
