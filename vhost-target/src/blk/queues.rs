//! The per-thread core of the blk device: turns descriptor chains into engine
//! commands on this thread's [`Worker`] (the LUN is LUN 0 of the controller's
//! nexus) and what the worker hands back into status bytes and used-ring entries.
//! Like [`crate::queues::ScsiQueues`] it holds no vring, so the same code runs
//! under vhost-user-backend and under virtio-queue's mock driver in the tests.

use std::collections::HashMap;
use std::ops::Deref;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::worker::WorkerError;
use engine::{
    Cdb, DataBuf, DataDir, Event, LunRegistry, Nexus, ScsiCmd, ScsiStatus, SenseKey, TaskAttr,
};
use engine::{VecBuf, Worker};
use virtio_queue::DescriptorChain;

use crate::queues::UsedEntry;
use crate::request::{scatter, walk, GuestBuf, GuestMem, GuestRange};

use super::device::BlkDevice;
use super::request::{id_bytes, parse, plan, write_status, BlkError, Plan, PlanData, Rejected};
use super::wire;

/// The LUN number of the device's LUN in its nexus.
pub const BLK_LUN: u64 = 0;

struct Pending {
    queue: u16,
    head: u16,
    mem: Arc<GuestMem>,
    status: GuestRange,
    data_in: bool,
    cdb: Cdb,
    dir: DataDir,
    /// Unit attentions reported on it so far (see `poll`).
    attentions: u8,
}

/// Unit attentions one request may meet before it fails: virtio-blk has no way
/// to report one (a capacity change reaches the driver as a config change), so a
/// command that reports one is submitted again.
const MAX_ATTENTIONS: u8 = 4;

/// Counters and the last refusal, for logs and tests.
#[derive(Debug, Default)]
pub struct BlkStats {
    pub commands: u64,
    pub rejected: u64,
    pub unsupported: u64,
    pub failed: u64,
    pub last_error: Option<BlkError>,
}

/// One thread's request processing.
pub struct BlkQueues {
    worker: Worker,
    nexus: Arc<Nexus>,
    device: Arc<BlkDevice>,
    pending: HashMap<u64, Pending>,
    per_queue: Vec<usize>,
    next_token: u64,
    events: Vec<Event>,
    pub stats: BlkStats,
}

impl BlkQueues {
    pub fn new(
        registry: Arc<LunRegistry>,
        nexus: Arc<Nexus>,
        device: Arc<BlkDevice>,
    ) -> Result<Self, WorkerError> {
        Ok(BlkQueues {
            worker: Worker::new(registry)?,
            nexus,
            device,
            pending: HashMap::new(),
            per_queue: Vec::new(),
            next_token: 1,
            events: Vec::new(),
            stats: BlkStats::default(),
        })
    }

    /// The worker's eventfd: readable when [`BlkQueues::poll`] has work.
    pub fn notify_fd(&self) -> RawFd {
        self.worker.notify_fd()
    }

    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    pub fn in_flight_on(&self, queue: u16) -> usize {
        self.per_queue.get(usize::from(queue)).copied().unwrap_or(0)
    }

    /// Handles one chain of request queue `queue`; what needs no engine (refusals,
    /// GET_ID, unsupported types) is answered at once into `used`.
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
            .map_err(|e| Rejected {
                status: None,
                error: e.into(),
            })
            .and_then(|c| parse(c, mem));
        let req = match parsed {
            Ok(r) => r,
            Err(r) => return self.reject(queue, head, mem, r, used),
        };
        let geo = self.device.geometry();
        let planned = plan(&req, mem, &geo).map_err(|error| Rejected {
            status: Some(req.status),
            error,
        });
        let (cdb, data, data_in) = match planned {
            Err(r) => return self.reject(queue, head, mem, r, used),
            Ok(Plan::Answer(s)) => {
                self.stats.unsupported += 1;
                return self.answer(queue, head, mem, req.status, s, 0, used);
            }
            Ok(Plan::GetId) => {
                let id = id_bytes(&self.device.lun().config.serial);
                let n = scatter(mem, &req.data_in, &id);
                let n = u32::try_from(n).unwrap_or(0);
                return self.answer(queue, head, mem, req.status, wire::S_OK, n, used);
            }
            Ok(Plan::Scsi { cdb, data, data_in }) => (cdb, data, data_in),
        };
        let (dir, buf): (DataDir, Box<dyn DataBuf>) = match data {
            PlanData::None => (DataDir::None, Box::new(VecBuf::default())),
            PlanData::Bytes(b) => (DataDir::ToDevice, Box::new(VecBuf(b))),
            PlanData::Guest(ranges) => match GuestBuf::new(mem.clone(), &ranges) {
                Ok(b) if b.is_empty() => (DataDir::None, Box::new(b)),
                Ok(b) if data_in => (DataDir::FromDevice, Box::new(b)),
                Ok(b) => (DataDir::ToDevice, Box::new(b)),
                Err(e) => {
                    let r = Rejected {
                        status: Some(req.status),
                        error: e.into(),
                    };
                    return self.reject(queue, head, mem, r, used);
                }
            },
        };
        let Some(cdb) = Cdb::new(&cdb) else {
            // The plans make 10- and 16-byte CDBs only.
            return self.answer(queue, head, mem, req.status, wire::S_IOERR, 0, used);
        };
        let token = self.next_token;
        self.next_token = self.next_token.wrapping_add(1);
        let q = usize::from(queue);
        if self.per_queue.len() <= q {
            self.per_queue.resize(q + 1, 0);
        }
        self.per_queue[q] += 1;
        self.pending.insert(
            token,
            Pending {
                queue,
                head,
                mem: mem.clone(),
                status: req.status,
                data_in,
                cdb,
                dir,
                attentions: 0,
            },
        );
        self.stats.commands += 1;
        let nexus = self.nexus.clone();
        self.worker.submit(
            &nexus,
            ScsiCmd {
                lun: BLK_LUN,
                cdb,
                tag: token,
                attr: TaskAttr::Simple,
                dir,
                token,
                data: buf,
            },
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn answer(
        &mut self,
        queue: u16,
        head: u16,
        mem: &GuestMem,
        status: GuestRange,
        value: u8,
        data: u32,
        used: &mut Vec<UsedEntry>,
    ) {
        let len = if write_status(mem, status, value) {
            data.saturating_add(1)
        } else {
            0
        };
        used.push(UsedEntry { queue, head, len });
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
        match r.status {
            Some(s) => self.answer(queue, head, mem, s, wire::S_IOERR, 0, used),
            None => used.push(UsedEntry {
                queue,
                head,
                len: 0,
            }),
        }
    }

    /// Collects what the worker finished, writes the status bytes and appends the
    /// used entries. Never blocks.
    pub fn poll(&mut self, used: &mut Vec<UsedEntry>) {
        self.worker.poll(&mut self.events);
        // Bounded: each request is submitted again at most MAX_ATTENTIONS times.
        loop {
            let again = self.complete(used);
            if !again {
                break;
            }
            self.worker.poll_more(&mut self.events);
        }
    }

    /// Handles the events collected; true if commands were submitted again.
    fn complete(&mut self, used: &mut Vec<UsedEntry>) -> bool {
        let mut again = false;
        let events = std::mem::take(&mut self.events);
        for ev in events {
            let Event::Cmd(c) = ev else { continue };
            let Some(mut p) = self.pending.remove(&c.token) else {
                continue;
            };
            let attention = c.response.as_ref().is_some_and(|r| {
                r.status == ScsiStatus::CheckCondition
                    && r.sense_data
                        .as_ref()
                        .is_some_and(|s| s.key == SenseKey::UnitAttention)
            });
            if attention && p.attentions < MAX_ATTENTIONS {
                p.attentions += 1;
                let cmd = ScsiCmd {
                    lun: BLK_LUN,
                    cdb: p.cdb,
                    tag: c.token,
                    attr: TaskAttr::Simple,
                    dir: p.dir,
                    token: c.token,
                    data: c.data,
                };
                self.pending.insert(c.token, p);
                let nexus = self.nexus.clone();
                self.worker.submit(&nexus, cmd);
                again = true;
                continue;
            }
            if let Some(n) = self.per_queue.get_mut(usize::from(p.queue)) {
                *n = n.saturating_sub(1);
            }
            let (value, moved) = match &c.response {
                Some(r) if r.status == ScsiStatus::Good => (
                    wire::S_OK,
                    if p.data_in {
                        r.transferred
                            .min(u32::try_from(c.data.len()).unwrap_or(u32::MAX))
                    } else {
                        0
                    },
                ),
                // A reservation conflict, a medium error, a read-only LUN, or
                // aborted: the driver has one error to tell.
                _ => {
                    self.stats.failed += 1;
                    (wire::S_IOERR, 0)
                }
            };
            self.answer(p.queue, p.head, &p.mem, p.status, value, moved, used);
        }
        again
    }

    /// The connection is gone: the engine learns of the nexus loss and what is in
    /// flight is drained (up to `timeout`). Nothing is written to guest memory.
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
        self.per_queue.clear();
    }
}
