//! Verbs objects: protection domain, registered memory, completion channel and
//! queue, and the work requests posted to a QP.

use std::alloc::Layout;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::Arc;

use super::{ffi, set_nonblocking, shim, RdmaError};

/// A protection domain.
pub struct Pd {
    ptr: NonNull<ffi::ibv_pd>,
}

// SAFETY: libibverbs objects may be used from any thread (the library and the
// providers lock internally); the PD is only read through its pointer.
unsafe impl Send for Pd {}
// SAFETY: as above.
unsafe impl Sync for Pd {}

impl Pd {
    pub(super) fn new(ctx: NonNull<ffi::ibv_context>) -> Result<Self, RdmaError> {
        // SAFETY: `ctx` is a live device context owned by librdmacm.
        let ptr = unsafe { ffi::ibv_alloc_pd(ctx.as_ptr()) };
        Ok(Pd {
            ptr: NonNull::new(ptr).ok_or_else(|| RdmaError::errno("ibv_alloc_pd"))?,
        })
    }

    pub(super) fn as_ptr(&self) -> *mut ffi::ibv_pd {
        self.ptr.as_ptr()
    }
}

impl Drop for Pd {
    fn drop(&mut self) {
        // SAFETY: every MR and QP on the PD holds an Arc of it, so none is left.
        unsafe { ffi::ibv_dealloc_pd(self.ptr.as_ptr()) };
    }
}

/// A zeroed, page-aligned buffer registered with the device. The device may
/// write into it whenever a work request naming it is posted; the owner reads
/// it only after that request's completion.
pub struct Mr {
    mr: NonNull<ffi::ibv_mr>,
    buf: NonNull<u8>,
    layout: Layout,
    _pd: Arc<Pd>,
}

// SAFETY: the buffer is owned by the Mr; access to its bytes goes through
// `ptr()` and the caller's own synchronisation (completions).
unsafe impl Send for Mr {}
// SAFETY: as above: no method hands out a reference into the bytes.
unsafe impl Sync for Mr {}

const PAGE: usize = 4096;

impl Mr {
    /// Allocates `len` bytes (> 0) and registers them with local write access
    /// plus `remote` (`IBV_ACCESS_REMOTE_*` bits; 0 for buffers only the local
    /// side names in work requests).
    pub fn new(pd: &Arc<Pd>, len: usize, remote: u32) -> Result<Self, RdmaError> {
        let layout =
            Layout::from_size_align(len.max(1), PAGE).map_err(|_| RdmaError::OutOfRange {
                what: "region length",
                value: len,
            })?;
        // SAFETY: the layout has a non-zero size.
        let buf = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) }).ok_or(
            RdmaError::OutOfRange {
                what: "region allocation",
                value: len,
            },
        )?;
        let access = ffi::IBV_ACCESS_LOCAL_WRITE | remote;
        let access = i32::try_from(access).map_err(|_| RdmaError::OutOfRange {
            what: "access flags",
            value: access as usize,
        })?;
        // SAFETY: the PD is alive; `buf` is valid for `layout.size()` bytes and
        // stays allocated until after ibv_dereg_mr (Drop).
        let mr =
            unsafe { ffi::ibv_reg_mr(pd.as_ptr(), buf.as_ptr().cast(), layout.size(), access) };
        let Some(mr) = NonNull::new(mr) else {
            let e = RdmaError::errno("ibv_reg_mr");
            // SAFETY: allocated above with this layout, not registered.
            unsafe { std::alloc::dealloc(buf.as_ptr(), layout) };
            return Err(e);
        };
        Ok(Mr {
            mr,
            buf,
            layout,
            _pd: pd.clone(),
        })
    }

    /// The start of the buffer.
    pub fn ptr(&self) -> *mut u8 {
        self.buf.as_ptr()
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.layout.size()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// The address of byte `offset` as work requests name it.
    pub fn addr(&self, offset: usize) -> u64 {
        self.buf.as_ptr() as u64 + offset as u64
    }

    pub fn lkey(&self) -> u32 {
        // SAFETY: the MR is alive; lkey is a plain field.
        unsafe { (*self.mr.as_ptr()).lkey }
    }

    pub fn rkey(&self) -> u32 {
        // SAFETY: as above.
        unsafe { (*self.mr.as_ptr()).rkey }
    }
}

impl Drop for Mr {
    fn drop(&mut self) {
        // SAFETY: the MR came from ibv_reg_mr; its owner destroys the QP (whose
        // work requests could name it) before dropping it.
        unsafe { ffi::ibv_dereg_mr(self.mr.as_ptr()) };
        // SAFETY: allocated in `new` with this layout; no longer registered.
        unsafe { std::alloc::dealloc(self.buf.as_ptr(), self.layout) };
    }
}

/// A completion channel with a non-blocking descriptor.
pub struct CompChannel {
    ptr: NonNull<ffi::ibv_comp_channel>,
}

// SAFETY: a completion channel is a descriptor wrapper; the library's calls on
// it are thread-safe.
unsafe impl Send for CompChannel {}
// SAFETY: as above.
unsafe impl Sync for CompChannel {}

impl CompChannel {
    pub(super) fn new(ctx: NonNull<ffi::ibv_context>) -> Result<Self, RdmaError> {
        // SAFETY: `ctx` is a live device context owned by librdmacm.
        let ptr = unsafe { ffi::ibv_create_comp_channel(ctx.as_ptr()) };
        let ch = CompChannel {
            ptr: NonNull::new(ptr).ok_or_else(|| RdmaError::errno("ibv_create_comp_channel"))?,
        };
        set_nonblocking(ch.fd(), "completion channel O_NONBLOCK")?;
        Ok(ch)
    }

    /// The descriptor to watch for readability.
    pub fn fd(&self) -> RawFd {
        // SAFETY: the channel is alive; `fd` is a plain int.
        unsafe { (*self.ptr.as_ptr()).fd }
    }

    /// Consumes one notification if there is one (and acknowledges it on its
    /// CQ). True if there was.
    pub fn take_event(&self) -> Result<bool, RdmaError> {
        self.take_cq_event().map(|cq| cq.is_some())
    }

    /// Consumes one notification if there is one (and acknowledges it on its
    /// CQ); says which CQ it was about (compare with [`Cq::id`]): that CQ is
    /// no longer armed, the channel's others still are if they were.
    pub fn take_cq_event(&self) -> Result<Option<CqId>, RdmaError> {
        let mut cq: *mut ffi::ibv_cq = std::ptr::null_mut();
        let mut ctx: *mut std::ffi::c_void = std::ptr::null_mut();
        // SAFETY: the channel is alive; the out-pointers are valid.
        let r = unsafe { ffi::ibv_get_cq_event(self.ptr.as_ptr(), &mut cq, &mut ctx) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(RdmaError::Os {
                op: "ibv_get_cq_event",
                source: e,
            });
        }
        // SAFETY: `cq` is the live CQ the event is about (a CQ holds an Arc of
        // its channel, and is destroyed only after its events are acknowledged,
        // which happens here, at once).
        unsafe { ffi::ibv_ack_cq_events(cq, 1) };
        Ok(Some(CqId(cq as usize)))
    }
}

impl Drop for CompChannel {
    fn drop(&mut self) {
        // SAFETY: every CQ on the channel holds an Arc of it, so none is left.
        unsafe { ffi::ibv_destroy_comp_channel(self.ptr.as_ptr()) };
    }
}

/// What a completion was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WcOpcode {
    Send,
    RdmaWrite,
    RdmaRead,
    Recv,
    Other(u32),
}

/// One work completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wc {
    pub wr_id: u64,
    /// 0 is success (`IBV_WC_SUCCESS`); 5 is "flushed" (the QP is in error).
    pub status: u32,
    /// Valid only when `status` is 0.
    pub opcode: WcOpcode,
    pub byte_len: u32,
}

impl Wc {
    pub fn ok(&self) -> bool {
        self.status == ffi::IBV_WC_SUCCESS
    }

    /// The status as libibverbs names it.
    pub fn status_str(&self) -> String {
        // SAFETY: ibv_wc_status_str returns a static string for any value.
        let s = unsafe { ffi::ibv_wc_status_str(self.status) };
        if s.is_null() {
            return format!("status {}", self.status);
        }
        // SAFETY: non-null, NUL-terminated, static.
        unsafe { std::ffi::CStr::from_ptr(s) }
            .to_string_lossy()
            .into_owned()
    }
}

/// A completion queue.
pub struct Cq {
    ptr: NonNull<ffi::ibv_cq>,
    _channel: Arc<CompChannel>,
}

/// Names a CQ in a completion channel's notification (its address: unique
/// while the CQ lives, which it does until its notifications are consumed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CqId(usize);

// SAFETY: libibverbs CQ calls are thread-safe (the provider locks the CQ).
unsafe impl Send for Cq {}
// SAFETY: as above.
unsafe impl Sync for Cq {}

impl Cq {
    /// How a completion channel's notification names this CQ.
    pub fn id(&self) -> CqId {
        CqId(self.ptr.as_ptr() as usize)
    }

    pub(super) fn new(
        ctx: NonNull<ffi::ibv_context>,
        cqe: u32,
        channel: &Arc<CompChannel>,
    ) -> Result<Self, RdmaError> {
        let n = i32::try_from(cqe).map_err(|_| RdmaError::OutOfRange {
            what: "CQ entries",
            value: cqe as usize,
        })?;
        // SAFETY: the context and channel are alive (the Arc keeps the channel
        // alive as long as the CQ).
        let ptr = unsafe {
            ffi::ibv_create_cq(
                ctx.as_ptr(),
                n,
                std::ptr::null_mut(),
                channel.ptr.as_ptr(),
                0,
            )
        };
        Ok(Cq {
            ptr: NonNull::new(ptr).ok_or_else(|| RdmaError::errno("ibv_create_cq"))?,
            _channel: channel.clone(),
        })
    }

    pub(super) fn as_ptr(&self) -> *mut ffi::ibv_cq {
        self.ptr.as_ptr()
    }

    /// Asks for a notification on the channel at the next completion.
    pub fn req_notify(&self) -> Result<(), RdmaError> {
        // SAFETY: the CQ is alive.
        let r = unsafe { shim::oxt_ibv_req_notify_cq(self.ptr.as_ptr(), 0) };
        if r != 0 {
            return Err(RdmaError::code("ibv_req_notify_cq", r));
        }
        Ok(())
    }

    /// Appends up to `max` completions to `out`; returns how many.
    pub fn poll(&self, max: usize, out: &mut Vec<Wc>) -> Result<usize, RdmaError> {
        const BATCH: usize = 32;
        // SAFETY: ibv_wc is plain old data; zero is valid.
        let mut wcs: [ffi::ibv_wc; BATCH] = unsafe { std::mem::zeroed() };
        let n = i32::try_from(max.min(BATCH)).unwrap_or(0);
        // SAFETY: the CQ is alive; `wcs` has room for `n` entries.
        let got = unsafe { shim::oxt_ibv_poll_cq(self.ptr.as_ptr(), n, wcs.as_mut_ptr()) };
        if got < 0 {
            return Err(RdmaError::code("ibv_poll_cq", -got));
        }
        let got = usize::try_from(got).unwrap_or(0).min(BATCH);
        for w in &wcs[..got] {
            out.push(Wc {
                wr_id: w.wr_id,
                status: w.status,
                opcode: match w.opcode {
                    ffi::IBV_WC_SEND => WcOpcode::Send,
                    ffi::IBV_WC_RDMA_WRITE => WcOpcode::RdmaWrite,
                    ffi::IBV_WC_RDMA_READ => WcOpcode::RdmaRead,
                    ffi::IBV_WC_RECV => WcOpcode::Recv,
                    o => WcOpcode::Other(o),
                },
                byte_len: w.byte_len,
            });
        }
        Ok(got)
    }
}

impl Drop for Cq {
    fn drop(&mut self) {
        // SAFETY: QPs on the CQ hold an Arc of it, so none is left; its channel
        // events were acknowledged as they were read.
        unsafe { ffi::ibv_destroy_cq(self.ptr.as_ptr()) };
    }
}

/// Sizes of a QP's queues (asked for, and as granted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QpCaps {
    pub max_send_wr: u32,
    pub max_recv_wr: u32,
    pub max_send_sge: u32,
}

/// The device limits a target sizes its queues by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceLimits {
    pub max_qp_wr: u32,
    pub max_sge: u32,
    pub max_cqe: u32,
    /// RDMA READs a QP may have outstanding as the requester.
    pub max_qp_init_rd_atom: u32,
}

impl DeviceLimits {
    pub(super) fn query(ctx: NonNull<ffi::ibv_context>) -> Result<Self, RdmaError> {
        // SAFETY: ibv_device_attr is plain old data; zero is valid.
        let mut a: ffi::ibv_device_attr = unsafe { std::mem::zeroed() };
        // SAFETY: the context is alive; `a` is a valid out-pointer.
        let r = unsafe { ffi::ibv_query_device(ctx.as_ptr(), &mut a) };
        if r != 0 {
            return Err(RdmaError::code("ibv_query_device", r));
        }
        let u = |v: i32| u32::try_from(v).unwrap_or(0);
        Ok(DeviceLimits {
            max_qp_wr: u(a.max_qp_wr),
            max_sge: u(a.max_sge),
            max_cqe: u(a.max_cqe),
            max_qp_init_rd_atom: u(a.max_qp_init_rd_atom),
        })
    }
}

/// A remote buffer: address and key from the peer's descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteAddr {
    pub addr: u64,
    pub rkey: u32,
}

/// What a send-queue work request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendOp {
    Send,
    RdmaRead(RemoteAddr),
    RdmaWrite(RemoteAddr),
}

/// A send-queue work request with one local SGE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendWr {
    pub wr_id: u64,
    pub op: SendOp,
    pub local_addr: u64,
    pub len: u32,
    pub lkey: u32,
    /// Only signalled requests produce a completion when they succeed.
    pub signaled: bool,
}
