//! The blk request queue against virtio-queue's mock driver, with a real engine
//! worker on a RAM LUN: each request type, the status of each refusal, a
//! reservation taken by another I_T nexus, the configuration space, and the
//! config-change message.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backends::ram::RamBackend;
use engine::{
    CmdResponse, DataDir, Event, Lun, LunConfig, LunMap, LunRegistry, Nexus, Protocol, ScsiCmd,
    ScsiStatus, TargetPort, VecBuf, Worker,
};
use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::device::BlkDevice;
use super::queues::BlkQueues;
use super::request::BlkError;
use super::wire::{self, feature, Header, Segment};
use crate::controller::sas_transport_id;
use crate::queues::UsedEntry;
use crate::request::{GuestMem, RequestError, MAX_DESCRIPTORS};

const MEM_SIZE: usize = 16 << 20;
const HDR: u64 = 0x10_0000;
const STATUS: u64 = 0x11_0000;
const SEGS: u64 = 0x12_0000;
const DATA: u64 = 0x20_0000;
const Q: u16 = 0;
const LUN_SIZE: u64 = 64 << 20;

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

fn port(name: &str, id: u16) -> Arc<TargetPort> {
    Arc::new(TargetPort {
        name: name.into(),
        protocol: Protocol::Sas,
        relative_id: id,
        group_id: 1,
    })
}

struct Fx {
    mem: Arc<GuestMem>,
    lun: Arc<Lun>,
    registry: Arc<LunRegistry>,
    device: Arc<BlkDevice>,
    queues: BlkQueues,
}

impl Fx {
    fn with_config(config: LunConfig) -> Self {
        let mem = Arc::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("memory"),
        );
        let registry = LunRegistry::new();
        let lun = Lun::new(config, Arc::new(RamBackend::new(LUN_SIZE))).expect("lun");
        registry.add(lun.clone());
        let map = LunMap::new();
        map.insert(0, lun.clone());
        let nexus = Nexus::new("blk", sas_transport_id("blk"), port("vhost:blk", 1), map);
        let device = BlkDevice::new(lun.clone(), 1);
        let queues = BlkQueues::new(registry.clone(), nexus, device.clone()).expect("queues");
        Fx {
            mem,
            lun,
            registry,
            device,
            queues,
        }
    }

    fn ram() -> Self {
        Self::with_config(LunConfig::new("blk0", [3u8; 16]))
    }

    /// Runs one chain; waits (bounded) for its used entry; returns it and the
    /// status byte.
    fn run(&mut self, descs: &[D]) -> (UsedEntry, u8) {
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let vq = MockSplitQueue::new(&*self.mem, 256);
        let chain = vq.build_desc_chain(&raw(descs)).expect("chain");
        let mut used = Vec::new();
        self.queues.request(Q, chain, &self.mem, &mut used);
        let deadline = Instant::now() + Duration::from_secs(5);
        while used.is_empty() {
            assert!(Instant::now() < deadline, "no completion");
            self.queues.poll(&mut used);
        }
        assert_eq!(used.len(), 1);
        assert_eq!(self.queues.in_flight(), 0);
        let status: u8 = self.mem.read_obj(GuestAddress(STATUS)).unwrap();
        (used[0], status)
    }

    fn header(&self, kind: u32, sector: u64) {
        self.mem
            .write_slice(&Header { kind, sector }.encode(), GuestAddress(HDR))
            .unwrap();
    }

    fn write(&mut self, sector: u64, data: &[u8]) -> (UsedEntry, u8) {
        self.header(wire::T_OUT, sector);
        self.mem.write_slice(data, GuestAddress(DATA)).unwrap();
        self.run(&[r(HDR, 16), r(DATA, data.len() as u32), w(STATUS, 1)])
    }

    fn read(&mut self, sector: u64, len: u32) -> (UsedEntry, u8, Vec<u8>) {
        self.header(wire::T_IN, sector);
        self.mem
            .write_slice(&vec![0xee; len as usize], GuestAddress(DATA))
            .unwrap();
        let (u, s) = self.run(&[r(HDR, 16), w(DATA, len), w(STATUS, 1)]);
        let mut b = vec![0u8; len as usize];
        self.mem.read_slice(&mut b, GuestAddress(DATA)).unwrap();
        (u, s, b)
    }

    fn segments(&mut self, kind: u32, segs: &[Segment]) -> (UsedEntry, u8) {
        self.header(kind, 0);
        let b: Vec<u8> = segs.iter().flat_map(|s| s.encode()).collect();
        self.mem.write_slice(&b, GuestAddress(SEGS)).unwrap();
        self.run(&[r(HDR, 16), r(SEGS, b.len() as u32), w(STATUS, 1)])
    }

    fn last_error(&self) -> Option<BlkError> {
        self.queues.stats.last_error.clone()
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[test]
fn write_then_read_through_guest_memory() {
    let mut fx = Fx::ram();
    let data = pattern(8192, 5);
    // The nexus's first command meets the power-on unit attention: it is
    // submitted again, and the driver sees OK.
    let (u, s) = fx.write(24, &data);
    assert_eq!((s, u.len), (wire::S_OK, 1));
    let (u, s, back) = fx.read(24, 8192);
    assert_eq!((s, u.len), (wire::S_OK, 8193));
    assert_eq!(back, data);
    // Split over several descriptors, header included.
    fx.header(wire::T_IN, 24);
    let (u, s) = fx.run(&[
        r(HDR, 10),
        r(HDR + 10, 6),
        w(DATA, 512),
        w(DATA + 4096, 7680),
        w(STATUS, 1),
    ]);
    assert_eq!((s, u.len), (wire::S_OK, 8193));
    let mut b = vec![0u8; 512];
    fx.mem.read_slice(&mut b, GuestAddress(DATA)).unwrap();
    assert_eq!(b, data[..512]);
    assert_eq!(fx.queues.stats.failed, 0);
}

#[test]
fn flush_get_id_and_unsupported() {
    let mut fx = Fx::ram();
    fx.header(wire::T_FLUSH, 0);
    let (u, s) = fx.run(&[r(HDR, 16), w(STATUS, 1)]);
    assert_eq!((s, u.len), (wire::S_OK, 1));

    fx.header(wire::T_GET_ID, 0);
    let (u, s) = fx.run(&[r(HDR, 16), w(DATA, 20), w(STATUS, 1)]);
    assert_eq!((s, u.len), (wire::S_OK, 21));
    let mut id = [0u8; 20];
    fx.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    let serial = fx.lun.config.serial.as_bytes();
    assert_eq!(&id[..], &serial[..20]);

    for kind in [10u32, 14, 99, u32::MAX] {
        fx.header(kind, 0);
        let (u, s) = fx.run(&[r(HDR, 16), w(STATUS, 1)]);
        assert_eq!((s, u.len), (wire::S_UNSUPP, 1), "type {kind}");
    }
}

#[test]
fn short_serial_is_zero_padded() {
    let mut c = LunConfig::new("short", [4u8; 16]);
    c.serial = "abc".into();
    let mut fx = Fx::with_config(c);
    fx.mem.write_slice(&[0xaa; 20], GuestAddress(DATA)).unwrap();
    fx.header(wire::T_GET_ID, 0);
    let (u, s) = fx.run(&[r(HDR, 16), w(DATA, 20), w(STATUS, 1)]);
    assert_eq!((s, u.len), (wire::S_OK, 21));
    let mut id = [0u8; 20];
    fx.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    let mut want = [0u8; 20];
    want[..3].copy_from_slice(b"abc");
    assert_eq!(id, want);
}

#[test]
fn discard_and_write_zeroes() {
    let mut fx = Fx::ram();
    let data = pattern(16384, 9);
    for sector in [0u64, 64, 128] {
        assert_eq!(fx.write(sector, &data).1, wire::S_OK);
    }
    // DISCARD two ranges: they read back as zeroes (the RAM LUN zeroes them).
    let seg = |sector, num_sectors, flags| Segment {
        sector,
        num_sectors,
        flags,
    };
    let (u, s) = fx.segments(wire::T_DISCARD, &[seg(0, 8, 0), seg(72, 8, 0)]);
    assert_eq!((s, u.len), (wire::S_OK, 1));
    let (_, _, back) = fx.read(0, 16384);
    assert_eq!(back[..4096], [0u8; 4096]);
    assert_eq!(back[4096..], data[4096..]);
    let (_, _, back) = fx.read(64, 16384);
    assert_eq!(back[..4096], data[..4096]);
    assert_eq!(back[4096..8192], [0u8; 4096]);
    // WRITE_ZEROES, with and without the unmap flag.
    for flags in [0, wire::SEG_F_UNMAP] {
        assert_eq!(fx.write(128, &data).1, wire::S_OK);
        let (u, s) = fx.segments(wire::T_WRITE_ZEROES, &[seg(130, 4, flags)]);
        assert_eq!((s, u.len), (wire::S_OK, 1));
        let (_, _, back) = fx.read(128, 16384);
        assert_eq!(back[..1024], data[..1024]);
        assert_eq!(back[1024..3072], [0u8; 2048]);
        assert_eq!(back[3072..], data[3072..]);
    }
    // Refusals: an unknown flag, two write-zeroes segments, a zero-length
    // write-zeroes (WRITE SAME's "to the end"), a discard with a flag, too many
    // discard segments, a ragged segment list.
    let cases: Vec<(u32, Vec<Segment>)> = vec![
        (wire::T_WRITE_ZEROES, vec![seg(0, 8, 2)]),
        (wire::T_WRITE_ZEROES, vec![seg(0, 8, 0), seg(8, 8, 0)]),
        (wire::T_WRITE_ZEROES, vec![seg(0, 0, 0)]),
        (wire::T_DISCARD, vec![seg(0, 8, 1)]),
        (wire::T_DISCARD, (0..65).map(|i| seg(i * 8, 8, 0)).collect()),
        (wire::T_DISCARD, vec![seg(LUN_SIZE / 512, 8, 0)]),
    ];
    for (kind, segs) in cases {
        let (u, s) = fx.segments(kind, &segs);
        assert_eq!((s, u.len), (wire::S_IOERR, 1), "{kind} {segs:?}");
    }
    fx.header(wire::T_DISCARD, 0);
    let (_, s) = fx.run(&[r(HDR, 16), r(SEGS, 17), w(STATUS, 1)]);
    assert_eq!(s, wire::S_IOERR);
}

#[test]
fn not_thin_offers_no_discard_and_read_only_refuses_writes() {
    let mut c = LunConfig::new("thick", [5u8; 16]);
    c.thin = false;
    let mut fx = Fx::with_config(c);
    assert_eq!(fx.device.features() & (1 << feature::DISCARD), 0);
    assert_eq!(fx.device.config().max_discard_seg, 0);
    let (u, s) = fx.segments(
        wire::T_DISCARD,
        &[Segment {
            sector: 0,
            num_sectors: 8,
            flags: 0,
        }],
    );
    assert_eq!((s, u.len), (wire::S_UNSUPP, 1));

    let mut c = LunConfig::new("ro", [6u8; 16]);
    c.read_only = true;
    let mut fx = Fx::with_config(c);
    assert_ne!(fx.device.features() & (1 << feature::RO), 0);
    assert_eq!(fx.write(0, &[1u8; 512]).1, wire::S_IOERR);
    assert_eq!(fx.read(0, 512).1, wire::S_OK);
}

/// A PERSISTENT RESERVE OUT from another I_T nexus (as an iSCSI initiator would
/// send it), run on its own worker.
fn pr_out(worker: &mut Worker, nexus: &Arc<Nexus>, sa: u8, kind: u8, key: u64, sa_key: u64) {
    let mut params = vec![0u8; 24];
    params[0..8].copy_from_slice(&key.to_be_bytes());
    params[8..16].copy_from_slice(&sa_key.to_be_bytes());
    let cdb = [0x5f, sa, kind, 0, 0, 0, 0, 0, 24, 0];
    let mut resp = None;
    for _ in 0..3 {
        worker.submit(
            nexus,
            ScsiCmd {
                lun: 0,
                cdb: engine::Cdb::new(&cdb).unwrap(),
                tag: 1,
                attr: engine::TaskAttr::Simple,
                dir: DataDir::ToDevice,
                token: 1,
                data: Box::new(VecBuf(params.clone())),
            },
        );
        let mut ev = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while ev.is_empty() {
            assert!(Instant::now() < deadline);
            worker.wait(50, &mut ev);
        }
        let Some(Event::Cmd(c)) = ev.pop() else {
            panic!("no completion");
        };
        let r: CmdResponse = c.response.unwrap();
        // The first command of the nexus reports the power-on unit attention.
        if r.status == ScsiStatus::Good {
            resp = Some(r);
            break;
        }
    }
    assert!(resp.is_some(), "PR OUT {sa} failed");
}

#[test]
fn a_reservation_of_another_nexus_fails_writes() {
    let mut fx = Fx::ram();
    assert_eq!(fx.write(0, &[7u8; 512]).1, wire::S_OK);
    let map = LunMap::new();
    map.insert(0, fx.lun.clone());
    let iscsi = Nexus::new(
        "iqn.2026-11.org.example:host,i,0x1",
        engine::nexus::iscsi_transport_id("iqn.2026-11.org.example:host,i,0x1"),
        port("iscsi-tpg1", 2),
        map,
    );
    let mut worker = Worker::new(fx.registry.clone()).unwrap();
    pr_out(&mut worker, &iscsi, 0x00, 0, 0, 0xabc); // REGISTER
    pr_out(&mut worker, &iscsi, 0x01, 0x01, 0xabc, 0); // RESERVE, Write Exclusive
    let (u, s) = fx.write(0, &[8u8; 512]);
    assert_eq!((s, u.len), (wire::S_IOERR, 1));
    assert_eq!(fx.queues.stats.failed, 1);
    // Reads are allowed under Write Exclusive, and the write did not land.
    let (_, s, back) = fx.read(0, 512);
    assert_eq!(s, wire::S_OK);
    assert_eq!(back, vec![7u8; 512]);
    pr_out(&mut worker, &iscsi, 0x02, 0x01, 0xabc, 0); // RELEASE
    assert_eq!(fx.write(0, &[9u8; 512]).1, wire::S_OK);
}

#[test]
fn bad_chains_get_ioerr_or_come_back_unanswered() {
    let mut fx = Fx::ram();
    fx.header(wire::T_IN, 0);
    // No status byte: nothing to answer in.
    let (u, _) = fx.run(&[r(HDR, 16)]);
    assert_eq!(u.len, 0);
    assert_eq!(fx.last_error(), Some(BlkError::NoStatus));
    // Readable after writable.
    let (u, _) = fx.run(&[r(HDR, 16), w(DATA, 512), r(DATA, 512), w(STATUS, 1)]);
    assert_eq!(u.len, 0);
    assert!(matches!(
        fx.last_error(),
        Some(BlkError::Chain(RequestError::WrongDirection { index: 2 }))
    ));
    // Status byte outside guest memory.
    let (u, _) = fx.run(&[r(HDR, 16), w(MEM_SIZE as u64, 1)]);
    assert_eq!(u.len, 0);
    // Too many descriptors.
    let mut long = vec![r(HDR, 16)];
    long.extend((0..MAX_DESCRIPTORS).map(|i| w(DATA + 512 * i as u64, 512)));
    long.push(w(STATUS, 1));
    let vq = MockSplitQueue::new(&*fx.mem, 2048);
    let chain = vq.build_desc_chain(&raw(&long)).expect("chain");
    let mut used = Vec::new();
    fx.queues.request(Q, chain, &fx.mem, &mut used);
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].len, 0);
    // With a status byte, everything else is IOERR.
    let ioerr: Vec<(&str, u32, u64, Vec<D>)> = vec![
        (
            "short header",
            wire::T_IN,
            0,
            vec![r(HDR, 15), w(STATUS, 1)],
        ),
        (
            "data outside memory",
            wire::T_IN,
            0,
            vec![r(HDR, 16), w(MEM_SIZE as u64 - 256, 512), w(STATUS, 1)],
        ),
        (
            "read with data out",
            wire::T_IN,
            0,
            vec![r(HDR, 16), r(DATA, 512), w(STATUS, 1)],
        ),
        (
            "write with data in",
            wire::T_OUT,
            0,
            vec![r(HDR, 16), w(DATA, 512), w(STATUS, 1)],
        ),
        (
            "partial sector",
            wire::T_IN,
            0,
            vec![r(HDR, 16), w(DATA, 100), w(STATUS, 1)],
        ),
        (
            "sector past 2^64 bytes",
            wire::T_IN,
            u64::MAX / 256,
            vec![r(HDR, 16), w(DATA, 512), w(STATUS, 1)],
        ),
        (
            "past the end",
            wire::T_IN,
            LUN_SIZE / 512,
            vec![r(HDR, 16), w(DATA, 512), w(STATUS, 1)],
        ),
        (
            "longer than one command",
            wire::T_IN,
            0,
            vec![r(HDR, 16), w(DATA, 12 << 20), w(STATUS, 1)],
        ),
        (
            "get id without room",
            wire::T_GET_ID,
            0,
            vec![r(HDR, 16), w(STATUS, 1)],
        ),
    ];
    for (what, kind, sector, descs) in ioerr {
        fx.header(kind, sector);
        let (u, s) = fx.run(&descs);
        assert_eq!((s, u.len), (wire::S_IOERR, 1), "{what}");
    }
}

#[test]
fn config_space_follows_the_lun() {
    let mut c = LunConfig::new("geo", [8u8; 16]);
    c.block_size = 4096;
    c.physical_block_size = 16384;
    let fx = Fx::with_config(c);
    let cfg = fx.device.config();
    assert_eq!(cfg.capacity, LUN_SIZE / 512);
    assert_eq!(cfg.blk_size, 4096);
    assert_eq!(cfg.physical_block_exp, 2);
    assert_eq!(cfg.min_io_size, 4);
    assert_eq!(cfg.num_queues, 1);
    assert_eq!(cfg.writeback, 1);
    assert_eq!(cfg.max_write_zeroes_seg, 1);
    assert_eq!(
        u64::from(cfg.max_write_zeroes_sectors),
        engine::vpd::MAX_WRITE_SAME_BLOCKS * 8
    );
    // A request of seg_max segments of size_max fits one command.
    let max = u64::from(engine::vpd::max_transfer_blocks(&fx.lun)) * 4096;
    assert!(u64::from(cfg.size_max) * u64::from(cfg.seg_max) <= max);
    assert_eq!(cfg.size_max % 4096, 0);
    // 4 KiB blocks: a sector that is not on a block boundary is refused.
    let mut fx = fx;
    fx.header(wire::T_IN, 3);
    let (_, s) = fx.run(&[r(HDR, 16), w(DATA, 4096), w(STATUS, 1)]);
    assert_eq!(s, wire::S_IOERR);
    fx.header(wire::T_IN, 8);
    let (_, s) = fx.run(&[r(HDR, 16), w(DATA, 4096), w(STATUS, 1)]);
    assert_eq!(s, wire::S_OK);

    // GET_CONFIG windows; SET_CONFIG of writeback only.
    assert_eq!(
        fx.device.read_config(0, 8),
        (LUN_SIZE / 512).to_le_bytes().to_vec()
    );
    assert!(fx.device.read_config(255, 2).is_empty());
    fx.device.write_config(32, &[0]).unwrap();
    assert_eq!(fx.device.config().writeback, 0);
    assert!(fx.device.geometry().write_through);
    assert!(fx.device.write_config(0, &[0; 8]).is_err());
    assert!(fx.device.write_config(32, &[]).is_err());
    // Write-through: writes still land (with FUA).
    assert_eq!(fx.write(8, &[1u8; 4096]).1, wire::S_OK);
}

#[test]
fn a_resize_changes_the_capacity_and_tells_the_frontend() {
    let fx = Fx::ram();
    fx.lun.subscribe_capacity(&fx.device);
    // No channel yet: nothing is sent.
    fx.lun.resize(LUN_SIZE * 2).unwrap();
    assert_eq!(fx.device.config_changes(), 0);
    assert_eq!(fx.device.config().capacity, LUN_SIZE * 2 / 512);
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    fx.device.set_backend_req(Some(ours));
    fx.lun.resize(LUN_SIZE * 3).unwrap();
    assert_eq!(fx.device.config_changes(), 1);
    assert_eq!(fx.device.config().capacity, LUN_SIZE * 3 / 512);
    let mut msg = [0u8; 12];
    theirs.read_exact(&mut msg).unwrap();
    // CONFIG_CHANGE_MSG (2), version 1, no payload, no reply asked.
    assert_eq!(msg, [2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
    // The frontend went away: the channel is dropped, nothing panics.
    drop(theirs);
    assert!(!fx.device.notify_config_change());
    assert!(!fx.device.notify_config_change());
}
