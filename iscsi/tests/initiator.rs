//! The crate's own test initiator against the in-process server: logins
//! (None, CHAP, mutual CHAP, wrong secrets), writes read back through every
//! data-flow path (immediate, unsolicited, R2T), digests, sense, TMF,
//! discovery, logout.

mod common;

use std::time::Duration;

use iscsi::chap::{ChapCredentials, Secret};
use iscsi::initiator::{
    Counters, Initiator, InitiatorConfig, InitiatorError, CHECK_CONDITION, GOOD, UNIT_ATTENTION,
};
use iscsi::pdu::{tmf_code, tmf_response, ResidualFlag};
use iscsi::server::Server;

const INITIATOR: &str = "iqn.2026-11.org.oxtarget:test-initiator";
const SIZE: u64 = 8 << 20;

fn cfg() -> InitiatorConfig {
    let mut c = InitiatorConfig::new(INITIATOR, common::IQN);
    c.timeout = Duration::from_secs(20);
    c
}

fn connect(server: &Server, cfg: InitiatorConfig) -> Initiator {
    Initiator::connect(server.local_addrs()[0], cfg).expect("login")
}

/// A pattern that differs per byte and per call, so a misplaced block shows.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

/// Writes 1 MiB at LBA 100, reads it back, and checks the bytes and that the
/// blocks before it stayed zero. What the write and the read sent and received.
fn write_read_back(ini: &mut Initiator, seed: u8) -> (Counters, Counters) {
    ini.clear_unit_attentions(0).expect("unit attentions");
    let (blocks, bs) = ini.read_capacity16(0).expect("read capacity");
    assert_eq!(blocks * u64::from(bs), SIZE);
    let data = pattern(1 << 20, seed);
    let c0 = ini.counters();
    let w = ini.write16(0, 100, &data, bs).expect("write");
    let c1 = ini.counters();
    assert_eq!(w.status, GOOD, "write sense {:02x?}", w.sense);
    let blocks_n = u32::try_from(data.len() / bs as usize).unwrap();
    let r = ini.read16(0, 100, blocks_n, bs).expect("read");
    assert_eq!(r.status, GOOD);
    assert_eq!(r.data.len(), data.len());
    assert!(r.data == data, "data read back differs");
    let c2 = ini.counters();
    let before = ini.read16(0, 99, 1, bs).expect("read").good().unwrap();
    assert!(before.data.iter().all(|&b| b == 0));
    (delta(c1, c0), delta(c2, c1))
}

fn delta(a: Counters, b: Counters) -> Counters {
    Counters {
        commands: a.commands - b.commands,
        immediate_bytes: a.immediate_bytes - b.immediate_bytes,
        unsolicited_data_outs: a.unsolicited_data_outs - b.unsolicited_data_outs,
        r2ts: a.r2ts - b.r2ts,
        solicited_data_outs: a.solicited_data_outs - b.solicited_data_outs,
        data_ins: a.data_ins - b.data_ins,
        nop_ins_answered: a.nop_ins_answered - b.nop_ins_answered,
    }
}

#[test]
fn login_without_chap_and_logout() {
    let server = common::start(0, 2, SIZE);
    let mut ini = connect(&server, cfg());
    // The first command of a new nexus meets the power-on unit attention.
    let t = ini.test_unit_ready(1).unwrap();
    assert_eq!(t.status, CHECK_CONDITION);
    assert_eq!(t.sense_key().map(|k| k.0), Some(UNIT_ATTENTION));
    assert_eq!(ini.clear_unit_attentions(1).unwrap(), 0);
    ini.clear_unit_attentions(0).unwrap();
    let sn = ini.inquiry_vpd(0, 0x80).expect("unit serial number page");
    assert_eq!(sn.get(1), Some(&0x80));
    ini.logout().expect("logout");
    server.shutdown();
}

#[test]
fn write_read_with_immediate_data() {
    let server = common::start(0, 1, SIZE);
    let mut ini = connect(&server, cfg());
    assert_eq!(ini.negotiated_data_flow(), (false, true));
    let (w, r) = write_read_back(&mut ini, 1);
    // FirstBurstLength 256 KiB: all of it immediate (MaxRecvDataSegmentLength
    // 256 KiB), then R2Ts for the other 768 KiB.
    assert_eq!(w.immediate_bytes, 256 * 1024);
    assert_eq!(w.unsolicited_data_outs, 0);
    assert!(w.r2ts >= 1 && w.solicited_data_outs >= 3, "{w:?}");
    // 1 MiB in Data-Ins of at most our 256 KiB.
    assert!(r.data_ins >= 4, "{r:?}");
    ini.logout().unwrap();
    server.shutdown();
}

#[test]
fn write_read_with_unsolicited_data_out() {
    let server = common::start_with(0, 1, SIZE, |c| {
        c.policy.initial_r2t = false;
        c.policy.immediate_data = false;
        c.policy.first_burst_length = 64 * 1024;
        c.policy.max_recv_data_segment_length = 16 * 1024;
    });
    let mut ini = connect(&server, cfg());
    assert_eq!(ini.negotiated_data_flow(), (false, false));
    let (w, _) = write_read_back(&mut ini, 6);
    // The first 64 KiB unsolicited in 16 KiB Data-Outs, the rest solicited.
    assert_eq!(w.immediate_bytes, 0);
    assert_eq!(w.unsolicited_data_outs, 4, "{w:?}");
    assert!(w.r2ts >= 1, "{w:?}");
    assert_eq!(w.solicited_data_outs, (1024 - 64) / 16, "{w:?}");
    ini.logout().unwrap();
    server.shutdown();
}

#[test]
fn write_read_with_r2t_only() {
    let server = common::start_with(0, 1, SIZE, |c| {
        c.policy.initial_r2t = true;
        c.policy.immediate_data = false;
        c.policy.max_burst_length = 64 * 1024;
        c.policy.first_burst_length = 8 * 1024;
        c.policy.max_recv_data_segment_length = 4096;
    });
    let mut ini = connect(&server, cfg());
    assert_eq!(ini.negotiated_data_flow(), (true, false));
    let (w, _) = write_read_back(&mut ini, 2);
    // 1 MiB in bursts of 64 KiB, each in 4 KiB Data-Outs.
    assert_eq!(w.immediate_bytes, 0);
    assert_eq!(w.unsolicited_data_outs, 0);
    assert_eq!(w.r2ts, 16, "{w:?}");
    assert_eq!(w.solicited_data_outs, 256, "{w:?}");
    ini.logout().unwrap();
    server.shutdown();
}

#[test]
fn write_read_with_immediate_data_then_r2t() {
    let server = common::start_with(0, 1, SIZE, |c| {
        c.policy.initial_r2t = true;
        c.policy.immediate_data = true;
        c.policy.first_burst_length = 16 * 1024;
    });
    let mut ini = connect(&server, cfg());
    assert_eq!(ini.negotiated_data_flow(), (true, true));
    let (w, _) = write_read_back(&mut ini, 3);
    assert_eq!(w.immediate_bytes, 16 * 1024);
    assert_eq!(w.unsolicited_data_outs, 0);
    assert!(w.r2ts >= 1, "{w:?}");
    // A write that fits in the immediate data alone.
    let small = pattern(4096, 9);
    assert_eq!(ini.write16(0, 0, &small, 512).unwrap().status, GOOD);
    assert_eq!(ini.read16(0, 0, 8, 512).unwrap().data, small);
    ini.logout().unwrap();
    server.shutdown();
}

#[test]
fn digests() {
    let server = common::start(0, 1, SIZE);
    let mut c = cfg();
    c.header_digest = true;
    c.data_digest = true;
    let mut ini = connect(&server, c);
    assert_eq!(ini.negotiated_digests(), (true, true));
    write_read_back(&mut ini, 4);
    ini.logout().unwrap();
    server.shutdown();
}

#[test]
fn read_past_the_end_is_check_condition_with_sense() {
    let server = common::start(0, 1, SIZE);
    let mut ini = connect(&server, cfg());
    ini.clear_unit_attentions(0).unwrap();
    let (blocks, bs) = ini.read_capacity16(0).unwrap();
    let r = ini.read16(0, blocks - 1, 2, bs).unwrap();
    assert_eq!(r.status, CHECK_CONDITION);
    // ILLEGAL REQUEST, LOGICAL BLOCK ADDRESS OUT OF RANGE.
    assert_eq!(r.sense_key(), Some((0x05, 0x21, 0x00)), "{:02x?}", r.sense);
    assert!(matches!(
        r.clone().good(),
        Err(InitiatorError::Status {
            status: CHECK_CONDITION,
            ..
        })
    ));
    // The session goes on.
    let ok = ini.read16(0, blocks - 1, 1, bs).unwrap();
    assert_eq!(ok.status, GOOD);
    assert_eq!(ok.data.len(), bs as usize);
    // A short allocation: the rest is an underflow residual.
    let inq = ini.command(0, &[0x12, 0, 0, 0x01, 0, 0], &[], 256).unwrap();
    assert_eq!(inq.status, GOOD);
    assert!(
        inq.data.len() >= 36 && inq.data.len() < 256,
        "{}",
        inq.data.len()
    );
    assert_eq!(inq.residual, ResidualFlag::Underflow);
    assert_eq!(inq.data.len() + inq.residual_count as usize, 256);
    ini.logout().unwrap();
    server.shutdown();
}

#[test]
fn task_management() {
    let server = common::start(0, 1, SIZE);
    let mut ini = connect(&server, cfg());
    ini.clear_unit_attentions(0).unwrap();
    let mut c = cfg();
    c.isid[5] = 2;
    let mut other = connect(&server, c);
    other.clear_unit_attentions(0).unwrap();
    let r = ini.tmf(tmf_code::ABORT_TASK, 0, 0x1234).unwrap();
    assert!(
        r == tmf_response::TASK_DOES_NOT_EXIST || r == tmf_response::FUNCTION_COMPLETE,
        "ABORT TASK of no task: {r}"
    );
    // The reset leaves a unit attention on the other nexus, returned as
    // CHECK CONDITION; the next command goes through.
    assert_eq!(other.test_unit_ready(0).unwrap().status, GOOD);
    assert_eq!(
        ini.tmf(tmf_code::LOGICAL_UNIT_RESET, 0, 0).unwrap(),
        tmf_response::FUNCTION_COMPLETE
    );
    let t = other.test_unit_ready(0).unwrap();
    assert_eq!(t.status, CHECK_CONDITION);
    assert_eq!(t.sense_key().map(|s| s.0), Some(UNIT_ATTENTION));
    assert_eq!(other.test_unit_ready(0).unwrap().status, GOOD);
    ini.logout().unwrap();
    other.logout().unwrap();
    server.shutdown();
}

fn chap_server(mutual: bool) -> Server {
    common::start_with(0, 1, SIZE, |c| {
        let t = &mut c.targets[0];
        t.chap_required = true;
        t.chap = Some(ChapCredentials {
            initiator: Secret {
                user: "alice".into(),
                secret: b"initiator-secret".to_vec(),
            },
            target: mutual.then(|| Secret {
                user: "target".into(),
                secret: b"target-secret-1".to_vec(),
            }),
        });
    })
}

fn chap_cfg(secret: &[u8]) -> InitiatorConfig {
    let mut c = cfg();
    c.chap = Some(Secret {
        user: "alice".into(),
        secret: secret.to_vec(),
    });
    c
}

#[test]
fn chap_login() {
    let server = chap_server(false);
    let addr = server.local_addrs()[0];
    match Initiator::connect(addr, cfg()) {
        Err(InitiatorError::LoginRejected { class: 2, .. }) => {}
        other => panic!("login without CHAP: {other:?}"),
    }
    match Initiator::connect(addr, chap_cfg(b"wrong-secret-00")) {
        Err(InitiatorError::LoginRejected {
            class: 2,
            detail: 1,
        }) => {}
        other => panic!("login with a wrong secret: {other:?}"),
    }
    let mut ini = connect(&server, chap_cfg(b"initiator-secret"));
    write_read_back(&mut ini, 5);
    ini.logout().unwrap();
    server.shutdown();
}

#[test]
fn mutual_chap_login() {
    let server = chap_server(true);
    let addr = server.local_addrs()[0];
    let mut c = chap_cfg(b"initiator-secret");
    c.mutual_chap = Some(Secret {
        user: "target".into(),
        secret: b"target-secret-1".to_vec(),
    });
    let ini = Initiator::connect(addr, c.clone()).expect("mutual CHAP login");
    ini.logout().unwrap();
    // We expect another target secret: the target's proof must not pass.
    c.mutual_chap = Some(Secret {
        user: "target".into(),
        secret: b"some-other-secret".to_vec(),
    });
    match Initiator::connect(addr, c.clone()) {
        Err(InitiatorError::Chap(_)) => {}
        other => panic!("mutual CHAP with the wrong target secret: {other:?}"),
    }
    server.shutdown();
    // A target with no secret of its own cannot pass mutual CHAP: not with
    // CHAP (no CHAP_R), not by choosing AuthMethod=None.
    let one_way = chap_server(false);
    c.mutual_chap = Some(Secret {
        user: "target".into(),
        secret: b"target-secret-1".to_vec(),
    });
    match Initiator::connect(one_way.local_addrs()[0], c) {
        Err(InitiatorError::Chap(_)) | Err(InitiatorError::LoginRejected { .. }) => {}
        other => panic!("mutual CHAP against a one-way CHAP target: {other:?}"),
    }
    one_way.shutdown();
    let open = common::start(0, 1, SIZE);
    let mut c = cfg();
    c.chap = Some(Secret {
        user: "alice".into(),
        secret: b"initiator-secret".to_vec(),
    });
    c.mutual_chap = Some(Secret {
        user: "target".into(),
        secret: b"target-secret-1".to_vec(),
    });
    match Initiator::connect(open.local_addrs()[0], c) {
        Err(InitiatorError::Chap(_)) | Err(InitiatorError::LoginRejected { .. }) => {}
        other => panic!("mutual CHAP against a target without CHAP: {other:?}"),
    }
    open.shutdown();
}

#[test]
fn discovery_lists_the_target() {
    let server = common::start(0, 1, SIZE);
    let addr = server.local_addrs()[0];
    let targets = Initiator::discover(addr, INITIATOR, Duration::from_secs(20)).expect("discovery");
    assert_eq!(targets.len(), 1, "{targets:?}");
    assert_eq!(targets[0].0, common::IQN);
    let want = format!("{addr},1");
    assert!(targets[0].1.contains(&want), "{targets:?}");
    server.shutdown();
}

#[test]
fn unknown_target_is_refused() {
    let server = common::start(0, 1, SIZE);
    let mut c = cfg();
    c.target_name = "iqn.2026-11.org.oxtarget:nope".into();
    match Initiator::connect(server.local_addrs()[0], c) {
        Err(InitiatorError::LoginRejected {
            class: 2,
            detail: 3,
        }) => {}
        other => panic!("login to an unknown target: {other:?}"),
    }
    server.shutdown();
}

#[test]
fn target_pings_are_answered() {
    let server = common::start_with(0, 1, SIZE, |c| {
        c.ping_interval = Duration::from_millis(50);
    });
    let mut ini = connect(&server, cfg());
    ini.clear_unit_attentions(0).unwrap();
    // The target pings again only once its last ping was answered: a second
    // ping shows the first NOP-Out was accepted. The pauses outlast the
    // server's timer granularity (200 ms); bounded: 20 rounds.
    for _ in 0..20 {
        if ini.counters().nop_ins_answered >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(ini.test_unit_ready(0).unwrap().status, GOOD);
    }
    assert!(ini.counters().nop_ins_answered >= 2, "{:?}", ini.counters());
    ini.logout().unwrap();
    server.shutdown();
}

/// A peer that accepts and then does `act` with the connection.
fn fake_target(act: impl FnOnce(std::net::TcpStream) + Send + 'static) -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Ok((s, _)) = l.accept() {
            act(s);
        }
    });
    addr
}

#[test]
fn silent_target_times_out() {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let addr = fake_target(move |s| {
        // Hold the connection open, silent, until the test is done.
        let _ = rx.recv();
        drop(s);
    });
    let mut c = cfg();
    c.timeout = Duration::from_millis(300);
    match Initiator::connect(addr, c) {
        Err(InitiatorError::Timeout(_)) => {}
        other => panic!("silent target: {other:?}"),
    }
    let _ = tx.send(());
}

#[test]
fn garbage_from_the_target_is_an_error() {
    use std::io::{Read, Write};
    let addr = fake_target(|mut s| {
        let mut req = [0u8; 48];
        let _ = s.read_exact(&mut req);
        // Opcode 0x3f does not exist.
        let _ = s.write_all(&[0xffu8; 48]);
    });
    match Initiator::connect(addr, cfg()) {
        Err(InitiatorError::Pdu(_)) | Err(InitiatorError::Framing(_)) => {}
        other => panic!("garbage: {other:?}"),
    }
    let addr = fake_target(drop);
    match Initiator::connect(addr, cfg()) {
        Err(InitiatorError::Closed) | Err(InitiatorError::Io(_)) => {}
        other => panic!("closed at once: {other:?}"),
    }
}
