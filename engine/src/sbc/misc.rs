//! READ CAPACITY (10, 16), SYNCHRONIZE CACHE (10, 16), PRE-FETCH (10, 16) and READ
//! DEFECT DATA (10, 12).

use super::limits;
use super::plan::{Phase, Plan};
use super::{be32, be64, byte_off, check_range, extent};
use crate::exec::{CmdCtx, Exec, ExecResult};
use crate::lun::Lun;
use crate::sense::{ScsiStatus, Sense};

/// READ CAPACITY(10) (SBC-3 5.15): the last LBA, or FFFFFFFFh when it does not fit
/// (the initiator then uses READ CAPACITY(16)). PMI=0 with a non-zero LBA is
/// INVALID FIELD IN CDB; with PMI=1 the answer is the same (no block after the
/// given one is slower to reach).
pub(super) fn read_capacity10(ctx: &mut CmdCtx<'_>) -> ExecResult {
    let cdb = ctx.cdb;
    let pmi = cdb[8] & 0x01 != 0;
    if !pmi && be32(cdb, 2) != 0 {
        return Err(Sense::invalid_cdb_field(2, None).into());
    }
    let last = ctx.lun.num_blocks().saturating_sub(1);
    let mut d = vec![0u8; 8];
    d[0..4].copy_from_slice(&u32::try_from(last).unwrap_or(u32::MAX).to_be_bytes());
    d[4..8].copy_from_slice(&ctx.lun.block_size().to_be_bytes());
    Ok(Exec::Data(d))
}

/// LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT, from the configured physical
/// block size (`Lun::new` bounds it to 2^15 logical blocks).
pub(crate) fn lbppb_exponent(lun: &Lun) -> u8 {
    let bs = lun.block_size().max(1);
    let per = (lun.config.physical_block_size / bs).max(1);
    u8::try_from(per.trailing_zeros()).unwrap_or(0).min(15)
}

/// READ CAPACITY(16) data (SBC-3 5.16.2), 32 bytes.
pub(crate) fn capacity16_data(lun: &Lun) -> Vec<u8> {
    let last = lun.num_blocks().saturating_sub(1);
    let mut d = vec![0u8; 32];
    d[0..8].copy_from_slice(&last.to_be_bytes());
    d[8..12].copy_from_slice(&lun.block_size().to_be_bytes());
    // Byte 12: no protection information (P_TYPE, PROT_EN zero).
    d[13] = lbppb_exponent(lun) & 0x0f;
    if lun.config.thin {
        d[14] |= 0x80; // LBPME
    }
    if crate::vpd::lbprz(lun) {
        d[14] |= 0x40; // LBPRZ, as the provisioning VPD page says
    }
    d
}

pub(super) fn read_capacity16(ctx: &mut CmdCtx<'_>) -> ExecResult {
    let cdb = ctx.cdb;
    let pmi = cdb[14] & 0x01 != 0;
    if !pmi && be64(cdb, 2) != 0 {
        return Err(Sense::invalid_cdb_field(2, None).into());
    }
    let alloc = usize::try_from(be32(cdb, 10)).unwrap_or(usize::MAX);
    let mut d = capacity16_data(ctx.lun);
    d.truncate(alloc);
    Ok(Exec::Data(d))
}

/// LBA and count of SYNCHRONIZE CACHE / PRE-FETCH, a count of zero meaning "to the
/// end of the medium", range-checked.
fn to_end_extent(ctx: &CmdCtx<'_>) -> Result<(u64, u64), crate::sense::CmdError> {
    let e = extent(ctx.cdb);
    check_range(ctx.lun, e.lba, e.blocks)?;
    let blocks = if e.blocks == 0 {
        ctx.lun.num_blocks() - e.lba
    } else {
        e.blocks
    };
    Ok((e.lba, blocks))
}

/// SYNCHRONIZE CACHE (SBC-3 5.22): range-checked, then every completed write is
/// made stable (the backend flushes whole; a range cannot be flushed alone). IMMED
/// is accepted; status still follows the flush, which SBC-3 allows as the slower
/// of the two correct behaviours.
pub(super) fn sync_cache(ctx: &mut CmdCtx<'_>) -> ExecResult {
    to_end_extent(ctx)?;
    Ok(Exec::Job(Plan::new(ctx.lun, vec![Phase::Flush], 0).boxed()))
}

/// PRE-FETCH (SBC-3 5.9). There is no cache of our own: the backend's (page cache,
/// the RAM itself) is the cache, and `limits::PREFETCH_CACHE_BYTES` its capacity.
/// When the blocks fit, IMMED=0 reads them (staging them where the backend caches)
/// and both IMMED values end with CONDITION MET; when they do not fit, the command
/// ends with GOOD.
pub(super) fn prefetch(ctx: &mut CmdCtx<'_>) -> ExecResult {
    let immed = ctx.cdb[1] & 0x02 != 0;
    let (lba, blocks) = to_end_extent(ctx)?;
    let bytes = blocks.saturating_mul(u64::from(ctx.lun.block_size()));
    if bytes > limits::PREFETCH_CACHE_BYTES {
        return Ok(Exec::Good(0));
    }
    let phases = if immed || bytes == 0 {
        Vec::new()
    } else {
        vec![Phase::Check {
            off: byte_off(ctx.lun, lba),
            len: bytes,
        }]
    };
    let plan = Plan::new(ctx.lun, phases, 0).with_status(ScsiStatus::ConditionMet);
    Ok(Exec::Job(plan.boxed()))
}

/// READ DEFECT DATA (10) and (12) (SBC-3 5.12, 5.13): there are no defects. The
/// header echoes the lists asked for (PLISTV, GLISTV) and the format, with a list
/// length of zero.
pub(super) fn read_defect_data(ctx: &mut CmdCtx<'_>) -> ExecResult {
    let cdb = ctx.cdb;
    let (bits, alloc, mut d) = if cdb[0] == 0x37 {
        (
            cdb[2],
            usize::try_from(super::be16(cdb, 7)).unwrap_or(0),
            vec![0u8; 4],
        )
    } else {
        (
            cdb[1],
            usize::try_from(be32(cdb, 6)).unwrap_or(usize::MAX),
            vec![0u8; 8],
        )
    };
    d[1] = bits & 0x1f;
    d.truncate(alloc);
    Ok(Exec::Data(d))
}

#[cfg(test)]
mod tests {
    use super::super::test_cdb::*;
    use crate::cmd::{DataDir, Residual};
    use crate::sense::{asc, ScsiStatus, SenseKey};
    use crate::testutil::{assert_check, assert_good, Fixture};

    fn rc16(alloc: u32) -> Vec<u8> {
        let mut c = vec![0u8; 16];
        c[0] = 0x9e;
        c[1] = 0x10;
        c[10..14].copy_from_slice(&alloc.to_be_bytes());
        c
    }

    #[test]
    fn read_capacity10_and_pmi() {
        let mut f = Fixture::ram();
        let (r, d) = f.read_in(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8);
        assert_good(&r);
        assert_eq!(u32::from_be_bytes(d[0..4].try_into().unwrap()), 131071);
        assert_eq!(u32::from_be_bytes(d[4..8].try_into().unwrap()), 512);
        let (r, _) = f.read_in(&[0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0], 8);
        assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
        let (r, _) = f.read_in(&[0x25, 0, 0, 0, 0, 1, 0, 0, 1, 0], 8);
        assert_good(&r);
    }

    #[test]
    fn read_capacity10_saturates_on_huge_luns() {
        let cfg = crate::lun::LunConfig::new("huge", crate::testutil::uuid_for("huge"));
        let mut f = Fixture::with(
            cfg,
            std::sync::Arc::new(backends::ram::RamBackend::new(3 << 40)),
        );
        let (_, d) = f.read_in(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8);
        assert_eq!(&d[0..4], &[0xff; 4]);
        let (_, d) = f.read_in(&rc16(32), 32);
        assert_eq!(
            u64::from_be_bytes(d[0..8].try_into().unwrap()),
            (3 << 31) - 1
        );
    }

    #[test]
    fn read_capacity16_fields_and_allocation() {
        let mut f = Fixture::ram();
        let (r, d) = f.read_in(&rc16(32), 32);
        assert_good(&r);
        assert_eq!(u64::from_be_bytes(d[0..8].try_into().unwrap()), 131071);
        assert_eq!(d[12], 0);
        assert_eq!(d[14] & 0xc0, 0xc0, "thin RAM: LBPME and LBPRZ");
        for alloc in 0..16u32 {
            let (r, d) = f.read_in(&rc16(alloc), 64);
            assert_good(&r);
            assert_eq!(d.len(), alloc as usize);
        }
        let mut c = rc16(32);
        c[9] = 1;
        let (r, _) = f.read_in(&c, 32);
        assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
    }

    #[test]
    fn physical_block_size_is_reported_and_checked() {
        let mut cfg = crate::lun::LunConfig::new("p", crate::testutil::uuid_for("p"));
        cfg.physical_block_size = 4096;
        let mut f = Fixture::with(
            cfg,
            std::sync::Arc::new(backends::ram::RamBackend::new(1 << 20)),
        );
        let (_, d) = f.read_in(&rc16(32), 32);
        assert_eq!(
            (d[13], d[14] & 0x3f, d[15]),
            (3, 0, 0),
            "8 blocks of 512, aligned at 0"
        );
        let (_, b0) = f.read_in(&[0x12, 1, 0xb0, 0, 64, 0], 64);
        assert_eq!(
            u16::from_be_bytes([b0[6], b0[7]]),
            8,
            "transfer granularity"
        );
        for (bs, pbs, exp) in [
            (512, 512, 0u8),
            (4096, 4096, 0),
            (4096, 512, 0),
            (512, 1 << 24, 15),
        ] {
            let mut cfg = crate::lun::LunConfig::new("p", crate::testutil::uuid_for("p"));
            cfg.block_size = bs;
            cfg.physical_block_size = pbs;
            let lun = crate::lun::Lun::new(
                cfg,
                std::sync::Arc::new(backends::ram::RamBackend::new(1 << 20)),
            )
            .expect("lun");
            assert_eq!(super::lbppb_exponent(&lun), exp, "{bs}/{pbs}");
        }
        for pbs in [0, 3000, 1 << 25] {
            let mut cfg = crate::lun::LunConfig::new("p", crate::testutil::uuid_for("p"));
            cfg.physical_block_size = pbs;
            let r = crate::lun::Lun::new(
                cfg,
                std::sync::Arc::new(backends::ram::RamBackend::new(1 << 20)),
            );
            assert!(
                matches!(r, Err(crate::lun::LunError::PhysicalBlockSize { .. })),
                "{pbs}"
            );
        }
    }

    #[test]
    fn sync_cache_range_checks() {
        let mut f = Fixture::ram();
        let n = f.lun.num_blocks();
        let (r, _) = f.run(&rw10(0x35, 0, 0), DataDir::None, vec![]);
        assert_good(&r);
        let (r, _) = f.run(&rw16(0x91, n - 1, 2), DataDir::None, vec![]);
        assert_check(&r, SenseKey::IllegalRequest, asc::LBA_OUT_OF_RANGE);
        let mut c = rw10(0x35, 0, 8);
        c[1] = 0x02;
        let (r, _) = f.run(&c, DataDir::None, vec![]);
        assert_good(&r);
    }

    #[test]
    fn prefetch_condition_met_and_good() {
        let mut f = Fixture::ram();
        let n = f.lun.num_blocks();
        let (r, _) = f.run(&rw10(0x34, 0, 16), DataDir::None, vec![]);
        assert_eq!(r.status, ScsiStatus::ConditionMet);
        let mut c = rw16(0x90, 0, 16);
        c[1] = 0x02;
        let (r, _) = f.run(&c, DataDir::None, vec![]);
        assert_eq!(r.status, ScsiStatus::ConditionMet);
        // The whole 64 MiB medium does not fit: GOOD.
        let (r, _) = f.run(&rw10(0x34, 0, 0), DataDir::None, vec![]);
        assert_good(&r);
        let (r, _) = f.run(&rw10(0x34, n as u32 + 1, 0), DataDir::None, vec![]);
        assert_check(&r, SenseKey::IllegalRequest, asc::LBA_OUT_OF_RANGE);
        let (r, _) = f.run(&rw16(0x90, n - 1, 2), DataDir::None, vec![]);
        assert_check(&r, SenseKey::IllegalRequest, asc::LBA_OUT_OF_RANGE);
    }

    #[test]
    fn read_defect_data_headers() {
        let mut f = Fixture::ram();
        let (r, d) = f.read_in(&[0x37, 0, 0x18 | 0x04, 0, 0, 0, 0, 0, 32, 0], 32);
        assert_good(&r);
        assert_eq!(d, vec![0, 0x1c, 0, 0]);
        assert_eq!(r.residual, Residual::Under(28));
        let (r, d) = f.read_in(&[0xb7, 0x05, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0], 32);
        assert_good(&r);
        assert_eq!(d, vec![0, 0x05, 0, 0, 0, 0, 0, 0]);
        let (r, d) = f.read_in(&[0xb7, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0], 32);
        assert_good(&r);
        assert_eq!(d.len(), 2);
    }
}
