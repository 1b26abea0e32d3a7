//! A Ceph RBD image through librbd (feature `rbd`; links `librbd` and `librados`).
//!
//! [`RbdBackend::open`] connects one librados client (a ceph.conf, a client id, a
//! keyring), opens `pool[/namespace]/image[@snapshot]` and keeps it open for the
//! backend's life. Each [`IoChannel`](crate::IoChannel) hands librbd the
//! command's iovecs as they are (`rbd_aio_readv`/`rbd_aio_writev`); librbd calls
//! back on one of its own threads, and the callback puts the completion on the
//! channel's queue and signals the channel's eventfd, so the owner thread reaps it.
//!
//! Timeouts are set on the client so that a dead cluster fails, never hangs:
//! `client_mount_timeout` bounds the connect, `rados_mon_op_timeout` and
//! `rados_osd_op_timeout` every request (an I/O to a stopped OSD completes with
//! `ETIMEDOUT`). librbd's own cache is turned off: a write that completes is on
//! the OSDs, so FUA needs nothing more and a flush is cheap.
//!
//! Discard and write zeroes both go to `rbd_aio_write_zeroes`, which removes whole
//! objects and zeroes the rest: `rbd_aio_discard` skips pieces smaller than
//! librbd's discard granularity (64 KiB by default), which would keep their data
//! and break `discard_zeroes` (the test of that fails with `rbd_aio_discard`).
//!
//! Block status (GET LBA STATUS) comes from `rbd_diff_iterate2` over a few
//! objects from the offset ([`status`]): allocation is known per object, so only
//! objects removed whole (or the tail cut off an object by a discard that reached
//! its end) read as deallocated; a zeroed range inside an object stays mapped.

mod channel;
mod ffi;
mod handle;
mod status;

use std::ffi::CString;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

use crate::{Backend, BackendError, Capabilities, Extent, IoChannel};
use handle::Image;

/// Largest single I/O a channel takes: two default (4 MiB) objects, so one request
/// never spreads over many OSD operations and stays well inside the op timeout.
const MAX_TRANSFER: u32 = 8 << 20;

/// How long librados may take before it gives up. Whole seconds (librados options
/// are in seconds); zero means "no timeout", which lets an unreachable cluster
/// hang I/O forever.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RbdTimeouts {
    /// Connecting and authenticating with the monitors (`client_mount_timeout`).
    pub connect: Duration,
    /// One monitor request (`rados_mon_op_timeout`).
    pub mon_op: Duration,
    /// One OSD request, i.e. one I/O (`rados_osd_op_timeout`).
    pub osd_op: Duration,
}

impl Default for RbdTimeouts {
    fn default() -> Self {
        RbdTimeouts {
            connect: Duration::from_secs(30),
            mon_op: Duration::from_secs(30),
            osd_op: Duration::from_secs(30),
        }
    }
}

/// Which image to open, and how to reach its cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RbdOptions {
    pub pool: String,
    pub image: String,
    /// RADOS namespace inside the pool (none: the default namespace).
    pub namespace: Option<String>,
    /// Open this snapshot instead of the head; a snapshot is always read-only.
    pub snapshot: Option<String>,
    /// Open the head read-only.
    pub read_only: bool,
    /// ceph.conf to read (none: librados' default search, `$CEPH_CONF` first).
    pub ceph_conf: Option<PathBuf>,
    /// Client id without the `client.` prefix (none: `admin`).
    pub client_id: Option<String>,
    /// Keyring file (none: what ceph.conf says, or librados' default).
    pub keyring: Option<PathBuf>,
    pub timeouts: RbdTimeouts,
}

impl RbdOptions {
    /// `pool/[namespace/]image[@snapshot]`, for messages.
    pub fn image_spec(&self) -> String {
        let mut s = self.pool.clone();
        if let Some(ns) = &self.namespace {
            s.push('/');
            s.push_str(ns);
        }
        s.push('/');
        s.push_str(&self.image);
        if let Some(snap) = &self.snapshot {
            s.push('@');
            s.push_str(snap);
        }
        s
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only || self.snapshot.is_some()
    }
}

/// One open RBD image.
pub struct RbdBackend {
    image: Arc<Image>,
    /// The size the LUN above knows of: set by our own resize, so the resize
    /// watcher tells only of changes made by other clients.
    known_size: Arc<AtomicU64>,
    spec: String,
    read_only: bool,
    obj_size: u64,
    timeouts: RbdTimeouts,
}

impl std::fmt::Debug for RbdBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RbdBackend")
            .field("spec", &self.spec)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

fn cstring(what: &str, s: &str) -> Result<CString, BackendError> {
    CString::new(s).map_err(|_| BackendError::Config(format!("rbd {what} contains a NUL byte")))
}

impl RbdBackend {
    /// Connects to the cluster and opens the image. Takes at most about
    /// `timeouts.connect` plus a few monitor/OSD round trips when the cluster is
    /// unreachable; the error names the image and the step that failed.
    pub fn open(opts: &RbdOptions) -> Result<RbdBackend, BackendError> {
        if opts.pool.is_empty() || opts.image.is_empty() {
            return Err(BackendError::Config(
                "rbd needs a pool and an image name".into(),
            ));
        }
        let spec = opts.image_spec();
        let read_only = opts.is_read_only();
        let image = Image::open(opts, &spec, read_only)?;
        let obj_size = image.object_size().unwrap_or(4 << 20);
        Ok(RbdBackend {
            known_size: Arc::new(AtomicU64::new(image.live_size())),
            image: Arc::new(image),
            spec,
            read_only,
            obj_size,
            timeouts: opts.timeouts,
        })
    }

    /// Header-change notifications seen from other clients (resize, snapshots, ...).
    pub fn update_events(&self) -> u64 {
        self.image.update_events()
    }
}

pub(crate) fn rbd_err(spec: &str, what: &'static str, source: io::Error) -> BackendError {
    BackendError::Rbd {
        image: spec.to_string(),
        what,
        source,
    }
}

impl Backend for RbdBackend {
    /// The live size: librbd re-reads the header first if another client changed it.
    fn size(&self) -> u64 {
        self.image.live_size()
    }

    fn size_cached(&self) -> u64 {
        self.image.cached_size()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            discard: true,
            discard_zeroes: true,
            write_zeroes: true,
            flush: true,
            rotational: false,
            optimal_transfer: u32::try_from(self.obj_size)
                .unwrap_or(MAX_TRANSFER)
                .min(MAX_TRANSFER),
            max_transfer: MAX_TRANSFER,
            block_status: true,
            read_only: self.read_only,
            dma_alignment: 0,
        }
    }

    fn open_channel(&self, notify: &EventFd) -> Result<Box<dyn IoChannel>, BackendError> {
        let notify = notify.try_clone().map_err(|e| BackendError::Io {
            op: "eventfd clone",
            offset: 0,
            source: e,
        })?;
        Ok(Box::new(channel::RbdChannel::new(
            Arc::clone(&self.image),
            notify,
            self.read_only,
            self.drain_limit(),
        )))
    }

    /// From librbd's allocation map (`rbd_diff_iterate2`) over a window of a few
    /// objects from `offset`: bounded by one round of OSD requests whatever `len`.
    fn block_status(&self, offset: u64, _len: u64) -> Result<Extent, BackendError> {
        let mut size = self.image.cached_size();
        if offset >= size {
            // Another client may have grown the image.
            size = self.image.live_size();
        }
        let Some(end) = status::window(offset, size, self.obj_size) else {
            return Err(BackendError::Config(format!(
                "rbd image {}: block status at {offset}, past the end {size}",
                self.spec
            )));
        };
        let reported = self
            .image
            .data_extents(offset, end - offset)
            .map_err(|e| rbd_err(&self.spec, "read the allocation map", e))?;
        Ok(status::first_extent(offset, end, self.obj_size, &reported))
    }

    /// A thread waits on the image's header watch and, when another client
    /// changed the size, asks librbd for it (never from librbd's notification
    /// thread, which could wait on itself) and calls `notify`. It ends when the
    /// image closes.
    fn watch_resize(&self, notify: crate::ResizeNotifier) {
        let sizes = self.image.sizes();
        let image = Arc::downgrade(&self.image);
        let known = self.known_size.clone();
        let spawned = std::thread::Builder::new()
            .name("rbd-watch".into())
            .spawn(move || {
                while sizes.wait_header_change() {
                    let Some(img) = image.upgrade() else { break };
                    let now = img.live_size();
                    drop(img);
                    if known.swap(now, Ordering::AcqRel) != now {
                        notify();
                    }
                }
            });
        if let Err(e) = spawned {
            // Not fatal: the size is still asked afresh before a range is refused.
            tracing::warn!(image = %self.spec, "no resize watcher thread: {e}");
        }
    }

    fn resize(&self, new_size: u64) -> Result<(), BackendError> {
        if self.read_only {
            return Err(BackendError::Unsupported {
                what: "resize of a read-only image",
            });
        }
        self.image
            .resize(new_size)
            .map_err(|e| rbd_err(&self.spec, "resize", e))?;
        self.known_size.store(new_size, Ordering::Release);
        Ok(())
    }

    fn describe(&self) -> String {
        format!("rbd:{}", self.spec)
    }

    fn sync(&self) -> Result<(), BackendError> {
        if self.read_only {
            return Ok(());
        }
        self.image
            .flush()
            .map_err(|e| rbd_err(&self.spec, "flush", e))
    }
}

impl RbdBackend {
    /// How long a dropped channel waits for librbd to finish its operations: every
    /// one ends within the OSD op timeout (plus a map refresh from the monitors).
    fn drain_limit(&self) -> Duration {
        let t = self.timeouts;
        if t.osd_op.is_zero() {
            // No timeout: I/O to a dead OSD never ends; wait a while, then keep
            // the memory alive rather than let librbd write into freed buffers.
            Duration::from_secs(120)
        } else {
            t.osd_op
                .saturating_add(t.mon_op)
                .saturating_add(Duration::from_secs(10))
        }
    }
}
