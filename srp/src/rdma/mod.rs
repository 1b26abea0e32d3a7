//! A thin layer over librdmacm and libibverbs: just what an SRP target needs.
//!
//! [`ffi`] is bindgen's output over the system headers (rdma-core 44), committed
//! so that builds need no libclang (`regen.sh` makes it again); `shim.c` exports
//! the verbs the headers define as static inline functions (`ibv_post_send`,
//! `ibv_post_recv`, `ibv_poll_cq`, `ibv_req_notify_cq`) and the sizes and
//! offsets the layout tests compare with the Rust structs.
//!
//! On top sit owning wrappers: [`EventChannel`] (the CM's event queue, its fd
//! non-blocking), [`CmId`] (bind, listen, accept/reject with private data,
//! disconnect, and the QP made on it with `rdma_create_qp`), [`Pd`], [`Mr`]
//! (a zeroed, page-aligned region registered for local write and whatever else
//! the caller asks), [`CompChannel`] and [`Cq`]. Objects that others depend on
//! are shared through `Arc`, so a CQ cannot be destroyed under its QP nor an
//! event channel under its ids.

#[allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    dead_code,
    unreachable_pub,
    clippy::all,
    clippy::undocumented_unsafe_blocks,
    clippy::missing_safety_doc
)]
pub(crate) mod ffi;

mod cm;
mod verbs;

#[cfg(test)]
mod layout_tests;

pub use cm::{AcceptParams, CmEvent, CmEventKind, CmId, EventChannel};
pub use verbs::{
    CompChannel, Cq, CqId, DeviceLimits, Mr, Pd, QpCaps, RemoteAddr, SendOp, SendWr, Wc, WcOpcode,
};

use thiserror::Error;

/// `Mr::new`'s `remote` access bits: the peer may read the region with RDMA
/// READ / write it with RDMA WRITE (an initiator's data buffers).
pub const ACCESS_REMOTE_READ: u32 = ffi::IBV_ACCESS_REMOTE_READ;
pub const ACCESS_REMOTE_WRITE: u32 = ffi::IBV_ACCESS_REMOTE_WRITE;

/// What went wrong in a verbs or CM call.
#[derive(Debug, Error)]
pub enum RdmaError {
    /// A call failed with an errno.
    #[error("{op}: {source}")]
    Os {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// `rdma_bind_addr` found no RDMA device for the address (no rxe link on
    /// the interface, or no device at all).
    #[error("bind {addr}: no RDMA device serves this address ({source})")]
    NoDevice {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Private data longer than the CM carries (255 bytes at most; less on IB).
    #[error("private data of {0} bytes is too long")]
    PrivateDataTooLong(usize),
    /// The id has no device yet (it is not bound, or not from a connect request).
    #[error("the CM id has no device")]
    NoVerbs,
    /// The id has no QP.
    #[error("the CM id has no QP")]
    NoQp,
    /// A size that does not fit the verbs API's integer types.
    #[error("{what} of {value} is out of range")]
    OutOfRange { what: &'static str, value: usize },
}

impl RdmaError {
    /// The error from `errno`, for calls that return -1 and set it.
    fn errno(op: &'static str) -> Self {
        RdmaError::Os {
            op,
            source: std::io::Error::last_os_error(),
        }
    }

    /// The error from a returned errno value (the verbs post calls).
    fn code(op: &'static str, code: i32) -> Self {
        RdmaError::Os {
            op,
            source: std::io::Error::from_raw_os_error(code),
        }
    }

    /// The errno, if there is one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            RdmaError::Os { source, .. } | RdmaError::NoDevice { source, .. } => {
                source.raw_os_error()
            }
            _ => None,
        }
    }
}

/// Sets `O_NONBLOCK` on a descriptor the library owns.
fn set_nonblocking(fd: std::os::fd::RawFd, op: &'static str) -> Result<(), RdmaError> {
    // SAFETY: fcntl on a descriptor number has no memory effects; a bad fd gives
    // EBADF, which we report.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(RdmaError::errno(op));
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(RdmaError::errno(op));
    }
    Ok(())
}

/// The C shim (shim.c).
mod shim {
    use super::ffi;
    use std::ffi::c_int;

    extern "C" {
        pub fn oxt_ibv_post_send(
            qp: *mut ffi::ibv_qp,
            wr: *mut ffi::ibv_send_wr,
            bad_wr: *mut *mut ffi::ibv_send_wr,
        ) -> c_int;
        pub fn oxt_ibv_post_recv(
            qp: *mut ffi::ibv_qp,
            wr: *mut ffi::ibv_recv_wr,
            bad_wr: *mut *mut ffi::ibv_recv_wr,
        ) -> c_int;
        pub fn oxt_ibv_poll_cq(
            cq: *mut ffi::ibv_cq,
            num_entries: c_int,
            wc: *mut ffi::ibv_wc,
        ) -> c_int;
        pub fn oxt_ibv_req_notify_cq(cq: *mut ffi::ibv_cq, solicited_only: c_int) -> c_int;
        #[cfg(test)]
        pub fn oxt_layout_count() -> usize;
        #[cfg(test)]
        pub fn oxt_layout(i: usize) -> usize;
    }
}
