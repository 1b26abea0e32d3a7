//! One LUN on an RBD image, on two transports at once: a TCG guest on
//! oxtarget's vhost-user-scsi controller and QEMU's iSCSI initiator (`qemu-io`,
//! `qemu-img`) on the in-process iSCSI server (127.0.0.1) share the same
//! `Arc<Lun>`, whose backend is a 64 MiB image of a one-node Ceph cluster of
//! the test's own (memstore).
//!
//! - What `qemu-io` wrote over iSCSI before the guest booted, `rbd export` (a
//!   librbd client of its own) finds in the image, and the guest reads.
//! - What the guest wrote (a pattern from the host and 4 MiB of its own random
//!   data, `oflag=direct conv=fsync`: the fsync becomes SYNCHRONIZE CACHE), `rbd
//!   export` gives back byte for byte, and `qemu-img` reads over iSCSI.
//! - The whole image read over iSCSI equals the whole `rbd export`.
//!
//! Run: `cargo test -p oxtarget-integration --features rbd --test rbd_cross -- --nocapture`
//! (needs Ceph, QEMU and the guest kernel: see integration/README.md).

#![cfg(feature = "rbd")]

mod common;
mod rbd_common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{qemu_img_read, qemu_io_write, ScsiController, VhostScsiDisk};
use engine::{Lun, LunRegistry};
use integration::ceph::{Cluster, Store};
use integration::testkit::{have, noise};
use integration::{GuestConfig, GuestEnv, Initramfs};
use iscsi::server::Server;

const IQN: &str = "iqn.2026-11.org.oxtarget:rbd-cross";
const IMAGE: &str = "cross";
const DISK_SIZE: u64 = 64 << 20;
const BLOCK: u64 = 64 << 10;
/// Written over iSCSI before the guest boots, read by the guest (8 MiB in).
const ISCSI_BLK: u64 = 128;
/// The host's pattern the guest writes (5 MiB in).
const GUEST_BLK: u64 = 80;
/// Where the guest writes 4 MiB of its own random data (40 MiB in).
const RANDOM_BLK: u64 = 640;
const RANDOM_BLOCKS: u64 = 64;

fn md5_hex(b: &[u8]) -> String {
    use md5::{Digest, Md5};
    Md5::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

fn range(image: &[u8], blk: u64, blocks: u64) -> &[u8] {
    let at = usize::try_from(blk * BLOCK).expect("offset");
    let len = usize::try_from(blocks * BLOCK).expect("length");
    &image[at..at + len]
}

/// The RBD LUN on the vhost controller (socket `sock`) and on the iSCSI server.
/// Stopped in `stop`; on a panic the controller's thread and the server go
/// with the process, and the cluster (dropped after) stops its daemons.
struct Both {
    lun: Arc<Lun>,
    controller: ScsiController,
    server: Server,
}

impl Both {
    fn start(cluster: &Cluster, sock: &Path) -> Self {
        let backend = rbd_common::open_image(cluster, IMAGE);
        let lun = rbd_common::lun("rbd-cross", backend, |_| {});
        let registry = LunRegistry::new();
        registry.add(lun.clone());
        let controller = ScsiController::start("rbd-vm", sock, &lun, registry.clone(), 1);
        let server = common::iscsi_server(IQN, &lun, registry, |_| {});
        Both {
            lun,
            controller,
            server,
        }
    }

    fn url(&self) -> String {
        format!("iscsi://{}/{IQN}/0", self.server.local_addrs()[0])
    }

    fn stop(self) {
        self.server.shutdown();
        self.controller.stop();
        self.lun.backend.sync().expect("sync the image");
    }
}

const GUEST: &str = r#"
set -e
dev=/dev/sda
i=0
while [ ! -b $dev ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
echo "size $(cat /sys/block/sda/size)"
echo "from-iscsi-md5 $(dd if=$dev bs=BLOCK count=1 skip=ISCSI_BLK iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)"
echo "iscsi-pattern-md5 $(md5sum <$OXTARGET_IN/from_iscsi | cut -d' ' -f1)"
dd if=$OXTARGET_IN/from_guest of=$dev bs=BLOCK count=1 seek=GUEST_BLK oflag=direct conv=notrunc,fsync 2>/dev/null
dd if=/dev/urandom of=/tmp/random bs=BLOCK count=RANDOM_BLOCKS 2>/dev/null
dd if=/tmp/random of=$dev bs=BLOCK count=RANDOM_BLOCKS seek=RANDOM_BLK oflag=direct conv=notrunc,fsync 2>/dev/null
echo "random-md5 $(md5sum </tmp/random | cut -d' ' -f1)"
echo "random-readback-md5 $(dd if=$dev bs=BLOCK count=RANDOM_BLOCKS skip=RANDOM_BLK iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)"
echo "guest-wrote ok"
"#;

#[test]
fn rbd_lun_over_vhost_user_scsi_and_iscsi() {
    let Some(env) = GuestEnv::require() else {
        return;
    };
    for tool in ["qemu-io", "qemu-img"] {
        assert!(
            have(tool),
            "{tool} is needed (qemu-utils, qemu-block-extra)"
        );
    }
    let Some(cluster) = Cluster::require(Store::Memstore) else {
        return;
    };
    cluster.create_image(IMAGE, DISK_SIZE).expect("rbd create");
    let dir = tempfile::tempdir().expect("temporary directory");
    let sock = dir.path().join("rbd-cross.sock");
    let both = Both::start(&cluster, &sock);
    let limit = Duration::from_secs(120);

    // QEMU's iSCSI initiator writes before the guest boots; qemu-io flushes
    // when it closes the image.
    let from_iscsi = noise(0x1357_9bdf, BLOCK as usize);
    let from_iscsi_file = dir.path().join("from_iscsi");
    std::fs::write(&from_iscsi_file, &from_iscsi).expect("pattern");
    qemu_io_write(
        &from_iscsi_file,
        ISCSI_BLK * BLOCK,
        BLOCK,
        &both.url(),
        limit,
    );
    let exported = cluster.export(IMAGE).expect("rbd export");
    assert_eq!(exported.len() as u64, DISK_SIZE);
    assert!(
        range(&exported, ISCSI_BLK, 1) == from_iscsi,
        "QEMU's iSCSI write is in the image (rbd export)"
    );

    let from_guest = noise(0x2468_ace1, BLOCK as usize);
    let from_guest_file = dir.path().join("from_guest");
    std::fs::write(&from_guest_file, &from_guest).expect("pattern");
    let initramfs = Initramfs::standard()
        .build(env)
        .unwrap_or_else(|e| panic!("building the initramfs: {e}"));
    let script = GUEST
        .replace("ISCSI_BLK", &ISCSI_BLK.to_string())
        .replace("GUEST_BLK", &GUEST_BLK.to_string())
        .replace("RANDOM_BLOCKS", &RANDOM_BLOCKS.to_string())
        .replace("RANDOM_BLK", &RANDOM_BLK.to_string())
        .replace("BLOCK", &BLOCK.to_string());
    let config = GuestConfig::new(&initramfs, script)
        .fw_cfg_file("from_iscsi", &from_iscsi_file)
        .fw_cfg_file("from_guest", &from_guest_file)
        .vhost_scsi(&sock, 1)
        .timeout(Duration::from_secs(240));
    let guest = env
        .run(&config)
        .and_then(|r| r.check())
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("guest results:\n{}", guest.results);
    assert_eq!(
        guest.field("size"),
        Some((DISK_SIZE / 512).to_string().as_str()),
        "the guest sees the image's size"
    );
    let want = guest.field("iscsi-pattern-md5").expect("pattern md5");
    assert_eq!(
        guest.field("from-iscsi-md5"),
        Some(want),
        "the guest reads what iSCSI wrote"
    );
    assert!(guest.lines().any(|l| l == "guest-wrote ok"));
    let random_md5 = guest.field("random-md5").expect("random md5");
    assert_eq!(guest.field("random-readback-md5"), Some(random_md5));

    // The guest's writes, as another librbd client reads the image.
    let exported = cluster.export(IMAGE).expect("rbd export");
    assert!(
        range(&exported, GUEST_BLK, 1) == from_guest,
        "the guest's write of the host's pattern is in the image, byte for byte"
    );
    assert_eq!(
        md5_hex(range(&exported, RANDOM_BLK, RANDOM_BLOCKS)),
        random_md5,
        "the guest's 4 MiB of random data are in the image"
    );
    assert!(
        range(&exported, ISCSI_BLK, 1) == from_iscsi,
        "iSCSI's write is still there"
    );

    // The whole LUN read over iSCSI is the whole image.
    let over_iscsi = qemu_img_read(&both.url(), &dir.path().join("back.img"), limit);
    assert_eq!(over_iscsi.len() as u64, DISK_SIZE);
    assert!(
        range(&over_iscsi, GUEST_BLK, 1) == from_guest,
        "the guest's write, read over iSCSI"
    );
    assert!(
        over_iscsi == exported,
        "the LUN over iSCSI equals rbd export of the image"
    );
    both.stop();
}
