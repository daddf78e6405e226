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

/// Guest directories a volume may not cover: the kernel's own filesystems.
const RESERVED_GUEST_DIRS: [&str; 3] = ["proc", "sys", "dev"];

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
    /// checked on disk. The guest path must be absolute, not `/`, free of `..`, and outside
    /// `/proc`, `/sys` and `/dev`.
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
        let top = guest.split('/').find(|c| !c.is_empty()).unwrap_or("");
        if RESERVED_GUEST_DIRS.contains(&top) {
            return Err(format!(
                "expected a guest path outside /proc, /sys and /dev (the VM's kernel filesystems live there), found {guest:?}"
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

    /// Whether `ip` is in this network (never across address families).
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && network_address(ip, self.prefix) == self.addr
    }

    /// Whether every address of this network is also in `other`.
    pub fn within(&self, other: &Cidr) -> bool {
        self.prefix >= other.prefix && other.contains(self.addr)
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

    /// Whether the DNS name `name` (any case, an optional trailing dot) is this host, or for
    /// `*.example.com` any name below `example.com` (not `example.com` itself).
    pub fn matches(&self, name: &str) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        match self.0.strip_prefix("*.") {
            Some(domain) => name
                .strip_suffix(domain)
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
            None => name == self.0,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_entries() {
        assert_eq!(parse_env("A=1"), Ok(("A", "1")));
        assert_eq!(parse_env("_x9="), Ok(("_x9", "")));
        assert_eq!(parse_env("URL=a=b"), Ok(("URL", "a=b")));
        for bad in ["A", "=1", "1A=x", "A-B=x", "A B=x"] {
            assert_eq!(
                parse_env(bad),
                Err(format!(
                    "expected KEY=VALUE with KEY matching [A-Za-z_][A-Za-z0-9_]*, found {bad:?}"
                ))
            );
        }
    }

    #[test]
    fn durations() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("500ms"), Ok(ms(500)));
        assert_eq!(parse_duration("10s"), Ok(ms(10_000)));
        assert_eq!(parse_duration("2m"), Ok(ms(120_000)));
        assert_eq!(parse_duration("1h"), Ok(ms(3_600_000)));
        assert_eq!(parse_duration("1m30s"), Ok(ms(90_000)));
        assert_eq!(parse_duration("1h0m5s250ms"), Ok(ms(3_605_250)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in [
            "",
            "10",
            "s",
            "10 s",
            "1.5s",
            "-1s",
            "10sec",
            "1d",
            "99999999999999999999h",
        ] {
            assert_eq!(
                parse_duration(bad),
                Err(format!(
                    "expected a duration like 10s, 2m or 500ms, found {bad:?}"
                ))
            );
        }
    }

    #[test]
    fn volumes() {
        let base = Path::new("/proj");
        let v = Volume::parse("./data:/data", base).unwrap();
        assert_eq!(
            v,
            Volume {
                host_spec: "./data".into(),
                host: "/proj/data".into(),
                guest: "/data".into(),
                read_only: false
            }
        );
        assert_eq!(v.to_string(), "/proj/data:/data");
        let v = Volume::parse("/abs//src/:/app:ro", base).unwrap();
        assert_eq!((v.host, v.read_only), ("/abs/src".into(), true));
        assert_eq!(
            Volume::parse("../up:/up:rw", base).unwrap().host,
            PathBuf::from("/proj/../up")
        );
        let err = |spec: &str| Volume::parse(spec, base).unwrap_err();
        for bad in ["data", ":/data", "data:", "a:/b:rx", "a:/b:ro:x"] {
            assert_eq!(
                err(bad),
                format!("expected HOST:GUEST[:ro|:rw], found {bad:?}")
            );
        }
        assert_eq!(
            err("./data:data"),
            "expected an absolute guest path, found \"data\""
        );
        assert_eq!(
            err("./data:/srv/../etc"),
            "expected a guest path without \"..\", found \"/srv/../etc\""
        );
        assert_eq!(
            err("./data:/"),
            "expected a guest path other than \"/\", found \"/\""
        );
        assert_eq!(
            err("./data://"),
            "expected a guest path other than \"/\", found \"//\""
        );
        for reserved in ["/proc", "/sys/fs/x", "//dev/", "/dev/shm"] {
            assert_eq!(
                err(&format!("./data:{reserved}")),
                format!(
                    "expected a guest path outside /proc, /sys and /dev (the VM's kernel filesystems live there), found {reserved:?}"
                )
            );
        }
        // Only the whole first component counts.
        assert_eq!(
            Volume::parse("./d:/devices", base).unwrap().guest,
            "/devices"
        );
        assert_eq!(
            err("~/data:/data"),
            "expected an absolute or relative host path (\"~\" is not expanded), found \"~/data\""
        );
    }

    #[test]
    fn ports() {
        let p = |s: &str| Port::parse(s).map(|p| (p.ip, p.host, p.guest, p.to_string()));
        assert_eq!(p("8080:80"), Ok((None, 8080, 80, "8080:80".into())));
        let lo4: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(
            p("127.0.0.1:1:65535"),
            Ok((Some(lo4), 1, 65535, "127.0.0.1:1:65535".into()))
        );
        let lo6: IpAddr = "::1".parse().unwrap();
        assert_eq!(
            p("[::1]:443:8443"),
            Ok((Some(lo6), 443, 8443, "[::1]:443:8443".into()))
        );
        for bad in [
            "80",
            "0:80",
            "80:65536",
            "+80:80",
            "80:",
            "a:b",
            "80:80/udp",
            "[::1]:80",
        ] {
            assert_eq!(
                Port::parse(bad),
                Err(format!(
                    "expected HOST:GUEST with ports 1-65535, found {bad:?}"
                ))
            );
        }
        for bad in [
            "localhost:80:80",
            "[::1]80:80",
            "[nope]:80:80",
            "1.2.3:80:80",
            "::1:80:80",
        ] {
            assert_eq!(
                Port::parse(bad),
                Err(format!(
                    "expected an IPv4 address or a bracketed [IPv6] address before HOST:GUEST, found {bad:?}"
                ))
            );
        }
    }

    #[test]
    fn cidrs() {
        let c = |s: &str| Cidr::parse(s).map(|c| c.to_string());
        assert_eq!(c("10.0.0.0/8"), Ok("10.0.0.0/8".into()));
        assert_eq!(c("0.0.0.0/0"), Ok("0.0.0.0/0".into()));
        assert_eq!(c("192.0.2.7"), Ok("192.0.2.7/32".into()));
        assert_eq!(c("fd00::/8"), Ok("fd00::/8".into()));
        assert_eq!(c("::/0"), Ok("::/0".into()));
        assert_eq!(c("2001:db8::1"), Ok("2001:db8::1/128".into()));
        assert_eq!(
            c("10.0.0.1/8"),
            Err("expected a network address with no host bits set, found \"10.0.0.1/8\"; did you mean \"10.0.0.0/8\"?".into())
        );
        assert_eq!(
            c("fd00::1/8"),
            Err("expected a network address with no host bits set, found \"fd00::1/8\"; did you mean \"fd00::/8\"?".into())
        );
        for bad in ["10.0.0/8", "example.com", "", "/8", "10.0.0.0/"] {
            let expected = if bad.ends_with('/') {
                format!("expected a prefix length from 0 to 32 after \"/\", found {bad:?}")
            } else {
                format!("expected an IPv4 or IPv6 CIDR like 10.0.0.0/8 or fd00::/8, found {bad:?}")
            };
            assert_eq!(c(bad), Err(expected));
        }
        assert_eq!(
            c("10.0.0.0/33"),
            Err("expected a prefix length from 0 to 32 after \"/\", found \"10.0.0.0/33\"".into())
        );
        assert_eq!(
            c("fd00::/129"),
            Err("expected a prefix length from 0 to 128 after \"/\", found \"fd00::/129\"".into())
        );
    }

    #[test]
    fn host_patterns() {
        assert_eq!(HostPattern::parse("PyPI.org").unwrap().as_str(), "pypi.org");
        assert_eq!(
            HostPattern::parse("*.example.com").unwrap().to_string(),
            "*.example.com"
        );
        assert!(HostPattern::parse("localhost").is_ok());
        assert!(HostPattern::parse("1password.com").is_ok());
        assert!(HostPattern::parse(&format!("{}.com", "a".repeat(63))).is_ok());
        for bad in [
            "",
            "*",
            "*.",
            "a.*.com",
            "exa mple.com",
            "under_score.com",
            "-lead.com",
            "trail-.com",
            "example.com.",
            "a..b",
            "https://example.com",
        ] {
            assert_eq!(
                HostPattern::parse(bad),
                Err(format!(
                    "expected a hostname like example.com or *.example.com, found {bad:?}"
                )),
            );
        }
        assert!(HostPattern::parse(&format!("{}.com", "a".repeat(64))).is_err());
        let long = vec!["a".repeat(63); 4].join(".");
        assert_eq!(
            HostPattern::parse(&long),
            Err("expected a hostname of at most 253 characters, found 255 characters".into())
        );
        assert_eq!(
            HostPattern::parse("10.0.0.1"),
            Err("expected a hostname, found IP address \"10.0.0.1\" (addresses belong in allow_cidrs)".into())
        );
    }

    #[test]
    fn platforms() {
        let p = Platform::parse("linux/arm/v7").unwrap();
        assert_eq!(
            (p.os.as_str(), p.architecture.as_str(), p.variant.as_deref()),
            ("linux", "arm", Some("v7"))
        );
        assert_eq!(p.to_string(), "linux/arm/v7");
        for arch in Platform::ARCHITECTURES {
            assert_eq!(
                Platform::parse(&format!("linux/{arch}"))
                    .unwrap()
                    .to_string(),
                format!("linux/{arch}")
            );
        }
        let expected = |found: &str, suggestion: Option<&str>| {
            let mut m = format!(
                "expected a platform like linux/amd64 or linux/arm/v7 (arch: amd64, arm64, 386, arm, ppc64le, s390x, riscv64), found {found:?}"
            );
            if let Some(s) = suggestion {
                m += &format!("; did you mean {s:?}?");
            }
            m
        };
        assert_eq!(
            Platform::parse("linux/x86_64").unwrap_err(),
            expected("linux/x86_64", Some("linux/amd64"))
        );
        assert_eq!(
            Platform::parse("Linux/AArch64").unwrap_err(),
            expected("Linux/AArch64", Some("linux/arm64"))
        );
        for bad in [
            "linux",
            "windows/amd64",
            "linux/mips",
            "linux/arm/7",
            "linux/arm/v",
            "linux/arm/v7/x",
            "amd64",
        ] {
            assert_eq!(Platform::parse(bad).unwrap_err(), expected(bad, None));
        }
    }

    #[test]
    fn restart_policies() {
        for policy in RestartPolicy::ALL {
            assert_eq!(RestartPolicy::parse(policy.as_str()), Ok(policy));
        }
        assert_eq!(
            RestartPolicy::parse("onfailure"),
            Err("expected one of never, always, on-failure, unless-stopped, found \"onfailure\"; did you mean \"on-failure\"?".into())
        );
        assert_eq!(
            RestartPolicy::parse("sometimes"),
            Err(
                "expected one of never, always, on-failure, unless-stopped, found \"sometimes\""
                    .into()
            )
        );
    }

    #[test]
    fn guest_paths() {
        assert_eq!(check_guest_path("/"), Ok(()));
        assert_eq!(check_guest_path("/srv/app"), Ok(()));
        assert_eq!(
            check_guest_path("srv"),
            Err("expected an absolute guest path, found \"srv\"".into())
        );
        assert_eq!(
            check_guest_path("/a/.."),
            Err("expected a guest path without \"..\", found \"/a/..\"".into())
        );
    }

    #[test]
    fn cidr_membership() {
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.255.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(
            !net.contains("::ffff:10.1.0.1".parse().unwrap()),
            "no cross-family match"
        );
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("169.254.169.254".parse().unwrap()));
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        let metadata = Cidr::parse("169.254.0.0/16").unwrap();
        assert!(Cidr::parse("169.254.169.254").unwrap().within(&metadata));
        assert!(!all.within(&metadata));
    }

    #[test]
    fn host_patterns_match_names() {
        let exact = HostPattern::parse("Example.com").unwrap();
        assert!(exact.matches("example.com") && exact.matches("EXAMPLE.com."));
        assert!(!exact.matches("www.example.com") && !exact.matches("badexample.com"));
        let wild = HostPattern::parse("*.example.com").unwrap();
        assert!(wild.matches("a.example.com") && wild.matches("a.b.example.com"));
        assert!(
            !wild.matches("example.com"),
            "a wildcard is for subdomains only"
        );
        assert!(!wild.matches("badexample.com") && !wild.matches(".example.com"));
    }
}
