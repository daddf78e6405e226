//! `smolvm machine ...`

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use smolfile::{Overrides, Purpose, Smolfile};
use smolvm_protocol::{Exec, Lower, Setup, TtySize, Upper};
use smolvm_runtime::attach::Outcome;
use smolvm_runtime::run::{RunRequest, run_ephemeral};
use smolvm_runtime::{BackendKind, VmSpec, terminal};
use std::path::PathBuf;
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
    /// Number of vCPUs [default: 4]
    #[arg(long)]
    cpus: Option<u32>,
    /// Memory in MiB [default: 8192]
    #[arg(long = "mem", value_name = "MiB")]
    memory: Option<u32>,
    /// Read the workload from a Smolfile (flags override it)
    #[arg(short = 's', long, value_name = "FILE")]
    smolfile: Option<PathBuf>,
    /// Kill the command after this long (e.g. 30s, 5m); smolvm then exits with 124
    #[arg(long, value_name = "DURATION", value_parser = smolfile::parse_duration)]
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
    let smolfile = match &args.smolfile {
        Some(path) => {
            Some(Smolfile::load(path).map_err(|d| anyhow::anyhow!("invalid Smolfile:\n{d}"))?)
        }
        None => None,
    };
    let mut env = args
        .env
        .iter()
        .map(|e| env_flag(e))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if args.tty
        && !env.iter().any(|kv| kv.starts_with("TERM="))
        && let Ok(term) = std::env::var("TERM")
    {
        env.push(format!("TERM={term}"));
    }
    let overrides = Overrides {
        cmd: args.command,
        env,
        workdir: args.workdir,
        cpus: args.cpus,
        memory: args.memory,
        ..Default::default()
    };
    let eff = smolfile::merge(Purpose::Run, smolfile.as_ref(), &overrides, None);
    if let Some(image) = &eff.image {
        bail!("running the image {image} needs image support, which this build does not have yet");
    }
    if !eff.volumes.is_empty() || !eff.ports.is_empty() || eff.net {
        bail!("volumes, ports and networking are not available in this build yet");
    }
    let mut argv = eff.argv();
    if argv.is_empty() {
        argv = vec!["/bin/sh".into()];
    }
    let exec = Exec {
        argv,
        env: eff.env,
        workdir: eff.workdir,
        user: eff.user,
        tty: args
            .tty
            .then(|| terminal::size(0).unwrap_or(TtySize { rows: 24, cols: 80 })),
        stdin: args.interactive,
        timeout_ms: args.timeout.map(|d| d.as_millis() as u64),
    };
    let req = RunRequest {
        vm: VmSpec {
            backend: args
                .backend
                .parse::<BackendKind>()
                .map_err(anyhow::Error::msg)?,
            cpus: eff.cpus,
            memory_mib: eff.memory,
            disks: Vec::new(),
        },
        setup: Setup {
            hostname: "smolvm".into(),
            lower: Lower::Bare,
            upper: Upper::Tmpfs,
        },
        init: eff.init,
        exec,
        stdin: args.interactive,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
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
            eprintln!(
                "smolvm: command timed out after {:?} and was killed",
                timeout.unwrap_or_default()
            );
        }
        Outcome::Exited(_) => {}
        Outcome::Failed(e) => eprintln!("smolvm: {}", e.message),
        Outcome::Lost(why) => eprintln!("smolvm: error: {why}"),
    }
}

/// `-e KEY=VALUE`, or `-e KEY` to pass this process's value, as docker does.
fn env_flag(spec: &str) -> anyhow::Result<String> {
    let entry = if spec.contains('=') {
        spec.to_string()
    } else {
        format!("{spec}={}", std::env::var(spec).unwrap_or_default())
    };
    smolfile::parse_env(&entry).map_err(|e| anyhow::anyhow!("-e: {e}"))?;
    Ok(entry)
}
