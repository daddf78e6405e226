//! DNS for the guest: the stack answers queries sent to the gateway (UDP and TCP) itself.
//!
//! It is a small forwarder rather than a resolver library: a query for an allowed name is
//! sent as is to the host's resolvers (those of the host's `/etc/resolv.conf`, so VPN and
//! corporate DNS work, or `SMOLVM_DNS_UPSTREAM`), and the answer comes back as is, after its
//! A records have been read to learn which addresses the name may be reached at. Forwarding
//! keeps the guest resolver's own semantics (EDNS, search, CNAME chains) untouched and
//! needs only the parsing below; a resolver library would re-encode answers and bring its
//! own caching, which the TTL-bound policy must not be hidden behind.
//!
//! Answered locally: `host.smolvm.internal` (A = the gateway), AAAA queries (no records:
//! the guest has no IPv6 route), and refusals for names the policy does not allow.

use crate::config::HOST_NAME;
use crate::log::Log;
use crate::policy::{Destination, Policy};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
const HEADER: usize = 12;
const RCODE_SERVFAIL: u8 = 2;
const RCODE_REFUSED: u8 = 5;
/// How long one upstream gets to answer before the next is tried.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// TTL of the local `host.smolvm.internal` answer.
const LOCAL_TTL: u32 = 60;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DnsError {
    #[error("DNS message truncated at byte {0}")]
    Truncated(usize),
    #[error("not a standard query")]
    NotAQuery,
    #[error("{0} questions (expected 1)")]
    QuestionCount(u16),
    #[error("malformed name at byte {0}")]
    BadName(usize),
}

/// The one question of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    /// Lowercase, without the trailing dot.
    pub name: String,
    pub qtype: u16,
    /// Where the question ends in the message.
    question_end: usize,
}

fn u16_at(msg: &[u8], pos: usize) -> Result<u16, DnsError> {
    msg.get(pos..pos + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or(DnsError::Truncated(pos))
}

fn u32_at(msg: &[u8], pos: usize) -> Result<u32, DnsError> {
    msg.get(pos..pos + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(DnsError::Truncated(pos))
}

/// Reads the name at `start` (following compression pointers when `pointers`); returns it
/// and the position just after it where it starts. Labels must be letters, digits, `-` and
/// `_`, so that the text a policy matches is the name the upstream resolves.
fn read_name(msg: &[u8], start: usize, pointers: bool) -> Result<(String, usize), DnsError> {
    let mut name = String::new();
    let (mut pos, mut end, mut jumps) = (start, None, 0);
    loop {
        let len = *msg.get(pos).ok_or(DnsError::Truncated(pos))?;
        match len {
            0 => {
                return Ok((name, end.unwrap_or(pos + 1)));
            }
            l if l & 0xc0 == 0xc0 => {
                if !pointers {
                    return Err(DnsError::BadName(pos));
                }
                let target = usize::from(u16_at(msg, pos)? & 0x3fff);
                jumps += 1;
                // A pointer must go backwards, and a loop must end.
                if target >= pos || jumps > 32 {
                    return Err(DnsError::BadName(pos));
                }
                end.get_or_insert(pos + 2);
                pos = target;
            }
            l if l & 0xc0 != 0 => return Err(DnsError::BadName(pos)),
            l => {
                let label = msg
                    .get(pos + 1..pos + 1 + usize::from(l))
                    .ok_or(DnsError::Truncated(pos))?;
                if !label
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    return Err(DnsError::BadName(pos));
                }
                if !name.is_empty() {
                    name.push('.');
                }
                name.extend(label.iter().map(|&b| (b as char).to_ascii_lowercase()));
                if name.len() > 253 {
                    return Err(DnsError::BadName(pos));
                }
                pos += 1 + usize::from(l);
            }
        }
    }
}

/// Parses a query with exactly one question.
pub fn parse_query(msg: &[u8]) -> Result<Query, DnsError> {
    let id = u16_at(msg, 0)?;
    let flags = u16_at(msg, 2)?;
    // QR = 0 (a query), opcode 0 (standard).
    if flags & 0xf800 != 0 {
        return Err(DnsError::NotAQuery);
    }
    let qdcount = u16_at(msg, 4)?;
    if qdcount != 1 {
        return Err(DnsError::QuestionCount(qdcount));
    }
    // The question is the first name: there is nothing before it to point to, and a reply
    // built here copies it after a header of its own.
    let (name, pos) = read_name(msg, HEADER, false)?;
    let qtype = u16_at(msg, pos)?;
    u16_at(msg, pos + 2)?;
    Ok(Query {
        id,
        name,
        qtype,
        question_end: pos + 4,
    })
}

/// The A and AAAA records of a response's answer section, with their TTLs.
pub fn answer_addresses(msg: &[u8]) -> Result<Vec<(IpAddr, u32)>, DnsError> {
    let qdcount = u16_at(msg, 4)?;
    let ancount = u16_at(msg, 6)?;
    let mut pos = HEADER;
    for _ in 0..qdcount {
        pos = read_name(msg, pos, true)?.1 + 4;
    }
    let mut out = Vec::new();
    for _ in 0..ancount {
        pos = read_name(msg, pos, true)?.1;
        let rtype = u16_at(msg, pos)?;
        let class = u16_at(msg, pos + 2)?;
        let ttl = u32_at(msg, pos + 4)?;
        let rdlen = usize::from(u16_at(msg, pos + 8)?);
        pos += 10;
        let rdata = msg.get(pos..pos + rdlen).ok_or(DnsError::Truncated(pos))?;
        pos += rdlen;
        match (rtype, class, rdata.len()) {
            (TYPE_A, CLASS_IN, 4) => {
                let a: [u8; 4] = rdata.try_into().expect("length checked");
                out.push((IpAddr::V4(Ipv4Addr::from(a)), ttl));
            }
            (TYPE_AAAA, CLASS_IN, 16) => {
                let a: [u8; 16] = rdata.try_into().expect("length checked");
                out.push((IpAddr::V6(Ipv6Addr::from(a)), ttl));
            }
            _ => {}
        }
    }
    Ok(out)
}

/// A response to `query` (whose bytes are `msg`) built here: `rcode` and A records.
pub fn local_reply(msg: &[u8], query: &Query, rcode: u8, answers: &[Ipv4Addr]) -> Vec<u8> {
    let mut out = Vec::with_capacity(query.question_end + 16 * answers.len());
    out.extend_from_slice(&query.id.to_be_bytes());
    // QR, the query's RD, RA, rcode.
    let rd = msg[2] & 0x01;
    out.extend_from_slice(&[0x80 | rd, 0x80 | (rcode & 0x0f)]);
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&msg[HEADER..query.question_end]);
    for a in answers {
        out.extend_from_slice(&[0xc0, HEADER as u8]);
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&LOCAL_TTL.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&a.octets());
    }
    out
}

/// A response that does not fit in `max` bytes becomes its question with TC set, so the
/// guest asks again over TCP.
pub fn fit_udp(response: Vec<u8>, query_msg: &[u8], query: &Query, max: usize) -> Vec<u8> {
    if response.len() <= max {
        return response;
    }
    let mut out = local_reply(query_msg, query, 0, &[]);
    out[2] |= 0x02;
    out
}

/// Answers the guest's DNS queries under the policy.
pub struct DnsService {
    pub policy: Arc<Policy>,
    pub gateway: Ipv4Addr,
    pub upstreams: Vec<SocketAddr>,
    pub log: Log,
}

impl DnsService {
    /// The response to one query message, or `None` when it is not worth answering.
    pub async fn answer(&self, msg: &[u8]) -> Option<Vec<u8>> {
        let query = parse_query(msg).ok()?;
        if query.name == HOST_NAME {
            let allowed = self
                .policy
                .check(Destination::Host, self.gateway, Instant::now())
                .is_ok();
            return Some(match (allowed, query.qtype) {
                (false, _) => local_reply(msg, &query, RCODE_REFUSED, &[]),
                (true, TYPE_A) => local_reply(msg, &query, 0, &[self.gateway]),
                (true, _) => local_reply(msg, &query, 0, &[]),
            });
        }
        if let Err(why) = self.policy.may_resolve(&query.name) {
            self.log.denied(&format!("DNS {}", query.name), why);
            return Some(local_reply(msg, &query, RCODE_REFUSED, &[]));
        }
        if query.qtype == TYPE_AAAA {
            return Some(local_reply(msg, &query, 0, &[]));
        }
        let Some(response) = self.forward(msg).await else {
            return Some(local_reply(msg, &query, RCODE_SERVFAIL, &[]));
        };
        if let Ok(addrs) = answer_addresses(&response) {
            self.policy.learn(&addrs, Instant::now());
        }
        Some(response)
    }

    /// Asks each upstream in turn; over TCP when the UDP answer was truncated.
    async fn forward(&self, msg: &[u8]) -> Option<Vec<u8>> {
        for &upstream in &self.upstreams {
            let attempt = async {
                let response = udp_exchange(upstream, msg).await?;
                if response.get(2).is_some_and(|f| f & 0x02 != 0) {
                    tcp_exchange(upstream, msg).await
                } else {
                    Ok(response)
                }
            };
            match tokio::time::timeout(UPSTREAM_TIMEOUT, attempt).await {
                Ok(Ok(r)) if r.get(..2) == msg.get(..2) => return Some(r),
                Ok(Ok(_)) => self
                    .log
                    .note(&format!("DNS upstream {upstream}: mismatched reply")),
                Ok(Err(e)) => self.log.note(&format!("DNS upstream {upstream}: {e}")),
                Err(_) => self
                    .log
                    .note(&format!("DNS upstream {upstream}: no answer")),
            }
        }
        None
    }
}

async fn udp_exchange(upstream: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = if upstream.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(local).await?;
    sock.connect(upstream).await?;
    sock.send(msg).await?;
    let mut buf = vec![0u8; 65535];
    let n = sock.recv(&mut buf).await?;
    buf.truncate(n);
    Ok(buf)
}

async fn tcp_exchange(upstream: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(upstream).await?;
    s.set_nodelay(true)?;
    s.write_all(&(msg.len() as u16).to_be_bytes()).await?;
    s.write_all(msg).await?;
    read_tcp_message(&mut s).await
}

/// One length-prefixed DNS message from a TCP stream.
pub async fn read_tcp_message<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    r.read_exact(&mut len).await?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    r.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Serves DNS over TCP on one stream (the guest's connection to the gateway's port 53).
pub async fn serve_tcp<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    service: Arc<DnsService>,
    mut stream: S,
) {
    while let Ok(msg) = read_tcp_message(&mut stream).await {
        let Some(reply) = service.answer(&msg).await else {
            return;
        };
        let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&reply);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A query for `name` of `qtype`, as a stub resolver sends it.
    pub fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut m = id.to_be_bytes().to_vec();
        m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.split('.') {
            m.push(label.len() as u8);
            m.extend_from_slice(label.as_bytes());
        }
        m.push(0);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&CLASS_IN.to_be_bytes());
        m
    }

    #[test]
    fn a_query_gives_its_name_and_type() {
        let q = parse_query(&query(7, "WWW.Example.com", TYPE_A)).unwrap();
        assert_eq!(
            (q.id, q.name.as_str(), q.qtype),
            (7, "www.example.com", TYPE_A)
        );
        let mut response = query(7, "a.b", TYPE_A);
        response[2] |= 0x80;
        assert_eq!(parse_query(&response), Err(DnsError::NotAQuery));
        assert_eq!(parse_query(&[0; 5]), Err(DnsError::Truncated(4)));
        let mut two = query(1, "a.b", TYPE_A);
        two[5] = 2;
        assert_eq!(parse_query(&two), Err(DnsError::QuestionCount(2)));
    }

    #[test]
    fn a_local_reply_carries_the_question_and_the_answers() {
        let msg = query(42, "host.smolvm.internal", TYPE_A);
        let q = parse_query(&msg).unwrap();
        let gw = Ipv4Addr::new(192, 168, 127, 1);
        let r = local_reply(&msg, &q, 0, &[gw]);
        assert_eq!(&r[..2], &42u16.to_be_bytes());
        assert_eq!(r[2] & 0x80, 0x80, "QR set");
        assert_eq!(r[3] & 0x0f, 0, "NOERROR");
        assert_eq!(
            answer_addresses(&r).unwrap(),
            vec![(IpAddr::V4(gw), LOCAL_TTL)]
        );
        let refused = local_reply(&msg, &q, RCODE_REFUSED, &[]);
        assert_eq!(refused[3] & 0x0f, RCODE_REFUSED);
        assert!(answer_addresses(&refused).unwrap().is_empty());
    }

    #[test]
    fn answers_follow_compression_pointers_and_skip_other_records() {
        // www.example.com CNAME cdn.example.com; cdn A 1.2.3.4 ttl 30; AAAA 2001:db8::1 ttl 20
        let mut m = query(9, "www.example.com", TYPE_A);
        m[2] = 0x81;
        m[3] = 0x80;
        m[7] = 3;
        // CNAME: name ptr to 12, type 5, class 1, ttl, rdlen, rdata "cdn" + ptr to "example.com" (offset 16)
        m.extend_from_slice(&[
            0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 100, 0, 6, 3, b'c', b'd', b'n', 0xc0, 16,
        ]);
        let cdn = m.len() - 6;
        m.extend_from_slice(&[0xc0, cdn as u8, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 1, 2, 3, 4]);
        m.extend_from_slice(&[0xc0, cdn as u8, 0, 28, 0, 1, 0, 0, 0, 20, 0, 16]);
        m.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(
            answer_addresses(&m).unwrap(),
            vec![
                ("1.2.3.4".parse().unwrap(), 30),
                ("2001:db8::1".parse().unwrap(), 20)
            ]
        );
        // Truncated rdata is an error, not a panic.
        assert!(answer_addresses(&m[..m.len() - 3]).is_err());
    }

    #[test]
    fn pointer_loops_and_forward_pointers_are_refused() {
        // A response whose answer name points to itself.
        let mut m = query(1, "a", TYPE_A);
        m[2] = 0x81;
        m[7] = 1;
        let at = m.len();
        m.extend_from_slice(&[0xc0, at as u8, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4, 1, 2, 3, 4]);
        assert_eq!(answer_addresses(&m), Err(DnsError::BadName(at)));
    }

    #[test]
    fn a_question_is_plain_labels_without_pointers_or_odd_bytes() {
        // Found by the fuzzer: a question pointing into the header parsed, and the reply
        // built from it (with a header of its own) did not.
        let mut m = query(1, "a", TYPE_A);
        m.truncate(HEADER);
        m.extend_from_slice(&[0xc0, 1, 0, 1, 0, 1]);
        assert_eq!(parse_query(&m), Err(DnsError::BadName(12)));
        // A dot inside a label would make "allowed.test" of a name that is not.
        let mut dotted = query(1, "x", TYPE_A);
        dotted.truncate(HEADER);
        dotted.extend_from_slice(&[12]);
        dotted.extend_from_slice(b"allowed.test");
        dotted.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert_eq!(parse_query(&dotted), Err(DnsError::BadName(12)));
        assert!(parse_query(&query(1, "_http._tcp.Example-1.com", 33)).is_ok());
    }

    #[test]
    fn an_oversized_udp_answer_is_truncated_to_its_question() {
        let msg = query(3, "big.example", TYPE_A);
        let q = parse_query(&msg).unwrap();
        let big = vec![0u8; 2000];
        let fitted = fit_udp(big, &msg, &q, 1472);
        assert_eq!(fitted[2] & 0x02, 0x02, "TC set");
        assert_eq!(
            parse_query(&{
                let mut f = fitted.clone();
                f[2] &= 0x7f;
                f
            })
            .unwrap()
            .name,
            "big.example"
        );
    }
}
