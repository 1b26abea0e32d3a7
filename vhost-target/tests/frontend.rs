//! The controller driven from the host by a vhost-user frontend (the `vhost`
//! crate's), in QEMU 7.2's message order, with guest memory in a shared file: a
//! command while the queue runs, GET_VRING_BASE waiting for a command held in the
//! backend (no used entry may appear after the reply), and a reconnect; events
//! for LUNs attached, resized and detached while connected.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backends::ram::RamBackend;
use backends::{Backend, FaultAction, FaultBackend, FaultRule, OpKind, OpMatch};
use engine::{Lun, LunConfig, LunMap, LunRegistry};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vhost_target::wire::{CmdReq, CmdResp, LunAddr, CMD_REQ_LEN, CMD_RESP_LEN};
use vhost_target::VhostScsiController;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const MEM: usize = 4 << 20;
const QSIZE: u16 = 16;
const HDR: u64 = 0x20_0000;
const RESP: u64 = 0x21_0000;
const DATA: u64 = 0x22_0000;
const PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

fn queue_base(q: usize) -> u64 {
    0x1_0000 * (q as u64 + 1)
}

struct Guest {
    file: File,
    mem: GuestMemoryMmap<()>,
    host: u64,
}

impl Guest {
    fn new() -> Self {
        let file = tempfile::tempfile().expect("memory file");
        file.set_len(MEM as u64).expect("size");
        let mem = GuestMemoryMmap::<()>::from_ranges_with_files([(
            GuestAddress(0),
            MEM,
            Some(FileOffset::new(file.try_clone().expect("dup"), 0)),
        )])
        .expect("mapping");
        let host = mem.get_host_address(GuestAddress(0)).expect("host address") as u64;
        Guest { file, mem, host }
    }

    fn queue(&self, q: usize) -> MockSplitQueue<'_, GuestMemoryMmap<()>> {
        MockSplitQueue::create(&self.mem, GuestAddress(queue_base(q)), QSIZE)
    }
}

struct Conn {
    fe: Frontend,
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
}

/// QEMU 7.2's order: features, protocol features, owner, memory, then per queue
/// num, base, addr, kick, call; a synchronous round trip before the first kick.
fn connect(sock: &Path, g: &Guest, queues: usize) -> Conn {
    connect_with(sock, g, queues, 0)
}

/// The same, acknowledging the virtio-scsi feature bits `scsi_features` too.
fn connect_with(sock: &Path, g: &Guest, queues: usize, scsi_features: u64) -> Conn {
    let mut fe = Frontend::connect(sock, queues as u64).expect("connect");
    let features = fe.get_features().expect("features");
    assert_ne!(features & PROTOCOL_FEATURES, 0);
    let proto = fe.get_protocol_features().expect("protocol features");
    assert!(proto.contains(VhostUserProtocolFeatures::MQ));
    assert!(!proto.contains(VhostUserProtocolFeatures::CONFIG));
    fe.set_protocol_features(VhostUserProtocolFeatures::MQ)
        .expect("set protocol features");
    assert_eq!(fe.get_queue_num().expect("queue num"), queues as u64);
    fe.set_owner().expect("owner");
    fe.set_features((1 << VIRTIO_F_VERSION_1) | PROTOCOL_FEATURES | scsi_features)
        .expect("set features");
    fe.set_mem_table(&[VhostUserMemoryRegionInfo {
        guest_phys_addr: 0,
        memory_size: MEM as u64,
        userspace_addr: g.host,
        mmap_offset: 0,
        mmap_handle: std::os::fd::AsRawFd::as_raw_fd(&g.file),
    }])
    .expect("memory table");
    let mut kicks = Vec::new();
    let mut calls = Vec::new();
    for q in 0..queues {
        let vq = g.queue(q);
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        let call = EventFd::new(EFD_NONBLOCK).unwrap();
        fe.set_vring_num(q, QSIZE).unwrap();
        fe.set_vring_base(q, 0).unwrap();
        fe.set_vring_addr(
            q,
            &VringConfigData {
                queue_max_size: QSIZE,
                queue_size: QSIZE,
                flags: 0,
                desc_table_addr: g.host + vq.desc_table_addr().0,
                used_ring_addr: g.host + vq.used_addr().0,
                avail_ring_addr: g.host + vq.avail_addr().0,
                log_addr: None,
            },
        )
        .unwrap();
        fe.set_vring_call(q, &call).unwrap();
        fe.set_vring_kick(q, &kick).unwrap();
        fe.set_vring_enable(q, true).unwrap();
        kicks.push(kick);
        calls.push(call);
    }
    fe.get_features().expect("round trip");
    Conn { fe, kicks, calls }
}

/// Posts a READ(10) of `blocks` at LBA 0 as chain `idx` of request queue 0.
fn post_read(g: &Guest, vq: &MockSplitQueue<'_, GuestMemoryMmap<()>>, idx: u16, tag: u64) {
    let hdr = CmdReq::encode(
        LunAddr::encode(0, 0),
        tag,
        0,
        &[0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0],
    );
    let at = |base: u64| base + u64::from(idx) * 0x1000;
    g.mem.write_slice(&hdr, GuestAddress(at(HDR))).unwrap();
    let first = idx * 3;
    let descs = [
        SplitDescriptor::new(
            at(HDR),
            CMD_REQ_LEN as u32,
            VRING_DESC_F_NEXT as u16,
            first + 1,
        ),
        SplitDescriptor::new(
            at(RESP),
            CMD_RESP_LEN as u32,
            (VRING_DESC_F_WRITE | VRING_DESC_F_NEXT) as u16,
            first + 2,
        ),
        SplitDescriptor::new(at(DATA), 4096, VRING_DESC_F_WRITE as u16, 0),
    ];
    let raw: Vec<RawDescriptor> = descs.iter().map(|d| RawDescriptor::from(*d)).collect();
    vq.add_desc_chains(&raw, first).unwrap();
}

fn response(g: &Guest, idx: u16) -> (u8, u8) {
    let mut b = [0u8; CMD_RESP_LEN];
    g.mem
        .read_slice(&mut b, GuestAddress(RESP + u64::from(idx) * 0x1000))
        .unwrap();
    let (resp, status, _, _) = CmdResp::decode_status(&b);
    (resp, status)
}

fn wait_used(vq: &MockSplitQueue<'_, GuestMemoryMmap<()>>, n: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while vq.used().idx().load() < n {
        assert!(Instant::now() < deadline, "used idx stays below {n}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

type Started = (
    tempfile::TempDir,
    std::path::PathBuf,
    Arc<VhostScsiController>,
    std::thread::JoinHandle<()>,
);

/// A controller with `queues` request queues on `backend`, serving from a thread.
fn start(backend: Arc<dyn Backend>, queues: usize) -> Started {
    let lun = Lun::new(LunConfig::new("fe0", [3u8; 16]), backend).expect("lun");
    let registry = LunRegistry::new();
    registry.add(lun.clone());
    let map = LunMap::new();
    map.insert(0, lun);
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("fe.sock");
    let c = Arc::new(VhostScsiController::new("fe-test", &sock, map, registry, queues).unwrap());
    let server = {
        let c = c.clone();
        std::thread::spawn(move || c.serve().expect("serve"))
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sock.exists() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    (dir, sock, c, server)
}

#[test]
fn get_vring_base_waits_for_commands_in_flight_and_reconnect_works() {
    let ram: Arc<dyn Backend> = Arc::new(RamBackend::new(1 << 20));
    let fault = FaultBackend::new(ram);
    let ctl = fault.control();
    let (_dir, sock, controller, server) = start(Arc::new(fault), 1);
    let g = Guest::new();
    let conn = connect(&sock, &g, 3);
    let vq = g.queue(2);

    // The first command reports the power-on unit attention; the second is GOOD.
    post_read(&g, &vq, 0, 1);
    conn.kicks[2].write(1).unwrap();
    wait_used(&vq, 1);
    assert_eq!(response(&g, 0), (0, 2));
    assert!(conn.calls[2].read().is_ok(), "the guest was signalled");
    post_read(&g, &vq, 1, 2);
    conn.kicks[2].write(1).unwrap();
    wait_used(&vq, 2);
    assert_eq!(response(&g, 1), (0, 0));

    // A read held in the backend: GET_VRING_BASE must wait for it.
    let rule = ctl.add(FaultRule::new(
        OpMatch::kind(OpKind::Read),
        FaultAction::Hold,
    ));
    post_read(&g, &vq, 2, 3);
    conn.kicks[2].write(1).unwrap();
    assert!(ctl.wait_held(1, Duration::from_secs(5)), "the read is held");
    let (tx, rx) = std::sync::mpsc::channel();
    let fe = conn.fe.clone();
    let stopper = std::thread::spawn(move || {
        let base = fe.get_vring_base(2);
        let _ = tx.send(base.map_err(|e| e.to_string()));
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "GET_VRING_BASE answered with a command in flight"
    );
    assert_eq!(vq.used().idx().load(), 2);
    ctl.remove(rule);
    ctl.release();
    let base = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("GET_VRING_BASE answered")
        .expect("GET_VRING_BASE");
    stopper.join().unwrap();
    assert_eq!(base, 3, "next available index");
    assert_eq!(
        vq.used().idx().load(),
        3,
        "the held command was returned first"
    );
    assert_eq!(response(&g, 2), (0, 0));
    assert!(controller.queue_stops() >= 1);

    // Disconnect; the controller takes the next connection on the same socket.
    drop(conn);
    let deadline = Instant::now() + Duration::from_secs(10);
    while controller.connections() < 1 {
        assert!(Instant::now() < deadline, "the connection did not end");
        std::thread::sleep(Duration::from_millis(5));
    }
    let g2 = Guest::new();
    let conn = connect(&sock, &g2, 3);
    let vq = g2.queue(2);
    post_read(&g2, &vq, 0, 1);
    conn.kicks[2].write(1).unwrap();
    wait_used(&vq, 1);
    // The same initiator port again: its nexus loss is reported as a unit attention.
    let (resp, status) = response(&g2, 0);
    assert_eq!((resp, status), (0, 2));
    drop(conn);

    controller.stop_handle().stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.is_finished() {
        assert!(Instant::now() < deadline, "serve did not return");
        std::thread::sleep(Duration::from_millis(5));
    }
    server.join().unwrap();
}

/// ABORT TASK on the control queue (thread 0) for a command held on the second
/// request queue (thread 1): the command comes back ABORTED on its queue, then the
/// function answers FUNCTION COMPLETE.
#[test]
fn abort_task_reaches_a_command_on_another_queue_thread() {
    let ram: Arc<dyn Backend> = Arc::new(RamBackend::new(1 << 20));
    let fault = FaultBackend::new(ram);
    let ctl = fault.control();
    let (_dir, sock, controller, server) = start(Arc::new(fault), 2);
    let g = Guest::new();
    let conn = connect(&sock, &g, 4);
    let vq = g.queue(3);
    post_read(&g, &vq, 0, 1);
    conn.kicks[3].write(1).unwrap();
    wait_used(&vq, 1);
    assert_eq!(response(&g, 0), (0, 2), "power-on unit attention");

    ctl.add(FaultRule::new(
        OpMatch::kind(OpKind::Read),
        FaultAction::Hold,
    ));
    post_read(&g, &vq, 1, 77);
    conn.kicks[3].write(1).unwrap();
    assert!(ctl.wait_held(1, Duration::from_secs(5)), "the read is held");

    let cq = g.queue(0);
    let tmf_req = 0x30_0000u64;
    let tmf_resp = 0x30_1000u64;
    let req = vhost_target::wire::CtrlReq::encode_tmf(
        virtio_bindings::virtio_scsi::VIRTIO_SCSI_T_TMF_ABORT_TASK,
        LunAddr::encode(0, 0),
        77,
    );
    g.mem.write_slice(&req, GuestAddress(tmf_req)).unwrap();
    g.mem.write_slice(&[0xee], GuestAddress(tmf_resp)).unwrap();
    let descs = [
        SplitDescriptor::new(tmf_req, req.len() as u32, VRING_DESC_F_NEXT as u16, 1),
        SplitDescriptor::new(tmf_resp, 1, VRING_DESC_F_WRITE as u16, 0),
    ];
    let raw: Vec<RawDescriptor> = descs.iter().map(|d| RawDescriptor::from(*d)).collect();
    cq.add_desc_chains(&raw, 0).unwrap();
    conn.kicks[0].write(1).unwrap();

    wait_used(&vq, 2);
    assert_eq!(
        response(&g, 1).0,
        virtio_bindings::virtio_scsi::VIRTIO_SCSI_S_ABORTED as u8
    );
    wait_used(&cq, 1);
    let mut b = [0u8; 1];
    g.mem.read_slice(&mut b, GuestAddress(tmf_resp)).unwrap();
    assert_eq!(b[0], 0, "FUNCTION COMPLETE");
    let chains = controller.queue_chains();
    assert_eq!((chains[0], chains[3]), (1, 2), "{chains:?}");
    ctl.release();
    drop(conn);
    controller.stop_handle().stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.is_finished() {
        assert!(Instant::now() < deadline, "serve did not return");
        std::thread::sleep(Duration::from_millis(5));
    }
    server.join().unwrap();
}

/// Posts event buffer `i` (16 bytes, device-writable) on the event queue.
fn post_event_buffer(vq: &MockSplitQueue<'_, GuestMemoryMmap<()>>, i: u16) {
    let d = SplitDescriptor::new(event_buf(i), 16, VRING_DESC_F_WRITE as u16, 0);
    vq.add_desc_chains(&[RawDescriptor::from(d)], i).unwrap();
}

fn event_buf(i: u16) -> u64 {
    0x30_0000 + u64::from(i) * 0x100
}

fn event(g: &Guest, i: u16) -> vhost_target::wire::ScsiEvent {
    let mut b = [0u8; 16];
    g.mem
        .read_slice(&mut b, GuestAddress(event_buf(i)))
        .unwrap();
    vhost_target::wire::ScsiEvent::decode(&b)
}

/// LUNs attached, resized and detached while a frontend is connected: each
/// change is an event in the guest's next event buffer — delivered at once when
/// a buffer waits, or when the driver posts one (its kick) if none did.
#[test]
fn events_reach_the_event_queue_with_or_without_a_buffer_waiting() {
    use vhost_target::Posted;
    use virtio_bindings::virtio_scsi as vs;
    let (_dir, sock, controller, server) = start(Arc::new(RamBackend::new(1 << 20)), 1);
    let g = Guest::new();
    let conn = connect_with(
        &sock,
        &g,
        3,
        (1 << vs::VIRTIO_SCSI_F_HOTPLUG) | (1 << vs::VIRTIO_SCSI_F_CHANGE),
    );
    let evq = g.queue(1);
    let lun3 = Lun::new(
        LunConfig::new("fe3", [4u8; 16]),
        Arc::new(RamBackend::new(1 << 20)),
    )
    .unwrap();

    // No buffer yet: the event waits until the driver posts one and kicks.
    assert_eq!(controller.attach_lun(3, lun3.clone()), Ok(Posted::Queued));
    post_event_buffer(&evq, 0);
    post_event_buffer(&evq, 1);
    conn.kicks[1].write(1).unwrap();
    wait_used(&evq, 1);
    let e = event(&g, 0);
    assert_eq!(
        (e.event, e.lun, e.reason),
        (
            vs::VIRTIO_SCSI_T_TRANSPORT_RESET,
            [1, 0, 0, 3, 0, 0, 0, 0],
            vs::VIRTIO_SCSI_EVT_RESET_RESCAN
        )
    );
    assert!(conn.calls[1].read().is_ok(), "the driver was signalled");

    // A buffer waits: the resize's event is delivered with no kick.
    lun3.resize(2 << 20).unwrap();
    wait_used(&evq, 2);
    let e = event(&g, 1);
    assert_eq!(
        (e.event, e.lun, e.reason),
        (
            vs::VIRTIO_SCSI_T_PARAM_CHANGE,
            [1, 0, 0, 3, 0, 0, 0, 0],
            0x092a
        )
    );

    let (_, posted) = controller.detach_lun(3).unwrap();
    assert_eq!(posted, Posted::Queued);
    post_event_buffer(&evq, 2);
    conn.kicks[1].write(1).unwrap();
    wait_used(&evq, 3);
    assert_eq!(event(&g, 2).reason, vs::VIRTIO_SCSI_EVT_RESET_REMOVED);
    let stats = controller.event_stats();
    assert_eq!((stats.queued, stats.delivered, stats.lost), (3, 3, 0));
    assert_eq!(controller.queue_chains()[1], 3);
    drop(conn);

    // A driver without HOTPLUG is not told of new LUNs.
    let deadline = Instant::now() + Duration::from_secs(10);
    while controller.connections() < 1 {
        assert!(Instant::now() < deadline, "the connection did not end");
        std::thread::sleep(Duration::from_millis(5));
    }
    let g2 = Guest::new();
    let conn = connect(&sock, &g2, 3);
    assert_eq!(controller.attach_lun(3, lun3), Ok(Posted::NotNegotiated));
    drop(conn);

    controller.stop_handle().stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.is_finished() {
        assert!(Instant::now() < deadline, "serve did not return");
        std::thread::sleep(Duration::from_millis(5));
    }
    server.join().unwrap();
}

/// A driver that negotiated EVENT_IDX and then puts an impossible index in its
/// available ring (more entries than the ring holds) gets that queue ignored; the
/// thread that serves it goes on serving the others (here the control queue of
/// the same thread) instead of looking at the broken ring forever.
#[test]
fn a_broken_available_index_does_not_hold_the_queue_thread() {
    use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
    let (_dir, sock, controller, server) = start(Arc::new(RamBackend::new(1 << 20)), 1);
    let g = Guest::new();
    let conn = connect_with(&sock, &g, 3, 1 << VIRTIO_RING_F_EVENT_IDX);
    let vq = g.queue(2);
    post_read(&g, &vq, 0, 1);
    conn.kicks[2].write(1).unwrap();
    wait_used(&vq, 1);
    // Sixteen more chains than a 16-entry ring can hold.
    vq.avail().idx().store(1 + 2 * QSIZE);
    conn.kicks[2].write(1).unwrap();

    // The control queue is served by the same thread.
    let cq = g.queue(0);
    let (tmf_req, tmf_resp) = (0x30_0000u64, 0x30_1000u64);
    let req = vhost_target::wire::CtrlReq::encode_tmf(
        virtio_bindings::virtio_scsi::VIRTIO_SCSI_T_TMF_ABORT_TASK,
        LunAddr::encode(0, 0),
        99,
    );
    g.mem.write_slice(&req, GuestAddress(tmf_req)).unwrap();
    g.mem.write_slice(&[0xee], GuestAddress(tmf_resp)).unwrap();
    let descs = [
        SplitDescriptor::new(tmf_req, req.len() as u32, VRING_DESC_F_NEXT as u16, 1),
        SplitDescriptor::new(tmf_resp, 1, VRING_DESC_F_WRITE as u16, 0),
    ];
    let raw: Vec<RawDescriptor> = descs.iter().map(|d| RawDescriptor::from(*d)).collect();
    cq.add_desc_chains(&raw, 0).unwrap();
    conn.kicks[0].write(1).unwrap();
    wait_used(&cq, 1);
    let mut b = [0u8; 1];
    g.mem.read_slice(&mut b, GuestAddress(tmf_resp)).unwrap();
    assert_eq!(b[0], 0, "FUNCTION COMPLETE (no such task)");
    assert_eq!(
        vq.used().idx().load(),
        1,
        "nothing taken from the broken ring"
    );
    drop(conn);
    controller.stop_handle().stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.is_finished() {
        assert!(Instant::now() < deadline, "serve did not return");
        std::thread::sleep(Duration::from_millis(5));
    }
    server.join().unwrap();
}
