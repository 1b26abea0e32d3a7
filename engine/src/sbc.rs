//! SBC-3 block commands (being completed): READ, WRITE, READ CAPACITY, SYNCHRONIZE
//! CACHE.

use backends::IoOp;

use crate::exec::{CmdCtx, Exec, ExecResult, IoBuf, LbaRange, SingleIo};
use crate::lun::Lun;
use crate::opcodes::{flags, OpInfo};
use crate::sense::{asc, CmdError, Sense};

fn be16(b: &[u8], at: usize) -> u64 {
    u64::from(u16::from_be_bytes([b[at], b[at + 1]]))
}
fn be32(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]))
}
fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// LBA OUT OF RANGE unless `[lba, lba + blocks)` lies inside the LUN.
pub(crate) fn check_range(lun: &Lun, lba: u64, blocks: u64) -> Result<(), CmdError> {
    match lba.checked_add(blocks) {
        Some(end) if end <= lun.num_blocks() => Ok(()),
        _ => Err(Sense::illegal(asc::LBA_OUT_OF_RANGE).into()),
    }
}

/// (LBA, blocks, FUA) of a READ or WRITE CDB of any size.
fn rw_fields(cdb: &[u8]) -> (u64, u64, bool) {
    match cdb[0] {
        0x08 | 0x0a => {
            let lba = u64::from(cdb[1] & 0x1f) << 16 | be16(cdb, 2);
            // READ(6)/WRITE(6): 0 blocks means 256.
            let n = if cdb[4] == 0 { 256 } else { u64::from(cdb[4]) };
            (lba, n, false)
        }
        0x28 | 0x2a => (be32(cdb, 2), be16(cdb, 7), cdb[1] & 0x08 != 0),
        0xa8 | 0xaa => (be32(cdb, 2), be32(cdb, 6), cdb[1] & 0x08 != 0),
        _ => (be64(cdb, 2), be32(cdb, 10), cdb[1] & 0x08 != 0),
    }
}

fn read_write(ctx: &mut CmdCtx<'_>, write: bool) -> ExecResult {
    let (lba, blocks, fua) = rw_fields(ctx.cdb);
    check_range(ctx.lun, lba, blocks)?;
    let bs = u64::from(ctx.lun.block_size());
    let bytes = blocks * bs;
    let wanted = u32::try_from(bytes).map_err(|_| Sense::invalid_cdb_field(7, None))?;
    if blocks == 0 {
        return Ok(Exec::Good(0));
    }
    let len = (bytes as usize).min(ctx.data.len());
    let offset = lba * bs;
    let op = if write {
        IoOp::Write { offset, fua }
    } else {
        IoOp::Read { offset }
    };
    Ok(Exec::Job(Box::new(SingleIo {
        op,
        buf: IoBuf::Data { offset: 0, len },
        wanted,
        range: write.then_some(LbaRange {
            lba,
            blocks,
            exclusive: false,
        }),
        write,
    })))
}

fn read(ctx: &mut CmdCtx<'_>) -> ExecResult {
    read_write(ctx, false)
}

fn write(ctx: &mut CmdCtx<'_>) -> ExecResult {
    read_write(ctx, true)
}

fn read_capacity10(ctx: &mut CmdCtx<'_>) -> ExecResult {
    let last = ctx.lun.num_blocks().saturating_sub(1);
    let mut d = vec![0u8; 8];
    d[0..4].copy_from_slice(&u32::try_from(last).unwrap_or(u32::MAX).to_be_bytes());
    d[4..8].copy_from_slice(&ctx.lun.block_size().to_be_bytes());
    Ok(Exec::Data(d))
}

fn read_capacity16(ctx: &mut CmdCtx<'_>) -> ExecResult {
    let alloc = be32(ctx.cdb, 10) as usize;
    let last = ctx.lun.num_blocks().saturating_sub(1);
    let mut d = vec![0u8; 32];
    d[0..8].copy_from_slice(&last.to_be_bytes());
    d[8..12].copy_from_slice(&ctx.lun.block_size().to_be_bytes());
    if ctx.lun.config.thin {
        d[14] = 0x80 | 0x40; // LBPME, LBPRZ
    }
    d.truncate(alloc);
    Ok(Exec::Data(d))
}

fn sync_cache(ctx: &mut CmdCtx<'_>) -> ExecResult {
    let _ = ctx;
    Ok(Exec::Job(Box::new(SingleIo {
        op: IoOp::Flush,
        buf: IoBuf::None,
        wanted: 0,
        range: None,
        write: true,
    })))
}

pub(crate) const OPS: &[OpInfo] = &[
    OpInfo {
        opcode: 0x25,
        service_action: None,
        name: "READ CAPACITY(10)",
        usage: &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0x07],
        handler: read_capacity10,
        flags: flags::MEDIUM,
    },
    OpInfo {
        opcode: 0x28,
        service_action: None,
        name: "READ(10)",
        usage: &[0x28, 0xfa, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0x07],
        handler: read,
        flags: flags::MEDIUM | flags::READS,
    },
    OpInfo {
        opcode: 0x2a,
        service_action: None,
        name: "WRITE(10)",
        usage: &[0x2a, 0xfa, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0x07],
        handler: write,
        flags: flags::MEDIUM | flags::WRITES,
    },
    OpInfo {
        opcode: 0x35,
        service_action: None,
        name: "SYNCHRONIZE CACHE(10)",
        usage: &[0x35, 0x02, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0x07],
        handler: sync_cache,
        flags: flags::MEDIUM,
    },
    OpInfo {
        opcode: 0x88,
        service_action: None,
        name: "READ(16)",
        usage: &[
            0x88, 0xfa, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            0x07,
        ],
        handler: read,
        flags: flags::MEDIUM | flags::READS,
    },
    OpInfo {
        opcode: 0x8a,
        service_action: None,
        name: "WRITE(16)",
        usage: &[
            0x8a, 0xfa, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            0x07,
        ],
        handler: write,
        flags: flags::MEDIUM | flags::WRITES,
    },
    OpInfo {
        opcode: 0x9e,
        service_action: Some(0x10),
        name: "READ CAPACITY(16)",
        usage: &[
            0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x07,
        ],
        handler: read_capacity16,
        flags: flags::MEDIUM,
    },
];
