//! A throwaway one-node Ceph cluster for the RBD tests and benchmark, through
//! `integration/ceph/cluster.sh`: one mon, one OSD, pool `rbd`, everything on
//! 127.0.0.1 and under one temporary directory.
//!
//! [`Cluster::start`] runs `cluster.sh start DIR --owner-pid <this process>` and
//! reads `DIR/env`; dropping the [`Cluster`] runs `cluster.sh stop DIR` and then
//! makes sure, by the PIDs the script recorded in `DIR/pids/`, that no daemon
//! outlives the test, also when the test panicked (and the script's watcher
//! stops the cluster if the process is killed). Every command here runs under a
//! time limit.
//!
//! ```no_run
//! use integration::ceph::{Cluster, Store};
//! let Some(cluster) = Cluster::require(Store::Memstore) else { return }; // skipped
//! cluster.create_image("img", 64 << 20).unwrap();
//! let bytes = cluster.export("img").unwrap();
//! assert_eq!(bytes.len(), 64 << 20);
//! ```

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The script that builds and stops clusters.
pub const CLUSTER_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/ceph/cluster.sh");

/// What a missing Ceph says.
pub const CEPH_HINT: &str = "install ceph-mon ceph-osd ceph-common librbd-dev \
     (or set OXTARGET_SKIP_CEPH=1 to skip the RBD tests)";

/// How long `cluster.sh start` may take: its own waits are bounded at 90 s
/// each (mon, OSD, pool I/O); a cluster usually comes up in 10 to 15 s.
const START_LIMIT: Duration = Duration::from_secs(300);
/// `stop`, `stop-osd`, `start-osd`.
const OP_LIMIT: Duration = Duration::from_secs(180);
/// One `rbd` or `rados` command.
const CLIENT_LIMIT: Duration = Duration::from_secs(120);

/// Where the OSD keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// In the OSD's RAM (fast to start; lost when the OSD stops).
    Memstore,
    /// On a sparse 4 GiB file in the cluster directory (survives an OSD restart).
    Bluestore,
}

/// What went wrong with the cluster or a Ceph client command.
#[derive(Debug, thiserror::Error)]
pub enum CephError {
    /// A Ceph program is not installed.
    #[error("{0} not found: {CEPH_HINT}")]
    Missing(String),
    /// A command could not be started or its output not read.
    #[error("{context}: {source}")]
    Io {
        /// The command or file.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A command exited with an error.
    #[error("`{command}` failed ({status}):\n{output}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its stdout and stderr (the tail).
        output: String,
    },
    /// A command ran past its time limit and was killed.
    #[error("`{command}` did not finish within {limit:?}:\n{output}")]
    Timeout {
        /// The command line.
        command: String,
        /// The limit.
        limit: Duration,
        /// What it printed until then (the tail).
        output: String,
    },
    /// `DIR/env` lacks a key the tests need.
    #[error("{path}: no {key} line")]
    BadEnv {
        /// The env file.
        path: PathBuf,
        /// The missing key.
        key: &'static str,
    },
}

/// The output of a finished command: stdout, then stderr.
struct Output {
    success: bool,
    status: String,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

fn tail(s: &str, n: usize) -> String {
    let mut at = s.len().saturating_sub(n);
    while !s.is_char_boundary(at) {
        at += 1;
    }
    s[at..].to_string()
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to its end or `limit`; stdout and stderr go to temporary files
/// (a pipe nobody reads would block a chatty command). On timeout the command
/// is killed by its own PID.
fn run_limited(mut cmd: Command, limit: Duration) -> Result<Output, CephError> {
    use std::io::Seek;
    let line = describe(&cmd);
    let io = |source| CephError::Io {
        context: line.clone(),
        source,
    };
    let mut out = tempfile::tempfile().map_err(io)?;
    let mut err = tempfile::tempfile().map_err(io)?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone().map_err(io)?))
        .stderr(Stdio::from(err.try_clone().map_err(io)?))
        .spawn()
        .map_err(io)?;
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().map_err(io)? {
            break Some(s);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    out.rewind().map_err(io)?;
    out.read_to_end(&mut stdout).map_err(io)?;
    err.rewind().map_err(io)?;
    err.read_to_end(&mut stderr).map_err(io)?;
    match status {
        Some(s) => Ok(Output {
            success: s.success(),
            status: s.to_string(),
            stdout,
            stderr,
        }),
        None => Err(CephError::Timeout {
            command: line,
            limit,
            output: tail(
                &(String::from_utf8_lossy(&stdout).into_owned()
                    + &String::from_utf8_lossy(&stderr)),
                4000,
            ),
        }),
    }
}

/// Runs `cmd` and insists on success; its stdout.
fn run_ok(cmd: Command, limit: Duration) -> Result<Vec<u8>, CephError> {
    let line = describe(&cmd);
    let out = run_limited(cmd, limit)?;
    if out.success {
        Ok(out.stdout)
    } else {
        Err(CephError::Failed {
            command: line,
            status: out.status,
            output: tail(
                &(String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr)),
                4000,
            ),
        })
    }
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// The programs `cluster.sh` and the helpers here run.
const TOOLS: &[&str] = &[
    "ceph",
    "ceph-mon",
    "ceph-osd",
    "monmaptool",
    "ceph-authtool",
    "rados",
    "rbd",
];

/// A running one-node cluster in a temporary directory of its own. Dropping it
/// stops both daemons and deletes the directory (`OXTARGET_KEEP_CEPH=1` keeps
/// the directory, with the daemons' logs).
pub struct Cluster {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    env: HashMap<String, String>,
    store: Store,
}

impl Cluster {
    /// None (and a line saying "skipped") when `OXTARGET_SKIP_CEPH=1`; panics
    /// with the install hint when Ceph is not installed, and with the script's
    /// output when the cluster does not come up.
    pub fn require(store: Store) -> Option<Cluster> {
        if std::env::var("OXTARGET_SKIP_CEPH").as_deref() == Ok("1") {
            eprintln!("OXTARGET_SKIP_CEPH=1: skipped");
            return None;
        }
        Some(Self::start(store).unwrap_or_else(|e| panic!("starting a Ceph cluster: {e}")))
    }

    /// Starts a cluster; an error if Ceph is not installed or it does not come up.
    pub fn start(store: Store) -> Result<Cluster, CephError> {
        if let Some(t) = TOOLS.iter().find(|t| !on_path(t)) {
            return Err(CephError::Missing((*t).to_string()));
        }
        let dir = tempfile::Builder::new()
            .prefix("oxtarget-ceph-")
            .tempdir()
            .map_err(|source| CephError::Io {
                context: "a temporary directory for the cluster".into(),
                source,
            })?;
        let path = dir.path().to_path_buf();
        let mut cluster = Cluster {
            dir: Some(dir),
            path: path.clone(),
            env: HashMap::new(),
            store,
        };
        // From here on a failure drops `cluster`, which stops whatever started.
        let mut cmd = Command::new("bash");
        cmd.arg(CLUSTER_SH).arg("start").arg(&path);
        // A watcher stops the cluster if this process dies without dropping it
        // (a test killed by a signal or a timeout).
        cmd.arg("--owner-pid").arg(std::process::id().to_string());
        if store == Store::Bluestore {
            cmd.arg("--bluestore");
        }
        if let Err(e) = run_ok(cmd, START_LIMIT) {
            return Err(cluster.with_logs(e));
        }
        let env_path = path.join("env");
        let text = std::fs::read_to_string(&env_path).map_err(|source| CephError::Io {
            context: env_path.display().to_string(),
            source,
        })?;
        cluster.env = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        for key in ["CEPH_CONF", "CEPH_KEYRING", "CEPH_ID", "CEPH_POOL"] {
            if !cluster.env.contains_key(key) {
                return Err(CephError::BadEnv {
                    path: env_path,
                    key,
                });
            }
        }
        Ok(cluster)
    }

    /// Adds the tail of the daemons' logs to a start failure.
    fn with_logs(&self, e: CephError) -> CephError {
        let mut logs = String::new();
        for f in ["mon.a.log", "osd.0.log", "osd.0.out"] {
            if let Ok(t) = std::fs::read_to_string(self.path.join("log").join(f)) {
                logs.push_str(&format!("--- {f}\n{}\n", tail(&t, 1500)));
            }
        }
        if logs.is_empty() {
            return e;
        }
        CephError::Failed {
            command: "cluster.sh start".into(),
            status: e.to_string(),
            output: logs,
        }
    }

    fn env(&self, key: &str) -> &str {
        self.env.get(key).map(String::as_str).unwrap_or_default()
    }

    /// The cluster's directory.
    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// `DIR/ceph.conf`.
    pub fn conf(&self) -> PathBuf {
        PathBuf::from(self.env("CEPH_CONF"))
    }

    /// `DIR/keyring` (holds client.admin's key).
    pub fn keyring(&self) -> PathBuf {
        PathBuf::from(self.env("CEPH_KEYRING"))
    }

    /// The client id, without `client.`.
    pub fn client_id(&self) -> &str {
        self.env("CEPH_ID")
    }

    /// The RBD pool.
    pub fn pool(&self) -> &str {
        self.env("CEPH_POOL")
    }

    /// Where the OSD keeps its data.
    pub fn store(&self) -> Store {
        self.store
    }

    /// An `rbd` command against this cluster.
    pub fn rbd_command(&self) -> Command {
        let mut c = Command::new("rbd");
        c.arg("--conf")
            .arg(self.conf())
            .arg("--keyring")
            .arg(self.keyring())
            .arg("--id")
            .arg(self.client_id());
        c
    }

    /// Runs `rbd ARGS` (bounded); its stdout.
    pub fn rbd(&self, args: &[&str]) -> Result<String, CephError> {
        let mut c = self.rbd_command();
        c.args(args);
        run_ok(c, CLIENT_LIMIT).map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    /// Runs `rbd ARGS` with a limit of its own; its stdout.
    pub fn rbd_limited(&self, args: &[&str], limit: Duration) -> Result<String, CephError> {
        let mut c = self.rbd_command();
        c.args(args);
        run_ok(c, limit).map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    /// `pool/image`.
    pub fn spec(&self, image: &str) -> String {
        format!("{}/{image}", self.pool())
    }

    /// Creates an image of `bytes` (a multiple of 1 MiB is safest).
    pub fn create_image(&self, image: &str, bytes: u64) -> Result<(), CephError> {
        self.rbd(&["create", "--size", &format!("{bytes}B"), &self.spec(image)])
            .map(|_| ())
    }

    /// The whole image, as `rbd export` reads it (a separate librbd client).
    pub fn export(&self, image: &str) -> Result<Vec<u8>, CephError> {
        let file = tempfile::NamedTempFile::new_in(&self.path).map_err(|source| CephError::Io {
            context: "a temporary file for rbd export".into(),
            source,
        })?;
        let out = file.path().display().to_string();
        // `rbd export` refuses to overwrite a file.
        std::fs::remove_file(file.path()).map_err(|source| CephError::Io {
            context: out.clone(),
            source,
        })?;
        self.rbd(&["export", "--no-progress", &self.spec(image), &out])?;
        let bytes = std::fs::read(&out).map_err(|source| CephError::Io {
            context: out.clone(),
            source,
        });
        let _ = std::fs::remove_file(&out);
        bytes
    }

    /// Stops the OSD; returns once the mon counts it down.
    pub fn stop_osd(&self) -> Result<(), CephError> {
        self.script("stop-osd")
    }

    /// Starts the OSD again; returns once the pool takes I/O.
    pub fn start_osd(&self) -> Result<(), CephError> {
        self.script("start-osd")
    }

    fn script(&self, verb: &str) -> Result<(), CephError> {
        let mut c = Command::new("bash");
        c.arg(CLUSTER_SH).arg(verb).arg(&self.path);
        run_ok(c, OP_LIMIT).map(|_| ())
    }

    /// The PIDs `cluster.sh` recorded (mon, OSD) that are still alive and
    /// still Ceph daemons.
    fn live_pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for name in ["mon", "osd"] {
            let file = self.path.join("pids").join(format!("{name}.pid"));
            let Some(pid) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
                .filter(|p| *p > 1)
            else {
                continue;
            };
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.starts_with("ceph-") {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut c = Command::new("bash");
        c.arg(CLUSTER_SH).arg("stop").arg(&self.path);
        if let Err(e) = run_limited(c, OP_LIMIT) {
            eprintln!("cluster.sh stop: {e}");
        }
        // Whatever the script left running, by the PIDs it recorded.
        let left = self.live_pids();
        for pid in &left {
            eprintln!("ceph daemon {pid} still running after cluster.sh stop: SIGKILL");
            // SAFETY: kill takes no pointers; the PID is a Ceph daemon this
            // cluster's script started (checked through /proc/PID/comm).
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        let start = Instant::now();
        while !self.live_pids().is_empty() && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if std::env::var("OXTARGET_KEEP_CEPH").as_deref() == Ok("1") {
            if let Some(d) = self.dir.take() {
                eprintln!("keeping the cluster directory {}", d.keep().display());
            }
        }
    }
}
