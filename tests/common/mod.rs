//! What the daemon's tests (daemon_cli, daemon_rbd, daemon_guest) share: the
//! `oxtarget` process they start, and the CLI they drive it with.

// Each test crate compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_oxtarget");
/// How long the daemon may take to start or to stop.
pub const LIMIT: Duration = Duration::from_secs(60);

/// A daemon process this test started, stopped by its PID when dropped (its
/// log's tail printed if the test is failing).
pub struct DaemonProc {
    pub child: Option<Child>,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl DaemonProc {
    /// `oxtarget serve --config <config>`, once its CLI answers on `socket`.
    pub fn start(config: &Path, socket: &Path, log: &Path) -> DaemonProc {
        let mut d = DaemonProc::spawn_serve(config, socket, log);
        d.wait_ready();
        d
    }

    /// `oxtarget serve --config <config>`, without waiting for it.
    pub fn spawn_serve(config: &Path, socket: &Path, log: &Path) -> DaemonProc {
        let args = [
            OsStr::new("serve"),
            OsStr::new("--config"),
            config.as_os_str(),
        ];
        DaemonProc::spawn(args, socket, log)
    }

    /// `oxtarget <args>` with its output in `log`, without waiting for it.
    pub fn spawn<I, S>(args: I, socket: &Path, log: &Path) -> DaemonProc
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let out = std::fs::File::create(log).expect("log");
        let child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("start oxtarget");
        DaemonProc {
            child: Some(child),
            socket: socket.to_path_buf(),
            log: log.to_path_buf(),
        }
    }

    /// Waits (bounded by `LIMIT`) until the CLI answers on the socket.
    pub fn wait_ready(&mut self) {
        let start = Instant::now();
        while cli_raw(&self.socket, &["lun", "list"]).0 != Some(0) {
            assert!(self.running(), "daemon exited: {}", self.log_text());
            assert!(
                start.elapsed() < LIMIT,
                "daemon did not start: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGTERM and a bounded wait for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill takes no pointers; the pid is our own child's.
        unsafe { libc::kill(pid_of(&child), libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Some(s) = child.try_wait().expect("wait") {
                return s;
            }
            if start.elapsed() > LIMIT {
                let _ = child.kill();
                let _ = child.wait();
                panic!("daemon ignored SIGTERM: {}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log_text();
            let mut at = log.len().saturating_sub(4000);
            while !log.is_char_boundary(at) {
                at += 1;
            }
            eprintln!("--- the daemon's log (tail):\n{}", &log[at..]);
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn pid_of(c: &Child) -> i32 {
    i32::try_from(c.id()).expect("pid")
}

/// Runs the CLI (bounded by the CLI's own socket timeout): exit code, stdout,
/// stderr.
pub fn cli_raw(socket: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run the CLI");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the CLI and insists on success: its stdout.
pub fn cli(socket: &Path, args: &[&str]) -> String {
    let (code, out, err) = cli_raw(socket, args);
    assert_eq!(code, Some(0), "oxtarget {args:?}: {out}{err}");
    out
}

/// Runs the CLI with --json and insists on success.
pub fn cli_json(socket: &Path, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    serde_json::from_str(&cli(socket, &a)).expect("JSON output")
}

/// The first listening portal of the first iSCSI target.
pub fn portal(socket: &Path) -> SocketAddr {
    let t = cli_json(socket, &["iscsi", "target", "list"]);
    t[0]["listening"][0]
        .as_str()
        .and_then(|a| a.parse().ok())
        .expect("a listening portal")
}

/// A loopback port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
