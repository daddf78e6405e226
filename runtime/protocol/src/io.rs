//! Reading and writing whole frames on an async byte stream.

use crate::frame::{Frame, FrameError, HEADER_LEN};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

#[derive(Debug, Error)]
pub enum ReadError {
    #[error("reading from the channel: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Reads frames from a byte stream, buffering reads so small frames cost one syscall per batch.
pub struct FrameReader<R> {
    inner: BufReader<R>,
    payload: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(reader: R) -> Self {
        FrameReader {
            inner: BufReader::with_capacity(256 * 1024, reader),
            payload: Vec::new(),
        }
    }

    /// The next frame, or `None` when the peer closed the channel cleanly between frames.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, ReadError> {
        let mut header = [0u8; HEADER_LEN];
        let got = read_full(&mut self.inner, &mut header).await?;
        if got == 0 {
            return Ok(None);
        }
        if got < HEADER_LEN {
            return Err(FrameError::Truncated {
                got,
                want: HEADER_LEN,
            }
            .into());
        }
        let len = Frame::payload_len(&header)?;
        self.payload.resize(len, 0);
        let got = read_full(&mut self.inner, &mut self.payload).await?;
        if got < len {
            return Err(FrameError::Truncated {
                got: HEADER_LEN + got,
                want: HEADER_LEN + len,
            }
            .into());
        }
        Ok(Some(Frame::from_parts(&header, &self.payload)?))
    }
}

/// Like `read_exact`, but reports how much was read when the stream ends early.
async fn read_full<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]).await? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Writes one frame and flushes: for handshakes and other unbatched writers.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> std::io::Result<()> {
    w.write_all(&frame.to_bytes()).await?;
    w.flush().await
}
