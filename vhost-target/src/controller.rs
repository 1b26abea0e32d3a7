//! A vhost-user-scsi controller: a Unix socket that QEMU connects to, one target
//! (0) with the LUNs of a [`LunMap`], one I_T nexus per connection (the initiator
//! port is named after the controller, so reservations and unit attentions follow
//! the controller across reconnects), served until stopped: when QEMU disconnects,
//! the I/O in flight is drained and the next connection on the same socket is
//! accepted.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use engine::{LunMap, LunRegistry, Nexus, Protocol, TargetPort};
use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::backend::{QueueCounters, ScsiBackend, FIRST_REQUEST_QUEUE, MAX_REQUEST_QUEUES};

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
}

/// Stops a controller's `serve` loop from another thread.
#[derive(Clone)]
pub struct StopHandle {
    stop: Arc<AtomicBool>,
    socket: PathBuf,
    current: Arc<Mutex<Option<ShutdownHandle>>>,
}

impl StopHandle {
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
        })
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
            ));
            let mut daemon = VhostUserDaemon::new(self.name.clone(), backend.clone(), mem)
                .map_err(|e| self.daemon_error("starting the vring threads", e))?;
            backend.set_handlers(&daemon.get_epoll_handlers());
            daemon
                .start(&mut listener)
                .map_err(|e| self.daemon_error("accepting a connection", e))?;
            *self.current.lock().unwrap_or_else(|e| e.into_inner()) = daemon.shutdown_handle();
            if self.stop.load(Ordering::SeqCst) {
                daemon.request_shutdown();
            }
            let ended = daemon.wait();
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
