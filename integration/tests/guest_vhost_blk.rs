//! A guest on oxtarget's vhost-user-blk controller, with the same LUN exported
//! over iSCSI at the same time. The controller runs in this process (a thread)
//! with a 64 MiB thin file LUN opened with O_DIRECT; QEMU attaches
//! `vhost-user-blk-pci` with two queues; the in-process iSCSI server exports the
//! same `Arc<Lun>` on 127.0.0.1 and the iscsi crate's test initiator talks to it.
//!
//! In the guest: the disk's size and serial (GET_ID), a direct write read back,
//! a `blkdiscard`. Then the guest marks sector 0 and waits; the host reads the
//! guest's pattern over iSCSI, takes a WRITE EXCLUSIVE persistent reservation
//! over iSCSI, writes a marker over iSCSI, and resizes the LUN. The guest sees
//! the new size (config-change notification), reads the iSCSI marker, and its
//! own write is refused (the reservation holds for the blk nexus too). On the
//! host: the pattern in the file, the discarded range a hole.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backends::{ExtentState, FileBackend, FileOptions};
use engine::{Lun, LunConfig, LunRegistry};
use integration::{GuestConfig, GuestEnv, GuestRun, Initramfs};
use vhost_target::{StopHandle, VhostBlkController};

mod common;

const IQN: &str = "iqn.2026-11.org.oxtarget:blk";
const DISK_SIZE: u64 = 64 << 20;
const RESIZED: u64 = 96 << 20;
const BLOCK: u64 = 64 << 10;
const SEEK_BLOCKS: u64 = 80;
const OFFSET: u64 = SEEK_BLOCKS * BLOCK; // 5 MiB
const DISCARD_OFFSET: u64 = 16 << 20;
const DISCARD_LEN: u64 = 4 << 20;
/// Sector 1: the marker the host writes over iSCSI.
const HOST_MARK: &[u8] = b"written over iscsi";
const PR_KEY: u64 = 0x0bad_cafe_f00d_0001;

fn pattern() -> Vec<u8> {
    let mut out = Vec::new();
    let mut x: u32 = 0x85eb_ca6b;
    for sector in 0..BLOCK / 512 {
        let mut s = format!("oxtarget vhost-blk sector {sector:04}\n").into_bytes();
        while s.len() < 512 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            s.push(x.to_le_bytes()[0]);
        }
        out.extend_from_slice(&s);
    }
    out
}

const GUEST: &str = r#"
set -e
dev=/dev/vda
i=0
while [ ! -b $dev ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
if [ ! -b $dev ]; then
    echo "no $dev; block devices: $(ls /sys/block)" >&2
    exit 1
fi
pat=$OXTARGET_IN/pattern
echo "vda-sectors $(cat /sys/block/vda/size)"
echo "serial $(cat /sys/block/vda/serial)"
echo "mq $(ls /sys/block/vda/mq | wc -l)"
echo "discard-max $(cat /sys/block/vda/queue/discard_max_bytes)"
dd if=$pat of=$dev bs=BLOCK count=1 seek=SEEK oflag=direct conv=notrunc
dd if=$dev of=/tmp/back bs=BLOCK count=1 skip=SEEK iflag=direct
echo "pattern-md5 $(md5sum <$pat | cut -d' ' -f1)"
echo "readback-md5 $(md5sum </tmp/back | cut -d' ' -f1)"
cmp $pat /tmp/back
echo "compare ok"
dd if=/dev/urandom of=/tmp/noise bs=65536 count=16
i=0
while [ $i -lt 4 ]; do
    dd if=/tmp/noise of=$dev bs=1048576 count=1 seek=$((DISCARD_MIB + i)) oflag=direct conv=notrunc
    i=$((i + 1))
done
if blkdiscard -o DISCARD_OFFSET -l DISCARD_LEN $dev; then
    echo "discard ok"
else
    echo "discard failed"
fi
# Tell the host (sector 0), then wait at most 120 s for the new size.
old=$(cat /sys/block/vda/size)
printf '%-512s' "guest-step1" >/tmp/mark
dd if=/tmp/mark of=$dev bs=512 count=1 oflag=direct conv=notrunc
i=0
while [ "$(cat /sys/block/vda/size)" = "$old" ] && [ $i -lt 1200 ]; do
    sleep 0.1
    i=$((i + 1))
done
echo "resized-sectors $(cat /sys/block/vda/size)"
echo "host-mark $(dd if=$dev bs=512 count=1 skip=1 iflag=direct 2>/dev/null | tr -d '\000')"
# Under the iSCSI initiator's WRITE EXCLUSIVE reservation. (conv=fsync: a
# write that went through the page cache reports its error at the fsync.)
if dd if=/tmp/mark of=$dev bs=512 count=1 seek=2 oflag=direct conv=notrunc,fsync 2>/dev/null; then
    echo "reserved-write ok"
else
    echo "reserved-write refused"
fi
"#;

fn script() -> String {
    GUEST
        .replace("BLOCK", &BLOCK.to_string())
        .replace("SEEK", &SEEK_BLOCKS.to_string())
        .replace("DISCARD_MIB", &(DISCARD_OFFSET >> 20).to_string())
        .replace("DISCARD_OFFSET", &DISCARD_OFFSET.to_string())
        .replace("DISCARD_LEN", &DISCARD_LEN.to_string())
}

/// A thin file LUN of DISK_SIZE bytes opened with O_DIRECT.
fn file_lun(dir: &Path) -> (Arc<Lun>, std::path::PathBuf) {
    let image = dir.join("blk.img");
    let backend = FileBackend::create(
        &image,
        DISK_SIZE,
        FileOptions {
            direct: true,
            ..Default::default()
        },
    )
    .expect("file backend");
    let mut uuid = *b"vhost-blk-guest!";
    uuid[6] = (uuid[6] & 0x0f) | 0x40;
    let lun = Lun::new(LunConfig::new("blk0", uuid), Arc::new(backend)).expect("lun");
    assert!(lun.config.thin);
    (lun, image)
}

/// The iscsi crate's test initiator on LUN 0; commands that report a unit
/// attention (power on, capacity changed) are sent again.
struct Initiator(iscsi::initiator::Initiator);

impl Initiator {
    fn login(addr: SocketAddr) -> Self {
        let mut cfg = iscsi::initiator::InitiatorConfig::new("iqn.2026-11.org.oxtarget:pr", IQN);
        cfg.timeout = Duration::from_secs(30);
        Initiator(iscsi::initiator::Initiator::connect(addr, cfg).expect("login"))
    }

    fn command(&mut self, cdb: &[u8], out: &[u8], in_len: usize) -> (u8, Vec<u8>) {
        for _ in 0..4 {
            let r = self.0.command(0, cdb, out, in_len).expect("command");
            let attention = r.status == 2 && r.sense.get(2).is_some_and(|k| k & 0x0f == 6);
            if !attention {
                return (r.status, r.data);
            }
        }
        panic!("unit attentions without end");
    }

    fn pr_out(&mut self, action: u8, kind: u8, key: u64, sa_key: u64) {
        let cdb = [0x5f, action, kind, 0, 0, 0, 0, 0, 24, 0];
        let mut p = [0u8; 24];
        p[0..8].copy_from_slice(&key.to_be_bytes());
        p[8..16].copy_from_slice(&sa_key.to_be_bytes());
        let (status, _) = self.command(&cdb, &p, 0);
        assert_eq!(status, 0, "PERSISTENT RESERVE OUT {action}");
    }
}

fn rw16(opcode: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = opcode;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// What the host side did while the guest waited.
#[derive(Debug, Default)]
struct HostSide {
    /// The LUN's bounce copies before the first iSCSI command (iSCSI's pooled
    /// buffers may need them; the guest's pages must not).
    bounces_before_iscsi: u64,
    iscsi_read: Vec<u8>,
    resized: bool,
}

/// Waits (at most 200 s) for the guest's mark in sector 0 of the image, then
/// acts over iSCSI and resizes.
fn host_side(image: &Path, lun: &Arc<Lun>, addr: SocketAddr) -> HostSide {
    let deadline = Instant::now() + Duration::from_secs(200);
    loop {
        let mut b = [0u8; 11];
        let seen = File::open(image)
            .and_then(|mut f| f.read_exact(&mut b))
            .is_ok()
            && &b == b"guest-step1";
        if seen {
            break;
        }
        if Instant::now() > deadline {
            return HostSide::default();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let bounces_before_iscsi = lun.stats.bounce_copies.load(Ordering::Relaxed);
    let mut ini = Initiator::login(addr);
    let blocks = u32::try_from(BLOCK / 512).expect("blocks");
    let (status, iscsi_read) = ini.command(
        &rw16(0x88, OFFSET / 512, blocks),
        &[],
        usize::try_from(BLOCK).expect("len"),
    );
    assert_eq!(status, 0, "READ(16) over iSCSI");
    ini.pr_out(0, 0, 0, PR_KEY); // REGISTER
    ini.pr_out(1, 1, PR_KEY, 0); // RESERVE, WRITE EXCLUSIVE
    let mut mark = vec![0u8; 512];
    mark[..HOST_MARK.len()].copy_from_slice(HOST_MARK);
    let (status, _) = ini.command(&rw16(0x8a, 1, 1), &mark, 0);
    assert_eq!(status, 0, "WRITE(16) over iSCSI under its own reservation");
    lun.resize(RESIZED).expect("resize");
    HostSide {
        bounces_before_iscsi,
        iscsi_read,
        resized: true,
    }
}

fn boot(env: &GuestEnv, initramfs: &Path, sock: &Path, pattern: &Path) -> GuestRun {
    let config = GuestConfig::new(initramfs, script())
        .cpus(2)
        .fw_cfg_file("pattern", pattern)
        .arg("-chardev")
        .arg(format!(
            "socket,id=blk0,path={}",
            sock.display().to_string().replace(',', ",,")
        ))
        .arg("-device")
        .arg("vhost-user-blk-pci,chardev=blk0,num-queues=2")
        .timeout(Duration::from_secs(300));
    let run = env
        .run(&config)
        .and_then(|run| run.check())
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "guest ran in {:.1} s ({:?}); results:\n{}",
        run.elapsed.as_secs_f64(),
        env.accel,
        run.results
    );
    run
}

fn stop(
    stop: StopHandle,
    server: std::thread::JoinHandle<Result<(), vhost_target::ControllerError>>,
) {
    stop.stop();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server.is_finished() {
        assert!(Instant::now() < deadline, "the controller did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    server
        .join()
        .expect("controller thread")
        .expect("controller served");
}

#[test]
fn guest_uses_a_vhost_user_blk_disk_shared_with_iscsi() {
    let Some(env) = GuestEnv::require() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let (lun, image) = file_lun(dir.path());
    let registry = LunRegistry::new();
    registry.add(lun.clone());
    let sock = dir.path().join("blk.sock");
    let controller = Arc::new(
        VhostBlkController::new("guest-blk", &sock, lun.clone(), registry.clone(), 2)
            .expect("controller"),
    );
    let stop_handle = controller.stop_handle();
    let serving = {
        let c = controller.clone();
        std::thread::spawn(move || c.serve())
    };
    common::wait_for_socket(&sock);
    let server = common::iscsi_server(IQN, &lun, registry, |c| c.workers = 1);
    let addr = server.local_addrs()[0];

    let pattern = pattern();
    let pattern_file = dir.path().join("pattern");
    std::fs::write(&pattern_file, &pattern).expect("pattern file");
    let initramfs = Initramfs::standard()
        .build(env)
        .unwrap_or_else(|e| panic!("building the initramfs: {e}"));

    let host = {
        let (image, lun) = (image.clone(), lun.clone());
        std::thread::spawn(move || host_side(&image, &lun, addr))
    };
    let run = boot(env, &initramfs, &sock, &pattern_file);
    let host = host.join().expect("host side");

    // Identity and geometry as the guest saw them.
    assert_eq!(
        run.field("vda-sectors"),
        Some((DISK_SIZE / 512).to_string().as_str())
    );
    let serial = &lun.config.serial[..20];
    assert_eq!(run.field("serial"), Some(serial));
    assert_eq!(run.field("mq"), Some("2"), "two queues in the guest");

    // The guest's direct write, read back by the guest, in the file, and over
    // iSCSI while the guest ran.
    let written = run.field("pattern-md5").expect("pattern-md5");
    assert_eq!(Some(written), run.field("readback-md5"));
    assert!(run.lines().any(|l| l == "compare ok"));
    let mut file = File::open(&image).expect("image");
    let mut got = vec![0u8; pattern.len()];
    file.seek(SeekFrom::Start(OFFSET)).unwrap();
    file.read_exact(&mut got).unwrap();
    assert!(got == pattern, "the image holds the pattern at {OFFSET}");
    assert!(
        host.resized,
        "the host never saw the guest's mark: {host:?}"
    );
    assert!(host.iscsi_read == pattern, "iSCSI reads the guest's bytes");

    // The discard punched a hole in the file.
    let discard_max: u64 = run
        .field("discard-max")
        .and_then(|s| s.parse().ok())
        .expect("discard-max line");
    assert!(discard_max > 0, "the guest sees DISCARD");
    assert!(
        run.lines().any(|l| l == "discard ok"),
        "blkdiscard succeeded"
    );
    let extent = lun
        .backend
        .block_status(DISCARD_OFFSET, DISCARD_LEN)
        .expect("block status");
    assert_eq!(extent.state, ExtentState::Deallocated, "{extent:?}");
    assert!(
        extent.offset <= DISCARD_OFFSET
            && extent.offset + extent.len >= DISCARD_OFFSET + DISCARD_LEN,
        "the whole range is a hole: {extent:?}"
    );

    // The resize reached the guest; the iSCSI marker too; the reservation
    // refused the guest's write.
    assert_eq!(
        run.field("resized-sectors"),
        Some((RESIZED / 512).to_string().as_str())
    );
    assert!(controller.config_changes() >= 1);
    assert_eq!(
        run.field("host-mark"),
        Some(std::str::from_utf8(HOST_MARK).unwrap())
    );
    assert!(
        run.lines().any(|l| l == "reserved-write refused"),
        "the guest's write under the reservation failed"
    );
    let mut third = [0u8; 11];
    file.seek(SeekFrom::Start(1024)).unwrap();
    file.read_exact(&mut third).unwrap();
    assert_ne!(&third, b"guest-step1", "the refused write did not land");
    assert!(lun.stats.errors.load(Ordering::Relaxed) >= 1);

    // The guest's reads and writes went between the file and guest memory
    // directly.
    assert_eq!(host.bounces_before_iscsi, 0);
    drop(server);
    stop(stop_handle, serving);
    assert!(controller.connections() >= 1);
}
