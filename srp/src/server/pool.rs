//! The bookkeeping of a channel's data buffer: one registered region cut into
//! fixed-size chunks, handed out as contiguous runs (one local address range per
//! command, so each remote descriptor is one RDMA work request with one local
//! SGE). A command that finds no run long enough waits, in arrival order, for
//! others to give theirs back; the region is never grown, so a channel's data
//! memory is bounded by its size.

/// A run of chunks: byte offset and length in the region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Extent {
    pub offset: usize,
    pub len: usize,
    chunks: usize,
}

/// First-fit allocator over `chunks` chunks of `chunk` bytes.
#[derive(Debug)]
pub(crate) struct ChunkPool {
    chunk: usize,
    used: Vec<bool>,
    free: usize,
}

impl ChunkPool {
    /// A pool of `total / chunk` chunks (`chunk` > 0).
    pub fn new(total: usize, chunk: usize) -> Self {
        let n = total.checked_div(chunk).unwrap_or(0);
        ChunkPool {
            chunk,
            used: vec![false; n],
            free: n,
        }
    }

    /// The largest request that can ever be served.
    pub fn capacity(&self) -> usize {
        self.used.len().saturating_mul(self.chunk)
    }

    /// Chunks not in use.
    #[cfg(test)]
    pub fn free_chunks(&self) -> usize {
        self.free
    }

    /// A contiguous run of at least `len` bytes (`len` > 0), or `None` if there is
    /// none now.
    pub fn alloc(&mut self, len: usize) -> Option<Extent> {
        if len == 0 || len > self.capacity() {
            return None;
        }
        let need = len.div_ceil(self.chunk);
        if need > self.free {
            return None;
        }
        let mut run = 0;
        for i in 0..self.used.len() {
            if self.used[i] {
                run = 0;
                continue;
            }
            run += 1;
            if run == need {
                let first = i + 1 - need;
                for u in &mut self.used[first..=i] {
                    *u = true;
                }
                self.free -= need;
                return Some(Extent {
                    offset: first * self.chunk,
                    len,
                    chunks: need,
                });
            }
        }
        None
    }

    /// Gives a run back.
    pub fn free(&mut self, e: Extent) {
        let first = e.offset / self.chunk;
        let end = first.saturating_add(e.chunks).min(self.used.len());
        for u in &mut self.used[first.min(end)..end] {
            debug_assert!(*u, "double free of a data extent");
            if *u {
                *u = false;
                self.free += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_contiguous_and_come_back() {
        let mut p = ChunkPool::new(64 << 10, 4096);
        assert_eq!(p.capacity(), 64 << 10);
        let a = p.alloc(5000).unwrap();
        assert_eq!((a.offset, a.len), (0, 5000));
        let b = p.alloc(4096).unwrap();
        assert_eq!(b.offset, 8192);
        assert_eq!(p.free_chunks(), 13);
        p.free(a);
        // A 12 KiB run does not fit in the 8 KiB hole: it goes after b.
        let c = p.alloc(12 << 10).unwrap();
        assert_eq!(c.offset, 12 << 10);
        let d = p.alloc(8192).unwrap();
        assert_eq!(d.offset, 0);
        p.free(b);
        p.free(c);
        p.free(d);
        assert_eq!(p.free_chunks(), 16);
    }

    #[test]
    fn refuses_what_cannot_fit() {
        let mut p = ChunkPool::new(16 << 10, 4096);
        assert!(p.alloc(0).is_none());
        assert!(p.alloc((16 << 10) + 1).is_none());
        let all = p.alloc(16 << 10).unwrap();
        assert!(p.alloc(1).is_none());
        p.free(all);
        assert!(p.alloc(1).is_some());
        let mut empty = ChunkPool::new(100, 4096);
        assert_eq!(empty.capacity(), 0);
        assert!(empty.alloc(1).is_none());
    }
}
