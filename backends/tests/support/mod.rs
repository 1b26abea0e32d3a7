//! A throwaway Ceph cluster for the RBD tests (integration/ceph/cluster.sh, in a
//! directory under the temp dir), and helpers to drive an `IoChannel` by hand.
#![allow(dead_code)] // each test binary uses a different part

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use backends::{Completion, IoChannel, IoOp, RbdOptions, RbdTimeouts};
use vmm_sys_util::eventfd::EventFd;

pub const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../integration/ceph/cluster.sh"
);

pub struct Cluster {
    pub dir: PathBuf,
    pub conf: PathBuf,
    pub keyring: PathBuf,
    pub id: String,
}

/// Runs a command (each is wrapped in `timeout`, so this is bounded).
fn run_bounded(cmd: &mut Command) -> Output {
    cmd.output().expect("spawn")
}

impl Cluster {
    /// Starts a cluster (a minute or so at most; every wait in the script is
    /// bounded) and reads its env file.
    pub fn start(bluestore: bool) -> Cluster {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "oxt-rbd-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let mut cmd = Command::new("timeout");
        // The script stops the cluster if this process dies without stopping it.
        cmd.args(["300", SCRIPT, "start"])
            .arg(&dir)
            .args(["--owner-pid", &std::process::id().to_string()]);
        if bluestore {
            cmd.arg("--bluestore");
        }
        let out = run_bounded(&mut cmd);
        if !out.status.success() {
            // Stop whatever came up before failing.
            let _ = Command::new("timeout")
                .args(["120", SCRIPT, "stop"])
                .arg(&dir)
                .output();
            panic!(
                "cluster.sh start failed ({}): {}\n(needs ceph-mon ceph-osd ceph-common; logs in {})",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                dir.display()
            );
        }
        let env = std::fs::read_to_string(dir.join("env")).expect("env file");
        let get = |k: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
                .unwrap_or_else(|| panic!("{k} missing from env file"))
                .to_string()
        };
        Cluster {
            conf: PathBuf::from(get("CEPH_CONF")),
            keyring: PathBuf::from(get("CEPH_KEYRING")),
            id: get("CEPH_ID"),
            dir,
        }
    }

    /// Stops the daemons and removes the directory.
    pub fn stop(&self) {
        let out = self.script("stop");
        if out.status.success() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!(
                "cluster.sh stop failed; left {}: {}",
                self.dir.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    pub fn script(&self, sub: &str) -> Output {
        run_bounded(
            Command::new("timeout")
                .args(["300", SCRIPT, sub])
                .arg(&self.dir),
        )
    }

    /// Runs the `rbd` CLI as this cluster's client, bounded to a minute.
    pub fn rbd(&self, args: &[&str]) -> Output {
        run_bounded(
            Command::new("timeout")
                .args(["60", "rbd", "--conf"])
                .arg(&self.conf)
                .args(["--id", &self.id, "--keyring"])
                .arg(&self.keyring)
                .args(args),
        )
    }

    /// Runs `rbd`, panicking with its stderr if it fails.
    pub fn rbd_ok(&self, args: &[&str]) {
        let out = self.rbd(args);
        assert!(
            out.status.success(),
            "rbd {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn options(&self, image: &str) -> RbdOptions {
        RbdOptions {
            pool: "rbd".into(),
            image: image.into(),
            ceph_conf: Some(self.conf.clone()),
            client_id: Some(self.id.clone()),
            keyring: Some(self.keyring.clone()),
            timeouts: RbdTimeouts {
                connect: Duration::from_secs(10),
                mon_op: Duration::from_secs(10),
                osd_op: Duration::from_secs(10),
            },
            ..RbdOptions::default()
        }
    }
}

static SHARED: OnceLock<Cluster> = OnceLock::new();

extern "C" fn stop_shared() {
    if let Some(c) = SHARED.get() {
        c.stop();
    }
}

/// The test binary's one cluster (memstore), started on first use and stopped
/// when the process exits.
pub fn shared() -> &'static Cluster {
    SHARED.get_or_init(|| {
        let c = Cluster::start(false);
        // SAFETY: registers a plain extern "C" function with no arguments.
        unsafe { libc::atexit(stop_shared) };
        c
    })
}

/// A fresh image name for one test.
pub fn image_name(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{tag}-{}", N.fetch_add(1, Ordering::Relaxed))
}

pub fn iov(buf: &mut [u8]) -> libc::iovec {
    libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }
}

/// Waits (at most `limit`) on the eventfd until `n` completions have been reaped.
pub fn reap_n(ch: &mut dyn IoChannel, efd: &EventFd, n: usize, limit: Duration) -> Vec<Completion> {
    let end = Instant::now() + limit;
    let mut out = Vec::new();
    loop {
        ch.reap(&mut out);
        if out.len() >= n {
            return out;
        }
        let now = Instant::now();
        assert!(
            now < end,
            "only {} of {n} completions within {limit:?}",
            out.len()
        );
        let mut pfd = libc::pollfd {
            fd: efd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = (end - now).as_millis().min(1000) as libc::c_int;
        // SAFETY: `pfd` is one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r > 0 {
            let _ = efd.read();
        }
    }
}

/// Submits one operation and waits for its completion.
///
/// # Safety
/// The iovecs must stay valid until this returns (it waits for the completion).
pub unsafe fn run_one(
    ch: &mut dyn IoChannel,
    efd: &EventFd,
    op: IoOp,
    iovecs: &[libc::iovec],
) -> Completion {
    // SAFETY: the caller keeps the memory valid; we wait for the completion below.
    unsafe { ch.submit(op, iovecs, 42) }.expect("submit");
    let mut c = reap_n(ch, efd, 1, Duration::from_secs(120));
    assert_eq!(c.len(), 1);
    c.pop().unwrap()
}

/// Reads `buf.len()` bytes at `offset` into `buf` and waits for the completion.
pub fn read_at(ch: &mut dyn IoChannel, efd: &EventFd, offset: u64, buf: &mut [u8]) -> Completion {
    // SAFETY: `buf` is borrowed until run_one has reaped the completion.
    unsafe { run_one(ch, efd, IoOp::Read { offset }, &[iov(buf)]) }
}

/// Writes `buf` at `offset` (with FUA if `fua`) and waits for the completion.
pub fn write_at(
    ch: &mut dyn IoChannel,
    efd: &EventFd,
    offset: u64,
    fua: bool,
    buf: &mut [u8],
) -> Completion {
    // SAFETY: `buf` is borrowed until run_one has reaped the completion.
    unsafe { run_one(ch, efd, IoOp::Write { offset, fua }, &[iov(buf)]) }
}

/// Runs an operation that carries no data (flush, discard, write zeroes) and
/// waits for its completion.
pub fn run_no_data(ch: &mut dyn IoChannel, efd: &EventFd, op: IoOp) -> Completion {
    // SAFETY: no buffers.
    unsafe { run_one(ch, efd, op, &[]) }
}
