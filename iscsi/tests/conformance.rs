//! libiscsi's conformance suite (`iscsi-test-cu`, Debian's libiscsi-bin) against
//! the server, whole, on three LUN setups: the default thin-provisioned RAM LUN,
//! a removable one and a read-only one. Each setup gets its own server on a free
//! port and a fresh LUN (persistent reservation tests leave state behind); the
//! three run at once, since most of the suite's time is its own sleeps.
//!
//! The suite runs with data loss (`-d`) and SANITIZE (`-S`) allowed and a second
//! initiator name (`-I`); on the read-only LUN see `Setup::applies` for `-d`.
//! Every suite but MultipathIO runs on one URL: given a
//! second URL, libiscsi's two-initiator tests take the second path as their
//! second initiator, and Sanitize.Reservations then leaves its RESERVE(6) held
//! by that path for the rest of the run. MultipathIO runs after, on two URLs to
//! the same LU (two sessions with different ISIDs: two I_T nexuses).
//!
//! Running and scoring the suite (skips counted apart from passes, the
//! per-test results checked against CUnit's own summary) is
//! `integration::libiscsi_suite`, shared with the RBD suite test. The test
//! fails if any test fails, if the results do not add up, or if the suite does
//! not finish in time. Without `iscsi-test-cu` installed it says so and passes.

mod common;

use std::time::{Duration, Instant};

use integration::libiscsi_suite::{self as suite, SuiteReport};

/// One run of `iscsi-test-cu` may take this long at most (the default LUN's takes
/// about five minutes, most of it the suite's own sleeps).
const RUN_LIMIT: Duration = Duration::from_secs(25 * 60);

/// LUN size: enough for every test's ranges (WRITE SAME of 65535 blocks).
const LUN_BYTES: u64 = 64 << 20;

/// How long a SANITIZE of the whole LUN takes (see `lun_config`).
const SANITIZE_SECS: u64 = 8;

const INIT1: &str = "iqn.2026-11.org.oxtarget:conf-a";
const INIT2: &str = "iqn.2026-11.org.oxtarget:conf-b";

#[derive(Clone, Copy, Debug)]
enum Setup {
    Default,
    Removable,
    ReadOnly,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::Default => "default (thin RAM)",
            Setup::Removable => "removable",
            Setup::ReadOnly => "read-only",
        }
    }

    /// The LUN: the engine's defaults but for the medium kind, and a SANITIZE
    /// paced to take `SANITIZE_SECS`: a RAM LUN is sanitized in a blink
    /// otherwise, and Sanitize.Reset looks for the sanitize still running four
    /// seconds after it began.
    fn lun_config(self, c: &mut engine::LunConfig) {
        c.removable = matches!(self, Setup::Removable);
        c.read_only = matches!(self, Setup::ReadOnly);
        c.sanitize_rate = Some(LUN_BYTES / SANITIZE_SECS);
    }

    /// Whether a test applies to this setup. libiscsi's tests that write expect
    /// their writes to succeed (with `-d`; without it many of them, and the
    /// reservation tests, fail on the commands their helpers then skip): on the
    /// read-only LUN, which must refuse every write, they are not run, and the
    /// ReadOnly suite checks the refusals.
    fn applies(self, suite: &str, test: &str) -> bool {
        !(matches!(self, Setup::ReadOnly) && suite::writes_user_data(suite, test))
    }
}

fn run_setup(setup: Setup, all: &[(String, String)]) -> (SuiteReport, Duration) {
    let start = Instant::now();
    let server = common::start_custom(
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        1,
        LUN_BYTES,
        &|c| setup.lun_config(c),
        |c| {
            // Sanitize.Reset sleeps 60 s between polls without answering NOP-In
            // pings; the default window (15 s, then 30 s for the answer) drops
            // it, and libiscsi's reconnect is a new session (a new ISID, so a new
            // I_T nexus whose first command sees a unit attention): it would
            // poll for ever. 30 + 60 s of silence are tolerated here.
            c.ping_interval = Duration::from_secs(30);
            c.ping_timeout = Duration::from_secs(60);
        },
    );
    let url = format!("iscsi://{}/{}/0", server.local_addrs()[0], common::IQN);
    let report = suite::run_on(
        &url,
        all,
        |s, t| setup.applies(s, t),
        &["-d", "-S", "-i", INIT1, "-I", INIT2],
        RUN_LIMIT,
    );
    server.shutdown();
    (report, start.elapsed())
}

#[test]
fn libiscsi_conformance_suite_on_three_lun_setups() {
    if !suite::installed() {
        return;
    }
    let all = suite::list_tests().expect("test list");
    let setups = [Setup::Default, Setup::Removable, Setup::ReadOnly];
    let reports: Vec<(SuiteReport, Duration)> = std::thread::scope(|s| {
        let handles: Vec<_> = setups
            .into_iter()
            .map(|setup| {
                let all = &all;
                s.spawn(move || run_setup(setup, all))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("setup thread"))
            .collect()
    });
    let mut trouble = Vec::new();
    for (setup, (r, elapsed)) in setups.into_iter().zip(&reports) {
        let selected = all.iter().filter(|(s, t)| setup.applies(s, t)).count();
        eprintln!(
            "iscsi-test-cu on the {} LUN: {} tests ({} of {} apply), {} passed, {} skipped, \
             {} failed ({:.0?})",
            setup.name(),
            r.results.len(),
            selected,
            all.len(),
            r.passed(),
            r.skipped(),
            r.failed(),
            elapsed
        );
        trouble.extend(r.trouble(setup.name(), selected));
    }
    assert!(trouble.is_empty(), "{}", trouble.join("\n"));
}

#[test]
fn setups_select_the_tests_that_apply() {
    assert!(Setup::Default.applies("Write10", "Simple"));
    assert!(!Setup::ReadOnly.applies("Write10", "Simple"));
    assert!(!Setup::ReadOnly.applies("ProutReserve", "AccessEA"));
    assert!(Setup::ReadOnly.applies("ProutReserve", "OwnershipEA"));
    assert!(Setup::ReadOnly.applies("ReadOnly", "ReadOnlySBC"));
}
