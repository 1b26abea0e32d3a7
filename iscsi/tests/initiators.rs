//! Real initiators from Debian against the server on 127.0.0.1: libiscsi's tools
//! (`iscsi-inq`, `iscsi-ls`, `iscsi-test-cu`) and QEMU's iSCSI block driver
//! (`qemu-img`, `qemu-io`). Each test starts its own server on a free port.
//! Tests whose tool is missing say so and pass (install `libiscsi-bin` and
//! `qemu-block-extra`).

mod common;

use integration::testkit::{have, run};

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The tools share two cores: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn url(server: &iscsi::server::Server, lun: u32) -> String {
    format!("iscsi://{}/{}/{lun}", server.local_addrs()[0], common::IQN)
}

#[test]
fn iscsi_inq_and_ls() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !have("iscsi-inq") || !have("iscsi-ls") {
        return;
    }
    let server = common::start(0, 2, 64 << 20);
    let (ok, out) = run("iscsi-inq", &[&url(&server, 0)], Duration::from_secs(30));
    assert!(ok, "{out}");
    assert!(out.contains("Vendor:OXTARGET"), "{out}");
    let (ok, out) = run(
        "iscsi-inq",
        &["-e", "1", "-c", "0x80", &url(&server, 1)],
        Duration::from_secs(30),
    );
    assert!(ok, "{out}");
    let portal = format!("iscsi://{}", server.local_addrs()[0]);
    let (ok, out) = run("iscsi-ls", &["-s", &portal], Duration::from_secs(30));
    assert!(ok, "{out}");
    assert!(out.contains(&format!("Target:{}", common::IQN)), "{out}");
    assert!(out.contains("Lun:0") && out.contains("Lun:1"), "{out}");
    server.shutdown();
}

#[test]
fn qemu_writes_and_reads_back() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !have("qemu-img") || !have("qemu-io") {
        return;
    }
    // qemu-img without the iSCSI driver module cannot open iscsi:// URLs.
    if !Path::new("/usr/lib/x86_64-linux-gnu/qemu/block-iscsi.so").exists()
        && std::fs::read_dir("/usr/lib/x86_64-linux-gnu/qemu").is_err()
    {
        eprintln!("qemu-block-extra not installed: skipped");
        return;
    }
    let server = common::start(0, 1, 64 << 20);
    let u = url(&server, 0);
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src.img");
    let back = dir.path().join("back.img");
    let data: Vec<u8> = (0..(6u32 << 20) + 4096)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&src, &data).expect("write src");
    let limit = Duration::from_secs(120);
    let (ok, out) = run(
        "qemu-img",
        &[
            "convert",
            "-n",
            "-f",
            "raw",
            "-O",
            "raw",
            src.to_str().unwrap_or_default(),
            &u,
        ],
        limit,
    );
    assert!(ok, "{out}");
    let (ok, out) = run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &u,
            back.to_str().unwrap_or_default(),
        ],
        limit,
    );
    assert!(ok, "{out}");
    let got = std::fs::read(&back).expect("read back");
    assert_eq!(got.len(), 64 << 20);
    assert!(got[..data.len()] == data[..], "data read back differs");
    assert!(got[data.len()..].iter().all(|&b| b == 0));
    // Unaligned offsets and several requests in flight.
    let (ok, out) = run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "aio_write -P 0x5a 1M 3M",
            "-c",
            "aio_write -P 0xa5 5M 1M",
            "-c",
            "aio_flush",
            "-c",
            "read -P 0x5a 1M 3M",
            "-c",
            "read -P 0xa5 5M 1M",
            "-c",
            "write -P 0x11 512 1536",
            "-c",
            "read -P 0x11 512 1536",
            &u,
        ],
        limit,
    );
    assert!(ok && !out.contains("Pattern verification failed"), "{out}");
    // With header digests (libiscsi proposes CRC32C alone).
    let addr = server.local_addrs()[0];
    let opts = format!(
        "driver=iscsi,transport=tcp,portal={addr},target={},lun=0,header-digest=crc32c",
        common::IQN
    );
    let (ok, out) = run(
        "qemu-io",
        &[
            "--image-opts",
            &opts,
            "-c",
            "write -P 0x3c 8M 2M",
            "-c",
            "read -P 0x3c 8M 2M",
            "-c",
            "read -P 0x5a 1M 3M",
        ],
        limit,
    );
    assert!(ok && !out.contains("Pattern verification failed"), "{out}");
    server.shutdown();
}

/// Runs families of libiscsi's conformance suite; all must pass.
#[test]
fn iscsi_test_cu_families() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !have("iscsi-test-cu") {
        return;
    }
    let server = common::start(0, 1, 64 << 20);
    let u = url(&server, 0);
    let families = [
        "SCSI.TestUnitReady",
        "SCSI.Inquiry",
        "SCSI.Read10",
        "SCSI.Write10",
        "SCSI.ReadCapacity16",
        "iSCSI.iSCSIdatasn",
        "iSCSI.iSCSIcmdsn",
        "iSCSI.iSCSIResiduals",
        "iSCSI.iSCSITMF",
    ];
    for f in families {
        let (_, out) = run(
            "iscsi-test-cu",
            &[
                "-d",
                "-i",
                "iqn.2026-11.org.oxtarget:cu-a",
                "-I",
                "iqn.2026-11.org.oxtarget:cu-b",
                "-t",
                f,
                &u,
            ],
            Duration::from_secs(180),
        );
        let tests = out
            .lines()
            .find(|l| l.trim_start().starts_with("tests"))
            .unwrap_or_else(|| panic!("{f}: no summary\n{out}"));
        let cols: Vec<u32> = tests
            .split_whitespace()
            .skip(1)
            .filter_map(|c| c.parse().ok())
            .collect();
        // Total Ran Passed Failed Inactive
        assert!(cols.len() >= 4 && cols[1] > 0, "{f}: {tests}\n{out}");
        assert_eq!(cols[3], 0, "{f} failed:\n{out}");
    }
    server.shutdown();
}

/// A peer that stalls mid-PDU or sends garbage is dropped; others go on.
#[test]
fn misbehaving_peers_do_not_hurt_others() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = common::start_with(0, 1, 16 << 20, |c| {
        c.stall_timeout = Duration::from_secs(1);
        c.login_timeout = Duration::from_secs(2);
    });
    let addr = server.local_addrs()[0];
    // Half a header, then silence: dropped after the stall timeout.
    let mut stall = TcpStream::connect(addr).expect("connect");
    stall.write_all(&[0x43; 20]).expect("write");
    // Connected, silent: dropped after the login timeout.
    let mut idle = TcpStream::connect(addr).expect("connect");
    // A login header announcing a data segment larger than allowed.
    let mut big = TcpStream::connect(addr).expect("connect");
    let mut h = [0u8; 48];
    h[0] = 0x43;
    h[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    big.write_all(&h).expect("write");
    big.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut b = [0u8; 64];
    assert!(
        matches!(big.read(&mut b), Ok(0) | Err(_)),
        "oversized segment: dropped"
    );
    if have("iscsi-inq") {
        let (ok, out) = run("iscsi-inq", &[&url(&server, 0)], Duration::from_secs(30));
        assert!(ok, "{out}");
    }
    for (name, s) in [("stalled", &mut stall), ("idle", &mut idle)] {
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let t = Instant::now();
        assert!(matches!(s.read(&mut b), Ok(0) | Err(_)), "{name}: dropped");
        assert!(
            t.elapsed() < Duration::from_secs(9),
            "{name}: dropped in time"
        );
    }
    server.shutdown();
}

/// A portal on the IPv6 loopback, found by discovery and logged in to.
#[test]
fn ipv6_portal() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !have("iscsi-inq") || !have("iscsi-ls") {
        return;
    }
    let any = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0));
    if std::net::TcpListener::bind(any).is_err() {
        eprintln!("no IPv6 loopback: skipped");
        return;
    }
    let server = common::start_at(any, 1, 16 << 20, |_| {});
    let addr = server.local_addrs()[0];
    let (ok, out) = run(
        "iscsi-ls",
        &["-s", &format!("iscsi://{addr}")],
        Duration::from_secs(30),
    );
    assert!(ok, "{out}");
    assert!(out.contains(&format!("Portal:{addr},1")), "{out}");
    let (ok, out) = run(
        "iscsi-inq",
        &[&format!("iscsi://{addr}/{}/0", common::IQN)],
        Duration::from_secs(30),
    );
    assert!(ok && out.contains("Vendor:OXTARGET"), "{out}");
    server.shutdown();
}

/// CHAP required and an ACL: the right secret and name get in, others do not.
#[test]
fn chap_and_acl() {
    use iscsi::chap::{ChapCredentials, Secret};
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !have("iscsi-inq") {
        return;
    }
    let allowed = "iqn.2026-11.org.oxtarget:allowed";
    let server = common::start_with(0, 1, 16 << 20, |c| {
        let t = &mut c.targets[0];
        t.acl = vec![allowed.to_string()];
        t.chap_required = true;
        t.chap = Some(ChapCredentials {
            initiator: Secret {
                user: "alice".into(),
                secret: b"twelve-chars-or-more".to_vec(),
            },
            target: None,
        });
    });
    let addr = server.local_addrs()[0];
    let inq = |creds: &str, name: &str| {
        run(
            "iscsi-inq",
            &[
                "-i",
                name,
                &format!("iscsi://{creds}{addr}/{}/0", common::IQN),
            ],
            Duration::from_secs(30),
        )
    };
    let (ok, out) = inq("alice%twelve-chars-or-more@", allowed);
    assert!(ok && out.contains("Vendor:OXTARGET"), "{out}");
    let (ok, out) = inq("alice%wrong-secret-here@", allowed);
    assert!(!ok, "wrong secret: {out}");
    let (ok, out) = inq("", allowed);
    assert!(!ok, "no CHAP: {out}");
    let (ok, out) = inq(
        "alice%twelve-chars-or-more@",
        "iqn.2026-11.org.oxtarget:stranger",
    );
    assert!(!ok, "not in the ACL: {out}");
    server.shutdown();
}

/// An initiator killed in the middle of a write load: its session goes (the
/// I_T nexus is lost, its commands aborted), the server carries on.
#[test]
fn initiator_killed_mid_load() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !have("qemu-img") || !have("iscsi-inq") {
        return;
    }
    let server = common::start(0, 1, 64 << 20);
    let u = url(&server, 0);
    let mut child = Command::new("qemu-img")
        .args([
            "bench", "-f", "raw", "-t", "none", "-w", "-c", "10000000", "-d", "32", "-s", "65536",
            &u,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let t = Instant::now();
    while server.sessions() == 0 && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(server.sessions(), 1, "the load logged in");
    std::thread::sleep(Duration::from_millis(500));
    // Only the child we started, by its pid.
    let _ = child.kill();
    let _ = child.wait();
    let t = Instant::now();
    while server.sessions() > 0 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(server.sessions(), 0, "the session went with its connection");
    let (ok, out) = run("iscsi-inq", &[&u], Duration::from_secs(30));
    assert!(ok, "{out}");
    server.shutdown();
}

/// Connections beyond `max_connections` are closed as they come.
#[test]
fn connection_limit() {
    use std::io::Read;
    use std::net::TcpStream;
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = common::start_with(0, 1, 1 << 20, |c| c.max_connections = 1);
    let addr = server.local_addrs()[0];
    let _first = TcpStream::connect(addr).expect("connect");
    let mut second = TcpStream::connect(addr).expect("connect");
    second
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut b = [0u8; 8];
    let t = Instant::now();
    assert!(matches!(second.read(&mut b), Ok(0) | Err(_)));
    assert!(t.elapsed() < Duration::from_secs(4), "closed at once");
    server.shutdown();
}

/// Writes through R2Ts only (InitialR2T=Yes, no immediate data, small bursts,
/// several R2Ts outstanding, small segments), read back through many Data-In.
#[test]
fn r2t_heavy_policy_round_trip() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !have("qemu-io") {
        return;
    }
    let server = common::start_with(0, 1, 16 << 20, |c| {
        c.policy.initial_r2t = true;
        c.policy.immediate_data = false;
        c.policy.max_burst_length = 16 * 1024;
        c.policy.first_burst_length = 8 * 1024;
        c.policy.max_outstanding_r2t = 4;
        c.policy.max_recv_data_segment_length = 4096;
    });
    let u = url(&server, 0);
    let (ok, out) = run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "aio_write -P 0x21 0 1M",
            "-c",
            "aio_write -P 0x42 1M 1536",
            "-c",
            "aio_write -P 0x63 3M 777k",
            "-c",
            "aio_flush",
            "-c",
            "read -P 0x21 0 1M",
            "-c",
            "read -P 0x42 1M 1536",
            "-c",
            "read -P 0x63 3M 777k",
            &u,
        ],
        Duration::from_secs(120),
    );
    assert!(ok && !out.contains("Pattern verification failed"), "{out}");
    server.shutdown();
}
