//! The value syntaxes of a Smolfile, shared with the CLI flags that set the same things
//! (`-e`, `-v`, `-p`, `--allow-host`, `--allow-cidr`, ...). Every parser returns the
//! message a user sees, in the form "expected ..., found ...".

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::suggest;

/// Splits an environment entry `KEY=VALUE` into key and value.
///
/// The key must match `[A-Za-z_][A-Za-z0-9_]*`; the value may be empty or contain `=`.
pub fn parse_env(entry: &str) -> Result<(&str, &str), String> {
    entry
        .split_once('=')
        .filter(|(key, _)| is_env_key(key))
        .ok_or_else(|| {
            format!("expected KEY=VALUE with KEY matching [A-Za-z_][A-Za-z0-9_]*, found {entry:?}")
        })
}

/// A plain decimal number: only ASCII digits (Rust's `parse` would also take `+80`).
pub(crate) fn parse_decimal<T: std::str::FromStr>(text: &str) -> Option<T> {
    text.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| text.parse().ok())
        .flatten()
}

fn is_env_key(key: &str) -> bool {
    key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks a path inside the guest: absolute, without `..`.
pub fn check_guest_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        Err(format!("expected an absolute guest path, found {path:?}"))
    } else if path.split('/').any(|c| c == "..") {
        Err(format!(
            "expected a guest path without \"..\", found {path:?}"
        ))
    } else {
        Ok(())
    }
}

/// Parses a duration: one or more `<integer><unit>` with units `ms`, `s`, `m`, `h`
/// (`500ms`, `10s`, `2m`, `1h`, `1m30s`). A unit is required.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("expected a duration like 10s, 2m or 500ms, found {text:?}");
    if text.is_empty() {
        return Err(invalid());
    }
    let mut rest = text;
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let amount: u64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        // "ms" before "m", so that "500ms" is not 500 minutes and an "s".
        let (unit, millis) = [("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000)]
            .into_iter()
            .find(|(unit, _)| rest.starts_with(unit))
            .ok_or_else(invalid)?;
        rest = &rest[unit.len()..];
        let part = amount.checked_mul(millis).ok_or_else(invalid)?;
        total = total
            .checked_add(Duration::from_millis(part))
            .ok_or_else(invalid)?;
    }
    Ok(total)
}

/// A bind mount from the host into the guest: `HOST:GUEST[:ro|:rw]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Volume {
    /// The host path as written.
    pub host_spec: String,
    /// The host path resolved against the base directory (absolute when that is).
    pub host: PathBuf,
    /// Absolute path in the guest.
    pub guest: String,
    /// Mounted read-only (`:ro`); read-write is the default.
    pub read_only: bool,
}

impl Volume {
    /// Parses `spec`, resolving a relative host path against `base_dir` (the Smolfile's
    /// directory, or the working directory for a `-v` flag). The host path is not
    /// checked on disk. The guest path must be absolute, not `/`, and free of `..`.
    pub fn parse(spec: &str, base_dir: &Path) -> Result<Volume, String> {
        let invalid = || format!("expected HOST:GUEST[:ro|:rw], found {spec:?}");
        let (host, guest, read_only) = match spec.split(':').collect::<Vec<_>>()[..] {
            [host, guest] => (host, guest, false),
            [host, guest, "ro"] => (host, guest, true),
            [host, guest, "rw"] => (host, guest, false),
            _ => return Err(invalid()),
        };
        if host.is_empty() || guest.is_empty() {
            return Err(invalid());
        }
        if host.starts_with('~') {
            return Err(format!(
                "expected an absolute or relative host path (\"~\" is not expanded), found {host:?}"
            ));
        }
        check_guest_path(guest)?;
        if guest.trim_end_matches('/').is_empty() {
            return Err(format!(
                "expected a guest path other than \"/\", found {guest:?}"
            ));
        }
        Ok(Volume {
            host_spec: host.to_owned(),
            // Collecting the components drops "." and doubled slashes, keeps "..".
            host: base_dir.join(host).components().collect(),
            guest: guest.to_owned(),
            read_only,
        })
    }
}

impl fmt::Display for Volume {
    /// `HOST:GUEST[:ro]` with the resolved host path.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host.display(), self.guest)?;
        if self.read_only {
            f.write_str(":ro")?;
        }
        Ok(())
    }
}

/// A port forward from the host into the guest: `[IP:]HOST:GUEST`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Port {
    /// Host address to listen on; `None` leaves the choice to the runtime.
    pub ip: Option<IpAddr>,
    /// Host port, 1-65535.
    pub host: u16,
    /// Guest port, 1-65535.
    pub guest: u16,
}

impl Port {
    /// Parses `HOST:GUEST`, `IPv4:HOST:GUEST` or `[IPv6]:HOST:GUEST`.
    pub fn parse(spec: &str) -> Result<Port, String> {
        let bad_ip = || {
            format!(
                "expected an IPv4 address or a bracketed [IPv6] address before HOST:GUEST, found {spec:?}"
            )
        };
        let (ip, ports) = match spec.strip_prefix('[') {
            Some(rest) => {
                let (ip, ports) = rest.split_once("]:").ok_or_else(bad_ip)?;
                (Some(IpAddr::V6(ip.parse().map_err(|_| bad_ip())?)), ports)
            }
            None => match spec.split_once(':') {
                Some((ip, ports)) if ports.contains(':') => {
                    (Some(IpAddr::V4(ip.parse().map_err(|_| bad_ip())?)), ports)
                }
                _ => (None, spec),
            },
        };
        let port = |p: &str| parse_decimal::<u16>(p).filter(|&n| n > 0);
        match ports.split_once(':').map(|(h, g)| (port(h), port(g))) {
            Some((Some(host), Some(guest))) => Ok(Port { ip, host, guest }),
            _ => Err(format!(
                "expected HOST:GUEST with ports 1-65535, found {spec:?}"
            )),
        }
    }
}

impl fmt::Display for Port {
    /// The form [`Port::parse`] reads.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            Some(IpAddr::V4(ip)) => write!(f, "{ip}:")?,
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            None => {}
        }
        write!(f, "{}:{}", self.host, self.guest)
    }
}

/// An IPv4 or IPv6 network the guest may reach: `10.0.0.0/8`, `fd00::/8`, or a bare
/// address meaning that one host (`/32`, `/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// Network address; its host bits are zero.
    pub addr: IpAddr,
    /// Prefix length: 0-32 for IPv4, 0-128 for IPv6.
    pub prefix: u8,
}

impl Cidr {
    /// Parses `ADDRESS[/PREFIX]`. Host bits set (`10.0.0.1/8`) are an error that
    /// suggests the network address.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = text
            .split_once('/')
            .map_or((text, None), |(a, p)| (a, Some(p)));
        let addr: IpAddr = addr.parse().map_err(|_| {
            format!("expected an IPv4 or IPv6 CIDR like 10.0.0.0/8 or fd00::/8, found {text:?}")
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => parse_decimal::<u8>(p)
                .filter(|&n| n <= max)
                .ok_or_else(|| {
                    format!("expected a prefix length from 0 to {max} after \"/\", found {text:?}")
                })?,
        };
        let network = Cidr {
            addr: network_address(addr, prefix),
            prefix,
        };
        if network.addr != addr {
            return Err(format!(
                "expected a network address with no host bits set, found {text:?}; did you mean \"{network}\"?"
            ));
        }
        Ok(network)
    }
}

fn network_address(addr: IpAddr, prefix: u8) -> IpAddr {
    // checked_shl: a /0 mask is all zeros, and shifting by the full width would overflow.
    match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
        }
    }
}

impl fmt::Display for Cidr {
    /// Always with the prefix: `10.0.0.0/8`, `1.2.3.4/32`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A hostname the guest may resolve and reach: RFC 1123 labels, optionally with a
/// leading `*.` that matches any subdomain. Stored lowercase.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPattern(String);

/// The longest DNS name.
const MAX_HOSTNAME_LEN: usize = 253;

impl HostPattern {
    /// Parses `example.com` or `*.example.com`.
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        if text.len() > MAX_HOSTNAME_LEN {
            return Err(format!(
                "expected a hostname of at most {MAX_HOSTNAME_LEN} characters, found {} characters",
                text.len()
            ));
        }
        if text.parse::<IpAddr>().is_ok() {
            return Err(format!(
                "expected a hostname, found IP address {text:?} (addresses belong in allow_cidrs)"
            ));
        }
        let name = text.strip_prefix("*.").unwrap_or(text);
        let label_ok = |label: &str| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if name.split('.').all(label_ok) {
            Ok(HostPattern(text.to_ascii_lowercase()))
        } else {
            Err(format!(
                "expected a hostname like example.com or *.example.com, found {text:?}"
            ))
        }
    }

    /// The pattern, lowercase, with its `*.` if any.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An OCI platform: `os/arch[/variant]`, such as `linux/amd64` or `linux/arm/v7`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Platform {
    /// Always `linux`: the guest is a Linux VM.
    pub os: String,
    /// One of [`Platform::ARCHITECTURES`].
    pub architecture: String,
    /// CPU variant (`v7`, `v8`), when given.
    pub variant: Option<String>,
}

impl Platform {
    /// The architectures an image can be packed for, in OCI's (Go's) spelling.
    pub const ARCHITECTURES: [&str; 7] = [
        "amd64", "arm64", "386", "arm", "ppc64le", "s390x", "riscv64",
    ];

    /// Parses `os/arch[/variant]`; common other spellings (`x86_64`, `aarch64`) get a
    /// suggestion.
    pub fn parse(text: &str) -> Result<Platform, String> {
        Self::parse_exact(text).ok_or_else(|| {
            let mut message = format!(
                "expected a platform like linux/amd64 or linux/arm/v7 (arch: {}), found {text:?}",
                Self::ARCHITECTURES.join(", ")
            );
            if let Some(fixed) = Self::respell(text) {
                message += &format!("; did you mean \"{fixed}\"?");
            }
            message
        })
    }

    fn parse_exact(text: &str) -> Option<Platform> {
        let mut parts = text.split('/');
        let (os, architecture, variant) = (parts.next()?, parts.next()?, parts.next());
        let variant_ok = variant.is_none_or(|v| {
            v.strip_prefix('v')
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        });
        (os == "linux"
            && Self::ARCHITECTURES.contains(&architecture)
            && variant_ok
            && parts.next().is_none())
        .then(|| Platform {
            os: os.to_owned(),
            architecture: architecture.to_owned(),
            variant: variant.map(str::to_owned),
        })
    }

    /// The valid platform `text` probably meant: lowercased, with kernel-style
    /// architecture names translated.
    fn respell(text: &str) -> Option<Platform> {
        let lower = text.to_lowercase();
        let mut parts: Vec<&str> = lower.split('/').collect();
        if let Some(arch) = parts.get_mut(1) {
            *arch = match *arch {
                "x86_64" | "x86-64" | "x64" => "amd64",
                "aarch64" => "arm64",
                "i386" | "i686" | "x86" => "386",
                other => other,
            };
        }
        Self::parse_exact(&parts.join("/"))
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

/// What to do when the workload's main process exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RestartPolicy {
    /// Leave it stopped (the default).
    #[default]
    Never,
    /// Restart whatever the exit status.
    Always,
    /// Restart after a non-zero exit status.
    OnFailure,
    /// Restart unless it was stopped on purpose (`machine stop`), also across host reboots.
    UnlessStopped,
}

impl RestartPolicy {
    /// Every policy, in the order the documentation lists them.
    pub const ALL: [RestartPolicy; 4] = [
        Self::Never,
        Self::Always,
        Self::OnFailure,
        Self::UnlessStopped,
    ];

    /// The name written in a Smolfile.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Never => "never",
            Self::Always => "always",
            Self::OnFailure => "on-failure",
            Self::UnlessStopped => "unless-stopped",
        }
    }

    /// Parses a policy name, suggesting the nearest one on a typo.
    pub fn parse(text: &str) -> Result<RestartPolicy, String> {
        let names = Self::ALL.map(Self::as_str);
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == text)
            .ok_or_else(|| {
                let mut message = format!("expected one of {}, found {text:?}", names.join(", "));
                if let Some(near) = suggest::closest(text, names) {
                    message += &format!("; did you mean {near:?}?");
                }
                message
            })
    }
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
