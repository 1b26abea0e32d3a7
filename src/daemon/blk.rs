//! vhost-user-blk devices: one LUN each, served to QEMU's vhost-user-blk-pci
//! or cloud-hypervisor. They go through the engine like every other export,
//! so reservations and writes are shared with iSCSI and vhost-user-scsi.

use std::sync::Arc;
use std::thread::JoinHandle;

use engine::{Protocol, TargetPort};
use serde_json::{json, Value};
use vhost_target::{StopHandle, VhostBlkController};

use super::{ctx, invalid, parsed, spawn_serving, Daemon, OpError};
use crate::config::{self, RawVhostBlk};

/// A running vhost-user-blk device.
pub(super) struct BlkObj {
    pub raw: RawVhostBlk,
    pub controller: Arc<VhostBlkController>,
    pub stop: StopHandle,
    pub thread: Option<JoinHandle<()>>,
}

impl BlkObj {
    pub fn stop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(self.raw.socket.get_ref());
    }

    fn json(&self) -> Value {
        let mut v = serde_json::to_value(&self.raw).unwrap_or(Value::Null);
        v["connections"] = json!(self.controller.connections());
        if let Some(e) = self.controller.last_error() {
            v["last_error"] = json!(e);
        }
        v
    }
}

impl Daemon {
    pub fn create_vhost_blk(&self, raw: RawVhostBlk) -> Result<Value, OpError> {
        let text = toml::to_string(&raw).unwrap_or_default();
        self.create_blk_checked(raw, &text)
    }

    pub fn create_vhost_blk_json(&self, params: &Value) -> Result<Value, OpError> {
        let (raw, text): (RawVhostBlk, _) = parsed(params)?;
        self.create_blk_checked(raw, &text)
    }

    fn create_blk_checked(&self, raw: RawVhostBlk, text: &str) -> Result<Value, OpError> {
        let def = config::check_vhost_blk(&ctx(text), &raw).map_err(|e| invalid(&e))?;
        let mut st = self.lock();
        if st.vhost.contains_key(&def.name) || st.blk.contains_key(&def.name) {
            return Err(OpError::Exists(format!(
                "a vhost controller {:?} already exists",
                def.name
            )));
        }
        let taken = st
            .vhost
            .values()
            .map(|v| v.raw.socket.get_ref())
            .chain(st.blk.values().map(|b| b.raw.socket.get_ref()))
            .any(|s| s == &def.socket);
        if taken {
            return Err(OpError::Exists(format!(
                "socket {} is used by another vhost controller",
                def.socket.display()
            )));
        }
        let lun = st.lun(&def.lun)?;
        if let Some(dir) = def.socket.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| OpError::Failed(format!("create {}: {e}", dir.display())))?;
        }
        let port = Arc::new(TargetPort {
            name: format!("vhost-blk:{}", def.name),
            protocol: Protocol::Sas,
            relative_id: st.port_id(),
            group_id: 1,
        });
        let controller = Arc::new(
            VhostBlkController::new(
                &def.name,
                &def.socket,
                lun,
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
        tracing::info!(device = %def.name, socket = %def.socket.display(), lun = %def.lun, "vhost-user-blk device created");
        let obj = BlkObj {
            raw,
            controller,
            stop,
            thread: Some(thread),
        };
        let out = obj.json();
        st.blk.insert(def.name, obj);
        Ok(out)
    }

    pub fn delete_vhost_blk(&self, name: &str) -> Result<Value, OpError> {
        let mut st = self.lock();
        let mut o = st
            .blk
            .remove(name)
            .ok_or_else(|| OpError::NotFound(format!("no vhost-user-blk device {name:?}")))?;
        drop(st);
        o.stop();
        tracing::info!(device = %name, "vhost-user-blk device deleted");
        Ok(Value::Null)
    }

    pub fn list_vhost_blk(&self) -> Value {
        let st = self.lock();
        Value::Array(st.blk.values().map(BlkObj::json).collect())
    }
}
