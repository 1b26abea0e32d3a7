//! The engine's view of a channel's registered memory: a byte range of a
//! receive buffer (immediate data, used in place) or of the data region (a
//! command's run), handed to the engine as a [`DataBuf`].

use engine::DataBuf;

/// A range of registered memory the engine reads or fills.
pub(super) struct RegionBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the range is owned by exactly one command at a time (see `new`), so
// moving the handle to another thread moves the only access to it.
unsafe impl Send for RegionBuf {}

impl RegionBuf {
    /// # Safety
    /// `ptr` must be valid for reads and writes of `len` bytes for as long as
    /// this value (or the engine command holding it) lives, and nothing else —
    /// no posted work request, no other command — may touch those bytes
    /// meanwhile. The channel guarantees it: a receive buffer is reposted and
    /// a data run given back only after the engine returned the command, and
    /// the engine worker is dropped before the regions.
    pub unsafe fn new(ptr: *mut u8, len: usize) -> Self {
        RegionBuf { ptr, len }
    }

    fn clip(&self, offset: usize, len: usize) -> (usize, usize) {
        let start = offset.min(self.len);
        let end = offset.saturating_add(len).min(self.len);
        (start, end.max(start))
    }
}

impl DataBuf for RegionBuf {
    fn len(&self) -> usize {
        self.len
    }

    fn iovecs(&mut self, offset: usize, len: usize, out: &mut Vec<libc::iovec>) {
        let (start, end) = self.clip(offset, len);
        if end > start {
            out.push(libc::iovec {
                // SAFETY: `start` ≤ `len`, inside the range `new` vouches for.
                iov_base: unsafe { self.ptr.add(start) }.cast(),
                iov_len: end - start,
            });
        }
    }

    fn write_at(&mut self, offset: usize, src: &[u8]) -> usize {
        let (start, end) = self.clip(offset, src.len());
        let n = end - start;
        // SAFETY: [start, start + n) is inside the range `new` vouches for,
        // which nothing else touches; `src` is a separate Rust slice.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.add(start), n) };
        n
    }

    fn read_at(&self, offset: usize, dst: &mut [u8]) -> usize {
        let (start, end) = self.clip(offset, dst.len());
        let n = end - start;
        // SAFETY: as in `write_at`, reading.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(start), dst.as_mut_ptr(), n) };
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clips_like_a_vec() {
        let mut backing = vec![0u8; 8];
        // SAFETY: `backing` outlives `b` and is not touched while `b` lives.
        let mut b = unsafe { RegionBuf::new(backing.as_mut_ptr(), backing.len()) };
        assert_eq!(b.write_at(6, &[1, 2, 3]), 2);
        let mut out = [0u8; 4];
        assert_eq!(b.read_at(5, &mut out), 3);
        assert_eq!(&out[..3], &[0, 1, 2]);
        assert_eq!(b.write_at(9, &[1]), 0);
        assert_eq!(b.read_at(100, &mut out), 0);
        let mut iov = Vec::new();
        b.iovecs(4, 100, &mut iov);
        assert_eq!(iov.len(), 1);
        assert_eq!(iov[0].iov_len, 4);
        iov.clear();
        b.iovecs(8, 1, &mut iov);
        assert!(iov.is_empty());
        assert_eq!(&backing[6..], &[1, 2]);
    }
}
