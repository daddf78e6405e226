//! The packed executable: this program with a `.smolmachine` appended (or next to it as
//! `<name>.smolmachine`). It runs the machine packed into it, with no other smolvm installed.

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use smolvm_runtime::attach::{self, Outcome};
use smolvm_runtime::backend::BackendKind;
use smolvm_runtime::machine::Status;
use smolvm_stub::{App, AppError, NetFlags, RunOptions};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    about = "A Linux machine packed with smolvm: runs in a hardware-isolated microVM",
    disable_version_flag = true,
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a command in a new, ephemeral VM of this machine (default: its entrypoint and cmd)
    Run(RunArgs),
    /// Start this machine in the background; `exec` runs commands in it
    Start(StartArgs),
    /// Run a command in the started machine (its /workspace persists across stop and start)
    Exec(ExecArgs),
    /// Stop the started machine; its disks are kept
    Stop,
    /// Say whether the machine is running
    Status {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Show what is packed: manifest, sections and whether they are cached
    Info {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct CommandArgs {
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
    /// The command and its arguments
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

#[derive(Args)]
struct VmArgs {
    /// Number of vCPUs [default: as packed]
    #[arg(long)]
    cpus: Option<u32>,
    /// Memory in MiB [default: as packed]
    #[arg(long = "mem", value_name = "MiB")]
    memory: Option<u32>,
    /// VM backend: krun needs hardware virtualization, qemu also runs without it
    #[arg(long, default_value = "auto", value_parser = ["auto", "krun", "qemu"])]
    backend: String,
    /// Extract the packed sections again even if they are cached
    #[arg(long)]
    force_extract: bool,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    cmd: CommandArgs,
    #[command(flatten)]
    vm: VmArgs,
    /// Kill the command after this long (e.g. 30s, 5m); then exit with 124
    #[arg(long, value_name = "DURATION", value_parser = smolfile::parse_duration)]
    timeout: Option<Duration>,
    /// Share a host directory with the guest, live (HOST:GUEST or HOST:GUEST:ro; repeatable)
    #[arg(short = 'v', long = "volume", value_name = "HOST:GUEST[:ro]", value_parser = smolvm_runtime::volume::parse_flag)]
    volumes: Vec<smolfile::Volume>,
    #[command(flatten)]
    net: NetArgs,
}

#[derive(Args)]
struct NetArgs {
    /// Give the VM a network even if the machine was packed without one (its allow lists apply)
    #[arg(long)]
    net: bool,
    /// Forward a host port to a guest port: HOST:GUEST or IP:HOST:GUEST (repeatable)
    #[arg(short = 'p', long = "publish", value_name = "[IP:]HOST:GUEST", value_parser = smolfile::Port::parse)]
    publish: Vec<smolfile::Port>,
}

impl From<NetArgs> for NetFlags {
    fn from(a: NetArgs) -> NetFlags {
        NetFlags {
            net: a.net,
            publish: a.publish,
        }
    }
}

#[derive(Args)]
struct StartArgs {
    #[command(flatten)]
    vm: VmArgs,
    #[command(flatten)]
    net: NetArgs,
}

#[derive(Args)]
struct ExecArgs {
    #[command(flatten)]
    cmd: CommandArgs,
}

fn main() -> ExitCode {
    smolvm_runtime::trace::init();
    // A VMM or supervisor child of this program becomes that here and never returns.
    smolvm_runtime::backend::krun::vmm_entry();
    smolvm_runtime::machine::supervise_entry();
    let name = std::env::args_os()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "smolvm-stub".into());
    let matches = Cli::command()
        .name(name.clone())
        .bin_name(name.clone())
        .get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match dispatch(cli, name.clone()) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("{name}: error: {e}");
            ExitCode::from(attach::EXIT_SMOLVM_ERROR as u8)
        }
    }
}

fn dispatch(cli: Cli, name: String) -> Result<i32, AppError> {
    let exe = std::env::current_exe()
        .map_err(|e| AppError::Invalid(format!("finding this executable: {e}")))?;
    let app = App::new(smolvm_stub::locate(&exe)?, name)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| AppError::Invalid(format!("starting the async runtime: {e}")))?;
    let backend = |s: &str| s.parse::<BackendKind>().map_err(AppError::Invalid);
    let code = match cli.command {
        Cmd::Run(a) => {
            attach::check_tty_flags(a.cmd.interactive, a.cmd.tty).map_err(AppError::Invalid)?;
            let opts = RunOptions {
                env: attach::env_flags(&a.cmd.env, a.cmd.tty).map_err(AppError::Invalid)?,
                command: a.cmd.command,
                workdir: a.cmd.workdir,
                cpus: a.vm.cpus,
                memory: a.vm.memory,
                timeout_ms: a.timeout.map(|d| d.as_millis() as u64),
                interactive: a.cmd.interactive,
                tty: attach::tty_size(a.cmd.tty),
                backend: Some(backend(&a.vm.backend)?),
                force_extract: a.vm.force_extract,
                volumes: a.volumes,
                net: a.net.into(),
            };
            let outcome = rt.block_on(app.run(opts))?;
            finish(rt, &outcome, a.timeout)
        }
        Cmd::Start(a) => {
            app.start(
                &exe,
                a.vm.cpus,
                a.vm.memory,
                backend(&a.vm.backend)?,
                a.vm.force_extract,
                &a.net.into(),
            )?;
            eprintln!(
                "{} is running; `{} exec -- CMD` runs commands in it, `{} stop` stops it",
                app.name, app.name, app.name
            );
            0
        }
        Cmd::Exec(a) => {
            attach::check_tty_flags(a.cmd.interactive, a.cmd.tty).map_err(AppError::Invalid)?;
            let env = attach::env_flags(&a.cmd.env, a.cmd.tty).map_err(AppError::Invalid)?;
            let outcome = rt.block_on(app.exec(
                a.cmd.command,
                &env,
                a.cmd.workdir,
                a.cmd.interactive,
                attach::tty_size(a.cmd.tty),
            ))?;
            finish(rt, &outcome, None)
        }
        Cmd::Stop => {
            if !rt.block_on(app.stop())? {
                eprintln!("{} is not running", app.name);
            }
            0
        }
        Cmd::Status { json } => {
            let status = app.status()?;
            if json {
                println!("{}", serde_json::to_string(&status).expect("serialisable"));
            } else {
                match status {
                    Status::Running { pid } => {
                        println!("{} is running (supervisor pid {pid})", app.name)
                    }
                    Status::Stopped => println!("{} is stopped", app.name),
                }
            }
            0
        }
        Cmd::Info { json } => {
            let info = app.info()?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&info).expect("serialisable")
                );
            } else {
                print!("{}", smolvm_stub::describe(&info));
            }
            0
        }
    };
    Ok(code)
}

fn finish(rt: tokio::runtime::Runtime, outcome: &Outcome, timeout: Option<Duration>) -> i32 {
    // A blocked read of our stdin must not keep the process alive.
    rt.shutdown_background();
    attach::report(outcome, timeout);
    outcome.exit_code()
}
