//! What the RBD tests share: a LUN on an image of a test cluster, and an iSCSI
//! server on 127.0.0.1 that exports it.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use backends::{Backend, BackendSpec};
use engine::{Lun, LunConfig, LunMap, LunRegistry, Protocol, TargetPort};
use integration::ceph::Cluster;
use iscsi::server::{Server, ServerConfig, Target};

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

/// An iSCSI server on a free port of 127.0.0.1 with one target `iqn` whose
/// LUN 0 is `lun`; `registry` is the one the LUN is registered in.
pub fn iscsi_server(
    iqn: &str,
    lun: &Arc<Lun>,
    registry: Arc<LunRegistry>,
    adjust: impl FnOnce(&mut ServerConfig),
) -> Server {
    let map = LunMap::new();
    map.insert(0, lun.clone());
    let target = Target {
        name: iqn.to_string(),
        alias: None,
        portals: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
        portal_group_tag: 1,
        port: Arc::new(TargetPort {
            name: format!("{iqn},t,0x0001"),
            protocol: Protocol::Iscsi,
            relative_id: 2,
            group_id: 1,
        }),
        luns: map,
        acl: Vec::new(),
        chap: None,
        chap_required: false,
    };
    let mut cfg = ServerConfig {
        targets: vec![target],
        workers: 2,
        ..ServerConfig::default()
    };
    adjust(&mut cfg);
    Server::start(cfg, registry).expect("iSCSI server")
}
