//! What the end-to-end tests share that needs the target's own crates: an
//! in-process iSCSI server, and a vhost-user-scsi controller on a thread.

// Each test crate compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::{Lun, LunMap, LunRegistry, Protocol, TargetPort};
use iscsi::server::{Server, ServerConfig, Target};
use vhost_target::{ControllerError, VhostScsiController};

/// An iSCSI server on a free port of 127.0.0.1 with one target `iqn` whose
/// LUN 0 is `lun` (2 workers, adjusted by `adjust`); `registry` is the one
/// the LUN is registered in.
pub fn iscsi_server(
    iqn: &str,
    lun: &Arc<Lun>,
    registry: Arc<LunRegistry>,
    adjust: impl FnOnce(&mut ServerConfig),
) -> Server {
    let map = LunMap::new();
    map.insert(0, lun.clone());
    let target = Target {
        name: iqn.to_string(),
        alias: None,
        portals: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
        portal_group_tag: 1,
        port: Arc::new(TargetPort {
            name: format!("{iqn},t,0x0001"),
            protocol: Protocol::Iscsi,
            relative_id: 2,
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
    Server::start(cfg, registry).expect("iSCSI server")
}

/// A vhost-user-scsi controller serving on its own thread, listening on its
/// socket once `start` returns.
pub struct ScsiController {
    pub controller: Arc<VhostScsiController>,
    serving: std::thread::JoinHandle<Result<(), ControllerError>>,
}

impl ScsiController {
    /// Controller `name` on socket `sock` with `lun` as its LUN 0 and
    /// `queues` request queues; waits (10 s at most) for the socket.
    pub fn start(
        name: &str,
        sock: &Path,
        lun: &Arc<Lun>,
        registry: Arc<LunRegistry>,
        queues: usize,
    ) -> Self {
        let map = LunMap::new();
        map.insert(0, lun.clone());
        let controller = Arc::new(
            VhostScsiController::new(name, sock, map, registry, queues).expect("controller"),
        );
        let serving = {
            let c = controller.clone();
            std::thread::spawn(move || c.serve())
        };
        wait_for_socket(sock);
        ScsiController {
            controller,
            serving,
        }
    }

    /// Stops the controller and waits (30 s at most) for its thread, which
    /// must have served without an error.
    pub fn stop(self) {
        self.controller.stop_handle().stop();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.serving.is_finished() {
            assert!(Instant::now() < deadline, "the controller did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.serving
            .join()
            .expect("controller thread")
            .expect("controller served");
    }
}

/// QEMU's iSCSI initiator writes `len` bytes of `file` at `offset` of `url`
/// (`qemu-io`, which flushes when it closes the image).
pub fn qemu_io_write(file: &Path, offset: u64, len: u64, url: &str, limit: Duration) {
    let (ok, out) = integration::testkit::run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            &format!("write -s {} {offset} {len}", file.display()),
            url,
        ],
        limit,
    );
    assert!(ok, "qemu-io write over iSCSI: {out}");
}

/// A guest's vhost-user-scsi-pci controller (chardev `vhost0`) on a socket.
pub trait VhostScsiDisk {
    /// Adds the controller on `sock` with `queues` request queues.
    fn vhost_scsi(self, sock: &Path, queues: usize) -> Self;
}

impl VhostScsiDisk for integration::GuestConfig {
    fn vhost_scsi(self, sock: &Path, queues: usize) -> Self {
        self.arg("-chardev")
            .arg(format!(
                "socket,id=vhost0,path={}",
                sock.display().to_string().replace(',', ",,")
            ))
            .arg("-device")
            .arg(format!(
                "vhost-user-scsi-pci,chardev=vhost0,num_queues={queues}"
            ))
    }
}

/// QEMU's iSCSI initiator reads the whole LUN at `url` (`qemu-img convert`
/// into `file`): its bytes.
pub fn qemu_img_read(url: &str, file: &Path, limit: Duration) -> Vec<u8> {
    let (ok, out) = integration::testkit::run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            url,
            &file.display().to_string(),
        ],
        limit,
    );
    assert!(ok, "qemu-img convert over iSCSI: {out}");
    std::fs::read(file).expect("image read over iSCSI")
}

/// Waits (10 s at most) until a controller listens on `sock`.
pub fn wait_for_socket(sock: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "the controller did not listen");
        std::thread::sleep(Duration::from_millis(10));
    }
}
