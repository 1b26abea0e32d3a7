//! The per-thread executor. A transport's worker thread owns one `Worker`: it
//! submits commands and task management functions, puts `Worker::notify_fd` in its
//! epoll set, and calls `Worker::poll` when it fires (and after each batch of
//! submissions) to collect what finished. Each command is submitted, run and
//! completed on this thread; backend channels are opened here per LUN. Other
//! threads reach this one only through its mailbox (task set wake-ups, aborts).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use backends::{Completion, IoChannel, IoError, IoErrorKind, IoOp};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::bounce::{self, AlignedBuf, Bounce};
use crate::cmd::{CmdResponse, Completed, DataDir, Residual, ScsiCmd, TaskAttr};
use crate::exec::{CmdCtx, Exec, IoBuf, Job, JobCtx, Step, WakerSource};
use crate::lun::{Lun, LunRegistry};
use crate::nexus::Nexus;
use crate::opcodes::{self, flags, OpInfo};
use crate::sense::{asc, CmdError, ScsiStatus, Sense, SenseFormat, SenseKey};
use crate::taskset::{TaskEntry, TaskSeq};
use crate::tmf::{Plan, TmfRequest, TmfResponse};

/// Rounds of messages and completions one `poll` handles before it returns (and
/// signals its own eventfd to be called again).
const MAX_POLL_ROUNDS: usize = 64;

/// A slot of the worker's command table, with a generation so that a stale message
/// or completion for a reused slot is ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotRef {
    pub index: u32,
    pub gen: u32,
}

impl SlotRef {
    fn user_data(self) -> u64 {
        (u64::from(self.gen) << 32) | u64::from(self.index)
    }

    fn from_user_data(u: u64) -> Self {
        SlotRef {
            index: u as u32,
            gen: (u >> 32) as u32,
        }
    }
}

/// Messages from other threads (or this one) to a worker.
#[derive(Debug)]
pub(crate) enum Msg {
    /// The task set lets this command run (or resume after a range wait).
    Start(SlotRef),
    /// A task management function aborted this command.
    Abort(SlotRef),
    /// The commands that a pending task management function aborted are gone.
    TmfDrained(u64),
}

/// A worker's inbox: a queue and the worker's eventfd.
pub struct Mailbox {
    msgs: Mutex<Vec<Msg>>,
    notify: EventFd,
}

impl Mailbox {
    pub(crate) fn post(&self, m: Msg) {
        self.msgs.lock().unwrap_or_else(|e| e.into_inner()).push(m);
        let _ = self.notify.write(1);
    }
}

impl std::fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mailbox")
    }
}

/// Something that finished.
#[derive(Debug)]
pub enum Event {
    Cmd(Completed),
    Tmf { token: u64, response: TmfResponse },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    /// In the task set, not yet allowed to run.
    Queued,
    /// Its job waits for an overlapping write range.
    RangeWait,
    /// A backend operation is in flight on the channel of this LUN uid.
    Io(u64),
    /// Its next operation waits for room on a full channel (`Slot::deferred_io`).
    Deferred,
    /// Its job waits for a wake-up from outside (`Step::Park`).
    Parked,
}

struct Slot {
    gen: u32,
    cmd: ScsiCmd,
    nexus: Arc<Nexus>,
    lun: Arc<Lun>,
    seq: TaskSeq,
    state: SlotState,
    info: Option<&'static OpInfo>,
    job: Option<SlotJob>,
    scratch: crate::exec::Scratch,
    /// The aligned copy an operation in flight uses, if it needed one.
    bounce: Option<Bounce>,
    aborted: bool,
    /// The operation a full channel refused, to submit again once it has room.
    deferred_io: Option<(Option<Arc<Lun>>, IoOp, IoBuf)>,
    /// When it was submitted, for the LUN's latency statistics.
    start: std::time::Instant,
}

/// A slot's job: a read/write plan held in place, or any other job boxed.
// Unboxed on purpose (see `Exec`): slots are reused, so the size costs nothing.
#[allow(clippy::large_enum_variant)]
enum SlotJob {
    Plan(crate::sbc::plan::Plan),
    Boxed(Box<dyn Job>),
}

impl SlotJob {
    fn get(&mut self) -> &mut dyn Job {
        match self {
            SlotJob::Plan(p) => p,
            SlotJob::Boxed(b) => b.as_mut(),
        }
    }

    fn get_ref(&self) -> &dyn Job {
        match self {
            SlotJob::Plan(p) => p,
            SlotJob::Boxed(b) => b.as_ref(),
        }
    }
}

/// A task management function in progress on this worker.
struct PendingTmf {
    /// LUN task sets still draining.
    remaining: usize,
    response: TmfResponse,
    token: u64,
}

/// One worker thread's command executor.
pub struct Worker {
    registry: Arc<LunRegistry>,
    notify: EventFd,
    mailbox: Arc<Mailbox>,
    slots: Vec<Option<Slot>>,
    gens: Vec<u32>,
    free: Vec<u32>,
    /// Backend channels of this thread by LUN uid, with the backend's DMA alignment.
    channels: IdMap<u64, (Box<dyn IoChannel>, usize)>,
    ready: Vec<Event>,
    iovs: Vec<libc::iovec>,
    reaped: Vec<Completion>,
    tmfs: HashMap<u64, PendingTmf>,
    next_tmf: u64,
    /// Commands whose next operation waits for room on a full channel, oldest first.
    deferred: Vec<SlotRef>,
    /// (nexus id, LUN uid) pairs that have had their first command here: their
    /// unit attention check takes no lock while the LUN has none pending.
    known: IdSet<(u64, u64)>,
}

/// A hasher for the worker's own ids (LUN uids, nexus ids: counters this process
/// hands out, never chosen by a peer), looked up several times per command:
/// multiply-rotate instead of SipHash, which guards against keys an attacker
/// picks and costs more than the rest of the lookup.
#[derive(Default, Clone, Copy)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;
type IdSet<K> = HashSet<K, BuildHasherDefault<IdHasher>>;

/// Why a worker could not be made.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
}

impl Worker {
    pub fn new(registry: Arc<LunRegistry>) -> Result<Self, WorkerError> {
        let notify = EventFd::new(EFD_NONBLOCK).map_err(WorkerError::EventFd)?;
        let mb_fd = notify.try_clone().map_err(WorkerError::EventFd)?;
        Ok(Worker {
            registry,
            notify,
            mailbox: Arc::new(Mailbox {
                msgs: Mutex::new(Vec::new()),
                notify: mb_fd,
            }),
            slots: Vec::new(),
            gens: Vec::new(),
            free: Vec::new(),
            channels: IdMap::default(),
            ready: Vec::new(),
            iovs: Vec::new(),
            reaped: Vec::new(),
            tmfs: HashMap::new(),
            next_tmf: 1,
            deferred: Vec::new(),
            known: IdSet::default(),
        })
    }

    /// The eventfd to watch: readable when `poll` has something to do.
    pub fn notify_fd(&self) -> RawFd {
        self.notify.as_raw_fd()
    }

    /// Commands in the table (queued, running or in I/O).
    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    pub fn registry(&self) -> &Arc<LunRegistry> {
        &self.registry
    }

    fn alloc_slot(&mut self) -> SlotRef {
        if let Some(i) = self.free.pop() {
            SlotRef {
                index: i,
                gen: self.gens[i as usize],
            }
        } else {
            self.slots.push(None);
            self.gens.push(0);
            SlotRef {
                index: (self.slots.len() - 1) as u32,
                gen: 0,
            }
        }
    }

    fn slot_mut(&mut self, r: SlotRef) -> Option<&mut Slot> {
        match self.slots.get_mut(r.index as usize) {
            Some(Some(s)) if s.gen == r.gen => Some(s),
            _ => None,
        }
    }

    /// Submits a command from `nexus`. Its completion comes back from `poll`.
    pub fn submit(&mut self, nexus: &Arc<Nexus>, mut cmd: ScsiCmd) {
        let Some(lun) = nexus.luns.get(cmd.lun) else {
            let resp = crate::spc::no_such_lun(nexus, &mut cmd);
            self.complete_now(cmd, resp);
            return;
        };
        if cmd.attr == TaskAttr::Aca {
            // NormACA is 0: an ACA task cannot exist (SAM-5 5.9.1.2).
            let resp = error_response(
                &lun,
                CmdError::Check(Sense::illegal(asc::INVALID_MESSAGE_ERROR)),
                &cmd,
            );
            self.complete_now(cmd, resp);
            return;
        }
        let r = self.alloc_slot();
        let entry = TaskEntry {
            nexus: nexus.id,
            key: nexus.key.clone(),
            tag: cmd.tag,
            attr: cmd.attr,
            running: false,
            range_wait: false,
            aborted: false,
            range: None,
            owner: self.mailbox.clone(),
            slot: r,
        };
        let (seq, run) = lun
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(entry);
        lun.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        self.slots[r.index as usize] = Some(Slot {
            gen: r.gen,
            cmd,
            nexus: nexus.clone(),
            lun,
            seq,
            state: SlotState::Queued,
            info: None,
            job: None,
            scratch: crate::exec::Scratch::default(),
            bounce: None,
            aborted: false,
            deferred_io: None,
            start: std::time::Instant::now(),
        });
        if run {
            self.dispatch(r);
        }
    }

    fn complete_now(&mut self, cmd: ScsiCmd, resp: CmdResponse) {
        self.ready.push(Event::Cmd(Completed {
            token: cmd.token,
            tag: cmd.tag,
            data: cmd.data,
            response: Some(resp),
        }));
    }

    /// Runs the checks and the handler of a command the task set let through.
    fn dispatch(&mut self, r: SlotRef) {
        let registry = self.registry.clone();
        let Some(Some(slot)) = self.slots.get_mut(r.index as usize) else {
            return;
        };
        if slot.gen != r.gen {
            return;
        }
        if slot.aborted {
            self.finish(r, None);
            return;
        }
        let pair = (slot.nexus.id, slot.lun.uid);
        let known = self.known.contains(&pair);
        let (result, ua_checked) = run_handler(slot, &registry, known);
        if ua_checked && !known {
            self.known.insert(pair);
        }
        match result {
            Ok(Exec::Good(consumed)) => {
                let resp = good_response(&slot.cmd, consumed, true);
                self.finish(r, Some(resp));
            }
            Ok(Exec::Data(_)) if slot.cmd.dir == DataDir::ToDevice => {
                // Data-in for a buffer the initiator lent for data-out: the command
                // succeeds (as libiscsi's Read10Invalid expects of a READ flagged as
                // a write) but nothing is written into memory lent for reading.
                let resp = good_response(&slot.cmd, 0, false);
                self.finish(r, Some(resp));
            }
            Ok(Exec::Data(bytes)) => {
                slot.cmd.data.write_at(0, &bytes);
                let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
                let resp = good_response(&slot.cmd, len, false);
                self.finish(r, Some(resp));
            }
            Ok(Exec::Job(b)) => self.start_job(r, SlotJob::Boxed(b)),
            Ok(Exec::Plan(p)) => self.start_job(r, SlotJob::Plan(p.0)),
            Err(e) => {
                let resp = error_response(&slot.lun, e, &slot.cmd);
                self.finish(r, Some(resp));
            }
        }
    }

    /// Gives a dispatched command its job and runs it, once its write range (if
    /// any) is free.
    fn start_job(&mut self, r: SlotRef, job: SlotJob) {
        let Some(slot) = self.slot_mut(r) else {
            return;
        };
        let range = job.get_ref().range();
        slot.job = Some(job);
        if let Some(range) = range {
            let go = slot
                .lun
                .tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .begin_range(slot.seq, range);
            if !go {
                slot.state = SlotState::RangeWait;
                return;
            }
        }
        self.run_job(r, None);
    }

    /// Advances a job until it submits I/O or finishes.
    fn run_job(&mut self, r: SlotRef, mut last: Option<Result<usize, IoError>>) {
        loop {
            let registry = self.registry.clone();
            let slot = match self.slots.get_mut(r.index as usize) {
                Some(Some(s)) if s.gen == r.gen => s,
                _ => return,
            };
            if slot.aborted {
                self.finish(r, None);
                return;
            }
            let Some(job) = slot.job.as_mut() else {
                let resp = error_response(
                    &slot.lun,
                    Sense::new(SenseKey::HardwareError, asc::INTERNAL_TARGET_FAILURE).into(),
                    &slot.cmd,
                );
                self.finish(r, Some(resp));
                return;
            };
            let step = {
                let mut ctx = JobCtx {
                    lun: &slot.lun,
                    nexus: &slot.nexus,
                    data: slot.cmd.data.as_mut(),
                    scratch: &mut slot.scratch,
                    registry: &registry,
                    waker: Some(WakerSource::new(&self.mailbox, r)),
                };
                job.get().step(&mut ctx, last.take())
            };
            match step {
                Step::Done(Ok(wanted)) => {
                    let write = slot.info.is_some_and(|i| i.has(flags::WRITES));
                    let mut resp = good_response(&slot.cmd, wanted, write);
                    if let Some(job) = &slot.job {
                        resp.status = job.get_ref().status();
                    }
                    self.finish(r, Some(resp));
                    return;
                }
                Step::Done(Err(e)) => {
                    let resp = error_response(&slot.lun, e, &slot.cmd);
                    self.finish(r, Some(resp));
                    return;
                }
                Step::Park => {
                    slot.state = SlotState::Parked;
                    return;
                }
                Step::Io {
                    buf: IoBuf::Data { len, .. },
                    op: IoOp::Read { .. },
                    ..
                } if slot.cmd.dir == DataDir::ToDevice => {
                    // A read into a buffer lent for data-out: skipped, as above.
                    last = Some(Ok(len));
                }
                Step::Io {
                    buf: IoBuf::Data { .. },
                    op: IoOp::Write { .. },
                    ..
                } if slot.cmd.dir == DataDir::FromDevice => {
                    // A write from a buffer lent for data-in holds no data: refused,
                    // so nothing the initiator did not send reaches the medium.
                    let resp = error_response(&slot.lun, direction_mismatch(), &slot.cmd);
                    self.finish(r, Some(resp));
                    return;
                }
                Step::Io { lun, op, buf } => match self.submit_io(r, lun, op, buf) {
                    Ok(()) => return,
                    Err(e) => last = Some(Err(e)),
                },
            }
        }
    }

    fn submit_io(
        &mut self,
        r: SlotRef,
        target: Option<Arc<Lun>>,
        op: IoOp,
        buf: IoBuf,
    ) -> Result<(), IoError> {
        let fail = |kind| IoError::new(kind, libc::EIO, None);
        let Some(Some(slot)) = self.slots.get_mut(r.index as usize) else {
            return Err(fail(IoErrorKind::Other));
        };
        let lun = target.unwrap_or_else(|| slot.lun.clone());
        self.iovs.clear();
        match buf {
            IoBuf::None => {}
            IoBuf::Data { offset, len } => slot.cmd.data.iovecs(offset, len, &mut self.iovs),
            IoBuf::Scratch { offset, len } => {
                let end = offset.saturating_add(len).min(slot.scratch.len());
                let start = offset.min(end);
                if end > start {
                    self.iovs.push(libc::iovec {
                        iov_base: slot.scratch[start..end].as_mut_ptr().cast(),
                        iov_len: end - start,
                    });
                }
            }
        }
        if !self.channels.contains_key(&lun.uid) {
            let ch = lun
                .backend
                .open_channel(&self.notify)
                .map_err(|_| fail(IoErrorKind::Other))?;
            let align = lun.backend.capabilities().dma_alignment as usize;
            self.channels.insert(lun.uid, (ch, align));
        }
        let (ch, align) = self
            .channels
            .get_mut(&lun.uid)
            .ok_or(fail(IoErrorKind::Other))?;
        let align = *align;
        let is_read = matches!(op, IoOp::Read { .. });
        let is_write = matches!(op, IoOp::Write { .. });
        if (is_read || is_write) && !bounce::aligned(&self.iovs, align) {
            let len: usize = self.iovs.iter().map(|v| v.iov_len).sum();
            // A read may be rounded up (the extra bytes are dropped); a write may not,
            // and an unaligned write length is the caller's to avoid.
            let padded = if is_read {
                len.div_ceil(align) * align
            } else {
                len
            };
            let mut b = AlignedBuf::new(padded, align);
            if is_write {
                bounce::gather(buf, slot.cmd.data.as_ref(), &slot.scratch, b.as_mut_slice());
            }
            self.iovs.clear();
            self.iovs.push(libc::iovec {
                iov_base: b.as_mut_slice().as_mut_ptr().cast(),
                iov_len: padded,
            });
            slot.bounce = Some(Bounce {
                buf: b,
                target: buf,
                len,
                read: is_read,
            });
        }
        // SAFETY: the iovecs point into the command's data buffer, the slot's scratch
        // buffer or the slot's bounce buffer. All are owned by the slot, which stays
        // in the table, is not touched by the job (`step` is not called) and is not
        // freed until this operation's completion has been reaped (`finish` on an
        // aborted slot with I/O in flight waits for the completion, see
        // `on_completion`) or the channel is dropped (`Drop for Worker` drops
        // channels first).
        match unsafe { ch.submit(op, &self.iovs, r.user_data()) } {
            Ok(()) => {
                if slot.bounce.is_some() {
                    lun.stats.bounce_copies.fetch_add(1, Ordering::Relaxed);
                }
                slot.state = SlotState::Io(lun.uid);
                Ok(())
            }
            // A full queue is back pressure, not a device error: the command waits
            // for one of the operations in flight on that channel to complete. The
            // retry builds its bounce buffer again.
            Err(backends::BackendError::QueueFull(_)) if ch.in_flight() > 0 => {
                slot.bounce = None;
                slot.deferred_io = Some((Some(lun), op, buf));
                slot.state = SlotState::Deferred;
                self.deferred.push(r);
                Ok(())
            }
            Err(_) => {
                slot.bounce = None;
                Err(fail(IoErrorKind::Other))
            }
        }
    }

    /// Submits again the operations that found their channel full; returns whether
    /// any command moved on.
    fn retry_deferred(&mut self) -> bool {
        if self.deferred.is_empty() {
            return false;
        }
        let mut progress = false;
        for r in std::mem::take(&mut self.deferred) {
            let Some(slot) = self.slot_mut(r) else {
                continue;
            };
            if slot.state != SlotState::Deferred {
                continue;
            }
            let Some((lun, op, buf)) = slot.deferred_io.take() else {
                continue;
            };
            slot.state = SlotState::Queued;
            if slot.aborted {
                self.finish(r, None);
                progress = true;
                continue;
            }
            match self.submit_io(r, lun, op, buf) {
                Ok(()) => {
                    progress |= self
                        .slot_mut(r)
                        .is_some_and(|s| s.state != SlotState::Deferred);
                }
                Err(e) => {
                    progress = true;
                    self.run_job(r, Some(Err(e)));
                }
            }
        }
        progress
    }

    /// Removes a command from its task set and queues its completion.
    fn finish(&mut self, r: SlotRef, resp: Option<CmdResponse>) {
        let Some(Some(slot)) = self.slots.get_mut(r.index as usize) else {
            return;
        };
        if slot.gen != r.gen {
            return;
        }
        let Some(slot) = self.slots[r.index as usize].take() else {
            return;
        };
        self.gens[r.index as usize] = slot.gen.wrapping_add(1);
        self.free.push(r.index);
        let wake = slot
            .lun
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(slot.seq);
        wake.deliver();
        let response = if slot.aborted { None } else { resp };
        let stats = &slot.lun.stats;
        stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        stats.record(
            slot.info.map_or(0, |i| i.flags),
            response.as_ref().map_or(0, |r| u64::from(r.transferred)),
            response
                .as_ref()
                .is_some_and(|r| r.status == crate::sense::ScsiStatus::Good),
            response.is_none(),
            slot.start.elapsed(),
        );
        self.ready.push(Event::Cmd(Completed {
            token: slot.cmd.token,
            tag: slot.cmd.tag,
            data: slot.cmd.data,
            response,
        }));
    }

    fn on_completion(&mut self, c: Completion) {
        let r = SlotRef::from_user_data(c.user_data);
        let Some(slot) = self.slot_mut(r) else { return };
        if !matches!(slot.state, SlotState::Io(_)) {
            return;
        }
        slot.state = SlotState::Queued;
        let mut result = c.result;
        if let Some(b) = slot.bounce.take() {
            if let (true, Ok(n)) = (b.read, &mut result) {
                let got = (*n).min(b.len);
                bounce::scatter(
                    b.target,
                    slot.cmd.data.as_mut(),
                    &mut slot.scratch,
                    &b.buf.as_slice()[..got],
                );
                *n = got;
            }
        }
        if slot.aborted {
            self.finish(r, None);
        } else {
            self.run_job(r, Some(result));
        }
    }

    fn on_msg(&mut self, m: Msg) {
        match m {
            Msg::Start(r) => {
                let Some(slot) = self.slot_mut(r) else { return };
                match slot.state {
                    SlotState::Queued if slot.job.is_none() => self.dispatch(r),
                    SlotState::RangeWait | SlotState::Parked => {
                        slot.state = SlotState::Queued;
                        self.run_job(r, None);
                    }
                    _ => {}
                }
            }
            Msg::Abort(r) => {
                let Some(slot) = self.slot_mut(r) else { return };
                slot.aborted = true;
                match slot.state {
                    SlotState::Io(uid) => {
                        // The completion (canceled or not) finishes it; until then
                        // the buffers stay put.
                        if let Some((ch, _)) = self.channels.get_mut(&uid) {
                            ch.cancel(r.user_data());
                        }
                    }
                    SlotState::Queued
                    | SlotState::RangeWait
                    | SlotState::Deferred
                    | SlotState::Parked => self.finish(r, None),
                }
            }
            Msg::TmfDrained(token) => self.tmf_drained(token),
        }
    }

    /// Does everything that is ready: messages, backend completions. Appends what
    /// finished to `out`. Never blocks.
    pub fn poll(&mut self, out: &mut Vec<Event>) {
        let _ = self.notify.read();
        self.poll_more(out);
    }

    /// `poll` without consuming the eventfd's signal, for a second call in the same
    /// turn of the caller's loop (after handling what the first returned): it saves
    /// a read(2) that would find nothing, and a signal that arrived since stays for
    /// the caller's next (level-triggered) wait.
    pub fn poll_more(&mut self, out: &mut Vec<Event>) {
        for round in 0.. {
            if round == MAX_POLL_ROUNDS {
                // Backends that complete inline (RAM, null) keep a long job (a
                // SANITIZE of a large LUN) going round after round: hand the thread
                // back to its loop — task management, other queues — and come back.
                let _ = self.notify.write(1);
                break;
            }
            let msgs: Vec<Msg> =
                std::mem::take(&mut *self.mailbox.msgs.lock().unwrap_or_else(|e| e.into_inner()));
            let mut progress = !msgs.is_empty();
            // An abort posted after a start, in the same batch, wins: the task set
            // already counts the command aborted, so it must not begin (and
            // write) on the strength of the older start.
            for m in &msgs {
                if let Msg::Abort(r) = m {
                    if let Some(slot) = self.slot_mut(*r) {
                        slot.aborted = true;
                    }
                }
            }
            for m in msgs {
                self.on_msg(m);
            }
            let mut reaped = std::mem::take(&mut self.reaped);
            for (ch, _) in self.channels.values_mut() {
                ch.reap(&mut reaped);
            }
            progress |= !reaped.is_empty();
            for c in reaped.drain(..) {
                self.on_completion(c);
            }
            self.reaped = reaped;
            progress |= self.retry_deferred();
            if !progress {
                break;
            }
        }
        out.append(&mut self.ready);
    }

    /// Polls; if nothing finished, blocks up to `timeout_ms` for the eventfd and
    /// polls again. For tests and simple transports without their own epoll loop.
    pub fn wait(&mut self, timeout_ms: i32, out: &mut Vec<Event>) {
        // Operations of inline backends (RAM, null) finish inside `submit` and are
        // not signalled: polling first reaps them.
        let before = out.len();
        self.poll_more(out);
        if out.len() == before {
            let mut pfd = libc::pollfd {
                fd: self.notify.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: `pfd` is a valid pollfd for the duration of the call.
            unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        }
        self.poll(out);
    }

    /// Starts a task management function; its response comes back from `poll` as
    /// `Event::Tmf` once every command it aborted is gone.
    pub fn task_mgmt(&mut self, req: TmfRequest) {
        let token = req.token;
        let (targets, response, if_none) = match crate::tmf::plan(&req) {
            Plan::Answer(response) => {
                self.ready.push(Event::Tmf { token, response });
                return;
            }
            Plan::Abort {
                targets,
                response,
                if_none,
            } => (targets, response, if_none),
        };
        let internal = self.next_tmf;
        self.next_tmf += 1;
        let mut waits = 0;
        for (lun, sel) in targets {
            let (hits, registered) = lun
                .tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .abort_where(|t| sel.matches(t), Some((self.mailbox.clone(), internal)));
            waits += usize::from(registered);
            for (mb, slot) in hits {
                mb.post(Msg::Abort(slot));
            }
        }
        if waits == 0 {
            self.ready.push(Event::Tmf {
                token,
                response: if_none,
            });
        } else {
            self.tmfs.insert(
                internal,
                PendingTmf {
                    remaining: waits,
                    response,
                    token,
                },
            );
        }
    }

    /// The transport lost this I_T nexus (connection dropped, session closed): its
    /// commands are aborted without responses, and the LUNs note the loss.
    pub fn nexus_lost(&mut self, nexus: &Arc<Nexus>) {
        self.known.retain(|(n, _)| *n != nexus.id);
        for (_, lun) in nexus.luns.entries() {
            crate::tmf::nexus_loss(&lun, nexus);
            let (hits, _) = lun
                .tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .abort_where(|t| t.nexus == nexus.id, None);
            for (mb, slot) in hits {
                mb.post(Msg::Abort(slot));
            }
        }
    }

    fn tmf_drained(&mut self, internal: u64) {
        let Some(p) = self.tmfs.get_mut(&internal) else {
            return;
        };
        p.remaining = p.remaining.saturating_sub(1);
        if p.remaining > 0 {
            return;
        }
        if let Some(p) = self.tmfs.remove(&internal) {
            self.ready.push(Event::Tmf {
                token: p.token,
                response: p.response,
            });
        }
    }
}

impl Drop for Worker {
    /// A worker that goes away with commands in flight: its channels go first —
    /// each cancels or waits for the operations it has in the device, which point
    /// into the command buffers and scratch vectors of `slots` (`IoChannel::submit`
    /// promises that memory only until the completion is reaped or the channel is
    /// dropped). Then its commands leave their task sets, so that commands of other
    /// workers queued behind them (ORDERED, ranges) run and task management
    /// functions waiting for them finish.
    fn drop(&mut self) {
        self.channels.clear();
        for slot in self.slots.iter_mut().filter_map(Option::take) {
            let wake = slot
                .lun
                .tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(slot.seq);
            wake.deliver();
        }
    }
}

/// The checks of SAM-5/SPC-4 that precede every command, then its handler.
fn run_handler(
    slot: &mut Slot,
    registry: &Arc<LunRegistry>,
    known: bool,
) -> (Result<Exec, CmdError>, bool) {
    let cdb = slot.cmd.cdb;
    let cdb = cdb.as_slice();
    let key = &slot.nexus.key;
    let lookup = opcodes::lookup(cdb);
    let exempt = lookup.as_ref().is_ok_and(|i| i.has(flags::UA_EXEMPT));
    if !exempt {
        if let Some(a) = slot.lun.ua.take(key, known) {
            return (Err(Sense::unit_attention(a).into()), true);
        }
    }
    (checks_and_handler(slot, registry, lookup), !exempt)
}

fn checks_and_handler(
    slot: &mut Slot,
    registry: &Arc<LunRegistry>,
    lookup: Result<&'static OpInfo, CmdError>,
) -> Result<Exec, CmdError> {
    let cdb = slot.cmd.cdb;
    let info = lookup?;
    // Transports may pad a CDB (iSCSI carries 16 bytes for a 6- or 10-byte one):
    // handlers see exactly the command's own length (lookup refused shorter ones),
    // so a length-dependent decode (READ(10) vs READ(16) layouts) is never fooled.
    let cdb = cdb.as_slice();
    let cdb = cdb.get(..info.cdb_len()).unwrap_or(cdb);
    slot.info = Some(info);
    opcodes::check_control(cdb, info.cdb_len())?;
    crate::pr::check_access(&slot.lun, &slot.nexus, info, cdb)?;
    if info.has(flags::WRITES) && crate::mode::write_protected(&slot.lun) {
        return Err(Sense::new(SenseKey::DataProtect, asc::WRITE_PROTECTED).into());
    }
    crate::sbc::check_sanitize(&slot.lun, info)?;
    if info.has(flags::MEDIUM) {
        crate::spc::check_ready(&slot.lun)?;
    }
    let mut ctx = CmdCtx {
        lun: &slot.lun,
        lun_number: slot.cmd.lun,
        nexus: &slot.nexus,
        cdb,
        info,
        data: slot.cmd.data.as_mut(),
        dir: slot.cmd.dir,
        registry,
    };
    (info.handler)(&mut ctx)
}

/// The transport gave the data buffer the direction opposite to the command's.
fn direction_mismatch() -> CmdError {
    Sense::invalid_cdb_field(0, None).into()
}

/// GOOD status; `wanted` is what the command meant to move, the buffer length is
/// what the initiator expected.
fn good_response(cmd: &ScsiCmd, wanted: u32, _data_out: bool) -> CmdResponse {
    let have = u32::try_from(cmd.data.len()).unwrap_or(u32::MAX);
    let mut resp = CmdResponse::good(wanted.min(have));
    resp.residual = residual(have, wanted);
    resp
}

fn residual(expected: u32, wanted: u32) -> Residual {
    match expected.cmp(&wanted) {
        std::cmp::Ordering::Greater => Residual::Under(expected - wanted),
        std::cmp::Ordering::Less => Residual::Over(wanted - expected),
        std::cmp::Ordering::Equal => Residual::None,
    }
}

/// The response for a failed command, sense encoded as the LUN's control mode page
/// says (D_SENSE).
pub(crate) fn error_response(lun: &Lun, e: CmdError, cmd: &ScsiCmd) -> CmdResponse {
    let format = crate::mode::sense_format(lun);
    let have = u32::try_from(cmd.data.len()).unwrap_or(u32::MAX);
    let (sense, sense_data) = match e {
        CmdError::Check(s) => (Some(s.encode(format)), Some(s)),
        _ => (None, None),
    };
    CmdResponse {
        status: e.status(),
        sense,
        sense_data,
        transferred: 0,
        residual: if have > 0 {
            Residual::Under(have)
        } else {
            Residual::None
        },
    }
}

/// A CHECK CONDITION response for a command with no LUN object (fixed format).
pub(crate) fn check_response(s: Sense, cmd: &ScsiCmd) -> CmdResponse {
    let have = u32::try_from(cmd.data.len()).unwrap_or(u32::MAX);
    CmdResponse {
        status: ScsiStatus::CheckCondition,
        sense: Some(s.encode(SenseFormat::Fixed)),
        sense_data: Some(s),
        transferred: 0,
        residual: if have > 0 {
            Residual::Under(have)
        } else {
            Residual::None
        },
    }
}

/// A GOOD response carrying `bytes` of data-in for a command with no LUN object.
pub(crate) fn data_response(bytes: &[u8], cmd: &mut ScsiCmd) -> CmdResponse {
    cmd.data.write_at(0, bytes);
    good_response(cmd, u32::try_from(bytes.len()).unwrap_or(u32::MAX), false)
}
