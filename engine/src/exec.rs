//! How a command handler runs: the context it sees, what it returns, and the
//! step machine (`Job`) that block I/O commands use to drive backend operations
//! one at a time without blocking the worker thread.

use std::sync::Arc;

use backends::{IoError, IoOp};

use crate::cmd::DataBuf;
use crate::lun::{Lun, LunRegistry};
use crate::nexus::Nexus;
use crate::opcodes::OpInfo;
use crate::sense::{CmdError, Sense};

/// What a handler does with a command.
pub enum Exec {
    /// GOOD status, no data-in. `u32`: bytes of data-out the command consumed.
    Good(u32),
    /// GOOD status with these data-in bytes (already clipped to the CDB's allocation
    /// length); the engine copies what fits into the initiator's buffer.
    Data(Vec<u8>),
    /// Backend I/O, run as a job of steps on the worker thread.
    Job(Box<dyn Job>),
}

pub type ExecResult = Result<Exec, CmdError>;

/// The signature every opcode handler has.
pub type Handler = fn(&mut CmdCtx<'_>) -> ExecResult;

/// What a handler sees.
pub struct CmdCtx<'a> {
    pub lun: &'a Arc<Lun>,
    /// The LUN number the initiator addressed.
    pub lun_number: u64,
    pub nexus: &'a Arc<Nexus>,
    pub cdb: &'a [u8],
    pub info: &'static OpInfo,
    /// The command's data buffer (data-out to read, or room for data-in).
    pub data: &'a mut dyn DataBuf,
    pub registry: &'a Arc<LunRegistry>,
}

impl CmdCtx<'_> {
    /// Copies up to `len` bytes of data-out; fewer if the initiator sent fewer.
    pub fn data_out(&self, len: usize) -> Vec<u8> {
        let n = len.min(self.data.len());
        let mut v = vec![0u8; n];
        let got = self.data.read_at(0, &mut v);
        v.truncate(got);
        v
    }
}

/// Which blocks a job writes, so that COMPARE AND WRITE is atomic against every
/// other write to those blocks from any transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LbaRange {
    pub lba: u64,
    pub blocks: u64,
    /// An exclusive range (COMPARE AND WRITE) waits for, and holds off, every
    /// overlapping range; a shared one (plain writes) only conflicts with exclusive.
    pub exclusive: bool,
}

impl LbaRange {
    pub fn overlaps(&self, o: &LbaRange) -> bool {
        let end = self.lba.saturating_add(self.blocks);
        let oend = o.lba.saturating_add(o.blocks);
        self.lba < oend && o.lba < end
    }
}

/// Where the bytes of one backend operation live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoBuf {
    None,
    /// A range of the command's own data buffer (zero copy).
    Data {
        offset: usize,
        len: usize,
    },
    /// A range of the job's scratch buffer (`JobCtx::scratch`).
    Scratch {
        offset: usize,
        len: usize,
    },
}

/// One step of a job.
pub enum Step {
    /// Submit `op` on `lun` (`None`: the command's LUN) over `buf`; the job's next
    /// `step` gets the result.
    Io {
        lun: Option<Arc<Lun>>,
        op: IoOp,
        buf: IoBuf,
    },
    /// Finished: `Ok(n)` is the number of bytes the command wanted to transfer (the
    /// engine computes residuals from it and the buffer length), or the error.
    Done(Result<u32, CmdError>),
}

/// What a job sees at each step.
pub struct JobCtx<'a> {
    pub lun: &'a Arc<Lun>,
    pub nexus: &'a Arc<Nexus>,
    pub data: &'a mut dyn DataBuf,
    /// Bytes the job owns across steps (bounce buffers for compares, WRITE SAME
    /// patterns, copies). Never reallocate it while an I/O on it is in flight — the
    /// engine only calls `step` when none is.
    pub scratch: &'a mut Vec<u8>,
    pub registry: &'a Arc<LunRegistry>,
}

/// A command that needs the backend: a small state machine.
pub trait Job: Send {
    /// Called first with `None`, then with the result of each `Step::Io`.
    fn step(&mut self, ctx: &mut JobCtx<'_>, last: Option<Result<usize, IoError>>) -> Step;

    /// Blocks this job writes, for write atomicity (see [`LbaRange`]).
    fn range(&self) -> Option<LbaRange> {
        None
    }

    /// The status of a successful end: GOOD, or CONDITION MET (PRE-FETCH).
    fn status(&self) -> crate::sense::ScsiStatus {
        crate::sense::ScsiStatus::Good
    }
}

/// The sense data for a failed backend operation on `lba` (SBC-3 4.16).
pub fn io_error_sense(e: &IoError, block_size: u32, write: bool) -> CmdError {
    use crate::sense::{asc, SenseKey};
    use backends::IoErrorKind as K;
    let lba = e.offset.map(|o| o / u64::from(block_size.max(1)));
    let mut s = match e.kind {
        K::Read => Sense::new(SenseKey::MediumError, asc::UNRECOVERED_READ_ERROR),
        K::Write => Sense::new(SenseKey::MediumError, asc::WRITE_ERROR),
        K::NoSpace => Sense::new(
            SenseKey::DataProtect,
            asc::SPACE_ALLOCATION_FAILED_WRITE_PROTECT,
        ),
        K::OutOfRange => Sense::illegal(asc::LBA_OUT_OF_RANGE),
        K::Canceled => Sense::new(SenseKey::AbortedCommand, asc::NO_ADDITIONAL_SENSE),
        K::Unsupported | K::Other if write => Sense::new(SenseKey::MediumError, asc::WRITE_ERROR),
        K::Unsupported | K::Other => {
            Sense::new(SenseKey::HardwareError, asc::INTERNAL_TARGET_FAILURE)
        }
    };
    if let (Some(l), K::Read | K::Write) = (lba, e.kind) {
        s = s.with_information(l);
    }
    CmdError::Check(s)
}

/// A job for the common case: one backend operation on the command's own buffer.
pub struct SingleIo {
    pub op: IoOp,
    pub buf: IoBuf,
    /// Bytes the command wanted to transfer (for residuals).
    pub wanted: u32,
    pub range: Option<LbaRange>,
    pub write: bool,
}

impl Job for SingleIo {
    fn step(&mut self, ctx: &mut JobCtx<'_>, last: Option<Result<usize, IoError>>) -> Step {
        match last {
            None => Step::Io {
                lun: None,
                op: self.op,
                buf: self.buf,
            },
            Some(Ok(_)) => Step::Done(Ok(self.wanted)),
            Some(Err(e)) => Step::Done(Err(io_error_sense(&e, ctx.lun.block_size(), self.write))),
        }
    }

    fn range(&self) -> Option<LbaRange> {
        self.range
    }
}
