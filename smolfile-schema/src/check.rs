//! Walks the parsed TOML document along the spec tables, building a [`Smolfile`] and
//! collecting every problem on the way instead of stopping at the first.

use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::diagnostic::{Diagnostic, Source};
use crate::model::{Artifact, Auth, Dev, Health, Network, Restart, Smolfile};
use crate::reference;
use crate::spec::{self, Key, ROOT, Ty};
use crate::suggest;
use crate::values::{
    Cidr, HostPattern, Platform, Port, RestartPolicy, Volume, check_guest_path, parse_duration,
    parse_env,
};

/// Checks a parsed document; `base_dir` resolves relative volume host paths.
pub(crate) fn check(
    root: &Spanned<DeTable<'_>>,
    source: &Source<'_>,
    base_dir: &Path,
) -> Result<Smolfile, Vec<Diagnostic>> {
    let mut checker = Checker {
        source,
        base_dir,
        diagnostics: Vec::new(),
    };
    let smolfile = checker.smolfile(root);
    if checker.diagnostics.is_empty() {
        Ok(smolfile)
    } else {
        Err(checker.diagnostics)
    }
}

type Node<'i> = Spanned<DeValue<'i>>;

/// A table of the document whose keys have been checked against its spec.
struct Table<'t, 'i> {
    /// Empty for the top level.
    name: &'static str,
    keys: &'static [Key],
    entries: &'t DeTable<'i>,
}

impl<'t, 'i> Table<'t, 'i> {
    fn get(&self, key: &str) -> Option<&'t Node<'i>> {
        self.entries
            .iter()
            .find(|(k, _)| k.get_ref() == key)
            .map(|(_, v)| v)
    }

    fn path(&self, key: &str) -> String {
        key_path(self.name, key)
    }
}

/// `key` at the top level, `[table].key` inside a table.
fn key_path(table: &str, key: &str) -> String {
    if table.is_empty() {
        key.to_owned()
    } else {
        format!("[{table}].{key}")
    }
}

/// A checked array element, kept with its location for checks across elements.
struct Item<T> {
    path: String,
    span: Range<usize>,
    value: T,
}

fn item_values<T>(items: Vec<Item<T>>) -> Vec<T> {
    items.into_iter().map(|item| item.value).collect()
}

struct Checker<'s> {
    source: &'s Source<'s>,
    base_dir: &'s Path,
    diagnostics: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn smolfile(&mut self, root: &Spanned<DeTable<'_>>) -> Smolfile {
        let top = self.table("", ROOT, root.get_ref(), root.span());
        let network = self
            .sub_table(&top, "network")
            .map(|t| self.network(&t))
            .unwrap_or_default();
        let net = self.bool(&top, "net");
        // `net = false` beside a non-empty allow list says two opposite things.
        let implied_by = if !network.allow_hosts.is_empty() {
            Some("allow_hosts")
        } else if !network.allow_cidrs.is_empty() {
            Some("allow_cidrs")
        } else if network.localhost_only {
            Some("outbound_localhost_only")
        } else {
            None
        };
        if let (Some(false), Some(list), Some(node)) = (net, implied_by, top.get("net")) {
            self.report(
                node.span(),
                top.path("net"),
                format!("net = false contradicts [network].{list}, which turns the network on; remove one of them"),
            );
        }
        Smolfile {
            image: self.string(&top, "image", reference::parse),
            entrypoint: self.strings(&top, "entrypoint"),
            cmd: self.strings(&top, "cmd"),
            env: self.env(&top),
            workdir: self.string(&top, "workdir", guest_path),
            cpus: self.int(&top, "cpus"),
            memory: self.int(&top, "memory"),
            net: net.unwrap_or(false),
            storage: self.int(&top, "storage"),
            overlay: self.int(&top, "overlay"),
            network,
            dev: self
                .sub_table(&top, "dev")
                .map(|t| self.dev(&t))
                .unwrap_or_default(),
            artifact: self
                .sub_table(&top, "artifact")
                .map(|t| self.artifact(&t))
                .unwrap_or_default(),
            health: self.sub_table(&top, "health").map(|t| self.health(&t)),
            restart: self
                .sub_table(&top, "restart")
                .map(|t| self.restart(&t))
                .unwrap_or_default(),
            auth: self
                .sub_table(&top, "auth")
                .map(|t| self.auth(&t))
                .unwrap_or_default(),
        }
    }

    fn network(&mut self, t: &Table<'_, '_>) -> Network {
        Network {
            allow_hosts: self
                .list(t, "allow_hosts", HostPattern::parse)
                .map(item_values)
                .unwrap_or_default(),
            allow_cidrs: self
                .list(t, "allow_cidrs", Cidr::parse)
                .map(item_values)
                .unwrap_or_default(),
            localhost_only: self.bool(t, "outbound_localhost_only").unwrap_or(false),
        }
    }

    fn dev(&mut self, t: &Table<'_, '_>) -> Dev {
        let base_dir = self.base_dir;
        let volumes = self
            .list(t, "volumes", |s| Volume::parse(s, base_dir))
            .unwrap_or_default();
        self.unique(
            &volumes,
            |v| v.guest.clone(),
            |v| format!("guest path {:?}", v.guest),
        );
        let ports = self.list(t, "ports", Port::parse).unwrap_or_default();
        self.unique(
            &ports,
            |p| (p.ip, p.host),
            |p| format!("host port {}", p.host),
        );
        Dev {
            volumes: item_values(volumes),
            ports: item_values(ports),
            init: self.strings(t, "init").unwrap_or_default(),
            env: self.env(t),
            workdir: self.string(t, "workdir", guest_path),
        }
    }

    fn artifact(&mut self, t: &Table<'_, '_>) -> Artifact {
        Artifact {
            cpus: self.int(t, "cpus"),
            memory: self.int(t, "memory"),
            entrypoint: self.strings(t, "entrypoint"),
            cmd: self.strings(t, "cmd"),
            oci_platform: self.string(t, "oci_platform", Platform::parse),
        }
    }

    fn health(&mut self, t: &Table<'_, '_>) -> Health {
        Health {
            exec: self.strings(t, "exec").unwrap_or_default(),
            interval: self
                .string(t, "interval", positive_duration)
                .unwrap_or(Health::DEFAULT_INTERVAL),
            timeout: self
                .string(t, "timeout", positive_duration)
                .unwrap_or(Health::DEFAULT_TIMEOUT),
            startup_grace: self
                .string(t, "startup_grace", parse_duration)
                .unwrap_or(Health::DEFAULT_STARTUP_GRACE),
            retries: self.int(t, "retries").unwrap_or(Health::DEFAULT_RETRIES),
        }
    }

    fn restart(&mut self, t: &Table<'_, '_>) -> Restart {
        Restart {
            policy: self
                .string(t, "policy", RestartPolicy::parse)
                .unwrap_or_default(),
            max_retries: self.int(t, "max_retries"),
            max_backoff: self
                .string(t, "max_backoff", parse_duration)
                .unwrap_or(Restart::DEFAULT_MAX_BACKOFF),
        }
    }

    fn auth(&mut self, t: &Table<'_, '_>) -> Auth {
        Auth {
            ssh_agent: self.bool(t, "ssh_agent").unwrap_or(false),
        }
    }

    fn env(&mut self, t: &Table<'_, '_>) -> Vec<String> {
        let entry = |s: &str| parse_env(s).map(|_| s.to_owned());
        self.list(t, "env", entry)
            .map(item_values)
            .unwrap_or_default()
    }

    /// Opens a table: reports keys its spec does not list and required keys it lacks.
    fn table<'t, 'i>(
        &mut self,
        name: &'static str,
        keys: &'static [Key],
        entries: &'t DeTable<'i>,
        span: Range<usize>,
    ) -> Table<'t, 'i> {
        for (key, value) in entries.iter() {
            if !keys.iter().any(|k| k.name == key.get_ref()) {
                // Only the top level holds tables, so only there can a table be unknown.
                let is_table = name.is_empty() && matches!(value.get_ref(), DeValue::Table(_));
                self.unknown_key(name, keys, key.get_ref(), is_table, key.span());
            }
        }
        let table = Table {
            name,
            keys,
            entries,
        };
        for key in keys
            .iter()
            .filter(|k| k.required && table.get(k.name).is_none())
        {
            self.report(
                span.clone(),
                format!("[{name}]"),
                format!("missing required key {:?}", key.name),
            );
        }
        table
    }

    fn unknown_key(
        &mut self,
        table: &str,
        keys: &[Key],
        key: &str,
        is_table: bool,
        span: Range<usize>,
    ) {
        let show = |name: &str| {
            if is_table {
                format!("[{name}]")
            } else {
                name.to_owned()
            }
        };
        let same_kind = || {
            keys.iter()
                .filter(|k| matches!(k.ty, Ty::Table(_)) == is_table)
                .map(|k| k.name)
        };
        let (what, path) = if is_table {
            ("table", show(key))
        } else {
            ("key", key_path(table, key))
        };
        let mut message = format!("unknown {what} {:?}", show(key));
        if let Some(near) = suggest::closest(key, same_kind()) {
            message += &format!("; did you mean {:?}?", show(near));
        } else if let Some(elsewhere) = locate(table, key) {
            message += &format!("; did you mean {elsewhere}?");
        } else {
            message += &format!(
                "; expected one of: {}",
                same_kind().map(show).collect::<Vec<_>>().join(", ")
            );
        }
        self.report(span, path, message);
    }

    fn sub_table<'t, 'i>(
        &mut self,
        parent: &Table<'t, 'i>,
        key: &'static str,
    ) -> Option<Table<'t, 'i>> {
        let Ty::Table(keys) = spec::key(parent.keys, key).ty else {
            unreachable!("{key} is not a table in the spec")
        };
        let node = parent.get(key)?;
        match node.get_ref() {
            DeValue::Table(entries) => Some(self.table(key, keys, entries, node.span())),
            _ => {
                self.type_error(node, format!("[{key}]"), "a table");
                None
            }
        }
    }

    fn int(&mut self, t: &Table<'_, '_>, key: &str) -> Option<u32> {
        let Ty::Int { min, max, unit, .. } = spec::key(t.keys, key).ty else {
            unreachable!("{key} is not an integer in the spec")
        };
        let node = t.get(key)?;
        let unit = if unit.is_empty() {
            String::new()
        } else {
            format!(" ({unit})")
        };
        let DeValue::Integer(integer) = node.get_ref() else {
            self.type_error(node, t.path(key), &format!("an integer{unit}"));
            return None;
        };
        let value = i64::from_str_radix(integer.as_str(), integer.radix())
            .ok()
            .and_then(|v| u32::try_from(v).ok())
            .filter(|v| (min..=max).contains(v));
        if value.is_none() {
            let expected = match (min, max) {
                (0, u32::MAX) => "a non-negative integer".to_owned(),
                (min, u32::MAX) => format!("an integer of at least {min}"),
                (min, max) => format!("an integer from {min} to {max}"),
            };
            self.report(
                node.span(),
                t.path(key),
                format!("expected {expected}{unit}, found {integer}"),
            );
        }
        value
    }

    fn bool(&mut self, t: &Table<'_, '_>, key: &str) -> Option<bool> {
        debug_assert!(matches!(spec::key(t.keys, key).ty, Ty::Bool));
        let node = t.get(key)?;
        match node.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.type_error(node, t.path(key), "a boolean");
                None
            }
        }
    }

    /// A string value, checked by `parse`.
    fn string<T>(
        &mut self,
        t: &Table<'_, '_>,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        debug_assert!(matches!(spec::key(t.keys, key).ty, Ty::Str { .. }));
        let node = t.get(key)?;
        let DeValue::String(s) = node.get_ref() else {
            self.type_error(node, t.path(key), "a string");
            return None;
        };
        self.parsed(node.span(), t.path(key), parse(s))
    }

    /// An array of strings, each checked by `parse`; the failing ones are reported and left out.
    fn list<T>(
        &mut self,
        t: &Table<'_, '_>,
        key: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<Vec<Item<T>>> {
        let spec = spec::key(t.keys, key);
        debug_assert!(matches!(spec.ty, Ty::List(_)));
        let node = t.get(key)?;
        let DeValue::Array(items) = node.get_ref() else {
            self.type_error(node, t.path(key), "an array of strings");
            return None;
        };
        if spec.required && items.is_empty() {
            self.report(
                node.span(),
                t.path(key),
                "expected a non-empty array of strings, found []".to_owned(),
            );
        }
        let items = items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| {
                let path = format!("{}[{i}]", t.path(key));
                let DeValue::String(s) = item.get_ref() else {
                    self.type_error(item, path, "a string");
                    return None;
                };
                let value = self.parsed(item.span(), path.clone(), parse(s))?;
                Some(Item {
                    path,
                    span: item.span(),
                    value,
                })
            })
            .collect();
        Some(items)
    }

    /// An array of plain strings.
    fn strings(&mut self, t: &Table<'_, '_>, key: &str) -> Option<Vec<String>> {
        self.list(t, key, |s| Ok(s.to_owned())).map(item_values)
    }

    /// Reports every item whose `identity` an earlier item already has.
    fn unique<T, K: PartialEq>(
        &mut self,
        items: &[Item<T>],
        identity: impl Fn(&T) -> K,
        describe: impl Fn(&T) -> String,
    ) {
        for (i, item) in items.iter().enumerate() {
            let id = identity(&item.value);
            if let Some(first) = items[..i]
                .iter()
                .find(|earlier| identity(&earlier.value) == id)
            {
                self.report(
                    item.span.clone(),
                    item.path.clone(),
                    format!(
                        "duplicate {}; first at {}",
                        describe(&item.value),
                        first.path
                    ),
                );
            }
        }
    }

    fn parsed<T>(
        &mut self,
        span: Range<usize>,
        path: String,
        result: Result<T, String>,
    ) -> Option<T> {
        result
            .map_err(|message| self.report(span, path, message))
            .ok()
    }

    fn type_error(&mut self, node: &Node<'_>, path: String, expected: &str) {
        let found = match node.get_ref() {
            DeValue::String(s) => format!("string {s:?}"),
            DeValue::Integer(i) => format!("integer {i}"),
            DeValue::Float(f) => format!("float {f}"),
            DeValue::Boolean(b) => format!("boolean {b}"),
            DeValue::Datetime(d) => format!("datetime {d}"),
            DeValue::Array(_) => "array".to_owned(),
            DeValue::Table(_) => "table".to_owned(),
        };
        self.report(
            node.span(),
            path,
            format!("expected {expected}, found {found}"),
        );
    }

    fn report(&mut self, span: Range<usize>, path: String, message: String) {
        self.diagnostics
            .push(self.source.diagnostic(span, path, message));
    }
}

/// Where `key` belongs when it is not in `table` but in another one (`ports` written at
/// the top level belongs in `[dev]`), quoted for a "did you mean".
fn locate(table: &str, key: &str) -> Option<String> {
    ROOT.iter().find_map(|k| match k.ty {
        Ty::Table(keys) if k.name != table => keys
            .iter()
            .any(|sub| sub.name == key)
            .then(|| format!("{:?}", key_path(k.name, key))),
        Ty::Table(_) => None,
        _ => (!table.is_empty() && k.name == key).then(|| format!("top-level {key:?}")),
    })
}

fn guest_path(path: &str) -> Result<String, String> {
    check_guest_path(path).map(|()| path.to_owned())
}

fn positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err(format!(
            "expected a duration greater than zero, found {text:?}"
        )),
        duration => Ok(duration),
    }
}
