//! Serves one vhost-user-blk controller with one LUN until killed, for benchmarks
//! and for attaching QEMU or cloud-hypervisor by hand without a config (`oxtarget
//! serve` is the daemon):
//!
//! `cargo run --release -p oxtarget-vhost-target --example vhost_blk_serve -- SOCKET
//! BACKING [QUEUES] [MIB]`
//!
//! BACKING is `ram` (sparse memory), `null` (reads zeroes, drops writes), or the
//! path of an existing file (buffered, io_uring; one ring per queue thread).
//! QUEUES request queues (default 1); MIB sizes a `ram`/`null` LUN (default
//! 1024). The LUN has 512-byte blocks.

use std::path::PathBuf;
use std::process::ExitCode;

use backends::{BackendSpec, IoEngine};
use engine::{Lun, LunConfig, LunRegistry};
use vhost_target::VhostBlkController;

const USAGE: &str = "usage: vhost_blk_serve SOCKET ram|null|FILE [QUEUES] [MIB]";

fn spec(backing: &str, mib: u64) -> Result<BackendSpec, String> {
    let size = mib
        .checked_mul(1 << 20)
        .ok_or_else(|| format!("{mib} MiB is too large"))?;
    Ok(match backing {
        "ram" => BackendSpec::Ram { size },
        "null" => BackendSpec::Null { size },
        path => BackendSpec::File {
            path: PathBuf::from(path),
            direct: false,
            read_only: false,
            engine: IoEngine::Uring,
            create_size: None,
        },
    })
}

fn run(args: &[String]) -> Result<(), String> {
    let (Some(socket), Some(backing)) = (args.first(), args.get(1)) else {
        return Err(USAGE.to_string());
    };
    let number = |i: usize, default: u64| -> Result<u64, String> {
        args.get(i).map_or(Ok(default), |a| {
            a.parse().map_err(|_| format!("{a}: not a number\n{USAGE}"))
        })
    };
    let queues = usize::try_from(number(2, 1)?).map_err(|e| e.to_string())?;
    let mib = number(3, 1024)?;
    let backend = backends::open(&spec(backing, mib)?).map_err(|e| e.to_string())?;
    let lun = Lun::new(LunConfig::new("bench0", [0x5b; 16]), backend).map_err(|e| e.to_string())?;
    let registry = LunRegistry::new();
    registry.add(lun.clone());
    let controller = VhostBlkController::new("bench-blk", socket, lun, registry, queues)
        .map_err(|e| e.to_string())?;
    println!("serving vhost-user-blk on {socket}: {backing}, {queues} request queues");
    controller.serve().map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vhost_blk_serve: {e}");
            ExitCode::FAILURE
        }
    }
}
