//! The per-thread core of the device: turns descriptor chains of the request and
//! control queues into engine commands and task management functions on this
//! thread's [`Worker`], and turns what the worker hands back into responses written
//! to guest memory and used-ring entries. It holds no vring: the caller pops chains
//! and pushes the [`UsedEntry`]s, so the same code runs under vhost-user-backend
//! and under virtio-queue's mock driver in the tests.

use std::ops::Deref;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::tmf::TmfFunction;
use engine::worker::WorkerError;
use engine::{Cdb, DataDir, Event, LunRegistry, Nexus, ScsiCmd, TmfRequest, TmfResponse, Worker};
use virtio_bindings::virtio_scsi as vs;
use virtio_queue::DescriptorChain;

use crate::request::{
    parse_cmd, parse_ctrl, scatter, walk, CmdRequest, GuestBuf, GuestMem, GuestRange, Ranges,
    Rejected, RequestError,
};
use crate::wire::{self, CmdResp, CtrlReq, LunAddr, VirtioResponse};

/// The only target of a controller (the LUN field's byte 1).
pub const TARGET: u8 = 0;

/// A descriptor chain to return to the guest: queue (index in the device), head
/// descriptor, bytes written to device-writable memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsedEntry {
    pub queue: u16,
    pub head: u16,
    pub len: u32,
}

enum Kind {
    Cmd { resp: Ranges, data_in: bool },
    Tmf { resp: Ranges },
}

/// A command or TMF handed to the worker, waiting for its completion.
struct Pending {
    queue: u16,
    head: u16,
    mem: Arc<GuestMem>,
    kind: Kind,
}

/// The chains with the worker, by token: a slab whose token is the slot index and
/// a generation (a stale token finds nothing), so tracking a command costs no
/// hashing and, once the table has grown to the queue depth, no allocation.
#[derive(Default)]
struct PendingTable {
    slots: Vec<(u32, Option<Pending>)>,
    free: Vec<u32>,
    len: usize,
}

impl PendingTable {
    fn insert(&mut self, p: Pending) -> u64 {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push((0, None));
                // More slots than u32 indexes would need 2^32 chains in flight.
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        let Some(slot) = self.slots.get_mut(index as usize) else {
            return u64::MAX;
        };
        slot.1 = Some(p);
        self.len += 1;
        (u64::from(slot.0) << 32) | u64::from(index)
    }

    fn remove(&mut self, token: u64) -> Option<Pending> {
        let index = u32::try_from(token & 0xffff_ffff).ok()?;
        let gen = u32::try_from(token >> 32).ok()?;
        let slot = self.slots.get_mut(index as usize)?;
        if slot.0 != gen {
            return None;
        }
        let p = slot.1.take()?;
        slot.0 = slot.0.wrapping_add(1);
        self.free.push(index);
        self.len -= 1;
        Some(p)
    }

    fn clear(&mut self) {
        self.slots.clear();
        self.free.clear();
        self.len = 0;
    }
}

/// Chains in flight per device queue, shared with whoever must wait for a queue
/// to drain (GET_VRING_BASE). Each queue is counted by the one thread that
/// serves it.
pub type SharedCounts = Arc<[AtomicUsize]>;

/// Counters and the last refusal, for logs and tests.
#[derive(Debug, Default)]
pub struct QueueStats {
    pub commands: u64,
    pub tmfs: u64,
    pub rejected: u64,
    pub bad_target: u64,
    pub last_error: Option<RequestError>,
}

/// One thread's request/control processing.
pub struct ScsiQueues {
    worker: Worker,
    nexus: Arc<Nexus>,
    pending: PendingTable,
    /// Chains in `pending` per queue.
    per_queue: Vec<usize>,
    /// Where `per_queue` is published, if anyone waits on it.
    shared: Option<SharedCounts>,
    events: Vec<Event>,
    pub stats: QueueStats,
}

impl ScsiQueues {
    pub fn new(registry: Arc<LunRegistry>, nexus: Arc<Nexus>) -> Result<Self, WorkerError> {
        Ok(ScsiQueues {
            worker: Worker::new(registry)?,
            nexus,
            pending: PendingTable::default(),
            per_queue: Vec::new(),
            shared: None,
            events: Vec::new(),
            stats: QueueStats::default(),
        })
    }

    /// Publishes the per-queue counts of chains in flight into `counts` (index:
    /// device queue) as they change.
    pub fn with_counts(mut self, counts: SharedCounts) -> Self {
        self.shared = Some(counts);
        self
    }

    fn publish(&self, q: usize) {
        if let (Some(shared), Some(&n)) = (&self.shared, self.per_queue.get(q)) {
            if let Some(c) = shared.get(q) {
                c.store(n, Ordering::SeqCst);
            }
        }
    }

    /// The worker's eventfd: readable when [`ScsiQueues::poll`] has work.
    pub fn notify_fd(&self) -> RawFd {
        self.worker.notify_fd()
    }

    /// Chains taken from the guest and not yet returned.
    pub fn in_flight(&self) -> usize {
        self.pending.len
    }

    /// Chains of `queue` taken and not yet returned.
    pub fn in_flight_on(&self, queue: u16) -> usize {
        self.per_queue.get(usize::from(queue)).copied().unwrap_or(0)
    }

    /// Tracks a chain handed to the worker; returns its token.
    fn track(&mut self, p: Pending) -> u64 {
        let q = usize::from(p.queue);
        if self.per_queue.len() <= q {
            self.per_queue.resize(q + 1, 0);
        }
        self.per_queue[q] += 1;
        self.publish(q);
        self.pending.insert(p)
    }

    fn untrack(&mut self, token: u64) -> Option<Pending> {
        let p = self.pending.remove(token)?;
        if let Some(n) = self.per_queue.get_mut(usize::from(p.queue)) {
            *n = n.saturating_sub(1);
        }
        self.publish(usize::from(p.queue));
        Some(p)
    }

    pub fn nexus(&self) -> &Arc<Nexus> {
        &self.nexus
    }

    /// Handles one chain of request queue `queue`. Answers at once what needs no
    /// engine (refusals, unknown targets) into `used`.
    pub fn request<M>(
        &mut self,
        queue: u16,
        chain: DescriptorChain<M>,
        mem: &Arc<GuestMem>,
        used: &mut Vec<UsedEntry>,
    ) where
        M: Deref<Target = GuestMem>,
    {
        let head = chain.head_index();
        let parsed = walk(chain.map(|d| (d.addr(), d.len(), d.is_write_only())))
            .map_err(|error| Rejected { resp: None, error })
            .and_then(|c| parse_cmd(c, mem));
        match parsed {
            Ok(cmd) => self.submit_cmd(queue, head, mem, cmd, used),
            Err(r) => self.reject(queue, head, mem, r, used),
        }
    }

    fn reject(
        &mut self,
        queue: u16,
        head: u16,
        mem: &GuestMem,
        r: Rejected,
        used: &mut Vec<UsedEntry>,
    ) {
        self.stats.rejected += 1;
        self.stats.last_error = Some(r.error);
        let len = match r.resp {
            Some(resp) => answer(mem, &resp, &CmdResp::transport(VirtioResponse::Failure)),
            None => 0,
        };
        used.push(UsedEntry { queue, head, len });
    }

    fn submit_cmd(
        &mut self,
        queue: u16,
        head: u16,
        mem: &Arc<GuestMem>,
        cmd: CmdRequest,
        used: &mut Vec<UsedEntry>,
    ) {
        let lun = match cmd.req.lun {
            LunAddr::Lun { target, lun } if target == TARGET => lun,
            _ => {
                self.stats.bad_target += 1;
                let len = answer(
                    mem,
                    &cmd.resp,
                    &CmdResp::transport(VirtioResponse::BadTarget),
                );
                used.push(UsedEntry { queue, head, len });
                return;
            }
        };
        let (dir, ranges) = if !cmd.data_out.is_empty() {
            (DataDir::ToDevice, &cmd.data_out)
        } else if !cmd.data_in.is_empty() {
            (DataDir::FromDevice, &cmd.data_in)
        } else {
            (DataDir::None, &cmd.data_in)
        };
        let buf = match GuestBuf::new(mem.clone(), ranges) {
            Ok(b) => b,
            Err(error) => {
                let resp = Some(cmd.resp);
                return self.reject(queue, head, mem, Rejected { resp, error }, used);
            }
        };
        // CmdReq::cdb_len is between 6 and 32, so the CDB is never refused.
        let Some(cdb) = Cdb::new(&cmd.req.cdb[..cmd.req.cdb_len()]) else {
            return self.reject(
                queue,
                head,
                mem,
                Rejected {
                    resp: Some(cmd.resp),
                    error: RequestError::HeaderTooShort {
                        have: 0,
                        need: wire::CMD_REQ_LEN,
                    },
                },
                used,
            );
        };
        let token = self.track(Pending {
            queue,
            head,
            mem: mem.clone(),
            kind: Kind::Cmd {
                resp: cmd.resp,
                data_in: dir == DataDir::FromDevice,
            },
        });
        self.stats.commands += 1;
        let nexus = self.nexus.clone();
        self.worker.submit(
            &nexus,
            ScsiCmd {
                lun,
                cdb,
                tag: cmd.req.tag,
                attr: cmd.req.attr,
                dir,
                token,
                data: Box::new(buf),
            },
        );
    }

    /// Handles one chain of the control queue `queue`.
    pub fn control<M>(
        &mut self,
        queue: u16,
        chain: DescriptorChain<M>,
        mem: &Arc<GuestMem>,
        used: &mut Vec<UsedEntry>,
    ) where
        M: Deref<Target = GuestMem>,
    {
        let head = chain.head_index();
        let parsed = walk(chain.map(|d| (d.addr(), d.len(), d.is_write_only())))
            .map_err(|error| Rejected { resp: None, error })
            .and_then(|c| parse_ctrl(c, mem));
        let ctrl = match parsed {
            Ok(c) => c,
            Err(r) => {
                self.stats.rejected += 1;
                self.stats.last_error = Some(r.error);
                used.push(UsedEntry {
                    queue,
                    head,
                    len: 0,
                });
                return;
            }
        };
        let tmf_answer = |r: VirtioResponse| [r as u8];
        match ctrl.req {
            CtrlReq::An { .. } => {
                // No asynchronous events are supported: none reported, none subscribed.
                let b = wire::encode_an_resp(0, VirtioResponse::Ok);
                let len = scatter(mem, &ctrl.resp, &b);
                used.push(UsedEntry {
                    queue,
                    head,
                    len: len as u32,
                });
            }
            CtrlReq::Tmf { subtype, lun, tag } => {
                let immediate = |r| {
                    let len = scatter(mem, &ctrl.resp, &tmf_answer(r));
                    UsedEntry {
                        queue,
                        head,
                        len: len as u32,
                    }
                };
                let lun = match lun {
                    LunAddr::Lun { target, lun } if target == TARGET => lun,
                    _ => {
                        self.stats.bad_target += 1;
                        used.push(immediate(VirtioResponse::BadTarget));
                        return;
                    }
                };
                let Some(function) = tmf_function(subtype, tag) else {
                    used.push(immediate(VirtioResponse::FunctionRejected));
                    return;
                };
                let token = self.track(Pending {
                    queue,
                    head,
                    mem: mem.clone(),
                    kind: Kind::Tmf { resp: ctrl.resp },
                });
                self.stats.tmfs += 1;
                self.worker.task_mgmt(TmfRequest {
                    nexus: self.nexus.clone(),
                    lun,
                    function,
                    token,
                });
            }
        }
    }

    /// Collects what the worker finished, writes the responses and appends the used
    /// entries. Never blocks. Call it when the worker's eventfd fired (it consumes
    /// the signal); after submissions, [`ScsiQueues::poll_more`].
    pub fn poll(&mut self, used: &mut Vec<UsedEntry>) {
        self.worker.poll(&mut self.events);
        self.complete(used);
    }

    /// [`ScsiQueues::poll`] without reading the worker's eventfd: for a wake-up that
    /// was not that eventfd (a kick), where a read would be a system call that
    /// finds nothing (inline and page-cache completions are not signalled). A
    /// signal that did arrive stays for the next wait, which polls again.
    pub fn poll_more(&mut self, used: &mut Vec<UsedEntry>) {
        self.worker.poll_more(&mut self.events);
        self.complete(used);
    }

    fn complete(&mut self, used: &mut Vec<UsedEntry>) {
        // Drained, not consumed: the vector keeps its capacity for the next poll.
        let mut events = std::mem::take(&mut self.events);
        for ev in events.drain(..) {
            let (token, done) = match ev {
                Event::Cmd(c) => (c.token, Done::Cmd(c)),
                Event::Tmf { token, response } => (token, Done::Tmf(response)),
            };
            let Some(p) = self.untrack(token) else {
                continue;
            };
            let len = match (done, p.kind) {
                (Done::Cmd(c), Kind::Cmd { resp, data_in }) => {
                    let have = u32::try_from(c.data.len()).unwrap_or(u32::MAX);
                    let (r, moved) = match &c.response {
                        // Aborted by a task management function: the chain still
                        // goes back to the guest, marked aborted.
                        None => (CmdResp::transport(VirtioResponse::Aborted), 0),
                        Some(r) => (
                            CmdResp {
                                sense: r.sense.as_deref().unwrap_or(&[]),
                                resid: have.saturating_sub(r.transferred),
                                status: r.status as u8,
                                response: VirtioResponse::Ok,
                            },
                            r.transferred.min(have),
                        ),
                    };
                    let written = answer(&p.mem, &resp, &r);
                    if data_in && written > 0 {
                        written.saturating_add(moved)
                    } else {
                        written
                    }
                }
                (Done::Tmf(t), Kind::Tmf { resp }) => {
                    scatter(&p.mem, &resp, &[tmf_response(t) as u8]) as u32
                }
                // A token names one kind; a mismatch cannot happen, but the chain
                // must still go back.
                _ => 0,
            };
            used.push(UsedEntry {
                queue: p.queue,
                head: p.head,
                len,
            });
        }
        self.events = events;
    }

    /// The connection is gone: the engine learns of the nexus loss, and what is in
    /// flight is drained (up to `timeout`) so that no I/O outlives the daemon's view
    /// of it. Nothing is written to guest memory any more.
    pub fn shutdown(&mut self, timeout: Duration) {
        let nexus = self.nexus.clone();
        self.worker.nexus_lost(&nexus);
        let deadline = Instant::now() + timeout;
        let mut sink = Vec::new();
        while self.worker.in_flight() > 0 && Instant::now() < deadline {
            self.worker.wait(20, &mut sink);
            sink.clear();
        }
        self.pending.clear();
        for n in &mut self.per_queue {
            *n = 0;
        }
        for q in 0..self.per_queue.len() {
            self.publish(q);
        }
        self.per_queue.clear();
    }
}

enum Done {
    Cmd(engine::Completed),
    Tmf(TmfResponse),
}

/// Writes a command response; returns the bytes written.
fn answer(mem: &GuestMem, resp: &[GuestRange], r: &CmdResp<'_>) -> u32 {
    scatter(mem, resp, &r.encode()) as u32
}

/// The engine function of a virtio TMF subtype.
pub fn tmf_function(subtype: u32, tag: u64) -> Option<TmfFunction> {
    Some(match subtype {
        vs::VIRTIO_SCSI_T_TMF_ABORT_TASK => TmfFunction::AbortTask { tag },
        vs::VIRTIO_SCSI_T_TMF_ABORT_TASK_SET => TmfFunction::AbortTaskSet,
        vs::VIRTIO_SCSI_T_TMF_CLEAR_ACA => TmfFunction::ClearAca,
        vs::VIRTIO_SCSI_T_TMF_CLEAR_TASK_SET => TmfFunction::ClearTaskSet,
        vs::VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET => TmfFunction::ItNexusReset,
        vs::VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET => TmfFunction::LogicalUnitReset,
        vs::VIRTIO_SCSI_T_TMF_QUERY_TASK => TmfFunction::QueryTask { tag },
        vs::VIRTIO_SCSI_T_TMF_QUERY_TASK_SET => TmfFunction::QueryTaskSet,
        _ => return None,
    })
}

/// The virtio response of an engine TMF response. A task that is not there is
/// aborted as far as the initiator can tell: FUNCTION COMPLETE (SAM-5 7.2).
pub fn tmf_response(r: TmfResponse) -> VirtioResponse {
    match r {
        TmfResponse::FunctionComplete | TmfResponse::TaskNotFound => VirtioResponse::Ok,
        TmfResponse::FunctionSucceeded { .. } => VirtioResponse::FunctionSucceeded,
        TmfResponse::FunctionRejected => VirtioResponse::FunctionRejected,
        TmfResponse::IncorrectLun => VirtioResponse::IncorrectLun,
    }
}
