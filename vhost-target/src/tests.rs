//! Request and control queue processing against virtio-queue's mock driver, with a
//! real engine worker on a RAM LUN: data through guest memory, every refusal, TMFs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backends::ram::RamBackend;
use backends::{Backend, FaultAction, FaultBackend, FaultRule, OpKind, OpMatch};
use engine::{Lun, LunConfig, LunMap, LunRegistry, Nexus, Protocol, TargetPort};
use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_bindings::virtio_scsi as vs;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::controller::sas_transport_id;
use crate::queues::{ScsiQueues, UsedEntry};
use crate::request::{GuestMem, RequestError, MAX_DESCRIPTORS};
use crate::wire::{self, CmdReq, CmdResp, CtrlReq, LunAddr};

const MEM_SIZE: usize = 16 << 20;
const HDR: u64 = 0x10_0000;
const RESP: u64 = 0x11_0000;
const DATA: u64 = 0x20_0000;
const CTRL: u16 = 0;
const REQ: u16 = 2;

struct Fx {
    mem: Arc<GuestMem>,
    lun: Arc<Lun>,
    queues: ScsiQueues,
    /// Used entries not yet looked at.
    ready: Vec<UsedEntry>,
}

#[derive(Clone, Copy)]
struct D {
    addr: u64,
    len: u32,
    write: bool,
}

fn r(addr: u64, len: u32) -> D {
    D {
        addr,
        len,
        write: false,
    }
}

fn w(addr: u64, len: u32) -> D {
    D {
        addr,
        len,
        write: true,
    }
}

fn raw(d: &[D]) -> Vec<RawDescriptor> {
    d.iter()
        .map(|d| {
            let flags = if d.write {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            RawDescriptor::from(SplitDescriptor::new(d.addr, d.len, flags, 0))
        })
        .collect()
}

fn read10(lba: u32, blocks: u16) -> [u8; 10] {
    let l = lba.to_be_bytes();
    let n = blocks.to_be_bytes();
    [0x28, 0, l[0], l[1], l[2], l[3], 0, n[0], n[1], 0]
}

fn write10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = read10(lba, blocks);
    c[0] = 0x2a;
    c
}

impl Fx {
    fn with_backend(backend: Arc<dyn Backend>) -> Self {
        let mem = Arc::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("memory"),
        );
        let registry = LunRegistry::new();
        let lun = Lun::new(LunConfig::new("lun0", [7u8; 16]), backend).expect("lun");
        registry.add(lun.clone());
        let map = LunMap::new();
        map.insert(0, lun.clone());
        let port = Arc::new(TargetPort {
            name: "vhost:test".into(),
            protocol: Protocol::Sas,
            relative_id: 1,
            group_id: 1,
        });
        let nexus = Nexus::new("test", sas_transport_id("test"), port, map);
        let queues = ScsiQueues::new(registry, nexus).expect("queues");
        let mut fx = Fx {
            mem,
            lun,
            queues,
            ready: Vec::new(),
        };
        // The first command of a new nexus reports the power-on unit attention.
        let (resp, status, _, sense) = fx.cmd(&[0, 0, 0, 0, 0, 0], &[], 0);
        assert_eq!((resp, status), (0, 2));
        assert_eq!(sense[2] & 0x0f, 6, "unit attention");
        fx
    }

    fn ram() -> Self {
        Self::with_backend(Arc::new(RamBackend::new(64 << 20)))
    }

    /// Runs one chain on request queue `REQ`; waits (bounded) for its used entry.
    fn run(&mut self, descs: &[D]) -> UsedEntry {
        self.submit(REQ, descs);
        self.wait_used()
    }

    fn submit(&mut self, queue: u16, descs: &[D]) -> Vec<UsedEntry> {
        let vq = MockSplitQueue::new(&*self.mem, 256);
        let chain = vq.build_desc_chain(&raw(descs)).expect("chain");
        let mut used = Vec::new();
        if queue == CTRL {
            self.queues.control(queue, chain, &self.mem, &mut used);
        } else {
            self.queues.request(queue, chain, &self.mem, &mut used);
        }
        self.ready.extend(used.iter().copied());
        used
    }

    fn wait_used(&mut self) -> UsedEntry {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if !self.ready.is_empty() {
                return self.ready.remove(0);
            }
            let mut used = Vec::new();
            self.queues.poll(&mut used);
            self.ready.extend(used);
            assert!(Instant::now() < deadline, "no completion");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// A command with its header at HDR, response at RESP, data-out `out` at DATA
    /// or `in_len` bytes of data-in at DATA. Returns (response, status, resid, sense).
    fn cmd(&mut self, cdb: &[u8], out: &[u8], in_len: u32) -> (u8, u8, u32, Vec<u8>) {
        let hdr = CmdReq::encode(LunAddr::encode(0, 0), 1, 0, cdb);
        self.mem.write_slice(&hdr, GuestAddress(HDR)).unwrap();
        let mut d = vec![r(HDR, wire::CMD_REQ_LEN as u32)];
        if !out.is_empty() {
            self.mem.write_slice(out, GuestAddress(DATA)).unwrap();
            d.push(r(DATA, out.len() as u32));
        }
        d.push(w(RESP, wire::CMD_RESP_LEN as u32));
        if in_len > 0 {
            d.push(w(DATA, in_len));
        }
        let u = self.run(&d);
        assert!(u.len >= wire::CMD_RESP_LEN as u32, "{u:?}");
        self.response()
    }

    fn response(&self) -> (u8, u8, u32, Vec<u8>) {
        let mut b = [0u8; wire::CMD_RESP_LEN];
        self.mem.read_slice(&mut b, GuestAddress(RESP)).unwrap();
        let (resp, status, resid, sense) = CmdResp::decode_status(&b);
        (resp, status, resid, sense.to_vec())
    }

    fn clear_response(&self) {
        self.mem
            .write_slice(&[0xee; wire::CMD_RESP_LEN], GuestAddress(RESP))
            .unwrap();
    }

    /// A control request; returns the used entry and the response bytes.
    fn ctrl(&mut self, req: &[u8], resp_len: u32) -> (UsedEntry, Vec<u8>) {
        self.mem.write_slice(req, GuestAddress(HDR)).unwrap();
        self.mem
            .write_slice(&vec![0xee; resp_len as usize], GuestAddress(RESP))
            .unwrap();
        self.submit(CTRL, &[r(HDR, req.len() as u32), w(RESP, resp_len)]);
        let u = self.wait_used();
        let mut b = vec![0u8; resp_len as usize];
        self.mem.read_slice(&mut b, GuestAddress(RESP)).unwrap();
        (u, b)
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn write_then_read_through_guest_memory() {
    let mut fx = Fx::ram();
    let data = pattern(4096);
    // Header split 20 + 31 over two descriptors, data-out in two uneven pieces.
    let hdr = CmdReq::encode(LunAddr::encode(0, 0), 5, 0, &write10(100, 8));
    fx.mem.write_slice(&hdr[..20], GuestAddress(HDR)).unwrap();
    fx.mem
        .write_slice(&hdr[20..], GuestAddress(HDR + 0x1000))
        .unwrap();
    fx.mem
        .write_slice(&data[..1536], GuestAddress(DATA))
        .unwrap();
    fx.mem
        .write_slice(&data[1536..], GuestAddress(DATA + 0x10000))
        .unwrap();
    fx.clear_response();
    let u = fx.run(&[
        r(HDR, 20),
        r(HDR + 0x1000, 31),
        r(DATA, 1536),
        r(DATA + 0x10000, 2560),
        w(RESP, 100),
        w(RESP + 100, 8),
    ]);
    assert_eq!(
        u.len,
        wire::CMD_RESP_LEN as u32,
        "data-out: only the response is written"
    );
    assert_eq!(fx.response(), (0, 0, 0, vec![]));

    // Read it back into a data-in area split differently, response split too.
    let back = DATA + 0x40000;
    let hdr = CmdReq::encode(LunAddr::encode(0, 0), 6, 0, &read10(100, 8));
    fx.mem.write_slice(&hdr[..20], GuestAddress(HDR)).unwrap();
    fx.mem
        .write_slice(&hdr[20..], GuestAddress(HDR + 0x1000))
        .unwrap();
    fx.clear_response();
    let u = fx.run(&[
        r(HDR, 20),
        r(HDR + 0x1000, 31),
        w(RESP, 10),
        w(RESP + 10, 98),
        w(back, 512),
        w(back + 0x1000, 3584),
    ]);
    assert_eq!(u.len, (wire::CMD_RESP_LEN + 4096) as u32);
    assert_eq!(fx.response(), (0, 0, 0, vec![]));
    let mut got = vec![0u8; 4096];
    fx.mem
        .read_slice(&mut got[..512], GuestAddress(back))
        .unwrap();
    fx.mem
        .read_slice(&mut got[512..], GuestAddress(back + 0x1000))
        .unwrap();
    assert_eq!(got, data);
    assert_eq!(
        fx.lun
            .stats
            .bounce_copies
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "guest memory went to the backend directly"
    );
}

#[test]
fn short_allocation_reports_residual_and_inquiry_data() {
    let mut fx = Fx::ram();
    let (resp, status, resid, _) = fx.cmd(&[0x12, 0, 0, 0, 96, 0], &[], 96);
    assert_eq!((resp, status), (0, 0));
    let mut inq = [0u8; 36];
    fx.mem.read_slice(&mut inq, GuestAddress(DATA)).unwrap();
    assert_eq!(&inq[8..16], b"OXTARGET");
    let len = 5 + usize::from(inq[4]);
    assert_eq!(resid as usize, 96 - len);
}

#[test]
fn data_outside_guest_memory_fails_the_command() {
    let mut fx = Fx::ram();
    let hdr = CmdReq::encode(LunAddr::encode(0, 0), 1, 0, &read10(0, 8));
    fx.mem.write_slice(&hdr, GuestAddress(HDR)).unwrap();
    fx.clear_response();
    let outside = MEM_SIZE as u64 + 0x1000;
    let u = fx.run(&[r(HDR, 51), w(RESP, 108), w(outside, 4096)]);
    assert_eq!(u.len, wire::CMD_RESP_LEN as u32);
    assert_eq!(fx.response().0, vs::VIRTIO_SCSI_S_FAILURE as u8);
    assert!(matches!(
        fx.queues.stats.last_error,
        Some(RequestError::OutsideMemory { .. })
    ));
    // A range that starts inside and ends outside is outside too.
    let u = fx.run(&[r(HDR, 51), w(RESP, 108), w(MEM_SIZE as u64 - 512, 4096)]);
    assert_eq!(u.len, wire::CMD_RESP_LEN as u32);
    assert!(matches!(
        fx.queues.stats.last_error,
        Some(RequestError::OutsideMemory { .. })
    ));
}

#[test]
fn response_outside_guest_memory_returns_the_chain_unanswered() {
    let mut fx = Fx::ram();
    let hdr = CmdReq::encode(LunAddr::encode(0, 0), 1, 0, &read10(0, 1));
    fx.mem.write_slice(&hdr, GuestAddress(HDR)).unwrap();
    let u = fx.run(&[r(HDR, 51), w(u64::MAX - 50, 108)]);
    assert_eq!(u.len, 0);
    assert!(matches!(
        fx.queues.stats.last_error,
        Some(RequestError::OutsideMemory { .. })
    ));
}

#[test]
fn readable_after_writable_is_refused() {
    let mut fx = Fx::ram();
    let hdr = CmdReq::encode(LunAddr::encode(0, 0), 1, 0, &write10(0, 1));
    fx.mem.write_slice(&hdr, GuestAddress(HDR)).unwrap();
    fx.clear_response();
    let u = fx.run(&[r(HDR, 51), w(RESP, 108), r(DATA, 512)]);
    assert_eq!(u.len, 0, "a misshapen chain goes back unanswered");
    assert_eq!(
        fx.queues.stats.last_error,
        Some(RequestError::WrongDirection { index: 2 })
    );
    let mut b = [0u8; 108];
    fx.mem.read_slice(&mut b, GuestAddress(RESP)).unwrap();
    assert!(b.iter().all(|&x| x == 0xee), "nothing was written");
}

#[test]
fn short_header_and_short_response() {
    let mut fx = Fx::ram();
    fx.clear_response();
    let u = fx.run(&[r(HDR, 40), w(RESP, 108)]);
    assert_eq!(u.len, 108);
    assert_eq!(fx.response().0, vs::VIRTIO_SCSI_S_FAILURE as u8);
    assert_eq!(
        fx.queues.stats.last_error,
        Some(RequestError::HeaderTooShort { have: 40, need: 51 })
    );
    let u = fx.run(&[r(HDR, 51), w(RESP, 100)]);
    assert_eq!(u.len, 0);
    assert_eq!(
        fx.queues.stats.last_error,
        Some(RequestError::ResponseTooShort {
            have: 100,
            need: 108
        })
    );
    // No writable descriptor at all.
    let u = fx.run(&[r(HDR, 51)]);
    assert_eq!(u.len, 0);
}

#[test]
fn data_in_both_directions_and_bad_task_attribute() {
    let mut fx = Fx::ram();
    let hdr = CmdReq::encode(LunAddr::encode(0, 0), 1, 0, &read10(0, 1));
    fx.mem.write_slice(&hdr, GuestAddress(HDR)).unwrap();
    let u = fx.run(&[r(HDR, 51), r(DATA, 512), w(RESP, 108), w(DATA, 512)]);
    assert_eq!(u.len, 108);
    assert_eq!(fx.response().0, vs::VIRTIO_SCSI_S_FAILURE as u8);
    assert!(matches!(
        fx.queues.stats.last_error,
        Some(RequestError::Bidirectional {
            out_len: 512,
            in_len: 512
        })
    ));
    let hdr = CmdReq::encode(LunAddr::encode(0, 0), 1, 9, &read10(0, 1));
    fx.mem.write_slice(&hdr, GuestAddress(HDR)).unwrap();
    fx.run(&[r(HDR, 51), w(RESP, 108), w(DATA, 512)]);
    assert_eq!(fx.response().0, vs::VIRTIO_SCSI_S_FAILURE as u8);
    assert!(matches!(
        fx.queues.stats.last_error,
        Some(RequestError::Header(_))
    ));
}

#[test]
fn too_many_descriptors() {
    let mut fx = Fx::ram();
    let mut d = vec![r(HDR, 51)];
    d.push(w(RESP, 108));
    for i in 0..MAX_DESCRIPTORS as u64 {
        d.push(w(DATA + i * 512, 512));
    }
    let vq = MockSplitQueue::new(&*fx.mem, 2048);
    let chain = vq.build_desc_chain(&raw(&d)).expect("chain");
    let mut used = Vec::new();
    fx.queues.request(REQ, chain, &fx.mem, &mut used);
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].len, 0);
    assert_eq!(
        fx.queues.stats.last_error,
        Some(RequestError::TooManyDescriptors {
            max: MAX_DESCRIPTORS
        })
    );
}

#[test]
fn unknown_target_and_unknown_lun() {
    let mut fx = Fx::ram();
    for lun in [LunAddr::encode(3, 0), [0, 0, 0x40, 0, 0, 0, 0, 0]] {
        let hdr = CmdReq::encode(lun, 1, 0, &[0x12, 0, 0, 0, 36, 0]);
        fx.mem.write_slice(&hdr, GuestAddress(HDR)).unwrap();
        fx.clear_response();
        let u = fx.run(&[r(HDR, 51), w(RESP, 108), w(DATA, 36)]);
        assert_eq!(u.len, 108);
        assert_eq!(fx.response().0, vs::VIRTIO_SCSI_S_BAD_TARGET as u8);
    }
    assert_eq!(fx.queues.stats.bad_target, 2);
    // Target 0, LUN 9: the engine answers (CHECK CONDITION, LUN NOT SUPPORTED).
    let hdr = CmdReq::encode(LunAddr::encode(0, 9), 1, 0, &read10(0, 1));
    fx.mem.write_slice(&hdr, GuestAddress(HDR)).unwrap();
    fx.run(&[r(HDR, 51), w(RESP, 108), w(DATA, 512)]);
    let (resp, status, resid, sense) = fx.response();
    assert_eq!((resp, status, resid), (0, 2, 512));
    assert_eq!((sense[2] & 0x0f, sense[12]), (5, 0x25));
}

#[test]
fn task_management_functions() {
    let mut fx = Fx::ram();
    let lun0 = LunAddr::encode(0, 0);
    let tmf = |sub| CtrlReq::encode_tmf(sub, lun0, 77);
    let ok = vs::VIRTIO_SCSI_S_OK as u8;
    for (sub, want) in [
        (vs::VIRTIO_SCSI_T_TMF_ABORT_TASK, ok),
        (vs::VIRTIO_SCSI_T_TMF_ABORT_TASK_SET, ok),
        (vs::VIRTIO_SCSI_T_TMF_CLEAR_TASK_SET, ok),
        (vs::VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET, ok),
        (vs::VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, ok),
        (vs::VIRTIO_SCSI_T_TMF_QUERY_TASK, ok),
        (vs::VIRTIO_SCSI_T_TMF_QUERY_TASK_SET, ok),
        (
            vs::VIRTIO_SCSI_T_TMF_CLEAR_ACA,
            vs::VIRTIO_SCSI_S_FUNCTION_REJECTED as u8,
        ),
        (99, vs::VIRTIO_SCSI_S_FUNCTION_REJECTED as u8),
    ] {
        let (u, b) = fx.ctrl(&tmf(sub), 1);
        assert_eq!((u.queue, u.len), (CTRL, 1), "subtype {sub}");
        assert_eq!(b[0], want, "subtype {sub}");
    }
    let (_, b) = fx.ctrl(
        &CtrlReq::encode_tmf(
            vs::VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET,
            LunAddr::encode(0, 5),
            0,
        ),
        1,
    );
    assert_eq!(b[0], vs::VIRTIO_SCSI_S_INCORRECT_LUN as u8);
    let (_, b) = fx.ctrl(
        &CtrlReq::encode_tmf(vs::VIRTIO_SCSI_T_TMF_ABORT_TASK, LunAddr::encode(2, 0), 0),
        1,
    );
    assert_eq!(b[0], vs::VIRTIO_SCSI_S_BAD_TARGET as u8);
    // No asynchronous events: none supported, answered OK.
    let (u, b) = fx.ctrl(&CtrlReq::encode_an(false, lun0, 0xff), 5);
    assert_eq!(u.len, 5);
    assert_eq!(b, [0, 0, 0, 0, 0]);
    let (u, b) = fx.ctrl(&CtrlReq::encode_an(true, lun0, 0xff), 5);
    assert_eq!((u.len, b[4]), (5, 0));
    // An unknown type and a short TMF go back unanswered.
    let (u, _) = fx.ctrl(&[9, 0, 0, 0], 1);
    assert_eq!(u.len, 0);
    let (u, _) = fx.ctrl(&tmf(0)[..20], 1);
    assert_eq!(u.len, 0);
    // The LUN reset left a unit attention for this nexus? No: the resetting nexus is
    // spared (SAM-5 6.3.3), but the I_T NEXUS RESET left one.
    let (resp, status, _, sense) = fx.cmd(&[0, 0, 0, 0, 0, 0], &[], 0);
    assert_eq!((resp, status, sense[2] & 0x0f), (0, 2, 6));
}

#[test]
fn abort_task_aborts_a_command_in_flight() {
    let ram: Arc<dyn Backend> = Arc::new(RamBackend::new(64 << 20));
    let fault = FaultBackend::new(ram);
    let ctl = fault.control();
    let mut fx = Fx::with_backend(Arc::new(fault));
    ctl.add(FaultRule::new(
        OpMatch::kind(OpKind::Read),
        FaultAction::Hold,
    ));
    let hdr = CmdReq::encode(LunAddr::encode(0, 0), 42, 0, &read10(0, 8));
    fx.mem.write_slice(&hdr, GuestAddress(HDR)).unwrap();
    let immediate = fx.submit(REQ, &[r(HDR, 51), w(RESP, 108), w(DATA, 4096)]);
    assert!(immediate.is_empty());
    assert!(ctl.wait_held(1, Duration::from_secs(5)));
    let mut used = Vec::new();
    fx.queues.poll(&mut used);
    assert!(used.is_empty(), "held");
    assert_eq!(fx.queues.in_flight(), 1);

    // ABORT TASK for tag 42; its response comes once the read is gone.
    let req = CtrlReq::encode_tmf(vs::VIRTIO_SCSI_T_TMF_QUERY_TASK, LunAddr::encode(0, 0), 42);
    let (_, b) = fx.ctrl(&req, 1);
    assert_eq!(
        b[0],
        vs::VIRTIO_SCSI_S_FUNCTION_SUCCEEDED as u8,
        "task is there"
    );
    let req = CtrlReq::encode_tmf(vs::VIRTIO_SCSI_T_TMF_ABORT_TASK, LunAddr::encode(0, 0), 42);
    let tmf_resp = 0x30_0000u64;
    fx.mem.write_slice(&req, GuestAddress(HDR + 0x100)).unwrap();
    fx.submit(CTRL, &[r(HDR + 0x100, 24), w(tmf_resp, 1)]);
    ctl.release();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.len() < 2 && Instant::now() < deadline {
        got.append(&mut fx.ready);
        let mut used = Vec::new();
        fx.queues.poll(&mut used);
        got.extend(used);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(got.len(), 2, "{got:?}");
    let cmd = got.iter().find(|u| u.queue == REQ).expect("command back");
    assert_eq!(cmd.len, 108);
    assert_eq!(fx.response().0, vs::VIRTIO_SCSI_S_ABORTED as u8);
    let mut b = [0u8; 1];
    fx.mem.read_slice(&mut b, GuestAddress(tmf_resp)).unwrap();
    assert_eq!(b[0], vs::VIRTIO_SCSI_S_OK as u8, "FUNCTION COMPLETE");
    assert_eq!(fx.queues.in_flight(), 0);
}

#[test]
fn chains_through_a_real_queue_and_used_ring() {
    let mut fx = Fx::ram();
    let vq = MockSplitQueue::new(&*fx.mem, 16);
    // Three TEST UNIT READY chains, each header + response.
    let mut descs = Vec::new();
    for i in 0..3u64 {
        let hdr = CmdReq::encode(LunAddr::encode(0, 0), i, 0, &[0, 0, 0, 0, 0, 0]);
        fx.mem
            .write_slice(&hdr, GuestAddress(HDR + i * 0x100))
            .unwrap();
        descs.push(RawDescriptor::from(SplitDescriptor::new(
            HDR + i * 0x100,
            51,
            virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16,
            (2 * i + 1) as u16,
        )));
        descs.push(RawDescriptor::from(SplitDescriptor::new(
            RESP + i * 0x100,
            108,
            VRING_DESC_F_WRITE as u16,
            0,
        )));
    }
    vq.add_desc_chains(&descs, 0).unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let mem = fx.mem.clone();
    let mut used = Vec::new();
    let chains: Vec<_> = q.iter(&*mem).unwrap().collect();
    assert_eq!(chains.len(), 3);
    for c in chains {
        fx.queues.request(REQ, c, &mem, &mut used);
    }
    fx.queues.poll(&mut used);
    assert_eq!(used.len(), 3);
    for u in &used {
        q.add_used(&*mem, u.head, u.len).unwrap();
    }
    assert_eq!(vq.used().idx().load(), 3);
    let heads: Vec<u32> = (0..3)
        .map(|i| vq.used().ring().ref_at(i).unwrap().load().id())
        .collect();
    assert_eq!(heads, [0, 2, 4]);
    for i in 0..3u64 {
        let mut b = [0u8; 108];
        mem.read_slice(&mut b, GuestAddress(RESP + i * 0x100))
            .unwrap();
        assert_eq!(CmdResp::decode_status(&b).0, 0);
    }
}
