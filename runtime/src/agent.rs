//! The host side of the agent protocol: handshake, then requests over the multiplexer.

use crate::trace;
use smolvm_protocol::{
    Body, ErrorReply, Exec, Frame, FrameReader, Hello, Message, Mux, MuxError, PROTOCOL, ReadError,
    Ready, Setup, Stream, VersionRange, write_frame,
};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};

#[derive(Debug, Error)]
pub enum AgentError {
    #[error("the guest agent closed the connection during the handshake")]
    HandshakeEof,
    #[error("handshake with the guest agent failed: {0}")]
    Handshake(String),
    #[error(
        "the guest agent speaks protocol versions {}..={}, this smolvm speaks {}..={}: rebuild the guest assets with ./scripts/setup",
        agent.min, agent.max, PROTOCOL.min, PROTOCOL.max
    )]
    Version { agent: VersionRange },
    #[error(transparent)]
    Connection(#[from] MuxError),
    #[error("{}", .0.message)]
    Remote(ErrorReply),
    #[error("unexpected reply from the guest agent: {0}")]
    Unexpected(String),
}

impl From<ReadError> for AgentError {
    fn from(e: ReadError) -> Self {
        AgentError::Handshake(e.to_string())
    }
}

/// A connected, handshaken agent.
pub struct AgentClient {
    mux: Mux,
    pub ready: Ready,
    /// The protocol version both sides agreed on.
    pub version: u32,
}

impl AgentClient {
    /// Runs the handshake on a fresh channel: the agent announces itself (`ready`), we pick
    /// the version and send our clock (`hello`), it confirms (`hello_ok`).
    pub async fn handshake<S>(channel: S) -> Result<AgentClient, AgentError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (r, mut w) = tokio::io::split(channel);
        let mut reader = FrameReader::new(r);
        let ready = match next_connection_message(&mut reader).await? {
            Message::Ready(r) => r,
            other => {
                return Err(AgentError::Unexpected(format!(
                    "{other:?} instead of ready"
                )));
            }
        };
        trace::mark("agent ready");
        let version = PROTOCOL
            .negotiate(ready.protocol)
            .ok_or(AgentError::Version {
                agent: ready.protocol,
            })?;
        let unix_time_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        write_frame(
            &mut w,
            &Frame::control(
                0,
                Message::Hello(Hello {
                    version,
                    unix_time_ns,
                }),
            ),
        )
        .await
        .map_err(|e| AgentError::Handshake(e.to_string()))?;
        match next_connection_message(&mut reader).await? {
            Message::HelloOk { version: v } if v == version => {}
            Message::Error(e) => return Err(AgentError::Remote(e)),
            other => {
                return Err(AgentError::Unexpected(format!(
                    "{other:?} instead of hello_ok"
                )));
            }
        }
        let (mux, _) = Mux::start(reader, w, false);
        Ok(AgentClient {
            mux,
            ready,
            version,
        })
    }

    /// Sends a request and waits for the message that ends its stream.
    async fn request(&self, message: Message) -> Result<Message, AgentError> {
        let mut stream = self.mux.open(message)?;
        while let Some(ev) = stream.recv().await {
            if let smolvm_protocol::Event::Control(m) = ev
                && m.ends_stream()
            {
                return Ok(m);
            }
        }
        Err(MuxError::Closed(self.mux.close_reason().unwrap_or_default()).into())
    }

    pub async fn setup(&self, setup: Setup) -> Result<(), AgentError> {
        match self.request(Message::Setup(setup)).await? {
            Message::Done => Ok(()),
            Message::Error(e) => Err(AgentError::Remote(e)),
            other => Err(AgentError::Unexpected(format!("{other:?}"))),
        }
    }

    pub async fn ping(&self) -> Result<(), AgentError> {
        match self.request(Message::Ping).await? {
            Message::Pong => Ok(()),
            other => Err(AgentError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Starts a command; the stream carries its `started`, output and `exit`.
    pub fn exec(&self, exec: Exec) -> Result<Stream, AgentError> {
        Ok(self.mux.open(Message::Exec(exec))?)
    }

    /// Asks the agent to flush and power off. The VM process then exits on its own.
    pub async fn shutdown(&self) -> Result<(), AgentError> {
        match self.request(Message::Shutdown).await {
            Ok(_) | Err(AgentError::Connection(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub fn mux(&self) -> &Mux {
        &self.mux
    }
}

async fn next_connection_message<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
) -> Result<Message, AgentError> {
    match reader.read_frame().await? {
        Some(Frame {
            stream: 0,
            body: Body::Control(m),
        }) => Ok(m),
        Some(other) => Err(AgentError::Unexpected(format!(
            "{other:?} during the handshake"
        ))),
        None => Err(AgentError::HandshakeEof),
    }
}
