//! COMPARE AND WRITE (89h) and ORWRITE(16) (8Bh): read-compare-write and
//! read-OR-write, each atomic against every other write to its blocks (an exclusive
//! `LbaRange` held from before the read until after the write).

use super::limits;
use super::plan::{Phase, Plan, Src};
use super::{
    byte_off, check_no_protect, check_range, check_xfer, effective_fua, extent, fua_bit, xfer_bytes,
};
use crate::exec::{CmdCtx, Exec, ExecResult};
use crate::sense::Sense;

pub(super) fn compare_and_write(ctx: &mut CmdCtx<'_>) -> ExecResult {
    let cdb = ctx.cdb;
    check_no_protect(cdb)?;
    let lba = super::be64(cdb, 2);
    let blocks = u64::from(cdb[13]);
    if blocks > u64::from(limits::MAX_CAW_BLOCKS) {
        return Err(Sense::invalid_cdb_field(13, None).into());
    }
    check_range(ctx.lun, lba, blocks)?;
    if blocks == 0 {
        // Zero blocks take no data-out; a buffer with data (e.g. a 256-block request
        // whose count wrapped to 0) is refused like any other size mismatch.
        if !ctx.data.is_empty() {
            return Err(Sense::invalid_cdb_field(13, None).into());
        }
        return Ok(Exec::Good(0));
    }
    // blocks <= 255 and the block size <= 64 KiB: no overflow.
    let half = xfer_bytes(ctx.lun, blocks, 13)?;
    let wanted = half * 2;
    // The data-out buffer holds the verify data then the write data; any other
    // size cannot be split (libiscsi CompareAndWrite.InvalidDataOutSize).
    if ctx.data.len() != wanted as usize {
        return Err(Sense::invalid_cdb_field(13, None).into());
    }
    let off = byte_off(ctx.lun, lba);
    let fua = effective_fua(ctx, fua_bit(cdb));
    let phases = vec![
        Phase::Compare {
            off,
            len: u64::from(half),
            src: Src::Data(0),
        },
        Phase::Write {
            off,
            len: u64::from(half),
            data_off: half as usize,
            fua,
        },
    ];
    let plan = Plan::new(ctx.lun, phases, wanted).with_range(lba, blocks, true);
    Ok(Exec::Job(plan.boxed()))
}

pub(super) fn orwrite(ctx: &mut CmdCtx<'_>) -> ExecResult {
    let cdb = ctx.cdb;
    check_no_protect(cdb)?;
    let e = extent(cdb);
    check_xfer(ctx.lun, &e)?;
    check_range(ctx.lun, e.lba, e.blocks)?;
    let wanted = xfer_bytes(ctx.lun, e.blocks, e.len_at)?;
    if e.blocks == 0 {
        return Ok(Exec::Good(0));
    }
    // A short buffer ORs only what was sent: OR with nothing leaves the medium as
    // it was.
    let phases = vec![Phase::Merge {
        off: byte_off(ctx.lun, e.lba),
        len: u64::from(wanted),
        data_off: 0,
        have: ctx.data.len(),
        fua: effective_fua(ctx, fua_bit(cdb)),
        or: true,
    }];
    let plan = Plan::new(ctx.lun, phases, wanted).with_range(e.lba, e.blocks, true);
    Ok(Exec::Job(plan.boxed()))
}

#[cfg(test)]
mod tests {
    use super::super::test_cdb::*;
    use crate::cmd::DataDir;
    use crate::sense::{asc, SenseKey};
    use crate::testutil::{assert_check, assert_good, Fixture};

    #[test]
    fn compare_and_write_swaps_when_equal() {
        let mut f = Fixture::ram();
        f.run(&rw10(0x2a, 10, 2), DataDir::ToDevice, vec![b'A'; 1024]);
        let mut buf = vec![b'A'; 1024];
        buf.extend_from_slice(&[b'B'; 1024]);
        let (r, _) = f.run(&caw(10, 2), DataDir::ToDevice, buf);
        assert_good(&r);
        let (_, d) = f.read_in(&rw10(0x28, 10, 2), 1024);
        assert_eq!(d, vec![b'B'; 1024]);
    }

    #[test]
    fn compare_and_write_miscompare_leaves_the_medium_alone() {
        let mut f = Fixture::ram();
        f.run(&rw10(0x2a, 0, 1), DataDir::ToDevice, vec![b'B'; 512]);
        for i in [0usize, 1, 300, 511] {
            let mut buf = vec![b'B'; 512];
            buf[i] = b'Z';
            buf.extend_from_slice(&[b'C'; 512]);
            let (r, _) = f.run(&caw(0, 1), DataDir::ToDevice, buf);
            assert_check(&r, SenseKey::Miscompare, asc::MISCOMPARE_DURING_VERIFY);
            assert_eq!(r.sense_data.unwrap().information, Some(i as u64));
        }
        let (_, d) = f.read_in(&rw10(0x28, 0, 1), 512);
        assert_eq!(d, vec![b'B'; 512]);
    }

    #[test]
    fn compare_and_write_checks_sizes_and_range() {
        let mut f = Fixture::ram();
        let n = f.lun.num_blocks();
        let (r, _) = f.run(&caw(0, 1), DataDir::ToDevice, vec![0; 4 * 512]);
        assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
        let (r, _) = f.run(&caw(0, 3), DataDir::ToDevice, vec![0; 4 * 512]);
        assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
        let (r, _) = f.run(&caw(n, 1), DataDir::ToDevice, vec![0; 1024]);
        assert_check(&r, SenseKey::IllegalRequest, asc::LBA_OUT_OF_RANGE);
        let (r, _) = f.run(&caw(0, 0), DataDir::None, vec![]);
        assert_good(&r);
        let mut c = caw(0, 1);
        c[1] = 0x20;
        let (r, _) = f.run(&c, DataDir::ToDevice, vec![0; 1024]);
        assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
        // DPO and FUA are accepted.
        let mut c = caw(0, 1);
        c[1] = 0x18;
        let (r, _) = f.run(&c, DataDir::ToDevice, vec![0; 1024]);
        assert_good(&r);
    }

    #[test]
    fn orwrite_ors_into_the_medium() {
        let mut f = Fixture::ram();
        f.run(&rw10(0x2a, 4, 2), DataDir::ToDevice, vec![0; 1024]);
        let (r, _) = f.run(&rw16(0x8b, 4, 2), DataDir::ToDevice, vec![0xa5; 1024]);
        assert_good(&r);
        let (r, _) = f.run(&rw16(0x8b, 4, 2), DataDir::ToDevice, vec![0x5a; 1024]);
        assert_good(&r);
        let (_, d) = f.read_in(&rw10(0x28, 4, 2), 1024);
        assert_eq!(d, vec![0xff; 1024]);
        let n = f.lun.num_blocks();
        let (r, _) = f.run(&rw16(0x8b, n + 1, 0), DataDir::None, vec![]);
        assert_check(&r, SenseKey::IllegalRequest, asc::LBA_OUT_OF_RANGE);
        let mut c = rw16(0x8b, 0, 1);
        c[1] = 0x20;
        let (r, _) = f.run(&c, DataDir::ToDevice, vec![0; 512]);
        assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
    }

    /// COMPARE AND WRITE holds off a concurrent write to its blocks and vice versa:
    /// submitted together, every interleaving ends in one of the serial outcomes.
    #[test]
    fn compare_and_write_is_atomic_against_a_queued_write() {
        let mut f = deferred_fixture(1 << 20);
        f.run(&rw10(0x2a, 0, 1), DataDir::ToDevice, vec![b'A'; 512]);
        let mut buf = vec![b'A'; 512];
        buf.extend_from_slice(&[b'B'; 512]);
        let out = run_batch(
            &mut f,
            vec![
                (caw(0, 1), DataDir::ToDevice, buf),
                (rw10(0x2a, 0, 1), DataDir::ToDevice, vec![b'W'; 512]),
            ],
        );
        assert_good(&out[0].0);
        assert_good(&out[1].0);
        let (_, d) = f.read_in(&rw10(0x28, 0, 1), 512);
        assert_eq!(d, vec![b'W'; 512]);
    }
}
