//! A vhost-user-blk controller: a Unix socket that QEMU's `vhost-user-blk-pci` (or
//! cloud-hypervisor's `--disk vhost_user=true`) connects to, serving one LUN. Each
//! connection is one I_T nexus of the engine on that LUN (the initiator port is
//! named after the controller, so reservations follow it across reconnects):
//! reservations taken over iSCSI apply to it, and its writes are on the LUN for
//! every other transport at once. Connections are served one after another until
//! stopped, like [`crate::VhostScsiController`]'s.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use engine::{Lun, LunMap, LunRegistry, Nexus, Protocol, TargetPort};
use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::controller::{sas_transport_id, ControllerError, StopHandle};

use super::backend::{BlkBackend, MAX_QUEUES};
use super::device::BlkDevice;
use super::queues::BLK_LUN;
use super::relay;

static NEXT_RELAY: AtomicU64 = AtomicU64::new(1);

/// One vhost-user-blk controller.
pub struct VhostBlkController {
    name: String,
    socket: PathBuf,
    device: Arc<BlkDevice>,
    luns: Arc<LunMap>,
    registry: Arc<LunRegistry>,
    port: Arc<TargetPort>,
    stop: Arc<AtomicBool>,
    current: Arc<Mutex<Option<ShutdownHandle>>>,
    connections: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl VhostBlkController {
    /// A controller called `name` (also its initiator port name) that will listen
    /// on `socket_path` and serve `lun` with `num_queues` request queues. Its
    /// target port is a SAS port (relative port 1, group 1) unless
    /// [`VhostBlkController::with_target_port`] says otherwise.
    pub fn new(
        name: &str,
        socket_path: impl AsRef<Path>,
        lun: Arc<Lun>,
        registry: Arc<LunRegistry>,
        num_queues: usize,
    ) -> Result<Self, ControllerError> {
        if !(1..=MAX_QUEUES).contains(&num_queues) {
            return Err(ControllerError::Queues {
                name: name.to_string(),
                num_queues,
                max: MAX_QUEUES,
            });
        }
        let device = BlkDevice::new(lun.clone(), num_queues);
        lun.subscribe_capacity(&device);
        let luns = LunMap::new();
        luns.insert(BLK_LUN, lun);
        Ok(VhostBlkController {
            name: name.to_string(),
            socket: socket_path.as_ref().to_path_buf(),
            device,
            luns,
            registry,
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

    /// The LUN served.
    pub fn lun(&self) -> &Arc<Lun> {
        self.device.lun()
    }

    /// Connections served to their end so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Capacity changes announced to a frontend so far.
    pub fn config_changes(&self) -> u64 {
        self.device.config_changes()
    }

    /// How the last connection ended, if it ended in an error.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle::new(self.stop.clone(), self.socket.clone(), self.current.clone())
    }

    fn daemon_error(&self, what: &'static str, e: impl std::fmt::Display) -> ControllerError {
        ControllerError::Daemon {
            name: self.name.clone(),
            what,
            message: e.to_string(),
        }
    }

    /// A private listener the library accepts the relayed connection on, and
    /// the relay's end of that connection.
    fn library_side(&self) -> std::io::Result<(Listener, UnixStream)> {
        let id = NEXT_RELAY.fetch_add(1, Ordering::Relaxed);
        let name = format!("oxtarget-blk-{}-{id}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
        let listener = UnixListener::bind_addr(&addr)?;
        let stream = UnixStream::connect_addr(&addr)?;
        Ok((Listener::from(listener), stream))
    }

    /// Listens on the socket and serves one connection after another until
    /// [`StopHandle::stop`]. A connection that ends in an error is recorded
    /// ([`VhostBlkController::last_error`]) and the next one is accepted.
    pub fn serve(&self) -> Result<(), ControllerError> {
        let listener =
            Listener::new(&self.socket, true).map_err(|source| ControllerError::Listen {
                name: self.name.clone(),
                path: self.socket.clone(),
                source,
            })?;
        while !self.stop.load(Ordering::SeqCst) {
            let frontend = match listener.accept() {
                Ok(Some(s)) => s,
                Ok(None) => continue,
                Err(e) => return Err(self.daemon_error("accepting a connection", e)),
            };
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            let ended = self.serve_one(frontend);
            self.device.set_backend_req(None);
            self.connections.fetch_add(1, Ordering::Relaxed);
            *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = ended.err();
        }
        Ok(())
    }

    /// Serves one frontend connection to its end.
    fn serve_one(&self, frontend: UnixStream) -> Result<(), String> {
        self.device.reset();
        let nexus = Nexus::new(
            &self.name,
            sas_transport_id(&self.name),
            self.port.clone(),
            self.luns.clone(),
        );
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let backend = Arc::new(BlkBackend::new(
            self.device.clone(),
            nexus,
            self.registry.clone(),
            mem.clone(),
        ));
        let mut daemon = VhostUserDaemon::new(self.name.clone(), backend.clone(), mem)
            .map_err(|e| format!("starting the vring threads: {e}"))?;
        backend.set_handlers(&daemon.get_epoll_handlers());
        let (mut lib_listener, lib_end) = self
            .library_side()
            .map_err(|e| format!("relay socket: {e}"))?;
        let device = self.device.clone();
        let relays = relay::spawn(frontend, lib_end, move |sock| {
            let _ = sock.set_nonblocking(true);
            device.set_backend_req(Some(sock));
        })
        .map_err(|e| format!("relay threads: {e}"))?;
        let started = daemon.start(&mut lib_listener);
        drop(lib_listener);
        let ended = match started {
            Ok(()) => {
                *self.current.lock().unwrap_or_else(|e| e.into_inner()) = daemon.shutdown_handle();
                if self.stop.load(Ordering::SeqCst) {
                    daemon.request_shutdown();
                }
                daemon.wait().map_err(|e| e.to_string())
            }
            Err(e) => Err(format!("accepting the relayed connection: {e}")),
        };
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = None;
        // Dropping the daemon stops and joins its vring threads; each drains its
        // engine worker on the way out. The relay ends with the library's side.
        drop(daemon);
        for r in relays {
            let _ = r.join();
        }
        ended
    }
}
