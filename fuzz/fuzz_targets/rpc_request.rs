//! JSON-RPC requests on a live daemon: any line gets a well-formed reply (or
//! none, for a notification), never a panic. Requests that would touch the
//! host (files, block devices, sockets, non-loopback portals, saving) are
//! left out: the fuzzer must not write outside its sandbox.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use oxtarget::daemon::{rpc, Daemon};
use serde_json::Value;

fn daemon() -> &'static Arc<Daemon> {
    static D: OnceLock<Arc<Daemon>> = OnceLock::new();
    D.get_or_init(|| {
        let cfg = oxtarget::config::parse("fuzz", "").expect("empty config");
        Daemon::start(cfg, None).expect("daemon")
    })
}

/// Whether a parsed request stays inside the process.
fn harmless(v: &Value) -> bool {
    match v {
        Value::String(s) => {
            let s = s.to_ascii_lowercase();
            !(s == "file"
                || s == "blockdev"
                || s.starts_with("vhost")
                || s.starts_with("save_config")
                || (s.contains(':') && !s.starts_with("127.0.0.1:0") && !s.starts_with("iqn.")))
        }
        Value::Array(a) => a.iter().all(harmless),
        Value::Object(o) => o
            .iter()
            .all(|(k, v)| !["path", "socket", "portal", "portals"].contains(&k.as_str()) && harmless(v)),
        _ => true,
    }
}

fuzz_target!(|data: &[u8]| {
    // Bounded: a real client's line is at most rpc::MAX_REQUEST bytes.
    if data.len() > 64 * 1024 {
        return;
    }
    if let Ok(v) = serde_json::from_slice::<Value>(data) {
        if !harmless(&v) {
            return;
        }
    }
    if let Some(reply) = rpc::handle_line(daemon(), data) {
        let ok = |r: &Value| {
            r["jsonrpc"] == "2.0" && (r.get("result").is_some() != r.get("error").is_some())
        };
        match &reply {
            Value::Array(a) => assert!(a.iter().all(ok), "{reply}"),
            r => assert!(ok(r), "{reply}"),
        }
    }
});
