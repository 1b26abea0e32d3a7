//! Drives the RBD backend directly at a fixed queue depth, the way the engine does
//! (one channel, its eventfd, submit and reap on one thread), for comparison with
//! `rbd bench` on the same image:
//!
//! ```text
//! rbd_bench --conf DIR/ceph.conf --keyring DIR/keyring [--id admin] --image rbd/img
//!           --io-type read|write [--io-size 4K] [--qd 32] [--io-total 256M]
//!           [--pattern rand|seq] [--seconds 60]
//! ```
//! Sizes take a K, M or G suffix. Prints one line: ops, seconds, IOPS, MiB/s. Stops at `--io-total` bytes or after
//! `--seconds`, whichever comes first. Any failed I/O ends the run with an error.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use backends::{Backend, IoOp, RbdBackend, RbdOptions};
use vmm_sys_util::eventfd::EventFd;

struct Args {
    opts: RbdOptions,
    write: bool,
    io_size: usize,
    qd: usize,
    total: u64,
    rand: bool,
    seconds: u64,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        opts: RbdOptions::default(),
        write: false,
        io_size: 4096,
        qd: 32,
        total: 256 << 20,
        rand: true,
        seconds: 60,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().ok_or(format!("{k} needs a value"))?;
        let num = |v: &str| {
            let (digits, shift) = match v.char_indices().last() {
                Some((i, 'K' | 'k')) => (&v[..i], 10),
                Some((i, 'M' | 'm')) => (&v[..i], 20),
                Some((i, 'G' | 'g')) => (&v[..i], 30),
                _ => (v, 0),
            };
            digits
                .parse::<u64>()
                .ok()
                .and_then(|n| n.checked_mul(1u64 << shift))
                .ok_or(format!("{k} {v}: not a size"))
        };
        match k.as_str() {
            "--conf" => a.opts.ceph_conf = Some(PathBuf::from(v)),
            "--keyring" => a.opts.keyring = Some(PathBuf::from(v)),
            "--id" => a.opts.client_id = Some(v),
            "--image" => {
                let (pool, image) = v.split_once('/').ok_or("--image wants pool/image")?;
                a.opts.pool = pool.into();
                a.opts.image = image.into();
            }
            "--io-type" => a.write = v == "write",
            "--io-size" => {
                a.io_size = usize::try_from(num(&v)?).map_err(|e| e.to_string())?;
            }
            "--qd" => a.qd = usize::try_from(num(&v)?).map_err(|e| e.to_string())?,
            "--io-total" => a.total = num(&v)?,
            "--pattern" => a.rand = v == "rand",
            "--seconds" => a.seconds = num(&v)?,
            _ => return Err(format!("unknown option {k}")),
        }
    }
    if a.opts.image.is_empty() || a.io_size == 0 || a.qd == 0 {
        return Err("need --image, and a non-zero --io-size and --qd".into());
    }
    Ok(a)
}

fn main() {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("rbd_bench: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&a) {
        eprintln!("rbd_bench: {e}");
        std::process::exit(1);
    }
}

fn run(a: &Args) -> Result<(), String> {
    let b = RbdBackend::open(&a.opts).map_err(|e| e.to_string())?;
    let size = b.size();
    let io = a.io_size as u64;
    let slots = size / io;
    if slots == 0 {
        return Err("image smaller than one I/O".into());
    }
    let total_ops = a.total / io;
    let efd = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| e.to_string())?;
    let mut ch = b.open_channel(&efd).map_err(|e| e.to_string())?;
    let mut bufs: Vec<Vec<u8>> = (0..a.qd).map(|i| vec![i as u8 | 1; a.io_size]).collect();
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut seq = 0u64;
    let mut next_off = || {
        if a.rand {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % slots) * io
        } else {
            let o = (seq % slots) * io;
            seq += 1;
            o
        }
    };
    let start = Instant::now();
    let deadline = start + Duration::from_secs(a.seconds);
    let (mut submitted, mut completed) = (0u64, 0u64);
    let mut done = Vec::new();
    let submit =
        |ch: &mut Box<dyn backends::IoChannel>, slot: usize, off: u64, bufs: &mut [Vec<u8>]| {
            let v = [libc::iovec {
                iov_base: bufs[slot].as_mut_ptr().cast(),
                iov_len: bufs[slot].len(),
            }];
            let op = if a.write {
                IoOp::Write {
                    offset: off,
                    fua: false,
                }
            } else {
                IoOp::Read { offset: off }
            };
            // SAFETY: buffer `slot` is used by one operation at a time and lives until
            // the end of `run`, after the channel (whose drop waits for librbd).
            unsafe { ch.submit(op, &v, slot as u64) }.map_err(|e| e.to_string())
        };
    for slot in 0..a.qd.min(usize::try_from(total_ops).unwrap_or(usize::MAX)) {
        submit(&mut ch, slot, next_off(), &mut bufs)?;
        submitted += 1;
    }
    while completed < submitted {
        let mut pfd = libc::pollfd {
            fd: efd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, 1000) };
        if r > 0 {
            let _ = efd.read();
        }
        ch.reap(&mut done);
        for c in done.drain(..) {
            completed += 1;
            c.result.map_err(|e| format!("I/O failed: {e}"))?;
            if submitted < total_ops && Instant::now() < deadline {
                let slot = usize::try_from(c.user_data).map_err(|e| e.to_string())?;
                submit(&mut ch, slot, next_off(), &mut bufs)?;
                submitted += 1;
            }
        }
        if Instant::now() > deadline + Duration::from_secs(120) {
            return Err("completions stopped coming".into());
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let iops = completed as f64 / secs;
    println!(
        "rbd_bench {} {} {}B qd{}: {completed} ops in {secs:.2} s, {iops:.0} IOPS, {:.1} MiB/s",
        if a.write { "write" } else { "read" },
        if a.rand { "rand" } else { "seq" },
        a.io_size,
        a.qd,
        iops * a.io_size as f64 / (1 << 20) as f64
    );
    drop(ch);
    Ok(())
}
