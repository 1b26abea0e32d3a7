//! Tests of the worker: the command pipeline, task attributes, aborts.

use crate::cmd::{DataDir, Residual};
use crate::sense::{asc, SenseKey};
use crate::testutil::{assert_check, assert_good, Fixture};

fn write10(lba: u32, blocks: u16) -> [u8; 10] {
    let l = lba.to_be_bytes();
    let n = blocks.to_be_bytes();
    [0x2a, 0, l[0], l[1], l[2], l[3], 0, n[0], n[1], 0]
}

fn read10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = write10(lba, blocks);
    c[0] = 0x28;
    c
}

#[test]
fn write_then_read_back() {
    for (kind, mut f) in Fixture::both() {
        let data: Vec<u8> = (0..1024).map(|i| (i * 7) as u8).collect();
        let (r, _) = f.run(&write10(10, 2), DataDir::ToDevice, data.clone());
        assert_good(&r);
        let (r, back) = f.read_in(&read10(10, 2), 1024);
        assert_good(&r);
        assert_eq!(back, data, "{kind}");
    }
}

#[test]
fn read_past_the_end_is_lba_out_of_range() {
    for (_, mut f) in Fixture::both() {
        let last = (f.lun.num_blocks() - 1) as u32;
        let (r, _) = f.read_in(&read10(last, 2), 1024);
        assert_check(&r, SenseKey::IllegalRequest, asc::LBA_OUT_OF_RANGE);
    }
}

#[test]
fn short_allocation_reports_overflow_and_long_underflow() {
    let mut f = Fixture::ram();
    let (r, d) = f.read_in(&[0x12, 0, 0, 0, 36, 0], 8);
    assert_good(&r);
    assert_eq!(d.len(), 8);
    assert_eq!(r.residual, Residual::Over(28));
    let (r, _) = f.read_in(&[0x12, 0, 0, 0, 36, 0], 100);
    assert_eq!(r.residual, Residual::Under(64));
}

#[test]
fn unknown_opcode_and_unmapped_lun() {
    let mut f = Fixture::ram();
    let (r, _) = f.read_in(&[0xff, 0, 0, 0, 0, 0], 0);
    assert_check(
        &r,
        SenseKey::IllegalRequest,
        asc::INVALID_COMMAND_OPERATION_CODE,
    );
    let mut c = f.cmd(&[0x00, 0, 0, 0, 0, 0], DataDir::None, vec![]);
    c.lun = 7;
    let t = c.token;
    let n = f.nexus.clone();
    f.worker.submit(&n, c);
    let done = f.wait_token(t);
    assert_check(
        &done.response.unwrap(),
        SenseKey::IllegalRequest,
        asc::LOGICAL_UNIT_NOT_SUPPORTED,
    );
}

#[test]
fn new_nexus_sees_power_on_unit_attention_once() {
    let mut f = Fixture::ram();
    let n2 = f.second_nexus("iqn.x:second,i,0x1");
    let (r, _) = f.run_on(&n2, &[0, 0, 0, 0, 0, 0], DataDir::None, vec![]);
    assert_good(&r);
}

#[test]
fn padded_cdbs_decode_as_their_own_length() {
    // iSCSI carries a 16-byte CDB field: a WRITE(10)/READ(10)/READ(6) padded with
    // zeros must not be decoded with the 16-byte layout.
    let mut f = Fixture::ram();
    let pad = |c: &[u8]| {
        let mut v = c.to_vec();
        v.resize(16, 0);
        v
    };
    let data: Vec<u8> = (0..1024).map(|i| (i * 3) as u8).collect();
    let (r, _) = f.run(&pad(&write10(20, 2)), DataDir::ToDevice, data.clone());
    assert_good(&r);
    let (r, back) = f.read_in(&pad(&read10(20, 2)), 1024);
    assert_good(&r);
    assert_eq!(back, data);
    let (r, back) = f.read_in(&pad(&[0x08, 0, 0, 20, 2, 0]), 1024);
    assert_good(&r);
    assert_eq!(back, data);
}

/// Every row of the opcode table, with CDBs of its exact length filled with
/// several patterns, data-in and data-out buffers of several sizes: each command
/// answers (no panic, no hang) and never moves more than the buffer holds.
#[test]
fn every_opcode_with_odd_cdbs_and_buffers_answers() {
    use crate::lun::LunConfig;
    use crate::testutil::uuid_for;
    use std::sync::Arc;

    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed as u8
    };
    for op in crate::opcodes::all() {
        let mut f = Fixture::with(
            LunConfig::new("small", uuid_for("small")),
            Arc::new(backends::ram::RamBackend::new(1 << 20)),
        );
        for fill in 0..6u8 {
            let mut cdb: Vec<u8> = (0..op.cdb_len())
                .map(|i| match fill {
                    0 => 0,
                    1 => 0xff,
                    2 => 0x01,
                    3 => {
                        if i % 2 == 0 {
                            0
                        } else {
                            0xff
                        }
                    }
                    _ => rnd(),
                })
                .collect();
            cdb[0] = op.opcode;
            if let Some(sa) = op.service_action {
                cdb[1] = (cdb[1] & 0xe0) | (sa as u8 & 0x1f);
            }
            let last = cdb.len() - 1;
            cdb[last] = 0;
            for len in [0usize, 1, 7, 24, 512, 4097] {
                for dir in [DataDir::FromDevice, DataDir::ToDevice] {
                    let data: Vec<u8> = match dir {
                        DataDir::ToDevice => (0..len).map(|_| rnd()).collect(),
                        _ => vec![0; len],
                    };
                    let (r, _) = f.run(&cdb, dir, data);
                    assert!(
                        r.transferred as usize <= len,
                        "{} {cdb:02x?} len {len}: {r:?}",
                        op.name
                    );
                }
            }
        }
    }
}

/// SANITIZE OVERWRITE of a 1 TiB LUN on a backend that completes inline: one
/// `poll` must return after a bounded amount of work so that task management (and
/// every other queue of the thread) gets its turn; ABORT TASK then stops it.
#[test]
fn a_long_job_on_an_inline_backend_does_not_hold_the_thread() {
    use crate::cmd::TaskAttr;
    use crate::lun::LunConfig;
    use crate::testutil::uuid_for;
    use crate::tmf::{TmfFunction, TmfRequest, TmfResponse};
    use crate::worker::Event;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    let mut f = Fixture::with(
        LunConfig::new("huge", uuid_for("huge")),
        Arc::new(backends::NullBackend::new(1 << 40)),
    );
    let mut c = f.cmd(
        &[0x48, 0x01, 0, 0, 0, 0, 0, 0, 8, 0],
        DataDir::ToDevice,
        vec![0x01, 0, 0, 4, 1, 2, 3, 4],
    );
    c.attr = TaskAttr::Simple;
    let t = c.token;
    let n = f.nexus.clone();
    f.worker.submit(&n, c);
    let mut ev = Vec::new();
    let start = Instant::now();
    f.worker.poll(&mut ev);
    assert!(
        start.elapsed() < Duration::from_millis(300),
        "poll held the thread for {:?}",
        start.elapsed()
    );
    assert!(ev.is_empty(), "a 1 TiB overwrite finished at once: {ev:?}");
    f.worker.task_mgmt(TmfRequest {
        nexus: n,
        lun: 0,
        function: TmfFunction::AbortTask { tag: t },
        token: 99,
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut cmd, mut tmf) = (None, None);
    while (cmd.is_none() || tmf.is_none()) && Instant::now() < deadline {
        f.worker.wait(10, &mut ev);
        for e in ev.drain(..) {
            match e {
                Event::Cmd(c) if c.token == t => cmd = Some(c.response),
                Event::Tmf {
                    token: 99,
                    response,
                } => tmf = Some(response),
                _ => {}
            }
        }
    }
    assert_eq!(
        cmd,
        Some(None),
        "the aborted sanitize must end without a response"
    );
    assert_eq!(tmf, Some(TmfResponse::FunctionComplete));
}

mod drop_order {
    //! A worker dropped with I/O in flight: its channels (which wait for the
    //! device) go before the command buffers the I/O points into, and its
    //! commands leave their task sets so other workers are not blocked forever.

    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use crate::cmd::{DataBuf, DataDir, TaskAttr};
    use crate::lun::LunConfig;
    use crate::testutil::{assert_good, uuid_for, Fixture};
    use crate::worker::Worker;

    /// Never completes anything; on drop records whether the buffer was gone.
    struct Holder {
        freed: Arc<AtomicBool>,
        freed_first: Arc<AtomicBool>,
    }

    struct HolderChannel {
        freed: Arc<AtomicBool>,
        freed_first: Arc<AtomicBool>,
        held: usize,
    }

    impl Drop for HolderChannel {
        fn drop(&mut self) {
            if self.held > 0 && self.freed.load(Ordering::SeqCst) {
                self.freed_first.store(true, Ordering::SeqCst);
            }
        }
    }

    impl backends::Backend for Holder {
        fn size(&self) -> u64 {
            1 << 20
        }
        fn capabilities(&self) -> backends::Capabilities {
            backends::RamBackend::new(4096).capabilities()
        }
        fn open_channel(
            &self,
            _notify: &vmm_sys_util::eventfd::EventFd,
        ) -> Result<Box<dyn backends::IoChannel>, backends::BackendError> {
            Ok(Box::new(HolderChannel {
                freed: self.freed.clone(),
                freed_first: self.freed_first.clone(),
                held: 0,
            }))
        }
        fn block_status(
            &self,
            _o: u64,
            _l: u64,
        ) -> Result<backends::Extent, backends::BackendError> {
            Err(backends::BackendError::Unsupported { what: "status" })
        }
        fn resize(&self, _n: u64) -> Result<(), backends::BackendError> {
            Err(backends::BackendError::Unsupported { what: "resize" })
        }
        fn describe(&self) -> String {
            "holder".into()
        }
    }

    impl backends::IoChannel for HolderChannel {
        unsafe fn submit(
            &mut self,
            _op: backends::IoOp,
            _iovecs: &[libc::iovec],
            _user_data: u64,
        ) -> Result<(), backends::BackendError> {
            self.held += 1;
            Ok(())
        }
        fn cancel(&mut self, _user_data: u64) -> bool {
            false
        }
        fn reap(&mut self, _out: &mut Vec<backends::Completion>) {}
        fn in_flight(&self) -> usize {
            self.held
        }
    }

    /// A data buffer that says when it is freed.
    struct Tracked(Vec<u8>, Arc<AtomicBool>);

    impl Drop for Tracked {
        fn drop(&mut self) {
            self.1.store(true, Ordering::SeqCst);
        }
    }

    impl DataBuf for Tracked {
        fn len(&self) -> usize {
            self.0.len()
        }
        fn iovecs(&mut self, offset: usize, len: usize, out: &mut Vec<libc::iovec>) {
            let mut v = crate::cmd::VecBuf(std::mem::take(&mut self.0));
            v.iovecs(offset, len, out);
            self.0 = v.0;
        }
        fn write_at(&mut self, offset: usize, src: &[u8]) -> usize {
            let mut v = crate::cmd::VecBuf(std::mem::take(&mut self.0));
            let n = v.write_at(offset, src);
            self.0 = v.0;
            n
        }
        fn read_at(&self, offset: usize, dst: &mut [u8]) -> usize {
            let n = dst.len().min(self.0.len().saturating_sub(offset));
            if n > 0 {
                dst[..n].copy_from_slice(&self.0[offset..offset + n]);
            }
            n
        }
    }

    #[test]
    fn channels_go_before_buffers_and_tasks_leave_their_sets() {
        let freed = Arc::new(AtomicBool::new(false));
        let freed_first = Arc::new(AtomicBool::new(false));
        let backend = Holder {
            freed: freed.clone(),
            freed_first: freed_first.clone(),
        };
        let mut f = Fixture::with(LunConfig::new("h", uuid_for("h")), Arc::new(backend));
        let mut c = f.cmd(
            &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0],
            DataDir::FromDevice,
            Vec::new(),
        );
        c.data = Box::new(Tracked(vec![0; 512], freed.clone()));
        let n = f.nexus.clone();
        f.worker.submit(&n, c);
        assert_eq!(f.worker.in_flight(), 1);
        let fresh = Worker::new(f.registry.clone()).expect("worker");
        drop(std::mem::replace(&mut f.worker, fresh));
        assert!(freed.load(Ordering::SeqCst));
        assert!(
            !freed_first.load(Ordering::SeqCst),
            "a buffer was freed while the channel still had I/O on it"
        );
        // The dropped worker's READ left the task set: an ORDERED command runs.
        let mut c = f.cmd(&[0x00, 0, 0, 0, 0, 0], DataDir::None, Vec::new());
        c.attr = TaskAttr::Ordered;
        let t = c.token;
        f.worker.submit(&n, c);
        let done = f.wait_token(t);
        assert_good(&done.response.expect("response"));
    }
}

mod back_pressure {
    //! A channel that takes one operation at a time: commands beyond it wait for
    //! room instead of failing with a device error.

    use std::sync::Arc;

    use vmm_sys_util::eventfd::EventFd;

    use crate::cmd::DataDir;
    use crate::lun::LunConfig;
    use crate::testutil::{assert_good, uuid_for, Fixture};

    struct Narrow(backends::RamBackend);

    struct NarrowChannel {
        inner: Box<dyn backends::IoChannel>,
        pending: Option<(backends::IoOp, Vec<libc::iovec>, u64)>,
        notify: EventFd,
    }

    impl backends::Backend for Narrow {
        fn size(&self) -> u64 {
            self.0.size()
        }
        fn capabilities(&self) -> backends::Capabilities {
            self.0.capabilities()
        }
        fn open_channel(
            &self,
            notify: &EventFd,
        ) -> Result<Box<dyn backends::IoChannel>, backends::BackendError> {
            Ok(Box::new(NarrowChannel {
                inner: self.0.open_channel(notify)?,
                pending: None,
                notify: notify.try_clone().expect("eventfd"),
            }))
        }
        fn block_status(&self, o: u64, l: u64) -> Result<backends::Extent, backends::BackendError> {
            self.0.block_status(o, l)
        }
        fn resize(&self, n: u64) -> Result<(), backends::BackendError> {
            self.0.resize(n)
        }
        fn describe(&self) -> String {
            "narrow".into()
        }
    }

    impl backends::IoChannel for NarrowChannel {
        unsafe fn submit(
            &mut self,
            op: backends::IoOp,
            iovecs: &[libc::iovec],
            user_data: u64,
        ) -> Result<(), backends::BackendError> {
            if self.pending.is_some() {
                return Err(backends::BackendError::QueueFull(1));
            }
            self.pending = Some((op, iovecs.to_vec(), user_data));
            let _ = self.notify.write(1);
            Ok(())
        }
        fn cancel(&mut self, _user_data: u64) -> bool {
            false
        }
        fn reap(&mut self, out: &mut Vec<backends::Completion>) {
            if let Some((op, iovs, ud)) = self.pending.take() {
                // SAFETY: the iovecs came from our caller's `submit`, whose contract
                // keeps them valid until this completion is reaped.
                unsafe { self.inner.submit(op, &iovs, ud) }.expect("ram submit");
            }
            self.inner.reap(out);
        }
        fn in_flight(&self) -> usize {
            usize::from(self.pending.is_some())
        }
    }

    #[test]
    fn a_full_channel_makes_commands_wait_not_fail() {
        let mut f = Fixture::with(
            LunConfig::new("narrow", uuid_for("narrow")),
            Arc::new(Narrow(backends::RamBackend::new(1 << 20))),
        );
        let n = f.nexus.clone();
        let mut tokens = Vec::new();
        for i in 0..4u8 {
            let c = f.cmd(
                &[0x2a, 0, 0, 0, 0, i, 0, 0, 1, 0],
                DataDir::ToDevice,
                vec![i + 1; 512],
            );
            tokens.push(c.token);
            f.worker.submit(&n, c);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut ev = Vec::new();
        let mut answered = 0;
        while answered < tokens.len() {
            assert!(
                std::time::Instant::now() < deadline,
                "writes did not finish"
            );
            f.worker.wait(10, &mut ev);
            for e in ev.drain(..) {
                if let crate::worker::Event::Cmd(c) = e {
                    assert!(tokens.contains(&c.token));
                    assert_good(&c.response.expect("response"));
                    answered += 1;
                }
            }
        }
        for i in 0..4u8 {
            let (r, d) = f.read_in(&[0x28, 0, 0, 0, 0, i, 0, 0, 1, 0], 512);
            assert_good(&r);
            assert!(d.iter().all(|&b| b == i + 1), "block {i}");
        }
        assert_eq!(f.worker.in_flight(), 0);
    }

    /// Many overlapping writes, COMPARE AND WRITEs (exclusive ranges) and reads
    /// with every task attribute, aborts and task set aborts in between, on a
    /// channel that completes one operation per poll: every command ends exactly
    /// once, every task management function answers, nothing is left behind.
    #[test]
    fn a_mixed_load_with_aborts_drains_completely() {
        use crate::cmd::TaskAttr;
        use crate::tmf::{TmfFunction, TmfRequest};
        use crate::worker::Event;
        use std::collections::HashSet;

        for round in 0..16u64 {
            let mut f = Fixture::with(
                LunConfig::new("narrow", uuid_for("narrow")),
                Arc::new(Narrow(backends::RamBackend::new(1 << 20))),
            );
            let n = f.nexus.clone();
            let mut seed = 0x2545_f491_4f6c_dd1du64 ^ round.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let mut rnd = move |m: u64| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed % m
            };
            let mut open: HashSet<u64> = HashSet::new();
            let mut tmfs = 0usize;
            let mut ev = Vec::new();
            let settle = |ev: &mut Vec<Event>, open: &mut HashSet<u64>, tmfs: &mut usize| {
                for e in ev.drain(..) {
                    match e {
                        Event::Cmd(c) => assert!(open.remove(&c.token), "token {} twice", c.token),
                        Event::Tmf { .. } => *tmfs -= 1,
                    }
                }
            };
            for i in 0..300u64 {
                let lba = rnd(8) as u8;
                let attr = match rnd(8) {
                    0 => TaskAttr::Ordered,
                    1 => TaskAttr::HeadOfQueue,
                    _ => TaskAttr::Simple,
                };
                let mut c = match rnd(4) {
                    0 => f.cmd(
                        &[0x89, 0, 0, 0, 0, 0, 0, 0, 0, lba, 0, 0, 0, 1, 0, 0],
                        DataDir::ToDevice,
                        vec![0; 1024],
                    ),
                    1 => f.cmd(
                        &[0x28, 0, 0, 0, 0, lba, 0, 0, 2, 0],
                        DataDir::FromDevice,
                        vec![0; 1024],
                    ),
                    _ => f.cmd(
                        &[0x2a, 0, 0, 0, 0, lba, 0, 0, 2, 0],
                        DataDir::ToDevice,
                        vec![i as u8; 1024],
                    ),
                };
                c.attr = attr;
                open.insert(c.token);
                f.worker.submit(&n, c);
                match rnd(16) {
                    0 => {
                        tmfs += 1;
                        // Tags are tokens: one of the last few commands.
                        let tag = f
                            .cmd(&[0], DataDir::None, vec![])
                            .token
                            .saturating_sub(1 + rnd(4));
                        f.worker.task_mgmt(TmfRequest {
                            nexus: n.clone(),
                            lun: 0,
                            function: TmfFunction::AbortTask { tag },
                            token: i,
                        });
                    }
                    1 => {
                        tmfs += 1;
                        f.worker.task_mgmt(TmfRequest {
                            nexus: n.clone(),
                            lun: 0,
                            function: TmfFunction::AbortTaskSet,
                            token: i,
                        });
                    }
                    _ => {}
                }
                if rnd(3) == 0 {
                    f.worker.poll(&mut ev);
                    settle(&mut ev, &mut open, &mut tmfs);
                }
            }
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !open.is_empty() || tmfs > 0 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "stuck: {} commands, {tmfs} task management functions",
                    open.len()
                );
                f.worker.wait(10, &mut ev);
                settle(&mut ev, &mut open, &mut tmfs);
            }
            assert_eq!(f.worker.in_flight(), 0);
        }
    }
}

mod direct_io {
    //! Backends opened with O_DIRECT (block devices by default) refuse buffers
    //! that are not aligned to the logical block size: the jobs' scratch buffers
    //! (compares, verifies, WRITE SAME patterns, copies) must be aligned.

    use std::sync::Arc;

    use vmm_sys_util::eventfd::EventFd;

    use crate::cmd::DataDir;
    use crate::lun::LunConfig;
    use crate::testutil::{assert_good, uuid_for, Fixture};

    /// RAM that fails, like O_DIRECT, any read or write whose length is not a
    /// multiple of 512 and (with `.1`) any buffer not aligned to 4096.
    struct Strict(backends::RamBackend, bool);

    struct StrictChannel {
        inner: Box<dyn backends::IoChannel>,
        refused: Vec<backends::Completion>,
        check_base: bool,
    }

    impl backends::Backend for Strict {
        fn size(&self) -> u64 {
            self.0.size()
        }
        fn capabilities(&self) -> backends::Capabilities {
            self.0.capabilities()
        }
        fn open_channel(
            &self,
            notify: &EventFd,
        ) -> Result<Box<dyn backends::IoChannel>, backends::BackendError> {
            Ok(Box::new(StrictChannel {
                inner: self.0.open_channel(notify)?,
                refused: Vec::new(),
                check_base: self.1,
            }))
        }
        fn block_status(&self, o: u64, l: u64) -> Result<backends::Extent, backends::BackendError> {
            self.0.block_status(o, l)
        }
        fn resize(&self, n: u64) -> Result<(), backends::BackendError> {
            self.0.resize(n)
        }
        fn describe(&self) -> String {
            "strict".into()
        }
    }

    impl backends::IoChannel for StrictChannel {
        unsafe fn submit(
            &mut self,
            op: backends::IoOp,
            iovecs: &[libc::iovec],
            user_data: u64,
        ) -> Result<(), backends::BackendError> {
            let total: usize = iovecs.iter().map(|v| v.iov_len).sum();
            let rw = matches!(
                op,
                backends::IoOp::Read { .. } | backends::IoOp::Write { .. }
            );
            let misaligned =
                self.check_base && iovecs.iter().any(|v| (v.iov_base as usize) & 4095 != 0);
            if misaligned || (rw && total & 511 != 0) {
                self.refused.push(backends::Completion {
                    user_data,
                    result: Err(backends::IoError::new(
                        backends::IoErrorKind::Other,
                        libc::EINVAL,
                        None,
                    )),
                });
                // The inner channel's eventfd write is what wakes the worker;
                // a zero-length flush does it.
                // SAFETY: a flush carries no iovecs.
                return unsafe { self.inner.submit(backends::IoOp::Flush, &[], u64::MAX) };
            }
            // SAFETY: forwarded under our caller's guarantees.
            unsafe { self.inner.submit(op, iovecs, user_data) }
        }
        fn cancel(&mut self, _user_data: u64) -> bool {
            false
        }
        fn reap(&mut self, out: &mut Vec<backends::Completion>) {
            out.append(&mut self.refused);
            let mut mine = Vec::new();
            self.inner.reap(&mut mine);
            out.extend(mine.into_iter().filter(|c| c.user_data != u64::MAX));
        }
        fn in_flight(&self) -> usize {
            self.refused.len() + self.inner.in_flight()
        }
    }

    #[test]
    fn scratch_io_is_aligned_for_direct_io() {
        let mut f = Fixture::with(
            LunConfig::new("strict", uuid_for("strict")),
            Arc::new(Strict(backends::RamBackend::new(8 << 20), true)),
        );
        // VERIFY(10), BYTCHK 0: reads 64 blocks into scratch.
        let (r, _) = f.run(&[0x2f, 0, 0, 0, 0, 0, 0, 0, 64, 0], DataDir::None, vec![]);
        assert_good(&r);
        // WRITE SAME(10) of 300 blocks: the pattern is written from scratch.
        let (r, _) = f.run(
            &[0x41, 0, 0, 0, 0, 8, 0, 0x01, 0x2c, 0],
            DataDir::ToDevice,
            vec![0x3c; 512],
        );
        assert_good(&r);
        // VERIFY(10), BYTCHK 11b: compares every block with the one sent.
        let (r, _) = f.run(
            &[0x2f, 0x06, 0, 0, 0, 8, 0, 0x01, 0x2c, 0],
            DataDir::ToDevice,
            vec![0x3c; 512],
        );
        assert_good(&r);
    }

    #[test]
    fn a_short_data_in_buffer_reads_whole_blocks() {
        let mut f = Fixture::with(
            LunConfig::new("strict", uuid_for("strict")),
            Arc::new(Strict(backends::RamBackend::new(8 << 20), false)),
        );
        let data: Vec<u8> = (0..1536u32).map(|i| (i % 251) as u8).collect();
        let (r, _) = f.run(
            &[0x2a, 0, 0, 0, 0, 4, 0, 0, 3, 0],
            DataDir::ToDevice,
            data.clone(),
        );
        assert_good(&r);
        for have in [700usize, 300] {
            let (r, d) = f.run(
                &[0x28, 0, 0, 0, 0, 4, 0, 0, 3, 0],
                DataDir::FromDevice,
                vec![0; have],
            );
            assert_good(&r);
            assert_eq!(r.transferred as usize, have);
            assert_eq!(r.residual, crate::cmd::Residual::Over(1536 - have as u32));
            assert_eq!(d, data[..have], "{have}");
        }
    }

    /// VERIFY and WRITE AND VERIFY with a data-out buffer that ends inside a
    /// block compare what was sent, reading whole blocks to do it.
    #[test]
    fn a_short_compare_reads_whole_blocks() {
        let mut f = Fixture::with(
            LunConfig::new("strict", uuid_for("strict")),
            Arc::new(Strict(backends::RamBackend::new(8 << 20), false)),
        );
        let data: Vec<u8> = (0..1024u32).map(|i| (i % 253) as u8).collect();
        let (r, _) = f.run(
            &[0x2a, 0, 0, 0, 0, 2, 0, 0, 2, 0],
            DataDir::ToDevice,
            data.clone(),
        );
        assert_good(&r);
        // VERIFY(10) BYTCHK 01b, 2 blocks, 700 bytes sent.
        let (r, _) = f.run(
            &[0x2f, 0x02, 0, 0, 0, 2, 0, 0, 2, 0],
            DataDir::ToDevice,
            data[..700].to_vec(),
        );
        assert_good(&r);
        // WRITE AND VERIFY(10) BYTCHK 01b, 2 blocks, 700 bytes sent.
        let (r, _) = f.run(
            &[0x2e, 0x02, 0, 0, 0, 2, 0, 0, 2, 0],
            DataDir::ToDevice,
            data[..700].to_vec(),
        );
        assert_good(&r);
    }
}

#[test]
fn a_buffer_in_the_wrong_direction_is_never_written_nor_written_from() {
    for (_, mut f) in Fixture::both() {
        // Data-in for a buffer lent for data-out: GOOD (libiscsi's Read10Invalid
        // sends a READ flagged as a write), and the buffer is not written.
        let (r, d) = f.run(&[0x12, 0, 0, 0, 36, 0], DataDir::ToDevice, vec![0xaa; 36]);
        assert_good(&r);
        assert_eq!(r.transferred, 0);
        assert_eq!(d, vec![0xaa; 36], "the buffer was not written");
        let (r, d) = f.run(&read10(0, 1), DataDir::ToDevice, vec![0xbb; 512]);
        assert_good(&r);
        assert_eq!(d, vec![0xbb; 512]);
        // Data-out taken from a buffer lent for data-in: nothing is written.
        let (r, _) = f.run(&write10(3, 1), DataDir::FromDevice, vec![0xcc; 512]);
        assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
        let (r, d) = f.read_in(&read10(3, 1), 512);
        assert_good(&r);
        assert_eq!(d, vec![0u8; 512]);
    }
}

#[test]
fn resize_and_lun_map_changes_raise_unit_attentions() {
    let mut f = Fixture::ram();
    let n2 = f.second_nexus("iqn.x:two,i,0x2");
    let before = f.lun.num_blocks();
    f.lun.resize((before + 2048) * 512).unwrap();
    assert_eq!(f.lun.num_blocks(), before + 2048);
    for n in [f.nexus.clone(), n2.clone()] {
        let (r, _) = f.run_on(&n, &[0, 0, 0, 0, 0, 0], DataDir::None, vec![]);
        assert_check(&r, SenseKey::UnitAttention, asc::CAPACITY_DATA_HAS_CHANGED);
        let (r, _) = f.run_on(&n, &[0, 0, 0, 0, 0, 0], DataDir::None, vec![]);
        assert_good(&r);
    }
    assert!(
        f.lun.resize(1000).is_err(),
        "not a multiple of the block size"
    );
    // A LUN mapped while the initiator runs: REPORTED LUNS DATA HAS CHANGED.
    let other = crate::lun::Lun::new(
        crate::lun::LunConfig::new("l1", crate::testutil::uuid_for("l1")),
        std::sync::Arc::new(backends::RamBackend::new(1 << 20)),
    )
    .unwrap();
    f.map.insert(1, other);
    let (r, _) = f.run(&[0, 0, 0, 0, 0, 0], DataDir::None, vec![]);
    assert_check(
        &r,
        SenseKey::UnitAttention,
        asc::REPORTED_LUNS_DATA_HAS_CHANGED,
    );
    let (r, d) = f.read_in(&[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], 256);
    assert_good(&r);
    assert_eq!(&d[0..4], &16u32.to_be_bytes(), "two LUNs reported");
}

/// Each command is counted once on its LUN: by kind, bytes moved, errors,
/// latency; nothing stays in flight once it completed.
#[test]
fn lun_statistics_count_every_command() {
    use std::sync::atomic::Ordering::Relaxed;
    let mut f = Fixture::ram();
    // The power-on unit attention goes to a first TEST UNIT READY.
    let _ = f.run(&[0u8; 6], DataDir::None, Vec::new());
    let s = [
        f.lun.stats.write_ops.load(Relaxed),
        f.lun.stats.write_bytes.load(Relaxed),
        f.lun.stats.read_ops.load(Relaxed),
        f.lun.stats.read_bytes.load(Relaxed),
        f.lun.stats.errors.load(Relaxed),
        f.lun.stats.other_ops.load(Relaxed),
    ];
    let (r, _) = f.run(&write10(0, 2), DataDir::ToDevice, vec![1u8; 1024]);
    assert_good(&r);
    let (r, _) = f.read_in(&read10(0, 1), 512);
    assert_good(&r);
    let last = (f.lun.num_blocks() - 1) as u32;
    let (r, _) = f.read_in(&read10(last, 2), 1024);
    assert_check(&r, SenseKey::IllegalRequest, asc::LBA_OUT_OF_RANGE);
    let (r, _) = f.run(&[0u8; 6], DataDir::None, Vec::new());
    assert_good(&r);
    let n = &f.lun.stats;
    let d = |now: &std::sync::atomic::AtomicU64, before: u64| now.load(Relaxed) - before;
    assert_eq!(d(&n.write_ops, s[0]), 1);
    assert_eq!(d(&n.write_bytes, s[1]), 1024);
    assert_eq!(d(&n.read_ops, s[2]), 2);
    assert_eq!(d(&n.read_bytes, s[3]), 512);
    assert_eq!(d(&n.errors, s[4]), 1);
    assert_eq!(d(&n.other_ops, s[5]), 1);
    assert_eq!(n.in_flight.load(Relaxed), 0);
    let counted: u64 = n.latency_us.iter().map(|b| b.load(Relaxed)).sum();
    let ops = n.read_ops.load(Relaxed) + n.write_ops.load(Relaxed) + n.other_ops.load(Relaxed);
    assert_eq!(counted, ops);
}
