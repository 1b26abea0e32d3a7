//! SANITIZE (48h, SBC-4 5.30): OVERWRITE (the initialization pattern over every
//! block, in bounded chunks, as many passes as asked, inverted between passes with
//! INVERT), BLOCK ERASE (deallocate the whole medium; zero it when fully
//! provisioned) and EXIT FAILURE MODE. CRYPTOGRAPHIC ERASE is not supported: it has
//! no row in the opcode table, so it is INVALID FIELD IN CDB (service action) and
//! REPORT SUPPORTED OPERATION CODES does not list it.
//!
//! While a sanitize runs the LUN answers NOT READY, SANITIZE IN PROGRESS (with the
//! progress indication) to everything but INQUIRY, REPORT LUNS, REQUEST SENSE and
//! LOG SENSE (`super::check_sanitize`). If it fails or is aborted after it started
//! writing, the LUN stays in failure mode — medium access gets MEDIUM ERROR,
//! SANITIZE COMMAND FAILED — until a SANITIZE completes or, when the failed one had
//! AUSE set, EXIT FAILURE MODE. IMMED is accepted; status follows completion.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use backends::IoError;

use super::plan::{Phase, Plan};
use super::{SAN_FAILED, SAN_FAILED_AUSE, SAN_IDLE};
use crate::exec::{CmdCtx, Exec, ExecResult, Job, JobCtx, LbaRange, Step};
use crate::lun::Lun;
use crate::sense::{asc, ScsiStatus, Sense, SenseKey};

const OVERWRITE: u8 = 0x01;
const BLOCK_ERASE: u8 = 0x02;
const EXIT_FAILURE_MODE: u8 = 0x1f;

/// Parses the OVERWRITE parameter list into (passes, invert, one block of
/// pattern).
fn overwrite_params(list: &[u8], bs: usize) -> Result<(u8, bool, Vec<u8>), Sense> {
    let invert = list[0] & 0x80 != 0;
    if list[0] & 0x60 != 0 {
        return Err(Sense::invalid_param_field(0, Some(6)));
    }
    let count = list[0] & 0x1f;
    if count == 0 {
        return Err(Sense::invalid_param_field(0, Some(4)));
    }
    let ipl = usize::from(u16::from_be_bytes([list[2], list[3]]));
    if ipl == 0 || ipl > bs || ipl + 4 > list.len() {
        return Err(Sense::invalid_param_field(2, None));
    }
    let ip = &list[4..4 + ipl];
    let block: Vec<u8> = ip.iter().copied().cycle().take(bs).collect();
    Ok((count, invert, block))
}

pub(super) fn sanitize(ctx: &mut CmdCtx<'_>) -> ExecResult {
    let cdb = ctx.cdb;
    // Byte 1 bit 6 and bytes 2 to 6 are reserved (SBC-4 5.30).
    if cdb[1] & 0x40 != 0 {
        return Err(Sense::invalid_cdb_field(1, Some(6)).into());
    }
    if let Some(i) = (2..=6).find(|&i| cdb[i] != 0) {
        return Err(Sense::invalid_cdb_field(i as u16, None).into());
    }
    let sa = cdb[1] & 0x1f;
    let ause = cdb[1] & 0x20 != 0;
    let pll = usize::try_from(super::be16(cdb, 7)).unwrap_or(usize::MAX);
    let lun = ctx.lun;
    let bs = lun.block_size() as usize;
    let total = lun.num_blocks().saturating_mul(bs as u64);
    let phases = match sa {
        OVERWRITE => {
            if pll < 5 || pll > bs + 4 {
                return Err(Sense::invalid_cdb_field(7, None).into());
            }
            let list = ctx.data_out(pll);
            if list.len() < pll {
                return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR).into());
            }
            let (count, invert, block) = overwrite_params(&list, bs)?;
            let inverted: Vec<u8> = block.iter().map(|b| !b).collect();
            let mut phases: Vec<Phase> = (0..count)
                .map(|pass| Phase::Pattern {
                    off: 0,
                    len: total,
                    pattern: if invert && pass % 2 == 1 {
                        inverted.clone()
                    } else {
                        block.clone()
                    },
                    fua: false,
                })
                .collect();
            phases.push(Phase::Flush);
            phases
        }
        BLOCK_ERASE => {
            if pll != 0 {
                return Err(Sense::invalid_cdb_field(7, None).into());
            }
            vec![
                Phase::Zero {
                    off: 0,
                    len: total,
                    discard: lun.config.thin,
                },
                Phase::Flush,
            ]
        }
        EXIT_FAILURE_MODE => {
            if pll != 0 {
                return Err(Sense::invalid_cdb_field(7, None).into());
            }
            return match lun.sanitize.get() {
                SAN_FAILED => Err(Sense::invalid_cdb_field(1, Some(4)).into()),
                _ => {
                    lun.sanitize.set(SAN_IDLE);
                    Ok(Exec::Good(0))
                }
            };
        }
        _ => return Err(Sense::invalid_cdb_field(1, Some(4)).into()),
    };
    if !lun.sanitize.begin() {
        let s = super::sanitize_sense(lun).unwrap_or(Sense::new(
            SenseKey::NotReady,
            asc::LUN_NOT_READY_SANITIZE_IN_PROGRESS,
        ));
        return Err(s.into());
    }
    let blocks = lun.num_blocks();
    let wanted = u32::try_from(pll).unwrap_or(u32::MAX);
    let plan = Plan::new(lun, phases, wanted).with_range(0, blocks, true);
    Ok(Exec::Job(Box::new(SanitizeJob {
        plan,
        lun: lun.clone(),
        ause,
        started: false,
        finished: false,
    })))
}

/// A sanitize plan that keeps the LUN's sanitize state and progress.
struct SanitizeJob {
    plan: Plan,
    lun: Arc<Lun>,
    ause: bool,
    started: bool,
    finished: bool,
}

impl SanitizeJob {
    fn failed_state(&self) -> u8 {
        if self.ause {
            SAN_FAILED_AUSE
        } else {
            SAN_FAILED
        }
    }
}

impl Job for SanitizeJob {
    fn step(&mut self, ctx: &mut JobCtx<'_>, last: Option<Result<usize, IoError>>) -> Step {
        let step = self.plan.step(ctx, last);
        self.lun
            .sanitize
            .progress
            .store(self.plan.progress(), Ordering::Relaxed);
        match &step {
            Step::Io { .. } => self.started = true,
            Step::Done(Ok(_)) => {
                self.finished = true;
                self.lun.sanitize.set(SAN_IDLE);
            }
            Step::Done(Err(_)) => {
                self.finished = true;
                self.lun.sanitize.set(self.failed_state());
            }
        }
        step
    }

    fn range(&self) -> Option<LbaRange> {
        self.plan.range()
    }

    fn status(&self) -> ScsiStatus {
        ScsiStatus::Good
    }
}

impl Drop for SanitizeJob {
    /// Aborted (task management, nexus loss): a sanitize that never wrote leaves
    /// the LUN as it was; one that did leaves it in failure mode.
    fn drop(&mut self) {
        if !self.finished {
            let s = if self.started {
                self.failed_state()
            } else {
                SAN_IDLE
            };
            self.lun.sanitize.set(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_cdb::*;
    use super::*;
    use crate::cmd::DataDir;
    use crate::testutil::{assert_check, assert_good, Fixture};

    fn san(sa: u8, pll: u16) -> Vec<u8> {
        let l = pll.to_be_bytes();
        vec![0x48, sa, 0, 0, 0, 0, 0, l[0], l[1], 0]
    }

    fn small() -> Fixture {
        let cfg = crate::lun::LunConfig::new("san", crate::testutil::uuid_for("san"));
        Fixture::with(
            cfg,
            std::sync::Arc::new(backends::ram::RamBackend::new(4 << 20)),
        )
    }

    #[test]
    fn overwrite_fills_every_block_with_the_pattern() {
        let mut f = small();
        let n = f.lun.num_blocks();
        f.run(&rw10(0x2a, 0, 4), DataDir::ToDevice, vec![b'a'; 2048]);
        let mut p = vec![0x01, 0, 0, 4];
        p.extend_from_slice(&[1, 2, 3, 4]);
        let (r, _) = f.run(&san(OVERWRITE, 8), DataDir::ToDevice, p);
        assert_good(&r);
        for lba in [0, n - 1] {
            let (_, d) = f.read_in(&rw16(0x88, lba, 1), 512);
            assert!(d.chunks(4).all(|c| c == [1, 2, 3, 4]));
        }
        // Two passes with INVERT: the last pass is the inverted pattern.
        let mut p = vec![0x82, 0, 2, 0];
        p.extend_from_slice(&[0xaa; 512]);
        let (r, _) = f.run(&san(OVERWRITE, 516), DataDir::ToDevice, p);
        assert_good(&r);
        let (_, d) = f.read_in(&rw10(0x28, 7, 1), 512);
        assert_eq!(d, vec![0x55; 512]);
        assert_eq!(f.lun.sanitize.get(), SAN_IDLE);
    }

    #[test]
    fn overwrite_parameter_checks() {
        let mut f = small();
        for pll in [0u16, 1, 4, 517] {
            let (r, _) = f.run(&san(OVERWRITE, pll), DataDir::ToDevice, vec![1; 600]);
            assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
        }
        let cases: [[u8; 4]; 3] = [[0, 0, 2, 0], [1, 0, 0, 0], [1, 0, 2, 4]];
        for hdr in cases {
            let mut p = hdr.to_vec();
            p.extend_from_slice(&[0xaa; 512]);
            let (r, _) = f.run(&san(OVERWRITE, 516), DataDir::ToDevice, p);
            assert_check(
                &r,
                SenseKey::IllegalRequest,
                asc::INVALID_FIELD_IN_PARAMETER_LIST,
            );
        }
    }

    #[test]
    fn block_erase_deallocates_everything() {
        let mut f = small();
        let n = f.lun.num_blocks();
        f.run(&rw16(0x8a, n - 4, 4), DataDir::ToDevice, vec![b'a'; 2048]);
        let (r, _) = f.run(&san(BLOCK_ERASE, 0), DataDir::None, vec![]);
        assert_good(&r);
        let (_, d) = f.read_in(&rw16(0x88, n - 4, 4), 2048);
        assert!(d.iter().all(|&b| b == 0));
        let runs = super::super::lba_status::runs(&f.lun, 0, 16);
        assert_eq!(runs, vec![(0, n as u32, 1)]);
        let (r, _) = f.run(&san(BLOCK_ERASE, 8), DataDir::ToDevice, vec![0; 8]);
        assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
    }

    #[test]
    fn unsupported_service_actions() {
        let mut f = small();
        for sa in [0u8, 3, 4, 0x10, 0x1e] {
            let (r, _) = f.run(&san(sa, 0), DataDir::None, vec![]);
            assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
        }
        let (r, _) = f.run(&san(EXIT_FAILURE_MODE, 8), DataDir::ToDevice, vec![0; 8]);
        assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
        let (r, _) = f.run(&san(EXIT_FAILURE_MODE, 0), DataDir::None, vec![]);
        assert_good(&r);
    }

    #[test]
    fn in_progress_and_failure_mode_gate_other_commands() {
        let mut f = small();
        f.lun.sanitize.set(super::super::SAN_RUNNING);
        f.lun.sanitize.progress.store(0x4000, Ordering::Relaxed);
        let (r, _) = f.read_in(&rw10(0x28, 0, 1), 512);
        assert_check(
            &r,
            SenseKey::NotReady,
            asc::LUN_NOT_READY_SANITIZE_IN_PROGRESS,
        );
        assert_eq!(r.sense_data.unwrap().progress, Some(0x4000));
        let (r, _) = f.read_in(&[0x12, 0, 0, 0, 36, 0], 36);
        assert_good(&r);
        let (r, _) = f.run(&san(BLOCK_ERASE, 0), DataDir::None, vec![]);
        assert_check(
            &r,
            SenseKey::NotReady,
            asc::LUN_NOT_READY_SANITIZE_IN_PROGRESS,
        );
        // Failed without AUSE: medium access fails, EXIT FAILURE MODE is refused,
        // a new sanitize clears it.
        f.lun.sanitize.set(SAN_FAILED);
        let (r, _) = f.read_in(&rw10(0x28, 0, 1), 512);
        assert_check(&r, SenseKey::MediumError, asc::SANITIZE_COMMAND_FAILED);
        let (r, _) = f.run(&san(EXIT_FAILURE_MODE, 0), DataDir::None, vec![]);
        assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
        let (r, _) = f.run(&san(BLOCK_ERASE, 0), DataDir::None, vec![]);
        assert_good(&r);
        let (r, _) = f.read_in(&rw10(0x28, 0, 1), 512);
        assert_good(&r);
        // Failed with AUSE: EXIT FAILURE MODE leaves failure mode.
        f.lun.sanitize.set(SAN_FAILED_AUSE);
        let (r, _) = f.run(&san(EXIT_FAILURE_MODE, 0), DataDir::None, vec![]);
        assert_good(&r);
        let (r, _) = f.read_in(&rw10(0x28, 0, 1), 512);
        assert_good(&r);
    }

    #[test]
    fn an_aborted_sanitize_fails_only_once_it_has_written() {
        let f = small();
        for (started, ause, after) in [
            (false, false, SAN_IDLE),
            (true, false, SAN_FAILED),
            (true, true, SAN_FAILED_AUSE),
        ] {
            assert!(f.lun.sanitize.begin());
            let job = SanitizeJob {
                plan: Plan::new(&f.lun, vec![Phase::Flush], 0),
                lun: f.lun.clone(),
                ause,
                started,
                finished: false,
            };
            drop(job);
            assert_eq!(f.lun.sanitize.get(), after);
        }
        // A running sanitize cannot be claimed twice.
        f.lun.sanitize.set(super::super::SAN_RUNNING);
        assert!(!f.lun.sanitize.begin());
    }

    #[test]
    fn read_only_lun_refuses_sanitize() {
        let mut cfg = crate::lun::LunConfig::new("ro", crate::testutil::uuid_for("ro"));
        cfg.read_only = true;
        let mut f = Fixture::with(
            cfg,
            std::sync::Arc::new(backends::ram::RamBackend::new(1 << 20)),
        );
        let (r, _) = f.run(&san(BLOCK_ERASE, 0), DataDir::None, vec![]);
        assert_check(&r, SenseKey::DataProtect, asc::WRITE_PROTECTED);
    }
}
