//! Regular-file backend: an image file, buffered or `O_DIRECT`, read-write or
//! read-only. Data moves with io_uring by default (one ring per channel, see
//! `uring.rs`) or with a small thread pool (`threadpool.rs`) when io_uring
//! is unavailable or not wanted. Discard punches holes, write zeroes zeroes ranges with
//! `fallocate`, FUA writes use `RWF_DSYNC` and flush is `fdatasync`. Holes are reported
//! with one `SEEK_DATA`/`SEEK_HOLE` pair.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::op::{Target, TargetKind};
use crate::threadpool::{PoolCell, ThreadChannel};
use crate::uring::{UringChannel, DEFAULT_DEPTH};
use crate::{Backend, BackendError, Capabilities, Extent, ExtentState, IoChannel, IoEngine};

/// How to open an image file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileOptions {
    /// Open with `O_DIRECT` (bypass the page cache; buffers and offsets must then be
    /// aligned to the file system's block size).
    pub direct: bool,
    /// Open read-only; writes, discards and resizes fail.
    pub read_only: bool,
    /// io_uring (falls back to threads if the kernel refuses a ring) or threads.
    pub engine: IoEngine,
    /// Threads of the pool (thread engine, and io_uring's fallbacks).
    pub threads: usize,
    /// Ring size and most operations in flight per io_uring channel.
    pub queue_depth: u32,
}

impl Default for FileOptions {
    fn default() -> Self {
        FileOptions {
            direct: false,
            read_only: false,
            engine: IoEngine::Uring,
            threads: 4,
            queue_depth: DEFAULT_DEPTH,
        }
    }
}

/// A backend on one regular file.
pub struct FileBackend {
    target: Arc<Target>,
    path: PathBuf,
    opts: FileOptions,
    pool: Arc<PoolCell>,
    rotational: bool,
    dma_alignment: u32,
}

fn open_err(path: &Path, source: std::io::Error) -> BackendError {
    BackendError::Open {
        path: path.display().to_string(),
        source,
    }
}

impl FileBackend {
    /// Opens an existing regular file.
    pub fn open(path: &Path, opts: FileOptions) -> Result<Self, BackendError> {
        Self::open_inner(path, opts, None)
    }

    /// Opens `path`, creating it with `size` bytes (sparse) if it does not exist. An
    /// existing file keeps its size.
    pub fn create(path: &Path, size: u64, opts: FileOptions) -> Result<Self, BackendError> {
        if opts.read_only {
            return Err(BackendError::Config(format!(
                "{}: cannot create a read-only file backend",
                path.display()
            )));
        }
        Self::open_inner(path, opts, Some(size))
    }

    fn open_inner(
        path: &Path,
        opts: FileOptions,
        create: Option<u64>,
    ) -> Result<Self, BackendError> {
        let mut oo = OpenOptions::new();
        oo.read(true).write(!opts.read_only);
        if create.is_some() {
            oo.create(true);
        }
        if opts.direct {
            oo.custom_flags(libc::O_DIRECT);
        }
        let file = oo.open(path).map_err(|e| open_err(path, e))?;
        let meta = file.metadata().map_err(|e| open_err(path, e))?;
        if !meta.file_type().is_file() {
            return Err(BackendError::Config(format!(
                "{} is not a regular file (use the block device backend for devices)",
                path.display()
            )));
        }
        let mut size = meta.len();
        if let Some(want) = create {
            // Newly created (empty) files get the requested size; others stay as they are.
            if size == 0 && want > 0 {
                file.set_len(want).map_err(|e| open_err(path, e))?;
                size = want;
            }
        }
        let rotational = crate::blockdev::rotational_of(meta.dev()).unwrap_or(false);
        // O_DIRECT wants buffers and lengths aligned to the logical block size of the
        // device under the file system; 4096 where it cannot be read (safe for all).
        let dma_alignment = if opts.direct {
            crate::blockdev::logical_block_of(meta.dev()).map_or(4096, |b| b.max(512))
        } else {
            1
        };
        let target = Arc::new(Target {
            nowait_reads: !opts.direct,
            fd: OwnedFd::from(file),
            kind: TargetKind::File,
            read_only: opts.read_only,
            size: AtomicU64::new(size),
        });
        Ok(FileBackend {
            target,
            path: path.to_path_buf(),
            pool: Arc::new(PoolCell::new(opts.threads, &short_name(path))),
            opts,
            rotational,
            dma_alignment,
        })
    }

    /// The options the file was opened with.
    pub fn options(&self) -> &FileOptions {
        &self.opts
    }
}

/// A thread-name prefix from the file name (Linux limits thread names to 15 bytes).
fn short_name(path: &Path) -> String {
    let stem = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    stem.chars().take(8).collect()
}

/// Opens a channel of `engine` on `target`: io_uring if asked and possible, else the
/// thread pool.
pub(crate) fn open_channel(
    target: &Arc<Target>,
    pool: &Arc<PoolCell>,
    engine: IoEngine,
    depth: u32,
    notify: &EventFd,
) -> Result<Box<dyn IoChannel>, BackendError> {
    if engine == IoEngine::Uring {
        if let Ok(ch) = UringChannel::new(target.clone(), pool.clone(), notify, depth) {
            return Ok(Box::new(ch));
        }
    }
    Ok(Box::new(ThreadChannel::new(
        target.clone(),
        pool.get()?,
        notify,
    )?))
}

/// One `SEEK_DATA`/`SEEK_HOLE` pair: the extent starting at `offset` of a store of
/// `size` bytes. Never loops: a file system that answers oddly gets "mapped".
pub(crate) fn seek_extent(fd: i32, offset: u64, size: u64) -> Result<Extent, BackendError> {
    if offset >= size {
        return Err(BackendError::Config(format!(
            "block status at {offset}, past the end {size}"
        )));
    }
    let mapped = |end: u64| Extent {
        offset,
        len: end.clamp(offset + 1, size) - offset,
        state: ExtentState::Mapped,
    };
    let Ok(off) = i64::try_from(offset) else {
        return Ok(mapped(size));
    };
    // SAFETY: lseek takes no pointers; the fd is open for the backend's lifetime.
    let data = unsafe { libc::lseek(fd, off, libc::SEEK_DATA) };
    if data < 0 {
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        return Ok(if errno == libc::ENXIO {
            // No data at or after `offset`: a hole up to the end.
            Extent {
                offset,
                len: size - offset,
                state: ExtentState::Deallocated,
            }
        } else {
            // SEEK_DATA not supported: everything is data.
            mapped(size)
        });
    }
    let data = u64::try_from(data).unwrap_or(offset);
    if data > offset {
        let end = data.min(size);
        return Ok(Extent {
            offset,
            len: end - offset,
            state: ExtentState::Deallocated,
        });
    }
    // SAFETY: as above.
    let hole = unsafe { libc::lseek(fd, off, libc::SEEK_HOLE) };
    let hole = u64::try_from(hole).unwrap_or(size);
    // A hole at or before `offset` right after SEEK_DATA said data is there would be a
    // file changing under us: report data to the end rather than ask again.
    Ok(mapped(if hole > offset { hole } else { size }))
}

impl Backend for FileBackend {
    fn size(&self) -> u64 {
        // SAFETY: fstat writes into the zeroed stat buffer we pass.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is a valid, writable stat buffer; the fd is open.
        if unsafe { libc::fstat(self.target.raw_fd(), &mut st) } == 0 {
            if let Ok(len) = u64::try_from(st.st_size) {
                self.target.size.store(len, Ordering::Release);
            }
        }
        self.target.size()
    }

    fn size_cached(&self) -> u64 {
        self.target.size()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            discard: true,
            discard_zeroes: true,
            write_zeroes: true,
            flush: true,
            rotational: self.rotational,
            optimal_transfer: 0,
            max_transfer: 0,
            block_status: true,
            read_only: self.opts.read_only,
            dma_alignment: self.dma_alignment,
        }
    }

    fn open_channel(&self, notify: &EventFd) -> Result<Box<dyn IoChannel>, BackendError> {
        open_channel(
            &self.target,
            &self.pool,
            self.opts.engine,
            self.opts.queue_depth,
            notify,
        )
    }

    fn block_status(&self, offset: u64, _len: u64) -> Result<Extent, BackendError> {
        seek_extent(self.target.fd.as_raw_fd(), offset, self.target.size())
    }

    fn resize(&self, new_size: u64) -> Result<(), BackendError> {
        if self.opts.read_only {
            return Err(BackendError::Unsupported {
                what: "resize of a read-only file",
            });
        }
        let Ok(len) = i64::try_from(new_size) else {
            return Err(BackendError::Config(format!("size {new_size} too large")));
        };
        // SAFETY: ftruncate takes no pointers; the fd is open for writing.
        if unsafe { libc::ftruncate(self.target.raw_fd(), len) } < 0 {
            return Err(BackendError::Io {
                op: "ftruncate",
                offset: new_size,
                source: std::io::Error::last_os_error(),
            });
        }
        self.target.size.store(new_size, Ordering::Release);
        Ok(())
    }

    fn describe(&self) -> String {
        format!("file:{}", self.path.display())
    }

    fn sync(&self) -> Result<(), BackendError> {
        // SAFETY: fdatasync takes no pointers; the fd is open for the backend's lifetime.
        if unsafe { libc::fdatasync(self.target.raw_fd()) } != 0 {
            return Err(BackendError::Io {
                op: "fdatasync",
                offset: 0,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{Completion, IoErrorKind, IoOp};
    use std::os::unix::fs::FileExt;
    use std::time::{Duration, Instant};

    /// A page-aligned buffer, usable with O_DIRECT.
    pub struct Aligned {
        ptr: *mut u8,
        len: usize,
    }

    impl Aligned {
        pub fn new(len: usize, fill: u8) -> Self {
            let layout = std::alloc::Layout::from_size_align(len, 4096).unwrap();
            // SAFETY: non-zero size layout.
            let ptr = unsafe { std::alloc::alloc(layout) };
            assert!(!ptr.is_null());
            // SAFETY: freshly allocated `len` bytes.
            unsafe { std::ptr::write_bytes(ptr, fill, len) };
            Aligned { ptr, len }
        }
        pub fn as_slice(&self) -> &[u8] {
            // SAFETY: `len` initialized bytes owned by self.
            unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
        }
        pub fn iov(&mut self) -> libc::iovec {
            libc::iovec {
                iov_base: self.ptr.cast(),
                iov_len: self.len,
            }
        }
    }

    impl Drop for Aligned {
        fn drop(&mut self) {
            let layout = std::alloc::Layout::from_size_align(self.len, 4096).unwrap();
            // SAFETY: allocated in `new` with this layout.
            unsafe { std::alloc::dealloc(self.ptr, layout) };
        }
    }

    /// Waits (bounded) on the eventfd until `user_data` completes.
    pub fn wait_for(ch: &mut dyn IoChannel, efd: &EventFd, user_data: u64) -> Completion {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut out = Vec::new();
        loop {
            ch.reap(&mut out);
            if let Some(i) = out.iter().position(|c| c.user_data == user_data) {
                return out.swap_remove(i);
            }
            assert!(Instant::now() < deadline, "op {user_data} did not complete");
            let mut pfd = libc::pollfd {
                fd: efd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, 100) };
            let _ = efd.read();
        }
    }

    /// Submits and waits for one op.
    pub fn run(
        ch: &mut dyn IoChannel,
        efd: &EventFd,
        op: IoOp,
        iov: &[libc::iovec],
        ud: u64,
    ) -> Completion {
        // SAFETY: the tests' buffers outlive the wait below.
        unsafe { ch.submit(op, iov, ud) }.unwrap();
        wait_for(ch, efd, ud)
    }

    fn engines() -> [IoEngine; 2] {
        [IoEngine::Uring, IoEngine::Threads]
    }

    fn efd() -> EventFd {
        EventFd::new(libc::EFD_NONBLOCK).unwrap()
    }

    fn backend(size: u64, opts: FileOptions) -> (tempfile::TempDir, PathBuf, FileBackend) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let b = FileBackend::create(&path, size, opts).unwrap();
        (dir, path, b)
    }

    fn opts(engine: IoEngine, direct: bool) -> FileOptions {
        FileOptions {
            engine,
            direct,
            threads: 2,
            ..FileOptions::default()
        }
    }

    #[test]
    fn write_read_roundtrip_all_engines_and_modes() {
        for engine in engines() {
            for direct in [false, true] {
                let (_d, path, b) = backend(1 << 20, opts(engine, direct));
                let e = efd();
                let mut ch = b.open_channel(&e).unwrap();
                // Two iovecs, written with FUA at 8 KiB.
                let mut w1 = Aligned::new(4096, 0x11);
                let mut w2 = Aligned::new(8192, 0x22);
                let c = run(
                    &mut *ch,
                    &e,
                    IoOp::Write {
                        offset: 8192,
                        fua: true,
                    },
                    &[w1.iov(), w2.iov()],
                    1,
                );
                assert_eq!(c.result, Ok(12288), "{engine:?} direct={direct}");
                let c = run(&mut *ch, &e, IoOp::Flush, &[], 2);
                assert_eq!(c.result, Ok(0));
                let mut r = Aligned::new(16384, 0xee);
                let c = run(&mut *ch, &e, IoOp::Read { offset: 4096 }, &[r.iov()], 3);
                assert_eq!(c.result, Ok(16384));
                let s = r.as_slice();
                assert!(s[..4096].iter().all(|&x| x == 0));
                assert!(s[4096..8192].iter().all(|&x| x == 0x11));
                assert!(s[8192..16384].iter().all(|&x| x == 0x22));
                assert_eq!(ch.in_flight(), 0);
                // The bytes are really in the file.
                let f = std::fs::File::open(&path).unwrap();
                let mut check = [0u8; 4];
                f.read_exact_at(&mut check, 12288).unwrap();
                assert_eq!(check, [0x22; 4]);
            }
        }
    }

    #[test]
    fn falls_back_to_threads_when_io_uring_is_unavailable() {
        let (_d, _p, b) = backend(1 << 20, opts(IoEngine::Uring, false));
        let e = efd();
        // A working ring needs no pool for reads and writes.
        let mut ch = b.open_channel(&e).unwrap();
        let mut w = vec![5u8; 4096];
        let iov = [libc::iovec {
            iov_base: w.as_mut_ptr().cast(),
            iov_len: 4096,
        }];
        let c = run(
            &mut *ch,
            &e,
            IoOp::Write {
                offset: 0,
                fua: false,
            },
            &iov,
            1,
        );
        assert_eq!(c.result, Ok(4096));
        let uring_here = !b.pool.started();
        drop(ch);
        crate::uring::tests::NO_URING.with(|f| f.set(true));
        let mut ch = b.open_channel(&e).unwrap();
        let mut r = vec![0u8; 4096];
        let iov = [libc::iovec {
            iov_base: r.as_mut_ptr().cast(),
            iov_len: 4096,
        }];
        let c = run(&mut *ch, &e, IoOp::Read { offset: 0 }, &iov, 2);
        assert_eq!(c.result, Ok(4096));
        assert_eq!(r, w);
        assert!(b.pool.started(), "the fallback channel runs on the pool");
        if !uring_here {
            println!("note: io_uring unavailable here; both channels used threads");
        }
    }

    #[test]
    fn more_iovecs_than_iov_max_are_split() {
        for engine in engines() {
            let (_d, path, b) = backend(1 << 20, opts(engine, false));
            let e = efd();
            let mut ch = b.open_channel(&e).unwrap();
            // 1500 iovecs of 100 bytes each, every one with its own byte value.
            let mut bufs: Vec<Vec<u8>> = (0..1500).map(|i| vec![(i % 251) as u8; 100]).collect();
            let iov: Vec<libc::iovec> = bufs
                .iter_mut()
                .map(|b| libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: b.len(),
                })
                .collect();
            let c = run(
                &mut *ch,
                &e,
                IoOp::Write {
                    offset: 7,
                    fua: false,
                },
                &iov,
                1,
            );
            assert_eq!(c.result, Ok(150_000), "{engine:?}");
            let data = std::fs::read(&path).unwrap();
            for i in 0..1500 {
                let at = 7 + i * 100;
                assert!(
                    data[at..at + 100].iter().all(|&x| x == (i % 251) as u8),
                    "iovec {i}"
                );
            }
            for b in &mut bufs {
                b.fill(0);
            }
            let c = run(&mut *ch, &e, IoOp::Read { offset: 7 }, &iov, 2);
            assert_eq!(c.result, Ok(150_000));
            assert!(bufs
                .iter()
                .enumerate()
                .all(|(i, b)| b.iter().all(|&x| x == (i % 251) as u8)));
        }
    }

    #[test]
    fn out_of_range_and_read_only() {
        for engine in engines() {
            let (_d, path, b) = backend(65536, opts(engine, false));
            let e = efd();
            let mut ch = b.open_channel(&e).unwrap();
            let mut buf = vec![0u8; 4096];
            let iov = [libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: 4096,
            }];
            let c = run(
                &mut *ch,
                &e,
                IoOp::Write {
                    offset: 65536 - 2048,
                    fua: false,
                },
                &iov,
                1,
            );
            assert_eq!(c.result.unwrap_err().kind, IoErrorKind::OutOfRange);
            // The file did not grow.
            assert_eq!(std::fs::metadata(&path).unwrap().len(), 65536);
            drop(ch);
            let ro = FileBackend::open(
                &path,
                FileOptions {
                    read_only: true,
                    ..opts(engine, false)
                },
            )
            .unwrap();
            assert!(ro.capabilities().read_only);
            let mut ch = ro.open_channel(&e).unwrap();
            let c = run(
                &mut *ch,
                &e,
                IoOp::Write {
                    offset: 0,
                    fua: false,
                },
                &iov,
                2,
            );
            assert_eq!(c.result.unwrap_err().errno, libc::EROFS);
            let c = run(&mut *ch, &e, IoOp::Read { offset: 0 }, &iov, 3);
            assert_eq!(c.result, Ok(4096));
            assert!(ro.resize(1 << 20).is_err());
        }
    }

    #[test]
    fn discard_punches_holes_and_write_zeroes_zeroes() {
        for engine in engines() {
            let (_d, path, b) = backend(4 << 20, opts(engine, false));
            let e = efd();
            let mut ch = b.open_channel(&e).unwrap();
            let mut w = Aligned::new(4 << 20, 0x5a);
            let c = run(
                &mut *ch,
                &e,
                IoOp::Write {
                    offset: 0,
                    fua: false,
                },
                &[w.iov()],
                1,
            );
            assert_eq!(c.result, Ok(4 << 20));
            let c = run(
                &mut *ch,
                &e,
                IoOp::Discard {
                    offset: 1 << 20,
                    len: 1 << 20,
                },
                &[],
                2,
            );
            assert_eq!(c.result, Ok(0));
            let c = run(
                &mut *ch,
                &e,
                IoOp::WriteZeroes {
                    offset: 3 << 20,
                    len: 4096,
                },
                &[],
                3,
            );
            assert_eq!(c.result, Ok(0));
            let c = run(&mut *ch, &e, IoOp::Flush, &[], 4);
            assert_eq!(c.result, Ok(0));
            let data = std::fs::read(&path).unwrap();
            assert!(data[..1 << 20].iter().all(|&x| x == 0x5a));
            assert!(data[1 << 20..2 << 20].iter().all(|&x| x == 0));
            assert!(data[2 << 20..3 << 20].iter().all(|&x| x == 0x5a));
            assert!(data[3 << 20..(3 << 20) + 4096].iter().all(|&x| x == 0));
            assert!(data[(3 << 20) + 4096..].iter().all(|&x| x == 0x5a));
            // The discarded MiB is a hole now (ext4/xfs/btrfs/tmpfs all punch holes).
            let ext = b.block_status(1 << 20, 4096).unwrap();
            assert_eq!(
                ext,
                Extent {
                    offset: 1 << 20,
                    len: 1 << 20,
                    state: ExtentState::Deallocated
                }
            );
            let ext = b.block_status(0, 4096).unwrap();
            assert_eq!(
                ext,
                Extent {
                    offset: 0,
                    len: 1 << 20,
                    state: ExtentState::Mapped
                }
            );
        }
    }

    #[test]
    fn block_status_of_sparse_file_is_bounded() {
        let (_d, _p, b) = backend(1 << 40, opts(IoEngine::Threads, false));
        let start = Instant::now();
        let ext = b.block_status(0, 512).unwrap();
        assert_eq!(
            ext,
            Extent {
                offset: 0,
                len: 1 << 40,
                state: ExtentState::Deallocated
            }
        );
        let ext = b.block_status((1 << 40) - 512, 512).unwrap();
        assert_eq!(ext.len, 512);
        assert!(b.block_status(1 << 40, 512).is_err());
        assert!(start.elapsed() < Duration::from_secs(2));
        // Data in the middle.
        let e = efd();
        let mut ch = b.open_channel(&e).unwrap();
        let mut w = vec![1u8; 4096];
        let iov = [libc::iovec {
            iov_base: w.as_mut_ptr().cast(),
            iov_len: 4096,
        }];
        let c = run(
            &mut *ch,
            &e,
            IoOp::Write {
                offset: 1 << 30,
                fua: false,
            },
            &iov,
            1,
        );
        assert_eq!(c.result, Ok(4096));
        let ext = b.block_status(0, 512).unwrap();
        assert_eq!(
            ext,
            Extent {
                offset: 0,
                len: 1 << 30,
                state: ExtentState::Deallocated
            }
        );
        let ext = b.block_status(1 << 30, 512).unwrap();
        assert_eq!(ext.state, ExtentState::Mapped);
        assert!(ext.len >= 4096 && ext.offset == 1 << 30);
    }

    #[test]
    fn resize_grows_and_shrinks() {
        let (_d, path, b) = backend(8192, opts(IoEngine::Uring, false));
        b.resize(1 << 20).unwrap();
        assert_eq!(b.size(), 1 << 20);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20);
        let e = efd();
        let mut ch = b.open_channel(&e).unwrap();
        let mut r = vec![0xffu8; 4096];
        let iov = [libc::iovec {
            iov_base: r.as_mut_ptr().cast(),
            iov_len: 4096,
        }];
        let c = run(
            &mut *ch,
            &e,
            IoOp::Read {
                offset: (1 << 20) - 4096,
            },
            &iov,
            1,
        );
        assert_eq!(c.result, Ok(4096));
        assert!(r.iter().all(|&x| x == 0));
        b.resize(4096).unwrap();
        assert_eq!(b.size(), 4096);
        let c = run(&mut *ch, &e, IoOp::Read { offset: 4096 }, &iov, 2);
        assert_eq!(c.result.unwrap_err().kind, IoErrorKind::OutOfRange);
        // Size follows the file when it changes behind our back.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(12288)
            .unwrap();
        assert_eq!(b.size(), 12288);
    }

    #[test]
    fn many_in_flight_and_cancel_complete_exactly_once() {
        for engine in engines() {
            let (_d, _p, b) = backend(1 << 20, opts(engine, false));
            let e = efd();
            let mut ch = b.open_channel(&e).unwrap();
            let mut bufs: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 4096]).collect();
            for (i, buf) in bufs.iter_mut().enumerate() {
                let iov = [libc::iovec {
                    iov_base: buf.as_mut_ptr().cast(),
                    iov_len: 4096,
                }];
                let off = i as u64 * 4096;
                // SAFETY: `bufs` outlives the reaping below.
                unsafe {
                    ch.submit(
                        IoOp::Write {
                            offset: off,
                            fua: false,
                        },
                        &iov,
                        i as u64,
                    )
                }
                .unwrap();
            }
            // Cancel a few; each still completes exactly once (canceled or done).
            for ud in [10u64, 40, 63] {
                let _ = ch.cancel(ud);
            }
            let mut seen = vec![0u32; 64];
            let deadline = Instant::now() + Duration::from_secs(10);
            while ch.in_flight() > 0 {
                assert!(Instant::now() < deadline);
                let mut out = Vec::new();
                ch.reap(&mut out);
                for c in out {
                    seen[c.user_data as usize] += 1;
                    match c.result {
                        Ok(n) => assert_eq!(n, 4096),
                        Err(err) => assert_eq!(err.kind, IoErrorKind::Canceled),
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            assert!(seen.iter().all(|&n| n == 1), "{engine:?}: {seen:?}");
        }
    }

    #[test]
    fn drop_with_ops_in_flight_waits() {
        for engine in engines() {
            let (_d, _p, b) = backend(8 << 20, opts(engine, false));
            let e = efd();
            let mut ch = b.open_channel(&e).unwrap();
            let mut bufs: Vec<Vec<u8>> = (0..8).map(|_| vec![7u8; 1 << 20]).collect();
            for (i, buf) in (0u64..).zip(bufs.iter_mut()) {
                let iov = [libc::iovec {
                    iov_base: buf.as_mut_ptr().cast(),
                    iov_len: 1 << 20,
                }];
                // SAFETY: `buf` outlives the channel, dropped below.
                unsafe { ch.submit(IoOp::Read { offset: i << 20 }, &iov, i) }.unwrap();
            }
            drop(ch);
            drop(bufs);
        }
    }
}
