//! The virtio-scsi event queue (VIRTIO 1.2 5.6.6.3): how the device tells the
//! driver that a LUN appeared (transport reset, reason RESCAN), went away (reason
//! REMOVED) or changed a parameter (PARAM_CHANGE with the unit attention's ASC and
//! ASCQ, e.g. 2Ah/09h CAPACITY DATA HAS CHANGED).
//!
//! The driver posts empty device-writable buffers; the device fills one per event.
//! Events are posted by the control plane on its own thread ([`EventChannel::post`])
//! into a bounded queue and an eventfd wakes the vring thread that owns the event
//! queue, which fills the guest's buffers ([`EventQueue::fill`]). An event that
//! finds no buffer waits in the queue until the driver posts one; when more than
//! [`MAX_PENDING_EVENTS`] wait, further ones are dropped and the next event
//! delivered carries VIRTIO_SCSI_T_EVENTS_MISSED (so the driver rescans). Events
//! are sent only for what the driver negotiated: transport resets need
//! VIRTIO_SCSI_F_HOTPLUG, parameter changes VIRTIO_SCSI_F_CHANGE.

use std::collections::VecDeque;
use std::io;
use std::ops::Deref;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_bindings::virtio_scsi as vs;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::queues::UsedEntry;
use crate::request::{check_memory, scatter, walk, GuestMem};
use crate::wire::{ScsiEvent, EVENT_LEN};

/// Events kept for a driver that has no buffer posted, at most.
pub const MAX_PENDING_EVENTS: usize = 64;

/// Buffers filled per [`EventQueue::fill`] call at most (one handler call is
/// bounded even if the driver posts unusable buffers as fast as we return them).
const MAX_FILLS: usize = 1024;

/// What became of a posted event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Posted {
    /// Waiting for (or already in) a guest buffer.
    Queued,
    /// The driver did not negotiate the feature the event needs (or no driver is
    /// connected): not sent.
    NotNegotiated,
    /// Too many events waited: dropped, and the driver will be told events were
    /// missed.
    Lost,
}

/// Counters of one controller's event queue, over all its connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventStats {
    pub queued: u64,
    pub delivered: u64,
    pub not_negotiated: u64,
    pub lost: u64,
    /// Guest buffers returned unused: too short, device-readable or outside memory.
    pub bad_buffers: u64,
}

/// The events waiting for guest buffers, and what the driver negotiated. No I/O:
/// the caller pops the chains and pushes the used entries.
#[derive(Debug, Default)]
pub struct EventQueue {
    pending: VecDeque<ScsiEvent>,
    /// Events were dropped since the last one delivered.
    missed: bool,
    hotplug: bool,
    change: bool,
    stats: EventStats,
}

impl EventQueue {
    /// The frontend acknowledged `features` (SET_FEATURES, sent at every device
    /// start: the driver's first, and each resume after a VM stop). What waits
    /// stays, as far as the features still allow it: a VM paused while LUNs
    /// changed learns of them when it runs again (the restarted event queue's
    /// first kick delivers them). A new driver instance that gets an event about
    /// what its own scan already found treats it as a no-op.
    pub fn reset(&mut self, features: u64) {
        self.hotplug = features & (1 << vs::VIRTIO_SCSI_F_HOTPLUG) != 0;
        self.change = features & (1 << vs::VIRTIO_SCSI_F_CHANGE) != 0;
        let (hotplug, change) = (self.hotplug, self.change);
        self.pending.retain(|e| match e.event {
            vs::VIRTIO_SCSI_T_TRANSPORT_RESET => hotplug,
            vs::VIRTIO_SCSI_T_PARAM_CHANGE => change,
            _ => false,
        });
        if !hotplug && !change {
            self.missed = false;
        }
    }

    /// No driver any more (the connection ended): nothing is kept or accepted;
    /// the next connection's driver scans the target itself.
    pub fn disconnect(&mut self) {
        self.pending.clear();
        self.missed = false;
        self.reset(0);
    }

    fn negotiated(&self, event: u32) -> bool {
        match event & !vs::VIRTIO_SCSI_T_EVENTS_MISSED {
            vs::VIRTIO_SCSI_T_TRANSPORT_RESET => self.hotplug,
            vs::VIRTIO_SCSI_T_PARAM_CHANGE => self.change,
            _ => false,
        }
    }

    /// Queues `ev` for the driver.
    pub fn push(&mut self, ev: ScsiEvent) -> Posted {
        if !self.negotiated(ev.event) {
            self.stats.not_negotiated += 1;
            return Posted::NotNegotiated;
        }
        if self.pending.len() >= MAX_PENDING_EVENTS {
            self.missed = true;
            self.stats.lost += 1;
            return Posted::Lost;
        }
        self.pending.push_back(ev);
        self.stats.queued += 1;
        Posted::Queued
    }

    /// Whether something waits for a buffer (an event, or the news that some
    /// were missed).
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty() || self.missed
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    pub fn stats(&self) -> EventStats {
        self.stats
    }

    /// The next event to deliver, with EVENTS_MISSED or'ed in if events were lost.
    fn next(&self) -> Option<ScsiEvent> {
        let mut ev = match self.pending.front() {
            Some(ev) => *ev,
            None if self.missed => ScsiEvent::missed(),
            None => return None,
        };
        if self.missed {
            ev.event |= vs::VIRTIO_SCSI_T_EVENTS_MISSED;
        }
        Some(ev)
    }

    /// Writes the next event into the buffer `chain` (of device queue `queue`);
    /// returns its used entry. A buffer that cannot hold an event (too short,
    /// device-readable, outside guest memory) goes back empty and the event waits
    /// for the next one.
    pub fn deliver<M>(&mut self, queue: u16, chain: DescriptorChain<M>, mem: &GuestMem) -> UsedEntry
    where
        M: Deref<Target = GuestMem>,
    {
        let head = chain.head_index();
        let empty = UsedEntry {
            queue,
            head,
            len: 0,
        };
        let Some(ev) = self.next() else {
            return empty;
        };
        let usable = walk(chain.map(|d| (d.addr(), d.len(), d.is_write_only())))
            .ok()
            .filter(|c| c.readable.is_empty())
            .filter(|c| check_memory(mem, &c.writable).is_ok())
            .filter(|c| {
                c.writable.iter().map(|r| u64::from(r.len)).sum::<u64>() >= EVENT_LEN as u64
            });
        let Some(c) = usable else {
            self.stats.bad_buffers += 1;
            return empty;
        };
        let written = scatter(mem, &c.writable, &ev.encode());
        if written < EVENT_LEN {
            self.stats.bad_buffers += 1;
            return empty;
        }
        self.pending.pop_front();
        self.missed = false;
        self.stats.delivered += 1;
        UsedEntry {
            queue,
            head,
            len: EVENT_LEN as u32,
        }
    }

    /// Fills the buffers available in `vq` (device queue `queue`) with what is
    /// pending; returns the used entries for the caller to push. When buffers run
    /// out with events left, notifications are re-enabled (with EVENT_IDX: the
    /// driver's next buffer kicks us) and the ring is looked at once more.
    pub fn fill(&mut self, queue: u16, vq: &mut Queue, mem: &Arc<GuestMem>) -> Vec<UsedEntry> {
        let mut used = Vec::new();
        // As in the request queues: a pass that finds nothing after the ring said
        // it held more means an impossible available index; stop there.
        let mut recheck = false;
        loop {
            let before = used.len();
            while self.has_pending() && used.len() < MAX_FILLS {
                let Some(chain) = vq.pop_descriptor_chain(mem.clone()) else {
                    break;
                };
                used.push(self.deliver(queue, chain, mem));
            }
            if !self.has_pending() || used.len() >= MAX_FILLS || (recheck && used.len() == before) {
                return used;
            }
            match vq.enable_notification(&**mem) {
                Ok(true) => recheck = true,
                _ => return used,
            }
        }
    }
}

/// The event queue of a controller shared between the control plane (which posts)
/// and the vring thread of the event queue (which delivers), with the eventfd that
/// wakes that thread.
#[derive(Debug)]
pub struct EventChannel {
    queue: Mutex<EventQueue>,
    wake: EventFd,
}

impl EventChannel {
    pub fn new() -> io::Result<Arc<Self>> {
        Ok(Arc::new(EventChannel {
            queue: Mutex::new(EventQueue::default()),
            wake: EventFd::new(EFD_NONBLOCK)?,
        }))
    }

    /// Queues `ev` and wakes the event queue's thread.
    pub fn post(&self, ev: ScsiEvent) -> Posted {
        let posted = self.lock().push(ev);
        if posted == Posted::Queued {
            // A full counter (never, at one write per event) still leaves the fd
            // readable, which is all the thread needs.
            let _ = self.wake.write(1);
        }
        posted
    }

    pub fn lock(&self) -> MutexGuard<'_, EventQueue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Readable when events were posted.
    pub fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// Clears the wake-up (level-triggered in the vring thread's epoll).
    pub fn consume_wake(&self) {
        let _ = self.wake.read();
    }

    pub fn stats(&self) -> EventStats {
        self.lock().stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::LunAddr;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    const EVQ: u16 = 1;
    const BUFS: u64 = 0x10_0000;
    const ALL: u64 = (1 << vs::VIRTIO_SCSI_F_HOTPLUG) | (1 << vs::VIRTIO_SCSI_F_CHANGE);

    fn mem() -> Arc<GuestMem> {
        Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap())
    }

    fn lun(n: u16) -> [u8; 8] {
        LunAddr::encode_reported(0, n).unwrap()
    }

    /// The buffer of slot `i`: 16 bytes at BUFS + 0x100 * i.
    fn buf(i: u64) -> u64 {
        BUFS + 0x100 * i
    }

    fn desc(addr: u64, len: u32, write: bool) -> RawDescriptor {
        let flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    /// Posts `n` good event buffers starting at slot `first` (table entries too).
    fn post_buffers(vq: &MockSplitQueue<'_, GuestMem>, first: u16, n: u16) {
        let descs: Vec<_> = (first..first + n)
            .map(|i| desc(buf(u64::from(i)), EVENT_LEN as u32, true))
            .collect();
        vq.add_desc_chains(&descs, first).unwrap();
    }

    fn read_event(mem: &GuestMem, i: u64) -> ScsiEvent {
        let mut b = [0u8; EVENT_LEN];
        mem.read_slice(&mut b, GuestAddress(buf(i))).unwrap();
        ScsiEvent::decode(&b)
    }

    fn push_used(vq: &mut Queue, mem: &GuestMem, used: &[UsedEntry]) {
        for u in used {
            vq.add_used(mem, u.head, u.len).unwrap();
        }
    }

    #[test]
    fn events_fill_posted_buffers_in_order() {
        let mem = mem();
        let mock = MockSplitQueue::new(&*mem, 16);
        let mut vq: Queue = mock.create_queue().unwrap();
        let mut q = EventQueue::default();
        q.reset(ALL);
        post_buffers(&mock, 0, 4);
        assert_eq!(q.push(ScsiEvent::lun_added(lun(1))), Posted::Queued);
        assert_eq!(
            q.push(ScsiEvent::param_change(lun(0), 0x2a, 0x09)),
            Posted::Queued
        );
        assert_eq!(q.push(ScsiEvent::lun_removed(lun(300))), Posted::Queued);
        let used = q.fill(EVQ, &mut vq, &mem);
        assert_eq!(
            used,
            (0..3)
                .map(|h| UsedEntry {
                    queue: EVQ,
                    head: h,
                    len: 16
                })
                .collect::<Vec<_>>()
        );
        push_used(&mut vq, &mem, &used);
        assert_eq!(read_event(&mem, 0), ScsiEvent::lun_added(lun(1)));
        let pc = read_event(&mem, 1);
        assert_eq!((pc.event, pc.lun, pc.reason), (3, lun(0), 0x092a));
        let rm = read_event(&mem, 2);
        assert_eq!(
            (rm.event, rm.lun, rm.reason),
            (1, [1, 0, 0x41, 0x2c, 0, 0, 0, 0], 2)
        );
        assert!(!q.has_pending());
        // The fourth buffer stays with the device for the next event.
        assert_eq!(mock.used().idx().load(), 3);
        assert_eq!(q.stats().delivered, 3);
    }

    #[test]
    fn an_event_without_a_buffer_waits_for_one() {
        let mem = mem();
        let mock = MockSplitQueue::new(&*mem, 16);
        let mut vq: Queue = mock.create_queue().unwrap();
        let mut q = EventQueue::default();
        q.reset(ALL);
        q.push(ScsiEvent::lun_added(lun(2)));
        assert!(q.fill(EVQ, &mut vq, &mem).is_empty());
        assert!(q.has_pending());
        post_buffers(&mock, 0, 1);
        let used = q.fill(EVQ, &mut vq, &mem);
        assert_eq!(used.len(), 1);
        assert_eq!(read_event(&mem, 0), ScsiEvent::lun_added(lun(2)));
        assert!(!q.has_pending());
    }

    #[test]
    fn overflow_is_reported_as_events_missed() {
        let mem = mem();
        let mock = MockSplitQueue::new(&*mem, 128);
        let mut vq: Queue = mock.create_queue().unwrap();
        let mut q = EventQueue::default();
        q.reset(ALL);
        for i in 0..MAX_PENDING_EVENTS {
            assert_eq!(q.push(ScsiEvent::lun_added(lun(i as u16))), Posted::Queued);
        }
        assert_eq!(q.push(ScsiEvent::lun_added(lun(999))), Posted::Lost);
        assert_eq!(q.push(ScsiEvent::lun_removed(lun(998))), Posted::Lost);
        assert_eq!(q.stats().lost, 2);
        post_buffers(&mock, 0, 2);
        let used = q.fill(EVQ, &mut vq, &mem);
        assert_eq!(used.len(), 2);
        let first = read_event(&mem, 0);
        assert_eq!(
            first.event,
            vs::VIRTIO_SCSI_T_TRANSPORT_RESET | vs::VIRTIO_SCSI_T_EVENTS_MISSED,
            "the next event delivered says events were missed"
        );
        assert_eq!(first.lun, lun(0));
        assert_eq!(
            read_event(&mem, 1).event,
            vs::VIRTIO_SCSI_T_TRANSPORT_RESET,
            "once"
        );
        assert_eq!(q.pending(), MAX_PENDING_EVENTS - 2);
    }

    #[test]
    fn missed_alone_is_a_no_event_with_the_flag() {
        let mem = mem();
        let mock = MockSplitQueue::new(&*mem, 16);
        let mut vq: Queue = mock.create_queue().unwrap();
        let mut q = EventQueue::default();
        q.reset(ALL);
        q.missed = true;
        post_buffers(&mock, 0, 1);
        assert_eq!(q.fill(EVQ, &mut vq, &mem).len(), 1);
        assert_eq!(read_event(&mem, 0), ScsiEvent::missed());
        assert!(!q.has_pending());
    }

    #[test]
    fn events_need_their_feature() {
        let mut q = EventQueue::default();
        // No driver yet.
        assert_eq!(q.push(ScsiEvent::lun_added(lun(1))), Posted::NotNegotiated);
        q.reset(1 << vs::VIRTIO_SCSI_F_CHANGE);
        assert_eq!(q.push(ScsiEvent::lun_added(lun(1))), Posted::NotNegotiated);
        assert_eq!(
            q.push(ScsiEvent::param_change(lun(1), 0x2a, 9)),
            Posted::Queued
        );
        assert_eq!(q.push(ScsiEvent::lun_added(lun(2))), Posted::NotNegotiated);
        // A device restart with the same features (a VM resumed) keeps what waits.
        q.reset(1 << vs::VIRTIO_SCSI_F_CHANGE);
        assert_eq!(q.pending(), 1, "kept across a restart");
        q.reset(1 << vs::VIRTIO_SCSI_F_HOTPLUG);
        assert_eq!(q.pending(), 0, "CHANGE no longer negotiated: dropped");
        assert_eq!(
            q.push(ScsiEvent::param_change(lun(1), 0x2a, 9)),
            Posted::NotNegotiated
        );
        assert_eq!(q.push(ScsiEvent::lun_removed(lun(1))), Posted::Queued);
        q.reset(1 << vs::VIRTIO_SCSI_F_HOTPLUG);
        assert_eq!(q.pending(), 1);
        q.disconnect();
        assert!(!q.has_pending());
        assert_eq!(
            q.push(ScsiEvent::lun_removed(lun(1))),
            Posted::NotNegotiated
        );
        assert_eq!(q.stats().not_negotiated, 5);
    }

    #[test]
    fn unusable_buffers_go_back_empty_and_the_event_waits() {
        let mem = mem();
        let mock = MockSplitQueue::new(&*mem, 16);
        let mut vq: Queue = mock.create_queue().unwrap();
        let mut q = EventQueue::default();
        q.reset(ALL);
        q.push(ScsiEvent::lun_added(lun(5)));
        mem.write_slice(&[0xee; 16], GuestAddress(buf(3))).unwrap();
        let descs = [
            // Too short.
            desc(buf(0), 8, true),
            // Device-readable.
            desc(buf(1), 16, false),
            // Outside guest memory.
            desc(8 << 20, 16, true),
            // Good, split over two descriptors of one chain.
            RawDescriptor::from(SplitDescriptor::new(
                buf(3),
                10,
                (VRING_DESC_F_WRITE | virtio_bindings::virtio_ring::VRING_DESC_F_NEXT) as u16,
                4,
            )),
            desc(buf(3) + 10, 6, true),
        ];
        mock.add_desc_chains(&descs, 0).unwrap();
        let used = q.fill(EVQ, &mut vq, &mem);
        let lens: Vec<(u16, u32)> = used.iter().map(|u| (u.head, u.len)).collect();
        assert_eq!(lens, vec![(0, 0), (1, 0), (2, 0), (3, 16)]);
        assert_eq!(read_event(&mem, 3), ScsiEvent::lun_added(lun(5)));
        assert_eq!(q.stats().bad_buffers, 3);
        assert!(!q.has_pending());
    }

    #[test]
    fn an_impossible_available_index_ends_the_fill() {
        let mem = mem();
        let mock = MockSplitQueue::new(&*mem, 16);
        let mut vq: Queue = mock.create_queue().unwrap();
        let mut q = EventQueue::default();
        q.reset(ALL);
        q.push(ScsiEvent::lun_added(lun(1)));
        post_buffers(&mock, 0, 1);
        // More entries than the ring holds: nothing can be popped, and the ring
        // keeps saying it has more.
        mock.avail().idx().store(40);
        assert!(q.fill(EVQ, &mut vq, &mem).is_empty());
        assert!(q.has_pending(), "the event waits for a usable ring");
    }

    #[test]
    fn the_channel_wakes_only_for_queued_events() {
        let ch = EventChannel::new().unwrap();
        assert_eq!(ch.post(ScsiEvent::lun_added(lun(1))), Posted::NotNegotiated);
        assert!(ch.wake.read().is_err(), "not woken");
        ch.lock().reset(ALL);
        assert_eq!(ch.post(ScsiEvent::lun_added(lun(1))), Posted::Queued);
        assert_eq!(ch.post(ScsiEvent::lun_added(lun(2))), Posted::Queued);
        assert_eq!(ch.wake.read().unwrap(), 2);
        ch.consume_wake();
        assert_eq!(ch.lock().pending(), 2);
    }
}
