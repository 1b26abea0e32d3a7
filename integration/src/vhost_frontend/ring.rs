//! The driver side of a split virtqueue (virtio 1.x, 2.7) laid out in shared
//! memory by hand: where the descriptor table, available ring and used ring sit,
//! descriptors written once, heads published to the available ring, used elements
//! read back, and the EVENT_IDX arithmetic that decides when to kick and when the
//! device will call. Everything goes through vm-memory's `Bytes` accessors, so it
//! runs the same on a shared memfd and on anonymous memory in the tests.

use std::sync::atomic::{fence, Ordering};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Descriptor flags (virtio 1.x, 2.7.5).
pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;
/// used->flags: the device does not want kicks (without EVENT_IDX).
pub const USED_F_NO_NOTIFY: u16 = 1;

const DESC_LEN: u64 = 16;
const USED_ELEM_LEN: u64 = 8;

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum RingError {
    #[error("queue size {0}: must be a power of two from 1 to 32768")]
    Size(u16),
    #[error("ring at {base:#x} of size {size} does not fit in the address space")]
    Overflow { base: u64, size: u16 },
    #[error("guest memory access at {addr:#x}: {message}")]
    Memory { addr: u64, message: String },
    #[error("descriptor {index} is outside a queue of {size}")]
    Descriptor { index: u16, size: u16 },
    #[error("used element names descriptor {id}, outside a queue of {size}")]
    UsedId { id: u32, size: u16 },
    #[error(
        "used index {used} is more than {size} ahead of the {seen} seen (driver published {avail})"
    )]
    UsedIndex {
        used: u16,
        seen: u16,
        avail: u16,
        size: u16,
    },
}

fn mem_err(addr: u64, e: impl std::fmt::Display) -> RingError {
    RingError::Memory {
        addr,
        message: e.to_string(),
    }
}

/// Where the three parts of a split virtqueue of `size` entries sit (guest
/// addresses). Descriptors are 16-aligned, the available ring 2-aligned and the
/// used ring 4-aligned (2.7); each part starts on its own 64-byte line here so the
/// driver's and the device's writes do not share a cache line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingLayout {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    /// First byte after the used ring (incl. avail_event).
    pub end: u64,
}

fn align_up(v: u64, a: u64) -> Option<u64> {
    v.checked_add(a - 1).map(|x| x & !(a - 1))
}

impl RingLayout {
    pub fn new(base: u64, size: u16) -> Result<Self, RingError> {
        if size == 0 || !size.is_power_of_two() {
            return Err(RingError::Size(size));
        }
        let n = u64::from(size);
        let overflow = RingError::Overflow { base, size };
        let desc = align_up(base, 64).ok_or(overflow.clone())?;
        // flags, idx, ring[size], used_event
        let avail = align_up(desc + DESC_LEN * n, 64).ok_or(overflow.clone())?;
        // flags, idx, ring[size] of (id, len), avail_event
        let used = align_up(avail + 4 + 2 * n + 2, 64).ok_or(overflow.clone())?;
        let end = used
            .checked_add(4 + USED_ELEM_LEN * n + 2)
            .ok_or(overflow)?;
        Ok(RingLayout {
            size,
            desc,
            avail,
            used,
            end,
        })
    }

    fn avail_idx(&self) -> u64 {
        self.avail + 2
    }
    fn avail_entry(&self, slot: u16) -> u64 {
        self.avail + 4 + 2 * u64::from(slot)
    }
    /// used_event: written by the driver, read by the device (EVENT_IDX).
    pub fn used_event(&self) -> u64 {
        self.avail + 4 + 2 * u64::from(self.size)
    }
    fn used_flags(&self) -> u64 {
        self.used
    }
    fn used_idx(&self) -> u64 {
        self.used + 2
    }
    fn used_entry(&self, slot: u16) -> u64 {
        self.used + 4 + USED_ELEM_LEN * u64::from(slot)
    }
    /// avail_event: written by the device, read by the driver (EVENT_IDX).
    pub fn avail_event(&self) -> u64 {
        self.used + 4 + USED_ELEM_LEN * u64::from(self.size)
    }
}

/// One descriptor table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

impl Descriptor {
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.flags.to_le_bytes());
        b[14..16].copy_from_slice(&self.next.to_le_bytes());
        b
    }
}

/// One used ring element: the head of a returned chain and the bytes the device
/// wrote into it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsedElem {
    pub id: u16,
    pub len: u32,
}

/// EVENT_IDX (virtio 2.7.10): the other side asked to be notified once the index
/// moves past `event`; it moved from `old` to `new`.
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// The driver's view of one split virtqueue.
#[derive(Debug)]
pub struct SplitQueue {
    pub layout: RingLayout,
    event_idx: bool,
    /// Next available index to publish.
    next_avail: u16,
    /// Used index up to which elements were consumed.
    last_used: u16,
}

impl SplitQueue {
    /// A queue at `layout` whose rings are zeroed in `mem` (flags and indexes 0).
    pub fn new(
        mem: &GuestMemoryMmap<()>,
        layout: RingLayout,
        event_idx: bool,
    ) -> Result<Self, RingError> {
        let len = usize::try_from(layout.end - layout.desc).map_err(|e| mem_err(layout.desc, e))?;
        mem.write_slice(&vec![0u8; len], GuestAddress(layout.desc))
            .map_err(|e| mem_err(layout.desc, e))?;
        Ok(SplitQueue {
            layout,
            event_idx,
            next_avail: 0,
            last_used: 0,
        })
    }

    pub fn size(&self) -> u16 {
        self.layout.size
    }

    /// Chains published and not yet returned.
    pub fn outstanding(&self) -> u16 {
        self.next_avail.wrapping_sub(self.last_used)
    }

    /// Writes descriptor `index` of the table.
    pub fn write_desc(
        &self,
        mem: &GuestMemoryMmap<()>,
        index: u16,
        d: &Descriptor,
    ) -> Result<(), RingError> {
        if index >= self.layout.size {
            return Err(RingError::Descriptor {
                index,
                size: self.layout.size,
            });
        }
        let at = self.layout.desc + DESC_LEN * u64::from(index);
        mem.write_slice(&d.encode(), GuestAddress(at))
            .map_err(|e| mem_err(at, e))
    }

    /// Puts the chains starting at `heads` in the available ring and publishes them
    /// (one index update, after the entries). Returns whether the device wants a
    /// kick for them.
    pub fn publish(&mut self, mem: &GuestMemoryMmap<()>, heads: &[u16]) -> Result<bool, RingError> {
        if heads.is_empty() {
            return Ok(false);
        }
        let old = self.next_avail;
        let mut idx = old;
        for &h in heads {
            if h >= self.layout.size {
                return Err(RingError::Descriptor {
                    index: h,
                    size: self.layout.size,
                });
            }
            let at = self.layout.avail_entry(idx % self.layout.size);
            mem.write_obj(h.to_le(), GuestAddress(at))
                .map_err(|e| mem_err(at, e))?;
            idx = idx.wrapping_add(1);
        }
        // The entries before the index (Release), and the index before reading the
        // device's notification state (SeqCst): otherwise the device may sleep on an
        // old index while we read a stale "no kick needed" (virtio 2.7.13).
        let at = self.layout.avail_idx();
        mem.store(idx.to_le(), GuestAddress(at), Ordering::Release)
            .map_err(|e| mem_err(at, e))?;
        self.next_avail = idx;
        fence(Ordering::SeqCst);
        if self.event_idx {
            let at = self.layout.avail_event();
            let event = u16::from_le(
                mem.load(GuestAddress(at), Ordering::Acquire)
                    .map_err(|e| mem_err(at, e))?,
            );
            Ok(need_event(event, idx, old))
        } else {
            let at = self.layout.used_flags();
            let flags: u16 = mem
                .load(GuestAddress(at), Ordering::Acquire)
                .map_err(|e| mem_err(at, e))?;
            Ok(u16::from_le(flags) & USED_F_NO_NOTIFY == 0)
        }
    }

    /// The next used element, if the device returned one.
    pub fn pop_used(&mut self, mem: &GuestMemoryMmap<()>) -> Result<Option<UsedElem>, RingError> {
        let at = self.layout.used_idx();
        let used = u16::from_le(
            mem.load(GuestAddress(at), Ordering::Acquire)
                .map_err(|e| mem_err(at, e))?,
        );
        if used == self.last_used {
            return Ok(None);
        }
        // A device cannot return more than was published.
        if used.wrapping_sub(self.last_used) > self.outstanding() {
            return Err(RingError::UsedIndex {
                used,
                seen: self.last_used,
                avail: self.next_avail,
                size: self.layout.size,
            });
        }
        let at = self.layout.used_entry(self.last_used % self.layout.size);
        let mut b = [0u8; 8];
        mem.read_slice(&mut b, GuestAddress(at))
            .map_err(|e| mem_err(at, e))?;
        let id = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let len = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let id = u16::try_from(id)
            .ok()
            .filter(|&i| i < self.layout.size)
            .ok_or(RingError::UsedId {
                id,
                size: self.layout.size,
            })?;
        self.last_used = self.last_used.wrapping_add(1);
        Ok(Some(UsedElem { id, len }))
    }

    /// Before sleeping on the call eventfd: with EVENT_IDX, asks for a call on the
    /// next used element (used_event = what we consumed), then looks again, since the
    /// device may have added elements before it could see the request. Returns
    /// whether elements are waiting (then do not sleep). Without EVENT_IDX the
    /// device calls for every batch and the eventfd keeps the count: nothing to do.
    pub fn arm(&self, mem: &GuestMemoryMmap<()>) -> Result<bool, RingError> {
        if !self.event_idx {
            return Ok(false);
        }
        let at = self.layout.used_event();
        mem.store(self.last_used.to_le(), GuestAddress(at), Ordering::Release)
            .map_err(|e| mem_err(at, e))?;
        fence(Ordering::SeqCst);
        let at = self.layout.used_idx();
        let used = u16::from_le(
            mem.load(GuestAddress(at), Ordering::Acquire)
                .map_err(|e| mem_err(at, e))?,
        );
        Ok(used != self.last_used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    /// The device's side, written here from the spec to check the driver's.
    fn device_push(mem: &GuestMemoryMmap<()>, l: &RingLayout, used_idx: u16, id: u32, len: u32) {
        let at = l.used + 4 + 8 * u64::from(used_idx % l.size);
        mem.write_obj(id, GuestAddress(at)).unwrap();
        mem.write_obj(len, GuestAddress(at + 4)).unwrap();
        mem.write_obj(used_idx.wrapping_add(1), GuestAddress(l.used + 2))
            .unwrap();
    }

    #[test]
    fn layout_follows_the_spec_alignment_and_sizes() {
        let l = RingLayout::new(0x1003, 128).unwrap();
        assert_eq!(l.desc, 0x1040);
        assert_eq!(l.avail, 0x1040 + 16 * 128);
        // avail: 4 + 2*128 + 2 = 262 bytes, then 64-aligned.
        assert_eq!(l.used, align_up(l.avail + 262, 64).unwrap());
        assert_eq!(l.used % 4, 0);
        assert_eq!(l.end, l.used + 4 + 8 * 128 + 2);
        assert_eq!(l.used_event(), l.avail + 4 + 256);
        assert_eq!(l.avail_event(), l.used + 4 + 1024);
        assert_eq!(RingLayout::new(0, 100), Err(RingError::Size(100)));
        assert_eq!(RingLayout::new(0, 0), Err(RingError::Size(0)));
        assert!(matches!(
            RingLayout::new(u64::MAX - 10, 16),
            Err(RingError::Overflow { .. })
        ));
    }

    #[test]
    fn descriptor_encoding_is_little_endian_in_spec_order() {
        let d = Descriptor {
            addr: 0x1122_3344_5566_7788,
            len: 0x99aa_bbcc,
            flags: DESC_F_NEXT | DESC_F_WRITE,
            next: 0x0102,
        };
        assert_eq!(
            d.encode(),
            [
                0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0xcc, 0xbb, 0xaa, 0x99, 3, 0, 0x02,
                0x01
            ]
        );
    }

    #[test]
    fn need_event_matches_the_spec_formula_across_wrap() {
        // Event at 5: moving 3 -> 6 crosses it, 6 -> 9 does not.
        assert!(need_event(5, 6, 3));
        assert!(!need_event(5, 9, 6));
        assert!(need_event(5, 6, 5));
        assert!(!need_event(5, 5, 3));
        // Across the 16-bit wrap.
        assert!(need_event(0xffff, 2, 0xfffe));
        assert!(!need_event(0xfffd, 2, 0xfffe));
    }

    #[test]
    fn publish_writes_entries_then_index_and_reads_the_kick_state() {
        let m = mem();
        let l = RingLayout::new(0, 8).unwrap();
        let mut q = SplitQueue::new(&m, l, false).unwrap();
        assert!(q.publish(&m, &[0, 3]).unwrap(), "kick unless NO_NOTIFY");
        let e0: u16 = m.read_obj(GuestAddress(l.avail + 4)).unwrap();
        let e1: u16 = m.read_obj(GuestAddress(l.avail + 6)).unwrap();
        let idx: u16 = m.read_obj(GuestAddress(l.avail + 2)).unwrap();
        assert_eq!((e0, e1, idx), (0, 3, 2));
        m.write_obj(USED_F_NO_NOTIFY, GuestAddress(l.used)).unwrap();
        assert!(!q.publish(&m, &[5]).unwrap());
        assert_eq!(q.outstanding(), 3);
        assert_eq!(
            q.publish(&m, &[8]),
            Err(RingError::Descriptor { index: 8, size: 8 })
        );
        assert!(!q.publish(&m, &[]).unwrap());
    }

    #[test]
    fn event_idx_kicks_only_when_the_device_asked() {
        let m = mem();
        let l = RingLayout::new(0x4000, 8).unwrap();
        let mut q = SplitQueue::new(&m, l, true).unwrap();
        // avail_event 0: the device waits for entry 0.
        assert!(q.publish(&m, &[0]).unwrap());
        // It has not looked again (avail_event still 0): no kick for entry 1.
        assert!(!q.publish(&m, &[1]).unwrap());
        // It asks for a kick at index 2.
        m.write_obj(2u16, GuestAddress(l.avail_event())).unwrap();
        assert!(q.publish(&m, &[2, 4]).unwrap());
    }

    #[test]
    fn used_elements_come_back_in_order_and_are_checked() {
        let m = mem();
        let l = RingLayout::new(0, 4).unwrap();
        let mut q = SplitQueue::new(&m, l, true).unwrap();
        assert_eq!(q.pop_used(&m).unwrap(), None);
        q.publish(&m, &[0, 1, 2]).unwrap();
        device_push(&m, &l, 0, 2, 4096);
        device_push(&m, &l, 1, 0, 12);
        assert_eq!(q.pop_used(&m).unwrap(), Some(UsedElem { id: 2, len: 4096 }));
        assert_eq!(q.pop_used(&m).unwrap(), Some(UsedElem { id: 0, len: 12 }));
        assert_eq!(q.pop_used(&m).unwrap(), None);
        assert_eq!(q.outstanding(), 1);
        // arm: used_event = consumed; nothing waiting.
        assert!(!q.arm(&m).unwrap());
        let ue: u16 = m.read_obj(GuestAddress(l.used_event())).unwrap();
        assert_eq!(ue, 2);
        // An element arrived before the arm was seen: arm says so.
        device_push(&m, &l, 2, 1, 0);
        assert!(q.arm(&m).unwrap());
        assert_eq!(q.pop_used(&m).unwrap(), Some(UsedElem { id: 1, len: 0 }));
        // A device that names a descriptor outside the queue.
        q.publish(&m, &[3]).unwrap();
        device_push(&m, &l, 3, 9, 0);
        assert_eq!(q.pop_used(&m), Err(RingError::UsedId { id: 9, size: 4 }));
    }

    #[test]
    fn a_used_index_beyond_what_was_published_is_refused() {
        let m = mem();
        let l = RingLayout::new(0, 4).unwrap();
        let mut q = SplitQueue::new(&m, l, false).unwrap();
        q.publish(&m, &[0]).unwrap();
        m.write_obj(3u16, GuestAddress(l.used + 2)).unwrap();
        assert!(matches!(
            q.pop_used(&m),
            Err(RingError::UsedIndex { used: 3, .. })
        ));
    }

    /// rust-vmm's device side (virtio-queue, what vhost-user-backend serves rings
    /// with) reads the rings this driver writes, and the notifications agree.
    #[test]
    fn virtio_queue_device_side_agrees_with_the_driver() {
        use virtio_queue::{Queue, QueueT};
        let m = mem();
        let l = RingLayout::new(0x1000, 16).unwrap();
        let mut q = SplitQueue::new(&m, l, true).unwrap();
        let chain = [
            Descriptor {
                addr: 0x1_0000,
                len: 51,
                flags: DESC_F_NEXT,
                next: 1,
            },
            Descriptor {
                addr: 0x1_1000,
                len: 108,
                flags: DESC_F_WRITE | DESC_F_NEXT,
                next: 2,
            },
            Descriptor {
                addr: 0x1_2000,
                len: 4096,
                flags: DESC_F_WRITE,
                next: 0,
            },
        ];
        for (i, d) in chain.iter().enumerate() {
            q.write_desc(&m, u16::try_from(i).unwrap(), d).unwrap();
        }
        let mut dev = Queue::new(16).unwrap();
        let lo_hi = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
        let (lo, hi) = lo_hi(l.desc);
        dev.set_desc_table_address(lo, hi);
        let (lo, hi) = lo_hi(l.avail);
        dev.set_avail_ring_address(lo, hi);
        let (lo, hi) = lo_hi(l.used);
        dev.set_used_ring_address(lo, hi);
        dev.set_size(16);
        dev.set_event_idx(true);
        dev.set_ready(true);
        assert!(dev.is_valid(&m));

        assert!(q.publish(&m, &[0]).unwrap(), "the device waits for entry 0");
        let c = dev.pop_descriptor_chain(&m).expect("a chain");
        assert_eq!(c.head_index(), 0);
        let got: Vec<(u64, u32, bool)> = c
            .map(|d| (d.addr().0, d.len(), d.is_write_only()))
            .collect();
        assert_eq!(
            got,
            vec![
                (0x1_0000, 51, false),
                (0x1_1000, 108, true),
                (0x1_2000, 4096, true)
            ]
        );
        // The device re-enables kicks (avail_event = 1): our next publish kicks,
        // the one after (device not looking again) does not.
        assert!(!dev.enable_notification(&m).unwrap());
        dev.add_used(&m, 0, 4108).unwrap();
        // used_event is still 0: the device calls for its first used element.
        assert!(dev.needs_notification(&m).unwrap());
        assert_eq!(q.pop_used(&m).unwrap(), Some(UsedElem { id: 0, len: 4108 }));
        assert!(q.publish(&m, &[0]).unwrap());
        assert!(!q.publish(&m, &[0]).unwrap());
        for _ in 0..2 {
            let c = dev.pop_descriptor_chain(&m).expect("a chain");
            dev.add_used(&m, c.head_index(), 0).unwrap();
        }
        // We did not arm (used_event still 0): no call for these two. Once we have
        // consumed them and armed (used_event 3), the next one is called for.
        assert_eq!(q.pop_used(&m).unwrap().map(|u| u.id), Some(0));
        assert_eq!(q.pop_used(&m).unwrap().map(|u| u.id), Some(0));
        assert!(!q.arm(&m).unwrap());
        q.publish(&m, &[0]).unwrap();
        let c = dev.pop_descriptor_chain(&m).expect("a chain");
        dev.add_used(&m, c.head_index(), 0).unwrap();
        assert!(dev.needs_notification(&m).unwrap());
    }

    #[test]
    fn indexes_wrap_past_u16() {
        let m = mem();
        let l = RingLayout::new(0, 2).unwrap();
        let mut q = SplitQueue::new(&m, l, false).unwrap();
        for i in 0..70_000u32 {
            let n = u16::try_from(i % 65536).unwrap();
            q.publish(&m, &[1]).unwrap();
            device_push(&m, &l, n, 1, 7);
            assert_eq!(q.pop_used(&m).unwrap(), Some(UsedElem { id: 1, len: 7 }));
        }
        assert_eq!(q.outstanding(), 0);
    }
}
