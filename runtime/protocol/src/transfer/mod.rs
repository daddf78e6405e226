//! Copying files and directory trees over a stream, the same way on both ends.
//!
//! The filesystem work (reading files, writing tar, extracting, fsync, rename) is blocking
//! code; the stream is async. [`send_from`] and [`receive_into`] run the blocking side on a
//! blocking thread and pass data through a small bounded queue, so memory stays bounded by
//! the stream's flow-control window plus [`QUEUE`] chunks, whatever the size of the copy.
//! Dropping either future abandons the copy: the blocking side sees its queue close, fails,
//! and its [`fs::Staged`] result removes what it wrote.

pub mod fs;

use crate::frame::{Channel, MAX_PAYLOAD};
use crate::message::Message;
use crate::mux::{Event, MuxError, StreamReceiver, StreamSender};
use std::io::{self, BufRead, Read, Write};
use tokio::sync::mpsc;

/// Chunks of this size cross between the blocking side and the stream (one frame each).
pub const CHUNK: usize = MAX_PAYLOAD;
/// Chunks queued between the blocking side and the stream.
pub const QUEUE: usize = 4;

/// Why a transfer over a stream stopped before its end.
#[derive(Debug)]
pub enum PumpError {
    /// The peer sent a control message instead (an `error`, a `cancel`).
    Control(Box<Message>),
    /// The local filesystem side failed.
    Local(io::Error),
    /// The connection closed.
    Closed(MuxError),
}

impl From<MuxError> for PumpError {
    fn from(e: MuxError) -> Self {
        PumpError::Closed(e)
    }
}

/// A `Write` for blocking code: whole chunks go to the async side. A write fails once the
/// async side has gone (the copy was abandoned).
pub struct ChunkWriter {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx.blocking_send(chunk).map_err(|_| abandoned())
    }
}

/// A `Read` (and `BufRead`) for blocking code over the chunks the async side receives. An
/// empty chunk marks the end; the queue closing without it means the copy was abandoned.
pub struct ChunkReader {
    rx: mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
    ended: bool,
}

impl BufRead for ChunkReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.pos == self.chunk.len() && !self.ended {
            match self.rx.blocking_recv() {
                Some(c) if c.is_empty() => self.ended = true,
                Some(c) => (self.chunk, self.pos) = (c, 0),
                None => return Err(abandoned()),
            }
        }
        Ok(&self.chunk[self.pos..])
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
    }
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// Not `Interrupted`: `write_all` and `read_exact` retry on that kind, forever here.
fn abandoned() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the copy was abandoned")
}

/// Runs `produce` on a blocking thread and sends what it writes as data on `channel`, then
/// eof. Any control message from the peer meanwhile (its `error`, a `cancel`) stops the
/// transfer. `progress` gets the bytes of each chunk sent.
pub async fn send_from<T: Send + 'static>(
    tx: &StreamSender,
    rx: &mut StreamReceiver,
    channel: Channel,
    produce: impl FnOnce(&mut ChunkWriter) -> io::Result<T> + Send + 'static,
    mut progress: impl FnMut(u64),
) -> Result<T, PumpError> {
    let (chunk_tx, mut chunks) = mpsc::channel(QUEUE);
    let job = tokio::task::spawn_blocking(move || {
        let mut w = ChunkWriter {
            tx: chunk_tx,
            buf: Vec::with_capacity(CHUNK),
        };
        let value = produce(&mut w)?;
        w.flush()?;
        Ok(value)
    });
    let pump = async {
        while let Some(chunk) = chunks.recv().await {
            tx.send_data(channel, &chunk).await?;
            progress(chunk.len() as u64);
        }
        Ok::<_, PumpError>(())
    };
    tokio::select! {
        r = pump => r?,
        e = interruption(rx) => return Err(e),
    }
    let value = joined(job.await)?;
    tx.send_eof(channel)?;
    Ok(value)
}

/// Feeds the data the peer sends on `channel`, up to its eof, to `consume` running on a
/// blocking thread, and returns what it returns. Any control message from the peer before
/// the eof stops the transfer. `progress` gets the bytes of each chunk received.
pub async fn receive_into<T: Send + 'static>(
    rx: &mut StreamReceiver,
    channel: Channel,
    consume: impl FnOnce(&mut ChunkReader) -> io::Result<T> + Send + 'static,
    mut progress: impl FnMut(u64),
) -> Result<T, PumpError> {
    let (chunk_tx, chunks) = mpsc::channel(QUEUE);
    let mut job = tokio::task::spawn_blocking(move || {
        consume(&mut ChunkReader {
            rx: chunks,
            chunk: Vec::new(),
            pos: 0,
            ended: false,
        })
    });
    // The consumer may finish before the eof (a tar stream ends before its padding) or fail
    // early; either way the rest of the stream is still drained, so the copy is only
    // complete once the sender has finished too.
    let feed = async {
        loop {
            match rx.recv().await {
                Some(Event::Data(ch, data)) if ch == channel => {
                    progress(data.len() as u64);
                    let _ = chunk_tx.send(data).await;
                }
                Some(Event::Eof(ch)) if ch == channel => {
                    let _ = chunk_tx.send(Vec::new()).await;
                    return Ok(());
                }
                Some(Event::Control(m)) => return Err(PumpError::Control(Box::new(m))),
                Some(_) => {}
                None => {
                    return Err(PumpError::Closed(MuxError::Closed(
                        "the stream ended before the copy did".into(),
                    )));
                }
            }
        }
    };
    tokio::pin!(feed);
    let mut fed = false;
    let mut value = None;
    while !fed || value.is_none() {
        tokio::select! {
            r = &mut feed, if !fed => { r?; fed = true; }
            j = &mut job, if value.is_none() => value = Some(joined(j)?),
        }
    }
    Ok(value.expect("loop ends with a value"))
}

/// Waits for the first control message (or the end of the stream) on `rx`.
async fn interruption(rx: &mut StreamReceiver) -> PumpError {
    loop {
        match rx.recv().await {
            Some(Event::Control(m)) => return PumpError::Control(Box::new(m)),
            Some(_) => {}
            None => {
                return PumpError::Closed(MuxError::Closed(
                    "the stream ended before the copy did".into(),
                ));
            }
        }
    }
}

fn joined<T>(r: Result<io::Result<T>, tokio::task::JoinError>) -> Result<T, PumpError> {
    match r {
        Ok(r) => r.map_err(PumpError::Local),
        Err(e) => Err(PumpError::Local(io::Error::other(format!(
            "the copy's worker thread failed: {e}"
        )))),
    }
}
