//! Block device backend: a whole disk, partition, LVM volume or loop device, opened
//! with `O_DIRECT` by default. Size and block sizes come from ioctls, rotation and
//! limits from sysfs. Reads, writes and flushes go through io_uring (or the thread
//! pool), discard (`BLKDISCARD`) and write zeroes (`BLKZEROOUT`) are synchronous ioctls
//! and always run on the backend's pool threads, never on the submitting thread.

use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::op::{Target, TargetKind, BLKGETSIZE64};
use crate::threadpool::PoolCell;
use crate::uring::DEFAULT_DEPTH;
use crate::{Backend, BackendError, Capabilities, Extent, IoChannel, IoEngine};

/// How to open a block device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockDevOptions {
    pub read_only: bool,
    /// `O_DIRECT` (the default): the target's own cache would only duplicate the
    /// initiator's.
    pub direct: bool,
    pub engine: IoEngine,
    /// Pool threads: discards and zeroing, and all I/O with the thread engine.
    pub threads: usize,
    pub queue_depth: u32,
}

impl Default for BlockDevOptions {
    fn default() -> Self {
        BlockDevOptions {
            read_only: false,
            direct: true,
            engine: IoEngine::Uring,
            threads: 2,
            queue_depth: DEFAULT_DEPTH,
        }
    }
}

/// Sysfs `queue/` directory of the device `dev` (`st_rdev` of a device node, or
/// `st_dev` of a file on it); partitions use their disk's.
fn queue_attr(dev: u64, name: &str) -> Option<String> {
    let base = format!("/sys/dev/block/{}:{}", libc::major(dev), libc::minor(dev));
    for dir in ["queue", "../queue"] {
        if let Ok(s) = std::fs::read_to_string(format!("{base}/{dir}/{name}")) {
            return Some(s.trim().to_string());
        }
    }
    None
}

fn queue_u64(dev: u64, name: &str) -> Option<u64> {
    queue_attr(dev, name)?.parse().ok()
}

/// Whether the device `dev` says it is rotational; `None` if it cannot tell (network
/// and virtual file systems).
pub(crate) fn logical_block_of(dev: u64) -> Option<u32> {
    if libc::major(dev) == 0 {
        return None;
    }
    queue_u64(dev, "logical_block_size").and_then(|v| u32::try_from(v).ok())
}

pub(crate) fn rotational_of(dev: u64) -> Option<bool> {
    if libc::major(dev) == 0 {
        return None;
    }
    queue_u64(dev, "rotational").map(|r| r != 0)
}

/// A backend on one block device.
pub struct BlockDevBackend {
    target: Arc<Target>,
    path: PathBuf,
    opts: BlockDevOptions,
    pool: Arc<PoolCell>,
    logical_block: u32,
    physical_block: u32,
    caps: Capabilities,
}

fn ioctl_err(op: &'static str) -> BackendError {
    BackendError::Io {
        op,
        offset: 0,
        source: std::io::Error::last_os_error(),
    }
}

fn device_size(fd: i32) -> Result<u64, BackendError> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at `size`.
    if unsafe { libc::ioctl(fd, BLKGETSIZE64, &mut size as *mut u64) } < 0 {
        return Err(ioctl_err("BLKGETSIZE64"));
    }
    Ok(size)
}

fn block_size(fd: i32, req: libc::Ioctl, what: &'static str) -> Result<u32, BackendError> {
    let mut v: libc::c_int = 0;
    // SAFETY: BLKSSZGET and BLKPBSZGET write one int through the pointer, which points
    // at `v`.
    if unsafe { libc::ioctl(fd, req, &mut v as *mut libc::c_int) } < 0 {
        return Err(ioctl_err(what));
    }
    u32::try_from(v).map_err(|_| BackendError::Config(format!("{what} returned {v}")))
}

impl BlockDevBackend {
    pub fn open(path: &Path, opts: BlockDevOptions) -> Result<Self, BackendError> {
        let open_err = |source| BackendError::Open {
            path: path.display().to_string(),
            source,
        };
        let mut oo = OpenOptions::new();
        oo.read(true).write(!opts.read_only);
        if opts.direct {
            oo.custom_flags(libc::O_DIRECT);
        }
        let file = oo.open(path).map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        if !meta.file_type().is_block_device() {
            return Err(BackendError::Config(format!(
                "{} is not a block device (use the file backend for images)",
                path.display()
            )));
        }
        let fd = OwnedFd::from(file);
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        let size = device_size(raw)?;
        let logical_block = block_size(raw, libc::BLKSSZGET, "BLKSSZGET")?;
        let physical_block = block_size(raw, libc::BLKPBSZGET, "BLKPBSZGET")?;
        let dev = meta.rdev();
        let to_u32 = |v: Option<u64>| v.and_then(|v| u32::try_from(v).ok()).unwrap_or(0);
        let caps = Capabilities {
            discard: queue_u64(dev, "discard_max_bytes").is_some_and(|v| v > 0),
            // BLKDISCARD promises nothing about what discarded blocks read back as.
            discard_zeroes: false,
            write_zeroes: queue_u64(dev, "write_zeroes_max_bytes").is_some_and(|v| v > 0),
            flush: true,
            rotational: rotational_of(dev).unwrap_or(false),
            optimal_transfer: to_u32(queue_u64(dev, "optimal_io_size")),
            max_transfer: to_u32(
                queue_u64(dev, "max_sectors_kb").and_then(|k| k.checked_mul(1024)),
            ),
            block_status: false,
            read_only: opts.read_only,
            dma_alignment: logical_block.max(512),
        };
        let name: String = path
            .file_name()
            .map(|s| s.to_string_lossy().chars().take(8).collect())
            .unwrap_or_default();
        Ok(BlockDevBackend {
            target: Arc::new(Target {
                nowait_reads: false,
                fd,
                kind: TargetKind::BlockDev,
                read_only: opts.read_only,
                size: AtomicU64::new(size),
            }),
            path: path.to_path_buf(),
            pool: Arc::new(PoolCell::new(opts.threads, &name)),
            opts,
            logical_block,
            physical_block,
            caps,
        })
    }

    /// Logical block size in bytes (`BLKSSZGET`): the I/O alignment with `O_DIRECT`.
    pub fn logical_block_size(&self) -> u32 {
        self.logical_block
    }

    /// Physical block size in bytes (`BLKPBSZGET`).
    pub fn physical_block_size(&self) -> u32 {
        self.physical_block
    }
}

impl Backend for BlockDevBackend {
    fn size(&self) -> u64 {
        if let Ok(size) = device_size(self.target.raw_fd()) {
            self.target.size.store(size, Ordering::Release);
        }
        self.target.size()
    }

    fn capabilities(&self) -> Capabilities {
        self.caps
    }

    fn open_channel(&self, notify: &EventFd) -> Result<Box<dyn IoChannel>, BackendError> {
        // Discards and zeroing always run on the pool: start it now, not on the first
        // discard on some worker's hot path.
        self.pool.get()?;
        crate::file::open_channel(
            &self.target,
            &self.pool,
            self.opts.engine,
            self.opts.queue_depth,
            notify,
        )
    }

    fn block_status(&self, _offset: u64, _len: u64) -> Result<Extent, BackendError> {
        Err(BackendError::Unsupported {
            what: "block status of a block device",
        })
    }

    fn resize(&self, _new_size: u64) -> Result<(), BackendError> {
        Err(BackendError::Unsupported {
            what: "resize of a block device",
        })
    }

    fn describe(&self) -> String {
        format!("blockdev:{}", self.path.display())
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
mod tests {
    use super::*;
    use crate::file::tests::{run, Aligned};
    use crate::{IoErrorKind, IoOp};
    use std::process::Command;

    /// A loop device on a temporary file, detached on drop.
    struct LoopDev {
        dev: PathBuf,
        _dir: tempfile::TempDir,
        backing: PathBuf,
    }

    impl LoopDev {
        fn new(size: u64) -> Result<Self, String> {
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
                return Err("not root".into());
            }
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let backing = dir.path().join("loop.img");
            let f = std::fs::File::create(&backing).map_err(|e| e.to_string())?;
            f.set_len(size).map_err(|e| e.to_string())?;
            let out = Command::new("losetup")
                .args(["--find", "--show"])
                .arg(&backing)
                .output()
                .map_err(|e| format!("losetup: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "losetup failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            Ok(LoopDev {
                dev,
                _dir: dir,
                backing,
            })
        }
    }

    impl Drop for LoopDev {
        fn drop(&mut self) {
            let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
        }
    }

    #[test]
    fn not_a_block_device() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let r = BlockDevBackend::open(
            f.path(),
            BlockDevOptions {
                direct: false,
                ..Default::default()
            },
        );
        assert!(matches!(r, Err(BackendError::Config(_))));
        let r = BlockDevBackend::open(Path::new("/nonexistent/dev"), BlockDevOptions::default());
        assert!(matches!(r, Err(BackendError::Open { .. })));
    }

    #[test]
    fn rotational_of_virtual_fs_is_unknown() {
        assert_eq!(rotational_of(0), None);
    }

    #[test]
    fn loop_device_io() {
        let lo = match LoopDev::new(8 << 20) {
            Ok(lo) => lo,
            Err(why) => {
                println!("skipping loop_device_io: {why}");
                return;
            }
        };
        for engine in [IoEngine::Uring, IoEngine::Threads] {
            let b = BlockDevBackend::open(
                &lo.dev,
                BlockDevOptions {
                    engine,
                    ..Default::default()
                },
            )
            .unwrap();
            assert_eq!(b.size(), 8 << 20);
            assert_eq!(b.logical_block_size(), 512);
            assert!(b.physical_block_size() >= 512);
            let caps = b.capabilities();
            assert!(caps.flush && !caps.block_status && !caps.read_only);
            assert!(matches!(
                b.resize(1 << 30),
                Err(BackendError::Unsupported { .. })
            ));
            assert!(matches!(
                b.block_status(0, 512),
                Err(BackendError::Unsupported { .. })
            ));
            assert!(b.describe().starts_with("blockdev:/dev/loop"));

            let e = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            let mut ch = b.open_channel(&e).unwrap();
            let mut w = Aligned::new(3 << 20, 0xc3);
            let c = run(
                &mut *ch,
                &e,
                IoOp::Write {
                    offset: 1 << 20,
                    fua: true,
                },
                &[w.iov()],
                1,
            );
            assert_eq!(c.result, Ok(3 << 20), "{engine:?}");
            // Zero one MiB in the middle (pool thread, BLKZEROOUT), discard the next.
            let c = run(
                &mut *ch,
                &e,
                IoOp::WriteZeroes {
                    offset: 2 << 20,
                    len: 1 << 20,
                },
                &[],
                2,
            );
            assert_eq!(c.result, Ok(0));
            let c = run(
                &mut *ch,
                &e,
                IoOp::Discard {
                    offset: 3 << 20,
                    len: 1 << 20,
                },
                &[],
                3,
            );
            assert_eq!(c.result, Ok(0));
            let c = run(&mut *ch, &e, IoOp::Flush, &[], 4);
            assert_eq!(c.result, Ok(0));
            let mut r = Aligned::new(2 << 20, 0xff);
            let c = run(&mut *ch, &e, IoOp::Read { offset: 1 << 20 }, &[r.iov()], 5);
            assert_eq!(c.result, Ok(2 << 20));
            assert!(r.as_slice()[..1 << 20].iter().all(|&x| x == 0xc3));
            assert!(r.as_slice()[1 << 20..].iter().all(|&x| x == 0));
            // Past the end.
            let c = run(&mut *ch, &e, IoOp::Read { offset: 7 << 20 }, &[r.iov()], 6);
            assert_eq!(c.result.unwrap_err().kind, IoErrorKind::OutOfRange);
            // Misaligned discard: the device refuses, the error comes back as a value.
            let c = run(
                &mut *ch,
                &e,
                IoOp::Discard {
                    offset: 100,
                    len: 1000,
                },
                &[],
                7,
            );
            assert!(c.result.is_err());
            drop(ch);
            // The backing file saw the data.
            let data = std::fs::read(&lo.backing).unwrap();
            assert!(data[1 << 20..2 << 20].iter().all(|&x| x == 0xc3));
            assert!(data[2 << 20..3 << 20].iter().all(|&x| x == 0));
        }
        // Read-only open refuses writes without touching the device.
        let b = BlockDevBackend::open(
            &lo.dev,
            BlockDevOptions {
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap();
        let e = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut ch = b.open_channel(&e).unwrap();
        let c = run(
            &mut *ch,
            &e,
            IoOp::WriteZeroes {
                offset: 0,
                len: 4096,
            },
            &[],
            1,
        );
        assert_eq!(c.result.unwrap_err().errno, libc::EROFS);
    }
}
