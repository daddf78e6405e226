//! smolvm's VM runtime: the backends that run microVMs (libkrun, QEMU), the guest assets
//! they boot, and the host side of the agent protocol.
//!
//! ```text
//! Vm::boot(spec) ── backend::select ── VMM process (qemu / `smolvm __vmm-krun`)
//!       │                                  │ virtio-serial / vsock
//!       └── AgentClient ◄──── unix socket ─┘────► guest agent (PID 1)
//! ```

pub mod agent;
pub mod assets;
pub mod attach;
pub mod backend;
pub mod copy;
pub mod fsutil;
pub mod machine;
pub mod network;
pub mod run;
pub mod rundir;
pub mod terminal;
pub mod trace;
pub mod virt;
pub mod vm;
pub mod volume;

pub use agent::{AgentClient, AgentError};
pub use assets::GuestAssets;
pub use backend::{BackendKind, Disk, Share};
pub use network::{NetworkSettings, NetworkSpec};
pub use vm::{Vm, VmError, VmSpec};

/// SHA-256 of `bytes` as lowercase hex.
pub fn digest_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
