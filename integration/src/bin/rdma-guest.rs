//! rdma-guest: runs one script in the RDMA guest (`Initramfs::rdma()`, two
//! vCPUs, rxe on virtio-net; see `integration::rdma`), for scripts outside
//! the test suite such as `bench/srp-vs-ib_srpt.sh`.
//!
//! ```text
//! rdma-guest [--oxtarget PATH] [--binary PATH]... [--timeout SECS] [--keep] SCRIPT
//! ```
//!
//! SCRIPT runs after `set -e` and the guest library (`/etc/oxtarget/rdma.sh`);
//! `--oxtarget` adds that binary (with its libraries) at `/usr/bin/oxtarget`,
//! `--binary` any other (a diagnostic tool such as strace) at `/usr/bin/`
//! under its own name.
//! The script's stdout (the results) is printed on stdout once the guest has
//! powered off. Exit status: the
//! script's; 1 if the guest failed otherwise (the report, with the console
//! tail, on stderr; the run directory is kept), 2 on bad arguments.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use integration::rdma::{RdmaGuest, SCRIPT_PROLOGUE};
use integration::{Error, GuestEnv, Initramfs};

const USAGE: &str =
    "usage: rdma-guest [--oxtarget PATH] [--binary PATH]... [--timeout SECS] [--keep] SCRIPT";

struct Args {
    script: PathBuf,
    oxtarget: Option<PathBuf>,
    binaries: Vec<PathBuf>,
    timeout: Option<Duration>,
    keep: bool,
}

fn parse(argv: &[String]) -> Result<Args, String> {
    let mut script = None;
    let mut oxtarget = None;
    let mut binaries = Vec::new();
    let mut timeout = None;
    let mut keep = false;
    let mut it = argv.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--oxtarget" => {
                oxtarget = Some(PathBuf::from(it.next().ok_or("--oxtarget needs a path")?));
            }
            "--binary" => {
                binaries.push(PathBuf::from(it.next().ok_or("--binary needs a path")?));
            }
            "--timeout" => {
                let secs: u64 = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|&s| s > 0)
                    .ok_or("--timeout needs a positive number of seconds")?;
                timeout = Some(Duration::from_secs(secs));
            }
            "--keep" => keep = true,
            "-h" | "--help" => return Err(String::new()),
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            s => {
                if script.replace(PathBuf::from(s)).is_some() {
                    return Err("one script only".into());
                }
            }
        }
    }
    Ok(Args {
        script: script.ok_or("no script given")?,
        oxtarget,
        binaries,
        timeout,
        keep,
    })
}

fn run(args: &Args) -> Result<i32, Error> {
    let env = GuestEnv::locate()?;
    let body = std::fs::read_to_string(&args.script).map_err(|e| Error::Io {
        context: format!("read {}", args.script.display()),
        source: e,
    })?;
    let initramfs = Initramfs::rdma().build(&env)?;
    let mut config = RdmaGuest::config(&initramfs, format!("{SCRIPT_PROLOGUE}{body}"));
    // The daemon, which changes with every build, goes over the shared
    // archive for this run only.
    let tmp = tempfile::tempdir().map_err(|e| Error::Io {
        context: "create a temporary directory".into(),
        source: e,
    })?;
    let mut overlay = Initramfs::new();
    if let Some(bin) = &args.oxtarget {
        let small = integration::strip_debug_copy(bin, tmp.path());
        overlay = overlay.binary_at(small, "/usr/bin/oxtarget");
    }
    for bin in &args.binaries {
        let name = bin.file_name().ok_or_else(|| Error::Io {
            context: format!("--binary {}", bin.display()),
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })?;
        let guest = format!("/usr/bin/{}", name.to_string_lossy());
        overlay = overlay.binary_at(bin, guest);
    }
    if args.oxtarget.is_some() || !args.binaries.is_empty() {
        config = config.overlay(overlay);
    }
    if let Some(timeout) = args.timeout {
        config = config.timeout(timeout);
    }
    let mut guest = env.run(&config)?;
    print!("{}", guest.results);
    eprintln!(
        "rdma-guest: the guest ran {:.1} s",
        guest.elapsed.as_secs_f64()
    );
    if args.keep {
        guest.keep();
        eprintln!("rdma-guest: run directory {}", guest.dir.display());
    }
    let status = guest.script_status;
    match guest.check() {
        Ok(_) => Ok(0),
        Err(e) => {
            eprintln!("rdma-guest: {e}");
            Ok(status.filter(|&s| s != 0).unwrap_or(1))
        }
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse(&argv) {
        Ok(args) => args,
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("rdma-guest: {msg}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(status) => ExitCode::from(u8::try_from(status).unwrap_or(1)),
        Err(e) => {
            eprintln!("rdma-guest: {e}");
            ExitCode::from(1)
        }
    }
}
