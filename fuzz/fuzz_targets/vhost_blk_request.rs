//! Any split virtqueue contents — descriptor table (indirect tables, loops, `next`
//! out of range, addresses outside memory, any direction), available ring, request
//! headers, segment lists and data — through the vhost-user-blk request queue
//! code and the engine on a small RAM LUN: every chain taken must come back as
//! exactly one used entry, nothing may panic or hang, and a used length never
//! exceeds what the chain made device-writable. The first input byte picks the
//! LUN's block size (512 or 4096) and whether the driver turned the write cache
//! off.
#![no_main]

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backends::ram::RamBackend;
use engine::{Lun, LunConfig, LunMap, LunRegistry, Nexus, Protocol, TargetPort};
use libfuzzer_sys::fuzz_target;
use vhost_target::blk::{BlkDevice, BlkQueues};
use vhost_target::controller::sas_transport_id;
use vhost_target::request::GuestMem;
use vhost_target::UsedEntry;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM: usize = 1 << 20;
const QUEUE_SIZE: u16 = 16;
const DESC_TABLE: u64 = 0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
/// Where the input's free-form bytes (headers, data, indirect tables) go.
const PAYLOAD: u64 = 0x4000;

struct Env {
    mem: Arc<GuestMem>,
    device: Arc<BlkDevice>,
    queues: BlkQueues,
}

fn env(block_size: u32) -> Env {
    let registry = LunRegistry::new();
    let mut config = LunConfig::new("fuzz", [9u8; 16]);
    config.block_size = block_size;
    let lun = Lun::new(config, Arc::new(RamBackend::new(1 << 20))).expect("lun");
    registry.add(lun.clone());
    let map = LunMap::new();
    map.insert(0, lun.clone());
    let port = Arc::new(TargetPort {
        name: "vhost:fuzz".into(),
        protocol: Protocol::Sas,
        relative_id: 1,
        group_id: 1,
    });
    let nexus = Nexus::new("fuzz", sas_transport_id("fuzz"), port, map);
    let device = BlkDevice::new(lun, 1);
    let mem =
        Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).expect("memory"));
    Env {
        mem,
        device: device.clone(),
        queues: BlkQueues::new(registry, nexus, device).expect("queues"),
    }
}

thread_local! {
    static ENVS: RefCell<[Option<Env>; 2]> = const { RefCell::new([None, None]) };
}

fuzz_target!(|input: &[u8]| {
    // [mode][heads][16 raw descriptors][payload...]
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let Some((&heads, rest)) = rest.split_first() else {
        return;
    };
    let table_len = usize::from(QUEUE_SIZE) * 16;
    if rest.len() < table_len {
        return;
    }
    let (table, payload) = rest.split_at(table_len);
    let payload = &payload[..payload.len().min(MEM - PAYLOAD as usize)];
    ENVS.with(|e| {
        let mut e = e.borrow_mut();
        let which = usize::from(mode & 1);
        let env = e[which].get_or_insert_with(|| env(if which == 0 { 512 } else { 4096 }));
        let _ = env.device.write_config(32, &[u8::from(mode & 2 == 0)]);
        let mem = env.mem.clone();
        mem.write_slice(&vec![0u8; 0x4000], GuestAddress(0))
            .unwrap();
        mem.write_slice(table, GuestAddress(DESC_TABLE)).unwrap();
        mem.write_slice(payload, GuestAddress(PAYLOAD)).unwrap();
        let n = u16::from(heads) % (QUEUE_SIZE + 1);
        for i in 0..n {
            let head = u16::from(payload.get(usize::from(i)).copied().unwrap_or(0)) % QUEUE_SIZE;
            mem.write_obj(head, GuestAddress(AVAIL + 4 + 2 * u64::from(i)))
                .unwrap();
        }
        mem.write_obj(n, GuestAddress(AVAIL + 2)).unwrap();

        let mut q = Queue::new(QUEUE_SIZE).unwrap();
        q.set_size(QUEUE_SIZE);
        q.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
        q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        q.set_used_ring_address(Some(USED as u32), Some(0));
        q.set_ready(true);
        let mut used: Vec<UsedEntry> = Vec::new();
        let mut writable = Vec::new();
        let mut taken = 0usize;
        while let Some(chain) = q.pop_descriptor_chain(mem.clone()) {
            taken += 1;
            assert!(taken <= usize::from(QUEUE_SIZE));
            let head = chain.head_index();
            let room: u64 = chain
                .clone()
                .filter(|d| d.is_write_only())
                .map(|d| u64::from(d.len()))
                .sum();
            writable.push((head, room));
            env.queues.request(0, chain, &mem, &mut used);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while used.len() < taken {
            env.queues.poll(&mut used);
            assert!(Instant::now() < deadline, "a chain never came back");
        }
        assert_eq!(used.len(), taken);
        assert_eq!(env.queues.in_flight(), 0);
        for u in &used {
            assert_eq!(u.queue, 0);
            if let Some(&(_, room)) = writable.iter().find(|(h, _)| *h == u.head) {
                assert!(u64::from(u.len) <= room, "{u:?} wrote past {room} bytes");
            }
            if let Err(e) = q.add_used(&*mem, u.head, u.len) {
                assert!(u.head >= QUEUE_SIZE, "{u:?}: {e:?}");
            }
        }
    });
});
