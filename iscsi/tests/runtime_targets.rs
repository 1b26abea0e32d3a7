//! Targets, portals, ACLs and CHAP changed while the server runs, checked with
//! libiscsi's `iscsi-ls` and `iscsi-inq` as a real initiator sees them.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backends::ram::RamBackend;
use engine::{Lun, LunConfig, LunMap, LunRegistry, Protocol, TargetPort};
use integration::testkit::{have, run};
use iscsi::chap::{ChapCredentials, Secret};
use iscsi::server::{Server, ServerConfig, ServerError, Target};

const LIMIT: Duration = Duration::from_secs(30);

fn target(name: &str, registry: &LunRegistry, portals: Vec<SocketAddr>) -> Target {
    let map = LunMap::new();
    let mut uuid = [0x33u8; 16];
    uuid[0] = name.len() as u8;
    let lun = Lun::new(
        LunConfig::new(&format!("{name}-lun0"), uuid),
        Arc::new(RamBackend::new(16 << 20)),
    )
    .expect("lun");
    registry.add(lun.clone());
    map.insert(0, lun);
    Target {
        name: name.to_string(),
        alias: None,
        portals,
        portal_group_tag: 1,
        port: Arc::new(TargetPort {
            name: format!("{name},t,0x0001"),
            protocol: Protocol::Iscsi,
            relative_id: 1,
            group_id: 1,
        }),
        luns: map,
        acl: Vec::new(),
        chap: None,
        chap_required: false,
    }
}

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn inq(addr: SocketAddr, iqn: &str, initiator: &str) -> (bool, String) {
    run(
        "iscsi-inq",
        &["-i", initiator, &format!("iscsi://{addr}/{iqn}/0")],
        LIMIT,
    )
}

/// Waits (bounded) until `cond` holds.
fn eventually(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < LIMIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn targets_come_and_go_while_serving() {
    if !have("iscsi-ls") || !have("iscsi-inq") {
        return;
    }
    let registry = LunRegistry::new();
    let server = Server::start(ServerConfig::default(), registry.clone()).expect("start");
    assert!(
        server.local_addrs().is_empty(),
        "no portals before a target"
    );

    let a = "iqn.2026-11.org.oxtarget:a";
    let b = "iqn.2026-11.org.oxtarget:b";
    server
        .add_target(target(a, &registry, vec![any_port()]))
        .expect("add a");
    let pa = server.targets()[0].portals[0];
    assert_ne!(pa.port(), 0, "the bound port is reported");
    assert!(matches!(
        server.add_target(target(a, &registry, vec![any_port()])),
        Err(ServerError::TargetExists(_))
    ));
    let (ok, out) = inq(pa, a, "iqn.2026-11.org.oxtarget:init");
    assert!(ok, "{out}");

    // A second target sharing the first one's portal, and with its own.
    server
        .add_target(target(b, &registry, vec![pa]))
        .expect("add b");
    // Another loopback address: a portal asking for the same address and
    // port 0 would share a's listener.
    let pb = server
        .add_portal(b, SocketAddr::from(([127, 0, 0, 2], 0)))
        .expect("portal");
    assert_eq!(server.local_addrs().len(), 2);
    let (ok, out) = run("iscsi-ls", &["-s", &format!("iscsi://{pa}")], LIMIT);
    assert!(ok, "{out}");
    assert!(out.contains(a) && out.contains(b), "{out}");
    let (ok, out) = inq(pb, b, "iqn.2026-11.org.oxtarget:init");
    assert!(ok, "{out}");
    // Target a is not reachable through b's own portal.
    let (ok, out) = inq(pb, a, "iqn.2026-11.org.oxtarget:init");
    assert!(!ok, "{out}");

    // An ACL: the named initiator gets in, another does not, and discovery
    // hides the target from it.
    server
        .modify_target(b, |t| {
            t.acl = vec!["iqn.2026-11.org.oxtarget:friend".into()]
        })
        .expect("acl");
    let (ok, out) = inq(pb, b, "iqn.2026-11.org.oxtarget:friend");
    assert!(ok, "{out}");
    let (ok, out) = inq(pb, b, "iqn.2026-11.org.oxtarget:stranger");
    assert!(!ok, "{out}");
    let (ok, out) = run(
        "iscsi-ls",
        &[
            "-i",
            "iqn.2026-11.org.oxtarget:stranger",
            "-s",
            &format!("iscsi://{pa}"),
        ],
        LIMIT,
    );
    assert!(ok, "{out}");
    assert!(out.contains(a) && !out.contains(b), "{out}");

    // CHAP required: a login without the secret fails, with it succeeds.
    server
        .modify_target(a, |t| {
            t.chap = Some(ChapCredentials {
                initiator: Secret {
                    user: "alice".into(),
                    secret: b"0123456789abcdef".to_vec(),
                },
                target: None,
            });
            t.chap_required = true;
        })
        .expect("chap");
    let (ok, out) = inq(pa, a, "iqn.2026-11.org.oxtarget:init");
    assert!(!ok, "{out}");
    let (ok, out) = run(
        "iscsi-inq",
        &[
            "-i",
            "iqn.2026-11.org.oxtarget:init",
            &format!("iscsi://alice%0123456789abcdef@{pa}/{a}/0"),
        ],
        LIMIT,
    );
    assert!(ok, "{out}");

    // Removing b's own portal closes that listener; a's portal stays.
    server.remove_portal(b, pb).expect("remove portal");
    assert_eq!(server.local_addrs(), vec![pa]);
    assert!(
        std::net::TcpStream::connect(pb).is_err(),
        "{pb} still listens"
    );
    assert!(matches!(
        server.remove_portal(b, pb),
        Err(ServerError::NoPortal { .. })
    ));

    // A logged-in session shows in the list; removing its target ends it.
    // Open b to everyone again, then hold a session on it.
    server.modify_target(b, |t| t.acl.clear()).expect("open");
    let mut child = std::process::Command::new("iscsi-perf")
        .args([
            "-i",
            "iqn.2026-11.org.oxtarget:perf",
            "-t",
            "20",
            &format!("iscsi://{pa}/{b}/0"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("iscsi-perf");
    eventually("a session doing I/O", || {
        server.sessions_list().iter().any(|s| {
            s.target == b
                && s.initiator == "iqn.2026-11.org.oxtarget:perf"
                && s.commands > 100
                && s.bytes > 0
        })
    });
    server.remove_target(b).expect("remove b");
    eventually("the session to end", || server.sessions() == 0);
    // libiscsi keeps trying to reconnect; its logins now fail.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !server.sessions_list().iter().any(|s| s.target == b),
        "a session on a removed target"
    );
    let _ = child.kill();
    let _ = child.wait();
    let (ok, out) = run("iscsi-ls", &[&format!("iscsi://{pa}")], LIMIT);
    assert!(ok && out.contains(a) && !out.contains(b), "{out}");
    assert!(matches!(
        server.remove_target(b),
        Err(ServerError::NoTarget(_))
    ));
    server.shutdown();
}
