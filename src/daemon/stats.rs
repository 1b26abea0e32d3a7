//! Statistics as JSON (for `lun_stats`) and as Prometheus text (for the
//! `metrics` method and the optional HTTP listener).

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use engine::lun::LATENCY_BUCKETS;
use engine::Lun;
use serde_json::{json, Value};

use super::Daemon;

/// One LUN's counters.
pub fn lun_stats_json(name: &str, lun: &Lun) -> Value {
    let s = &lun.stats;
    let buckets: Vec<Value> = s
        .latency_us
        .iter()
        .enumerate()
        .filter(|(_, b)| b.load(Relaxed) > 0)
        .map(|(i, b)| {
            let le = if i + 1 == LATENCY_BUCKETS {
                Value::Null
            } else {
                json!(1u64 << i)
            };
            json!({"lt_us": le, "count": b.load(Relaxed)})
        })
        .collect();
    json!({
        "name": name,
        "read_ops": s.read_ops.load(Relaxed),
        "write_ops": s.write_ops.load(Relaxed),
        "other_ops": s.other_ops.load(Relaxed),
        "read_bytes": s.read_bytes.load(Relaxed),
        "write_bytes": s.write_bytes.load(Relaxed),
        "errors": s.errors.load(Relaxed),
        "aborted": s.aborted.load(Relaxed),
        "in_flight": s.in_flight.load(Relaxed),
        "bounce_copies": s.bounce_copies.load(Relaxed),
        "latency_sum_us": s.latency_sum_us.load(Relaxed),
        "latency_histogram": buckets,
    })
}

/// Label values escaped as the exposition format wants.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A metric's name, help text and how to read it from a LUN.
type Counter = (&'static str, &'static str, fn(&Lun) -> u64);

/// Every metric in Prometheus' text exposition format (version 0.0.4).
pub fn prometheus(d: &Daemon) -> String {
    let luns = d.registry().all();
    let mut out = String::new();
    let counters: [Counter; 9] = [
        (
            "oxtarget_lun_read_ops_total",
            "Commands that read the medium.",
            |l| l.stats.read_ops.load(Relaxed),
        ),
        (
            "oxtarget_lun_write_ops_total",
            "Commands that wrote the medium.",
            |l| l.stats.write_ops.load(Relaxed),
        ),
        ("oxtarget_lun_other_ops_total", "Other commands.", |l| {
            l.stats.other_ops.load(Relaxed)
        }),
        ("oxtarget_lun_read_bytes_total", "Bytes read.", |l| {
            l.stats.read_bytes.load(Relaxed)
        }),
        ("oxtarget_lun_write_bytes_total", "Bytes written.", |l| {
            l.stats.write_bytes.load(Relaxed)
        }),
        (
            "oxtarget_lun_errors_total",
            "Commands that ended in an error status.",
            |l| l.stats.errors.load(Relaxed),
        ),
        ("oxtarget_lun_aborted_total", "Commands aborted.", |l| {
            l.stats.aborted.load(Relaxed)
        }),
        (
            "oxtarget_lun_bounce_copies_total",
            "I/Os that needed an aligned bounce copy.",
            |l| l.stats.bounce_copies.load(Relaxed),
        ),
        ("oxtarget_lun_in_flight", "Commands in flight.", |l| {
            l.stats.in_flight.load(Relaxed)
        }),
    ];
    for (name, help, get) in counters {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for l in &luns {
            let _ = writeln!(
                out,
                "{name}{{lun=\"{}\"}} {}",
                label(&l.config.name),
                get(l)
            );
        }
    }
    let h = "oxtarget_lun_latency_seconds";
    let _ = writeln!(out, "# HELP {h} Command latency.\n# TYPE {h} histogram");
    for l in &luns {
        let n = label(&l.config.name);
        let mut cum = 0u64;
        for (i, b) in l.stats.latency_us.iter().enumerate() {
            cum += b.load(Relaxed);
            if i + 1 < LATENCY_BUCKETS {
                let le = (1u64 << i) as f64 / 1e6;
                let _ = writeln!(out, "{h}_bucket{{lun=\"{n}\",le=\"{le}\"}} {cum}");
            }
        }
        let _ = writeln!(out, "{h}_bucket{{lun=\"{n}\",le=\"+Inf\"}} {cum}");
        let sum = l.stats.latency_sum_us.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "{h}_sum{{lun=\"{n}\"}} {sum}\n{h}_count{{lun=\"{n}\"}} {cum}"
        );
    }
    let s = "oxtarget_iscsi_sessions";
    let _ = writeln!(
        out,
        "# HELP {s} Logged-in iSCSI sessions.\n# TYPE {s} gauge"
    );
    let _ = writeln!(out, "{s} {}", d.iscsi().sessions());
    out
}
