//! Sparse RAM backend: memory is allocated per chunk on first write, unwritten
//! chunks read as zeroes, so a TiB-sized LUN costs nothing until it is written.
//! Operations complete inline, inside `submit`.
//!
//! Locking: the chunk map sits behind one `RwLock` that is taken for writing only to
//! add or remove chunks (first write to a chunk, discard of whole chunks, resize);
//! each chunk has its own `RwLock`, so reads and writes of chunks that exist run in
//! parallel from every worker thread. The size changes only under the map's write
//! lock, and every I/O checks it under the map's read lock, so no write can land past
//! the end of a store that is shrinking.

use crate::inline::InlineQueue;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use vmm_sys_util::eventfd::EventFd;

use crate::{
    Backend, BackendError, Capabilities, Completion, Extent, ExtentState, IoChannel, IoError,
    IoErrorKind, IoOp,
};

/// Allocation unit. 64 KiB keeps the map small for large LUNs and the waste small for
/// scattered 4K writes.
pub const CHUNK: u64 = 64 * 1024;
const CHUNK_USIZE: usize = CHUNK as usize;

/// Longest run of allocated chunks `block_status` walks before answering with what it
/// has seen (a shorter, still correct, extent): 4 GiB.
const MAX_RUN: u64 = 1 << 16;

type Chunk = RwLock<Box<[u8]>>;
type Map = BTreeMap<u64, Chunk>;

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

fn new_chunk() -> Chunk {
    RwLock::new(vec![0u8; CHUNK_USIZE].into_boxed_slice())
}

/// Splits `[pos, pos + len)` into (chunk index, offset in chunk, length) pieces.
fn pieces(pos: u64, len: usize) -> impl Iterator<Item = (u64, usize, usize)> {
    let mut done = 0usize;
    std::iter::from_fn(move || {
        if done >= len {
            return None;
        }
        let p = pos + done as u64;
        let within = (p % CHUNK) as usize;
        let n = (CHUNK_USIZE - within).min(len - done);
        done += n;
        Some((p / CHUNK, within, n))
    })
}

/// The bytes, shared by every channel.
pub struct RamStore {
    /// Changed only with `chunks` write-locked.
    size: AtomicU64,
    chunks: RwLock<Map>,
}

fn out_of_range(offset: u64) -> IoError {
    IoError::new(IoErrorKind::OutOfRange, libc::EINVAL, Some(offset))
}

impl RamStore {
    pub fn new(size: u64) -> Arc<Self> {
        Arc::new(Self {
            size: AtomicU64::new(size),
            chunks: RwLock::new(BTreeMap::new()),
        })
    }

    /// Bytes of memory allocated for data.
    pub fn allocated(&self) -> u64 {
        read(&self.chunks).len() as u64 * CHUNK
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), IoError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size.load(Ordering::Acquire) => Ok(()),
            _ => Err(out_of_range(offset)),
        }
    }

    fn read_locked(map: &Map, offset: u64, dst: &mut [u8]) {
        let mut done = 0usize;
        for (idx, within, n) in pieces(offset, dst.len()) {
            let out = &mut dst[done..done + n];
            match map.get(&idx) {
                Some(c) => out.copy_from_slice(&read(c)[within..within + n]),
                None => out.fill(0),
            }
            done += n;
        }
    }

    /// Copies `src` in; every chunk it touches must exist.
    fn write_locked(map: &Map, offset: u64, src: &[u8]) {
        let mut done = 0usize;
        for (idx, within, n) in pieces(offset, src.len()) {
            if let Some(c) = map.get(&idx) {
                write(c)[within..within + n].copy_from_slice(&src[done..done + n]);
            }
            done += n;
        }
    }

    /// Runs `f` with the map locked so that every chunk of `[offset, offset + len)`
    /// exists: under the read lock if they all do already, else under the write lock
    /// after allocating the missing ones. The range is checked under the lock.
    fn with_chunks<R>(
        &self,
        offset: u64,
        len: u64,
        f: impl FnOnce(&Map) -> R,
    ) -> Result<R, IoError> {
        let first = offset / CHUNK;
        let last = offset.saturating_add(len).div_ceil(CHUNK);
        {
            let map = read(&self.chunks);
            self.check_range(offset, len)?;
            if len == 0 || map.range(first..last).count() as u64 == last - first {
                return Ok(f(&map));
            }
        }
        let mut map = write(&self.chunks);
        self.check_range(offset, len)?;
        for idx in first..last {
            map.entry(idx).or_insert_with(new_chunk);
        }
        Ok(f(&map))
    }

    /// Copies `[offset, offset + dst.len())` into `dst`.
    pub fn read_at(&self, offset: u64, dst: &mut [u8]) -> Result<(), IoError> {
        let map = read(&self.chunks);
        self.check_range(offset, dst.len() as u64)?;
        Self::read_locked(&map, offset, dst);
        Ok(())
    }

    /// Copies `src` to `offset`, allocating chunks as needed.
    pub fn write_at(&self, offset: u64, src: &[u8]) -> Result<(), IoError> {
        self.with_chunks(offset, src.len() as u64, |map| {
            Self::write_locked(map, offset, src)
        })
    }

    /// Zeroes a range, freeing the chunks it covers whole.
    pub fn zero_range(&self, offset: u64, len: u64) -> Result<(), IoError> {
        let mut map = write(&self.chunks);
        self.check_range(offset, len)?;
        let size = self.size.load(Ordering::Acquire);
        let end = offset + len;
        // Only the chunks that exist need work: a discard of a huge, mostly sparse
        // store costs what it frees, not one step per 64 KiB of its length.
        let present: Vec<u64> = map
            .range(offset / CHUNK..end.div_ceil(CHUNK))
            .map(|(&idx, _)| idx)
            .collect();
        for idx in present {
            let start = idx * CHUNK;
            let pos = offset.max(start);
            let within = pos - start;
            let n = end.min(start + CHUNK) - pos;
            // A chunk covered whole, or from its start to the end of the store (its
            // tail past the end is zero already), is freed.
            if within == 0 && (n == CHUNK || pos + n >= size) {
                map.remove(&idx);
            } else if let Some(c) = map.get_mut(&idx) {
                let c = c.get_mut().unwrap_or_else(PoisonError::into_inner);
                c[within as usize..(within + n) as usize].fill(0);
            }
        }
        Ok(())
    }

    /// The extent at `offset`: found with one ordered-map lookup when deallocated,
    /// by walking at most `MAX_RUN` chunks when mapped.
    pub fn block_status(&self, offset: u64, len: u64) -> Result<Extent, BackendError> {
        let map = read(&self.chunks);
        let size = self.size.load(Ordering::Acquire);
        if offset >= size {
            return Err(BackendError::Config(format!(
                "block status at {offset}, past the end {size}"
            )));
        }
        let first = offset / CHUNK;
        let end = if map.contains_key(&first) {
            // Walk the run of consecutive chunks, at least to `offset + len`.
            let want = offset
                .saturating_add(len)
                .min(size)
                .div_ceil(CHUNK)
                .max(first + 1);
            let limit = want.min(first.saturating_add(MAX_RUN)).max(first + 1);
            let mut next = first;
            for (&idx, _) in map.range(first..limit) {
                if idx != next {
                    break;
                }
                next += 1;
            }
            next.saturating_mul(CHUNK)
        } else {
            map.range(first..)
                .next()
                .map_or(size, |(&idx, _)| idx.saturating_mul(CHUNK))
        };
        let state = if map.contains_key(&first) {
            ExtentState::Mapped
        } else {
            ExtentState::Deallocated
        };
        let end = end.min(size);
        Ok(Extent {
            offset,
            len: end - offset,
            state,
        })
    }

    pub fn resize(&self, new_size: u64) -> Result<(), BackendError> {
        let mut map = write(&self.chunks);
        let old = self.size.load(Ordering::Acquire);
        if new_size < old {
            // Drop the chunks wholly past the new end; zero the tail of the one that
            // straddles it, so that growing again reads zeroes there.
            let keep = new_size.div_ceil(CHUNK);
            drop(map.split_off(&keep));
            // (When `new_size` is a chunk boundary that chunk went with `split_off`.)
            if let Some(c) = map.get_mut(&(new_size / CHUNK)) {
                let c = c.get_mut().unwrap_or_else(PoisonError::into_inner);
                c[(new_size % CHUNK) as usize..].fill(0);
            }
        }
        self.size.store(new_size, Ordering::Release);
        Ok(())
    }
}

/// The RAM backend: a handle on the shared store.
#[derive(Clone)]
pub struct RamBackend(pub Arc<RamStore>);

impl RamBackend {
    pub fn new(size: u64) -> Self {
        RamBackend(RamStore::new(size))
    }
}

impl Backend for RamBackend {
    fn size(&self) -> u64 {
        self.0.size.load(Ordering::Acquire)
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
        Ok(Box::new(RamChannel {
            store: self.0.clone(),
            queue: InlineQueue::new(),
        }))
    }
    fn block_status(&self, offset: u64, len: u64) -> Result<Extent, BackendError> {
        self.0.block_status(offset, len)
    }
    fn resize(&self, new_size: u64) -> Result<(), BackendError> {
        self.0.resize(new_size)
    }
    fn describe(&self) -> String {
        format!("ram:{}", self.size())
    }
}

struct RamChannel {
    store: Arc<RamStore>,
    queue: InlineQueue,
}

fn iov_total(offset: u64, iovecs: &[libc::iovec]) -> Result<u64, IoError> {
    iovecs
        .iter()
        .try_fold(0u64, |acc, v| acc.checked_add(v.iov_len as u64))
        .ok_or(out_of_range(offset))
}

impl RamChannel {
    fn run(&self, op: IoOp, iovecs: &[libc::iovec]) -> Result<usize, IoError> {
        match op {
            IoOp::Read { offset } => {
                let total = iov_total(offset, iovecs)?;
                let map = read(&self.store.chunks);
                // The whole range is checked before any byte moves.
                self.store.check_range(offset, total)?;
                let mut pos = offset;
                for iov in iovecs {
                    if iov.iov_len == 0 {
                        continue;
                    }
                    // SAFETY: the caller of `submit` guarantees each iovec is valid
                    // for writes of its length and not aliased while in flight.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(iov.iov_base.cast::<u8>(), iov.iov_len)
                    };
                    RamStore::read_locked(&map, pos, dst);
                    pos += iov.iov_len as u64;
                }
                usize::try_from(total).map_err(|_| out_of_range(offset))
            }
            IoOp::Write { offset, .. } => {
                let total = iov_total(offset, iovecs)?;
                self.store.with_chunks(offset, total, |map| {
                    let mut pos = offset;
                    for iov in iovecs {
                        if iov.iov_len == 0 {
                            continue;
                        }
                        // SAFETY: the caller of `submit` guarantees each iovec is
                        // valid for reads of its length while in flight.
                        let src = unsafe {
                            std::slice::from_raw_parts(iov.iov_base.cast::<u8>(), iov.iov_len)
                        };
                        RamStore::write_locked(map, pos, src);
                        pos += iov.iov_len as u64;
                    }
                })?;
                usize::try_from(total).map_err(|_| out_of_range(offset))
            }
            IoOp::Flush => Ok(0),
            IoOp::Discard { offset, len } | IoOp::WriteZeroes { offset, len } => {
                self.store.zero_range(offset, len).map(|_| 0)
            }
        }
    }
}

impl IoChannel for RamChannel {
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

    const TIB: u64 = 1 << 40;

    /// Discarding all of a huge sparse store costs what it frees: the write lock
    /// is not held for one step per 64 KiB of its length.
    #[test]
    fn discard_of_a_huge_sparse_store_is_quick_and_exact() {
        let s = RamStore::new(64 * TIB);
        s.write_at(CHUNK + 10, &[7u8; 100]).unwrap();
        s.write_at(40 * TIB, &[8u8; 2 * CHUNK_USIZE]).unwrap();
        s.write_at(64 * TIB - 10, &[9u8; 10]).unwrap();
        // A partial head chunk keeps its bytes before the range.
        let start = Instant::now();
        s.zero_range(CHUNK + 50, 64 * TIB - CHUNK - 50).unwrap();
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "zero_range took {:?}",
            start.elapsed()
        );
        let mut b = [0u8; 100];
        s.read_at(CHUNK + 10, &mut b).unwrap();
        assert!(b[..40].iter().all(|&x| x == 7));
        assert!(b[40..].iter().all(|&x| x == 0));
        assert_eq!(s.allocated(), CHUNK, "whole chunks freed, the head kept");
    }

    fn iov(buf: &mut [u8]) -> libc::iovec {
        libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }
    }

    fn run(ch: &mut dyn IoChannel, op: IoOp, iovs: &[libc::iovec]) -> Result<usize, IoError> {
        // SAFETY: the tests' buffers outlive the inline completion.
        unsafe { ch.submit(op, iovs, 0) }.unwrap();
        let mut out = Vec::new();
        ch.reap(&mut out);
        assert_eq!(out.len(), 1);
        out.remove(0).result
    }

    #[test]
    fn one_tib_allocates_nothing_until_written() {
        let b = RamBackend::new(TIB);
        let e = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut ch = b.open_channel(&e).unwrap();
        let mut r = vec![0xffu8; 1 << 20];
        assert_eq!(
            run(
                &mut *ch,
                IoOp::Read {
                    offset: TIB - (1 << 20)
                },
                &[iov(&mut r)]
            ),
            Ok(1 << 20)
        );
        assert!(r.iter().all(|&x| x == 0));
        assert_eq!(
            run(
                &mut *ch,
                IoOp::WriteZeroes {
                    offset: 0,
                    len: TIB
                },
                &[]
            ),
            Ok(0)
        );
        assert_eq!(b.0.allocated(), 0);
        // One unaligned write across a chunk boundary allocates two chunks.
        let mut w = vec![0x42u8; 100];
        assert_eq!(
            run(
                &mut *ch,
                IoOp::Write {
                    offset: CHUNK * 7 - 50,
                    fua: false
                },
                &[iov(&mut w)]
            ),
            Ok(100)
        );
        assert_eq!(b.0.allocated(), 2 * CHUNK);
        let mut r = vec![0u8; 200];
        assert_eq!(
            run(
                &mut *ch,
                IoOp::Read {
                    offset: CHUNK * 7 - 100
                },
                &[iov(&mut r)]
            ),
            Ok(200)
        );
        assert!(r[..50].iter().all(|&x| x == 0));
        assert!(r[50..150].iter().all(|&x| x == 0x42));
        assert!(r[150..].iter().all(|&x| x == 0));
        assert!(
            e.read().is_err(),
            "inline completions are reaped, not signalled"
        );
    }

    #[test]
    fn block_status_maps_and_is_bounded_on_a_tib() {
        let b = RamBackend::new(TIB);
        let t = Instant::now();
        assert_eq!(
            b.block_status(0, 512).unwrap(),
            Extent {
                offset: 0,
                len: TIB,
                state: ExtentState::Deallocated
            }
        );
        b.0.write_at(3 * CHUNK + 10, &[1; 10]).unwrap();
        b.0.write_at(4 * CHUNK, &[1; 10]).unwrap();
        b.0.write_at(9 * CHUNK, &[1; 10]).unwrap();
        assert_eq!(
            b.block_status(100, 512).unwrap(),
            Extent {
                offset: 100,
                len: 3 * CHUNK - 100,
                state: ExtentState::Deallocated
            }
        );
        // Mapped run of chunks 3 and 4, asked from inside chunk 3 with a long len.
        assert_eq!(
            b.block_status(3 * CHUNK + 5, TIB).unwrap(),
            Extent {
                offset: 3 * CHUNK + 5,
                len: 2 * CHUNK - 5,
                state: ExtentState::Mapped
            }
        );
        assert_eq!(
            b.block_status(5 * CHUNK, 1).unwrap(),
            Extent {
                offset: 5 * CHUNK,
                len: 4 * CHUNK,
                state: ExtentState::Deallocated
            }
        );
        assert_eq!(
            b.block_status(10 * CHUNK, 1).unwrap(),
            Extent {
                offset: 10 * CHUNK,
                len: TIB - 10 * CHUNK,
                state: ExtentState::Deallocated
            }
        );
        assert!(b.block_status(TIB, 1).is_err());
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn block_status_of_a_long_mapped_run_stops_at_the_bound() {
        let b = RamBackend::new(TIB);
        // 64 chunks mapped; a short question gets at least what it asked for.
        b.0.write_at(0, &vec![1u8; 64 * CHUNK as usize]).unwrap();
        let ext = b.block_status(0, CHUNK).unwrap();
        assert_eq!(ext.state, ExtentState::Mapped);
        assert!(ext.len >= CHUNK && ext.len <= 64 * CHUNK);
        let ext = b.block_status(0, TIB).unwrap();
        assert_eq!(ext.len, 64 * CHUNK);
    }

    #[test]
    fn discard_frees_whole_chunks_and_zeroes_partial_ones() {
        let b = RamBackend::new(10 * CHUNK + 100);
        let e = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut ch = b.open_channel(&e).unwrap();
        let mut w = vec![0x99u8; (10 * CHUNK + 100) as usize];
        assert_eq!(
            run(
                &mut *ch,
                IoOp::Write {
                    offset: 0,
                    fua: true
                },
                &[iov(&mut w)]
            ),
            Ok(w.len())
        );
        assert_eq!(b.0.allocated(), 11 * CHUNK);
        // Half of chunk 1 through the whole of chunk 2 and 3.
        assert_eq!(
            run(
                &mut *ch,
                IoOp::Discard {
                    offset: CHUNK + CHUNK / 2,
                    len: CHUNK / 2 + 2 * CHUNK
                },
                &[]
            ),
            Ok(0)
        );
        assert_eq!(b.0.allocated(), 9 * CHUNK);
        // The last, short chunk is freed when zeroed to the end of the store.
        assert_eq!(
            run(
                &mut *ch,
                IoOp::WriteZeroes {
                    offset: 10 * CHUNK,
                    len: 100
                },
                &[]
            ),
            Ok(0)
        );
        assert_eq!(b.0.allocated(), 8 * CHUNK);
        let mut r = vec![0xeeu8; w.len()];
        assert_eq!(
            run(&mut *ch, IoOp::Read { offset: 0 }, &[iov(&mut r)]),
            Ok(r.len())
        );
        let (a, z) = (CHUNK as usize + CHUNK as usize / 2, 4 * CHUNK as usize);
        assert!(r[..a].iter().all(|&x| x == 0x99));
        assert!(r[a..z].iter().all(|&x| x == 0));
        assert!(r[z..10 * CHUNK as usize].iter().all(|&x| x == 0x99));
        assert!(r[10 * CHUNK as usize..].iter().all(|&x| x == 0));
        assert_eq!(
            run(
                &mut *ch,
                IoOp::Discard {
                    offset: 10 * CHUNK,
                    len: 101
                },
                &[]
            )
            .unwrap_err()
            .kind,
            IoErrorKind::OutOfRange
        );
    }

    #[test]
    fn out_of_range_moves_no_bytes() {
        let b = RamBackend::new(8192);
        let e = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut ch = b.open_channel(&e).unwrap();
        let mut a = vec![0xaau8; 4096];
        let mut c = vec![0xccu8; 8192];
        let r = run(
            &mut *ch,
            IoOp::Read { offset: 0 },
            &[iov(&mut a), iov(&mut c)],
        );
        assert_eq!(r.unwrap_err().kind, IoErrorKind::OutOfRange);
        assert!(
            a.iter().all(|&x| x == 0xaa),
            "no partial read before the error"
        );
        let r = run(
            &mut *ch,
            IoOp::Write {
                offset: 4096,
                fua: false,
            },
            &[iov(&mut a), iov(&mut c)],
        );
        assert_eq!(r.unwrap_err().kind, IoErrorKind::OutOfRange);
        assert_eq!(b.0.allocated(), 0, "no partial write before the error");
        let huge = [
            libc::iovec {
                iov_base: a.as_mut_ptr().cast(),
                iov_len: usize::MAX,
            },
            libc::iovec {
                iov_base: a.as_mut_ptr().cast(),
                iov_len: usize::MAX,
            },
        ];
        // Lengths that overflow are refused before anything is touched.
        assert_eq!(
            run(
                &mut *ch,
                IoOp::Write {
                    offset: 0,
                    fua: false
                },
                &huge
            )
            .unwrap_err()
            .kind,
            IoErrorKind::OutOfRange
        );
        assert_eq!(ch.in_flight(), 0);
    }

    #[test]
    fn resize_shrink_then_grow_reads_zeroes() {
        let b = RamBackend::new(4 * CHUNK);
        b.0.write_at(0, &vec![7u8; 4 * CHUNK as usize]).unwrap();
        b.resize(CHUNK + 10).unwrap();
        assert_eq!(b.size(), CHUNK + 10);
        assert_eq!(b.0.allocated(), 2 * CHUNK);
        assert_eq!(
            b.0.write_at(CHUNK, &[1; 11]).unwrap_err().kind,
            IoErrorKind::OutOfRange
        );
        b.resize(4 * CHUNK).unwrap();
        let mut r = vec![0xffu8; 4 * CHUNK as usize];
        b.0.read_at(0, &mut r).unwrap();
        assert!(r[..CHUNK as usize + 10].iter().all(|&x| x == 7));
        assert!(r[CHUNK as usize + 10..].iter().all(|&x| x == 0));
    }

    #[test]
    fn channels_on_several_threads_share_the_store() {
        let b = RamBackend::new(64 * CHUNK);
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let b = b.clone();
                std::thread::spawn(move || {
                    let e = EventFd::new(libc::EFD_NONBLOCK).unwrap();
                    let mut ch = b.open_channel(&e).unwrap();
                    for i in 0..16u64 {
                        let mut w = vec![t + 1; 4096];
                        let off = (u64::from(t) * 16 + i) * CHUNK;
                        assert_eq!(
                            run(
                                &mut *ch,
                                IoOp::Write {
                                    offset: off,
                                    fua: false
                                },
                                &[iov(&mut w)]
                            ),
                            Ok(4096)
                        );
                        let mut r = vec![0u8; 4096];
                        assert_eq!(
                            run(&mut *ch, IoOp::Read { offset: off }, &[iov(&mut r)]),
                            Ok(4096)
                        );
                        assert_eq!(r, w);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(b.0.allocated(), 64 * CHUNK);
        let mut r = [0u8; 1];
        b.0.read_at(63 * CHUNK, &mut r).unwrap();
        assert_eq!(r, [4]);
    }
}
