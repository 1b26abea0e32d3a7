//! The blk path against a real peer: QEMU's qemu-storage-daemon exporting a small
//! file as vhost-user-blk. Skipped (with a message) where it is not installed.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::blk::{self, Status};
use super::{BlkData, Device, DeviceConfig, DeviceKind, Driver, FrontendError, Job, Pattern};

const MIB: u64 = 4;

/// The daemon, killed and reaped when the test ends however it ends.
struct Qsd(Child);

impl Drop for Qsd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn qsd_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("qemu-storage-daemon"))
        .find(|p| p.is_file())
}

fn start(bin: &Path, img: &Path, sock: &Path, queues: u16) -> Qsd {
    let child = Command::new(bin)
        .arg("--blockdev")
        .arg(format!(
            "driver=file,filename={},node-name=n,cache.direct=off",
            img.display()
        ))
        .arg("--export")
        .arg(format!(
            "type=vhost-user-blk,id=e,node-name=n,addr.type=unix,addr.path={},writable=on,num-queues={queues}",
            sock.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting qemu-storage-daemon");
    let qsd = Qsd(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "qemu-storage-daemon made no socket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    qsd
}

fn connect(sock: &Path, queues: usize) -> Result<Device, FrontendError> {
    let (_, _, buffer_bytes) = Driver::memory_for(queues, 8, 4096).unwrap();
    Device::connect(
        sock,
        &DeviceConfig {
            kind: DeviceKind::Blk,
            request_queues: queues,
            queue_size: 128,
            event_idx: true,
            buffer_bytes,
        },
    )
}

#[test]
fn qemu_storage_daemon_serves_the_blk_driver() {
    let Some(bin) = qsd_binary() else {
        eprintln!("qemu-storage-daemon not installed: skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let sock = dir.path().join("blk.sock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&img)
        .unwrap();
    file.set_len(MIB << 20).unwrap();
    let _qsd = start(&bin, &img, &sock, 2);

    // More queues than the export has: refused before any ring is set up.
    assert!(matches!(connect(&sock, 3), Err(FrontendError::Backend(_))));

    let dev = connect(&sock, 2).unwrap();
    assert_eq!(dev.queues.len(), 2);
    assert_eq!(dev.backend_queues, 2);
    let c = dev.blk_config.clone().unwrap();
    assert_eq!(c.capacity, (MIB << 20) / blk::SECTOR);
    assert_eq!(c.num_queues, 2);
    let mut drv = Driver::new(dev, 0, 0, 8, 4096).unwrap();
    let (blocks, block_len) = drv.prepare().unwrap();
    assert_eq!(u64::from(block_len) * blocks, MIB << 20);

    // A write lands in the file and reads back through the device.
    let per_4k = 4096 / block_len;
    let lba = 3 * u64::from(per_4k);
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 1) as u8).collect();
    let hdr = blk::rw_req(true, lba, per_4k, block_len).unwrap();
    let (st, _) = drv.blk_request(&hdr, BlkData::Out(&pattern)).unwrap();
    assert_eq!(st, Status::Ok);
    assert!(drv.flush().unwrap(), "qemu-storage-daemon offers FLUSH");
    let mut on_disk = vec![0u8; 4096];
    file.read_exact_at(&mut on_disk, lba * u64::from(block_len))
        .unwrap();
    assert_eq!(on_disk, pattern);
    let (st, back) = drv
        .blk_request(
            &blk::rw_req(false, lba, per_4k, block_len).unwrap(),
            BlkData::In(4096),
        )
        .unwrap();
    assert_eq!(st, Status::Ok);
    assert_eq!(back, pattern);

    // Past the end: the device says so, and the status is not taken for OK.
    let (st, _) = drv
        .blk_request(
            &blk::rw_req(false, blocks, 1, block_len).unwrap(),
            BlkData::In(block_len),
        )
        .unwrap();
    assert_eq!(st, Status::IoErr);

    // A short load over both queues: every request answered OK.
    let job = Job {
        write: true,
        pattern: Pattern::Random,
        block_bytes: 4096,
        depth: 8,
        duration: Duration::from_secs(20),
        max_ios: 400,
        span_bytes: None,
        force16: false,
        seed: 7,
    };
    let r = drv.run(&job, blocks, block_len).unwrap();
    assert_eq!((r.ios, r.errors), (400, 0), "{:?}", r.error_details);
    let r = drv
        .run(
            &Job {
                write: false,
                pattern: Pattern::Sequential,
                ..job
            },
            blocks,
            block_len,
        )
        .unwrap();
    assert_eq!((r.ios, r.errors), (400, 0), "{:?}", r.error_details);
    drv.device().stop().unwrap();
}
