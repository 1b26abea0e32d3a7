//! The step machine behind every SBC command that touches the backend: a short
//! list of phases (move data between the medium and the command's buffer, compare,
//! write a repeated pattern, OR, deallocate, flush), each cut into bounded chunks
//! so that no command allocates in proportion to a length it was sent.

use backends::{IoError, IoOp};
use smallvec::SmallVec;

use crate::cmd::DataBuf;
use crate::exec::{io_error_sense, IoBuf, Job, JobCtx, LbaRange, Step};
use crate::lun::Lun;
use crate::sense::{asc, ScsiStatus, Sense, SenseKey};

/// Largest scratch buffer a job uses (compares, patterns, read-modify-write).
pub(crate) const SCRATCH_MAX: u64 = 1 << 20;

/// Where the expected bytes of a compare come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Src {
    /// The data-out buffer from this offset on (BYTCHK 01b, COMPARE AND WRITE).
    Data(usize),
    /// The first `n` bytes of the data-out buffer, repeated (BYTCHK 11b).
    Repeat(usize),
}

/// One phase of a plan. Offsets and lengths are in bytes on the medium.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Read the medium into the data buffer at `data_off` (zero copy).
    Read { off: u64, len: u64, data_off: usize },
    /// Write the data buffer at `data_off` to the medium (zero copy).
    Write {
        off: u64,
        len: u64,
        data_off: usize,
        fua: bool,
    },
    /// Read the medium and compare it with `src`: MISCOMPARE with the offset of the
    /// first differing byte (counted from the start of this phase) in INFORMATION.
    Compare { off: u64, len: u64, src: Src },
    /// Read the medium and drop the bytes (VERIFY without compare, PRE-FETCH).
    Check { off: u64, len: u64 },
    /// Read `len` bytes (one block) into scratch and copy the first `have` of them
    /// into the data buffer at `data_off`: the partial last block of a data-in
    /// buffer shorter than the transfer (O_DIRECT backends refuse a read whose
    /// length is not a multiple of the block size).
    ReadTail {
        off: u64,
        len: u64,
        data_off: usize,
        have: usize,
    },
    /// Write `pattern` (whose length divides the chunk size) over the range.
    Pattern {
        off: u64,
        len: u64,
        pattern: Vec<u8>,
        fua: bool,
    },
    /// Deallocate (`discard`) or zero the range with one backend operation.
    Zero { off: u64, len: u64, discard: bool },
    /// Read the range, merge `have` bytes of the data buffer (from `data_off`) into
    /// it — OR them in (ORWRITE) or copy them over (a partial last block) — and write
    /// it back. Bytes past `have` keep what the medium held.
    Merge {
        off: u64,
        len: u64,
        data_off: usize,
        have: usize,
        fua: bool,
        or: bool,
    },
    /// Make every completed write stable.
    Flush,
}

impl Phase {
    fn len(&self) -> u64 {
        match self {
            Phase::Read { len, .. }
            | Phase::Write { len, .. }
            | Phase::Compare { len, .. }
            | Phase::Check { len, .. }
            | Phase::ReadTail { len, .. }
            | Phase::Pattern { len, .. }
            | Phase::Merge { len, .. } => *len,
            Phase::Zero { .. } | Phase::Flush => 1,
        }
    }
}

/// The phases of a plan: a read or write has one or two, held inline.
pub(crate) type Phases = SmallVec<[Phase; 2]>;

/// What the last submitted operation was, to finish its chunk when it completes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    /// Nothing to do after it but advance by `n` bytes.
    Advance(u64, bool),
    /// A compare read of `n` bytes into scratch.
    CompareRead(u64),
    /// The read half of a merge chunk of `n` bytes.
    MergeRead(u64),
    /// The scratch read of a partial last data-in block of `n` bytes.
    TailRead(u64),
}

/// A list of phases run in order; `Done(Ok(wanted))` after the last.
pub(crate) struct Plan {
    phases: Phases,
    idx: usize,
    /// Bytes of the current phase done.
    pos: u64,
    pending: Option<Pending>,
    /// The pattern of the current phase is in scratch.
    filled: bool,
    wanted: u32,
    range: Option<LbaRange>,
    status: ScsiStatus,
    block_size: u32,
    /// Largest operation on the command's own buffer (backend limit), bytes.
    max_io: u64,
    /// Largest operation on scratch, bytes (a multiple of the block size).
    max_scratch: u64,
    /// Bytes of all phases, and done so far (progress indication).
    total: u64,
    done: u64,
    /// Byte offset of the operation in flight, for sense data when the backend does
    /// not say where it failed.
    last_off: Option<u64>,
}

impl Plan {
    pub(crate) fn new(lun: &Lun, phases: impl Into<Phases>, wanted: u32) -> Self {
        let phases = phases.into();
        let bs = u64::from(lun.block_size());
        let limit = u64::from(lun.backend.capabilities().max_transfer);
        let max_io = if limit == 0 {
            u64::MAX
        } else {
            (limit / bs * bs).max(bs)
        };
        let max_scratch = max_io.min(SCRATCH_MAX).max(bs);
        let total = phases.iter().map(Phase::len).sum();
        Plan {
            phases,
            idx: 0,
            pos: 0,
            pending: None,
            filled: false,
            wanted,
            range: None,
            status: ScsiStatus::Good,
            block_size: lun.block_size(),
            max_io,
            max_scratch,
            total,
            done: 0,
            last_off: None,
        }
    }

    /// Declares the blocks the plan writes (see [`LbaRange`]).
    pub(crate) fn with_range(mut self, lba: u64, blocks: u64, exclusive: bool) -> Self {
        self.range = Some(LbaRange {
            lba,
            blocks,
            exclusive,
        });
        self
    }

    /// The status of a successful end (CONDITION MET for PRE-FETCH).
    pub(crate) fn with_status(mut self, status: ScsiStatus) -> Self {
        self.status = status;
        self
    }

    pub(crate) fn boxed(self) -> Box<dyn Job> {
        Box::new(self)
    }

    /// The plan as the worker runs it without a box (plain reads and writes).
    pub(crate) fn unboxed(self) -> crate::exec::Exec {
        crate::exec::Exec::Plan(crate::exec::PlanJob(self))
    }

    /// Fraction done, as a SCSI progress indication (0..=0xffff).
    pub(crate) fn progress(&self) -> u16 {
        if self.total == 0 {
            return 0;
        }
        let p = u128::from(self.done) * 0x1_0000 / u128::from(self.total);
        u16::try_from(p).unwrap_or(u16::MAX)
    }

    fn next_phase(&mut self) {
        self.done = self.done.saturating_add(
            self.phases
                .get(self.idx)
                .map_or(0, |p| p.len().saturating_sub(self.pos)),
        );
        self.idx += 1;
        self.pos = 0;
        self.filled = false;
    }

    fn advance(&mut self, n: u64) {
        self.pos = self.pos.saturating_add(n);
        self.done = self.done.saturating_add(n);
    }

    fn io(op: IoOp, buf: IoBuf) -> Step {
        Step::Io { lun: None, op, buf }
    }

    fn scratch_io(off: u64, n: u64, write: Option<bool>) -> Step {
        // n <= max_scratch <= SCRATCH_MAX: fits usize.
        let len = n as usize;
        let op = match write {
            Some(fua) => IoOp::Write { offset: off, fua },
            None => IoOp::Read { offset: off },
        };
        Self::io(op, IoBuf::Scratch { offset: 0, len })
    }

    /// `n` rounded up to whole blocks: a compare or check of a data-out buffer that
    /// ends inside a block still reads whole blocks (O_DIRECT backends refuse
    /// others). Phases start on block boundaries and cover blocks of the command's
    /// range, so the rounded read stays inside it.
    fn whole_blocks(&self, n: u64) -> u64 {
        let bs = u64::from(self.block_size.max(1));
        n.div_ceil(bs).saturating_mul(bs)
    }

    fn ensure_scratch(scratch: &mut crate::exec::Scratch, n: u64) {
        let n = n as usize;
        if scratch.len() < n {
            scratch.resize(n, 0);
        }
    }

    /// The next operation of the plan, or its end.
    fn next(&mut self, ctx: &mut JobCtx<'_>) -> Step {
        loop {
            let Some(phase) = self.phases.get(self.idx) else {
                return Step::Done(Ok(self.wanted));
            };
            let remaining = phase.len().saturating_sub(self.pos);
            if remaining == 0 {
                self.next_phase();
                continue;
            }
            let pos = self.pos;
            match phase {
                Phase::Read { off, data_off, .. } => {
                    let n = remaining.min(self.max_io);
                    self.pending = Some(Pending::Advance(n, false));
                    return Self::io(
                        IoOp::Read { offset: off + pos },
                        IoBuf::Data {
                            offset: data_off + pos as usize,
                            len: usize::try_from(n).unwrap_or(usize::MAX),
                        },
                    );
                }
                Phase::Write {
                    off, data_off, fua, ..
                } => {
                    let n = remaining.min(self.max_io);
                    self.pending = Some(Pending::Advance(n, true));
                    return Self::io(
                        IoOp::Write {
                            offset: off + pos,
                            fua: *fua,
                        },
                        IoBuf::Data {
                            offset: data_off + pos as usize,
                            len: usize::try_from(n).unwrap_or(usize::MAX),
                        },
                    );
                }
                Phase::Compare { off, .. } => {
                    let n = remaining.min(self.max_scratch);
                    let io = self.whole_blocks(n);
                    Self::ensure_scratch(ctx.scratch, io);
                    self.pending = Some(Pending::CompareRead(n));
                    return Self::scratch_io(off + pos, io, None);
                }
                Phase::Check { off, .. } => {
                    let n = remaining.min(self.max_scratch);
                    let io = self.whole_blocks(n);
                    Self::ensure_scratch(ctx.scratch, io);
                    self.pending = Some(Pending::Advance(n, false));
                    return Self::scratch_io(off + pos, io, None);
                }
                Phase::ReadTail { off, .. } => {
                    let n = remaining.min(self.max_scratch);
                    Self::ensure_scratch(ctx.scratch, n);
                    self.pending = Some(Pending::TailRead(n));
                    return Self::scratch_io(off + pos, n, None);
                }
                Phase::Pattern {
                    off, pattern, fua, ..
                } => {
                    let plen = pattern.len().max(1) as u64;
                    // A whole number of patterns per chunk.
                    let chunk = (self.max_scratch / plen * plen).max(plen);
                    if !self.filled {
                        let fill = chunk.min(phase.len()) as usize;
                        ctx.scratch.clear();
                        ctx.scratch.reserve(fill);
                        if pattern.is_empty() {
                            ctx.scratch.resize(fill, 0);
                        }
                        while ctx.scratch.len() < fill {
                            let k = pattern.len().min(fill - ctx.scratch.len());
                            ctx.scratch.extend_from_slice(&pattern[..k]);
                        }
                        self.filled = true;
                    }
                    let n = remaining.min(chunk);
                    self.pending = Some(Pending::Advance(n, true));
                    return Self::scratch_io(off + pos, n, Some(*fua));
                }
                Phase::Zero { off, len, discard } => {
                    let op = if *discard {
                        IoOp::Discard {
                            offset: *off,
                            len: *len,
                        }
                    } else {
                        IoOp::WriteZeroes {
                            offset: *off,
                            len: *len,
                        }
                    };
                    if *len == 0 {
                        self.next_phase();
                        continue;
                    }
                    self.pending = Some(Pending::Advance(1, true));
                    return Self::io(op, IoBuf::None);
                }
                Phase::Merge { off, .. } => {
                    let n = remaining.min(self.max_scratch);
                    Self::ensure_scratch(ctx.scratch, n);
                    self.pending = Some(Pending::MergeRead(n));
                    return Self::scratch_io(off + pos, n, None);
                }
                Phase::Flush => {
                    self.pending = Some(Pending::Advance(1, true));
                    return Self::io(IoOp::Flush, IoBuf::None);
                }
            }
        }
    }

    /// Finishes the chunk whose operation just completed; `Some` ends the plan.
    fn complete(&mut self, ctx: &mut JobCtx<'_>, p: Pending) -> Option<Step> {
        match p {
            Pending::Advance(n, _) => self.advance(n),
            Pending::CompareRead(n) => {
                let Some(Phase::Compare { src, .. }) = self.phases.get(self.idx) else {
                    return None;
                };
                let at = self.pos;
                if let Some(i) = first_difference(&ctx.scratch[..n as usize], &*ctx.data, *src, at)
                {
                    let s = Sense::new(SenseKey::Miscompare, asc::MISCOMPARE_DURING_VERIFY)
                        .with_information(at + i as u64);
                    return Some(Step::Done(Err(s.into())));
                }
                self.advance(n);
            }
            Pending::TailRead(n) => {
                if let Some(Phase::ReadTail { data_off, have, .. }) = self.phases.get(self.idx) {
                    let k = (*have).min(n as usize);
                    ctx.data.write_at(*data_off, &ctx.scratch[..k]);
                }
                self.advance(n);
            }
            Pending::MergeRead(n) => {
                let Some(Phase::Merge {
                    off,
                    data_off,
                    have,
                    fua,
                    or,
                    ..
                }) = self.phases.get(self.idx)
                else {
                    return None;
                };
                let at = self.pos as usize;
                let chunk = &mut ctx.scratch[..n as usize];
                merge_from(
                    chunk,
                    &*ctx.data,
                    data_off + at,
                    have.saturating_sub(at),
                    *or,
                );
                self.pending = Some(Pending::Advance(n, true));
                return Some(Self::scratch_io(off + self.pos, n, Some(*fua)));
            }
        }
        None
    }
}

impl Job for Plan {
    fn step(&mut self, ctx: &mut JobCtx<'_>, last: Option<Result<usize, IoError>>) -> Step {
        if let Some(result) = last {
            let pending = self.pending.take();
            if let Err(mut e) = result {
                let write = matches!(pending, Some(Pending::Advance(_, true)));
                if e.offset.is_none() {
                    e.offset = self.last_off;
                }
                return Step::Done(Err(io_error_sense(&e, self.block_size, write)));
            }
            if let Some(p) = pending {
                if let Some(step) = self.complete(ctx, p) {
                    return step;
                }
            }
        }
        let step = self.next(ctx);
        if let Step::Io { op, .. } = &step {
            self.last_off = match *op {
                IoOp::Read { offset }
                | IoOp::Write { offset, .. }
                | IoOp::Discard { offset, .. }
                | IoOp::WriteZeroes { offset, .. } => Some(offset),
                IoOp::Flush => None,
            };
        }
        step
    }

    fn range(&self) -> Option<LbaRange> {
        self.range
    }

    fn status(&self) -> ScsiStatus {
        self.status
    }
}

/// Index of the first byte of `medium` (the bytes at `at..` of the compared range)
/// that differs from the expected bytes `src` describes. Expected bytes that the
/// data buffer does not hold count as different.
fn first_difference(medium: &[u8], data: &dyn DataBuf, src: Src, at: u64) -> Option<usize> {
    let mut buf = [0u8; 4096];
    let mut i = 0usize;
    while i < medium.len() {
        let x = at + i as u64;
        let (from, k) = match src {
            Src::Data(base) => (base + x as usize, buf.len().min(medium.len() - i)),
            Src::Repeat(n) => {
                let n = n.max(1);
                let within = (x % n as u64) as usize;
                (within, buf.len().min(n - within).min(medium.len() - i))
            }
        };
        let got = data.read_at(from, &mut buf[..k]);
        if let Some(j) = (0..k).find(|&j| j >= got || buf[j] != medium[i + j]) {
            return Some(i + j);
        }
        i += k;
    }
    None
}

/// ORs (or copies) `have` bytes of `data` from `from` on into `chunk`; bytes past
/// `have` leave the medium as it was.
fn merge_from(chunk: &mut [u8], data: &dyn DataBuf, from: usize, have: usize, or: bool) {
    let mut buf = [0u8; 4096];
    let end = chunk.len().min(have);
    let mut i = 0;
    while i < end {
        let k = buf.len().min(end - i);
        let got = data.read_at(from + i, &mut buf[..k]);
        let dst = &mut chunk[i..i + got];
        if or {
            dst.iter_mut().zip(&buf[..got]).for_each(|(d, s)| *d |= s);
        } else {
            dst.copy_from_slice(&buf[..got]);
        }
        if got < k {
            break;
        }
        i += k;
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_cdb::*;
    use crate::cmd::DataDir;
    use crate::sense::{asc, SenseKey};
    use crate::testutil::{assert_check, assert_good, Fixture};

    /// Reads and writes at or past `bad` bytes fail with EIO (no offset given).
    struct Failing(backends::ram::RamBackend, u64);

    struct FailingChannel {
        inner: Box<dyn backends::IoChannel>,
        bad: u64,
        failed: Vec<backends::Completion>,
    }

    impl backends::IoChannel for FailingChannel {
        unsafe fn submit(
            &mut self,
            op: backends::IoOp,
            iovecs: &[libc::iovec],
            user_data: u64,
        ) -> Result<(), backends::BackendError> {
            let (off, write) = match op {
                backends::IoOp::Read { offset } => (offset, false),
                backends::IoOp::Write { offset, .. } => (offset, true),
                _ => (0, false),
            };
            let len: u64 = iovecs.iter().map(|v| v.iov_len as u64).sum();
            if len > 0 && off + len > self.bad {
                let kind = if write {
                    backends::IoErrorKind::Write
                } else {
                    backends::IoErrorKind::Read
                };
                self.failed.push(backends::Completion {
                    user_data,
                    result: Err(backends::IoError::new(kind, libc::EIO, None)),
                });
                return Ok(());
            }
            // SAFETY: forwarded unchanged; our caller upholds `submit`'s contract.
            unsafe { self.inner.submit(op, iovecs, user_data) }
        }
        fn cancel(&mut self, _: u64) -> bool {
            false
        }
        fn reap(&mut self, out: &mut Vec<backends::Completion>) {
            self.inner.reap(out);
            out.append(&mut self.failed);
        }
        fn in_flight(&self) -> usize {
            self.failed.len() + self.inner.in_flight()
        }
    }

    impl backends::Backend for Failing {
        fn size(&self) -> u64 {
            self.0.size()
        }
        fn capabilities(&self) -> backends::Capabilities {
            self.0.capabilities()
        }
        fn open_channel(
            &self,
            n: &vmm_sys_util::eventfd::EventFd,
        ) -> Result<Box<dyn backends::IoChannel>, backends::BackendError> {
            Ok(Box::new(FailingChannel {
                inner: self.0.open_channel(n)?,
                bad: self.1,
                failed: Vec::new(),
            }))
        }
        fn block_status(&self, o: u64, l: u64) -> Result<backends::Extent, backends::BackendError> {
            self.0.block_status(o, l)
        }
        fn resize(&self, s: u64) -> Result<(), backends::BackendError> {
            self.0.resize(s)
        }
        fn describe(&self) -> String {
            "failing".into()
        }
    }

    #[test]
    fn backend_errors_are_medium_errors_with_the_lba() {
        let cfg = crate::lun::LunConfig::new("bad", crate::testutil::uuid_for("bad"));
        let mut f = Fixture::with(
            cfg,
            std::sync::Arc::new(Failing(backends::ram::RamBackend::new(1 << 20), 512 * 100)),
        );
        let (r, _) = f.read_in(&rw10(0x28, 0, 8), 4096);
        assert_good(&r);
        let (r, _) = f.read_in(&rw10(0x28, 99, 4), 2048);
        assert_check(&r, SenseKey::MediumError, asc::UNRECOVERED_READ_ERROR);
        assert_eq!(r.sense_data.unwrap().information, Some(99));
        let (r, _) = f.run(&rw10(0x2a, 120, 1), DataDir::ToDevice, vec![0; 512]);
        assert_check(&r, SenseKey::MediumError, asc::WRITE_ERROR);
        assert_eq!(r.sense_data.unwrap().information, Some(120));
        // A compare read that fails is a read error, not a miscompare.
        let mut buf = vec![0; 512];
        buf.extend_from_slice(&[1; 512]);
        let (r, _) = f.run(&caw(150, 1), DataDir::ToDevice, buf);
        assert_check(&r, SenseKey::MediumError, asc::UNRECOVERED_READ_ERROR);
    }

    #[test]
    fn progress_runs_from_zero_to_full() {
        let f = Fixture::ram();
        let p = super::Plan::new(&f.lun, vec![super::Phase::Check { off: 0, len: 10 }], 0);
        assert_eq!(p.progress(), 0);
        let empty = super::Plan::new(&f.lun, vec![], 0);
        assert_eq!(empty.progress(), 0);
    }
}
