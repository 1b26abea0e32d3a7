//! Test fixtures: a LUN on a RAM (or any) backend, a nexus that maps it as LUN 0,
//! a worker, and a one-call way to run a CDB and get its response and data.

use std::sync::Arc;

use backends::ram::RamBackend;
use backends::Backend;

use crate::cmd::{CmdResponse, DataDir, ScsiCmd, TaskAttr, VecBuf};
use crate::lun::{Lun, LunConfig, LunRegistry};
use crate::nexus::{iscsi_transport_id, LunMap, Nexus, Protocol, TargetPort};
use crate::sense::{asc, ScsiStatus};
use crate::worker::{Event, Worker};

pub struct Fixture {
    pub registry: Arc<LunRegistry>,
    pub lun: Arc<Lun>,
    pub map: Arc<LunMap>,
    pub port: Arc<TargetPort>,
    pub worker: Worker,
    pub nexus: Arc<Nexus>,
    next_token: u64,
    /// Keeps a file backend's directory alive.
    _dir: Option<tempfile::TempDir>,
}

/// A UUID that differs per name, for LUNs in tests.
pub fn uuid_for(name: &str) -> [u8; 16] {
    let mut u = [0u8; 16];
    for (i, b) in name.bytes().enumerate() {
        u[i % 16] ^= b.wrapping_mul(31).wrapping_add(i as u8);
    }
    u[6] = (u[6] & 0x0f) | 0x40;
    u
}

impl Fixture {
    /// A 64 MiB RAM LUN with 512-byte blocks.
    pub fn ram() -> Self {
        Self::with(
            LunConfig::new("lun0", uuid_for("lun0")),
            Arc::new(RamBackend::new(64 << 20)),
        )
    }

    /// A 64 MiB sparse image file (io_uring engine), 512-byte blocks.
    pub fn file() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lun0.img");
        let backend = backends::FileBackend::create(&path, 64 << 20, Default::default())
            .expect("file backend");
        let mut f = Self::with(LunConfig::new("lun0", uuid_for("lun0")), Arc::new(backend));
        f._dir = Some(dir);
        f
    }

    /// The same LUN on each backend kind that tests must cover: RAM and a file.
    pub fn both() -> [(&'static str, Self); 2] {
        [("ram", Self::ram()), ("file", Self::file())]
    }

    pub fn with(config: LunConfig, backend: Arc<dyn Backend>) -> Self {
        let registry = LunRegistry::new();
        let lun = Lun::new(config, backend).expect("lun");
        registry.add(lun.clone());
        let map = LunMap::new();
        map.insert(0, lun.clone());
        let port = Arc::new(TargetPort {
            name: "iqn.2026-11.org.oxtarget:test,t,0x0001".into(),
            protocol: Protocol::Iscsi,
            relative_id: 1,
            group_id: 1,
        });
        let nexus = Self::make_nexus(
            &port,
            &map,
            "iqn.2026-11.org.oxtarget:init1,i,0x000000000001",
        );
        let worker = Worker::new(registry.clone()).expect("worker");
        let mut f = Fixture {
            registry,
            lun,
            map,
            port,
            worker,
            nexus,
            next_token: 1,
            _dir: None,
        };
        f.clear_power_on_ua();
        f
    }

    pub fn make_nexus(port: &Arc<TargetPort>, map: &Arc<LunMap>, name: &str) -> Arc<Nexus> {
        Nexus::new(name, iscsi_transport_id(name), port.clone(), map.clone())
    }

    /// A second initiator on the same target port, its power-on UA consumed.
    pub fn second_nexus(&mut self, name: &str) -> Arc<Nexus> {
        let n = Self::make_nexus(&self.port, &self.map, name);
        let (r, _) = self.run_on(&n, &[0x00, 0, 0, 0, 0, 0], DataDir::None, Vec::new());
        assert_eq!(
            r.sense_data.map(|s| s.asc),
            Some(asc::POWER_ON_RESET_OR_BUS_DEVICE_RESET)
        );
        n
    }

    fn clear_power_on_ua(&mut self) {
        let nexus = self.nexus.clone();
        let (r, _) = self.run_on(&nexus, &[0x00, 0, 0, 0, 0, 0], DataDir::None, Vec::new());
        assert_eq!(r.status, ScsiStatus::CheckCondition);
    }

    pub fn cmd(&mut self, cdb: &[u8], dir: DataDir, data: Vec<u8>) -> ScsiCmd {
        let token = self.next_token;
        self.next_token += 1;
        ScsiCmd {
            lun: 0,
            cdb: crate::cmd::Cdb::new(cdb).expect("cdb"),
            tag: token,
            attr: TaskAttr::Simple,
            dir,
            token,
            data: Box::new(VecBuf(data)),
        }
    }

    /// Runs one command on the first nexus to completion. `data` is the data-out
    /// (or a zeroed buffer of the allocation length for data-in).
    pub fn run(&mut self, cdb: &[u8], dir: DataDir, data: Vec<u8>) -> (CmdResponse, Vec<u8>) {
        let nexus = self.nexus.clone();
        self.run_on(&nexus, cdb, dir, data)
    }

    /// Data-in command with an allocation of `len` bytes.
    pub fn read_in(&mut self, cdb: &[u8], len: usize) -> (CmdResponse, Vec<u8>) {
        let (r, mut d) = self.run(cdb, DataDir::FromDevice, vec![0u8; len]);
        d.truncate(r.transferred as usize);
        (r, d)
    }

    pub fn run_on(
        &mut self,
        nexus: &Arc<Nexus>,
        cdb: &[u8],
        dir: DataDir,
        data: Vec<u8>,
    ) -> (CmdResponse, Vec<u8>) {
        let cmd = self.cmd(cdb, dir, data);
        let token = cmd.token;
        self.worker.submit(nexus, cmd);
        let done = self.wait_token(token);
        let resp = done.response.expect("not aborted");
        let mut buf = vec![0u8; done.data.len()];
        done.data.read_at(0, &mut buf);
        (resp, buf)
    }

    /// Polls until the command with `token` completes (5 s at most).
    pub fn wait_token(&mut self, token: u64) -> crate::cmd::Completed {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut events = Vec::new();
        loop {
            self.worker.wait(50, &mut events);
            if let Some(i) = events
                .iter()
                .position(|e| matches!(e, Event::Cmd(c) if c.token == token))
            {
                if let Event::Cmd(c) = events.swap_remove(i) {
                    return c;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "command {token} did not complete"
            );
        }
    }
}

/// Asserts a CHECK CONDITION with this sense key and ASC.
#[track_caller]
pub fn assert_check(r: &CmdResponse, key: crate::sense::SenseKey, a: crate::sense::Asc) {
    assert_eq!(r.status, ScsiStatus::CheckCondition, "status of {r:?}");
    let s = r.sense_data.expect("sense data");
    assert_eq!((s.key, s.asc), (key, a), "sense of {r:?}");
}

/// Asserts GOOD status.
#[track_caller]
pub fn assert_good(r: &CmdResponse) {
    assert_eq!(r.status, ScsiStatus::Good, "{r:?}");
}
