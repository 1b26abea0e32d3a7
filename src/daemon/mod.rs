//! The running daemon: every backend, LUN, iSCSI and SRP target and vhost device,
//! and the operations that change them. The config file and the JSON-RPC
//! methods both go through these operations, so a change made either way is
//! checked the same way and is saved the same way.
//!
//! All changes are serialized by one lock: two clients creating and deleting at
//! once always leave a configuration that is the sum of their successful calls.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use backends::Backend;
use engine::{Lun, LunMap, LunRegistry, Protocol, TargetPort};
use iscsi::server::{Server, ServerConfig, Target};
use serde_json::{json, Value};
use toml::Spanned;
use vhost_target::{StopHandle, VhostScsiController};

use crate::config::{
    self, Config, ConfigError, Ctx, RawBackend, RawConfig, RawIscsiTarget, RawLun, RawMapping,
    RawVhostScsi,
};

mod blk;
pub mod rpc;
mod srp;
pub mod stats;

/// Why an operation was refused. Each kind has its JSON-RPC error code.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Exists(String),
    #[error("{0}")]
    InUse(String),
    #[error("{0}")]
    Failed(String),
}

impl OpError {
    /// JSON-RPC error code: -32602 for bad parameters, application codes for
    /// the rest (-32000 failed, -32001 not found, -32002 exists, -32003 in use).
    pub fn code(&self) -> i64 {
        match self {
            OpError::Invalid(_) => -32602,
            OpError::Failed(_) => -32000,
            OpError::NotFound(_) => -32001,
            OpError::Exists(_) => -32002,
            OpError::InUse(_) => -32003,
        }
    }
}

fn invalid(e: &ConfigError) -> OpError {
    OpError::Invalid(config::message_of(e))
}

struct BackendObj {
    raw: RawBackend,
    backend: Arc<dyn Backend>,
}

struct LunObj {
    raw: RawLun,
    lun: Arc<Lun>,
}

struct TargetObj {
    raw: RawIscsiTarget,
    luns: Arc<LunMap>,
}

struct VhostObj {
    raw: RawVhostScsi,
    controller: Arc<VhostScsiController>,
    stop: StopHandle,
    thread: Option<JoinHandle<()>>,
}

impl VhostObj {
    fn stop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Default)]
struct State {
    backends: BTreeMap<String, BackendObj>,
    luns: BTreeMap<String, LunObj>,
    targets: BTreeMap<String, TargetObj>,
    vhost: BTreeMap<String, VhostObj>,
    blk: BTreeMap<String, blk::BlkObj>,
    srp: BTreeMap<String, srp::SrpObj>,
    /// Relative target port identifiers handed out so far (unique per daemon).
    next_port_id: u16,
}

impl State {
    fn port_id(&mut self) -> u16 {
        self.next_port_id = self.next_port_id.wrapping_add(1).max(1);
        self.next_port_id
    }

    /// Who maps LUN `name`: "iscsi target X" / "vhost controller Y".
    fn users_of(&self, name: &str) -> Vec<String> {
        let mut v = Vec::new();
        for (t, o) in &self.targets {
            if o.raw.luns.iter().any(|m| m.get_ref().lun == name) {
                v.push(format!("iSCSI target {t}"));
            }
        }
        for (c, o) in &self.vhost {
            if o.raw.luns.iter().any(|m| m.get_ref().lun == name) {
                v.push(format!("vhost controller {c}"));
            }
        }
        for (c, o) in &self.blk {
            if o.raw.lun.get_ref() == name {
                v.push(format!("vhost-user-blk device {c}"));
            }
        }
        for (t, o) in &self.srp {
            if o.raw.luns.iter().any(|m| m.get_ref().lun == name) {
                v.push(format!("SRP target {t}"));
            }
        }
        v
    }

    fn lun(&self, name: &str) -> Result<Arc<Lun>, OpError> {
        self.luns
            .get(name)
            .map(|l| l.lun.clone())
            .ok_or_else(|| OpError::NotFound(format!("no LUN named {name:?}")))
    }

    fn build_map(&self, maps: &[RawMapping]) -> Result<Arc<LunMap>, OpError> {
        let map = LunMap::new();
        for m in maps {
            map.insert(m.id, self.lun(&m.lun)?);
        }
        Ok(map)
    }
}

/// Settings fixed at start.
pub struct Settings {
    pub state_dir: Option<PathBuf>,
    pub rpc_socket: PathBuf,
    /// Where `save_config` writes when no path is given.
    pub config_path: Option<PathBuf>,
}

/// The daemon's objects.
pub struct Daemon {
    state: Mutex<State>,
    registry: Arc<LunRegistry>,
    iscsi: Server,
    /// Taken after `state` when both are needed.
    srp: Mutex<srp::SrpTransport>,
    base: RawConfig,
    pub settings: Settings,
}

/// Parses an object from RPC parameters and checks it as the config file would.
fn parsed<T: serde::de::DeserializeOwned>(params: &Value) -> Result<(T, String), OpError> {
    config::object_from_json(params).map_err(OpError::Invalid)
}

fn ctx(text: &str) -> Ctx<'_> {
    Ctx {
        path: "params",
        text,
    }
}

impl Daemon {
    /// Starts the servers and creates everything `cfg` describes. On an error
    /// nothing keeps running.
    pub fn start(cfg: Config, config_path: Option<PathBuf>) -> Result<Arc<Daemon>, OpError> {
        let registry = LunRegistry::new();
        let iscsi = Server::start(
            ServerConfig {
                workers: cfg.iscsi.workers,
                queue_depth: cfg.iscsi.queue_depth,
                max_sessions: cfg.iscsi.max_sessions,
                max_connections: cfg.iscsi.max_connections,
                ..ServerConfig::default()
            },
            registry.clone(),
        )
        .map_err(|e| OpError::Failed(format!("iSCSI server: {e}")))?;
        let mut base = cfg.raw.clone();
        base.backends.clear();
        base.luns.clear();
        base.iscsi_targets.clear();
        base.vhost_scsi.clear();
        base.vhost_blk.clear();
        base.srp_targets.clear();
        let d = Arc::new(Daemon {
            state: Mutex::new(State::default()),
            registry,
            iscsi,
            srp: Mutex::new(srp::SrpTransport::new(cfg.srp.clone())),
            base,
            settings: Settings {
                state_dir: cfg.state_dir.clone(),
                rpc_socket: cfg
                    .rpc_socket
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_RPC_SOCKET)),
                config_path,
            },
        });
        let started = (|| {
            for b in cfg.raw.backends {
                d.create_backend(b)?;
            }
            for l in cfg.raw.luns {
                d.create_lun(l)?;
            }
            for t in cfg.raw.iscsi_targets {
                d.create_iscsi_target(t)?;
            }
            for v in cfg.raw.vhost_scsi {
                d.create_vhost_scsi(v)?;
            }
            for v in cfg.raw.vhost_blk {
                d.create_vhost_blk(v)?;
            }
            for t in cfg.raw.srp_targets {
                d.create_srp_target(t)?;
            }
            Ok(())
        })();
        if let Err(e) = started {
            d.stop();
            return Err(e);
        }
        Ok(d)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn srp_transport(&self) -> MutexGuard<'_, srp::SrpTransport> {
        self.srp.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn registry(&self) -> &Arc<LunRegistry> {
        &self.registry
    }

    pub fn iscsi(&self) -> &Server {
        &self.iscsi
    }

    /// Stops the transports (closing every connection; commands in flight
    /// finish or are aborted before the engine workers exit) and makes every
    /// completed write durable.
    pub fn stop(&self) {
        let mut st = self.lock();
        for v in st.vhost.values_mut() {
            v.stop();
        }
        for b in st.blk.values_mut() {
            b.stop();
        }
        let names: Vec<String> = st.targets.keys().cloned().collect();
        for n in names {
            let _ = self.iscsi.remove_target(&n);
        }
        st.targets.clear();
        st.srp.clear();
        self.srp_transport().stop();
        for b in st.backends.values() {
            if let Err(e) = b.backend.sync() {
                tracing::error!(backend = %b.raw.name.get_ref(), "sync at exit: {e}");
            }
        }
    }

    // ---- backends ----

    pub fn create_backend(&self, raw: RawBackend) -> Result<Value, OpError> {
        let text = toml::to_string(&raw).unwrap_or_default();
        self.create_backend_checked(raw, &text)
    }

    pub fn create_backend_json(&self, params: &Value) -> Result<Value, OpError> {
        let (raw, text): (RawBackend, _) = parsed(params)?;
        self.create_backend_checked(raw, &text)
    }

    fn create_backend_checked(&self, raw: RawBackend, text: &str) -> Result<Value, OpError> {
        let name = raw.name.get_ref().clone();
        if !config::valid_object_name(&name) {
            return Err(OpError::Invalid(format!(
                "backend name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.'"
            )));
        }
        let spec = config::backend_spec(&ctx(text), &raw).map_err(|e| invalid(&e))?;
        let mut st = self.lock();
        if st.backends.contains_key(&name) {
            return Err(OpError::Exists(format!("backend {name:?} already exists")));
        }
        let backend =
            backends::open(&spec).map_err(|e| OpError::Failed(format!("backend {name:?}: {e}")))?;
        tracing::info!(backend = %name, "created: {}", backend.describe());
        let out = json!({"name": name, "size": backend.size()});
        st.backends.insert(name, BackendObj { raw, backend });
        Ok(out)
    }

    pub fn delete_backend(&self, name: &str) -> Result<Value, OpError> {
        let mut st = self.lock();
        if !st.backends.contains_key(name) {
            return Err(OpError::NotFound(format!("no backend named {name:?}")));
        }
        let users: Vec<&str> = st
            .luns
            .values()
            .filter(|l| l.raw.backend.get_ref() == name)
            .map(|l| l.raw.name.get_ref().as_str())
            .collect();
        if !users.is_empty() {
            return Err(OpError::InUse(format!(
                "backend {name:?} is used by LUN {}; delete the LUN first",
                users.join(", ")
            )));
        }
        if let Some(b) = st.backends.remove(name) {
            let _ = b.backend.sync();
        }
        tracing::info!(backend = %name, "deleted");
        Ok(Value::Null)
    }

    pub fn list_backends(&self) -> Value {
        let st = self.lock();
        Value::Array(
            st.backends
                .values()
                .map(|b| {
                    let mut v = serde_json::to_value(&b.raw).unwrap_or(Value::Null);
                    v["size"] = json!(b.backend.size());
                    v["describe"] = json!(b.backend.describe());
                    v
                })
                .collect(),
        )
    }

    // ---- LUNs ----

    pub fn create_lun(&self, raw: RawLun) -> Result<Value, OpError> {
        let text = toml::to_string(&raw).unwrap_or_default();
        self.create_lun_checked(raw, &text)
    }

    pub fn create_lun_json(&self, params: &Value) -> Result<Value, OpError> {
        let (raw, text): (RawLun, _) = parsed(params)?;
        self.create_lun_checked(raw, &text)
    }

    fn create_lun_checked(&self, mut raw: RawLun, text: &str) -> Result<Value, OpError> {
        let def = config::lun_def(&ctx(text), &raw, self.settings.state_dir.as_deref())
            .map_err(|e| invalid(&e))?;
        let name = def.config.name.clone();
        let mut st = self.lock();
        if st.luns.contains_key(&name) {
            return Err(OpError::Exists(format!("LUN {name:?} already exists")));
        }
        if let Some(other) = st
            .luns
            .values()
            .find(|l| l.lun.config.uuid == def.config.uuid)
        {
            return Err(OpError::Exists(format!(
                "LUN {name:?}: its uuid is used by LUN {:?}",
                other.raw.name.get_ref()
            )));
        }
        let backend = st
            .backends
            .get(&def.backend)
            .ok_or_else(|| OpError::NotFound(format!("no backend named {:?}", def.backend)))?
            .backend
            .clone();
        if let Some(user) = st
            .luns
            .values()
            .find(|l| l.raw.backend.get_ref() == &def.backend)
        {
            return Err(OpError::InUse(format!(
                "backend {:?} is already used by LUN {:?}",
                def.backend,
                user.raw.name.get_ref()
            )));
        }
        let lun = Lun::new(def.config, backend)
            .map_err(|e| OpError::Invalid(format!("LUN {name:?}: {e}")))?;
        if raw.uuid.is_none() {
            raw.uuid = Some(Spanned::new(0..0, config::format_uuid(&lun.config.uuid)));
        }
        self.registry.add(lun.clone());
        tracing::info!(lun = %name, "created");
        let out = lun_json(&raw, &lun);
        st.luns.insert(name, LunObj { raw, lun });
        Ok(out)
    }

    /// Deletes a LUN. A mapped LUN is refused unless `force`, which first
    /// removes it from every target and controller (their initiators get
    /// REPORTED LUNS DATA HAS CHANGED, guests a hot-unplug).
    pub fn delete_lun(&self, name: &str, force: bool) -> Result<Value, OpError> {
        let mut st = self.lock();
        if !st.luns.contains_key(name) {
            return Err(OpError::NotFound(format!("no LUN named {name:?}")));
        }
        let users = st.users_of(name);
        if !users.is_empty() && !force {
            return Err(OpError::InUse(format!(
                "LUN {name:?} is mapped by {}; unmap it first or pass force",
                users.join(", ")
            )));
        }
        for o in st.targets.values_mut() {
            unmap_all(&mut o.raw.luns, &o.luns, name);
        }
        for o in st.srp.values_mut() {
            unmap_all(&mut o.raw.luns, &o.luns, name);
        }
        for o in st.vhost.values_mut() {
            let controller = &o.controller;
            o.raw.luns.retain(|m| {
                if m.get_ref().lun != name {
                    return true;
                }
                let _ = controller.detach_lun(m.get_ref().id);
                false
            });
        }
        // A blk device is its LUN: forcing the LUN away removes the device.
        let devices: Vec<String> = st
            .blk
            .iter()
            .filter(|(_, b)| b.raw.lun.get_ref() == name)
            .map(|(n, _)| n.clone())
            .collect();
        for d in devices {
            if let Some(mut b) = st.blk.remove(&d) {
                b.stop();
            }
        }
        st.luns.remove(name);
        self.registry.remove(name);
        tracing::info!(lun = %name, "deleted");
        Ok(Value::Null)
    }

    pub fn resize_lun(&self, name: &str, size: u64) -> Result<Value, OpError> {
        let st = self.lock();
        let lun = st.lun(name)?;
        lun.resize(size)
            .map_err(|e| OpError::Failed(format!("LUN {name:?}: {e}")))?;
        tracing::info!(lun = %name, size, "resized");
        Ok(json!({"name": name, "size": lun.num_blocks() * u64::from(lun.block_size())}))
    }

    pub fn list_luns(&self) -> Value {
        let st = self.lock();
        Value::Array(st.luns.values().map(|l| lun_json(&l.raw, &l.lun)).collect())
    }

    pub fn lun_stats(&self, name: Option<&str>) -> Result<Value, OpError> {
        let st = self.lock();
        let mut out = Vec::new();
        for (n, l) in &st.luns {
            if name.is_some_and(|x| x != n) {
                continue;
            }
            out.push(stats::lun_stats_json(n, &l.lun));
        }
        if let (Some(n), true) = (name, out.is_empty()) {
            return Err(OpError::NotFound(format!("no LUN named {n:?}")));
        }
        Ok(Value::Array(out))
    }

    // ---- iSCSI ----

    pub fn create_iscsi_target(&self, raw: RawIscsiTarget) -> Result<Value, OpError> {
        let text = toml::to_string(&raw).unwrap_or_default();
        self.create_iscsi_target_checked(raw, &text)
    }

    pub fn create_iscsi_target_json(&self, params: &Value) -> Result<Value, OpError> {
        let (raw, text): (RawIscsiTarget, _) = parsed(params)?;
        self.create_iscsi_target_checked(raw, &text)
    }

    fn create_iscsi_target_checked(
        &self,
        raw: RawIscsiTarget,
        text: &str,
    ) -> Result<Value, OpError> {
        let def = config::check_iscsi_target(&ctx(text), &raw).map_err(|e| invalid(&e))?;
        let mut st = self.lock();
        if st.targets.contains_key(&def.name) {
            return Err(OpError::Exists(format!(
                "iSCSI target {:?} already exists",
                def.name
            )));
        }
        let luns = st.build_map(&def.luns)?;
        let tpgt = def.portal_group_tag;
        let target = Target {
            name: def.name.clone(),
            alias: def.alias,
            portals: def.portals,
            portal_group_tag: tpgt,
            port: Arc::new(TargetPort {
                name: format!("{},t,0x{tpgt:04x}", def.name),
                protocol: Protocol::Iscsi,
                relative_id: st.port_id(),
                group_id: 1,
            }),
            luns: luns.clone(),
            acl: def.acl,
            chap: def.chap,
            chap_required: def.chap_required,
        };
        self.iscsi
            .add_target(target)
            .map_err(|e| OpError::Failed(format!("iSCSI target {:?}: {e}", def.name)))?;
        tracing::info!(target = %def.name, "iSCSI target created");
        st.targets.insert(def.name.clone(), TargetObj { raw, luns });
        drop(st);
        self.iscsi_target_json(&def.name)
    }

    pub fn delete_iscsi_target(&self, name: &str) -> Result<Value, OpError> {
        let mut st = self.lock();
        if st.targets.remove(name).is_none() {
            return Err(OpError::NotFound(format!("no iSCSI target {name:?}")));
        }
        self.iscsi
            .remove_target(name)
            .map_err(|e| OpError::Failed(e.to_string()))?;
        tracing::info!(target = %name, "iSCSI target deleted");
        Ok(Value::Null)
    }

    fn iscsi_target_json(&self, name: &str) -> Result<Value, OpError> {
        let st = self.lock();
        let o = st
            .targets
            .get(name)
            .ok_or_else(|| OpError::NotFound(format!("no iSCSI target {name:?}")))?;
        let mut v = serde_json::to_value(&o.raw).unwrap_or(Value::Null);
        // Secrets never leave through listings.
        if let Some(m) = v.as_object_mut() {
            for k in ["chap_secret", "chap_mutual_secret"] {
                if m.contains_key(k) {
                    m.insert(k.into(), json!("<hidden>"));
                }
            }
        }
        if let Some(t) = self.iscsi.targets().into_iter().find(|t| t.name == name) {
            v["listening"] = json!(t.portals.iter().map(|p| p.to_string()).collect::<Vec<_>>());
        }
        Ok(v)
    }

    pub fn list_iscsi_targets(&self) -> Value {
        let names: Vec<String> = self.lock().targets.keys().cloned().collect();
        Value::Array(
            names
                .iter()
                .filter_map(|n| self.iscsi_target_json(n).ok())
                .collect(),
        )
    }

    /// Changes a target's raw definition with `f`, checks the result as a
    /// config file would, and applies it through `apply`.
    fn change_target(
        &self,
        name: &str,
        f: impl FnOnce(&mut RawIscsiTarget) -> Result<(), OpError>,
        apply: impl FnOnce(&Server, &config::IscsiTargetDef, &TargetObj) -> Result<(), OpError>,
    ) -> Result<Value, OpError> {
        let mut st = self.lock();
        let o = st
            .targets
            .get(name)
            .ok_or_else(|| OpError::NotFound(format!("no iSCSI target {name:?}")))?;
        let mut raw = o.raw.clone();
        f(&mut raw)?;
        let text = toml::to_string(&raw).unwrap_or_default();
        let def = config::check_iscsi_target(&ctx(&text), &raw).map_err(|e| invalid(&e))?;
        for m in &def.luns {
            st.lun(&m.lun)?;
        }
        apply(&self.iscsi, &def, o)?;
        if let Some(o) = st.targets.get_mut(name) {
            o.raw = raw;
        }
        drop(st);
        self.iscsi_target_json(name)
    }

    pub fn iscsi_portal(&self, target: &str, portal: &str, add: bool) -> Result<Value, OpError> {
        let addr: SocketAddr = portal.parse().map_err(|_| {
            OpError::Invalid(format!(
                "portal {portal:?} is not ADDRESS:PORT (IPv6 as [ADDRESS]:PORT)"
            ))
        })?;
        self.change_target(
            target,
            |raw| {
                let pos = raw
                    .portals
                    .iter()
                    .position(|p| p.get_ref().parse::<SocketAddr>().ok() == Some(addr));
                match (add, pos) {
                    (true, Some(_)) => Err(OpError::Exists(format!(
                        "iSCSI target {target:?} already has portal {addr}"
                    ))),
                    (true, None) => {
                        raw.portals.push(Spanned::new(0..0, addr.to_string()));
                        Ok(())
                    }
                    (false, Some(i)) => {
                        raw.portals.remove(i);
                        Ok(())
                    }
                    (false, None) => Err(OpError::NotFound(format!(
                        "iSCSI target {target:?} has no portal {addr}"
                    ))),
                }
            },
            |server, _, _| {
                let r = if add {
                    server.add_portal(target, addr).map(|_| ())
                } else {
                    server.remove_portal(target, addr)
                };
                r.map_err(|e| OpError::Failed(e.to_string()))
            },
        )
    }

    pub fn iscsi_acl(&self, target: &str, initiator: &str, add: bool) -> Result<Value, OpError> {
        self.change_target(
            target,
            |raw| {
                let pos = raw.acl.iter().position(|a| a.get_ref() == initiator);
                match (add, pos) {
                    (true, Some(_)) => Err(OpError::Exists(format!(
                        "{initiator:?} is already in the ACL of {target:?}"
                    ))),
                    (true, None) => {
                        raw.acl.push(Spanned::new(0..0, initiator.to_string()));
                        Ok(())
                    }
                    (false, Some(i)) => {
                        raw.acl.remove(i);
                        Ok(())
                    }
                    (false, None) => Err(OpError::NotFound(format!(
                        "{initiator:?} is not in the ACL of {target:?}"
                    ))),
                }
            },
            |server, def, _| {
                server
                    .modify_target(target, |t| t.acl = def.acl.clone())
                    .map_err(|e| OpError::Failed(e.to_string()))
            },
        )
    }

    /// Sets (or with `user` None, clears) a target's CHAP secrets.
    pub fn iscsi_chap(&self, target: &str, chap: &ChapParams) -> Result<Value, OpError> {
        self.change_target(
            target,
            |raw| {
                let s = |v: &Option<String>| v.clone().map(|x| Spanned::new(0..0, x));
                raw.chap_user = s(&chap.user);
                raw.chap_secret = s(&chap.secret);
                raw.chap_mutual_user = s(&chap.mutual_user);
                raw.chap_mutual_secret = s(&chap.mutual_secret);
                raw.chap_required = chap.required;
                Ok(())
            },
            |server, def, _| {
                server
                    .modify_target(target, |t| {
                        t.chap = def.chap.clone();
                        t.chap_required = def.chap_required;
                    })
                    .map_err(|e| OpError::Failed(e.to_string()))
            },
        )
    }

    /// Maps LUN `lun` at number `id` of a target (`lun` None: unmaps `id`).
    pub fn iscsi_map(&self, target: &str, id: u64, lun: Option<&str>) -> Result<Value, OpError> {
        self.change_target(
            target,
            |raw| map_change(&mut raw.luns, id, lun, &format!("iSCSI target {target:?}")),
            |_, _, _| Ok(()),
        )?;
        let st = self.lock();
        if let Some(o) = st.targets.get(target) {
            match lun {
                Some(l) => {
                    o.luns.insert(id, st.lun(l)?);
                }
                None => {
                    o.luns.remove(id);
                }
            }
        }
        drop(st);
        self.iscsi_target_json(target)
    }

    pub fn iscsi_sessions(&self, target: Option<&str>) -> Value {
        Value::Array(
            self.iscsi
                .sessions_list()
                .into_iter()
                .filter(|s| target.is_none_or(|t| t == s.target))
                .map(|s| {
                    json!({
                        "target": s.target,
                        "initiator": s.initiator,
                        "isid": s.isid,
                        "tsih": s.tsih,
                        "peer": s.peer.map(|p| p.to_string()),
                        "since": s.since,
                        "commands": s.commands,
                        "errors": s.errors,
                        "aborted": s.aborted,
                        "bytes": s.bytes,
                    })
                })
                .collect(),
        )
    }

    pub fn iscsi_drop_session(&self, target: &str, tsih: u16) -> Result<Value, OpError> {
        if self.iscsi.drop_session(target, tsih) {
            Ok(Value::Null)
        } else {
            Err(OpError::NotFound(format!(
                "no session {tsih} on iSCSI target {target:?}"
            )))
        }
    }

    // ---- vhost-user-scsi ----

    pub fn create_vhost_scsi(&self, raw: RawVhostScsi) -> Result<Value, OpError> {
        let text = toml::to_string(&raw).unwrap_or_default();
        self.create_vhost_checked(raw, &text)
    }

    pub fn create_vhost_scsi_json(&self, params: &Value) -> Result<Value, OpError> {
        let (raw, text): (RawVhostScsi, _) = parsed(params)?;
        self.create_vhost_checked(raw, &text)
    }

    fn create_vhost_checked(&self, raw: RawVhostScsi, text: &str) -> Result<Value, OpError> {
        let def = config::check_vhost_scsi(&ctx(text), &raw).map_err(|e| invalid(&e))?;
        let mut st = self.lock();
        if st.vhost.contains_key(&def.name) {
            return Err(OpError::Exists(format!(
                "vhost controller {:?} already exists",
                def.name
            )));
        }
        if let Some((n, _)) = st
            .vhost
            .iter()
            .find(|(_, v)| v.raw.socket.get_ref() == &def.socket)
        {
            return Err(OpError::Exists(format!(
                "socket {} is used by vhost controller {n:?}",
                def.socket.display()
            )));
        }
        let luns = st.build_map(&def.luns)?;
        if let Some(dir) = def.socket.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| OpError::Failed(format!("create {}: {e}", dir.display())))?;
        }
        let port = Arc::new(TargetPort {
            name: format!("vhost:{}", def.name),
            protocol: Protocol::Sas,
            relative_id: st.port_id(),
            group_id: 1,
        });
        let controller = Arc::new(
            VhostScsiController::new(
                &def.name,
                &def.socket,
                luns.clone(),
                self.registry.clone(),
                def.queues,
            )
            .map_err(|e| OpError::Invalid(e.to_string()))?
            .with_target_port(port),
        );
        let stop = controller.stop_handle();
        let c = controller.clone();
        let thread = spawn_serving(&def.name, &def.socket, move || {
            c.serve().map_err(|e| e.to_string())
        })?;
        tracing::info!(controller = %def.name, socket = %def.socket.display(), "vhost-user-scsi controller created");
        let out = vhost_json(&raw, &controller);
        st.vhost.insert(
            def.name,
            VhostObj {
                raw,
                controller,
                stop,
                thread: Some(thread),
            },
        );
        Ok(out)
    }

    pub fn delete_vhost_scsi(&self, name: &str) -> Result<Value, OpError> {
        let mut st = self.lock();
        let mut o = st
            .vhost
            .remove(name)
            .ok_or_else(|| OpError::NotFound(format!("no vhost controller {name:?}")))?;
        drop(st);
        o.stop();
        let _ = std::fs::remove_file(o.raw.socket.get_ref());
        tracing::info!(controller = %name, "vhost controller deleted");
        Ok(Value::Null)
    }

    /// Attaches LUN `lun` at number `id` of a running controller (`lun` None:
    /// detaches `id`).
    pub fn vhost_map(&self, name: &str, id: u64, lun: Option<&str>) -> Result<Value, OpError> {
        let mut st = self.lock();
        let l = lun.map(|l| st.lun(l)).transpose()?;
        let o = st
            .vhost
            .get_mut(name)
            .ok_or_else(|| OpError::NotFound(format!("no vhost controller {name:?}")))?;
        if id > 255 {
            return Err(OpError::Invalid(format!("LUN number {id} is above 255")));
        }
        let mut raw = o.raw.luns.clone();
        map_change(&mut raw, id, lun, &format!("vhost controller {name:?}"))?;
        // Through the controller: a connected guest hears of it on its event
        // queue (hotplug), and the LUN's capacity changes reach it.
        let posted = match l {
            Some(l) => o.controller.attach_lun(id, l),
            None => o.controller.detach_lun(id).map(|(_, p)| p),
        }
        .map_err(|e| OpError::Invalid(e.to_string()))?;
        o.raw.luns = raw;
        let mut v = vhost_json(&o.raw, &o.controller);
        v["event"] = json!(format!("{posted:?}"));
        Ok(v)
    }

    pub fn list_vhost(&self) -> Value {
        let st = self.lock();
        Value::Array(
            st.vhost
                .values()
                .map(|o| vhost_json(&o.raw, &o.controller))
                .collect(),
        )
    }

    // ---- the configuration ----

    /// The running configuration, as a config document.
    pub fn running_config(&self) -> RawConfig {
        let st = self.lock();
        let mut c = self.base.clone();
        c.backends = st.backends.values().map(|b| b.raw.clone()).collect();
        c.luns = st.luns.values().map(|l| l.raw.clone()).collect();
        c.iscsi_targets = st.targets.values().map(|t| t.raw.clone()).collect();
        c.vhost_scsi = st.vhost.values().map(|v| v.raw.clone()).collect();
        c.vhost_blk = st.blk.values().map(|b| b.raw.clone()).collect();
        c.srp_targets = st.srp.values().map(|t| t.raw.clone()).collect();
        c
    }

    /// Writes the running configuration to `path` (or the file the daemon
    /// started from) atomically: a temporary file, fsync, rename, fsync of
    /// the directory.
    pub fn save_config(&self, path: Option<&Path>) -> Result<Value, OpError> {
        let path = path
            .map(Path::to_path_buf)
            .or_else(|| self.settings.config_path.clone())
            .ok_or_else(|| {
                OpError::Invalid(
                    "the daemon started without --config: give a path to save to".into(),
                )
            })?;
        let text = toml::to_string(&self.running_config())
            .map_err(|e| OpError::Failed(format!("serialize: {e}")))?;
        let text = format!(
            "# Written by oxtarget save_config. Edit with the daemon stopped, or\n\
             # change the running daemon through its RPC socket and save again.\n\n{text}"
        );
        // The saved file must load: check before replacing anything.
        config::parse(&path.display().to_string(), &text).map_err(|e| {
            OpError::Failed(format!("the running configuration does not check: {e}"))
        })?;
        write_atomically(&path, text.as_bytes())
            .map_err(|e| OpError::Failed(format!("write {}: {e}", path.display())))?;
        tracing::info!(path = %path.display(), "configuration saved");
        Ok(json!({"path": path.display().to_string()}))
    }
}

/// CHAP parameters of `iscsi_target_set_chap`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChapParams {
    pub user: Option<String>,
    pub secret: Option<String>,
    pub mutual_user: Option<String>,
    pub mutual_secret: Option<String>,
    pub required: Option<bool>,
}

/// Runs a vhost device's `serve` loop on its own thread and returns once its
/// socket listens (so that a caller may start the VMM right away), or with an
/// error if it could not.
fn spawn_serving(
    name: &str,
    socket: &Path,
    serve: impl FnOnce() -> Result<(), String> + Send + 'static,
) -> Result<JoinHandle<()>, OpError> {
    let who = name.to_string();
    let thread = std::thread::Builder::new()
        .name(format!("vhost-{name}"))
        .spawn(move || {
            if let Err(e) = serve() {
                tracing::error!(controller = %who, "vhost device stopped: {e}");
            }
        })
        .map_err(|e| OpError::Failed(format!("thread: {e}")))?;
    // serve() binds the socket first thing: wait for it, bounded.
    for _ in 0..400 {
        if socket.exists() || thread.is_finished() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    if thread.is_finished() || !socket.exists() {
        return Err(OpError::Failed(format!(
            "vhost device {name:?} could not listen on {}",
            socket.display()
        )));
    }
    Ok(thread)
}

/// Maps (`lun` Some) or unmaps (None) LUN number `id` in a raw LUN list.
fn map_change(
    maps: &mut Vec<Spanned<RawMapping>>,
    id: u64,
    lun: Option<&str>,
    owner: &str,
) -> Result<(), OpError> {
    let pos = maps.iter().position(|m| m.get_ref().id == id);
    match (lun, pos) {
        (Some(_), Some(i)) => Err(OpError::Exists(format!(
            "{owner} already has LUN {id} ({:?})",
            maps[i].get_ref().lun
        ))),
        (Some(l), None) => {
            maps.push(Spanned::new(
                0..0,
                RawMapping {
                    id,
                    lun: l.to_string(),
                },
            ));
            Ok(())
        }
        (None, Some(i)) => {
            maps.remove(i);
            Ok(())
        }
        (None, None) => Err(OpError::NotFound(format!("{owner} has no LUN {id}"))),
    }
}

fn unmap_all(maps: &mut Vec<Spanned<RawMapping>>, live: &LunMap, name: &str) {
    maps.retain(|m| {
        if m.get_ref().lun == name {
            live.remove(m.get_ref().id);
            false
        } else {
            true
        }
    });
}

fn lun_json(raw: &RawLun, lun: &Lun) -> Value {
    let mut v = serde_json::to_value(raw).unwrap_or(Value::Null);
    v["size"] = json!(lun.num_blocks() * u64::from(lun.block_size()));
    v["block_size"] = json!(lun.block_size());
    v["naa"] = json!(lun
        .naa()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>());
    v["serial"] = json!(lun.config.serial);
    v
}

fn vhost_json(raw: &RawVhostScsi, c: &VhostScsiController) -> Value {
    let mut v = serde_json::to_value(raw).unwrap_or(Value::Null);
    v["connections"] = json!(c.connections());
    if let Some(e) = c.last_error() {
        v["last_error"] = json!(e);
    }
    v
}

/// Writes `data` to `path` so that a crash leaves either the old file or the
/// new one.
pub fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Where the RPC socket goes when the config does not say.
pub const DEFAULT_RPC_SOCKET: &str = "/run/oxtarget/rpc.sock";
