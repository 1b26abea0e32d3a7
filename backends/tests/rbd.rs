//! The RBD backend against a real one-node Ceph cluster (memstore), shared by the
//! tests of this binary. Needs ceph-mon, ceph-osd, ceph-common and librbd-dev:
//! `cargo test -p oxtarget-backends --features rbd --test rbd`.

mod support;

use std::time::Duration;

use backends::{
    Backend, BackendError, BackendSpec, ExtentState, IoErrorKind, IoOp, RbdBackend, RbdTimeouts,
};
use support::{image_name, iov, read_at, reap_n, run_no_data, run_one, shared, write_at};
use vmm_sys_util::eventfd::EventFd;

const MIB: u64 = 1 << 20;

fn new_image(tag: &str, size_mib: u64) -> String {
    let c = shared();
    let name = image_name(tag);
    c.rbd_ok(&[
        "create",
        "--size",
        &format!("{size_mib}M"),
        &format!("rbd/{name}"),
    ]);
    name
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn open_reports_size_and_capabilities() {
    let name = new_image("size", 64);
    let b = RbdBackend::open(&shared().options(&name)).unwrap();
    assert_eq!(b.size(), 64 * MIB);
    assert_eq!(b.size_cached(), 64 * MIB);
    assert_eq!(b.describe(), format!("rbd:rbd/{name}"));
    let caps = b.capabilities();
    assert!(caps.discard && caps.discard_zeroes && caps.write_zeroes && caps.flush);
    assert!(!caps.read_only && caps.block_status);
    assert_eq!(caps.optimal_transfer, 4 << 20, "default object size");
    assert!(caps.max_transfer >= 1 << 20);
    // A new image holds no data; past the end is an error, not a panic.
    assert_eq!(
        b.block_status(0, 4096).unwrap().state,
        ExtentState::Deallocated
    );
    assert!(matches!(
        b.block_status(64 * MIB, 4096),
        Err(BackendError::Config(_))
    ));
    assert!(b.block_status(u64::MAX, u64::MAX).is_err());
}

/// Runs one discard, write zeroes or write of `fill` bytes and checks it worked.
fn must(ch: &mut dyn backends::IoChannel, efd: &EventFd, op: IoOp, fill: Option<(u8, usize)>) {
    let mut buf = fill.map(|(b, n)| vec![b; n]).unwrap_or_default();
    let want = buf.len();
    let v: Vec<libc::iovec> = if buf.is_empty() {
        Vec::new()
    } else {
        vec![iov(&mut buf)]
    };
    // SAFETY: `buf` outlives the call, which waits for the completion.
    let done = unsafe { run_one(ch, efd, op, &v) };
    assert_eq!(done.result, Ok(want), "{op:?}");
}

fn status(b: &RbdBackend, offset: u64) -> (u64, u64, ExtentState) {
    let e = b.block_status(offset, 512).unwrap();
    assert_eq!(e.offset, offset);
    assert!(e.len > 0 && e.offset + e.len <= b.size(), "{e:?}");
    (e.offset, e.offset + e.len, e.state)
}

#[test]
fn block_status_follows_writes_and_discards() {
    use ExtentState::{Deallocated as D, Mapped as M};
    let name = new_image("status", 64);
    let b = RbdBackend::open(&shared().options(&name)).unwrap();
    let efd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let mut ch = b.open_channel(&efd).unwrap();
    let obj = 4 * MIB;
    // Nothing written: deallocated over the whole window (8 objects).
    assert_eq!(status(&b, 0), (0, 8 * obj, D));
    assert_eq!(
        status(&b, 60 * MIB),
        (60 * MIB, 64 * MIB, D),
        "clipped at the end"
    );

    // 64 KiB inside object 1.
    let w = |offset| IoOp::Write { offset, fua: false };
    must(&mut *ch, &efd, w(obj + 8192), Some((0xa1, 64 << 10)));
    let (_, end, st) = status(&b, 0);
    assert_eq!(st, D);
    assert!(
        (obj..=obj + 8192).contains(&end),
        "hole ends where object 1's data starts: {end}"
    );
    let (_, end, st) = status(&b, obj + 8192);
    assert_eq!(st, M);
    assert!(end >= obj + 8192 + (64 << 10) && end <= 2 * obj, "{end}");

    // Objects 3 to 5 whole, and object 10.
    must(&mut *ch, &efd, w(3 * obj), Some((0xb2, 3 * obj as usize)));
    must(&mut *ch, &efd, w(10 * obj), Some((0xc3, 4096)));
    assert_eq!(
        status(&b, 3 * obj),
        (3 * obj, 6 * obj, M),
        "touching objects merge"
    );
    assert_eq!(status(&b, 4 * obj + 512), (4 * obj + 512, 6 * obj, M));

    // A discard of object 4 whole deallocates it.
    must(
        &mut *ch,
        &efd,
        IoOp::Discard {
            offset: 4 * obj,
            len: obj,
        },
        None,
    );
    assert_eq!(status(&b, 3 * obj), (3 * obj, 4 * obj, M));
    assert_eq!(status(&b, 4 * obj), (4 * obj, 5 * obj, D));
    assert_eq!(status(&b, 5 * obj), (5 * obj, 6 * obj, M));

    // Zeroes inside an object read back as zeroes but keep it allocated: mapped.
    must(
        &mut *ch,
        &efd,
        IoOp::WriteZeroes {
            offset: 3 * obj + MIB,
            len: MIB,
        },
        None,
    );
    assert_eq!(status(&b, 3 * obj + MIB), (3 * obj + MIB, 4 * obj, M));

    // An unaligned discard across objects: object 3 loses its tail (cut at 2
    // MiB), object 5 goes whole; the data after it is object 10's.
    must(
        &mut *ch,
        &efd,
        IoOp::Discard {
            offset: 3 * obj + 2 * MIB,
            len: 3 * obj - 2 * MIB,
        },
        None,
    );
    assert_eq!(status(&b, 3 * obj), (3 * obj, 3 * obj + 2 * MIB, M));
    assert_eq!(
        status(&b, 3 * obj + 2 * MIB),
        (3 * obj + 2 * MIB, 10 * obj, D)
    );
    assert_eq!(status(&b, 10 * obj), (10 * obj, 10 * obj + 4096, M));

    // The data left reads back, the rest as zeroes.
    let mut back = vec![0x55u8; obj as usize];
    let done = read_at(&mut *ch, &efd, 3 * obj, &mut back);
    assert_eq!(done.result, Ok(obj as usize));
    let mib = MIB as usize;
    assert!(back[..mib].iter().all(|&x| x == 0xb2));
    assert!(back[mib..2 * mib].iter().all(|&x| x == 0));
    assert!(back[2 * mib..].iter().all(|&x| x == 0));

    // A whole-image discard in object-aligned pieces (as the engine's BLOCK ERASE
    // cuts it) leaves nothing mapped.
    for i in 0..16 {
        must(
            &mut *ch,
            &efd,
            IoOp::Discard {
                offset: i * obj,
                len: obj,
            },
            None,
        );
    }
    assert_eq!(status(&b, 0), (0, 8 * obj, D));
    assert_eq!(status(&b, 8 * obj), (8 * obj, 16 * obj, D));
}

#[test]
fn write_read_across_iovecs_and_objects() {
    let name = new_image("rw", 16);
    let c = shared();
    let spec = BackendSpec::Rbd {
        pool: "rbd".into(),
        image: name.clone(),
        namespace: None,
        snapshot: None,
        read_only: false,
        ceph_conf: Some(c.conf.clone()),
        client_id: Some(c.id.clone()),
        keyring: Some(c.keyring.clone()),
        timeouts: RbdTimeouts::default(),
    };
    let b = backends::open(&spec).unwrap();
    let efd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let mut ch = b.open_channel(&efd).unwrap();
    // Three pieces straddling the 4 MiB object boundary.
    let off = 4 * MIB - 8192;
    let mut a = pattern(4096, 1);
    let mut bb = pattern(8192, 2);
    let mut cc = pattern(512, 3);
    let wv = [iov(&mut a), iov(&mut bb), iov(&mut cc)];
    // SAFETY: the buffers live until run_one has reaped the completion.
    let done = unsafe {
        run_one(
            &mut *ch,
            &efd,
            IoOp::Write {
                offset: off,
                fua: true,
            },
            &wv,
        )
    };
    assert_eq!(done.result, Ok(4096 + 8192 + 512));
    let done = run_no_data(&mut *ch, &efd, IoOp::Flush);
    assert_eq!(done.result, Ok(0));
    // Read back split differently, through a second channel.
    let mut ch2 = b.open_channel(&efd).unwrap();
    let mut r1 = vec![0u8; 100];
    let mut r2 = vec![0u8; 4096 + 8192 + 512 - 100];
    let rv = [iov(&mut r1), iov(&mut r2)];
    // SAFETY: as above.
    let done = unsafe { run_one(&mut *ch2, &efd, IoOp::Read { offset: off }, &rv) };
    assert_eq!(done.result, Ok(4096 + 8192 + 512));
    let mut got = r1.clone();
    got.extend_from_slice(&r2);
    let mut want = a.clone();
    want.extend_from_slice(&bb);
    want.extend_from_slice(&cc);
    assert!(got == want, "data read back differs from data written");
    assert_eq!(ch.in_flight(), 0);
    assert_eq!(ch2.in_flight(), 0);
    assert!(!ch.cancel(1));
    b.sync().unwrap();
}

#[test]
fn many_in_flight_complete_on_the_eventfd() {
    let name = new_image("qd", 16);
    let b = RbdBackend::open(&shared().options(&name)).unwrap();
    let efd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let mut ch = b.open_channel(&efd).unwrap();
    let n = 64usize;
    let mut bufs: Vec<Vec<u8>> = (0..n).map(|i| pattern(4096, i as u8)).collect();
    for (i, buf) in bufs.iter_mut().enumerate() {
        let v = [iov(buf)];
        let op = IoOp::Write {
            offset: i as u64 * 64 * 1024,
            fua: false,
        };
        // SAFETY: `bufs` outlives the completions, reaped below.
        unsafe { ch.submit(op, &v, i as u64) }.unwrap();
    }
    assert_eq!(ch.in_flight(), n);
    let done = reap_n(&mut *ch, &efd, n, Duration::from_secs(120));
    assert_eq!(ch.in_flight(), 0);
    let mut ids: Vec<u64> = done.iter().map(|c| c.user_data).collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..n as u64).collect::<Vec<_>>());
    assert!(done.iter().all(|c| c.result == Ok(4096)), "{done:?}");
    // And read them all back at once.
    let mut rbufs: Vec<Vec<u8>> = (0..n).map(|_| vec![0u8; 4096]).collect();
    for (i, buf) in rbufs.iter_mut().enumerate() {
        let v = [iov(buf)];
        // SAFETY: `rbufs` outlives the completions, reaped below.
        unsafe {
            ch.submit(
                IoOp::Read {
                    offset: i as u64 * 64 * 1024,
                },
                &v,
                i as u64,
            )
        }
        .unwrap();
    }
    let done = reap_n(&mut *ch, &efd, n, Duration::from_secs(120));
    assert!(done.iter().all(|c| c.result == Ok(4096)));
    assert!(rbufs == bufs);
}

#[test]
fn discard_and_write_zeroes_read_back_zeroes() {
    let name = new_image("zero", 16);
    let b = RbdBackend::open(&shared().options(&name)).unwrap();
    let efd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let mut ch = b.open_channel(&efd).unwrap();
    let base = 4 * MIB - 64 * 1024;
    let len = 256 * 1024usize;
    let mut data = vec![0xabu8; len];
    let done = write_at(&mut *ch, &efd, base, false, &mut data);
    assert_eq!(done.result, Ok(len));
    // Small, unaligned ranges: a discard below librbd's discard granularity must
    // still zero them.
    let (d_off, d_len) = (base + 4096, 12 * 1024u64);
    let (z_off, z_len) = (base + 100 * 1024, 72 * 1024u64); // crosses the object boundary
    let done = run_no_data(
        &mut *ch,
        &efd,
        IoOp::Discard {
            offset: d_off,
            len: d_len,
        },
    );
    assert_eq!(done.result, Ok(0));
    let done = run_no_data(
        &mut *ch,
        &efd,
        IoOp::WriteZeroes {
            offset: z_off,
            len: z_len,
        },
    );
    assert_eq!(done.result, Ok(0));
    let mut back = vec![0x55u8; len];
    let done = read_at(&mut *ch, &efd, base, &mut back);
    assert_eq!(done.result, Ok(len));
    for (i, &byte) in back.iter().enumerate() {
        let pos = base + i as u64;
        let zeroed = (d_off..d_off + d_len).contains(&pos) || (z_off..z_off + z_len).contains(&pos);
        assert_eq!(byte, if zeroed { 0 } else { 0xab }, "byte at {pos}");
    }
    // A whole object discarded reads as zeroes too.
    let done = run_no_data(
        &mut *ch,
        &efd,
        IoOp::Discard {
            offset: 0,
            len: 4 * MIB,
        },
    );
    assert_eq!(done.result, Ok(0));
    let mut back = vec![0x55u8; 64 * 1024];
    let done = read_at(&mut *ch, &efd, base, &mut back);
    assert_eq!(done.result, Ok(64 * 1024));
    assert!(back.iter().all(|&x| x == 0));
}

#[test]
fn out_of_range_io_fails_without_reaching_the_cluster() {
    let name = new_image("range", 4);
    let b = RbdBackend::open(&shared().options(&name)).unwrap();
    let efd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let mut ch = b.open_channel(&efd).unwrap();
    let mut buf = vec![0u8; 8192];
    let done = read_at(&mut *ch, &efd, 4 * MIB - 4096, &mut buf);
    assert_eq!(done.result.unwrap_err().kind, IoErrorKind::OutOfRange);
    let done = run_no_data(
        &mut *ch,
        &efd,
        IoOp::WriteZeroes {
            offset: u64::MAX - 10,
            len: 100,
        },
    );
    assert_eq!(done.result.unwrap_err().kind, IoErrorKind::OutOfRange);
}

#[test]
fn resize_own_and_by_another_client() {
    let c = shared();
    let name = new_image("resize", 8);
    let b = RbdBackend::open(&c.options(&name)).unwrap();
    let told = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t = told.clone();
    b.watch_resize(std::sync::Arc::new(move || {
        t.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }));
    b.resize(16 * MIB).unwrap();
    assert_eq!(b.size(), 16 * MIB);
    assert_eq!(b.size_cached(), 16 * MIB);
    let out = c.rbd(&["info", &format!("rbd/{name}")]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("size 16 MiB"));

    // Another client grows it: the watch notices, I/O past the old end works.
    c.rbd_ok(&["resize", "--size", "32M", &format!("rbd/{name}")]);
    let end = std::time::Instant::now() + Duration::from_secs(60);
    while b.size_cached() != 32 * MIB {
        assert!(
            std::time::Instant::now() < end,
            "size change by another client not noticed: {} events, cached {}",
            b.update_events(),
            b.size_cached()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(b.update_events() > 0);
    assert_eq!(b.size(), 32 * MIB);
    // The LUN above is told of the other client's resize (its own resize it
    // already knows of, so that one may be told or not).
    let end = std::time::Instant::now() + Duration::from_secs(60);
    while told.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(std::time::Instant::now() < end, "watch_resize not called");
        std::thread::sleep(Duration::from_millis(100));
    }
    let efd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let mut ch = b.open_channel(&efd).unwrap();
    let mut buf = pattern(4096, 9);
    let done = write_at(&mut *ch, &efd, 30 * MIB, false, &mut buf);
    assert_eq!(done.result, Ok(4096));

    // ... and shrinks it: I/O past the new end is refused.
    c.rbd_ok(&[
        "resize",
        "--allow-shrink",
        "--size",
        "8M",
        &format!("rbd/{name}"),
    ]);
    assert_eq!(b.size(), 8 * MIB);
    let done = write_at(&mut *ch, &efd, 30 * MIB, false, &mut buf);
    assert_eq!(done.result.unwrap_err().kind, IoErrorKind::OutOfRange);
}

#[test]
fn snapshot_is_read_only() {
    let c = shared();
    let name = new_image("snap", 8);
    let b = RbdBackend::open(&c.options(&name)).unwrap();
    let efd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let mut ch = b.open_channel(&efd).unwrap();
    let mut old = pattern(8192, 4);
    let done = write_at(&mut *ch, &efd, 0, false, &mut old);
    assert_eq!(done.result, Ok(8192));
    c.rbd_ok(&["snap", "create", &format!("rbd/{name}@s1")]);
    // The head moves on after the snapshot.
    let mut new = pattern(8192, 5);
    let done = write_at(&mut *ch, &efd, 0, false, &mut new);
    assert_eq!(done.result, Ok(8192));

    let mut o = c.options(&name);
    o.snapshot = Some("s1".into());
    let snap = RbdBackend::open(&o).unwrap();
    assert!(snap.capabilities().read_only);
    assert_eq!(snap.describe(), format!("rbd:rbd/{name}@s1"));
    let mut sch = snap.open_channel(&efd).unwrap();
    let mut back = vec![0u8; 8192];
    let done = read_at(&mut *sch, &efd, 0, &mut back);
    assert_eq!(done.result, Ok(8192));
    assert!(back == old, "the snapshot shows the data as it was");
    let done = write_at(&mut *sch, &efd, 0, false, &mut new);
    assert_eq!(done.result.unwrap_err().errno, libc::EROFS);
    let done = run_no_data(
        &mut *sch,
        &efd,
        IoOp::Discard {
            offset: 0,
            len: 4096,
        },
    );
    assert_eq!(done.result.unwrap_err().errno, libc::EROFS);
    assert!(snap.resize(16 * MIB).is_err());
}

#[test]
fn namespace_image_opens() {
    let c = shared();
    c.rbd_ok(&["namespace", "create", "rbd/ns1"]);
    c.rbd_ok(&["create", "--size", "4M", "rbd/ns1/inner"]);
    let mut o = c.options("inner");
    o.namespace = Some("ns1".into());
    let b = RbdBackend::open(&o).unwrap();
    assert_eq!(b.size(), 4 * MIB);
    assert_eq!(b.describe(), "rbd:rbd/ns1/inner");
    // Not visible outside its namespace.
    let e = RbdBackend::open(&c.options("inner")).unwrap_err();
    assert!(e.to_string().contains("rbd/inner"), "{e}");
}

#[test]
fn missing_image_or_pool_names_them() {
    let c = shared();
    let e = RbdBackend::open(&c.options("does-not-exist")).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("rbd/does-not-exist"), "{msg}");
    assert!(
        matches!(&e, BackendError::Rbd { source, .. } if source.raw_os_error() == Some(libc::ENOENT)),
        "{e:?}"
    );
    let mut o = c.options("img");
    o.pool = "nopool".into();
    let msg = RbdBackend::open(&o).unwrap_err().to_string();
    assert!(msg.contains("nopool/img"), "{msg}");
}

#[test]
fn unreachable_cluster_fails_naming_the_image() {
    let c = shared();
    // A ceph.conf whose monitor address nobody listens on (a port we bound and
    // closed again).
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("ceph.conf");
    std::fs::write(
        &conf,
        format!(
            "[global]\nmon host = v1:127.0.0.1:{port}\nauth client required = cephx\n\
             ms bind ipv6 = false\n"
        ),
    )
    .unwrap();
    let mut o = c.options("img");
    o.ceph_conf = Some(conf);
    o.timeouts.connect = Duration::from_secs(3);
    let e = RbdBackend::open(&o).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("rbd/img"), "{msg}");
    assert!(msg.contains("connect"), "{msg}");
}

#[test]
fn dropping_a_channel_with_io_in_flight_waits_for_it() {
    let name = new_image("drop", 16);
    let b = RbdBackend::open(&shared().options(&name)).unwrap();
    let efd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let mut bufs: Vec<Vec<u8>> = (0..32).map(|i| pattern(64 * 1024, i as u8)).collect();
    {
        let mut ch = b.open_channel(&efd).unwrap();
        for (i, buf) in bufs.iter_mut().enumerate() {
            let v = [iov(buf)];
            // SAFETY: `bufs` outlives the channel, whose drop waits for librbd.
            unsafe {
                ch.submit(
                    IoOp::Read {
                        offset: i as u64 * 128 * 1024,
                    },
                    &v,
                    i as u64,
                )
            }
            .unwrap();
        }
        // Dropped here without reaping.
    }
    drop(bufs);
    // The backend still works afterwards.
    let mut ch = b.open_channel(&efd).unwrap();
    let mut buf = vec![1u8; 4096];
    let done = read_at(&mut *ch, &efd, 0, &mut buf);
    assert_eq!(done.result, Ok(4096));
    assert!(buf.iter().all(|&x| x == 0));
}
