//! WRITE SAME(10) (41h) and WRITE SAME(16) (93h).
//!
//! The one block of data-out (zeroes with NDOB) is repeated over the range in
//! chunks of at most `plan::SCRATCH_MAX` bytes. A block count of zero means "to the
//! end of the medium" (WSNZ=0). With UNMAP on a thin LUN a zero block deallocates
//! the range (LBPRZ: it reads back as zeroes); a non-zero block is written, since
//! deallocating it would change what the blocks read. ANCHOR is refused (ANC_SUP=0).
//! A fully provisioned LUN reports LBPWS=LBPWS10=0, so UNMAP there is INVALID
//! FIELD IN CDB (libiscsi WriteSame*.UnmapVPD requires the two to agree).

use super::limits;
use super::plan::{Phase, Plan};
use super::{byte_off, check_no_protect, check_range, extent};
use crate::exec::{CmdCtx, Exec, ExecResult};
use crate::sense::Sense;

pub(super) fn write_same(ctx: &mut CmdCtx<'_>) -> ExecResult {
    let cdb = ctx.cdb;
    check_no_protect(cdb)?;
    let anchor = cdb[1] & 0x10 != 0;
    let unmap = cdb[1] & 0x08 != 0;
    let ndob = cdb.len() == 16 && cdb[1] & 0x01 != 0;
    if anchor {
        return Err(Sense::invalid_cdb_field(1, Some(4)).into());
    }
    if unmap && !ctx.lun.config.thin {
        return Err(Sense::invalid_cdb_field(1, Some(3)).into());
    }
    let e = extent(cdb);
    let lun = ctx.lun;
    let mut blocks = e.blocks;
    if blocks == 0 {
        if limits::WSNZ {
            return Err(Sense::invalid_cdb_field(e.len_at, None).into());
        }
        check_range(lun, e.lba, 0)?;
        blocks = lun.num_blocks() - e.lba;
    }
    if blocks > limits::MAX_WS_BLOCKS {
        return Err(Sense::invalid_cdb_field(e.len_at, None).into());
    }
    check_range(lun, e.lba, blocks)?;
    let bs = lun.block_size() as usize;
    let wanted = if ndob { 0 } else { lun.block_size() };
    if !ndob && ctx.data.len() != bs {
        // The data-out buffer is exactly one block (libiscsi
        // WriteSame*.InvalidDataOutSize).
        return Err(Sense::invalid_cdb_field(e.len_at, None).into());
    }
    if blocks == 0 {
        return Ok(Exec::Good(wanted));
    }
    let pattern = if ndob {
        vec![0u8; bs]
    } else {
        ctx.data_out(bs)
    };
    if pattern.len() != bs {
        // A buffer of the right size that holds no data-out (a data-in buffer).
        return Err(Sense::invalid_cdb_field(e.len_at, None).into());
    }
    let zero = pattern.iter().all(|&b| b == 0);
    let off = byte_off(lun, e.lba);
    let len = blocks.saturating_mul(bs as u64);
    let thin = lun.config.thin;
    // UNMAP on a thin LUN deallocates whatever the data-out block holds, as LIO
    // does and libiscsi's WriteSame*.UnmapUntilEnd checks (LBPRZ: zeroes read back).
    let phase = if unmap && thin {
        Phase::Zero {
            off,
            len,
            discard: true,
        }
    } else if zero && !thin {
        // Nothing reports mapping on a fully provisioned LUN: let the backend
        // zero without moving data.
        Phase::Zero {
            off,
            len,
            discard: false,
        }
    } else {
        Phase::Pattern {
            off,
            len,
            pattern,
            fua: super::effective_fua(ctx, false),
        }
    };
    let plan = Plan::new(lun, vec![phase], wanted).with_range(e.lba, blocks, false);
    Ok(Exec::Job(plan.boxed()))
}

#[cfg(test)]
mod tests {
    use super::super::test_cdb::*;
    use crate::cmd::DataDir;
    use crate::sense::{asc, SenseKey};
    use crate::testutil::{assert_check, assert_good, Fixture};

    fn ws10(lba: u32, blocks: u16, flags: u8) -> Vec<u8> {
        let mut c = rw10(0x41, lba, blocks);
        c[1] = flags;
        c
    }

    fn ws16(lba: u64, blocks: u32, flags: u8) -> Vec<u8> {
        let mut c = rw16(0x93, lba, blocks);
        c[1] = flags;
        c
    }

    #[test]
    fn repeats_the_block_over_the_range() {
        let mut f = Fixture::ram();
        let block: Vec<u8> = (0..512u32).map(|i| i as u8).collect();
        let (r, _) = f.run(&ws10(3, 5, 0), DataDir::ToDevice, block.clone());
        assert_good(&r);
        let (_, d) = f.read_in(&rw10(0x28, 3, 5), 5 * 512);
        assert!(d.chunks(512).all(|c| c == block.as_slice()));
        let (_, d) = f.read_in(&rw10(0x28, 8, 1), 512);
        assert_eq!(d, vec![0; 512]);
    }

    #[test]
    fn many_chunks_and_to_the_end() {
        let mut f = Fixture::ram();
        let n = f.lun.num_blocks();
        // 3 MiB: several scratch chunks.
        let (r, _) = f.run(&ws16(n - 6144, 0, 0), DataDir::ToDevice, vec![0x77; 512]);
        assert_good(&r);
        let (_, d) = f.read_in(&rw16(0x88, n - 6144, 6144), 6144 * 512);
        assert!(d.iter().all(|&b| b == 0x77));
        let (_, d) = f.read_in(&rw16(0x88, n - 6145, 1), 512);
        assert_eq!(d, vec![0; 512]);
    }

    #[test]
    fn unmap_deallocates_and_reads_zero() {
        let mut f = Fixture::ram();
        f.run(
            &rw10(0x2a, 0, 256),
            DataDir::ToDevice,
            vec![0xff; 256 * 512],
        );
        let before = f.lun.backend.block_status(0, 512).unwrap();
        assert_eq!(before.state, backends::ExtentState::Mapped);
        let (r, _) = f.run(&ws10(0, 256, 0x08), DataDir::ToDevice, vec![0; 512]);
        assert_good(&r);
        let (_, d) = f.read_in(&rw10(0x28, 0, 256), 256 * 512);
        assert!(d.iter().all(|&b| b == 0));
        let after = f.lun.backend.block_status(0, 512).unwrap();
        assert_eq!(after.state, backends::ExtentState::Deallocated);
        // NDOB with UNMAP: no data-out at all.
        let (r, _) = f.run(&ws16(0, 8, 0x09), DataDir::None, vec![]);
        assert_good(&r);
        assert_eq!(r.transferred, 0);
    }

    #[test]
    fn unmap_deallocates_whatever_the_data() {
        // libiscsi WriteSame10.UnmapUntilEnd: UNMAP with a 0xff block reads back
        // zeroes on an LBPRZ LUN.
        let mut f = Fixture::ram();
        f.run(&rw10(0x2a, 0, 2), DataDir::ToDevice, vec![0xff; 1024]);
        let (r, _) = f.run(&ws10(0, 2, 0x08), DataDir::ToDevice, vec![0xa6; 512]);
        assert_good(&r);
        let (_, d) = f.read_in(&rw10(0x28, 0, 2), 1024);
        assert_eq!(d, vec![0; 1024]);
    }

    #[test]
    fn unmap_bit_needs_a_thin_lun() {
        let mut cfg = crate::lun::LunConfig::new("thick", crate::testutil::uuid_for("thick"));
        cfg.thin = false;
        let mut f = Fixture::with(
            cfg,
            std::sync::Arc::new(backends::ram::RamBackend::new(1 << 20)),
        );
        let (r, _) = f.run(&ws16(0, 1, 0x08), DataDir::ToDevice, vec![0; 512]);
        assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
        f.run(&rw10(0x2a, 0, 1), DataDir::ToDevice, vec![3; 512]);
        let (r, _) = f.run(&ws16(0, 1, 0), DataDir::ToDevice, vec![0; 512]);
        assert_good(&r);
        let (_, d) = f.read_in(&rw10(0x28, 0, 1), 512);
        assert_eq!(d, vec![0; 512]);
    }

    #[test]
    fn refusals() {
        let mut f = Fixture::ram();
        let n = f.lun.num_blocks();
        // ANCHOR (with or without UNMAP).
        for fl in [0x10, 0x18] {
            let (r, _) = f.run(&ws10(0, 1, fl), DataDir::ToDevice, vec![0; 512]);
            assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
        }
        // WRPROTECT.
        let (r, _) = f.run(&ws16(0, 1, 0x20), DataDir::ToDevice, vec![0; 512]);
        assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
        // Data-out not one block.
        for len in [256, 1024] {
            let (r, _) = f.run(&ws10(0, 1, 0x08), DataDir::ToDevice, vec![0; len]);
            assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
        }
        // Past the end, with and without a count.
        for (lba, b) in [(n + 1, 0), (n - 1, 2), (u64::MAX, 1), (0x8000_0000, 0)] {
            let (r, _) = f.run(&ws16(lba, b, 0), DataDir::ToDevice, vec![0; 512]);
            assert_check(&r, SenseKey::IllegalRequest, asc::LBA_OUT_OF_RANGE);
        }
        // More than MAXIMUM WRITE SAME LENGTH.
        let big = (super::limits::MAX_WS_BLOCKS + 1) as u32;
        let (r, _) = f.run(&ws16(0, big, 0), DataDir::ToDevice, vec![0; 512]);
        assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
    }
}
