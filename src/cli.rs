//! The command-line client: each command is one JSON-RPC call on the daemon's
//! socket, printed as a table (or as JSON with `--json`).
//!
//! Exit codes: 0 done; 1 the daemon refused (its error is printed); 2 bad
//! usage; 3 the daemon cannot be reached.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use serde_json::{json, Map, Value};

/// Exit code: the daemon answered with an error.
pub const EXIT_REFUSED: u8 = 1;
/// Exit code: bad usage.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: no daemon on the socket.
pub const EXIT_UNREACHABLE: u8 = 3;

#[derive(Subcommand)]
pub enum Group {
    /// Backends: where LUN data lives (ram, null, file, blockdev, rbd).
    #[command(subcommand)]
    Backend(BackendCmd),
    /// LUNs: a backend with a SCSI identity.
    #[command(subcommand)]
    Lun(LunCmd),
    /// iSCSI targets, portals, ACLs, CHAP, LUN maps and sessions.
    #[command(subcommand)]
    Iscsi(IscsiCmd),
    /// vhost-user-scsi controllers for QEMU guests.
    #[command(subcommand)]
    Vhost(VhostCmd),
    /// vhost-user-blk devices (one LUN each) for QEMU and cloud-hypervisor.
    #[command(subcommand)]
    VhostBlk(VhostBlkCmd),
    /// SRP targets (SCSI RDMA Protocol, over RDMA CM), their LUN maps and logins.
    #[command(subcommand)]
    Srp(SrpCmd),
    /// The running configuration.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Prints every metric in Prometheus text format.
    Metrics,
    /// Calls any method with JSON parameters (see `oxtarget rpc rpc_get_methods`).
    Rpc {
        method: String,
        /// A JSON object.
        params: Option<String>,
    },
}

/// Where an rbd backend's image is.
#[derive(clap::Args)]
pub struct RbdArgs {
    /// RBD pool (rbd).
    #[arg(long)]
    pool: Option<String>,
    /// RBD image in the pool (rbd).
    #[arg(long)]
    image: Option<String>,
    /// RADOS namespace (rbd).
    #[arg(long)]
    namespace: Option<String>,
    /// Snapshot to export read-only (rbd).
    #[arg(long)]
    snapshot: Option<String>,
    /// The cluster's ceph.conf (rbd).
    #[arg(long)]
    ceph_conf: Option<String>,
    /// cephx client id, default admin (rbd).
    #[arg(long)]
    client_id: Option<String>,
    /// cephx keyring (rbd).
    #[arg(long)]
    keyring: Option<String>,
    /// Seconds before an operation the cluster does not answer fails (rbd).
    #[arg(long)]
    op_timeout: Option<u32>,
}

#[derive(Subcommand)]
pub enum BackendCmd {
    /// Creates a backend.
    Create {
        name: String,
        /// ram, null, file, blockdev or rbd.
        #[arg(long = "type")]
        kind: String,
        /// Size ("1G"); for a file: created with this size if missing.
        #[arg(long)]
        size: Option<String>,
        /// File or block device path.
        #[arg(long)]
        path: Option<String>,
        /// O_DIRECT (file).
        #[arg(long)]
        direct: bool,
        #[arg(long)]
        read_only: bool,
        /// uring or threads (file).
        #[arg(long)]
        engine: Option<String>,
        #[command(flatten)]
        rbd: Box<RbdArgs>,
    },
    /// Deletes a backend no LUN uses.
    Delete { name: String },
    /// Lists the backends.
    List,
}

#[derive(Subcommand)]
pub enum LunCmd {
    /// Creates a LUN on a backend.
    Create {
        name: String,
        #[arg(long)]
        backend: String,
        /// The LUN's identity (NAA id, default serial); generated if not given.
        #[arg(long)]
        uuid: Option<String>,
        #[arg(long)]
        serial: Option<String>,
        #[arg(long)]
        block_size: Option<u32>,
        #[arg(long)]
        read_only: bool,
        #[arg(long)]
        removable: bool,
        /// Report thin provisioning (UNMAP): true or false.
        #[arg(long)]
        thin: Option<bool>,
        /// Initial write cache setting: true or false.
        #[arg(long)]
        write_cache: Option<bool>,
    },
    /// Deletes a LUN (`--force`: even when mapped; it is unmapped first).
    Delete {
        name: String,
        #[arg(long)]
        force: bool,
    },
    /// Changes a LUN's capacity ("20G" or bytes).
    Resize { name: String, size: String },
    /// Lists the LUNs.
    List,
    /// Statistics of one LUN or all.
    Stats { name: Option<String> },
}

#[derive(Subcommand)]
pub enum IscsiCmd {
    /// Targets.
    #[command(subcommand)]
    Target(TargetCmd),
    /// A target's portals.
    #[command(subcommand)]
    Portal(PortalCmd),
    /// A target's ACL of initiator names.
    #[command(subcommand)]
    Acl(AclCmd),
    /// Sets a target's CHAP secrets (no --user: CHAP off).
    Chap {
        target: String,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        secret: Option<String>,
        #[arg(long)]
        mutual_user: Option<String>,
        #[arg(long)]
        mutual_secret: Option<String>,
        /// true: refuse logins without CHAP; false: allow them.
        #[arg(long)]
        required: Option<bool>,
    },
    /// A target's LUN map.
    #[command(subcommand)]
    Lun(IscsiLunCmd),
    /// Sessions.
    #[command(subcommand)]
    Session(SessionCmd),
}

#[derive(Subcommand)]
pub enum TargetCmd {
    /// Creates a target.
    Create {
        /// iqn./eui./naa. name.
        name: String,
        /// ADDRESS:PORT, repeatable.
        #[arg(long = "portal")]
        portals: Vec<String>,
        #[arg(long)]
        alias: Option<String>,
        /// Initiator names allowed (repeatable); none: everyone.
        #[arg(long = "acl")]
        acl: Vec<String>,
        /// ID=LUN, repeatable.
        #[arg(long = "lun")]
        luns: Vec<String>,
        #[arg(long)]
        chap_user: Option<String>,
        #[arg(long)]
        chap_secret: Option<String>,
    },
    /// Deletes a target (its sessions are closed).
    Delete { name: String },
    /// Lists the targets.
    List,
}

#[derive(Subcommand)]
pub enum PortalCmd {
    Add { target: String, portal: String },
    Remove { target: String, portal: String },
}

#[derive(Subcommand)]
pub enum AclCmd {
    Add { target: String, initiator: String },
    Remove { target: String, initiator: String },
}

#[derive(Subcommand)]
pub enum IscsiLunCmd {
    /// Maps LUN at number ID.
    Map {
        target: String,
        id: u64,
        lun: String,
    },
    /// Removes number ID.
    Unmap { target: String, id: u64 },
}

#[derive(Subcommand)]
pub enum SessionCmd {
    /// Lists sessions (of one target or all).
    List { target: Option<String> },
    /// Closes a session.
    Drop { target: String, tsih: u16 },
}

#[derive(Subcommand)]
pub enum VhostCmd {
    /// Creates a controller listening on a socket.
    Create {
        name: String,
        /// The Unix socket QEMU connects to (an absolute path).
        #[arg(value_name = "SOCKET")]
        listen: String,
        /// Request queues (QEMU's num_queues).
        #[arg(long)]
        queues: Option<u32>,
        /// ID=LUN, repeatable.
        #[arg(long = "lun")]
        luns: Vec<String>,
    },
    /// Stops a controller.
    Delete { name: String },
    /// Lists the controllers.
    List,
    /// Attaches a LUN to a running controller.
    Attach {
        controller: String,
        id: u64,
        lun: String,
    },
    /// Detaches a LUN number.
    Detach { controller: String, id: u64 },
}

#[derive(Subcommand)]
pub enum VhostBlkCmd {
    /// Creates a device serving LUN on a socket.
    Create {
        name: String,
        /// The Unix socket the VMM connects to (an absolute path).
        #[arg(value_name = "SOCKET")]
        listen: String,
        /// The LUN it serves.
        #[arg(long)]
        lun: String,
        /// Request queues.
        #[arg(long)]
        queues: Option<u32>,
    },
    /// Stops a device.
    Delete { name: String },
    /// Lists the devices.
    List,
}

#[derive(Subcommand)]
pub enum SrpCmd {
    /// Creates an SRP target port (initiators name it by id_ext and ioc_guid).
    Create {
        name: String,
        /// 64-bit hex, as the initiator's add_target writes it ("0x...").
        #[arg(long)]
        id_ext: String,
        /// 64-bit hex.
        #[arg(long)]
        ioc_guid: String,
        /// ID=LUN, repeatable.
        #[arg(long = "lun")]
        luns: Vec<String>,
    },
    /// Deletes a target (its channels are disconnected).
    Delete { name: String },
    /// Lists the targets.
    List,
    /// Maps LUN at number ID of a target.
    Map {
        target: String,
        id: u64,
        lun: String,
    },
    /// Removes number ID from a target.
    Unmap { target: String, id: u64 },
    /// Lists logged-in channels (of one target or all).
    Sessions { target: Option<String> },
}

#[derive(Subcommand)]
pub enum ConfigCmd {
    /// Prints the running configuration as TOML.
    Show,
    /// Saves it (atomically) to PATH or the daemon's config file.
    Save { path: Option<String> },
}

/// A command line that cannot become a request.
enum CliError {
    Usage(String),
}

/// Parses "ID=LUN".
fn mapping(s: &str) -> Result<Value, CliError> {
    let (id, lun) = s
        .split_once('=')
        .ok_or_else(|| CliError::Usage(format!("{s:?}: use ID=LUN")))?;
    let id: u64 = id
        .parse()
        .map_err(|_| CliError::Usage(format!("{s:?}: {id:?} is not a LUN number")))?;
    Ok(json!({"id": id, "lun": lun}))
}

/// A `luns` parameter from repeated `--lun ID=LUN` (absent when none).
fn mappings(luns: &[String]) -> Result<Option<Value>, CliError> {
    let v = luns
        .iter()
        .map(|l| mapping(l))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((!v.is_empty()).then(|| json!(v)))
}

/// Builds params from (key, value) pairs, leaving out absent ones.
fn obj(pairs: Vec<(&str, Option<Value>)>) -> Value {
    let mut m = Map::new();
    for (k, v) in pairs {
        if let Some(v) = v {
            m.insert(k.to_string(), v);
        }
    }
    Value::Object(m)
}

fn s(v: &Option<String>) -> Option<Value> {
    v.as_ref().map(|x| json!(x))
}

fn flag(b: bool) -> Option<Value> {
    b.then_some(json!(true))
}

/// How a result is printed: the table's columns, or a message.
enum Show {
    Table(&'static [&'static str]),
    Done(String),
    Text,
}

fn request(g: Group) -> Result<(String, Value, Show), CliError> {
    use Show::{Done, Table};
    let r = match g {
        Group::Backend(c) => match c {
            BackendCmd::Create {
                name,
                kind,
                size,
                path,
                direct,
                read_only,
                engine,
                rbd,
            } => (
                "backend_create",
                obj(vec![
                    ("name", Some(json!(name))),
                    ("type", Some(json!(kind))),
                    ("size", s(&size)),
                    ("path", s(&path)),
                    ("direct", flag(direct)),
                    ("read_only", flag(read_only)),
                    ("engine", s(&engine)),
                    ("pool", s(&rbd.pool)),
                    ("image", s(&rbd.image)),
                    ("namespace", s(&rbd.namespace)),
                    ("snapshot", s(&rbd.snapshot)),
                    ("ceph_conf", s(&rbd.ceph_conf)),
                    ("client_id", s(&rbd.client_id)),
                    ("keyring", s(&rbd.keyring)),
                    ("op_timeout", rbd.op_timeout.map(|t| json!(t))),
                ]),
                Done(format!("backend {name} created")),
            ),
            BackendCmd::Delete { name } => (
                "backend_delete",
                json!({"name": name}),
                Done(format!("backend {name} deleted")),
            ),
            BackendCmd::List => (
                "backend_list",
                json!({}),
                Table(&["name", "type", "size", "describe"]),
            ),
        },
        Group::Lun(c) => match c {
            LunCmd::Create {
                name,
                backend,
                uuid,
                serial,
                block_size,
                read_only,
                removable,
                thin,
                write_cache,
            } => (
                "lun_create",
                obj(vec![
                    ("name", Some(json!(name))),
                    ("backend", Some(json!(backend))),
                    ("uuid", s(&uuid)),
                    ("serial", s(&serial)),
                    ("block_size", block_size.map(|b| json!(b))),
                    ("read_only", flag(read_only)),
                    ("removable", flag(removable)),
                    ("thin", thin.map(|b| json!(b))),
                    ("write_cache", write_cache.map(|b| json!(b))),
                ]),
                Done(format!("LUN {name} created")),
            ),
            LunCmd::Delete { name, force } => (
                "lun_delete",
                json!({"name": name, "force": force}),
                Done(format!("LUN {name} deleted")),
            ),
            LunCmd::Resize { name, size } => (
                "lun_resize",
                json!({"name": name, "size": size}),
                Done(format!("LUN {name} resized")),
            ),
            LunCmd::List => (
                "lun_list",
                json!({}),
                Table(&["name", "backend", "size", "block_size", "uuid", "naa"]),
            ),
            LunCmd::Stats { name } => (
                "lun_stats",
                obj(vec![("name", s(&name))]),
                Table(&[
                    "name",
                    "read_ops",
                    "write_ops",
                    "read_bytes",
                    "write_bytes",
                    "errors",
                    "in_flight",
                    "bounce_copies",
                ]),
            ),
        },
        Group::Iscsi(c) => match c {
            IscsiCmd::Target(t) => match t {
                TargetCmd::Create {
                    name,
                    portals,
                    alias,
                    acl,
                    luns,
                    chap_user,
                    chap_secret,
                } => {
                    let luns = mappings(&luns)?;
                    (
                        "iscsi_target_create",
                        obj(vec![
                            ("name", Some(json!(name))),
                            ("portals", Some(json!(portals))),
                            ("alias", s(&alias)),
                            ("acl", (!acl.is_empty()).then(|| json!(acl))),
                            ("luns", luns),
                            ("chap_user", s(&chap_user)),
                            ("chap_secret", s(&chap_secret)),
                        ]),
                        Done(format!("iSCSI target {name} created")),
                    )
                }
                TargetCmd::Delete { name } => (
                    "iscsi_target_delete",
                    json!({"name": name}),
                    Done(format!("iSCSI target {name} deleted")),
                ),
                TargetCmd::List => (
                    "iscsi_target_list",
                    json!({}),
                    Table(&["name", "listening", "acl", "luns"]),
                ),
            },
            IscsiCmd::Portal(p) => match p {
                PortalCmd::Add { target, portal } => (
                    "iscsi_portal_add",
                    json!({"target": target, "portal": portal}),
                    Done(format!("portal {portal} added to {target}")),
                ),
                PortalCmd::Remove { target, portal } => (
                    "iscsi_portal_remove",
                    json!({"target": target, "portal": portal}),
                    Done(format!("portal {portal} removed from {target}")),
                ),
            },
            IscsiCmd::Acl(a) => match a {
                AclCmd::Add { target, initiator } => (
                    "iscsi_acl_add",
                    json!({"target": target, "initiator": initiator}),
                    Done(format!("{initiator} may log in to {target}")),
                ),
                AclCmd::Remove { target, initiator } => (
                    "iscsi_acl_remove",
                    json!({"target": target, "initiator": initiator}),
                    Done(format!("{initiator} removed from the ACL of {target}")),
                ),
            },
            IscsiCmd::Chap {
                target,
                user,
                secret,
                mutual_user,
                mutual_secret,
                required,
            } => (
                "iscsi_chap_set",
                obj(vec![
                    ("target", Some(json!(target))),
                    ("user", s(&user)),
                    ("secret", s(&secret)),
                    ("mutual_user", s(&mutual_user)),
                    ("mutual_secret", s(&mutual_secret)),
                    ("required", required.map(|b| json!(b))),
                ]),
                Done(format!("CHAP of {target} set")),
            ),
            IscsiCmd::Lun(l) => match l {
                IscsiLunCmd::Map { target, id, lun } => (
                    "iscsi_lun_map",
                    json!({"target": target, "id": id, "lun": lun}),
                    Done(format!("LUN {lun} mapped at {id} of {target}")),
                ),
                IscsiLunCmd::Unmap { target, id } => (
                    "iscsi_lun_unmap",
                    json!({"target": target, "id": id}),
                    Done(format!("LUN {id} of {target} unmapped")),
                ),
            },
            IscsiCmd::Session(x) => match x {
                SessionCmd::List { target } => (
                    "iscsi_session_list",
                    obj(vec![("target", s(&target))]),
                    Table(&[
                        "target",
                        "initiator",
                        "isid",
                        "tsih",
                        "peer",
                        "commands",
                        "errors",
                        "bytes",
                    ]),
                ),
                SessionCmd::Drop { target, tsih } => (
                    "iscsi_session_drop",
                    json!({"target": target, "tsih": tsih}),
                    Done(format!("session {tsih} of {target} closed")),
                ),
            },
        },
        Group::Vhost(c) => match c {
            VhostCmd::Create {
                name,
                listen: socket,
                queues,
                luns,
            } => {
                let luns = mappings(&luns)?;
                (
                    "vhost_scsi_create",
                    obj(vec![
                        ("name", Some(json!(name))),
                        ("socket", Some(json!(socket))),
                        ("queues", queues.map(|q| json!(q))),
                        ("luns", luns),
                    ]),
                    Done(format!("vhost controller {name} listening on {socket}")),
                )
            }
            VhostCmd::Delete { name } => (
                "vhost_scsi_delete",
                json!({"name": name}),
                Done(format!("vhost controller {name} deleted")),
            ),
            VhostCmd::List => (
                "vhost_scsi_list",
                json!({}),
                Table(&["name", "socket", "queues", "luns", "connections"]),
            ),
            VhostCmd::Attach {
                controller,
                id,
                lun,
            } => (
                "vhost_scsi_lun_attach",
                json!({"controller": controller, "id": id, "lun": lun}),
                Done(format!("LUN {lun} attached at {id} of {controller}")),
            ),
            VhostCmd::Detach { controller, id } => (
                "vhost_scsi_lun_detach",
                json!({"controller": controller, "id": id}),
                Done(format!("LUN {id} of {controller} detached")),
            ),
        },
        Group::VhostBlk(c) => match c {
            VhostBlkCmd::Create {
                name,
                listen,
                lun,
                queues,
            } => (
                "vhost_blk_create",
                obj(vec![
                    ("name", Some(json!(name))),
                    ("socket", Some(json!(listen))),
                    ("lun", Some(json!(lun))),
                    ("queues", queues.map(|q| json!(q))),
                ]),
                Done(format!(
                    "vhost-user-blk device {name} listening on {listen}"
                )),
            ),
            VhostBlkCmd::Delete { name } => (
                "vhost_blk_delete",
                json!({"name": name}),
                Done(format!("vhost-user-blk device {name} deleted")),
            ),
            VhostBlkCmd::List => (
                "vhost_blk_list",
                json!({}),
                Table(&["name", "socket", "lun", "queues", "connections"]),
            ),
        },
        Group::Srp(c) => match c {
            SrpCmd::Create {
                name,
                id_ext,
                ioc_guid,
                luns,
            } => {
                let luns = mappings(&luns)?;
                (
                    "srp_target_create",
                    obj(vec![
                        ("name", Some(json!(name))),
                        ("id_ext", Some(json!(id_ext))),
                        ("ioc_guid", Some(json!(ioc_guid))),
                        ("luns", luns),
                    ]),
                    Done(format!("SRP target {name} created")),
                )
            }
            SrpCmd::Delete { name } => (
                "srp_target_delete",
                json!({"name": name}),
                Done(format!("SRP target {name} deleted")),
            ),
            SrpCmd::List => (
                "srp_target_list",
                json!({}),
                Table(&["name", "id_ext", "ioc_guid", "luns", "channels"]),
            ),
            SrpCmd::Map { target, id, lun } => (
                "srp_lun_map",
                json!({"target": target, "id": id, "lun": lun}),
                Done(format!("LUN {lun} mapped at {id} on SRP target {target}")),
            ),
            SrpCmd::Unmap { target, id } => (
                "srp_lun_unmap",
                json!({"target": target, "id": id}),
                Done(format!("LUN {id} unmapped from SRP target {target}")),
            ),
            SrpCmd::Sessions { target } => (
                "srp_session_list",
                obj(vec![("target", s(&target))]),
                Table(&["target", "initiator", "channels", "commands", "errors"]),
            ),
        },
        Group::Config(c) => match c {
            ConfigCmd::Show => ("get_config", json!({}), Show::Text),
            ConfigCmd::Save { path } => (
                "save_config",
                obj(vec![("path", s(&path))]),
                Done("configuration saved".into()),
            ),
        },
        Group::Metrics => ("metrics", json!({}), Show::Text),
        Group::Rpc { method, params } => {
            let p = match params {
                Some(t) => serde_json::from_str(&t)
                    .map_err(|e| CliError::Usage(format!("params are not JSON: {e}")))?,
                None => json!({}),
            };
            return Ok((method, p, Show::Text));
        }
    };
    Ok((r.0.to_string(), r.1, r.2))
}

/// One call on the daemon's socket.
pub fn call(socket: &Path, method: &str, params: Value) -> Result<Value, (u8, String)> {
    let unreachable = |e: std::io::Error| {
        (
            EXIT_UNREACHABLE,
            format!("cannot reach the daemon at {}: {e}", socket.display()),
        )
    };
    let mut conn = UnixStream::connect(socket).map_err(unreachable)?;
    let _ = conn.set_read_timeout(Some(Duration::from_secs(300)));
    let req = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    writeln!(conn, "{req}").map_err(unreachable)?;
    let mut line = String::new();
    BufReader::new(&conn)
        .read_line(&mut line)
        .map_err(unreachable)?;
    let reply: Value = serde_json::from_str(&line).map_err(|e| {
        (
            EXIT_UNREACHABLE,
            format!("the daemon's answer is not JSON: {e}"),
        )
    })?;
    if let Some(e) = reply.get("error") {
        return Err((
            EXIT_REFUSED,
            format!(
                "{} (code {})",
                e["message"].as_str().unwrap_or("error"),
                e["code"]
            ),
        ));
    }
    Ok(reply.get("result").cloned().unwrap_or(Value::Null))
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .iter()
            .map(|x| match x {
                Value::Object(o) if o.contains_key("id") && o.contains_key("lun") => {
                    format!("{}={}", o["id"], cell(&o["lun"]))
                }
                other => cell(other),
            })
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

/// Prints rows as an aligned table.
fn table(cols: &[&str], rows: &[Value]) {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| cols.iter().map(|c| cell(&r[*c])).collect())
        .collect();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].len())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |vals: Vec<String>| {
        let s: Vec<String> = vals
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(cols.iter().map(|c| c.to_uppercase()).collect());
    for r in cells {
        line(r);
    }
}

pub fn run(socket: &Path, as_json: bool, g: Group) -> ExitCode {
    let (method, params, show) = match request(g) {
        Ok(r) => r,
        Err(CliError::Usage(m)) => {
            eprintln!("oxtarget: {m}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let result = match call(socket, &method, params) {
        Ok(v) => v,
        Err((code, m)) => {
            eprintln!("oxtarget: {m}");
            return ExitCode::from(code);
        }
    };
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&result).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    match show {
        Show::Table(cols) => table(cols, result.as_array().map_or(&[][..], |a| a)),
        Show::Done(m) => println!("{m}"),
        Show::Text => match (&result, method.as_str()) {
            (Value::String(s), _) => print!("{s}"),
            (v, "get_config") => match toml::Value::try_from(v).map(|t| toml::to_string(&t)) {
                Ok(Ok(t)) => print!("{t}"),
                _ => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
            },
            (v, _) => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
        },
    }
    ExitCode::SUCCESS
}
