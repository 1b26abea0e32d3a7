//! The daemon's TOML configuration: backends, LUNs and (as the transports land) their
//! exports. Parsing is strict (unknown keys are errors) and every error names the
//! file, the line and the key, so an admin can fix a config without guessing.
//!
//! ```toml
//! state_dir = "/var/lib/oxtarget"
//!
//! [[backend]]
//! name = "disk0"
//! type = "file"            # ram | null | file | blockdev
//! path = "/var/lib/oxtarget/disk0.img"
//! size = "10G"             # ram, null; for a file: create it with this size if missing
//! direct = true            # file: O_DIRECT
//!
//! [[lun]]
//! name = "lun0"
//! backend = "disk0"
//! uuid = "0b6f2a4e-5d1c-4c1e-9a63-2f0e8f6d7a11"   # identity: NAA id, serial
//! block_size = 512
//! ```

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use backends::{BackendSpec, IoEngine};
use engine::LunConfig;
use iscsi::chap::{ChapCredentials, Secret};
use serde::{Deserialize, Serialize};
use toml::Spanned;

mod rbd;
mod srp;
pub use srp::{
    check_srp_settings, check_srp_target, parse_guid, RawSrpSettings, RawSrpTarget, SrpSettings,
    SrpTargetDef, DEFAULT_SRP_PORT,
};

/// A configuration error, with where it is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    At {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
}

/// The file as written (and as `save_config` writes it back).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// The JSON-RPC control socket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpc_socket: Option<PathBuf>,
    /// Prometheus metrics over HTTP on this loopback address (optional).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<Spanned<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iscsi: Option<RawIscsiSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub srp: Option<RawSrpSettings>,
    #[serde(default, rename = "backend", skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<RawBackend>,
    #[serde(default, rename = "lun", skip_serializing_if = "Vec::is_empty")]
    pub luns: Vec<RawLun>,
    #[serde(
        default,
        rename = "iscsi_target",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub iscsi_targets: Vec<RawIscsiTarget>,
    #[serde(default, rename = "vhost_scsi", skip_serializing_if = "Vec::is_empty")]
    pub vhost_scsi: Vec<RawVhostScsi>,
    #[serde(default, rename = "vhost_blk", skip_serializing_if = "Vec::is_empty")]
    pub vhost_blk: Vec<RawVhostBlk>,
    #[serde(default, rename = "srp_target", skip_serializing_if = "Vec::is_empty")]
    pub srp_targets: Vec<RawSrpTarget>,
}

/// Server-wide iSCSI settings.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawIscsiSettings {
    /// Worker threads (epoll loops); default 2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<Spanned<usize>>,
    /// Commands per session (the CmdSN window); default 128.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_depth: Option<Spanned<u32>>,
    /// Sessions at once; default 512.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_sessions: Option<Spanned<usize>>,
    /// Connections at once (logins in progress included); default 1024.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<Spanned<usize>>,
}

/// One LUN in a target's or controller's LUN map.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawMapping {
    /// The LUN number the initiator sees.
    pub id: u64,
    /// The LUN's name.
    pub lun: String,
}

/// An iSCSI target.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawIscsiTarget {
    pub name: Spanned<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<Spanned<String>>,
    /// "ADDRESS:PORT" ("[::1]:3260" for IPv6).
    #[serde(default)]
    pub portals: Vec<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub portal_group_tag: Option<Spanned<u16>>,
    /// Initiator names allowed to log in; empty: everyone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acl: Vec<Spanned<String>>,
    /// CHAP: the name and secret the initiator must present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chap_user: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chap_secret: Option<Spanned<String>>,
    /// Mutual CHAP: the target's own name and secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chap_mutual_user: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chap_mutual_secret: Option<Spanned<String>>,
    /// Refuse logins without CHAP (default: required when a secret is set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chap_required: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub luns: Vec<Spanned<RawMapping>>,
}

/// A vhost-user-blk device: one LUN as a virtio-blk disk (QEMU's
/// vhost-user-blk-pci, cloud-hypervisor's `--disk vhost_user=true`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawVhostBlk {
    pub name: Spanned<String>,
    /// The Unix socket the VMM connects to.
    pub socket: Spanned<PathBuf>,
    /// The LUN it serves.
    pub lun: Spanned<String>,
    /// Request queues; default 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queues: Option<Spanned<usize>>,
}

/// A vhost-user-scsi controller.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawVhostScsi {
    pub name: Spanned<String>,
    /// The Unix socket QEMU connects to.
    pub socket: Spanned<PathBuf>,
    /// Request queues (QEMU's `num_queues`); default 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queues: Option<Spanned<usize>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub luns: Vec<Spanned<RawMapping>>,
}

#[derive(Debug, Deserialize, Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BackendType {
    Ram,
    Null,
    File,
    Blockdev,
    /// A Ceph RBD image through librbd (built with the `rbd` feature).
    Rbd,
}

#[derive(Debug, Deserialize, Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EngineName {
    Uring,
    Threads,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub name: Spanned<String>,
    #[serde(rename = "type")]
    pub kind: BackendType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<Spanned<Size>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<Spanned<PathBuf>>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub direct: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineName>,
    /// RBD (`type = "rbd"` only): the pool, the image in it, an optional RADOS
    /// namespace and snapshot (read-only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Spanned<String>>,
    /// RBD: the cluster's ceph.conf (default librados' own search).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ceph_conf: Option<Spanned<PathBuf>>,
    /// RBD: the cephx client id (default "admin") and its keyring.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyring: Option<Spanned<PathBuf>>,
    /// RBD: seconds an operation may wait for the cluster before it fails
    /// (default 30).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub op_timeout: Option<Spanned<u32>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawLun {
    pub name: Spanned<String>,
    pub backend: Spanned<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vendor: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_size: Option<Spanned<u32>>,
    /// Physical block size reported (READ CAPACITY(16) LBPPBE, VPD B0);
    /// default the logical block size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub physical_block_size: Option<Spanned<u32>>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub removable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thin: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_cache: Option<bool>,
}

/// A byte count: an integer, or a string with a binary suffix ("512M", "1G").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            N(u64),
            S(String),
        }
        match Either::deserialize(d)? {
            Either::N(n) => Ok(Size(n)),
            Either::S(s) => parse_size(&s).map(Size).map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for Size {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

/// Parses "4096", "64K", "512M", "1G", "2T" (powers of 1024; an optional "iB"/"B").
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                'P' => 50,
                _ => return Err(format!("size {s:?}: unknown suffix {c:?} (use K, M, G, T)")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("size {s:?} is not a number with an optional K/M/G/T suffix"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// A backend as the daemon opens it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendDef {
    pub name: String,
    pub spec: BackendSpec,
}

/// A LUN as the daemon creates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunDef {
    pub config: LunConfig,
    pub backend: String,
    /// The UUID was not in the file: one was generated, and the admin should save
    /// the config (or it changes on every start, and so does the LUN's identity).
    pub generated_uuid: bool,
}

/// An iSCSI target as the daemon serves it (LUN names not yet resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IscsiTargetDef {
    pub name: String,
    pub alias: Option<String>,
    pub portals: Vec<SocketAddr>,
    pub portal_group_tag: u16,
    pub acl: Vec<String>,
    pub chap: Option<ChapCredentials>,
    pub chap_required: bool,
    pub luns: Vec<RawMapping>,
}

/// A vhost-user-blk device as the daemon serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostBlkDef {
    pub name: String,
    pub socket: PathBuf,
    pub lun: String,
    pub queues: usize,
}

/// A vhost-user-scsi controller as the daemon serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostScsiDef {
    pub name: String,
    pub socket: PathBuf,
    pub queues: usize,
    pub luns: Vec<RawMapping>,
}

/// Server-wide iSCSI settings, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IscsiSettings {
    pub workers: usize,
    pub queue_depth: u32,
    pub max_sessions: usize,
    pub max_connections: usize,
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub state_dir: Option<PathBuf>,
    pub rpc_socket: Option<PathBuf>,
    pub metrics_listen: Option<SocketAddr>,
    pub iscsi: IscsiSettings,
    pub srp: SrpSettings,
    pub backends: Vec<BackendDef>,
    pub luns: Vec<LunDef>,
    pub iscsi_targets: Vec<IscsiTargetDef>,
    pub vhost_scsi: Vec<VhostScsiDef>,
    pub vhost_blk: Vec<VhostBlkDef>,
    pub srp_targets: Vec<SrpTargetDef>,
    /// The document itself, with generated UUIDs filled in, for saving.
    pub raw: RawConfig,
}

/// Reads one object of a config document (a `[[backend]]`, `[[lun]]`, ...)
/// from JSON, as RPC parameters carry it. It goes through TOML text so that it
/// gets exactly the checks a config file gets; the text is returned for
/// [`Ctx`].
pub fn object_from_json<T: serde::de::DeserializeOwned>(
    v: &serde_json::Value,
) -> Result<(T, String), String> {
    if !v.is_object() {
        return Err("parameters must be an object".into());
    }
    let tv = toml::Value::try_from(v).map_err(|e| format!("parameters: {e}"))?;
    let text = toml::to_string(&tv).map_err(|e| format!("parameters: {e}"))?;
    let obj = toml::from_str::<T>(&text).map_err(|e| e.message().to_string())?;
    Ok((obj, text))
}

/// The message of a config error without its position (for RPC replies).
pub fn message_of(e: &ConfigError) -> String {
    match e {
        ConfigError::At { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// Reads and checks a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&path.display().to_string(), &text)
}

/// 1-based line and column of byte `at` in `text`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let at = at.min(text.len());
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(at, |nl| at - nl - 1) + 1;
    (line, column)
}

/// Where a document came from, for error positions.
pub struct Ctx<'a> {
    pub path: &'a str,
    pub text: &'a str,
}

impl Ctx<'_> {
    fn err<T>(
        &self,
        span: std::ops::Range<usize>,
        message: impl Into<String>,
    ) -> Result<T, ConfigError> {
        let (line, column) = line_col(self.text, span.start);
        Err(ConfigError::At {
            path: self.path.to_string(),
            line,
            column,
            message: message.into(),
        })
    }
}

/// Parses and checks config `text` (from `path`, for messages).
pub fn parse(path: &str, text: &str) -> Result<Config, ConfigError> {
    let cx = Ctx { path, text };
    let raw: RawConfig = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            return cx.err(span, e.message().to_string());
        }
    };
    let mut names = HashSet::new();
    let mut backends = Vec::new();
    for b in &raw.backends {
        if !valid_object_name(b.name.get_ref()) {
            return cx.err(
                b.name.span(),
                format!(
                    "backend name {:?}: use 1 to 64 letters, digits, '-', '_' or '.'",
                    b.name.get_ref()
                ),
            );
        }
        if !names.insert(b.name.get_ref().clone()) {
            return cx.err(
                b.name.span(),
                format!("backend {:?} is defined twice", b.name.get_ref()),
            );
        }
        backends.push(BackendDef {
            name: b.name.get_ref().clone(),
            spec: backend_spec(&cx, b)?,
        });
    }
    let mut lun_names = HashSet::new();
    let mut uuids = HashSet::new();
    let mut luns = Vec::new();
    for l in &raw.luns {
        if !lun_names.insert(l.name.get_ref().clone()) {
            return cx.err(
                l.name.span(),
                format!("LUN {:?} is defined twice", l.name.get_ref()),
            );
        }
        if !names.contains(l.backend.get_ref()) {
            return cx.err(
                l.backend.span(),
                format!(
                    "LUN {:?}: no backend named {:?}",
                    l.name.get_ref(),
                    l.backend.get_ref()
                ),
            );
        }
        let def = lun_def(&cx, l, raw.state_dir.as_deref())?;
        if !uuids.insert(def.config.uuid) {
            let span = l.uuid.as_ref().map_or(l.name.span(), |u| u.span());
            return cx.err(
                span,
                format!(
                    "LUN {:?}: its uuid is used by another LUN",
                    l.name.get_ref()
                ),
            );
        }
        luns.push(def);
    }
    let mut target_names = HashSet::new();
    let mut iscsi_targets = Vec::new();
    for t in &raw.iscsi_targets {
        let def = check_iscsi_target(&cx, t)?;
        if !target_names.insert(def.name.clone()) {
            return cx.err(
                t.name.span(),
                format!("iSCSI target {:?} is defined twice", def.name),
            );
        }
        check_mapping_luns(&cx, &t.luns, &lun_names)?;
        iscsi_targets.push(def);
    }
    let mut vhost_names = HashSet::new();
    let mut sockets = HashSet::new();
    let mut vhost_scsi = Vec::new();
    for v in &raw.vhost_scsi {
        let def = check_vhost_scsi(&cx, v)?;
        if !vhost_names.insert(def.name.clone()) {
            return cx.err(
                v.name.span(),
                format!("vhost controller {:?} is defined twice", def.name),
            );
        }
        if !sockets.insert(def.socket.clone()) {
            return cx.err(
                v.socket.span(),
                format!(
                    "vhost controller {:?}: its socket is used by another controller",
                    def.name
                ),
            );
        }
        check_mapping_luns(&cx, &v.luns, &lun_names)?;
        vhost_scsi.push(def);
    }
    let mut vhost_blk = Vec::new();
    for v in &raw.vhost_blk {
        let def = check_vhost_blk(&cx, v)?;
        if !vhost_names.insert(def.name.clone()) {
            return cx.err(
                v.name.span(),
                format!("vhost controller {:?} is defined twice", def.name),
            );
        }
        if !sockets.insert(def.socket.clone()) {
            return cx.err(
                v.socket.span(),
                format!(
                    "vhost-user-blk device {:?}: its socket is used by another controller",
                    def.name
                ),
            );
        }
        if !lun_names.contains(&def.lun) {
            return cx.err(v.lun.span(), format!("no LUN named {:?}", def.lun));
        }
        vhost_blk.push(def);
    }
    let mut srp_targets = Vec::new();
    for t in &raw.srp_targets {
        srp_targets.push(check_srp_target(&cx, t)?);
        check_mapping_luns(&cx, &t.luns, &lun_names)?;
    }
    srp::check_unique(&cx, &raw.srp_targets, &srp_targets)?;
    let metrics_listen = match &raw.metrics_listen {
        None => None,
        Some(m) => match m.get_ref().parse::<SocketAddr>() {
            Ok(a) if a.ip().is_loopback() => Some(a),
            Ok(_) => return cx.err(m.span(), "metrics_listen must be a loopback address"),
            Err(_) => {
                return cx.err(
                    m.span(),
                    format!("metrics_listen {:?} is not ADDRESS:PORT", m.get_ref()),
                )
            }
        },
    };
    let iscsi = check_iscsi_settings(&cx, raw.iscsi.as_ref())?;
    let srp = check_srp_settings(&cx, raw.srp.as_ref())?;
    let mut raw = raw;
    // Generated UUIDs go into the document, so that saving it keeps them.
    for (r, d) in raw.luns.iter_mut().zip(&luns) {
        if r.uuid.is_none() {
            r.uuid = Some(Spanned::new(0..0, format_uuid(&d.config.uuid)));
        }
    }
    Ok(Config {
        state_dir: raw.state_dir.clone(),
        rpc_socket: raw.rpc_socket.clone(),
        metrics_listen,
        iscsi,
        srp,
        backends,
        luns,
        iscsi_targets,
        vhost_scsi,
        vhost_blk,
        srp_targets,
        raw,
    })
}

/// Every mapping names a known LUN, and no LUN number is used twice.
fn check_mapping_luns(
    cx: &Ctx<'_>,
    maps: &[Spanned<RawMapping>],
    lun_names: &HashSet<String>,
) -> Result<(), ConfigError> {
    for m in maps {
        if !lun_names.contains(&m.get_ref().lun) {
            return cx.err(m.span(), format!("no LUN named {:?}", m.get_ref().lun));
        }
    }
    Ok(())
}

fn check_iscsi_settings(
    cx: &Ctx<'_>,
    raw: Option<&RawIscsiSettings>,
) -> Result<IscsiSettings, ConfigError> {
    let mut s = IscsiSettings {
        workers: 2,
        queue_depth: 128,
        max_sessions: 512,
        max_connections: 1024,
    };
    let Some(raw) = raw else {
        return Ok(s);
    };
    if let Some(w) = &raw.workers {
        if !(1..=64).contains(w.get_ref()) {
            return cx.err(w.span(), "iscsi.workers must be 1 to 64");
        }
        s.workers = *w.get_ref();
    }
    if let Some(q) = &raw.queue_depth {
        if !(1..=4096).contains(q.get_ref()) {
            return cx.err(q.span(), "iscsi.queue_depth must be 1 to 4096");
        }
        s.queue_depth = *q.get_ref();
    }
    if let Some(m) = &raw.max_sessions {
        if !(1..=65535).contains(m.get_ref()) {
            return cx.err(m.span(), "iscsi.max_sessions must be 1 to 65535");
        }
        s.max_sessions = *m.get_ref();
    }
    if let Some(m) = &raw.max_connections {
        if !(1..=65536).contains(m.get_ref()) {
            return cx.err(m.span(), "iscsi.max_connections must be 1 to 65536");
        }
        s.max_connections = *m.get_ref();
    }
    Ok(s)
}

/// An iSCSI name as RFC 3720/7143 allows: `iqn.YYYY-MM.reverse.domain[:...]`,
/// `eui.` + 16 hex digits or `naa.` + 16 or 32 hex digits; at most 223 bytes.
pub fn valid_iscsi_name(n: &str) -> bool {
    let hex = |s: &str, lens: &[usize]| {
        lens.contains(&s.len()) && s.chars().all(|c| c.is_ascii_hexdigit())
    };
    if n.len() > 223 {
        return false;
    }
    if let Some(rest) = n.strip_prefix("eui.") {
        return hex(rest, &[16]);
    }
    if let Some(rest) = n.strip_prefix("naa.") {
        return hex(rest, &[16, 32]);
    }
    let Some(rest) = n.strip_prefix("iqn.") else {
        return false;
    };
    let date_ok = rest.len() > 8
        && rest[..4].chars().all(|c| c.is_ascii_digit())
        && &rest[4..5] == "-"
        && rest[5..7].chars().all(|c| c.is_ascii_digit())
        && &rest[7..8] == ".";
    date_ok
        && rest
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.:".contains(c))
}

/// A name for a backend, LUN or controller: 1 to 64 letters, digits, `-_.`.
pub fn valid_object_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Checks one `[[iscsi_target]]` on its own.
pub fn check_iscsi_target(cx: &Ctx<'_>, t: &RawIscsiTarget) -> Result<IscsiTargetDef, ConfigError> {
    let name = t.name.get_ref();
    if !valid_iscsi_name(name) {
        return cx.err(
            t.name.span(),
            format!("iSCSI target name {name:?} is not an iqn./eui./naa. name (lowercase)"),
        );
    }
    let mut portals = Vec::new();
    for p in &t.portals {
        match p.get_ref().parse::<SocketAddr>() {
            Ok(a) if !portals.contains(&a) => portals.push(a),
            Ok(_) => {
                return cx.err(
                    p.span(),
                    format!("portal {:?} is listed twice", p.get_ref()),
                )
            }
            Err(_) => {
                return cx.err(
                    p.span(),
                    format!(
                        "portal {:?} is not ADDRESS:PORT (IPv6 as [ADDRESS]:PORT)",
                        p.get_ref()
                    ),
                )
            }
        }
    }
    let mut acl = Vec::new();
    for a in &t.acl {
        if !valid_iscsi_name(a.get_ref()) {
            return cx.err(
                a.span(),
                format!("ACL entry {:?} is not an iSCSI initiator name", a.get_ref()),
            );
        }
        acl.push(a.get_ref().clone());
    }
    let secret = |user: &Option<Spanned<String>>,
                  secret: &Option<Spanned<String>>,
                  what: &str|
     -> Result<Option<Secret>, ConfigError> {
        match (user, secret) {
            (None, None) => Ok(None),
            (Some(u), None) => cx.err(u.span(), format!("{what}_user needs {what}_secret")),
            (None, Some(s)) => cx.err(s.span(), format!("{what}_secret needs {what}_user")),
            (Some(u), Some(s)) => {
                if u.get_ref().is_empty() || u.get_ref().len() > 255 {
                    return cx.err(u.span(), format!("{what}_user must be 1 to 255 bytes"));
                }
                // RFC 7143 wants secrets of at least 96 bits; the Linux
                // initiator accepts 12 to 16 characters by default.
                if !(12..=255).contains(&s.get_ref().len()) {
                    return cx.err(s.span(), format!("{what}_secret must be 12 to 255 bytes"));
                }
                Ok(Some(Secret {
                    user: u.get_ref().clone(),
                    secret: s.get_ref().as_bytes().to_vec(),
                }))
            }
        }
    };
    let one_way = secret(&t.chap_user, &t.chap_secret, "chap")?;
    let mutual = secret(&t.chap_mutual_user, &t.chap_mutual_secret, "chap_mutual")?;
    let chap = match (one_way, mutual) {
        (None, Some(_)) => {
            return cx.err(
                t.name.span(),
                format!("iSCSI target {name:?}: mutual CHAP needs chap_user and chap_secret"),
            )
        }
        (None, None) => None,
        (Some(initiator), target) => Some(ChapCredentials { initiator, target }),
    };
    let chap_required = t.chap_required.unwrap_or(chap.is_some());
    if chap_required && chap.is_none() {
        return cx.err(
            t.name.span(),
            format!("iSCSI target {name:?}: chap_required without chap_user/chap_secret"),
        );
    }
    let luns = check_mappings(cx, &t.luns)?;
    Ok(IscsiTargetDef {
        name: name.clone(),
        alias: t.alias.as_ref().map(|a| a.get_ref().clone()),
        portals,
        portal_group_tag: t.portal_group_tag.as_ref().map_or(1, |p| *p.get_ref()),
        acl,
        chap,
        chap_required,
        luns,
    })
}

/// LUN numbers in range and each used once.
fn check_mappings(
    cx: &Ctx<'_>,
    maps: &[Spanned<RawMapping>],
) -> Result<Vec<RawMapping>, ConfigError> {
    let mut ids = HashSet::new();
    let mut out = Vec::new();
    for m in maps {
        let r = m.get_ref();
        // Flat-space addressing reaches 16383 (SAM-5).
        if r.id > 16383 {
            return cx.err(m.span(), format!("LUN number {} is above 16383", r.id));
        }
        if !ids.insert(r.id) {
            return cx.err(m.span(), format!("LUN number {} is used twice", r.id));
        }
        out.push(r.clone());
    }
    Ok(out)
}

/// Checks one `[[vhost_scsi]]` on its own.
pub fn check_vhost_scsi(cx: &Ctx<'_>, v: &RawVhostScsi) -> Result<VhostScsiDef, ConfigError> {
    let name = v.name.get_ref();
    if !valid_object_name(name) {
        return cx.err(
            v.name.span(),
            format!("vhost controller name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.'"),
        );
    }
    let socket = v.socket.get_ref();
    if !socket.is_absolute() {
        return cx.err(v.socket.span(), "the vhost socket must be an absolute path");
    }
    let queues = v.queues.as_ref().map_or(1, |q| *q.get_ref());
    let max = vhost_target::backend::MAX_REQUEST_QUEUES;
    if !(1..=max).contains(&queues) {
        let span = v.queues.as_ref().map_or(v.name.span(), |q| q.span());
        return cx.err(span, format!("queues must be 1 to {max}"));
    }
    let luns = check_mappings(cx, &v.luns)?;
    if let Some(m) = luns.iter().find(|m| m.id > 255) {
        return cx.err(
            v.name.span(),
            format!(
                "vhost controller {name:?}: LUN number {} is above 255",
                m.id
            ),
        );
    }
    Ok(VhostScsiDef {
        name: name.clone(),
        socket: socket.clone(),
        queues,
        luns,
    })
}

/// Checks one `[[vhost_blk]]` on its own (the LUN's existence is the
/// caller's to check).
pub fn check_vhost_blk(cx: &Ctx<'_>, v: &RawVhostBlk) -> Result<VhostBlkDef, ConfigError> {
    let name = v.name.get_ref();
    if !valid_object_name(name) {
        return cx.err(
            v.name.span(),
            format!("vhost-user-blk name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.'"),
        );
    }
    let socket = v.socket.get_ref();
    if !socket.is_absolute() {
        return cx.err(v.socket.span(), "the vhost socket must be an absolute path");
    }
    let queues = v.queues.as_ref().map_or(1, |q| *q.get_ref());
    let max = vhost_target::backend::MAX_REQUEST_QUEUES;
    if !(1..=max).contains(&queues) {
        let span = v.queues.as_ref().map_or(v.name.span(), |q| q.span());
        return cx.err(span, format!("queues must be 1 to {max}"));
    }
    Ok(VhostBlkDef {
        name: name.clone(),
        socket: socket.clone(),
        lun: v.lun.get_ref().clone(),
        queues,
    })
}

pub fn backend_spec(cx: &Ctx<'_>, b: &RawBackend) -> Result<BackendSpec, ConfigError> {
    let name = b.name.get_ref();
    let size = b.size.as_ref().map(|s| s.get_ref().0);
    let need_size = |what: &str| -> Result<u64, ConfigError> {
        match size {
            Some(0) => cx.err(
                b.size.as_ref().map_or(b.name.span(), |s| s.span()),
                format!("backend {name:?}: size must not be 0"),
            ),
            Some(s) => Ok(s),
            None => cx.err(
                b.name.span(),
                format!("backend {name:?}: a {what} backend needs `size`"),
            ),
        }
    };
    let need_path = |what: &str| -> Result<PathBuf, ConfigError> {
        match &b.path {
            Some(p) => Ok(p.get_ref().clone()),
            None => cx.err(
                b.name.span(),
                format!("backend {name:?}: a {what} backend needs `path`"),
            ),
        }
    };
    let no_path = |what: &str| -> Result<(), ConfigError> {
        match &b.path {
            Some(p) => cx.err(
                p.span(),
                format!("backend {name:?}: a {what} backend has no `path`"),
            ),
            None => Ok(()),
        }
    };
    if b.kind != BackendType::Rbd {
        rbd::reject_keys(cx, b)?;
    }
    Ok(match b.kind {
        BackendType::Rbd => {
            no_path("rbd")?;
            if let Some(s) = &b.size {
                return cx.err(
                    s.span(),
                    format!("backend {name:?}: an RBD image's size comes from the image"),
                );
            }
            rbd::spec(cx, b)?
        }
        BackendType::Ram => {
            no_path("ram")?;
            BackendSpec::Ram {
                size: need_size("ram")?,
            }
        }
        BackendType::Null => {
            no_path("null")?;
            BackendSpec::Null {
                size: need_size("null")?,
            }
        }
        BackendType::File => BackendSpec::File {
            path: need_path("file")?,
            direct: b.direct,
            read_only: b.read_only,
            engine: match b.engine {
                Some(EngineName::Threads) => IoEngine::Threads,
                _ => IoEngine::Uring,
            },
            create_size: size,
        },
        BackendType::Blockdev => {
            if let Some(s) = &b.size {
                return cx.err(
                    s.span(),
                    format!("backend {name:?}: a block device's size comes from the device"),
                );
            }
            BackendSpec::BlockDev {
                path: need_path("blockdev")?,
                read_only: b.read_only,
            }
        }
    })
}

/// Parses "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" (or 32 hex digits).
pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let mut u = [0u8; 16];
    for (i, b) in u.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(u)
}

pub fn format_uuid(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// A random version-4 UUID.
pub fn random_uuid() -> std::io::Result<[u8; 16]> {
    use std::io::Read;
    let mut u = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut u)?;
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    Ok(u)
}

pub fn lun_def(cx: &Ctx<'_>, l: &RawLun, state_dir: Option<&Path>) -> Result<LunDef, ConfigError> {
    let name = l.name.get_ref();
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return cx.err(
            l.name.span(),
            format!("LUN name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.'"),
        );
    }
    let (uuid, generated_uuid) = match &l.uuid {
        Some(u) => match parse_uuid(u.get_ref()) {
            Some(v) => (v, false),
            None => {
                return cx.err(
                    u.span(),
                    format!("LUN {name:?}: uuid {:?} is not a UUID", u.get_ref()),
                )
            }
        },
        None => match random_uuid() {
            Ok(u) => (u, true),
            Err(e) => {
                return cx.err(
                    l.name.span(),
                    format!("LUN {name:?}: cannot generate a uuid: {e}"),
                )
            }
        },
    };
    let mut c = LunConfig::new(name, uuid);
    let ascii = |v: &Option<Spanned<String>>,
                 key: &str,
                 max: usize|
     -> Result<Option<String>, ConfigError> {
        match v {
            None => Ok(None),
            Some(s)
                if s.get_ref().is_empty()
                    || s.get_ref().len() > max
                    || !s.get_ref().chars().all(|c| (' '..='~').contains(&c)) =>
            {
                cx.err(
                    s.span(),
                    format!("LUN {name:?}: {key} must be 1 to {max} printable ASCII characters"),
                )
            }
            Some(s) => Ok(Some(s.get_ref().clone())),
        }
    };
    if let Some(s) = ascii(&l.serial, "serial", 252)? {
        c.serial = s;
    }
    if let Some(s) = ascii(&l.vendor, "vendor", 8)? {
        c.vendor = s;
    }
    if let Some(s) = ascii(&l.product, "product", 16)? {
        c.product = s;
    }
    if let Some(s) = ascii(&l.revision, "revision", 4)? {
        c.revision = s;
    }
    if let Some(bs) = &l.block_size {
        let v = *bs.get_ref();
        if !v.is_power_of_two() || !(512..=65536).contains(&v) {
            return cx.err(
                bs.span(),
                format!("LUN {name:?}: block_size {v} is not a power of two from 512 to 65536"),
            );
        }
        c.block_size = v;
    }
    c.physical_block_size = c.block_size;
    if let Some(pbs) = &l.physical_block_size {
        let v = *pbs.get_ref();
        if !v.is_power_of_two() || v < c.block_size || v / c.block_size > 1 << 15 {
            return cx.err(
                pbs.span(),
                format!(
                    "LUN {name:?}: physical_block_size {v} is not a power-of-two multiple of the block size {}",
                    c.block_size
                ),
            );
        }
        c.physical_block_size = v;
    }
    c.read_only = l.read_only;
    c.removable = l.removable;
    if let Some(t) = l.thin {
        c.thin = t;
    }
    if let Some(w) = l.write_cache {
        c.write_cache = w;
    }
    c.state_dir = state_dir.map(Path::to_path_buf);
    Ok(LunDef {
        config: c,
        backend: l.backend.get_ref().clone(),
        generated_uuid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
state_dir = "/var/lib/oxtarget"

[[backend]]
name = "ram0"
type = "ram"
size = "1G"

[[backend]]
name = "disk"
type = "file"
path = "/tmp/x.img"
size = 1048576
direct = true
engine = "threads"

[[lun]]
name = "lun0"
backend = "ram0"
uuid = "0b6f2a4e-5d1c-4c1e-9a63-2f0e8f6d7a11"
serial = "OX0001"
block_size = 4096
removable = true
"#;

    #[test]
    fn a_good_config_parses_into_specs() {
        let c = parse("t.toml", GOOD).unwrap();
        assert_eq!(c.backends[0].spec, BackendSpec::Ram { size: 1 << 30 });
        assert_eq!(
            c.backends[1].spec,
            BackendSpec::File {
                path: "/tmp/x.img".into(),
                direct: true,
                read_only: false,
                engine: IoEngine::Threads,
                create_size: Some(1 << 20),
            }
        );
        let l = &c.luns[0];
        assert_eq!(l.backend, "ram0");
        assert_eq!(
            format_uuid(&l.config.uuid),
            "0b6f2a4e-5d1c-4c1e-9a63-2f0e8f6d7a11"
        );
        assert_eq!(l.config.serial, "OX0001");
        assert_eq!(l.config.block_size, 4096);
        assert!(l.config.removable && !l.generated_uuid);
        assert_eq!(
            l.config.state_dir.as_deref(),
            Some(Path::new("/var/lib/oxtarget"))
        );
    }

    fn err_of(text: &str) -> (usize, String) {
        match parse("t.toml", text) {
            Err(ConfigError::At {
                line,
                message,
                path,
                ..
            }) => {
                assert_eq!(path, "t.toml");
                (line, message)
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_line_and_the_key() {
        let (line, msg) =
            err_of("[[backend]]\nname = \"a\"\ntype = \"ram\"\nsize = \"1G\"\nsped = 3\n");
        assert_eq!(line, 5, "{msg}");
        assert!(msg.contains("sped"), "{msg}");

        let (line, msg) = err_of("[[backend]]\nname = \"a\"\ntype = \"tape\"\n");
        assert_eq!(line, 3, "{msg}");

        let (line, msg) = err_of("[[backend]]\nname = \"a\"\ntype = \"ram\"\nsize = \"12Q\"\n");
        assert_eq!(line, 4, "{msg}");
        assert!(msg.contains("suffix"), "{msg}");

        let (line, msg) = err_of("[[backend]]\nname = \"a\"\ntype = \"ram\"\nsize = 1\n[[lun]]\nname = \"l\"\nbackend = \"b\"\n");
        assert_eq!(line, 7, "{msg}");
        assert!(msg.contains("no backend named \"b\""), "{msg}");

        let (line, msg) = err_of("[[backend]]\nname = \"a\"\ntype = \"ram\"\nsize = 1\n[[lun]]\nname = \"l\"\nbackend = \"a\"\nuuid = \"nope\"\n");
        assert_eq!(line, 8, "{msg}");

        let (line, msg) = err_of("[[backend]]\nname = \"a\"\ntype = \"ram\"\nsize = 1\n[[lun]]\nname = \"l\"\nbackend = \"a\"\nblock_size = 1000\n");
        assert_eq!(line, 8, "{msg}");

        let (line, msg) = err_of("[[backend]]\nname = \"a\"\ntype = \"file\"\n");
        assert_eq!(line, 2, "{msg}");
        assert!(msg.contains("path"), "{msg}");

        let (_, msg) = err_of("[[backend]]\nname = \"a\"\ntype = \"ram\"\nsize = 1\n[[backend]]\nname = \"a\"\ntype = \"null\"\nsize = 1\n");
        assert!(msg.contains("twice"), "{msg}");

        let (line, _) = err_of("state_dir = [\n");
        assert_eq!(line, 2);
    }

    #[test]
    fn a_missing_uuid_is_generated_and_flagged() {
        let c = parse("t", "[[backend]]\nname=\"a\"\ntype=\"null\"\nsize=\"1M\"\n[[lun]]\nname=\"l\"\nbackend=\"a\"\n").unwrap();
        assert!(c.luns[0].generated_uuid);
        assert_eq!(c.luns[0].config.uuid[6] >> 4, 4, "version 4");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert!(parse_size("99999999999P").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn uuids_round_trip() {
        let u = random_uuid().unwrap();
        assert_eq!(parse_uuid(&format_uuid(&u)), Some(u));
        assert_eq!(parse_uuid("xyz"), None);
    }

    #[test]
    fn vhost_blk_devices_are_checked() {
        let base = "[[backend]]\nname=\"a\"\ntype=\"ram\"\nsize=\"1M\"\n[[lun]]\nname=\"l\"\nbackend=\"a\"\n";
        let ok = format!(
            "{base}[[vhost_blk]]\nname=\"vm\"\nsocket=\"/run/x.sock\"\nlun=\"l\"\nqueues=2\n"
        );
        let c = parse("t", &ok).unwrap();
        assert_eq!(c.vhost_blk[0].queues, 2);
        assert_eq!(c.vhost_blk[0].lun, "l");
        let (line, msg) = err_of(&format!(
            "{base}[[vhost_blk]]\nname=\"vm\"\nsocket=\"/run/x.sock\"\nlun=\"zz\"\n"
        ));
        assert_eq!(line, 11, "{msg}");
        assert!(msg.contains("zz"), "{msg}");
        let (_, msg) = err_of(&format!("{base}[[vhost_scsi]]\nname=\"s\"\nsocket=\"/run/x.sock\"\n[[vhost_blk]]\nname=\"vm\"\nsocket=\"/run/x.sock\"\nlun=\"l\"\n"));
        assert!(msg.contains("socket"), "{msg}");
        let (_, msg) = err_of(&format!(
            "{base}[[vhost_blk]]\nname=\"vm\"\nsocket=\"rel.sock\"\nlun=\"l\"\n"
        ));
        assert!(msg.contains("absolute"), "{msg}");
    }
}
