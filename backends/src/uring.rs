//! The io_uring engine: one ring per channel, with the thread's notify eventfd
//! registered so that every completion wakes the thread's epoll. Operations are the
//! state machines of [`crate::op`]; each has at most one SQE in the kernel at a time
//! and is resubmitted from `reap` until it is done. What io_uring cannot do (block
//! ioctls, opcodes the running kernel lacks) goes to the backend's thread pool.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use io_uring::{opcode, register::Probe, squeue, types, IoUring};
use vmm_sys_util::eventfd::EventFd;

use crate::op::{OpState, Outcome, Start, Step, Target};
use crate::threadpool::{Lane, PoolCell};
use crate::{BackendError, Completion, IoChannel, IoError, IoErrorKind, IoOp};

/// `user_data` of the SQEs of cancel requests, whose CQEs are ignored.
const CANCEL_TAG: u64 = u64::MAX;

/// Default ring size; also the most operations one channel keeps in flight.
pub(crate) const DEFAULT_DEPTH: u32 = 128;

struct Slot {
    gen: u32,
    op: Option<OpState>,
}

/// A channel of the io_uring engine.
pub(crate) struct UringChannel {
    ring: IoUring,
    target: Arc<Target>,
    /// Registered with the ring; kept open for as long as the ring lives.
    notify: EventFd,
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// Caller's `user_data` -> slot, for cancel.
    by_user: HashMap<u64, usize>,
    ready: Vec<Completion>,
    depth: usize,
    /// Operations in the ring (not counting the pool's).
    live: usize,
    fallocate: bool,
    pool_cell: Arc<PoolCell>,
    lane: Option<Lane>,
    in_flight: usize,
    /// Try buffered reads in the page cache first (see [`read_cached`]);
    /// off for `O_DIRECT` and once the file system refuses `RWF_NOWAIT`.
    nowait: bool,
}

/// What a non-blocking read from the page cache found.
enum Cached {
    /// Every byte was cached and is read.
    All(usize),
    /// Some or all of it needs the disk (or the read was cut short): read it
    /// through the ring as usual.
    Miss,
    /// The file system does not do `RWF_NOWAIT`.
    Unsupported,
}

/// Reads `iovecs` at `offset` only if the page cache has all of it
/// (`preadv2(RWF_NOWAIT)`), so a cached read costs one syscall and no kernel
/// worker, as a plain `pread` would, while uncached reads still go through
/// io_uring without blocking the thread.
///
/// # Safety
/// Every iovec must point to memory writable for its length during the call.
unsafe fn read_cached(fd: i32, iovecs: &[libc::iovec], offset: u64) -> Cached {
    let total: usize = iovecs.iter().map(|v| v.iov_len).sum();
    let (Ok(cnt), Ok(off)) = (
        libc::c_int::try_from(iovecs.len()),
        libc::off_t::try_from(offset),
    ) else {
        return Cached::Miss;
    };
    if iovecs.len() > 1024 || total == 0 {
        return Cached::Miss;
    }
    // SAFETY: the caller guarantees the iovecs; `cnt` is their number.
    let n = unsafe { libc::preadv2(fd, iovecs.as_ptr(), cnt, off, libc::RWF_NOWAIT) };
    match usize::try_from(n) {
        Ok(n) if n == total => Cached::All(n),
        Ok(_) => Cached::Miss,
        Err(_) => match io::Error::last_os_error().raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) | Some(libc::ENOSYS) => Cached::Unsupported,
            _ => Cached::Miss,
        },
    }
}

fn uring_err(e: io::Error) -> BackendError {
    BackendError::Uring(e)
}

impl UringChannel {
    pub fn new(
        target: Arc<Target>,
        pool_cell: Arc<PoolCell>,
        notify: &EventFd,
        depth: u32,
    ) -> Result<Self, BackendError> {
        let depth = depth.clamp(1, 4096);
        #[cfg(test)]
        if tests::NO_URING.with(std::cell::Cell::get) {
            return Err(uring_err(io::Error::from_raw_os_error(libc::ENOSYS)));
        }
        let ring = IoUring::builder()
            .setup_cqsize(depth.saturating_mul(2))
            .build(depth)
            .map_err(uring_err)?;
        let notify = notify.try_clone().map_err(|e| BackendError::Io {
            op: "eventfd clone",
            offset: 0,
            source: e,
        })?;
        ring.submitter()
            .register_eventfd(notify.as_raw_fd())
            .map_err(uring_err)?;
        let mut probe = Probe::new();
        // Kernels before 5.6 have no probe and no IORING_OP_FALLOCATE either.
        let fallocate = ring.submitter().register_probe(&mut probe).is_ok()
            && probe.is_supported(opcode::Fallocate::CODE);
        let target_nowait = target.nowait_reads;
        Ok(UringChannel {
            ring,
            target,
            notify,
            slots: Vec::new(),
            free: Vec::new(),
            by_user: HashMap::new(),
            ready: Vec::new(),
            depth: depth as usize,
            live: 0,
            fallocate,
            pool_cell,
            lane: None,
            in_flight: 0,
            nowait: target_nowait,
        })
    }

    fn key(idx: usize, gen: u32) -> u64 {
        (u64::from(gen) << 32) | idx as u64
    }

    fn entry(&self, step: &Step, key: u64) -> Option<squeue::Entry> {
        let fd = types::Fd(self.target.raw_fd());
        let e = match *step {
            Step::Readv { offset, iov, cnt } => {
                opcode::Readv::new(fd, iov, cnt).offset(offset).build()
            }
            Step::Writev {
                offset,
                iov,
                cnt,
                dsync,
            } => opcode::Writev::new(fd, iov, cnt)
                .offset(offset)
                .rw_flags(if dsync { libc::RWF_DSYNC } else { 0 })
                .build(),
            Step::Fdatasync => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            Step::Fallocate { offset, len, mode } => {
                if !self.fallocate {
                    return None;
                }
                opcode::Fallocate::new(fd, len)
                    .offset(offset)
                    .mode(mode)
                    .build()
            }
            Step::WriteZeroBuf { offset, len } => {
                let buf = crate::op::zero_buf();
                if buf.is_null() {
                    return None;
                }
                opcode::Write::new(fd, buf, len).offset(offset).build()
            }
            Step::BlkIoctl { .. } => return None,
        };
        Some(e.user_data(key))
    }

    fn lane(&mut self) -> Result<&Lane, BackendError> {
        if self.lane.is_none() {
            let pool = self.pool_cell.get()?;
            let notify = self.notify.try_clone().map_err(|e| BackendError::Io {
                op: "eventfd clone",
                offset: 0,
                source: e,
            })?;
            self.lane = Some(Lane::new(pool, notify));
        }
        // Set just above.
        self.lane.as_ref().ok_or(BackendError::Unsupported {
            what: "thread pool",
        })
    }

    /// Pushes one SQE, making room by submitting if the queue is full.
    fn push(&mut self, e: &squeue::Entry) -> bool {
        for _ in 0..2 {
            // SAFETY: every buffer an entry points at (iovec arrays owned by an
            // `OpState` in `slots`, the submitter's memory, the static zero buffer)
            // stays valid until its CQE is reaped: slots are freed only on their CQE,
            // and `Drop` waits for all of them.
            if unsafe { self.ring.submission().push(e) }.is_ok() {
                return true;
            }
            self.flush();
        }
        false
    }

    /// Tells the kernel about queued SQEs. Never waits for completions.
    fn flush(&mut self) {
        for _ in 0..4 {
            if self.ring.submission().is_empty() {
                return;
            }
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(_) => {
                    // EBUSY/EAGAIN: completions must be reaped first. Wake the thread
                    // so that `reap` drains them and flushes again.
                    let _ = self.notify.write(1);
                    return;
                }
            }
        }
    }

    /// Sends an operation on its way: the ring if the step fits, else the pool.
    /// Returns the completion if it could go nowhere.
    fn dispatch(&mut self, idx: usize, state: OpState) -> Option<Completion> {
        let step = state.step();
        let key = Self::key(idx, self.slots[idx].gen);
        if let Some(e) = self.entry(&step, key) {
            if self.push(&e) {
                self.slots[idx].op = Some(state);
                return None;
            }
            return Some(self.release(idx, state.user_data, queue_full(&state)));
        }
        let user_data = state.user_data;
        let target = self.target.clone();
        match self.lane() {
            Ok(lane) => {
                lane.submit(&target, state);
                self.release(idx, user_data, None);
                None
            }
            Err(_) => Some(self.release(idx, user_data, queue_full(&state))),
        }
    }

    /// Frees slot `idx` (its op left the ring); builds the completion if given one.
    fn release(&mut self, idx: usize, user_data: u64, err: Option<IoError>) -> Completion {
        let slot = &mut self.slots[idx];
        slot.op = None;
        slot.gen = slot.gen.wrapping_add(1);
        self.free.push(idx);
        self.live = self.live.saturating_sub(1);
        if self.by_user.get(&user_data) == Some(&idx) {
            self.by_user.remove(&user_data);
        }
        Completion {
            user_data,
            result: err.map_or(Ok(0), Err),
        }
    }

    /// Handles every CQE there is, resubmitting unfinished operations.
    fn drain_cq(&mut self, resubmit: bool) {
        let mut cqes: Vec<(u64, i32)> = Vec::new();
        for _ in 0..8 {
            cqes.clear();
            cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
            if cqes.is_empty() {
                break;
            }
            for &(key, res) in &cqes {
                if key == CANCEL_TAG {
                    continue;
                }
                let idx = usize::try_from(key & 0xffff_ffff).unwrap_or(usize::MAX);
                let gen = u32::try_from(key >> 32).unwrap_or(u32::MAX);
                let Some(slot) = self.slots.get_mut(idx) else {
                    continue;
                };
                if slot.gen != gen {
                    continue;
                }
                let Some(mut state) = slot.op.take() else {
                    continue;
                };
                match state.on_result(i64::from(res)) {
                    Outcome::Again if resubmit => {
                        if let Some(c) = self.dispatch(idx, state) {
                            self.ready.push(c);
                        }
                    }
                    Outcome::Again => {
                        let c = self.release(idx, state.user_data, Some(canceled(&state)));
                        self.ready.push(c);
                    }
                    Outcome::Done(result) => {
                        let mut c = self.release(idx, state.user_data, None);
                        c.result = result;
                        self.ready.push(c);
                    }
                }
            }
            self.flush();
        }
    }
}

fn queue_full(state: &OpState) -> Option<IoError> {
    Some(IoError::new(
        IoErrorKind::Other,
        libc::EBUSY,
        state.offset(),
    ))
}

fn canceled(state: &OpState) -> IoError {
    IoError::new(IoErrorKind::Canceled, libc::ECANCELED, state.offset())
}

impl IoChannel for UringChannel {
    unsafe fn submit(
        &mut self,
        op: IoOp,
        iovecs: &[libc::iovec],
        user_data: u64,
    ) -> Result<(), BackendError> {
        // A read inside the file is first tried against the page cache, before
        // `OpState::start` copies the iovecs for the ring: a hit needs no copy.
        // Anything else (out of range, empty) gets its answer from `start`.
        let cached_read = match op {
            IoOp::Read { offset } if self.nowait => iovecs
                .iter()
                .try_fold(0u64, |acc, v| {
                    acc.checked_add(u64::try_from(v.iov_len).ok()?)
                })
                .and_then(|total| offset.checked_add(total))
                .is_some_and(|end| end <= self.target.size())
                .then_some(offset),
            _ => None,
        };
        if let Some(offset) = cached_read {
            // SAFETY: the caller promises the iovecs stay valid until the
            // completion; here they are used only during the call.
            match unsafe { read_cached(self.target.raw_fd(), iovecs, offset) } {
                Cached::All(n) => {
                    // A page-cache hit completes here: no SQE, no kernel worker,
                    // one syscall. Like the inline backends' completions it is not
                    // signalled: the owner reaps after each batch of submissions.
                    self.in_flight += 1;
                    self.ready.push(Completion {
                        user_data,
                        result: Ok(n),
                    });
                    return Ok(());
                }
                Cached::Unsupported => self.nowait = false,
                Cached::Miss => {}
            }
        }
        let state = match OpState::start(&self.target, op, iovecs, user_data) {
            Start::Done(result) => {
                self.ready.push(Completion { user_data, result });
                self.in_flight += 1;
                let _ = self.notify.write(1);
                return Ok(());
            }
            Start::Run(state) => state,
        };
        if self.live >= self.depth {
            return Err(BackendError::QueueFull(self.in_flight));
        }
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot { gen: 0, op: None });
                self.slots.len() - 1
            }
        };
        self.live += 1;
        self.by_user.insert(user_data, idx);
        self.in_flight += 1;
        if let Some(c) = self.dispatch(idx, state) {
            self.ready.push(c);
            let _ = self.notify.write(1);
        } else if self.live == 1 {
            // Nothing else in flight (queue depth 1): no batch to gather.
            self.flush();
        } else if self.ring.submission().len() == 1 {
            // The first entry of a batch: the kernel gets it at the next `reap`
            // (the owning thread's poll, which this wakes) together with every entry
            // queued until then — one io_uring_enter per batch, not per operation.
            let _ = self.notify.write(1);
        }
        Ok(())
    }

    fn cancel(&mut self, user_data: u64) -> bool {
        if let Some(&idx) = self.by_user.get(&user_data) {
            let key = Self::key(idx, self.slots[idx].gen);
            if let Some(state) = self.slots[idx].op.as_mut() {
                state.cancel = true;
                let e = opcode::AsyncCancel::new(key).build().user_data(CANCEL_TAG);
                if self.push(&e) {
                    self.flush();
                }
                return true;
            }
        }
        if let Some(c) = self.lane.as_ref().and_then(|l| l.cancel(user_data)) {
            self.ready.push(c);
            let _ = self.notify.write(1);
            return true;
        }
        false
    }

    fn reap(&mut self, out: &mut Vec<Completion>) {
        // What completes inside this submit (page-cache hits) is drained just below:
        // no eventfd wake-up for it, which would only bring the thread back to find
        // nothing. Completions posted after re-enabling signal as usual; those
        // posted before are seen by the drain, which runs after.
        self.ring.completion().disable_eventfd();
        self.flush();
        self.ring.completion().enable_eventfd();
        self.drain_cq(true);
        let n = self.ready.len();
        out.append(&mut self.ready);
        let m = self.lane.as_ref().map_or(0, |l| l.drain(out));
        self.in_flight = self.in_flight.saturating_sub(n + m);
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }
}

impl Drop for UringChannel {
    fn drop(&mut self) {
        // The kernel may still read or write the submitter's memory for every op in
        // the ring, and that memory is only promised until the channel is dropped:
        // cancel them all and wait for their CQEs before the ring goes away.
        let keys: Vec<u64> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.op.is_some())
            .map(|(i, s)| Self::key(i, s.gen))
            .collect();
        for key in keys {
            let e = opcode::AsyncCancel::new(key).build().user_data(CANCEL_TAG);
            let _ = self.push(&e);
        }
        let mut errors = 0;
        while self.slots.iter().any(|s| s.op.is_some()) && errors < 1000 {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(_) => errors += 1,
            }
            self.drain_cq(false);
        }
        // `lane` drops after this and waits for the pool's jobs of this channel.
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::file::tests::run;

    thread_local! {
        /// Makes ring setup fail on this (test) thread, as on a kernel without io_uring.
        pub(crate) static NO_URING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    use crate::op::TargetKind;
    use std::os::fd::OwnedFd;
    use std::sync::atomic::AtomicU64;

    fn target(file: std::fs::File, size: u64) -> Arc<Target> {
        Arc::new(Target {
            nowait_reads: false,
            fd: OwnedFd::from(file),
            kind: TargetKind::File,
            read_only: false,
            size: AtomicU64::new(size),
        })
    }

    fn channel(t: &Arc<Target>, e: &EventFd) -> Option<UringChannel> {
        match UringChannel::new(t.clone(), Arc::new(PoolCell::new(1, "t")), e, 8) {
            Ok(ch) => Some(ch),
            Err(err) => {
                println!("skipping: no io_uring here ({err})");
                None
            }
        }
    }

    #[test]
    fn short_read_at_eof_resubmits_then_zero_fills() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(65536).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[9u8; 40000], 0).unwrap();
        // The store thinks it is 64 KiB; the file shrinks to 40000 bytes behind it.
        let t = target(f.try_clone().unwrap(), 65536);
        f.set_len(40000).unwrap();
        let e = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let Some(mut ch) = channel(&t, &e) else {
            return;
        };
        let mut a = vec![0xffu8; 30000];
        let mut b = vec![0xffu8; 35536];
        let iov = [
            libc::iovec {
                iov_base: a.as_mut_ptr().cast(),
                iov_len: a.len(),
            },
            libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            },
        ];
        let c = run(&mut ch, &e, IoOp::Read { offset: 0 }, &iov, 42);
        assert_eq!(c.result, Ok(65536));
        assert!(a.iter().all(|&x| x == 9));
        assert!(b[..10000].iter().all(|&x| x == 9));
        assert!(b[10000..].iter().all(|&x| x == 0));
    }

    #[test]
    fn completions_signal_the_eventfd_and_queue_depth_is_enforced() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(1 << 20).unwrap();
        let t = target(f, 1 << 20);
        let e = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let Some(mut ch) = channel(&t, &e) else {
            return;
        };
        let mut bufs: Vec<Vec<u8>> = (0..9).map(|_| vec![0u8; 4096]).collect();
        let mut full = false;
        for (i, buf) in (0u64..).zip(bufs.iter_mut()) {
            let iov = [libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: 4096,
            }];
            // SAFETY: `bufs` outlives the channel.
            match unsafe { ch.submit(IoOp::Read { offset: i * 4096 }, &iov, i) } {
                Ok(()) => {}
                Err(BackendError::QueueFull(_)) => full = true,
                Err(err) => panic!("{err}"),
            }
        }
        assert!(full, "the ninth op should not fit in a ring of 8");
        // The ring wrote the eventfd: poll sees it readable.
        let mut pfd = libc::pollfd {
            fd: e.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, 5000) };
        assert_eq!(n, 1);
        let mut done = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while done < 8 {
            assert!(std::time::Instant::now() < deadline);
            let mut out = Vec::new();
            ch.reap(&mut out);
            done += out.iter().filter(|c| c.result == Ok(4096)).count();
        }
        assert_eq!(ch.in_flight(), 0);
    }

    /// A buffered read the page cache holds completes inside `submit`; one it
    /// does not hold goes through the ring; both read the right bytes.
    #[test]
    fn cached_reads_complete_at_once_and_misses_use_the_ring() {
        let f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..65536u32).map(|i| (i % 253) as u8).collect();
        std::os::unix::fs::FileExt::write_all_at(&f, &data, 0).unwrap();
        let t = Arc::new(Target {
            nowait_reads: true,
            fd: OwnedFd::from(f.try_clone().unwrap()),
            kind: TargetKind::File,
            read_only: false,
            size: AtomicU64::new(65536),
        });
        let e = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let Some(mut ch) = channel(&t, &e) else {
            return;
        };
        let mut buf = vec![0u8; 8192];
        let iov = [libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }];
        // SAFETY: `buf` outlives the completion, reaped below.
        unsafe { ch.submit(IoOp::Read { offset: 4096 }, &iov, 1) }.unwrap();
        if ch.nowait {
            assert_eq!(ch.live, 0, "a cached read takes no ring slot");
        }
        let c = crate::file::tests::wait_for(&mut ch, &e, 1);
        assert_eq!(c.result, Ok(8192));
        assert!(buf == data[4096..12288]);
        // Out of the cache: the read still arrives, through the ring.
        f.sync_all().unwrap();
        // SAFETY: posix_fadvise takes no pointers.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        buf.fill(0);
        let c = run(&mut ch, &e, IoOp::Read { offset: 16384 }, &iov, 2);
        assert_eq!(c.result, Ok(8192));
        assert!(buf == data[16384..24576]);
        assert_eq!(ch.in_flight(), 0);
    }
}
