//! Feeds arbitrary bytes to what reads guest-controlled network input: the frame
//! classifier (every frame from the guest goes through it before smoltcp) and the DNS
//! parsers (every query the guest sends, every answer the stack reads addresses from).
//! Nothing may panic, and what is accepted must hold together: a UDP datagram rebuilt with
//! the reply builder classifies to the same datagram, and a reply built for an accepted
//! query parses with the answers put in it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use smolvm_net::dns;
use smolvm_net::frame::{self, Frame};
use std::net::{IpAddr, Ipv4Addr};

fuzz_target!(|data: &[u8]| {
    match frame::classify(data) {
        Frame::Udp { src, dst, payload } => {
            assert!(payload.len() <= data.len());
            let mac = frame::source_mac(data).expect("a classified frame has a header");
            let rebuilt = frame::udp_frame((mac, mac), src, dst, payload);
            assert_eq!(
                frame::classify(&rebuilt),
                Frame::Udp { src, dst, payload },
                "the reply builder and the classifier disagree"
            );
        }
        _ => {}
    }
    let _ = dns::answer_addresses(data);
    if let Ok(query) = dns::parse_query(data) {
        assert!(query.name.len() <= 253);
        let answer = Ipv4Addr::new(192, 168, 127, 1);
        let reply = dns::local_reply(data, &query, 0, &[answer]);
        assert_eq!(
            dns::answer_addresses(&reply).expect("our own reply parses"),
            vec![(IpAddr::V4(answer), 60)]
        );
        let truncated = dns::fit_udp(vec![0; 600], data, &query, 512);
        assert!(truncated[2] & 0x02 != 0);
    }
});
