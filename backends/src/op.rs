//! One operation on a file descriptor (regular file or block device) as a small state
//! machine, shared by the io_uring engine ([`crate::uring`]) and the thread-pool engine
//! ([`crate::threadpool`]). The machine says which system call to make next
//! ([`OpState::step`]) and digests its result ([`OpState::on_result`]): short reads and
//! writes are resubmitted for the remainder, a read that meets end of file fills the
//! rest with zeroes, and discard / write zeroes walk a list of strategies (punch a hole,
//! zero a range, write zeroes, block ioctls), moving on when one is not supported.
//! Engines only turn steps into SQEs or into the same calls made synchronously.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::{IoError, IoErrorKind, IoOp};

/// `BLKDISCARD`: `_IO(0x12, 119)`, argument `u64[2]` = {offset, len}.
pub(crate) const BLKDISCARD: libc::Ioctl = 0x1277;
/// `BLKZEROOUT`: `_IO(0x12, 127)`, argument `u64[2]` = {offset, len}.
pub(crate) const BLKZEROOUT: libc::Ioctl = 0x127f;
/// `BLKGETSIZE64`: `_IOR(0x12, 114, size_t)`, the device size in bytes.
pub(crate) const BLKGETSIZE64: libc::Ioctl = 0x8008_1272;

/// Most iovecs one `preadv`/`pwritev` takes (`IOV_MAX` on Linux). Longer lists are done
/// in several calls, as if the kernel had made a short transfer.
const IOV_MAX: usize = 1024;

/// Size of the shared buffer of zeroes used when a store cannot zero a range itself.
pub(crate) const ZERO_BUF_LEN: usize = 1 << 20;

/// How many times in a row a call may fail with `EINTR`/`EAGAIN` before the operation
/// gives up: keeps every operation finite.
const MAX_RETRIES: u32 = 16;

/// What the descriptor is; decides how discard and write zeroes are done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TargetKind {
    File,
    BlockDev,
}

/// An open store shared by the backend and all its channels.
#[derive(Debug)]
pub(crate) struct Target {
    pub fd: OwnedFd,
    pub kind: TargetKind,
    pub read_only: bool,
    /// Buffered (not `O_DIRECT`): a read may first try the page cache with
    /// `preadv2(RWF_NOWAIT)` and complete at once.
    pub nowait_reads: bool,
    /// Cached size in bytes; I/O beyond it fails with `OutOfRange`.
    pub size: AtomicU64,
}

impl Target {
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }
}

/// One way of making a range read as zeroes (or deallocating it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Strategy {
    /// `fallocate(PUNCH_HOLE | KEEP_SIZE)`.
    Punch,
    /// `fallocate(ZERO_RANGE | KEEP_SIZE)`.
    ZeroRange,
    /// Plain writes from a buffer of zeroes.
    WriteZeroes,
    /// `ioctl(BLKDISCARD)`.
    BlkDiscard,
    /// `ioctl(BLKZEROOUT)`.
    BlkZeroout,
}

const FILE_DISCARD: &[Strategy] = &[Strategy::Punch, Strategy::ZeroRange, Strategy::WriteZeroes];
const FILE_ZEROES: &[Strategy] = &[Strategy::ZeroRange, Strategy::Punch, Strategy::WriteZeroes];
const BLK_DISCARD: &[Strategy] = &[Strategy::BlkDiscard, Strategy::BlkZeroout];
const BLK_ZEROES: &[Strategy] = &[Strategy::BlkZeroout];

/// The next system call of an operation.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Step {
    Readv {
        offset: u64,
        iov: *const libc::iovec,
        cnt: u32,
    },
    Writev {
        offset: u64,
        iov: *const libc::iovec,
        cnt: u32,
        dsync: bool,
    },
    Fdatasync,
    Fallocate {
        offset: u64,
        len: u64,
        mode: i32,
    },
    /// `pwrite` of `len` bytes of [`zero_buf`] at `offset`.
    WriteZeroBuf {
        offset: u64,
        len: u32,
    },
    /// A synchronous block-device ioctl taking `{offset, len}`.
    BlkIoctl {
        req: libc::Ioctl,
        offset: u64,
        len: u64,
    },
}

/// What to do after a step completed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Make [`OpState::step`] again (the remainder, or the next strategy).
    Again,
    /// The operation is over.
    Done(Result<usize, IoError>),
}

/// How an operation starts.
pub(crate) enum Start {
    /// Needs system calls.
    Run(OpState),
    /// Finished without any (empty, out of range, read-only).
    Done(Result<usize, IoError>),
}

/// An operation in progress. Owns its copy of the caller's iovecs (whose memory the
/// caller of `IoChannel::submit` keeps valid until completion); the copy lives on the
/// heap, so its address stays put while the state moves between engine structures.
#[derive(Debug)]
pub(crate) struct OpState {
    pub user_data: u64,
    op: IoOp,
    iov: Vec<libc::iovec>,
    /// First iovec not yet fully transferred.
    first: usize,
    /// Bytes done so far (transferred, or zeroed by the write-zeroes strategy).
    done: u64,
    /// Bytes to do.
    total: u64,
    strategies: &'static [Strategy],
    strategy: usize,
    retries: u32,
    /// A cancel was requested: stop at the next step boundary.
    pub cancel: bool,
}

// SAFETY: the raw pointers in `iov` refer to memory the submitter guarantees valid and
// unaliased until the operation completes (contract of `IoChannel::submit`); an
// `OpState` is only ever used by one thread at a time (the engine hands it over whole).
unsafe impl Send for OpState {}

fn iov_total(iovecs: &[libc::iovec]) -> Option<u64> {
    iovecs.iter().try_fold(0u64, |acc, v| {
        acc.checked_add(u64::try_from(v.iov_len).ok()?)
    })
}

fn op_offset(op: &IoOp) -> Option<u64> {
    match *op {
        IoOp::Read { offset } | IoOp::Write { offset, .. } => Some(offset),
        IoOp::Discard { offset, .. } | IoOp::WriteZeroes { offset, .. } => Some(offset),
        IoOp::Flush => None,
    }
}

impl OpState {
    /// Validates `op` against `target` and prepares it.
    pub fn start(target: &Target, op: IoOp, iovecs: &[libc::iovec], user_data: u64) -> Start {
        let out_of_range =
            |off: u64| IoError::new(IoErrorKind::OutOfRange, libc::EINVAL, Some(off));
        let read_only = |off: Option<u64>| IoError::new(IoErrorKind::Unsupported, libc::EROFS, off);
        let (total, strategies) = match op {
            IoOp::Read { offset } | IoOp::Write { offset, .. } => {
                if target.read_only && matches!(op, IoOp::Write { .. }) {
                    return Start::Done(Err(read_only(Some(offset))));
                }
                let Some(total) = iov_total(iovecs) else {
                    return Start::Done(Err(out_of_range(offset)));
                };
                match offset.checked_add(total) {
                    Some(end) if end <= target.size() => {}
                    _ => return Start::Done(Err(out_of_range(offset))),
                }
                if total == 0 {
                    return Start::Done(Ok(0));
                }
                (total, &[][..])
            }
            IoOp::Flush => {
                if target.read_only {
                    return Start::Done(Ok(0));
                }
                (0, &[][..])
            }
            IoOp::Discard { offset, len } | IoOp::WriteZeroes { offset, len } => {
                if target.read_only {
                    return Start::Done(Err(read_only(Some(offset))));
                }
                match offset.checked_add(len) {
                    Some(end) if end <= target.size() => {}
                    _ => return Start::Done(Err(out_of_range(offset))),
                }
                if len == 0 {
                    return Start::Done(Ok(0));
                }
                let discard = matches!(op, IoOp::Discard { .. });
                let s = match (target.kind, discard) {
                    (TargetKind::File, true) => FILE_DISCARD,
                    (TargetKind::File, false) => FILE_ZEROES,
                    (TargetKind::BlockDev, true) => BLK_DISCARD,
                    (TargetKind::BlockDev, false) => BLK_ZEROES,
                };
                (len, s)
            }
        };
        let iov = match op {
            IoOp::Read { .. } | IoOp::Write { .. } => {
                iovecs.iter().filter(|v| v.iov_len > 0).copied().collect()
            }
            _ => Vec::new(),
        };
        Start::Run(OpState {
            user_data,
            op,
            iov,
            first: 0,
            done: 0,
            total,
            strategies,
            strategy: 0,
            retries: 0,
            cancel: false,
        })
    }

    /// The byte offset the operation started at (for error reports).
    pub fn offset(&self) -> Option<u64> {
        op_offset(&self.op)
    }

    fn pos(&self) -> u64 {
        self.offset().unwrap_or(0).saturating_add(self.done)
    }

    fn remaining_iov(&self) -> (*const libc::iovec, u32) {
        let rest = &self.iov[self.first.min(self.iov.len())..];
        let cnt = rest.len().min(IOV_MAX);
        // `cnt` <= IOV_MAX, so it fits in a u32.
        (rest.as_ptr(), u32::try_from(cnt).unwrap_or(IOV_MAX as u32))
    }

    /// The system call to make now.
    pub fn step(&self) -> Step {
        let pos = self.pos();
        match self.op {
            IoOp::Read { .. } => {
                let (iov, cnt) = self.remaining_iov();
                Step::Readv {
                    offset: pos,
                    iov,
                    cnt,
                }
            }
            IoOp::Write { fua, .. } => {
                let (iov, cnt) = self.remaining_iov();
                Step::Writev {
                    offset: pos,
                    iov,
                    cnt,
                    dsync: fua,
                }
            }
            IoOp::Flush => Step::Fdatasync,
            IoOp::Discard { .. } | IoOp::WriteZeroes { .. } => {
                let left = self.total - self.done;
                match self
                    .strategies
                    .get(self.strategy)
                    .copied()
                    .unwrap_or(Strategy::WriteZeroes)
                {
                    Strategy::Punch => Step::Fallocate {
                        offset: pos,
                        len: left,
                        mode: libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    },
                    Strategy::ZeroRange => Step::Fallocate {
                        offset: pos,
                        len: left,
                        mode: libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                    },
                    Strategy::WriteZeroes => {
                        let len = left.min(ZERO_BUF_LEN as u64);
                        // `len` <= ZERO_BUF_LEN (1 MiB) fits in a u32.
                        Step::WriteZeroBuf {
                            offset: pos,
                            len: u32::try_from(len).unwrap_or(0),
                        }
                    }
                    Strategy::BlkDiscard => Step::BlkIoctl {
                        req: BLKDISCARD,
                        offset: pos,
                        len: left,
                    },
                    Strategy::BlkZeroout => Step::BlkIoctl {
                        req: BLKZEROOUT,
                        offset: pos,
                        len: left,
                    },
                }
            }
        }
    }

    fn advance(&mut self, n: u64) {
        let n = n.min(self.total - self.done);
        self.done += n;
        let mut n = n;
        while n > 0 && self.first < self.iov.len() {
            let v = &mut self.iov[self.first];
            let len = v.iov_len as u64;
            if n >= len {
                n -= len;
                v.iov_len = 0;
                self.first += 1;
            } else {
                // `n < len <= usize::MAX`, so the conversion is exact.
                let k = usize::try_from(n).unwrap_or(v.iov_len);
                v.iov_base = v.iov_base.cast::<u8>().wrapping_add(k).cast();
                v.iov_len -= k;
                n = 0;
            }
        }
    }

    /// Fills what is left of a read with zeroes (the read met end of file).
    fn zero_rest(&mut self) {
        for v in &self.iov[self.first.min(self.iov.len())..] {
            // SAFETY: the submitter guarantees every iovec of a read is valid for writes
            // of its length and not accessed by anyone else until completion; `advance`
            // only ever moved `iov_base` forward within that range.
            unsafe { std::ptr::write_bytes(v.iov_base.cast::<u8>(), 0, v.iov_len) };
        }
        self.first = self.iov.len();
        self.done = self.total;
    }

    fn fail(&self, errno: i32) -> Outcome {
        let is_write = !matches!(self.op, IoOp::Read { .. });
        Outcome::Done(Err(IoError::from_errno(errno, is_write, Some(self.pos()))))
    }

    fn canceled(&self) -> Outcome {
        Outcome::Done(Err(IoError::new(
            IoErrorKind::Canceled,
            libc::ECANCELED,
            self.offset(),
        )))
    }

    /// Digests the result of the last step: bytes (>= 0) or `-errno`.
    pub fn on_result(&mut self, res: i64) -> Outcome {
        if res < 0 {
            let errno = i32::try_from(-res).unwrap_or(libc::EIO);
            if errno == libc::EINTR || errno == libc::EAGAIN {
                self.retries += 1;
                if self.retries > MAX_RETRIES {
                    return self.fail(errno);
                }
                return if self.cancel {
                    self.canceled()
                } else {
                    Outcome::Again
                };
            }
            if errno == libc::ECANCELED {
                return self.canceled();
            }
            let not_supported = matches!(errno, libc::EOPNOTSUPP | libc::ENOTTY | libc::ENOSYS);
            if not_supported && self.strategy + 1 < self.strategies.len() {
                // The next strategy starts over on what is left.
                self.strategy += 1;
                self.retries = 0;
                return if self.cancel {
                    self.canceled()
                } else {
                    Outcome::Again
                };
            }
            if not_supported && !self.strategies.is_empty() {
                return Outcome::Done(Err(IoError::new(
                    IoErrorKind::Unsupported,
                    errno,
                    Some(self.pos()),
                )));
            }
            return self.fail(errno);
        }
        self.retries = 0;
        let n = u64::try_from(res).unwrap_or(0);
        match self.op {
            IoOp::Read { .. } | IoOp::Write { .. } => {
                if n == 0 {
                    if matches!(self.op, IoOp::Write { .. }) {
                        // A write that moves nothing would loop forever.
                        return self.fail(libc::EIO);
                    }
                    // End of file inside the store (a file shrunk or sparse-extended
                    // past what the file system reports): the rest reads as zeroes.
                    self.zero_rest();
                } else {
                    self.advance(n);
                }
            }
            IoOp::Flush => return Outcome::Done(Ok(0)),
            IoOp::Discard { .. } | IoOp::WriteZeroes { .. } => {
                match self.strategies.get(self.strategy) {
                    Some(Strategy::WriteZeroes) => {
                        if n == 0 {
                            return self.fail(libc::EIO);
                        }
                        self.done = self.done.saturating_add(n).min(self.total);
                    }
                    // fallocate and the ioctls do the whole range at once.
                    _ => self.done = self.total,
                }
                if self.done >= self.total {
                    return Outcome::Done(Ok(0));
                }
                return if self.cancel {
                    self.canceled()
                } else {
                    Outcome::Again
                };
            }
        }
        if self.done >= self.total {
            // `total` is the sum of the caller's iovec lengths (each a usize) that the
            // kernel moved in full, so it fits in a usize.
            Outcome::Done(Ok(usize::try_from(self.total).unwrap_or(usize::MAX)))
        } else if self.cancel {
            self.canceled()
        } else {
            Outcome::Again
        }
    }
}

/// A page-aligned buffer of zeroes shared by every writer (never written to).
struct ZeroBuf(*mut u8);

// SAFETY: the buffer is allocated once, zero-filled, never freed and never written,
// so sharing its address between threads only ever gives readers.
unsafe impl Send for ZeroBuf {}
// SAFETY: as above: immutable after initialization.
unsafe impl Sync for ZeroBuf {}

/// Address of [`ZERO_BUF_LEN`] bytes of zeroes, aligned to 4096 (fit for `O_DIRECT`),
/// or null if the allocation failed.
pub(crate) fn zero_buf() -> *const u8 {
    static BUF: OnceLock<ZeroBuf> = OnceLock::new();
    BUF.get_or_init(|| {
        match std::alloc::Layout::from_size_align(ZERO_BUF_LEN, 4096) {
            // SAFETY: the layout has a non-zero size.
            Ok(layout) => ZeroBuf(unsafe { std::alloc::alloc_zeroed(layout) }),
            Err(_) => ZeroBuf(std::ptr::null_mut()),
        }
    })
    .0
}

fn errno() -> i64 {
    -i64::from(
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    )
}

fn ret(r: isize) -> i64 {
    if r < 0 {
        errno()
    } else {
        i64::try_from(r).unwrap_or(i64::MAX)
    }
}

/// Makes `step` synchronously on `fd`: bytes (>= 0) or `-errno`, like a CQE.
pub(crate) fn run_sync(fd: RawFd, step: &Step) -> i64 {
    let off = |o: u64| i64::try_from(o).ok();
    match *step {
        Step::Readv { offset, iov, cnt } => {
            let (Some(o), Ok(c)) = (off(offset), libc::c_int::try_from(cnt)) else {
                return -i64::from(libc::EINVAL);
            };
            // SAFETY: `iov` points at `cnt` iovecs owned by the operation's state, each
            // valid for writes per the contract of `IoChannel::submit`.
            ret(unsafe { libc::preadv(fd, iov, c, o) })
        }
        Step::Writev {
            offset,
            iov,
            cnt,
            dsync,
        } => {
            let (Some(o), Ok(c)) = (off(offset), libc::c_int::try_from(cnt)) else {
                return -i64::from(libc::EINVAL);
            };
            let flags = if dsync { libc::RWF_DSYNC } else { 0 };
            // SAFETY: `iov` points at `cnt` iovecs owned by the operation's state, each
            // valid for reads per the contract of `IoChannel::submit`.
            let r = ret(unsafe { libc::pwritev2(fd, iov, c, o, flags) });
            if dsync && (r == -i64::from(libc::EOPNOTSUPP) || r == -i64::from(libc::ENOSYS)) {
                // Kernel without RWF_DSYNC: write, then make it stable.
                // SAFETY: as above.
                let r = ret(unsafe { libc::pwritev(fd, iov, c, o) });
                // SAFETY: fdatasync on an fd we own has no memory-safety requirements.
                if r >= 0 && unsafe { libc::fdatasync(fd) } < 0 {
                    return errno();
                }
                return r;
            }
            r
        }
        Step::Fdatasync => {
            // SAFETY: fdatasync on an fd we own has no memory-safety requirements.
            if unsafe { libc::fdatasync(fd) } < 0 {
                errno()
            } else {
                0
            }
        }
        Step::Fallocate { offset, len, mode } => {
            let (Some(o), Some(l)) = (off(offset), off(len)) else {
                return -i64::from(libc::EINVAL);
            };
            // SAFETY: fallocate takes no pointers.
            if unsafe { libc::fallocate64(fd, mode, o, l) } < 0 {
                errno()
            } else {
                0
            }
        }
        Step::WriteZeroBuf { offset, len } => {
            let buf = zero_buf();
            let Some(o) = off(offset) else {
                return -i64::from(libc::EINVAL);
            };
            if buf.is_null() {
                return -i64::from(libc::ENOMEM);
            }
            let n = (len as usize).min(ZERO_BUF_LEN);
            // SAFETY: `buf` points at ZERO_BUF_LEN readable bytes that live forever.
            ret(unsafe { libc::pwrite(fd, buf.cast(), n, o) })
        }
        Step::BlkIoctl { req, offset, len } => {
            let range: [u64; 2] = [offset, len];
            // SAFETY: BLKDISCARD and BLKZEROOUT read two u64s from the pointer, which
            // points at a live local array of two u64s.
            if unsafe { libc::ioctl(fd, req, range.as_ptr()) } < 0 {
                errno()
            } else {
                0
            }
        }
    }
}

/// Runs an operation to its end synchronously (on a pool thread).
pub(crate) fn run_to_end(fd: RawFd, state: &mut OpState) -> Result<usize, IoError> {
    loop {
        let step = state.step();
        let res = run_sync(fd, &step);
        if let Outcome::Done(r) = state.on_result(res) {
            return r;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(size: u64) -> Target {
        let f = tempfile::tempfile().unwrap();
        f.set_len(size).unwrap();
        Target {
            nowait_reads: false,
            fd: OwnedFd::from(f),
            kind: TargetKind::File,
            read_only: false,
            size: AtomicU64::new(size),
        }
    }

    fn iov(buf: &mut [u8]) -> libc::iovec {
        libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }
    }

    #[test]
    fn short_transfers_advance_through_iovecs() {
        let t = target(4096);
        let mut a = [0u8; 10];
        let mut b = [0u8; 20];
        let v = [iov(&mut a), iov(&mut b)];
        let Start::Run(mut st) = OpState::start(&t, IoOp::Read { offset: 100 }, &v, 7) else {
            panic!("expected a running op")
        };
        assert_eq!(st.on_result(4), Outcome::Again);
        match st.step() {
            Step::Readv { offset, iov, cnt } => {
                assert_eq!(offset, 104);
                assert_eq!(cnt, 2);
                // SAFETY: `iov` points into the state's own vector of 2 iovecs.
                let first = unsafe { *iov };
                assert_eq!(first.iov_len, 6);
                assert_eq!(first.iov_base.cast::<u8>(), a.as_mut_ptr().wrapping_add(4));
            }
            s => panic!("unexpected step {s:?}"),
        }
        assert_eq!(st.on_result(16), Outcome::Again);
        match st.step() {
            Step::Readv { offset, cnt, .. } => {
                assert_eq!(offset, 120);
                assert_eq!(cnt, 1);
            }
            s => panic!("unexpected step {s:?}"),
        }
        assert_eq!(st.on_result(10), Outcome::Done(Ok(30)));
    }

    #[test]
    fn eof_fills_zeroes() {
        let t = target(4096);
        let mut a = [0xffu8; 8];
        let v = [iov(&mut a)];
        let Start::Run(mut st) = OpState::start(&t, IoOp::Read { offset: 0 }, &v, 1) else {
            panic!("expected a running op")
        };
        assert_eq!(st.on_result(3), Outcome::Again);
        assert_eq!(st.on_result(0), Outcome::Done(Ok(8)));
        assert_eq!(a, [0xff, 0xff, 0xff, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn range_checks_and_read_only() {
        let mut t = target(4096);
        let mut a = [0u8; 8];
        let v = [iov(&mut a)];
        let r = OpState::start(&t, IoOp::Read { offset: 4090 }, &v, 1);
        assert!(matches!(r, Start::Done(Err(e)) if e.kind == IoErrorKind::OutOfRange));
        let r = OpState::start(
            &t,
            IoOp::Discard {
                offset: u64::MAX,
                len: 2,
            },
            &[],
            1,
        );
        assert!(matches!(r, Start::Done(Err(e)) if e.kind == IoErrorKind::OutOfRange));
        let r = OpState::start(&t, IoOp::Read { offset: 4096 }, &[], 1);
        assert!(matches!(r, Start::Done(Ok(0))));
        t.read_only = true;
        let r = OpState::start(
            &t,
            IoOp::Write {
                offset: 0,
                fua: false,
            },
            &v,
            1,
        );
        assert!(matches!(r, Start::Done(Err(e)) if e.errno == libc::EROFS));
    }

    #[test]
    fn strategies_fall_back_on_unsupported() {
        let t = target(4 << 20);
        let Start::Run(mut st) = OpState::start(
            &t,
            IoOp::Discard {
                offset: 4096,
                len: 3 << 19,
            },
            &[],
            1,
        ) else {
            panic!("expected a running op")
        };
        assert!(matches!(st.step(), Step::Fallocate { mode, .. }
            if mode == libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE));
        assert_eq!(st.on_result(-i64::from(libc::EOPNOTSUPP)), Outcome::Again);
        assert!(matches!(st.step(), Step::Fallocate { mode, .. }
            if mode == libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE));
        assert_eq!(st.on_result(-i64::from(libc::EOPNOTSUPP)), Outcome::Again);
        // Write zeroes, 1 MiB at a time.
        assert!(
            matches!(st.step(), Step::WriteZeroBuf { offset: 4096, len } if len as usize == ZERO_BUF_LEN)
        );
        assert_eq!(st.on_result(1 << 20), Outcome::Again);
        assert!(matches!(st.step(), Step::WriteZeroBuf { len, .. } if len as usize == (1 << 19)));
        assert_eq!(st.on_result(1 << 19), Outcome::Done(Ok(0)));
    }

    #[test]
    fn retries_are_bounded() {
        let t = target(4096);
        let Start::Run(mut st) = OpState::start(&t, IoOp::Flush, &[], 1) else {
            panic!("expected a running op")
        };
        let mut n = 0;
        while st.on_result(-i64::from(libc::EAGAIN)) == Outcome::Again {
            n += 1;
            assert!(n < 100);
        }
        assert_eq!(n, MAX_RETRIES);
    }

    #[test]
    fn sync_engine_roundtrip_and_zeroing() {
        let t = target(1 << 16);
        let mut w = vec![0xabu8; 8192];
        let wv = [iov(&mut w)];
        let Start::Run(mut st) = OpState::start(
            &t,
            IoOp::Write {
                offset: 4096,
                fua: true,
            },
            &wv,
            1,
        ) else {
            panic!()
        };
        assert_eq!(run_to_end(t.raw_fd(), &mut st), Ok(8192));
        let Start::Run(mut st) = OpState::start(
            &t,
            IoOp::WriteZeroes {
                offset: 8192,
                len: 1024,
            },
            &[],
            2,
        ) else {
            panic!()
        };
        assert_eq!(run_to_end(t.raw_fd(), &mut st), Ok(0));
        let mut r = vec![0u8; 12288];
        let rv = [iov(&mut r)];
        let Start::Run(mut st) = OpState::start(&t, IoOp::Read { offset: 0 }, &rv, 3) else {
            panic!()
        };
        assert_eq!(run_to_end(t.raw_fd(), &mut st), Ok(12288));
        assert!(r[..4096].iter().all(|&b| b == 0));
        assert!(r[4096..8192].iter().all(|&b| b == 0xab));
        assert!(r[8192..9216].iter().all(|&b| b == 0));
        assert!(r[9216..12288].iter().all(|&b| b == 0xab));
    }
}
