//! JSON-RPC 2.0 on a Unix socket: one request (or batch) per line, one
//! response per line. The method table below is the reference: each entry's
//! text is what `rpc_get_methods` returns and what docs/rpc.md explains.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ChapParams, Daemon, OpError};

/// A request line longer than this is refused (and the connection closed).
pub const MAX_REQUEST: usize = 1 << 20;
/// Clients connected at once; more are refused.
pub const MAX_CLIENTS: usize = 32;
/// Requests in one batch at most.
pub const MAX_BATCH: usize = 256;

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

impl RpcError {
    fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
        }
    }
}

impl From<OpError> for RpcError {
    fn from(e: OpError) -> Self {
        RpcError::new(e.code(), e.to_string())
    }
}

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;

type Handler = fn(&Daemon, Value) -> Result<Value, RpcError>;

/// One method: its name, a line on what it does and its parameters.
pub struct Method {
    pub name: &'static str,
    pub help: &'static str,
    pub params: &'static str,
    handler: Handler,
}

fn params<T: DeserializeOwned>(v: Value) -> Result<T, RpcError> {
    let v = if v.is_null() { json!({}) } else { v };
    serde_json::from_value(v).map_err(|e| RpcError::new(INVALID_PARAMS, e.to_string()))
}

fn no_params(v: Value) -> Result<(), RpcError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Empty {}
    params::<Empty>(v).map(|_| ())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Name {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OptName {
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LunDelete {
    name: String,
    #[serde(default)]
    force: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Resize {
    name: String,
    size: crate::config::Size,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Portal {
    target: String,
    portal: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Acl {
    target: String,
    initiator: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Chap {
    target: String,
    #[serde(flatten)]
    chap: ChapFields,
}

#[derive(Deserialize, Default)]
struct ChapFields {
    user: Option<String>,
    secret: Option<String>,
    mutual_user: Option<String>,
    mutual_secret: Option<String>,
    required: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Map {
    target: String,
    id: u64,
    lun: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Unmap {
    target: String,
    id: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Attach {
    controller: String,
    id: u64,
    lun: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Detach {
    controller: String,
    id: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Sessions {
    target: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DropSession {
    target: String,
    tsih: u16,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Save {
    path: Option<PathBuf>,
}

/// Every method.
pub const METHODS: &[Method] = &[
    Method {
        name: "rpc_get_methods",
        help: "Lists every method with its parameters.",
        params: "",
        handler: |_, p| {
            no_params(p)?;
            Ok(Value::Array(
                METHODS
                    .iter()
                    .map(|m| json!({"name": m.name, "help": m.help, "params": m.params}))
                    .collect(),
            ))
        },
    },
    Method {
        name: "backend_create",
        help: "Creates a backend (a [[backend]] of the config file).",
        params: "name, type (ram|null|file|blockdev|rbd), size, path, direct, read_only, engine (uring|threads); rbd: pool, image, namespace, snapshot, ceph_conf, client_id, keyring, op_timeout",
        handler: |d, p| Ok(d.create_backend_json(&p)?),
    },
    Method {
        name: "backend_delete",
        help: "Deletes a backend no LUN uses.",
        params: "name",
        handler: |d, p| Ok(d.delete_backend(&params::<Name>(p)?.name)?),
    },
    Method {
        name: "backend_list",
        help: "Lists the backends.",
        params: "",
        handler: |d, p| {
            no_params(p)?;
            Ok(d.list_backends())
        },
    },
    Method {
        name: "lun_create",
        help: "Creates a LUN on a backend (a [[lun]] of the config file); a missing uuid is generated.",
        params: "name, backend, uuid, serial, vendor, product, revision, block_size, read_only, removable, thin, write_cache",
        handler: |d, p| Ok(d.create_lun_json(&p)?),
    },
    Method {
        name: "lun_delete",
        help: "Deletes a LUN; a LUN mapped by a target or controller is refused unless force.",
        params: "name, force",
        handler: |d, p| {
            let p: LunDelete = params(p)?;
            Ok(d.delete_lun(&p.name, p.force)?)
        },
    },
    Method {
        name: "lun_resize",
        help: "Changes a LUN's capacity; initiators get CAPACITY DATA HAS CHANGED.",
        params: "name, size (bytes or \"10G\")",
        handler: |d, p| {
            let p: Resize = params(p)?;
            Ok(d.resize_lun(&p.name, p.size.0)?)
        },
    },
    Method {
        name: "lun_list",
        help: "Lists the LUNs with their identity (NAA, serial) and size.",
        params: "",
        handler: |d, p| {
            no_params(p)?;
            Ok(d.list_luns())
        },
    },
    Method {
        name: "lun_stats",
        help: "Per-LUN statistics: operations, bytes, errors, aborts, in flight, bounce copies, latency histogram.",
        params: "name (optional: all LUNs)",
        handler: |d, p| Ok(d.lun_stats(params::<OptName>(p)?.name.as_deref())?),
    },
    Method {
        name: "iscsi_target_create",
        help: "Creates an iSCSI target (an [[iscsi_target]] of the config file) and starts listening on its portals.",
        params: "name, alias, portals, portal_group_tag, acl, chap_user, chap_secret, chap_mutual_user, chap_mutual_secret, chap_required, luns [{id, lun}]",
        handler: |d, p| Ok(d.create_iscsi_target_json(&p)?),
    },
    Method {
        name: "iscsi_target_delete",
        help: "Deletes an iSCSI target; its sessions are closed.",
        params: "name",
        handler: |d, p| Ok(d.delete_iscsi_target(&params::<Name>(p)?.name)?),
    },
    Method {
        name: "iscsi_target_list",
        help: "Lists the iSCSI targets (secrets hidden) with the addresses they listen on.",
        params: "",
        handler: |d, p| {
            no_params(p)?;
            Ok(d.list_iscsi_targets())
        },
    },
    Method {
        name: "iscsi_portal_add",
        help: "Adds a portal (ADDRESS:PORT) to a target.",
        params: "target, portal",
        handler: |d, p| {
            let p: Portal = params(p)?;
            Ok(d.iscsi_portal(&p.target, &p.portal, true)?)
        },
    },
    Method {
        name: "iscsi_portal_remove",
        help: "Removes a portal from a target; sessions already logged in stay.",
        params: "target, portal",
        handler: |d, p| {
            let p: Portal = params(p)?;
            Ok(d.iscsi_portal(&p.target, &p.portal, false)?)
        },
    },
    Method {
        name: "iscsi_acl_add",
        help: "Allows an initiator name to log in to a target (an empty ACL allows everyone).",
        params: "target, initiator",
        handler: |d, p| {
            let p: Acl = params(p)?;
            Ok(d.iscsi_acl(&p.target, &p.initiator, true)?)
        },
    },
    Method {
        name: "iscsi_acl_remove",
        help: "Removes an initiator name from a target's ACL.",
        params: "target, initiator",
        handler: |d, p| {
            let p: Acl = params(p)?;
            Ok(d.iscsi_acl(&p.target, &p.initiator, false)?)
        },
    },
    Method {
        name: "iscsi_chap_set",
        help: "Sets a target's CHAP secrets (no user: CHAP off); required defaults to on when a secret is set.",
        params: "target, user, secret, mutual_user, mutual_secret, required",
        handler: |d, p| {
            let p: Chap = params(p)?;
            let c = p.chap;
            Ok(d.iscsi_chap(
                &p.target,
                &ChapParams {
                    user: c.user,
                    secret: c.secret,
                    mutual_user: c.mutual_user,
                    mutual_secret: c.mutual_secret,
                    required: c.required,
                },
            )?)
        },
    },
    Method {
        name: "iscsi_lun_map",
        help: "Maps a LUN at a LUN number of a target; its initiators get REPORTED LUNS DATA HAS CHANGED.",
        params: "target, id, lun",
        handler: |d, p| {
            let p: Map = params(p)?;
            Ok(d.iscsi_map(&p.target, p.id, Some(&p.lun))?)
        },
    },
    Method {
        name: "iscsi_lun_unmap",
        help: "Removes a LUN number from a target.",
        params: "target, id",
        handler: |d, p| {
            let p: Unmap = params(p)?;
            Ok(d.iscsi_map(&p.target, p.id, None)?)
        },
    },
    Method {
        name: "iscsi_session_list",
        help: "Lists logged-in iSCSI sessions.",
        params: "target (optional)",
        handler: |d, p| Ok(d.iscsi_sessions(params::<Sessions>(p)?.target.as_deref())),
    },
    Method {
        name: "iscsi_session_drop",
        help: "Closes a session (its commands are aborted).",
        params: "target, tsih",
        handler: |d, p| {
            let p: DropSession = params(p)?;
            Ok(d.iscsi_drop_session(&p.target, p.tsih)?)
        },
    },
    Method {
        name: "vhost_scsi_create",
        help: "Creates a vhost-user-scsi controller (a [[vhost_scsi]] of the config file) listening on its socket.",
        params: "name, socket, queues, luns [{id, lun}]",
        handler: |d, p| Ok(d.create_vhost_scsi_json(&p)?),
    },
    Method {
        name: "vhost_scsi_delete",
        help: "Stops a vhost-user-scsi controller and removes its socket.",
        params: "name",
        handler: |d, p| Ok(d.delete_vhost_scsi(&params::<Name>(p)?.name)?),
    },
    Method {
        name: "vhost_scsi_list",
        help: "Lists the vhost-user-scsi controllers.",
        params: "",
        handler: |d, p| {
            no_params(p)?;
            Ok(d.list_vhost())
        },
    },
    Method {
        name: "vhost_scsi_lun_attach",
        help: "Attaches a LUN to a running controller at a LUN number (0-255).",
        params: "controller, id, lun",
        handler: |d, p| {
            let p: Attach = params(p)?;
            Ok(d.vhost_map(&p.controller, p.id, Some(&p.lun))?)
        },
    },
    Method {
        name: "vhost_scsi_lun_detach",
        help: "Detaches a LUN number from a running controller.",
        params: "controller, id",
        handler: |d, p| {
            let p: Detach = params(p)?;
            Ok(d.vhost_map(&p.controller, p.id, None)?)
        },
    },
    Method {
        name: "vhost_blk_create",
        help: "Creates a vhost-user-blk device (a [[vhost_blk]] of the config file): one LUN as a virtio-blk disk for QEMU or cloud-hypervisor.",
        params: "name, socket, lun, queues",
        handler: |d, p| Ok(d.create_vhost_blk_json(&p)?),
    },
    Method {
        name: "vhost_blk_delete",
        help: "Stops a vhost-user-blk device and removes its socket.",
        params: "name",
        handler: |d, p| Ok(d.delete_vhost_blk(&params::<Name>(p)?.name)?),
    },
    Method {
        name: "vhost_blk_list",
        help: "Lists the vhost-user-blk devices.",
        params: "",
        handler: |d, p| {
            no_params(p)?;
            Ok(d.list_vhost_blk())
        },
    },
    Method {
        name: "srp_target_create",
        help: "Creates an SRP target port (an [[srp_target]] of the config file); the SRP listener ([srp] listen) starts with the first one.",
        params: "name, id_ext, ioc_guid, luns [{id, lun}]",
        handler: |d, p| Ok(d.create_srp_target_json(&p)?),
    },
    Method {
        name: "srp_target_delete",
        help: "Deletes an SRP target; its channels are disconnected.",
        params: "name",
        handler: |d, p| Ok(d.delete_srp_target(&params::<Name>(p)?.name)?),
    },
    Method {
        name: "srp_target_list",
        help: "Lists the SRP targets with their channel counts.",
        params: "",
        handler: |d, p| {
            no_params(p)?;
            Ok(d.list_srp_targets())
        },
    },
    Method {
        name: "srp_lun_map",
        help: "Maps a LUN at a LUN number of an SRP target; its initiators get REPORTED LUNS DATA HAS CHANGED.",
        params: "target, id, lun",
        handler: |d, p| {
            let p: Map = params(p)?;
            Ok(d.srp_map(&p.target, p.id, Some(&p.lun))?)
        },
    },
    Method {
        name: "srp_lun_unmap",
        help: "Removes a LUN number from an SRP target.",
        params: "target, id",
        handler: |d, p| {
            let p: Unmap = params(p)?;
            Ok(d.srp_map(&p.target, p.id, None)?)
        },
    },
    Method {
        name: "srp_session_list",
        help: "Lists SRP logins: each I_T nexus with its channels.",
        params: "target (optional)",
        handler: |d, p| Ok(d.srp_sessions(params::<Sessions>(p)?.target.as_deref())),
    },
    Method {
        name: "get_config",
        help: "The running configuration, in the config file's structure (secrets included).",
        params: "",
        handler: |d, p| {
            no_params(p)?;
            serde_json::to_value(d.running_config())
                .map_err(|e| RpcError::new(-32000, e.to_string()))
        },
    },
    Method {
        name: "save_config",
        help: "Writes the running configuration atomically to path, or to the file the daemon started from.",
        params: "path (optional)",
        handler: |d, p| Ok(d.save_config(params::<Save>(p)?.path.as_deref())?),
    },
    Method {
        name: "metrics",
        help: "Every metric in Prometheus text format (a string).",
        params: "",
        handler: |d, p| {
            no_params(p)?;
            Ok(Value::String(super::stats::prometheus(d)))
        },
    },
];

/// Answers one parsed request; `None` for a notification (no id).
fn call(d: &Daemon, req: Value) -> Option<Value> {
    let id = req.get("id").cloned();
    let reply = |r: Result<Value, RpcError>| {
        let id = id.clone().unwrap_or(Value::Null);
        match r {
            Ok(v) => json!({"jsonrpc": "2.0", "result": v, "id": id}),
            Err(e) => {
                json!({"jsonrpc": "2.0", "error": {"code": e.code, "message": e.message}, "id": id})
            }
        }
    };
    let Some(obj) = req.as_object() else {
        return Some(reply(Err(RpcError::new(
            INVALID_REQUEST,
            "a request is an object",
        ))));
    };
    if obj.get("jsonrpc") != Some(&json!("2.0")) {
        return Some(reply(Err(RpcError::new(
            INVALID_REQUEST,
            "jsonrpc must be \"2.0\"",
        ))));
    }
    if id
        .as_ref()
        .is_some_and(|i| !(i.is_string() || i.is_number() || i.is_null()))
    {
        return Some(reply(Err(RpcError::new(
            INVALID_REQUEST,
            "id must be a string or a number",
        ))));
    }
    let Some(name) = obj.get("method").and_then(Value::as_str) else {
        return Some(reply(Err(RpcError::new(
            INVALID_REQUEST,
            "method must be a string",
        ))));
    };
    let p = obj.get("params").cloned().unwrap_or(Value::Null);
    if !(p.is_object() || p.is_null()) {
        return Some(reply(Err(RpcError::new(
            INVALID_PARAMS,
            "params must be an object",
        ))));
    }
    let r = match METHODS.iter().find(|m| m.name == name) {
        Some(m) => (m.handler)(d, p),
        None => Err(RpcError::new(
            METHOD_NOT_FOUND,
            format!("no method {name:?}; see rpc_get_methods"),
        )),
    };
    if let Err(e) = &r {
        tracing::debug!(method = name, code = e.code, "rpc error: {}", e.message);
    }
    id.is_some().then(|| reply(r))
}

/// Answers one request line (a request or a batch). `None`: nothing to send.
pub fn handle_line(d: &Daemon, line: &[u8]) -> Option<Value> {
    let parse_error = |m: String| {
        Some(json!({"jsonrpc": "2.0", "error": {"code": PARSE_ERROR, "message": m}, "id": null}))
    };
    let v: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => return parse_error(format!("not JSON: {e}")),
    };
    match v {
        Value::Array(reqs) => {
            if reqs.is_empty() || reqs.len() > MAX_BATCH {
                return Some(json!({"jsonrpc": "2.0", "error": {"code": INVALID_REQUEST,
                    "message": format!("a batch holds 1 to {MAX_BATCH} requests")}, "id": null}));
            }
            let out: Vec<Value> = reqs.into_iter().filter_map(|r| call(d, r)).collect();
            (!out.is_empty()).then_some(Value::Array(out))
        }
        other => call(d, other),
    }
}

/// The RPC socket's listener thread.
pub struct RpcServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RpcServer {
    /// Listens on `path` (mode 0600; a stale socket file is replaced).
    pub fn start(d: Arc<Daemon>, path: &Path) -> std::io::Result<RpcServer> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        if path.exists() {
            // Refuse to steal the socket of a daemon that is still running.
            if UnixStream::connect(path).is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!("{} is served by a running daemon", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("rpc-accept".into())
            .spawn(move || accept_loop(&d, &listener, &s))?;
        Ok(RpcServer {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(d: &Arc<Daemon>, listener: &UnixListener, stop: &AtomicBool) {
    let clients = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(mut conn) = conn else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        if clients.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
            clients.fetch_sub(1, Ordering::AcqRel);
            let _ = conn.write_all(
                b"{\"jsonrpc\":\"2.0\",\"error\":{\"code\":-32000,\"message\":\"too many clients\"},\"id\":null}\n",
            );
            continue;
        }
        let (d, c) = (d.clone(), clients.clone());
        let spawned = std::thread::Builder::new()
            .name("rpc-client".into())
            .spawn(move || {
                serve_client(&d, conn);
                c.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            clients.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn serve_client(d: &Daemon, conn: UnixStream) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(600)));
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut input = BufReader::new(conn);
    let mut line = Vec::new();
    loop {
        line.clear();
        // One byte past the limit tells an oversized line from a full one.
        let limit = u64::try_from(MAX_REQUEST + 1).unwrap_or(u64::MAX);
        match input.by_ref().take(limit).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.len() > MAX_REQUEST {
            let _ = writeln!(
                out,
                "{}",
                json!({"jsonrpc": "2.0", "error": {"code": INVALID_REQUEST,
                    "message": format!("request longer than {MAX_REQUEST} bytes")}, "id": null})
            );
            return;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if let Some(reply) = handle_line(d, &line) {
            if writeln!(out, "{reply}").is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use serde_json::{json, Value};

    use super::*;
    use crate::config;

    fn daemon() -> Arc<Daemon> {
        let cfg = config::parse("t", "").expect("empty config");
        Daemon::start(cfg, None).expect("daemon")
    }

    fn call(d: &Daemon, method: &str, params: Value) -> Value {
        let line = json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params});
        handle_line(d, line.to_string().as_bytes()).expect("a reply")
    }

    fn code(v: &Value) -> i64 {
        v["error"]["code"].as_i64().unwrap_or(0)
    }

    fn names(d: &Daemon, method: &str) -> Vec<String> {
        let v = call(d, method, json!({}));
        v["result"]
            .as_array()
            .expect("a list")
            .iter()
            .map(|o| o["name"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    #[test]
    fn envelope_errors_get_their_codes() {
        let d = daemon();
        let r = handle_line(&d, b"{not json").expect("reply");
        assert_eq!(code(&r), PARSE_ERROR);
        assert_eq!(r["id"], Value::Null);
        let r = handle_line(&d, br#"{"jsonrpc":"1.0","id":1,"method":"lun_list"}"#).expect("reply");
        assert_eq!(code(&r), INVALID_REQUEST);
        let r = handle_line(&d, br#"{"jsonrpc":"2.0","id":1,"method":5}"#).expect("reply");
        assert_eq!(code(&r), INVALID_REQUEST);
        let r = handle_line(&d, br#"{"jsonrpc":"2.0","id":{"a":1},"method":"lun_list"}"#)
            .expect("reply");
        assert_eq!(code(&r), INVALID_REQUEST);
        let r = call(&d, "no_such_method", json!({}));
        assert_eq!(code(&r), METHOD_NOT_FOUND);
        assert_eq!(r["id"], json!(7));
        let r = handle_line(
            &d,
            br#"{"jsonrpc":"2.0","id":1,"method":"lun_list","params":[1]}"#,
        )
        .expect("reply");
        assert_eq!(code(&r), INVALID_PARAMS);
        // A notification gets no reply; a batch gets one per request with an id.
        assert!(handle_line(&d, br#"{"jsonrpc":"2.0","method":"lun_list"}"#).is_none());
        let r = handle_line(
            &d,
            br#"[{"jsonrpc":"2.0","id":1,"method":"lun_list"},{"jsonrpc":"2.0","method":"x"},{"jsonrpc":"2.0","id":2,"method":"x"}]"#,
        )
        .expect("reply");
        assert_eq!(r.as_array().map(Vec::len), Some(2));
        assert_eq!(code(&r[1]), METHOD_NOT_FOUND);
        assert_eq!(
            code(&handle_line(&d, b"[]").expect("reply")),
            INVALID_REQUEST
        );
        d.stop();
    }

    #[test]
    fn rpc_get_methods_lists_every_method() {
        let d = daemon();
        let r = call(&d, "rpc_get_methods", json!({}));
        let listed: Vec<&str> = r["result"]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|m| m["name"].as_str())
            .collect();
        assert_eq!(listed.len(), METHODS.len());
        for m in METHODS {
            assert!(listed.contains(&m.name), "{}", m.name);
            assert!(!m.help.is_empty());
        }
        d.stop();
    }

    /// Bad parameters and conflicts are refused and change nothing.
    #[test]
    fn refused_calls_change_nothing() {
        let d = daemon();
        let ok = call(
            &d,
            "backend_create",
            json!({"name": "r0", "type": "ram", "size": "8M"}),
        );
        assert!(ok.get("result").is_some(), "{ok}");
        let before = call(&d, "get_config", json!({}))["result"].clone();
        for (method, params, want) in [
            (
                "backend_create",
                json!({"name": "r0", "type": "ram", "size": "8M"}),
                -32002,
            ),
            (
                "backend_create",
                json!({"name": "r1", "type": "tape", "size": "8M"}),
                INVALID_PARAMS,
            ),
            (
                "backend_create",
                json!({"name": "r1", "type": "ram"}),
                INVALID_PARAMS,
            ),
            (
                "backend_create",
                json!({"name": "r1", "type": "ram", "size": 8, "colour": 1}),
                INVALID_PARAMS,
            ),
            (
                "backend_create",
                json!({"name": "bad name", "type": "ram", "size": 4096}),
                INVALID_PARAMS,
            ),
            (
                "lun_create",
                json!({"name": "l", "backend": "nope"}),
                -32001,
            ),
            (
                "lun_create",
                json!({"name": "l", "backend": "r0", "block_size": 1000}),
                INVALID_PARAMS,
            ),
            (
                "lun_create",
                json!({"name": "l", "backend": "r0", "uuid": "xyz"}),
                INVALID_PARAMS,
            ),
            ("lun_delete", json!({"name": "nope"}), -32001),
            ("lun_resize", json!({"name": "nope", "size": "1G"}), -32001),
            ("backend_delete", json!({}), INVALID_PARAMS),
            (
                "iscsi_target_create",
                json!({"name": "not-an-iqn", "portals": ["127.0.0.1:0"]}),
                INVALID_PARAMS,
            ),
            (
                "iscsi_target_create",
                json!({"name": "iqn.2026-11.org.x:t", "portals": ["nowhere"]}),
                INVALID_PARAMS,
            ),
            (
                "iscsi_target_create",
                json!({"name": "iqn.2026-11.org.x:t", "portals": ["127.0.0.1:0"], "luns": [{"id": 0, "lun": "nope"}]}),
                -32001,
            ),
            (
                "iscsi_target_create",
                json!({"name": "iqn.2026-11.org.x:t", "portals": ["127.0.0.1:0"], "chap_user": "u", "chap_secret": "short"}),
                INVALID_PARAMS,
            ),
            (
                "vhost_scsi_create",
                json!({"name": "v", "socket": "relative.sock"}),
                INVALID_PARAMS,
            ),
            (
                "iscsi_acl_add",
                json!({"target": "iqn.2026-11.org.x:none", "initiator": "iqn.2026-11.org.x:i"}),
                -32001,
            ),
            ("save_config", json!({}), INVALID_PARAMS),
            (
                "srp_target_create",
                json!({"name": "s", "id_ext": "0xno", "ioc_guid": "0x1"}),
                INVALID_PARAMS,
            ),
            (
                "srp_target_create",
                json!({"name": "s", "id_ext": "0x1", "ioc_guid": "0x1", "luns": [{"id": 0, "lun": "nope"}]}),
                -32001,
            ),
            ("srp_target_delete", json!({"name": "s"}), -32001),
            (
                "srp_lun_map",
                json!({"target": "s", "id": 0, "lun": "r0"}),
                -32001,
            ),
        ] {
            let r = call(&d, method, params.clone());
            assert_eq!(code(&r), want, "{method} {params}: {r}");
            assert!(r["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()));
        }
        assert_eq!(call(&d, "get_config", json!({}))["result"], before);
        d.stop();
    }

    /// A mapped LUN is not deleted unless forced; forcing unmaps it first.
    #[test]
    fn deleting_a_mapped_lun_needs_force() {
        let d = daemon();
        call(
            &d,
            "backend_create",
            json!({"name": "r0", "type": "ram", "size": "8M"}),
        );
        call(&d, "lun_create", json!({"name": "l0", "backend": "r0"}));
        let t = "iqn.2026-11.org.x:t";
        let r = call(
            &d,
            "iscsi_target_create",
            json!({"name": t, "portals": ["127.0.0.1:0"], "luns": [{"id": 3, "lun": "l0"}]}),
        );
        assert!(r.get("result").is_some(), "{r}");
        assert_eq!(code(&call(&d, "lun_delete", json!({"name": "l0"}))), -32003);
        assert_eq!(
            code(&call(&d, "backend_delete", json!({"name": "r0"}))),
            -32003
        );
        let r = call(&d, "lun_delete", json!({"name": "l0", "force": true}));
        assert!(r.get("result").is_some(), "{r}");
        let targets = call(&d, "iscsi_target_list", json!({}));
        assert_eq!(targets["result"][0].get("luns"), None, "{targets}");
        assert!(call(&d, "backend_delete", json!({"name": "r0"}))
            .get("result")
            .is_some());
        d.stop();
    }

    /// Two clients creating and deleting at once: the listing is the
    /// successful creates minus the successful deletes, and the saved
    /// configuration parses back to the same state.
    #[test]
    fn concurrent_clients_leave_a_consistent_configuration() {
        let d = daemon();
        let dir = tempfile::tempdir().expect("tempdir");
        let ok = |r: &Value| r.get("result").is_some();
        let workers: Vec<_> = (0..2u32)
            .map(|w| {
                let d = d.clone();
                std::thread::spawn(move || {
                    // Net successful creates minus deletes, per name.
                    let mut net: BTreeMap<String, i64> = BTreeMap::new();
                    for i in 0..60u32 {
                        // Both clients fight over the same names.
                        let name = format!("b{}", (i * 7 + w) % 10);
                        let lun = format!("l-{name}");
                        if ok(&call(
                            &d,
                            "backend_create",
                            json!({"name": name, "type": "null", "size": "1M"}),
                        )) {
                            *net.entry(name.clone()).or_default() += 1;
                        }
                        if ok(&call(
                            &d,
                            "lun_create",
                            json!({"name": lun, "backend": name}),
                        )) {
                            *net.entry(lun).or_default() += 1;
                        }
                        if i % 3 == 2 {
                            let victim = format!("b{}", (i + w) % 10);
                            let vlun = format!("l-{victim}");
                            if ok(&call(
                                &d,
                                "lun_delete",
                                json!({"name": vlun, "force": true}),
                            )) {
                                *net.entry(vlun).or_default() -= 1;
                            }
                            if ok(&call(&d, "backend_delete", json!({"name": victim}))) {
                                *net.entry(victim).or_default() -= 1;
                            }
                        }
                    }
                    net
                })
            })
            .collect();
        let mut net: BTreeMap<String, i64> = BTreeMap::new();
        for w in workers {
            for (k, v) in w.join().expect("client") {
                *net.entry(k).or_default() += v;
            }
        }
        let backends = names(&d, "backend_list");
        let luns = names(&d, "lun_list");
        let mut expected: Vec<String> = Vec::new();
        for (k, v) in &net {
            assert!(*v == 0 || *v == 1, "{k}: net {v}");
            if *v == 1 {
                expected.push(k.clone());
            }
        }
        let mut listed: Vec<String> = backends.iter().chain(&luns).cloned().collect();
        listed.sort();
        assert_eq!(listed, expected);
        assert!(
            !backends.is_empty(),
            "the test should leave something behind"
        );
        // Every LUN's backend exists.
        let cfg = call(&d, "get_config", json!({}))["result"].clone();
        for l in cfg["lun"].as_array().into_iter().flatten() {
            let b = l["backend"].as_str().unwrap_or_default().to_string();
            assert!(backends.contains(&b), "LUN {l} on a deleted backend");
        }
        let path = dir.path().join("saved.toml");
        let r = call(&d, "save_config", json!({"path": path}));
        assert!(r.get("result").is_some(), "{r}");
        let back = config::load(&path).expect("saved config loads");
        let mut saved_backends: Vec<String> =
            back.backends.iter().map(|b| b.name.clone()).collect();
        let mut saved_luns: Vec<String> = back.luns.iter().map(|l| l.config.name.clone()).collect();
        saved_backends.sort();
        saved_luns.sort();
        assert_eq!(saved_backends, backends);
        assert_eq!(saved_luns, luns);
        // The saved file starts the same state again.
        d.stop();
        let again = Daemon::start(back, None).expect("restart");
        assert_eq!(names(&again, "backend_list"), backends);
        assert_eq!(names(&again, "lun_list"), luns);
        assert_eq!(
            call(&again, "get_config", json!({}))["result"]["lun"],
            cfg["lun"]
        );
        again.stop();
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let d = daemon();
        call(
            &d,
            "backend_create",
            json!({"name": "r0", "type": "ram", "size": "8M"}),
        );
        call(&d, "lun_create", json!({"name": "l0", "backend": "r0"}));
        let m = call(&d, "metrics", json!({}));
        let text = m["result"].as_str().expect("text");
        assert!(text.contains("# TYPE oxtarget_lun_read_ops_total counter"));
        assert!(text.contains("oxtarget_lun_read_ops_total{lun=\"l0\"} 0"));
        assert!(text.contains("oxtarget_lun_latency_seconds_bucket{lun=\"l0\",le=\"+Inf\"} 0"));
        let s = call(&d, "lun_stats", json!({"name": "l0"}));
        assert_eq!(s["result"][0]["in_flight"], json!(0));
        assert_eq!(code(&call(&d, "lun_stats", json!({"name": "zz"}))), -32001);
        d.stop();
    }
}

/// docs/rpc.md documents every method.
#[cfg(test)]
#[test]
fn every_method_is_documented() {
    let doc = include_str!("../../docs/rpc.md");
    for m in METHODS {
        assert!(doc.contains(m.name), "docs/rpc.md lacks {}", m.name);
        assert!(
            doc.contains(&format!("\"method\":\"{}\"", m.name))
                || m.name.ends_with("_remove")
                || m.name.ends_with("_unmap")
                || m.name.ends_with("_detach"),
            "docs/rpc.md has no example of {}",
            m.name
        );
    }
}
