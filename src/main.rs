//! The `smolvm` command line: argument parsing and output; the work happens in the
//! libraries (`smolvm-runtime`, ...).

mod cli;
mod config_cmd;
mod image;
mod lifecycle;
mod machine;
mod pack;
mod progress;
mod smolfile_cmd;

use clap::Parser;
use std::process::ExitCode;

/// The async runtime for one command. Two workers let hashing and disk writes of a pull
/// overlap the network; VMs are started from the main thread (in `block_on`), which lives
/// as long as the process, as `PR_SET_PDEATHSIG` requires.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// An error and its causes on one line. Some errors already quote their cause in their own
/// message; a cause whose text is already there is not repeated.
fn chain(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text
}

fn main() -> ExitCode {
    smolvm_runtime::trace::init();
    // A krun VMM child process becomes the VM here and never returns.
    smolvm_runtime::backend::krun::vmm_entry();
    smolvm_runtime::machine::supervise_entry();
    let cli = cli::Cli::parse();
    match cli::dispatch(cli) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("smolvm: error: {}", chain(&e));
            ExitCode::from(smolvm_runtime::attach::EXIT_SMOLVM_ERROR as u8)
        }
    }
}
