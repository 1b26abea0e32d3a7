//! VERIFY (10, 12, 16) and WRITE AND VERIFY (10, 12, 16).
//!
//! BYTCHK (byte 1 bits 2..1): 00b verifies the medium (reads it back, no data-out);
//! 01b compares the medium with the data-out buffer byte by byte; 11b compares every
//! block with the single block sent (VERIFY only); 10b is reserved, and 11b is
//! reserved for WRITE AND VERIFY (SBC-4 5.29, 5.43). A difference is MISCOMPARE,
//! MISCOMPARE DURING VERIFY OPERATION with the offset of the first differing byte in
//! INFORMATION. Unmapped blocks compare as zeroes (VBULS=1: LBPRZ is set when thin).

use super::plan::{Phase, Plan, Src};
use super::rw::write_phases;
use super::{
    byte_off, check_no_protect, check_range, check_xfer, effective_fua, extent, xfer_bytes,
};
use crate::exec::{CmdCtx, Exec, ExecResult};
use crate::sense::{CmdError, Sense};

fn bytchk(cdb: &[u8]) -> u8 {
    (cdb[1] >> 1) & 0x03
}

fn reserved_bytchk() -> CmdError {
    Sense::invalid_cdb_field(1, Some(2)).into()
}

pub(super) fn verify(ctx: &mut CmdCtx<'_>) -> ExecResult {
    let cdb = ctx.cdb;
    check_no_protect(cdb)?;
    let mode = bytchk(cdb);
    if mode == 0b10 {
        return Err(reserved_bytchk());
    }
    let e = extent(cdb);
    check_xfer(ctx.lun, &e)?;
    check_range(ctx.lun, e.lba, e.blocks)?;
    let bytes = xfer_bytes(ctx.lun, e.blocks, e.len_at)?;
    if e.blocks == 0 {
        return Ok(Exec::Good(0));
    }
    let off = byte_off(ctx.lun, e.lba);
    let bs = ctx.lun.block_size() as usize;
    let have = ctx.data.len() as u64;
    let (phase, wanted) = match mode {
        0b00 => (
            Phase::Check {
                off,
                len: u64::from(bytes),
            },
            0,
        ),
        0b01 => (
            // Data-out beyond the initiator's buffer was never sent: compare what
            // was (the residual reports the rest).
            Phase::Compare {
                off,
                len: u64::from(bytes).min(have),
                src: Src::Data(0),
            },
            bytes,
        ),
        _ => {
            if have < bs as u64 {
                return Err(Sense::invalid_cdb_field(1, Some(2)).into());
            }
            (
                Phase::Compare {
                    off,
                    len: u64::from(bytes),
                    src: Src::Repeat(bs),
                },
                bs as u32,
            )
        }
    };
    Ok(Exec::Job(Plan::new(ctx.lun, vec![phase], wanted).boxed()))
}

pub(super) fn write_and_verify(ctx: &mut CmdCtx<'_>) -> ExecResult {
    let cdb = ctx.cdb;
    check_no_protect(cdb)?;
    let mode = bytchk(cdb);
    if mode >= 0b10 {
        return Err(reserved_bytchk());
    }
    let e = extent(cdb);
    check_xfer(ctx.lun, &e)?;
    check_range(ctx.lun, e.lba, e.blocks)?;
    let bytes = xfer_bytes(ctx.lun, e.blocks, e.len_at)?;
    if e.blocks == 0 {
        return Ok(Exec::Good(0));
    }
    let fua = effective_fua(ctx, false);
    let mut phases = super::plan::Phases::new();
    let rmw = write_phases(ctx, e.lba, u64::from(bytes), fua, &mut phases);
    let off = byte_off(ctx.lun, e.lba);
    let sent = u64::from(bytes).min(ctx.data.len() as u64);
    if sent > 0 {
        phases.push(if mode == 0b01 {
            Phase::Compare {
                off,
                len: sent,
                src: Src::Data(0),
            }
        } else {
            Phase::Check { off, len: sent }
        });
    }
    let plan = Plan::new(ctx.lun, phases, bytes).with_range(e.lba, e.blocks, rmw);
    Ok(Exec::Job(plan.boxed()))
}

#[cfg(test)]
mod tests {
    use super::super::test_cdb::*;
    use crate::cmd::{DataDir, Residual};
    use crate::sense::{asc, SenseKey};
    use crate::testutil::{assert_check, assert_good, Fixture};

    fn with_bytchk(mut c: Vec<u8>, b: u8) -> Vec<u8> {
        c[1] |= b << 1;
        c
    }

    #[test]
    fn verify_compares_and_reports_the_first_difference() {
        let mut f = Fixture::ram();
        let data: Vec<u8> = (0..2048u32).map(|i| (i * 3) as u8).collect();
        f.run(&rw10(0x2a, 100, 4), DataDir::ToDevice, data.clone());
        for op in [0x2f_u8, 0xaf, 0x8f] {
            let c = match op {
                0x2f => rw10(op, 100, 4),
                0xaf => rw12(op, 100, 4),
                _ => rw16(op, 100, 4),
            };
            let (r, _) = f.run(&with_bytchk(c.clone(), 1), DataDir::ToDevice, data.clone());
            assert_good(&r);
            let mut bad = data.clone();
            bad[1500] ^= 0x58;
            let (r, _) = f.run(&with_bytchk(c.clone(), 1), DataDir::ToDevice, bad.clone());
            assert_check(&r, SenseKey::Miscompare, asc::MISCOMPARE_DURING_VERIFY);
            assert_eq!(r.sense_data.unwrap().information, Some(1500));
            // BYTCHK 0: the medium only; the data is not looked at.
            let (r, _) = f.run(&c, DataDir::None, vec![]);
            assert_good(&r);
        }
    }

    #[test]
    fn verify_bytchk_11_repeats_one_block_and_10_is_reserved() {
        let mut f = Fixture::ram();
        f.run(&rw10(0x2a, 0, 3), DataDir::ToDevice, vec![0x5a; 1536]);
        let (r, _) = f.run(
            &with_bytchk(rw10(0x2f, 0, 3), 3),
            DataDir::ToDevice,
            vec![0x5a; 512],
        );
        assert_good(&r);
        let mut one = vec![0x5a; 512];
        one[7] = 0;
        let (r, _) = f.run(&with_bytchk(rw10(0x2f, 0, 3), 3), DataDir::ToDevice, one);
        assert_check(&r, SenseKey::Miscompare, asc::MISCOMPARE_DURING_VERIFY);
        assert_eq!(r.sense_data.unwrap().information, Some(7));
        let (r, _) = f.run(
            &with_bytchk(rw10(0x2f, 0, 3), 2),
            DataDir::ToDevice,
            vec![0; 512],
        );
        assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
        let s = r.sense_data.unwrap().field.unwrap();
        assert_eq!((s.byte, s.bit), (1, Some(2)));
    }

    #[test]
    fn verify_range_and_protect() {
        let mut f = Fixture::ram();
        let n = f.lun.num_blocks();
        let (r, _) = f.run(&rw16(0x8f, n + 1, 0), DataDir::None, vec![]);
        assert_check(&r, SenseKey::IllegalRequest, asc::LBA_OUT_OF_RANGE);
        let (r, _) = f.run(&rw16(0x8f, 0, 0), DataDir::None, vec![]);
        assert_good(&r);
        let mut c = rw10(0x2f, 0, 1);
        c[1] = 0x40;
        let (r, _) = f.run(&c, DataDir::None, vec![]);
        assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
        // Unwritten (unmapped) blocks compare as zeroes.
        let (r, _) = f.run(
            &with_bytchk(rw10(0x2f, 500, 1), 1),
            DataDir::ToDevice,
            vec![0; 512],
        );
        assert_good(&r);
    }

    #[test]
    fn write_and_verify_writes_then_checks() {
        let mut f = Fixture::ram();
        for (op, c) in [
            (0x2e, rw10(0x2e, 7, 2)),
            (0xae, rw12(0xae, 7, 2)),
            (0x8e, rw16(0x8e, 7, 2)),
        ] {
            let (r, _) = f.run(
                &with_bytchk(c.clone(), 1),
                DataDir::ToDevice,
                vec![op; 1024],
            );
            assert_good(&r);
            let (_, d) = f.read_in(&rw10(0x28, 7, 2), 1024);
            assert_eq!(d, vec![op; 1024]);
            let (r, _) = f.run(&with_bytchk(c, 3), DataDir::ToDevice, vec![op; 1024]);
            assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
        }
    }

    /// libiscsi WriteVerify10Residuals.
    #[test]
    fn write_and_verify_residuals() {
        let mut f = Fixture::ram();
        let c = with_bytchk(rw10(0x2e, 0, 1), 1);
        let (r, _) = f.run(&c, DataDir::ToDevice, vec![]);
        assert_good(&r);
        assert_eq!(r.residual, Residual::Over(512));
        let (r, _) = f.run(&c, DataDir::ToDevice, vec![0xa6; 10000]);
        assert_good(&r);
        assert_eq!(r.residual, Residual::Under(10000 - 512));
        let (r, _) = f.run(&c, DataDir::ToDevice, vec![0x11; 200]);
        assert_good(&r);
        assert_eq!(r.residual, Residual::Over(312));
        let (_, d) = f.read_in(&rw10(0x28, 0, 1), 512);
        assert_eq!(&d[..200], &[0x11; 200][..]);
        assert_eq!(&d[200..], &[0xa6; 312][..]);
    }
}
