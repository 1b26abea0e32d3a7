//! A sanitize operation in the background (SBC-4 4.11): once a SANITIZE has
//! begun, the operation no longer belongs to the command. Aborting the command
//! (ABORT TASK, ABORT TASK SET, CLEAR TASK SET), a LOGICAL UNIT or TARGET RESET,
//! or the loss of the I_T nexus that sent it, ends the command and leaves the
//! medium being sanitized: the LUN keeps answering NOT READY, SANITIZE IN
//! PROGRESS to every initiator until the last pass is done.
//!
//! So the operation runs on a thread of its own with its own backend channel,
//! not as a job of a worker: it must outlive the worker's command, and it may be
//! paced (`LunConfig::sanitize_rate`) so that sanitizing one LUN does not take all
//! of a backing store shared with others, which a worker could only do by
//! holding its thread. At most one runs per LUN (`SanitizeState::begin`). It holds
//! the LUN weakly: a LUN deleted while it runs stops it at the next chunk.
//!
//! What is not kept: the state of a sanitize that was under way when the process
//! stopped. SBC-4 wants it resumed after a power on; we come back idle.

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use backends::{BackendError, IoChannel, IoError, IoErrorKind, IoOp};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::plan::Plan;
use super::{SAN_FAILED, SAN_FAILED_AUSE, SAN_IDLE};
use crate::cmd::VecBuf;
use crate::exec::{IoBuf, Job, JobCtx, JobWaker, Scratch, Step};
use crate::lun::{Lun, LunRegistry};
use crate::nexus::Nexus;
use crate::sense::{asc, CmdError, Sense, SenseKey};

/// How long the runner sleeps at most at once while pacing, so that a deleted
/// LUN stops it soon.
const PACE_SLICE: Duration = Duration::from_millis(200);

/// How the operation ended, and who waits for it: the command that started it,
/// unless that command was aborted.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    inner: Mutex<OutcomeInner>,
}

#[derive(Debug, Default)]
struct OutcomeInner {
    result: Option<Result<(), CmdError>>,
    waiter: Option<JobWaker>,
}

impl Outcome {
    /// The result if the operation has ended; else `waker` is woken when it does.
    pub(crate) fn poll(&self, waker: Option<JobWaker>) -> Option<Result<(), CmdError>> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = g.result {
            return Some(r);
        }
        g.waiter = waker;
        None
    }

    fn finish(&self, r: Result<(), CmdError>) {
        let waiter = {
            let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            g.result = Some(r);
            g.waiter.take()
        };
        if let Some(w) = waiter {
            w.wake();
        }
    }
}

/// Everything a sanitize operation needs to run apart from its command.
pub(crate) struct Operation {
    pub(crate) plan: Plan,
    pub(crate) lun: Weak<Lun>,
    /// The nexus and registry the plan's steps see (a sanitize plan only writes
    /// patterns, zeroes and flushes; it reads neither).
    pub(crate) nexus: Arc<Nexus>,
    pub(crate) registry: Arc<LunRegistry>,
    /// AUSE of the command: whether EXIT FAILURE MODE may end a failure.
    pub(crate) ause: bool,
    /// Bytes of medium per second at most; `None`: as fast as the backend goes.
    pub(crate) rate: Option<u64>,
    pub(crate) outcome: Arc<Outcome>,
}

/// Why the runner thread could not be started.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SpawnError {
    #[error("sanitize thread: {0}")]
    Thread(std::io::Error),
}

impl Operation {
    /// Starts the operation on its own thread. The LUN's sanitize state must
    /// already be claimed (`SanitizeState::begin`); the runner releases it.
    pub(crate) fn spawn(self) -> Result<(), SpawnError> {
        std::thread::Builder::new()
            .name("sanitize".into())
            .spawn(move || self.run())
            .map(|_| ())
            .map_err(SpawnError::Thread)
    }

    fn failed_state(&self) -> u8 {
        if self.ause {
            SAN_FAILED_AUSE
        } else {
            SAN_FAILED
        }
    }

    fn run(mut self) {
        let internal = || {
            CmdError::from(Sense::new(
                SenseKey::HardwareError,
                asc::INTERNAL_TARGET_FAILURE,
            ))
        };
        let channel = EventFd::new(EFD_NONBLOCK).ok().and_then(|notify| {
            let lun = self.lun.upgrade()?;
            let ch = lun.backend.open_channel(&notify).ok()?;
            Some((notify, ch))
        });
        let Some((notify, mut ch)) = channel else {
            // Nothing was written: the LUN is as it was.
            if let Some(lun) = self.lun.upgrade() {
                lun.sanitize.set(SAN_IDLE);
            }
            self.outcome.finish(Err(internal()));
            return;
        };
        let mut scratch = Scratch::default();
        let mut data = VecBuf(Vec::new());
        let mut last: Option<Result<usize, IoError>> = None;
        let started = Instant::now();
        let mut covered: u64 = 0;
        loop {
            let Some(lun) = self.lun.upgrade() else {
                // The LUN was deleted: nobody is left to tell but the command.
                self.outcome.finish(Err(internal()));
                return;
            };
            let step = {
                let mut ctx = JobCtx {
                    lun: &lun,
                    nexus: &self.nexus,
                    data: &mut data,
                    scratch: &mut scratch,
                    registry: &self.registry,
                    waker: None,
                };
                self.plan.step(&mut ctx, last.take())
            };
            lun.sanitize
                .progress
                .store(self.plan.progress(), Ordering::Relaxed);
            let (op, buf) = match step {
                Step::Done(r) => {
                    let state = if r.is_ok() {
                        SAN_IDLE
                    } else {
                        self.failed_state()
                    };
                    lun.sanitize.set(state);
                    self.outcome.finish(r.map(|_| ()));
                    return;
                }
                Step::Park => {
                    lun.sanitize.set(self.failed_state());
                    self.outcome.finish(Err(internal()));
                    return;
                }
                Step::Io { op, buf, .. } => (op, buf),
            };
            drop(lun);
            let mut iovs = Vec::with_capacity(1);
            if let IoBuf::Scratch { offset, len } = buf {
                let end = offset.saturating_add(len).min(scratch.len());
                let start = offset.min(end);
                if end > start {
                    iovs.push(libc::iovec {
                        iov_base: scratch[start..end].as_mut_ptr().cast(),
                        iov_len: end - start,
                    });
                }
            }
            // SAFETY: the iovecs point into `scratch`, which this thread owns and
            // neither moves nor touches until `submit_and_wait` has reaped the
            // operation's completion (it returns only then).
            let result = unsafe { submit_and_wait(ch.as_mut(), &notify, op, &iovs) };
            covered = covered.saturating_add(match op {
                IoOp::Write { .. } => iovs.iter().map(|v| v.iov_len as u64).sum(),
                IoOp::Discard { len, .. } | IoOp::WriteZeroes { len, .. } => len,
                IoOp::Read { .. } | IoOp::Flush => 0,
            });
            last = Some(result);
            if let Some(rate) = self.rate {
                if !self.pace(started + pace_due(covered, rate)) {
                    self.outcome.finish(Err(internal()));
                    return;
                }
            }
        }
    }

    /// Sleeps until `until`; false if the LUN went away meanwhile.
    fn pace(&self, until: Instant) -> bool {
        loop {
            let now = Instant::now();
            if now >= until {
                return true;
            }
            if self.lun.strong_count() == 0 {
                return false;
            }
            std::thread::sleep((until - now).min(PACE_SLICE));
        }
    }
}

/// When `covered` bytes may be done at `rate` bytes per second, from the start.
pub(crate) fn pace_due(covered: u64, rate: u64) -> Duration {
    let nanos = u128::from(covered) * 1_000_000_000 / u128::from(rate.max(1));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Submits one operation on a channel that has nothing else in flight and waits
/// for its completion.
///
/// # Safety
/// As [`IoChannel::submit`]: the iovecs must stay valid and untouched until this
/// returns (it returns only after the completion was reaped).
unsafe fn submit_and_wait(
    ch: &mut dyn IoChannel,
    notify: &EventFd,
    op: IoOp,
    iovs: &[libc::iovec],
) -> Result<usize, IoError> {
    let fail = || IoError::new(IoErrorKind::Other, libc::EIO, None);
    // A channel with nothing in flight has room; a backend that says otherwise
    // gets a few tries, then the operation fails.
    let mut tries = 0u32;
    loop {
        // SAFETY: the caller keeps the iovecs valid until the completion is reaped.
        match unsafe { ch.submit(op, iovs, 1) } {
            Ok(()) => break,
            Err(BackendError::QueueFull(_)) if tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => return Err(fail()),
        }
    }
    let mut out = Vec::with_capacity(1);
    loop {
        ch.reap(&mut out);
        if let Some(c) = out.pop() {
            return c.result;
        }
        let mut pfd = libc::pollfd {
            fd: notify.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is a valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, 100) };
        let _ = notify.read();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_spreads_the_bytes_over_time() {
        assert_eq!(pace_due(0, 1 << 20), Duration::ZERO);
        assert_eq!(pace_due(1 << 20, 1 << 20), Duration::from_secs(1));
        assert_eq!(pace_due(3 << 19, 1 << 20), Duration::from_millis(1500));
        // A zero rate is treated as one byte per second, not a division by zero.
        assert_eq!(pace_due(5, 0), Duration::from_secs(5));
        assert_eq!(pace_due(u64::MAX, 1), Duration::from_nanos(u64::MAX));
    }
}
