//! The frame codec: how bytes on the channel become [`Frame`]s and back.
//!
//! Every frame starts with a 10-byte header, all integers big-endian:
//!
//! ```text
//! 0      4      5         6          10
//! +------+------+---------+----------+-----------------+
//! | len  | kind | channel | stream   | payload ...     |
//! | u32  | u8   | u8      | u32      | len - 6 bytes   |
//! +------+------+---------+----------+-----------------+
//! ```
//!
//! `len` counts the bytes after itself. See `docs/PROTOCOL.md` for the full specification.

use crate::message::Message;
use thiserror::Error;

/// Bytes in a frame header, including the length field.
pub const HEADER_LEN: usize = 10;
/// Header bytes counted by the length field (kind, channel, stream).
const LEN_COVERED: usize = HEADER_LEN - 4;
/// Largest payload a frame may carry. Data is split into frames of at most this size.
pub const MAX_PAYLOAD: usize = 256 * 1024;

const KIND_CONTROL: u8 = 1;
const KIND_DATA: u8 = 2;
const KIND_EOF: u8 = 3;
const KIND_WINDOW: u8 = 4;

/// A byte stream within a multiplexed stream: the standard streams of a process,
/// or the two directions of a file transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Host to guest: a process's stdin, or file contents being uploaded.
    Stdin = 0,
    /// Guest to host: a process's stdout (or PTY output), or file contents being downloaded.
    Stdout = 1,
    /// Guest to host: a process's stderr.
    Stderr = 2,
}

impl Channel {
    pub const ALL: [Channel; 3] = [Channel::Stdin, Channel::Stdout, Channel::Stderr];

    fn from_u8(v: u8) -> Option<Channel> {
        match v {
            0 => Some(Channel::Stdin),
            1 => Some(Channel::Stdout),
            2 => Some(Channel::Stderr),
            _ => None,
        }
    }

    /// Index for per-channel tables.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// What a frame carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// A control message (JSON payload).
    Control(Message),
    /// Bytes on a channel. Never empty.
    Data(Channel, Vec<u8>),
    /// The sender will send no more data on this channel.
    Eof(Channel),
    /// The receiver has consumed `increment` more bytes of this channel: the sender may send them.
    Window(Channel, u32),
}

/// One frame: a body addressed to a stream. Stream 0 is the connection itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub stream: u32,
    pub body: Body,
}

/// Why bytes could not be decoded into a frame. Any of these ends the connection:
/// after a malformed frame the peer's framing can no longer be trusted.
#[derive(Debug, Error, PartialEq)]
pub enum FrameError {
    #[error("frame length {0} is shorter than the {LEN_COVERED}-byte header it must cover")]
    LengthTooShort(u32),
    #[error("frame payload of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    #[error("unknown channel {channel} in a {kind} frame")]
    UnknownChannel { kind: &'static str, channel: u8 },
    #[error("a control frame must use channel 0, found {0}")]
    ControlChannel(u8),
    #[error("{0} frame on stream 0: stream 0 carries only control messages")]
    StreamZero(&'static str),
    #[error("empty data frame on stream {0}")]
    EmptyData(u32),
    #[error("eof frame with a {0}-byte payload (must be empty)")]
    EofPayload(usize),
    #[error("window frame payload must be 4 bytes, found {0}")]
    WindowPayload(usize),
    #[error("window increment of 0 on stream {0}")]
    ZeroWindow(u32),
    #[error("bad control message on stream {stream}: {reason}")]
    BadControl { stream: u32, reason: String },
    #[error("connection closed in the middle of a frame ({got} of {want} bytes)")]
    Truncated { got: usize, want: usize },
}

impl Frame {
    pub fn control(stream: u32, message: Message) -> Frame {
        Frame {
            stream,
            body: Body::Control(message),
        }
    }

    /// Appends the encoded frame to `out`.
    ///
    /// Panics if a data payload is empty or larger than [`MAX_PAYLOAD`]: callers split data
    /// before framing it, so that is a bug, not an input error.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; HEADER_LEN]);
        let (kind, channel) = match &self.body {
            Body::Control(msg) => {
                serde_json::to_writer(&mut *out, msg).expect("control messages always serialize");
                (KIND_CONTROL, 0)
            }
            Body::Data(ch, bytes) => {
                assert!(
                    !bytes.is_empty() && bytes.len() <= MAX_PAYLOAD,
                    "data frame size {}",
                    bytes.len()
                );
                out.extend_from_slice(bytes);
                (KIND_DATA, *ch as u8)
            }
            Body::Eof(ch) => (KIND_EOF, *ch as u8),
            Body::Window(ch, inc) => {
                out.extend_from_slice(&inc.to_be_bytes());
                (KIND_WINDOW, *ch as u8)
            }
        };
        let len = (out.len() - start - 4) as u32;
        let header = &mut out[start..start + HEADER_LEN];
        header[0..4].copy_from_slice(&len.to_be_bytes());
        header[4] = kind;
        header[5] = channel;
        header[6..10].copy_from_slice(&self.stream.to_be_bytes());
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }

    /// Decodes one frame from the front of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` does not yet hold a whole frame, or the frame and the
    /// number of bytes it used. The length is checked before the payload is awaited, so a
    /// hostile length cannot make a reader buffer more than [`MAX_PAYLOAD`].
    pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
        let Some(header) = buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let header: &[u8; HEADER_LEN] = header.try_into().expect("sliced to HEADER_LEN");
        let payload_len = Self::payload_len(header)?;
        let total = HEADER_LEN + payload_len;
        let Some(payload) = buf.get(HEADER_LEN..total) else {
            return Ok(None);
        };
        Ok(Some((Self::from_parts(header, payload)?, total)))
    }

    /// Validates a header and returns the payload length it announces.
    pub fn payload_len(header: &[u8; HEADER_LEN]) -> Result<usize, FrameError> {
        let len = u32::from_be_bytes(header[0..4].try_into().unwrap());
        let payload = (len as usize)
            .checked_sub(LEN_COVERED)
            .ok_or(FrameError::LengthTooShort(len))?;
        // Control messages get the same bound: they are small, and one limit is one rule.
        if payload > MAX_PAYLOAD {
            return Err(FrameError::TooLarge {
                len: payload,
                max: MAX_PAYLOAD,
            });
        }
        Ok(payload)
    }

    /// Builds a frame from a header (already checked by [`Frame::payload_len`]) and its payload.
    pub fn from_parts(header: &[u8; HEADER_LEN], payload: &[u8]) -> Result<Frame, FrameError> {
        let kind = header[4];
        let channel = header[5];
        let stream = u32::from_be_bytes(header[6..10].try_into().unwrap());
        let channel_of = |kind: &'static str| {
            Channel::from_u8(channel).ok_or(FrameError::UnknownChannel { kind, channel })
        };
        let not_stream_zero = |kind: &'static str| {
            if stream == 0 {
                Err(FrameError::StreamZero(kind))
            } else {
                Ok(())
            }
        };
        let body = match kind {
            KIND_CONTROL => {
                if channel != 0 {
                    return Err(FrameError::ControlChannel(channel));
                }
                let msg = serde_json::from_slice(payload).map_err(|e| FrameError::BadControl {
                    stream,
                    reason: e.to_string(),
                })?;
                Body::Control(msg)
            }
            KIND_DATA => {
                not_stream_zero("data")?;
                let ch = channel_of("data")?;
                if payload.is_empty() {
                    return Err(FrameError::EmptyData(stream));
                }
                Body::Data(ch, payload.to_vec())
            }
            KIND_EOF => {
                not_stream_zero("eof")?;
                let ch = channel_of("eof")?;
                if !payload.is_empty() {
                    return Err(FrameError::EofPayload(payload.len()));
                }
                Body::Eof(ch)
            }
            KIND_WINDOW => {
                not_stream_zero("window")?;
                let ch = channel_of("window")?;
                let inc: [u8; 4] = payload
                    .try_into()
                    .map_err(|_| FrameError::WindowPayload(payload.len()))?;
                let inc = u32::from_be_bytes(inc);
                if inc == 0 {
                    return Err(FrameError::ZeroWindow(stream));
                }
                Body::Window(ch, inc)
            }
            other => return Err(FrameError::UnknownKind(other)),
        };
        Ok(Frame { stream, body })
    }
}
