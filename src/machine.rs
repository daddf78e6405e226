//! `smolvm machine ...`

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use smolvm_protocol::{Exec, Lower, Setup, Upper};
use smolvm_runtime::attach::Outcome;
use smolvm_runtime::run::{RunRequest, run_ephemeral};
use smolvm_runtime::{BackendKind, VmSpec, terminal};
use std::time::Duration;

#[derive(Subcommand)]
pub enum MachineCommand {
    /// Run a command in a new, ephemeral microVM that is gone when the command ends
    Run(RunArgs),
}

#[derive(Args)]
pub struct RunArgs {
    /// Keep stdin open and forward it to the command
    #[arg(short, long)]
    interactive: bool,
    /// Run the command on a terminal (PTY)
    #[arg(short, long)]
    tty: bool,
    /// Set an environment variable (KEY=VALUE, or KEY to copy it from this environment)
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory for the command (created if missing)
    #[arg(short, long, value_name = "DIR")]
    workdir: Option<String>,
    /// Number of vCPUs
    #[arg(long, default_value_t = 4)]
    cpus: u32,
    /// Memory in MiB
    #[arg(long = "mem", value_name = "MiB", default_value_t = 8192)]
    memory: u32,
    /// Kill the command after this long (e.g. 30s, 5m); smolvm then exits with 124
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// VM backend: krun needs hardware virtualization, qemu also runs without it
    #[arg(long, default_value = "auto", value_parser = ["auto", "krun", "qemu"])]
    backend: String,
    /// The command and its arguments (default: a shell)
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

pub fn dispatch(cmd: MachineCommand) -> anyhow::Result<i32> {
    match cmd {
        MachineCommand::Run(args) => run(args),
    }
}

fn run(args: RunArgs) -> anyhow::Result<i32> {
    if args.tty && args.interactive && !terminal::is_tty(0) {
        bail!("the input device is not a TTY: drop -t, or run smolvm from a terminal");
    }
    let mut env = Vec::new();
    for e in &args.env {
        env.push(parse_env(e)?);
    }
    if args.tty {
        if let Ok(term) = std::env::var("TERM") {
            if !env.iter().any(|kv| kv.starts_with("TERM=")) {
                env.push(format!("TERM={term}"));
            }
        }
    }
    let argv = if args.command.is_empty() { vec!["/bin/sh".to_string()] } else { args.command };
    let exec = Exec {
        argv,
        env,
        workdir: args.workdir,
        user: None,
        tty: args.tty.then(|| terminal::size(0).unwrap_or(smolvm_protocol::TtySize { rows: 24, cols: 80 })),
        stdin: args.interactive,
        timeout_ms: args.timeout.map(|d| d.as_millis() as u64),
    };
    let req = RunRequest {
        vm: VmSpec {
            backend: args.backend.parse::<BackendKind>().map_err(anyhow::Error::msg)?,
            cpus: args.cpus,
            memory_mib: args.memory,
            disks: Vec::new(),
        },
        setup: Setup { hostname: "smolvm".into(), lower: Lower::Bare, upper: Upper::Tmpfs },
        exec,
        stdin: args.interactive,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    let outcome = rt.block_on(run_ephemeral(req))?;
    // A blocked read of our stdin must not keep the process alive.
    rt.shutdown_background();
    report(&outcome, args.timeout);
    Ok(outcome.exit_code())
}

/// Says why the command did not simply exit, on stderr.
fn report(outcome: &Outcome, timeout: Option<Duration>) {
    match outcome {
        Outcome::Exited(s) if s.timed_out => {
            eprintln!("smolvm: command timed out after {:?} and was killed", timeout.unwrap_or_default());
        }
        Outcome::Exited(_) => {}
        Outcome::Failed(e) => eprintln!("smolvm: {}", e.message),
        Outcome::Lost(why) => eprintln!("smolvm: error: {why}"),
    }
}

/// `KEY=VALUE`, or `KEY` alone to pass this process's value, as docker does.
fn parse_env(spec: &str) -> anyhow::Result<String> {
    let key = spec.split('=').next().unwrap_or("");
    let valid = !key.is_empty()
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        bail!("invalid environment variable {spec:?}: expected KEY=VALUE with KEY made of letters, digits and _");
    }
    Ok(if spec.contains('=') { spec.to_string() } else { format!("{spec}={}", std::env::var(spec).unwrap_or_default()) })
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("expected a duration like 10s, 2m or 500ms, found {s:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("expected a duration like 10s, 2m or 500ms, found {s:?}")),
    }
}
