//! The host side of one TCP flow: a task writing the guest's bytes to a host stream and a
//! task reading the host's bytes for the guest, with bounded buffers both ways.
//!
//! Guest -> host: the stack moves bytes out of the smoltcp socket only while the writer's
//! channel has room ([`TO_HOST_CHUNKS`] chunks), so a slow host reader closes the guest's
//! TCP window. Host -> guest: the reader needs credits (bytes) before it reads, and the stack
//! returns them only as smoltcp accepts the bytes, so a slow guest reader stops the host
//! socket being read (and the host's TCP window closes). Either way a flow holds at most its
//! smoltcp buffers plus [`CREDITS`] plus [`TO_HOST_CHUNKS`] x [`CHUNK`] bytes.

use crate::stack::Event;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

/// The most bytes moved in one read or one channel message.
pub const CHUNK: usize = 16 * 1024;
/// Host bytes read but not yet taken by smoltcp, per flow.
pub const CREDITS: usize = 128 * 1024;
/// Guest bytes taken from smoltcp but not yet written to the host, in chunks, per flow.
pub const TO_HOST_CHUNKS: usize = 4;

/// What the host end of a flow is.
pub enum HostStream {
    /// A socket: a remote server, the host's loopback, or a port-forward client.
    Tcp(TcpStream),
    /// The stack's own DNS server (over TCP).
    Dns(DuplexStream),
}

/// The stack's handles on the host side of a flow.
pub struct HostSide {
    /// `None` once the guest finished sending: the writer then shuts the host's side down.
    pub to_host: Option<mpsc::Sender<Vec<u8>>>,
    pub credits: Arc<Semaphore>,
    reset: Option<oneshot::Sender<()>>,
    reader: JoinHandle<()>,
}

impl HostSide {
    /// Ends the host side: with a reset (RST for a socket) unless both directions ended
    /// cleanly.
    pub fn finish(mut self, reset: bool) {
        if reset && let Some(r) = self.reset.take() {
            let _ = r.send(());
        }
        self.reader.abort();
        self.credits.close();
    }
}

/// Aborting a host stream.
trait Reset {
    fn reset(&self);
}

impl Reset for OwnedWriteHalf {
    fn reset(&self) {
        // Closing with a zero linger time sends RST rather than FIN.
        let _ = self.as_ref().set_zero_linger();
    }
}

impl Reset for WriteHalf<DuplexStream> {
    fn reset(&self) {}
}

/// Starts the two tasks of flow `id`.
pub fn spawn(
    stream: HostStream,
    id: u64,
    events: mpsc::UnboundedSender<Event>,
    wake: Arc<Notify>,
) -> HostSide {
    let (tx, rx) = mpsc::channel(TO_HOST_CHUNKS);
    let (reset_tx, reset_rx) = oneshot::channel();
    let credits = Arc::new(Semaphore::new(CREDITS));
    let reader = match stream {
        HostStream::Tcp(s) => {
            let (r, w) = s.into_split();
            tokio::spawn(write_to_host(w, rx, reset_rx, id, events.clone(), wake));
            tokio::spawn(read_from_host(r, credits.clone(), id, events))
        }
        HostStream::Dns(s) => {
            let (r, w) = tokio::io::split(s);
            tokio::spawn(write_to_host(w, rx, reset_rx, id, events.clone(), wake));
            tokio::spawn(read_from_host(r, credits.clone(), id, events))
        }
    };
    HostSide {
        to_host: Some(tx),
        credits,
        reset: Some(reset_tx),
        reader,
    }
}

async fn write_to_host<W: AsyncWrite + Unpin + Reset>(
    mut w: W,
    mut rx: mpsc::Receiver<Vec<u8>>,
    mut reset: oneshot::Receiver<()>,
    id: u64,
    events: mpsc::UnboundedSender<Event>,
    wake: Arc<Notify>,
) {
    loop {
        tokio::select! {
            biased;
            r = &mut reset => {
                if r.is_ok() {
                    w.reset();
                }
                return;
            }
            chunk = rx.recv() => match chunk {
                Some(c) => {
                    if w.write_all(&c).await.is_err() {
                        let _ = events.send(Event::HostReset { flow: id });
                        return;
                    }
                    // Room in the channel: the stack may take more from the guest.
                    wake.notify_one();
                }
                None => {
                    // The guest sent FIN: half-close towards the host, then stay until the
                    // flow ends in case it ends with a reset.
                    let _ = w.shutdown().await;
                    if reset.await.is_ok() {
                        w.reset();
                    }
                    return;
                }
            }
        }
    }
}

async fn read_from_host<R: AsyncRead + Unpin>(
    mut r: R,
    credits: Arc<Semaphore>,
    id: u64,
    events: mpsc::UnboundedSender<Event>,
) {
    loop {
        let Ok(permit) = credits.acquire_many(CHUNK as u32).await else {
            return;
        };
        let mut buf = vec![0u8; CHUNK];
        let event = match r.read(&mut buf).await {
            Ok(0) => Event::HostEof { flow: id },
            Ok(n) => {
                // The stack gives back the credits for these n bytes as smoltcp takes them.
                permit.forget();
                credits.add_permits(CHUNK - n);
                buf.truncate(n);
                Event::HostData {
                    flow: id,
                    data: buf,
                }
            }
            Err(_) => Event::HostReset { flow: id },
        };
        let last = !matches!(event, Event::HostData { .. });
        if events.send(event).is_err() || last {
            return;
        }
    }
}
