//! UNMAP (42h, SBC-3 5.28): deallocate the ranges of a parameter list. Only a thin
//! LUN (LBPME=1, LBPU=1) supports it; a fully provisioned one answers INVALID
//! COMMAND OPERATION CODE as if the command did not exist.
//!
//! Parameter list: an 8-byte header (UNMAP DATA LENGTH, UNMAP BLOCK DESCRIPTOR DATA
//! LENGTH) and 16-byte descriptors (LBA, NUMBER OF LOGICAL BLOCKS). Length zero
//! means nothing to do; 1..=7 bytes is PARAMETER LIST LENGTH ERROR; the descriptor
//! length is clipped to the bytes actually sent and an incomplete last descriptor
//! is ignored. Every descriptor is checked (range, MAXIMUM UNMAP BLOCK DESCRIPTOR
//! COUNT, MAXIMUM UNMAP LBA COUNT) before any is carried out.

use super::limits;
use super::plan::{Phase, Plan};
use super::{be16, be32, be64, byte_off, check_range};
use crate::exec::{CmdCtx, Exec, ExecResult};
use crate::sense::{asc, Sense};

/// One parsed descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct UnmapDesc {
    pub lba: u64,
    pub blocks: u64,
}

/// Parses and checks an UNMAP parameter list (`list`: the bytes received, at most
/// the PARAMETER LIST LENGTH). Capacity is `num_blocks`.
pub(crate) fn parse(list: &[u8], num_blocks: u64) -> Result<Vec<UnmapDesc>, Sense> {
    if list.len() < 8 {
        return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    let bd_len = usize::try_from(be16(list, 2)).unwrap_or(usize::MAX);
    let avail = (list.len() - 8).min(bd_len);
    let count = avail / 16;
    if count > limits::MAX_UNMAP_DESCRIPTORS as usize {
        return Err(Sense::invalid_param_field(2, None));
    }
    let mut out = Vec::with_capacity(count);
    let mut total: u64 = 0;
    for i in 0..count {
        let at = 8 + i * 16;
        let lba = be64(list, at);
        let blocks = be32(list, at + 8);
        match lba.checked_add(blocks) {
            Some(end) if end <= num_blocks => {}
            _ => return Err(Sense::illegal(asc::LBA_OUT_OF_RANGE)),
        }
        total = total.saturating_add(blocks);
        if total > u64::from(limits::MAX_UNMAP_LBA_COUNT) {
            let field = u16::try_from(at + 8).unwrap_or(u16::MAX);
            return Err(Sense::invalid_param_field(field, None));
        }
        if blocks > 0 {
            out.push(UnmapDesc { lba, blocks });
        }
    }
    Ok(out)
}

pub(super) fn unmap(ctx: &mut CmdCtx<'_>) -> ExecResult {
    let cdb = ctx.cdb;
    let lun = ctx.lun;
    if !lun.config.thin {
        return Err(Sense::illegal(asc::INVALID_COMMAND_OPERATION_CODE).into());
    }
    if cdb[1] & 0x01 != 0 {
        // ANCHOR: ANC_SUP is zero.
        return Err(Sense::invalid_cdb_field(1, Some(0)).into());
    }
    let pll = be16(cdb, 7) as usize;
    if pll == 0 {
        return Ok(Exec::Good(0));
    }
    let list = ctx.data_out(pll);
    let descs = parse(&list, lun.num_blocks())?;
    // Sanity: every range was checked against the capacity above.
    debug_assert!(descs
        .iter()
        .all(|d| check_range(lun, d.lba, d.blocks).is_ok()));
    let bs = u64::from(lun.block_size());
    let phases: Vec<Phase> = descs
        .iter()
        .map(|d| Phase::Zero {
            off: byte_off(lun, d.lba),
            len: d.blocks * bs,
            discard: true,
        })
        .collect();
    // One shared range spanning every descriptor keeps COMPARE AND WRITE and
    // ORWRITE atomic against this deallocation.
    let mut plan = Plan::new(lun, phases, pll as u32);
    if let (Some(lo), Some(hi)) = (
        descs.iter().map(|d| d.lba).min(),
        descs.iter().map(|d| d.lba + d.blocks).max(),
    ) {
        plan = plan.with_range(lo, hi - lo, false);
    }
    Ok(Exec::Job(plan.boxed()))
}

#[cfg(test)]
mod tests {
    use super::super::test_cdb::*;
    use super::*;
    use crate::cmd::DataDir;
    use crate::sense::SenseKey;
    use crate::testutil::{assert_check, assert_good, Fixture};

    #[test]
    fn parse_checks_every_length() {
        assert_eq!(
            parse(&[0; 7], 100).unwrap_err().asc,
            asc::PARAMETER_LIST_LENGTH_ERROR
        );
        assert!(parse(&unmap_params(&[]), 100).unwrap().is_empty());
        let ok = unmap_params(&[(0, 10), (50, 0), (90, 10)]);
        assert_eq!(parse(&ok, 100).unwrap().len(), 2);
        // An incomplete last descriptor is ignored.
        let mut cut = ok.clone();
        cut.truncate(8 + 16 + 10);
        assert_eq!(parse(&cut, 100).unwrap().len(), 1);
        // Past the end.
        let e = parse(&unmap_params(&[(95, 6)]), 100).unwrap_err();
        assert_eq!(e.asc, asc::LBA_OUT_OF_RANGE);
        let e = parse(&unmap_params(&[(u64::MAX, 2)]), 100).unwrap_err();
        assert_eq!(e.asc, asc::LBA_OUT_OF_RANGE);
        // Too many descriptors.
        let many: Vec<(u64, u32)> = (0..=limits::MAX_UNMAP_DESCRIPTORS as u64)
            .map(|i| (i, 1))
            .collect();
        let e = parse(&unmap_params(&many), 1 << 20).unwrap_err();
        assert_eq!(e.asc, asc::INVALID_FIELD_IN_PARAMETER_LIST);
        // Too many blocks in total.
        let half = limits::MAX_UNMAP_LBA_COUNT / 2 + 1;
        let e = parse(&unmap_params(&[(0, half), (1 << 30, half)]), 1 << 40).unwrap_err();
        assert_eq!(e.asc, asc::INVALID_FIELD_IN_PARAMETER_LIST);
        assert_eq!(e.field.unwrap().byte, 8 + 16 + 8);
    }

    #[test]
    fn unmap_deallocates() {
        let mut f = Fixture::ram();
        f.run(
            &rw10(0x2a, 0, 256),
            DataDir::ToDevice,
            vec![b'a'; 256 * 512],
        );
        let p = unmap_params(&[(0, 128), (200, 56)]);
        let (r, _) = f.run(&unmap_cdb(p.len() as u16), DataDir::ToDevice, p);
        assert_good(&r);
        let (_, d) = f.read_in(&rw10(0x28, 0, 256), 256 * 512);
        assert!(d[..128 * 512].iter().all(|&b| b == 0));
        assert!(d[128 * 512..200 * 512].iter().all(|&b| b == b'a'));
        assert!(d[200 * 512..].iter().all(|&b| b == 0));
    }

    #[test]
    fn unmap_command_errors() {
        let mut f = Fixture::ram();
        let n = f.lun.num_blocks();
        let (r, _) = f.run(&unmap_cdb(0), DataDir::None, vec![]);
        assert_good(&r);
        let (r, _) = f.run(&unmap_cdb(4), DataDir::ToDevice, vec![0; 4]);
        assert_check(
            &r,
            SenseKey::IllegalRequest,
            asc::PARAMETER_LIST_LENGTH_ERROR,
        );
        let p = unmap_params(&[(n, 1)]);
        let (r, _) = f.run(&unmap_cdb(p.len() as u16), DataDir::ToDevice, p);
        assert_check(&r, SenseKey::IllegalRequest, asc::LBA_OUT_OF_RANGE);
        let p = unmap_params(&[(n, 0)]);
        let (r, _) = f.run(&unmap_cdb(p.len() as u16), DataDir::ToDevice, p);
        assert_good(&r);
        let mut c = unmap_cdb(24);
        c[1] = 1;
        let (r, _) = f.run(&c, DataDir::ToDevice, unmap_params(&[(0, 1)]));
        assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
    }

    #[test]
    fn unmap_needs_a_thin_lun() {
        let mut cfg = crate::lun::LunConfig::new("thick", crate::testutil::uuid_for("thick"));
        cfg.thin = false;
        let mut f = Fixture::with(
            cfg,
            std::sync::Arc::new(backends::ram::RamBackend::new(1 << 20)),
        );
        let p = unmap_params(&[(0, 1)]);
        let (r, _) = f.run(&unmap_cdb(p.len() as u16), DataDir::ToDevice, p);
        assert_check(
            &r,
            SenseKey::IllegalRequest,
            asc::INVALID_COMMAND_OPERATION_CODE,
        );
    }
}
