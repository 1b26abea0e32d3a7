//! The I/O adapter: TCP portals, a small fixed set of worker threads, each an
//! epoll loop that owns its connections and one engine [`Worker`] (whose eventfd
//! sits in the same epoll set). Sockets are non-blocking; bytes are cut into
//! PDUs with the codec's [`Framing`] by a bounded receive buffer (`rx`), which
//! reads large Data-Out segments straight into their command's buffer; the login
//! phase runs through [`crate::login::Login`], the full feature phase through
//! [`Session`]. Header and data of outgoing PDUs leave in one `writev`, Data-In
//! straight from the command's buffer.
//!
//! A peer that stalls in the middle of a PDU, sends a segment larger than it was
//! allowed, or does not finish its login in time is dropped without touching the
//! other connections of its thread.

use std::collections::{HashMap, VecDeque};

use crate::inthash::IntMap;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use engine::{DataBuf, Event, LunMap, LunRegistry, TargetPort, Worker};
use thiserror::Error;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::chap::ChapCredentials;
use crate::discovery::TargetEntry;
use crate::login::{
    AuthPolicy, Login, LoginConfig, LoginEvent, SessionBinding, TargetDirectory, TargetInfo,
    TargetLookup,
};
use crate::negotiate::{SessionType, TargetPolicy};
use crate::pdu::{digest_bytes, pad4, Framing, FramingError, Isid};
use crate::session::{BufPool, Discovery, FfpParams, Outgoing, Segment, Session, SessionSetup};

mod rx;
use rx::{Progress, Rx, RxError};

/// Data-Out segments this large are read straight into the command's buffer.
const PLACE_MIN: usize = 4096;

fn rx_error(e: RxError) -> ConnError {
    match e {
        RxError::Closed => ConnError::Closed,
        RxError::Io(e) => ConnError::Io(e),
        RxError::Framing(e) => ConnError::Framing(e),
    }
}

/// One iSCSI target: a name, the LUNs it exposes through its target port, who
/// may log in, and how they authenticate.
#[derive(Clone, Debug)]
pub struct Target {
    /// iSCSI name (`iqn.…`).
    pub name: String,
    pub alias: Option<String>,
    /// Addresses of the target's portal group (IPv4 or IPv6; port 0 picks a
    /// free port). A target is reached only through its portals.
    pub portals: Vec<SocketAddr>,
    /// Target portal group tag of the portals.
    pub portal_group_tag: u16,
    pub port: Arc<TargetPort>,
    pub luns: Arc<LunMap>,
    /// Initiator names allowed to log in; empty: everyone.
    pub acl: Vec<String>,
    /// CHAP credentials; with `chap_required` the login must use them.
    pub chap: Option<ChapCredentials>,
    pub chap_required: bool,
}

/// What the server serves and how.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The targets at start; more come and go with [`Server::add_target`] and
    /// [`Server::remove_target`].
    pub targets: Vec<Target>,
    /// Worker threads (each an epoll loop with its own engine worker).
    pub workers: usize,
    /// Negotiation policy of every login.
    pub policy: TargetPolicy,
    /// Commands per session (the CmdSN window).
    pub queue_depth: u32,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    /// A login must complete within this time.
    pub login_timeout: Duration,
    /// A PDU begun must be complete within this time.
    pub stall_timeout: Duration,
    /// Bytes queued for sending to one connection before it is no longer read.
    pub max_queued_output: usize,
    /// ExpectedDataTransferLength of one command at most.
    pub max_cmd_data: u32,
    /// Connections at once; more are closed as they are accepted.
    pub max_connections: usize,
    /// Normal sessions at once; a login for one more (that reinstates none)
    /// is refused with "out of resources".
    pub max_sessions: usize,
    /// Command buffers one session holds at most (beyond: TASK SET FULL).
    pub max_session_data: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            targets: Vec::new(),
            workers: 2,
            policy: TargetPolicy::default(),
            queue_depth: 128,
            ping_interval: Duration::from_secs(15),
            ping_timeout: Duration::from_secs(30),
            login_timeout: Duration::from_secs(15),
            stall_timeout: Duration::from_secs(30),
            max_queued_output: 32 << 20,
            max_cmd_data: 64 << 20,
            max_connections: 1024,
            max_sessions: 512,
            max_session_data: 256 << 20,
        }
    }
}

/// Why the server could not start, or a change could not be made.
#[derive(Debug, Error)]
pub enum ServerError {
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("epoll: {0}")]
    Epoll(std::io::Error),
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("engine worker: {0}")]
    Worker(#[from] engine::worker::WorkerError),
    #[error("thread: {0}")]
    Thread(std::io::Error),
    #[error("target {0} already exists")]
    TargetExists(String),
    #[error("no target {0}")]
    NoTarget(String),
    #[error("target {target} has no portal {addr}")]
    NoPortal { target: String, addr: SocketAddr },
    #[error("target {target} already has portal {addr}")]
    PortalExists { target: String, addr: SocketAddr },
}

/// Why one connection ended (logged; never fatal to the server).
#[derive(Debug, Error)]
pub enum ConnError {
    #[error("peer closed")]
    Closed,
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("framing: {0}")]
    Framing(#[from] crate::pdu::FramingError),
    #[error("session: {0}")]
    Session(#[from] crate::session::SessionError),
    #[error("login failed: {0}")]
    Login(String),
    #[error("login not finished within {0:?}")]
    LoginTimeout(Duration),
    #[error("stalled mid-PDU for {0:?}")]
    Stalled(Duration),
    #[error("session reinstated by a new login")]
    Reinstated,
    #[error("session dropped by the administrator")]
    Dropped,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SessionKey {
    target: String,
    initiator: String,
    isid: Isid,
}

#[derive(Clone, Debug)]
struct SessionLoc {
    tsih: u16,
    worker: usize,
    conn: u32,
    cid: u16,
    peer: Option<SocketAddr>,
    since: std::time::SystemTime,
    stats: Arc<SessionStats>,
}

/// What one session's commands did, counted as they complete.
#[derive(Debug, Default)]
pub struct SessionStats {
    /// Commands completed (whatever their status).
    pub commands: AtomicU64,
    /// Commands that ended in a status other than GOOD.
    pub errors: AtomicU64,
    /// Commands aborted (task management, reinstatement).
    pub aborted: AtomicU64,
    /// Data bytes moved either way.
    pub bytes: AtomicU64,
}

/// A logged-in normal session, as [`Server::sessions_list`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    pub target: String,
    pub initiator: String,
    /// The initiator's session id, 12 hex digits.
    pub isid: String,
    pub tsih: u16,
    pub peer: Option<SocketAddr>,
    /// Seconds since the Unix epoch when it logged in.
    pub since: u64,
    pub commands: u64,
    pub errors: u64,
    pub aborted: u64,
    pub bytes: u64,
}

/// The target list, write-locked.
type TargetsGuard<'a> = std::sync::RwLockWriteGuard<'a, Vec<Arc<LiveTarget>>>;

/// A target as it is served: its portals as bound.
struct LiveTarget {
    target: Target,
    portals: Vec<SocketAddr>,
}

/// A listening socket shared by every portal bound to its address.
struct Listener {
    wanted: SocketAddr,
    bound: SocketAddr,
    socket: TcpListener,
    users: usize,
}

#[derive(Default)]
struct Listeners {
    by_key: HashMap<u64, Listener>,
    next_key: u64,
}

/// State every thread sees.
struct Shared {
    cfg: ServerConfig,
    /// Targets are replaced, never changed in place: a login holds the
    /// snapshot it found.
    targets: RwLock<Vec<Arc<LiveTarget>>>,
    listeners: Mutex<Listeners>,
    /// The acceptor's epoll set: listeners are added from any thread.
    accept_epoll: Epoll,
    sessions: Mutex<HashMap<SessionKey, SessionLoc>>,
    next_tsih: AtomicU16,
    /// Connections accepted and not yet closed.
    conns: AtomicUsize,
    stop: AtomicBool,
    inboxes: Vec<Arc<Inbox>>,
}

enum Msg {
    Conn(TcpStream),
    Kill(u32, ConnError),
}

struct Inbox {
    msgs: Mutex<Vec<Msg>>,
    wake: EventFd,
}

impl Inbox {
    fn post(&self, m: Msg) {
        self.msgs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(m);
        let _ = self.wake.write(1);
    }
}

const KEY_STOP: u64 = u64::MAX;

impl Shared {
    fn new(cfg: ServerConfig, accept_epoll: Epoll, inboxes: Vec<Arc<Inbox>>) -> Shared {
        Shared {
            cfg,
            targets: RwLock::new(Vec::new()),
            listeners: Mutex::new(Listeners::default()),
            accept_epoll,
            sessions: Mutex::new(HashMap::new()),
            next_tsih: AtomicU16::new(1),
            conns: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            inboxes,
        }
    }

    fn targets(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<LiveTarget>>> {
        self.targets.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn target(&self, name: &str) -> Option<Arc<LiveTarget>> {
        self.targets()
            .iter()
            .find(|t| t.target.name == name)
            .cloned()
    }

    /// A target reachable through the connection's local address.
    fn target_at(&self, name: &str, local: SocketAddr) -> Option<Arc<LiveTarget>> {
        let t = self.target(name)?;
        let reachable = t
            .portals
            .iter()
            .any(|p| p.port() == local.port() && (p.ip() == local.ip() || p.ip().is_unspecified()));
        reachable.then_some(t)
    }

    fn allowed(t: &Target, initiator: &str) -> bool {
        t.acl.is_empty() || t.acl.iter().any(|a| a == initiator)
    }

    fn new_tsih(&self) -> u16 {
        loop {
            let t = self.next_tsih.fetch_add(1, Ordering::Relaxed);
            if t != 0 {
                return t;
            }
        }
    }

    /// A listener for `addr`, bound now or shared with portals already on it
    /// (portals asking for the same address, port 0 included, share one).
    /// Returns the address as bound.
    fn acquire_listener(&self, addr: SocketAddr) -> Result<SocketAddr, ServerError> {
        let mut ls = self
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(l) = ls
            .by_key
            .values_mut()
            .find(|l| l.wanted == addr || (addr.port() != 0 && l.bound == addr))
        {
            l.users += 1;
            return Ok(l.bound);
        }
        let listen_err = |source| ServerError::Listen { addr, source };
        let socket = TcpListener::bind(addr).map_err(listen_err)?;
        socket.set_nonblocking(true).map_err(listen_err)?;
        let bound = socket.local_addr().map_err(listen_err)?;
        let key = ls.next_key;
        ls.next_key += 1;
        self.accept_epoll
            .ctl(
                ControlOperation::Add,
                socket.as_raw_fd(),
                EpollEvent::new(EventSet::IN, key),
            )
            .map_err(ServerError::Epoll)?;
        ls.by_key.insert(
            key,
            Listener {
                wanted: addr,
                bound,
                socket,
                users: 1,
            },
        );
        Ok(bound)
    }

    /// Drops one portal's use of the listener on `bound`; the last one closes it.
    fn release_listener(&self, bound: SocketAddr) {
        let mut ls = self
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(key) = ls
            .by_key
            .iter()
            .find(|(_, l)| l.bound == bound)
            .map(|(k, _)| *k)
        else {
            return;
        };
        let last = ls.by_key.get_mut(&key).is_some_and(|l| {
            l.users -= 1;
            l.users == 0
        });
        if last {
            if let Some(l) = ls.by_key.remove(&key) {
                let _ = self.accept_epoll.ctl(
                    ControlOperation::Delete,
                    l.socket.as_raw_fd(),
                    EpollEvent::default(),
                );
            }
        }
    }

    /// The target list, locked for a change, and where target `name` is in it.
    fn target_for_change(&self, name: &str) -> Result<(TargetsGuard<'_>, usize), ServerError> {
        let targets = self.targets.write().unwrap_or_else(PoisonError::into_inner);
        let i = targets
            .iter()
            .position(|t| t.target.name == name)
            .ok_or_else(|| ServerError::NoTarget(name.to_string()))?;
        Ok((targets, i))
    }

    /// Binds `t`'s portals and publishes it.
    fn add_target(&self, t: Target) -> Result<(), ServerError> {
        let mut targets = self.targets.write().unwrap_or_else(PoisonError::into_inner);
        if targets.iter().any(|x| x.target.name == t.name) {
            return Err(ServerError::TargetExists(t.name));
        }
        let mut portals: Vec<SocketAddr> = Vec::new();
        for a in &t.portals {
            match self.acquire_listener(*a) {
                Ok(b) => portals.push(b),
                Err(e) => {
                    for b in portals {
                        self.release_listener(b);
                    }
                    return Err(e);
                }
            }
        }
        targets.push(Arc::new(LiveTarget { target: t, portals }));
        Ok(())
    }

    /// Closes the connections of every session of `target` (all when `None`
    /// is given for the initiator), or the one with `tsih`.
    fn kill_sessions(&self, target: &str, tsih: Option<u16>, why: fn() -> ConnError) -> usize {
        let sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        let mut n = 0;
        for (k, loc) in sessions.iter() {
            if k.target == target && tsih.is_none_or(|t| t == loc.tsih) {
                if let Some(inbox) = self.inboxes.get(loc.worker) {
                    inbox.post(Msg::Kill(loc.conn, why()));
                    n += 1;
                }
            }
        }
        n
    }
}

/// The directory as one connection sees it (its local address answers
/// SendTargets for portals bound to the unspecified address).
struct ConnDirectory {
    shared: Arc<Shared>,
    local: SocketAddr,
}

impl TargetDirectory for ConnDirectory {
    fn lookup(&self, target_name: &str) -> TargetLookup {
        match self.shared.target_at(target_name, self.local) {
            Some(t) => TargetLookup::Found(TargetInfo {
                name: t.target.name.clone(),
                alias: t.target.alias.clone(),
                portal_group_tag: t.target.portal_group_tag,
                auth: if t.target.chap_required {
                    AuthPolicy::Chap
                } else {
                    AuthPolicy::None
                },
            }),
            None => TargetLookup::NotFound,
        }
    }

    fn discovery(&self) -> Option<AuthPolicy> {
        Some(AuthPolicy::None)
    }

    fn initiator_allowed(&self, target_name: &str, initiator_name: &str) -> bool {
        self.shared
            .target(target_name)
            .is_some_and(|t| Shared::allowed(&t.target, initiator_name))
    }

    fn chap_credentials(
        &self,
        target_name: Option<&str>,
        _initiator_name: &str,
    ) -> Option<ChapCredentials> {
        self.shared.target(target_name?)?.target.chap.clone()
    }

    fn existing_session(
        &self,
        target_name: Option<&str>,
        initiator_name: &str,
        isid: Isid,
    ) -> Option<u16> {
        let key = SessionKey {
            target: target_name?.to_string(),
            initiator: initiator_name.to_string(),
            isid,
        };
        self.shared
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .map(|l| l.tsih)
    }

    fn session_exists(
        &self,
        target_name: Option<&str>,
        initiator_name: &str,
        isid: Isid,
        tsih: u16,
    ) -> bool {
        self.session(target_name, initiator_name, isid)
            .is_some_and(|l| l.tsih == tsih)
    }

    fn session_connections(
        &self,
        target_name: Option<&str>,
        initiator_name: &str,
        isid: Isid,
        tsih: u16,
    ) -> Vec<u16> {
        // One connection per session: a login with its CID reinstates it.
        self.session(target_name, initiator_name, isid)
            .filter(|l| l.tsih == tsih)
            .map(|l| vec![l.cid])
            .unwrap_or_default()
    }

    fn session_slot_free(&self) -> bool {
        let n = self
            .shared
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        n < self.shared.cfg.max_sessions
    }
}

impl ConnDirectory {
    fn session(&self, target: Option<&str>, initiator: &str, isid: Isid) -> Option<SessionLoc> {
        let key = SessionKey {
            target: target?.to_string(),
            initiator: initiator.to_string(),
            isid,
        };
        self.shared
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .cloned()
    }
}

impl Discovery for ConnDirectory {
    fn send_targets(
        &self,
        initiator: &str,
        session_target: Option<&str>,
        query: &str,
    ) -> Vec<(String, String)> {
        let shown = |a: &SocketAddr| {
            // A portal on the unspecified address answers with the address the
            // initiator reached.
            let a = if a.ip().is_unspecified() {
                SocketAddr::new(self.local.ip().to_canonical(), a.port())
            } else {
                *a
            };
            match a {
                SocketAddr::V4(v) => format!("{}:{}", v.ip(), v.port()),
                SocketAddr::V6(v) => format!("[{}]:{}", v.ip(), v.port()),
            }
        };
        let visible: Vec<TargetEntry> = self
            .shared
            .targets()
            .iter()
            .filter(|t| Shared::allowed(&t.target, initiator))
            .map(|t| TargetEntry {
                name: t.target.name.clone(),
                portals: t
                    .portals
                    .iter()
                    .map(|p| (shown(p), t.target.portal_group_tag))
                    .collect(),
            })
            .collect();
        let session = if session_target.is_some() {
            SessionType::Normal
        } else {
            SessionType::Discovery
        };
        crate::discovery::send_targets(query, session, session_target, &visible).0
    }
}

/// A running server. Dropping it stops it.
pub struct Server {
    shared: Arc<Shared>,
    stop: Arc<EventFd>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Starts the threads and binds the portals of `cfg.targets` (there may be
    /// none yet: targets can be added later).
    pub fn start(mut cfg: ServerConfig, registry: Arc<LunRegistry>) -> Result<Server, ServerError> {
        let initial = std::mem::take(&mut cfg.targets);
        let nworkers = cfg.workers.max(1);
        let mut inboxes = Vec::new();
        for _ in 0..nworkers {
            inboxes.push(Arc::new(Inbox {
                msgs: Mutex::new(Vec::new()),
                wake: EventFd::new(EFD_NONBLOCK).map_err(ServerError::EventFd)?,
            }));
        }
        let stop = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(ServerError::EventFd)?);
        let accept_epoll = Epoll::new().map_err(ServerError::Epoll)?;
        accept_epoll
            .ctl(
                ControlOperation::Add,
                stop.as_raw_fd(),
                EpollEvent::new(EventSet::IN, KEY_STOP),
            )
            .map_err(ServerError::Epoll)?;
        let shared = Arc::new(Shared::new(cfg, accept_epoll, inboxes));
        for t in initial {
            shared.add_target(t)?;
        }
        let mut server = Server {
            shared: shared.clone(),
            stop: stop.clone(),
            threads: Vec::new(),
        };
        for i in 0..nworkers {
            // An engine worker stays on the thread that made it.
            let (tx, rx) = std::sync::mpsc::channel();
            let (sh, reg) = (shared.clone(), registry.clone());
            let h = std::thread::Builder::new()
                .name(format!("iscsi-w{i}"))
                .spawn(move || {
                    let w = Worker::new(reg)
                        .map_err(ServerError::from)
                        .and_then(|worker| WorkerLoop::new(i, sh, worker));
                    match w {
                        Ok(mut w) => {
                            let _ = tx.send(Ok(()));
                            w.run();
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                })
                .map_err(ServerError::Thread)?;
            server.threads.push(h);
            // On an error, dropping `server` stops the threads started so far.
            rx.recv()
                .unwrap_or_else(|_| Err(ServerError::Thread(std::io::Error::other("died"))))?;
        }
        let acc = Acceptor { shared, stop };
        let h = std::thread::Builder::new()
            .name("iscsi-accept".into())
            .spawn(move || acc.run())
            .map_err(ServerError::Thread)?;
        server.threads.push(h);
        Ok(server)
    }

    /// The addresses the portals listen on (with the ports actually bound).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        let ls = self
            .shared
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut v: Vec<(u64, SocketAddr)> = ls.by_key.iter().map(|(k, l)| (*k, l.bound)).collect();
        v.sort();
        v.into_iter().map(|(_, a)| a).collect()
    }

    /// Sessions logged in right now.
    pub fn sessions(&self) -> usize {
        self.shared
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Every logged-in normal session.
    pub fn sessions_list(&self) -> Vec<SessionInfo> {
        let sessions = self
            .shared
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut v: Vec<SessionInfo> = sessions
            .iter()
            .map(|(k, l)| SessionInfo {
                target: k.target.clone(),
                initiator: k.initiator.clone(),
                isid: k.isid.0.iter().map(|b| format!("{b:02x}")).collect(),
                tsih: l.tsih,
                peer: l.peer,
                since: l
                    .since
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                commands: l.stats.commands.load(Ordering::Relaxed),
                errors: l.stats.errors.load(Ordering::Relaxed),
                aborted: l.stats.aborted.load(Ordering::Relaxed),
                bytes: l.stats.bytes.load(Ordering::Relaxed),
            })
            .collect();
        v.sort_by(|a, b| (&a.target, a.tsih).cmp(&(&b.target, b.tsih)));
        v
    }

    /// Closes the session `tsih` of `target` (its commands are aborted, as
    /// when the connection drops). False if there is no such session.
    pub fn drop_session(&self, target: &str, tsih: u16) -> bool {
        self.shared
            .kill_sessions(target, Some(tsih), || ConnError::Dropped)
            > 0
    }

    /// The targets served now, with their portals as bound.
    pub fn targets(&self) -> Vec<Target> {
        self.shared
            .targets()
            .iter()
            .map(|t| Target {
                portals: t.portals.clone(),
                ..t.target.clone()
            })
            .collect()
    }

    /// Adds a target and binds its portals; sessions may log in at once.
    pub fn add_target(&self, t: Target) -> Result<(), ServerError> {
        self.shared.add_target(t)
    }

    /// Removes a target: no new logins, its sessions are closed, portals no
    /// other target uses stop listening.
    pub fn remove_target(&self, name: &str) -> Result<(), ServerError> {
        let removed = {
            let (mut targets, i) = self.shared.target_for_change(name)?;
            targets.remove(i)
        };
        for p in &removed.portals {
            self.shared.release_listener(*p);
        }
        self.shared.kill_sessions(name, None, || ConnError::Dropped);
        Ok(())
    }

    /// Adds a portal to a target. Returns the address as bound.
    pub fn add_portal(&self, target: &str, addr: SocketAddr) -> Result<SocketAddr, ServerError> {
        let (mut targets, i) = self.shared.target_for_change(target)?;
        let t = &targets[i];
        if t.target.portals.contains(&addr) || (addr.port() != 0 && t.portals.contains(&addr)) {
            return Err(ServerError::PortalExists {
                target: target.to_string(),
                addr,
            });
        }
        let bound = self.shared.acquire_listener(addr)?;
        let mut next = LiveTarget {
            target: t.target.clone(),
            portals: t.portals.clone(),
        };
        next.target.portals.push(addr);
        next.portals.push(bound);
        targets[i] = Arc::new(next);
        Ok(bound)
    }

    /// Removes a portal (as configured or as bound) from a target. Sessions
    /// already logged in through it stay.
    pub fn remove_portal(&self, target: &str, addr: SocketAddr) -> Result<(), ServerError> {
        let (mut targets, i) = self.shared.target_for_change(target)?;
        let t = &targets[i];
        let j = t
            .target
            .portals
            .iter()
            .zip(&t.portals)
            .position(|(want, bound)| *want == addr || *bound == addr)
            .ok_or(ServerError::NoPortal {
                target: target.to_string(),
                addr,
            })?;
        let mut next = LiveTarget {
            target: t.target.clone(),
            portals: t.portals.clone(),
        };
        next.target.portals.remove(j);
        let bound = next.portals.remove(j);
        targets[i] = Arc::new(next);
        self.shared.release_listener(bound);
        Ok(())
    }

    /// Changes a target's alias, ACL or CHAP settings (its name, portals and
    /// LUN map are kept as they are). New logins see the change; sessions
    /// already logged in stay.
    pub fn modify_target(
        &self,
        name: &str,
        f: impl FnOnce(&mut Target),
    ) -> Result<(), ServerError> {
        let (mut targets, i) = self.shared.target_for_change(name)?;
        let old = &targets[i];
        let mut t = old.target.clone();
        f(&mut t);
        t.name = old.target.name.clone();
        t.portals = old.target.portals.clone();
        t.luns = old.target.luns.clone();
        t.port = old.target.port.clone();
        targets[i] = Arc::new(LiveTarget {
            target: t,
            portals: old.portals.clone(),
        });
        Ok(())
    }

    /// Stops accepting, closes every connection and joins the threads.
    pub fn shutdown(mut self) {
        self.stop_threads();
    }

    fn stop_threads(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        let _ = self.stop.write(1);
        for i in &self.shared.inboxes {
            let _ = i.wake.write(1);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

struct Acceptor {
    shared: Arc<Shared>,
    stop: Arc<EventFd>,
}

impl Acceptor {
    fn run(self) {
        let mut events = vec![EpollEvent::default(); 16];
        let mut next = 0usize;
        let n_workers = self.shared.inboxes.len().max(1);
        while !self.shared.stop.load(Ordering::Acquire) {
            let n = match self.shared.accept_epoll.wait(1000, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            for ev in &events[..n] {
                if ev.data() == KEY_STOP {
                    let _ = self.stop.read();
                    continue;
                }
                let ls = self
                    .shared
                    .listeners
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                // Removed since the event was queued: nothing to accept.
                let Some(l) = ls.by_key.get(&ev.data()) else {
                    continue;
                };
                // Bounded: a burst of at most 64 accepts per wake-up.
                for _ in 0..64 {
                    match l.socket.accept() {
                        Ok((s, _)) => {
                            if s.set_nonblocking(true).is_err() {
                                continue;
                            }
                            let _ = s.set_nodelay(true);
                            let n = self.shared.conns.fetch_add(1, Ordering::AcqRel);
                            if n >= self.shared.cfg.max_connections {
                                self.shared.conns.fetch_sub(1, Ordering::AcqRel);
                                continue;
                            }
                            self.shared.inboxes[next % n_workers].post(Msg::Conn(s));
                            next = next.wrapping_add(1);
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(_) => {
                            // Out of descriptors or memory: the listener stays
                            // readable, so back off instead of spinning.
                            drop(ls);
                            std::thread::sleep(Duration::from_millis(50));
                            break;
                        }
                    }
                }
            }
        }
    }
}

/// Counts a completed command in its session's statistics.
fn count(stats: &SessionStats, c: &engine::Completed) {
    stats.commands.fetch_add(1, Ordering::Relaxed);
    match &c.response {
        None => {
            stats.aborted.fetch_add(1, Ordering::Relaxed);
        }
        Some(r) => {
            if r.status != engine::ScsiStatus::Good {
                stats.errors.fetch_add(1, Ordering::Relaxed);
            }
            stats
                .bytes
                .fetch_add(u64::from(r.transferred), Ordering::Relaxed);
        }
    }
}

/// One message on its way out: parts and how much of them is written.
struct WireMsg {
    parts: Vec<Part>,
    buf: Option<Box<dyn DataBuf>>,
    total: usize,
    written: usize,
}

enum Part {
    Bytes(Vec<u8>),
    Buf { offset: usize, len: usize },
}

impl Part {
    fn len(&self) -> usize {
        match self {
            Part::Bytes(b) => b.len(),
            Part::Buf { len, .. } => *len,
        }
    }
}

const PAD: [u8; 4] = [0; 4];

impl WireMsg {
    fn bytes(b: Vec<u8>) -> WireMsg {
        WireMsg {
            total: b.len(),
            parts: vec![Part::Bytes(b)],
            buf: None,
            written: 0,
        }
    }

    /// Lays out `o` with `framing`'s digests.
    fn from_outgoing(mut o: Outgoing, framing: &Framing) -> WireMsg {
        let mut parts = Vec::with_capacity(o.pdus.len() * 2);
        for p in &o.pdus {
            let mut head = p.header.to_vec();
            if framing.header_digest {
                head.extend_from_slice(&digest_bytes(crate::pdu::crc32c(&p.header)));
            }
            let len = p.data.len();
            let pad = pad4(len);
            let digest = framing.data_digest && len > 0;
            match &p.data {
                Segment::Empty => {}
                Segment::Owned(v) => {
                    let mut body = std::mem::take(&mut head);
                    body.extend_from_slice(v);
                    body.extend_from_slice(&PAD[..pad]);
                    if digest {
                        let mut padded = v.clone();
                        padded.extend_from_slice(&PAD[..pad]);
                        body.extend_from_slice(&digest_bytes(crate::pdu::crc32c(&padded)));
                    }
                    parts.push(Part::Bytes(body));
                    continue;
                }
                Segment::Buf { offset, len } => {
                    parts.push(Part::Bytes(std::mem::take(&mut head)));
                    parts.push(Part::Buf {
                        offset: *offset,
                        len: *len,
                    });
                    let mut tail = PAD[..pad].to_vec();
                    if digest {
                        let mut v = vec![0u8; *len];
                        if let Some(b) = o.buf.as_mut() {
                            b.read_at(*offset, &mut v);
                        }
                        v.extend_from_slice(&PAD[..pad]);
                        tail.extend_from_slice(&digest_bytes(crate::pdu::crc32c(&v)));
                    }
                    if !tail.is_empty() {
                        parts.push(Part::Bytes(tail));
                    }
                    continue;
                }
            }
            parts.push(Part::Bytes(head));
        }
        let total = parts.iter().map(Part::len).sum();
        WireMsg {
            parts,
            buf: o.buf.take(),
            total,
            written: 0,
        }
    }

    /// Appends iovecs for the bytes not yet written, stopping once `iov` holds
    /// `max` entries. Returns how many bytes they cover.
    fn push_iovecs(&mut self, iov: &mut Vec<libc::iovec>, max: usize) -> usize {
        let mut covered = 0;
        let mut skip = self.written;
        for p in &mut self.parts {
            if iov.len() >= max {
                break;
            }
            let l = p.len();
            if skip >= l {
                skip -= l;
                continue;
            }
            let before = iov.len();
            match p {
                Part::Bytes(b) => iov.push(libc::iovec {
                    iov_base: b[skip..].as_mut_ptr().cast(),
                    iov_len: l - skip,
                }),
                Part::Buf { offset, len } => {
                    if let Some(b) = self.buf.as_mut() {
                        b.iovecs(*offset + skip, *len - skip, iov);
                    }
                }
            }
            covered += iov[before..].iter().map(|v| v.iov_len).sum::<usize>();
            skip = 0;
        }
        covered
    }
}

/// iovecs per `writev` at most (well under IOV_MAX).
const MAX_IOV: usize = 512;

/// Writes as much of the queue as the socket takes, the messages of several
/// commands in one `writev` (one syscall and, on a quiet socket, one TCP segment
/// for a batch of small responses, not one each). Pops what is fully written and
/// returns its size, and whether the queue is now empty.
fn write_queue(
    wq: &mut VecDeque<WireMsg>,
    fd: i32,
    iov: &mut Vec<libc::iovec>,
) -> std::io::Result<(usize, bool)> {
    let mut freed = 0;
    loop {
        while let Some(m) = wq.front().filter(|m| m.written >= m.total) {
            freed += m.total;
            wq.pop_front();
        }
        iov.clear();
        let mut covered = 0;
        for (i, m) in wq.iter_mut().enumerate() {
            let at = iov.len();
            let got = m.push_iovecs(iov, MAX_IOV);
            if iov.len() < MAX_IOV && got < m.total - m.written {
                // The buffer was shorter than announced: it cannot be sent. Send
                // what comes before it; it fails once it is first.
                if i == 0 {
                    return Err(std::io::Error::other("short data buffer"));
                }
                iov.truncate(at);
                break;
            }
            covered += got;
            if iov.len() >= MAX_IOV {
                break;
            }
        }
        if iov.is_empty() {
            return Ok((freed, true));
        }
        let cnt = libc::c_int::try_from(iov.len()).unwrap_or(0);
        // SAFETY: every iovec points into memory owned by a message of `wq` — its
        // byte parts or its data buffer — none of which is moved or freed during
        // the call; `cnt` is `iov.len()`.
        let n = unsafe { libc::writev(fd, iov.as_ptr(), cnt) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.kind() {
                ErrorKind::WouldBlock => Ok((freed, false)),
                ErrorKind::Interrupted => continue,
                _ => Err(e),
            };
        }
        let mut n = usize::try_from(n).unwrap_or(0);
        let partial = n < covered;
        while let Some(m) = wq.front_mut() {
            let left = m.total - m.written;
            if n < left {
                m.written += n;
                break;
            }
            n -= left;
            freed += m.total;
            wq.pop_front();
        }
        if partial {
            // The socket is full.
            return Ok((freed, wq.is_empty()));
        }
    }
}

enum Phase {
    Login(Box<Login>),
    Ffp(Box<Session>),
}

struct Conn {
    stream: TcpStream,
    phase: Phase,
    rx: Rx,
    created: Instant,
    wq: VecDeque<WireMsg>,
    wq_bytes: usize,
    framing: Framing,
    dir: Arc<ConnDirectory>,
    key: Option<SessionKey>,
    stats: Arc<SessionStats>,
    closing: bool,
    interest: EventSet,
}

struct WorkerLoop {
    index: usize,
    shared: Arc<Shared>,
    worker: Worker,
    epoll: Epoll,
    inbox: Arc<Inbox>,
    conns: IntMap<u32, Conn>,
    next_conn: u32,
    pool: BufPool,
    events: Vec<Event>,
    iov: Vec<libc::iovec>,
}

const KEY_INBOX: u64 = u64::MAX;
const KEY_ENGINE: u64 = u64::MAX - 1;
/// Socket reads per readiness event (fairness between connections).
const READS_PER_EVENT: u32 = 16;

impl WorkerLoop {
    fn new(index: usize, shared: Arc<Shared>, worker: Worker) -> Result<Self, ServerError> {
        let epoll = Epoll::new().map_err(ServerError::Epoll)?;
        let inbox = shared.inboxes[index].clone();
        epoll
            .ctl(
                ControlOperation::Add,
                inbox.wake.as_raw_fd(),
                EpollEvent::new(EventSet::IN, KEY_INBOX),
            )
            .map_err(ServerError::Epoll)?;
        epoll
            .ctl(
                ControlOperation::Add,
                worker.notify_fd(),
                EpollEvent::new(EventSet::IN, KEY_ENGINE),
            )
            .map_err(ServerError::Epoll)?;
        Ok(WorkerLoop {
            index,
            shared,
            worker,
            epoll,
            inbox,
            conns: IntMap::default(),
            next_conn: 1,
            pool: BufPool::new(),
            events: Vec::new(),
            iov: Vec::new(),
        })
    }

    fn run(&mut self) {
        let mut evs = vec![EpollEvent::default(); 64];
        let mut busy = false;
        while !self.shared.stop.load(Ordering::Acquire) {
            // The engine had more when `engine` stopped: look again at once.
            let n = match self.epoll.wait(if busy { 0 } else { 200 }, &mut evs) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => 0,
                Err(_) => break,
            };
            let mut signalled = false;
            for ev in &evs[..n] {
                match ev.data() {
                    KEY_INBOX => self.inbox(),
                    KEY_ENGINE => signalled = true,
                    key => {
                        let id = u32::try_from(key).unwrap_or(0);
                        let set = ev.event_set();
                        if set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
                            let r = self.read(id);
                            self.result(id, r);
                        }
                        if set.contains(EventSet::OUT) {
                            let r = self.flush(id);
                            self.result(id, r);
                        }
                    }
                }
            }
            busy = self.engine(signalled);
            self.timers();
            busy |= self.reap();
        }
        let ids: Vec<u32> = self.conns.keys().copied().collect();
        for id in ids {
            self.close(id, &ConnError::Closed);
        }
    }

    fn inbox(&mut self) {
        let _ = self.inbox.wake.read();
        let msgs = std::mem::take(
            &mut *self
                .inbox
                .msgs
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for m in msgs {
            match m {
                Msg::Conn(s) => self.add(s),
                Msg::Kill(id, why) => {
                    if self.conns.contains_key(&id) {
                        self.close(id, &why);
                    }
                }
            }
        }
    }

    fn add(&mut self, stream: TcpStream) {
        let id = self.next_conn;
        self.next_conn = self.next_conn.wrapping_add(1).max(1);
        let local = stream
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let cfg = &self.shared.cfg;
        let login = Login::new(LoginConfig {
            policy: cfg.policy.clone(),
            new_tsih: self.shared.new_tsih(),
            initial_stat_sn: 1,
            cmd_window: cfg.queue_depth.max(1),
            ..LoginConfig::default()
        });
        let framing = login.framing();
        let interest = EventSet::IN | EventSet::READ_HANG_UP;
        if self
            .epoll
            .ctl(
                ControlOperation::Add,
                stream.as_raw_fd(),
                EpollEvent::new(interest, u64::from(id)),
            )
            .is_err()
        {
            self.shared.conns.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        self.conns.insert(
            id,
            Conn {
                stream,
                phase: Phase::Login(Box::new(login)),
                rx: Rx::new(framing),
                created: Instant::now(),
                wq: VecDeque::new(),
                wq_bytes: 0,
                framing,
                dir: Arc::new(ConnDirectory {
                    shared: self.shared.clone(),
                    local,
                }),
                key: None,
                stats: Arc::default(),
                closing: false,
                interest,
            },
        );
    }

    fn result(&mut self, id: u32, r: Result<(), ConnError>) {
        if let Err(e) = r {
            self.close(id, &e);
        }
    }

    /// Reads what the socket has (a bounded number of reads) and handles each
    /// whole PDU, including those already buffered.
    fn read(&mut self, id: u32) -> Result<(), ConnError> {
        let limit = self.shared.cfg.max_queued_output;
        let mut reads = READS_PER_EVENT;
        // One clock read per readiness event, not per PDU (timers need no finer).
        let now = Instant::now();
        loop {
            let Some(c) = self.conns.get_mut(&id) else {
                return Ok(());
            };
            if c.closing || c.wq_bytes > limit {
                return Ok(());
            }
            match c
                .rx
                .poll(&mut &c.stream, &mut reads, now)
                .map_err(rx_error)?
            {
                Progress::Blocked => return Ok(()),
                Progress::Pdu => {}
                Progress::Place => {
                    // A Data-Out the session may take in place: its data goes
                    // from the socket straight into the command's buffer.
                    let Conn {
                        rx, phase, stream, ..
                    } = c;
                    let header = *rx.header();
                    let dst = match phase {
                        Phase::Ffp(s) => s.placement(&header),
                        Phase::Login(_) => None,
                    };
                    let Some(dst) = dst else {
                        if rx.placing_started() {
                            return Err(ConnError::Session(
                                crate::session::SessionError::Protocol("placement vanished"),
                            ));
                        }
                        rx.decline();
                        continue;
                    };
                    if !rx
                        .poll_into(&mut &*stream, &mut reads, now, dst)
                        .map_err(rx_error)?
                    {
                        return Ok(());
                    }
                    let digest = rx.finish_placed(dst);
                    let Phase::Ffp(s) = phase else {
                        digest?;
                        rx.consume(now);
                        continue;
                    };
                    match digest {
                        Ok(()) => s.receive_placed(&header, &mut self.worker, now)?,
                        // RFC 7143 §7.8: answered, not fatal.
                        Err(FramingError::DataDigest { .. }) => {
                            s.data_digest_error(&header, now)?
                        }
                        Err(e) => return Err(e.into()),
                    }
                    rx.consume(now);
                    continue;
                }
            }
            let Conn {
                rx,
                phase,
                wq,
                wq_bytes,
                dir,
                closing,
                ..
            } = c;
            let frame = match rx.frame() {
                Ok(f) => f,
                // RFC 7143 §7.8: a data digest error (the header is sound) is
                // answered with a Reject, not fatal.
                Err(FramingError::DataDigest { .. }) if matches!(phase, Phase::Ffp(_)) => {
                    let header = *rx.header();
                    if let Phase::Ffp(s) = phase {
                        s.data_digest_error(&header, now)?;
                    }
                    rx.consume(now);
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let done = match phase {
                Phase::Ffp(s) => {
                    s.receive(frame, &mut self.worker, now)?;
                    None
                }
                Phase::Login(l) => {
                    let step = l.on_pdu(dir.as_ref(), frame.header, frame.data);
                    for r in step.responses {
                        let m = WireMsg::bytes(r.to_wire());
                        *wq_bytes += m.total;
                        wq.push_back(m);
                    }
                    match step.event {
                        Some(LoginEvent::Failed { .. }) => {
                            // The failure response goes out, then the connection closes.
                            *closing = true;
                            None
                        }
                        Some(LoginEvent::Complete(o)) => Some(o),
                        None => None,
                    }
                }
            };
            rx.consume(now);
            if let Some(o) = done {
                self.logged_in(id, *o)?;
            }
        }
    }

    fn logged_in(&mut self, id: u32, o: crate::login::LoginOutcome) -> Result<(), ConnError> {
        let index = self.index;
        let cfg = &self.shared.cfg;
        let Some(c) = self.conns.get_mut(&id) else {
            return Ok(());
        };
        let initiator = o.params.initiator_name.clone().unwrap_or_default();
        let mut params = FfpParams::negotiated(&o.params);
        params.queue_depth = cfg.queue_depth.max(1);
        params.ping_interval = cfg.ping_interval;
        params.ping_timeout = cfg.ping_timeout;
        params.max_cmd_data = cfg.max_cmd_data;
        params.max_session_data = cfg.max_session_data;
        let target = o
            .target
            .as_ref()
            .and_then(|t| self.shared.target_at(&t.name, c.dir.local))
            .filter(|_| o.params.session_type == SessionType::Normal);
        let target = target.as_ref().map(|t| &t.target);
        let nexus = target.map(|t| o.nexus(t.port.clone(), t.luns.clone()));
        let s = Session::new(
            SessionSetup {
                params: params.clone(),
                nexus,
                initiator_name: initiator.clone(),
                target_name: target.map(|t| t.name.clone()),
                directory: Some(c.dir.clone() as Arc<dyn Discovery>),
                cid: o.cid,
                exp_cmd_sn: o.exp_cmd_sn,
                stat_sn: o.next_stat_sn,
                token_base: u64::from(id) << 32,
                pool: self.pool.clone(),
            },
            Instant::now(),
        );
        if let Some(t) = target {
            let key = SessionKey {
                target: t.name.clone(),
                initiator: initiator.clone(),
                isid: o.isid,
            };
            let old = self
                .shared
                .sessions
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(
                    key.clone(),
                    SessionLoc {
                        tsih: o.tsih,
                        worker: index,
                        conn: id,
                        cid: o.cid,
                        peer: c.stream.peer_addr().ok(),
                        since: std::time::SystemTime::now(),
                        stats: c.stats.clone(),
                    },
                );
            // Session reinstatement closes the old session; connection
            // reinstatement (the same TSIH and CID) its old connection. Either
            // way the old connection's commands are aborted (nexus loss).
            let replaces = matches!(
                o.binding,
                SessionBinding::Reinstate { .. } | SessionBinding::AddConnection
            );
            if let (true, Some(old)) = (replaces, old.filter(|l| l.conn != id || l.worker != index))
            {
                if let Some(inbox) = self.shared.inboxes.get(old.worker) {
                    inbox.post(Msg::Kill(old.conn, ConnError::Reinstated));
                }
            }
            tracing::info!(
                peer = ?c.stream.peer_addr().ok(),
                target = %key.target,
                initiator = %key.initiator,
                tsih = o.tsih,
                "session logged in"
            );
            c.key = Some(key);
        }
        c.phase = Phase::Ffp(Box::new(s));
        c.framing = o.params.framing();
        c.rx.framing = c.framing;
        c.rx.place_min = PLACE_MIN;
        Ok(())
    }

    /// Engine completions to their sessions. Called after every turn that may
    /// have submitted commands: inline backends (RAM, null) complete inside
    /// `submit` without signalling. The eventfd is read only when epoll reported
    /// it (`signalled`). Returns whether the engine may have more.
    fn engine(&mut self, signalled: bool) -> bool {
        // Bounded: completions can only come from commands we submitted.
        for i in 0..64 {
            if i == 0 && signalled {
                self.worker.poll(&mut self.events);
            } else {
                self.worker.poll_more(&mut self.events);
            }
            if self.events.is_empty() {
                return false;
            }
            let evs = std::mem::take(&mut self.events);
            for ev in evs {
                let token = match &ev {
                    Event::Cmd(c) => c.token,
                    Event::Tmf { token, .. } => *token,
                };
                let id = u32::try_from(token >> 32).unwrap_or(0);
                let r = match self.conns.get_mut(&id) {
                    Some(Conn {
                        phase: Phase::Ffp(s),
                        stats,
                        ..
                    }) => {
                        if let Event::Cmd(c) = &ev {
                            count(stats, c);
                        }
                        s.complete(ev).map_err(ConnError::from)
                    }
                    // Its connection is gone: the buffer is dropped here.
                    _ => Ok(()),
                };
                self.result(id, r);
            }
        }
        true
    }

    fn timers(&mut self) {
        let now = Instant::now();
        let login_timeout = self.shared.cfg.login_timeout;
        let stall = self.shared.cfg.stall_timeout;
        let mut dead = Vec::new();
        for (id, c) in &mut self.conns {
            let e = match &mut c.phase {
                Phase::Login(_) if now.saturating_duration_since(c.created) > login_timeout => {
                    Some(ConnError::LoginTimeout(login_timeout))
                }
                Phase::Ffp(s) => s.tick(now).err().map(ConnError::from),
                _ => None,
            };
            let e = e.or_else(|| {
                c.rx.partial_since()
                    .filter(|t| now.saturating_duration_since(*t) > stall)
                    .map(|_| ConnError::Stalled(stall))
            });
            if let Some(e) = e {
                dead.push((*id, e));
            }
        }
        for (id, e) in dead {
            self.close(id, &e);
        }
    }

    /// Moves session output to the sockets; closes connections that are done.
    /// Returns whether the engine may have more (see `engine`).
    fn reap(&mut self) -> bool {
        let mut busy = false;
        let ids: Vec<u32> = self.conns.keys().copied().collect();
        for id in ids {
            let r = self.flush(id);
            self.result(id, r);
            // PDUs read while output was backed up wait in the staging buffer,
            // where epoll does not see them.
            let backlog = self.conns.get(&id).is_some_and(|c| {
                c.rx.buffered() > 0 && c.wq_bytes <= self.shared.cfg.max_queued_output
            });
            if backlog {
                let r = self.read(id);
                self.result(id, r);
                // What the read submitted may have completed inline, unsignalled.
                busy |= self.engine(false);
                let r = self.flush(id);
                self.result(id, r);
            }
        }
        busy
    }

    fn flush(&mut self, id: u32) -> Result<(), ConnError> {
        let Some(c) = self.conns.get_mut(&id) else {
            return Ok(());
        };
        if let Phase::Ffp(s) = &mut c.phase {
            while let Some(o) = s.pop_output() {
                let m = WireMsg::from_outgoing(o, &c.framing);
                c.wq_bytes += m.total;
                c.wq.push_back(m);
            }
            if s.is_closing() {
                c.closing = true;
            }
        }
        let fd = c.stream.as_raw_fd();
        let (freed, _) = write_queue(&mut c.wq, fd, &mut self.iov)?;
        c.wq_bytes = c.wq_bytes.saturating_sub(freed);
        if c.wq.is_empty() && c.closing {
            self.close(id, &ConnError::Closed);
            return Ok(());
        }
        let mut want = EventSet::READ_HANG_UP;
        if !c.wq.is_empty() {
            want |= EventSet::OUT;
        }
        if c.wq_bytes <= self.shared.cfg.max_queued_output && !c.closing {
            want |= EventSet::IN;
        }
        if want != c.interest {
            c.interest = want;
            self.epoll
                .ctl(
                    ControlOperation::Modify,
                    fd,
                    EpollEvent::new(want, u64::from(id)),
                )
                .map_err(ConnError::Io)?;
        }
        Ok(())
    }

    fn close(&mut self, id: u32, why: &ConnError) {
        let Some(c) = self.conns.remove(&id) else {
            return;
        };
        let peer = c.stream.peer_addr().ok();
        match (why, &c.key) {
            (ConnError::Closed, _) => {
                tracing::debug!(?peer, "connection closed");
            }
            (_, Some(k)) => tracing::info!(
                ?peer,
                target = %k.target,
                initiator = %k.initiator,
                "session ended: {why}"
            ),
            (_, None) => tracing::info!(?peer, "connection dropped: {why}"),
        }
        self.shared.conns.fetch_sub(1, Ordering::AcqRel);
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            c.stream.as_raw_fd(),
            EpollEvent::default(),
        );
        if let Some(key) = &c.key {
            let mut map = self
                .shared
                .sessions
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if map
                .get(key)
                .is_some_and(|l| l.worker == self.index && l.conn == id)
            {
                map.remove(key);
            }
        }
        if let Phase::Ffp(s) = &c.phase {
            if let Some(n) = s.nexus() {
                self.worker.nexus_lost(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    use super::*;
    use crate::pdu::BHS_LEN;
    use crate::session::{OutPdu, PoolBuf};

    fn outgoing(data: &[u8]) -> Outgoing {
        let mut buf = PoolBuf::unpooled(data.len());
        buf.write_at(0, data);
        let mut h1 = [0u8; BHS_LEN];
        h1[0] = 0x25;
        let mut h2 = h1;
        h2[1] = 0x81;
        let mut h3 = [0u8; BHS_LEN];
        h3[0] = 0x21;
        Outgoing {
            pdus: vec![
                OutPdu {
                    header: h1,
                    data: Segment::Buf {
                        offset: 0,
                        len: 70_001,
                    },
                },
                OutPdu {
                    header: h2,
                    data: Segment::Buf {
                        offset: 70_001,
                        len: data.len() - 70_001,
                    },
                },
                OutPdu {
                    header: h3,
                    data: Segment::Owned(vec![1, 2, 3]),
                },
                OutPdu {
                    header: h3,
                    data: Segment::Empty,
                },
            ],
            buf: Some(Box::new(buf)),
        }
    }

    fn target(name: &str, portals: Vec<SocketAddr>) -> Target {
        Target {
            name: name.into(),
            alias: None,
            portals,
            portal_group_tag: 1,
            port: Arc::new(TargetPort {
                name: format!("{name},t,0x1"),
                protocol: engine::Protocol::Iscsi,
                relative_id: 1,
                group_id: 1,
            }),
            luns: LunMap::new(),
            acl: vec!["iqn.x:ok".into()],
            chap: None,
            chap_required: false,
        }
    }

    /// A target is found only through its own portals; SendTargets shows each
    /// target's portals, the unspecified address as the one reached.
    #[test]
    fn targets_live_behind_their_portals() {
        let a: SocketAddr = "127.0.0.1:3260".parse().expect("addr");
        let b: SocketAddr = "0.0.0.0:3261".parse().expect("addr");
        // Published as bound, without binding anything here.
        let shared = Arc::new(Shared::new(
            ServerConfig::default(),
            Epoll::new().expect("epoll"),
            Vec::new(),
        ));
        for t in [target("iqn.x:a", vec![a]), target("iqn.x:b", vec![b])] {
            let portals = t.portals.clone();
            shared
                .targets
                .write()
                .expect("lock")
                .push(Arc::new(LiveTarget { target: t, portals }));
        }
        let at = |local: &str| ConnDirectory {
            shared: shared.clone(),
            local: local.parse().expect("addr"),
        };
        let found = |d: &ConnDirectory, n: &str| matches!(d.lookup(n), TargetLookup::Found(_));
        assert!(found(&at("127.0.0.1:3260"), "iqn.x:a"));
        assert!(!found(&at("127.0.0.1:3260"), "iqn.x:b"));
        assert!(found(&at("10.1.2.3:3261"), "iqn.x:b"));
        assert!(!found(&at("10.1.2.3:3262"), "iqn.x:b"));
        let d = at("10.1.2.3:3261");
        let st = d.send_targets("iqn.x:ok", None, "All");
        assert!(st.contains(&("TargetAddress".into(), "127.0.0.1:3260,1".into())));
        assert!(st.contains(&("TargetAddress".into(), "10.1.2.3:3261,1".into())));
        assert!(d.send_targets("iqn.x:stranger", None, "All").is_empty());
        // An IPv4 initiator on a dual-stack socket sees its IPv4 address.
        let st = at("[::ffff:10.1.2.3]:3261").send_targets("iqn.x:ok", None, "iqn.x:b");
        assert_eq!(st[1], ("TargetAddress".into(), "10.1.2.3:3261,1".into()));
        assert!(d.initiator_allowed("iqn.x:b", "iqn.x:ok"));
        assert!(!d.initiator_allowed("iqn.x:b", "iqn.x:no"));
    }

    /// Header and data of several messages in writev calls, resumed after
    /// partial writes, give the same bytes as the codec's encoder, digests
    /// included; more messages than one writev takes go out in several.
    #[test]
    fn wire_messages_survive_partial_writes() {
        let data: Vec<u8> = (0..200_003u32).map(|i| (i % 251) as u8).collect();
        for (hd, dd) in [(false, false), (true, true), (true, false)] {
            let framing = Framing {
                header_digest: hd,
                data_digest: dd,
                max_recv_data_segment_len: 1 << 20,
            };
            let mut want = Vec::new();
            let mut wq = VecDeque::new();
            for _ in 0..2 {
                let o = outgoing(&data);
                for p in &o.pdus {
                    want.extend_from_slice(&framing.encode(&p.header, &[], &o.segment_bytes(p)));
                }
                wq.push_back(WireMsg::from_outgoing(o, &framing));
            }
            for i in 0..(2 * MAX_IOV as u32) {
                let b = i.to_le_bytes().to_vec();
                want.extend_from_slice(&b);
                wq.push_back(WireMsg::bytes(b));
            }
            let total: usize = wq.iter().map(|m| m.total).sum();
            assert_eq!(total, want.len());
            let (a, mut b) = UnixStream::pair().expect("pair");
            a.set_nonblocking(true).expect("nonblocking");
            let mut got = Vec::new();
            let mut iov = Vec::new();
            let mut chunk = vec![0u8; 8192];
            let mut freed = 0;
            for _ in 0..10_000 {
                let (f, done) = write_queue(&mut wq, a.as_raw_fd(), &mut iov).expect("write");
                freed += f;
                if done {
                    break;
                }
                let n = b.read(&mut chunk).expect("read");
                got.extend_from_slice(&chunk[..n]);
            }
            assert!(wq.is_empty());
            assert_eq!(freed, total);
            drop(a);
            b.read_to_end(&mut got).expect("rest");
            assert_eq!(got.len(), want.len());
            assert!(got == want, "digests {hd}/{dd}");
        }
    }

    /// A message whose buffer is shorter than announced fails once it is first,
    /// after the messages before it went out whole.
    #[test]
    fn short_buffer_fails_after_what_precedes_it() {
        let framing = Framing {
            header_digest: false,
            data_digest: false,
            max_recv_data_segment_len: 1 << 20,
        };
        let mut o = outgoing(&[7u8; 80_000]);
        o.buf = Some(Box::new(PoolBuf::unpooled(100)));
        let mut wq = VecDeque::new();
        wq.push_back(WireMsg::bytes(vec![1, 2, 3]));
        wq.push_back(WireMsg::from_outgoing(o, &framing));
        let (a, mut b) = UnixStream::pair().expect("pair");
        a.set_nonblocking(true).expect("nonblocking");
        let mut iov = Vec::new();
        let r = write_queue(&mut wq, a.as_raw_fd(), &mut iov);
        assert!(r.is_err());
        assert_eq!(wq.len(), 1);
        drop(a);
        let mut got = Vec::new();
        b.read_to_end(&mut got).expect("read");
        assert_eq!(&got[..3], &[1, 2, 3]);
        // Of the short message, at most what its buffer had went out before the error.
        assert!(got.len() <= 3 + 2 * BHS_LEN + 100 + 4);
    }
}
