//! Unit attention conditions, queued per I_T nexus (SPC-4 5.14 / SAM-5 5.14).
//! The hot path checks an atomic count of the conditions pending for nexuses that
//! hash like its own and takes the lock only when that count is not zero: a
//! condition left for a nexus that is gone (an I_T NEXUS LOSS nobody collects) does
//! not send every other nexus's commands through the lock.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::nexus::NexusKey;
use crate::sense::{asc, Asc};

/// At most this many conditions queue per nexus; beyond it the oldest are dropped
/// (SPC-4 allows reporting only the highest-priority one).
const MAX_QUEUED: usize = 16;

/// At most this many initiator identities are remembered per LUN. Every iSCSI
/// session (a new ISID) is a new identity, so without a bound the table grows for
/// ever. An identity forgotten this way sees POWER ON, RESET OR BUS DEVICE RESET
/// OCCURRED again when it returns, which SAM-5 allows.
const MAX_NEXUSES: usize = 4096;

/// Buckets of pending counts. With several live sessions and a few gone ones, most
/// nexuses find a bucket of zero.
const BUCKETS: usize = 64;

#[derive(Default)]
struct Inner {
    queues: HashMap<NexusKey, VecDeque<Asc>>,
    /// Nexuses that have seen the power-on unit attention already.
    seen: HashSet<NexusKey>,
}

pub struct UnitAttentions {
    /// Number of queued conditions per bucket of nexuses ([`bucket`]), changed
    /// only under the lock.
    pending: [AtomicUsize; BUCKETS],
    inner: Mutex<Inner>,
}

impl Default for UnitAttentions {
    fn default() -> Self {
        UnitAttentions {
            pending: std::array::from_fn(|_| AtomicUsize::new(0)),
            inner: Mutex::default(),
        }
    }
}

/// The bucket of a nexus: FNV-1a over its name and port (cheap enough to run for
/// every command; the names are a few dozen bytes).
fn bucket(key: &NexusKey) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.initiator.bytes().chain(key.relative_port.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Fold the high bits in: FNV's low bits alone mix poorly.
    usize::try_from((h ^ (h >> 32)) % BUCKETS as u64).unwrap_or(0)
}

impl UnitAttentions {
    fn pending(&self, key: &NexusKey) -> &AtomicUsize {
        &self.pending[bucket(key)]
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(inner: &mut Inner, pending: &AtomicUsize, key: &NexusKey, a: Asc) {
        // `pending` is the bucket of `key`.
        let q = inner.queues.entry(key.clone()).or_default();
        if q.contains(&a) {
            return;
        }
        if q.len() >= MAX_QUEUED {
            q.pop_front();
            pending.fetch_sub(1, Ordering::AcqRel);
        }
        q.push_back(a);
        pending.fetch_add(1, Ordering::AcqRel);
    }

    /// Queues `a` for one nexus.
    pub fn establish(&self, key: &NexusKey, a: Asc) {
        let mut inner = self.lock();
        Self::push(&mut inner, self.pending(key), key, a);
    }

    /// Queues `a` for every nexus that has talked to this LUN, except `except`.
    pub fn establish_all(&self, a: Asc, except: Option<&NexusKey>) {
        let mut inner = self.lock();
        let keys: Vec<NexusKey> = inner
            .seen
            .iter()
            .filter(|k| Some(*k) != except)
            .cloned()
            .collect();
        for k in keys {
            Self::push(&mut inner, self.pending(&k), &k, a);
        }
    }

    /// Queues `a` for every nexus that has talked to this LUN and that `pred`
    /// selects (persistent reservations: every I_T nexus of a registration).
    pub fn establish_matching(&self, a: Asc, pred: impl Fn(&NexusKey) -> bool) {
        let mut inner = self.lock();
        let keys: Vec<NexusKey> = inner.seen.iter().filter(|k| pred(k)).cloned().collect();
        for k in keys {
            Self::push(&mut inner, self.pending(&k), &k, a);
        }
    }

    /// The first command of a nexus gets POWER ON, RESET, OR BUS DEVICE RESET
    /// OCCURRED (SAM-5 6.3.2): this registers the nexus and queues it.
    fn first_contact(&self, inner: &mut Inner, key: &NexusKey) {
        // Looked up before it is cloned: this runs for every command while any
        // condition is pending on the LUN (one left for a nexus that is gone is
        // enough), and cloning the key allocates.
        if inner.seen.contains(key) {
            return;
        }
        if inner.seen.insert(key.clone()) {
            Self::push(
                inner,
                self.pending(key),
                key,
                asc::POWER_ON_RESET_OR_BUS_DEVICE_RESET,
            );
            if inner.seen.len() > MAX_NEXUSES {
                self.forget_some(inner, key);
            }
        }
    }

    /// Drops identities beyond [`MAX_NEXUSES`], those with nothing pending first,
    /// never `keep`.
    fn forget_some(&self, inner: &mut Inner, keep: &NexusKey) {
        let excess = inner.seen.len().saturating_sub(MAX_NEXUSES);
        let idle = |k: &NexusKey| inner.queues.get(k).is_none_or(|q| q.is_empty());
        let mut victims: Vec<NexusKey> = inner
            .seen
            .iter()
            .filter(|k| *k != keep && idle(k))
            .take(excess)
            .cloned()
            .collect();
        if victims.len() < excess {
            let more: Vec<NexusKey> = inner
                .seen
                .iter()
                .filter(|k| *k != keep && !victims.contains(k))
                .take(excess - victims.len())
                .cloned()
                .collect();
            victims.extend(more);
        }
        for k in victims {
            inner.seen.remove(&k);
            if let Some(q) = inner.queues.remove(&k) {
                self.pending(&k).fetch_sub(q.len(), Ordering::AcqRel);
            }
        }
    }

    /// Takes the oldest pending condition of `key`, if any.
    pub fn pop(&self, key: &NexusKey) -> Option<Asc> {
        let mut inner = self.lock();
        self.first_contact(&mut inner, key);
        if self.pending(key).load(Ordering::Acquire) == 0 {
            return None;
        }
        let q = inner.queues.get_mut(key)?;
        let a = q.pop_front()?;
        if q.is_empty() {
            inner.queues.remove(key);
        }
        self.pending(key).fetch_sub(1, Ordering::AcqRel);
        Some(a)
    }

    /// The oldest pending condition of `key` without taking it.
    pub fn peek(&self, key: &NexusKey) -> Option<Asc> {
        let mut inner = self.lock();
        self.first_contact(&mut inner, key);
        inner.queues.get(key)?.front().copied()
    }

    /// The hot-path check: with nothing pending in the bucket of `key` and a nexus
    /// the caller knows has been here before (`known`), no lock is taken.
    pub fn take(&self, key: &NexusKey, known: bool) -> Option<Asc> {
        if known && self.pending(key).load(Ordering::Acquire) == 0 {
            return None;
        }
        self.pop(key)
    }

    /// Drops every condition of `key` (e.g. after a nexus loss the caller queues
    /// I_T NEXUS LOSS OCCURRED instead).
    pub fn clear(&self, key: &NexusKey) {
        let mut inner = self.lock();
        if let Some(q) = inner.queues.remove(key) {
            self.pending(key).fetch_sub(q.len(), Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: &str) -> NexusKey {
        NexusKey {
            initiator: n.into(),
            relative_port: 1,
        }
    }

    #[test]
    fn identities_are_bounded_and_the_busy_ones_kept() {
        let ua = UnitAttentions::default();
        let busy = key("busy");
        ua.pop(&busy);
        ua.establish(&busy, asc::CAPACITY_DATA_HAS_CHANGED);
        for i in 0..(MAX_NEXUSES + 100) {
            let k = key(&format!("iqn.x,i,0x{i:x}"));
            ua.pop(&k);
            assert_eq!(ua.pop(&k), None);
        }
        let inner = ua.lock();
        assert!(inner.seen.len() <= MAX_NEXUSES);
        assert!(inner.queues.len() <= 1, "idle identities keep no queue");
        drop(inner);
        assert_eq!(ua.pop(&busy), Some(asc::CAPACITY_DATA_HAS_CHANGED));
    }

    #[test]
    fn first_contact_reports_power_on_then_nothing() {
        let ua = UnitAttentions::default();
        assert_eq!(
            ua.take(&key("a"), true),
            None,
            "a known nexus takes the fast path"
        );
        assert_eq!(
            ua.take(&key("a"), false),
            Some(asc::POWER_ON_RESET_OR_BUS_DEVICE_RESET)
        );
        assert_eq!(ua.take(&key("a"), false), None);
    }

    #[test]
    fn establish_all_skips_the_originator_and_dedups() {
        let ua = UnitAttentions::default();
        ua.pop(&key("a"));
        ua.pop(&key("b"));
        ua.establish_all(asc::CAPACITY_DATA_HAS_CHANGED, Some(&key("a")));
        ua.establish_all(asc::CAPACITY_DATA_HAS_CHANGED, Some(&key("a")));
        assert_eq!(ua.pop(&key("a")), None);
        assert_eq!(ua.pop(&key("b")), Some(asc::CAPACITY_DATA_HAS_CHANGED));
        assert_eq!(ua.pop(&key("b")), None);
    }

    #[test]
    fn establish_matching_reaches_only_selected_seen_nexuses() {
        let ua = UnitAttentions::default();
        ua.pop(&key("a"));
        ua.pop(&key("b"));
        ua.establish_matching(asc::REGISTRATIONS_PREEMPTED, |k| &*k.initiator == "a");
        assert_eq!(ua.pop(&key("a")), Some(asc::REGISTRATIONS_PREEMPTED));
        assert_eq!(ua.pop(&key("b")), None);
    }

    #[test]
    fn a_condition_left_for_a_gone_nexus_keeps_others_off_the_lock() {
        let ua = UnitAttentions::default();
        let gone = key("iqn.gone,i,0x1");
        let live = (0..100)
            .map(|i| key(&format!("iqn.live,i,0x{i:x}")))
            .find(|k| bucket(k) != bucket(&gone))
            .expect("a name in another bucket");
        ua.pop(&gone);
        ua.pop(&live);
        ua.pop(&live);
        ua.clear(&gone);
        ua.establish(&gone, asc::I_T_NEXUS_LOSS_OCCURRED);
        assert_eq!(ua.pending(&live).load(Ordering::Acquire), 0);
        assert_eq!(ua.pending(&gone).load(Ordering::Acquire), 1);
        // The lock is not needed for `live`: held here, `take` still answers.
        let held = ua.lock();
        assert_eq!(ua.take(&live, true), None);
        drop(held);
        assert_eq!(ua.take(&gone, true), Some(asc::I_T_NEXUS_LOSS_OCCURRED));
        assert_eq!(ua.pending(&gone).load(Ordering::Acquire), 0);
    }
}
