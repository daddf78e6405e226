//! A VM's network settings: as flags and Smolfiles give them ([`settings`]), as packs and
//! machines store them ([`NetworkSettings`], strings as written), and as a VM boots with
//! them ([`NetworkSpec`]). Stored settings are parsed again at every boot, so a machine or a
//! pack written by hand gets the same checks as flags.

use smolfile::{Cidr, HostPattern, Port};
use smolvm_net::{HOST_NAME, PortForward, Rules};

/// A pack manifest's `network`, also a machine's.
pub use smolvm_pack_format::Network as NetworkSettings;

/// What the VM's network allows and forwards. The stack runs in the process that boots the
/// VM, for the VM's life (see [`smolvm_net::Network`]).
#[derive(Debug, Clone, Default)]
pub struct NetworkSpec {
    pub rules: Rules,
    pub forwards: Vec<PortForward>,
    /// Where denials are logged; stderr when `None`.
    pub log: Option<std::path::PathBuf>,
}

impl NetworkSpec {
    /// The network a merged workload asks for (`None`: no network).
    pub fn from_effective(eff: &smolfile::Effective) -> Result<Option<NetworkSpec>, String> {
        NetworkSpec::from_settings(&settings(eff))
    }

    /// The network stored settings ask for (`None`: no network); each value is checked as
    /// its flag would be.
    pub fn from_settings(s: &NetworkSettings) -> Result<Option<NetworkSpec>, String> {
        if !s.enabled {
            if let Some(p) = s.ports.first() {
                return Err(format!(
                    "-p {p} forwards a port over the VM's network, which is off: add --net"
                ));
            }
            return Ok(None);
        }
        let each = |what: &str, e: String| format!("network setting {what}: {e}");
        Ok(Some(NetworkSpec {
            rules: Rules {
                allow_hosts: s
                    .allow_hosts
                    .iter()
                    .map(|h| HostPattern::parse(h).map_err(|e| each("allow_hosts", e)))
                    .collect::<Result<_, _>>()?,
                allow_cidrs: s
                    .allow_cidrs
                    .iter()
                    .map(|c| Cidr::parse(c).map_err(|e| each("allow_cidrs", e)))
                    .collect::<Result<_, _>>()?,
                localhost_only: s.localhost_only,
            },
            forwards: s
                .ports
                .iter()
                .map(|p| Port::parse(p).map(|p| PortForward::from_port(&p)))
                .collect::<Result<_, _>>()
                .map_err(|e| each("ports", e))?,
            log: None,
        }))
    }
}

/// The settings a merged workload (Smolfile and flags) asks for, as stored.
pub fn settings(eff: &smolfile::Effective) -> NetworkSettings {
    normalized(NetworkSettings {
        enabled: eff.net,
        allow_hosts: eff
            .allow_hosts
            .iter()
            .map(|h| h.as_str().to_string())
            .collect(),
        allow_cidrs: eff.allow_cidrs.iter().map(ToString::to_string).collect(),
        ports: eff.ports.iter().map(ToString::to_string).collect(),
        localhost_only: eff.localhost_only,
    })
}

/// `more` on top of `base` (flags over a pack's settings): the network is on and
/// localhost-only if either says so, allow lists are joined, and a port forward replaces an
/// earlier one from the same host address.
pub fn layered(base: &NetworkSettings, more: &NetworkSettings) -> NetworkSettings {
    let joined = |a: &[String], b: &[String]| -> Vec<String> {
        let mut out = a.to_vec();
        out.extend(b.iter().filter(|x| !a.contains(x)).cloned());
        out
    };
    let host_side = |p: &String| Port::parse(p).ok().map(|p| PortForward::from_port(&p).host);
    let mut ports: Vec<String> = base
        .ports
        .iter()
        .filter(|p| {
            host_side(p).is_none_or(|key| !more.ports.iter().any(|m| host_side(m) == Some(key)))
        })
        .cloned()
        .collect();
    ports.extend(more.ports.iter().cloned());
    normalized(NetworkSettings {
        enabled: base.enabled || more.enabled,
        allow_hosts: joined(&base.allow_hosts, &more.allow_hosts),
        allow_cidrs: joined(&base.allow_cidrs, &more.allow_cidrs),
        ports,
        localhost_only: base.localhost_only || more.localhost_only,
    })
}

/// Localhost-only makes the allow lists moot; stored as "only host.smolvm.internal", they say
/// the same to a reader that does not know `localhost_only` (pack format 1.0).
fn normalized(mut s: NetworkSettings) -> NetworkSettings {
    if s.localhost_only {
        s.enabled = true;
        s.allow_hosts = vec![HOST_NAME.to_string()];
        s.allow_cidrs.clear();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(enabled: bool, hosts: &[&str], cidrs: &[&str], ports: &[&str]) -> NetworkSettings {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        NetworkSettings {
            enabled,
            allow_hosts: v(hosts),
            allow_cidrs: v(cidrs),
            ports: v(ports),
            localhost_only: false,
        }
    }

    #[test]
    fn settings_parse_back_into_the_same_rules_and_forwards() {
        let s = stored(
            true,
            &["pypi.org", "*.example.com"],
            &["10.0.0.0/8", "fd00::/8"],
            &["8080:80", "127.0.0.2:8443:443"],
        );
        let spec = NetworkSpec::from_settings(&s).unwrap().unwrap();
        let hosts: Vec<&str> = spec.rules.allow_hosts.iter().map(|h| h.as_str()).collect();
        assert_eq!(hosts, ["pypi.org", "*.example.com"]);
        assert_eq!(spec.rules.allow_cidrs.len(), 2);
        assert_eq!(
            spec.forwards,
            [
                PortForward {
                    host: "127.0.0.1:8080".parse().unwrap(),
                    guest_port: 80
                },
                PortForward {
                    host: "127.0.0.2:8443".parse().unwrap(),
                    guest_port: 443
                }
            ]
        );
    }

    #[test]
    fn no_network_means_none_and_ports_without_it_are_refused() {
        assert!(
            NetworkSpec::from_settings(&NetworkSettings::default())
                .unwrap()
                .is_none()
        );
        let e = NetworkSpec::from_settings(&stored(false, &[], &[], &["8080:80"])).unwrap_err();
        assert!(e.contains("-p 8080:80") && e.contains("add --net"), "{e}");
    }

    #[test]
    fn a_bad_stored_value_is_refused_with_its_setting() {
        for (s, what) in [
            (stored(true, &["a.*.com"], &[], &[]), "allow_hosts"),
            (stored(true, &[], &["10.0.0.1/8"], &[]), "allow_cidrs"),
            (stored(true, &[], &[], &["80"]), "ports"),
        ] {
            let e = NetworkSpec::from_settings(&s).unwrap_err();
            assert!(e.starts_with(&format!("network setting {what}:")), "{e}");
        }
    }

    #[test]
    fn layers_join_lists_and_a_later_forward_replaces_one_on_the_same_host_port() {
        let base = stored(
            true,
            &["pypi.org"],
            &["10.0.0.0/8"],
            &["8080:80", "9000:90"],
        );
        let more = stored(
            false,
            &["pypi.org", "example.com"],
            &[],
            &["127.0.0.1:8080:81"],
        );
        let l = layered(&base, &more);
        assert!(l.enabled);
        assert_eq!(l.allow_hosts, ["pypi.org", "example.com"]);
        assert_eq!(l.allow_cidrs, ["10.0.0.0/8"]);
        assert_eq!(l.ports, ["9000:90", "127.0.0.1:8080:81"]);
        // --net alone turns on a pack packed without a network.
        assert!(layered(&NetworkSettings::default(), &stored(true, &[], &[], &[])).enabled);
    }

    #[test]
    fn localhost_only_is_stored_so_that_an_older_reader_enforces_it_too() {
        let more = NetworkSettings {
            localhost_only: true,
            ..Default::default()
        };
        let l = layered(&stored(true, &["pypi.org"], &["10.0.0.0/8"], &[]), &more);
        assert!(l.enabled && l.localhost_only);
        assert_eq!(l.allow_hosts, [HOST_NAME]);
        assert!(l.allow_cidrs.is_empty());
        // What a reader ignoring `localhost_only` sees allows the host and nothing else.
        let old = NetworkSettings {
            localhost_only: false,
            ..l
        };
        let rules = NetworkSpec::from_settings(&old).unwrap().unwrap().rules;
        let policy = smolvm_net::policy::Policy::new(rules);
        let now = std::time::Instant::now();
        let gw = std::net::Ipv4Addr::new(192, 168, 127, 1);
        use smolvm_net::policy::Destination;
        assert!(policy.check(Destination::Host, gw, now).is_ok());
        assert!(
            policy
                .check(Destination::Remote("10.1.2.3".parse().unwrap()), gw, now)
                .is_err()
        );
        assert!(policy.may_resolve("pypi.org").is_err());
    }
}
