//! One channel's thread: an epoll loop over its CM events, its completion
//! channel, its engine worker and its kill eventfd.
//!
//! A receive completion is parsed as an IU. An SRP_CMD takes a credit and a
//! command slot; immediate data is handed to the engine in place (its receive
//! buffer is reposted when the command is done), other commands give their
//! receive back at once. A write first takes a run of the data region and
//! fetches the initiator's buffers with RDMA READs (only the last one
//! signalled); a read takes a run, and when the engine is done the RDMA WRITEs
//! go out chained ahead of the SRP_RSP's SEND, of which only the SEND is
//! signalled: RC ordering delivers the data before the response. Each response
//! returns one credit (plus those of aborted commands). Chains that do not fit
//! the send queue wait in order; so do commands that find no run. The work
//! requests queued while a batch of completions is handled go out in one post.
//!
//! Receive completions always wake the thread; send completions only while
//! something waits for one (an RDMA READ chain, whose last READ's completion
//! lets its command run; a run; room in the send queue; send buffers running
//! low; the drain); otherwise (SENDs of responses) they are reaped along with
//! the receives. That halves the wake-ups per command.
//!
//! A disconnect (from the initiator, the administrator, or a newer
//! single-channel login of the same initiator) moves the QP to the error state;
//! the channel then waits until every receive it posted has come back flushed
//! and a marker SEND behind everything on the send queue has too (at most 5
//! s), drops its engine worker and destroys its verbs objects, QP first.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::{DataDir, Event, LunRegistry, Nexus, Sense, SenseKey, VecBuf, Worker};
use smallvec::SmallVec;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::bufs::RegionBuf;
use super::pool::Extent;
use super::setup::{wr, Resources, SEND_SLOT};
use super::{ChannelStats, Shared};
use crate::channels::{ChannelId, ChannelRegistry};
use crate::credits::Credits;
use crate::exec::{self, Prepared};
use crate::iu::{
    self, encode_rsp, encode_tm_rsp, opcode, tm_rsp_code, ChannelParams, CredReq, DataXfer, Iu,
    IuError, RemoteBuf, Tag, TskMgmt,
};
use crate::rdma::{CmEventKind, CmId, RdmaError, RemoteAddr, SendOp, SendWr, Wc};

/// How long a closing channel waits for its flushed work requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Rounds of CQ polling per wake-up before the loop looks at its other sources.
const CQ_ROUNDS: usize = 256;

const KEY_CM: u64 = 1;
const KEY_CQ: u64 = 2;
const KEY_WORKER: u64 = 3;
const KEY_KILL: u64 = 4;

/// The work requests of one command that go out together (its READs, or its
/// WRITEs and response SEND): inline for the common one to four, so a
/// command's chain costs no allocation.
type Chain = SmallVec<[SendWr; 4]>;

/// What the CM thread hands a channel's thread.
pub(crate) struct ChannelCtx {
    pub id: ChannelId,
    pub shared: Arc<Shared>,
    pub registry: Arc<LunRegistry>,
    pub channels: Arc<ChannelRegistry>,
    pub nexus: Arc<Nexus>,
    pub params: ChannelParams,
    pub stats: Arc<ChannelStats>,
    pub kill: Arc<EventFd>,
    pub max_transfer: u32,
}

/// The thread's body.
pub(crate) fn run(ctx: ChannelCtx, id: CmId, res: Resources) {
    let shared = ctx.shared.clone();
    let ch = ctx.id;
    match Channel::new(ctx, id, res) {
        Ok(mut c) => {
            if let Err(e) = c.run() {
                tracing::warn!("srp: channel {ch}: {e}");
            }
        }
        Err((e, channels)) => {
            tracing::warn!("srp: channel {ch} could not start: {e}");
            channels.unregister(ch);
        }
    }
    shared.channel_gone(ch);
}

/// Why a channel ended early.
#[derive(Debug, thiserror::Error)]
enum ChannelError {
    #[error("{0}")]
    Rdma(#[from] RdmaError),
    #[error("epoll: {0}")]
    Epoll(std::io::Error),
    #[error("engine worker: {0}")]
    Worker(#[from] engine::worker::WorkerError),
}

/// One command (SRP_CMD or SRP_TSK_MGMT) between its IU and its response.
struct CmdState {
    tag: Tag,
    /// The receive buffer it still holds (immediate data).
    recv: Option<u32>,
    dir: DataDir,
    /// The engine command, until it is submitted (waiting for a run or READs).
    prepared: Option<Prepared>,
    remote: SmallVec<[RemoteBuf; 4]>,
    extent: Option<Extent>,
    /// Work requests of its RDMA READ chain.
    read_chain: u32,
}

/// A send buffer in use: the chain it ends and the data run to give back once
/// its SEND completes (the WRITEs before it are done by then).
#[derive(Default)]
struct SendSlot {
    chain: u32,
    extent: Option<Extent>,
}

struct Channel {
    /// First to go (after the QP, see Drop): its commands point into `res`.
    worker: Worker,
    ctx: ChannelCtx,
    epoll: Epoll,
    credits: Credits,
    cmds: Vec<Option<CmdState>>,
    free_cmds: Vec<u32>,
    sends: Vec<SendSlot>,
    free_sends: Vec<u32>,
    /// Commands waiting for a run of the data region, oldest first.
    waiting: VecDeque<u32>,
    /// Send queue entries free (one kept for the drain marker).
    sq_free: u32,
    /// RDMA READ chains posted whose completion has not been seen: each
    /// holds a command that runs only once its data is in.
    reads_in_flight: u32,
    /// Chains waiting for send queue room, oldest first.
    backlog: VecDeque<Chain>,
    /// The work requests of one post (reused).
    batch: Vec<SendWr>,
    wcs: Vec<Wc>,
    events: Vec<Event>,
    next_cred_tag: u64,
    closing: Option<Instant>,
    /// Receives posted and not yet completed (flushed ones included).
    recv_posted: u32,
    /// Notification requested on the CQ and not consumed since.
    recv_armed: bool,
    send_armed: bool,
    drained_send: bool,
    left: bool,
    res: Resources,
    /// Last: destroyed after everything its QP pointed to is gone.
    id: CmId,
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.leave();
        // Before the worker and the regions: no work request may land in them.
        self.id.destroy_qp();
    }
}

type NewError = (ChannelError, Arc<ChannelRegistry>);

impl Channel {
    fn new(ctx: ChannelCtx, id: CmId, res: Resources) -> Result<Self, NewError> {
        let fail = |e: ChannelError, ctx: &ChannelCtx| (e, ctx.channels.clone());
        let worker = match Worker::new(ctx.registry.clone()) {
            Ok(w) => w,
            Err(e) => return Err(fail(e.into(), &ctx)),
        };
        let epoll = match Epoll::new() {
            Ok(e) => e,
            Err(e) => return Err(fail(ChannelError::Epoll(e), &ctx)),
        };
        for (fd, key) in [
            (res.events.fd(), KEY_CM),
            (res.comp.fd(), KEY_CQ),
            (worker.notify_fd(), KEY_WORKER),
            (ctx.kill.as_raw_fd(), KEY_KILL),
        ] {
            if let Err(e) = epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, key),
            ) {
                return Err(fail(ChannelError::Epoll(e), &ctx));
            }
        }
        let Some(credits) = Credits::new(res.rq_size) else {
            return Err(fail(
                RdmaError::OutOfRange {
                    what: "queue depth",
                    value: 0,
                }
                .into(),
                &ctx,
            ));
        };
        let ncmds = res.rq_size;
        let nsends = res.send_slots;
        let sq_free = res.sq_size.saturating_sub(1);
        Ok(Channel {
            worker,
            ctx,
            epoll,
            credits,
            cmds: (0..ncmds).map(|_| None).collect(),
            free_cmds: (0..ncmds).rev().collect(),
            sends: (0..nsends).map(|_| SendSlot::default()).collect(),
            free_sends: (0..nsends).rev().collect(),
            waiting: VecDeque::new(),
            sq_free,
            reads_in_flight: 0,
            backlog: VecDeque::new(),
            batch: Vec::new(),
            wcs: Vec::with_capacity(64),
            events: Vec::new(),
            next_cred_tag: 0,
            closing: None,
            recv_posted: res.rq_size,
            recv_armed: false,
            send_armed: false,
            drained_send: false,
            left: false,
            res,
            id,
        })
    }

    fn run(&mut self) -> Result<(), ChannelError> {
        let mut more_cq = self.arm();
        let mut evs = vec![EpollEvent::default(); 8];
        loop {
            let timeout = match self.closing {
                Some(_) if self.recv_posted == 0 && self.drained_send => return Ok(()),
                Some(since) => {
                    let left = DRAIN_TIMEOUT.saturating_sub(since.elapsed());
                    if left.is_zero() {
                        tracing::warn!(
                            "srp: channel {}: flush not complete after {DRAIN_TIMEOUT:?}",
                            self.ctx.id
                        );
                        return Ok(());
                    }
                    i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1)
                }
                None => -1,
            };
            let timeout = if more_cq { 0 } else { timeout };
            let n = match self.epoll.wait(timeout, &mut evs) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ChannelError::Epoll(e)),
            };
            let mut cq = more_cq;
            let mut worker = false;
            for ev in &evs[..n] {
                match ev.data() {
                    KEY_CM => self.on_cm(),
                    KEY_CQ => {
                        self.take_cq_event();
                        cq = true;
                    }
                    KEY_WORKER => worker = true,
                    KEY_KILL => {
                        let _ = self.ctx.kill.read();
                        self.close("disconnected by the target");
                    }
                    _ => {}
                }
            }
            more_cq = cq && self.poll_cqs();
            self.pump_worker(worker);
            self.flush_backlog();
            more_cq |= self.arm();
        }
    }

    // ---- CM events ----

    fn on_cm(&mut self) {
        for _ in 0..16 {
            match self.res.events.get_event() {
                Ok(Some(ev)) => match ev.kind {
                    CmEventKind::Established => {
                        tracing::debug!("srp: channel {} established", self.ctx.id)
                    }
                    CmEventKind::Disconnected => self.close("initiator disconnected"),
                    CmEventKind::TimewaitExit => {}
                    other => self.close(&format!("CM event {other:?}")),
                },
                Ok(None) => return,
                Err(e) => {
                    self.close(&format!("CM events: {e}"));
                    return;
                }
            }
        }
    }

    /// Starts the end of the channel (once).
    fn close(&mut self, why: &str) {
        if self.closing.is_some() {
            return;
        }
        tracing::info!("srp: channel {} closing: {why}", self.ctx.id);
        self.closing = Some(Instant::now());
        // Moves the QP to the error state: everything posted flushes.
        let _ = self.id.disconnect();
        self.leave();
        // The receive queue is flushed when the QP enters the error state;
        // the channel counts its receives back. The send queue gets a marker
        // behind everything posted: its flush means the queue is empty (a
        // marker that cannot be posted cannot be waited for). A receive
        // marker would not do: rxe (6.1) flushes receives posted after the
        // error only when something else wakes its responder.
        let marker = SendWr {
            wr_id: wr::DRAIN_SEND,
            op: SendOp::Send,
            local_addr: 0,
            len: 0,
            lkey: 0,
            signaled: true,
        };
        if self.id.post_send(&[marker]).is_err() {
            self.drained_send = true;
        }
        self.backlog.clear();
    }

    /// Leaves the nexus; the last channel of a nexus ends it in the engine.
    fn leave(&mut self) {
        if std::mem::replace(&mut self.left, true) {
            return;
        }
        if let Some(u) = self.ctx.channels.unregister(self.ctx.id) {
            if u.last {
                self.worker.nexus_lost(&u.nexus);
            }
        }
    }

    // ---- completions ----

    /// Consumes the completion channel's notification. One per arming, and
    /// we arm each CQ at most once per round: one read (a second would only
    /// find EAGAIN; the fd is level-triggered, so one left over wakes us
    /// again). Only the CQ it names needs arming again: the other one's
    /// request still stands, and asking again would cost a system call.
    fn take_cq_event(&mut self) {
        match self.res.comp.take_cq_event() {
            Ok(Some(cq)) if cq == self.res.send_cq.id() => self.send_armed = false,
            Ok(Some(_)) => self.recv_armed = false,
            Ok(None) => {}
            Err(e) => self.close(&format!("completion channel: {e}")),
        }
    }

    /// Whether something waits for a send completion: then send completions
    /// must wake the channel. Otherwise they are reaped when receives wake it,
    /// which saves a wake-up (and its system calls) per response.
    fn need_send_events(&self) -> bool {
        self.closing.is_some()
            || self.reads_in_flight > 0
            || !self.waiting.is_empty()
            || !self.backlog.is_empty()
            || self.free_sends.len() < self.sends.len() / 2
    }

    /// Before sleeping: arms the receive CQ, and the send CQ if something
    /// waits for it, then looks once more (a completion that came before the
    /// arming raises no event). True if it found something (handled).
    fn arm(&mut self) -> bool {
        if !self.recv_armed {
            if let Err(e) = self.res.recv_cq.req_notify() {
                self.close(&format!("CQ notify: {e}"));
            }
            self.recv_armed = true;
        }
        if !self.send_armed && self.need_send_events() {
            if let Err(e) = self.res.send_cq.req_notify() {
                self.close(&format!("CQ notify: {e}"));
            }
            self.send_armed = true;
        }
        self.poll_round() > 0
    }

    /// Handles what both CQs hold; true if it stopped with more to do.
    fn poll_cqs(&mut self) -> bool {
        for _ in 0..CQ_ROUNDS {
            if self.poll_round() == 0 {
                return false;
            }
        }
        true
    }

    /// One round: up to 32 completions of each CQ, the engine's answers, and
    /// one post of what they queued. Returns the completions handled.
    fn poll_round(&mut self) -> usize {
        let mut wcs = std::mem::take(&mut self.wcs);
        wcs.clear();
        let polled = self
            .res
            .send_cq
            .poll(32, &mut wcs)
            .and_then(|_| self.res.recv_cq.poll(32, &mut wcs));
        if let Err(e) = polled {
            self.close(&format!("CQ poll: {e}"));
        }
        let n = wcs.len();
        for wc in &wcs {
            self.on_wc(wc);
        }
        self.wcs = wcs;
        self.pump_worker(false);
        self.flush_backlog();
        n
    }

    fn on_wc(&mut self, wc: &Wc) {
        let kind = wr::kind(wc.wr_id);
        let idx = wr::index(wc.wr_id);
        if kind == wr::RECV {
            self.recv_posted = self.recv_posted.saturating_sub(1);
        }
        match kind {
            wr::DRAIN_SEND => self.drained_send = true,
            // Flushes after a disconnect are expected; anything else ends
            // the channel.
            _ if !wc.ok() => self.close(&format!("work request failed: {}", wc.status_str())),
            wr::RECV if self.closing.is_none() => self.on_recv(idx, wc.byte_len),
            wr::RECV => {}
            wr::SEND => self.on_send_done(idx),
            wr::READ => self.on_read_done(idx),
            _ => {}
        }
    }

    fn on_send_done(&mut self, slot: usize) {
        let Some(s) = self.sends.get_mut(slot) else {
            return;
        };
        self.sq_free += std::mem::take(&mut s.chain);
        let ext = s.extent.take();
        if let Ok(i) = u32::try_from(slot) {
            self.free_sends.push(i);
        }
        if let Some(e) = ext {
            self.res.pool.free(e);
            self.start_waiting();
        }
    }

    fn on_read_done(&mut self, slot: usize) {
        self.reads_in_flight = self.reads_in_flight.saturating_sub(1);
        let Some(Some(c)) = self.cmds.get_mut(slot) else {
            return;
        };
        self.sq_free += std::mem::take(&mut c.read_chain);
        if self.closing.is_none() {
            self.submit(slot);
        }
    }

    // ---- requests ----

    /// The bytes of receive buffer `idx`.
    fn recv_ptr(&self, idx: usize) -> *mut u8 {
        // The index came from our own work request id, below rq_size.
        let off = idx
            .saturating_mul(self.res.recv_len)
            .min(self.res.recv.len());
        self.res.recv.ptr().wrapping_add(off)
    }

    fn repost(&mut self, idx: u32) {
        if self.closing.is_some() {
            return;
        }
        match self.res.post_recv(&self.id, idx) {
            Ok(()) => self.recv_posted += 1,
            Err(e) => self.close(&format!("repost receive: {e}")),
        }
    }

    fn on_recv(&mut self, idx: usize, byte_len: u32) {
        let Ok(idx32) = u32::try_from(idx) else {
            return;
        };
        if idx32 >= self.res.rq_size {
            return;
        }
        let len = usize::try_from(byte_len)
            .unwrap_or(usize::MAX)
            .min(self.res.recv_len);
        let base = self.recv_ptr(idx);
        // SAFETY: the receive completed, so the device is done writing buffer
        // `idx` ([base, base + recv_len) inside the ring), and it is not posted
        // again until this IU is dealt with; the slice does not outlive that
        // (it is dropped before `repost` or kept only as a RegionBuf, see
        // `on_cmd`).
        let bytes: &[u8] = unsafe { std::slice::from_raw_parts(base, len) };
        match iu::parse(bytes, &self.ctx.params) {
            Ok(Iu::Cmd(cmd)) => {
                // Where the immediate data sits in the buffer (the parser hands
                // back a part of `bytes`).
                let imm = match &cmd.data {
                    DataXfer::Immediate(d) => (d.as_ptr() as usize)
                        .checked_sub(base as usize)
                        .map(|off| (off, d.len())),
                    _ => None,
                };
                self.on_cmd(idx32, &cmd, imm);
            }
            Ok(Iu::TskMgmt(t)) => {
                self.repost(idx32);
                self.on_tm(&t);
            }
            Ok(Iu::ILogout { .. }) => {
                self.repost(idx32);
                self.close("initiator logged out");
            }
            Ok(Iu::CredRsp { .. }) | Ok(Iu::AerRsp { .. }) => {
                self.credits.on_cred_rsp();
                self.repost(idx32);
            }
            Err(e) => {
                self.repost(idx32);
                self.on_bad_iu(&e);
            }
        }
    }

    fn take_credit(&mut self) -> bool {
        match self.credits.on_request() {
            Ok(()) => true,
            Err(e) => {
                self.close(&e.to_string());
                false
            }
        }
    }

    fn alloc_cmd(&mut self, st: CmdState) -> Option<usize> {
        let Some(i) = self.free_cmds.pop() else {
            // More requests than credits can explain.
            self.close("no command slot: the initiator overran its credits");
            return None;
        };
        let i = i as usize;
        self.cmds[i] = Some(st);
        Some(i)
    }

    fn free_cmd(&mut self, slot: usize) -> Option<CmdState> {
        let st = self.cmds.get_mut(slot)?.take()?;
        if let Ok(i) = u32::try_from(slot) {
            self.free_cmds.push(i);
        }
        Some(st)
    }

    fn on_cmd(&mut self, idx: u32, cmd: &iu::Cmd<'_>, imm: Option<(usize, usize)>) {
        if !self.take_credit() {
            return;
        }
        let prep = match exec::prepare(cmd) {
            Ok(p) => p,
            Err(sense) => {
                self.repost(idx);
                self.respond_check(cmd.tag, &sense);
                return;
            }
        };
        let mut st = CmdState {
            tag: cmd.tag,
            recv: None,
            dir: prep.dir,
            prepared: Some(prep),
            remote: SmallVec::new(),
            extent: None,
            read_chain: 0,
        };
        match &cmd.data {
            DataXfer::Immediate(_) => {
                let (off, len) = imm.unwrap_or((0, 0));
                st.recv = Some(idx);
                let Some(slot) = self.alloc_cmd(st) else {
                    return;
                };
                let ptr = self.recv_ptr(idx as usize).wrapping_add(off);
                // SAFETY: [ptr, ptr + len) is the immediate data inside receive
                // buffer `idx` (the parser bounded it by the IU), which stays
                // unposted until this command is done (`recv` above).
                let buf = unsafe { RegionBuf::new(ptr, len) };
                self.submit_with(slot, Box::new(buf));
            }
            DataXfer::None => {
                self.repost(idx);
                if let Some(slot) = self.alloc_cmd(st) {
                    self.submit_with(slot, Box::new(VecBuf::default()));
                }
            }
            DataXfer::Out(b) | DataXfer::In(b) => {
                self.repost(idx);
                let total = usize::try_from(b.total_len).unwrap_or(usize::MAX);
                let wrs = b.bufs.iter().filter(|r| r.len > 0).count();
                if b.total_len > self.ctx.max_transfer
                    || total > self.res.pool.capacity()
                    || wrs.saturating_add(1) > self.res.sq_size.saturating_sub(1) as usize
                {
                    let sense = Sense::new(
                        SenseKey::IllegalRequest,
                        exec::INVALID_FIELD_IN_INFORMATION_UNIT,
                    );
                    self.respond_check(cmd.tag, &sense);
                    return;
                }
                st.remote = b.bufs.clone();
                let Some(slot) = self.alloc_cmd(st) else {
                    return;
                };
                if total == 0 {
                    self.submit_with(slot, Box::new(VecBuf::default()));
                    return;
                }
                if let Ok(s) = u32::try_from(slot) {
                    self.waiting.push_back(s);
                }
                self.start_waiting();
            }
        }
    }

    /// Gives runs of the data region to waiting commands, in order.
    fn start_waiting(&mut self) {
        while let Some(&slot) = self.waiting.front() {
            let slot = slot as usize;
            let Some(Some(c)) = self.cmds.get(slot) else {
                self.waiting.pop_front();
                continue;
            };
            let len = c.prepared.map_or(0, |p| p.len);
            let Some(ext) = self
                .res
                .pool
                .alloc(usize::try_from(len).unwrap_or(usize::MAX))
            else {
                return;
            };
            self.waiting.pop_front();
            let dir = c.dir;
            if let Some(Some(c)) = self.cmds.get_mut(slot) {
                c.extent = Some(ext);
            }
            if dir == DataDir::ToDevice {
                self.post_reads(slot, ext);
            } else {
                self.submit(slot);
            }
        }
    }

    /// Fetches a write's data: one RDMA READ per remote buffer into the run.
    fn post_reads(&mut self, slot: usize, ext: Extent) {
        let Some(Some(c)) = self.cmds.get(slot) else {
            return;
        };
        let mut chain = Chain::new();
        let mut off = ext.offset;
        for r in c.remote.iter().filter(|r| r.len > 0) {
            chain.push(SendWr {
                wr_id: wr::READ | slot as u64,
                op: SendOp::RdmaRead(RemoteAddr {
                    addr: r.va,
                    rkey: r.rkey,
                }),
                local_addr: self.res.data.addr(off),
                len: r.len,
                lkey: self.res.data.lkey(),
                signaled: false,
            });
            off = off.saturating_add(r.len as usize);
        }
        let Some(last) = chain.last_mut() else {
            self.submit(slot);
            return;
        };
        last.signaled = true;
        let n = u32::try_from(chain.len()).unwrap_or(u32::MAX);
        if let Some(Some(c)) = self.cmds.get_mut(slot) {
            c.read_chain = n;
        }
        self.reads_in_flight = self.reads_in_flight.saturating_add(1);
        self.queue_chain(chain);
    }

    /// Hands a command whose data is in place (its run, or none) to the engine.
    fn submit(&mut self, slot: usize) {
        let Some(Some(c)) = self.cmds.get(slot) else {
            return;
        };
        let buf: Box<dyn engine::DataBuf> = match c.extent {
            Some(ext) => {
                let ptr = self.res.data.ptr().wrapping_add(ext.offset);
                // SAFETY: the run [offset, offset + len) lies in the data region
                // (the pool hands out only runs inside it) and belongs to this
                // command alone until its response's SEND completes; its READs
                // (if any) have completed.
                Box::new(unsafe { RegionBuf::new(ptr, ext.len) })
            }
            None => Box::new(VecBuf::default()),
        };
        self.submit_with(slot, buf);
    }

    fn submit_with(&mut self, slot: usize, buf: Box<dyn engine::DataBuf>) {
        let Some(Some(c)) = self.cmds.get_mut(slot) else {
            return;
        };
        let Some(prep) = c.prepared.take() else {
            return;
        };
        let cmd = prep.into_scsi_cmd(slot as u64, buf);
        self.worker.submit(&self.ctx.nexus, cmd);
    }

    fn on_tm(&mut self, t: &TskMgmt) {
        if !self.take_credit() {
            return;
        }
        let st = CmdState {
            tag: t.tag,
            recv: None,
            dir: DataDir::None,
            prepared: None,
            remote: SmallVec::new(),
            extent: None,
            read_chain: 0,
        };
        let Some(slot) = self.alloc_cmd(st) else {
            return;
        };
        match exec::tmf_request(t, &self.ctx.nexus, slot as u64) {
            Ok(req) => self.worker.task_mgmt(req),
            Err(code) => {
                self.free_cmd(slot);
                self.respond_tm(t.tag, code);
            }
        }
    }

    fn on_bad_iu(&mut self, e: &IuError) {
        tracing::info!("srp: channel {}: {e}", self.ctx.id);
        let op = e.opcode;
        if op != Some(opcode::CMD) && op != Some(opcode::TSK_MGMT) {
            // Not a request that holds a credit (or not one at all).
            return;
        }
        if !self.take_credit() {
            return;
        }
        match (e.tag, op) {
            (Some(tag), Some(opcode::TSK_MGMT)) => {
                self.respond_tm(tag, tm_rsp_code::INVALID_FIELDS)
            }
            (Some(tag), _) => self.respond_check(tag, &exec::iu_error_sense(e)),
            (None, _) => {
                self.credits.on_dropped();
                self.cred_req();
            }
        }
    }

    // ---- engine ----

    fn pump_worker(&mut self, signalled: bool) {
        let mut events = std::mem::take(&mut self.events);
        if signalled {
            self.worker.poll(&mut events);
        } else {
            self.worker.poll_more(&mut events);
        }
        for ev in events.drain(..) {
            match ev {
                Event::Cmd(c) => self.on_done(c),
                Event::Tmf { token, response } => {
                    let slot = usize::try_from(token).unwrap_or(usize::MAX);
                    if let Some(st) = self.free_cmd(slot) {
                        self.respond_tm(st.tag, exec::tmf_rsp_code(response));
                    }
                }
            }
        }
        self.events = events;
    }

    fn on_done(&mut self, c: engine::Completed) {
        let slot = usize::try_from(c.token).unwrap_or(usize::MAX);
        drop(c.data);
        let Some(st) = self.free_cmd(slot) else {
            return;
        };
        if let Some(r) = st.recv {
            self.repost(r);
        }
        let Some(resp) = c.response else {
            // Aborted by task management or nexus loss: no response, but the
            // credit goes back with the next one.
            self.ctx.stats.aborted.fetch_add(1, Relaxed);
            if let Some(e) = st.extent {
                self.res.pool.free(e);
                self.start_waiting();
            }
            self.credits.on_dropped();
            self.cred_req();
            return;
        };
        let stats = &self.ctx.stats;
        stats.commands.fetch_add(1, Relaxed);
        if resp.status != engine::ScsiStatus::Good {
            stats.errors.fetch_add(1, Relaxed);
        }
        stats.bytes.fetch_add(u64::from(resp.transferred), Relaxed);
        let mut chain = Chain::new();
        if st.dir == DataDir::FromDevice {
            if let Some(ext) = st.extent {
                let mut left = resp
                    .transferred
                    .min(u32::try_from(ext.len).unwrap_or(u32::MAX));
                let mut off = ext.offset;
                for r in st.remote.iter() {
                    if left == 0 {
                        break;
                    }
                    let n = r.len.min(left);
                    if n == 0 {
                        continue;
                    }
                    chain.push(SendWr {
                        wr_id: wr::SEND,
                        op: SendOp::RdmaWrite(RemoteAddr {
                            addr: r.va,
                            rkey: r.rkey,
                        }),
                        local_addr: self.res.data.addr(off),
                        len: n,
                        lkey: self.res.data.lkey(),
                        signaled: false,
                    });
                    off = off.saturating_add(n as usize);
                    left -= n;
                }
            }
        }
        let delta = self.credits.on_response();
        let rsp = exec::rsp_for(st.tag, delta, st.dir, &resp);
        self.send_iu(chain, st.extent, |out, max| encode_rsp(&rsp, max, out));
    }

    // ---- responses ----

    fn respond_check(&mut self, tag: Tag, sense: &Sense) {
        self.ctx.stats.errors.fetch_add(1, Relaxed);
        let bytes = exec::sense_bytes(sense);
        let delta = self.credits.on_response();
        let rsp = exec::check_condition(tag, delta, &bytes);
        self.send_iu(Chain::new(), None, |out, max| encode_rsp(&rsp, max, out));
    }

    fn respond_tm(&mut self, tag: Tag, code: u8) {
        let delta = self.credits.on_response();
        self.send_iu(Chain::new(), None, |out, _| {
            encode_tm_rsp(tag, delta, code, out)
        });
    }

    /// Returns credits of aborted commands when no response would carry them.
    fn cred_req(&mut self) {
        if self.closing.is_some() {
            return;
        }
        let Some(delta) = self.credits.cred_req() else {
            return;
        };
        self.next_cred_tag += 1;
        let req = CredReq {
            sol_not: 0,
            req_lim_delta: delta,
            tag: (self.next_cred_tag | 1 << 63).to_be_bytes(),
        };
        let iu = req.encode();
        self.send_iu(Chain::new(), None, |out, _| {
            // A send slot (512 bytes) always holds the 16-byte IU.
            let n = iu.len().min(out.len());
            out[..n].copy_from_slice(&iu[..n]);
            Ok(n)
        });
    }

    /// Encodes an IU into a send buffer and posts `chain` (RDMA WRITEs) with
    /// the SEND of that IU at its end, the only signalled request.
    fn send_iu(
        &mut self,
        mut chain: Chain,
        extent: Option<Extent>,
        encode: impl FnOnce(&mut [u8], u32) -> Result<usize, IuError>,
    ) {
        if self.closing.is_some() {
            if let Some(e) = extent {
                self.res.pool.free(e);
            }
            return;
        }
        let Some(slot) = self.free_sends.pop() else {
            self.close("no send buffer: more responses than credits");
            return;
        };
        let s = slot as usize;
        let off = s.saturating_mul(SEND_SLOT);
        let max = self
            .ctx
            .params
            .max_ti_iu_len
            .min(u32::try_from(SEND_SLOT).unwrap_or(u32::MAX));
        let ptr = self.res.send.ptr().wrapping_add(off);
        // SAFETY: send slot `s` lies in the send region (slots × SEND_SLOT
        // bytes) and is free: no SEND naming it is posted until this one.
        let out = unsafe { std::slice::from_raw_parts_mut(ptr, SEND_SLOT) };
        let len = match encode(out, max) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!("srp: channel {}: encoding a response: {e}", self.ctx.id);
                self.free_sends.push(slot);
                return;
            }
        };
        chain.push(SendWr {
            wr_id: wr::SEND | s as u64,
            op: SendOp::Send,
            local_addr: self.res.send.addr(off),
            len: u32::try_from(len).unwrap_or(0),
            lkey: self.res.send.lkey(),
            signaled: true,
        });
        self.sends[s] = SendSlot {
            chain: u32::try_from(chain.len()).unwrap_or(u32::MAX),
            extent,
        };
        self.queue_chain(chain);
    }

    /// Queues a chain; `flush_backlog` posts it (with whatever else is ready)
    /// at the end of the current batch of completions.
    fn queue_chain(&mut self, chain: Chain) {
        if self.closing.is_some() {
            return;
        }
        self.backlog.push_back(chain);
    }

    /// Posts the queued chains that fit the send queue, in order, with one
    /// `ibv_post_send` (one doorbell for a batch of responses and READs).
    fn flush_backlog(&mut self) {
        if self.closing.is_some() {
            self.backlog.clear();
            return;
        }
        let mut batch = std::mem::take(&mut self.batch);
        batch.clear();
        while let Some(c) = self.backlog.front() {
            let n = u32::try_from(c.len()).unwrap_or(u32::MAX);
            if n > self.sq_free {
                break;
            }
            self.sq_free -= n;
            if let Some(c) = self.backlog.pop_front() {
                batch.extend_from_slice(&c);
            }
        }
        if !batch.is_empty() {
            if let Err(e) = self.id.post_send(&batch) {
                self.close(&format!("post send: {e}"));
            }
        }
        self.batch = batch;
    }
}
