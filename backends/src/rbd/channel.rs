//! One worker thread's queue onto an RBD image. `submit` hands the operation to
//! librbd with a heap-allocated context; librbd calls [`on_complete`] on one of its
//! threads, which moves the result into the channel's shared queue and signals the
//! eventfd. `reap` (on the owner's thread) takes the queue. Every completion librbd
//! creates is released in the callback or, if the submission failed, at once.

use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use super::ffi;
use super::handle::Image;
use crate::{BackendError, Completion, IoChannel, IoError, IoErrorKind, IoOp};

/// What the channel and librbd's callbacks share. Outlives the channel while
/// librbd still holds contexts that point at it.
struct Shared {
    done: Mutex<Vec<Completion>>,
    notify: EventFd,
    /// Submitted to librbd and not yet called back.
    pending: AtomicUsize,
    /// Signalled when `pending` drops to zero (a dropping channel waits on it).
    idle: Condvar,
    idle_lock: Mutex<()>,
}

/// What librbd carries from `submit` to the callback.
struct OpCtx {
    shared: Arc<Shared>,
    user_data: u64,
    /// Bytes of the read or write (0 for the others).
    len: usize,
    is_write: bool,
    offset: Option<u64>,
}

/// librbd's completion callback (on a librbd thread).
unsafe extern "C" fn on_complete(c: ffi::RbdCompletionT, arg: *mut c_void) {
    // SAFETY: `arg` is the `Box<OpCtx>` leaked in `submit` for exactly this
    // completion, and librbd calls back once per completion.
    let ctx = unsafe { Box::from_raw(arg.cast::<OpCtx>()) };
    // SAFETY: `c` is the live completion this callback belongs to; it is released
    // here, once, after its value has been read (librbd allows both in the callback).
    let ret = unsafe {
        let r = ffi::rbd_aio_get_return_value(c);
        ffi::rbd_aio_release(c);
        r
    };
    let result = if ret < 0 {
        let errno = i32::try_from(ret.saturating_neg()).unwrap_or(libc::EIO);
        Err(IoError::from_errno(errno, ctx.is_write, ctx.offset))
    } else if ctx.is_write {
        // librbd completes a write with 0: all of it was written.
        Ok(ctx.len)
    } else {
        // A read completes with the bytes librbd filled (all of them: unwritten
        // extents read as zeroes); report what it says.
        Ok(usize::try_from(ret).unwrap_or(0))
    };
    finish(&ctx.shared, ctx.user_data, result);
}

fn finish(shared: &Shared, user_data: u64, result: Result<usize, IoError>) {
    shared
        .done
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Completion { user_data, result });
    // A full eventfd counter (never in practice) still leaves it readable.
    let _ = shared.notify.write(1);
    if shared.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
        let _g = shared
            .idle_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        shared.idle.notify_all();
    }
}

pub(crate) struct RbdChannel {
    image: Arc<Image>,
    shared: Arc<Shared>,
    read_only: bool,
    /// Submitted and not yet reaped.
    in_flight: usize,
    drain_limit: Duration,
}

impl RbdChannel {
    pub fn new(
        image: Arc<Image>,
        notify: EventFd,
        read_only: bool,
        drain_limit: Duration,
    ) -> RbdChannel {
        RbdChannel {
            image,
            shared: Arc::new(Shared {
                done: Mutex::new(Vec::new()),
                notify,
                pending: AtomicUsize::new(0),
                idle: Condvar::new(),
                idle_lock: Mutex::new(()),
            }),
            read_only,
            in_flight: 0,
            drain_limit,
        }
    }

    /// Completes `user_data` without librbd (invalid or read-only requests).
    fn complete_now(&mut self, user_data: u64, result: Result<usize, IoError>) {
        self.shared.pending.fetch_add(1, Ordering::AcqRel);
        finish(&self.shared, user_data, result);
        self.in_flight += 1;
    }
}

fn iov_total(iovecs: &[libc::iovec]) -> Option<usize> {
    iovecs
        .iter()
        .try_fold(0usize, |acc, v| acc.checked_add(v.iov_len))
}

impl IoChannel for RbdChannel {
    unsafe fn submit(
        &mut self,
        op: IoOp,
        iovecs: &[libc::iovec],
        user_data: u64,
    ) -> Result<(), BackendError> {
        let read_only = |off| IoError::new(IoErrorKind::Unsupported, libc::EROFS, Some(off));
        let (len, is_write, offset) = match op {
            IoOp::Read { offset } | IoOp::Write { offset, .. } => {
                let is_write = matches!(op, IoOp::Write { .. });
                if is_write && self.read_only {
                    self.complete_now(user_data, Err(read_only(offset)));
                    return Ok(());
                }
                let Some(len) = iov_total(iovecs) else {
                    let e = IoError::new(IoErrorKind::OutOfRange, libc::EINVAL, Some(offset));
                    self.complete_now(user_data, Err(e));
                    return Ok(());
                };
                if len == 0 {
                    self.complete_now(user_data, Ok(0));
                    return Ok(());
                }
                (len, is_write, Some(offset))
            }
            IoOp::Flush => {
                if self.read_only {
                    self.complete_now(user_data, Ok(0));
                    return Ok(());
                }
                (0, true, None)
            }
            IoOp::Discard { offset, len } | IoOp::WriteZeroes { offset, len } => {
                if self.read_only {
                    self.complete_now(user_data, Err(read_only(offset)));
                    return Ok(());
                }
                if len == 0 {
                    self.complete_now(user_data, Ok(0));
                    return Ok(());
                }
                (0, true, Some(offset))
            }
        };
        // librbd clips I/O that runs past the end (a short read, a write partly
        // dropped): refuse it here, asking librbd for the live size before we do.
        if let (
            Some(off),
            IoOp::Read { .. }
            | IoOp::Write { .. }
            | IoOp::Discard { .. }
            | IoOp::WriteZeroes { .. },
        ) = (offset, op)
        {
            let n = match op {
                IoOp::Discard { len, .. } | IoOp::WriteZeroes { len, .. } => len,
                _ => u64::try_from(len).unwrap_or(u64::MAX),
            };
            if !self.image.in_range(off, n) {
                let e = IoError::new(IoErrorKind::OutOfRange, libc::EINVAL, Some(off));
                self.complete_now(user_data, Err(e));
                return Ok(());
            }
        }
        let iovcnt = match op {
            IoOp::Read { .. } | IoOp::Write { .. } => match libc::c_int::try_from(iovecs.len()) {
                Ok(n) => n,
                Err(_) => {
                    let e = IoError::new(IoErrorKind::OutOfRange, libc::EINVAL, offset);
                    self.complete_now(user_data, Err(e));
                    return Ok(());
                }
            },
            _ => 0,
        };
        let zero_len = match op {
            IoOp::Discard { len, .. } | IoOp::WriteZeroes { len, .. } => match usize::try_from(len)
            {
                Ok(n) => n,
                Err(_) => {
                    let e = IoError::new(IoErrorKind::OutOfRange, libc::EINVAL, offset);
                    self.complete_now(user_data, Err(e));
                    return Ok(());
                }
            },
            _ => 0,
        };

        let ctx = Box::into_raw(Box::new(OpCtx {
            shared: Arc::clone(&self.shared),
            user_data,
            len,
            is_write,
            offset,
        }));
        let mut c: ffi::RbdCompletionT = std::ptr::null_mut();
        // SAFETY: `ctx` is a live heap pointer that `on_complete` takes back; `c`
        // receives the completion.
        let r = unsafe { ffi::rbd_aio_create_completion(ctx.cast(), on_complete, &mut c) };
        if r < 0 {
            // SAFETY: librbd did not take `ctx`; we still own it.
            drop(unsafe { Box::from_raw(ctx) });
            return Err(BackendError::Io {
                op: "rbd_aio_create_completion",
                offset: offset.unwrap_or(0),
                source: std::io::Error::from_raw_os_error(r.saturating_neg()),
            });
        }
        self.shared.pending.fetch_add(1, Ordering::AcqRel);
        let img = self.image.image;
        // SAFETY: the image is open (we hold an `Arc<Image>`); `c` is a fresh
        // completion. For readv/writev, `iovecs` points at `iovcnt` iovecs whose
        // memory the caller keeps valid until the completion is reaped or the
        // channel dropped (which waits for librbd); librbd copies the iovec array
        // itself before returning.
        let r = unsafe {
            match op {
                IoOp::Read { offset } => {
                    ffi::rbd_aio_readv(img, iovecs.as_ptr(), iovcnt, offset, c)
                }
                IoOp::Write { offset, .. } => {
                    ffi::rbd_aio_writev(img, iovecs.as_ptr(), iovcnt, offset, c)
                }
                IoOp::Flush => ffi::rbd_aio_flush(img, c),
                // Deallocates whole objects and zeroes partial ones: plain
                // rbd_aio_discard skips pieces smaller than the discard granularity
                // and they would keep their data.
                IoOp::Discard { offset, .. } | IoOp::WriteZeroes { offset, .. } => {
                    ffi::rbd_aio_write_zeroes(img, offset, zero_len, c, 0, 0)
                }
            }
        };
        if r < 0 {
            self.shared.pending.fetch_sub(1, Ordering::AcqRel);
            // SAFETY: the submission failed, so librbd will not call back: release
            // the completion and take the context back.
            unsafe { ffi::rbd_aio_release(c) };
            // SAFETY: as above, `ctx` is ours again.
            drop(unsafe { Box::from_raw(ctx) });
            return Err(BackendError::Io {
                op: "rbd aio submit",
                offset: offset.unwrap_or(0),
                source: std::io::Error::from_raw_os_error(r.saturating_neg()),
            });
        }
        self.in_flight += 1;
        Ok(())
    }

    fn cancel(&mut self, _user_data: u64) -> bool {
        // librbd has no way to take back a request it has queued.
        false
    }

    fn reap(&mut self, out: &mut Vec<Completion>) {
        let mut done = self
            .shared
            .done
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.in_flight = self.in_flight.saturating_sub(done.len());
        out.append(&mut done);
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }
}

impl Drop for RbdChannel {
    fn drop(&mut self) {
        // librbd may still write into the submitters' buffers until it calls back:
        // wait for it, bounded by the OSD op timeout. If that passes (no timeout
        // configured and an OSD gone), the contexts keep `Shared` alive and the
        // callbacks still run safely whenever they come.
        let end = Instant::now() + self.drain_limit;
        let mut g = self
            .shared
            .idle_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while self.shared.pending.load(Ordering::Acquire) > 0 {
            let now = Instant::now();
            if now >= end {
                break;
            }
            g = self
                .shared
                .idle
                .wait_timeout(g, (end - now).min(Duration::from_millis(100)))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        if self.shared.pending.load(Ordering::Acquire) > 0 {
            // Closing the image under requests librbd still runs is not safe: keep
            // it open for good (this only happens when I/O outlived every timeout).
            std::mem::forget(Arc::clone(&self.image));
        }
    }
}
