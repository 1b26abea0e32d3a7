//! The copy itself: resolving the parsed descriptors to LUNs of this daemon, and
//! the job that moves the blocks, one bounded chunk at a time, reading from the
//! source LUN into the job's scratch buffer and writing it to the destination LUN.

use std::sync::Arc;

use backends::{IoError, IoOp};

use crate::exec::{IoBuf, Job, JobCtx, LbaRange, Step};
use crate::lun::{Lun, LunRegistry};
use crate::sense::{asc, Asc, CmdError, FieldPointer, Sense, SenseKey};

use super::parse::{param_field, unreachable, XcopyParams};
use super::results::{FailedDetails, Outcome, MAX_SEGMENT_LEN};

/// The most one read (and then one write) of a copy moves: bounds the scratch
/// buffer. A multiple of every block size we allow.
pub const CHUNK: u64 = 1 << 20;

/// One segment, resolved.
pub(crate) struct SegPlan {
    pub src: Arc<Lun>,
    pub dst: Arc<Lun>,
    pub src_lba: u64,
    pub dst_lba: u64,
    pub bytes: u64,
    /// Parameter list offsets of the SOURCE and DESTINATION LBA fields.
    pub src_field: usize,
    pub dst_field: usize,
    /// Source and destination overlap on one LUN with the destination after the
    /// source: copy from the end so that no block is overwritten before it is read.
    pub backward: bool,
}

/// Finds the LUNs of every segment and checks what can be checked before any
/// block moves: block lengths, whole-block segments, the segment length limit,
/// writable destinations. Capacities are checked as each segment starts.
pub(crate) fn resolve(
    registry: &LunRegistry,
    recv: &Arc<Lun>,
    p: &XcopyParams,
) -> Result<Vec<SegPlan>, Sense> {
    let mut luns: Vec<Option<Arc<Lun>>> = vec![None; p.targets.len()];
    let mut plans = Vec::with_capacity(p.segments.len());
    for (i, s) in p.segments.iter().enumerate() {
        let src = target(registry, recv, p, &mut luns, s.src, i)?;
        let dst = target(registry, recv, p, &mut luns, s.dst, i)?;
        if dst.config.read_only {
            return Err(Sense::new(SenseKey::DataProtect, asc::WRITE_PROTECTED));
        }
        let sbs = u64::from(src.block_size());
        let dbs = u64::from(dst.block_size());
        let unit = if s.dc { dbs } else { sbs };
        let bytes = u64::from(s.blocks) * unit;
        // Inexact segments (a partial block at either end) are refused: we have
        // no pad or concatenate handling.
        if bytes % sbs != 0 || bytes % dbs != 0 || bytes > u64::from(MAX_SEGMENT_LEN) {
            return Err(param_field(s.blocks_field(), None));
        }
        let backward = src.uid == dst.uid
            && match (s.src_lba.checked_mul(sbs), s.dst_lba.checked_mul(dbs)) {
                (Some(a), Some(b)) => b > a && b < a.saturating_add(bytes),
                _ => false,
            };
        plans.push(SegPlan {
            src,
            dst,
            src_lba: s.src_lba,
            dst_lba: s.dst_lba,
            bytes,
            src_field: s.src_lba_field(),
            dst_field: s.dst_lba_field(),
            backward,
        });
    }
    Ok(plans)
}

/// The LUN of target descriptor `idx`, named by segment `seg`.
fn target(
    registry: &LunRegistry,
    recv: &Arc<Lun>,
    p: &XcopyParams,
    luns: &mut [Option<Arc<Lun>>],
    idx: u16,
    seg: usize,
) -> Result<Arc<Lun>, Sense> {
    let idx = usize::from(idx);
    if let Some(Some(l)) = luns.get(idx) {
        return Ok(l.clone());
    }
    let Some(t) = p.targets.get(idx) else {
        return Err(unreachable(seg));
    };
    let lun = if recv.naa() == t.naa {
        recv.clone()
    } else {
        registry.by_naa(&t.naa).ok_or_else(|| unreachable(seg))?
    };
    if t.block_len != 0 && t.block_len != lun.block_size() {
        return Err(param_field(t.offset + 29, Some(7)));
    }
    // A stopped LUN cannot be copied to or from.
    if !Arc::ptr_eq(&lun, recv) && crate::spc::check_ready(&lun).is_err() {
        return Err(unreachable(seg));
    }
    if let Some(slot) = luns.get_mut(idx) {
        *slot = Some(lun.clone());
    }
    Ok(lun)
}

/// The write range of a copy whose every destination is the LUN the command came
/// to (the only task set a job can hold a range in): the span of all destination
/// blocks, shared, so that COMPARE AND WRITE stays atomic against the copy.
/// Copies that write to another LUN declare none (see the module docs).
pub(crate) fn write_range(recv: &Lun, plans: &[SegPlan]) -> Option<LbaRange> {
    if plans.is_empty() || plans.iter().any(|p| p.dst.uid != recv.uid) {
        return None;
    }
    let bs = u64::from(recv.block_size());
    let lba = plans.iter().map(|p| p.dst_lba).min()?;
    let end = plans
        .iter()
        .map(|p| p.dst_lba.saturating_add(p.bytes / bs))
        .max()?;
    Some(LbaRange {
        lba,
        blocks: end.saturating_sub(lba),
        exclusive: false,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    Reading,
    Writing,
}

/// An EXTENDED COPY in progress.
pub(crate) struct CopyJob {
    /// The LUN the command came to: it keeps the copy's record.
    lun: Arc<Lun>,
    record: Option<u64>,
    plans: Vec<SegPlan>,
    seg: usize,
    seg_started: bool,
    /// Bytes of the current segment copied.
    done: u64,
    /// Bytes copied by earlier segments and chunks.
    total: u64,
    /// The chunk in flight: its length and position in the segment.
    chunk: usize,
    pos: u64,
    phase: Phase,
    /// PARAMETER LIST LENGTH: what the command transfers.
    wanted: u32,
    range: Option<LbaRange>,
    finished: bool,
}

impl CopyJob {
    pub(crate) fn new(
        lun: Arc<Lun>,
        record: Option<u64>,
        plans: Vec<SegPlan>,
        wanted: u32,
    ) -> Self {
        let range = write_range(&lun, &plans);
        CopyJob {
            lun,
            record,
            plans,
            seg: 0,
            seg_started: false,
            done: 0,
            total: 0,
            chunk: 0,
            pos: 0,
            phase: Phase::Idle,
            wanted,
            range,
            finished: false,
        }
    }

    /// COPY ABORTED (SPC-4 6.4.4.3, errors during segment processing): the
    /// segment in COMMAND-SPECIFIC INFORMATION, the residual of a partly written
    /// segment in INFORMATION (destination blocks), and where a descriptor field
    /// is to blame a segment pointer to it (relative to the parameter list).
    fn abort_sense(&self, a: Asc, field: Option<usize>) -> Sense {
        let mut s = Sense::new(SenseKey::CopyAborted, a);
        s.command_specific = Some(self.seg as u64);
        if let Some(p) = self.plans.get(self.seg) {
            if self.done > 0 {
                let dbs = u64::from(p.dst.block_size()).max(1);
                s.information = Some(p.bytes.saturating_sub(self.done) / dbs);
            }
        }
        if let Some(b) = field.and_then(|f| u16::try_from(f).ok()) {
            s.field = Some(FieldPointer {
                cdb: false,
                byte: b,
                bit: None,
            });
        }
        s
    }

    fn fail(&mut self, s: Sense) -> Step {
        self.finished = true;
        if let Some(id) = self.record {
            let sense = s.encode(crate::mode::sense_format(&self.lun));
            let mut st = self.lun.copy.lock().unwrap_or_else(|e| e.into_inner());
            // The failing segment counts as processed.
            st.progress(id, self.seg + 1, self.total);
            st.finish(
                id,
                Outcome::Failed(FailedDetails {
                    status: 0x02,
                    sense,
                }),
            );
        }
        Step::Done(Err(CmdError::Check(s)))
    }

    fn succeed(&mut self) -> Step {
        self.finished = true;
        if let Some(id) = self.record {
            let mut st = self.lun.copy.lock().unwrap_or_else(|e| e.into_inner());
            st.progress(id, self.plans.len(), self.total);
            st.finish(id, Outcome::Good);
        }
        Step::Done(Ok(self.wanted))
    }

    fn report_progress(&self) {
        if let Some(id) = self.record {
            self.lun
                .copy
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .progress(id, self.seg + 1, self.total);
        }
    }

    /// LBA OUT OF RANGE on a copy target is the copy target's error: the copy is
    /// aborted with no additional sense code of its own (the ASC a copy target's
    /// CHECK CONDITION gets, SPC-4 6.4.4.3) and a pointer to the LBA field.
    fn check_ranges(&self, p: &SegPlan) -> Result<(), Sense> {
        let in_range = |lun: &Lun, lba: u64| {
            let blocks = p.bytes / u64::from(lun.block_size()).max(1);
            lba.checked_add(blocks)
                .is_some_and(|end| end <= lun.num_blocks())
        };
        if !in_range(&p.src, p.src_lba) {
            return Err(self.abort_sense(asc::NO_ADDITIONAL_SENSE, Some(p.src_field)));
        }
        if !in_range(&p.dst, p.dst_lba) {
            return Err(self.abort_sense(asc::NO_ADDITIONAL_SENSE, Some(p.dst_field)));
        }
        Ok(())
    }

    /// Starts the next chunk's read, or finishes.
    fn next(&mut self, ctx: &mut JobCtx<'_>) -> Step {
        loop {
            let Some(p) = self.plans.get(self.seg) else {
                return self.succeed();
            };
            if !self.seg_started {
                if let Err(s) = self.check_ranges(p) {
                    return self.fail(s);
                }
                self.seg_started = true;
                self.report_progress();
            }
            let Some(p) = self.plans.get(self.seg) else {
                return self.succeed();
            };
            if self.done >= p.bytes {
                self.seg += 1;
                self.seg_started = false;
                self.done = 0;
                continue;
            }
            let left = p.bytes - self.done;
            let chunk = left.min(CHUNK);
            self.pos = if p.backward { left - chunk } else { self.done };
            // In range (checked above), so these offsets fit.
            let Some(offset) = p
                .src_lba
                .checked_mul(u64::from(p.src.block_size()))
                .and_then(|o| o.checked_add(self.pos))
            else {
                let s = self.abort_sense(asc::NO_ADDITIONAL_SENSE, Some(p.src_field));
                return self.fail(s);
            };
            let src = p.src.clone();
            self.chunk = chunk as usize;
            if ctx.scratch.len() < self.chunk {
                ctx.scratch.resize(self.chunk, 0);
            }
            self.phase = Phase::Reading;
            return Step::Io {
                lun: Some(src),
                op: IoOp::Read { offset },
                buf: IoBuf::Scratch {
                    offset: 0,
                    len: self.chunk,
                },
            };
        }
    }

    fn write_step(&mut self) -> Step {
        let Some(p) = self.plans.get(self.seg) else {
            return self.succeed();
        };
        let Some(offset) = p
            .dst_lba
            .checked_mul(u64::from(p.dst.block_size()))
            .and_then(|o| o.checked_add(self.pos))
        else {
            let s = self.abort_sense(asc::NO_ADDITIONAL_SENSE, Some(p.dst_field));
            return self.fail(s);
        };
        let dst = p.dst.clone();
        self.phase = Phase::Writing;
        Step::Io {
            lun: Some(dst),
            op: IoOp::Write { offset, fua: false },
            buf: IoBuf::Scratch {
                offset: 0,
                len: self.chunk,
            },
        }
    }

    /// A copy target's I/O failed: the copy is aborted (the target's own error is
    /// not carried; see the module docs).
    fn io_failed(&mut self, _e: IoError) -> Step {
        let s = self.abort_sense(asc::NO_ADDITIONAL_SENSE, None);
        self.fail(s)
    }
}

impl Job for CopyJob {
    fn step(&mut self, ctx: &mut JobCtx<'_>, last: Option<Result<usize, IoError>>) -> Step {
        if self.finished {
            return Step::Done(Ok(self.wanted));
        }
        match (self.phase, last) {
            (Phase::Reading, Some(Ok(n))) => {
                if n < self.chunk {
                    let s = self.abort_sense(asc::COPY_TARGET_DEVICE_DATA_UNDERRUN, None);
                    return self.fail(s);
                }
                return self.write_step();
            }
            (Phase::Writing, Some(Ok(n))) => {
                if n < self.chunk {
                    let s = self.abort_sense(asc::COPY_TARGET_DEVICE_DATA_UNDERRUN, None);
                    return self.fail(s);
                }
                self.done += self.chunk as u64;
                self.total += self.chunk as u64;
                self.phase = Phase::Idle;
            }
            (Phase::Reading | Phase::Writing, Some(Err(e))) => return self.io_failed(e),
            _ => {}
        }
        self.next(ctx)
    }

    fn range(&self) -> Option<LbaRange> {
        self.range
    }
}

impl Drop for CopyJob {
    /// A copy that never finished was aborted (task management, nexus loss): its
    /// record must not stay "in progress" and block its list identifier.
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if let Some(id) = self.record {
            self.lun
                .copy
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .finish(
                    id,
                    Outcome::Failed(FailedDetails {
                        status: 0x40, // TASK ABORTED
                        sense: Vec::new(),
                    }),
                );
        }
    }
}
