//! Sequences of commands and task management functions from two initiators,
//! through the whole engine (decode, checks, task set, handler, backend I/O) on two
//! small RAM LUNs (512- and 4096-byte blocks, so EXTENDED COPY has a second LUN to
//! reach). The LUNs' channels complete operations one poll later and take at most
//! `DEPTH` at a time, so commands overlap (task set, write ranges, aborts of
//! commands in I/O, a full queue). Each input starts from a fresh engine, so a
//! crash reproduces from its input alone. Every command must answer (or end aborted), never panic or hang,
//! and never claim more data than its buffer holds.
//!
//! Input: up to `MAX_RECORDS` records, each a kind byte and its fields:
//! - command: flags (LUN, initiator, task attribute, data direction), CDB length,
//!   buffer length (u16), CDB bytes, then data-out bytes (what is left of the
//!   buffer length is zero-filled) — data-in commands get a buffer of that length;
//! - EXTENDED COPY between the two LUNs with fuzzed segment fields (a valid list
//!   is too unlikely to be found from bytes: the LUN designators are 16 bytes);
//! - a task management function (function, LUN, tag);
//! - I_T nexus loss of one initiator.
#![no_main]

use std::sync::Arc;

use backends::ram::RamBackend;
use backends::{Backend, BackendError, Completion, IoChannel, IoError, IoErrorKind, IoOp};
use vmm_sys_util::eventfd::EventFd;
use engine::nexus::iscsi_transport_id;
use engine::{
    Cdb, DataDir, Event, Lun, LunConfig, LunMap, LunRegistry, Nexus, Protocol, ScsiCmd,
    TaskAttr, TargetPort, TmfFunction, TmfRequest, VecBuf, Worker,
};
use libfuzzer_sys::fuzz_target;

const MAX_RECORDS: usize = 8;

/// Operations one channel holds before it answers "queue full".
const DEPTH: usize = 4;

/// RAM whose channel completes operations at the next `reap`, not in `submit`.
struct Later(RamBackend);

struct LaterChannel {
    inner: Box<dyn IoChannel>,
    pending: Vec<(IoOp, Vec<libc::iovec>, u64)>,
    canceled: Vec<u64>,
    notify: EventFd,
}

impl Backend for Later {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn capabilities(&self) -> backends::Capabilities {
        self.0.capabilities()
    }
    fn open_channel(&self, notify: &EventFd) -> Result<Box<dyn IoChannel>, BackendError> {
        Ok(Box::new(LaterChannel {
            inner: self.0.open_channel(notify)?,
            pending: Vec::new(),
            canceled: Vec::new(),
            notify: notify.try_clone().map_err(|_| BackendError::Unsupported { what: "eventfd" })?,
        }))
    }
    fn block_status(&self, o: u64, l: u64) -> Result<backends::Extent, BackendError> {
        self.0.block_status(o, l)
    }
    fn resize(&self, n: u64) -> Result<(), BackendError> {
        self.0.resize(n)
    }
    fn describe(&self) -> String {
        "later".into()
    }
}

impl IoChannel for LaterChannel {
    unsafe fn submit(
        &mut self,
        op: IoOp,
        iovecs: &[libc::iovec],
        user_data: u64,
    ) -> Result<(), BackendError> {
        if self.pending.len() >= DEPTH {
            return Err(BackendError::QueueFull(self.pending.len()));
        }
        self.pending.push((op, iovecs.to_vec(), user_data));
        let _ = self.notify.write(1);
        Ok(())
    }
    fn cancel(&mut self, user_data: u64) -> bool {
        let Some(i) = self.pending.iter().position(|p| p.2 == user_data) else {
            return false;
        };
        self.pending.remove(i);
        self.canceled.push(user_data);
        true
    }
    fn reap(&mut self, out: &mut Vec<Completion>) {
        for ud in self.canceled.drain(..) {
            out.push(Completion {
                user_data: ud,
                result: Err(IoError::new(IoErrorKind::Canceled, libc::ECANCELED, None)),
            });
        }
        for (op, iovs, ud) in std::mem::take(&mut self.pending) {
            // SAFETY: the iovecs came from our caller's `submit`, whose contract keeps
            // them valid until this completion is reaped.
            if unsafe { self.inner.submit(op, &iovs, ud) }.is_err() {
                out.push(Completion {
                    user_data: ud,
                    result: Err(IoError::new(IoErrorKind::Other, libc::EIO, None)),
                });
            }
        }
        self.inner.reap(out);
    }
    fn in_flight(&self) -> usize {
        self.pending.len() + self.canceled.len() + self.inner.in_flight()
    }
}

struct Env {
    worker: Worker,
    nexuses: [Arc<Nexus>; 2],
    naa: [[u8; 16]; 2],
}

fn env() -> Env {
    let registry = LunRegistry::new();
    let map = LunMap::new();
    let mut naa = [[0u8; 16]; 2];
    for (i, bs) in [512u32, 4096].into_iter().enumerate() {
        let mut cfg = LunConfig::new(&format!("fuzz{i}"), [7 + i as u8; 16]);
        cfg.removable = i == 0;
        cfg.thin = i == 0;
        cfg.block_size = bs;
        let lun = Lun::new(cfg, Arc::new(Later(RamBackend::new(1 << 20)))).expect("lun");
        naa[i] = lun.naa();
        registry.add(lun.clone());
        map.insert(i as u64, lun);
    }
    let port = Arc::new(TargetPort {
        name: "iqn.2026-11.org.oxtarget:fuzz,t,0x1".into(),
        protocol: Protocol::Iscsi,
        relative_id: 1,
        group_id: 1,
    });
    let nexuses = ["iqn.2026-11.org.oxtarget:a,i,0x1", "iqn.2026-11.org.oxtarget:b,i,0x2"]
        .map(|name| Nexus::new(name, iscsi_transport_id(name), port.clone(), map.clone()));
    Env {
        worker: Worker::new(registry).expect("worker"),
        nexuses,
        naa,
    }
}

/// Reads bytes off the front of the input; zeroes once it is used up.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn take(&mut self, n: usize) -> &[u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }
}

/// An EXTENDED COPY(LID1) parameter list: both LUNs as targets, one or two
/// block-to-block segments with fuzzed indexes, counts and LBAs.
fn xcopy_list(env: &Env, inp: &mut Input<'_>) -> Vec<u8> {
    let mut targets = Vec::new();
    for (i, naa) in env.naa.iter().enumerate() {
        let mut d = [0u8; 32];
        d[0] = 0xe4;
        d[4] = 0x01;
        d[5] = 0x03;
        d[7] = 16;
        d[8..24].copy_from_slice(naa);
        let bl: u32 = if i == 0 { 512 } else { 4096 };
        d[29..32].copy_from_slice(&bl.to_be_bytes()[1..]);
        targets.extend_from_slice(&d);
    }
    let mut segs = Vec::new();
    for _ in 0..1 + inp.byte() % 2 {
        let mut d = [0u8; 28];
        d[0] = 0x02;
        d[1] = inp.byte() & 0x03;
        d[2..4].copy_from_slice(&0x18u16.to_be_bytes());
        d[4..6].copy_from_slice(&u16::from(inp.byte() % 3).to_be_bytes());
        d[6..8].copy_from_slice(&u16::from(inp.byte() % 3).to_be_bytes());
        d[10..12].copy_from_slice(&inp.u16().to_be_bytes());
        d[12..20].copy_from_slice(&u64::from(inp.u16()).to_be_bytes());
        d[20..28].copy_from_slice(&u64::from(inp.u16()).to_be_bytes());
        segs.extend_from_slice(&d);
    }
    let mut list = vec![0u8; 16];
    list[0] = inp.byte();
    list[1] = inp.byte() & 0x18;
    list[2..4].copy_from_slice(&(targets.len() as u16).to_be_bytes());
    list[8..12].copy_from_slice(&(segs.len() as u32).to_be_bytes());
    list.extend_from_slice(&targets);
    list.extend_from_slice(&segs);
    list
}

fn tmf_function(f: u8, tag: u64) -> TmfFunction {
    match f % 10 {
        0 => TmfFunction::AbortTask { tag },
        1 => TmfFunction::AbortTaskSet,
        2 => TmfFunction::ClearTaskSet,
        3 => TmfFunction::ClearAca,
        4 => TmfFunction::LogicalUnitReset,
        5 => TmfFunction::ItNexusReset,
        6 => TmfFunction::TargetReset,
        7 => TmfFunction::QueryTask { tag },
        8 => TmfFunction::QueryTaskSet,
        _ => TmfFunction::QueryAsyncEvent,
    }
}

fuzz_target!(|input: &[u8]| {
    let mut env = env();
    let mut inp = Input(input);
    // token -> buffer length, for commands not yet answered.
    let mut open: Vec<(u64, usize)> = Vec::new();
    let mut tmfs_open = 0usize;
    let mut next_token = 1u64;
    let mut events = Vec::new();
    for _ in 0..MAX_RECORDS {
        if inp.0.is_empty() {
            break;
        }
        let kind = inp.byte();
        let flags = inp.byte();
        let nexus = env.nexuses[usize::from(flags >> 1 & 1)].clone();
        let lun = u64::from(flags & 1) | if flags & 0x80 != 0 { 5 } else { 0 };
        let token = next_token;
        next_token += 1;
        match kind % 16 {
            0..=11 => {
                let attr = match flags >> 2 & 3 {
                    0 => TaskAttr::Simple,
                    1 => TaskAttr::Ordered,
                    2 => TaskAttr::HeadOfQueue,
                    _ => TaskAttr::Aca,
                };
                let dir = match flags >> 4 & 3 {
                    0 => DataDir::None,
                    1 => DataDir::FromDevice,
                    _ => DataDir::ToDevice,
                };
                let cdb_len = usize::from(inp.byte() % 32) + 1;
                let buf_len = usize::from(inp.u16());
                let Some(cdb) = Cdb::new(inp.take(cdb_len)) else {
                    continue;
                };
                let mut data = Vec::new();
                if dir == DataDir::ToDevice {
                    data.extend_from_slice(inp.take(buf_len));
                }
                if dir != DataDir::None {
                    data.resize(buf_len, 0);
                }
                open.push((token, data.len()));
                env.worker.submit(
                    &nexus,
                    ScsiCmd {
                        lun,
                        cdb,
                        tag: token,
                        attr,
                        dir,
                        token,
                        data: Box::new(VecBuf(data)),
                    },
                );
            }
            12 | 13 => {
                let list = xcopy_list(&env, &mut inp);
                let mut cdb = [0u8; 16];
                cdb[0] = 0x83;
                cdb[10..14].copy_from_slice(&(list.len() as u32).to_be_bytes());
                let Some(cdb) = Cdb::new(&cdb) else { continue };
                open.push((token, list.len()));
                env.worker.submit(
                    &nexus,
                    ScsiCmd {
                        lun,
                        cdb,
                        tag: token,
                        attr: TaskAttr::Simple,
                        dir: DataDir::ToDevice,
                        token,
                        data: Box::new(VecBuf(list)),
                    },
                );
            }
            14 => {
                let f = inp.byte();
                let tag = u64::from(inp.byte() % 8);
                tmfs_open += 1;
                env.worker.task_mgmt(TmfRequest {
                    nexus,
                    lun,
                    function: tmf_function(f, tag),
                    token,
                });
            }
            _ => env.worker.nexus_lost(&nexus),
        }
        // Sometimes let the worker run between records, sometimes not.
        if kind & 0x10 != 0 {
            env.worker.poll(&mut events);
        }
    }
    for _ in 0..10_000 {
        for ev in events.drain(..) {
            match ev {
                Event::Cmd(c) => {
                    let i = open
                        .iter()
                        .position(|&(t, _)| t == c.token)
                        .unwrap_or_else(|| panic!("unknown or repeated completion {}", c.token));
                    let (_, len) = open.swap_remove(i);
                    if let Some(r) = c.response {
                        assert!(r.transferred as usize <= len, "{r:?} for a {len}-byte buffer");
                    }
                }
                Event::Tmf { .. } => {
                    tmfs_open = tmfs_open
                        .checked_sub(1)
                        .expect("more task management responses than requests");
                }
            }
        }
        if open.is_empty() && tmfs_open == 0 {
            return;
        }
        env.worker.wait(10, &mut events);
    }
    panic!("commands {open:?} or {tmfs_open} task management functions never finished");
});
