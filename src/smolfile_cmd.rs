//! `smolvm smolfile ...`

use clap::Subcommand;
use smolfile::Smolfile;
use std::path::{Path, PathBuf};

/// The Smolfile a command's `-s` names, checked; `None` without one.
pub fn load(path: Option<&Path>) -> anyhow::Result<Option<Smolfile>> {
    path.map(|p| Smolfile::load(p).map_err(|d| anyhow::anyhow!("invalid Smolfile:\n{d}")))
        .transpose()
}

#[derive(Subcommand)]
pub enum SmolfileCommand {
    /// Check a Smolfile and report every problem with its line and column (exit 1 if any)
    Validate {
        /// The file to check
        #[arg(default_value = "Smolfile")]
        path: PathBuf,
        /// Print the result as JSON
        #[arg(long)]
        json: bool,
    },
    /// Print the Smolfile JSON Schema, for editors that complete and check TOML
    Schema,
}

pub fn dispatch(cmd: SmolfileCommand) -> anyhow::Result<i32> {
    match cmd {
        SmolfileCommand::Validate { path, json } => {
            let result = Smolfile::load(&path);
            if json {
                let diagnostics = result
                    .as_ref()
                    .err()
                    .map(|d| d.to_vec())
                    .unwrap_or_default();
                let out = serde_json::json!({
                    "file": path.display().to_string(),
                    "valid": result.is_ok(),
                    "diagnostics": diagnostics,
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                match &result {
                    Ok(_) => println!("{}: valid", path.display()),
                    Err(d) => eprintln!("{d}"),
                }
            }
            Ok(if result.is_ok() { 0 } else { 1 })
        }
        SmolfileCommand::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&smolfile::json_schema())?
            );
            Ok(0)
        }
    }
}
