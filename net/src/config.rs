//! What a network is made of: the guest subnet, the policy rules, port forwards, the DNS
//! upstreams, and where the VMM connects.

use crate::policy::Rules;
use smoltcp::wire::EthernetAddress;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use thiserror::Error;

/// The name that resolves, in the guest, to the gateway (the host's loopback).
pub const HOST_NAME: &str = "host.smolvm.internal";
/// The guest subnet unless `SMOLVM_NET_SUBNET` says otherwise. 192.168.127.0/24 stays out
/// of the ranges VPNs and container tools usually take (10/8, 100.64/10, 172.17/16,
/// 192.168.0.x/1.x); the gateway is .1 and the guest .2.
pub const DEFAULT_SUBNET: &str = "192.168.127.0/24";
/// The environment variable that sets the guest subnet.
pub const SUBNET_ENV: &str = "SMOLVM_NET_SUBNET";
/// The environment variable that replaces the host's resolvers (from `/etc/resolv.conf`):
/// comma-separated `IP` or `IP:PORT`.
pub const DNS_UPSTREAM_ENV: &str = "SMOLVM_DNS_UPSTREAM";
/// The guest interface MTU.
pub const MTU: usize = 65520;
/// Locally administered addresses: the gateway's, and the one the VMM gives the guest.
pub const GATEWAY_MAC: EthernetAddress = EthernetAddress([0x02, 0x53, 0x4d, 0x00, 0x00, 0x01]);
pub const GUEST_MAC: EthernetAddress = EthernetAddress([0x02, 0x53, 0x4d, 0x00, 0x00, 0x02]);

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "{SUBNET_ENV}={value:?} is not a usable guest subnet: {reason} (expected an IPv4 network from /8 to /30, e.g. {DEFAULT_SUBNET})"
    )]
    Subnet { value: String, reason: String },
    #[error("{DNS_UPSTREAM_ENV}={value:?}: expected comma-separated IP or IP:PORT entries")]
    DnsUpstream { value: String },
    #[error(
        "no DNS resolver found in /etc/resolv.conf; set {DNS_UPSTREAM_ENV} to the resolver the guest should use"
    )]
    NoResolver,
}

/// The guest's IPv4 network: the gateway is its first address, the guest the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    pub fn parse(text: &str) -> Result<Subnet, ConfigError> {
        let bad = |reason: &str| ConfigError::Subnet {
            value: text.into(),
            reason: reason.into(),
        };
        let cidr = smolfile::Cidr::parse(text).map_err(|e| bad(&e))?;
        let std::net::IpAddr::V4(network) = cidr.addr else {
            return Err(bad("the guest network is IPv4"));
        };
        if !(8..=30).contains(&cidr.prefix) {
            return Err(bad("the prefix must leave room for a gateway and a guest"));
        }
        if !network.is_private() {
            return Err(bad("it must be a private (RFC 1918) range"));
        }
        Ok(Subnet {
            network,
            prefix: cidr.prefix,
        })
    }

    /// `$SMOLVM_NET_SUBNET`, else [`DEFAULT_SUBNET`].
    pub fn from_env() -> Result<Subnet, ConfigError> {
        Subnet::parse(
            std::env::var(SUBNET_ENV)
                .as_deref()
                .unwrap_or(DEFAULT_SUBNET),
        )
    }

    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    pub fn guest(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 2)
    }
}

/// A TCP port forward: connections to `host` (on the host) reach `guest_port` in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortForward {
    pub host: SocketAddr,
    pub guest_port: u16,
}

impl PortForward {
    /// From a parsed `-p` value; with no address given, the host side is 127.0.0.1.
    pub fn from_port(p: &smolfile::Port) -> PortForward {
        PortForward {
            host: SocketAddr::new(p.ip.unwrap_or(Ipv4Addr::LOCALHOST.into()), p.host),
            guest_port: p.guest,
        }
    }
}

/// Everything [`crate::Network::start`] needs.
#[derive(Debug, Clone)]
pub struct NetConfig {
    pub subnet: Subnet,
    pub rules: Rules,
    pub forwards: Vec<PortForward>,
    /// The resolvers DNS queries are forwarded to.
    pub dns_upstreams: Vec<SocketAddr>,
    /// The unix socket the VMM connects the guest's NIC to.
    pub socket_path: PathBuf,
    /// Where denials and relay errors are written; stderr when `None`.
    pub log: Option<PathBuf>,
}

impl NetConfig {
    /// A configuration from the environment ([`SUBNET_ENV`], [`DNS_UPSTREAM_ENV`]) and the
    /// host's `/etc/resolv.conf`.
    pub fn new(
        rules: Rules,
        forwards: Vec<PortForward>,
        socket_path: PathBuf,
    ) -> Result<NetConfig, ConfigError> {
        Ok(NetConfig {
            subnet: Subnet::from_env()?,
            rules,
            forwards,
            dns_upstreams: dns_upstreams_from_env()?,
            socket_path,
            log: None,
        })
    }
}

/// `$SMOLVM_DNS_UPSTREAM`, else the `nameserver` lines of the host's `/etc/resolv.conf`.
pub fn dns_upstreams_from_env() -> Result<Vec<SocketAddr>, ConfigError> {
    if let Ok(value) = std::env::var(DNS_UPSTREAM_ENV) {
        return parse_upstreams(&value).ok_or(ConfigError::DnsUpstream { value });
    }
    let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let found = resolv_conf_nameservers(&conf);
    if found.is_empty() {
        return Err(ConfigError::NoResolver);
    }
    Ok(found)
}

fn parse_upstreams(value: &str) -> Option<Vec<SocketAddr>> {
    let list: Option<Vec<SocketAddr>> = value
        .split(',')
        .map(str::trim)
        .map(|e| {
            e.parse::<SocketAddr>()
                .ok()
                .or_else(|| e.parse().ok().map(|ip| SocketAddr::new(ip, 53)))
        })
        .collect();
    list.filter(|l| !l.is_empty())
}

/// The `nameserver` entries of a resolv.conf, port 53.
pub fn resolv_conf_nameservers(conf: &str) -> Vec<SocketAddr> {
    conf.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.split_whitespace().next())
        // A scoped IPv6 address (fe80::1%eth0) cannot be parsed without its scope: skip it.
        .filter_map(|ip| ip.parse().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_subnet_puts_the_gateway_first_and_the_guest_second() {
        let s = Subnet::parse(DEFAULT_SUBNET).unwrap();
        assert_eq!(s.gateway(), Ipv4Addr::new(192, 168, 127, 1));
        assert_eq!(s.guest(), Ipv4Addr::new(192, 168, 127, 2));
        assert_eq!(s.prefix, 24);
    }

    #[test]
    fn unusable_subnets_are_refused_with_the_reason() {
        for (value, reason) in [
            ("192.168.127.0/31", "room for a gateway"),
            ("fd00::/64", "IPv4"),
            ("8.8.8.0/24", "private"),
            ("192.168.127.1/24", "host bits"),
            ("banana", "expected an IPv4 or IPv6 CIDR"),
        ] {
            let err = Subnet::parse(value).unwrap_err().to_string();
            assert!(err.contains(reason) && err.contains(SUBNET_ENV), "{err}");
        }
    }

    #[test]
    fn resolv_conf_and_the_override_give_upstreams() {
        let conf = "# comment\nsearch corp\nnameserver 127.0.0.53\nnameserver  ::1 \nnameserver fe80::1%eth0\noptions edns0\n";
        assert_eq!(
            resolv_conf_nameservers(conf),
            vec![
                "127.0.0.53:53".parse().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
        assert_eq!(
            parse_upstreams("127.0.0.1:5300, 10.0.0.1"),
            Some(vec![
                "127.0.0.1:5300".parse().unwrap(),
                "10.0.0.1:53".parse().unwrap()
            ])
        );
        assert_eq!(parse_upstreams("dns.example"), None);
        assert_eq!(parse_upstreams(""), None);
    }

    #[test]
    fn a_port_without_an_address_listens_on_loopback_only() {
        let p = smolfile::Port::parse("8080:80").unwrap();
        assert_eq!(
            PortForward::from_port(&p),
            PortForward {
                host: "127.0.0.1:8080".parse().unwrap(),
                guest_port: 80
            }
        );
        let p = smolfile::Port::parse("0.0.0.0:8080:80").unwrap();
        assert_eq!(
            PortForward::from_port(&p).host,
            "0.0.0.0:8080".parse().unwrap()
        );
    }
}
