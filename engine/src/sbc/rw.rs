//! READ and WRITE (6, 10, 12, 16) and WRITE ATOMIC(16).

use super::limits;
use super::plan::{Phase, Phases, Plan};
use super::{
    byte_off, check_no_protect, check_range, check_xfer, effective_fua, extent, fua_bit,
    xfer_bytes, Extent,
};
use crate::exec::{CmdCtx, Exec, ExecResult};
use crate::sense::Sense;

/// The extent of a READ or WRITE CDB of any size. READ(6)/WRITE(6): 21-bit LBA,
/// and a transfer length of 0 means 256 blocks.
fn rw_extent(cdb: &[u8]) -> Extent {
    if cdb.len() == 6 {
        let lba = (u64::from(cdb[1] & 0x1f) << 16) | u64::from(cdb[2]) << 8 | u64::from(cdb[3]);
        let blocks = if cdb[4] == 0 { 256 } else { u64::from(cdb[4]) };
        return Extent {
            lba,
            blocks,
            len_at: 4,
        };
    }
    extent(cdb)
}

pub(super) fn read(ctx: &mut CmdCtx<'_>) -> ExecResult {
    let cdb = ctx.cdb;
    let e = rw_extent(cdb);
    if cdb.len() > 6 {
        check_no_protect(cdb)?;
    }
    check_xfer(ctx.lun, &e)?;
    check_range(ctx.lun, e.lba, e.blocks)?;
    let wanted = xfer_bytes(ctx.lun, e.blocks, e.len_at)?;
    if e.blocks == 0 {
        return Ok(Exec::Good(0));
    }
    // Data-in beyond the initiator's buffer is not transferred (residual).
    let len = u64::from(wanted).min(ctx.data.len() as u64);
    let bs = u64::from(ctx.lun.block_size());
    let off = byte_off(ctx.lun, e.lba);
    let whole = len / bs * bs;
    let mut phases = Phases::new();
    if whole > 0 {
        phases.push(Phase::Read {
            off,
            len: whole,
            data_off: 0,
        });
    }
    if len > whole {
        // A partial last block goes through scratch: reads stay whole blocks.
        phases.push(Phase::ReadTail {
            off: off + whole,
            len: bs,
            data_off: usize::try_from(whole).unwrap_or(usize::MAX),
            have: usize::try_from(len - whole).unwrap_or(0),
        });
    }
    Ok(Plan::new(ctx.lun, phases, wanted).unboxed())
}

/// The phases that write `bytes` at `lba` from the data-out buffer (`have` bytes):
/// whole blocks zero copy; a trailing partial block by read-modify-write. Returns
/// whether a read-modify-write is needed (the caller then takes an exclusive range).
pub(super) fn write_phases(
    ctx: &CmdCtx<'_>,
    lba: u64,
    bytes: u64,
    fua: bool,
    phases: &mut Phases,
) -> bool {
    let bs = u64::from(ctx.lun.block_size());
    let have = ctx.data.len() as u64;
    let off = byte_off(ctx.lun, lba);
    let sent = bytes.min(have);
    let whole = sent / bs * bs;
    if whole > 0 {
        phases.push(Phase::Write {
            off,
            len: whole,
            data_off: 0,
            fua,
        });
    }
    let tail = sent - whole;
    if tail > 0 {
        // `tail` < block size: the partial block keeps its bytes past the data.
        phases.push(Phase::Merge {
            off: off + whole,
            len: bs,
            data_off: whole as usize,
            have: tail as usize,
            fua,
            or: false,
        });
        return true;
    }
    false
}

pub(super) fn write(ctx: &mut CmdCtx<'_>) -> ExecResult {
    let cdb = ctx.cdb;
    let e = rw_extent(cdb);
    let cdb_fua = if cdb.len() > 6 {
        check_no_protect(cdb)?;
        fua_bit(cdb)
    } else {
        false
    };
    check_xfer(ctx.lun, &e)?;
    check_range(ctx.lun, e.lba, e.blocks)?;
    let wanted = xfer_bytes(ctx.lun, e.blocks, e.len_at)?;
    if e.blocks == 0 {
        return Ok(Exec::Good(0));
    }
    let fua = effective_fua(ctx, cdb_fua);
    let mut phases = Phases::new();
    let rmw = write_phases(ctx, e.lba, u64::from(wanted), fua, &mut phases);
    let plan = Plan::new(ctx.lun, phases, wanted).with_range(e.lba, e.blocks, rmw);
    Ok(plan.unboxed())
}

/// Whether `x` breaks a granularity of `unit` blocks (0 and 1: no constraint).
fn not_multiple(x: u64, unit: u32) -> bool {
    unit > 1 && x.checked_rem(u64::from(unit)) != Some(0)
}

/// WRITE ATOMIC(16) (SBC-4 5.48): checked against the atomic limits, then written
/// in one backend operation under an exclusive range, so no other command sees or
/// makes a partial result.
pub(super) fn write_atomic(ctx: &mut CmdCtx<'_>) -> ExecResult {
    let cdb = ctx.cdb;
    check_no_protect(cdb)?;
    let lba = super::be64(cdb, 2);
    let boundary = super::be16(cdb, 10);
    let e = Extent {
        lba,
        blocks: super::be16(cdb, 12),
        len_at: 12,
    };
    check_range(ctx.lun, e.lba, e.blocks)?;
    let wanted = xfer_bytes(ctx.lun, e.blocks, e.len_at)?;
    if e.blocks == 0 {
        return Ok(Exec::Good(0));
    }
    if boundary > u64::from(limits::MAX_ATOMIC_BOUNDARY) {
        return Err(Sense::invalid_cdb_field(10, None).into());
    }
    if e.blocks > u64::from(limits::MAX_ATOMIC_XFER_BLOCKS) {
        return Err(Sense::invalid_cdb_field(12, None).into());
    }
    if not_multiple(lba, limits::ATOMIC_ALIGNMENT) {
        return Err(Sense::invalid_cdb_field(2, None).into());
    }
    if not_multiple(e.blocks, limits::ATOMIC_GRANULARITY) {
        return Err(Sense::invalid_cdb_field(12, None).into());
    }
    let fua = effective_fua(ctx, fua_bit(cdb));
    let mut phases = Phases::new();
    write_phases(ctx, e.lba, u64::from(wanted), fua, &mut phases);
    let plan = Plan::new(ctx.lun, phases, wanted).with_range(e.lba, e.blocks, true);
    Ok(Exec::Job(plan.boxed()))
}

#[cfg(test)]
mod tests {
    use super::super::test_cdb::*;
    use crate::cmd::{DataDir, Residual};
    use crate::sense::{asc, SenseKey};
    use crate::testutil::{assert_check, assert_good, Fixture};

    #[test]
    fn all_sizes_write_and_read_back() {
        let mut f = Fixture::ram();
        let data: Vec<u8> = (0..1024u32).map(|i| (i % 251) as u8).collect();
        for (w, r) in [
            (rw6(0x0a, 3, 2), rw6(0x08, 3, 2)),
            (rw10(0x2a, 9, 2), rw10(0x28, 9, 2)),
            (rw12(0xaa, 20, 2), rw12(0xa8, 20, 2)),
            (rw16(0x8a, 40, 2), rw16(0x88, 40, 2)),
        ] {
            let (resp, _) = f.run(&w, DataDir::ToDevice, data.clone());
            assert_good(&resp);
            let (resp, back) = f.read_in(&r, 1024);
            assert_good(&resp);
            assert_eq!(back, data);
        }
    }

    #[test]
    fn read6_zero_means_256_blocks() {
        let mut f = Fixture::ram();
        let (r, d) = f.read_in(&rw6(0x08, 0, 0), 256 * 512);
        assert_good(&r);
        assert_eq!(d.len(), 256 * 512);
        assert_eq!(r.residual, Residual::None);
    }

    #[test]
    fn protect_fields_and_limits_are_refused() {
        let mut f = Fixture::ram();
        let mut c = rw10(0x28, 0, 1);
        c[1] = 0x20;
        let (r, _) = f.read_in(&c, 512);
        assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
        let mut c = rw16(0x8a, 0, 1);
        c[1] = 0xe0;
        let (r, _) = f.run(&c, DataDir::ToDevice, vec![0; 512]);
        assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
        let big = super::limits::MAX_XFER_BLOCKS + 1;
        let (r, _) = f.read_in(&rw12(0xa8, 0, big), 0);
        assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
        assert_eq!(r.sense_data.unwrap().field.unwrap().byte, 6);
    }

    #[test]
    fn zero_blocks_and_range_edges() {
        let mut f = Fixture::ram();
        let n = f.lun.num_blocks();
        let (r, _) = f.read_in(&rw16(0x88, n, 0), 0);
        assert_good(&r);
        let (r, _) = f.read_in(&rw16(0x88, n + 1, 0), 0);
        assert_check(&r, SenseKey::IllegalRequest, asc::LBA_OUT_OF_RANGE);
        let (r, _) = f.read_in(&rw16(0x88, u64::MAX, 1), 512);
        assert_check(&r, SenseKey::IllegalRequest, asc::LBA_OUT_OF_RANGE);
        let (r, _) = f.run(
            &rw10(0x2a, (n - 1) as u32, 2),
            DataDir::ToDevice,
            vec![0; 1024],
        );
        assert_check(&r, SenseKey::IllegalRequest, asc::LBA_OUT_OF_RANGE);
    }

    #[test]
    fn fua_and_dpo_are_accepted() {
        let mut f = Fixture::ram();
        let mut c = rw10(0x2a, 0, 1);
        c[1] = 0x18 | 0x02;
        let (r, _) = f.run(&c, DataDir::ToDevice, vec![1; 512]);
        assert_good(&r);
    }

    /// libiscsi iSCSIResiduals: a short data-out writes exactly what was sent and
    /// nothing past it; a long one writes what the CDB asks for.
    #[test]
    fn write_residuals_never_write_past_the_data() {
        let mut f = Fixture::ram();
        for (blocks, edtl, res) in [
            (1u16, 0usize, Residual::Over(512)),
            (1, 1024, Residual::Under(512)),
            (2, 512, Residual::Over(512)),
            (1, 10000, Residual::Under(10000 - 512)),
            (1, 200, Residual::Over(312)),
        ] {
            let (r, _) = f.run(&rw10(0x2a, 0, 4), DataDir::ToDevice, vec![b'a'; 2048]);
            assert_good(&r);
            let (r, _) = f.run(&rw10(0x2a, 0, blocks), DataDir::ToDevice, vec![b'b'; edtl]);
            assert_good(&r);
            assert_eq!(r.residual, res, "blocks {blocks} edtl {edtl}");
            let (_, back) = f.read_in(&rw10(0x28, 0, 4), 2048);
            let written = edtl.min(usize::from(blocks) * 512);
            assert!(back[..written].iter().all(|&b| b == b'b'));
            assert!(back[written..].iter().all(|&b| b == b'a'), "edtl {edtl}");
        }
    }

    #[test]
    fn read_residuals() {
        let mut f = Fixture::ram();
        let (r, d) = f.read_in(&rw10(0x28, 0, 1), 200);
        assert_good(&r);
        assert_eq!(d.len(), 200);
        assert_eq!(r.residual, Residual::Over(312));
        let (r, _) = f.read_in(&rw10(0x28, 0, 1), 10000);
        assert_eq!(r.residual, Residual::Under(10000 - 512));
    }

    #[test]
    fn write_cache_disabled_still_writes() {
        let mut f = Fixture::ram();
        f.lun.mode.set_wce_for_test(false);
        let (r, _) = f.run(&rw10(0x2a, 5, 1), DataDir::ToDevice, vec![7; 512]);
        assert_good(&r);
        let (_, d) = f.read_in(&rw10(0x28, 5, 1), 512);
        assert_eq!(d, vec![7; 512]);
    }

    #[test]
    fn read_only_lun_refuses_writes() {
        let mut cfg = crate::lun::LunConfig::new("ro", crate::testutil::uuid_for("ro"));
        cfg.read_only = true;
        let mut f = Fixture::with(
            cfg,
            std::sync::Arc::new(backends::ram::RamBackend::new(1 << 20)),
        );
        let (r, _) = f.run(&rw10(0x2a, 0, 1), DataDir::ToDevice, vec![0; 512]);
        assert_check(&r, SenseKey::DataProtect, asc::WRITE_PROTECTED);
        let (r, _) = f.run(&watomic(0, 1), DataDir::ToDevice, vec![0; 512]);
        assert_check(&r, SenseKey::DataProtect, asc::WRITE_PROTECTED);
    }

    #[test]
    fn atomic_granularity_helper() {
        assert!(!super::not_multiple(7, 0));
        assert!(!super::not_multiple(7, 1));
        assert!(super::not_multiple(7, 4));
        assert!(!super::not_multiple(8, 4));
    }

    #[test]
    fn write_atomic_limits() {
        let mut f = Fixture::ram();
        let n = f.lun.num_blocks();
        let (r, _) = f.run(&watomic(8, 2), DataDir::ToDevice, vec![9; 1024]);
        assert_good(&r);
        let (_, d) = f.read_in(&rw10(0x28, 8, 2), 1024);
        assert_eq!(d, vec![9; 1024]);
        let (r, _) = f.run(&watomic(0, 0), DataDir::ToDevice, vec![]);
        assert_good(&r);
        let (r, _) = f.run(&watomic(n - 1, 2), DataDir::ToDevice, vec![0; 1024]);
        assert_check(&r, SenseKey::IllegalRequest, asc::LBA_OUT_OF_RANGE);
        let mut c = watomic(0, 1);
        c[11] = 1; // ATOMIC BOUNDARY: not supported
        let (r, _) = f.run(&c, DataDir::ToDevice, vec![0; 512]);
        assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
        let mut c = watomic(0, 1);
        c[1] = 0x40;
        let (r, _) = f.run(&c, DataDir::ToDevice, vec![0; 512]);
        assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
    }
}
