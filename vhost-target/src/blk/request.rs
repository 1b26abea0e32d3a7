//! One descriptor chain of a virtio-blk request queue, checked and typed, and what
//! the engine is asked to do for it. [`parse`] splits the chain (shape already
//! checked by [`crate::request::walk`]): the 16-byte header at the front of the
//! device-readable part, the status byte at the very end of the device-writable
//! part, the data in between. [`plan`] turns a request into one SCSI command (or
//! an immediate answer) for a LUN of a given geometry; it does no I/O.

use vm_memory::Bytes;

use smallvec::SmallVec;

use crate::request::{
    check_memory, gather, split_at, Chain, GuestMem, GuestRange, Ranges, RequestError,
};

use super::wire::{self, Header, Segment, SegmentError, SECTOR};

/// Why a chain was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BlkError {
    #[error("chain: {0}")]
    Chain(#[from] RequestError),
    #[error("no device-writable status byte")]
    NoStatus,
    #[error("type {kind}: data in the wrong direction")]
    Direction { kind: u32 },
    #[error("sector {sector}: not a whole number of {block_size}-byte blocks, or past 2^64 bytes")]
    Unaligned { sector: u64, block_size: u32 },
    #[error("{len} bytes of data: not a whole number of {block_size}-byte blocks")]
    Length { len: u64, block_size: u32 },
    #[error("{len} bytes of data: more than one command carries")]
    TooLong { len: u64 },
    #[error("segments: {0}")]
    Segments(#[from] SegmentError),
    #[error("segment flags {flags:#x} not supported for type {kind}")]
    SegmentFlags { kind: u32, flags: u32 },
}

/// A checked request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlkRequest {
    pub header: Header,
    /// The status byte.
    pub status: GuestRange,
    /// Device-readable data after the header.
    pub data_out: Ranges,
    /// Device-writable data before the status byte.
    pub data_in: Ranges,
}

/// A chain that cannot be executed: answered IOERR if it has a status byte,
/// returned unanswered (used length 0) otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub status: Option<GuestRange>,
    pub error: BlkError,
}

fn total(r: &[GuestRange]) -> u64 {
    r.iter().map(|g| u64::from(g.len)).sum()
}

/// Splits a chain into header, data and status byte.
pub fn parse(chain: Chain, mem: &GuestMem) -> Result<BlkRequest, Rejected> {
    let unanswered = |error| Rejected {
        status: None,
        error,
    };
    let writable = total(&chain.writable);
    let Some(body) = writable
        .checked_sub(1)
        .and_then(|n| usize::try_from(n).ok())
    else {
        return Err(unanswered(BlkError::NoStatus));
    };
    let Some((data_in, status)) = split_at(&chain.writable, body) else {
        return Err(unanswered(BlkError::NoStatus));
    };
    let Some(&status) = status.first() else {
        return Err(unanswered(BlkError::NoStatus));
    };
    check_memory(mem, &[status]).map_err(|e| unanswered(e.into()))?;
    let reject = |error| Rejected {
        status: Some(status),
        error,
    };
    check_memory(mem, &chain.readable)
        .and_then(|()| check_memory(mem, &data_in))
        .map_err(|e| reject(e.into()))?;
    let Some((hdr, data_out)) = split_at(&chain.readable, wire::HEADER_LEN) else {
        return Err(reject(
            RequestError::HeaderTooShort {
                have: total(&chain.readable),
                need: wire::HEADER_LEN,
            }
            .into(),
        ));
    };
    let mut b = [0u8; wire::HEADER_LEN];
    if !gather(mem, &hdr, &mut b) {
        return Err(reject(
            RequestError::HeaderTooShort {
                have: 0,
                need: wire::HEADER_LEN,
            }
            .into(),
        ));
    }
    Ok(BlkRequest {
        header: Header::parse(&b),
        status,
        data_out,
        data_in,
    })
}

/// What the device knows of its LUN when it plans a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub block_size: u32,
    /// The driver turned the write cache off (`writeback` 0): writes carry FUA.
    pub write_through: bool,
    /// Thin LUN: DISCARD and WRITE_ZEROES may deallocate.
    pub thin: bool,
    /// Most segments of one DISCARD (UNMAP block descriptors).
    pub max_discard_seg: u32,
    /// Most bytes one READ or WRITE moves.
    pub max_transfer: u64,
}

/// Where a command's data comes from or goes to.
#[derive(Debug, PartialEq, Eq)]
pub enum PlanData {
    None,
    /// The request's own data descriptors (zero copy).
    Guest(Ranges),
    /// A parameter list built here (UNMAP's descriptors, WRITE SAME's block).
    Bytes(Vec<u8>),
}

/// A CDB the plans build (10 or 16 bytes): kept inline, no allocation per
/// request.
pub type CdbBytes = SmallVec<[u8; 16]>;

/// What to do with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// One SCSI command; `data_in` when it reads into the guest.
    Scsi {
        cdb: CdbBytes,
        data: PlanData,
        data_in: bool,
    },
    /// Answer with the LUN's serial number.
    GetId,
    /// Answer at once with this status.
    Answer(u8),
}

fn lba(sector: u64, block_size: u32) -> Result<u64, BlkError> {
    let bs = u64::from(block_size);
    sector
        .checked_mul(SECTOR)
        .filter(|b| b.is_multiple_of(bs))
        .map(|b| b / bs)
        .ok_or(BlkError::Unaligned { sector, block_size })
}

fn blocks(len: u64, geo: &Geometry) -> Result<u32, BlkError> {
    let bs = u64::from(geo.block_size);
    if !len.is_multiple_of(bs) {
        return Err(BlkError::Length {
            len,
            block_size: geo.block_size,
        });
    }
    if len > geo.max_transfer {
        return Err(BlkError::TooLong { len });
    }
    u32::try_from(len / bs).map_err(|_| BlkError::TooLong { len })
}

fn cdb16(opcode: u8, flags: u8, lba: u64, count: u32) -> CdbBytes {
    let mut c = CdbBytes::from_elem(0, 16);
    c[0] = opcode;
    c[1] = flags;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&count.to_be_bytes());
    c
}

/// READ(16), WRITE(16), SYNCHRONIZE CACHE(16), UNMAP, WRITE SAME(16).
const READ_16: u8 = 0x88;
const WRITE_16: u8 = 0x8a;
const SYNC_CACHE_16: u8 = 0x91;
const UNMAP: u8 = 0x42;
const WRITE_SAME_16: u8 = 0x93;
/// FUA bit of WRITE(16), UNMAP bit of WRITE SAME(16) (byte 1).
const FUA: u8 = 0x08;
const WS_UNMAP: u8 = 0x08;

/// Plans `req`. Segment lists are read from guest memory (`mem`); a bad request
/// is an `Err` (answered IOERR), an unknown type `Plan::Answer(UNSUPP)`.
pub fn plan(req: &BlkRequest, mem: &GuestMem, geo: &Geometry) -> Result<Plan, BlkError> {
    let kind = req.header.kind;
    let (out_len, in_len) = (total(&req.data_out), total(&req.data_in));
    match kind {
        wire::T_IN => {
            if out_len > 0 {
                return Err(BlkError::Direction { kind });
            }
            let lba = lba(req.header.sector, geo.block_size)?;
            let n = blocks(in_len, geo)?;
            Ok(Plan::Scsi {
                cdb: cdb16(READ_16, 0, lba, n),
                data: PlanData::Guest(req.data_in.clone()),
                data_in: true,
            })
        }
        wire::T_OUT => {
            if in_len > 0 {
                return Err(BlkError::Direction { kind });
            }
            let lba = lba(req.header.sector, geo.block_size)?;
            let n = blocks(out_len, geo)?;
            let flags = if geo.write_through { FUA } else { 0 };
            Ok(Plan::Scsi {
                cdb: cdb16(WRITE_16, flags, lba, n),
                data: PlanData::Guest(req.data_out.clone()),
                data_in: false,
            })
        }
        wire::T_FLUSH => Ok(Plan::Scsi {
            cdb: cdb16(SYNC_CACHE_16, 0, 0, 0),
            data: PlanData::None,
            data_in: false,
        }),
        wire::T_GET_ID => {
            if in_len == 0 || out_len > 0 {
                return Err(BlkError::Direction { kind });
            }
            Ok(Plan::GetId)
        }
        wire::T_DISCARD if geo.thin => {
            let segs = segments(req, mem, geo.max_discard_seg)?;
            unmap(&segs, geo)
        }
        wire::T_WRITE_ZEROES => {
            let segs = segments(req, mem, 1)?;
            let s = segs[0];
            let bad_flags = s.flags & !wire::SEG_F_UNMAP;
            if bad_flags != 0 {
                return Err(BlkError::SegmentFlags {
                    kind,
                    flags: s.flags,
                });
            }
            let lba = lba(s.sector, geo.block_size)?;
            let len = u64::from(s.num_sectors) * SECTOR;
            let n = blocks_any(len, geo)?;
            if n == 0 {
                // WRITE SAME with no blocks means "to the end of the medium".
                return Err(BlkError::Length {
                    len: 0,
                    block_size: geo.block_size,
                });
            }
            let unmap = s.flags & wire::SEG_F_UNMAP != 0 && geo.thin;
            let block = usize::try_from(geo.block_size).unwrap_or(512);
            Ok(Plan::Scsi {
                cdb: cdb16(WRITE_SAME_16, if unmap { WS_UNMAP } else { 0 }, lba, n),
                data: PlanData::Bytes(vec![0u8; block]),
                data_in: false,
            })
        }
        _ => Ok(Plan::Answer(wire::S_UNSUPP)),
    }
}

/// Blocks of a length with no transfer limit (WRITE SAME, UNMAP move no data).
fn blocks_any(len: u64, geo: &Geometry) -> Result<u32, BlkError> {
    let bs = u64::from(geo.block_size);
    if !len.is_multiple_of(bs) {
        return Err(BlkError::Length {
            len,
            block_size: geo.block_size,
        });
    }
    u32::try_from(len / bs).map_err(|_| BlkError::TooLong { len })
}

/// The segments of a DISCARD or WRITE_ZEROES request (device-readable data).
fn segments(req: &BlkRequest, mem: &GuestMem, max: u32) -> Result<Vec<Segment>, BlkError> {
    let kind = req.header.kind;
    if !req.data_in.is_empty() {
        return Err(BlkError::Direction { kind });
    }
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    let len = total(&req.data_out);
    let limit = max.saturating_mul(wire::SEGMENT_LEN);
    let n = usize::try_from(len)
        .ok()
        .filter(|&n| n <= limit)
        .ok_or(SegmentError::TooMany {
            count: usize::try_from(len / 16).unwrap_or(usize::MAX),
            max,
        })?;
    let mut b = vec![0u8; n];
    if !gather(mem, &req.data_out, &mut b) {
        return Err(RequestError::HeaderTooShort { have: 0, need: n }.into());
    }
    Ok(Segment::parse_list(&b, max)?)
}

/// UNMAP with one block descriptor per segment (SBC-4 5.30).
fn unmap(segs: &[Segment], geo: &Geometry) -> Result<Plan, BlkError> {
    let mut list = vec![0u8; 8];
    for s in segs {
        if s.flags != 0 {
            return Err(BlkError::SegmentFlags {
                kind: wire::T_DISCARD,
                flags: s.flags,
            });
        }
        let lba = lba(s.sector, geo.block_size)?;
        let n = blocks_any(u64::from(s.num_sectors) * SECTOR, geo)?;
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&lba.to_be_bytes());
        d[8..12].copy_from_slice(&n.to_be_bytes());
        list.extend_from_slice(&d);
    }
    // Both lengths fit: at most `max_discard_seg` (≤ 256) descriptors.
    let descs = u16::try_from(list.len() - 8).map_err(|_| BlkError::TooLong {
        len: list.len() as u64,
    })?;
    let data_len = descs + 6;
    list[0..2].copy_from_slice(&data_len.to_be_bytes());
    list[2..4].copy_from_slice(&descs.to_be_bytes());
    let param_len = descs + 8;
    let mut cdb = CdbBytes::from_elem(0, 10);
    cdb[0] = UNMAP;
    cdb[7..9].copy_from_slice(&param_len.to_be_bytes());
    Ok(Plan::Scsi {
        cdb,
        data: PlanData::Bytes(list),
        data_in: false,
    })
}

/// Writes the status byte; false if guest memory refused it.
pub fn write_status(mem: &GuestMem, status: GuestRange, value: u8) -> bool {
    mem.write_obj(value, status.addr).is_ok()
}

/// The GET_ID answer: the serial, cut or zero-padded to 20 bytes.
pub fn id_bytes(serial: &str) -> [u8; wire::ID_BYTES] {
    let mut b = [0u8; wire::ID_BYTES];
    for (d, s) in b.iter_mut().zip(serial.bytes()) {
        *d = s;
    }
    b
}
