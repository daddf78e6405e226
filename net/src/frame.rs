//! The frame classifier: decides, before smoltcp sees a guest frame, who handles it.
//!
//! TCP is terminated by smoltcp, but smoltcp only accepts a SYN for which a listening socket
//! exists, so a new connection is recognised here first (and checked against the policy).
//! UDP never enters smoltcp: each datagram is relayed as is, and replies are built with
//! [`udp_frame`]. Anything that is not IPv4 (IPv6 included: the guest has no IPv6 route)
//! goes nowhere but ARP to smoltcp.

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpProtocol, Ipv4Packet,
    Ipv4Repr, TcpPacket, UdpPacket, UdpRepr,
};
use std::net::SocketAddrV4;

/// The length of an Ethernet II header.
pub const ETHERNET_HEADER: usize = 14;
/// IPv4 (no options) plus UDP headers.
const IPV4_UDP_HEADERS: usize = 20 + 8;

/// What a guest frame is, as far as routing it goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// ARP: smoltcp answers for the gateway.
    Arp,
    /// A TCP segment opening a connection (SYN without ACK).
    TcpSyn {
        src: SocketAddrV4,
        dst: SocketAddrV4,
    },
    /// Any other TCP segment: smoltcp's.
    Tcp,
    /// A UDP datagram (unfragmented).
    Udp {
        src: SocketAddrV4,
        dst: SocketAddrV4,
        payload: &'a [u8],
    },
    /// ICMP: smoltcp answers echo requests to the gateway.
    Icmp { dst: std::net::Ipv4Addr },
    /// Dropped, for this reason.
    Ignored(&'static str),
}

/// Classifies one Ethernet frame from the guest. Never panics, whatever the bytes.
pub fn classify(frame: &[u8]) -> Frame<'_> {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return Frame::Ignored("short ethernet frame");
    };
    match eth.ethertype() {
        EthernetProtocol::Arp => return Frame::Arp,
        EthernetProtocol::Ipv4 => {}
        EthernetProtocol::Ipv6 => return Frame::Ignored("IPv6 (the guest has no IPv6 route)"),
        _ => return Frame::Ignored("not IPv4 or ARP"),
    }
    let ip_bytes = &frame[ETHERNET_HEADER..];
    let Ok(ip) = Ipv4Packet::new_checked(ip_bytes) else {
        return Frame::Ignored("malformed IPv4 header");
    };
    if ip.more_frags() || ip.frag_offset() != 0 {
        return Frame::Ignored("IPv4 fragment");
    }
    let (src_ip, dst_ip) = (ip.src_addr(), ip.dst_addr());
    let header_len = usize::from(ip.header_len());
    let total_len = usize::from(ip.total_len());
    let payload = &ip_bytes[header_len..total_len];
    match ip.next_header() {
        IpProtocol::Tcp => {
            let Ok(tcp) = TcpPacket::new_checked(payload) else {
                return Frame::Ignored("malformed TCP header");
            };
            if tcp.syn() && !tcp.ack() && !tcp.rst() && !tcp.fin() {
                Frame::TcpSyn {
                    src: SocketAddrV4::new(src_ip, tcp.src_port()),
                    dst: SocketAddrV4::new(dst_ip, tcp.dst_port()),
                }
            } else {
                Frame::Tcp
            }
        }
        IpProtocol::Udp => {
            let Ok(udp) = UdpPacket::new_checked(payload) else {
                return Frame::Ignored("malformed UDP header");
            };
            let len = usize::from(udp.len());
            Frame::Udp {
                src: SocketAddrV4::new(src_ip, udp.src_port()),
                dst: SocketAddrV4::new(dst_ip, udp.dst_port()),
                payload: &payload[8..len],
            }
        }
        IpProtocol::Icmp => Frame::Icmp { dst: dst_ip },
        _ => Frame::Ignored("IP protocol other than TCP, UDP or ICMP"),
    }
}

/// The source MAC address of a frame (how the stack learns the guest's).
pub fn source_mac(frame: &[u8]) -> Option<EthernetAddress> {
    EthernetFrame::new_checked(frame).ok().map(|f| f.src_addr())
}

/// The largest UDP payload that fits in one frame of `mtu`.
pub fn max_udp_payload(mtu: usize) -> usize {
    mtu - IPV4_UDP_HEADERS
}

/// Builds the Ethernet frame carrying a UDP datagram from `src` to `dst`.
pub fn udp_frame(
    (src_mac, dst_mac): (EthernetAddress, EthernetAddress),
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload: &[u8],
) -> Vec<u8> {
    let udp = UdpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
    };
    let ip = Ipv4Repr {
        src_addr: *src.ip(),
        dst_addr: *dst.ip(),
        next_header: IpProtocol::Udp,
        payload_len: udp.header_len() + payload.len(),
        hop_limit: 64,
    };
    let eth = EthernetRepr {
        src_addr: src_mac,
        dst_addr: dst_mac,
        ethertype: EthernetProtocol::Ipv4,
    };
    let mut buf = vec![0u8; ETHERNET_HEADER + ip.buffer_len() + ip.payload_len];
    let caps = ChecksumCapabilities::default();
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.emit(&mut frame);
    let mut packet = Ipv4Packet::new_unchecked(frame.payload_mut());
    ip.emit(&mut packet, &caps);
    let mut datagram = UdpPacket::new_unchecked(packet.payload_mut());
    udp.emit(
        &mut datagram,
        &ip.src_addr.into(),
        &ip.dst_addr.into(),
        payload.len(),
        |b| b.copy_from_slice(payload),
        &caps,
    );
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::{TcpControl, TcpRepr, TcpSeqNumber};

    const GUEST: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 2]);
    const GW: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);

    fn addr(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    fn tcp_frame(control: TcpControl, ack: bool) -> Vec<u8> {
        let (src, dst) = (addr("192.168.127.2:40000"), addr("1.2.3.4:80"));
        let tcp = TcpRepr {
            src_port: src.port(),
            dst_port: dst.port(),
            control,
            seq_number: TcpSeqNumber(1),
            ack_number: ack.then_some(TcpSeqNumber(7)),
            window_len: 1000,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: b"",
        };
        let ip = Ipv4Repr {
            src_addr: *src.ip(),
            dst_addr: *dst.ip(),
            next_header: IpProtocol::Tcp,
            payload_len: tcp.header_len(),
            hop_limit: 64,
        };
        let mut buf = vec![0u8; ETHERNET_HEADER + 20 + tcp.header_len()];
        let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
        EthernetRepr {
            src_addr: GUEST,
            dst_addr: GW,
            ethertype: EthernetProtocol::Ipv4,
        }
        .emit(&mut frame);
        let mut packet = Ipv4Packet::new_unchecked(frame.payload_mut());
        let caps = ChecksumCapabilities::default();
        ip.emit(&mut packet, &caps);
        tcp.emit(
            &mut TcpPacket::new_unchecked(packet.payload_mut()),
            &ip.src_addr.into(),
            &ip.dst_addr.into(),
            &caps,
        );
        buf
    }

    #[test]
    fn a_syn_opens_a_flow_and_everything_else_is_smoltcps() {
        assert_eq!(
            classify(&tcp_frame(TcpControl::Syn, false)),
            Frame::TcpSyn {
                src: addr("192.168.127.2:40000"),
                dst: addr("1.2.3.4:80")
            }
        );
        assert_eq!(classify(&tcp_frame(TcpControl::Syn, true)), Frame::Tcp);
        assert_eq!(classify(&tcp_frame(TcpControl::None, true)), Frame::Tcp);
        assert_eq!(classify(&tcp_frame(TcpControl::Rst, false)), Frame::Tcp);
    }

    #[test]
    fn udp_round_trips_through_the_reply_builder() {
        let frame = udp_frame(
            (GUEST, GW),
            addr("192.168.127.2:5353"),
            addr("192.168.127.1:53"),
            b"query",
        );
        assert_eq!(
            classify(&frame),
            Frame::Udp {
                src: addr("192.168.127.2:5353"),
                dst: addr("192.168.127.1:53"),
                payload: b"query"
            }
        );
        assert_eq!(source_mac(&frame), Some(GUEST));
        // The checksums smoltcp would verify are right.
        let ip = Ipv4Packet::new_checked(&frame[ETHERNET_HEADER..]).unwrap();
        assert!(ip.verify_checksum());
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert!(udp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
    }

    #[test]
    fn what_is_not_ipv4_or_arp_is_dropped_with_a_reason() {
        assert_eq!(classify(&[]), Frame::Ignored("short ethernet frame"));
        let mut v6 = tcp_frame(TcpControl::Syn, false);
        v6[12..14].copy_from_slice(&[0x86, 0xdd]);
        assert!(matches!(classify(&v6), Frame::Ignored(r) if r.contains("IPv6")));
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(classify(&arp), Frame::Arp);
        // A truncated IPv4 packet (total length beyond the frame).
        let mut short = tcp_frame(TcpControl::Syn, false);
        short.truncate(ETHERNET_HEADER + 24);
        assert_eq!(classify(&short), Frame::Ignored("malformed IPv4 header"));
        // A fragment is not reassembled.
        let mut frag = udp_frame((GUEST, GW), addr("1.1.1.1:1"), addr("2.2.2.2:2"), b"x");
        frag[ETHERNET_HEADER + 6] |= 0x20;
        assert_eq!(classify(&frag), Frame::Ignored("IPv4 fragment"));
    }
}
