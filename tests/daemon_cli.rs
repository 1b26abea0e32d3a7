//! The daemon driven only through its CLI, as an admin or a management stack
//! would: objects created while an initiator does I/O, a resize, a save, a
//! restart that finds everything back (an APTPL reservation included), and a
//! SIGTERM in the middle of writes after which every acknowledged write reads
//! back. Initiators: libiscsi's tools, qemu-img and the crate's own test
//! initiator.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::{cli, cli_json, cli_raw, free_port, portal, DaemonProc, LIMIT};

const TARGET: &str = "iqn.2026-11.org.oxtarget:cli";

fn have(tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
    if !found {
        eprintln!("{tool} not installed: skipped");
    }
    found
}

/// A child process the test started: killed (by its PID) if the test ends
/// before it, so that a failing test leaves no initiator behind.
struct Reaped(Option<Child>);

impl Reaped {
    /// Waits (bounded) for the child to exit and returns its output.
    fn finish(&mut self, limit: Duration) -> std::process::Output {
        let start = Instant::now();
        let child = self.0.as_mut().expect("running");
        while child.try_wait().expect("wait").is_none() {
            assert!(start.elapsed() < limit, "the child ran past {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.0
            .take()
            .expect("running")
            .wait_with_output()
            .expect("output")
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn write_config(dir: &Path) -> (PathBuf, PathBuf) {
    let socket = dir.join("rpc.sock");
    let config = dir.join("oxtarget.toml");
    std::fs::create_dir_all(dir.join("state")).expect("state dir");
    std::fs::write(
        &config,
        format!(
            r#"state_dir = "{state}"
rpc_socket = "{socket}"
metrics_listen = "127.0.0.1:{metrics}"

[[backend]]
name = "ram0"
type = "ram"
size = "64M"

[[lun]]
name = "lun0"
backend = "ram0"
uuid = "11111111-2222-4333-8444-555555555555"

[[iscsi_target]]
name = "{TARGET}"
portals = ["127.0.0.1:0"]
luns = [{{ id = 0, lun = "lun0" }}]
"#,
            state = dir.join("state").display(),
            socket = socket.display(),
            metrics = free_port(),
        ),
    )
    .expect("config");
    (config, socket)
}

/// READ CAPACITY(16) through libiscsi: the LUN's size in bytes.
fn capacity(portal: SocketAddr, lun: u32) -> u64 {
    let out = Command::new("iscsi-readcapacity16")
        .args(["-s", "-i", "iqn.2026-11.org.oxtarget:friend"])
        .arg(format!("iscsi://{portal}/{TARGET}/{lun}"))
        .output()
        .expect("iscsi-readcapacity16");
    let text = String::from_utf8_lossy(&out.stdout);
    // `-s` prints the size in bytes alone.
    text.trim()
        .parse()
        .ok()
        .unwrap_or_else(|| panic!("no size in {text}{}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn cli_changes_a_running_daemon_and_a_restart_finds_them() {
    if !have("iscsi-readcapacity16") || !have("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, socket) = write_config(dir.path());
    let mut d = DaemonProc::start(&config, &socket, &dir.path().join("log1"));
    let p = portal(&socket);

    // An initiator keeps writing and reading LUN 0 while we change things.
    let mut bench = Reaped(Some(
        Command::new("qemu-img")
            .args([
                "bench", "-f", "raw", "-t", "none", "-w", "-c", "20000", "-d", "8", "-s", "4096",
            ])
            .arg(format!("iscsi://{p}/{TARGET}/0"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("qemu-img bench"),
    ));

    let img = dir.path().join("disk1.img");
    let img_s = img.display().to_string();
    cli(
        &socket,
        &[
            "backend", "create", "disk1", "--type", "file", "--path", &img_s, "--size", "16M",
        ],
    );
    cli(
        &socket,
        &[
            "lun",
            "create",
            "disk1",
            "--backend",
            "disk1",
            "--serial",
            "DISK1SERIAL",
        ],
    );
    cli(&socket, &["iscsi", "lun", "map", TARGET, "1", "disk1"]);
    assert_eq!(capacity(p, 1), 16 << 20);
    cli(&socket, &["lun", "resize", "disk1", "24M"]);
    assert_eq!(capacity(p, 1), 24 << 20);
    cli(
        &socket,
        &[
            "iscsi",
            "acl",
            "add",
            TARGET,
            "iqn.2026-11.org.oxtarget:friend",
        ],
    );
    for w in ["iqn.2026-11.org.oxtarget:w7", "iqn.2026-11.org.oxtarget:w8"] {
        cli(&socket, &["iscsi", "acl", "add", TARGET, w]);
    }

    let out = bench.finish(Duration::from_secs(300));
    assert!(
        out.status.success(),
        "I/O on LUN 0 failed while the config changed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stats = cli_json(&socket, &["lun", "stats", "lun0"]);
    assert!(
        stats[0]["write_ops"].as_u64().unwrap_or(0) >= 20000,
        "{stats}"
    );

    // Refusals change nothing and exit 1; a missing daemon exits 3.
    let (code, _, err) = cli_raw(&socket, &["lun", "delete", "disk1"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("mapped"), "{err}");
    let (code, _, _) = cli_raw(&dir.path().join("nothing.sock"), &["lun", "list"]);
    assert_eq!(code, Some(3));

    // A persistent reservation with APTPL on the file LUN: REGISTER (key
    // 0xabc, APTPL) then RESERVE Write Exclusive.
    let mut pr = test_initiator::connect(p, TARGET, 7).expect("login");
    let key = 0xabc_u64;
    let mut params = vec![0u8; 24];
    params[8..16].copy_from_slice(&key.to_be_bytes());
    params[20] = 1; // APTPL
    let (st, sense, _) = pr
        .command(1, &prout(0x00, 0, 24), &params, 0)
        .expect("register");
    assert_eq!(st, 0, "REGISTER: {sense:02x?}");
    let mut params = vec![0u8; 24];
    params[0..8].copy_from_slice(&key.to_be_bytes());
    let (st, sense, _) = pr
        .command(1, &prout(0x01, 1, 24), &params, 0)
        .expect("reserve");
    assert_eq!(st, 0, "RESERVE: {sense:02x?}");
    drop(pr);

    // A vhost controller with the file LUN, created on the running daemon.
    let vsock = dir.path().join("vm1.sock");
    let vsock_s = vsock.display().to_string();
    cli(
        &socket,
        &[
            "vhost", "create", "vm1", &vsock_s, "--queues", "2", "--lun", "0=disk1",
        ],
    );
    assert!(vsock.exists(), "the controller listens");
    // A vhost-user-blk device on the RAM LUN.
    let bsock = dir.path().join("vm2-blk.sock");
    let bsock_s = bsock.display().to_string();
    cli(
        &socket,
        &[
            "vhost-blk",
            "create",
            "vm2",
            &bsock_s,
            "--lun",
            "lun0",
            "--queues",
            "2",
        ],
    );
    assert!(bsock.exists(), "the blk device listens");
    let (code, _, err) = cli_raw(
        &socket,
        &["vhost-blk", "create", "vm2", &bsock_s, "--lun", "lun0"],
    );
    assert_eq!(code, Some(1), "a second device of that name: {err}");

    let before = cli_json(&socket, &["lun", "list"]);
    cli(&socket, &["config", "save"]);
    let status = d.terminate();
    assert!(status.success(), "exit after SIGTERM: {status:?}");

    let mut d = DaemonProc::start(&config, &socket, &dir.path().join("log2"));
    let p = portal(&socket);
    let after = cli_json(&socket, &["lun", "list"]);
    assert_eq!(after, before, "LUNs (identity, size) after restart");
    let v = cli_json(&socket, &["vhost", "list"]);
    assert_eq!(v[0]["name"], "vm1", "{v}");
    assert_eq!(v[0]["queues"], 2, "{v}");
    assert_eq!(v[0]["luns"][0]["lun"], "disk1", "{v}");
    assert!(vsock.exists(), "the restored controller listens");
    let b = cli_json(&socket, &["vhost-blk", "list"]);
    assert_eq!(b[0]["name"], "vm2", "{b}");
    assert_eq!(b[0]["lun"], "lun0", "{b}");
    assert_eq!(b[0]["queues"], 2, "{b}");
    assert!(bsock.exists(), "the restored blk device listens");
    let t = cli_json(&socket, &["iscsi", "target", "list"]);
    assert_eq!(t[0]["luns"].as_array().map(Vec::len), Some(2), "{t}");
    assert_eq!(t[0]["acl"].as_array().map(Vec::len), Some(3), "{t}");
    assert!(
        test_initiator::connect(p, TARGET, 99).is_err(),
        "an initiator outside the restored ACL logged in"
    );
    assert_eq!(capacity(p, 1), 24 << 20);
    // The reservation came back from the state directory.
    let mut s = test_initiator::connect(p, TARGET, 8).expect("login");
    let (st, _, keys) = s.command(1, &prin(0x00), &[], 64).expect("READ KEYS");
    assert_eq!(st, 0);
    assert_eq!(&keys[4..8], &8u32.to_be_bytes(), "one key: {keys:02x?}");
    assert_eq!(&keys[8..16], &0xabc_u64.to_be_bytes());
    let (st, _, res) = s
        .command(1, &prin(0x01), &[], 64)
        .expect("READ RESERVATION");
    assert_eq!(st, 0);
    assert_eq!(
        &res[4..8],
        &16u32.to_be_bytes(),
        "a reservation: {res:02x?}"
    );
    assert_eq!(&res[8..16], &0xabc_u64.to_be_bytes());
    assert_eq!(res[21] & 0x0f, 1, "type Write Exclusive");
    // A write from an initiator without a registration conflicts.
    let (st, _, _) = s
        .command(
            1,
            &[0x8a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0],
            &[0u8; 512],
            0,
        )
        .expect("write");
    assert_eq!(st, 0x18, "RESERVATION CONFLICT");
    d.terminate();
}

/// PERSISTENT RESERVE OUT with a service action, type and list length.
fn prout(sa: u8, kind: u8, len: u32) -> [u8; 10] {
    let l = len.to_be_bytes();
    [0x5f, sa, kind, 0, 0, l[0], l[1], l[2], l[3], 0]
}

/// PERSISTENT RESERVE IN with a service action, 64-byte allocation.
fn prin(sa: u8) -> [u8; 10] {
    [0x5e, sa, 0, 0, 0, 0, 0, 0, 64, 0]
}

/// Stops the daemon with SIGTERM while a writer has many writes in flight,
/// restarts it, and reads back every write that had been acknowledged.
#[test]
fn acknowledged_writes_survive_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, socket) = write_config(dir.path());
    let mut d = DaemonProc::start(&config, &socket, &dir.path().join("log1"));
    let img = dir.path().join("data.img");
    let img_s = img.display().to_string();
    cli(
        &socket,
        &[
            "backend", "create", "data", "--type", "file", "--path", &img_s, "--size", "64M",
        ],
    );
    cli(&socket, &["lun", "create", "data", "--backend", "data"]);
    cli(&socket, &["iscsi", "lun", "map", TARGET, "1", "data"]);
    cli(&socket, &["config", "save"]);
    let p = portal(&socket);

    let acked: Arc<Mutex<Vec<u64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let (acked, stop) = (acked.clone(), stop.clone());
            std::thread::spawn(move || {
                let Ok(mut s) = test_initiator::connect(p, TARGET, w + 1) else {
                    return;
                };
                // Bounded: at most 4000 writes each, or until the daemon goes.
                for i in 0..4000u64 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let lba = (i * 4 + w) * 8;
                    let data = pattern(lba);
                    if s.write(1, lba, &data).is_err() {
                        break;
                    }
                    acked.lock().expect("lock").push(lba);
                }
            })
        })
        .collect();
    // Let writes flow, then stop the daemon under them.
    let start = Instant::now();
    while acked.lock().expect("lock").len() < 2000 && start.elapsed() < LIMIT {
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = d.terminate();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.join();
    }
    assert!(status.success(), "{status:?}");
    let acked = acked.lock().expect("lock").clone();
    assert!(
        acked.len() >= 100,
        "only {} writes were acknowledged",
        acked.len()
    );

    let mut d = DaemonProc::start(&config, &socket, &dir.path().join("log2"));
    let p = portal(&socket);
    let mut s = test_initiator::connect(p, TARGET, 9).expect("login after restart");
    for lba in &acked {
        let back = s.read(1, *lba, 8).expect("read back");
        assert!(
            back == pattern(*lba),
            "acknowledged write at LBA {lba} lost"
        );
    }
    d.terminate();
}

/// 4 KiB that say which LBA they belong to.
fn pattern(lba: u64) -> Vec<u8> {
    (0..4096u64)
        .map(|i| (lba.wrapping_mul(31).wrapping_add(i * 7) % 251) as u8)
        .collect()
}

/// A thin layer over the iSCSI crate's test initiator: one session per call
/// of `connect`, 512-byte blocks, unit attentions cleared at login.
mod test_initiator {
    use std::net::SocketAddr;
    use std::time::Duration;

    use iscsi::initiator::{Initiator, InitiatorConfig, InitiatorError};

    pub struct Session(Initiator);

    pub fn connect(p: SocketAddr, target: &str, isid: u64) -> Result<Session, InitiatorError> {
        let mut cfg = InitiatorConfig::new(&format!("iqn.2026-11.org.oxtarget:w{isid}"), target);
        cfg.isid[5] = isid as u8;
        cfg.timeout = Duration::from_secs(20);
        let mut s = Initiator::connect(p, cfg)?;
        s.clear_unit_attentions(0)?;
        s.clear_unit_attentions(1)?;
        Ok(Session(s))
    }

    impl Session {
        pub fn write(&mut self, lun: u64, lba: u64, data: &[u8]) -> Result<(), InitiatorError> {
            self.0.write16(lun, lba, data, 512)?.good().map(|_| ())
        }

        pub fn read(&mut self, lun: u64, lba: u64, blocks: u32) -> Result<Vec<u8>, InitiatorError> {
            Ok(self.0.read16(lun, lba, blocks, 512)?.good()?.data)
        }

        /// Any command; its status, sense and data.
        pub fn command(
            &mut self,
            lun: u64,
            cdb: &[u8],
            out: &[u8],
            in_len: usize,
        ) -> Result<(u8, Vec<u8>, Vec<u8>), InitiatorError> {
            let r = self.0.command(lun, cdb, out, in_len)?;
            Ok((r.status, r.sense, r.data))
        }
    }
}

/// The README's promise: `oxtarget serve` with no config serves a RAM LUN on
/// iSCSI at 127.0.0.1:3260 and on a vhost-user socket. Needs root (the
/// sockets live in /run/oxtarget) and a free port 3260; skipped otherwise.
#[test]
fn serve_without_config_has_a_working_default() {
    // SAFETY: geteuid takes no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 || !have("iscsi-inq") {
        eprintln!("not root or no libiscsi: skipped");
        return;
    }
    if std::net::TcpListener::bind("127.0.0.1:3260").is_err()
        || Path::new("/run/oxtarget/rpc.sock").exists()
    {
        eprintln!("port 3260 or /run/oxtarget/rpc.sock in use: skipped");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut d = DaemonProc::spawn(
        ["serve"],
        Path::new("/run/oxtarget/rpc.sock"),
        &dir.path().join("log"),
    );
    d.wait_ready();
    let text = d.log_text();
    assert!(
        text.contains("iscsi://127.0.0.1:3260/iqn.2026-11.org.oxtarget:default/0"),
        "{text}"
    );
    assert!(text.contains("vhost-user-scsi-pci"), "{text}");
    assert!(Path::new("/run/oxtarget/vhost0.sock").exists());
    let out = Command::new("iscsi-inq")
        .arg("iscsi://127.0.0.1:3260/iqn.2026-11.org.oxtarget:default/0")
        .output()
        .expect("iscsi-inq");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let luns = cli_json(&d.socket, &["lun", "list"]);
    assert_eq!(luns[0]["size"], serde_json::json!(1u64 << 30));
    assert!(d.terminate().success());
    assert!(
        !Path::new("/run/oxtarget/rpc.sock").exists(),
        "socket left behind"
    );
}
