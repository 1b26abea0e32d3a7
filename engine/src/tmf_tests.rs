//! Task set and task management, driven through the fault-injection backend: held
//! commands, ORDERED attributes, aborts that must win against a held write.

use std::sync::Arc;
use std::time::Duration;

use backends::fault::{FaultAction, FaultBackend, FaultControl, FaultRule, OpKind, OpMatch};
use backends::ram::RamBackend;

use crate::cmd::{DataDir, TaskAttr};
use crate::lun::LunConfig;
use crate::sense::{asc, ScsiStatus, SenseKey};
use crate::testutil::{assert_check, assert_good, uuid_for, Fixture};
use crate::tmf::{TmfFunction, TmfRequest, TmfResponse};
use crate::worker::Event;

const BS: u64 = 512;

fn fixture() -> (Fixture, FaultControl) {
    let fault = FaultBackend::new(Arc::new(RamBackend::new(16 << 20)));
    let ctl = fault.control();
    let f = Fixture::with(LunConfig::new("held", uuid_for("held")), Arc::new(fault));
    (f, ctl)
}

fn rw10(op: u8, lba: u32, blocks: u16) -> [u8; 10] {
    let l = lba.to_be_bytes();
    let n = blocks.to_be_bytes();
    [op, 0, l[0], l[1], l[2], l[3], 0, n[0], n[1], 0]
}

/// Holds writes that touch block `lba`.
fn hold_writes_at(ctl: &FaultControl, lba: u64) {
    ctl.add(FaultRule::new(
        OpMatch::kind(OpKind::Write).overlapping(lba * BS, BS),
        FaultAction::Hold,
    ));
}

/// Submits without waiting; returns the token.
fn submit(f: &mut Fixture, cdb: &[u8], dir: DataDir, data: Vec<u8>, attr: TaskAttr) -> u64 {
    let mut c = f.cmd(cdb, dir, data);
    c.attr = attr;
    let t = c.token;
    let n = f.nexus.clone();
    f.worker.submit(&n, c);
    t
}

type Finished = (Vec<(u64, Option<ScsiStatus>)>, Vec<(u64, TmfResponse)>);

/// Polls for `ms` and returns the tokens of the commands that completed, and the
/// task management responses.
fn drain(f: &mut Fixture, ms: u64) -> Finished {
    let deadline = std::time::Instant::now() + Duration::from_millis(ms);
    let (mut cmds, mut tmfs) = (Vec::new(), Vec::new());
    let mut ev = Vec::new();
    while std::time::Instant::now() < deadline {
        f.worker.wait(10, &mut ev);
        for e in ev.drain(..) {
            match e {
                Event::Cmd(c) => cmds.push((c.token, c.response.map(|r| r.status))),
                Event::Tmf { token, response } => tmfs.push((token, response)),
            }
        }
    }
    (cmds, tmfs)
}

fn tmf(f: &mut Fixture, function: TmfFunction, token: u64) {
    let req = TmfRequest {
        nexus: f.nexus.clone(),
        lun: 0,
        function,
        token,
    };
    f.worker.task_mgmt(req);
}

#[test]
fn a_held_write_does_not_delay_other_commands_on_the_thread() {
    let (mut f, ctl) = fixture();
    hold_writes_at(&ctl, 100);
    let held = submit(
        &mut f,
        &rw10(0x2a, 100, 1),
        DataDir::ToDevice,
        vec![1; 512],
        TaskAttr::Simple,
    );
    assert!(ctl.wait_held(1, Duration::from_secs(2)));
    let read = submit(
        &mut f,
        &rw10(0x28, 0, 8),
        DataDir::FromDevice,
        vec![0; 4096],
        TaskAttr::Simple,
    );
    let write = submit(
        &mut f,
        &rw10(0x2a, 200, 1),
        DataDir::ToDevice,
        vec![2; 512],
        TaskAttr::Simple,
    );
    let (done, _) = drain(&mut f, 200);
    let tokens: Vec<u64> = done.iter().map(|d| d.0).collect();
    assert!(
        tokens.contains(&read) && tokens.contains(&write),
        "{done:?}"
    );
    assert!(!tokens.contains(&held), "the held write completed early");
    ctl.release();
    let c = f.wait_token(held);
    assert_eq!(c.response.map(|r| r.status), Some(ScsiStatus::Good));
}

#[test]
fn an_ordered_command_waits_for_older_ones_and_holds_younger_simple_ones() {
    let (mut f, ctl) = fixture();
    hold_writes_at(&ctl, 100);
    let held = submit(
        &mut f,
        &rw10(0x2a, 100, 1),
        DataDir::ToDevice,
        vec![1; 512],
        TaskAttr::Simple,
    );
    assert!(ctl.wait_held(1, Duration::from_secs(2)));
    let ordered = submit(
        &mut f,
        &rw10(0x28, 100, 1),
        DataDir::FromDevice,
        vec![0; 512],
        TaskAttr::Ordered,
    );
    let simple = submit(
        &mut f,
        &[0, 0, 0, 0, 0, 0],
        DataDir::None,
        vec![],
        TaskAttr::Simple,
    );
    let hoq = submit(
        &mut f,
        &[0, 0, 0, 0, 0, 0],
        DataDir::None,
        vec![],
        TaskAttr::HeadOfQueue,
    );
    let (done, _) = drain(&mut f, 200);
    let tokens: Vec<u64> = done.iter().map(|d| d.0).collect();
    assert_eq!(
        tokens,
        vec![hoq],
        "only HEAD OF QUEUE may pass the ORDERED command"
    );
    ctl.release();
    let (done, _) = drain(&mut f, 300);
    let tokens: Vec<u64> = done.iter().map(|d| d.0).collect();
    assert_eq!(tokens, vec![held, ordered, simple], "completion order");
    // The ORDERED read ran after the write: it sees the written data.
    let (r, d) = f.read_in(&rw10(0x28, 100, 1), 512);
    assert_good(&r);
    assert_eq!(d, vec![1u8; 512]);
}

#[test]
fn abort_task_of_a_held_write_is_done_only_when_the_write_cannot_land() {
    let (mut f, ctl) = fixture();
    hold_writes_at(&ctl, 100);
    let held = submit(
        &mut f,
        &rw10(0x2a, 100, 1),
        DataDir::ToDevice,
        vec![0xab; 512],
        TaskAttr::Simple,
    );
    assert!(ctl.wait_held(1, Duration::from_secs(2)));
    tmf(&mut f, TmfFunction::AbortTask { tag: held }, 9000);
    let (cmds, tmfs) = drain(&mut f, 200);
    assert_eq!(tmfs, vec![(9000, TmfResponse::FunctionComplete)]);
    // The aborted command is handed back without a response to send.
    assert_eq!(cmds, vec![(held, None)]);
    // Releasing the hold now must not write anything.
    ctl.release();
    let (cmds, _) = drain(&mut f, 100);
    assert!(cmds.is_empty());
    let (r, d) = f.read_in(&rw10(0x28, 100, 1), 512);
    assert_good(&r);
    assert_eq!(d, vec![0u8; 512], "an aborted write reached the store");
}

/// A backend whose operations cannot be canceled: they run only once a gate opens,
/// like a write already handed to a device.
struct Stubborn {
    inner: RamBackend,
    gate: Arc<std::sync::atomic::AtomicBool>,
}

struct StubbornChannel {
    inner: Box<dyn backends::IoChannel>,
    gate: Arc<std::sync::atomic::AtomicBool>,
    pending: Vec<(backends::IoOp, Vec<libc::iovec>, u64)>,
}

impl backends::Backend for Stubborn {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn capabilities(&self) -> backends::Capabilities {
        self.inner.capabilities()
    }
    fn open_channel(
        &self,
        notify: &vmm_sys_util::eventfd::EventFd,
    ) -> Result<Box<dyn backends::IoChannel>, backends::BackendError> {
        Ok(Box::new(StubbornChannel {
            inner: self.inner.open_channel(notify)?,
            gate: self.gate.clone(),
            pending: Vec::new(),
        }))
    }
    fn block_status(&self, o: u64, l: u64) -> Result<backends::Extent, backends::BackendError> {
        self.inner.block_status(o, l)
    }
    fn resize(&self, n: u64) -> Result<(), backends::BackendError> {
        self.inner.resize(n)
    }
    fn describe(&self) -> String {
        "stubborn".into()
    }
}

impl backends::IoChannel for StubbornChannel {
    unsafe fn submit(
        &mut self,
        op: backends::IoOp,
        iovecs: &[libc::iovec],
        user_data: u64,
    ) -> Result<(), backends::BackendError> {
        self.pending.push((op, iovecs.to_vec(), user_data));
        Ok(())
    }
    fn cancel(&mut self, _user_data: u64) -> bool {
        false
    }
    fn reap(&mut self, out: &mut Vec<backends::Completion>) {
        if self.gate.load(std::sync::atomic::Ordering::Acquire) {
            for (op, iovs, ud) in self.pending.drain(..) {
                // SAFETY: these iovecs came from our caller's `submit`, whose contract
                // keeps them valid until this completion is reaped.
                unsafe { self.inner.submit(op, &iovs, ud) }.expect("ram submit");
            }
        }
        self.inner.reap(out);
    }
    fn in_flight(&self) -> usize {
        self.pending.len() + self.inner.in_flight()
    }
}

#[test]
fn abort_task_waits_for_a_write_the_backend_cannot_cancel() {
    let gate = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let backend = Stubborn {
        inner: RamBackend::new(16 << 20),
        gate: gate.clone(),
    };
    let mut f = Fixture::with(
        LunConfig::new("stubborn", uuid_for("stubborn")),
        Arc::new(backend),
    );
    let w = submit(
        &mut f,
        &rw10(0x2a, 7, 1),
        DataDir::ToDevice,
        vec![0x5a; 512],
        TaskAttr::Simple,
    );
    tmf(&mut f, TmfFunction::AbortTask { tag: w }, 1);
    let (cmds, tmfs) = drain(&mut f, 200);
    assert!(
        cmds.is_empty() && tmfs.is_empty(),
        "abort reported while the write may still land"
    );
    // The device finishes the write; only then is the abort done.
    gate.store(true, std::sync::atomic::Ordering::Release);
    let notify = f.worker.notify_fd();
    // SAFETY: writing 8 bytes from a valid u64 to an eventfd we do not close.
    unsafe { libc::write(notify, (&1u64 as *const u64).cast(), 8) };
    let (cmds, tmfs) = drain(&mut f, 200);
    assert_eq!(cmds, vec![(w, None)]);
    assert_eq!(tmfs, vec![(1, TmfResponse::FunctionComplete)]);
}

#[test]
fn abort_task_of_an_unknown_tag_says_so() {
    let (mut f, _ctl) = fixture();
    tmf(&mut f, TmfFunction::AbortTask { tag: 4242 }, 7);
    let (_, tmfs) = drain(&mut f, 50);
    assert_eq!(tmfs, vec![(7, TmfResponse::TaskNotFound)]);
}

#[test]
fn query_task_and_task_set_see_held_commands() {
    let (mut f, ctl) = fixture();
    hold_writes_at(&ctl, 100);
    let held = submit(
        &mut f,
        &rw10(0x2a, 100, 1),
        DataDir::ToDevice,
        vec![1; 512],
        TaskAttr::Simple,
    );
    assert!(ctl.wait_held(1, Duration::from_secs(2)));
    tmf(&mut f, TmfFunction::QueryTask { tag: held }, 1);
    tmf(&mut f, TmfFunction::QueryTask { tag: held + 1000 }, 2);
    tmf(&mut f, TmfFunction::QueryTaskSet, 3);
    let (_, tmfs) = drain(&mut f, 50);
    let succeeded = TmfResponse::FunctionSucceeded { additional: [0; 3] };
    assert_eq!(
        tmfs,
        vec![
            (1, succeeded),
            (2, TmfResponse::FunctionComplete),
            (3, succeeded)
        ]
    );
    tmf(&mut f, TmfFunction::AbortTaskSet, 4);
    let (cmds, tmfs) = drain(&mut f, 100);
    assert_eq!(cmds, vec![(held, None)]);
    assert_eq!(tmfs, vec![(4, TmfResponse::FunctionComplete)]);
}

#[test]
fn lun_reset_aborts_everything_and_warns_other_initiators() {
    let (mut f, ctl) = fixture();
    let other = f.second_nexus("iqn.2026-11.org.oxtarget:other,i,0x2");
    hold_writes_at(&ctl, 100);
    let held = submit(
        &mut f,
        &rw10(0x2a, 100, 1),
        DataDir::ToDevice,
        vec![1; 512],
        TaskAttr::Simple,
    );
    assert!(ctl.wait_held(1, Duration::from_secs(2)));
    tmf(&mut f, TmfFunction::LogicalUnitReset, 5);
    let (cmds, tmfs) = drain(&mut f, 100);
    assert_eq!(cmds, vec![(held, None)]);
    assert_eq!(tmfs, vec![(5, TmfResponse::FunctionComplete)]);
    // Every I_T nexus is told, the one that asked included.
    for n in [&other, &f.nexus.clone()] {
        let (r, _) = f.run_on(n, &[0, 0, 0, 0, 0, 0], DataDir::None, vec![]);
        assert_check(
            &r,
            SenseKey::UnitAttention,
            asc::BUS_DEVICE_RESET_FUNCTION_OCCURRED,
        );
        let (r, _) = f.run_on(n, &[0, 0, 0, 0, 0, 0], DataDir::None, vec![]);
        assert_good(&r);
    }
}

#[test]
fn target_reset_warns_every_other_initiator() {
    let (mut f, _ctl) = fixture();
    let other = f.second_nexus("iqn.2026-11.org.oxtarget:other,i,0x2");
    tmf(&mut f, TmfFunction::TargetReset, 6);
    let (_, tmfs) = drain(&mut f, 50);
    assert_eq!(tmfs, vec![(6, TmfResponse::FunctionComplete)]);
    let (r, _) = f.run_on(&other, &[0, 0, 0, 0, 0, 0], DataDir::None, vec![]);
    assert_check(
        &r,
        SenseKey::UnitAttention,
        asc::BUS_DEVICE_RESET_FUNCTION_OCCURRED,
    );
    let (r, _) = f.run(&[0, 0, 0, 0, 0, 0], DataDir::None, vec![]);
    assert_good(&r);
}

#[test]
fn query_async_event_reports_a_pending_unit_attention() {
    let (mut f, _ctl) = fixture();
    f.lun
        .ua
        .establish(&f.nexus.key, asc::CAPACITY_DATA_HAS_CHANGED);
    tmf(&mut f, TmfFunction::QueryAsyncEvent, 1);
    let (_, tmfs) = drain(&mut f, 50);
    assert_eq!(
        tmfs,
        vec![(
            1,
            TmfResponse::FunctionSucceeded {
                additional: [0x06, 0x2a, 0x09]
            }
        )]
    );
}

#[test]
fn tmf_for_an_unmapped_lun_is_incorrect_lun_and_clear_aca_is_rejected() {
    let (mut f, _ctl) = fixture();
    let req = TmfRequest {
        nexus: f.nexus.clone(),
        lun: 9,
        function: TmfFunction::AbortTaskSet,
        token: 1,
    };
    f.worker.task_mgmt(req);
    tmf(&mut f, TmfFunction::ClearAca, 2);
    let (_, tmfs) = drain(&mut f, 50);
    assert_eq!(
        tmfs,
        vec![
            (1, TmfResponse::IncorrectLun),
            (2, TmfResponse::FunctionRejected)
        ]
    );
}

#[test]
fn nexus_loss_aborts_its_commands_and_reports_it_on_return() {
    let (mut f, ctl) = fixture();
    hold_writes_at(&ctl, 100);
    let held = submit(
        &mut f,
        &rw10(0x2a, 100, 1),
        DataDir::ToDevice,
        vec![1; 512],
        TaskAttr::Simple,
    );
    assert!(ctl.wait_held(1, Duration::from_secs(2)));
    let n = f.nexus.clone();
    f.worker.nexus_lost(&n);
    let (cmds, _) = drain(&mut f, 100);
    assert_eq!(cmds, vec![(held, None)]);
    // The same initiator logs in again: a new nexus object with the same identity.
    let again = Fixture::make_nexus(&f.port, &f.map, &n.key.initiator);
    let (r, _) = f.run_on(&again, &[0, 0, 0, 0, 0, 0], DataDir::None, vec![]);
    assert_check(&r, SenseKey::UnitAttention, asc::I_T_NEXUS_LOSS_OCCURRED);
}

#[test]
fn aca_task_attribute_is_refused() {
    let (mut f, _ctl) = fixture();
    let t = submit(
        &mut f,
        &[0, 0, 0, 0, 0, 0],
        DataDir::None,
        vec![],
        TaskAttr::Aca,
    );
    let c = f.wait_token(t);
    let r = c.response.expect("response");
    assert_eq!(r.status, ScsiStatus::CheckCondition);
}

/// A queued command whose start (another worker's command left the task set) and
/// abort reach its worker in the same batch of messages: it never runs and never
/// answers; the abort is done after it is gone.
#[test]
fn an_abort_that_arrives_with_the_start_wins() {
    let (mut f, ctl) = fixture();
    hold_writes_at(&ctl, 5);
    let mut other = crate::worker::Worker::new(f.registry.clone()).expect("worker");
    let mut w = f.cmd(&rw10(0x2a, 5, 1), DataDir::ToDevice, vec![3; 512]);
    w.tag = 1000;
    let wt = w.token;
    let n = f.nexus.clone();
    other.submit(&n, w);
    assert!(ctl.wait_held(1, Duration::from_secs(2)));
    // Queued behind the held write: a WRITE that must never land.
    let ordered = submit(
        &mut f,
        &rw10(0x2a, 9, 1),
        DataDir::ToDevice,
        vec![0xee; 512],
        TaskAttr::Ordered,
    );
    ctl.release();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut ev = Vec::new();
    let mut done = false;
    while !done {
        assert!(
            std::time::Instant::now() < deadline,
            "held write never finished"
        );
        other.wait(10, &mut ev);
        done = ev
            .iter()
            .any(|e| matches!(e, Event::Cmd(c) if c.token == wt));
    }
    // The Start for `ordered` now sits in f.worker's mailbox; the abort joins it.
    tmf(&mut f, TmfFunction::AbortTask { tag: ordered }, 77);
    let (cmds, tmfs) = drain(&mut f, 200);
    assert_eq!(cmds, vec![(ordered, None)], "the aborted command answered");
    assert_eq!(tmfs, vec![(77, TmfResponse::FunctionComplete)]);
    let (r, d) = f.read_in(&rw10(0x28, 9, 1), 512);
    assert_good(&r);
    assert!(d.iter().all(|&b| b == 0), "the aborted write landed");
}
