//! Many concurrent streams over one byte channel, with per-channel flow control.
//!
//! Each stream has three channels (stdin, stdout, stderr). A sender may have at most
//! [`INITIAL_WINDOW`] unacknowledged bytes in flight per channel; the receiver returns credit
//! with window frames as its consumer takes data. So a slow consumer (a full host stdout, a
//! process that does not read its stdin) stalls only its own channel, and memory on both
//! sides stays bounded by the window no matter how much data flows.

use crate::frame::{Body, Channel, Frame, MAX_PAYLOAD};
use crate::io::FrameReader;
use crate::message::Message;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};

/// Bytes a sender may have in flight per channel before it must wait for credit.
pub const INITIAL_WINDOW: u32 = 2 * 1024 * 1024;
/// Credit is returned once this much has been consumed, so window frames stay rare.
const CREDIT_BATCH: u64 = 128 * 1024;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum MuxError {
    #[error("the connection to the agent is closed: {0}")]
    Closed(String),
}

/// What a stream receives.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Control(Message),
    Data(Channel, Vec<u8>),
    Eof(Channel),
}

/// Send credit for one channel.
struct Credit {
    available: Mutex<u64>,
    notify: Notify,
}

impl Credit {
    fn new() -> Self {
        Credit {
            available: Mutex::new(INITIAL_WINDOW as u64),
            notify: Notify::new(),
        }
    }

    fn grant(&self, n: u64) {
        *self.available.lock().unwrap() += n;
        self.notify.notify_waiters();
    }
}

/// Per-stream state shared by the reader task and the stream's handles.
struct Slot {
    /// Taken (dropped) when the stream ends or the connection closes, so the receiver sees
    /// the end even though its own sender half keeps the slot alive.
    inbound: Mutex<Option<mpsc::UnboundedSender<Event>>>,
    credit: [Credit; 3],
    /// Bytes received per channel and not yet returned as credit (the reader adds).
    unacked: [AtomicU64; 3],
    /// Bytes the consumer has taken and not yet returned as credit (the receiver adds).
    taken: [AtomicU64; 3],
}

impl Slot {
    fn deliver(&self, ev: Event) {
        if let Some(tx) = self.inbound.lock().unwrap().as_ref() {
            let _ = tx.send(ev);
        }
    }
}

struct Shared {
    out: mpsc::UnboundedSender<Frame>,
    streams: Mutex<HashMap<u32, Arc<Slot>>>,
    next_id: AtomicU32,
    closed: AtomicBool,
    close_reason: Mutex<Option<String>>,
    /// Wakes senders waiting for credit when the connection closes.
    closed_notify: Notify,
}

impl Shared {
    fn check_open(&self) -> Result<(), MuxError> {
        if self.closed.load(Ordering::Acquire) {
            Err(MuxError::Closed(self.reason()))
        } else {
            Ok(())
        }
    }

    fn reason(&self) -> String {
        self.close_reason
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(|| "closed".into())
    }

    fn send_frame(&self, frame: Frame) -> Result<(), MuxError> {
        self.check_open()?;
        self.out
            .send(frame)
            .map_err(|_| MuxError::Closed(self.reason()))
    }

    fn close(&self, reason: String) {
        {
            let mut r = self.close_reason.lock().unwrap();
            if r.is_none() {
                *r = Some(reason);
            }
        }
        self.closed.store(true, Ordering::Release);
        // Ending every stream: each receiver sees the end, each waiting sender wakes up.
        let slots: Vec<_> = self
            .streams
            .lock()
            .unwrap()
            .drain()
            .map(|(_, s)| s)
            .collect();
        for slot in &slots {
            slot.inbound.lock().unwrap().take();
            for c in &slot.credit {
                c.notify.notify_waiters();
            }
        }
        self.closed_notify.notify_waiters();
    }

    fn new_slot(&self, id: u32) -> (Arc<Slot>, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let slot = Arc::new(Slot {
            inbound: Mutex::new(Some(tx)),
            credit: [Credit::new(), Credit::new(), Credit::new()],
            unacked: Default::default(),
            taken: Default::default(),
        });
        self.streams.lock().unwrap().insert(id, slot.clone());
        (slot, rx)
    }

    fn remove(&self, id: u32) {
        if let Some(slot) = self.streams.lock().unwrap().remove(&id) {
            slot.inbound.lock().unwrap().take();
        }
    }
}

/// A multiplexed connection. Cloning gives another handle to the same connection.
#[derive(Clone)]
pub struct Mux {
    shared: Arc<Shared>,
}

/// A new stream opened by the peer, with its first (request) message.
pub struct Incoming {
    pub stream: Stream,
    pub request: Message,
}

impl Mux {
    /// Starts the reader and writer tasks on the current tokio runtime.
    ///
    /// On the host (`accept_streams == false`) streams are opened with [`Mux::open`]. In the
    /// agent, a control frame on an unknown stream opens it, and arrives on the returned
    /// receiver.
    pub fn start<R, W>(
        reader: FrameReader<R>,
        writer: W,
        accept_streams: bool,
    ) -> (Mux, mpsc::UnboundedReceiver<Incoming>)
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            out: out_tx,
            streams: Mutex::new(HashMap::new()),
            next_id: AtomicU32::new(1),
            closed: AtomicBool::new(false),
            close_reason: Mutex::new(None),
            closed_notify: Notify::new(),
        });
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        let in_tx = accept_streams.then_some(in_tx);
        tokio::spawn(write_loop(shared.clone(), writer, out_rx));
        tokio::spawn(read_loop(shared.clone(), reader, in_tx));
        (Mux { shared }, in_rx)
    }

    /// Opens a new stream with its request message.
    pub fn open(&self, request: Message) -> Result<Stream, MuxError> {
        self.shared.check_open()?;
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (slot, rx) = self.shared.new_slot(id);
        let stream = Stream {
            tx: StreamSender {
                id,
                shared: self.shared.clone(),
                slot,
            },
            rx,
        };
        stream.tx.send(request)?;
        Ok(stream)
    }

    /// Sends a control message on stream 0.
    pub fn send_connection(&self, message: Message) -> Result<(), MuxError> {
        self.shared.send_frame(Frame::control(0, message))
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Why the connection closed, once it has.
    pub fn close_reason(&self) -> Option<String> {
        self.is_closed().then(|| self.shared.reason())
    }

    /// Resolves once the connection has closed.
    pub async fn closed(&self) {
        loop {
            let notified = self.shared.closed_notify.notified();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }

    /// Closes the connection: pending frames are flushed, then the writer stops.
    pub fn close(&self, reason: &str) {
        self.shared.close(reason.to_string());
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    shared: Arc<Shared>,
    mut writer: W,
    mut out: mpsc::UnboundedReceiver<Frame>,
) {
    let mut buf = Vec::with_capacity(MAX_PAYLOAD * 2);
    loop {
        // After close, frames already queued are still written (the last `exit`, `done`).
        let frame = if shared.closed.load(Ordering::Acquire) {
            match out.try_recv() {
                Ok(f) => f,
                Err(_) => break,
            }
        } else {
            tokio::select! {
                f = out.recv() => match f { Some(f) => f, None => break },
                _ = shared.closed_notify.notified() => continue,
            }
        };
        buf.clear();
        frame.encode(&mut buf);
        // Batch whatever else is queued into the same write.
        while buf.len() < MAX_PAYLOAD * 2 {
            match out.try_recv() {
                Ok(f) => f.encode(&mut buf),
                Err(_) => break,
            }
        }
        if let Err(e) = writer.write_all(&buf).await {
            shared.close(format!("write failed: {e}"));
            return;
        }
        if out.is_empty()
            && let Err(e) = writer.flush().await
        {
            shared.close(format!("write failed: {e}"));
            return;
        }
    }
    let _ = writer.flush().await;
    let _ = writer.shutdown().await;
}

async fn read_loop<R: AsyncRead + Unpin>(
    shared: Arc<Shared>,
    mut reader: FrameReader<R>,
    incoming: Option<mpsc::UnboundedSender<Incoming>>,
) {
    let reason = loop {
        let frame = match reader.read_frame().await {
            Ok(Some(f)) => f,
            Ok(None) => break "the peer closed the connection".to_string(),
            Err(e) => break e.to_string(),
        };
        if let Err(e) = dispatch(&shared, frame, incoming.as_ref()) {
            break e;
        }
    };
    shared.close(reason);
}

/// Routes one frame. An `Err` is a protocol violation that ends the connection.
fn dispatch(
    shared: &Arc<Shared>,
    frame: Frame,
    incoming: Option<&mpsc::UnboundedSender<Incoming>>,
) -> Result<(), String> {
    let slot = shared.streams.lock().unwrap().get(&frame.stream).cloned();
    if frame.stream == 0 {
        // Connection-level messages after the handshake: none are defined yet; ignore, so a
        // newer peer can add some.
        return Ok(());
    }
    match (frame.body, slot) {
        (Body::Control(msg), Some(slot)) => {
            let ends = msg.ends_stream() && incoming.is_none();
            slot.deliver(Event::Control(msg));
            if ends {
                shared.remove(frame.stream);
            }
        }
        (Body::Control(msg), None) => {
            if let Some(incoming) = incoming {
                if frame.stream < shared.next_id.load(Ordering::Relaxed) {
                    // A stream that already ended: a late signal or resize. Ignore it.
                    return Ok(());
                }
                shared.next_id.store(frame.stream + 1, Ordering::Relaxed);
                let (slot, rx) = shared.new_slot(frame.stream);
                let stream = Stream {
                    tx: StreamSender {
                        id: frame.stream,
                        shared: shared.clone(),
                        slot,
                    },
                    rx,
                };
                let _ = incoming.send(Incoming {
                    stream,
                    request: msg,
                });
            }
        }
        (Body::Data(ch, bytes), Some(slot)) => {
            let pending = slot.unacked[ch.index()].fetch_add(bytes.len() as u64, Ordering::AcqRel)
                + bytes.len() as u64;
            if pending > INITIAL_WINDOW as u64 {
                return Err(format!(
                    "protocol violation: stream {} sent {pending} bytes on {ch:?}, beyond its window of {INITIAL_WINDOW}",
                    frame.stream
                ));
            }
            slot.deliver(Event::Data(ch, bytes));
        }
        (Body::Eof(ch), Some(slot)) => {
            slot.deliver(Event::Eof(ch));
        }
        (Body::Window(ch, inc), Some(slot)) => slot.credit[ch.index()].grant(inc as u64),
        // Data for a stream that has ended (the consumer went away first): drop it.
        (_, None) => {}
    }
    Ok(())
}

/// One stream: the sending half plus the receiver of its events.
pub struct Stream {
    tx: StreamSender,
    rx: mpsc::UnboundedReceiver<Event>,
}

impl Stream {
    pub fn id(&self) -> u32 {
        self.tx.id
    }

    pub fn sender(&self) -> StreamSender {
        self.tx.clone()
    }

    /// Splits into a cloneable sender and the receiver.
    pub fn split(self) -> (StreamSender, StreamReceiver) {
        let id = self.tx.id;
        (
            self.tx.clone(),
            StreamReceiver {
                tx: self.tx,
                rx: self.rx,
                id,
                manual_credit: false,
            },
        )
    }

    pub fn send(&self, message: Message) -> Result<(), MuxError> {
        self.tx.send(message)
    }

    pub async fn send_data(&self, channel: Channel, data: &[u8]) -> Result<(), MuxError> {
        self.tx.send_data(channel, data).await
    }

    pub fn send_eof(&self, channel: Channel) -> Result<(), MuxError> {
        self.tx.send_eof(channel)
    }

    /// The next event, or `None` once the stream has ended or the connection closed.
    pub async fn recv(&mut self) -> Option<Event> {
        let ev = self.rx.recv().await?;
        self.tx.consumed(&ev);
        Some(ev)
    }
}

/// The receiving half of a stream.
pub struct StreamReceiver {
    tx: StreamSender,
    rx: mpsc::UnboundedReceiver<Event>,
    id: u32,
    manual_credit: bool,
}

impl StreamReceiver {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The next event, or `None` once the stream has ended or the connection closed.
    /// Taking data returns its credit to the peer, unless [`StreamReceiver::manual_credit`]
    /// was chosen.
    pub async fn recv(&mut self) -> Option<Event> {
        let ev = self.rx.recv().await?;
        if !self.manual_credit {
            self.tx.consumed(&ev);
        }
        Some(ev)
    }

    /// From now on credit is returned only by [`StreamReceiver::credit`]: for consumers that
    /// queue data themselves (a process's stdin that is not being read) while still
    /// reacting to control messages behind it.
    pub fn manual_credit(&mut self) {
        self.manual_credit = true;
    }

    /// Returns credit for `n` bytes of `channel` that the consumer has finished with.
    pub fn credit(&self, channel: Channel, n: usize) {
        self.tx.credit(channel, n as u64);
    }
}

/// The sending half of a stream. Clones send on the same stream.
#[derive(Clone)]
pub struct StreamSender {
    id: u32,
    shared: Arc<Shared>,
    slot: Arc<Slot>,
}

impl StreamSender {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Sends a control message. A message that ends the stream also forgets it locally.
    pub fn send(&self, message: Message) -> Result<(), MuxError> {
        let ends = message.ends_stream();
        self.shared.send_frame(Frame::control(self.id, message))?;
        if ends {
            self.shared.remove(self.id);
        }
        Ok(())
    }

    /// Sends data, split into frames, waiting for credit as needed.
    pub async fn send_data(&self, channel: Channel, mut data: &[u8]) -> Result<(), MuxError> {
        let credit = &self.slot.credit[channel.index()];
        while !data.is_empty() {
            let n = loop {
                let notified = credit.notify.notified();
                self.shared.check_open()?;
                {
                    let mut avail = credit.available.lock().unwrap();
                    if *avail > 0 {
                        let n = (*avail).min(data.len() as u64).min(MAX_PAYLOAD as u64) as usize;
                        *avail -= n as u64;
                        break n;
                    }
                }
                notified.await;
            };
            self.shared.send_frame(Frame {
                stream: self.id,
                body: Body::Data(channel, data[..n].to_vec()),
            })?;
            data = &data[n..];
        }
        Ok(())
    }

    pub fn send_eof(&self, channel: Channel) -> Result<(), MuxError> {
        self.shared.send_frame(Frame {
            stream: self.id,
            body: Body::Eof(channel),
        })
    }

    fn consumed(&self, ev: &Event) {
        if let Event::Data(ch, bytes) = ev {
            self.credit(*ch, bytes.len() as u64);
        }
    }

    /// Returns credit in batches of [`CREDIT_BATCH`]. The batch is smaller than the window,
    /// so a sender waiting for credit is always released.
    fn credit(&self, ch: Channel, n: u64) {
        let i = ch.index();
        let taken = self.slot.taken[i].fetch_add(n, Ordering::AcqRel) + n;
        if taken >= CREDIT_BATCH {
            self.slot.taken[i].fetch_sub(taken, Ordering::AcqRel);
            self.slot.unacked[i].fetch_sub(taken, Ordering::AcqRel);
            let _ = self.shared.send_frame(Frame {
                stream: self.id,
                body: Body::Window(ch, taken as u32),
            });
        }
    }
}
