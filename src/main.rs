//! The `oxtarget` daemon and its command-line client. Today it checks config files;
//! `serve` arrives with the first transport.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod config;

#[derive(Parser)]
#[command(
    name = "oxtarget",
    version,
    about = "A user-space SCSI target: iSCSI, vhost-user, SRP"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Checks a configuration file and prints the backends and LUNs it defines.
    CheckConfig {
        /// The TOML file.
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match config::load(&config) {
            Ok(c) => {
                for b in &c.backends {
                    println!("backend {}: {:?}", b.name, b.spec);
                }
                for l in &c.luns {
                    println!(
                        "lun {}: backend {}, uuid {}{}, {} byte blocks",
                        l.config.name,
                        l.backend,
                        config::format_uuid(&l.config.uuid),
                        if l.generated_uuid {
                            " (generated: put a uuid in the file)"
                        } else {
                            ""
                        },
                        l.config.block_size
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("oxtarget: {e}");
                ExitCode::from(1)
            }
        },
    }
}
