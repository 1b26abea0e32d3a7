//! Sparse RAM backend: memory is allocated per chunk on first write, unwritten
//! chunks read as zeroes, so a TiB-sized LUN costs nothing until it is written.
//! Operations complete inline, inside `submit`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use vmm_sys_util::eventfd::EventFd;

use crate::{
    Backend, BackendError, Capabilities, Completion, Extent, ExtentState, IoChannel, IoError,
    IoErrorKind, IoOp,
};

/// Allocation unit. 64 KiB keeps the map small for large LUNs and the waste small for
/// scattered 4K writes.
pub const CHUNK: u64 = 64 * 1024;

type Chunk = Box<[u8]>;

/// The bytes, shared by every channel.
pub struct RamStore {
    size: AtomicU64,
    chunks: RwLock<HashMap<u64, Chunk>>,
}

impl RamStore {
    pub fn new(size: u64) -> Arc<Self> {
        Arc::new(Self {
            size: AtomicU64::new(size),
            chunks: RwLock::new(HashMap::new()),
        })
    }

    /// Bytes of memory allocated for data.
    pub fn allocated(&self) -> u64 {
        let chunks = self.chunks.read().unwrap_or_else(|e| e.into_inner());
        chunks.len() as u64 * CHUNK
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), IoError> {
        let end = offset.checked_add(len);
        match end {
            Some(end) if end <= self.size.load(Ordering::Acquire) => Ok(()),
            _ => Err(IoError::new(
                IoErrorKind::OutOfRange,
                libc::EINVAL,
                Some(offset),
            )),
        }
    }

    /// Copies `[offset, offset + dst.len())` into `dst`.
    pub fn read_at(&self, offset: u64, dst: &mut [u8]) -> Result<(), IoError> {
        self.check_range(offset, dst.len() as u64)?;
        let chunks = self.chunks.read().unwrap_or_else(|e| e.into_inner());
        let mut done = 0usize;
        while done < dst.len() {
            let pos = offset + done as u64;
            let (idx, within) = (pos / CHUNK, (pos % CHUNK) as usize);
            let n = (CHUNK as usize - within).min(dst.len() - done);
            match chunks.get(&idx) {
                Some(c) => dst[done..done + n].copy_from_slice(&c[within..within + n]),
                None => dst[done..done + n].fill(0),
            }
            done += n;
        }
        Ok(())
    }

    /// Copies `src` to `offset`, allocating chunks as needed.
    pub fn write_at(&self, offset: u64, src: &[u8]) -> Result<(), IoError> {
        self.check_range(offset, src.len() as u64)?;
        let mut chunks = self.chunks.write().unwrap_or_else(|e| e.into_inner());
        let mut done = 0usize;
        while done < src.len() {
            let pos = offset + done as u64;
            let (idx, within) = (pos / CHUNK, (pos % CHUNK) as usize);
            let n = (CHUNK as usize - within).min(src.len() - done);
            let c = chunks
                .entry(idx)
                .or_insert_with(|| vec![0u8; CHUNK as usize].into());
            c[within..within + n].copy_from_slice(&src[done..done + n]);
            done += n;
        }
        Ok(())
    }

    /// Zeroes a range, freeing the chunks it covers whole.
    pub fn zero_range(&self, offset: u64, len: u64) -> Result<(), IoError> {
        self.check_range(offset, len)?;
        let mut chunks = self.chunks.write().unwrap_or_else(|e| e.into_inner());
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let (idx, within) = (pos / CHUNK, pos % CHUNK);
            let n = (CHUNK - within).min(end - pos);
            if n == CHUNK {
                chunks.remove(&idx);
            } else if let Some(c) = chunks.get_mut(&idx) {
                c[within as usize..(within + n) as usize].fill(0);
            }
            pos += n;
        }
        Ok(())
    }
}

impl RamStore {
    pub fn block_status(&self, offset: u64, len: u64) -> Result<Extent, BackendError> {
        let size = self.size.load(Ordering::Acquire);
        if offset >= size {
            return Err(BackendError::Config(format!(
                "offset {offset} past end {size}"
            )));
        }
        let _ = len;
        let chunks = self.chunks.read().unwrap_or_else(|e| e.into_inner());
        let first = offset / CHUNK;
        let state_of = |i: u64| {
            if chunks.contains_key(&i) {
                ExtentState::Mapped
            } else {
                ExtentState::Deallocated
            }
        };
        let state = state_of(first);
        let last = size.div_ceil(CHUNK);
        let mut i = first + 1;
        // Bounded by the number of chunks of the store; stop early at a state change
        // or after a run long enough for any caller.
        while i < last && state_of(i) == state && (i - first) < (1 << 20) {
            i += 1;
        }
        let end = (i * CHUNK).min(size);
        Ok(Extent {
            offset,
            len: end - offset,
            state,
        })
    }

    pub fn resize(&self, new_size: u64) -> Result<(), BackendError> {
        let old = self.size.swap(new_size, Ordering::AcqRel);
        if new_size < old {
            let mut chunks = self.chunks.write().unwrap_or_else(|e| e.into_inner());
            chunks.retain(|&i, _| i * CHUNK < new_size);
            // The chunk straddling the new end must read zeroes if grown again.
            if let Some(c) = chunks.get_mut(&(new_size / CHUNK)) {
                c[(new_size % CHUNK) as usize..].fill(0);
            }
        }
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
        }
    }
    fn open_channel(&self, notify: &EventFd) -> Result<Box<dyn IoChannel>, BackendError> {
        let notify = notify.try_clone().map_err(|e| BackendError::Io {
            op: "eventfd clone",
            offset: 0,
            source: e,
        })?;
        Ok(Box::new(RamChannel {
            store: self.0.clone(),
            done: Vec::new(),
            notify,
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
    done: Vec<Completion>,
    notify: EventFd,
}

impl RamChannel {
    fn run(&self, op: IoOp, iovecs: &[libc::iovec]) -> Result<usize, IoError> {
        match op {
            IoOp::Read { offset } => {
                let mut pos = offset;
                for iov in iovecs {
                    // SAFETY: the caller of `submit` guarantees each iovec is valid
                    // for writes of its length and not aliased while in flight.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(iov.iov_base.cast::<u8>(), iov.iov_len)
                    };
                    self.store.read_at(pos, dst)?;
                    pos += iov.iov_len as u64;
                }
                Ok((pos - offset) as usize)
            }
            IoOp::Write { offset, .. } => {
                let total: u64 = iovecs.iter().map(|v| v.iov_len as u64).sum();
                self.store.check_range(offset, total)?;
                let mut pos = offset;
                for iov in iovecs {
                    // SAFETY: the caller of `submit` guarantees each iovec is valid
                    // for reads of its length while in flight.
                    let src = unsafe {
                        std::slice::from_raw_parts(iov.iov_base.cast::<u8>(), iov.iov_len)
                    };
                    self.store.write_at(pos, src)?;
                    pos += iov.iov_len as u64;
                }
                Ok((pos - offset) as usize)
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
        self.done.push(Completion { user_data, result });
        // The owner reaps after each batch anyway; the signal covers callers that
        // only wake on the eventfd.
        let _ = self.notify.write(1);
        Ok(())
    }

    fn cancel(&mut self, _user_data: u64) -> bool {
        false
    }

    fn reap(&mut self, out: &mut Vec<Completion>) {
        out.append(&mut self.done);
    }

    fn in_flight(&self) -> usize {
        self.done.len()
    }
}
