//! The task set of one LUN (SAM-5 8): every command from every I_T nexus between
//! its arrival and its completion, in arrival order. It decides when a command may
//! run (SIMPLE, ORDERED, HEAD OF QUEUE; write ranges for COMPARE AND WRITE), marks
//! commands aborted for task management, and tells a task management function when
//! the last command it aborted has left — only then is the function done.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use crate::cmd::TaskAttr;
use crate::exec::LbaRange;
use crate::nexus::NexusKey;
use crate::worker::{Mailbox, Msg, SlotRef};

pub(crate) type TaskSeq = u64;

pub(crate) struct TaskEntry {
    pub nexus: u64,
    /// The I_T nexus identity (PREEMPT AND ABORT selects commands by it).
    pub key: NexusKey,
    pub tag: u64,
    pub attr: TaskAttr,
    /// Dispatched to its handler (or about to be).
    pub running: bool,
    /// Waiting for an overlapping write range to clear.
    pub range_wait: bool,
    pub aborted: bool,
    /// The blocks it writes, once its job exists.
    pub range: Option<LbaRange>,
    pub owner: Arc<Mailbox>,
    pub slot: SlotRef,
}

/// A task management function waiting for the commands it aborted to leave.
struct PendingTmf {
    remaining: HashSet<TaskSeq>,
    owner: Arc<Mailbox>,
    token: u64,
}

/// The entries of a task set in arrival order. Sequence numbers only grow, so a
/// deque kept sorted by them takes a new entry at the back and finds one by
/// binary search; commands finish roughly in the order they came, so a removal
/// shifts few entries. Once grown to the queue depth it allocates nothing (a
/// `BTreeMap` allocated and freed nodes as commands came and went).
#[derive(Default)]
struct Tasks(VecDeque<(TaskSeq, TaskEntry)>);

impl Tasks {
    fn push(&mut self, seq: TaskSeq, e: TaskEntry) {
        debug_assert!(!matches!(self.0.back(), Some((s, _)) if *s >= seq));
        self.0.push_back((seq, e));
    }

    fn index(&self, seq: TaskSeq) -> Option<usize> {
        self.0.binary_search_by_key(&seq, |(s, _)| *s).ok()
    }

    fn get(&self, seq: TaskSeq) -> Option<&TaskEntry> {
        self.index(seq).and_then(|i| self.0.get(i)).map(|(_, t)| t)
    }

    fn get_mut(&mut self, seq: TaskSeq) -> Option<&mut TaskEntry> {
        let i = self.index(seq)?;
        self.0.get_mut(i).map(|(_, t)| t)
    }

    fn remove(&mut self, seq: TaskSeq) -> Option<TaskEntry> {
        let i = self.index(seq)?;
        self.0.remove(i).map(|(_, t)| t)
    }

    /// The entries older than `seq`, oldest first.
    fn older(&self, seq: TaskSeq) -> impl Iterator<Item = &TaskEntry> {
        self.0
            .iter()
            .take_while(move |(s, _)| *s < seq)
            .map(|(_, t)| t)
    }

    fn iter(&self) -> impl Iterator<Item = (TaskSeq, &TaskEntry)> {
        self.0.iter().map(|(s, t)| (*s, t))
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (TaskSeq, &mut TaskEntry)> {
        self.0.iter_mut().map(|(s, t)| (*s, t))
    }

    fn values(&self) -> impl Iterator<Item = &TaskEntry> {
        self.0.iter().map(|(_, t)| t)
    }
}

#[derive(Default)]
pub(crate) struct TaskSet {
    next: TaskSeq,
    tasks: Tasks,
    /// Entries not yet running (or waiting on a range): skip the wake-up scan when 0.
    waiting: usize,
    /// Entries that are not SIMPLE: while 0, a SIMPLE command starts without a scan.
    non_simple: usize,
    /// Entries holding an exclusive write range: while 0, a plain write's range
    /// check needs no scan.
    exclusive: usize,
    tmfs: Vec<PendingTmf>,
}

/// Whom to wake after a change to the task set.
#[derive(Default)]
pub(crate) struct Wakeups {
    pub start: Vec<(Arc<Mailbox>, SlotRef)>,
    pub tmf_done: Vec<(Arc<Mailbox>, u64)>,
}

impl Wakeups {
    pub fn deliver(self) {
        for (mb, slot) in self.start {
            mb.post(Msg::Start(slot));
        }
        for (mb, token) in self.tmf_done {
            mb.post(Msg::TmfDrained(token));
        }
    }
}

impl TaskSet {
    /// Enters a command; returns its sequence number and whether it may run now.
    pub fn add(&mut self, mut e: TaskEntry) -> (TaskSeq, bool) {
        let seq = self.next;
        self.next += 1;
        let run = self.may_start(seq, e.attr);
        e.running = run;
        if !matches!(e.attr, TaskAttr::Simple | TaskAttr::Aca) {
            self.non_simple += 1;
        }
        if !run {
            self.waiting += 1;
        }
        self.tasks.push(seq, e);
        (seq, run)
    }

    fn may_start(&self, seq: TaskSeq, attr: TaskAttr) -> bool {
        let mut older = self.tasks.older(seq);
        match attr {
            TaskAttr::HeadOfQueue => true,
            TaskAttr::Ordered => older.next().is_none(),
            // SAM-5 8.6.2: a SIMPLE task waits for older HEAD OF QUEUE and ORDERED ones.
            TaskAttr::Simple | TaskAttr::Aca => {
                self.non_simple == 0
                    || older.all(|t| matches!(t.attr, TaskAttr::Simple | TaskAttr::Aca))
            }
        }
    }

    /// A running command's job writes `range`: returns whether it may start now
    /// (else it waits and is woken by a `Start`).
    pub fn begin_range(&mut self, seq: TaskSeq, range: LbaRange) -> bool {
        let ok = !self.range_blocked(seq, &range);
        if let Some(t) = self.tasks.get_mut(seq) {
            let was_exclusive = t.range.is_some_and(|r| r.exclusive);
            if range.exclusive && !was_exclusive {
                self.exclusive += 1;
            } else if !range.exclusive && was_exclusive {
                self.exclusive = self.exclusive.saturating_sub(1);
            }
            t.range = Some(range);
            if !ok {
                t.range_wait = true;
                self.waiting += 1;
            }
        }
        ok
    }

    fn range_blocked(&self, seq: TaskSeq, r: &LbaRange) -> bool {
        if !r.exclusive && self.exclusive == 0 {
            return false;
        }
        self.tasks.iter().any(|(s, t)| {
            if s == seq {
                return false;
            }
            let Some(o) = &t.range else { return false };
            if !o.overlaps(r) {
                return false;
            }
            // An older command held back by an exclusive range keeps its place:
            // a younger write over the same blocks waits behind it even where
            // neither is exclusive, or it would overtake it (UNMAP waiting on a
            // COMPARE AND WRITE, then a WRITE SAME over the UNMAP's blocks).
            if t.range_wait && s < seq {
                return true;
            }
            if !(o.exclusive || r.exclusive) {
                return false;
            }
            // Running holders always block; a waiting one blocks only younger ones,
            // so that the wait graph follows arrival order and cannot cycle.
            !t.range_wait
        })
    }

    /// Removes a finished command and collects who may now proceed.
    pub fn remove(&mut self, seq: TaskSeq) -> Wakeups {
        let mut w = Wakeups::default();
        let Some(gone) = self.tasks.remove(seq) else {
            return w;
        };
        if !gone.running || gone.range_wait {
            self.waiting = self.waiting.saturating_sub(1);
        }
        if !matches!(gone.attr, TaskAttr::Simple | TaskAttr::Aca) {
            self.non_simple = self.non_simple.saturating_sub(1);
        }
        if gone.range.is_some_and(|r| r.exclusive) {
            self.exclusive = self.exclusive.saturating_sub(1);
        }
        self.tmfs.retain_mut(|p| {
            p.remaining.remove(&seq);
            if p.remaining.is_empty() {
                w.tmf_done.push((p.owner.clone(), p.token));
                false
            } else {
                true
            }
        });
        if self.waiting > 0 {
            self.wake(&mut w);
        }
        w
    }

    fn wake(&mut self, w: &mut Wakeups) {
        let candidates: Vec<TaskSeq> = self
            .tasks
            .iter()
            .filter(|(_, t)| !t.aborted && (!t.running || t.range_wait))
            .map(|(s, _)| s)
            .collect();
        for seq in candidates {
            let Some(t) = self.tasks.get(seq) else {
                continue;
            };
            let go = if t.range_wait {
                t.range.is_some_and(|r| !self.range_blocked(seq, &r))
            } else {
                self.may_start(seq, t.attr)
            };
            if go {
                if let Some(t) = self.tasks.get_mut(seq) {
                    t.running = true;
                    t.range_wait = false;
                    self.waiting = self.waiting.saturating_sub(1);
                    w.start.push((t.owner.clone(), t.slot));
                }
            }
        }
    }

    /// Marks every command matching `pred` aborted; returns their owners and slots.
    /// If any were found and `tmf` is given, the function is told when the last of
    /// them leaves.
    pub fn abort_where(
        &mut self,
        pred: impl Fn(&TaskEntry) -> bool,
        tmf: Option<(Arc<Mailbox>, u64)>,
    ) -> (Vec<(Arc<Mailbox>, SlotRef)>, bool) {
        let mut hit = Vec::new();
        let mut seqs = HashSet::new();
        for (seq, t) in self.tasks.iter_mut() {
            if pred(t) {
                if !t.aborted {
                    t.aborted = true;
                    hit.push((t.owner.clone(), t.slot));
                }
                seqs.insert(seq);
            }
        }
        let registered = !seqs.is_empty() && tmf.is_some();
        if let (false, Some((owner, token))) = (seqs.is_empty(), tmf) {
            self.tmfs.push(PendingTmf {
                remaining: seqs,
                owner,
                token,
            });
        }
        (hit, registered)
    }

    /// Whether a command with `tag` from `nexus` is in the task set (QUERY TASK).
    pub fn contains(&self, nexus: u64, tag: u64) -> bool {
        self.tasks
            .values()
            .any(|t| t.nexus == nexus && t.tag == tag && !t.aborted)
    }

    /// Whether any command from `nexus` is in the task set (QUERY TASK SET).
    pub fn any_from(&self, nexus: u64) -> bool {
        self.tasks.values().any(|t| t.nexus == nexus && !t.aborted)
    }
}

/// Aborts every command of `tasks` whose I_T nexus `pred` selects, except those of
/// the nexus `keep` (the one that asked), and tells their workers, which finish
/// them without a response. Nothing waits for them: PREEMPT AND ABORT (SPC-4
/// 5.13.11.4.2) completes once they are marked.
pub(crate) fn abort_nexuses(tasks: &Mutex<TaskSet>, pred: impl Fn(&NexusKey) -> bool, keep: u64) {
    let (hits, _) = tasks
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .abort_where(|t| t.nexus != keep && pred(&t.key), None);
    for (mb, slot) in hits {
        mb.post(Msg::Abort(slot));
    }
}
