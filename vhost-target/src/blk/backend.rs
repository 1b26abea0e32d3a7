//! The `VhostUserBackend` of one connection of a blk controller. Each request
//! queue has its own vring thread (`queues_per_thread`), and each thread its own
//! engine worker (a thread-local made on the thread's first event) whose eventfd
//! it registers in its own epoll set, so completions wake the thread that
//! submitted the command. At disconnect the library ends the threads (our
//! `exit_event`); dropping the thread-local reports the nexus loss and drains the
//! I/O still in flight.

use std::cell::RefCell;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::Duration;

use engine::{LunRegistry, Nexus};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringEpollHandler, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::queues::UsedEntry;
use crate::request::GuestMem;

use super::device::BlkDevice;
use super::queues::BlkQueues;

pub(crate) type Vring = VringRwLock<GuestMemoryAtomic<GuestMem>>;
pub(crate) type Handler = VringEpollHandler<Arc<BlkBackend>>;

/// Largest virtqueue we accept.
pub const MAX_QUEUE_SIZE: usize = 1024;
/// Request queues a controller may have (one bit each in `queues_per_thread`).
pub const MAX_QUEUES: usize = 64;
/// How long GET_VRING_BASE waits for a queue's commands, and a disconnect for
/// the I/O in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Per-thread state, dropped when the library ends the thread.
struct ThreadQueues {
    queues: BlkQueues,
    /// The ring ran out of room (chains in flight = ring size): serve it again
    /// after completions.
    throttled: bool,
}

impl Drop for ThreadQueues {
    fn drop(&mut self) {
        self.queues.shutdown(DRAIN_TIMEOUT);
    }
}

thread_local! {
    static BLK_QUEUES: RefCell<Option<ThreadQueues>> = const { RefCell::new(None) };
}

/// One connection's device.
pub struct BlkBackend {
    device: Arc<BlkDevice>,
    nexus: Arc<Nexus>,
    registry: Arc<LunRegistry>,
    mem: GuestMemoryAtomic<GuestMem>,
    event_idx: AtomicBool,
    handlers: OnceLock<Vec<Weak<Handler>>>,
    /// Chains in flight per queue, for `stop_vring` to wait on.
    in_flight: Mutex<Vec<usize>>,
    drained: Condvar,
}

impl BlkBackend {
    pub fn new(
        device: Arc<BlkDevice>,
        nexus: Arc<Nexus>,
        registry: Arc<LunRegistry>,
        mem: GuestMemoryAtomic<GuestMem>,
    ) -> Self {
        let n = device.num_queues();
        BlkBackend {
            device,
            nexus,
            registry,
            mem,
            event_idx: AtomicBool::new(false),
            handlers: OnceLock::new(),
            in_flight: Mutex::new(vec![0; n]),
            drained: Condvar::new(),
        }
    }

    /// Gives the backend the library's epoll handlers (after `VhostUserDaemon::new`)
    /// so each thread can register its worker's eventfd.
    pub fn set_handlers(&self, handlers: &[Arc<Handler>]) {
        let _ = self
            .handlers
            .set(handlers.iter().map(Arc::downgrade).collect());
    }

    /// The epoll data of a thread's worker eventfd: above the device's queues and
    /// the library's exit event (`num_queues`), which the library reserves.
    fn worker_event(&self) -> u16 {
        u16::try_from(self.device.num_queues() + 1).unwrap_or(u16::MAX)
    }

    fn make_queues(&self, thread: usize) -> io::Result<ThreadQueues> {
        let queues = BlkQueues::new(
            self.registry.clone(),
            self.nexus.clone(),
            self.device.clone(),
        )
        .map_err(io::Error::other)?;
        let handler = self
            .handlers
            .get()
            .and_then(|h| h.get(thread))
            .and_then(Weak::upgrade)
            .ok_or_else(|| io::Error::other("no epoll handler for this vring thread"))?;
        handler.register_listener(
            queues.notify_fd(),
            EventSet::IN,
            u64::from(self.worker_event()),
        )?;
        Ok(ThreadQueues {
            queues,
            throttled: false,
        })
    }

    /// Takes the available chains of `vring` (as many as the ring has room for
    /// beside those in flight); returns whether the room ran out.
    fn service(
        &self,
        queue: u16,
        vring: &Vring,
        mem: &Arc<GuestMem>,
        queues: &mut BlkQueues,
        used: &mut Vec<UsedEntry>,
    ) -> bool {
        let event_idx = self.event_idx.load(Ordering::Relaxed);
        let mut state = vring.get_mut();
        if !state.get_queue().ready() {
            return false;
        }
        let size = usize::from(state.get_queue().size()).min(MAX_QUEUE_SIZE);
        let limit = size.saturating_sub(queues.in_flight_on(queue));
        let mut taken = 0usize;
        // Bounded: one pass per notification re-enable that found more, and a
        // pass that finds nothing ends the loop.
        for _ in 0..=MAX_QUEUE_SIZE {
            if event_idx {
                let _ = state.get_queue_mut().disable_notification(&**mem);
            }
            let before = taken;
            while taken < limit {
                let Some(chain) = state.get_queue_mut().pop_descriptor_chain(mem.clone()) else {
                    break;
                };
                taken += 1;
                queues.request(queue, chain, mem, used);
            }
            if taken >= limit {
                let _ = state.get_queue_mut().enable_notification(&**mem);
                return true;
            }
            if !event_idx {
                return false;
            }
            match state.get_queue_mut().enable_notification(&**mem) {
                Ok(true) if taken > before => continue,
                _ => return false,
            }
        }
        false
    }

    /// Puts `used` into the thread's ring and signals the driver if it wants.
    fn push_used(vring: &Vring, used: &[UsedEntry]) {
        if used.is_empty() {
            return;
        }
        let mut state = vring.get_mut();
        for u in used {
            let _ = state.add_used(u.head, u.len);
        }
        if state.needs_notification().unwrap_or(true) {
            let _ = state.signal_used_queue();
        }
    }

    fn publish(&self, queue: u16, queues: &BlkQueues) {
        let mut counts = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = counts.get_mut(usize::from(queue)) {
            let now = queues.in_flight_on(queue);
            if now == 0 && *c > 0 {
                self.drained.notify_all();
            }
            *c = now;
        }
    }
}

impl VhostUserBackend for BlkBackend {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        self.device.num_queues()
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        self.device.features()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::BACKEND_REQ
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        self.device.read_config(offset, size)
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        self.device.write_config(offset, buf)
    }

    fn update_memory(&self, _mem: GuestMemoryAtomic<GuestMem>) -> io::Result<()> {
        // The library swaps the new table into the `GuestMemoryAtomic` we share;
        // commands in flight keep the old mapping alive (GuestBuf).
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.device.num_queues()).map(|i| 1u64 << i).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        let q = usize::try_from(queue_index).unwrap_or(usize::MAX);
        let counts = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let (_c, timeout) = self
            .drained
            .wait_timeout_while(counts, DRAIN_TIMEOUT, |c| c.get(q).is_some_and(|&n| n > 0))
            .unwrap_or_else(|e| e.into_inner());
        if timeout.timed_out() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("queue {q}: commands still in flight"),
            ));
        }
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        // One queue per thread: its local vring 0 is device queue `thread_id`.
        let Some(vring) = vrings.first() else {
            return Ok(());
        };
        let queue = u16::try_from(thread_id).unwrap_or(u16::MAX);
        BLK_QUEUES.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.is_none() {
                *slot = Some(self.make_queues(thread_id)?);
            }
            let Some(tq) = slot.as_mut() else {
                return Ok(());
            };
            let mem = self.mem.memory().into_inner();
            let mut used = Vec::new();
            if device_event == 0 {
                tq.throttled = self.service(queue, vring, &mem, &mut tq.queues, &mut used);
            }
            tq.queues.poll(&mut used);
            if tq.throttled {
                tq.throttled = self.service(queue, vring, &mem, &mut tq.queues, &mut used);
                tq.queues.poll(&mut used);
            }
            Self::push_used(vring, &used);
            self.publish(queue, &tq.queues);
            Ok(())
        })
    }
}
