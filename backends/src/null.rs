//! Null backend: reads return zeroes, writes are dropped, everything completes inline
//! inside `submit`. For measuring the rest of the stack without storage in the way.

use crate::inline::InlineQueue;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::{
    Backend, BackendError, Capabilities, Completion, Extent, ExtentState, IoChannel, IoError,
    IoErrorKind, IoOp,
};

/// A store of `size` bytes that holds nothing.
pub struct NullBackend {
    size: Arc<AtomicU64>,
}

impl NullBackend {
    pub fn new(size: u64) -> Self {
        NullBackend {
            size: Arc::new(AtomicU64::new(size)),
        }
    }
}

impl Backend for NullBackend {
    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            discard: true,
            discard_zeroes: true,
            write_zeroes: true,
            flush: false,
            rotational: false,
            optimal_transfer: 0,
            max_transfer: 0,
            block_status: true,
            read_only: false,
            dma_alignment: 1,
        }
    }

    fn open_channel(&self, _notify: &EventFd) -> Result<Box<dyn IoChannel>, BackendError> {
        Ok(Box::new(NullChannel {
            size: self.size.clone(),
            queue: InlineQueue::new(),
        }))
    }

    fn block_status(&self, offset: u64, _len: u64) -> Result<Extent, BackendError> {
        let size = self.size();
        if offset >= size {
            return Err(BackendError::Config(format!(
                "block status at {offset}, past the end {size}"
            )));
        }
        Ok(Extent {
            offset,
            len: size - offset,
            state: ExtentState::Mapped,
        })
    }

    fn resize(&self, new_size: u64) -> Result<(), BackendError> {
        self.size.store(new_size, Ordering::Release);
        Ok(())
    }

    fn describe(&self) -> String {
        format!("null:{}", self.size())
    }
}

struct NullChannel {
    size: Arc<AtomicU64>,
    queue: InlineQueue,
}

impl NullChannel {
    fn run(&self, op: IoOp, iovecs: &[libc::iovec]) -> Result<usize, IoError> {
        let size = self.size.load(Ordering::Acquire);
        let oor = |off| IoError::new(IoErrorKind::OutOfRange, libc::EINVAL, Some(off));
        let check = |offset: u64, len: u64| match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(oor(offset)),
        };
        let total = iovecs
            .iter()
            .try_fold(0usize, |acc, v| acc.checked_add(v.iov_len));
        match op {
            IoOp::Read { offset } => {
                let total = total.ok_or(oor(offset))?;
                check(offset, total as u64)?;
                for v in iovecs {
                    // SAFETY: the caller of `submit` guarantees each iovec of a read is
                    // valid for writes of its length and unaliased while in flight.
                    unsafe { std::ptr::write_bytes(v.iov_base.cast::<u8>(), 0, v.iov_len) };
                }
                Ok(total)
            }
            IoOp::Write { offset, .. } => {
                let total = total.ok_or(oor(offset))?;
                check(offset, total as u64)?;
                Ok(total)
            }
            IoOp::Flush => Ok(0),
            IoOp::Discard { offset, len } | IoOp::WriteZeroes { offset, len } => {
                check(offset, len).map(|_| 0)
            }
        }
    }
}

impl IoChannel for NullChannel {
    unsafe fn submit(
        &mut self,
        op: IoOp,
        iovecs: &[libc::iovec],
        user_data: u64,
    ) -> Result<(), BackendError> {
        let result = self.run(op, iovecs);
        self.queue.complete(user_data, result);
        Ok(())
    }

    fn cancel(&mut self, _user_data: u64) -> bool {
        false
    }

    fn reap(&mut self, out: &mut Vec<Completion>) {
        self.queue.reap(out);
    }

    fn in_flight(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn reads_zero_writes_vanish() {
        let b = NullBackend::new(1 << 40);
        let e = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut ch = b.open_channel(&e).unwrap();
        let mut buf = vec![0xaau8; 8192];
        let iov = [
            libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: 4096,
            },
            libc::iovec {
                iov_base: buf.as_mut_ptr().wrapping_add(4096).cast(),
                iov_len: 4096,
            },
        ];
        // SAFETY: `buf` outlives the inline completion.
        unsafe {
            ch.submit(
                IoOp::Write {
                    offset: 0,
                    fua: true,
                },
                &iov,
                1,
            )
        }
        .unwrap();
        // SAFETY: as above.
        unsafe { ch.submit(IoOp::Read { offset: 0 }, &iov, 2) }.unwrap();
        // SAFETY: as above.
        unsafe {
            ch.submit(
                IoOp::Read {
                    offset: (1 << 40) - 4096,
                },
                &iov,
                3,
            )
        }
        .unwrap();
        // SAFETY: no iovecs.
        unsafe {
            ch.submit(
                IoOp::Discard {
                    offset: 0,
                    len: 1 << 40,
                },
                &[],
                4,
            )
        }
        .unwrap();
        assert_eq!(ch.in_flight(), 4);
        assert!(
            e.read().is_err(),
            "inline completions are reaped, not signalled"
        );
        let mut out = Vec::new();
        ch.reap(&mut out);
        assert_eq!(ch.in_flight(), 0);
        assert_eq!(
            out[0],
            Completion {
                user_data: 1,
                result: Ok(8192)
            }
        );
        assert_eq!(
            out[1],
            Completion {
                user_data: 2,
                result: Ok(8192)
            }
        );
        assert!(buf.iter().all(|&x| x == 0));
        assert_eq!(out[2].result.unwrap_err().kind, IoErrorKind::OutOfRange);
        assert_eq!(out[3].result, Ok(0));
    }

    #[test]
    fn block_status_is_mapped_and_instant() {
        let b = NullBackend::new(u64::MAX);
        let t = Instant::now();
        let ext = b.block_status(4096, 512).unwrap();
        assert_eq!(
            ext,
            Extent {
                offset: 4096,
                len: u64::MAX - 4096,
                state: ExtentState::Mapped
            }
        );
        assert!(t.elapsed() < Duration::from_secs(1));
        assert!(b.block_status(u64::MAX, 1).is_err());
        b.resize(4096).unwrap();
        assert_eq!(b.size(), 4096);
        assert!(b.block_status(4096, 1).is_err());
        assert_eq!(b.describe(), "null:4096");
    }
}
