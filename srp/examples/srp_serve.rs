//! A standalone SRP target on one RAM LUN, for a guest with an rxe device
//! before the daemon serves SRP:
//!
//! ```text
//! srp_serve [--listen ADDR:PORT | --port PORT] [--id-ext HEX] [--ioc-guid HEX]
//!           [--size MIB] [--queue-depth N] [--null] [--blockdev PATH]
//! ```
//!
//! Defaults: `0.0.0.0:5555`, id_ext = ioc_guid = `0x0002c90300a1b2c3`, 64 MiB,
//! queue depth 128. `--null` serves a null LUN (reads zeroes, drops writes)
//! for benchmarks. `--blockdev` adds LUN 1 on a block device (O_DIRECT), e.g.
//! a dm device whose I/O the test suspends to exercise task management. It prints the line to write to
//! `/sys/class/infiniband_srp/srp-<dev>-1/add_target`, then `READY`, and serves
//! until killed. `RUST_LOG=srp=debug` shows logins and channel ends.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use backends::null::NullBackend;
use backends::RamBackend;
use engine::{Lun, LunConfig, LunMap, LunRegistry, Protocol, TargetPort};
use srp::{Server, ServerConfig, Target};

struct Args {
    listen: SocketAddr,
    id_ext: u64,
    ioc_guid: u64,
    mib: u64,
    queue_depth: u32,
    null: bool,
    blockdev: Option<std::path::PathBuf>,
}

fn hex(s: &str) -> Result<u64, String> {
    let t = s.strip_prefix("0x").unwrap_or(s);
    u64::from_str_radix(t, 16).map_err(|e| format!("{s}: {e}"))
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        listen: SocketAddr::from(([0, 0, 0, 0], srp::server::DEFAULT_PORT)),
        id_ext: 0x0002_c903_00a1_b2c3,
        ioc_guid: 0x0002_c903_00a1_b2c3,
        mib: 64,
        queue_depth: 128,
        null: false,
        blockdev: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--null" {
            a.null = true;
            continue;
        }
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => a.listen = v.parse().map_err(|e| format!("{v}: {e}"))?,
            "--port" => a
                .listen
                .set_port(v.parse().map_err(|e| format!("{v}: {e}"))?),
            "--id-ext" => a.id_ext = hex(&v)?,
            "--ioc-guid" => a.ioc_guid = hex(&v)?,
            "--size" => a.mib = v.parse().map_err(|e| format!("{v}: {e}"))?,
            "--blockdev" => a.blockdev = Some(v.into()),
            "--queue-depth" => a.queue_depth = v.parse().map_err(|e| format!("{v}: {e}"))?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("srp_serve: {e}");
            return ExitCode::from(2);
        }
    };
    let bytes = a.mib << 20;
    let registry = LunRegistry::new();
    let backend: Arc<dyn backends::Backend> = if a.null {
        Arc::new(NullBackend::new(bytes))
    } else {
        Arc::new(RamBackend::new(bytes))
    };
    let mut uuid = [0x5au8; 16];
    uuid[6] = 0x40;
    let lun = match Lun::new(LunConfig::new("srp0-lun0", uuid), backend) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("srp_serve: LUN: {e}");
            return ExitCode::from(1);
        }
    };
    registry.add(lun.clone());
    let luns = LunMap::new();
    luns.insert(0, lun);
    if let Some(path) = &a.blockdev {
        let spec = backends::BackendSpec::BlockDev {
            path: path.clone(),
            read_only: false,
        };
        let mut uuid1 = uuid;
        uuid1[15] = 1;
        let lun1 = backends::open(&spec)
            .map_err(|e| e.to_string())
            .and_then(|b| {
                Lun::new(LunConfig::new("srp0-lun1", uuid1), b).map_err(|e| e.to_string())
            });
        match lun1 {
            Ok(l) => {
                registry.add(l.clone());
                luns.insert(1, l);
            }
            Err(e) => {
                eprintln!("srp_serve: {}: {e}", path.display());
                return ExitCode::from(1);
            }
        }
    }
    let target = Target {
        name: "srp0".into(),
        id_ext: a.id_ext,
        ioc_guid: a.ioc_guid,
        port: Arc::new(TargetPort {
            name: format!("0x{:016x}{:016x}", a.id_ext, a.ioc_guid),
            protocol: Protocol::Srp,
            relative_id: 1,
            group_id: 1,
        }),
        luns,
    };
    let cfg = ServerConfig {
        targets: vec![target],
        listen: vec![a.listen],
        queue_depth: a.queue_depth,
        ..ServerConfig::default()
    };
    let server = match Server::start(cfg, registry) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("srp_serve: {e}");
            return ExitCode::from(1);
        }
    };
    let port = server
        .local_addrs()
        .first()
        .map_or(a.listen.port(), |l| l.port());
    println!(
        "add_target: id_ext=0x{:016x},ioc_guid=0x{:016x},dest=<IP>:{port}",
        a.id_ext, a.ioc_guid
    );
    println!("READY");
    loop {
        std::thread::park();
    }
}
