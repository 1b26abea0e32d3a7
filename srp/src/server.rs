//! The SRP transport: an RDMA/CM listener and one thread per channel.
//!
//! A CM thread listens on the configured addresses (default `0.0.0.0:5555`,
//! as blktests uses). For each connect request it parses the SRP_LOGIN_REQ in
//! the private data, finds the target whose port id (`id_ext || ioc_guid`) it
//! names, lets [`crate::login::decide`] answer, and then builds the channel:
//! PD, CQ with a completion channel, the RC QP on the new cm_id, the receive
//! ring with every receive posted, the send ring and the data buffer. Only then
//! does it accept with the SRP_LOGIN_RSP as private data (or reject with an
//! SRP_LOGIN_REJ). The accepted id moves to the channel's own event channel
//! and the channel gets its own thread ([`channel`]): an epoll loop over its
//! CM events, its completion channel, its engine [`engine::Worker`] and a
//! kill eventfd. Nothing busy-polls.
//!
//! Memory per channel is fixed at login: `queue_depth` receive buffers of
//! `max_it_iu_len` bytes (rounded up to 64), `2 × queue_depth + 1` send
//! buffers of 512 bytes, and a data region of `data_pool` bytes from which
//! each command takes one contiguous run (commands that find none wait in
//! order). With the defaults (128, 8276 → 8320-byte buffers, 4 MiB) that is
//! 1.02 MiB + 128.5 KiB + 4 MiB, about 5.15 MiB of registered memory per
//! channel; a command moves at most `max_transfer` (default 4 MiB, the whole
//! pool).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::SystemTime;

use engine::{LunMap, LunRegistry, TargetPort};
use thiserror::Error;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::channels::{ChannelId, ChannelRegistry};
use crate::iu::{rej_reason, LoginRej, LoginReq};
use crate::login::{self, Limits, TargetIdentity};
use crate::rdma::{CmEvent, CmEventKind, CmId, EventChannel, RdmaError};

mod bufs;
mod channel;
mod pool;
mod setup;

/// The port blktests and our docs use (SRP has no assigned port).
pub const DEFAULT_PORT: u16 = 5555;

/// One SRP target port: the identity initiators name in `add_target`
/// (`id_ext=…,ioc_guid=…`) and the LUNs behind it.
#[derive(Clone, Debug)]
pub struct Target {
    pub name: String,
    pub id_ext: u64,
    pub ioc_guid: u64,
    /// The SCSI target port (relative port id, group) the engine reports.
    pub port: Arc<TargetPort>,
    pub luns: Arc<LunMap>,
}

impl Target {
    fn identity(&self) -> TargetIdentity {
        TargetIdentity {
            id_ext: self.id_ext,
            ioc_guid: self.ioc_guid,
        }
    }
}

/// What the server serves and how.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The targets at start; more come and go with [`Server::add_target`] and
    /// [`Server::remove_target`].
    pub targets: Vec<Target>,
    /// Addresses to listen on (every target is reachable on each).
    pub listen: Vec<SocketAddr>,
    /// Receive buffers per channel: the credits granted plus one spare.
    pub queue_depth: u32,
    /// The longest IU accepted (our receive buffers' size); at least 8260 for
    /// Linux with immediate data.
    pub max_it_iu_len: u32,
    /// Bytes one command may move at most (larger ones end in CHECK CONDITION).
    pub max_transfer: u32,
    /// Registered data memory per channel (at least `max_transfer`).
    pub data_pool: usize,
    /// Channels one I_T nexus may have.
    pub max_channels_per_nexus: usize,
    /// Channels at once, over all targets.
    pub max_channels: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            targets: Vec::new(),
            listen: vec![SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT))],
            queue_depth: 128,
            max_it_iu_len: login::DEFAULT_MAX_IT_IU_LEN,
            // ib_srp sends at most 512 KiB per command (its max_sectors on
            // rxe); 4 MiB holds 32 such commands, or every command of a full
            // queue of 64 KiB ones.
            max_transfer: 4 << 20,
            data_pool: 4 << 20,
            max_channels_per_nexus: crate::channels::DEFAULT_MAX_CHANNELS,
            max_channels: 256,
        }
    }
}

/// Why the server could not start, or a change could not be made.
#[derive(Debug, Error)]
pub enum ServerError {
    /// No RDMA CM (no `/dev/infiniband/rdma_cm`: no RDMA device or module).
    #[error("RDMA CM: {0}")]
    Rdma(#[from] RdmaError),
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: RdmaError,
    },
    #[error("epoll: {0}")]
    Epoll(std::io::Error),
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("thread: {0}")]
    Thread(std::io::Error),
    #[error("bad configuration: {0}")]
    Config(String),
    #[error("target {0} already exists")]
    TargetExists(String),
    #[error("target {existing} already has id_ext {id_ext:#018x}, ioc_guid {ioc_guid:#018x}")]
    IdentityInUse {
        existing: String,
        id_ext: u64,
        ioc_guid: u64,
    },
    #[error("no target {0}")]
    NoTarget(String),
}

/// What one channel's commands did, counted as they complete.
#[derive(Debug, Default)]
pub struct ChannelStats {
    pub commands: AtomicU64,
    pub errors: AtomicU64,
    pub aborted: AtomicU64,
    pub bytes: AtomicU64,
}

/// A logged-in channel, as [`Server::sessions_list`] reports it. Channels of
/// one I_T nexus share `nexus`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    pub target: String,
    /// `0x` and the 32 hex digits of the initiator port id.
    pub initiator: String,
    pub channel: u64,
    pub nexus: u64,
    pub peer: Option<SocketAddr>,
    /// Seconds since the Unix epoch when it logged in.
    pub since: u64,
    pub commands: u64,
    pub errors: u64,
    pub aborted: u64,
    pub bytes: u64,
}

/// A target as served: its channel registry lives as long as it does.
struct LiveTarget {
    target: Target,
    channels: Arc<ChannelRegistry>,
}

/// A running channel, seen from outside its thread.
struct ChannelHandle {
    target: String,
    initiator: String,
    nexus: u64,
    peer: Option<SocketAddr>,
    since: SystemTime,
    stats: Arc<ChannelStats>,
    kill: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

/// State every thread sees.
pub(crate) struct Shared {
    cfg: ServerConfig,
    registry: Arc<LunRegistry>,
    targets: RwLock<Vec<Arc<LiveTarget>>>,
    channels: Mutex<HashMap<ChannelId, ChannelHandle>>,
    next_channel: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    fn targets(&self) -> Vec<Arc<LiveTarget>> {
        self.targets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn channels(&self) -> std::sync::MutexGuard<'_, HashMap<ChannelId, ChannelHandle>> {
        self.channels.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks channels to end (they disconnect, drain and go away on their own).
    fn kill(&self, ids: &[ChannelId]) {
        let chans = self.channels();
        for id in ids {
            if let Some(h) = chans.get(id) {
                let _ = h.kill.write(1);
            }
        }
    }

    /// A channel thread's last act: it is gone from the listing.
    pub(crate) fn channel_gone(&self, id: ChannelId) {
        let h = self.channels().remove(&id);
        // Our own JoinHandle: dropping it detaches this (finishing) thread.
        drop(h);
    }
}

/// A running server. Dropping it stops it.
pub struct Server {
    shared: Arc<Shared>,
    stop: Arc<EventFd>,
    cm_thread: Option<JoinHandle<()>>,
    local: Vec<SocketAddr>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listen", &self.local)
            .finish()
    }
}

const KEY_STOP: u64 = u64::MAX;
const KEY_CM: u64 = u64::MAX - 1;

fn check_config(cfg: &ServerConfig) -> Result<(), ServerError> {
    if cfg.queue_depth < 2 {
        return Err(ServerError::Config(
            "queue_depth must be at least 2 (one credit and the spare receive)".into(),
        ));
    }
    if cfg.max_it_iu_len < login::MIN_IT_IU_LEN {
        return Err(ServerError::Config(format!(
            "max_it_iu_len must be at least {}",
            login::MIN_IT_IU_LEN
        )));
    }
    let max_transfer = usize::try_from(cfg.max_transfer).unwrap_or(usize::MAX);
    if max_transfer == 0 || cfg.data_pool < max_transfer {
        return Err(ServerError::Config(format!(
            "data_pool ({}) must hold at least one max_transfer ({})",
            cfg.data_pool, cfg.max_transfer
        )));
    }
    if cfg.listen.is_empty() {
        return Err(ServerError::Config("no listen address".into()));
    }
    Ok(())
}

impl Server {
    /// Binds the listen addresses and starts the CM thread. Fails if there is
    /// no RDMA CM on this host (no device: [`ServerError::Rdma`]) or an address
    /// cannot be bound ([`ServerError::Listen`]).
    pub fn start(mut cfg: ServerConfig, registry: Arc<LunRegistry>) -> Result<Server, ServerError> {
        check_config(&cfg)?;
        let initial = std::mem::take(&mut cfg.targets);
        let channel = EventChannel::new()?;
        let mut listeners = Vec::new();
        let mut local = Vec::new();
        for (i, addr) in cfg.listen.iter().enumerate() {
            let listen = |a: SocketAddr| -> Result<CmId, RdmaError> {
                let mut id = CmId::new(&channel, i as u64)?;
                id.bind(a)?;
                id.listen(128)?;
                Ok(id)
            };
            let id = listen(*addr).map_err(|source| ServerError::Listen {
                addr: *addr,
                source,
            })?;
            local.push(id.local_addr().unwrap_or(*addr));
            listeners.push(id);
        }
        let shared = Arc::new(Shared {
            cfg,
            registry,
            targets: RwLock::new(Vec::new()),
            channels: Mutex::new(HashMap::new()),
            next_channel: AtomicU64::new(1),
            stop: AtomicBool::new(false),
        });
        let mut server = Server {
            shared: shared.clone(),
            stop: Arc::new(EventFd::new(EFD_NONBLOCK).map_err(ServerError::EventFd)?),
            cm_thread: None,
            local,
        };
        for t in initial {
            server.add_target(t)?;
        }
        let epoll = Epoll::new().map_err(ServerError::Epoll)?;
        epoll
            .ctl(
                ControlOperation::Add,
                server.stop.as_raw_fd(),
                EpollEvent::new(EventSet::IN, KEY_STOP),
            )
            .map_err(ServerError::Epoll)?;
        epoll
            .ctl(
                ControlOperation::Add,
                channel.fd(),
                EpollEvent::new(EventSet::IN, KEY_CM),
            )
            .map_err(ServerError::Epoll)?;
        let cm = CmLoop {
            shared,
            channel,
            _listeners: listeners,
            epoll,
        };
        server.cm_thread = Some(
            std::thread::Builder::new()
                .name("srp-cm".into())
                .spawn(move || cm.run())
                .map_err(ServerError::Thread)?,
        );
        Ok(server)
    }

    /// The addresses listened on (with the ports actually bound).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.local.clone()
    }

    /// Adds a target; initiators may log in to it at once.
    pub fn add_target(&self, t: Target) -> Result<(), ServerError> {
        let mut targets = self
            .shared
            .targets
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        for l in targets.iter() {
            if l.target.name == t.name {
                return Err(ServerError::TargetExists(t.name));
            }
            if l.target.identity() == t.identity() {
                return Err(ServerError::IdentityInUse {
                    existing: l.target.name.clone(),
                    id_ext: t.id_ext,
                    ioc_guid: t.ioc_guid,
                });
            }
        }
        let channels = Arc::new(ChannelRegistry::new(
            t.port.clone(),
            t.luns.clone(),
            self.shared.cfg.max_channels_per_nexus,
        ));
        targets.push(Arc::new(LiveTarget {
            target: t,
            channels,
        }));
        Ok(())
    }

    /// Removes a target: no new logins, and its channels are disconnected.
    pub fn remove_target(&self, name: &str) -> Result<(), ServerError> {
        let removed = {
            let mut targets = self
                .shared
                .targets
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            let i = targets
                .iter()
                .position(|l| l.target.name == name)
                .ok_or_else(|| ServerError::NoTarget(name.to_string()))?;
            targets.remove(i)
        };
        let ids: Vec<ChannelId> = removed.channels.channels().iter().map(|c| c.0).collect();
        self.shared.kill(&ids);
        Ok(())
    }

    /// The targets served now.
    pub fn targets(&self) -> Vec<Target> {
        self.shared
            .targets()
            .iter()
            .map(|l| l.target.clone())
            .collect()
    }

    /// Channels logged in right now.
    pub fn sessions(&self) -> usize {
        self.shared.channels().len()
    }

    /// Every logged-in channel, by target and channel id.
    pub fn sessions_list(&self) -> Vec<SessionInfo> {
        let chans = self.shared.channels();
        let mut v: Vec<SessionInfo> = chans
            .iter()
            .map(|(id, h)| SessionInfo {
                target: h.target.clone(),
                initiator: h.initiator.clone(),
                channel: *id,
                nexus: h.nexus,
                peer: h.peer,
                since: h
                    .since
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                commands: h.stats.commands.load(Ordering::Relaxed),
                errors: h.stats.errors.load(Ordering::Relaxed),
                aborted: h.stats.aborted.load(Ordering::Relaxed),
                bytes: h.stats.bytes.load(Ordering::Relaxed),
            })
            .collect();
        v.sort_by(|a, b| (&a.target, a.channel).cmp(&(&b.target, b.channel)));
        v
    }

    /// Disconnects one channel. False if there is no such channel.
    pub fn drop_channel(&self, channel: u64) -> bool {
        let chans = self.shared.channels();
        match chans.get(&channel) {
            Some(h) => {
                let _ = h.kill.write(1);
                true
            }
            None => false,
        }
    }

    /// Stops listening, disconnects every channel and joins the threads.
    pub fn shutdown(mut self) {
        self.stop_threads();
    }

    fn stop_threads(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        let _ = self.stop.write(1);
        if let Some(t) = self.cm_thread.take() {
            let _ = t.join();
        }
        // The CM thread is gone: no channel starts any more.
        let threads: Vec<JoinHandle<()>> = {
            let mut chans = self.shared.channels();
            chans
                .values_mut()
                .filter_map(|h| {
                    let _ = h.kill.write(1);
                    h.thread.take()
                })
                .collect()
        };
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

/// The CM thread: listeners and logins.
struct CmLoop {
    shared: Arc<Shared>,
    channel: EventChannel,
    /// Kept alive while listening (ids are destroyed before their channel).
    _listeners: Vec<CmId>,
    epoll: Epoll,
}

impl CmLoop {
    fn run(self) {
        let mut events = vec![EpollEvent::default(); 4];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!("srp: CM epoll: {e}");
                    return;
                }
            };
            if self.shared.stop.load(Ordering::Acquire) {
                return;
            }
            for ev in &events[..n] {
                if ev.data() == KEY_CM {
                    self.drain_cm();
                }
            }
        }
    }

    fn drain_cm(&self) {
        // Bounded: a flood of requests yields to the stop check between rounds.
        for _ in 0..64 {
            match self.channel.get_event() {
                Ok(Some(ev)) => self.on_event(ev),
                Ok(None) => return,
                Err(e) => {
                    tracing::error!("srp: CM events: {e}");
                    return;
                }
            }
        }
    }

    fn on_event(&self, ev: CmEvent) {
        match ev.kind {
            CmEventKind::ConnectRequest => self.on_connect(ev),
            // Ids are migrated to their channel before they are accepted; a
            // rejected id is destroyed at once. What is left here concerns the
            // listeners.
            CmEventKind::DeviceRemoval => {
                tracing::warn!("srp: RDMA device removed under a listener")
            }
            other => tracing::debug!("srp: CM event {other:?} on the listener channel"),
        }
    }

    fn on_connect(&self, mut ev: CmEvent) {
        let Some(mut id) = ev.new_id.take() else {
            return;
        };
        let peer = id.peer_addr();
        let req = match LoginReq::parse_rdma_cm(&ev.private_data) {
            Ok(r) => r,
            Err(e) => {
                tracing::info!("srp: login from {peer:?} refused: {e}");
                reject(&mut id, &login::reject_malformed(&e));
                return;
            }
        };
        match self.login(id, &req, &ev) {
            Ok(ch) => tracing::info!(
                "srp: channel {ch} logged in from {peer:?} (initiator {})",
                crate::exec::initiator_name(&req.initiator_port_id)
            ),
            Err((mut id, rej, why)) => {
                tracing::info!("srp: login from {peer:?} refused: {why}");
                reject(&mut id, &rej);
            }
        }
    }

    /// Decides and builds a channel; on refusal hands the id back with the
    /// SRP_LOGIN_REJ to send.
    fn login(
        &self,
        id: CmId,
        req: &LoginReq,
        ev: &CmEvent,
    ) -> Result<ChannelId, (CmId, LoginRej, String)> {
        let rej = |reason| LoginRej {
            reason,
            tag: req.tag,
            buf_fmt: login::SUPPORTED_BUF_FMT,
        };
        let Some(live) = self
            .shared
            .targets()
            .into_iter()
            .find(|l| l.target.identity().port_id() == req.target_port_id)
        else {
            return Err((
                id,
                rej(rej_reason::UNABLE_TO_ASSOCIATE),
                "no target with that port id".into(),
            ));
        };
        if self.shared.channels().len() >= self.shared.cfg.max_channels {
            return Err((
                id,
                rej(rej_reason::INSUFFICIENT_RESOURCES),
                "channel limit of the server".into(),
            ));
        }
        let lim = Limits {
            max_it_iu_len: self.shared.cfg.max_it_iu_len,
            rq_size: self.shared.cfg.queue_depth,
        };
        let mut accepted = match login::decide(req, &live.target.identity(), &lim) {
            Ok(a) => a,
            Err(r) => return Err((id, r, format!("reason {:#x}", r.reason))),
        };
        let res = match setup::Resources::new(&id, &self.shared.cfg, &accepted.params) {
            Ok(r) => r,
            Err(e) => {
                return Err((
                    id,
                    rej(rej_reason::INSUFFICIENT_RESOURCES),
                    format!("channel resources: {e}"),
                ))
            }
        };
        let mut res = res;
        let mut id = id;
        if let Err(e) = res.create_qp(&mut id) {
            return Err((
                without_qp(id),
                rej(rej_reason::INSUFFICIENT_RESOURCES),
                format!("QP: {e}"),
            ));
        }
        if let Err(e) = res.post_all_receives(&id) {
            return Err((
                without_qp(id),
                rej(rej_reason::INSUFFICIENT_RESOURCES),
                format!("posting receives: {e}"),
            ));
        }
        let Some(conn) = res.accept_params(ev.initiator_depth) else {
            return Err((
                without_qp(id),
                rej(rej_reason::UNABLE_TO_ESTABLISH),
                "the initiator allows no RDMA READ (responder resources 0)".into(),
            ));
        };
        tracing::debug!(
            "srp: login: {:?}, RDMA READ depth {} (offered {}), send queue {}",
            accepted.params,
            conn.initiator_depth,
            ev.initiator_depth,
            res.sq_size
        );
        let ch = self.shared.next_channel.fetch_add(1, Ordering::Relaxed);
        let reg = match live.channels.register(
            req.initiator_port_id,
            req.target_port_id,
            ch,
            accepted.multichannel,
        ) {
            Ok(r) => r,
            Err(e) => {
                return Err((
                    without_qp(id),
                    rej(rej_reason::CHANNEL_LIMIT_REACHED),
                    e.to_string(),
                ))
            }
        };
        self.shared.kill(&reg.disconnect);
        accepted.note_terminated(reg.disconnect.len());
        let unregister = |id| {
            live.channels.unregister(ch);
            without_qp(id)
        };
        if let Err(e) = id.migrate(&res.events) {
            return Err((
                unregister(id),
                rej(rej_reason::INSUFFICIENT_RESOURCES),
                format!("{e}"),
            ));
        }
        let kill = match EventFd::new(EFD_NONBLOCK) {
            Ok(k) => Arc::new(k),
            Err(e) => {
                return Err((
                    unregister(id),
                    rej(rej_reason::INSUFFICIENT_RESOURCES),
                    format!("eventfd: {e}"),
                ))
            }
        };
        if let Err(e) = id.accept(&accepted.rsp.encode(), conn) {
            // The initiator hears nothing more of this id; it times out.
            live.channels.unregister(ch);
            tracing::info!("srp: accept failed: {e}");
            return Ok(ch);
        }
        let stats = Arc::new(ChannelStats::default());
        let peer = id.peer_addr();
        let nexus = reg.nexus.clone();
        let handle = ChannelHandle {
            target: live.target.name.clone(),
            initiator: nexus.key.initiator.to_string(),
            nexus: nexus.id,
            peer,
            since: SystemTime::now(),
            stats: stats.clone(),
            kill: kill.clone(),
            thread: None,
        };
        // Listed before the thread starts, so that its `channel_gone` finds it.
        self.shared.channels().insert(ch, handle);
        let ctx = channel::ChannelCtx {
            id: ch,
            shared: self.shared.clone(),
            registry: self.shared.registry.clone(),
            channels: live.channels.clone(),
            nexus,
            params: accepted.params,
            stats,
            kill,
            max_transfer: self.shared.cfg.max_transfer,
        };
        let spawned = std::thread::Builder::new()
            .name(format!("srp-ch{ch}"))
            .spawn(move || channel::run(ctx, id, res));
        match spawned {
            Ok(h) => {
                if let Some(c) = self.shared.channels().get_mut(&ch) {
                    c.thread = Some(h);
                }
            }
            Err(e) => {
                // The closure (and with it the id and resources) is dropped:
                // the connection goes away, the initiator sees it fail.
                tracing::error!("srp: channel thread: {e}");
                self.shared.channel_gone(ch);
                live.channels.unregister(ch);
            }
        }
        Ok(ch)
    }
}

/// An id whose login failed after its QP was made: the QP goes first, while
/// the receive ring its posted receives name is still registered.
fn without_qp(mut id: CmId) -> CmId {
    id.destroy_qp();
    id
}

fn reject(id: &mut CmId, rej: &LoginRej) {
    if let Err(e) = id.reject(&rej.encode()) {
        tracing::info!("srp: reject: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_configs_are_refused_before_touching_rdma() {
        let reg = LunRegistry::new();
        type Case = (fn(&mut ServerConfig), &'static str);
        let cases: [Case; 4] = [
            (|c| c.queue_depth = 1, "queue_depth"),
            (|c| c.max_it_iu_len = 63, "max_it_iu_len"),
            (|c| c.data_pool = 4096, "data_pool"),
            (|c| c.listen.clear(), "listen"),
        ];
        for (f, what) in cases {
            let mut cfg = ServerConfig::default();
            f(&mut cfg);
            match Server::start(cfg, reg.clone()) {
                Err(ServerError::Config(m)) => assert!(m.contains(what), "{m}"),
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    /// On a host without RDMA (like the build hosts) the server does not
    /// start, and says why; with a device it listens on a free port.
    #[test]
    fn start_without_a_device_is_a_clear_error() {
        let cfg = ServerConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            ..ServerConfig::default()
        };
        match Server::start(cfg, LunRegistry::new()) {
            Err(ServerError::Rdma(e)) => {
                assert!(
                    e.to_string().starts_with("rdma_create_event_channel"),
                    "{e}"
                )
            }
            Err(ServerError::Listen { addr, source }) => {
                assert_eq!(addr.ip().to_string(), "127.0.0.1", "{source}")
            }
            Err(e) => panic!("unexpected error: {e}"),
            Ok(s) => {
                assert_eq!(s.local_addrs().len(), 1);
                assert!(s.sessions_list().is_empty());
                s.shutdown();
            }
        }
    }
}
