//! One descriptor chain of a virtio-scsi queue, checked and typed. `walk` reads the
//! chain's shape — readable descriptors, then writable ones, all inside guest memory,
//! a bounded number of them — and `parse_cmd` / `parse_ctrl` split it into the
//! request header, the response area and the data. Headers and responses may be
//! split over descriptors in any way: they are gathered and scattered byte-wise.
//! The data stays where the guest put it: [`GuestBuf`] hands the engine iovecs that
//! point into the mapped guest memory.

use std::sync::Arc;

use engine::DataBuf;
use smallvec::SmallVec;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::wire::{self, CmdReq, CtrlError, CtrlReq, HeaderError};

/// Guest memory as the daemon maps it (no dirty-page bitmap: no live migration).
pub type GuestMem = GuestMemoryMmap<()>;

/// Most descriptors accepted in one chain (QEMU tells the guest `seg_max` =
/// queue size − 2; 1024 is our largest queue). Bounds the memory one request takes.
pub const MAX_DESCRIPTORS: usize = 1024;

/// A run of guest-physical memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestRange {
    pub addr: GuestAddress,
    pub len: u32,
}

/// Ranges of one part of a chain. A request has a few descriptors (header,
/// response, a data buffer or two): they are held inline, so parsing a chain
/// allocates nothing; longer chains spill to the heap.
pub type Ranges = SmallVec<[GuestRange; 4]>;

/// Why a chain was refused. Each variant is one violation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("descriptor {index} is device-readable but follows a device-writable one")]
    WrongDirection { index: usize },
    #[error("the chain has more than {max} descriptors")]
    TooManyDescriptors { max: usize },
    #[error("{addr:#x} ({len} bytes) is not inside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("the request needs {need} device-readable bytes, the chain has {have}")]
    HeaderTooShort { have: u64, need: usize },
    #[error("the response needs {need} device-writable bytes, the chain has {have}")]
    ResponseTooShort { have: u64, need: usize },
    #[error("data in both directions ({out_len} bytes out, {in_len} bytes in)")]
    Bidirectional { out_len: u64, in_len: u64 },
    #[error("request header: {0}")]
    Header(#[from] HeaderError),
    #[error("control request: {0}")]
    Ctrl(#[from] CtrlError),
}

/// A chain's descriptors by direction, each inside guest memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chain {
    pub readable: Ranges,
    pub writable: Ranges,
}

impl Chain {
    fn total(r: &[GuestRange]) -> u64 {
        r.iter().map(|g| u64::from(g.len)).sum()
    }
}

/// Checks the shape of a chain: readable descriptors first, then writable ones,
/// at most [`MAX_DESCRIPTORS`]. Zero-length descriptors are skipped. Whether the
/// ranges are inside guest memory is checked by the parsers, response area first,
/// so that a request with bad data can still be answered. (virtio-queue already
/// follows indirect tables, stops at a `next` outside the table, and bounds the
/// chain to 4 GiB.)
pub fn walk<I>(descs: I) -> Result<Chain, RequestError>
where
    I: IntoIterator<Item = (GuestAddress, u32, bool)>,
{
    let mut chain = Chain::default();
    for (index, (addr, len, write_only)) in descs.into_iter().enumerate() {
        if index >= MAX_DESCRIPTORS {
            return Err(RequestError::TooManyDescriptors {
                max: MAX_DESCRIPTORS,
            });
        }
        if !write_only && !chain.writable.is_empty() {
            return Err(RequestError::WrongDirection { index });
        }
        if len == 0 {
            continue;
        }
        let r = GuestRange { addr, len };
        if write_only {
            chain.writable.push(r);
        } else {
            chain.readable.push(r);
        }
    }
    Ok(chain)
}

/// The host mapping of `r` if it lies inside one memory region (one region
/// lookup: the usual case); `None` if it crosses regions or leaves memory.
fn one_region(mem: &GuestMem, r: &GuestRange) -> Option<(*mut u8, usize)> {
    let n = usize::try_from(r.len).ok()?;
    let slice = GuestMemoryBackend::get_slice(mem, r.addr, n).ok()?;
    Some((slice.ptr_guard_mut().as_ptr(), n))
}

/// Checks that every range lies wholly inside guest memory.
pub fn check_memory(mem: &GuestMem, ranges: &[GuestRange]) -> Result<(), RequestError> {
    for r in ranges {
        let fits = one_region(mem, r).is_some()
            || usize::try_from(r.len)
                .is_ok_and(|n| GuestMemoryBackend::check_range(mem, r.addr, n));
        if !fits {
            return Err(RequestError::OutsideMemory {
                addr: r.addr.0,
                len: r.len,
            });
        }
    }
    Ok(())
}

/// Splits `ranges` after `n` bytes; `None` if they hold fewer.
pub fn split_at(ranges: &[GuestRange], n: usize) -> Option<(Ranges, Ranges)> {
    let mut head = Ranges::new();
    let mut tail = Ranges::new();
    let mut need = u64::try_from(n).ok()?;
    for r in ranges {
        let len = u64::from(r.len);
        if need == 0 {
            tail.push(*r);
        } else if len <= need {
            head.push(*r);
            need -= len;
        } else {
            // `need` < `r.len`, so both fit in u32.
            let first = u32::try_from(need).ok()?;
            head.push(GuestRange {
                addr: r.addr,
                len: first,
            });
            tail.push(GuestRange {
                addr: r.addr.checked_add(need)?,
                len: r.len - first,
            });
            need = 0;
        }
    }
    (need == 0).then_some((head, tail))
}

/// Copies guest memory described by `ranges` into `out` (gathering a header).
pub fn gather(mem: &GuestMem, ranges: &[GuestRange], out: &mut [u8]) -> bool {
    let mut at = 0usize;
    for r in ranges {
        let n = (r.len as usize).min(out.len() - at);
        if n == 0 {
            break;
        }
        let dst = &mut out[at..at + n];
        match GuestMemoryBackend::get_slice(mem, r.addr, n) {
            // One region (the usual case): one lookup and a copy.
            Ok(slice) => {
                if slice.copy_to(dst) != n {
                    return false;
                }
            }
            Err(_) => {
                if mem.read_slice(dst, r.addr).is_err() {
                    return false;
                }
            }
        }
        at += n;
    }
    at == out.len()
}

/// Copies `src` into guest memory described by `ranges` (scattering a response);
/// returns the bytes written.
pub fn scatter(mem: &GuestMem, ranges: &[GuestRange], src: &[u8]) -> usize {
    let mut at = 0usize;
    for r in ranges {
        let n = (r.len as usize).min(src.len() - at);
        if n == 0 {
            break;
        }
        let part = &src[at..at + n];
        match GuestMemoryBackend::get_slice(mem, r.addr, n) {
            Ok(slice) => slice.copy_from(part),
            Err(_) => {
                if mem.write_slice(part, r.addr).is_err() {
                    break;
                }
            }
        }
        at += n;
    }
    at
}

/// A command request, checked.
#[derive(Debug)]
pub struct CmdRequest {
    pub req: CmdReq,
    /// Exactly [`wire::CMD_RESP_LEN`] bytes.
    pub resp: Ranges,
    pub data_out: Ranges,
    pub data_in: Ranges,
}

/// A chain that cannot be executed; with a response area it is answered
/// VIRTIO_SCSI_S_FAILURE, without one it is returned to the guest unanswered.
#[derive(Debug)]
pub struct Rejected {
    pub resp: Option<Ranges>,
    pub error: RequestError,
}

/// Splits a request-queue chain: `virtio_scsi_cmd_req` then data-out (readable),
/// `virtio_scsi_cmd_resp` then data-in (writable).
pub fn parse_cmd(chain: Chain, mem: &GuestMem) -> Result<CmdRequest, Rejected> {
    let Some((resp, data_in)) = split_at(&chain.writable, wire::CMD_RESP_LEN) else {
        return Err(Rejected {
            resp: None,
            error: RequestError::ResponseTooShort {
                have: Chain::total(&chain.writable),
                need: wire::CMD_RESP_LEN,
            },
        });
    };
    if let Err(error) = check_memory(mem, &resp) {
        return Err(Rejected { resp: None, error });
    }
    let reject = |error| Rejected {
        resp: Some(resp.clone()),
        error,
    };
    check_memory(mem, &chain.readable)
        .and_then(|()| check_memory(mem, &data_in))
        .map_err(reject)?;
    let Some((hdr, data_out)) = split_at(&chain.readable, wire::CMD_REQ_LEN) else {
        return Err(reject(RequestError::HeaderTooShort {
            have: Chain::total(&chain.readable),
            need: wire::CMD_REQ_LEN,
        }));
    };
    let mut b = [0u8; wire::CMD_REQ_LEN];
    if !gather(mem, &hdr, &mut b) {
        // `walk` checked every range: memory went away under us.
        return Err(reject(RequestError::HeaderTooShort {
            have: 0,
            need: wire::CMD_REQ_LEN,
        }));
    }
    let req = CmdReq::parse(&b).map_err(|e| reject(e.into()))?;
    let (out_len, in_len) = (Chain::total(&data_out), Chain::total(&data_in));
    if out_len > 0 && in_len > 0 {
        return Err(reject(RequestError::Bidirectional { out_len, in_len }));
    }
    Ok(CmdRequest {
        req,
        resp,
        data_out,
        data_in,
    })
}

/// A control request, checked: the request and where its response goes.
#[derive(Debug)]
pub struct CtrlRequest {
    pub req: CtrlReq,
    pub resp: Ranges,
}

/// Splits a control-queue chain: the request (its type says how long) readable, its
/// response writable. Unknown types and short chains are returned unanswered (the
/// response size depends on the type).
pub fn parse_ctrl(chain: Chain, mem: &GuestMem) -> Result<CtrlRequest, Rejected> {
    let unanswered = |error| Rejected { resp: None, error };
    check_memory(mem, &chain.readable)
        .and_then(|()| check_memory(mem, &chain.writable))
        .map_err(unanswered)?;
    let mut kind = [0u8; wire::CTRL_TYPE_LEN];
    let Some((k, _)) = split_at(&chain.readable, wire::CTRL_TYPE_LEN) else {
        return Err(unanswered(RequestError::HeaderTooShort {
            have: Chain::total(&chain.readable),
            need: wire::CTRL_TYPE_LEN,
        }));
    };
    if !gather(mem, &k, &mut kind) {
        return Err(unanswered(RequestError::HeaderTooShort {
            have: 0,
            need: wire::CTRL_TYPE_LEN,
        }));
    }
    let kind = CtrlReq::kind(&kind).map_err(|e| unanswered(e.into()))?;
    let need = CtrlReq::needed(kind).ok_or_else(|| unanswered(CtrlError::Type(kind).into()))?;
    let resp_len = if need == wire::TMF_REQ_LEN {
        wire::TMF_RESP_LEN
    } else {
        wire::AN_RESP_LEN
    };
    let Some((hdr, _)) = split_at(&chain.readable, need) else {
        return Err(unanswered(RequestError::HeaderTooShort {
            have: Chain::total(&chain.readable),
            need,
        }));
    };
    let Some((resp, _)) = split_at(&chain.writable, resp_len) else {
        return Err(unanswered(RequestError::ResponseTooShort {
            have: Chain::total(&chain.writable),
            need: resp_len,
        }));
    };
    let mut b = vec![0u8; need];
    if !gather(mem, &hdr, &mut b) {
        return Err(unanswered(RequestError::HeaderTooShort { have: 0, need }));
    }
    let req = CtrlReq::parse(&b).map_err(|e| unanswered(e.into()))?;
    Ok(CtrlRequest { req, resp })
}

/// One piece of a [`GuestBuf`]: where it is for the guest and in our mapping.
#[derive(Debug)]
struct Seg {
    guest: GuestAddress,
    host: *mut u8,
    len: usize,
}

/// A command's data buffer in guest memory: the data-in or data-out descriptors,
/// resolved to host addresses in the daemon's mapping of guest memory.
pub struct GuestBuf {
    /// Keeps the mapping alive (see the SAFETY note on `Send`).
    mem: Arc<GuestMem>,
    /// Inline for the usual buffer of a few descriptors.
    segs: SmallVec<[Seg; 4]>,
    len: usize,
}

// SAFETY: a `GuestBuf` holds raw pointers into the mmap of guest memory, and an
// `Arc` of that `GuestMemoryMmap`. The mapping is unmapped only when the last `Arc`
// is dropped (a new SET_MEM_TABLE makes a new `GuestMemoryMmap`; the old one lives
// on in the buffers still in flight), so the pointers stay valid for as long as the
// buffer exists, on whichever thread it is. The pointers carry no thread affinity
// (vm-memory's `xen` feature, whose mappings are transient, is not enabled).
unsafe impl Send for GuestBuf {}

impl std::fmt::Debug for GuestBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestBuf")
            .field("segs", &self.segs.len())
            .field("len", &self.len)
            .finish()
    }
}

impl GuestBuf {
    /// Resolves `ranges` (already checked by [`walk`]) to host memory. A range that
    /// spans two memory regions becomes two segments.
    pub fn new(mem: Arc<GuestMem>, ranges: &[GuestRange]) -> Result<Self, RequestError> {
        let mut segs = SmallVec::new();
        let mut len = 0usize;
        for r in ranges {
            if let Some((host, n)) = one_region(&mem, r) {
                segs.push(Seg {
                    guest: r.addr,
                    host,
                    len: n,
                });
                len = len.checked_add(n).ok_or(RequestError::OutsideMemory {
                    addr: r.addr.0,
                    len: r.len,
                })?;
                continue;
            }
            let outside = RequestError::OutsideMemory {
                addr: r.addr.0,
                len: r.len,
            };
            let mut guest = r.addr;
            for slice in GuestMemoryBackend::get_slices(&*mem, r.addr, r.len as usize) {
                let slice = slice.map_err(|_| outside.clone())?;
                let n = slice.len();
                segs.push(Seg {
                    guest,
                    host: slice.ptr_guard_mut().as_ptr(),
                    len: n,
                });
                guest = guest.checked_add(n as u64).ok_or(outside.clone())?;
                len = len.checked_add(n).ok_or(outside.clone())?;
            }
        }
        Ok(GuestBuf { mem, segs, len })
    }

    /// Calls `f(segment, offset in segment, bytes)` for the part of each segment
    /// inside `[offset, offset + len)`.
    fn each(&self, offset: usize, len: usize, mut f: impl FnMut(&Seg, usize, usize) -> bool) {
        let end = offset.saturating_add(len).min(self.len);
        let mut base = 0usize;
        for s in &self.segs {
            let (lo, hi) = (base, base + s.len);
            base = hi;
            if hi <= offset {
                continue;
            }
            if lo >= end {
                break;
            }
            let from = offset.max(lo) - lo;
            let to = end.min(hi) - lo;
            if !f(s, from, to - from) {
                break;
            }
        }
    }
}

impl DataBuf for GuestBuf {
    fn len(&self) -> usize {
        self.len
    }

    fn iovecs(&mut self, offset: usize, len: usize, out: &mut Vec<libc::iovec>) {
        // The iovecs point into the guest memory mapping that `self.mem` keeps mapped
        // (see the SAFETY note on `Send`); the engine uses them only while this
        // buffer lives and the command is in flight.
        self.each(offset, len, |s, at, n| {
            out.push(libc::iovec {
                iov_base: s.host.wrapping_add(at).cast(),
                iov_len: n,
            });
            true
        });
    }

    fn write_at(&mut self, offset: usize, src: &[u8]) -> usize {
        let mut done = 0usize;
        let mem = self.mem.clone();
        self.each(offset, src.len(), |s, at, n| {
            let ok = mem
                .write_slice(&src[done..done + n], s.guest.unchecked_add(at as u64))
                .is_ok();
            if ok {
                done += n;
            }
            ok
        });
        done
    }

    fn read_at(&self, offset: usize, dst: &mut [u8]) -> usize {
        let mut done = 0usize;
        let want = dst.len();
        self.each(offset, want, |s, at, n| {
            let ok = self
                .mem
                .read_slice(&mut dst[done..done + n], s.guest.unchecked_add(at as u64))
                .is_ok();
            if ok {
                done += n;
            }
            ok
        });
        done
    }
}
