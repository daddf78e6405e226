//! What keys each table accepts, with their types and documentation. One table feeds
//! the validator (unknown keys, integer bounds, type errors) and the JSON Schema, so the
//! two cannot disagree about which keys exist.

use serde_json::{Map, Value, json};

use crate::model::{
    DEFAULT_CPUS, DEFAULT_MEMORY_MIB, DEFAULT_OVERLAY_GIB, DEFAULT_STORAGE_GIB, MAX_CPUS,
    MAX_MEMORY_MIB, MIN_DISK_GIB, MIN_MEMORY_MIB,
};
use crate::values::{Platform, RestartPolicy};

/// One key of a table.
pub(crate) struct Key {
    pub name: &'static str,
    pub doc: &'static str,
    pub ty: Ty,
    pub required: bool,
}

impl Key {
    const fn new(name: &'static str, doc: &'static str, ty: Ty) -> Key {
        Key {
            name,
            doc,
            ty,
            required: false,
        }
    }

    const fn required(self) -> Key {
        Key {
            required: true,
            ..self
        }
    }
}

/// The type of a key's value.
pub(crate) enum Ty {
    /// An integer in `min..=max`; `u32::MAX` as `max` means "no upper bound".
    Int {
        min: u32,
        max: u32,
        unit: &'static str,
        default: Option<u32>,
    },
    Bool,
    Str {
        syntax: Syntax,
        default: Option<&'static str>,
    },
    /// An array of strings.
    List(Syntax),
    Table(&'static [Key]),
}

/// What a string must look like. The validator's parsers are exact; the JSON Schema
/// patterns are close approximations that editors can check as you type.
#[derive(Clone, Copy)]
pub(crate) enum Syntax {
    Text,
    GuestPath,
    Image,
    Env,
    Volume,
    Port,
    Cidr,
    Host,
    Duration,
    Platform,
    Policy,
}

const fn int(min: u32, max: u32, unit: &'static str, default: Option<u32>) -> Ty {
    Ty::Int {
        min,
        max,
        unit,
        default,
    }
}

const fn string(syntax: Syntax, default: Option<&'static str>) -> Ty {
    Ty::Str { syntax, default }
}

const NO_MAX: u32 = u32::MAX;

pub(crate) const ROOT: &[Key] = &[
    Key::new(
        "image",
        "OCI image reference, e.g. \"python:3.12-alpine\" or \"ghcr.io/org/app@sha256:...\". Omit it for the built-in bare VM. The --image flag wins.",
        string(Syntax::Image, None),
    ),
    Key::new(
        "entrypoint",
        "Replaces the image's entrypoint; the image's cmd is then dropped unless cmd is given.",
        Ty::List(Syntax::Text),
    ),
    Key::new(
        "cmd",
        "Replaces the image's cmd (arguments after the entrypoint). Arguments after -- on the command line win.",
        Ty::List(Syntax::Text),
    ),
    Key::new(
        "env",
        "Environment variables as KEY=VALUE, added after the image's; later entries win per key.",
        Ty::List(Syntax::Env),
    ),
    Key::new(
        "workdir",
        "Absolute guest directory the command starts in; the image's when omitted.",
        string(Syntax::GuestPath, None),
    ),
    Key::new(
        "cpus",
        "Number of vCPUs.",
        int(1, MAX_CPUS, "", Some(DEFAULT_CPUS)),
    ),
    Key::new(
        "memory",
        "Guest memory in MiB.",
        int(
            MIN_MEMORY_MIB,
            MAX_MEMORY_MIB,
            "MiB",
            Some(DEFAULT_MEMORY_MIB),
        ),
    ),
    Key::new(
        "net",
        "Give the guest a network. Implied by [network] allow_hosts, allow_cidrs or outbound_localhost_only.",
        Ty::Bool,
    ),
    Key::new(
        "storage",
        "Size of the persistent storage disk in GiB.",
        int(MIN_DISK_GIB, NO_MAX, "GiB", Some(DEFAULT_STORAGE_GIB)),
    ),
    Key::new(
        "overlay",
        "Size of the writable overlay over the image in GiB.",
        int(MIN_DISK_GIB, NO_MAX, "GiB", Some(DEFAULT_OVERLAY_GIB)),
    ),
    Key::new(
        "network",
        "Egress rules. Each turns the network on and limits it to what it names.",
        Ty::Table(NETWORK),
    ),
    Key::new(
        "dev",
        "Settings for machine run and machine create (ignored by pack create).",
        Ty::Table(DEV),
    ),
    Key::new(
        "artifact",
        "Settings for pack create; each wins over its top-level counterpart when packing.",
        Ty::Table(ARTIFACT),
    ),
    Key::new(
        "health",
        "Health check run by machine monitor.",
        Ty::Table(HEALTH),
    ),
    Key::new(
        "restart",
        "What to do when the workload exits.",
        Ty::Table(RESTART),
    ),
    Key::new("auth", "Credentials the guest may use.", Ty::Table(AUTH)),
];

const NETWORK: &[Key] = &[
    Key::new(
        "allow_hosts",
        "Hostnames the guest may reach; \"*.example.com\" matches every subdomain.",
        Ty::List(Syntax::Host),
    ),
    Key::new(
        "allow_cidrs",
        "IPv4/IPv6 networks the guest may reach, e.g. \"10.0.0.0/8\"; a bare address means that host.",
        Ty::List(Syntax::Cidr),
    ),
    Key::new(
        "outbound_localhost_only",
        "Egress only to the host's loopback, reached as host.smolvm.internal.",
        Ty::Bool,
    ),
];

const DEV: &[Key] = &[
    Key::new(
        "volumes",
        "Host directories to mount: HOST:GUEST[:ro|:rw]. A relative HOST starts at the Smolfile's directory; GUEST is absolute.",
        Ty::List(Syntax::Volume),
    ),
    Key::new(
        "ports",
        "Host ports forwarded to the guest: HOST:GUEST, IP:HOST:GUEST or [IPv6]:HOST:GUEST.",
        Ty::List(Syntax::Port),
    ),
    Key::new(
        "init",
        "Shell command lines run in order on every VM start, before the command.",
        Ty::List(Syntax::Text),
    ),
    Key::new(
        "env",
        "Environment variables as KEY=VALUE, added after the top-level env.",
        Ty::List(Syntax::Env),
    ),
    Key::new(
        "workdir",
        "Absolute guest directory; replaces the top-level workdir.",
        string(Syntax::GuestPath, None),
    ),
];

const ARTIFACT: &[Key] = &[
    Key::new(
        "cpus",
        "Default vCPUs of the packed executable.",
        int(1, MAX_CPUS, "", None),
    ),
    Key::new(
        "memory",
        "Default guest memory in MiB of the packed executable.",
        int(MIN_MEMORY_MIB, MAX_MEMORY_MIB, "MiB", None),
    ),
    Key::new(
        "entrypoint",
        "Entrypoint of the packed executable.",
        Ty::List(Syntax::Text),
    ),
    Key::new(
        "cmd",
        "Default arguments of the packed executable.",
        Ty::List(Syntax::Text),
    ),
    Key::new(
        "oci_platform",
        "Image platform to pack, e.g. \"linux/arm64\"; the host's when omitted.",
        string(Syntax::Platform, None),
    ),
];

const HEALTH: &[Key] = &[
    Key::new(
        "exec",
        "Command and arguments run in the guest (not a shell line); exit status 0 means healthy.",
        Ty::List(Syntax::Text),
    )
    .required(),
    Key::new(
        "interval",
        "Time between checks, greater than zero.",
        string(Syntax::Duration, Some("30s")),
    ),
    Key::new(
        "timeout",
        "A check running longer than this has failed; greater than zero.",
        string(Syntax::Duration, Some("10s")),
    ),
    Key::new(
        "startup_grace",
        "Failures this soon after start do not count.",
        string(Syntax::Duration, Some("0s")),
    ),
    Key::new(
        "retries",
        "Consecutive failures before the workload is unhealthy.",
        int(0, NO_MAX, "", Some(3)),
    ),
];

const RESTART: &[Key] = &[
    Key::new(
        "policy",
        "never, always, on-failure (non-zero exit) or unless-stopped (also across host reboots).",
        string(Syntax::Policy, None),
    )
    .required(),
    Key::new(
        "max_retries",
        "Give up after this many restarts in a row; unlimited when omitted.",
        int(0, NO_MAX, "", None),
    ),
    Key::new(
        "max_backoff",
        "Longest wait between restarts; waits double up to this.",
        string(Syntax::Duration, Some("5m")),
    ),
];

const AUTH: &[Key] = &[Key::new(
    "ssh_agent",
    "Forward the host's SSH agent into the guest.",
    Ty::Bool,
)];

/// The key `name` of `keys`. Asking for a key the table does not list is a bug here.
pub(crate) fn key(keys: &'static [Key], name: &str) -> &'static Key {
    keys.iter()
        .find(|k| k.name == name)
        .unwrap_or_else(|| panic!("key {name:?} is missing from the spec table"))
}

/// The JSON Schema (draft 2020-12) of a Smolfile, for editors that check TOML against
/// one (taplo / Even Better TOML). It is generated from the same key tables as the
/// validator; string patterns approximate the validator's checks, which stay the judge.
pub fn json_schema() -> Value {
    let mut schema = table_schema(ROOT);
    schema["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    schema["title"] = json!("Smolfile");
    schema["description"] = json!(
        "A smolvm workload: the image, its command and resources, and how machine run, machine create and pack create use them."
    );
    schema
}

fn table_schema(keys: &[Key]) -> Value {
    let properties: Map<String, Value> = keys
        .iter()
        .map(|k| (k.name.to_owned(), key_schema(k)))
        .collect();
    let mut schema = json!({
        "type": "object",
        "properties": properties,
        "additionalProperties": false,
    });
    let required: Vec<&str> = keys.iter().filter(|k| k.required).map(|k| k.name).collect();
    if !required.is_empty() {
        schema["required"] = json!(required);
    }
    schema
}

fn key_schema(key: &Key) -> Value {
    let mut schema = match &key.ty {
        Ty::Int {
            min, max, default, ..
        } => {
            let mut s = json!({"type": "integer", "minimum": min, "maximum": max});
            if let Some(default) = default {
                s["default"] = json!(default);
            }
            s
        }
        Ty::Bool => json!({"type": "boolean", "default": false}),
        Ty::Str { syntax, default } => {
            let mut s = syntax_schema(*syntax);
            if let Some(default) = default {
                s["default"] = json!(default);
            }
            s
        }
        Ty::List(syntax) => json!({"type": "array", "items": syntax_schema(*syntax)}),
        Ty::Table(keys) => table_schema(keys),
    };
    if key.required && matches!(key.ty, Ty::List(_)) {
        schema["minItems"] = json!(1);
    }
    schema["description"] = json!(key.doc);
    schema
}

fn syntax_schema(syntax: Syntax) -> Value {
    let pattern = |pattern: &str, examples: &[&str]| json!({"type": "string", "pattern": pattern, "examples": examples});
    match syntax {
        Syntax::Text => json!({"type": "string"}),
        Syntax::GuestPath => pattern("^/", &["/app"]),
        Syntax::Image => pattern(
            concat!(
                r"^(?:(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?/)?",
                r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*",
                r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$",
            ),
            &["alpine:3.20", "python:3.12-alpine", "ghcr.io/org/app:1.0"],
        ),
        Syntax::Env => pattern("^[A-Za-z_][A-Za-z0-9_]*=", &["RUST_LOG=info"]),
        Syntax::Volume => pattern(
            "^[^:~][^:]*:/[^:]*(?::(?:ro|rw))?$",
            &["./src:/app", "/data:/data:ro"],
        ),
        Syntax::Port => pattern(
            r"^(?:(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|\[[0-9A-Fa-f:.]+\]):)?[0-9]{1,5}:[0-9]{1,5}$",
            &["8080:80", "127.0.0.1:8080:80"],
        ),
        Syntax::Cidr => pattern(
            r"^(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}(?:/[0-9]{1,2})?|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(?:/[0-9]{1,3})?)$",
            &["10.0.0.0/8", "fd00::/8", "192.0.2.7"],
        ),
        Syntax::Host => {
            let mut s = pattern(
                r"^(?:\*\.)?(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$",
                &["pypi.org", "*.githubusercontent.com"],
            );
            s["maxLength"] = json!(253);
            s
        }
        Syntax::Duration => pattern(
            "^(?:[0-9]+(?:ms|s|m|h))+$",
            &["500ms", "10s", "2m", "1m30s"],
        ),
        Syntax::Platform => pattern(
            &format!(
                "^linux/(?:{})(?:/v[0-9]+)?$",
                Platform::ARCHITECTURES.join("|")
            ),
            &["linux/amd64", "linux/arm64", "linux/arm/v7"],
        ),
        Syntax::Policy => {
            json!({"type": "string", "enum": RestartPolicy::ALL.map(RestartPolicy::as_str)})
        }
    }
}
