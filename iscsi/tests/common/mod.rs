//! A server on 127.0.0.1 with RAM LUNs, for the tests and the example.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use backends::ram::RamBackend;
use engine::{Lun, LunConfig, LunMap, LunRegistry, Protocol, TargetPort};
use iscsi::server::{Server, ServerConfig, Target};

pub const IQN: &str = "iqn.2026-11.org.oxtarget:test";

/// A server with one target and `luns` RAM LUNs of `size` bytes each.
pub fn start(port: u16, luns: usize, size: u64) -> Server {
    start_with(port, luns, size, |_| {})
}

/// The same, with the configuration adjusted by `adjust`.
pub fn start_with(
    port: u16,
    luns: usize,
    size: u64,
    adjust: impl FnOnce(&mut ServerConfig),
) -> Server {
    start_at(SocketAddr::from(([127, 0, 0, 1], port)), luns, size, adjust)
}

/// The same on any address (IPv6 too).
pub fn start_at(
    addr: SocketAddr,
    luns: usize,
    size: u64,
    adjust: impl FnOnce(&mut ServerConfig),
) -> Server {
    start_custom(addr, luns, size, &|_| {}, adjust)
}

/// The same with each LUN's configuration adjusted by `lun`.
pub fn start_custom(
    addr: SocketAddr,
    luns: usize,
    size: u64,
    lun: &dyn Fn(&mut LunConfig),
    adjust: impl FnOnce(&mut ServerConfig),
) -> Server {
    let registry = LunRegistry::new();
    let map = LunMap::new();
    for i in 0..luns {
        let mut uuid = [0x5au8; 16];
        uuid[15] = i as u8;
        uuid[6] = 0x40;
        let mut cfg = LunConfig::new(&format!("lun{i}"), uuid);
        lun(&mut cfg);
        let lun = Lun::new(cfg, Arc::new(RamBackend::new(size))).expect("lun");
        registry.add(lun.clone());
        map.insert(i as u64, lun);
    }
    let target = Target {
        name: IQN.to_string(),
        alias: Some("oxtarget test".into()),
        portals: vec![addr],
        portal_group_tag: 1,
        port: Arc::new(TargetPort {
            name: format!("{IQN},t,0x0001"),
            protocol: Protocol::Iscsi,
            relative_id: 1,
            group_id: 1,
        }),
        luns: map,
        acl: Vec::new(),
        chap: None,
        chap_required: false,
    };
    let mut cfg = ServerConfig {
        targets: vec![target],
        workers: 2,
        ..ServerConfig::default()
    };
    adjust(&mut cfg);
    Server::start(cfg, registry).expect("server starts")
}
