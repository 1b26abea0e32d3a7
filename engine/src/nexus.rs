//! Who is talking to a LUN: the I_T nexus (initiator port, target port) and the LUN
//! map that the target port exposes. Reservations, unit attentions and ACLs key on
//! the nexus identity, which outlives any one connection.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::lun::Lun;

/// The SCSI transport protocol of a port (SPC-4 table 444), for TransportIDs and
/// VPD page 83h's PROTOCOL IDENTIFIER.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Protocol {
    Srp = 0x4,
    Iscsi = 0x5,
    Sas = 0x6,
}

/// A target port: a named port of this daemon (an iSCSI target portal group, an SRP
/// target port, a vhost controller), with its relative port id and its target port
/// group for ALUA.
#[derive(Debug)]
pub struct TargetPort {
    /// SCSI name of the port (e.g. `iqn.2026-11.org.oxtarget:t0,t,0x0001`).
    pub name: String,
    pub protocol: Protocol,
    /// RELATIVE TARGET PORT IDENTIFIER (1-based, unique in this daemon).
    pub relative_id: u16,
    /// TARGET PORT GROUP for REPORT TARGET PORT GROUPS.
    pub group_id: u16,
}

/// The I_T nexus identity that survives reconnects: what reservations and unit
/// attentions key on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NexusKey {
    /// Initiator port name (iSCSI `iqn...,i,0x<isid>`, SRP port id, vhost name).
    pub initiator: Arc<str>,
    pub relative_port: u16,
}

static NEXT_NEXUS: AtomicU64 = AtomicU64::new(1);

/// One I_T nexus as a transport established it (a login, a vhost connection).
#[derive(Debug)]
pub struct Nexus {
    /// Unique for this process; a reconnect makes a new id with the same key.
    pub id: u64,
    pub key: NexusKey,
    /// The initiator's TransportID (SPC-4 7.6.4) as persistent reservations report it.
    pub transport_id: Vec<u8>,
    pub target: Arc<TargetPort>,
    pub luns: Arc<LunMap>,
}

impl Nexus {
    pub fn new(
        initiator: &str,
        transport_id: Vec<u8>,
        target: Arc<TargetPort>,
        luns: Arc<LunMap>,
    ) -> Arc<Self> {
        let key = NexusKey {
            initiator: initiator.into(),
            relative_port: target.relative_id,
        };
        Arc::new(Nexus {
            id: NEXT_NEXUS.fetch_add(1, Ordering::Relaxed),
            key,
            transport_id,
            target,
            luns,
        })
    }
}

/// LUN numbers to LUNs, as one target port exposes them. Changed at run time by the
/// control plane (hotplug); readers take a cheap read lock.
#[derive(Debug, Default)]
pub struct LunMap {
    map: RwLock<BTreeMap<u64, Arc<Lun>>>,
}

impl LunMap {
    pub fn new() -> Arc<Self> {
        Arc::new(LunMap::default())
    }

    pub fn get(&self, lun: u64) -> Option<Arc<Lun>> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&lun)
            .cloned()
    }

    /// Maps `lun`; returns the LUN it replaced, if any. Initiators that use this
    /// map are told REPORTED LUNS DATA HAS CHANGED (SPC-4 7.7.1) on the LUNs they
    /// already know.
    pub fn insert(&self, lun: u64, l: Arc<Lun>) -> Option<Arc<Lun>> {
        let old = self
            .map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(lun, l);
        self.announce_change();
        old
    }

    /// Unmaps `lun`, with the same unit attention as `insert`.
    pub fn remove(&self, lun: u64) -> Option<Arc<Lun>> {
        let old = self
            .map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&lun);
        if old.is_some() {
            self.announce_change();
            if let Some(gone) = &old {
                gone.ua
                    .establish_all(crate::sense::asc::REPORTED_LUNS_DATA_HAS_CHANGED, None);
            }
        }
        old
    }

    fn announce_change(&self) {
        for (_, l) in self.entries() {
            l.ua.establish_all(crate::sense::asc::REPORTED_LUNS_DATA_HAS_CHANGED, None);
        }
    }

    /// The mapped LUN numbers, ascending.
    pub fn numbers(&self) -> Vec<u64> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect()
    }

    pub fn entries(&self) -> Vec<(u64, Arc<Lun>)> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.iter().map(|(n, l)| (*n, l.clone())).collect()
    }
}

/// iSCSI TransportID (SPC-4 7.6.4.6, format 00b): the initiator's iSCSI name,
/// NUL-terminated and padded to a multiple of 4, at least 20 bytes.
pub fn iscsi_transport_id(name: &str) -> Vec<u8> {
    let mut n = name.as_bytes().to_vec();
    n.push(0);
    while !n.len().is_multiple_of(4) || n.len() < 16 {
        n.push(0);
    }
    let mut t = vec![Protocol::Iscsi as u8, 0];
    t.extend_from_slice(&(n.len() as u16).to_be_bytes());
    t.extend_from_slice(&n);
    t
}
