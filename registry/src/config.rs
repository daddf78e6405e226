//! `~/.config/smolvm/config.toml`: which registry a bare name means, credentials,
//! plain-HTTP and custom-CA settings, and mirrors.
//!
//! ```toml
//! default_registry = "ghcr.io"          # optional; Docker Hub when absent
//!
//! [registries."127.0.0.1:5000"]
//! username = "alice"
//! password = "secret"                   # or: password_env = "REGISTRY_PASSWORD"
//! insecure = true                       # plain HTTP (loopback registries need no setting)
//!
//! [registries."127.0.0.1:5443"]
//! insecure = false                      # HTTPS although on loopback
//!
//! [registries."registry.internal:443"]
//! ca_file = "/etc/smolvm/internal-ca.pem"   # extra trust root, PEM; relative to this file;
//!                                           # implies HTTPS, also on loopback
//!
//! [registries."docker.io"]
//! mirror = "127.0.0.1:5000"             # try this registry first, then docker.io
//! ```
//!
//! A file that holds a password must not be readable by group or others: loading refuses
//! it (as ssh refuses a private key) rather than warning, since the library prints nothing
//! and a warning would be lost. Files written here are created 0600 atomically.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use toml_edit::{DocumentMut, Item, TableLike};

use crate::fsutil;
use crate::reference::{self, Reference, ReferenceError};

const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;
const REGISTRY_KEYS: &str = "username, password, password_env, insecure, ca_file, mirror";

/// The parsed, validated config.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    path: PathBuf,
    /// Registry for references that name none; Docker Hub when `None`.
    pub default_registry: Option<String>,
    /// Settings per `host[:port]`, keyed by the normalised host.
    pub registries: BTreeMap<String, RegistryConfig>,
}

/// One `[registries."host[:port]"]` table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RegistryConfig {
    /// Username and password for basic auth (and the token exchange).
    pub credentials: Option<Credentials>,
    /// `Some(true)`: plain HTTP. `Some(false)`: HTTPS even on loopback. `None`: plain HTTP
    /// on loopback only.
    pub insecure: Option<bool>,
    /// An extra PEM trust root for this registry's TLS certificate.
    pub ca_file: Option<PathBuf>,
    /// A registry tried first for this one's images (same repository paths).
    pub mirror: Option<String>,
}

/// A username and where its password comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct Credentials {
    /// The account name.
    pub username: String,
    /// The secret, or the environment variable that holds it.
    pub password: Password,
}

/// A password: written in the file, or read from an environment variable at use.
/// `Debug` never shows the secret.
#[derive(Clone, PartialEq)]
pub enum Password {
    /// `password = "..."`.
    Inline(String),
    /// `password_env = "VAR"`.
    Env(String),
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Password::Inline(_) => f.write_str("Inline(<redacted>)"),
            Password::Env(var) => f.debug_tuple("Env").field(var).finish(),
        }
    }
}

/// What went wrong with the config file; every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Neither `XDG_CONFIG_HOME` nor `HOME` is set.
    #[error("cannot find the config directory: set HOME or XDG_CONFIG_HOME")]
    NoHome,
    /// The file exists but cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The file (or its directory) cannot be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The config file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The file is not TOML.
    #[error("{}: {message}", path.display())]
    Syntax {
        /// The config file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A key has the wrong type or value, or is unknown.
    #[error("{}: {key}: {expected}", path.display())]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// Dotted key path, e.g. `registries."127.0.0.1:5000".insecure`.
        key: String,
        /// What is expected there.
        expected: String,
    },
    /// The file holds a password and others can read it.
    #[error(
        "{} holds a password but is readable by group or others (mode {mode:03o}): run chmod 600 {}",
        path.display(),
        path.display()
    )]
    TooOpen {
        /// The config file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// `password_env` names a variable that is not set.
    #[error(
        "{}: registries.\"{registry}\".password_env: the environment variable {var} is not set",
        path.display()
    )]
    PasswordEnvUnset {
        /// The config file.
        path: PathBuf,
        /// The registry whose password is missing.
        registry: String,
        /// The variable's name.
        var: String,
    },
}

/// `$XDG_CONFIG_HOME/smolvm/config.toml`, else `~/.config/smolvm/config.toml`.
pub fn default_path() -> Result<PathBuf, ConfigError> {
    let base = fsutil::xdg_dir("XDG_CONFIG_HOME", ".config").ok_or(ConfigError::NoHome)?;
    Ok(base.join("smolvm").join("config.toml"))
}

impl Config {
    /// Loads `path`; a missing file is an empty config (Docker Hub, no credentials).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Config {
                path: path.to_owned(),
                ..Config::default()
            }),
            _ => Config::validate(path),
        }
    }

    /// Loads the config at [`default_path`].
    pub fn load_default() -> Result<Config, ConfigError> {
        Config::load(&default_path()?)
    }

    /// Reads and checks `path`, which must exist: what `config registries edit` runs on
    /// the edited file before accepting it.
    pub fn validate(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let doc = parse_document(path, &text)?;
        let config = Checker { path }.config(doc.as_table())?;
        let has_secret = config
            .registries
            .values()
            .filter_map(|r| r.credentials.as_ref())
            .any(|c| matches!(c.password, Password::Inline(_)));
        if has_secret {
            let mode = std::fs::metadata(path)
                .map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?
                .permissions()
                .mode()
                & 0o777;
            if mode & 0o077 != 0 {
                return Err(ConfigError::TooOpen {
                    path: path.to_owned(),
                    mode,
                });
            }
        }
        Ok(config)
    }

    /// The file this config was loaded from (or would be written to).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Parses `text` as an image reference, with this config's `default_registry`.
    pub fn parse_reference(&self, text: &str) -> Result<Reference, ReferenceError> {
        Reference::parse(text, self.default_registry.as_deref())
    }

    /// The settings for `registry` (defaults when it has no table).
    pub fn registry(&self, registry: &str) -> RegistryConfig {
        self.registries.get(registry).cloned().unwrap_or_default()
    }

    /// The username and password for `registry`, resolving `password_env` now.
    pub fn credentials(&self, registry: &str) -> Result<Option<(String, String)>, ConfigError> {
        let Some(credentials) = self
            .registries
            .get(registry)
            .and_then(|r| r.credentials.as_ref())
        else {
            return Ok(None);
        };
        let password = match &credentials.password {
            Password::Inline(password) => password.clone(),
            Password::Env(var) => {
                std::env::var(var).map_err(|_| ConfigError::PasswordEnvUnset {
                    path: self.path.clone(),
                    registry: registry.to_owned(),
                    var: var.clone(),
                })?
            }
        };
        Ok(Some((credentials.username.clone(), password)))
    }

    /// A human-readable listing without secrets: passwords show as `set` or `from $VAR`.
    pub fn list(&self) -> String {
        let mut out = format!("config: {}\n", self.path.display());
        let default = self.default_registry.as_deref();
        let _ = writeln!(
            out,
            "default_registry: {}",
            default.unwrap_or(reference::DOCKER_HUB)
        );
        for (host, registry) in &self.registries {
            let _ = writeln!(out, "{host}");
            if let Some(credentials) = &registry.credentials {
                let _ = writeln!(out, "  username: {}", credentials.username);
                let _ = match &credentials.password {
                    Password::Inline(_) => writeln!(out, "  password: set"),
                    Password::Env(var) => writeln!(out, "  password: from ${var}"),
                };
            }
            let _ = match registry.insecure {
                Some(true) => writeln!(out, "  insecure: true (plain HTTP)"),
                Some(false) => writeln!(out, "  insecure: false (HTTPS)"),
                None => Ok(()),
            };
            if let Some(ca) = &registry.ca_file {
                let _ = writeln!(out, "  ca_file: {}", ca.display());
            }
            if let Some(mirror) = &registry.mirror {
                let _ = writeln!(out, "  mirror: {mirror}");
            }
        }
        out
    }
}

/// Stores `username` and `password` for `registry` in the config at `path`, keeping every
/// other entry (and comments) as it was. Replaces a `password_env` for that registry.
pub fn login(
    path: &Path,
    registry: &str,
    username: &str,
    password: &str,
) -> Result<(), ConfigError> {
    edit(path, registry, |table| {
        table.remove("password_env");
        table.insert("username", toml_edit::value(username));
        table.insert("password", toml_edit::value(password));
    })
}

/// Removes the credentials for `registry` from the config at `path`; other settings stay.
pub fn logout(path: &Path, registry: &str) -> Result<(), ConfigError> {
    edit(path, registry, |table| {
        for key in ["username", "password", "password_env"] {
            table.remove(key);
        }
    })
}

/// Applies `change` to the registry's table and writes the file back atomically, 0600,
/// after checking the result as [`Config::validate`] would.
fn edit(
    path: &Path,
    registry: &str,
    change: impl FnOnce(&mut dyn TableLike),
) -> Result<(), ConfigError> {
    let invalid = |expected: String| ConfigError::Invalid {
        path: path.to_owned(),
        key: format!("registries.{registry:?}"),
        expected,
    };
    let host = reference::check_host(registry).map_err(invalid)?;
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let mut doc = parse_document(path, &text)?;
    let registries = doc
        .entry("registries")
        .or_insert_with(|| {
            let mut table = toml_edit::Table::new();
            table.set_implicit(true);
            Item::Table(table)
        })
        .as_table_like_mut()
        .ok_or_else(|| ConfigError::Invalid {
            path: path.to_owned(),
            key: "registries".into(),
            expected: "expected a table of registries".into(),
        })?;
    let entry = registries
        .entry(&host)
        .or_insert(Item::Table(toml_edit::Table::new()));
    let table = entry
        .as_table_like_mut()
        .ok_or_else(|| invalid("expected a table".into()))?;
    change(table);
    let text = doc.to_string();
    // Never write a file that load would then refuse.
    Checker { path }.config(parse_document(path, &text)?.as_table())?;
    let write_error = |source| ConfigError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        fsutil::create_dir_all(dir, DIR_MODE).map_err(write_error)?;
    }
    fsutil::write_atomic(path, text.as_bytes(), FILE_MODE).map_err(write_error)
}

fn parse_document(path: &Path, text: &str) -> Result<DocumentMut, ConfigError> {
    text.parse::<DocumentMut>()
        .map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })
}

/// Walks the TOML tree and names the exact key that is wrong.
struct Checker<'a> {
    path: &'a Path,
}

impl Checker<'_> {
    fn invalid(&self, key: String, expected: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            key,
            expected: expected.into(),
        }
    }

    fn config(&self, root: &dyn TableLike) -> Result<Config, ConfigError> {
        let mut config = Config {
            path: self.path.to_owned(),
            ..Config::default()
        };
        for (key, item) in root.iter() {
            match key {
                "default_registry" => {
                    config.default_registry = Some(self.host(key.to_owned(), item)?);
                }
                "registries" => {
                    let table = item.as_table_like().ok_or_else(|| {
                        self.invalid(key.into(), "expected a table of registries")
                    })?;
                    for (host, item) in table.iter() {
                        let key = format!("registries.{host:?}");
                        let normalised = reference::check_host(host).map_err(|e| {
                            self.invalid(key.clone(), format!("{e} as the table name"))
                        })?;
                        let registry = self.registry(&key, &normalised, item)?;
                        if config.registries.insert(normalised, registry).is_some() {
                            return Err(self.invalid(
                                key,
                                "the same registry appears twice (host names are case-insensitive)",
                            ));
                        }
                    }
                }
                _ => {
                    return Err(self.invalid(
                        key.into(),
                        "unknown key; expected default_registry or [registries.\"host[:port]\"] tables",
                    ));
                }
            }
        }
        Ok(config)
    }

    fn registry(&self, key: &str, host: &str, item: &Item) -> Result<RegistryConfig, ConfigError> {
        let table = item.as_table_like().ok_or_else(|| {
            self.invalid(key.into(), format!("expected a table with {REGISTRY_KEYS}"))
        })?;
        let mut registry = RegistryConfig::default();
        let (mut username, mut password) = (None, None);
        for (name, value) in table.iter() {
            let key = format!("{key}.{name}");
            match name {
                "username" => username = Some(self.string(key, value)?),
                "password" | "password_env" if password.is_some() => {
                    return Err(self.invalid(key, "set either password or password_env, not both"));
                }
                "password" => password = Some(Password::Inline(self.string(key, value)?)),
                "password_env" => {
                    let var = self.string(key.clone(), value)?;
                    if !is_env_name(&var) {
                        return Err(self.invalid(
                            key,
                            format!("expected an environment variable name like REGISTRY_PASSWORD, found {var:?}"),
                        ));
                    }
                    password = Some(Password::Env(var));
                }
                "insecure" => {
                    registry.insecure = Some(value.as_bool().ok_or_else(|| {
                        self.invalid(
                            key,
                            format!("expected true or false, found {}", describe(value)),
                        )
                    })?);
                }
                "ca_file" => {
                    let file = PathBuf::from(self.string(key.clone(), value)?);
                    let file = match self.path.parent() {
                        Some(dir) if file.is_relative() => dir.join(file),
                        _ => file,
                    };
                    if !file.is_file() {
                        return Err(self.invalid(
                            key,
                            format!(
                                "expected a PEM certificate file, but {} does not exist",
                                file.display()
                            ),
                        ));
                    }
                    registry.ca_file = Some(file);
                }
                "mirror" => {
                    let mirror = self.host(key.clone(), value)?;
                    if mirror == host {
                        return Err(self.invalid(key, "a registry cannot be its own mirror"));
                    }
                    registry.mirror = Some(mirror);
                }
                _ => {
                    return Err(
                        self.invalid(key, format!("unknown key; expected one of {REGISTRY_KEYS}"))
                    );
                }
            }
        }
        if registry.insecure == Some(true) && registry.ca_file.is_some() {
            return Err(self.invalid(
                format!("{key}.ca_file"),
                "insecure = true means plain HTTP, where a CA has no use: remove one of them",
            ));
        }
        registry.credentials = match (username, password) {
            (Some(username), Some(password)) => Some(Credentials { username, password }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(self.invalid(
                    format!("{key}.username"),
                    "a username needs password or password_env",
                ));
            }
            (None, Some(_)) => {
                return Err(self.invalid(
                    format!("{key}.username"),
                    "missing: a password needs a username",
                ));
            }
        };
        Ok(registry)
    }

    fn string(&self, key: String, item: &Item) -> Result<String, ConfigError> {
        match item.as_str() {
            Some(text) if !text.is_empty() => Ok(text.to_owned()),
            _ => Err(self.invalid(
                key,
                format!("expected a non-empty string, found {}", describe(item)),
            )),
        }
    }

    fn host(&self, key: String, item: &Item) -> Result<String, ConfigError> {
        let text = self.string(key.clone(), item)?;
        reference::check_host(&text).map_err(|e| self.invalid(key, e))
    }
}

/// The value's type, never the value: it might be a password written in the wrong place.
fn describe(item: &Item) -> &'static str {
    item.type_name()
}

fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let path = dir.join("config.toml");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn login_creates_0600_and_keeps_other_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("smolvm/config.toml");
        login(&path, "127.0.0.1:5000", "alice", "s3cret-one").unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);

        let text = std::fs::read_to_string(&path).unwrap();
        let text = format!(
            "# my registries\ndefault_registry = \"ghcr.io\"\n{text}\n[registries.\"ghcr.io\"]\npassword_env = \"GHCR_TOKEN\" # from CI\nusername = \"bob\"\n"
        );
        std::fs::write(&path, text).unwrap();
        login(&path, "GHCR.io", "carol", "s3cret-two").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# my registries\n"), "{text}");
        assert!(
            !text.contains("GHCR_TOKEN"),
            "login replaces password_env: {text}"
        );
        let config = Config::load(&path).unwrap();
        assert_eq!(config.default_registry.as_deref(), Some("ghcr.io"));
        assert_eq!(
            config.credentials("127.0.0.1:5000").unwrap(),
            Some(("alice".into(), "s3cret-one".into()))
        );
        assert_eq!(
            config.credentials("ghcr.io").unwrap(),
            Some(("carol".into(), "s3cret-two".into()))
        );

        logout(&path, "ghcr.io").unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(config.credentials("ghcr.io").unwrap(), None);
        assert!(config.credentials("127.0.0.1:5000").unwrap().is_some());
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn secrets_never_show() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[registries.\"a.io\"]\nusername = \"u\"\npassword = \"hunter2-secret\"\n\n[registries.\"b.io\"]\nusername = \"v\"\npassword_env = \"B_TOKEN\"\ninsecure = true\n\n[registries.\"docker.io\"]\nmirror = \"127.0.0.1:5000\"\n";
        let config = Config::load(&write(dir.path(), text, 0o600)).unwrap();
        let list = config.list();
        assert_eq!(
            list,
            format!(
                "config: {}\ndefault_registry: docker.io\na.io\n  username: u\n  password: set\nb.io\n  username: v\n  password: from $B_TOKEN\n  insecure: true (plain HTTP)\ndocker.io\n  mirror: 127.0.0.1:5000\n",
                dir.path().join("config.toml").display()
            )
        );
        let debug = format!("{config:?} {:?}", config.registry("a.io"));
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("Inline(<redacted>)"), "{debug}");
    }

    #[test]
    fn password_env_is_read_at_use() {
        let dir = tempfile::tempdir().unwrap();
        // PATH is always set; a made-up name never is (no env mutation in tests).
        let text = "[registries.\"a.io\"]\nusername = \"u\"\npassword_env = \"PATH\"\n[registries.\"b.io\"]\nusername = \"u\"\npassword_env = \"SMOLVM_TEST_UNSET_7F3A\"\n";
        let path = write(dir.path(), text, 0o644);
        let config = Config::load(&path).unwrap();
        let path_value = std::env::var("PATH").unwrap();
        assert_eq!(
            config.credentials("a.io").unwrap(),
            Some(("u".into(), path_value))
        );
        assert_eq!(
            config.credentials("b.io").unwrap_err().to_string(),
            format!(
                "{}: registries.\"b.io\".password_env: the environment variable SMOLVM_TEST_UNSET_7F3A is not set",
                path.display()
            )
        );
        assert_eq!(config.credentials("c.io").unwrap(), None);
    }

    #[test]
    fn refuses_a_readable_file_with_a_password() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[registries.\"a.io\"]\nusername = \"u\"\npassword = \"p\"\n";
        let path = write(dir.path(), text, 0o644);
        assert_eq!(
            Config::load(&path).unwrap_err().to_string(),
            format!(
                "{p} holds a password but is readable by group or others (mode 644): run chmod 600 {p}",
                p = path.display()
            )
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Config::load(&path).is_ok());
    }

    #[test]
    fn missing_and_broken_files() {
        let dir = tempfile::tempdir().unwrap();
        let absent = dir.path().join("absent.toml");
        let config = Config::load(&absent).unwrap();
        assert_eq!(config.path(), absent);
        assert!(config.registries.is_empty());
        assert!(matches!(
            Config::validate(&absent),
            Err(ConfigError::Read { .. })
        ));

        let path = write(dir.path(), "default_registry = \n", 0o600);
        let message = Config::load(&path).unwrap_err().to_string();
        assert!(
            message.starts_with(&format!(
                "{}: TOML parse error at line 1, column",
                path.display()
            )),
            "{message}"
        );
    }

    #[test]
    fn invalid_values_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not checked here").unwrap();
        let table: &[(&str, &str, &str)] = &[
            (
                "colour = 1",
                "colour",
                "unknown key; expected default_registry or [registries.\"host[:port]\"] tables",
            ),
            (
                "default_registry = 5",
                "default_registry",
                "expected a non-empty string, found integer",
            ),
            (
                "default_registry = \"no host\"",
                "default_registry",
                "expected a registry host like ghcr.io, docker.io or localhost:5000, found \"no host\"",
            ),
            (
                "registries = 1",
                "registries",
                "expected a table of registries",
            ),
            (
                "[registries.\"bad_host\"]",
                "registries.\"bad_host\"",
                "expected a registry host like ghcr.io, docker.io or localhost:5000, found \"bad_host\" as the table name",
            ),
            (
                "[registries.\"a.io\"]\ninsecure = \"yes\"",
                "registries.\"a.io\".insecure",
                "expected true or false, found string",
            ),
            (
                "[registries.\"a.io\"]\npasword = \"x\"",
                "registries.\"a.io\".pasword",
                "unknown key; expected one of username, password, password_env, insecure, ca_file, mirror",
            ),
            (
                "[registries.\"a.io\"]\nusername = \"u\"",
                "registries.\"a.io\".username",
                "a username needs password or password_env",
            ),
            (
                "[registries.\"a.io\"]\npassword = \"p\"",
                "registries.\"a.io\".username",
                "missing: a password needs a username",
            ),
            (
                "[registries.\"a.io\"]\nusername = \"u\"\npassword = \"p\"\npassword_env = \"P\"",
                "registries.\"a.io\".password_env",
                "set either password or password_env, not both",
            ),
            (
                "[registries.\"a.io\"]\nusername = \"u\"\npassword_env = \"1BAD\"",
                "registries.\"a.io\".password_env",
                "expected an environment variable name like REGISTRY_PASSWORD, found \"1BAD\"",
            ),
            (
                "[registries.\"a.io\"]\npassword = 123456\nusername = \"u\"",
                "registries.\"a.io\".password",
                "expected a non-empty string, found integer",
            ),
            (
                "[registries.\"a.io\"]\nca_file = \"missing.pem\"",
                "registries.\"a.io\".ca_file",
                "__MISSING__",
            ),
            (
                "[registries.\"a.io\"]\ninsecure = true\nca_file = \"ca.pem\"",
                "registries.\"a.io\".ca_file",
                "insecure = true means plain HTTP, where a CA has no use: remove one of them",
            ),
            (
                "[registries.\"a.io\"]\nmirror = \"A.io\"",
                "registries.\"a.io\".mirror",
                "a registry cannot be its own mirror",
            ),
            (
                "[registries.\"a.io\"]\n[registries.\"A.IO\"]",
                "registries.\"A.IO\"",
                "the same registry appears twice (host names are case-insensitive)",
            ),
        ];
        for (text, key, expected) in table {
            let path = write(dir.path(), text, 0o600);
            let expected = match *expected {
                "__MISSING__" => format!(
                    "expected a PEM certificate file, but {} does not exist",
                    dir.path().join("missing.pem").display()
                ),
                other => other.to_owned(),
            };
            let message = Config::validate(&path).unwrap_err().to_string();
            assert_eq!(
                message,
                format!("{}: {key}: {expected}", path.display()),
                "for {text:?}"
            );
            assert!(
                !message.contains("123456"),
                "a misplaced password is never echoed"
            );
        }
        let path = write(
            dir.path(),
            "[registries.\"a.io\"]\nca_file = \"ca.pem\"\n",
            0o600,
        );
        assert_eq!(
            Config::validate(&path).unwrap().registry("a.io").ca_file,
            Some(ca)
        );
    }

    #[test]
    fn login_refuses_a_bad_registry_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        assert_eq!(
            login(&path, "not a host", "u", "p")
                .unwrap_err()
                .to_string(),
            format!(
                "{}: registries.\"not a host\": expected a registry host like ghcr.io, docker.io or localhost:5000, found \"not a host\"",
                path.display()
            )
        );
        assert!(!path.exists());
    }
}
