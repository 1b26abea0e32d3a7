//! Serves RAM LUNs over iSCSI on 127.0.0.1 until killed, for running initiators
//! (libiscsi's iscsi-test-cu, qemu-img) by hand:
//! `cargo run -p oxtarget-iscsi --example serve -- PORT [LUNS] [MIB] [removable]
//! [readonly] [r2t] [null] [sanitize-secs=N]` (`r2t`: InitialR2T=Yes, no immediate
//! data, 64 KiB bursts, so that writes go through R2T and Data-Out; `null`: null
//! LUNs that read zeroes and drop writes, for `integration/bench/iscsi-vs-tgtd.sh`).
//!
//! Two settings are made for libiscsi's conformance suite (`iscsi-test-cu`):
//! - a SANITIZE is paced to take `sanitize-secs` (default 8, 0: unpaced) for
//!   the whole LUN: a RAM LUN is sanitized in a blink otherwise, and
//!   Sanitize.Reset looks for the sanitize still running four seconds after it
//!   began;
//! - a connection may stay silent for 90 s (a NOP-In ping after 30 s, dropped 60
//!   s later) instead of 45: Sanitize.Reset sleeps 60 s between polls without
//!   answering pings, and the new session its reconnect makes is a new I_T
//!   nexus whose first command sees a unit attention, so that it would poll
//!   for ever.

#[path = "../tests/common/mod.rs"]
mod common;

fn main() {
    let mut args = std::env::args().skip(1);
    let port = args.next().and_then(|a| a.parse().ok()).unwrap_or(3260);
    let luns = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let mib: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(256);
    let flags: Vec<String> = args.collect();
    let removable = flags.iter().any(|f| f == "removable");
    let read_only = flags.iter().any(|f| f == "readonly");
    let r2t = flags.iter().any(|f| f == "r2t");
    let sanitize_secs: u64 = flags
        .iter()
        .find_map(|f| f.strip_prefix("sanitize-secs="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    if flags.iter().any(|f| f == "null") {
        null_server::serve(addr, luns, mib, r2t);
    }
    let server = common::start_custom(
        addr,
        luns,
        mib << 20,
        &|c| {
            c.removable = removable;
            c.read_only = read_only;
            c.sanitize_rate = (sanitize_secs > 0).then(|| ((mib << 20) / sanitize_secs).max(1));
        },
        |c| {
            c.ping_interval = std::time::Duration::from_secs(30);
            c.ping_timeout = std::time::Duration::from_secs(60);
            if r2t {
                c.policy.initial_r2t = true;
                c.policy.immediate_data = false;
                c.policy.max_burst_length = 64 * 1024;
                c.policy.max_recv_data_segment_length = 16 * 1024;
                c.policy.max_outstanding_r2t = 4;
            }
        },
    );
    println!(
        "serving iscsi://{}/{}/0 ({luns} LUNs of {mib} MiB)",
        server.local_addrs()[0],
        common::IQN
    );
    loop {
        std::thread::park();
    }
}

/// Null LUNs (`null` flag): the target `common::start_custom` builds, with a
/// `NullBackend` under each LUN so that a benchmark measures the target, not storage.
mod null_server {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use backends::null::NullBackend;
    use engine::{Lun, LunConfig, LunMap, LunRegistry, Protocol, TargetPort};
    use iscsi::server::{Server, ServerConfig, Target};

    use super::common::IQN;

    pub fn serve(addr: SocketAddr, luns: usize, mib: u64, r2t: bool) -> ! {
        let registry = LunRegistry::new();
        let map = LunMap::new();
        for i in 0..luns {
            let mut uuid = [0x4eu8; 16];
            uuid[15] = u8::try_from(i).expect("at most 256 LUNs");
            uuid[6] = 0x40;
            let cfg = LunConfig::new(&format!("null{i}"), uuid);
            let lun = Lun::new(cfg, Arc::new(NullBackend::new(mib << 20))).expect("null LUN");
            registry.add(lun.clone());
            map.insert(i as u64, lun);
        }
        let target = Target {
            name: IQN.to_string(),
            alias: Some("oxtarget null".into()),
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
        if r2t {
            cfg.policy.initial_r2t = true;
            cfg.policy.immediate_data = false;
            cfg.policy.max_burst_length = 64 * 1024;
            cfg.policy.max_recv_data_segment_length = 16 * 1024;
            cfg.policy.max_outstanding_r2t = 4;
        }
        let server = Server::start(cfg, registry).expect("server starts");
        println!(
            "serving iscsi://{}/{IQN}/0 ({luns} null LUNs of {mib} MiB)",
            server.local_addrs()[0]
        );
        loop {
            std::thread::park();
        }
    }
}
