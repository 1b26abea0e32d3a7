//! Any CDB with any data-out, through the whole engine (decode, checks, handler,
//! backend I/O) on a small RAM LUN: must answer, never panic or hang.
#![no_main]

use std::cell::RefCell;
use std::sync::Arc;

use backends::ram::RamBackend;
use engine::nexus::iscsi_transport_id;
use engine::{
    Cdb, DataDir, Event, Lun, LunConfig, LunMap, LunRegistry, Nexus, Protocol, ScsiCmd,
    TaskAttr, TargetPort, VecBuf, Worker,
};
use libfuzzer_sys::fuzz_target;

struct Env {
    worker: Worker,
    nexus: Arc<Nexus>,
}

fn env() -> Env {
    let registry = LunRegistry::new();
    let mut cfg = LunConfig::new("fuzz", [7u8; 16]);
    cfg.removable = true;
    let lun = Lun::new(cfg, Arc::new(RamBackend::new(1 << 20))).expect("lun");
    registry.add(lun.clone());
    let map = LunMap::new();
    map.insert(0, lun);
    let port = Arc::new(TargetPort {
        name: "iqn.2026-11.org.oxtarget:fuzz,t,0x1".into(),
        protocol: Protocol::Iscsi,
        relative_id: 1,
        group_id: 1,
    });
    let name = "iqn.2026-11.org.oxtarget:fuzzer,i,0x1";
    let nexus = Nexus::new(name, iscsi_transport_id(name), port, map);
    Env { worker: Worker::new(registry).expect("worker"), nexus }
}

thread_local! {
    static ENV: RefCell<Option<Env>> = const { RefCell::new(None) };
}

fuzz_target!(|input: &[u8]| {
    let Some((&len, rest)) = input.split_first() else { return };
    let cdb_len = usize::from(len % 32) + 1;
    if rest.len() < cdb_len {
        return;
    }
    let (cdb, data) = rest.split_at(cdb_len);
    let Some(cdb) = Cdb::new(cdb) else { return };
    // Data-in commands get a buffer of the data's length; data-out ones carry it.
    let dir = if data.is_empty() { DataDir::None } else { DataDir::ToDevice };
    ENV.with(|e| {
        let mut e = e.borrow_mut();
        let env = e.get_or_insert_with(env);
        let nexus = env.nexus.clone();
        env.worker.submit(
            &nexus,
            ScsiCmd {
                lun: 0,
                cdb,
                tag: 1,
                attr: TaskAttr::Simple,
                dir,
                token: 1,
                data: Box::new(VecBuf(data.to_vec())),
            },
        );
        let mut events = Vec::new();
        for _ in 0..2000 {
            env.worker.wait(10, &mut events);
            if events.iter().any(|ev| matches!(ev, Event::Cmd(c) if c.token == 1)) {
                return;
            }
        }
        panic!("command {cdb:?} did not complete");
    });
});
