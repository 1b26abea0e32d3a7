//! Any sequence of PDUs through the full feature phase of a session on a real
//! engine worker with a small RAM LUN: every PDU is answered, rejected or
//! dropped, and any may arrive with a bad data digest; nothing panics, and the
//! session's bookkeeping stays bounded.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use backends::ram::RamBackend;
use engine::nexus::iscsi_transport_id;
use engine::{Lun, LunConfig, LunMap, LunRegistry, Nexus, Protocol, TargetPort, Worker};
use iscsi::pdu::BHS_LEN;
use iscsi::session::{BufPool, FfpParams, FrameRef, Session, SessionSetup};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&cfg, mut rest)) = input.split_first() else {
        return;
    };
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
        name: "iqn.2026-11.org.oxtarget:fuzz,t,0x1".into(),
        protocol: Protocol::Iscsi,
        relative_id: 1,
        group_id: 1,
    });
    let name = "iqn.2026-11.org.oxtarget:fuzzer";
    let nexus = Nexus::new(
        &format!("{name},i,0x1"),
        iscsi_transport_id(name),
        port,
        map,
    );
    let mut worker = Worker::new(registry).expect("worker");
    let params = FfpParams {
        max_xmit_data_segment_length: 512,
        max_burst_length: 1024,
        first_burst_length: 512,
        initial_r2t: cfg & 1 != 0,
        immediate_data: cfg & 2 != 0,
        max_outstanding_r2t: u16::from(cfg >> 6) + 1,
        queue_depth: 4,
        max_cmd_data: 64 * 1024,
        max_session_data: 128 * 1024,
        ..FfpParams::default()
    };
    let now = Instant::now();
    let mut s = Session::new(
        SessionSetup {
            params,
            nexus: Some(nexus),
            initiator_name: name.to_string(),
            target_name: None,
            directory: None,
            cid: 1,
            exp_cmd_sn: 1,
            stat_sn: 1,
            token_base: 1 << 32,
            pool: BufPool::new(),
        },
        now,
    );
    let mut t = now;
    let mut events = Vec::new();
    // Frames: a 48-byte header, one byte of data length, the data.
    while rest.len() >= BHS_LEN + 1 {
        let mut header = [0u8; BHS_LEN];
        header.copy_from_slice(&rest[..BHS_LEN]);
        let n = usize::from(rest[BHS_LEN]) * 8;
        rest = &rest[BHS_LEN + 1..];
        let data = &rest[..n.min(rest.len())];
        rest = &rest[data.len()..];
        // Steer towards commands the window accepts.
        if header[2] & 1 == 0 {
            header[24..28].copy_from_slice(&s.exp_cmd_sn().to_be_bytes());
        }
        // Data-Outs the session would place take the adapter's placement path.
        // A length byte of 0xff stands for a data digest error.
        if n == 0xff * 8 {
            if s.data_digest_error(&header, t).is_err() {
                return;
            }
            continue;
        }
        let placed = match s.placement(&header) {
            Some(dst) if dst.len() == data.len() => {
                dst.copy_from_slice(data);
                true
            }
            _ => false,
        };
        let r = if placed {
            s.receive_placed(&header, &mut worker, t)
        } else {
            let f = FrameRef {
                header: &header,
                ahs: &[],
                data,
            };
            s.receive(f, &mut worker, t)
        };
        if r.is_err() {
            return;
        }
        worker.poll(&mut events);
        for e in events.drain(..) {
            if s.complete(e).is_err() {
                return;
            }
        }
        while s.pop_output().is_some() {}
        t += Duration::from_secs(1);
        if s.tick(t).is_err() {
            return;
        }
        assert!(s.tasks() <= 4 + iscsi::session::MAX_IMMEDIATE);
    }
});
