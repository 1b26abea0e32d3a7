//! Running Debian's initiator tools from the tests: present or not, and with
//! a time limit.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Whether `tool` is on the PATH; says so when it is not (the test then passes
/// without running it).
pub fn have(tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
    if !found {
        eprintln!("{tool} not installed: skipped");
    }
    found
}

/// Runs `tool` with a time limit; its exit success and its output.
pub fn run(tool: &str, args: &[&str], limit: Duration) -> (bool, String) {
    let mut child = Command::new(tool)
        .args(args)
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if start.elapsed() > limit {
            // Only the child we started, by its pid.
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().expect("output");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    match status {
        Some(s) => (s.success(), text),
        None => (false, format!("{tool} timed out after {limit:?}\n{text}")),
    }
}
