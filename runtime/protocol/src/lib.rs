//! The smolvm host <-> guest agent protocol.
//!
//! One byte channel (virtio-serial on QEMU, vsock on libkrun) carries length-prefixed
//! [`frame`]s. Each frame belongs to a stream; stream 0 is the connection itself and carries
//! the versioned handshake, every other stream is one request (an exec, a ping, a shutdown)
//! with its data channels. The [`mux`] runs any number of streams at once with per-channel
//! flow control, so a 100 MB output arrives intact without either side buffering it whole.
//!
//! The specification is `docs/PROTOCOL.md`.

pub mod frame;
pub mod io;
pub mod message;
pub mod mux;
pub mod transfer;

pub use frame::{Body, Channel, Frame, FrameError, MAX_PAYLOAD};
pub use io::{FrameReader, ReadError, write_frame};
pub use message::*;
pub use mux::{Event, Incoming, Mux, MuxError, Stream, StreamReceiver, StreamSender};

/// The protocol versions this build speaks.
pub const PROTOCOL: VersionRange = VersionRange { min: 1, max: 2 };
/// The first version with `copy_in`, `copy_out` and `cancel`: an older agent does not know
/// those messages and would drop the connection on them.
pub const COPY_VERSION: u32 = 2;

/// The virtio-serial port name the QEMU backend gives the agent's channel.
pub const VIRTIO_PORT_NAME: &str = "smolvm.agent";
/// The vsock port the agent connects to on the host (CID 2) under libkrun.
pub const VSOCK_PORT: u32 = 1024;
