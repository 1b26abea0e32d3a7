//! The full feature phase of one iSCSI connection (RFC 7143), sans I/O.
//!
//! In: delimited PDUs ([`FrameRef`]s) from the connection, engine completions
//! ([`engine::Event`]) and the time ([`Session::tick`]). Out: PDUs to send
//! ([`Outgoing`], taken with [`Session::pop_output`]) and engine calls made through
//! the [`Engine`] trait (a [`Worker`] in the daemon). A Data-In sequence leaves
//! together with the command's buffer, and its PDUs name byte ranges of that
//! buffer ([`Segment::Buf`]) so that the adapter writes header and data with one
//! `writev` and no copy. The other way, [`Session::placement`] tells the adapter
//! where a Data-Out's data belongs, so it can read it from the socket straight
//! into the command's buffer ([`Session::receive_placed`]).
//!
//! What it does: the CmdSN window (out-of-window commands silently dropped,
//! commands ahead of a gap held until it fills, immediate commands, a bounded
//! queue depth announced in MaxCmdSN), StatSN; SCSI commands with immediate data,
//! unsolicited Data-Out and R2Ts (MaxOutstandingR2T, MaxBurstLength), strict
//! Data-Out checks (TTT, DataSN, BufferOffset, length); Data-In split at the
//! initiator's MaxRecvDataSegmentLength with status in the last PDU when there is
//! no sense; SCSI Response with sense and residuals; NOP-Out/NOP-In and target
//! pings; task management (writes aborted while receiving data first drain the
//! R2Ts already sent); Logout; Text (SendTargets, MaxRecvDataSegmentLength
//! declared again); Reject; data digest errors (the PDU discarded with a
//! Reject, a write it belonged to ended with PROTOCOL SERVICE CRC ERROR). One
//! connection per session and ErrorRecoveryLevel 0: any recovery beyond a
//! Reject is the initiator's session recovery.

pub mod buf;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet, VecDeque};

use crate::inthash::IntMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::sense::SenseFormat;
use engine::{
    Cdb, Completed, DataBuf, DataDir, Event, Nexus, Residual, ScsiCmd, Sense, SenseKey,
    TmfFunction, TmfRequest, TmfResponse, Worker,
};
use thiserror::Error;

use crate::pdu::{
    self, decode_lun, logout_response, reject_reason, tmf_code, tmf_response, Bhs, DataIn, DataOut,
    Frame, LogoutReason, LogoutRequest, NopIn, NopOut, Opcode, Pdu, PduError, ResidualFlag,
    ScsiCommand, ScsiResponse, TaskMgmtRequest, TaskMgmtResponse, TextRequest, TextResponse,
    BHS_LEN, RESERVED_TAG,
};

pub use buf::{BufPool, PoolBuf};

/// Immediate commands (beyond the CmdSN window) in flight at most.
pub const MAX_IMMEDIATE: usize = 8;
/// Task management functions in the engine at once, at most.
pub const MAX_TMFS: usize = 16;
/// Bytes of held (ahead of a CmdSN gap) PDUs at most.
pub const MAX_HELD_BYTES: usize = 1 << 20;
/// Text requests and responses are bounded to this many bytes.
pub const MAX_TEXT: usize = 64 * 1024;
/// PROTOCOL SERVICE CRC ERROR (SAM-5): a write's data failed its digest.
const PROTOCOL_SERVICE_CRC_ERROR: engine::sense::Asc = engine::sense::Asc(0x47, 0x05);

/// The negotiated values and local limits the full feature phase works with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FfpParams {
    /// The largest data segment we send: the initiator's MaxRecvDataSegmentLength.
    pub max_xmit_data_segment_length: u32,
    /// The largest data segment we accept: ours.
    pub max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub max_outstanding_r2t: u16,
    pub error_recovery_level: u8,
    /// Commands in the CmdSN window at most (MaxCmdSN − ExpCmdSN + 1).
    pub queue_depth: u32,
    /// ExpectedDataTransferLength of one command at most.
    pub max_cmd_data: u32,
    /// Bytes of command buffers held by the session at most; beyond it new
    /// commands get TASK SET FULL.
    pub max_session_data: usize,
    /// Idle time after which the target sends a NOP-In ping.
    pub ping_interval: Duration,
    /// Time a ping may stay unanswered before the connection is dropped.
    pub ping_timeout: Duration,
    pub discovery: bool,
}

impl Default for FfpParams {
    /// RFC 7143's defaults for the negotiated keys.
    fn default() -> Self {
        FfpParams {
            max_xmit_data_segment_length: 8192,
            max_recv_data_segment_length: 8192,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            initial_r2t: true,
            immediate_data: true,
            max_outstanding_r2t: 1,
            error_recovery_level: 0,
            queue_depth: 64,
            max_cmd_data: 64 << 20,
            max_session_data: 256 << 20,
            ping_interval: Duration::from_secs(15),
            ping_timeout: Duration::from_secs(30),
            discovery: false,
        }
    }
}

impl FfpParams {
    /// The negotiated values of a login, local limits at their defaults.
    pub fn negotiated(p: &crate::negotiate::SessionParams) -> Self {
        FfpParams {
            max_xmit_data_segment_length: p.max_xmit_data_segment_length,
            max_recv_data_segment_length: p.max_recv_data_segment_length,
            max_burst_length: p.max_burst_length,
            first_burst_length: p.first_burst_length,
            initial_r2t: p.initial_r2t,
            immediate_data: p.immediate_data,
            max_outstanding_r2t: p.max_outstanding_r2t,
            error_recovery_level: p.error_recovery_level,
            discovery: p.session_type == crate::negotiate::SessionType::Discovery,
            ..FfpParams::default()
        }
    }
}

/// What the session calls on the engine. [`Worker`] is the real one.
pub trait Engine {
    fn submit(&mut self, nexus: &Arc<Nexus>, cmd: ScsiCmd);
    fn task_mgmt(&mut self, req: TmfRequest);
}

impl Engine for Worker {
    fn submit(&mut self, nexus: &Arc<Nexus>, cmd: ScsiCmd) {
        Worker::submit(self, nexus, cmd);
    }
    fn task_mgmt(&mut self, req: TmfRequest) {
        Worker::task_mgmt(self, req);
    }
}

/// Answers SendTargets (RFC 7143 §12.3 / appendix C).
pub trait Discovery: Send + Sync {
    /// `TargetName`/`TargetAddress` pairs for `query` ("All", a target name or
    /// "" for the session's own target, `session_target`) as `initiator` may
    /// see them.
    fn send_targets(
        &self,
        initiator: &str,
        session_target: Option<&str>,
        query: &str,
    ) -> Vec<(String, String)>;
}

/// The data segment of an outgoing PDU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    Empty,
    Owned(Vec<u8>),
    /// `len` bytes of [`Outgoing::buf`] from `offset`.
    Buf {
        offset: usize,
        len: usize,
    },
}

impl Segment {
    pub fn len(&self) -> usize {
        match self {
            Segment::Empty => 0,
            Segment::Owned(v) => v.len(),
            Segment::Buf { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutPdu {
    pub header: [u8; BHS_LEN],
    pub data: Segment,
}

/// PDUs to send, in order, with the buffer their `Segment::Buf`s point into.
pub struct Outgoing {
    pub pdus: Vec<OutPdu>,
    pub buf: Option<Box<dyn DataBuf>>,
}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outgoing")
            .field("pdus", &self.pdus)
            .finish()
    }
}

impl Outgoing {
    /// The bytes of one PDU's data segment (copied; for digests and tests).
    pub fn segment_bytes(&self, p: &OutPdu) -> Vec<u8> {
        match &p.data {
            Segment::Empty => Vec::new(),
            Segment::Owned(v) => v.clone(),
            Segment::Buf { offset, len } => {
                let mut v = vec![0u8; *len];
                let n = self.buf.as_ref().map_or(0, |b| b.read_at(*offset, &mut v));
                v.truncate(n);
                v
            }
        }
    }
}

/// One delimited PDU, borrowed from the adapter's receive buffer.
#[derive(Clone, Copy, Debug)]
pub struct FrameRef<'a> {
    pub header: &'a [u8; BHS_LEN],
    pub ahs: &'a [u8],
    pub data: &'a [u8],
}

impl<'a> From<&'a Frame> for FrameRef<'a> {
    fn from(f: &'a Frame) -> Self {
        FrameRef {
            header: &f.header,
            ahs: &f.ahs,
            data: &f.data,
        }
    }
}

/// Why the connection must close.
#[derive(Debug, Error)]
pub enum SessionError {
    #[error("NOP-In ping unanswered for {0:?}")]
    PingTimeout(Duration),
    #[error("PDU encoding failed: {0}")]
    Encode(#[from] PduError),
    #[error("{0} bytes of PDUs held ahead of a CmdSN gap")]
    HeldTooMuch(usize),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
}

/// RFC 1982 serial number arithmetic on 32 bits.
pub fn serial_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 0x8000_0000
}

pub fn serial_le(a: u32, b: u32) -> bool {
    a == b || serial_lt(a, b)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct R2tSeq {
    ttt: u32,
    offset: u32,
    len: u32,
    next_data_sn: u32,
}

/// Where a write stands in its data phase.
#[derive(Debug)]
struct WriteState {
    /// Bytes received in order from offset 0.
    received: u32,
    /// Some(next DataSN) while the unsolicited Data-Out sequence runs.
    unsolicited: Option<u32>,
    /// End of the unsolicited sequence.
    unsolicited_end: u32,
    /// Outstanding R2Ts, in offset order.
    r2ts: VecDeque<R2tSeq>,
    /// Offset up to which R2Ts have been sent.
    r2t_end: u32,
    next_r2t_sn: u32,
}

#[derive(Debug)]
enum TaskState {
    /// Waiting for Data-Out.
    Receiving(WriteState),
    /// Submitted to the engine.
    Running,
}

struct Task {
    lun_field: [u8; 8],
    lun: u64,
    cmd: Option<ScsiCmdParts>,
    buf: Option<PoolBuf>,
    edtl: u32,
    read: bool,
    immediate: bool,
    token: u64,
    state: TaskState,
    /// R2Ts sent: the ExpDataSN of a write's SCSI Response.
    r2ts_sent: u32,
    /// Aborted by the task management function with this ITT while receiving
    /// data: it takes the data of the R2Ts already sent, then ends.
    aborted_by: Option<u32>,
    /// A Data-Out of this write failed its data digest: it takes the rest of
    /// its outstanding sequences, then ends with CHECK CONDITION.
    crc_error: bool,
}

/// A task management function waiting for aborted writes to drain their
/// outstanding R2Ts (RFC 7143 §4.2.3.3) and, if it went to the engine, for the
/// engine's answer.
#[derive(Clone, Copy, Debug)]
struct TmfWait {
    draining: usize,
    response: Option<u8>,
    cold: bool,
}

/// A command waiting for its data before it goes to the engine.
struct ScsiCmdParts {
    cdb: Cdb,
    attr: engine::TaskAttr,
    dir: DataDir,
}

/// A Logout waiting for the connection's commands to finish.
#[derive(Clone, Copy, Debug)]
struct PendingLogout {
    itt: u32,
    response: u8,
}

#[derive(Clone, Copy, Debug)]
struct Ping {
    ttt: u32,
    sent: Instant,
}

/// A text response too long for one PDU, handed out on the initiator's request.
#[derive(Debug)]
struct TextContinuation {
    ttt: u32,
    itt: u32,
    rest: Vec<u8>,
}

/// What a session starts from: the login's outcome and the adapter's plumbing.
pub struct SessionSetup {
    pub params: FfpParams,
    /// The I_T nexus of a normal session; `None` for discovery.
    pub nexus: Option<Arc<Nexus>>,
    pub initiator_name: String,
    /// The target of a normal session (what SendTargets="" answers about).
    pub target_name: Option<String>,
    pub directory: Option<Arc<dyn Discovery>>,
    pub cid: u16,
    /// The CmdSN of the last login request (login requests are immediate).
    pub exp_cmd_sn: u32,
    /// The next StatSN.
    pub stat_sn: u32,
    /// OR-ed into every engine token so the adapter can route completions; its
    /// low 32 bits must be zero.
    pub token_base: u64,
    pub pool: BufPool,
}

/// The full feature phase of one connection (and its one-connection session).
pub struct Session {
    params: FfpParams,
    nexus: Option<Arc<Nexus>>,
    initiator_name: String,
    target_name: Option<String>,
    directory: Option<Arc<dyn Discovery>>,
    cid: u16,
    pool: BufPool,
    token_base: u64,
    next_token: u32,
    exp_cmd_sn: u32,
    max_cmd_sn: u32,
    stat_sn: u32,
    tasks: IntMap<u32, Task>,
    by_token: IntMap<u64, u32>,
    immediate: usize,
    data_bytes: usize,
    /// PDUs of commands ahead of a CmdSN gap, by CmdSN.
    held: HashMap<u32, Vec<Frame>>,
    held_itts: IntMap<u32, u32>,
    held_bytes: usize,
    /// CmdSNs that ABORT TASK named before the command arrived.
    cancelled: HashSet<u32>,
    /// Engine TMF tokens → (ITT, close the connection after answering).
    tmfs: HashMap<u64, (u32, bool)>,
    /// Functions (by ITT) waiting for aborted writes to drain.
    tmf_waits: HashMap<u32, TmfWait>,
    /// Functions whose response can go now.
    tmf_ready: Vec<u32>,
    next_ttt: u32,
    out: VecDeque<Outgoing>,
    logout: Option<PendingLogout>,
    closing: bool,
    last_rx: Instant,
    ping: Option<Ping>,
    text_in: Vec<u8>,
    /// ITT and TTT of our acknowledgement of a request continued with C=1:
    /// its next part names that TTT.
    text_in_ttt: Option<(u32, u32)>,
    text_out: Option<TextContinuation>,
}

impl Session {
    /// A session entering the full feature phase.
    pub fn new(setup: SessionSetup, now: Instant) -> Self {
        let SessionSetup {
            params,
            nexus,
            initiator_name,
            target_name,
            directory,
            cid,
            exp_cmd_sn,
            stat_sn,
            token_base,
            pool,
        } = setup;
        let mut s = Session {
            params,
            nexus,
            initiator_name,
            target_name,
            directory,
            cid,
            pool,
            token_base: token_base & !0xffff_ffff,
            next_token: 1,
            exp_cmd_sn,
            max_cmd_sn: exp_cmd_sn.wrapping_sub(1),
            stat_sn,
            tasks: IntMap::default(),
            by_token: IntMap::default(),
            immediate: 0,
            data_bytes: 0,
            held: HashMap::new(),
            held_itts: IntMap::default(),
            held_bytes: 0,
            cancelled: HashSet::new(),
            tmfs: HashMap::new(),
            tmf_waits: HashMap::new(),
            tmf_ready: Vec::new(),
            next_ttt: 1,
            out: VecDeque::new(),
            logout: None,
            closing: false,
            last_rx: now,
            ping: None,
            text_in: Vec::new(),
            text_in_ttt: None,
            text_out: None,
        };
        s.update_window();
        s
    }

    pub fn nexus(&self) -> Option<&Arc<Nexus>> {
        self.nexus.as_ref()
    }

    pub fn params(&self) -> &FfpParams {
        &self.params
    }

    pub fn exp_cmd_sn(&self) -> u32 {
        self.exp_cmd_sn
    }

    pub fn max_cmd_sn(&self) -> u32 {
        self.max_cmd_sn
    }

    pub fn stat_sn(&self) -> u32 {
        self.stat_sn
    }

    /// Commands this connection holds (receiving data or in the engine).
    pub fn tasks(&self) -> usize {
        self.tasks.len()
    }

    /// The connection is done: flush the output, then close.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// The next batch of PDUs to send.
    pub fn pop_output(&mut self) -> Option<Outgoing> {
        self.out.pop_front()
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    // -----------------------------------------------------------------------
    // Sequence numbers

    fn update_window(&mut self) {
        let depth = self.params.queue_depth.max(1);
        let used = u32::try_from(self.tasks.len().saturating_sub(self.immediate)).unwrap_or(depth);
        let free = depth.saturating_sub(used);
        // With no free slot MaxCmdSN = ExpCmdSN − 1: the window is closed.
        let candidate = self.exp_cmd_sn.wrapping_add(free).wrapping_sub(1);
        if serial_lt(self.max_cmd_sn, candidate) {
            self.max_cmd_sn = candidate;
        }
    }

    fn next_stat_sn(&mut self) -> u32 {
        let s = self.stat_sn;
        self.stat_sn = self.stat_sn.wrapping_add(1);
        s
    }

    fn new_ttt(&mut self) -> u32 {
        bump_ttt(&mut self.next_ttt)
    }

    fn new_token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token = self.next_token.wrapping_add(1).max(1);
        self.token_base | u64::from(t)
    }

    // -----------------------------------------------------------------------
    // Output

    fn emit(&mut self, pdu: Pdu, data: Segment) -> Result<(), SessionError> {
        let header = pdu.to_bytes()?;
        self.out.push_back(Outgoing {
            pdus: vec![OutPdu { header, data }],
            buf: None,
        });
        Ok(())
    }

    fn reject(&mut self, reason: u8, header: &[u8; BHS_LEN]) -> Result<(), SessionError> {
        self.update_window();
        let r = pdu::Reject {
            reason,
            data_segment_len: BHS_LEN as u32,
            stat_sn: self.next_stat_sn(),
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn,
            data_sn: 0,
        };
        self.emit(Pdu::Reject(r), Segment::Owned(header.to_vec()))
    }

    // -----------------------------------------------------------------------
    // Input

    /// Handles one PDU from the connection. Protocol violations the RFC answers
    /// with Reject are answered so; an `Err` means the connection must close.
    pub fn receive(
        &mut self,
        frame: FrameRef<'_>,
        engine: &mut dyn Engine,
        now: Instant,
    ) -> Result<(), SessionError> {
        let r = self.receive_inner(frame, engine, now);
        self.flush_tmfs()?;
        r
    }

    fn receive_inner(
        &mut self,
        frame: FrameRef<'_>,
        engine: &mut dyn Engine,
        now: Instant,
    ) -> Result<(), SessionError> {
        self.last_rx = now;
        let pdu = match Pdu::parse(frame.header) {
            Ok(p) => p,
            Err(PduError::UnknownOpcode(_)) => {
                return self.reject(reject_reason::COMMAND_NOT_SUPPORTED, frame.header)
            }
            Err(_) => {
                self.skip_cmd_sn(frame.header);
                return self.reject(reject_reason::INVALID_PDU_FIELD, frame.header);
            }
        };
        if !pdu.opcode().is_initiator() || pdu.opcode() == Opcode::LoginRequest {
            return self.reject(reject_reason::PROTOCOL_ERROR, frame.header);
        }
        match &pdu {
            Pdu::DataOut(d) => {
                if let Some(sn) = self.held_itts.get(&d.itt).copied() {
                    return self.hold(sn, frame);
                }
                return self.data_out(d, &frame, engine);
            }
            Pdu::Snack(_) => {
                // ErrorRecoveryLevel 0: no SNACK (RFC 7143 §11.16).
                return self.reject(reject_reason::PROTOCOL_ERROR, frame.header);
            }
            _ => {}
        }
        let (immediate, cmd_sn) = {
            let h = Bhs(*frame.header);
            (h.immediate(), h.u32(pdu::off::CMD_SN))
        };
        // A NOP-Out answering our ping carries no command (RFC 7143 §11.18).
        if let Pdu::NopOut(n) = &pdu {
            if n.itt == RESERVED_TAG {
                return self.nop_out(n, &frame, engine);
            }
        }
        if immediate {
            return self.dispatch(pdu, frame, engine, true);
        }
        // In the window [ExpCmdSN, MaxCmdSN]: a closed window (MaxCmdSN =
        // ExpCmdSN − 1) takes nothing.
        let in_window = serial_le(self.exp_cmd_sn, cmd_sn) && serial_le(cmd_sn, self.max_cmd_sn);
        if !in_window {
            // Outside the window, or a duplicate: silently ignored (RFC 7143
            // §4.2.2.1).
            return Ok(());
        }
        if cmd_sn == self.exp_cmd_sn {
            self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
            if self.cancelled.remove(&cmd_sn) {
                self.update_window();
            } else {
                self.dispatch(pdu, frame, engine, false)?;
            }
            return self.release_held(engine);
        }
        // Ahead of a gap: held until the gap fills.
        if let Pdu::ScsiCommand(c) = &pdu {
            self.held_itts.insert(c.itt, cmd_sn);
        }
        self.hold(cmd_sn, frame)
    }

    /// A malformed non-immediate command still uses its CmdSN.
    fn skip_cmd_sn(&mut self, header: &[u8; BHS_LEN]) {
        let h = Bhs(*header);
        let commands = [0x00, 0x01, 0x02, 0x04, 0x06];
        if !h.immediate()
            && commands.contains(&h.opcode_byte())
            && h.u32(pdu::off::CMD_SN) == self.exp_cmd_sn
        {
            self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
        }
    }

    fn hold(&mut self, cmd_sn: u32, frame: FrameRef<'_>) -> Result<(), SessionError> {
        let size = BHS_LEN + frame.ahs.len() + frame.data.len();
        self.held_bytes = self.held_bytes.saturating_add(size);
        if self.held_bytes > MAX_HELD_BYTES {
            return Err(SessionError::HeldTooMuch(self.held_bytes));
        }
        self.held.entry(cmd_sn).or_default().push(Frame {
            header: *frame.header,
            ahs: frame.ahs.to_vec(),
            data: frame.data.to_vec(),
        });
        Ok(())
    }

    fn release_held(&mut self, engine: &mut dyn Engine) -> Result<(), SessionError> {
        while let Some(frames) = self.held.remove(&self.exp_cmd_sn) {
            let sn = self.exp_cmd_sn;
            self.held_itts.retain(|_, s| *s != sn);
            let cancelled = self.cancelled.remove(&sn);
            let mut first = true;
            for f in frames {
                self.held_bytes = self
                    .held_bytes
                    .saturating_sub(BHS_LEN + f.ahs.len() + f.data.len());
                if cancelled {
                    continue;
                }
                if first {
                    first = false;
                    self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
                    let Ok(p) = Pdu::parse(&f.header) else {
                        continue;
                    };
                    self.dispatch(p, FrameRef::from(&f), engine, false)?;
                } else if let Ok(Pdu::DataOut(d)) = Pdu::parse(&f.header) {
                    self.data_out(&d, &FrameRef::from(&f), engine)?;
                }
            }
            if cancelled || first {
                self.exp_cmd_sn = sn.wrapping_add(1);
            }
        }
        self.update_window();
        Ok(())
    }

    fn dispatch(
        &mut self,
        pdu: Pdu,
        frame: FrameRef<'_>,
        engine: &mut dyn Engine,
        immediate: bool,
    ) -> Result<(), SessionError> {
        if self.logout.is_some() && !matches!(pdu, Pdu::NopOut(_)) {
            return self.reject(reject_reason::WAITING_FOR_LOGOUT, frame.header);
        }
        let r = match &pdu {
            Pdu::ScsiCommand(c) => self.scsi_command(c, &frame, engine, immediate),
            Pdu::NopOut(n) => self.nop_out(n, &frame, engine),
            Pdu::TaskMgmtRequest(_) if self.tmfs.len() >= MAX_TMFS => {
                // Bounded: functions still draining in the engine.
                self.reject(reject_reason::IMMEDIATE_COMMAND_REJECT, frame.header)
            }
            Pdu::TaskMgmtRequest(t) => self.task_mgmt(t, engine),
            Pdu::TextRequest(t) => self.text(t, &frame),
            Pdu::LogoutRequest(l) => self.logout(l),
            _ => self.reject(reject_reason::PROTOCOL_ERROR, frame.header),
        };
        self.update_window();
        r
    }

    // -----------------------------------------------------------------------
    // SCSI Command and Data-Out

    fn scsi_command(
        &mut self,
        c: &ScsiCommand,
        frame: &FrameRef<'_>,
        engine: &mut dyn Engine,
        immediate: bool,
    ) -> Result<(), SessionError> {
        let header = frame.header;
        let Some(nexus) = self.nexus.clone() else {
            // No SCSI commands in a discovery session.
            return self.reject(reject_reason::PROTOCOL_ERROR, header);
        };
        if self.tasks.contains_key(&c.itt) || c.itt == RESERVED_TAG {
            return self.reject(reject_reason::TASK_IN_PROGRESS, header);
        }
        if immediate && self.immediate >= MAX_IMMEDIATE {
            return self.reject(reject_reason::IMMEDIATE_COMMAND_REJECT, header);
        }
        let cdb = pdu::parse_ahs(frame.ahs)
            .and_then(|ahs| pdu::full_cdb(c, &ahs))
            .ok()
            .and_then(|b| Cdb::new(b.get(..cdb_len(&b)).unwrap_or(&b)));
        let Some(cdb) = cdb else {
            return self.reject(reject_reason::INVALID_PDU_FIELD, header);
        };
        let dsl = u32::try_from(frame.data.len()).unwrap_or(u32::MAX);
        let unsolicited_ok = !self.params.initial_r2t && c.write;
        if dsl > 0 && (!c.write || !self.params.immediate_data)
            || !c.final_ && !unsolicited_ok
            || dsl > c.expected_data_len
            || dsl > self.params.first_burst_length
        {
            return self.reject(reject_reason::PROTOCOL_ERROR, header);
        }
        let lun = decode_lun(&c.lun).unwrap_or(u64::MAX);
        let token = self.new_token();
        let edtl = c.expected_data_len;
        let edtl_usize = usize::try_from(edtl).unwrap_or(usize::MAX);
        let Some(dir) = c.data_dir() else {
            // Bidirectional commands: none of ours takes both.
            return self.quick_check(
                c.itt,
                Sense::new(
                    SenseKey::IllegalRequest,
                    engine::sense::asc::INVALID_FIELD_IN_CDB,
                ),
            );
        };
        if edtl > self.params.max_cmd_data {
            return self.quick_check(
                c.itt,
                Sense::new(
                    SenseKey::IllegalRequest,
                    engine::sense::asc::INVALID_FIELD_IN_CDB,
                ),
            );
        }
        if self.data_bytes.saturating_add(edtl_usize) > self.params.max_session_data {
            return self.quick_status(c.itt, engine::ScsiStatus::TaskSetFull);
        }
        // A write's buffer is filled completely before the engine sees it.
        let mut buf = if c.write {
            self.pool.get_for_overwrite(edtl_usize)
        } else {
            self.pool.get(edtl_usize)
        };
        buf.write_at(0, frame.data);
        self.data_bytes += edtl_usize;
        let parts = ScsiCmdParts {
            cdb,
            attr: c.attr.to_engine(),
            dir,
        };
        let state = if c.write && dsl < edtl {
            let unsolicited_end = if c.final_ {
                dsl
            } else {
                self.params.first_burst_length.min(edtl)
            };
            TaskState::Receiving(WriteState {
                received: dsl,
                unsolicited: (!c.final_ && dsl < unsolicited_end).then_some(0),
                unsolicited_end,
                r2ts: VecDeque::new(),
                r2t_end: unsolicited_end.max(dsl),
                next_r2t_sn: 0,
            })
        } else {
            TaskState::Running
        };
        let receiving = matches!(state, TaskState::Receiving(_));
        self.tasks.insert(
            c.itt,
            Task {
                lun_field: c.lun,
                lun,
                cmd: Some(parts),
                buf: Some(buf),
                edtl,
                read: c.read,
                immediate,
                token,
                state,
                r2ts_sent: 0,
                aborted_by: None,
                crc_error: false,
            },
        );
        self.by_token.insert(token, c.itt);
        if immediate {
            self.immediate += 1;
        }
        if receiving {
            self.after_data(c.itt, engine)
        } else {
            self.submit(c.itt, &nexus, engine);
            Ok(())
        }
    }

    /// Sends R2Ts or submits, after the command or a Data-Out.
    fn after_data(&mut self, itt: u32, engine: &mut dyn Engine) -> Result<(), SessionError> {
        let max_r2t = usize::from(self.params.max_outstanding_r2t.max(1));
        let burst = self.params.max_burst_length.max(512);
        let mut r2ts = Vec::new();
        let lun;
        {
            let Some(task) = self.tasks.get_mut(&itt) else {
                return Ok(());
            };
            lun = task.lun_field;
            let edtl = task.edtl;
            let TaskState::Receiving(w) = &mut task.state else {
                return Ok(());
            };
            if task.aborted_by.is_some() {
                // Aborted: no more R2Ts; it ends once the sent ones are answered.
                if w.unsolicited.is_none() && w.r2ts.is_empty() {
                    self.drop_task(itt);
                }
                return Ok(());
            }
            if w.received >= edtl {
                task.state = TaskState::Running;
                if let Some(nexus) = self.nexus.clone() {
                    self.submit(itt, &nexus, engine);
                }
                return Ok(());
            }
            if w.unsolicited.is_some() {
                return Ok(());
            }
            if w.r2ts.is_empty() {
                // Sequences arrive in order: R2Ts go on from the data we have.
                w.r2t_end = w.received;
            }
            while w.r2ts.len() < max_r2t && w.r2t_end < edtl {
                let len = burst.min(edtl - w.r2t_end);
                let seq = R2tSeq {
                    ttt: bump_ttt(&mut self.next_ttt),
                    offset: w.r2t_end,
                    len,
                    next_data_sn: 0,
                };
                w.r2t_end += len;
                w.r2ts.push_back(seq);
                r2ts.push((w.next_r2t_sn, seq));
                w.next_r2t_sn = w.next_r2t_sn.wrapping_add(1);
                task.r2ts_sent = w.next_r2t_sn;
            }
        }
        self.update_window();
        for (r2t_sn, seq) in r2ts {
            let r = pdu::R2t {
                lun,
                itt,
                ttt: seq.ttt,
                stat_sn: self.stat_sn,
                exp_cmd_sn: self.exp_cmd_sn,
                max_cmd_sn: self.max_cmd_sn,
                r2t_sn,
                buffer_offset: seq.offset,
                desired_len: seq.len,
            };
            self.emit(Pdu::R2t(r), Segment::Empty)?;
        }
        Ok(())
    }

    fn submit(&mut self, itt: u32, nexus: &Arc<Nexus>, engine: &mut dyn Engine) {
        let Some(task) = self.tasks.get_mut(&itt) else {
            return;
        };
        let (Some(parts), Some(buf)) = (task.cmd.take(), task.buf.take()) else {
            return;
        };
        task.state = TaskState::Running;
        let cmd = ScsiCmd {
            lun: task.lun,
            cdb: parts.cdb,
            tag: u64::from(itt),
            attr: parts.attr,
            dir: parts.dir,
            token: task.token,
            data: Box::new(buf),
        };
        engine.submit(nexus, cmd);
    }

    fn data_out(
        &mut self,
        d: &DataOut,
        frame: &FrameRef<'_>,
        engine: &mut dyn Engine,
    ) -> Result<(), SessionError> {
        self.data_out_inner(d, frame.header, Some(frame.data), engine)
    }

    /// Where the data segment of the Data-Out `header` goes if the session would
    /// accept that PDU as it stands: a range of its command's buffer. The adapter
    /// may read the data straight into it, then hand the PDU over with
    /// [`Session::receive_placed`]. `None`: deliver it with [`Session::receive`].
    pub fn placement(&mut self, header: &[u8; BHS_LEN]) -> Option<&mut [u8]> {
        let Ok(Pdu::DataOut(d)) = Pdu::parse(header) else {
            return None;
        };
        if self.held_itts.contains_key(&d.itt) {
            return None;
        }
        let task = self.tasks.get_mut(&d.itt)?;
        let TaskState::Receiving(w) = &task.state else {
            return None;
        };
        if task.crc_error {
            return None;
        }
        let (end, _) = data_out_check(w, task.edtl, &d, d.data_segment_len)?;
        let start = usize::try_from(w.received).ok()?;
        let end = usize::try_from(end).ok()?;
        task.buf.as_mut()?.as_mut_slice().get_mut(start..end)
    }

    /// A Data-Out whose data segment the adapter already read into the range
    /// [`Session::placement`] gave for its header.
    pub fn receive_placed(
        &mut self,
        header: &[u8; BHS_LEN],
        engine: &mut dyn Engine,
        now: Instant,
    ) -> Result<(), SessionError> {
        self.last_rx = now;
        let Ok(Pdu::DataOut(d)) = Pdu::parse(header) else {
            return Err(SessionError::Protocol("placed PDU is not a Data-Out"));
        };
        let r = self.data_out_inner(&d, header, None, engine);
        self.flush_tmfs()?;
        r
    }

    /// A Data-Out; `data` is `None` when it is already in place.
    fn data_out_inner(
        &mut self,
        d: &DataOut,
        header: &[u8; BHS_LEN],
        data: Option<&[u8]>,
        engine: &mut dyn Engine,
    ) -> Result<(), SessionError> {
        let len = data.map_or(d.data_segment_len, |b| {
            u32::try_from(b.len()).unwrap_or(u32::MAX)
        });
        let Some(task) = self.tasks.get_mut(&d.itt) else {
            // A task we no longer know (terminated, or never seen): dropped.
            return Ok(());
        };
        if task.crc_error {
            return self.crc_data_out(d, len);
        }
        let edtl = task.edtl;
        let TaskState::Receiving(w) = &mut task.state else {
            return self.reject(reject_reason::PROTOCOL_ERROR, header);
        };
        let Some((end, seq_end)) = data_out_check(w, edtl, d, len) else {
            // ErrorRecoveryLevel 0 has no recovery within a command: the PDU is
            // rejected and the task ends with it, answered by nothing else (the
            // initiator fails the command on the Reject, RFC 7143 §11.17.1);
            // later PDUs of the task are dropped.
            self.drop_task(d.itt);
            return self.reject(reject_reason::PROTOCOL_ERROR, header);
        };
        if let (Some(b), Some(data)) = (task.buf.as_mut(), data) {
            b.write_at(w.received as usize, data);
        }
        w.received = end;
        let seq_done = end == seq_end || d.final_;
        match &mut w.unsolicited {
            Some(sn) => {
                *sn = sn.wrapping_add(1);
                if seq_done {
                    w.unsolicited = None;
                }
            }
            None => {
                if let Some(s) = w.r2ts.front_mut() {
                    s.next_data_sn = s.next_data_sn.wrapping_add(1);
                }
                if seq_done {
                    w.r2ts.pop_front();
                }
            }
        }
        if seq_done {
            self.after_data(d.itt, engine)?;
        }
        Ok(())
    }

    /// A PDU whose data segment failed its digest (its header is sound): RFC
    /// 7143 §7.8 has it discarded and answered with a Reject (data digest
    /// error). A discarded Data-Out leaves its write short: the write takes
    /// the rest of its outstanding sequences without placing them and then
    /// ends with CHECK CONDITION, PROTOCOL SERVICE CRC ERROR (choice b of
    /// §7.8 — ErrorRecoveryLevel 0 has no recovery R2T). A discarded command
    /// keeps its CmdSN expected, for the initiator to send again.
    pub fn data_digest_error(
        &mut self,
        header: &[u8; BHS_LEN],
        now: Instant,
    ) -> Result<(), SessionError> {
        self.last_rx = now;
        self.reject(reject_reason::DATA_DIGEST_ERROR, header)?;
        let Ok(Pdu::DataOut(d)) = Pdu::parse(header) else {
            return Ok(());
        };
        let receiving = self.tasks.get_mut(&d.itt).and_then(|t| match t.state {
            TaskState::Receiving(_) => Some(t),
            TaskState::Running => None,
        });
        let Some(task) = receiving else {
            return Ok(());
        };
        task.crc_error = true;
        let r = self.crc_data_out(&d, d.data_segment_len);
        self.flush_tmfs()?;
        r
    }

    /// A Data-Out of a write whose data already failed a digest: only where
    /// its sequences end matters.
    fn crc_data_out(&mut self, d: &DataOut, len: u32) -> Result<(), SessionError> {
        let Some(task) = self.tasks.get_mut(&d.itt) else {
            return Ok(());
        };
        let TaskState::Receiving(w) = &mut task.state else {
            return Ok(());
        };
        let end = d.buffer_offset.saturating_add(len);
        if d.ttt == RESERVED_TAG {
            if w.unsolicited.is_some() && (d.final_ || end >= w.unsolicited_end) {
                w.unsolicited = None;
            }
        } else if let Some(i) = w.r2ts.iter().position(|s| s.ttt == d.ttt) {
            let seq_end = w.r2ts[i].offset.saturating_add(w.r2ts[i].len);
            if d.final_ || end >= seq_end {
                w.r2ts.remove(i);
            }
        }
        if w.unsolicited.is_some() || !w.r2ts.is_empty() {
            return Ok(());
        }
        let itt = d.itt;
        let answer = task.aborted_by.is_none();
        let exp_data_sn = task.r2ts_sent;
        self.drop_task(itt);
        if !answer {
            return Ok(());
        }
        let s = Sense::new(SenseKey::AbortedCommand, PROTOCOL_SERVICE_CRC_ERROR);
        let resp = engine::CmdResponse {
            status: engine::ScsiStatus::CheckCondition,
            sense: Some(s.encode(SenseFormat::Fixed)),
            sense_data: Some(s),
            transferred: 0,
            residual: Residual::None,
        };
        self.respond(itt, &resp, Some(exp_data_sn))
    }

    /// Removes a task that never reached the engine (or must answer nothing).
    fn drop_task(&mut self, itt: u32) {
        if let Some(t) = self.tasks.remove(&itt) {
            if let Some(tmf) = t.aborted_by {
                if let Some(w) = self.tmf_waits.get_mut(&tmf) {
                    w.draining = w.draining.saturating_sub(1);
                    if w.draining == 0 && w.response.is_some() {
                        self.tmf_ready.push(tmf);
                    }
                }
            }
            self.by_token.remove(&t.token);
            if t.immediate {
                self.immediate = self.immediate.saturating_sub(1);
            }
            self.data_bytes = self
                .data_bytes
                .saturating_sub(usize::try_from(t.edtl).unwrap_or(0));
        }
        self.update_window();
    }

    fn quick_check(&mut self, itt: u32, s: Sense) -> Result<(), SessionError> {
        let resp = engine::CmdResponse {
            status: engine::ScsiStatus::CheckCondition,
            sense: Some(s.encode(SenseFormat::Fixed)),
            sense_data: Some(s),
            transferred: 0,
            residual: Residual::None,
        };
        self.respond(itt, &resp, None)
    }

    fn quick_status(&mut self, itt: u32, status: engine::ScsiStatus) -> Result<(), SessionError> {
        let resp = engine::CmdResponse {
            status,
            sense: None,
            sense_data: None,
            transferred: 0,
            residual: Residual::None,
        };
        self.respond(itt, &resp, None)
    }

    // -----------------------------------------------------------------------
    // Completions

    /// Takes one engine event meant for this session (its token carries our
    /// `token_base`). Events of other sessions are ignored.
    pub fn complete(&mut self, ev: Event) -> Result<(), SessionError> {
        let r = match ev {
            Event::Cmd(c) => self.cmd_done(c),
            Event::Tmf { token, response } => self.tmf_done(token, response),
        };
        self.update_window();
        self.flush_tmfs()?;
        self.check_logout()?;
        r
    }

    fn cmd_done(&mut self, c: Completed) -> Result<(), SessionError> {
        let Some(itt) = self.by_token.remove(&c.token) else {
            return Ok(());
        };
        let Some(task) = self.tasks.remove(&itt) else {
            return Ok(());
        };
        if task.immediate {
            self.immediate = self.immediate.saturating_sub(1);
        }
        self.data_bytes = self
            .data_bytes
            .saturating_sub(usize::try_from(task.edtl).unwrap_or(0));
        let Some(resp) = c.response else {
            // Aborted by a task management function: no response.
            return Ok(());
        };
        self.update_window();
        self.respond_with_data(itt, &task, &resp, c.data)
    }

    fn respond_with_data(
        &mut self,
        itt: u32,
        task: &Task,
        resp: &engine::CmdResponse,
        data: Box<dyn DataBuf>,
    ) -> Result<(), SessionError> {
        let have = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let moved = if task.read {
            resp.transferred.min(have)
        } else {
            0
        };
        if moved == 0 {
            // ExpDataSN counts the R2Ts and Data-Ins sent (RFC 7143 §11.4.8).
            return self.respond(itt, resp, Some(task.r2ts_sent));
        }
        let mss = self.params.max_xmit_data_segment_length.max(512);
        let burst = self.params.max_burst_length.max(mss);
        let collapse = resp.sense.is_none();
        let (rflag, rcount) = residual(resp.residual);
        let mut pdus = Vec::new();
        let mut offset = 0u32;
        let mut data_sn = 0u32;
        while offset < moved {
            // A PDU never crosses the end of a MaxBurstLength sequence.
            let to_burst_end = burst - offset % burst;
            let len = mss.min(moved - offset).min(to_burst_end);
            let end = offset + len;
            let last = end == moved;
            let burst_end = end.is_multiple_of(burst);
            let status = last && collapse;
            let din = DataIn {
                final_: last || burst_end,
                acknowledge: false,
                residual: if status { rflag } else { ResidualFlag::None },
                status: status.then_some(resp.status as u8),
                data_segment_len: len,
                lun: task.lun_field,
                itt,
                ttt: RESERVED_TAG,
                stat_sn: if status { self.next_stat_sn() } else { 0 },
                exp_cmd_sn: self.exp_cmd_sn,
                max_cmd_sn: self.max_cmd_sn,
                data_sn,
                buffer_offset: offset,
                residual_count: if status { rcount } else { 0 },
            };
            pdus.push(OutPdu {
                header: Pdu::DataIn(din).to_bytes()?,
                data: Segment::Buf {
                    offset: offset as usize,
                    len: len as usize,
                },
            });
            offset = end;
            data_sn = data_sn.wrapping_add(1);
        }
        self.out.push_back(Outgoing {
            pdus,
            buf: Some(data),
        });
        if collapse {
            return Ok(());
        }
        self.respond(itt, resp, Some(data_sn))
    }

    /// A SCSI Response PDU.
    fn respond(
        &mut self,
        itt: u32,
        resp: &engine::CmdResponse,
        exp_data_sn: Option<u32>,
    ) -> Result<(), SessionError> {
        let (rflag, rcount) = residual(resp.residual);
        let data = match &resp.sense {
            Some(s) if !s.is_empty() => {
                let n = u16::try_from(s.len()).unwrap_or(u16::MAX);
                let mut v = Vec::with_capacity(2 + s.len());
                v.extend_from_slice(&n.to_be_bytes());
                v.extend_from_slice(&s[..usize::from(n)]);
                v
            }
            _ => Vec::new(),
        };
        self.update_window();
        let r = ScsiResponse {
            bidi_residual: ResidualFlag::None,
            residual: rflag,
            response: 0,
            status: resp.status as u8,
            data_segment_len: u32::try_from(data.len()).unwrap_or(0),
            itt,
            snack_tag: 0,
            stat_sn: self.next_stat_sn(),
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn,
            exp_data_sn: exp_data_sn.unwrap_or(0),
            bidi_residual_count: 0,
            residual_count: rcount,
        };
        let seg = if data.is_empty() {
            Segment::Empty
        } else {
            Segment::Owned(data)
        };
        self.emit(Pdu::ScsiResponse(r), seg)
    }

    // -----------------------------------------------------------------------
    // NOP

    fn nop_out(
        &mut self,
        n: &NopOut,
        frame: &FrameRef<'_>,
        _engine: &mut dyn Engine,
    ) -> Result<(), SessionError> {
        if n.itt == RESERVED_TAG {
            // An answer to our ping, or a ping that wants no answer.
            if self.ping.is_some_and(|p| p.ttt == n.ttt) {
                self.ping = None;
            }
            return Ok(());
        }
        let max = usize::try_from(self.params.max_xmit_data_segment_length).unwrap_or(0);
        let echo: Vec<u8> = frame.data.iter().take(max).copied().collect();
        self.update_window();
        let r = NopIn {
            data_segment_len: u32::try_from(echo.len()).unwrap_or(0),
            lun: n.lun,
            itt: n.itt,
            ttt: RESERVED_TAG,
            stat_sn: self.next_stat_sn(),
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn,
        };
        let seg = if echo.is_empty() {
            Segment::Empty
        } else {
            Segment::Owned(echo)
        };
        self.emit(Pdu::NopIn(r), seg)
    }

    /// Timers: sends a NOP-In ping after `ping_interval` of silence; fails once a
    /// ping has gone unanswered for `ping_timeout`.
    pub fn tick(&mut self, now: Instant) -> Result<(), SessionError> {
        if let Some(p) = self.ping {
            let waited = now.saturating_duration_since(p.sent);
            if waited >= self.params.ping_timeout {
                return Err(SessionError::PingTimeout(waited));
            }
            return Ok(());
        }
        if self.closing || now.saturating_duration_since(self.last_rx) < self.params.ping_interval {
            return Ok(());
        }
        let ttt = self.new_ttt();
        self.ping = Some(Ping { ttt, sent: now });
        self.update_window();
        let r = NopIn {
            data_segment_len: 0,
            lun: [0; 8],
            itt: RESERVED_TAG,
            ttt,
            // Not advanced by an unsolicited NOP-In (RFC 7143 §11.19).
            stat_sn: self.stat_sn,
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn,
        };
        self.emit(Pdu::NopIn(r), Segment::Empty)
    }

    /// When `tick` next has something to do.
    pub fn next_deadline(&self) -> Instant {
        match self.ping {
            Some(p) => p.sent + self.params.ping_timeout,
            None => self.last_rx + self.params.ping_interval,
        }
    }

    // -----------------------------------------------------------------------
    // Task management

    fn task_mgmt(
        &mut self,
        t: &TaskMgmtRequest,
        engine: &mut dyn Engine,
    ) -> Result<(), SessionError> {
        let lun = decode_lun(&t.lun).unwrap_or(u64::MAX);
        let function = match t.function {
            tmf_code::ABORT_TASK => {
                let tag = t.referenced_task_tag;
                match self
                    .tasks
                    .get(&tag)
                    .map(|x| matches!(x.state, TaskState::Running))
                {
                    Some(true) => TmfFunction::AbortTask {
                        tag: u64::from(tag),
                    },
                    Some(false) => {
                        // Still receiving data: it never reached the engine. It
                        // ends once the R2Ts already sent are answered.
                        let n = self.abort_receiving(|itt, _| itt == tag, t.itt);
                        if n == 0 {
                            return self.tmf_respond(t.itt, tmf_response::FUNCTION_COMPLETE);
                        }
                        self.tmf_waits.insert(
                            t.itt,
                            TmfWait {
                                draining: n,
                                response: Some(tmf_response::FUNCTION_COMPLETE),
                                cold: false,
                            },
                        );
                        return Ok(());
                    }
                    None => {
                        // RFC 7143 §11.5.1: a RefCmdSN in the window, below the
                        // request's own CmdSN, names a command not yet received:
                        // it is considered received (and dropped on arrival).
                        let r = t.ref_cmd_sn;
                        let pending = serial_le(self.exp_cmd_sn, r)
                            && serial_le(r, self.max_cmd_sn)
                            && serial_lt(r, t.cmd_sn);
                        if pending {
                            if self.held_itts.get(&tag) == Some(&r) {
                                self.held_itts.remove(&tag);
                            }
                            self.cancelled.insert(r);
                            return self.tmf_respond(t.itt, tmf_response::FUNCTION_COMPLETE);
                        }
                        return self.tmf_respond(t.itt, tmf_response::TASK_DOES_NOT_EXIST);
                    }
                }
            }
            tmf_code::ABORT_TASK_SET => TmfFunction::AbortTaskSet,
            tmf_code::CLEAR_ACA => TmfFunction::ClearAca,
            tmf_code::CLEAR_TASK_SET => TmfFunction::ClearTaskSet,
            tmf_code::LOGICAL_UNIT_RESET => TmfFunction::LogicalUnitReset,
            tmf_code::TARGET_WARM_RESET | tmf_code::TARGET_COLD_RESET => TmfFunction::TargetReset,
            tmf_code::TASK_REASSIGN => {
                // Only at ErrorRecoveryLevel 2 (RFC 7143 §11.5.1).
                return self.tmf_respond(t.itt, tmf_response::REASSIGNMENT_NOT_SUPPORTED);
            }
            // RFC 7144 §4.1: the SAM-5 functions.
            9 => TmfFunction::QueryTask {
                tag: u64::from(t.referenced_task_tag),
            },
            10 => TmfFunction::QueryTaskSet,
            11 => TmfFunction::ItNexusReset,
            12 => TmfFunction::QueryAsyncEvent,
            _ => return self.tmf_respond(t.itt, tmf_response::NOT_SUPPORTED),
        };
        let Some(nexus) = self.nexus.clone() else {
            return self.tmf_respond(t.itt, tmf_response::NOT_SUPPORTED);
        };
        // The writes of this session the function aborts that still wait for
        // data: they drain their R2Ts first (the engine never saw them).
        let whole_lun = matches!(
            function,
            TmfFunction::AbortTaskSet | TmfFunction::ClearTaskSet | TmfFunction::LogicalUnitReset
        );
        let whole_nexus = matches!(
            function,
            TmfFunction::TargetReset | TmfFunction::ItNexusReset
        );
        let cold = t.function == tmf_code::TARGET_COLD_RESET;
        if whole_lun || whole_nexus {
            let n = self.abort_receiving(|_, l| whole_nexus || l == lun, t.itt);
            if n > 0 {
                self.tmf_waits.insert(
                    t.itt,
                    TmfWait {
                        draining: n,
                        response: None,
                        cold,
                    },
                );
            }
        }
        let token = self.new_token();
        self.tmfs.insert(token, (t.itt, cold));
        engine.task_mgmt(TmfRequest {
            nexus,
            lun,
            function,
            token,
        });
        Ok(())
    }

    /// Aborts the tasks still receiving data that `which(itt, lun)` selects:
    /// those with nothing outstanding end now, the others once their R2Ts are
    /// answered. Returns how many are left to drain.
    fn abort_receiving(&mut self, which: impl Fn(u32, u64) -> bool, tmf: u32) -> usize {
        let mut now = Vec::new();
        let mut draining = 0;
        for (itt, t) in self.tasks.iter_mut() {
            let TaskState::Receiving(w) = &t.state else {
                continue;
            };
            if t.aborted_by.is_some() || !which(*itt, t.lun) {
                continue;
            }
            if w.unsolicited.is_none() && w.r2ts.is_empty() {
                now.push(*itt);
            } else {
                t.aborted_by = Some(tmf);
                draining += 1;
            }
        }
        for itt in now {
            self.drop_task(itt);
        }
        draining
    }

    /// Sends the responses of functions whose aborted writes have drained.
    fn flush_tmfs(&mut self) -> Result<(), SessionError> {
        while let Some(itt) = self.tmf_ready.pop() {
            let Some(w) = self.tmf_waits.remove(&itt) else {
                continue;
            };
            if let Some(code) = w.response {
                self.tmf_respond(itt, code)?;
                if w.cold {
                    self.closing = true;
                }
            }
        }
        Ok(())
    }

    /// Ends the tasks on `lun` (all if `None`) that are still receiving data.
    fn drop_unsubmitted(&mut self, lun: Option<u64>) {
        let victims: Vec<u32> = self
            .tasks
            .iter()
            .filter(|(_, t)| {
                matches!(t.state, TaskState::Receiving(_)) && lun.is_none_or(|l| l == t.lun)
            })
            .map(|(itt, _)| *itt)
            .collect();
        for itt in victims {
            self.drop_task(itt);
        }
    }

    fn tmf_done(&mut self, token: u64, response: TmfResponse) -> Result<(), SessionError> {
        let Some((itt, cold)) = self.tmfs.remove(&token) else {
            return Ok(());
        };
        let code = tmf_code_of(response);
        if let Some(w) = self.tmf_waits.get_mut(&itt) {
            // Aborted writes still draining: answer when they are done.
            w.response = Some(code);
            if w.draining == 0 {
                self.tmf_ready.push(itt);
            }
            return Ok(());
        }
        self.tmf_respond(itt, code)?;
        if cold {
            // TARGET COLD RESET closes the connection after the response.
            self.closing = true;
        }
        Ok(())
    }

    fn tmf_respond(&mut self, itt: u32, response: u8) -> Result<(), SessionError> {
        self.update_window();
        let r = TaskMgmtResponse {
            response,
            itt,
            stat_sn: self.next_stat_sn(),
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn,
        };
        self.emit(Pdu::TaskMgmtResponse(r), Segment::Empty)
    }

    // -----------------------------------------------------------------------
    // Logout

    fn logout(&mut self, l: &LogoutRequest) -> Result<(), SessionError> {
        let response = match l.reason {
            LogoutReason::CloseSession => logout_response::CLOSED,
            LogoutReason::CloseConnection if l.cid == self.cid => logout_response::CLOSED,
            LogoutReason::CloseConnection => logout_response::CID_NOT_FOUND,
            LogoutReason::RemoveConnectionForRecovery => logout_response::RECOVERY_NOT_SUPPORTED,
        };
        if response != logout_response::CLOSED {
            return self.logout_respond(l.itt, response);
        }
        // Commands still receiving data will get none after a Logout.
        self.drop_unsubmitted(None);
        self.logout = Some(PendingLogout {
            itt: l.itt,
            response,
        });
        self.check_logout()
    }

    fn check_logout(&mut self) -> Result<(), SessionError> {
        let Some(p) = self.logout else {
            return Ok(());
        };
        if !self.tasks.is_empty() || !self.tmfs.is_empty() || !self.tmf_waits.is_empty() {
            return Ok(());
        }
        self.logout = None;
        self.logout_respond(p.itt, p.response)?;
        self.closing = true;
        Ok(())
    }

    fn logout_respond(&mut self, itt: u32, response: u8) -> Result<(), SessionError> {
        self.update_window();
        let r = pdu::LogoutResponse {
            response,
            itt,
            stat_sn: self.next_stat_sn(),
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn,
            time2wait: 0,
            time2retain: 0,
        };
        self.emit(Pdu::LogoutResponse(r), Segment::Empty)
    }

    // -----------------------------------------------------------------------
    // Text

    fn text(&mut self, t: &TextRequest, frame: &FrameRef<'_>) -> Result<(), SessionError> {
        let continued = self.text_in_ttt.take();
        if t.ttt == RESERVED_TAG {
            // A new request: whatever was under way is forgotten (RFC 7143
            // §11.10.4).
            self.text_out = None;
            self.text_in.clear();
        } else if continued != Some((t.itt, t.ttt)) {
            // Not the next part of the initiator's text: it asks for the rest
            // of a long response of ours.
            self.text_in.clear();
            return match self.text_out.take() {
                Some(c) if c.ttt == t.ttt && c.itt == t.itt && frame.data.is_empty() => {
                    self.text_send(t.itt, t.lun, c.rest)
                }
                _ => self.reject(reject_reason::PROTOCOL_ERROR, frame.header),
            };
        }
        if self.text_in.len().saturating_add(frame.data.len()) > MAX_TEXT {
            self.text_in.clear();
            return self.reject(reject_reason::PROTOCOL_ERROR, frame.header);
        }
        self.text_in.extend_from_slice(frame.data);
        if t.continue_ {
            // More request text follows: acknowledge with an empty response
            // whose TTT the next part carries.
            let ttt = self.new_ttt();
            self.text_in_ttt = Some((t.itt, ttt));
            self.update_window();
            let r = TextResponse {
                final_: false,
                continue_: false,
                data_segment_len: 0,
                lun: t.lun,
                itt: t.itt,
                ttt,
                stat_sn: self.next_stat_sn(),
                exp_cmd_sn: self.exp_cmd_sn,
                max_cmd_sn: self.max_cmd_sn,
            };
            return self.emit(Pdu::TextResponse(r), Segment::Empty);
        }
        let text = std::mem::take(&mut self.text_in);
        let mut answer = Vec::new();
        for entry in text.split(|&b| b == 0).filter(|e| !e.is_empty()) {
            let Some(eq) = entry.iter().position(|&b| b == b'=') else {
                continue;
            };
            let key = String::from_utf8_lossy(&entry[..eq]);
            let value = String::from_utf8_lossy(&entry[eq + 1..]);
            let pairs = match (key.as_ref(), &self.directory) {
                ("SendTargets", Some(d)) => {
                    d.send_targets(&self.initiator_name, self.target_name.as_deref(), &value)
                }
                ("SendTargets", None) => Vec::new(),
                // Declarations allowed in the full feature phase (RFC 7143
                // §13.12, §13.7): the initiator's new receive limit holds for
                // every PDU from here on; its alias wants no answer.
                ("MaxRecvDataSegmentLength", _) => {
                    use crate::negotiate::{parse_number, MAX_DATA_LEN, MIN_DATA_LEN};
                    match parse_number(&value).and_then(|n| u32::try_from(n).ok()) {
                        Some(n) if (MIN_DATA_LEN..=MAX_DATA_LEN).contains(&n) => {
                            self.params.max_xmit_data_segment_length = n;
                            Vec::new()
                        }
                        _ => vec![(key.to_string(), "Reject".to_string())],
                    }
                }
                ("InitiatorAlias", _) => Vec::new(),
                (k, _) => vec![(k.to_string(), "NotUnderstood".to_string())],
            };
            for (k, v) in pairs {
                answer.extend_from_slice(k.as_bytes());
                answer.push(b'=');
                answer.extend_from_slice(v.as_bytes());
                answer.push(0);
            }
        }
        answer.truncate(MAX_TEXT);
        self.text_send(t.itt, t.lun, answer)
    }

    fn text_send(&mut self, itt: u32, lun: [u8; 8], mut text: Vec<u8>) -> Result<(), SessionError> {
        let max = usize::try_from(self.params.max_xmit_data_segment_length.max(512)).unwrap_or(512);
        let (more, ttt) = if text.len() > max {
            let rest = text.split_off(max);
            let ttt = self.new_ttt();
            self.text_out = Some(TextContinuation { ttt, itt, rest });
            (true, ttt)
        } else {
            (false, RESERVED_TAG)
        };
        self.update_window();
        let r = TextResponse {
            final_: !more,
            continue_: more,
            data_segment_len: u32::try_from(text.len()).unwrap_or(0),
            lun,
            itt,
            ttt,
            stat_sn: self.next_stat_sn(),
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn,
        };
        let seg = if text.is_empty() {
            Segment::Empty
        } else {
            Segment::Owned(text)
        };
        self.emit(Pdu::TextResponse(r), seg)
    }
}

/// The length of a CDB from its operation code's group (SPC-4 4.2.5.1): the
/// engine decodes fields by length, and the iSCSI CDB field is always 16 bytes.
pub fn cdb_len(cdb: &[u8]) -> usize {
    let Some(&op) = cdb.first() else {
        return 0;
    };
    let len = match op >> 5 {
        0 => 6,
        1 | 2 => 10,
        4 => 16,
        5 => 12,
        // Variable length (7Fh): eight bytes plus the ADDITIONAL CDB LENGTH.
        3 if op == 0x7f => 8 + usize::from(cdb.get(7).copied().unwrap_or(0)),
        _ => cdb.len(),
    };
    len.min(cdb.len())
}

/// The iSCSI response code of an engine answer.
fn tmf_code_of(response: TmfResponse) -> u8 {
    match response {
        TmfResponse::FunctionComplete => tmf_response::FUNCTION_COMPLETE,
        // RFC 7144 §4.2: "Function succeeded".
        TmfResponse::FunctionSucceeded { .. } => 7,
        TmfResponse::FunctionRejected => tmf_response::REJECTED,
        TmfResponse::IncorrectLun => tmf_response::LUN_DOES_NOT_EXIST,
        TmfResponse::TaskNotFound => tmf_response::TASK_DOES_NOT_EXIST,
    }
}

/// Whether a Data-Out of `len` bytes is the next one the write expects: data
/// PDUs and sequences in order (DataPDUInOrder and DataSequenceInOrder are
/// Yes), so the next byte is always `received`; the right TTT and DataSN; no
/// more than the sequence and the command take; F only where a solicited
/// sequence ends. The end offset of its data and of its sequence.
fn data_out_check(w: &WriteState, edtl: u32, d: &DataOut, len: u32) -> Option<(u32, u32)> {
    let (seq_end, want_ttt, want_sn) = match (w.unsolicited, w.r2ts.front()) {
        (Some(sn), _) => (w.unsolicited_end, RESERVED_TAG, sn),
        (None, Some(s)) => (s.offset.saturating_add(s.len), s.ttt, s.next_data_sn),
        (None, None) => (w.received, RESERVED_TAG, 0),
    };
    let end = w
        .received
        .checked_add(len)
        .filter(|&e| e <= seq_end && e <= edtl)?;
    let ok = d.ttt == want_ttt
        && d.data_sn == want_sn
        && d.buffer_offset == w.received
        && !(d.final_ && w.unsolicited.is_none() && end != seq_end);
    ok.then_some((end, seq_end))
}

/// A target transfer tag: never 0 nor the reserved 0xffffffff.
fn bump_ttt(next: &mut u32) -> u32 {
    let t = *next;
    *next = next.wrapping_add(1);
    if *next == RESERVED_TAG || *next == 0 {
        *next = 1;
    }
    t
}

fn residual(r: Residual) -> (ResidualFlag, u32) {
    match r {
        Residual::None => (ResidualFlag::None, 0),
        Residual::Under(n) => (ResidualFlag::Underflow, n),
        Residual::Over(n) => (ResidualFlag::Overflow, n),
    }
}
