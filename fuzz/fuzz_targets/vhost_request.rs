//! Any split virtqueue contents — descriptor table (indirect tables, loops, `next`
//! out of range, addresses outside memory, any direction), available ring, request
//! headers and data — through the vhost-user-scsi request and control queue code
//! and the engine on a small RAM LUN: every chain taken must come back as exactly
//! one used entry, nothing may panic or hang, and nothing is written outside what
//! the chain made device-writable (the response length never exceeds it).
//! Mode 2 fills the same chains as event-queue buffers with pending events:
//! each comes back holding a whole event or nothing, and events are neither
//! lost nor duplicated.
#![no_main]

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backends::ram::RamBackend;
use engine::{Lun, LunConfig, LunMap, LunRegistry, Nexus, Protocol, TargetPort};
use libfuzzer_sys::fuzz_target;
use vhost_target::controller::sas_transport_id;
use vhost_target::events::EventQueue;
use vhost_target::request::GuestMem;
use vhost_target::wire::{LunAddr, ScsiEvent, EVENT_LEN};
use vhost_target::{ScsiQueues, UsedEntry};
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
    queues: ScsiQueues,
}

fn env() -> Env {
    let registry = LunRegistry::new();
    let lun = Lun::new(
        LunConfig::new("fuzz", [9u8; 16]),
        Arc::new(RamBackend::new(1 << 20)),
    )
    .expect("lun");
    registry.add(lun.clone());
    let map = LunMap::new();
    map.insert(0, lun);
    let port = Arc::new(TargetPort {
        name: "vhost:fuzz".into(),
        protocol: Protocol::Sas,
        relative_id: 1,
        group_id: 1,
    });
    let nexus = Nexus::new("fuzz", sas_transport_id("fuzz"), port, map);
    let mem =
        Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).expect("memory"));
    Env {
        mem,
        queues: ScsiQueues::new(registry, nexus).expect("queues"),
    }
}

thread_local! {
    static ENV: RefCell<Option<Env>> = const { RefCell::new(None) };
}

fuzz_target!(|input: &[u8]| {
    // [control?][heads][16 raw descriptors][payload...]
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
    ENV.with(|e| {
        let mut e = e.borrow_mut();
        let env = e.get_or_insert_with(env);
        let mem = env.mem.clone();
        mem.write_slice(&vec![0u8; 0x4000], GuestAddress(0))
            .unwrap();
        mem.write_slice(table, GuestAddress(DESC_TABLE)).unwrap();
        mem.write_slice(payload, GuestAddress(PAYLOAD)).unwrap();
        // Available ring: `n` heads taken from the first payload bytes.
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
        if mode & 3 == 2 {
            fill_events(&mut q, &mem, mode >> 2);
            return;
        }
        let control = mode & 1 == 1;
        let queue = if control { 0 } else { 2 };
        let mut used: Vec<UsedEntry> = Vec::new();
        let mut taken = 0usize;
        while let Some(chain) = q.pop_descriptor_chain(mem.clone()) {
            taken += 1;
            assert!(taken <= usize::from(QUEUE_SIZE));
            if control {
                env.queues.control(queue, chain, &mem, &mut used);
            } else {
                env.queues.request(queue, chain, &mem, &mut used);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while used.len() < taken {
            env.queues.poll(&mut used);
            assert!(Instant::now() < deadline, "a chain never came back");
        }
        assert_eq!(used.len(), taken);
        assert_eq!(env.queues.in_flight(), 0);
        for u in &used {
            assert_eq!(u.queue, queue);
            // A request may overwrite the available ring (it is guest memory the
            // chain made writable): a later head can then be out of range, and
            // the used ring refuses it. Anything else must be accepted.
            if let Err(e) = q.add_used(&*mem, u.head, u.len) {
                assert!(u.head >= QUEUE_SIZE, "{u:?}: {e:?}");
            }
        }
    });
});

/// `events` % 8 pending events (some overflow the bound when it is large) filled
/// into whatever the ring holds.
fn fill_events(q: &mut Queue, mem: &Arc<GuestMem>, events: u8) {
    let mut eq = EventQueue::default();
    eq.reset(u64::MAX);
    let n = usize::from(events % 8);
    for i in 0..n {
        let lun = LunAddr::encode_reported(0, i as u16).expect("small LUN");
        eq.push(ScsiEvent::lun_added(lun));
    }
    let used = eq.fill(1, q, mem);
    let delivered = used.iter().filter(|u| u.len != 0).count();
    for u in &used {
        assert_eq!(u.queue, 1);
        assert!(u.len == 0 || u.len as usize == EVENT_LEN, "{u:?}");
    }
    assert_eq!(delivered + eq.pending(), n, "events lost or duplicated");
    assert_eq!(eq.stats().delivered as usize, delivered);
}
