//! Running and scoring libiscsi's conformance suite (`iscsi-test-cu`, Debian's
//! libiscsi-bin) against a target URL. Shared by the iscsi crate's
//! conformance test (RAM LUNs) and the RBD suite test here.
//!
//! CUnit counts a test that skips (libiscsi prints `[SKIPPED]`) as passed; here
//! a test that printed `[SKIPPED]` before its verdict is counted as skipped, also
//! when it ran part of its checks. A run's results are trusted only if the
//! per-test results add up to CUnit's own summary and the suite finished in time.
//!
//! Every suite but MultipathIO runs on one URL: given a second URL, libiscsi's
//! two-initiator tests take the second path as their second initiator, and
//! Sanitize.Reservations then leaves its RESERVE(6) held by that path for the
//! rest of the run. MultipathIO runs after, on two URLs to the same LU (two
//! sessions with different ISIDs: two I_T nexuses). [`run_on`] does both.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Whether `iscsi-test-cu` is on the PATH (says so when not).
pub fn installed() -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("iscsi-test-cu").is_file()));
    if !found {
        eprintln!("iscsi-test-cu not installed: skipped");
    }
    found
}

/// Runs `iscsi-test-cu ARGS` with a time limit; its output (stdout and stderr).
pub fn run_suite(args: &[&str], limit: Duration) -> Result<String, String> {
    use std::io::{Read, Seek};
    // Output goes to a file, not a pipe: the suite writes more than a pipe holds
    // and nothing would read it until the end.
    let mut out = tempfile::tempfile().map_err(|e| format!("tempfile: {e}"))?;
    let stdout = out.try_clone().map_err(|e| format!("tempfile: {e}"))?;
    let stderr = out.try_clone().map_err(|e| format!("tempfile: {e}"))?;
    let mut child = Command::new("iscsi-test-cu")
        .args(args)
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr))
        .spawn()
        .map_err(|e| format!("spawn iscsi-test-cu: {e}"))?;
    let start = Instant::now();
    let finished = loop {
        match child.try_wait() {
            Ok(Some(_)) => break true,
            Ok(None) => {}
            Err(e) => return Err(format!("wait: {e}")),
        }
        if start.elapsed() > limit {
            // Only the child we started, by its pid.
            let _ = child.kill();
            let _ = child.wait();
            break false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    out.rewind().map_err(|e| format!("output: {e}"))?;
    let mut bytes = Vec::new();
    out.read_to_end(&mut bytes)
        .map_err(|e| format!("output: {e}"))?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    if finished {
        Ok(text)
    } else {
        Err(format!(
            "iscsi-test-cu timed out after {limit:?}\n{}",
            tail(&text, 4000)
        ))
    }
}

/// The last `n` bytes of `s` (at a character boundary).
pub fn tail(s: &str, n: usize) -> &str {
    let mut at = s.len().saturating_sub(n);
    while !s.is_char_boundary(at) {
        at += 1;
    }
    &s[at..]
}

/// One test's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Passed, with no `[SKIPPED]` line.
    Passed,
    /// With the first `[SKIPPED]` line: the reason.
    Skipped(String),
    /// With what the test printed.
    Failed(String),
}

/// One test of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestResult {
    /// `Suite.Test`.
    pub name: String,
    /// Its verdict.
    pub outcome: Outcome,
}

/// Where CUnit's verdict for a test starts in its output: the first `passed`, or
/// `FAILED` not written by libiscsi as `[FAILED]`.
fn verdict(text: &str) -> Option<(usize, bool)> {
    let passed = text.find("passed").map(|i| (i, true));
    let mut failed = None;
    let mut from = 0;
    while let Some(i) = text[from..].find("FAILED") {
        let at = from + i;
        if at == 0 || text.as_bytes()[at - 1] != b'[' {
            failed = Some((at, false));
            break;
        }
        from = at + "FAILED".len();
    }
    match (passed, failed) {
        (Some(p), Some(f)) => Some(if p.0 < f.0 { p } else { f }),
        (p, f) => p.or(f),
    }
}

/// Per-test results of a run (CUnit's basic output at libiscsi's normal log
/// level): `Suite: S` lines, then `  Test: T ...` followed by what the test
/// printed and CUnit's verdict.
pub fn parse(out: &str) -> Vec<TestResult> {
    let mut results = Vec::new();
    let mut suite = String::new();
    let mut current: Option<(String, String)> = None;
    let close = |cur: Option<(String, String)>, results: &mut Vec<TestResult>| {
        let Some((name, text)) = cur else { return };
        let outcome = match verdict(&text) {
            Some((at, true)) => {
                let before = &text[..at];
                match before.lines().find(|l| l.contains("[SKIPPED]")) {
                    Some(l) => Outcome::Skipped(l.trim().to_string()),
                    None => Outcome::Passed,
                }
            }
            _ => Outcome::Failed(text.trim().to_string()),
        };
        results.push(TestResult { name, outcome });
    };
    for line in out.lines() {
        if let Some(s) = line.strip_prefix("Suite: ") {
            close(current.take(), &mut results);
            suite = s.trim().to_string();
        } else if let Some(rest) = line.strip_prefix("  Test: ") {
            close(current.take(), &mut results);
            let (name, after) = rest.split_once(" ...").unwrap_or((rest, ""));
            current = Some((format!("{suite}.{name}"), format!("{after}\n")));
        } else if line.starts_with("Run Summary:") {
            close(current.take(), &mut results);
        } else if let Some((_, text)) = current.as_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    close(current.take(), &mut results);
    results
}

/// CUnit's own count of tests run and failed ("tests  TOTAL  RAN  PASSED
/// FAILED  INACTIVE").
pub fn cunit_summary(out: &str) -> Option<(usize, usize)> {
    let line = out.lines().find(|l| l.trim_start().starts_with("tests "))?;
    let cols: Vec<usize> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|c| c.parse().ok())
        .collect();
    Some((*cols.get(1)?, *cols.get(3)?))
}

/// Every test of the suite as (suite, test), in the suite's order.
pub fn list_tests() -> Result<Vec<(String, String)>, String> {
    let out = Command::new("iscsi-test-cu")
        .arg("-l")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("iscsi-test-cu -l: {e}"))?;
    let list =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let tests: Vec<(String, String)> = list
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ALL."))
        .filter_map(|l| l.split_once('.'))
        .map(|(s, t)| (s.to_string(), t.to_string()))
        .collect();
    if tests.len() < 200 {
        return Err(format!("iscsi-test-cu -l lists too few tests:\n{list}"));
    }
    Ok(tests)
}

/// A `-t` argument naming the tests of `all` that `wanted` selects: whole
/// suites where every test is wanted, single tests otherwise. iscsi-test-cu
/// adds a comma-separated list from its end, so the list is reversed to run in
/// the suite's own order (MultipathIO.CompareAndWrite expects block 256 zero, as
/// Sanitize.Reset leaves it, not as GetLBAStatus.UnmapSingle does).
pub fn selection(all: &[(String, String)], wanted: impl Fn(&str, &str) -> bool) -> String {
    let mut names: Vec<String> = Vec::new();
    let mut suites: Vec<&str> = all.iter().map(|(s, _)| s.as_str()).collect();
    suites.dedup();
    for suite in suites {
        let tests: Vec<&str> = all
            .iter()
            .filter(|(s, _)| s == suite)
            .map(|(_, t)| t.as_str())
            .collect();
        let keep: Vec<&str> = tests.iter().copied().filter(|t| wanted(suite, t)).collect();
        if keep.is_empty() {
            continue;
        }
        if keep.len() == tests.len() {
            names.push(format!("ALL.{suite}"));
        } else {
            names.extend(keep.iter().map(|t| format!("ALL.{suite}.{t}")));
        }
    }
    names.reverse();
    names.join(",")
}

/// Suites every test of which writes user data and expects that to succeed.
const WRITING_SUITES: &[&str] = &[
    "CompareAndWrite",
    "ExtendedCopy",
    "OrWrite",
    "Sanitize",
    "Unmap",
    "Write10",
    "Write12",
    "Write16",
    "WriteAtomic16",
    "WriteSame10",
    "WriteSame16",
    "WriteVerify10",
    "WriteVerify12",
    "WriteVerify16",
    // Data-Out sequencing of a write the LUN accepts.
    "iSCSIdatasn",
];

/// Single tests of other suites that write user data and expect that to
/// succeed.
const WRITING_TESTS: &[&str] = &[
    "GetLBAStatus.UnmapSingle",
    "MultipathIO.Simple",
    "MultipathIO.CompareAndWrite",
    "MultipathIO.CompareAndWriteAsync",
    "ProutReserve.AccessEA",
    "ProutReserve.AccessWE",
    "ProutReserve.AccessEARO",
    "ProutReserve.AccessWERO",
    "ProutReserve.AccessEAAR",
    "ProutReserve.AccessWEAR",
    "ReceiveCopyResults.CopyStatus",
    "iSCSIResiduals.Write10Residuals",
    "iSCSIResiduals.Write12Residuals",
    "iSCSIResiduals.Write16Residuals",
    "iSCSIResiduals.WriteVerify10Residuals",
    "iSCSIResiduals.WriteVerify12Residuals",
    "iSCSIResiduals.WriteVerify16Residuals",
    "iSCSITMF.AbortTaskSimpleAsync",
    "iSCSITMF.LUNResetSimpleAsync",
];

/// Whether a test writes user data and expects the write to succeed (libiscsi's
/// tests that write do; a read-only LUN does not run them).
pub fn writes_user_data(suite: &str, test: &str) -> bool {
    WRITING_SUITES.contains(&suite) || WRITING_TESTS.contains(&format!("{suite}.{test}").as_str())
}

/// The outcome of the suite on one URL.
#[derive(Debug, Default)]
pub struct SuiteReport {
    /// Every test that ran, in order.
    pub results: Vec<TestResult>,
    /// Why the results cannot be trusted (timeout, summary mismatch).
    pub problems: Vec<String>,
}

impl SuiteReport {
    fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.results.iter().filter(|r| f(&r.outcome)).count()
    }

    /// Tests that passed with no `[SKIPPED]` line.
    pub fn passed(&self) -> usize {
        self.count(|o| *o == Outcome::Passed)
    }

    /// Tests that skipped (all or part of their checks).
    pub fn skipped(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Skipped(_)))
    }

    /// Tests that failed.
    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Failed(_)))
    }

    /// Prints every skip and failure under `name`; what is wrong (failed tests,
    /// a count of tests other than `selected`, the problems), empty if nothing.
    pub fn trouble(&self, name: &str, selected: usize) -> Vec<String> {
        let mut trouble = Vec::new();
        for t in &self.results {
            match &t.outcome {
                Outcome::Skipped(why) => eprintln!("  skipped {}: {why}", t.name),
                Outcome::Failed(out) => {
                    eprintln!("  FAILED {}:\n{}", t.name, tail(out, 2000));
                    trouble.push(format!("{name}: {} failed", t.name));
                }
                Outcome::Passed => {}
            }
        }
        // Every selected test ran, once.
        if self.results.len() != selected {
            trouble.push(format!(
                "{name}: {} of the {selected} selected tests ran",
                self.results.len()
            ));
        }
        trouble.extend(self.problems.iter().cloned());
        trouble
    }
}

/// Runs the tests of `all` that `applies` selects on `url`: every suite but
/// MultipathIO on that one URL, then MultipathIO on it twice (two sessions).
/// `args` go first (e.g. `-d -S -i INIT1 -I INIT2`); each run may take `limit`.
pub fn run_on(
    url: &str,
    all: &[(String, String)],
    applies: impl Fn(&str, &str) -> bool,
    args: &[&str],
    limit: Duration,
) -> SuiteReport {
    let mp = |s: &str| s == "MultipathIO";
    let runs = [
        (selection(all, |s, t| !mp(s) && applies(s, t)), false),
        (selection(all, |s, t| mp(s) && applies(s, t)), true),
    ];
    let mut report = SuiteReport::default();
    for (tests, two_paths) in runs {
        if tests.is_empty() {
            continue;
        }
        let mut a: Vec<&str> = args.to_vec();
        a.extend(["-t", &tests, url]);
        if two_paths {
            a.push(url);
        }
        match run_suite(&a, limit) {
            Ok(out) => {
                let got = parse(&out);
                let failed = got
                    .iter()
                    .filter(|r| matches!(r.outcome, Outcome::Failed(_)))
                    .count();
                match cunit_summary(&out) {
                    Some((ran, f)) if ran == got.len() && f == failed && ran > 0 => {}
                    s => report.problems.push(format!(
                        "parsed {} tests ({failed} failed), CUnit says {s:?}\n{}",
                        got.len(),
                        tail(&out, 3000)
                    )),
                }
                report.results.extend(got);
            }
            Err(e) => report.problems.push(e),
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parser_reads_cunit_output() {
        let out = "\
Suite: CompareAndWrite
  Test: Simple ...passed
  Test: InvalidDataOutSize ...    [SKIPPED] LBPPB < 2. Skipping test
passed
Suite: Reserve6
  Test: LUNReset ...passed    [FAILED] PRIN command: failed with sense.
  Test: Reset ...    [FAILED] TESTUNITREADY failed with wrong sense.
FAILED
    1. test_sanitize_reset.c:97  - CU_ASSERT_EQUAL(_r,0)
Suite: iSCSIdatasn
  Test: iSCSIDataSnInvalid ...    [FAILED] WRITE10 command failed with status 251658241
passed

Run Summary:    Type  Total    Ran Passed Failed Inactive
              suites      3      3    n/a      0        0
               tests      5      5      4      1        0
";
        let r = parse(out);
        let names: Vec<&str> = r.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "CompareAndWrite.Simple",
                "CompareAndWrite.InvalidDataOutSize",
                "Reserve6.LUNReset",
                "Reserve6.Reset",
                "iSCSIdatasn.iSCSIDataSnInvalid"
            ]
        );
        assert_eq!(r[0].outcome, Outcome::Passed);
        assert_eq!(
            r[1].outcome,
            Outcome::Skipped("[SKIPPED] LBPPB < 2. Skipping test".into())
        );
        // Teardown output after the verdict does not count against the test.
        assert_eq!(r[2].outcome, Outcome::Passed);
        assert!(
            matches!(&r[3].outcome, Outcome::Failed(t) if t.contains("test_sanitize_reset.c:97"))
        );
        // libiscsi's own "[FAILED]" lines of a negative test are not the verdict.
        assert_eq!(r[4].outcome, Outcome::Passed);
        assert_eq!(cunit_summary(out), Some((5, 1)));
        let report = SuiteReport {
            results: r,
            problems: Vec::new(),
        };
        assert_eq!(
            (report.passed(), report.skipped(), report.failed()),
            (3, 1, 1)
        );
        assert_eq!(report.trouble("x", 5), ["x: Reserve6.Reset failed"]);
        assert_eq!(
            report.trouble("x", 6).len(),
            2,
            "a selected test did not run"
        );
    }

    #[test]
    fn selection_names_whole_suites_and_runs_in_suite_order() {
        let all: Vec<(String, String)> = [("A", "x"), ("A", "y"), ("B", "x"), ("C", "z")]
            .iter()
            .map(|(s, t)| (s.to_string(), t.to_string()))
            .collect();
        assert_eq!(selection(&all, |_, _| true), "ALL.C,ALL.B,ALL.A");
        assert_eq!(
            selection(&all, |s, t| !(s == "A" && t == "y") && s != "C"),
            "ALL.B,ALL.A.x"
        );
        assert_eq!(selection(&all, |_, _| false), "");
        assert!(writes_user_data("Write10", "Simple"));
        assert!(writes_user_data("ProutReserve", "AccessEA"));
        assert!(!writes_user_data("ProutReserve", "OwnershipEA"));
        assert!(!writes_user_data("ReadOnly", "ReadOnlySBC"));
    }
}
