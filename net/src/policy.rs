//! The egress policy: which destinations a guest may reach and which names it may resolve.
//!
//! Every path out of the guest asks this one policy: TCP connections, UDP datagrams and the
//! DNS forwarder. With `--net` alone everything is allowed but the cloud metadata range.
//! `--allow-host`, `--allow-cidr` and `--outbound-localhost-only` restrict it:
//! - a destination is allowed when a CIDR contains it, or when an allowed name resolved to it
//!   (in an answer this stack gave the guest, until that answer's TTL runs out);
//! - only allowed names are resolved at all, so DNS cannot carry data to other names;
//! - the gateway (the host's loopback) is allowed with `--outbound-localhost-only`, when
//!   `host.smolvm.internal` is an allowed host, or when a CIDR holds 127.0.0.1 or the gateway.
//!
//! Some destinations are refused whatever the rules say: 169.254.0.0/16 (cloud metadata)
//! unless a CIDR inside it is allowed explicitly, and loopback, unspecified, multicast and
//! broadcast addresses (the host's loopback is reachable only through the gateway).

use crate::config::HOST_NAME;
use smolfile::{Cidr, HostPattern};
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A learnt address stays usable at least this long, however short its TTL: a guest resolves
/// and then connects, and a TTL of 0 must not make that race unwinnable.
pub const MIN_LEARNT_TTL: Duration = Duration::from_secs(10);

/// The link-local range cloud providers serve instance metadata (and credentials) from.
const METADATA: Cidr = Cidr {
    addr: IpAddr::V4(Ipv4Addr::new(169, 254, 0, 0)),
    prefix: 16,
};

/// What the user allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    pub allow_hosts: Vec<HostPattern>,
    pub allow_cidrs: Vec<Cidr>,
    pub localhost_only: bool,
}

impl Rules {
    /// `--net` with no restriction.
    pub fn unrestricted(&self) -> bool {
        !self.localhost_only && self.allow_hosts.is_empty() && self.allow_cidrs.is_empty()
    }
}

/// Where a guest wants to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// The gateway address: the host's loopback.
    Host,
    /// Any other address, reached from a host socket.
    Remote(IpAddr),
}

/// Why a destination or a name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// 169.254.0.0/16 without an explicit CIDR inside it.
    Metadata,
    /// Loopback, unspecified, multicast or broadcast.
    Unroutable,
    /// `--outbound-localhost-only`.
    LocalhostOnly,
    /// Not in any allowed CIDR, not learnt from an allowed name (or its TTL ran out).
    NotAllowed,
    /// A name no `--allow-host` pattern matches.
    NameNotAllowed,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Denied::Metadata => {
                "the cloud metadata range 169.254.0.0/16 is refused unless allowed with --allow-cidr"
            }
            Denied::Unroutable => "not a routable unicast address",
            Denied::LocalhostOnly => "--outbound-localhost-only allows only host.smolvm.internal",
            Denied::NotAllowed => "not in --allow-cidr and not resolved from an --allow-host name",
            Denied::NameNotAllowed => "the name matches no --allow-host",
        })
    }
}

/// The rules plus the addresses learnt from DNS answers.
#[derive(Debug, Default)]
pub struct Policy {
    rules: Rules,
    learnt: Mutex<HashMap<IpAddr, Instant>>,
}

impl Policy {
    pub fn new(rules: Rules) -> Policy {
        Policy {
            rules,
            learnt: Mutex::default(),
        }
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// May the guest open a connection to (or send a datagram to) `dst` at `now`?
    pub fn check(&self, dst: Destination, gateway: Ipv4Addr, now: Instant) -> Result<(), Denied> {
        let r = &self.rules;
        let ip = match dst {
            Destination::Host => {
                let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
                return if r.unrestricted()
                    || r.localhost_only
                    || r.allow_hosts.iter().any(|h| h.matches(HOST_NAME))
                    || r.allow_cidrs
                        .iter()
                        .any(|c| c.contains(loopback) || c.contains(gateway.into()))
                {
                    Ok(())
                } else {
                    Err(Denied::NotAllowed)
                };
            }
            Destination::Remote(ip) => ip,
        };
        if !routable(ip) {
            return Err(Denied::Unroutable);
        }
        if r.localhost_only {
            return Err(Denied::LocalhostOnly);
        }
        if METADATA.contains(ip) {
            let explicit = r
                .allow_cidrs
                .iter()
                .any(|c| c.within(&METADATA) && c.contains(ip));
            return if explicit {
                Ok(())
            } else {
                Err(Denied::Metadata)
            };
        }
        if r.unrestricted() || r.allow_cidrs.iter().any(|c| c.contains(ip)) {
            return Ok(());
        }
        let learnt = self.learnt.lock().unwrap_or_else(|e| e.into_inner());
        match learnt.get(&ip) {
            Some(&until) if until > now => Ok(()),
            _ => Err(Denied::NotAllowed),
        }
    }

    /// May the guest resolve `name` through the host's resolver?
    pub fn may_resolve(&self, name: &str) -> Result<(), Denied> {
        let r = &self.rules;
        if r.unrestricted() || r.allow_hosts.iter().any(|h| h.matches(name)) {
            Ok(())
        } else {
            Err(Denied::NameNotAllowed)
        }
    }

    /// Records the addresses an answer for an allowed name gave the guest, each usable until
    /// its TTL (at least [`MIN_LEARNT_TTL`]) runs out.
    pub fn learn(&self, answers: &[(IpAddr, u32)], now: Instant) {
        if self.rules.allow_hosts.is_empty() {
            return;
        }
        let mut learnt = self.learnt.lock().unwrap_or_else(|e| e.into_inner());
        learnt.retain(|_, until| *until > now);
        for &(ip, ttl) in answers {
            let until = now + Duration::from_secs(ttl.into()).max(MIN_LEARNT_TTL);
            let entry = learnt.entry(ip).or_insert(until);
            *entry = (*entry).max(until);
        }
    }
}

/// Addresses a host socket can meaningfully connect to on the guest's behalf.
fn routable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_loopback()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.octets()[0] == 0)
        }
        IpAddr::V6(v6) => !(v6.is_loopback() || v6.is_unspecified() || v6.is_multicast()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GW: Ipv4Addr = Ipv4Addr::new(192, 168, 127, 1);

    fn policy(hosts: &[&str], cidrs: &[&str], localhost_only: bool) -> Policy {
        Policy::new(Rules {
            allow_hosts: hosts
                .iter()
                .map(|h| HostPattern::parse(h).unwrap())
                .collect(),
            allow_cidrs: cidrs.iter().map(|c| Cidr::parse(c).unwrap()).collect(),
            localhost_only,
        })
    }

    fn remote(ip: &str) -> Destination {
        Destination::Remote(ip.parse().unwrap())
    }

    #[test]
    fn net_alone_allows_everything_but_metadata_and_unroutable() {
        let p = policy(&[], &[], false);
        let now = Instant::now();
        assert_eq!(p.check(remote("93.184.216.34"), GW, now), Ok(()));
        assert_eq!(p.check(remote("2606:2800::1"), GW, now), Ok(()));
        assert_eq!(p.check(Destination::Host, GW, now), Ok(()));
        assert_eq!(
            p.check(remote("169.254.169.254"), GW, now),
            Err(Denied::Metadata)
        );
        assert_eq!(
            p.check(remote("127.0.0.1"), GW, now),
            Err(Denied::Unroutable)
        );
        assert_eq!(p.check(remote("0.0.0.0"), GW, now), Err(Denied::Unroutable));
        assert_eq!(
            p.check(remote("224.0.0.1"), GW, now),
            Err(Denied::Unroutable)
        );
        assert_eq!(p.may_resolve("anything.example"), Ok(()));
    }

    #[test]
    fn metadata_needs_an_explicit_cidr_inside_it() {
        let now = Instant::now();
        let wide = policy(&[], &["0.0.0.0/0"], false);
        assert_eq!(
            wide.check(remote("169.254.169.254"), GW, now),
            Err(Denied::Metadata)
        );
        assert_eq!(wide.check(remote("8.8.8.8"), GW, now), Ok(()));
        let explicit = policy(&[], &["169.254.169.254/32"], false);
        assert_eq!(explicit.check(remote("169.254.169.254"), GW, now), Ok(()));
        assert_eq!(
            explicit.check(remote("169.254.1.1"), GW, now),
            Err(Denied::Metadata)
        );
    }

    #[test]
    fn cidrs_allow_their_ranges_only() {
        let p = policy(&[], &["203.0.113.0/24", "2001:db8::/32"], false);
        let now = Instant::now();
        assert_eq!(p.check(remote("203.0.113.9"), GW, now), Ok(()));
        assert_eq!(p.check(remote("2001:db8::5"), GW, now), Ok(()));
        assert_eq!(
            p.check(remote("203.0.114.1"), GW, now),
            Err(Denied::NotAllowed)
        );
        assert_eq!(p.check(Destination::Host, GW, now), Err(Denied::NotAllowed));
        // No name resolves when only addresses were allowed: DNS is egress too.
        assert_eq!(p.may_resolve("example.com"), Err(Denied::NameNotAllowed));
        let lo = policy(&[], &["127.0.0.1/32"], false);
        assert_eq!(lo.check(Destination::Host, GW, now), Ok(()));
    }

    #[test]
    fn localhost_only_allows_the_gateway_and_nothing_else() {
        let p = policy(&[], &[], true);
        let now = Instant::now();
        assert_eq!(p.check(Destination::Host, GW, now), Ok(()));
        assert_eq!(
            p.check(remote("1.1.1.1"), GW, now),
            Err(Denied::LocalhostOnly)
        );
        assert_eq!(p.may_resolve("example.com"), Err(Denied::NameNotAllowed));
    }

    #[test]
    fn allowed_names_resolve_and_their_addresses_open_until_the_ttl_ends() {
        let p = policy(&["*.example.com", "api.test"], &[], false);
        let t0 = Instant::now();
        assert_eq!(p.may_resolve("www.example.com"), Ok(()));
        assert_eq!(p.may_resolve("API.test."), Ok(()));
        assert_eq!(p.may_resolve("example.com"), Err(Denied::NameNotAllowed));
        assert_eq!(p.may_resolve("evil.test"), Err(Denied::NameNotAllowed));
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(
            p.check(Destination::Remote(ip), GW, t0),
            Err(Denied::NotAllowed)
        );
        p.learn(&[(ip, 60)], t0);
        assert_eq!(p.check(Destination::Remote(ip), GW, t0), Ok(()));
        let later = t0 + Duration::from_secs(59);
        assert_eq!(p.check(Destination::Remote(ip), GW, later), Ok(()));
        let expired = t0 + Duration::from_secs(61);
        assert_eq!(
            p.check(Destination::Remote(ip), GW, expired),
            Err(Denied::NotAllowed)
        );
        // A TTL of 0 still leaves time to connect; a later, longer answer extends it.
        let other: IpAddr = "198.51.100.8".parse().unwrap();
        p.learn(&[(other, 0)], t0);
        assert_eq!(
            p.check(Destination::Remote(other), GW, t0 + Duration::from_secs(9)),
            Ok(())
        );
        p.learn(&[(other, 300)], t0);
        assert_eq!(
            p.check(
                Destination::Remote(other),
                GW,
                t0 + Duration::from_secs(299)
            ),
            Ok(())
        );
        // The gateway is not open unless its name is allowed.
        assert_eq!(p.check(Destination::Host, GW, t0), Err(Denied::NotAllowed));
        assert_eq!(
            policy(&["host.smolvm.internal"], &[], false).check(Destination::Host, GW, t0),
            Ok(())
        );
    }

    #[test]
    fn a_learnt_address_never_opens_metadata_or_loopback() {
        let p = policy(&["rebind.test"], &[], false);
        let now = Instant::now();
        let meta: IpAddr = "169.254.169.254".parse().unwrap();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        p.learn(&[(meta, 600), (lo, 600)], now);
        assert_eq!(
            p.check(Destination::Remote(meta), GW, now),
            Err(Denied::Metadata)
        );
        assert_eq!(
            p.check(Destination::Remote(lo), GW, now),
            Err(Denied::Unroutable)
        );
    }
}
