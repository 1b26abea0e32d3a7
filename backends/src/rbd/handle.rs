//! The librados client, I/O context and librbd image of one backend, owned together
//! and torn down in reverse order (unwatch, close, destroy the context, shut the
//! client down) when the last channel and the backend have let go of them.

use std::ffi::{c_int, c_void};
use std::io;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use super::ffi;
use super::status::{Reported, MAX_EXTENTS};
use super::{cstring, rbd_err, RbdOptions};
use crate::BackendError;

/// The image size as last learned, shared with librbd's update-watch callback.
#[derive(Debug, Default)]
pub(crate) struct SizeState {
    size: AtomicU64,
    /// Another client changed the image header (maybe its size): ask librbd again.
    stale: AtomicBool,
    /// Header changes seen, for tests and logs.
    events: AtomicU64,
    /// Wakes the resize watcher thread ([`Image::wait_header_change`]).
    wake: Mutex<Wake>,
    woken: Condvar,
}

#[derive(Debug, Default)]
struct Wake {
    /// A header change the watcher has not looked at yet.
    pending: bool,
    /// The image is closed: the watcher ends.
    closed: bool,
}

impl SizeState {
    fn signal(&self, closed: bool) {
        let mut w = self.wake.lock().unwrap_or_else(PoisonError::into_inner);
        w.pending = true;
        w.closed |= closed;
        self.woken.notify_all();
    }

    /// Waits for a header change; false once the image is closed.
    pub fn wait_header_change(&self) -> bool {
        let mut w = self.wake.lock().unwrap_or_else(PoisonError::into_inner);
        while !w.pending && !w.closed {
            w = self.woken.wait(w).unwrap_or_else(PoisonError::into_inner);
        }
        w.pending = false;
        !w.closed
    }
}

pub(crate) struct Image {
    cluster: ffi::RadosT,
    ioctx: ffi::RadosIoctxT,
    pub(super) image: ffi::RbdImageT,
    /// The update watch and the state its callback points at (kept alive here until
    /// `rbd_update_unwatch` has returned).
    watch: Option<u64>,
    sizes: Arc<SizeState>,
}

// SAFETY: librados clients, I/O contexts and librbd image handles may be used from
// any thread and concurrently (librbd serialises internally); the raw pointers are
// only freed in `drop`, which runs once no `Arc<Image>` is left.
unsafe impl Send for Image {}
// SAFETY: as above: every call made through `&Image` is thread-safe in librbd.
unsafe impl Sync for Image {}

fn errno(r: i32) -> io::Error {
    io::Error::from_raw_os_error(r.saturating_neg())
}

fn secs(d: Duration) -> String {
    // librados takes whole seconds; round up so 1.5 s never becomes "no timeout".
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.to_string()
}

/// The watch callback: another client changed the header. Only marks the size
/// stale; the backend asks librbd from its own thread.
unsafe extern "C" fn on_update(arg: *mut c_void) {
    // SAFETY: `arg` is `Arc::as_ptr` of the `SizeState` that `Image` keeps alive
    // until `rbd_update_unwatch` returned, after which librbd calls no more.
    let w = unsafe { &*arg.cast::<SizeState>() };
    w.stale.store(true, Ordering::Release);
    w.events.fetch_add(1, Ordering::AcqRel);
    // Only a wake-up: the watcher thread asks librbd for the size.
    w.signal(false);
}

/// `rbd_diff_iterate2`'s callback: records one extent; stops the iteration
/// (with `ECANCELED`) once `MAX_EXTENTS` are recorded.
unsafe extern "C" fn on_extent(off: u64, len: usize, exists: c_int, arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `Mutex<Reported>` `data_extents` passed, alive for the
    // whole call that calls back.
    let acc = unsafe { &*arg.cast::<Mutex<Reported>>() };
    let mut rep = acc.lock().unwrap_or_else(PoisonError::into_inner);
    if rep.extents.len() >= MAX_EXTENTS {
        rep.overflow = true;
        return -libc::ECANCELED;
    }
    let len = u64::try_from(len).unwrap_or(u64::MAX);
    rep.extents.push((off, len, exists != 0));
    0
}

impl Image {
    pub fn open(opts: &RbdOptions, spec: &str, read_only: bool) -> Result<Image, BackendError> {
        let id = cstring("client id", opts.client_id.as_deref().unwrap_or("admin"))?;
        let pool = cstring("pool", &opts.pool)?;
        let name = cstring("image", &opts.image)?;
        let ns = opts
            .namespace
            .as_deref()
            .map(|n| cstring("namespace", n))
            .transpose()?;
        let snap = opts
            .snapshot
            .as_deref()
            .map(|n| cstring("snapshot", n))
            .transpose()?;
        let path_str = |p: &std::path::Path, what: &str| {
            p.to_str()
                .ok_or_else(|| BackendError::Config(format!("rbd {what} path is not UTF-8")))
                .and_then(|s| cstring(what, s))
        };
        let conf = opts
            .ceph_conf
            .as_deref()
            .map(|p| path_str(p, "ceph.conf"))
            .transpose()?;
        let keyring = opts
            .keyring
            .as_deref()
            .map(|p| {
                p.to_str()
                    .map(str::to_owned)
                    .ok_or_else(|| BackendError::Config("rbd keyring path is not UTF-8".into()))
            })
            .transpose()?;

        let mut img = Image {
            cluster: ptr::null_mut(),
            ioctx: ptr::null_mut(),
            image: ptr::null_mut(),
            watch: None,
            sizes: Arc::default(),
        };
        // SAFETY: `id` is a valid C string; `img.cluster` receives the handle, which
        // `Drop` shuts down.
        let r = unsafe { ffi::rados_create(&mut img.cluster, id.as_ptr()) };
        if r < 0 {
            img.cluster = ptr::null_mut();
            return Err(rbd_err(spec, "create the librados client", errno(r)));
        }
        let conf_ptr = conf.as_ref().map_or(ptr::null(), |c| c.as_ptr());
        // SAFETY: the client is live; the path is a valid C string or NULL (default
        // search path).
        let r = unsafe { ffi::rados_conf_read_file(img.cluster, conf_ptr) };
        if r < 0 && conf.is_some() {
            return Err(rbd_err(spec, "read ceph.conf", errno(r)));
        }
        let mut settings: Vec<(&str, String)> = vec![
            ("client_mount_timeout", secs(opts.timeouts.connect)),
            ("rados_mon_op_timeout", secs(opts.timeouts.mon_op)),
            ("rados_osd_op_timeout", secs(opts.timeouts.osd_op)),
            // Without the cache a completed write is on the OSDs: FUA and flush
            // need nothing more, and nothing waits in client memory.
            ("rbd_cache", "false".into()),
        ];
        if let Some(k) = keyring {
            settings.push(("keyring", k));
        }
        for (k, v) in settings {
            let (k, v) = (cstring("option", k)?, cstring("option", &v)?);
            // SAFETY: the client is live and not yet connected; both are C strings.
            let r = unsafe { ffi::rados_conf_set(img.cluster, k.as_ptr(), v.as_ptr()) };
            if r < 0 {
                return Err(rbd_err(spec, "set a client option", errno(r)));
            }
        }
        // SAFETY: the client is live and configured.
        let r = unsafe { ffi::rados_connect(img.cluster) };
        if r < 0 {
            return Err(rbd_err(spec, "connect to the cluster", errno(r)));
        }
        // SAFETY: the client is connected; `pool` is a C string; `img.ioctx` receives
        // the context, which `Drop` destroys.
        let r = unsafe { ffi::rados_ioctx_create(img.cluster, pool.as_ptr(), &mut img.ioctx) };
        if r < 0 {
            img.ioctx = ptr::null_mut();
            return Err(rbd_err(spec, "open the pool", errno(r)));
        }
        if let Some(ns) = &ns {
            // SAFETY: the context is live; `ns` is a C string that librados copies.
            unsafe { ffi::rados_ioctx_set_namespace(img.ioctx, ns.as_ptr()) };
        }
        let snap_ptr = snap.as_ref().map_or(ptr::null(), |s| s.as_ptr());
        // SAFETY: the context is live; names are C strings or NULL; `img.image`
        // receives the handle, which `Drop` closes.
        let r = unsafe {
            if read_only {
                ffi::rbd_open_read_only(img.ioctx, name.as_ptr(), &mut img.image, snap_ptr)
            } else {
                ffi::rbd_open(img.ioctx, name.as_ptr(), &mut img.image, snap_ptr)
            }
        };
        if r < 0 {
            img.image = ptr::null_mut();
            return Err(rbd_err(spec, "open the image", errno(r)));
        }
        if !read_only {
            let mut handle = 0u64;
            let arg = Arc::as_ptr(&img.sizes).cast_mut().cast::<c_void>();
            // SAFETY: the image is open; `arg` points at the `SizeState` that
            // `img.sizes` keeps alive until after `rbd_update_unwatch` in `Drop`.
            let r = unsafe { ffi::rbd_update_watch(img.image, &mut handle, on_update, arg) };
            if r < 0 {
                return Err(rbd_err(spec, "watch the image header", errno(r)));
            }
            img.watch = Some(handle);
        }
        let size = img
            .size()
            .map_err(|e| rbd_err(spec, "get the image size", e))?;
        img.sizes.size.store(size, Ordering::Release);
        Ok(img)
    }

    /// The size librbd knows now (it re-reads the header first when another client
    /// changed it); the cached size if librbd cannot answer.
    pub fn live_size(&self) -> u64 {
        self.sizes.stale.store(false, Ordering::Release);
        match self.size() {
            Ok(s) => {
                self.sizes.size.store(s, Ordering::Release);
                s
            }
            Err(_) => self.sizes.size.load(Ordering::Acquire),
        }
    }

    /// The size as last learned, asking librbd only after a header change. The
    /// watch callback only marks the size stale: calling into librbd from its own
    /// notification thread could wait on itself.
    pub fn cached_size(&self) -> u64 {
        if self.sizes.stale.swap(false, Ordering::AcqRel) {
            return self.live_size();
        }
        self.sizes.size.load(Ordering::Acquire)
    }

    /// Whether `[offset, offset + len)` lies inside the image, asking librbd for
    /// the live size before saying no (another client may have grown it).
    pub fn in_range(&self, offset: u64, len: u64) -> bool {
        let Some(end) = offset.checked_add(len) else {
            return false;
        };
        end <= self.cached_size() || end <= self.live_size()
    }

    pub fn update_events(&self) -> u64 {
        self.sizes.events.load(Ordering::Acquire)
    }

    /// The state the header watch signals, for a thread that waits on it.
    pub fn sizes(&self) -> Arc<SizeState> {
        self.sizes.clone()
    }

    fn size(&self) -> io::Result<u64> {
        let mut size = 0u64;
        // SAFETY: the image is open; `size` is a valid u64 to write.
        let r = unsafe { ffi::rbd_get_size(self.image, &mut size) };
        if r < 0 {
            return Err(errno(r));
        }
        Ok(size)
    }

    pub fn object_size(&self) -> io::Result<u64> {
        let mut info = ffi::RbdImageInfo::default();
        // SAFETY: the image is open; `info` is a `rbd_image_info_t` (layout tested)
        // of the size passed.
        let r = unsafe {
            ffi::rbd_stat(
                self.image,
                &mut info,
                std::mem::size_of::<ffi::RbdImageInfo>(),
            )
        };
        if r < 0 {
            return Err(errno(r));
        }
        Ok(info.obj_size)
    }

    pub fn resize(&self, size: u64) -> io::Result<()> {
        // SAFETY: the image is open.
        let r = unsafe { ffi::rbd_resize(self.image, size) };
        if r < 0 {
            return Err(errno(r));
        }
        self.live_size();
        Ok(())
    }

    /// The extents of `[offset, offset + len)` that hold data, as librbd reports
    /// them (`rbd_diff_iterate2` against nothing, parent included, extents
    /// inside objects); at most `status::MAX_EXTENTS` of them.
    pub fn data_extents(&self, offset: u64, len: u64) -> io::Result<Reported> {
        let acc = Mutex::new(Reported::default());
        let arg = std::ptr::from_ref(&acc).cast_mut().cast::<c_void>();
        // SAFETY: the image is open; `on_extent` only reads `arg` as the
        // `Mutex<Reported>` that lives on this stack frame until the call has
        // returned (librbd calls back only during it), and locks it, so calls
        // from any of librbd's threads are safe.
        let r = unsafe {
            ffi::rbd_diff_iterate2(self.image, ptr::null(), offset, len, 1, 0, on_extent, arg)
        };
        let rep = acc.into_inner().unwrap_or_else(PoisonError::into_inner);
        if r < 0 && !(r == -libc::ECANCELED && rep.overflow) {
            return Err(errno(r));
        }
        Ok(rep)
    }

    pub fn flush(&self) -> io::Result<()> {
        // SAFETY: the image is open.
        let r = unsafe { ffi::rbd_flush(self.image) };
        if r < 0 {
            return Err(errno(r));
        }
        Ok(())
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        // Runs on a caller's thread, never on librbd's (no completion callback holds
        // an `Arc<Image>`), so closing cannot wait on itself.
        if let Some(handle) = self.watch.take() {
            // SAFETY: the image is open and `handle` came from `rbd_update_watch`;
            // after this returns librbd no longer calls `on_update`, and `sizes`
            // drops only after this function.
            unsafe { ffi::rbd_update_unwatch(self.image, handle) };
        }
        self.sizes.signal(true);
        if !self.image.is_null() {
            // SAFETY: the image is open and nothing else uses it any more.
            unsafe { ffi::rbd_close(self.image) };
        }
        if !self.ioctx.is_null() {
            // SAFETY: the context is live and the image that used it is closed.
            unsafe { ffi::rados_ioctx_destroy(self.ioctx) };
        }
        if !self.cluster.is_null() {
            // SAFETY: the client is live and its context is destroyed.
            unsafe { ffi::rados_shutdown(self.cluster) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_round_up_to_whole_seconds() {
        assert_eq!(secs(Duration::from_secs(30)), "30");
        assert_eq!(secs(Duration::from_millis(1500)), "2");
        assert_eq!(secs(Duration::from_millis(1)), "1");
        assert_eq!(secs(Duration::ZERO), "0");
    }

    #[test]
    fn bad_names_are_config_errors() {
        let opts = RbdOptions {
            pool: "rbd".into(),
            image: "a\0b".into(),
            ..RbdOptions::default()
        };
        let e = Image::open(&opts, "rbd/a", false).err();
        assert!(matches!(e, Some(BackendError::Config(_))), "{e:?}");
    }
}
