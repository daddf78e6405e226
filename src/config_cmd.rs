//! `smolvm config ...`, `smolvm login`, `smolvm logout`: registry credentials and settings.

use anyhow::{Context, bail};
use clap::Subcommand;
use smolvm_registry::{Config, config};
use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Registry settings: credentials, plain HTTP, CA files, mirrors
    #[command(subcommand)]
    Registries(RegistriesCommand),
}

#[derive(Subcommand)]
pub enum RegistriesCommand {
    /// Show the configured registries (passwords are never shown)
    List,
    /// Edit the registries config in $EDITOR; it is saved only if it is valid
    Edit,
}

pub fn dispatch(cmd: ConfigCommand) -> anyhow::Result<i32> {
    let path = config::default_path()?;
    match cmd {
        ConfigCommand::Registries(RegistriesCommand::List) => {
            print!("{}", Config::load(&path)?.list());
            Ok(0)
        }
        ConfigCommand::Registries(RegistriesCommand::Edit) => edit(&path),
    }
}

const TEMPLATE: &str = r#"# smolvm registry settings. Example:
#
# default_registry = "registry.example.com"   # for bare names like `app:1` (default docker.io)
#
# [registries."registry.example.com"]
# username = "alice"
# password_env = "REGISTRY_PASSWORD"           # or: password = "..." (this file is then kept 0600)
# ca_file = "/etc/ssl/example-ca.pem"          # an extra CA for this registry
#
# [registries."docker.io"]
# mirror = "127.0.0.1:5000"                   # tried first; docker.io if the mirror fails
#
# [registries."10.0.0.5:5000"]
# insecure = true                              # plain HTTP (loopback registries need no setting)
"#;

/// Edits a private copy and replaces the real file only once the copy validates, so a
/// mistake never damages a working config.
fn edit(path: &Path) -> anyhow::Result<i32> {
    let dir = path.parent().context("the config path has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let draft = dir.join("config.toml.edit");
    let current = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => TEMPLATE.to_string(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    write_private(&draft, &current)?;
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    loop {
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{editor} \"$1\""))
            .arg("sh")
            .arg(&draft)
            .status()
            .with_context(|| format!("starting the editor ({editor}); set EDITOR"))?;
        if !status.success() {
            bail!(
                "the editor exited with {status}; {} is unchanged, your draft is {}",
                path.display(),
                draft.display()
            );
        }
        match Config::validate(&draft) {
            Ok(_) => {
                // The editor wrote the draft; make it durable before it replaces the config.
                std::fs::File::open(&draft)
                    .and_then(|f| f.sync_all())
                    .and_then(|()| std::fs::rename(&draft, path))
                    .and_then(|()| std::fs::File::open(dir)?.sync_all())
                    .with_context(|| format!("saving {}", path.display()))?;
                eprintln!("saved {}", path.display());
                return Ok(0);
            }
            Err(e) => {
                eprintln!("{e}");
                if !(std::io::stdin().is_terminal() && ask("edit again? [Y/n] ")?) {
                    eprintln!(
                        "{} is unchanged; your draft is {}",
                        path.display(),
                        draft.display()
                    );
                    return Ok(1);
                }
            }
        }
    }
}

fn ask(question: &str) -> anyhow::Result<bool> {
    eprint!("{question}");
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(!answer.trim().eq_ignore_ascii_case("n"))
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// `smolvm login REGISTRY`: the password is read from stdin (without echo on a terminal).
pub fn login(registry: &str, username: Option<String>) -> anyhow::Result<i32> {
    let path = config::default_path()?;
    let stdin = std::io::stdin();
    let username = match username {
        Some(u) => u,
        None if stdin.is_terminal() => prompt("Username: ", true)?,
        None => bail!("give the username with -u when the password comes from a pipe"),
    };
    let password = if stdin.is_terminal() {
        prompt("Password: ", false)?
    } else {
        let mut line = String::new();
        stdin.lock().read_line(&mut line)?;
        line.trim_end_matches(['\n', '\r']).to_string()
    };
    if password.is_empty() {
        bail!("no password given on stdin");
    }
    smolvm_registry::login(&path, registry, &username, &password)?;
    eprintln!("saved credentials for {registry} in {}", path.display());
    Ok(0)
}

pub fn logout(registry: &str) -> anyhow::Result<i32> {
    let path = config::default_path()?;
    smolvm_registry::logout(&path, registry)?;
    eprintln!("removed credentials for {registry} from {}", path.display());
    Ok(0)
}

fn prompt(label: &str, echo: bool) -> anyhow::Result<String> {
    eprint!("{label}");
    let _quiet = (!echo).then(NoEcho::enable).transpose()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if !echo {
        eprintln!();
    }
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Turns terminal echo off until dropped.
struct NoEcho(libc::termios);

impl NoEcho {
    fn enable() -> anyhow::Result<NoEcho> {
        // SAFETY: termios calls on stdin, which is a terminal here.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                bail!(
                    "reading the terminal settings: {}",
                    std::io::Error::last_os_error()
                );
            }
            let saved = t;
            t.c_lflag &= !libc::ECHO;
            libc::tcsetattr(0, libc::TCSANOW, &t);
            Ok(NoEcho(saved))
        }
    }
}

impl Drop for NoEcho {
    fn drop(&mut self) {
        // SAFETY: restoring the saved settings.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &self.0) };
    }
}
