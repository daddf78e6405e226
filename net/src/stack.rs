//! The stack: one task that owns the smoltcp interface, feeds it the guest's frames, and
//! moves bytes between smoltcp sockets and the host side of each flow.
//!
//! smoltcp runs with AnyIP and a default route through its own address, so it accepts
//! traffic to any destination: each guest connection is terminated here and relayed from a
//! host socket. A guest SYN is held until the policy allows it and the host connection is
//! up; only then is a socket listening on its destination, and the SYN is handed to
//! smoltcp. A refused or failed connection meets no socket, so smoltcp answers RST.

use crate::config::{GATEWAY_MAC, MTU, NetConfig, Subnet};
use crate::device::{self, Queues};
use crate::dns::{self, DnsService};
use crate::frame::{self, Frame};
use crate::log::Log;
use crate::policy::{Destination, Policy};
use crate::relay::{self, CHUNK, HostSide, HostStream};
use crate::udp::UdpRelay;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp::{self, State};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, IpListenEndpoint};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{Notify, mpsc};

/// smoltcp's buffers per TCP socket, each way (its window is what is free of these).
const SOCKET_BUFFER: usize = 256 * 1024;
/// How long a connection to a host destination may take before the guest gets RST.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// The guest's frames waiting for the stack.
const FRAME_QUEUE: usize = 256;
/// TCP connections (open or being opened) a guest may have at once; each holds host sockets
/// and up to ~0.7 MiB of buffers.
const MAX_FLOWS: usize = 4096;
/// Source ports for connections the stack opens to the guest (port forwards).
const EPHEMERAL: std::ops::RangeInclusive<u16> = 49152..=65535;

/// A guest connection: (guest address, destination).
type FlowKey = (SocketAddrV4, SocketAddrV4);

/// What the host-side tasks tell the stack.
pub enum Event {
    /// The host connection for a held SYN is up (or failed).
    Connected {
        key: FlowKey,
        stream: std::io::Result<HostStream>,
    },
    /// A client connected to a forwarded port.
    Accepted {
        guest_port: u16,
        stream: TcpStream,
    },
    HostData {
        flow: u64,
        data: Vec<u8>,
    },
    HostEof {
        flow: u64,
    },
    HostReset {
        flow: u64,
    },
    /// A datagram for the guest.
    Udp {
        guest: SocketAddrV4,
        from: SocketAddrV4,
        payload: Vec<u8>,
    },
}

struct Flow {
    handle: SocketHandle,
    key: Option<FlowKey>,
    host: HostSide,
    /// Host bytes smoltcp has not taken yet.
    pending: Vec<u8>,
    host_eof: bool,
    fin_sent: bool,
}

pub struct Stack {
    iface: Interface,
    device: Queues,
    sockets: SocketSet<'static>,
    subnet: Subnet,
    policy: Arc<Policy>,
    dns: Arc<DnsService>,
    log: Log,
    flows: HashMap<u64, Flow>,
    by_key: HashMap<FlowKey, u64>,
    held: HashMap<FlowKey, Vec<u8>>,
    udp: UdpRelay,
    guest_mac: Option<EthernetAddress>,
    next_flow: u64,
    next_port: u16,
    events_tx: mpsc::UnboundedSender<Event>,
    events: mpsc::UnboundedReceiver<Event>,
    wake: Arc<Notify>,
    epoch: Instant,
}

impl Stack {
    pub fn new(
        config: &NetConfig,
        policy: Arc<Policy>,
        log: Log,
        events_tx: mpsc::UnboundedSender<Event>,
        events: mpsc::UnboundedReceiver<Event>,
    ) -> Stack {
        let subnet = config.subnet;
        let mut device = Queues::new(MTU);
        let epoch = Instant::now();
        let mut iface = Interface::new(
            Config::new(HardwareAddress::Ethernet(GATEWAY_MAC)),
            &mut device,
            smoltcp::time::Instant::ZERO,
        );
        let gateway = subnet.gateway();
        iface.update_ip_addrs(|addrs| {
            addrs
                .push(IpCidr::new(gateway.into(), subnet.prefix))
                .expect("one address fits");
        });
        // AnyIP: accept packets for every destination routed through our own address.
        iface
            .routes_mut()
            .add_default_ipv4_route(gateway)
            .expect("one route fits");
        iface.set_any_ip(true);
        let dns = Arc::new(DnsService {
            policy: policy.clone(),
            gateway,
            upstreams: config.dns_upstreams.clone(),
            log: log.clone(),
        });
        Stack {
            iface,
            device,
            sockets: SocketSet::new(Vec::new()),
            subnet,
            policy,
            dns,
            log,
            flows: HashMap::new(),
            by_key: HashMap::new(),
            held: HashMap::new(),
            udp: UdpRelay::default(),
            guest_mac: None,
            next_flow: 0,
            next_port: *EPHEMERAL.start(),
            events_tx,
            events,
            wake: Arc::new(Notify::new()),
            epoch,
        }
    }

    fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    fn poll(&mut self) {
        let now = self.now();
        self.iface.poll(now, &mut self.device, &mut self.sockets);
    }

    /// Runs until the VMM closes its end.
    pub async fn run(mut self, vmm: UnixStream) {
        let (rd, mut wr) = vmm.into_split();
        let (frames_tx, mut frames) = mpsc::channel(FRAME_QUEUE);
        // The largest frame QEMU or libkrun sends is 64 KiB plus headers.
        tokio::spawn(device::read_frames(rd, 70 * 1024, frames_tx));
        let mut sweep = tokio::time::interval(Duration::from_secs(10));
        let mut out = Vec::new();
        loop {
            self.poll();
            self.service_flows();
            self.poll();
            if !self.device.tx.is_empty() {
                out.clear();
                self.device.drain_tx(&mut out);
                if wr.write_all(&out).await.is_err() {
                    return;
                }
            }
            let delay = self
                .iface
                .poll_delay(self.now(), &self.sockets)
                .map(|d| Duration::from_micros(d.total_micros()))
                .unwrap_or(Duration::from_secs(60));
            tokio::select! {
                frame = frames.recv() => match frame {
                    Some(f) => self.on_frame(f),
                    None => return,
                },
                Some(event) = self.events.recv() => self.on_event(event),
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(delay) => {}
                _ = sweep.tick() => self.udp.expire(Instant::now()),
            }
            // Take what else is ready without waiting, so one poll serves many frames.
            for _ in 0..64 {
                match frames.try_recv() {
                    Ok(f) => self.on_frame(f),
                    Err(_) => break,
                }
            }
            for _ in 0..64 {
                match self.events.try_recv() {
                    Ok(e) => self.on_event(e),
                    Err(_) => break,
                }
            }
        }
    }

    fn on_frame(&mut self, frame: Vec<u8>) {
        if let Some(mac) = frame::source_mac(&frame) {
            self.guest_mac = Some(mac);
        }
        match frame::classify(&frame) {
            Frame::Arp | Frame::Tcp => self.device.rx.push_back(frame),
            // smoltcp answers pings to the gateway; other pings would be answered by AnyIP
            // as if every host were up, so they are dropped.
            Frame::Icmp { dst } if dst == self.subnet.gateway() => self.device.rx.push_back(frame),
            Frame::Icmp { .. } | Frame::Ignored(_) => {}
            Frame::TcpSyn { src, dst } => self.on_syn(src, dst, frame),
            Frame::Udp { src, dst, payload } => {
                let payload = payload.to_vec();
                self.on_udp(src, dst, payload, frame);
            }
        }
    }

    /// Where a guest destination really is, and what the policy calls it.
    fn target(&self, dst: SocketAddrV4) -> (SocketAddr, Destination) {
        if *dst.ip() == self.subnet.gateway() {
            (
                SocketAddr::from((Ipv4Addr::LOCALHOST, dst.port())),
                Destination::Host,
            )
        } else {
            (SocketAddr::V4(dst), Destination::Remote((*dst.ip()).into()))
        }
    }

    fn on_syn(&mut self, src: SocketAddrV4, dst: SocketAddrV4, frame: Vec<u8>) {
        let key = (src, dst);
        if self.by_key.contains_key(&key) {
            // A retransmitted SYN for a connection smoltcp already has.
            self.device.rx.push_back(frame);
            return;
        }
        if self.held.contains_key(&key) {
            return;
        }
        let events = self.events_tx.clone();
        if *dst.ip() == self.subnet.gateway() && dst.port() == 53 {
            let (near, far) = tokio::io::duplex(64 * 1024);
            tokio::spawn(dns::serve_tcp(self.dns.clone(), far));
            self.held.insert(key, frame);
            let _ = events.send(Event::Connected {
                key,
                stream: Ok(HostStream::Dns(near)),
            });
            return;
        }
        let (addr, destination) = self.target(dst);
        if let Err(why) = self
            .policy
            .check(destination, self.subnet.gateway(), Instant::now())
        {
            self.log.denied(&format!("TCP {dst}"), why);
            // No socket listens for it: smoltcp answers RST.
            self.device.rx.push_back(frame);
            return;
        }
        if self.flows.len() + self.held.len() >= MAX_FLOWS {
            self.log.note(&format!(
                "TCP {dst}: refused, the guest already has {MAX_FLOWS} connections"
            ));
            self.device.rx.push_back(frame);
            return;
        }
        self.held.insert(key, frame);
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await
            {
                Ok(Ok(s)) => s.set_nodelay(true).map(|_| HostStream::Tcp(s)),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
            };
            let _ = events.send(Event::Connected { key, stream });
        });
    }

    fn on_udp(&mut self, src: SocketAddrV4, dst: SocketAddrV4, payload: Vec<u8>, frame: Vec<u8>) {
        let gateway = self.subnet.gateway();
        if *dst.ip() == gateway && dst.port() == 53 {
            let (dns, events) = (self.dns.clone(), self.events_tx.clone());
            tokio::spawn(async move {
                let Some(reply) = dns.answer(&payload).await else {
                    return;
                };
                let Ok(query) = dns::parse_query(&payload) else {
                    return;
                };
                let reply = dns::fit_udp(reply, &payload, &query, frame::max_udp_payload(MTU));
                let _ = events.send(Event::Udp {
                    guest: src,
                    from: dst,
                    payload: reply,
                });
            });
            return;
        }
        let (addr, destination) = self.target(dst);
        if let Err(why) = self.policy.check(destination, gateway, Instant::now()) {
            self.log.denied(&format!("UDP {dst}"), why);
            // No UDP socket in smoltcp: it answers ICMP port unreachable.
            self.device.rx.push_back(frame);
            return;
        }
        if let Err(e) = self.udp.send(src, addr, dst, &payload, &self.events_tx) {
            self.log.note(&format!("UDP {dst}: {e}"));
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Connected { key, stream } => self.on_connected(key, stream),
            Event::Accepted { guest_port, stream } => self.on_accepted(guest_port, stream),
            Event::HostData { flow, data } => {
                if let Some(f) = self.flows.get_mut(&flow) {
                    f.pending.extend_from_slice(&data);
                }
            }
            Event::HostEof { flow } => {
                if let Some(f) = self.flows.get_mut(&flow) {
                    f.host_eof = true;
                }
            }
            Event::HostReset { flow } => {
                if let Some(f) = self.flows.get(&flow) {
                    self.sockets.get_mut::<tcp::Socket>(f.handle).abort();
                }
            }
            Event::Udp {
                guest,
                from,
                payload,
            } => {
                let Some(mac) = self.guest_mac else { return };
                if payload.len() > frame::max_udp_payload(MTU) {
                    self.log.note(&format!(
                        "UDP from {from}: dropped a {}-byte datagram (over the MTU)",
                        payload.len()
                    ));
                    return;
                }
                self.device
                    .tx
                    .push(frame::udp_frame((GATEWAY_MAC, mac), from, guest, &payload));
            }
        }
    }

    fn new_socket() -> tcp::Socket<'static> {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
            tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
        );
        // A relay adds no delay of its own: the endpoints decide about Nagle.
        s.set_nagle_enabled(false);
        s
    }

    fn add_flow(&mut self, handle: SocketHandle, key: Option<FlowKey>, stream: HostStream) {
        let id = self.next_flow;
        self.next_flow += 1;
        let host = relay::spawn(stream, id, self.events_tx.clone(), self.wake.clone());
        if let Some(k) = key {
            self.by_key.insert(k, id);
        }
        self.flows.insert(
            id,
            Flow {
                handle,
                key,
                host,
                pending: Vec::new(),
                host_eof: false,
                fin_sent: false,
            },
        );
    }

    fn on_connected(&mut self, key: FlowKey, stream: std::io::Result<HostStream>) {
        let Some(syn) = self.held.remove(&key) else {
            return;
        };
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                self.log.note(&format!("TCP {}: {e}", key.1));
                self.device.rx.push_back(syn);
                return;
            }
        };
        let mut socket = Self::new_socket();
        let dst = key.1;
        let listen = IpListenEndpoint {
            addr: Some((*dst.ip()).into()),
            port: dst.port(),
        };
        if socket.listen(listen).is_err() {
            return;
        }
        let handle = self.sockets.add(socket);
        // Only this socket listens on the endpoint while its SYN goes through.
        self.device.rx.push_back(syn);
        self.poll();
        if self.sockets.get::<tcp::Socket>(handle).state() == State::Listen {
            self.sockets.remove(handle);
            return;
        }
        self.add_flow(handle, Some(key), stream);
    }

    fn on_accepted(&mut self, guest_port: u16, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let mut socket = Self::new_socket();
        let local = (self.subnet.gateway(), self.ephemeral_port());
        let remote = (self.subnet.guest(), guest_port);
        let connect = socket.connect(self.iface.context(), remote, local);
        if let Err(e) = connect {
            self.log
                .note(&format!("forward to guest port {guest_port}: {e}"));
            return;
        }
        let handle = self.sockets.add(socket);
        self.add_flow(handle, None, HostStream::Tcp(stream));
    }

    /// The next source port for a connection into the guest not in use by another.
    fn ephemeral_port(&mut self) -> u16 {
        loop {
            let port = self.next_port;
            self.next_port = if port == *EPHEMERAL.end() {
                *EPHEMERAL.start()
            } else {
                port + 1
            };
            let used = self.flows.values().any(|f| {
                f.key.is_none()
                    && self
                        .sockets
                        .get::<tcp::Socket>(f.handle)
                        .local_endpoint()
                        .is_some_and(|e| e.port == port)
            });
            if !used {
                return port;
            }
        }
    }

    /// Moves bytes between each flow's smoltcp socket and its host side, passes on
    /// half-closes, and ends flows whose socket closed.
    fn service_flows(&mut self) {
        let mut ended = Vec::new();
        for (&id, flow) in self.flows.iter_mut() {
            let socket = self.sockets.get_mut::<tcp::Socket>(flow.handle);
            if let Some(to_host) = &flow.host.to_host {
                while socket.can_recv() {
                    let Ok(permit) = to_host.try_reserve() else {
                        break;
                    };
                    let chunk = socket
                        .recv(|b| {
                            let n = b.len().min(CHUNK);
                            (n, b[..n].to_vec())
                        })
                        .unwrap_or_default();
                    permit.send(chunk);
                }
                let guest_done = matches!(
                    socket.state(),
                    State::CloseWait
                        | State::LastAck
                        | State::Closing
                        | State::TimeWait
                        | State::Closed
                ) && socket.recv_queue() == 0;
                if guest_done {
                    flow.host.to_host = None;
                }
            }
            if !flow.pending.is_empty() && socket.may_send() {
                let n = socket.send_slice(&flow.pending).unwrap_or(0);
                flow.pending.drain(..n);
                flow.host.credits.add_permits(n);
            }
            if flow.host_eof && flow.pending.is_empty() && !flow.fin_sent && socket.may_send() {
                socket.close();
                flow.fin_sent = true;
            }
            if matches!(socket.state(), State::Closed | State::TimeWait) {
                ended.push(id);
            }
        }
        for id in ended {
            let flow = self.flows.remove(&id).expect("listed above");
            let clean = flow.host.to_host.is_none() && flow.fin_sent;
            flow.host.finish(!clean);
            self.sockets.remove(flow.handle);
            if let Some(k) = flow.key {
                self.by_key.remove(&k);
            }
        }
    }
}
