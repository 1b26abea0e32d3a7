//! The vhost-user-blk controller driven from the host by the `vhost` crate's
//! frontend, in QEMU's message order, with guest memory in a shared file: the
//! features and configuration space it offers, a write and a read on the second
//! queue's thread, and a resize announced on the backend request channel, all
//! through the controller's relay of the socket.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backends::ram::RamBackend;
use engine::{Lun, LunConfig, LunRegistry};
use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vhost_target::blk::wire::{self, feature, Header};
use vhost_target::VhostBlkController;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const MEM: usize = 4 << 20;
const QSIZE: u16 = 16;
const HDR: u64 = 0x20_0000;
const STATUS: u64 = 0x21_0000;
const DATA: u64 = 0x22_0000;
const LUN_SIZE: u64 = 8 << 20;
const QUEUES: usize = 2;
const PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

fn queue_base(q: usize) -> u64 {
    0x1_0000 * (q as u64 + 1)
}

/// Posts chain `idx` (header, data, status) on `vq`.
fn post(
    g: &GuestMemoryMmap<()>,
    vq: &MockSplitQueue<'_, GuestMemoryMmap<()>>,
    idx: u16,
    kind: u32,
    sector: u64,
) {
    let at = |base: u64| base + u64::from(idx) * 0x1000;
    g.write_slice(&Header { kind, sector }.encode(), GuestAddress(at(HDR)))
        .unwrap();
    g.write_obj(0xffu8, GuestAddress(at(STATUS))).unwrap();
    let data_flags = if kind == wire::T_IN {
        VRING_DESC_F_WRITE | VRING_DESC_F_NEXT
    } else {
        VRING_DESC_F_NEXT
    };
    let first = idx * 3;
    let descs = [
        SplitDescriptor::new(at(HDR), 16, VRING_DESC_F_NEXT as u16, first + 1),
        SplitDescriptor::new(
            DATA + u64::from(idx) * 0x1000,
            4096,
            data_flags as u16,
            first + 2,
        ),
        SplitDescriptor::new(at(STATUS), 1, VRING_DESC_F_WRITE as u16, 0),
    ];
    let raw: Vec<RawDescriptor> = descs.iter().map(|d| RawDescriptor::from(*d)).collect();
    vq.add_desc_chains(&raw, first).unwrap();
}

fn wait_used(vq: &MockSplitQueue<'_, GuestMemoryMmap<()>>, n: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while vq.used().idx().load() < n {
        assert!(Instant::now() < deadline, "used idx stays below {n}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_frontend_configures_the_device_moves_data_and_hears_of_a_resize() {
    let lun = Lun::new(
        LunConfig::new("blkfe", [2u8; 16]),
        Arc::new(RamBackend::new(LUN_SIZE)),
    )
    .unwrap();
    let registry = LunRegistry::new();
    registry.add(lun.clone());
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("blk.sock");
    let c =
        Arc::new(VhostBlkController::new("blk-fe", &sock, lun.clone(), registry, QUEUES).unwrap());
    let server = {
        let c = c.clone();
        std::thread::spawn(move || c.serve())
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sock.exists() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }

    let file = tempfile::tempfile().unwrap();
    file.set_len(MEM as u64).unwrap();
    let g = GuestMemoryMmap::<()>::from_ranges_with_files([(
        GuestAddress(0),
        MEM,
        Some(FileOffset::new(file.try_clone().unwrap(), 0)),
    )])
    .unwrap();
    let host = g.get_host_address(GuestAddress(0)).unwrap() as u64;

    let mut fe = Frontend::connect(&sock, QUEUES as u64).expect("connect");
    let features = fe.get_features().unwrap();
    for bit in [
        feature::SEG_MAX,
        feature::BLK_SIZE,
        feature::FLUSH,
        feature::TOPOLOGY,
        feature::MQ,
        feature::DISCARD,
        feature::WRITE_ZEROES,
        feature::CONFIG_WCE,
    ] {
        assert_ne!(features & (1 << bit), 0, "feature {bit}");
    }
    assert_eq!(features & (1 << feature::RO), 0);
    let proto = fe.get_protocol_features().unwrap();
    let want = VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::BACKEND_REQ;
    assert!(proto.contains(want), "{proto:?}");
    fe.set_protocol_features(want).unwrap();
    assert_eq!(fe.get_queue_num().unwrap(), QUEUES as u64);
    fe.set_owner().unwrap();
    let (_, cfg) = fe
        .get_config(0, 60, VhostUserConfigFlags::WRITABLE, &[0u8; 60])
        .expect("GET_CONFIG");
    assert_eq!(cfg[0..8], (LUN_SIZE / 512).to_le_bytes());
    assert_eq!(cfg[20..24], 512u32.to_le_bytes());
    assert_eq!(cfg[34..36], (QUEUES as u16).to_le_bytes());
    let (ours, theirs) = UnixStream::pair().unwrap();
    fe.set_backend_request_fd(&theirs).expect("backend channel");
    drop(theirs);
    fe.set_features(
        (1 << VIRTIO_F_VERSION_1) | PROTOCOL_FEATURES | (1 << feature::FLUSH) | (1 << feature::MQ),
    )
    .unwrap();
    fe.set_mem_table(&[VhostUserMemoryRegionInfo {
        guest_phys_addr: 0,
        memory_size: MEM as u64,
        userspace_addr: host,
        mmap_offset: 0,
        mmap_handle: std::os::fd::AsRawFd::as_raw_fd(&file),
    }])
    .unwrap();
    let mut kicks = Vec::new();
    let mut calls = Vec::new();
    let vqs: Vec<_> = (0..QUEUES)
        .map(|q| MockSplitQueue::create(&g, GuestAddress(queue_base(q)), QSIZE))
        .collect();
    for (q, vq) in vqs.iter().enumerate() {
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
                desc_table_addr: host + vq.desc_table_addr().0,
                used_ring_addr: host + vq.used_addr().0,
                avail_ring_addr: host + vq.avail_addr().0,
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

    // A write then a read on queue 1 (its own vring thread and engine worker).
    let vq = &vqs[1];
    g.write_slice(&[0x5au8; 4096], GuestAddress(DATA)).unwrap();
    post(&g, vq, 0, wire::T_OUT, 16);
    kicks[1].write(1).unwrap();
    wait_used(vq, 1);
    assert_eq!(g.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), wire::S_OK);
    post(&g, vq, 1, wire::T_IN, 16);
    kicks[1].write(1).unwrap();
    wait_used(vq, 2);
    assert_eq!(
        g.read_obj::<u8>(GuestAddress(STATUS + 0x1000)).unwrap(),
        wire::S_OK
    );
    let mut back = [0u8; 4096];
    g.read_slice(&mut back, GuestAddress(DATA + 0x1000))
        .unwrap();
    assert_eq!(back, [0x5au8; 4096]);

    // A resize: CONFIG_CHANGE_MSG on the backend channel, the new capacity in
    // the configuration space.
    lun.resize(LUN_SIZE * 2).unwrap();
    ours.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut msg = [0u8; 12];
    (&ours).read_exact(&mut msg).expect("config change message");
    assert_eq!(u32::from_le_bytes(msg[0..4].try_into().unwrap()), 2);
    assert_eq!(c.config_changes(), 1);
    let (_, cfg) = fe
        .get_config(0, 8, VhostUserConfigFlags::WRITABLE, &[0u8; 8])
        .unwrap();
    assert_eq!(cfg[..], (LUN_SIZE * 2 / 512).to_le_bytes());

    drop(fe);
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.connections() < 1 {
        assert!(Instant::now() < deadline, "the connection did not end");
        std::thread::sleep(Duration::from_millis(10));
    }
    c.stop_handle().stop();
    server.join().unwrap().unwrap();
}
