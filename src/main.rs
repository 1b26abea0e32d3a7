//! The `oxtarget` daemon (`oxtarget serve`) and its command-line client: every
//! other command is a JSON-RPC call on the running daemon's socket.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use oxtarget::{cli, config, serve};

#[derive(Parser)]
#[command(
    name = "oxtarget",
    version,
    about = "A user-space SCSI target: iSCSI and vhost-user-scsi from one daemon",
    after_help = "Exit codes: 0 done, 1 the daemon refused, 2 bad usage or config, 3 no daemon."
)]
struct Cli {
    /// The daemon's control socket (default: $OXTARGET_SOCKET, then /run/oxtarget/rpc.sock).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Print results as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the daemon (without --config: a 1 GiB RAM LUN on iSCSI at
    /// 127.0.0.1:3260 and on the vhost-user socket /run/oxtarget/vhost0.sock).
    Serve {
        /// The TOML configuration.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Log filter (error, warn, info, debug, trace, or tracing directives);
        /// default $OXTARGET_LOG, then info.
        #[arg(long)]
        log_level: Option<String>,
    },
    /// Checks a configuration file and prints what it defines.
    CheckConfig {
        /// The TOML file.
        config: PathBuf,
    },
    #[command(flatten)]
    Client(cli::Group),
}

fn check_config(path: &std::path::Path) -> ExitCode {
    match config::load(path) {
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
            for t in &c.iscsi_targets {
                let portals: Vec<String> = t.portals.iter().map(|p| p.to_string()).collect();
                println!(
                    "iscsi target {}: portals {}, {} LUNs, ACL {}, CHAP {}",
                    t.name,
                    portals.join(" "),
                    t.luns.len(),
                    if t.acl.is_empty() {
                        "open".to_string()
                    } else {
                        t.acl.join(" ")
                    },
                    if t.chap_required { "required" } else { "off" }
                );
            }
            for v in &c.vhost_scsi {
                println!(
                    "vhost-user-scsi {}: socket {}, {} queues, {} LUNs",
                    v.name,
                    v.socket.display(),
                    v.queues,
                    v.luns.len()
                );
            }
            for v in &c.vhost_blk {
                println!(
                    "vhost-user-blk {}: socket {}, {} queues, LUN {}",
                    v.name,
                    v.socket.display(),
                    v.queues,
                    v.lun
                );
            }
            for t in &c.srp_targets {
                println!(
                    "srp target {}: id_ext {:#018x}, ioc_guid {:#018x}, {} LUNs",
                    t.name,
                    t.id_ext,
                    t.ioc_guid,
                    t.luns.len()
                );
            }
            if !c.srp_targets.is_empty() {
                let l: Vec<String> = c.srp.listen.iter().map(|a| a.to_string()).collect();
                println!(
                    "srp listener: {}, queue depth {}",
                    l.join(" "),
                    c.srp.queue_depth
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("oxtarget: {e}");
            ExitCode::from(cli::EXIT_USAGE)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, log_level } => serve::run(config, log_level.as_deref()),
        Command::CheckConfig { config } => check_config(&config),
        Command::Client(g) => cli::run(&serve::socket_path(cli.socket.as_deref()), cli.json, g),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every command's arguments are consistent (clap checks names, ids and
    /// global flags against each subcommand; a clash panics at run time).
    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
