//! The OSD goes away under I/O: requests in flight and new ones complete with
//! errors (librados' OSD op timeout) instead of hanging, and once the OSD is back
//! I/O works again. Its own cluster (bluestore, so the data survives the OSD
//! restart): `cargo test -p oxtarget-backends --features rbd --test rbd_osd_stop`.

mod support;

use std::time::{Duration, Instant};

use backends::{Backend, BackendError, IoErrorKind, IoOp, RbdBackend, RbdTimeouts};
use support::{iov, read_at, reap_n, write_at, Cluster};
use vmm_sys_util::eventfd::EventFd;

const OP_TIMEOUT: Duration = Duration::from_secs(5);

struct StopOnDrop(Cluster);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

#[test]
fn stopped_osd_fails_io_within_the_timeout_and_recovers() {
    let cluster = StopOnDrop(Cluster::start(true));
    let c = &cluster.0;
    c.rbd_ok(&["create", "--size", "64M", "rbd/victim"]);
    let mut o = c.options("victim");
    o.timeouts = RbdTimeouts {
        connect: OP_TIMEOUT,
        mon_op: OP_TIMEOUT,
        osd_op: OP_TIMEOUT,
    };
    let b = RbdBackend::open(&o).unwrap();
    let efd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let mut ch = b.open_channel(&efd).unwrap();

    let mut keep = vec![0x5au8; 64 * 1024];
    let done = write_at(&mut *ch, &efd, 0, true, &mut keep);
    assert_eq!(done.result, Ok(64 * 1024));

    // I/O in flight while the OSD stops: a write or read every 10 ms (at most
    // 256) while `stop-osd` runs; each either made it before the stop or fails, and
    // none hangs.
    let n = 256usize;
    let mut bufs: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8; 16 * 1024]).collect();
    let mut done = Vec::new();
    let mut submitted = 0usize;
    std::thread::scope(|s| {
        let stopper = s.spawn(|| c.script("stop-osd"));
        for (i, buf) in bufs.iter_mut().enumerate() {
            if stopper.is_finished() {
                break;
            }
            let off = (i as u64 + 1) * (128 << 10);
            let op = if i % 2 == 0 {
                IoOp::Write {
                    offset: off,
                    fua: false,
                }
            } else {
                IoOp::Read { offset: off }
            };
            // SAFETY: `bufs` outlives every completion (reaped below, or waited
            // for when the channel drops).
            unsafe { ch.submit(op, &[iov(buf)], i as u64) }.unwrap();
            submitted += 1;
            ch.reap(&mut done);
            std::thread::sleep(Duration::from_millis(10));
        }
        let out = stopper.join().unwrap();
        assert!(
            out.status.success(),
            "stop-osd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    eprintln!(
        "{submitted} submitted while the OSD stopped, {} in flight when it was down",
        ch.in_flight()
    );

    // Submitted after the OSD is gone: must fail (bounded wait: the op timeout,
    // a map refresh from the mon and slack for a loaded machine).
    let mut late: Vec<Vec<u8>> = (0..8).map(|_| vec![0u8; 4096]).collect();
    for (i, buf) in late.iter_mut().enumerate() {
        let off = 40 << 20;
        let op = if i % 2 == 0 {
            IoOp::Write {
                offset: off,
                fua: false,
            }
        } else {
            IoOp::Read { offset: 0 }
        };
        // SAFETY: as above.
        unsafe { ch.submit(op, &[iov(buf)], 1000 + i as u64) }.unwrap();
    }
    let limit = OP_TIMEOUT * 6 + Duration::from_secs(60);
    let started = Instant::now();
    let rest = reap_n(&mut *ch, &efd, submitted + late.len() - done.len(), limit);
    done.extend(rest);
    eprintln!(
        "{} completions {:?} after the OSD stopped",
        done.len(),
        started.elapsed()
    );
    let late_results: Vec<_> = done.iter().filter(|c| c.user_data >= 1000).collect();
    assert_eq!(late_results.len(), late.len());
    for c in &late_results {
        let e = c.result.expect_err("I/O with the OSD down must fail");
        eprintln!("op {} failed: {e}", c.user_data);
        // librados' op timeout: a kind of its own, which the engine reports
        // as a retriable ABORTED COMMAND rather than a hardware error.
        assert_eq!((e.kind, e.errno), (IoErrorKind::TimedOut, libc::ETIMEDOUT));
    }
    // Block status asks the OSDs too: it fails the same way, as a value.
    match b.block_status(0, 4096) {
        Err(BackendError::Rbd { source, .. }) => {
            assert_eq!(source.raw_os_error(), Some(libc::ETIMEDOUT), "{source}");
        }
        other => panic!("block status with the OSD down: {other:?}"),
    }
    let early_failed = done
        .iter()
        .filter(|c| c.user_data < 1000 && c.result.is_err())
        .count();
    eprintln!("{early_failed} of {submitted} ops submitted during the stop failed");
    assert_eq!(ch.in_flight(), 0);

    // The OSD comes back: I/O works again and the data written before is there.
    let out = c.script("start-osd");
    assert!(
        out.status.success(),
        "start-osd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut back = vec![0u8; 64 * 1024];
    let done = read_at(&mut *ch, &efd, 0, &mut back);
    assert_eq!(done.result, Ok(64 * 1024));
    assert!(back == keep, "data written before the stop reads back");
    assert_eq!(
        b.block_status(0, 4096).unwrap().state,
        backends::ExtentState::Mapped,
        "block status works again"
    );
    let mut more = vec![0x77u8; 4096];
    let done = write_at(&mut *ch, &efd, 8 << 20, true, &mut more);
    assert_eq!(done.result, Ok(4096));
    b.sync().unwrap();
    drop(bufs);
}
