//! The RDMA connection manager: event channels and CM ids.
//!
//! Every event is copied out and acknowledged inside [`EventChannel::get_event`]:
//! `rdma_destroy_id` waits until each event reported for the id has been
//! acknowledged, so an event kept alive while its id is destroyed on the same
//! thread would hang. The new id of a connect request comes out as an owned
//! [`CmId`].

use std::ffi::c_void;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::Arc;

use smallvec::SmallVec;

use super::verbs::{Cq, DeviceLimits, Pd, QpCaps, SendOp, SendWr};
use super::{ffi, set_nonblocking, RdmaError};

/// The event channel proper; ids hold it through an `Arc` so that it outlives
/// them (librdmacm requires it).
struct ChannelInner {
    ptr: NonNull<ffi::rdma_event_channel>,
}

// SAFETY: an rdma_event_channel is a file descriptor wrapper; librdmacm calls on
// it are thread-safe (it takes its own locks), and we never hand out references
// into it.
unsafe impl Send for ChannelInner {}
// SAFETY: as above.
unsafe impl Sync for ChannelInner {}

impl Drop for ChannelInner {
    fn drop(&mut self) {
        // SAFETY: the pointer came from rdma_create_event_channel and every id on
        // the channel holds an Arc of it, so none is left.
        unsafe { ffi::rdma_destroy_event_channel(self.ptr.as_ptr()) };
    }
}

/// A CM event channel with a non-blocking descriptor, for an epoll set.
#[derive(Clone)]
pub struct EventChannel {
    inner: Arc<ChannelInner>,
}

impl std::fmt::Debug for EventChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EventChannel(fd {})", self.fd())
    }
}

/// The kinds of CM events a passive side (and a simple active side) sees;
/// the rest are reported as `Other`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmEventKind {
    ConnectRequest,
    ConnectError,
    Unreachable,
    Rejected,
    Established,
    Disconnected,
    DeviceRemoval,
    TimewaitExit,
    AddrChange,
    AddrResolved,
    AddrError,
    RouteResolved,
    RouteError,
    Other(u32),
}

impl CmEventKind {
    fn from_raw(e: ffi::rdma_cm_event_type) -> Self {
        match e {
            ffi::RDMA_CM_EVENT_CONNECT_REQUEST => CmEventKind::ConnectRequest,
            ffi::RDMA_CM_EVENT_CONNECT_ERROR => CmEventKind::ConnectError,
            ffi::RDMA_CM_EVENT_UNREACHABLE => CmEventKind::Unreachable,
            ffi::RDMA_CM_EVENT_REJECTED => CmEventKind::Rejected,
            ffi::RDMA_CM_EVENT_ESTABLISHED => CmEventKind::Established,
            ffi::RDMA_CM_EVENT_DISCONNECTED => CmEventKind::Disconnected,
            ffi::RDMA_CM_EVENT_DEVICE_REMOVAL => CmEventKind::DeviceRemoval,
            ffi::RDMA_CM_EVENT_TIMEWAIT_EXIT => CmEventKind::TimewaitExit,
            ffi::RDMA_CM_EVENT_ADDR_CHANGE => CmEventKind::AddrChange,
            ffi::RDMA_CM_EVENT_ADDR_RESOLVED => CmEventKind::AddrResolved,
            ffi::RDMA_CM_EVENT_ADDR_ERROR => CmEventKind::AddrError,
            ffi::RDMA_CM_EVENT_ROUTE_RESOLVED => CmEventKind::RouteResolved,
            ffi::RDMA_CM_EVENT_ROUTE_ERROR => CmEventKind::RouteError,
            other => CmEventKind::Other(other),
        }
    }
}

/// One CM event, copied out and already acknowledged.
#[derive(Debug)]
pub struct CmEvent {
    pub kind: CmEventKind,
    /// The event's status (0, or a negative errno, or for `Rejected` the reject
    /// reason).
    pub status: i32,
    /// The context of the id the event is about (for a connect request: of the
    /// listening id), as set with [`CmId::set_context`].
    pub context: u64,
    /// The connection's private data (the SRP login request, on a connect
    /// request), truncated to what the event reports.
    pub private_data: Vec<u8>,
    /// On a connect request, from our side's point of view (the CM swaps the
    /// peer's fields): `responder_resources` is the RDMA READs the peer wants
    /// to have outstanding against us (its initiator depth), `initiator_depth`
    /// the RDMA READs it lets us have outstanding against it (its responder
    /// resources).
    pub responder_resources: u8,
    pub initiator_depth: u8,
    /// The new id of a connect request; the caller must accept or reject it.
    pub new_id: Option<CmId>,
}

impl EventChannel {
    /// Opens `/dev/infiniband/rdma_cm` and makes its descriptor non-blocking.
    pub fn new() -> Result<Self, RdmaError> {
        // SAFETY: no arguments; returns NULL with errno set on failure.
        let ptr = unsafe { ffi::rdma_create_event_channel() };
        let ptr = NonNull::new(ptr).ok_or_else(|| RdmaError::errno("rdma_create_event_channel"))?;
        let ch = EventChannel {
            inner: Arc::new(ChannelInner { ptr }),
        };
        set_nonblocking(ch.fd(), "event channel O_NONBLOCK")?;
        Ok(ch)
    }

    /// The descriptor to watch for readability.
    pub fn fd(&self) -> RawFd {
        // SAFETY: the channel is alive while `self` is; `fd` is a plain int.
        unsafe { (*self.inner.ptr.as_ptr()).fd }
    }

    /// The next event, or `None` if none is queued.
    pub fn get_event(&self) -> Result<Option<CmEvent>, RdmaError> {
        let mut ev: *mut ffi::rdma_cm_event = std::ptr::null_mut();
        // SAFETY: the channel is alive; `ev` is a valid out-pointer.
        let r = unsafe { ffi::rdma_get_cm_event(self.inner.ptr.as_ptr(), &mut ev) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(RdmaError::Os {
                op: "rdma_get_cm_event",
                source: e,
            });
        }
        // SAFETY: on success `ev` points to an event that stays valid until it is
        // acknowledged below; we copy what we need first.
        let e = unsafe { &*ev };
        let kind = CmEventKind::from_raw(e.event);
        // SAFETY: `param` is a union; for the connection events we handle it is
        // `conn` (librdmacm fills it for connect request, established, rejected
        // and disconnected; elsewhere it is zeroed), whose pointer and length
        // describe a buffer inside the event.
        let (private_data, responder_resources, initiator_depth) = unsafe {
            let conn = e.param.conn;
            let pd = if conn.private_data.is_null() || conn.private_data_len == 0 {
                Vec::new()
            } else {
                std::slice::from_raw_parts(
                    conn.private_data.cast::<u8>(),
                    usize::from(conn.private_data_len),
                )
                .to_vec()
            };
            (pd, conn.responder_resources, conn.initiator_depth)
        };
        let (context, new_id) = if kind == CmEventKind::ConnectRequest {
            // The context is the listener's: the new id inherits it.
            let ctx = if e.listen_id.is_null() {
                0
            } else {
                // SAFETY: the listening id is alive (it reported this event).
                unsafe { (*e.listen_id).context as u64 }
            };
            let id = NonNull::new(e.id).map(|ptr| CmId {
                ptr,
                channel: self.clone(),
                qp: None,
            });
            (ctx, id)
        } else if e.id.is_null() {
            (0, None)
        } else {
            // SAFETY: the id is alive until the event is acknowledged (its
            // destroy waits for that).
            (unsafe { (*e.id).context as u64 }, None)
        };
        let status = e.status;
        // SAFETY: `ev` came from rdma_get_cm_event and is acknowledged once; the
        // copies above do not point into it.
        unsafe { ffi::rdma_ack_cm_event(ev) };
        Ok(Some(CmEvent {
            kind,
            status,
            context,
            private_data,
            responder_resources,
            initiator_depth,
            new_id,
        }))
    }
}

/// The QP of an id and what it must outlive.
struct QpHold {
    qp: NonNull<ffi::ibv_qp>,
    _pd: Arc<Pd>,
    _send_cq: Arc<Cq>,
    _recv_cq: Arc<Cq>,
}

/// An RDMA CM id: a listener, or one connection with its RC QP.
pub struct CmId {
    ptr: NonNull<ffi::rdma_cm_id>,
    channel: EventChannel,
    qp: Option<QpHold>,
}

// SAFETY: a cm_id is used from one thread at a time (we hand it over whole); the
// library's calls on it are thread-safe, and the raw pointers it holds refer to
// objects (channel, PD, CQs) kept alive by the Arcs stored beside them.
unsafe impl Send for CmId {}

impl std::fmt::Debug for CmId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CmId({:p})", self.ptr)
    }
}

/// Writes `addr` as a C sockaddr.
fn to_sockaddr(addr: SocketAddr) -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is plain old data; all zeroes is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
        }
    }
    ss
}

/// Reads a C sockaddr (IPv4 or IPv6).
///
/// # Safety
/// `sa` must point to a sockaddr whose family says how long it is (at least a
/// sockaddr_storage's worth is readable, as inside rdma_addr).
unsafe fn from_sockaddr(sa: *const libc::sockaddr) -> Option<SocketAddr> {
    // SAFETY: the caller promises a readable sockaddr.
    let family = i32::from(unsafe { (*sa).sa_family });
    match family {
        libc::AF_INET => {
            // SAFETY: the family says it is a sockaddr_in.
            let sin = unsafe { std::ptr::read_unaligned(sa.cast::<libc::sockaddr_in>()) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says it is a sockaddr_in6.
            let sin6 = unsafe { std::ptr::read_unaligned(sa.cast::<libc::sockaddr_in6>()) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Connection parameters of an accept (the private data apart).
#[derive(Clone, Copy, Debug)]
pub struct AcceptParams {
    /// RDMA READs the peer may have outstanding against us.
    pub responder_resources: u8,
    /// RDMA READs we may have outstanding against the peer (≤ its responder
    /// resources).
    pub initiator_depth: u8,
    pub rnr_retry_count: u8,
}

impl CmId {
    /// A TCP-port-space id on `channel`, with `context` reported in its events.
    pub fn new(channel: &EventChannel, context: u64) -> Result<Self, RdmaError> {
        let mut id: *mut ffi::rdma_cm_id = std::ptr::null_mut();
        // SAFETY: the channel is alive; `id` is a valid out-pointer; the context
        // is an opaque value librdmacm stores.
        let r = unsafe {
            ffi::rdma_create_id(
                channel.inner.ptr.as_ptr(),
                &mut id,
                context as usize as *mut c_void,
                ffi::RDMA_PS_TCP,
            )
        };
        if r != 0 {
            return Err(RdmaError::errno("rdma_create_id"));
        }
        let ptr = NonNull::new(id).ok_or_else(|| RdmaError::errno("rdma_create_id"))?;
        Ok(CmId {
            ptr,
            channel: channel.clone(),
            qp: None,
        })
    }

    /// Sets the value this id's events report as `context`.
    pub fn set_context(&mut self, context: u64) {
        // SAFETY: we own the id; `context` is a plain field librdmacm only stores.
        unsafe { (*self.ptr.as_ptr()).context = context as usize as *mut c_void };
    }

    /// Binds to a local address (port 0 picks one). Fails with `NoDevice` when
    /// no RDMA device serves the address.
    pub fn bind(&mut self, addr: SocketAddr) -> Result<(), RdmaError> {
        let mut ss = to_sockaddr(addr);
        // SAFETY: the id is alive; `ss` holds a valid sockaddr of its family.
        let r = unsafe {
            ffi::rdma_bind_addr(
                self.ptr.as_ptr(),
                (&mut ss as *mut libc::sockaddr_storage).cast(),
            )
        };
        if r != 0 {
            let source = std::io::Error::last_os_error();
            return Err(match source.raw_os_error() {
                Some(libc::ENODEV) | Some(libc::EADDRNOTAVAIL) | Some(libc::ENOENT) => {
                    RdmaError::NoDevice { addr, source }
                }
                _ => RdmaError::Os {
                    op: "rdma_bind_addr",
                    source,
                },
            });
        }
        Ok(())
    }

    /// Active side: resolves `dst` (from `src`, if given) to a device and
    /// port; `AddrResolved` (or `AddrError`) follows on the event channel.
    pub fn resolve_addr(
        &mut self,
        src: Option<SocketAddr>,
        dst: SocketAddr,
        timeout_ms: i32,
    ) -> Result<(), RdmaError> {
        let mut s = src.map(to_sockaddr);
        let mut d = to_sockaddr(dst);
        let sp = s.as_mut().map_or(std::ptr::null_mut(), |s| {
            (s as *mut libc::sockaddr_storage).cast()
        });
        // SAFETY: the id is alive; the sockaddrs are valid (or NULL for the
        // source) for the call, which copies them.
        let r = unsafe {
            ffi::rdma_resolve_addr(
                self.ptr.as_ptr(),
                sp,
                (&mut d as *mut libc::sockaddr_storage).cast(),
                timeout_ms,
            )
        };
        if r != 0 {
            return Err(RdmaError::errno("rdma_resolve_addr"));
        }
        Ok(())
    }

    /// Active side: resolves the route; `RouteResolved` follows.
    pub fn resolve_route(&mut self, timeout_ms: i32) -> Result<(), RdmaError> {
        // SAFETY: the id is alive and its address resolved.
        if unsafe { ffi::rdma_resolve_route(self.ptr.as_ptr(), timeout_ms) } != 0 {
            return Err(RdmaError::errno("rdma_resolve_route"));
        }
        Ok(())
    }

    /// Active side: sends the connect request with `private_data`;
    /// `Established` (its private data: the reply's) or `Rejected` (the
    /// reject's) follows.
    pub fn connect(&mut self, private_data: &[u8], p: AcceptParams) -> Result<(), RdmaError> {
        let len = u8::try_from(private_data.len())
            .map_err(|_| RdmaError::PrivateDataTooLong(private_data.len()))?;
        // SAFETY: rdma_conn_param is plain old data; zero is valid.
        let mut param: ffi::rdma_conn_param = unsafe { std::mem::zeroed() };
        param.private_data = private_data.as_ptr().cast();
        param.private_data_len = len;
        param.responder_resources = p.responder_resources;
        param.initiator_depth = p.initiator_depth;
        param.flow_control = 1;
        param.retry_count = 7;
        param.rnr_retry_count = p.rnr_retry_count;
        // SAFETY: the id is alive; `param` and its private data live across
        // the call (librdmacm copies them).
        if unsafe { ffi::rdma_connect(self.ptr.as_ptr(), &mut param) } != 0 {
            return Err(RdmaError::errno("rdma_connect"));
        }
        Ok(())
    }

    /// Starts listening for connect requests.
    pub fn listen(&mut self, backlog: i32) -> Result<(), RdmaError> {
        // SAFETY: the id is alive and bound.
        if unsafe { ffi::rdma_listen(self.ptr.as_ptr(), backlog) } != 0 {
            return Err(RdmaError::errno("rdma_listen"));
        }
        Ok(())
    }

    /// The local address (after bind: with the port actually bound).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        // SAFETY: the id is alive; route.addr.src_addr is inline storage large
        // enough for any sockaddr, zeroed (family 0) until bound.
        unsafe {
            let id = &*self.ptr.as_ptr();
            from_sockaddr(std::ptr::addr_of!(id.route.addr.__bindgen_anon_1.src_storage).cast())
        }
    }

    /// The peer's address (on a connection's id).
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        // SAFETY: as in `local_addr`, for the destination.
        unsafe {
            let id = &*self.ptr.as_ptr();
            from_sockaddr(std::ptr::addr_of!(id.route.addr.__bindgen_anon_2.dst_storage).cast())
        }
    }

    fn verbs(&self) -> Result<NonNull<ffi::ibv_context>, RdmaError> {
        // SAFETY: the id is alive; `verbs` is a plain pointer field.
        NonNull::new(unsafe { (*self.ptr.as_ptr()).verbs }).ok_or(RdmaError::NoVerbs)
    }

    /// A protection domain on this id's device.
    pub fn alloc_pd(&self) -> Result<Arc<Pd>, RdmaError> {
        Pd::new(self.verbs()?).map(Arc::new)
    }

    /// The limits of this id's device.
    pub fn device_limits(&self) -> Result<DeviceLimits, RdmaError> {
        DeviceLimits::query(self.verbs()?)
    }

    /// A completion channel on this id's device.
    pub fn comp_channel(&self) -> Result<Arc<super::CompChannel>, RdmaError> {
        super::CompChannel::new(self.verbs()?).map(Arc::new)
    }

    /// A completion queue of `cqe` entries on this id's device, reported on
    /// `channel`.
    pub fn create_cq(
        &self,
        cqe: u32,
        channel: &Arc<super::CompChannel>,
    ) -> Result<Arc<Cq>, RdmaError> {
        Cq::new(self.verbs()?, cqe, channel).map(Arc::new)
    }

    /// Creates the id's RC QP (one receive SGE per work request).
    pub fn create_qp(
        &mut self,
        pd: &Arc<Pd>,
        send_cq: &Arc<Cq>,
        recv_cq: &Arc<Cq>,
        caps: QpCaps,
    ) -> Result<QpCaps, RdmaError> {
        // SAFETY: ibv_qp_init_attr is plain old data; zero is valid for it.
        let mut attr: ffi::ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        attr.send_cq = send_cq.as_ptr();
        attr.recv_cq = recv_cq.as_ptr();
        attr.cap.max_send_wr = caps.max_send_wr;
        attr.cap.max_recv_wr = caps.max_recv_wr;
        attr.cap.max_send_sge = caps.max_send_sge;
        attr.cap.max_recv_sge = 1;
        attr.qp_type = ffi::IBV_QPT_RC;
        attr.sq_sig_all = 0;
        // SAFETY: the id, PD and CQs are alive (and kept alive by QpHold as long
        // as the QP); `attr` is a valid init attribute.
        let r = unsafe { ffi::rdma_create_qp(self.ptr.as_ptr(), pd.as_ptr(), &mut attr) };
        if r != 0 {
            return Err(RdmaError::errno("rdma_create_qp"));
        }
        // SAFETY: on success librdmacm has set id->qp.
        let qp = NonNull::new(unsafe { (*self.ptr.as_ptr()).qp }).ok_or(RdmaError::NoQp)?;
        self.qp = Some(QpHold {
            qp,
            _pd: pd.clone(),
            _send_cq: send_cq.clone(),
            _recv_cq: recv_cq.clone(),
        });
        Ok(QpCaps {
            max_send_wr: attr.cap.max_send_wr,
            max_recv_wr: attr.cap.max_recv_wr,
            max_send_sge: attr.cap.max_send_sge,
        })
    }

    /// Moves the id (and its future events) to another event channel. Every
    /// event already read for it must have been acknowledged (as
    /// [`EventChannel::get_event`] does).
    pub fn migrate(&mut self, to: &EventChannel) -> Result<(), RdmaError> {
        // SAFETY: both are alive; librdmacm moves the id's pending events.
        if unsafe { ffi::rdma_migrate_id(self.ptr.as_ptr(), to.inner.ptr.as_ptr()) } != 0 {
            return Err(RdmaError::errno("rdma_migrate_id"));
        }
        self.channel = to.clone();
        Ok(())
    }

    /// Accepts a connect request with `private_data` in the reply. The QP (if
    /// any) is moved to RTR and RTS by librdmacm.
    pub fn accept(&mut self, private_data: &[u8], p: AcceptParams) -> Result<(), RdmaError> {
        let len = u8::try_from(private_data.len())
            .map_err(|_| RdmaError::PrivateDataTooLong(private_data.len()))?;
        // SAFETY: rdma_conn_param is plain old data; zero is valid.
        let mut param: ffi::rdma_conn_param = unsafe { std::mem::zeroed() };
        param.private_data = private_data.as_ptr().cast();
        param.private_data_len = len;
        param.responder_resources = p.responder_resources;
        param.initiator_depth = p.initiator_depth;
        param.flow_control = 1;
        param.rnr_retry_count = p.rnr_retry_count;
        // SAFETY: the id is alive; `param` and the private data it points to live
        // across the call (librdmacm copies them).
        if unsafe { ffi::rdma_accept(self.ptr.as_ptr(), &mut param) } != 0 {
            return Err(RdmaError::errno("rdma_accept"));
        }
        Ok(())
    }

    /// Rejects a connect request with `private_data` (consumer-defined reason).
    pub fn reject(&mut self, private_data: &[u8]) -> Result<(), RdmaError> {
        let len = u8::try_from(private_data.len())
            .map_err(|_| RdmaError::PrivateDataTooLong(private_data.len()))?;
        // SAFETY: the id is alive; the buffer is valid for `len` bytes during
        // the call.
        if unsafe { ffi::rdma_reject(self.ptr.as_ptr(), private_data.as_ptr().cast(), len) } != 0 {
            return Err(RdmaError::errno("rdma_reject"));
        }
        Ok(())
    }

    /// Starts a disconnect (DREQ); the QP goes to the error state, so posted
    /// work requests complete flushed.
    pub fn disconnect(&mut self) -> Result<(), RdmaError> {
        // SAFETY: the id is alive.
        if unsafe { ffi::rdma_disconnect(self.ptr.as_ptr()) } != 0 {
            return Err(RdmaError::errno("rdma_disconnect"));
        }
        Ok(())
    }

    fn qp(&self) -> Result<NonNull<ffi::ibv_qp>, RdmaError> {
        self.qp.as_ref().map(|q| q.qp).ok_or(RdmaError::NoQp)
    }

    /// Posts one receive of `len` bytes at `addr` (inside a region with `lkey`).
    pub fn post_recv(&self, wr_id: u64, addr: u64, len: u32, lkey: u32) -> Result<(), RdmaError> {
        let qp = self.qp()?;
        let mut sge = ffi::ibv_sge {
            addr,
            length: len,
            lkey,
        };
        let mut wr = ffi::ibv_recv_wr {
            wr_id,
            next: std::ptr::null_mut(),
            sg_list: &mut sge,
            num_sge: i32::from(len != 0),
        };
        let mut bad: *mut ffi::ibv_recv_wr = std::ptr::null_mut();
        // SAFETY: the QP is alive (held by self); `wr` and `sge` live across the
        // call (the provider copies them into its queue); the buffer they name
        // belongs to a registered region the caller keeps until the completion.
        let r = unsafe { super::shim::oxt_ibv_post_recv(qp.as_ptr(), &mut wr, &mut bad) };
        if r != 0 {
            return Err(RdmaError::code("ibv_post_recv", r));
        }
        Ok(())
    }

    /// Posts `wrs` as one chain, in order.
    pub fn post_send(&self, wrs: &[SendWr]) -> Result<(), RdmaError> {
        let qp = self.qp()?;
        if wrs.is_empty() {
            return Ok(());
        }
        // Chains are short (a SEND, or a few RDMA READs/WRITEs before it): on
        // the stack, without an allocation per post.
        let mut sges: SmallVec<[ffi::ibv_sge; 8]> = wrs
            .iter()
            .map(|w| ffi::ibv_sge {
                addr: w.local_addr,
                length: w.len,
                lkey: w.lkey,
            })
            .collect();
        // SAFETY: ibv_send_wr is plain old data; zero is valid.
        let zero: ffi::ibv_send_wr = unsafe { std::mem::zeroed() };
        let mut raw: SmallVec<[ffi::ibv_send_wr; 8]> = smallvec::smallvec![zero; wrs.len()];
        for (i, w) in wrs.iter().enumerate() {
            let r = &mut raw[i];
            r.wr_id = w.wr_id;
            r.sg_list = &mut sges[i];
            r.num_sge = i32::from(w.len != 0);
            r.opcode = match w.op {
                SendOp::Send => ffi::IBV_WR_SEND,
                SendOp::RdmaRead(_) => ffi::IBV_WR_RDMA_READ,
                SendOp::RdmaWrite(_) => ffi::IBV_WR_RDMA_WRITE,
            };
            r.send_flags = if w.signaled {
                ffi::IBV_SEND_SIGNALED
            } else {
                0
            };
            if let SendOp::RdmaRead(remote) | SendOp::RdmaWrite(remote) = w.op {
                r.wr.rdma = ffi::ibv_send_wr__bindgen_ty_2__bindgen_ty_1 {
                    remote_addr: remote.addr,
                    rkey: remote.rkey,
                };
            }
        }
        for i in 1..raw.len() {
            let next: *mut ffi::ibv_send_wr = &mut raw[i];
            raw[i - 1].next = next;
        }
        let mut bad: *mut ffi::ibv_send_wr = std::ptr::null_mut();
        // SAFETY: the QP is alive; the chain and its SGEs live across the call
        // (the provider copies them); the local buffers belong to registered
        // regions the caller keeps until the chain's completions.
        let r = unsafe { super::shim::oxt_ibv_post_send(qp.as_ptr(), raw.as_mut_ptr(), &mut bad) };
        if r != 0 {
            return Err(RdmaError::code("ibv_post_send", r));
        }
        Ok(())
    }

    /// Destroys the QP now (before the CQs and buffers its queues point to).
    pub fn destroy_qp(&mut self) {
        if self.qp.take().is_some() {
            // SAFETY: the id is alive and has a QP made by rdma_create_qp.
            unsafe { ffi::rdma_destroy_qp(self.ptr.as_ptr()) };
        }
    }
}

impl Drop for CmId {
    fn drop(&mut self) {
        self.destroy_qp();
        // SAFETY: we own the id; its events were all acknowledged when read.
        unsafe { ffi::rdma_destroy_id(self.ptr.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_round_trip() {
        for a in [
            "10.0.2.15:5555".parse::<SocketAddr>().unwrap(),
            "[fe80::1%2]:5555".parse().unwrap(),
            "0.0.0.0:0".parse().unwrap(),
        ] {
            let ss = to_sockaddr(a);
            // SAFETY: `ss` is a sockaddr_storage written by to_sockaddr.
            let back = unsafe { from_sockaddr((&ss as *const libc::sockaddr_storage).cast()) };
            assert_eq!(back, Some(a));
        }
        // SAFETY: all zeroes is a valid sockaddr_storage (family AF_UNSPEC).
        let zero: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let none = unsafe { from_sockaddr((&zero as *const libc::sockaddr_storage).cast()) };
        assert_eq!(none, None);
    }
}

#[cfg(test)]
mod device_tests {
    use super::*;

    /// Without an RDMA device (this host has none; the guest tests have rxe)
    /// every step fails with an error that says which call and why, and
    /// nothing panics or leaks.
    #[test]
    fn without_a_device_errors_name_the_call() {
        match EventChannel::new() {
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.starts_with("rdma_create_event_channel: "), "{msg}");
                assert!(e.raw_os_error().is_some(), "{e:?}");
            }
            Ok(ch) => {
                assert!(ch.fd() >= 0);
                assert!(
                    ch.get_event().unwrap().is_none(),
                    "no events without a listener"
                );
                let mut id = CmId::new(&ch, 7).unwrap();
                // 192.0.2.1 (TEST-NET-1) is on no interface of any test host.
                let addr: SocketAddr = "192.0.2.1:5555".parse().unwrap();
                let e = id.bind(addr).unwrap_err();
                assert!(matches!(e, RdmaError::NoDevice { .. }), "{e:?}");
                assert!(e.to_string().contains("192.0.2.1:5555"), "{e}");
                assert!(matches!(id.post_recv(1, 0, 0, 0), Err(RdmaError::NoQp)));
                assert!(matches!(id.alloc_pd(), Err(RdmaError::NoVerbs)));
            }
        }
    }
}
