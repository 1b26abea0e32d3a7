//! vhost-loadgen: a host-side vhost-user-scsi or vhost-user-blk frontend that
//! drives reads and writes at a backend with no guest, and reports IOPS, MB/s and
//! latency.
//!
//! ```text
//! vhost-loadgen --socket PATH [--device scsi|blk] [--rw randread|randwrite|read|write] [--bs 4k]
//!     [--qd 1] [--queues 1] [--time 10] [--count N] [--span BYTES]
//!     [--queue-size 128] [--no-event-idx] [--cdb16] [--target 0] [--lun 0] [--seed N]
//! ```
//!
//! `--device scsi` (the default) sends SCSI READ/WRITE on virtio-scsi request
//! queues 2.. (`--target`, `--lun`, `--cdb16` apply); `--device blk` sends
//! virtio-blk IN/OUT requests on queues 0.., after reading the capacity and block
//! size with GET_CONFIG, and ends a write run with a FLUSH when the device offers
//! one. `--qd` is the number of commands outstanding over all request queues. The
//! run stops after `--time` seconds or `--count` commands, whichever comes first.
//! The last line is machine-readable (`RESULT key=value ...`). Every response is
//! checked (scsi: virtio response OK, status GOOD, no residual; blk: status OK);
//! the exit status is 1 if any failed, 2 on bad arguments.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use integration::vhost_frontend::{Device, DeviceConfig, DeviceKind, Driver, Job, Pattern};

struct Args {
    socket: PathBuf,
    kind: DeviceKind,
    job: Job,
    queues: usize,
    queue_size: u16,
    event_idx: bool,
    target: u8,
    lun: u16,
}

const USAGE: &str = "usage: vhost-loadgen --socket PATH [--device scsi|blk] \
[--rw randread|randwrite|read|write] \
[--bs 4k] [--qd 1] [--queues 1] [--time 10] [--count N] [--span BYTES] [--queue-size 128] \
[--no-event-idx] [--cdb16] [--target 0] [--lun 0] [--seed N]";

/// `4096`, `4k`, `128K`, `1m`, `2g`.
fn parse_size(s: &str) -> Option<u64> {
    let lower = s.to_ascii_lowercase();
    let (num, mult) = match lower.chars().last()? {
        'k' => (&lower[..lower.len() - 1], 1u64 << 10),
        'm' => (&lower[..lower.len() - 1], 1 << 20),
        'g' => (&lower[..lower.len() - 1], 1 << 30),
        _ => (lower.as_str(), 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

fn parse(argv: &[String]) -> Result<Args, String> {
    let mut socket = None;
    let mut kind = DeviceKind::Scsi;
    let mut job = Job {
        write: false,
        pattern: Pattern::Random,
        block_bytes: 4096,
        depth: 1,
        duration: Duration::from_secs(10),
        max_ios: u64::MAX,
        span_bytes: None,
        force16: false,
        seed: 0x5eed_1234,
    };
    let mut queues = 1usize;
    let mut queue_size = 128u16;
    let mut event_idx = true;
    let mut target = 0u8;
    let mut lun = 0u16;
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{a} needs a value"));
        let bad = |v: &str| format!("{a}: bad value {v:?}");
        match a.as_str() {
            "--socket" => socket = Some(PathBuf::from(val()?)),
            "--device" => {
                let v = val()?;
                kind = match v.as_str() {
                    "scsi" => DeviceKind::Scsi,
                    "blk" => DeviceKind::Blk,
                    _ => return Err(bad(v)),
                }
            }
            "--rw" => {
                let v = val()?;
                (job.write, job.pattern) = match v.as_str() {
                    "randread" => (false, Pattern::Random),
                    "randwrite" => (true, Pattern::Random),
                    "read" => (false, Pattern::Sequential),
                    "write" => (true, Pattern::Sequential),
                    _ => return Err(bad(v)),
                }
            }
            "--bs" => {
                let v = val()?;
                job.block_bytes = parse_size(v)
                    .and_then(|n| u32::try_from(n).ok())
                    .filter(|&n| n > 0)
                    .ok_or_else(|| bad(v))?;
            }
            "--qd" => {
                let v = val()?;
                job.depth = v.parse().ok().filter(|&n| n > 0).ok_or_else(|| bad(v))?;
            }
            "--queues" => {
                let v = val()?;
                queues = v.parse().ok().filter(|&n| n > 0).ok_or_else(|| bad(v))?;
            }
            "--time" => {
                let v = val()?;
                let secs: f64 = v
                    .parse()
                    .ok()
                    .filter(|&s: &f64| s > 0.0 && s < 86_400.0)
                    .ok_or_else(|| bad(v))?;
                job.duration = Duration::from_secs_f64(secs);
            }
            "--count" => {
                let v = val()?;
                job.max_ios = v.parse().ok().filter(|&n| n > 0).ok_or_else(|| bad(v))?;
            }
            "--span" => {
                let v = val()?;
                job.span_bytes = Some(parse_size(v).ok_or_else(|| bad(v))?);
            }
            "--queue-size" => {
                let v = val()?;
                queue_size = v.parse().map_err(|_| bad(v))?;
            }
            "--seed" => {
                let v = val()?;
                job.seed = v.parse().map_err(|_| bad(v))?;
            }
            "--target" => {
                let v = val()?;
                target = v.parse().map_err(|_| bad(v))?;
            }
            "--lun" => {
                let v = val()?;
                lun = v.parse().map_err(|_| bad(v))?;
            }
            "--no-event-idx" => event_idx = false,
            "--cdb16" => job.force16 = true,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    let socket = socket.ok_or_else(|| format!("--socket is required\n{USAGE}"))?;
    Ok(Args {
        socket,
        kind,
        job,
        queues,
        queue_size,
        event_idx,
        target,
        lun,
    })
}

fn run(a: &Args) -> Result<bool, String> {
    let slots = a.job.depth.div_ceil(a.queues);
    // Slots hold at least a page: READ CAPACITY's data goes there too.
    let data = u64::from(a.job.block_bytes).max(4096);
    let (_, _, buffer_bytes) =
        Driver::memory_for(a.queues, slots, data).ok_or("the buffers would not fit in memory")?;
    let dev = Device::connect(
        &a.socket,
        &DeviceConfig {
            kind: a.kind,
            request_queues: a.queues,
            queue_size: a.queue_size,
            event_idx: a.event_idx,
            buffer_bytes,
        },
    )
    .map_err(|e| e.to_string())?;
    let event_idx = dev.event_idx();
    let backend_queues = dev.backend_queues;
    let mut drv = Driver::new(dev, a.target, a.lun, slots, data).map_err(|e| e.to_string())?;
    let features = drv.device().features;
    let (blocks, block_len) = drv.prepare().map_err(|e| e.to_string())?;
    eprintln!(
        "vhost-loadgen: {} {}: {} request queues of {} (device has {}), features {:#x}, event_idx {}, {} blocks of {} bytes",
        match a.kind {
            DeviceKind::Scsi => "scsi",
            DeviceKind::Blk => "blk",
        },
        a.socket.display(),
        a.queues,
        a.queue_size,
        backend_queues.saturating_sub(a.kind.fixed_queues() as u64),
        features,
        event_idx,
        blocks,
        block_len
    );
    let r = drv
        .run(&a.job, blocks, block_len)
        .map_err(|e| e.to_string())?;
    // A write run ends as a guest's fsync would; a failed FLUSH fails the run.
    if a.job.write && drv.flush().map_err(|e| e.to_string())? {
        eprintln!("vhost-loadgen: FLUSH: OK");
    }
    // Stop the rings as QEMU does at VM stop: answered once the backend is idle.
    drv.device().stop().map_err(|e| e.to_string())?;
    let us = |ns: Option<u64>| ns.map_or(0.0, |v| v as f64 / 1000.0);
    let mean = r.latency.mean().unwrap_or(0.0) / 1000.0;
    let cpu_per_io = if r.ios > 0 {
        r.cpu.as_secs_f64() * 1e6 / r.ios as f64
    } else {
        0.0
    };
    println!(
        "{} bs={} qd={} queues={}: {:.0} IOPS, {:.1} MB/s, latency mean {:.1} us, p50 {:.1} us, p99 {:.1} us, max {:.1} us; {} I/Os in {:.2} s, {} errors; loadgen CPU {:.2} us/IO",
        match (a.job.write, a.job.pattern) {
            (false, Pattern::Random) => "randread",
            (true, Pattern::Random) => "randwrite",
            (false, Pattern::Sequential) => "read",
            (true, Pattern::Sequential) => "write",
        },
        a.job.block_bytes,
        a.job.depth,
        a.queues,
        r.iops(),
        r.mb_per_s(),
        mean,
        us(r.latency.percentile(50.0)),
        us(r.latency.percentile(99.0)),
        us(r.latency.max()),
        r.ios,
        r.elapsed.as_secs_f64(),
        r.errors,
        cpu_per_io,
    );
    for d in &r.error_details {
        eprintln!("vhost-loadgen: error: {d}");
    }
    println!(
        "RESULT ios={} errors={} secs={:.6} iops={:.1} mbps={:.2} lat_mean_us={:.2} lat_p50_us={:.2} lat_p99_us={:.2} kicks={} sleeps={} loadgen_cpu_s={:.4}",
        r.ios,
        r.errors,
        r.elapsed.as_secs_f64(),
        r.iops(),
        r.mb_per_s(),
        mean,
        us(r.latency.percentile(50.0)),
        us(r.latency.percentile(99.0)),
        r.kicks,
        r.sleeps,
        r.cpu.as_secs_f64(),
    );
    Ok(r.errors == 0 && r.ios > 0)
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("vhost-loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("vhost-loadgen: commands failed (or none completed)");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("vhost-loadgen: {e}");
            ExitCode::from(1)
        }
    }
}
