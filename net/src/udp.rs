//! UDP: each (guest source, destination) pair gets a connected host socket, so replies come
//! only from where the guest sent to. Datagrams are relayed one by one; pairs idle for
//! [`IDLE`] are forgotten.

use crate::stack::Event;
use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub const IDLE: Duration = Duration::from_secs(60);
/// At most this many UDP pairs at once (each holds a host socket).
pub const MAX_PAIRS: usize = 1024;

struct Pair {
    socket: Arc<UdpSocket>,
    last: Instant,
    reader: JoinHandle<()>,
}

#[derive(Default)]
pub struct UdpRelay {
    pairs: HashMap<(SocketAddrV4, SocketAddr), Pair>,
}

impl UdpRelay {
    /// Sends `payload` from the guest's `guest` to `target`; replies come back as
    /// [`Event::Udp`] from `seen_as` (the address the guest sent to).
    pub fn send(
        &mut self,
        guest: SocketAddrV4,
        target: SocketAddr,
        seen_as: SocketAddrV4,
        payload: &[u8],
        events: &mpsc::UnboundedSender<Event>,
    ) -> std::io::Result<()> {
        let now = Instant::now();
        let key = (guest, target);
        if !self.pairs.contains_key(&key) {
            if self.pairs.len() >= MAX_PAIRS {
                self.expire(now);
                if self.pairs.len() >= MAX_PAIRS {
                    return Err(std::io::Error::other(format!(
                        "more than {MAX_PAIRS} UDP flows at once"
                    )));
                }
            }
            let local: SocketAddr = if target.is_ipv4() {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let std_socket = std::net::UdpSocket::bind(local)?;
            std_socket.connect(target)?;
            std_socket.set_nonblocking(true)?;
            let socket = Arc::new(UdpSocket::from_std(std_socket)?);
            let reader = tokio::spawn(read_replies(socket.clone(), guest, seen_as, events.clone()));
            self.pairs.insert(
                key,
                Pair {
                    socket,
                    last: now,
                    reader,
                },
            );
        }
        let pair = self.pairs.get_mut(&key).expect("inserted above");
        pair.last = now;
        match pair.socket.try_send(payload) {
            // A full socket buffer drops the datagram, as a congested link would.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            r => r.map(|_| ()),
        }
    }

    /// Forgets pairs idle for [`IDLE`].
    pub fn expire(&mut self, now: Instant) {
        self.pairs.retain(|_, p| {
            let keep = now.duration_since(p.last) < IDLE;
            if !keep {
                p.reader.abort();
            }
            keep
        });
    }
}

async fn read_replies(
    socket: Arc<UdpSocket>,
    guest: SocketAddrV4,
    seen_as: SocketAddrV4,
    events: mpsc::UnboundedSender<Event>,
) {
    let mut buf = vec![0u8; 65536];
    // Errors (an ICMP port unreachable) end nothing: the guest may send again.
    loop {
        if let Ok(n) = socket.recv(&mut buf).await {
            let event = Event::Udp {
                guest,
                from: seen_as,
                payload: buf[..n].to_vec(),
            };
            if events.send(event).is_err() {
                return;
            }
        }
    }
}
