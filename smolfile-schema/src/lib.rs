//! # Smolfile
//!
//! A Smolfile is a TOML file that declares a smolvm workload: which image to boot, what
//! to run in it, with how much CPU, memory and disk, which network it may reach, and
//! how `machine run`, `machine create` (the `[dev]` table) and `pack create` (the
//! `[artifact]` table) should treat it. Commands take it with `--smolfile`/`-s`.
//!
//! Every key is optional. An empty Smolfile boots the built-in bare VM.
//!
//! ```toml
//! image = "python:3.12-alpine"   # omit for the built-in bare VM
//! entrypoint = ["python3"]        # replaces the image's entrypoint
//! cmd = ["-m", "http.server", "8000"]
//! env = ["PYTHONUNBUFFERED=1"]
//! workdir = "/srv"
//! cpus = 2                        # 1..=32, default 4
//! memory = 1024                   # MiB, 128..=1048576, default 8192
//! net = true                      # default false
//! storage = 10                    # GiB, default 20
//! overlay = 1                     # GiB, default 2
//!
//! [network]                       # any rule turns the network on, limited to it
//! allow_hosts = ["pypi.org", "*.pythonhosted.org"]
//! allow_cidrs = ["10.0.0.0/8"]
//! outbound_localhost_only = false  # true: only the host's loopback
//!
//! [dev]                           # machine run / machine create only
//! volumes = ["./site:/srv:ro"]    # HOST:GUEST[:ro|:rw], HOST relative to this file
//! ports = ["8000:8000"]           # [IP:]HOST:GUEST
//! init = ["echo started >> /tmp/starts"]
//! env = ["DEBUG=1"]
//! workdir = "/srv"
//!
//! [artifact]                      # pack create only; wins over the top level
//! cpus = 1
//! memory = 512
//! entrypoint = ["python3"]
//! cmd = ["-m", "http.server", "80"]
//! oci_platform = "linux/arm64"
//!
//! [health]                        # machine monitor
//! exec = ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8000/"]
//! interval = "10s"                # durations: 500ms, 10s, 2m, 1h, 1m30s
//! timeout = "2s"
//! startup_grace = "5s"
//! retries = 3
//!
//! [restart]
//! policy = "on-failure"           # never | always | on-failure | unless-stopped
//! max_retries = 5
//! max_backoff = "1m"
//!
//! [auth]
//! ssh_agent = false
//! ```
//!
//! [`Smolfile::load`] reads, parses and validates a file; every problem comes back at
//! once as [`Diagnostics`], each like a compiler error:
//!
//! ```text
//! Smolfile:7:10: [dev].ports[1]: expected HOST:GUEST with ports 1-65535, found "80"
//! Smolfile:9:1: [dev].prots: unknown key "prots"; did you mean "ports"?
//! ```
//!
//! [`merge`] then combines the Smolfile with command-line flags ([`Overrides`]) and the
//! image's config ([`ImageConfig`]) into the [`Effective`] settings, and
//! [`json_schema`] describes the format for editors. `README.md` beside this crate is
//! the key-by-key reference.
//!
//! ```
//! use std::path::Path;
//! use smolfile::{merge, Overrides, Purpose, Smolfile};
//!
//! let text = "image = \"alpine:3.20\"\ncmd = [\"echo\", \"hi\"]\n[dev]\nports = [\"8080:80\"]\n";
//! let smolfile = Smolfile::parse(text, "Smolfile", Path::new("/project")).unwrap();
//! let cli = Overrides { cpus: Some(2), ..Overrides::default() };
//! let run = merge(Purpose::Run, Some(&smolfile), &cli, None);
//! assert_eq!(run.argv(), ["echo", "hi"]);
//! assert_eq!((run.cpus, run.memory, run.ports.len()), (2, 8192, 1));
//!
//! let bad = Smolfile::parse("cpus = \"four\"\n", "Smolfile", Path::new("/project")).unwrap_err();
//! assert_eq!(bad.to_string(), "Smolfile:1:8: cpus: expected an integer, found string \"four\"");
//! ```

#![warn(missing_docs)]

mod check;
mod diagnostic;
mod merge;
mod model;
pub mod reference;
mod spec;
mod suggest;
mod values;

use std::path::Path;

pub use diagnostic::{Diagnostic, Diagnostics};
pub use merge::{Effective, ImageConfig, Overrides, Purpose, merge, merge_env};
pub use model::{
    Artifact, Auth, DEFAULT_CPUS, DEFAULT_MEMORY_MIB, DEFAULT_OVERLAY_GIB, DEFAULT_STORAGE_GIB,
    Dev, Health, MAX_CPUS, MAX_MEMORY_MIB, MIN_DISK_GIB, MIN_MEMORY_MIB, Network, Restart,
    Smolfile,
};
pub use reference::ImageReference;
pub use spec::json_schema;
pub use values::{
    Cidr, HostPattern, Platform, Port, RestartPolicy, Volume, check_guest_path, parse_duration,
    parse_env,
};

impl Smolfile {
    /// Reads, parses and validates the Smolfile at `path`. Diagnostics name the file
    /// as `path` displays; relative volume host paths start at its directory.
    pub fn load(path: &Path) -> Result<Smolfile, Diagnostics> {
        let label = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| {
            Diagnostics::new(vec![Diagnostic::whole_file(
                &label,
                format!("cannot read: {error}"),
            )])
        })?;
        let base_dir = path
            .parent()
            .filter(|dir| !dir.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Smolfile::parse(&text, &label, base_dir)
    }

    /// Parses and validates Smolfile text. `file_label` names the file in diagnostics;
    /// `base_dir` (made absolute against the working directory if relative) is where
    /// relative volume host paths start. No file is read.
    pub fn parse(source: &str, file_label: &str, base_dir: &Path) -> Result<Smolfile, Diagnostics> {
        let base_dir = std::path::absolute(base_dir).unwrap_or_else(|_| base_dir.to_path_buf());
        let source = diagnostic::Source::new(file_label, source);
        let (document, errors) = toml::de::DeTable::parse_recoverable(source.text());
        if !errors.is_empty() {
            // A document that does not parse would only add follow-on noise to check.
            let mut diagnostics: Vec<Diagnostic> =
                errors.iter().map(|e| syntax_error(&source, e)).collect();
            diagnostics.sort_by_key(|d| (d.line, d.column));
            // Recovery from a syntax error tends to trip over the rest of its line.
            diagnostics.dedup_by_key(|d| d.line);
            return Err(Diagnostics::new(diagnostics));
        }
        check::check(&document, &source, &base_dir).map_err(Diagnostics::new)
    }
}

fn syntax_error(source: &diagnostic::Source<'_>, error: &toml::de::Error) -> Diagnostic {
    let mut message = format!("invalid TOML: {}", error.message());
    let Some(span) = error.span() else {
        return Diagnostic::whole_file(source.file(), message);
    };
    if error.message() == "duplicate key" {
        message += &format!(" {:?}", &source.text()[span.clone()]);
    }
    source.diagnostic(span, String::new(), message)
}
