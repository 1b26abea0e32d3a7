//! What the RBD tests share: a LUN on an image of a test cluster (the iSCSI
//! server that exports it is `common::iscsi_server`).

#![allow(dead_code)]

use std::sync::Arc;

use backends::{Backend, BackendSpec};
use engine::{Lun, LunConfig};
use integration::ceph::Cluster;

/// Opens `image` of `cluster` through librbd, as client.admin with the
/// cluster's own config file and keyring.
pub fn open_image(cluster: &Cluster, image: &str) -> Arc<dyn Backend> {
    let spec = BackendSpec::Rbd {
        pool: cluster.pool().to_string(),
        image: image.to_string(),
        namespace: None,
        snapshot: None,
        read_only: false,
        ceph_conf: Some(cluster.conf()),
        client_id: Some(cluster.client_id().to_string()),
        keyring: Some(cluster.keyring()),
        timeouts: Default::default(),
    };
    backends::open(&spec).unwrap_or_else(|e| panic!("opening {}: {e}", cluster.spec(image)))
}

/// A LUN named `name` on `backend`, with the engine's defaults (thin, not
/// removable) adjusted by `adjust`.
pub fn lun(name: &str, backend: Arc<dyn Backend>, adjust: impl FnOnce(&mut LunConfig)) -> Arc<Lun> {
    let mut uuid = [0u8; 16];
    for (i, b) in name.bytes().take(16).enumerate() {
        uuid[i] = b;
    }
    uuid[6] = (uuid[6] & 0x0f) | 0x40;
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    let mut cfg = LunConfig::new(name, uuid);
    adjust(&mut cfg);
    Lun::new(cfg, backend).expect("lun")
}
