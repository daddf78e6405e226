//! Command-line definitions. Flags follow the habits of docker and of the reference smolvm
//! (`-I/--image`, `-n/--name`, `-e/--env`, `-w/--workdir`, `-i`, `-t`, ...).

use crate::{config_cmd, machine, pack, smolfile_cmd};
use clap::{CommandFactory, Parser, Subcommand};
use clap_complete::Shell;

#[derive(Parser)]
#[command(
    name = "smolvm",
    about = "Run commands and whole machines in hardware-isolated Linux microVMs",
    disable_version_flag = true,
    arg_required_else_help = true
)]
pub struct Cli {
    /// Print the version and the VM backends usable on this host
    #[arg(short = 'V', long)]
    version: bool,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run and manage microVMs
    #[command(subcommand)]
    Machine(machine::MachineCommand),
    /// Pack machines into executables, and run and inspect packs
    #[command(subcommand)]
    Pack(pack::PackCommand),
    /// Settings (registries)
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// Save credentials for a registry (the password is read from stdin)
    Login {
        /// The registry, e.g. registry.example.com or 127.0.0.1:5000
        registry: String,
        /// The username (asked on a terminal when missing)
        #[arg(short, long)]
        username: Option<String>,
    },
    /// Remove the credentials saved for a registry
    Logout {
        /// The registry
        registry: String,
    },
    /// Check Smolfiles and print their schema
    #[command(subcommand)]
    Smolfile(smolfile_cmd::SmolfileCommand),
    /// Print a shell completion script (e.g. `smolvm completions bash > /etc/bash_completion.d/smolvm`)
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
}

/// Runs the command; returns the process exit status.
pub fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    if cli.version {
        print_version();
        return Ok(0);
    }
    match cli.command {
        Some(Command::Machine(m)) => machine::dispatch(m),
        Some(Command::Smolfile(s)) => smolfile_cmd::dispatch(s),
        Some(Command::Pack(p)) => pack::dispatch(p),
        Some(Command::Config(c)) => config_cmd::dispatch(c),
        Some(Command::Login { registry, username }) => config_cmd::login(&registry, username),
        Some(Command::Logout { registry }) => config_cmd::logout(&registry),
        Some(Command::Completions { shell }) => {
            clap_complete::generate(shell, &mut Cli::command(), "smolvm", &mut std::io::stdout());
            Ok(0)
        }
        None => {
            Cli::command().print_help()?;
            Ok(2)
        }
    }
}

fn print_version() {
    println!("smolvm {}", env!("CARGO_PKG_VERSION"));
    let backends = smolvm_runtime::backend::available();
    if backends.is_empty() {
        match smolvm_runtime::backend::select(smolvm_runtime::BackendKind::Auto) {
            Err(e) => println!("backends: none usable on this host\n{e}"),
            Ok(b) => println!("backends: {}", b.describe()),
        }
    } else {
        println!("backends: {}", backends.join(", "));
    }
}
