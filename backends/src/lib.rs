//! Block storage for oxtarget. A [`Backend`] is one store of bytes (a file, a block
//! device, RAM, nothing at all) with a size and a set of capabilities; it knows
//! nothing of SCSI. I/O goes through an [`IoChannel`] that one worker thread owns:
//! the thread submits operations with its own iovecs (guest memory, pooled buffers)
//! and later reaps their completions, woken by an eventfd that sits in its epoll set.
//! Nothing here blocks the submitting thread on a slow device.
//!
//! Backends: [`file`](mod@file) (image files) and [`blockdev`] (block devices) move data with
//! io_uring, one ring per channel with the thread's eventfd registered, or with a
//! small per-backend thread pool where io_uring is missing or not wanted, and for the
//! synchronous block ioctls; both engines run one shared per-operation state machine
//! (short transfers, end of file, discard fallbacks). [`ram`] and [`null`] complete
//! inline. [`fault`] wraps any backend to fail, delay or hold chosen operations in
//! tests. [`open`] builds any of them from a [`BackendSpec`]. With the feature `rbd`,
//! `rbd` opens a Ceph RBD image through librbd, whose own threads complete the
//! I/O and signal the channel's eventfd.

use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

pub mod blockdev;
mod error;
pub mod fault;
pub mod file;
mod inline;
pub mod null;
mod op;
pub mod ram;
#[cfg(feature = "rbd")]
pub mod rbd;
mod threadpool;
mod uring;
pub use blockdev::{BlockDevBackend, BlockDevOptions};
pub use error::{BackendError, IoError, IoErrorKind};
pub use fault::{FaultAction, FaultBackend, FaultControl, FaultRule, OpKind, OpMatch, RuleId};
pub use file::{FileBackend, FileOptions};
pub use null::NullBackend;
pub use ram::RamBackend;
#[cfg(feature = "rbd")]
pub use rbd::{RbdBackend, RbdOptions, RbdTimeouts};

/// What a backend can do beyond reading and writing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// `IoOp::Discard` deallocates (thin provisioning); reads of discarded ranges
    /// return zeroes (LBPRZ) when `discard_zeroes` is also set.
    pub discard: bool,
    /// Discarded blocks read back as zeroes.
    pub discard_zeroes: bool,
    /// `IoOp::WriteZeroes` is done without moving data.
    pub write_zeroes: bool,
    /// `IoOp::Flush` reaches stable storage (false: the store is volatile, e.g. RAM).
    pub flush: bool,
    /// The medium is rotational (VPD B1 MEDIUM ROTATION RATE).
    pub rotational: bool,
    /// Preferred I/O size in bytes (0: no preference).
    pub optimal_transfer: u32,
    /// Largest single I/O in bytes the backend accepts (0: no limit).
    pub max_transfer: u32,
    /// `Backend::block_status` can tell allocated from deallocated ranges.
    pub block_status: bool,
    /// The backend is read-only (opened without write access).
    pub read_only: bool,
    /// Every iovec's address and length must be a multiple of this (`O_DIRECT`: the
    /// device's logical block size); 0 or 1: no constraint. Callers with unaligned
    /// memory bounce through an aligned copy.
    pub dma_alignment: u32,
}

/// One operation. Offsets and lengths are in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoOp {
    /// Read `iovecs` worth of bytes starting at `offset`.
    Read { offset: u64 },
    /// Write the iovecs at `offset`; with `fua` the data is on stable storage when it
    /// completes.
    Write { offset: u64, fua: bool },
    /// Make every completed write stable.
    Flush,
    /// Deallocate `[offset, offset + len)`; what cannot be deallocated is zeroed.
    Discard { offset: u64, len: u64 },
    /// Make `[offset, offset + len)` read as zeroes.
    WriteZeroes { offset: u64, len: u64 },
}

/// The outcome of one submitted operation, matched to it by `user_data`.
#[derive(Debug, PartialEq, Eq)]
pub struct Completion {
    pub user_data: u64,
    /// Bytes transferred (0 for flush, discard, write zeroes) or the error.
    pub result: Result<usize, IoError>,
}

/// Whether a range is backed by data or deallocated (GET LBA STATUS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtentState {
    Mapped,
    Deallocated,
}

/// A run of bytes in one state, starting at `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
    pub state: ExtentState,
}

/// One store of bytes. Shared by every worker thread as `Arc<dyn Backend>`.
pub trait Backend: Send + Sync {
    /// Size in bytes.
    fn size(&self) -> u64;

    /// The size as last learned, for the per-command range check: a store that
    /// can change size under us (a file another process resizes) answers `size`
    /// with a system call, this without one. Callers ask `size` again before they
    /// refuse a range on the strength of this answer.
    fn size_cached(&self) -> u64 {
        self.size()
    }

    /// What the backend can do.
    fn capabilities(&self) -> Capabilities;

    /// Opens this thread's channel. `notify` is the thread's eventfd: the channel
    /// signals it (it may `try_clone` it) when a completion is ready to be reaped. Many
    /// channels of one thread share one eventfd. A channel whose operations complete
    /// inside `submit` (RAM, null) does not signal: its owner reaps after each batch
    /// of submissions.
    fn open_channel(&self, notify: &EventFd) -> Result<Box<dyn IoChannel>, BackendError>;

    /// The state of the range starting at `offset`: the first extent, which may run
    /// past `offset + len` but not past the end of the store. Errors with
    /// `BackendError::Unsupported` when `capabilities().block_status` is false.
    /// Must answer in bounded time (never loop on a store without holes).
    fn block_status(&self, offset: u64, len: u64) -> Result<Extent, BackendError>;

    /// Changes the size (grows or shrinks). Errors with `Unsupported` where the store
    /// has a fixed size.
    fn resize(&self, new_size: u64) -> Result<(), BackendError>;

    /// A short name for logs ("file:/var/lib/x.img", "ram", ...).
    fn describe(&self) -> String;

    /// Makes every completed write durable (the daemon calls it when it stops).
    /// Stores without a volatile cache have nothing to do.
    fn sync(&self) -> Result<(), BackendError> {
        Ok(())
    }

    /// Registers `notify`, to be called when the store changes size by another
    /// client's hand (a shared image resized elsewhere), so that the LUN can tell
    /// its initiators. The backend calls it from a thread of its own, never from
    /// inside `submit` or `reap` and never while it holds a lock a caller of
    /// `size` would need. Stores that cannot learn of such a change ignore it
    /// (the default); their size is still asked afresh where it matters.
    fn watch_resize(&self, notify: ResizeNotifier) {
        let _ = notify;
    }
}

/// Called when a store's size changed by another client's hand
/// ([`Backend::watch_resize`]).
pub type ResizeNotifier = Arc<dyn Fn() + Send + Sync>;

/// Per-thread I/O queue of one backend. Not shared between threads.
pub trait IoChannel {
    /// Queues `op` on the data described by `iovecs` (ignored for flush, discard and
    /// write zeroes). Its completion comes back from [`IoChannel::reap`] with
    /// `user_data`; a synchronous backend may complete it before `submit` returns
    /// (then `reap` hands it back at once). An error here means nothing was queued.
    ///
    /// # Safety
    /// Every iovec must point to memory that is valid (for writes when the op is a
    /// read, for reads when it is a write) for its whole length, and that nothing else
    /// reads or writes, until the completion with this `user_data` has been reaped, or
    /// the channel dropped. The slice of iovecs itself need not outlive the call.
    unsafe fn submit(
        &mut self,
        op: IoOp,
        iovecs: &[libc::iovec],
        user_data: u64,
    ) -> Result<(), BackendError>;

    /// Best effort: stops the operation `user_data` before it reaches the store. It
    /// still completes (with `IoErrorKind::Canceled` if the cancel won, or normally
    /// if it had already run). Returns whether a cancel was attempted.
    fn cancel(&mut self, user_data: u64) -> bool;

    /// Moves every ready completion into `out`. Never blocks.
    fn reap(&mut self, out: &mut Vec<Completion>);

    /// Operations submitted and not yet reaped.
    fn in_flight(&self) -> usize;
}

/// A backend shared by all threads.
pub type SharedBackend = Arc<dyn Backend>;

/// The raw fd of an eventfd, for epoll registration.
pub fn notify_fd(notify: &EventFd) -> RawFd {
    use std::os::fd::AsRawFd;
    notify.as_raw_fd()
}

/// How a file or block device backend moves data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IoEngine {
    /// One io_uring per channel; falls back to [`IoEngine::Threads`] where the kernel
    /// refuses to set one up.
    #[default]
    Uring,
    /// A small pool of threads making synchronous calls.
    Threads,
}

/// What backend to open, in plain terms (the daemon maps its config onto this).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendSpec {
    /// Sparse memory, lost on exit.
    Ram { size: u64 },
    /// Reads zeroes, drops writes.
    Null { size: u64 },
    /// An image file. With `create_size`, a missing file is created (sparse) with that
    /// size; an existing one keeps its size.
    File {
        path: PathBuf,
        direct: bool,
        read_only: bool,
        engine: IoEngine,
        create_size: Option<u64>,
    },
    /// A block device, `O_DIRECT`.
    BlockDev { path: PathBuf, read_only: bool },
    /// Any backend behind the fault-injection wrapper, with these rules in force
    /// from the start (more can be added at run time through its control handle).
    Fault {
        inner: Box<BackendSpec>,
        rules: Vec<FaultRule>,
    },
    /// A Ceph RBD image `pool/[namespace/]image[@snapshot]` (feature `rbd`). A
    /// snapshot is always opened read-only. `None` for `ceph_conf`, `client_id`,
    /// `keyring`: librados' defaults (`$CEPH_CONF` or /etc/ceph/ceph.conf, `admin`,
    /// the keyring ceph.conf names).
    #[cfg(feature = "rbd")]
    Rbd {
        pool: String,
        image: String,
        namespace: Option<String>,
        snapshot: Option<String>,
        read_only: bool,
        ceph_conf: Option<PathBuf>,
        client_id: Option<String>,
        keyring: Option<PathBuf>,
        timeouts: RbdTimeouts,
    },
}

/// Opens the backend `spec` describes.
pub fn open(spec: &BackendSpec) -> Result<Arc<dyn Backend>, BackendError> {
    Ok(open_with_control(spec)?.0)
}

/// Opens the backend `spec` describes, and hands back the control handle of its
/// fault-injection wrapper if it has one (the outermost).
pub fn open_with_control(
    spec: &BackendSpec,
) -> Result<(Arc<dyn Backend>, Option<FaultControl>), BackendError> {
    if let BackendSpec::Fault { inner, rules } = spec {
        let fault = FaultBackend::new(open(inner)?);
        let ctl = fault.control();
        for r in rules {
            ctl.add(r.clone());
        }
        return Ok((Arc::new(fault), Some(ctl)));
    }
    Ok((open_plain(spec)?, None))
}

fn open_plain(spec: &BackendSpec) -> Result<Arc<dyn Backend>, BackendError> {
    Ok(match spec {
        BackendSpec::Ram { size } => Arc::new(RamBackend::new(*size)),
        BackendSpec::Null { size } => Arc::new(NullBackend::new(*size)),
        BackendSpec::File {
            path,
            direct,
            read_only,
            engine,
            create_size,
        } => {
            let opts = FileOptions {
                direct: *direct,
                read_only: *read_only,
                engine: *engine,
                ..FileOptions::default()
            };
            match create_size {
                Some(size) => Arc::new(FileBackend::create(path, *size, opts)?),
                None => Arc::new(FileBackend::open(path, opts)?),
            }
        }
        BackendSpec::BlockDev { path, read_only } => Arc::new(BlockDevBackend::open(
            path,
            BlockDevOptions {
                read_only: *read_only,
                ..BlockDevOptions::default()
            },
        )?),
        BackendSpec::Fault { .. } => open_with_control(spec)?.0,
        #[cfg(feature = "rbd")]
        BackendSpec::Rbd {
            pool,
            image,
            namespace,
            snapshot,
            read_only,
            ceph_conf,
            client_id,
            keyring,
            timeouts,
        } => Arc::new(RbdBackend::open(&RbdOptions {
            pool: pool.clone(),
            image: image.clone(),
            namespace: namespace.clone(),
            snapshot: snapshot.clone(),
            read_only: *read_only,
            ceph_conf: ceph_conf.clone(),
            client_id: client_id.clone(),
            keyring: keyring.clone(),
            timeouts: *timeouts,
        })?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_a_fault_wrapper_from_spec() {
        let spec = BackendSpec::Fault {
            inner: Box::new(BackendSpec::Ram { size: 1 << 20 }),
            rules: vec![FaultRule::new(
                OpMatch::kind(OpKind::Write),
                FaultAction::Fail {
                    kind: IoErrorKind::Write,
                    errno: libc::EIO,
                },
            )],
        };
        let (b, ctl) = open_with_control(&spec).unwrap();
        assert_eq!(b.size(), 1 << 20);
        let ctl = ctl.expect("control handle");
        let efd = EventFd::new(0).unwrap();
        let mut ch = b.open_channel(&efd).unwrap();
        let mut buf = [7u8; 512];
        let iov = [libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }];
        // SAFETY: `buf` outlives the operation, which completes before we reap.
        unsafe {
            ch.submit(
                IoOp::Write {
                    offset: 0,
                    fua: false,
                },
                &iov,
                1,
            )
        }
        .unwrap();
        let mut out = Vec::new();
        for _ in 0..100 {
            ch.reap(&mut out);
            if !out.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].result.map_err(|e| e.kind), Err(IoErrorKind::Write));
        assert_eq!(ctl.hits(), 1);
    }

    #[test]
    fn open_from_spec() {
        let ram = open(&BackendSpec::Ram { size: 1 << 30 }).unwrap();
        assert_eq!(ram.size(), 1 << 30);
        let null = open(&BackendSpec::Null { size: 4096 }).unwrap();
        assert!(null.describe().starts_with("null"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.img");
        let spec = BackendSpec::File {
            path: path.clone(),
            direct: false,
            read_only: false,
            engine: IoEngine::Threads,
            create_size: Some(1 << 20),
        };
        let f = open(&spec).unwrap();
        assert_eq!(f.size(), 1 << 20);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20);
        // Missing file without create_size.
        let missing = BackendSpec::File {
            path: dir.path().join("missing.img"),
            direct: false,
            read_only: true,
            engine: IoEngine::Uring,
            create_size: None,
        };
        assert!(matches!(open(&missing), Err(BackendError::Open { .. })));
        let bad = BackendSpec::BlockDev {
            path: path.clone(),
            read_only: true,
        };
        assert!(matches!(open(&bad), Err(BackendError::Config(_))));
    }
}
