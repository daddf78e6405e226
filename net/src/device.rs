//! The guest's NIC as smoltcp sees it: two frame queues. Frames travel between the VMM and
//! this process over a unix stream socket, each prefixed with its length as a 32-bit
//! big-endian number (QEMU's `-netdev stream` and libkrun's `krun_add_net_unixstream`
//! both speak this).

use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use std::collections::VecDeque;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

/// Frames waiting for smoltcp, and frames smoltcp produced for the guest.
pub struct Queues {
    pub rx: VecDeque<Vec<u8>>,
    pub tx: Vec<Vec<u8>>,
    mtu: usize,
}

impl Queues {
    pub fn new(mtu: usize) -> Queues {
        Queues {
            rx: VecDeque::new(),
            tx: Vec::new(),
            mtu,
        }
    }

    /// Moves the frames for the guest into `out`, each with its length prefix.
    pub fn drain_tx(&mut self, out: &mut Vec<u8>) {
        for f in self.tx.drain(..) {
            out.extend_from_slice(&(f.len() as u32).to_be_bytes());
            out.extend_from_slice(&f);
        }
    }
}

pub struct RxToken(Vec<u8>);
pub struct TxToken<'a>(&'a mut Vec<Vec<u8>>);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        self.0.push(buf);
        r
    }
}

impl Device for Queues {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _: Instant) -> Option<(RxToken, TxToken<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((RxToken(frame), TxToken(&mut self.tx)))
    }

    fn transmit(&mut self, _: Instant) -> Option<TxToken<'_>> {
        Some(TxToken(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.mtu + crate::frame::ETHERNET_HEADER;
        caps
    }
}

/// Reads length-prefixed frames from the VMM until it goes away. A frame longer than
/// `max` means the stream is not what we think it is: stop.
pub async fn read_frames<R: AsyncRead + Unpin>(mut r: R, max: usize, out: mpsc::Sender<Vec<u8>>) {
    loop {
        let mut len = [0u8; 4];
        if r.read_exact(&mut len).await.is_err() {
            return;
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > max {
            return;
        }
        let mut frame = vec![0u8; len];
        if r.read_exact(&mut frame).await.is_err() || out.send(frame).await.is_err() {
            return;
        }
    }
}
