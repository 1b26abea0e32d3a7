//! GET LBA STATUS (SERVICE ACTION IN(16) 9Eh/12h, SBC-3 5.6): the provisioning
//! status of the blocks from the starting LBA on, as LBA status descriptors.
//!
//! The answer takes bounded work whatever the backend: at most `MAX_DESCRIPTORS`
//! calls of `Backend::block_status`, each of which must itself answer in bounded
//! time. A fully provisioned LUN, or a backend that cannot tell, reports every block
//! mapped.

use backends::ExtentState;

use super::{be32, be64};
use crate::exec::{CmdCtx, Exec, ExecResult};
use crate::lun::Lun;
use crate::sense::{asc, Sense};

/// Most descriptors one answer carries.
const MAX_DESCRIPTORS: usize = 64;

const MAPPED: u8 = 0;
const DEALLOCATED: u8 = 1;

/// `(lba, blocks, status)` runs from `lba` on: at most `max` of them, never past the
/// end of the LUN, each at most `u32::MAX` blocks.
pub(crate) fn runs(lun: &Lun, lba: u64, max: usize) -> Vec<(u64, u32, u8)> {
    let end = lun.num_blocks();
    let bs = u64::from(lun.block_size());
    let ask = lun.config.thin && lun.backend.capabilities().block_status;
    let mut out: Vec<(u64, u32, u8)> = Vec::new();
    let mut at = lba;
    while at < end && out.len() < max {
        let (blocks, status) = if ask {
            match lun
                .backend
                .block_status(at.saturating_mul(bs), (end - at).saturating_mul(bs))
            {
                Ok(x) if x.len > 0 => {
                    let last = x.offset.saturating_add(x.len).div_ceil(bs);
                    let status = match x.state {
                        ExtentState::Mapped => MAPPED,
                        ExtentState::Deallocated => DEALLOCATED,
                    };
                    (last.saturating_sub(at).max(1), status)
                }
                // A backend that cannot answer: mapped is the safe report.
                _ => (end - at, MAPPED),
            }
        } else {
            (end - at, MAPPED)
        };
        let blocks = blocks.min(end - at).min(u64::from(u32::MAX));
        // Merge with the previous run when the backend split one state.
        match out.last_mut() {
            Some(prev)
                if prev.2 == status
                    && prev.0 + u64::from(prev.1) == at
                    && u64::from(prev.1) + blocks <= u64::from(u32::MAX) =>
            {
                prev.1 += blocks as u32;
            }
            _ => out.push((at, blocks as u32, status)),
        }
        at += blocks;
    }
    out
}

pub(super) fn get_lba_status(ctx: &mut CmdCtx<'_>) -> ExecResult {
    let cdb = ctx.cdb;
    let lba = be64(cdb, 2);
    let alloc = usize::try_from(be32(cdb, 10)).unwrap_or(usize::MAX);
    if lba >= ctx.lun.num_blocks() {
        return Err(Sense::illegal(asc::LBA_OUT_OF_RANGE).into());
    }
    let room = (alloc.saturating_sub(8) / 16).clamp(1, MAX_DESCRIPTORS);
    let runs = runs(ctx.lun, lba, room);
    let mut d = vec![0u8; 8];
    for (l, n, s) in &runs {
        d.extend_from_slice(&l.to_be_bytes());
        d.extend_from_slice(&n.to_be_bytes());
        d.extend_from_slice(&[*s, 0, 0, 0]);
    }
    let plen = u32::try_from(d.len() - 4).unwrap_or(u32::MAX);
    d[0..4].copy_from_slice(&plen.to_be_bytes());
    d.truncate(alloc);
    Ok(Exec::Data(d))
}

#[cfg(test)]
mod tests {
    use super::super::test_cdb::*;
    use crate::cmd::DataDir;
    use crate::sense::{asc, SenseKey};
    use crate::testutil::{assert_check, assert_good, Fixture};

    fn gls(lba: u64, alloc: u32) -> Vec<u8> {
        let mut c = vec![0u8; 16];
        c[0] = 0x9e;
        c[1] = 0x12;
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[10..14].copy_from_slice(&alloc.to_be_bytes());
        c
    }

    fn descs(d: &[u8]) -> Vec<(u64, u32, u8)> {
        d[8..]
            .chunks(16)
            .filter(|c| c.len() == 16)
            .map(|c| {
                (
                    u64::from_be_bytes(c[0..8].try_into().unwrap()),
                    u32::from_be_bytes(c[8..12].try_into().unwrap()),
                    c[12],
                )
            })
            .collect()
    }

    #[test]
    fn reports_mapped_and_deallocated_runs_to_the_end() {
        let mut f = Fixture::ram();
        let n = f.lun.num_blocks();
        // 64 KiB chunks = 128 blocks: map the second chunk.
        f.run(&rw10(0x2a, 128, 1), DataDir::ToDevice, vec![1; 512]);
        let (r, d) = f.read_in(&gls(0, 1024), 1024);
        assert_good(&r);
        let ds = descs(&d);
        assert_eq!(ds[0], (0, 128, 1));
        assert_eq!(ds[1], (128, 128, 0));
        assert_eq!(ds[2], (256, (n - 256) as u32, 1));
        assert_eq!(ds.len(), 3);
        let plen = u32::from_be_bytes(d[0..4].try_into().unwrap());
        assert_eq!(plen as usize, 4 + 3 * 16);
        // The first descriptor starts at the LBA asked for.
        let (_, d) = f.read_in(&gls(130, 24), 24);
        assert_eq!(descs(&d), vec![(130, 126, 0)]);
    }

    #[test]
    fn past_the_end_is_lba_out_of_range() {
        let mut f = Fixture::ram();
        let n = f.lun.num_blocks();
        for lba in [n, n + 1, 1 << 63, u64::MAX] {
            let (r, _) = f.read_in(&gls(lba, 24), 24);
            assert_check(&r, SenseKey::IllegalRequest, asc::LBA_OUT_OF_RANGE);
        }
        let (r, _) = f.read_in(&gls(n - 1, 24), 24);
        assert_good(&r);
    }

    #[test]
    fn small_allocation_truncates() {
        let mut f = Fixture::ram();
        let (r, d) = f.read_in(&gls(0, 4), 4);
        assert_good(&r);
        assert_eq!(d.len(), 4);
    }

    /// A backend without holes (every call says "mapped, one block"): still bounded.
    #[test]
    fn bounded_on_a_backend_that_answers_one_block_at_a_time() {
        struct OneBlock(backends::ram::RamBackend);
        impl backends::Backend for OneBlock {
            fn size(&self) -> u64 {
                self.0.size()
            }
            fn capabilities(&self) -> backends::Capabilities {
                self.0.capabilities()
            }
            fn open_channel(
                &self,
                n: &vmm_sys_util::eventfd::EventFd,
            ) -> Result<Box<dyn backends::IoChannel>, backends::BackendError> {
                self.0.open_channel(n)
            }
            fn block_status(
                &self,
                offset: u64,
                _len: u64,
            ) -> Result<backends::Extent, backends::BackendError> {
                let state = if (offset / 512) & 1 == 0 {
                    backends::ExtentState::Mapped
                } else {
                    backends::ExtentState::Deallocated
                };
                Ok(backends::Extent {
                    offset,
                    len: 512,
                    state,
                })
            }
            fn resize(&self, s: u64) -> Result<(), backends::BackendError> {
                self.0.resize(s)
            }
            fn describe(&self) -> String {
                "one".into()
            }
        }
        let cfg = crate::lun::LunConfig::new("one", crate::testutil::uuid_for("one"));
        let mut f = Fixture::with(
            cfg,
            std::sync::Arc::new(OneBlock(backends::ram::RamBackend::new(1 << 30))),
        );
        let (r, d) = f.read_in(&gls(0, 1 << 20), 1 << 20);
        assert_good(&r);
        assert_eq!(descs(&d).len(), super::MAX_DESCRIPTORS);
    }

    #[test]
    fn thick_lun_is_all_mapped() {
        let mut cfg = crate::lun::LunConfig::new("thick", crate::testutil::uuid_for("thick"));
        cfg.thin = false;
        let mut f = Fixture::with(
            cfg,
            std::sync::Arc::new(backends::ram::RamBackend::new(1 << 20)),
        );
        let (r, d) = f.read_in(&gls(0, 64), 64);
        assert_good(&r);
        assert_eq!(descs(&d), vec![(0, 2048, 0)]);
    }
}
