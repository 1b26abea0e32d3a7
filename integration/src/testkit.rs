//! Small helpers the end-to-end tests share: whether a peer's tool is
//! installed, running it with a time limit, and test data.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Whether `tool` is on PATH (said on stderr when it is not).
pub fn have(tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
    if !found {
        eprintln!("{tool} not installed");
    }
    found
}

/// Runs `tool` with a time limit (killed by its PID past it); its exit
/// success and its stdout and stderr as bytes (libiscsi prints binary
/// designators raw).
pub fn run_bytes(tool: &str, args: &[&str], limit: Duration) -> (bool, Vec<u8>) {
    let mut child = Command::new(tool)
        .args(args)
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {tool}: {e}"));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if start.elapsed() > limit {
            // Only the child we started.
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().expect("output");
    let mut bytes = out.stdout;
    bytes.extend_from_slice(&out.stderr);
    match status {
        Some(s) => (s.success(), bytes),
        None => {
            let mut b = format!("{tool} timed out after {limit:?}\n").into_bytes();
            b.extend_from_slice(&bytes);
            (false, b)
        }
    }
}

/// `run_bytes` with the output as text.
pub fn run(tool: &str, args: &[&str], limit: Duration) -> (bool, String) {
    let (ok, b) = run_bytes(tool, args, limit);
    (ok, String::from_utf8_lossy(&b).into_owned())
}

/// `len` bytes of xorshift noise from `seed`: data no two tests (or seeds)
/// share, the same on every run.
pub fn noise(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x.to_le_bytes()[1]
        })
        .collect()
}
