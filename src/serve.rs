//! `oxtarget serve`: loads the config (or the default), starts the daemon and
//! its RPC socket, tells systemd it is ready, and on SIGTERM or SIGINT stops
//! the transports and syncs every backend before it exits.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::config;
use crate::daemon::rpc::RpcServer;
use crate::daemon::Daemon;

/// What `oxtarget serve` runs without a config: a 1 GiB RAM LUN on an iSCSI
/// target at 127.0.0.1:3260, open to every initiator, and on a vhost-user-scsi
/// socket.
pub const DEFAULT_CONFIG: &str = r#"
[[backend]]
name = "ram0"
type = "ram"
size = "1G"

[[lun]]
name = "lun0"
backend = "ram0"

[[iscsi_target]]
name = "iqn.2026-11.org.oxtarget:default"
portals = ["127.0.0.1:3260"]
luns = [{ id = 0, lun = "lun0" }]

[[vhost_scsi]]
name = "vhost0"
socket = "/run/oxtarget/vhost0.sock"
luns = [{ id = 0, lun = "lun0" }]
"#;

/// Blocks SIGTERM and SIGINT in this thread and every thread it starts later,
/// so that [`wait_for_signal`] receives them.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initializes it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the calls only write to it and to this
    // thread's signal mask.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    set
}

fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    // SAFETY: `set` is an initialized sigset_t and `sig` a valid out pointer.
    unsafe { libc::sigwait(set, &mut sig) };
    sig
}

/// Tells systemd (Type=notify) that the daemon is ready, if it asked.
fn sd_notify_ready() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        Some(abs) => UnixAddr::from_abstract_name(abs.as_bytes()),
        None => UnixAddr::from_pathname(&path),
    };
    let sent =
        UnixDatagram::unbound().and_then(|s| addr.and_then(|a| s.send_to_addr(b"READY=1\n", &a)));
    if let Err(e) = sent {
        tracing::warn!("sd_notify to {path}: {e}");
    }
}

/// A minimal HTTP listener on loopback that answers every request with the
/// metrics (one request per connection, bounded request size and time).
fn serve_metrics(d: Arc<Daemon>, addr: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut c) = conn else { continue };
                let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf);
                let body = crate::daemon::stats::prometheus(&d);
                let _ = write!(
                    c,
                    "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        })?;
    Ok(())
}

fn init_logging(level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => EnvFilter::new(l),
        None => EnvFilter::try_from_env("OXTARGET_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Prints how to attach what the daemon serves.
fn print_next_steps(d: &Daemon) {
    println!(
        "oxtarget is serving. Control socket: {}",
        d.settings.rpc_socket.display()
    );
    for t in d.iscsi().targets() {
        for p in &t.portals {
            println!("  iSCSI: iscsi://{p}/{}/0", t.name);
        }
    }
    if let Some(v) = d.list_vhost().as_array() {
        for c in v {
            let sock = c["socket"].as_str().unwrap_or_default();
            let queues = c["queues"].as_u64().unwrap_or(1);
            println!(
                "  QEMU:  qemu-system-x86_64 -object memory-backend-memfd,id=mem,size=1G,share=on \
                 -machine memory-backend=mem -chardev socket,id=vhost0,path={sock} \
                 -device vhost-user-scsi-pci,chardev=vhost0,num_queues={queues} ..."
            );
        }
    }
    let _ = std::io::stdout().flush();
}

pub fn run(config_path: Option<PathBuf>, log_level: Option<&str>) -> ExitCode {
    init_logging(log_level);
    let loaded = match &config_path {
        Some(p) => config::load(p),
        None => config::parse("<default config>", DEFAULT_CONFIG),
    };
    let cfg = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("oxtarget: {e}");
            return ExitCode::from(2);
        }
    };
    for l in &cfg.luns {
        if l.generated_uuid && config_path.is_some() {
            tracing::warn!(
                lun = %l.config.name,
                "no uuid in the config: one was generated; save the config to keep the LUN's identity"
            );
        }
    }
    let signals = block_signals();
    let metrics = cfg.metrics_listen;
    let daemon = match Daemon::start(cfg, config_path.clone()) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("oxtarget: {e}");
            return ExitCode::from(1);
        }
    };
    let rpc = match RpcServer::start(daemon.clone(), &daemon.settings.rpc_socket) {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "oxtarget: RPC socket {}: {e}",
                daemon.settings.rpc_socket.display()
            );
            daemon.stop();
            return ExitCode::from(1);
        }
    };
    if let Some(addr) = metrics {
        if let Err(e) = serve_metrics(daemon.clone(), addr) {
            eprintln!("oxtarget: metrics on {addr}: {e}");
            drop(rpc);
            daemon.stop();
            return ExitCode::from(1);
        }
    }
    print_next_steps(&daemon);
    sd_notify_ready();
    let sig = wait_for_signal(&signals);
    tracing::info!(signal = sig, "stopping: draining I/O and syncing backends");
    drop(rpc);
    daemon.stop();
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// Where a CLI finds the daemon: `--socket`, `$OXTARGET_SOCKET`, the default.
pub fn socket_path(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| std::env::var_os("OXTARGET_SOCKET").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(crate::daemon::DEFAULT_RPC_SOCKET))
}
