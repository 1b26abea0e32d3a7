//! SANITIZE (48h, SBC-4 5.30): OVERWRITE (the initialization pattern over every
//! block, in bounded chunks, as many passes as asked, inverted between passes with
//! INVERT), BLOCK ERASE (deallocate the whole medium; zero it when fully
//! provisioned) and EXIT FAILURE MODE. CRYPTOGRAPHIC ERASE is not supported: it has
//! no row in the opcode table, so it is INVALID FIELD IN CDB (service action) and
//! REPORT SUPPORTED OPERATION CODES does not list it.
//!
//! The command validates, claims the LUN, waits until no write is in flight on
//! it (an exclusive range over every block) and then starts the operation in the
//! background (`super::sanitize_op`): with IMMED set it returns GOOD at once,
//! without it waits, parked, for the operation's end. Aborting the command, a
//! reset or the loss of its I_T nexus ends the command, not the operation.
//!
//! While a sanitize runs the LUN answers NOT READY, SANITIZE IN PROGRESS (with the
//! progress indication) to everything but INQUIRY, REPORT LUNS, REQUEST SENSE and
//! LOG SENSE (`super::check_sanitize`). If it fails the LUN stays in failure mode
//! — medium access gets MEDIUM ERROR, SANITIZE COMMAND FAILED — until a SANITIZE
//! completes or, when the failed one had AUSE set, EXIT FAILURE MODE.

use std::sync::Arc;

use backends::IoError;

use super::plan::{Phase, Plan};
use super::sanitize_op::{Operation, Outcome};
use super::{SAN_FAILED, SAN_IDLE};
use crate::exec::{CmdCtx, Exec, ExecResult, Job, JobCtx, LbaRange, Step};
use crate::lun::Lun;
use crate::sense::{asc, CmdError, Sense, SenseKey};

const OVERWRITE: u8 = 0x01;
const BLOCK_ERASE: u8 = 0x02;
const EXIT_FAILURE_MODE: u8 = 0x1f;

/// A block erase deallocates in at most this many pieces (at least 1 MiB
/// each), so that its progress indication moves and pacing has steps to pace.
const ERASE_PIECES: u64 = 256;

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

/// BLOCK ERASE of `total` bytes as deallocation (or zeroing) pieces of whole
/// blocks, each a multiple of `unit` (the backend's preferred I/O size, when it
/// is whole blocks) too: a store that allocates in units deallocates only whole
/// ones (an RBD image removes an object discarded whole, and only zeroes one
/// discarded in parts, which GET LBA STATUS then still reports mapped).
fn erase_phases(total: u64, bs: u64, unit: u64, discard: bool) -> Vec<Phase> {
    let bs = bs.max(1);
    let unit = if unit > bs && unit.is_multiple_of(bs) {
        unit
    } else {
        bs
    };
    let piece = total
        .div_ceil(ERASE_PIECES)
        .max(1 << 20)
        .div_ceil(unit)
        .saturating_mul(unit);
    let mut phases = Vec::new();
    let mut off = 0;
    while off < total {
        let len = piece.min(total - off);
        phases.push(Phase::Zero { off, len, discard });
        off += len;
    }
    phases
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
    let immed = cdb[1] & 0x80 != 0;
    let sa = cdb[1] & 0x1f;
    let ause = cdb[1] & 0x20 != 0;
    let pll = usize::try_from(super::be16(cdb, 7)).unwrap_or(usize::MAX);
    let lun = ctx.lun;
    let bs = lun.block_size() as usize;
    let total = lun.num_blocks().saturating_mul(bs as u64);
    let mut phases = match sa {
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
            (0..count)
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
                .collect()
        }
        BLOCK_ERASE => {
            if pll != 0 {
                return Err(Sense::invalid_cdb_field(7, None).into());
            }
            let unit = u64::from(lun.backend.capabilities().optimal_transfer);
            erase_phases(total, bs as u64, unit, lun.config.thin)
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
    phases.push(Phase::Flush);
    if !lun.sanitize.begin() {
        let s = super::sanitize_sense(lun).unwrap_or(Sense::new(
            SenseKey::NotReady,
            asc::LUN_NOT_READY_SANITIZE_IN_PROGRESS,
        ));
        return Err(s.into());
    }
    let wanted = u32::try_from(pll).unwrap_or(u32::MAX);
    let outcome = Arc::new(Outcome::default());
    let op = Operation {
        plan: Plan::new(lun, phases, wanted),
        lun: Arc::downgrade(lun),
        nexus: ctx.nexus.clone(),
        registry: ctx.registry.clone(),
        ause,
        rate: lun.config.sanitize_rate,
        outcome: outcome.clone(),
    };
    Ok(Exec::Job(Box::new(SanitizeCmd {
        lun: lun.clone(),
        start: Some(op),
        outcome,
        immed,
        wanted,
        range: LbaRange {
            lba: 0,
            blocks: lun.num_blocks(),
            exclusive: true,
        },
    })))
}

/// The SANITIZE command: starts the operation once no other write is in flight,
/// then answers at once (IMMED) or when the operation ends.
struct SanitizeCmd {
    lun: Arc<Lun>,
    /// The operation, until it is started.
    start: Option<Operation>,
    outcome: Arc<Outcome>,
    immed: bool,
    wanted: u32,
    range: LbaRange,
}

impl Job for SanitizeCmd {
    fn step(&mut self, ctx: &mut JobCtx<'_>, _last: Option<Result<usize, IoError>>) -> Step {
        if let Some(op) = self.start.take() {
            if op.spawn().is_err() {
                // Nothing was written: the LUN is as it was.
                self.lun.sanitize.set(SAN_IDLE);
                return Step::Done(Err(CmdError::from(Sense::new(
                    SenseKey::HardwareError,
                    asc::INTERNAL_TARGET_FAILURE,
                ))));
            }
            if self.immed {
                return Step::Done(Ok(self.wanted));
            }
        }
        match self.outcome.poll(ctx.waker.map(|w| w.waker())) {
            Some(r) => Step::Done(r.map(|()| self.wanted)),
            None => Step::Park,
        }
    }

    fn range(&self) -> Option<LbaRange> {
        Some(self.range)
    }
}

impl Drop for SanitizeCmd {
    /// Aborted before the operation started (waiting for writes in flight): the
    /// LUN is released as it was. Once started, the operation goes on alone.
    fn drop(&mut self) {
        if self.start.is_some() {
            self.lun.sanitize.set(SAN_IDLE);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::super::test_cdb::*;
    use super::super::SAN_FAILED_AUSE;
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

    /// A LUN whose writes at block 0 are held until released.
    fn held() -> (Fixture, backends::fault::FaultControl) {
        use backends::fault::{FaultAction, FaultBackend, FaultRule, OpKind, OpMatch};
        let fault = FaultBackend::new(std::sync::Arc::new(backends::ram::RamBackend::new(4 << 20)));
        let ctl = fault.control();
        ctl.add(FaultRule::new(
            OpMatch::kind(OpKind::Write).overlapping(0, 512),
            FaultAction::Hold,
        ));
        let cfg = crate::lun::LunConfig::new("held", crate::testutil::uuid_for("held"));
        (Fixture::with(cfg, std::sync::Arc::new(fault)), ctl)
    }

    fn overwrite_list() -> Vec<u8> {
        let mut p = vec![0x01, 0, 0, 4];
        p.extend_from_slice(&[9, 8, 7, 6]);
        p
    }

    /// Runs a task management function; its response, and the commands that
    /// completed meanwhile (token, whether they had a status).
    fn tmf(
        f: &mut Fixture,
        function: crate::tmf::TmfFunction,
    ) -> (crate::tmf::TmfResponse, Vec<(u64, bool)>) {
        f.worker.task_mgmt(crate::tmf::TmfRequest {
            nexus: f.nexus.clone(),
            lun: 0,
            function,
            token: 77,
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut ev = Vec::new();
        let mut cmds = Vec::new();
        loop {
            f.worker.wait(20, &mut ev);
            for e in ev.drain(..) {
                match e {
                    crate::worker::Event::Tmf {
                        token: 77,
                        response,
                    } => return (response, cmds),
                    crate::worker::Event::Cmd(c) => cmds.push((c.token, c.response.is_some())),
                    crate::worker::Event::Tmf { .. } => {}
                }
            }
            assert!(std::time::Instant::now() < deadline, "no TMF response");
        }
    }

    /// Polls TEST UNIT READY until it is GOOD (bounded).
    fn until_ready(f: &mut Fixture) {
        for _ in 0..500 {
            let (r, _) = f.run(&[0, 0, 0, 0, 0, 0], DataDir::None, vec![]);
            if r.status == crate::sense::ScsiStatus::Good {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the sanitize never ended");
    }

    #[test]
    fn immed_answers_at_once_and_the_lun_reports_progress() {
        let (mut f, ctl) = held();
        let mut cdb = san(OVERWRITE, 8);
        cdb[1] |= 0x80;
        let (r, _) = f.run(&cdb, DataDir::ToDevice, overwrite_list());
        assert_good(&r);
        assert!(ctl.wait_held(1, std::time::Duration::from_secs(5)));
        let (r, _) = f.run(&[0, 0, 0, 0, 0, 0], DataDir::None, vec![]);
        assert_check(
            &r,
            SenseKey::NotReady,
            asc::LUN_NOT_READY_SANITIZE_IN_PROGRESS,
        );
        assert!(r.sense_data.and_then(|s| s.progress).is_some());
        ctl.clear();
        ctl.release();
        until_ready(&mut f);
        let (_, d) = f.read_in(&rw10(0x28, 0, 1), 512);
        assert!(d.chunks(4).all(|c| c == [9, 8, 7, 6]));
        assert_eq!(f.lun.sanitize.get(), SAN_IDLE);
    }

    #[test]
    fn aborting_the_command_or_resetting_does_not_stop_the_sanitize() {
        use crate::tmf::{TmfFunction, TmfResponse};
        let (mut f, ctl) = held();
        let cmd = f.cmd(&san(OVERWRITE, 8), DataDir::ToDevice, overwrite_list());
        let (tag, token) = (cmd.tag, cmd.token);
        let n = f.nexus.clone();
        f.worker.submit(&n, cmd);
        assert!(ctl.wait_held(1, std::time::Duration::from_secs(5)));
        // The command is parked on the operation: ABORT TASK ends it at once.
        assert_eq!(
            tmf(&mut f, TmfFunction::AbortTask { tag }),
            (TmfResponse::FunctionComplete, vec![(token, false)]),
            "aborted, without a status"
        );
        assert_eq!(
            tmf(&mut f, TmfFunction::LogicalUnitReset).0,
            TmfResponse::FunctionComplete
        );
        f.worker.nexus_lost(&n);
        let other = f.second_nexus("iqn.2026-11.org.oxtarget:other,i,0x2");
        let (r, _) = f.run_on(&other, &[0, 0, 0, 0, 0, 0], DataDir::None, vec![]);
        assert_check(
            &r,
            SenseKey::NotReady,
            asc::LUN_NOT_READY_SANITIZE_IN_PROGRESS,
        );
        ctl.clear();
        ctl.release();
        f.nexus = other;
        until_ready(&mut f);
        assert_eq!(f.lun.sanitize.get(), SAN_IDLE);
        let (_, d) = f.read_in(&rw10(0x28, 0, 1), 512);
        assert!(d.chunks(4).all(|c| c == [9, 8, 7, 6]));
    }

    #[test]
    fn aborted_while_waiting_for_writes_in_flight_leaves_the_lun_as_it_was() {
        use crate::tmf::{TmfFunction, TmfResponse};
        let (mut f, ctl) = held();
        // A write to block 0, held in the backend: the sanitize waits for it.
        let w = f.cmd(&rw10(0x2a, 0, 1), DataDir::ToDevice, vec![b'w'; 512]);
        let wt = w.token;
        let n = f.nexus.clone();
        f.worker.submit(&n, w);
        assert!(ctl.wait_held(1, std::time::Duration::from_secs(5)));
        let cmd = f.cmd(&san(OVERWRITE, 8), DataDir::ToDevice, overwrite_list());
        let (tag, token) = (cmd.tag, cmd.token);
        f.worker.submit(&n, cmd);
        assert_eq!(f.lun.sanitize.get(), super::super::SAN_RUNNING);
        assert_eq!(
            tmf(&mut f, TmfFunction::AbortTask { tag }),
            (TmfResponse::FunctionComplete, vec![(token, false)])
        );
        assert_eq!(f.lun.sanitize.get(), SAN_IDLE, "never started");
        ctl.clear();
        ctl.release();
        assert!(f
            .wait_token(wt)
            .response
            .is_some_and(|r| r.status == crate::sense::ScsiStatus::Good));
        let (_, d) = f.read_in(&rw10(0x28, 0, 1), 512);
        assert_eq!(d, vec![b'w'; 512]);
    }

    #[test]
    fn a_failed_write_leaves_failure_mode_as_ause_says() {
        use backends::fault::{FaultAction, FaultBackend, FaultRule, OpKind, OpMatch};
        for (ause, after) in [(false, SAN_FAILED), (true, SAN_FAILED_AUSE)] {
            let fault =
                FaultBackend::new(std::sync::Arc::new(backends::ram::RamBackend::new(1 << 20)));
            let ctl = fault.control();
            let cfg = crate::lun::LunConfig::new("bad", crate::testutil::uuid_for("bad"));
            let mut f = Fixture::with(cfg, std::sync::Arc::new(fault));
            ctl.add(FaultRule::new(
                OpMatch::kind(OpKind::Write),
                FaultAction::Fail {
                    kind: backends::IoErrorKind::Write,
                    errno: libc::EIO,
                },
            ));
            let mut cdb = san(OVERWRITE, 8);
            if ause {
                cdb[1] |= 0x20;
            }
            let (r, _) = f.run(&cdb, DataDir::ToDevice, overwrite_list());
            assert_check(&r, SenseKey::MediumError, asc::WRITE_ERROR);
            assert_eq!(f.lun.sanitize.get(), after);
        }
    }

    #[test]
    fn a_paced_sanitize_takes_its_time() {
        let mut cfg = crate::lun::LunConfig::new("paced", crate::testutil::uuid_for("paced"));
        // 1 MiB at 4 MiB/s: a quarter of a second at least, never less.
        cfg.sanitize_rate = Some(4 << 20);
        let mut f = Fixture::with(
            cfg,
            std::sync::Arc::new(backends::ram::RamBackend::new(1 << 20)),
        );
        let t = std::time::Instant::now();
        let (r, _) = f.run(&san(BLOCK_ERASE, 0), DataDir::None, vec![]);
        assert_good(&r);
        assert!(t.elapsed() >= std::time::Duration::from_millis(250));
    }

    #[test]
    fn block_erase_is_cut_into_pieces_of_whole_blocks() {
        let p = erase_phases(10 << 30, 4096, 0, true);
        assert_eq!(p.len(), ERASE_PIECES as usize);
        let small = erase_phases((3 << 20) + 512, 512, 0, false);
        assert_eq!(small.len(), 4);
        let mut next = 0;
        for ph in &small {
            let Phase::Zero { off, len, discard } = ph else {
                panic!("{ph:?}")
            };
            assert_eq!((*off, *discard), (next, false));
            assert_eq!(len % 512, 0);
            next = off + len;
        }
        assert_eq!(next, (3 << 20) + 512);
        assert!(erase_phases(0, 512, 0, true).is_empty());
    }

    #[test]
    fn block_erase_pieces_are_whole_units_of_the_backend() {
        // 64 MiB over 4 MiB units (an RBD image's objects): 16 pieces, each
        // starting and ending on a unit, where 1 MiB pieces would cut each
        // object in four.
        let p = erase_phases(64 << 20, 512, 4 << 20, true);
        assert_eq!(p.len(), 16);
        let mut next = 0;
        for ph in &p {
            let Phase::Zero { off, len, .. } = ph else {
                panic!("{ph:?}")
            };
            assert_eq!((*off, *len), (next, 4 << 20));
            next = off + len;
        }
        // The last piece is cut at the end of the LUN.
        let p = erase_phases((10 << 20) + 4096, 4096, 4 << 20, true);
        let lens: Vec<u64> = p
            .iter()
            .map(|ph| match ph {
                Phase::Zero { len, .. } => *len,
                _ => panic!("{ph:?}"),
            })
            .collect();
        assert_eq!(lens, vec![4 << 20, 4 << 20, (2 << 20) + 4096]);
        // A unit that is not whole blocks is ignored.
        assert_eq!(erase_phases(64 << 20, 4096, 1000, true).len(), 64);
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
