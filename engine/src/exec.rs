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
// `Plan` is large and unboxed on purpose: an `Exec` lives for one call, and a
// box would be an allocation for every read and write.
#[allow(clippy::large_enum_variant)]
pub enum Exec {
    /// GOOD status, no data-in. `u32`: bytes of data-out the command consumed.
    Good(u32),
    /// GOOD status with these data-in bytes (already clipped to the CDB's allocation
    /// length); the engine copies what fits into the initiator's buffer.
    Data(Vec<u8>),
    /// Backend I/O, run as a job of steps on the worker thread.
    Job(Box<dyn Job>),
    /// A plain read or write: a job the worker holds in the command's slot, with
    /// no allocation (the most frequent commands).
    Plan(PlanJob),
}

/// The phases of a block read or write, as a job (see [`Exec::Plan`]).
pub struct PlanJob(pub(crate) crate::sbc::plan::Plan);

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
    /// The direction the transport gave the buffer.
    pub dir: crate::cmd::DataDir,
    pub registry: &'a Arc<LunRegistry>,
}

impl CmdCtx<'_> {
    /// Copies up to `len` bytes of data-out; fewer if the initiator sent fewer, and
    /// none if the command came with a data-in buffer (its bytes are not data-out).
    pub fn data_out(&self, len: usize) -> Vec<u8> {
        if self.dir == crate::cmd::DataDir::FromDevice {
            return Vec::new();
        }
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
    /// Waits for something outside the worker (a SANITIZE waiting for its
    /// background operation): the job's next `step` (with `None`) comes after
    /// `JobCtx::waker` is woken. A parked command holds its place in the task set
    /// and its range; aborting it drops the job at once.
    Park,
}

/// Wakes one parked job (see [`Step::Park`]) from any thread. A wake for a
/// command that has finished, or has not parked, is ignored.
#[derive(Clone, Debug)]
pub struct JobWaker {
    mailbox: Arc<crate::worker::Mailbox>,
    slot: crate::worker::SlotRef,
}

impl JobWaker {
    pub(crate) fn new(mailbox: Arc<crate::worker::Mailbox>, slot: crate::worker::SlotRef) -> Self {
        JobWaker { mailbox, slot }
    }

    pub fn wake(&self) {
        self.mailbox.post(crate::worker::Msg::Start(self.slot));
    }
}

/// Where a job's [`JobWaker`] comes from, borrowed for one step (making the
/// waker costs a reference count only for the jobs that park).
#[derive(Clone, Copy, Debug)]
pub struct WakerSource<'a> {
    mailbox: &'a Arc<crate::worker::Mailbox>,
    slot: crate::worker::SlotRef,
}

impl<'a> WakerSource<'a> {
    pub(crate) fn new(
        mailbox: &'a Arc<crate::worker::Mailbox>,
        slot: crate::worker::SlotRef,
    ) -> Self {
        WakerSource { mailbox, slot }
    }

    pub fn waker(&self) -> JobWaker {
        JobWaker::new(self.mailbox.clone(), self.slot)
    }
}

/// What a job sees at each step.
pub struct JobCtx<'a> {
    pub lun: &'a Arc<Lun>,
    pub nexus: &'a Arc<Nexus>,
    pub data: &'a mut dyn DataBuf,
    /// Bytes the job owns across steps (bounce buffers for compares, WRITE SAME
    /// patterns, copies). Never reallocate it while an I/O on it is in flight — the
    /// engine only calls `step` when none is.
    pub scratch: &'a mut Scratch,
    pub registry: &'a Arc<LunRegistry>,
    /// What wakes this job after it returns [`Step::Park`]; `None` where nothing
    /// can (a job driven outside a worker).
    pub waker: Option<WakerSource<'a>>,
}

/// A job's scratch buffer: bytes whose start is aligned to [`Scratch::ALIGN`], so
/// that backends opened with `O_DIRECT` (block devices by default) accept I/O on
/// it. Dereferences to its bytes; grows like a `Vec<u8>` (moving its contents
/// when it reallocates, so never while an I/O on it is in flight).
#[derive(Debug, Default)]
pub struct Scratch {
    /// `ALIGN - 1` bytes more than the capacity; the bytes start at `off`.
    buf: Vec<u8>,
    off: usize,
    len: usize,
}

impl Scratch {
    /// Alignment of the first byte: any logical block size up to 4096.
    pub const ALIGN: usize = 4096;

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes that fit without reallocating.
    pub fn capacity(&self) -> usize {
        self.buf.len().saturating_sub(self.off)
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Makes room for `additional` more bytes.
    pub fn reserve(&mut self, additional: usize) {
        let want = self.len.saturating_add(additional);
        if want <= self.capacity() {
            return;
        }
        let want = want.max(self.capacity().saturating_mul(2));
        let mut buf = vec![0u8; want.saturating_add(Self::ALIGN - 1)];
        let off = buf.as_ptr().align_offset(Self::ALIGN).min(Self::ALIGN - 1);
        buf[off..off + self.len].copy_from_slice(&self.buf[self.off..self.off + self.len]);
        self.buf = buf;
        self.off = off;
    }

    /// Grows to `n` bytes filled with `value`, or shrinks to `n`.
    pub fn resize(&mut self, n: usize, value: u8) {
        if n > self.len {
            self.reserve(n - self.len);
            self.buf[self.off + self.len..self.off + n].fill(value);
        }
        self.len = n;
    }

    pub fn extend_from_slice(&mut self, src: &[u8]) {
        self.reserve(src.len());
        let at = self.off + self.len;
        self.buf[at..at + src.len()].copy_from_slice(src);
        self.len += src.len();
    }
}

impl std::ops::Deref for Scratch {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[self.off..self.off + self.len]
    }
}

impl std::ops::DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.off..self.off + self.len]
    }
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
        // The store did not answer in time (an OSD down, a path failing over):
        // nothing says the medium is bad, so not MEDIUM or HARDWARE ERROR, which
        // initiators give up on; ABORTED COMMAND is retried (as SPDK reports a
        // failed bdev I/O; tcmu-runner's RBD handler answers BUSY). Not 2Eh
        // (COMMAND TIMEOUT ...): Linux reads those as command duration limit
        // expiries and fails them at once.
        K::TimedOut => Sense::new(
            SenseKey::AbortedCommand,
            asc::LOGICAL_UNIT_COMMUNICATION_TIME_OUT,
        ),
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

#[cfg(test)]
mod io_error_sense_tests {
    use super::io_error_sense;
    use crate::sense::{asc, CmdError, SenseKey};
    use backends::{IoError, IoErrorKind};

    fn sense_of(errno: i32, write: bool) -> (SenseKey, crate::sense::Asc) {
        let e = IoError::from_errno(errno, write, Some(8 * 512));
        match io_error_sense(&e, 512, write) {
            CmdError::Check(s) => (s.key, s.asc),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_backend_timeout_is_a_retriable_aborted_command() {
        // librados' OSD op timeout completes an RBD op with ETIMEDOUT.
        assert_eq!(
            IoError::from_errno(libc::ETIMEDOUT, false, None).kind,
            IoErrorKind::TimedOut
        );
        for write in [false, true] {
            assert_eq!(
                sense_of(libc::ETIMEDOUT, write),
                (
                    SenseKey::AbortedCommand,
                    asc::LOGICAL_UNIT_COMMUNICATION_TIME_OUT
                )
            );
        }
        // Real medium errors and unknown failures keep their sense.
        assert_eq!(
            sense_of(libc::EIO, false),
            (SenseKey::MediumError, asc::UNRECOVERED_READ_ERROR)
        );
        assert_eq!(
            sense_of(libc::EIO, true),
            (SenseKey::MediumError, asc::WRITE_ERROR)
        );
        assert_eq!(
            sense_of(libc::EPERM, false),
            (SenseKey::HardwareError, asc::INTERNAL_TARGET_FAILURE)
        );
    }
}

#[cfg(test)]
mod scratch_tests {
    use super::Scratch;

    #[test]
    fn scratch_stays_aligned_and_keeps_its_bytes_as_it_grows() {
        let mut s = Scratch::default();
        assert!(s.is_empty());
        s.extend_from_slice(&[1, 2, 3]);
        assert_eq!(&s[..], &[1, 2, 3]);
        for n in [100usize, 5000, 1 << 20] {
            s.resize(n, 9);
            assert_eq!(s.len(), n);
            assert_eq!(s.as_ptr() as usize & (Scratch::ALIGN - 1), 0);
            assert_eq!(&s[..4], &[1, 2, 3, 9]);
            assert_eq!(s[n - 1], 9);
        }
        s.resize(2, 0);
        assert_eq!(&s[..], &[1, 2]);
        s.clear();
        s.reserve(10);
        assert!(s.capacity() >= 10);
        assert!(s.is_empty());
    }
}
