//! The `smolvm` command line: argument parsing and output; the work happens in the
//! libraries (`smolvm-runtime`, ...).

mod cli;
mod machine;
mod smolfile_cmd;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    smolvm_runtime::trace::init();
    // A krun VMM child process becomes the VM here and never returns.
    smolvm_runtime::backend::krun::vmm_entry();
    let cli = cli::Cli::parse();
    match cli::dispatch(cli) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("smolvm: error: {e:#}");
            ExitCode::from(smolvm_runtime::attach::EXIT_SMOLVM_ERROR as u8)
        }
    }
}
