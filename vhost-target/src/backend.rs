//! The `VhostUserBackend` of one connection of a virtio-scsi controller.
//!
//! Queues: 0 is the control queue, 1 the event queue, 2.. the request queues.
//! vhost-user-backend runs one epoll thread per entry of `queues_per_thread`:
//! thread 0 serves the control, event and first request queue; thread `i` serves
//! request queue `i`. Each thread owns an engine [`Worker`](engine::Worker) (in a
//! thread-local: the worker and its backend channels stay on the thread that made
//! them) whose eventfd it registers in its own epoll set with
//! `VringEpollHandler::register_listener`, so completions wake the thread that
//! submitted the command. The thread-local is dropped when the library stops the
//! thread at disconnect (our `exit_event`); dropping it reports the nexus loss and
//! drains the I/O still in flight.
//!
//! The event queue is filled on thread 0 too: from the controller's
//! [`EventChannel`] when its eventfd (registered in thread 0's epoll) says events
//! were posted, and when the driver kicks the event queue with new buffers.

use std::cell::RefCell;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::Duration;

use engine::{LunRegistry, Nexus};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringEpollHandler, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_bindings::virtio_scsi::{VIRTIO_SCSI_F_CHANGE, VIRTIO_SCSI_F_HOTPLUG};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vmm_sys_util::timerfd::TimerFd;

use crate::events::EventChannel;
use crate::queues::{ScsiQueues, SharedCounts, UsedEntry};
use crate::request::GuestMem;

pub(crate) type Vring = VringRwLock<GuestMemoryAtomic<GuestMem>>;
pub(crate) type Handler = VringEpollHandler<Arc<ScsiBackend>>;

/// Queue indexes of the device.
pub const CONTROL_QUEUE: u16 = 0;
pub const EVENT_QUEUE: u16 = 1;
pub const FIRST_REQUEST_QUEUE: u16 = 2;

/// Largest virtqueue we accept (QEMU's default is 128).
pub const MAX_QUEUE_SIZE: usize = 1024;

/// Request queues a controller may have: every queue needs a bit in the u64 masks
/// of `queues_per_thread`.
pub const MAX_REQUEST_QUEUES: usize = 62;

/// How long GET_VRING_BASE waits for the commands of a queue, and a disconnect for
/// the I/O still in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Chains taken from one queue per wake-up at most, so one handler call is bounded
/// (a guest that refills the ring as fast as we empty it gets its next batch on
/// its next kick).
const MAX_CHAINS_PER_EVENT: usize = 4 * MAX_QUEUE_SIZE;

/// The virtio features we offer: HOTPLUG (LUNs attached and detached at run time
/// are announced on the event queue) and CHANGE (capacity changes are). QEMU's
/// `param_change=on` (its default) acks CHANGE whether offered or not, and the
/// library refuses acked bits that were not offered, so it must be offered.
pub fn virtio_features() -> u64 {
    (1 << VIRTIO_F_VERSION_1)
        | (1 << VIRTIO_RING_F_EVENT_IDX)
        | (1 << VIRTIO_RING_F_INDIRECT_DESC)
        | (1 << VIRTIO_SCSI_F_HOTPLUG)
        | (1 << VIRTIO_SCSI_F_CHANGE)
        | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
}

/// Commands in flight per queue, for GET_VRING_BASE (`stop_vring`) to wait on.
/// The vring threads update `counts` as they take and return each chain (before
/// the engine, and so the backend, sees the command: a stop never reads a count
/// older than an operation already in the device), without a lock.
struct InFlight {
    counts: SharedCounts,
    /// Held by a `stop_vring` from before it counts itself in `waiters` until it
    /// sleeps on `changed`, and taken by a vring thread to notify.
    lock: Mutex<()>,
    changed: Condvar,
    /// `stop_vring` calls waiting on `changed`. A condvar notify is a futex
    /// syscall even with nobody waiting: the vring threads notify only when
    /// someone is. A count store and this load on one side, the increment and
    /// the count load on the other, are all SeqCst: at least one side sees the
    /// other's write.
    waiters: AtomicUsize,
}

/// Descriptor chains taken from each queue of a controller, over all its
/// connections (index: device queue).
#[derive(Debug)]
pub struct QueueCounters {
    chains: Vec<AtomicU64>,
    stops: AtomicU64,
}

impl QueueCounters {
    pub fn new(queues: usize) -> Arc<Self> {
        Arc::new(QueueCounters {
            chains: (0..queues).map(|_| AtomicU64::new(0)).collect(),
            stops: AtomicU64::new(0),
        })
    }

    /// Chains taken so far, per device queue (0 control, 1 event, 2.. requests).
    pub fn chains(&self) -> Vec<u64> {
        self.chains
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// Queues stopped by the frontend (GET_VRING_BASE: device reset, VM stop).
    pub fn stops(&self) -> u64 {
        self.stops.load(Ordering::Relaxed)
    }

    fn add(&self, queue: usize, n: usize) {
        if let Some(c) = self.chains.get(queue) {
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

/// One connection's device.
pub struct ScsiBackend {
    nexus: Arc<Nexus>,
    registry: Arc<LunRegistry>,
    request_queues: usize,
    mem: GuestMemoryAtomic<GuestMem>,
    event_idx: AtomicBool,
    handlers: OnceLock<Vec<Weak<Handler>>>,
    inflight: InFlight,
    counters: Arc<QueueCounters>,
    events: Arc<EventChannel>,
    /// Wakes thread 0 to deliver events again when the event queue has no call
    /// eventfd yet (see `deliver_events`).
    event_retry: OnceLock<Mutex<TimerFd>>,
}

/// How soon events are tried again while the event queue waits for its call
/// eventfd.
const EVENT_RETRY: Duration = Duration::from_millis(10);

/// Per-thread state; dropped when the library ends the thread.
struct ThreadQueues {
    queues: ScsiQueues,
    /// Local vrings whose room ran out: served again after completions.
    throttled: Vec<bool>,
    /// Used entries of one wake-up; kept for its capacity.
    used: Vec<UsedEntry>,
}

impl Drop for ThreadQueues {
    fn drop(&mut self) {
        self.queues.shutdown(DRAIN_TIMEOUT);
    }
}

thread_local! {
    static QUEUES: RefCell<Option<ThreadQueues>> = const { RefCell::new(None) };
}

impl ScsiBackend {
    pub fn new(
        nexus: Arc<Nexus>,
        registry: Arc<LunRegistry>,
        request_queues: usize,
        mem: GuestMemoryAtomic<GuestMem>,
        counters: Arc<QueueCounters>,
        events: Arc<EventChannel>,
    ) -> Self {
        let total = request_queues + usize::from(FIRST_REQUEST_QUEUE);
        ScsiBackend {
            nexus,
            registry,
            request_queues,
            mem,
            event_idx: AtomicBool::new(false),
            handlers: OnceLock::new(),
            inflight: InFlight {
                counts: (0..total).map(|_| AtomicUsize::new(0)).collect(),
                lock: Mutex::new(()),
                changed: Condvar::new(),
                waiters: AtomicUsize::new(0),
            },
            counters,
            events,
            event_retry: OnceLock::new(),
        }
    }

    /// Gives the backend the library's epoll handlers (after `VhostUserDaemon::new`,
    /// before the connection starts), so each thread can register its worker's fd,
    /// and registers the event channel's eventfd with thread 0 (which owns the
    /// event queue).
    pub fn set_handlers(&self, handlers: &[Arc<Handler>]) -> io::Result<()> {
        let _ = self
            .handlers
            .set(handlers.iter().map(Arc::downgrade).collect());
        let first = handlers
            .first()
            .ok_or_else(|| io::Error::other("no vring thread"))?;
        first.register_listener(
            self.events.wake_fd(),
            EventSet::IN,
            u64::from(self.events_event()),
        )?;
        let timer = TimerFd::new()?;
        first.register_listener(
            timer.as_raw_fd(),
            EventSet::IN,
            u64::from(self.retry_event()),
        )?;
        let _ = self.event_retry.set(Mutex::new(timer));
        Ok(())
    }

    /// The epoll data of the event channel's eventfd (thread 0 only).
    fn events_event(&self) -> u16 {
        u16::try_from(self.num_queues() + 2).unwrap_or(u16::MAX)
    }

    /// The epoll data of the event retry timer (thread 0 only).
    fn retry_event(&self) -> u16 {
        u16::try_from(self.num_queues() + 3).unwrap_or(u16::MAX)
    }

    fn arm_event_retry(&self) {
        if let Some(t) = self.event_retry.get() {
            let _ = t
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .reset(EVENT_RETRY, None);
        }
    }

    fn consume_event_retry(&self) {
        if let Some(t) = self.event_retry.get() {
            let mut t = t.lock().unwrap_or_else(|e| e.into_inner());
            // Expired (no longer armed): the read does not block.
            if t.is_armed().is_ok_and(|armed| !armed) {
                let _ = t.wait();
            }
        }
    }

    /// Fills the event queue's buffers with what the controller posted. Runs on
    /// thread 0, whose local vring 1 is the event queue; a queue not started (or
    /// stopped by GET_VRING_BASE) is left alone and filled when it starts.
    fn deliver_events(&self, vrings: &[Vring], mem: &Arc<GuestMem>) {
        let Some(vring) = vrings.get(usize::from(EVENT_QUEUE)) else {
            return;
        };
        let mut events = self.events.lock();
        if !events.has_pending() {
            return;
        }
        let mut state = vring.get_mut();
        if !state.is_enabled() || !state.get_queue().ready() || !state.get_queue().is_valid(&**mem)
        {
            return;
        }
        if state.get_call().is_none() {
            // A (re)start sends SET_VRING_KICK before SET_VRING_CALL, and QEMU
            // starts the kick eventfd signalled: an event filled in between would
            // never be signalled, and the driver, not looking, would never post
            // another buffer. Wait for the call eventfd.
            self.arm_event_retry();
            return;
        }
        let used = events.fill(EVENT_QUEUE, state.get_queue_mut(), mem);
        drop(events);
        if used.is_empty() {
            return;
        }
        self.counters.add(usize::from(EVENT_QUEUE), used.len());
        for u in &used {
            let _ = state.add_used(u.head, u.len);
        }
        if state.needs_notification().unwrap_or(true) {
            let _ = state.signal_used_queue();
        }
    }

    /// The epoll data of the worker's eventfd: above every queue and the library's
    /// own event (`num_queues`).
    fn worker_event(&self) -> u16 {
        u16::try_from(self.num_queues() + 1).unwrap_or(u16::MAX)
    }

    /// The first device queue of thread `thread`.
    fn first_queue(thread: usize) -> usize {
        if thread == 0 {
            0
        } else {
            usize::from(FIRST_REQUEST_QUEUE) + thread
        }
    }

    fn make_queues(&self, thread: usize) -> io::Result<ThreadQueues> {
        let queues = ScsiQueues::new(self.registry.clone(), self.nexus.clone())
            .map_err(io::Error::other)?
            .with_counts(self.inflight.counts.clone());
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
            throttled: Vec::new(),
            used: Vec::new(),
        })
    }

    /// Takes available chains of `vring` and hands them to `f`, at most as many as
    /// the ring has room for beside the `in_flight` ones still with the engine (a
    /// driver never has more chains out than the ring holds; one that re-posts
    /// heads still in flight cannot make us hold more). With EVENT_IDX,
    /// re-enables notifications and looks again. Returns the chains taken and
    /// whether the room ran out with chains possibly left in the ring.
    fn drain_ring(
        &self,
        vring: &Vring,
        mem: &Arc<GuestMem>,
        in_flight: usize,
        mut f: impl FnMut(virtio_queue::DescriptorChain<Arc<GuestMem>>),
    ) -> (usize, bool) {
        let event_idx = self.event_idx.load(Ordering::Relaxed);
        let mut state = vring.get_mut();
        let size = usize::from(state.get_queue().size()).min(MAX_QUEUE_SIZE);
        let limit = size.saturating_sub(in_flight).min(MAX_CHAINS_PER_EVENT);
        let mut taken = 0usize;
        // Set when the ring said it held more: a pass that then finds nothing
        // means the available index is impossible (virtio-queue refuses to pop
        // from such a ring), and looking again would never end.
        let mut recheck = false;
        loop {
            if event_idx {
                let _ = state.get_queue_mut().disable_notification(&**mem);
            }
            let before = taken;
            while taken < limit {
                let Some(chain) = state.get_queue_mut().pop_descriptor_chain(mem.clone()) else {
                    break;
                };
                taken += 1;
                f(chain);
            }
            if taken >= limit {
                // Leave notifications on; completions bring us back (throttled).
                let _ = state.get_queue_mut().enable_notification(&**mem);
                return (taken, true);
            }
            if !event_idx || (recheck && taken == before) {
                return (taken, false);
            }
            match state.get_queue_mut().enable_notification(&**mem) {
                Ok(true) => recheck = true,
                _ => return (taken, false),
            }
        }
    }

    /// Serves device queue `q` (local vring `vring`); returns whether it was
    /// throttled.
    fn service(
        &self,
        q: u16,
        vring: &Vring,
        mem: &Arc<GuestMem>,
        queues: &mut ScsiQueues,
        used: &mut Vec<UsedEntry>,
    ) -> bool {
        let in_flight = queues.in_flight_on(q);
        let (taken, throttled) = match q {
            CONTROL_QUEUE => {
                self.drain_ring(vring, mem, in_flight, |c| queues.control(q, c, mem, used))
            }
            // Event buffers stay in the ring until there is an event to report
            // (`deliver_events`).
            EVENT_QUEUE => (0, false),
            _ => self.drain_ring(vring, mem, in_flight, |c| queues.request(q, c, mem, used)),
        };
        self.counters.add(usize::from(q), taken);
        throttled
    }

    /// Puts `used` into the rings of this thread, and signals each ring that got
    /// entries if the driver wants to hear (EVENT_IDX's `used_event`).
    fn push_used(&self, thread: usize, vrings: &[Vring], used: &[UsedEntry]) {
        let first = Self::first_queue(thread);
        // A thread has one to three vrings: a pass over `used` per vring is cheaper
        // than collecting the distinct queues.
        for (local, vring) in vrings.iter().enumerate() {
            let Ok(q) = u16::try_from(first + local) else {
                continue;
            };
            if !used.iter().any(|u| u.queue == q) {
                continue;
            }
            let mut state = vring.get_mut();
            for u in used.iter().filter(|u| u.queue == q) {
                // A used ring the driver placed outside memory fails here; the
                // entry is lost, as nothing else can be done with it.
                let _ = state.add_used(u.head, u.len);
            }
            if state.needs_notification().unwrap_or(true) {
                let _ = state.signal_used_queue();
            }
        }
    }

    /// Wakes a GET_VRING_BASE waiting for the counts to drop, if there is one.
    fn publish_inflight(&self) {
        if self.inflight.waiters.load(Ordering::SeqCst) > 0 {
            let _g = self.inflight.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.inflight.changed.notify_all();
        }
    }
}

impl VhostUserBackend for ScsiBackend {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        self.request_queues + usize::from(FIRST_REQUEST_QUEUE)
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        virtio_features()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn acked_features(&self, features: u64) {
        // A device start (first, or a resume): events follow the new features.
        self.events.lock().reset(features);
    }

    fn update_memory(&self, _mem: GuestMemoryAtomic<GuestMem>) -> io::Result<()> {
        // The library swaps the new table into the `GuestMemoryAtomic` we share
        // with it; commands in flight keep the old mapping alive (GuestBuf).
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        let mut masks = vec![0b111u64];
        for i in 1..self.request_queues {
            masks.push(1u64 << (usize::from(FIRST_REQUEST_QUEUE) + i));
        }
        masks
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        self.counters.stops.fetch_add(1, Ordering::Relaxed);
        let q = queue_index as usize;
        let guard = self.inflight.lock.lock().unwrap_or_else(|e| e.into_inner());
        // Counted under the lock, so a vring thread that sees us blocks on the
        // lock until we sleep, and its notify is not lost.
        self.inflight.waiters.fetch_add(1, Ordering::SeqCst);
        let counts = &self.inflight.counts;
        let (_guard, timeout) = self
            .inflight
            .changed
            .wait_timeout_while(guard, DRAIN_TIMEOUT, |_| {
                counts.get(q).is_some_and(|n| n.load(Ordering::SeqCst) > 0)
            })
            .unwrap_or_else(|e| e.into_inner());
        self.inflight.waiters.fetch_sub(1, Ordering::SeqCst);
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
        if device_event == self.events_event() {
            self.events.consume_wake();
            self.deliver_events(vrings, &self.mem.memory().into_inner());
            return Ok(());
        }
        if device_event == self.retry_event() {
            self.consume_event_retry();
            self.deliver_events(vrings, &self.mem.memory().into_inner());
            return Ok(());
        }
        QUEUES.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.is_none() {
                *slot = Some(self.make_queues(thread_id)?);
            }
            let Some(tq) = slot.as_mut() else {
                return Ok(());
            };
            let queues = &mut tq.queues;
            tq.throttled.resize(vrings.len(), false);
            let mem = self.mem.memory().into_inner();
            let first = Self::first_queue(thread_id);
            let queue_of = |local: usize| u16::try_from(first + local).unwrap_or(u16::MAX);
            let mut used = std::mem::take(&mut tq.used);
            used.clear();
            if thread_id == 0 && device_event == EVENT_QUEUE {
                // The driver posted event buffers: fill them with what waits.
                self.deliver_events(vrings, &mem);
            }
            if device_event == self.worker_event() {
                queues.poll(&mut used);
            } else {
                let local = usize::from(device_event);
                let Some(vring) = vrings.get(local) else {
                    return Ok(());
                };
                tq.throttled[local] = self.service(queue_of(local), vring, &mem, queues, &mut used);
                queues.poll_more(&mut used);
            }
            // Completions made room: serve the queues that ran out of it again.
            let mut again = false;
            for (local, vring) in vrings.iter().enumerate() {
                if tq.throttled[local] {
                    tq.throttled[local] =
                        self.service(queue_of(local), vring, &mem, queues, &mut used);
                    again = true;
                }
            }
            if again {
                queues.poll_more(&mut used);
            }
            self.push_used(thread_id, vrings, &used);
            self.publish_inflight();
            tq.used = used;
            Ok(())
        })
    }
}
