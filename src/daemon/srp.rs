//! SRP targets: target ports reached over RDMA CM. One listener (the `[srp]`
//! settings) serves them all; it starts with the first target, so a daemon
//! without SRP targets needs no RDMA device.

use std::sync::Arc;

use engine::{LunMap, Protocol, TargetPort};
use serde_json::{json, Value};

use super::{ctx, invalid, map_change, parsed, Daemon, OpError};
use crate::config::{self, RawSrpTarget, SrpSettings};

/// A running SRP target.
pub(super) struct SrpObj {
    pub raw: RawSrpTarget,
    pub luns: Arc<LunMap>,
}

/// The SRP transport as the daemon drives it.
pub(super) struct SrpTransport {
    settings: SrpSettings,
    server: Option<transport::Server>,
}

impl SrpTransport {
    pub fn new(settings: SrpSettings) -> Self {
        SrpTransport {
            settings,
            server: None,
        }
    }

    /// The server, started on first use.
    fn server(
        &mut self,
        registry: &Arc<engine::LunRegistry>,
    ) -> Result<&transport::Server, OpError> {
        if self.server.is_none() {
            let s = transport::start(&self.settings, registry.clone())
                .map_err(|e| OpError::Failed(format!("SRP listener: {e}")))?;
            tracing::info!(listen = ?self.settings.listen, "SRP listener started");
            self.server = Some(s);
        }
        self.server
            .as_ref()
            .ok_or_else(|| OpError::Failed("SRP listener did not start".into()))
    }

    pub fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            transport::shutdown(s);
        }
    }
}

/// The transport calls, in one place.
mod transport {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use engine::{LunMap, LunRegistry, TargetPort};

    use crate::config::SrpSettings;

    pub use srp::server::Server;

    /// One login (I_T nexus) of a target: its channels and their counts.
    pub struct Channels {
        pub initiator: String,
        pub channels: usize,
        pub commands: u64,
        pub errors: u64,
    }

    pub fn start(s: &SrpSettings, registry: Arc<LunRegistry>) -> Result<Server, String> {
        let cfg = srp::server::ServerConfig {
            listen: s.listen.clone(),
            queue_depth: s.queue_depth,
            ..Default::default()
        };
        Server::start(cfg, registry).map_err(|e| e.to_string())
    }

    pub fn shutdown(s: Server) {
        s.shutdown();
    }

    pub fn add_target(
        s: &Server,
        name: &str,
        id_ext: u64,
        ioc_guid: u64,
        port: Arc<TargetPort>,
        luns: Arc<LunMap>,
    ) -> Result<(), String> {
        s.add_target(srp::server::Target {
            name: name.to_string(),
            id_ext,
            ioc_guid,
            port,
            luns,
        })
        .map_err(|e| e.to_string())
    }

    pub fn remove_target(s: &Server, name: &str) {
        if let Err(e) = s.remove_target(name) {
            tracing::warn!(target = %name, "SRP target removal: {e}");
        }
    }

    /// The target's logins, one entry per I_T nexus.
    pub fn sessions(s: &Server, target: &str) -> Vec<Channels> {
        let mut by_nexus: BTreeMap<u64, Channels> = BTreeMap::new();
        for c in s.sessions_list().into_iter().filter(|c| c.target == target) {
            let e = by_nexus.entry(c.nexus).or_insert_with(|| Channels {
                initiator: c.initiator.clone(),
                channels: 0,
                commands: 0,
                errors: 0,
            });
            e.channels += 1;
            e.commands += c.commands;
            e.errors += c.errors;
        }
        by_nexus.into_values().collect()
    }
}

impl Daemon {
    pub fn create_srp_target(&self, raw: RawSrpTarget) -> Result<Value, OpError> {
        let text = toml::to_string(&raw).unwrap_or_default();
        self.create_srp_checked(raw, &text)
    }

    pub fn create_srp_target_json(&self, params: &Value) -> Result<Value, OpError> {
        let (raw, text): (RawSrpTarget, _) = parsed(params)?;
        self.create_srp_checked(raw, &text)
    }

    fn create_srp_checked(&self, raw: RawSrpTarget, text: &str) -> Result<Value, OpError> {
        let def = config::check_srp_target(&ctx(text), &raw).map_err(|e| invalid(&e))?;
        let mut st = self.lock();
        if st.srp.contains_key(&def.name) {
            return Err(OpError::Exists(format!(
                "SRP target {:?} already exists",
                def.name
            )));
        }
        if let Some((other, _)) = st.srp.iter().find(|(_, o)| {
            config::parse_guid(o.raw.id_ext.get_ref()) == Some(def.id_ext)
                && config::parse_guid(o.raw.ioc_guid.get_ref()) == Some(def.ioc_guid)
        }) {
            return Err(OpError::Exists(format!(
                "SRP target {other:?} already has id_ext {:#x} and ioc_guid {:#x}",
                def.id_ext, def.ioc_guid
            )));
        }
        let luns = st.build_map(&def.luns)?;
        let port = Arc::new(TargetPort {
            // SPC-4 names an SRP target port by its 128-bit identifier.
            name: format!("0x{:016x}{:016x}", def.id_ext, def.ioc_guid),
            protocol: Protocol::Srp,
            relative_id: st.port_id(),
            group_id: 1,
        });
        let mut tr = self.srp_transport();
        let server = tr.server(&self.registry)?;
        transport::add_target(
            server,
            &def.name,
            def.id_ext,
            def.ioc_guid,
            port,
            luns.clone(),
        )
        .map_err(|e| OpError::Failed(format!("SRP target {:?}: {e}", def.name)))?;
        drop(tr);
        tracing::info!(target = %def.name, "SRP target created");
        st.srp.insert(def.name.clone(), SrpObj { raw, luns });
        drop(st);
        self.srp_target_json(&def.name)
    }

    pub fn delete_srp_target(&self, name: &str) -> Result<Value, OpError> {
        let mut st = self.lock();
        if st.srp.remove(name).is_none() {
            return Err(OpError::NotFound(format!("no SRP target {name:?}")));
        }
        if let Some(s) = &self.srp_transport().server {
            transport::remove_target(s, name);
        }
        tracing::info!(target = %name, "SRP target deleted");
        Ok(Value::Null)
    }

    fn srp_target_json(&self, name: &str) -> Result<Value, OpError> {
        let st = self.lock();
        let o = st
            .srp
            .get(name)
            .ok_or_else(|| OpError::NotFound(format!("no SRP target {name:?}")))?;
        let mut v = serde_json::to_value(&o.raw).unwrap_or(Value::Null);
        let channels = self.srp_transport().server.as_ref().map_or(0, |s| {
            transport::sessions(s, name)
                .iter()
                .map(|c| c.channels)
                .sum()
        });
        v["channels"] = json!(channels);
        Ok(v)
    }

    pub fn list_srp_targets(&self) -> Value {
        let names: Vec<String> = self.lock().srp.keys().cloned().collect();
        Value::Array(
            names
                .iter()
                .filter_map(|n| self.srp_target_json(n).ok())
                .collect(),
        )
    }

    /// Maps LUN `lun` at number `id` of an SRP target (`lun` None: unmaps `id`).
    pub fn srp_map(&self, target: &str, id: u64, lun: Option<&str>) -> Result<Value, OpError> {
        let mut st = self.lock();
        let new_lun = lun.map(|l| st.lun(l)).transpose()?;
        let o = st
            .srp
            .get_mut(target)
            .ok_or_else(|| OpError::NotFound(format!("no SRP target {target:?}")))?;
        let mut raw = o.raw.clone();
        map_change(&mut raw.luns, id, lun, &format!("SRP target {target:?}"))?;
        let text = toml::to_string(&raw).unwrap_or_default();
        config::check_srp_target(&ctx(&text), &raw).map_err(|e| invalid(&e))?;
        match new_lun {
            Some(l) => {
                o.luns.insert(id, l);
            }
            None => {
                o.luns.remove(id);
            }
        }
        o.raw = raw;
        drop(st);
        self.srp_target_json(target)
    }

    pub fn srp_sessions(&self, target: Option<&str>) -> Value {
        let names: Vec<String> = self
            .lock()
            .srp
            .keys()
            .filter(|n| target.is_none_or(|t| t == n.as_str()))
            .cloned()
            .collect();
        let tr = self.srp_transport();
        let Some(server) = tr.server.as_ref() else {
            return json!([]);
        };
        let mut out = Vec::new();
        for n in names {
            for c in transport::sessions(server, &n) {
                out.push(json!({
                    "target": n,
                    "initiator": c.initiator,
                    "channels": c.channels,
                    "commands": c.commands,
                    "errors": c.errors,
                }));
            }
        }
        Value::Array(out)
    }
}
