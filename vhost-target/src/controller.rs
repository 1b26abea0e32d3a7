//! A vhost-user-scsi controller: a Unix socket that QEMU connects to, one target
//! (0) with the LUNs of a [`LunMap`], one I_T nexus per connection (the initiator
//! port is named after the controller, so reservations and unit attentions follow
//! the controller across reconnects), served until stopped: when QEMU disconnects,
//! the I/O in flight is drained and the next connection on the same socket is
//! accepted.
//!
//! While a guest is connected the control plane may attach and detach LUNs and
//! report capacity changes from any thread ([`VhostScsiController::attach_lun`],
//! [`VhostScsiController::detach_lun`], [`VhostScsiController::capacity_changed`]):
//! the LUN map changes at once and the driver is told on the event queue
//! ([`crate::events`]). A LUN's own [`Lun::resize`] reaches the controller through
//! the engine's capacity listener, so a resize needs no separate call.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use engine::{CapacityListener, Lun, LunMap, LunRegistry, Nexus, Protocol, TargetPort};
use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::backend::{QueueCounters, ScsiBackend, FIRST_REQUEST_QUEUE, MAX_REQUEST_QUEUES};
use crate::events::{EventChannel, EventStats, Posted};
use crate::queues::TARGET;
use crate::wire::{LunAddr, ScsiEvent, MAX_LUN};

/// Why a controller could not be made or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("controller {name}: {num_queues} request queues; 1 to {max} are supported")]
    Queues {
        name: String,
        num_queues: usize,
        max: usize,
    },
    #[error("controller {name}: listening on {path}: {source}")]
    Listen {
        name: String,
        path: PathBuf,
        #[source]
        source: vhost::vhost_user::Error,
    },
    /// vhost-user-backend's errors do not implement `std::error::Error`: the message.
    #[error("controller {name}: {what}: {message}")]
    Daemon {
        name: String,
        what: &'static str,
        message: String,
    },
    #[error("controller {name}: event queue eventfd: {source}")]
    EventFd {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// Why a LUN could not be attached, detached or reported changed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LunMapError {
    #[error("controller {name}: LUN {lun} is above {max}, the largest the LUN field carries")]
    Number { name: String, lun: u64, max: u16 },
    #[error("controller {name}: LUN {lun} is already attached ({existing})")]
    InUse {
        name: String,
        lun: u64,
        existing: String,
    },
    #[error("controller {name}: no LUN {lun}")]
    NotAttached { name: String, lun: u64 },
}

/// Tells the driver of capacity changes of the LUNs in a controller's map.
struct CapacityWatch {
    luns: Arc<LunMap>,
    events: Arc<EventChannel>,
}

impl CapacityWatch {
    fn post(&self, number: u64) -> Posted {
        let (asc, ascq) = (0x2a, 0x09); // CAPACITY DATA HAS CHANGED
        match lun_field(number) {
            Some(lun) => self.events.post(ScsiEvent::param_change(lun, asc, ascq)),
            None => Posted::NotNegotiated,
        }
    }
}

impl CapacityListener for CapacityWatch {
    fn capacity_changed(&self, lun: &Lun) {
        // Every number the LUN is attached at (a LUN no longer attached: none).
        for (n, l) in self.luns.entries() {
            if l.uid == lun.uid {
                self.post(n);
            }
        }
    }
}

/// The event LUN field of LUN `number`, if it can be addressed.
fn lun_field(number: u64) -> Option<[u8; 8]> {
    u16::try_from(number)
        .ok()
        .and_then(|n| LunAddr::encode_reported(TARGET, n))
}

/// Stops a controller's `serve` loop from another thread.
#[derive(Clone)]
pub struct StopHandle {
    stop: Arc<AtomicBool>,
    socket: PathBuf,
    current: Arc<Mutex<Option<ShutdownHandle>>>,
}

impl StopHandle {
    /// A handle on a serve loop's flag, socket and current connection (shared
    /// with the vhost-user-blk controller).
    pub(crate) fn new(
        stop: Arc<AtomicBool>,
        socket: PathBuf,
        current: Arc<Mutex<Option<ShutdownHandle>>>,
    ) -> Self {
        StopHandle {
            stop,
            socket,
            current,
        }
    }

    /// Ends the connection being served, if any, and makes `serve` return.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            h.shutdown();
        }
        // Wakes an `accept` that waits for the next connection.
        let _ = UnixStream::connect(&self.socket);
    }
}

/// One vhost-user-scsi controller.
pub struct VhostScsiController {
    name: String,
    socket: PathBuf,
    luns: Arc<LunMap>,
    registry: Arc<LunRegistry>,
    num_queues: usize,
    port: Arc<TargetPort>,
    stop: Arc<AtomicBool>,
    current: Arc<Mutex<Option<ShutdownHandle>>>,
    connections: AtomicU64,
    last_error: Mutex<Option<String>>,
    counters: Arc<QueueCounters>,
    events: Arc<EventChannel>,
    capacity: Arc<CapacityWatch>,
    /// Serializes attach and detach (check, then change the map).
    map_changes: Mutex<()>,
}

impl VhostScsiController {
    /// A controller called `name` (also its initiator port name) that will listen on
    /// `socket_path` with `num_queues` request queues. Its target port is a SAS port
    /// (relative port 1, group 1) unless [`VhostScsiController::with_target_port`]
    /// says otherwise.
    pub fn new(
        name: &str,
        socket_path: impl AsRef<Path>,
        lun_map: Arc<LunMap>,
        registry: Arc<LunRegistry>,
        num_queues: usize,
    ) -> Result<Self, ControllerError> {
        if !(1..=MAX_REQUEST_QUEUES).contains(&num_queues) {
            return Err(ControllerError::Queues {
                name: name.to_string(),
                num_queues,
                max: MAX_REQUEST_QUEUES,
            });
        }
        let events = EventChannel::new().map_err(|source| ControllerError::EventFd {
            name: name.to_string(),
            source,
        })?;
        let capacity = Arc::new(CapacityWatch {
            luns: lun_map.clone(),
            events: events.clone(),
        });
        for (_, lun) in lun_map.entries() {
            lun.subscribe_capacity(&capacity);
        }
        Ok(VhostScsiController {
            name: name.to_string(),
            socket: socket_path.as_ref().to_path_buf(),
            luns: lun_map,
            registry,
            num_queues,
            port: Arc::new(TargetPort {
                name: format!("vhost:{name}"),
                protocol: Protocol::Sas,
                relative_id: 1,
                group_id: 1,
            }),
            stop: Arc::new(AtomicBool::new(false)),
            current: Arc::new(Mutex::new(None)),
            connections: AtomicU64::new(0),
            last_error: Mutex::new(None),
            counters: QueueCounters::new(num_queues + usize::from(FIRST_REQUEST_QUEUE)),
            events,
            capacity,
            map_changes: Mutex::new(()),
        })
    }

    /// The LUNs this controller exposes. Change it through `attach_lun` and
    /// `detach_lun`, which tell the guest; a change made directly is seen by the
    /// guest's next scan only.
    pub fn lun_map(&self) -> &Arc<LunMap> {
        &self.luns
    }

    fn check_number(&self, lun: u64) -> Result<[u8; 8], LunMapError> {
        lun_field(lun).ok_or(LunMapError::Number {
            name: self.name.clone(),
            lun,
            max: MAX_LUN,
        })
    }

    /// Attaches `lun` at number `number` while a guest may be running: the map
    /// changes (the other LUNs report REPORTED LUNS DATA HAS CHANGED) and the
    /// driver is told to scan it (transport reset, reason RESCAN) if it
    /// negotiated HOTPLUG. The LUN's capacity changes are announced from now on.
    /// Returns what became of the event.
    pub fn attach_lun(&self, number: u64, lun: Arc<Lun>) -> Result<Posted, LunMapError> {
        let field = self.check_number(number)?;
        let _serial = self.map_changes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = self.luns.get(number) {
            return Err(LunMapError::InUse {
                name: self.name.clone(),
                lun: number,
                existing: existing.config.name.clone(),
            });
        }
        lun.subscribe_capacity(&self.capacity);
        self.luns.insert(number, lun);
        Ok(self.events.post(ScsiEvent::lun_added(field)))
    }

    /// Detaches LUN `number`: the map changes and the driver is told to remove
    /// the device (transport reset, reason REMOVED) if it negotiated HOTPLUG.
    /// Commands already in flight on it complete. Returns the LUN and what became
    /// of the event.
    pub fn detach_lun(&self, number: u64) -> Result<(Arc<Lun>, Posted), LunMapError> {
        let field = self.check_number(number)?;
        let _serial = self.map_changes.lock().unwrap_or_else(|e| e.into_inner());
        let lun = self.luns.remove(number).ok_or(LunMapError::NotAttached {
            name: self.name.clone(),
            lun: number,
        })?;
        Ok((lun, self.events.post(ScsiEvent::lun_removed(field))))
    }

    /// Tells the driver that LUN `number`'s capacity changed (PARAM_CHANGE with
    /// CAPACITY DATA HAS CHANGED; Linux then re-reads the capacity) if it
    /// negotiated CHANGE. `Lun::resize` does this by itself; this is for a store
    /// that changed size under the LUN.
    pub fn capacity_changed(&self, number: u64) -> Result<Posted, LunMapError> {
        self.check_number(number)?;
        if self.luns.get(number).is_none() {
            return Err(LunMapError::NotAttached {
                name: self.name.clone(),
                lun: number,
            });
        }
        Ok(self.capacity.post(number))
    }

    /// Event queue counters over all connections.
    pub fn event_stats(&self) -> EventStats {
        self.events.stats()
    }

    /// Uses `port` as the target port (its relative id must be unique in the daemon).
    pub fn with_target_port(mut self, port: Arc<TargetPort>) -> Self {
        self.port = port;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// Connections served to their end so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// How the last connection ended, if it ended in an error.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Descriptor chains taken per device queue (0 control, 1 event, 2.. request
    /// queues), over all connections.
    pub fn queue_chains(&self) -> Vec<u64> {
        self.counters.chains()
    }

    /// Queues stopped by QEMU (GET_VRING_BASE) over all connections.
    pub fn queue_stops(&self) -> u64 {
        self.counters.stops()
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            stop: self.stop.clone(),
            socket: self.socket.clone(),
            current: self.current.clone(),
        }
    }

    /// The I_T nexus of one connection.
    fn nexus(&self) -> Arc<Nexus> {
        Nexus::new(
            &self.name,
            sas_transport_id(&self.name),
            self.port.clone(),
            self.luns.clone(),
        )
    }

    fn daemon_error(&self, what: &'static str, e: impl std::fmt::Display) -> ControllerError {
        ControllerError::Daemon {
            name: self.name.clone(),
            what,
            message: e.to_string(),
        }
    }

    /// Listens on the socket and serves one connection after another until
    /// [`StopHandle::stop`]. A connection that ends in an error is recorded
    /// ([`VhostScsiController::last_error`]) and the next one is accepted.
    pub fn serve(&self) -> Result<(), ControllerError> {
        let mut listener =
            Listener::new(&self.socket, true).map_err(|source| ControllerError::Listen {
                name: self.name.clone(),
                path: self.socket.clone(),
                source,
            })?;
        while !self.stop.load(Ordering::SeqCst) {
            let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
            let backend = Arc::new(ScsiBackend::new(
                self.nexus(),
                self.registry.clone(),
                self.num_queues,
                mem.clone(),
                self.counters.clone(),
                self.events.clone(),
            ));
            let mut daemon = VhostUserDaemon::new(self.name.clone(), backend.clone(), mem)
                .map_err(|e| self.daemon_error("starting the vring threads", e))?;
            backend
                .set_handlers(&daemon.get_epoll_handlers())
                .map_err(|e| self.daemon_error("registering the event queue's eventfd", e))?;
            daemon
                .start(&mut listener)
                .map_err(|e| self.daemon_error("accepting a connection", e))?;
            *self.current.lock().unwrap_or_else(|e| e.into_inner()) = daemon.shutdown_handle();
            if self.stop.load(Ordering::SeqCst) {
                daemon.request_shutdown();
            }
            let ended = daemon.wait();
            // No driver to tell any more; the next one scans the target itself.
            self.events.lock().disconnect();
            *self.current.lock().unwrap_or_else(|e| e.into_inner()) = None;
            // Dropping the daemon stops and joins its vring threads; each drains its
            // engine worker on the way out.
            drop(daemon);
            self.connections.fetch_add(1, Ordering::Relaxed);
            *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) =
                ended.err().map(|e| e.to_string());
        }
        Ok(())
    }
}

/// SAS TransportID (SPC-4 7.6.4.5): protocol 6h, the initiator's SAS address in
/// bytes 4..12, 24 bytes. A vhost controller has no SAS address: an NAA 5h address
/// is derived from the controller name (FNV-1a), stable across restarts.
pub fn sas_transport_id(name: &str) -> Vec<u8> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let addr = (0x5u64 << 60) | (h >> 4);
    let mut t = vec![0u8; 24];
    t[0] = Protocol::Sas as u8;
    t[4..12].copy_from_slice(&addr.to_be_bytes());
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use backends::RamBackend;
    use engine::LunConfig;
    use virtio_bindings::virtio_scsi as vs;

    fn ram_lun(name: &str, size: u64) -> Arc<Lun> {
        Lun::new(
            LunConfig::new(name, [9; 16]),
            Arc::new(RamBackend::new(size)),
        )
        .unwrap()
    }

    #[test]
    fn attach_detach_and_resize_post_events() {
        let dir = tempfile::tempdir().unwrap();
        let map = LunMap::new();
        let lun0 = ram_lun("l0", 1 << 20);
        map.insert(0, lun0.clone());
        let c = VhostScsiController::new("c", dir.path().join("s"), map, LunRegistry::new(), 1)
            .unwrap();
        let lun5 = ram_lun("l5", 1 << 20);
        // No driver: the map changes, nothing is sent.
        assert_eq!(c.attach_lun(5, lun5.clone()), Ok(Posted::NotNegotiated));
        assert_eq!(c.detach_lun(5).map(|(_, p)| p), Ok(Posted::NotNegotiated));

        c.events
            .lock()
            .reset((1 << vs::VIRTIO_SCSI_F_HOTPLUG) | (1 << vs::VIRTIO_SCSI_F_CHANGE));
        assert_eq!(c.attach_lun(5, lun5.clone()), Ok(Posted::Queued));
        assert!(Arc::ptr_eq(&c.lun_map().get(5).unwrap(), &lun5));
        assert!(matches!(
            c.attach_lun(5, ram_lun("other", 1 << 20)),
            Err(LunMapError::InUse { lun: 5, .. })
        ));
        assert!(matches!(
            c.attach_lun(0x4000, ram_lun("far", 1 << 20)),
            Err(LunMapError::Number { lun: 0x4000, .. })
        ));
        // A resize of an attached LUN, initial or attached later, is announced.
        lun5.resize(2 << 20).unwrap();
        lun0.resize(2 << 20).unwrap();
        assert_eq!(c.capacity_changed(0), Ok(Posted::Queued));
        assert!(matches!(
            c.capacity_changed(7),
            Err(LunMapError::NotAttached { lun: 7, .. })
        ));
        let (gone, posted) = c.detach_lun(5).unwrap();
        assert!(Arc::ptr_eq(&gone, &lun5));
        assert_eq!(posted, Posted::Queued);
        // Detached: its resize no longer concerns this controller.
        lun5.resize(3 << 20).unwrap();
        assert!(matches!(
            c.detach_lun(5),
            Err(LunMapError::NotAttached { lun: 5, .. })
        ));

        let mut q = c.events.lock();
        let mut got = Vec::new();
        let mem = Arc::new(
            vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(vm_memory::GuestAddress(0), 1 << 20)])
                .unwrap(),
        );
        let mock = virtio_queue::mock::MockSplitQueue::new(&*mem, 16);
        let mut vq: virtio_queue::Queue = mock.create_queue().unwrap();
        let descs: Vec<_> = (0..8u16)
            .map(|i| {
                virtio_queue::desc::RawDescriptor::from(virtio_queue::desc::split::Descriptor::new(
                    0x8_0000 + u64::from(i) * 0x100,
                    16,
                    virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16,
                    0,
                ))
            })
            .collect();
        mock.add_desc_chains(&descs, 0).unwrap();
        for u in q.fill(1, &mut vq, &mem) {
            let mut b = [0u8; 16];
            vm_memory::Bytes::read_slice(
                &*mem,
                &mut b,
                vm_memory::GuestAddress(0x8_0000 + u64::from(u.head) * 0x100),
            )
            .unwrap();
            let e = ScsiEvent::decode(&b);
            got.push((e.event, e.lun[3], e.reason));
        }
        assert_eq!(
            got,
            vec![
                (
                    vs::VIRTIO_SCSI_T_TRANSPORT_RESET,
                    5,
                    vs::VIRTIO_SCSI_EVT_RESET_RESCAN
                ),
                (vs::VIRTIO_SCSI_T_PARAM_CHANGE, 5, 0x092a),
                (vs::VIRTIO_SCSI_T_PARAM_CHANGE, 0, 0x092a),
                (vs::VIRTIO_SCSI_T_PARAM_CHANGE, 0, 0x092a),
                (
                    vs::VIRTIO_SCSI_T_TRANSPORT_RESET,
                    5,
                    vs::VIRTIO_SCSI_EVT_RESET_REMOVED
                ),
            ]
        );
    }
}
