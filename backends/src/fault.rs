//! Fault injection around any backend, for tests of the engine and the transports.
//! A [`FaultBackend`] wraps an `Arc<dyn Backend>`; its channels consult a shared
//! [`FaultControl`] on every submit. Rules match ops by kind, byte range and count, and
//! either fail them with a chosen error, delay them (a timer thread wakes the channel's
//! eventfd when they are due; nothing sleeps on the submitting thread), or hold them
//! until [`FaultControl::release`]. Delayed and held ops stay in the channel, not in
//! the inner backend, so canceling them means they never reach the store. Everything
//! that does reach the inner backend completes with the caller's own `user_data`.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use crate::{
    Backend, BackendError, Capabilities, Completion, Extent, IoChannel, IoError, IoErrorKind, IoOp,
};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The kind of an [`IoOp`], for matching.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Read,
    Write,
    Flush,
    Discard,
    WriteZeroes,
}

impl OpKind {
    pub fn of(op: &IoOp) -> Self {
        match op {
            IoOp::Read { .. } => OpKind::Read,
            IoOp::Write { .. } => OpKind::Write,
            IoOp::Flush => OpKind::Flush,
            IoOp::Discard { .. } => OpKind::Discard,
            IoOp::WriteZeroes { .. } => OpKind::WriteZeroes,
        }
    }
}

/// Which ops a rule applies to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpMatch {
    /// Kinds that match; empty matches every kind.
    pub kinds: Vec<OpKind>,
    /// `(offset, len)`: only ops whose bytes overlap this range match (a flush, which
    /// has no range, never does). `None` matches regardless of range.
    pub range: Option<(u64, u64)>,
}

impl OpMatch {
    /// Every op.
    pub fn any() -> Self {
        OpMatch::default()
    }

    /// Ops of one kind.
    pub fn kind(kind: OpKind) -> Self {
        OpMatch {
            kinds: vec![kind],
            range: None,
        }
    }

    /// Ops of any of these kinds.
    pub fn kinds(kinds: &[OpKind]) -> Self {
        OpMatch {
            kinds: kinds.to_vec(),
            range: None,
        }
    }

    /// Restricts to ops overlapping `[offset, offset + len)`.
    pub fn overlapping(mut self, offset: u64, len: u64) -> Self {
        self.range = Some((offset, len));
        self
    }

    /// Whether `op`, moving `bytes` bytes (reads and writes), matches.
    pub fn matches(&self, op: &IoOp, bytes: u64) -> bool {
        if !self.kinds.is_empty() && !self.kinds.contains(&OpKind::of(op)) {
            return false;
        }
        let Some((roff, rlen)) = self.range else {
            return true;
        };
        let (off, len) = match *op {
            IoOp::Read { offset } | IoOp::Write { offset, .. } => (offset, bytes),
            IoOp::Discard { offset, len } | IoOp::WriteZeroes { offset, len } => (offset, len),
            IoOp::Flush => return false,
        };
        let end = off.saturating_add(len);
        let rend = roff.saturating_add(rlen);
        len > 0 && rlen > 0 && off < rend && roff < end
    }
}

/// What happens to a matching op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultAction {
    /// Reaches the inner backend this much later.
    Delay(Duration),
    /// Waits in the channel until [`FaultControl::release`].
    Hold,
    /// Completes at once with this error, never reaching the inner backend.
    Fail { kind: IoErrorKind, errno: i32 },
}

/// A matcher, an action, and how many ops it applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultRule {
    pub matcher: OpMatch,
    pub action: FaultAction,
    /// Applies to this many matching ops, then goes away; `None`: forever.
    pub count: Option<u64>,
}

impl FaultRule {
    pub fn new(matcher: OpMatch, action: FaultAction) -> Self {
        FaultRule {
            matcher,
            action,
            count: None,
        }
    }

    /// Applies to the next `n` matching ops only.
    pub fn times(mut self, n: u64) -> Self {
        self.count = Some(n);
        self
    }
}

/// Names a rule for [`FaultControl::remove`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RuleId(u64);

/// What a channel keeps so others can wake it.
struct ChanShared {
    notify: EventFd,
}

impl ChanShared {
    fn wake(&self) {
        let _ = self.notify.write(1);
    }
}

struct State {
    rules: Vec<(RuleId, FaultRule)>,
    next_id: u64,
    /// Ops held and not yet released.
    held: usize,
    /// Bumped by `release`: ops held in an earlier epoch are free to go.
    epoch: u64,
    /// Ops a rule applied to, all rules together.
    hits: u64,
    channels: Vec<Weak<ChanShared>>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    timer: Timer,
}

/// The knobs of a [`FaultBackend`], shared: clone it to any thread.
#[derive(Clone)]
pub struct FaultControl(Arc<Shared>);

impl Default for FaultControl {
    fn default() -> Self {
        Self::new()
    }
}

/// What `decide` tells a channel to do with an op.
enum Decision {
    Pass,
    Fail(IoError),
    Hold(u64),
    Delay(Duration),
}

impl FaultControl {
    pub fn new() -> Self {
        FaultControl(Arc::new(Shared {
            state: Mutex::new(State {
                rules: Vec::new(),
                next_id: 1,
                held: 0,
                epoch: 0,
                hits: 0,
                channels: Vec::new(),
            }),
            changed: Condvar::new(),
            timer: Timer::new(),
        }))
    }

    /// Adds a rule after the existing ones (the first matching rule wins).
    pub fn add(&self, rule: FaultRule) -> RuleId {
        let mut st = lock(&self.0.state);
        let id = RuleId(st.next_id);
        st.next_id += 1;
        st.rules.push((id, rule));
        id
    }

    /// Removes a rule; ops it already holds or delays stay so.
    pub fn remove(&self, id: RuleId) -> bool {
        let mut st = lock(&self.0.state);
        let before = st.rules.len();
        st.rules.retain(|(i, _)| *i != id);
        st.rules.len() != before
    }

    /// Removes every rule.
    pub fn clear(&self) {
        lock(&self.0.state).rules.clear();
    }

    /// Lets every op held so far go on to the inner backend. Each channel submits its
    /// released ops the next time its thread reaps; this wakes those threads.
    pub fn release(&self) {
        let mut st = lock(&self.0.state);
        st.epoch += 1;
        st.held = 0;
        st.channels.retain(|w| w.strong_count() > 0);
        let chans: Vec<Arc<ChanShared>> = st.channels.iter().filter_map(Weak::upgrade).collect();
        drop(st);
        self.0.changed.notify_all();
        for c in chans {
            c.wake();
        }
    }

    /// Ops held right now.
    pub fn held(&self) -> usize {
        lock(&self.0.state).held
    }

    /// Ops any rule has applied to so far.
    pub fn hits(&self) -> u64 {
        lock(&self.0.state).hits
    }

    /// Waits until at least `n` ops are held; false on timeout.
    pub fn wait_held(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = lock(&self.0.state);
        while st.held < n {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = self
                .0
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    fn register(&self, chan: &Arc<ChanShared>) {
        let mut st = lock(&self.0.state);
        st.channels.retain(|w| w.strong_count() > 0);
        st.channels.push(Arc::downgrade(chan));
    }

    fn epoch(&self) -> u64 {
        lock(&self.0.state).epoch
    }

    /// A held op of `epoch` left without being released (canceled, channel dropped).
    fn unhold(&self, epoch: u64) {
        let mut st = lock(&self.0.state);
        if epoch == st.epoch {
            st.held = st.held.saturating_sub(1);
        }
        drop(st);
        self.0.changed.notify_all();
    }

    fn decide(&self, op: &IoOp, bytes: u64, offset: Option<u64>) -> Decision {
        let mut st = lock(&self.0.state);
        let Some(i) = st
            .rules
            .iter()
            .position(|(_, r)| r.count != Some(0) && r.matcher.matches(op, bytes))
        else {
            return Decision::Pass;
        };
        st.hits += 1;
        let rule = &mut st.rules[i].1;
        let action = rule.action;
        if let Some(n) = rule.count.as_mut() {
            *n -= 1;
            if *n == 0 {
                st.rules.remove(i);
            }
        }
        match action {
            FaultAction::Fail { kind, errno } => Decision::Fail(IoError::new(kind, errno, offset)),
            FaultAction::Delay(d) => Decision::Delay(d),
            FaultAction::Hold => {
                st.held += 1;
                let epoch = st.epoch;
                drop(st);
                self.0.changed.notify_all();
                Decision::Hold(epoch)
            }
        }
    }
}

/// One timer entry: wake `chan` at `due`.
struct TimerEntry {
    due: Instant,
    seq: u64,
    chan: Weak<ChanShared>,
}

impl PartialEq for TimerEntry {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for TimerEntry {}
impl PartialOrd for TimerEntry {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for TimerEntry {
    /// Reversed: the earliest entry is the greatest, on top of the max-heap.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

struct TimerQueue {
    heap: BinaryHeap<TimerEntry>,
    seq: u64,
    shutdown: bool,
}

struct TimerInner {
    q: Mutex<TimerQueue>,
    cv: Condvar,
}

/// One thread, started on first use, that signals channels' eventfds when delayed ops
/// are due.
struct Timer {
    inner: Arc<TimerInner>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Timer {
    fn new() -> Self {
        Timer {
            inner: Arc::new(TimerInner {
                q: Mutex::new(TimerQueue {
                    heap: BinaryHeap::new(),
                    seq: 0,
                    shutdown: false,
                }),
                cv: Condvar::new(),
            }),
            thread: Mutex::new(None),
        }
    }

    /// Wakes `chan` at `due`. Fails only if the timer thread cannot be started.
    fn schedule(&self, due: Instant, chan: Weak<ChanShared>) -> Result<(), BackendError> {
        {
            let mut t = lock(&self.thread);
            if t.is_none() {
                let inner = self.inner.clone();
                let h = std::thread::Builder::new()
                    .name("fault-timer".into())
                    .spawn(move || timer_loop(&inner))
                    .map_err(|e| BackendError::Io {
                        op: "spawn timer thread",
                        offset: 0,
                        source: e,
                    })?;
                *t = Some(h);
            }
        }
        let mut q = lock(&self.inner.q);
        let seq = q.seq;
        q.seq += 1;
        q.heap.push(TimerEntry { due, seq, chan });
        drop(q);
        self.inner.cv.notify_one();
        Ok(())
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        lock(&self.inner.q).shutdown = true;
        self.inner.cv.notify_all();
        if let Some(h) = lock(&self.thread).take() {
            let _ = h.join();
        }
    }
}

fn timer_loop(inner: &TimerInner) {
    let mut q = lock(&inner.q);
    loop {
        if q.shutdown {
            return;
        }
        let now = Instant::now();
        while q.heap.peek().is_some_and(|e| e.due <= now) {
            if let Some(c) = q.heap.pop().and_then(|e| e.chan.upgrade()) {
                c.wake();
            }
        }
        q = match q.heap.peek().map(|e| e.due - now) {
            Some(wait) => {
                inner
                    .cv
                    .wait_timeout(q, wait)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
            None => inner.cv.wait(q).unwrap_or_else(PoisonError::into_inner),
        };
    }
}

/// A backend whose I/O goes through a [`FaultControl`] before reaching `inner`.
pub struct FaultBackend {
    inner: Arc<dyn Backend>,
    ctl: FaultControl,
}

impl FaultBackend {
    pub fn new(inner: Arc<dyn Backend>) -> Self {
        Self::with_control(inner, FaultControl::new())
    }

    /// Wraps `inner` under an existing control (one control for several backends).
    pub fn with_control(inner: Arc<dyn Backend>, ctl: FaultControl) -> Self {
        FaultBackend { inner, ctl }
    }

    /// The control; clone it to wherever the faults are decided.
    pub fn control(&self) -> FaultControl {
        self.ctl.clone()
    }

    pub fn inner(&self) -> &Arc<dyn Backend> {
        &self.inner
    }
}

impl Backend for FaultBackend {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn size_cached(&self) -> u64 {
        self.inner.size_cached()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn open_channel(&self, notify: &EventFd) -> Result<Box<dyn IoChannel>, BackendError> {
        let inner = self.inner.open_channel(notify)?;
        let notify = notify.try_clone().map_err(|e| BackendError::Io {
            op: "eventfd clone",
            offset: 0,
            source: e,
        })?;
        let me = Arc::new(ChanShared { notify });
        self.ctl.register(&me);
        Ok(Box::new(FaultChannel {
            inner,
            ctl: self.ctl.clone(),
            me,
            pending: Vec::new(),
            ready: Vec::new(),
        }))
    }

    fn block_status(&self, offset: u64, len: u64) -> Result<Extent, BackendError> {
        self.inner.block_status(offset, len)
    }

    fn resize(&self, new_size: u64) -> Result<(), BackendError> {
        self.inner.resize(new_size)
    }

    fn describe(&self) -> String {
        format!("fault:{}", self.inner.describe())
    }

    fn sync(&self) -> Result<(), BackendError> {
        self.inner.sync()
    }
}

enum Wait {
    /// Held in this release epoch.
    Held(u64),
    Until(Instant),
}

/// An op kept back from the inner channel, with its own copy of the iovecs.
struct Pending {
    user_data: u64,
    op: IoOp,
    iov: Vec<libc::iovec>,
    wait: Wait,
}

struct FaultChannel {
    inner: Box<dyn IoChannel>,
    ctl: FaultControl,
    me: Arc<ChanShared>,
    pending: Vec<Pending>,
    ready: Vec<Completion>,
}

fn op_offset(op: &IoOp) -> Option<u64> {
    match *op {
        IoOp::Read { offset } | IoOp::Write { offset, .. } => Some(offset),
        IoOp::Discard { offset, .. } | IoOp::WriteZeroes { offset, .. } => Some(offset),
        IoOp::Flush => None,
    }
}

impl FaultChannel {
    /// Submits the pending ops that are released or due.
    fn kick(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let epoch = self.ctl.epoch();
        let now = Instant::now();
        let mut i = 0;
        while i < self.pending.len() {
            let go = match self.pending[i].wait {
                Wait::Held(e) => e < epoch,
                Wait::Until(t) => t <= now,
            };
            if !go {
                i += 1;
                continue;
            }
            let p = self.pending.remove(i);
            // SAFETY: `p.iov` is a copy of the iovecs given to our own `submit`, whose
            // caller keeps their memory valid until this op's completion is reaped or the
            // channel dropped; the inner channel is dropped with us, so the same promise
            // covers it.
            let r = unsafe { self.inner.submit(p.op, &p.iov, p.user_data) };
            if r.is_err() {
                let err = IoError::new(IoErrorKind::Other, libc::EBUSY, op_offset(&p.op));
                self.ready.push(Completion {
                    user_data: p.user_data,
                    result: Err(err),
                });
            }
        }
    }
}

impl IoChannel for FaultChannel {
    unsafe fn submit(
        &mut self,
        op: IoOp,
        iovecs: &[libc::iovec],
        user_data: u64,
    ) -> Result<(), BackendError> {
        let bytes = iovecs
            .iter()
            .fold(0u64, |a, v| a.saturating_add(v.iov_len as u64));
        let wait = match self.ctl.decide(&op, bytes, op_offset(&op)) {
            // SAFETY: our caller's promise about the iovecs is passed on unchanged.
            Decision::Pass => return unsafe { self.inner.submit(op, iovecs, user_data) },
            Decision::Fail(err) => {
                self.ready.push(Completion {
                    user_data,
                    result: Err(err),
                });
                self.me.wake();
                return Ok(());
            }
            Decision::Hold(epoch) => Wait::Held(epoch),
            Decision::Delay(d) => {
                let due = Instant::now() + d;
                self.ctl.0.timer.schedule(due, Arc::downgrade(&self.me))?;
                Wait::Until(due)
            }
        };
        self.pending.push(Pending {
            user_data,
            op,
            iov: iovecs.to_vec(),
            wait,
        });
        Ok(())
    }

    fn cancel(&mut self, user_data: u64) -> bool {
        if let Some(i) = self.pending.iter().position(|p| p.user_data == user_data) {
            let p = self.pending.remove(i);
            if let Wait::Held(epoch) = p.wait {
                self.ctl.unhold(epoch);
            }
            let err = IoError::new(IoErrorKind::Canceled, libc::ECANCELED, op_offset(&p.op));
            self.ready.push(Completion {
                user_data,
                result: Err(err),
            });
            self.me.wake();
            return true;
        }
        self.inner.cancel(user_data)
    }

    fn reap(&mut self, out: &mut Vec<Completion>) {
        self.kick();
        out.append(&mut self.ready);
        self.inner.reap(out);
    }

    fn in_flight(&self) -> usize {
        self.pending.len() + self.ready.len() + self.inner.in_flight()
    }
}

impl Drop for FaultChannel {
    fn drop(&mut self) {
        for p in &self.pending {
            if let Wait::Held(epoch) = p.wait {
                self.ctl.unhold(epoch);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file::tests::wait_for;
    use crate::ram::RamBackend;
    use std::os::fd::AsRawFd;

    fn setup() -> (RamBackend, FaultBackend, FaultControl, EventFd) {
        let ram = RamBackend::new(1 << 20);
        let fb = FaultBackend::new(Arc::new(ram.clone()));
        let ctl = fb.control();
        (ram, fb, ctl, EventFd::new(libc::EFD_NONBLOCK).unwrap())
    }

    fn iov(buf: &mut [u8]) -> [libc::iovec; 1] {
        [libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }]
    }

    fn readable(e: &EventFd, ms: i32) -> bool {
        let mut pfd = libc::pollfd {
            fd: e.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, ms) == 1 }
    }

    #[test]
    fn matcher_kinds_and_ranges() {
        let m = OpMatch::kinds(&[OpKind::Write, OpKind::Discard]).overlapping(4096, 4096);
        assert!(m.matches(
            &IoOp::Write {
                offset: 0,
                fua: false
            },
            4097
        ));
        assert!(!m.matches(
            &IoOp::Write {
                offset: 0,
                fua: false
            },
            4096
        ));
        assert!(m.matches(
            &IoOp::Discard {
                offset: 8191,
                len: 10
            },
            0
        ));
        assert!(!m.matches(
            &IoOp::Discard {
                offset: 8192,
                len: 10
            },
            0
        ));
        assert!(!m.matches(&IoOp::Read { offset: 4096 }, 512));
        assert!(!OpMatch::any()
            .overlapping(0, 1 << 20)
            .matches(&IoOp::Flush, 0));
        assert!(OpMatch::any().matches(&IoOp::Flush, 0));
        assert!(OpMatch::kind(OpKind::WriteZeroes).matches(
            &IoOp::WriteZeroes {
                offset: u64::MAX - 1,
                len: u64::MAX
            },
            0
        ));
    }

    #[test]
    fn held_write_does_not_delay_other_ops_and_lands_after_release() {
        let (ram, fb, ctl, e) = setup();
        ctl.add(FaultRule::new(
            OpMatch::kind(OpKind::Write),
            FaultAction::Hold,
        ));
        let mut ch = fb.open_channel(&e).unwrap();
        let mut w = vec![0x77u8; 4096];
        let mut r = vec![0xffu8; 4096];
        // SAFETY: `w` and `r` outlive the channel.
        unsafe {
            ch.submit(
                IoOp::Write {
                    offset: 8192,
                    fua: false,
                },
                &iov(&mut w),
                1,
            )
        }
        .unwrap();
        assert!(ctl.wait_held(1, Duration::from_secs(1)));
        // SAFETY: as above.
        unsafe { ch.submit(IoOp::Read { offset: 8192 }, &iov(&mut r), 2) }.unwrap();
        let c = wait_for(&mut *ch, &e, 2);
        assert_eq!(c.result, Ok(4096));
        assert!(r.iter().all(|&x| x == 0), "read overtook the held write");
        assert_eq!(ch.in_flight(), 1);
        let mut out = Vec::new();
        ch.reap(&mut out);
        assert!(out.is_empty());
        let _ = e.read();
        // Release from another thread; the eventfd wakes this one.
        let ctl2 = ctl.clone();
        std::thread::spawn(move || ctl2.release()).join().unwrap();
        assert!(readable(&e, 1000));
        assert_eq!(ctl.held(), 0);
        let c = wait_for(&mut *ch, &e, 1);
        assert_eq!(c.result, Ok(4096));
        let mut check = vec![0u8; 4096];
        ram.0.read_at(8192, &mut check).unwrap();
        assert!(check.iter().all(|&x| x == 0x77));
        assert_eq!(ch.in_flight(), 0);
    }

    #[test]
    fn canceled_held_write_never_reaches_the_store() {
        let (ram, fb, ctl, e) = setup();
        ctl.add(FaultRule::new(
            OpMatch::kind(OpKind::Write),
            FaultAction::Hold,
        ));
        let mut ch = fb.open_channel(&e).unwrap();
        let mut w = vec![0x55u8; 4096];
        // SAFETY: `w` outlives the channel.
        unsafe {
            ch.submit(
                IoOp::Write {
                    offset: 0,
                    fua: true,
                },
                &iov(&mut w),
                9,
            )
        }
        .unwrap();
        assert_eq!(ctl.held(), 1);
        assert!(ch.cancel(9));
        assert_eq!(ctl.held(), 0);
        let c = wait_for(&mut *ch, &e, 9);
        assert_eq!(c.result.unwrap_err().kind, IoErrorKind::Canceled);
        ctl.release();
        let mut out = Vec::new();
        ch.reap(&mut out);
        assert!(out.is_empty());
        assert_eq!(ch.in_flight(), 0);
        assert_eq!(ram.0.allocated(), 0);
        // Not held any more: cancel goes to the inner (inline) channel, which declines.
        assert!(!ch.cancel(9));
    }

    #[test]
    fn failure_injection_returns_the_error_kind_for_count_ops() {
        let (_ram, fb, ctl, e) = setup();
        let fail = FaultAction::Fail {
            kind: IoErrorKind::Read,
            errno: libc::EIO,
        };
        ctl.add(FaultRule::new(OpMatch::kind(OpKind::Read).overlapping(4096, 4096), fail).times(1));
        let mut ch = fb.open_channel(&e).unwrap();
        let mut r = vec![0u8; 4096];
        // SAFETY: `r` outlives the channel.
        unsafe { ch.submit(IoOp::Read { offset: 0 }, &iov(&mut r), 1) }.unwrap();
        assert_eq!(wait_for(&mut *ch, &e, 1).result, Ok(4096));
        // SAFETY: as above.
        unsafe { ch.submit(IoOp::Read { offset: 6144 }, &iov(&mut r), 2) }.unwrap();
        let err = wait_for(&mut *ch, &e, 2).result.unwrap_err();
        assert_eq!(err, IoError::new(IoErrorKind::Read, libc::EIO, Some(6144)));
        // Count used up.
        // SAFETY: as above.
        unsafe { ch.submit(IoOp::Read { offset: 6144 }, &iov(&mut r), 3) }.unwrap();
        assert_eq!(wait_for(&mut *ch, &e, 3).result, Ok(4096));
        assert_eq!(ctl.hits(), 1);
        // A forever rule on writes, removed again.
        let id = ctl.add(FaultRule::new(
            OpMatch::kind(OpKind::Write),
            FaultAction::Fail {
                kind: IoErrorKind::NoSpace,
                errno: libc::ENOSPC,
            },
        ));
        for ud in 4..6 {
            // SAFETY: as above.
            unsafe {
                ch.submit(
                    IoOp::Write {
                        offset: 0,
                        fua: false,
                    },
                    &iov(&mut r),
                    ud,
                )
            }
            .unwrap();
            assert_eq!(
                wait_for(&mut *ch, &e, ud).result.unwrap_err().kind,
                IoErrorKind::NoSpace
            );
        }
        assert!(ctl.remove(id));
        assert!(!ctl.remove(id));
        // SAFETY: as above.
        unsafe {
            ch.submit(
                IoOp::Write {
                    offset: 0,
                    fua: false,
                },
                &iov(&mut r),
                6,
            )
        }
        .unwrap();
        assert_eq!(wait_for(&mut *ch, &e, 6).result, Ok(4096));
    }

    #[test]
    fn delay_never_sleeps_on_the_submitter() {
        let (ram, fb, ctl, e) = setup();
        ctl.add(FaultRule::new(
            OpMatch::kind(OpKind::Write),
            FaultAction::Delay(Duration::from_millis(300)),
        ));
        let mut ch = fb.open_channel(&e).unwrap();
        let mut w = vec![3u8; 4096];
        let mut r = vec![0u8; 4096];
        let t0 = Instant::now();
        // SAFETY: `w` and `r` outlive the channel.
        unsafe {
            ch.submit(
                IoOp::Write {
                    offset: 0,
                    fua: false,
                },
                &iov(&mut w),
                1,
            )
        }
        .unwrap();
        // SAFETY: as above.
        unsafe { ch.submit(IoOp::Read { offset: 4096 }, &iov(&mut r), 2) }.unwrap();
        assert!(t0.elapsed() < Duration::from_millis(150));
        let mut out = Vec::new();
        ch.reap(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].user_data, 2);
        assert_eq!(ram.0.allocated(), 0);
        let c = wait_for(&mut *ch, &e, 1);
        assert_eq!(c.result, Ok(4096));
        assert!(t0.elapsed() >= Duration::from_millis(300));
        assert_eq!(ram.0.allocated(), crate::ram::CHUNK);
        // A delayed op canceled before it is due never lands.
        // SAFETY: as above.
        unsafe {
            ch.submit(
                IoOp::Write {
                    offset: 1 << 19,
                    fua: false,
                },
                &iov(&mut w),
                3,
            )
        }
        .unwrap();
        assert!(ch.cancel(3));
        assert_eq!(
            wait_for(&mut *ch, &e, 3).result.unwrap_err().kind,
            IoErrorKind::Canceled
        );
        std::thread::sleep(Duration::from_millis(100));
        let mut out = Vec::new();
        ch.reap(&mut out);
        assert!(out.is_empty());
        assert_eq!(ram.0.allocated(), crate::ram::CHUNK);
    }

    #[test]
    fn wraps_an_asynchronous_file_backend() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.img");
        let file =
            crate::FileBackend::create(&path, 1 << 20, crate::FileOptions::default()).unwrap();
        let fb = FaultBackend::new(Arc::new(file));
        let ctl = fb.control();
        ctl.add(FaultRule::new(
            OpMatch::kind(OpKind::Write).overlapping(0, 4096),
            FaultAction::Hold,
        ));
        let e = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut ch = fb.open_channel(&e).unwrap();
        let mut a = vec![1u8; 4096];
        let mut b = vec![2u8; 4096];
        let mut r = vec![0u8; 4096];
        // SAFETY: the buffers outlive the channel.
        unsafe {
            ch.submit(
                IoOp::Write {
                    offset: 0,
                    fua: true,
                },
                &iov(&mut a),
                1,
            )
            .unwrap();
            // Outside the held range: goes straight through.
            ch.submit(
                IoOp::Write {
                    offset: 4096,
                    fua: true,
                },
                &iov(&mut b),
                2,
            )
            .unwrap();
        }
        assert_eq!(wait_for(&mut *ch, &e, 2).result, Ok(4096));
        // SAFETY: as above.
        unsafe { ch.submit(IoOp::Read { offset: 0 }, &iov(&mut r), 3) }.unwrap();
        assert_eq!(wait_for(&mut *ch, &e, 3).result, Ok(4096));
        assert!(r.iter().all(|&x| x == 0));
        assert_eq!(ch.in_flight(), 1);
        ctl.release();
        assert_eq!(wait_for(&mut *ch, &e, 1).result, Ok(4096));
        let data = std::fs::read(&path).unwrap();
        assert!(data[..4096].iter().all(|&x| x == 1));
        assert!(data[4096..8192].iter().all(|&x| x == 2));
        assert!(fb.describe().starts_with("fault:file:"));
    }

    #[test]
    fn wait_held_across_threads_and_timeout() {
        let (_ram, fb, ctl, e) = setup();
        ctl.add(FaultRule::new(
            OpMatch::kind(OpKind::Flush),
            FaultAction::Hold,
        ));
        assert!(!ctl.wait_held(1, Duration::from_millis(10)));
        let waiter = {
            let ctl = ctl.clone();
            std::thread::spawn(move || ctl.wait_held(2, Duration::from_secs(5)))
        };
        let mut ch = fb.open_channel(&e).unwrap();
        // SAFETY: no iovecs.
        unsafe {
            ch.submit(IoOp::Flush, &[], 1).unwrap();
            ch.submit(IoOp::Flush, &[], 2).unwrap();
        }
        assert!(waiter.join().unwrap());
        // Dropping the channel lets go of its held ops.
        drop(ch);
        assert_eq!(ctl.held(), 0);
        assert_eq!(fb.describe(), "fault:ram:1048576");
    }
}
