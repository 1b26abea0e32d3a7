//! The data buffer of one iSCSI command: a `Vec` taken from a per-thread pool,
//! exactly ExpectedDataTransferLength long, so the engine's residual logic sees
//! what the initiator expected. Data-Out lands in it; Data-In is sent from it.

use std::sync::{Arc, Mutex, PoisonError};

use engine::DataBuf;

/// Buffers larger than this are freed rather than pooled.
pub const MAX_POOLED_CAPACITY: usize = 1 << 20;
/// Buffers a pool keeps at most.
pub const MAX_POOLED: usize = 64;

/// A pool of byte vectors, shared by the connections of one worker thread.
#[derive(Clone, Debug, Default)]
pub struct BufPool(Arc<Mutex<Vec<Vec<u8>>>>);

impl BufPool {
    pub fn new() -> Self {
        BufPool::default()
    }

    /// A zeroed buffer of `len` bytes (zeroed so that nothing of an earlier
    /// command can ever reach another initiator).
    pub fn get(&self, len: usize) -> PoolBuf {
        let mut v = if len <= MAX_POOLED_CAPACITY {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop()
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        v.clear();
        v.resize(len, 0);
        PoolBuf {
            data: v,
            pool: Some(self.clone()),
        }
    }

    /// A buffer of `len` bytes whose contents are unspecified (what an earlier
    /// command left): only for data-out, which overwrites every byte before the
    /// buffer is used.
    pub fn get_for_overwrite(&self, len: usize) -> PoolBuf {
        let mut v = if len <= MAX_POOLED_CAPACITY {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop()
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        if v.len() >= len {
            v.truncate(len);
        } else {
            v.resize(len, 0);
        }
        PoolBuf {
            data: v,
            pool: Some(self.clone()),
        }
    }

    /// Buffers waiting for reuse.
    pub fn idle(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// One command's buffer; returns to its pool when dropped.
#[derive(Debug, Default)]
pub struct PoolBuf {
    data: Vec<u8>,
    pool: Option<BufPool>,
}

impl PoolBuf {
    /// A buffer that belongs to no pool.
    pub fn unpooled(len: usize) -> Self {
        PoolBuf {
            data: vec![0; len],
            pool: None,
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.data
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.data
    }
}

impl Drop for PoolBuf {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            if self.data.capacity() <= MAX_POOLED_CAPACITY {
                let mut p = pool.0.lock().unwrap_or_else(PoisonError::into_inner);
                if p.len() < MAX_POOLED {
                    p.push(std::mem::take(&mut self.data));
                }
            }
        }
    }
}

impl DataBuf for PoolBuf {
    fn len(&self) -> usize {
        self.data.len()
    }

    fn iovecs(&mut self, offset: usize, len: usize, out: &mut Vec<libc::iovec>) {
        let start = offset.min(self.data.len());
        let end = offset.saturating_add(len).min(self.data.len());
        if end > start {
            out.push(libc::iovec {
                iov_base: self.data[start..end].as_mut_ptr().cast(),
                iov_len: end - start,
            });
        }
    }

    fn write_at(&mut self, offset: usize, src: &[u8]) -> usize {
        let start = offset.min(self.data.len());
        let n = src.len().min(self.data.len() - start);
        self.data[start..start + n].copy_from_slice(&src[..n]);
        n
    }

    fn read_at(&self, offset: usize, dst: &mut [u8]) -> usize {
        let start = offset.min(self.data.len());
        let n = dst.len().min(self.data.len() - start);
        dst[..n].copy_from_slice(&self.data[start..start + n]);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooled_buffers_come_back_zeroed() {
        let pool = BufPool::new();
        let mut b = pool.get(16);
        assert_eq!(b.write_at(4, &[1, 2, 3]), 3);
        drop(b);
        assert_eq!(pool.idle(), 1);
        let b = pool.get(8);
        assert_eq!(pool.idle(), 0);
        assert_eq!(b.as_slice(), &[0u8; 8]);
        let big = pool.get(MAX_POOLED_CAPACITY + 1);
        drop(big);
        drop(b);
        assert_eq!(pool.idle(), 1);
    }

    #[test]
    fn buffers_for_overwrite_have_the_right_length() {
        let pool = BufPool::new();
        drop(pool.get(100));
        assert_eq!(pool.get_for_overwrite(40).len(), 40);
        assert_eq!(pool.idle(), 1);
        assert_eq!(pool.get_for_overwrite(300).len(), 300);
    }

    #[test]
    fn clips_at_the_end() {
        let mut b = PoolBuf::unpooled(4);
        assert_eq!(b.write_at(2, &[9, 9, 9]), 2);
        assert_eq!(b.write_at(10, &[9]), 0);
        let mut d = [0u8; 8];
        assert_eq!(b.read_at(1, &mut d), 3);
        let mut iov = Vec::new();
        b.iovecs(3, 10, &mut iov);
        assert_eq!(iov.len(), 1);
        assert_eq!(iov[0].iov_len, 1);
    }
}
