//! A small synchronous iSCSI initiator for tests: one connection, one session,
//! one command at a time. It speaks through the crate's own codec ([`crate::pdu`],
//! [`crate::text`], [`crate::chap`]) and aims to be correct and plain, not fast:
//! a test that records a write as acknowledged must be able to trust it.
//!
//! Every read from the target is bounded by [`InitiatorConfig::timeout`], and
//! whatever the target sends becomes either a result or an [`InitiatorError`].
//! SCSI failures are data: a CHECK CONDITION (a unit attention, say) comes back
//! as a [`ScsiResult`] with its sense bytes for the caller to act on.

mod conn;
mod login;
mod scsi;
mod seq;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;

use crate::chap::Secret;
use crate::pdu::{
    DataOut, FramingError, LogoutReason, LogoutRequest, NopOut, Opcode, Pdu, PduError, ScsiCommand,
    TaskAttribute, TaskMgmtRequest, TextRequest, RESERVED_TAG,
};
use crate::text::TextError;
use conn::Conn;
use login::{LoginParams, Negotiated, OUR_MAX_RECV};
use scsi::sense_of;
pub use scsi::{ScsiResult, CHECK_CONDITION, GOOD, UNIT_ATTENTION};
use seq::Seq;

/// Text a SendTargets answer may carry at most.
const MAX_DISCOVERY_TEXT: usize = 1 << 20;
/// PDUs one command may take (Data-In, R2T, NOP-In) before we call it a loop.
const MAX_PDUS_PER_TASK: usize = 1 << 20;

/// What the session asks for.
#[derive(Clone, Debug)]
pub struct InitiatorConfig {
    pub initiator_name: String,
    pub target_name: String,
    pub isid: [u8; 6],
    /// Our CHAP name and secret, offered if the target wants CHAP.
    pub chap: Option<Secret>,
    /// The target's expected CHAP name and secret: with it, CHAP is mutual.
    pub mutual_chap: Option<Secret>,
    pub header_digest: bool,
    pub data_digest: bool,
    /// What we propose; the target's policy may still impose R2Ts.
    pub initial_r2t: bool,
    pub immediate_data: bool,
    /// Bound on connecting and on every wait for the target.
    pub timeout: Duration,
}

impl InitiatorConfig {
    /// No CHAP, no digests, immediate and unsolicited data proposed, 10 s timeout.
    pub fn new(initiator_name: &str, target_name: &str) -> Self {
        InitiatorConfig {
            initiator_name: initiator_name.to_string(),
            target_name: target_name.to_string(),
            // Random-qualifier format (0x80), as open-iscsi and libiscsi use.
            isid: [0x80, 0x6f, 0x78, 0x74, 0x00, 0x01],
            chap: None,
            mutual_chap: None,
            header_digest: false,
            data_digest: false,
            initial_r2t: false,
            immediate_data: true,
            timeout: Duration::from_secs(10),
        }
    }
}

/// What went wrong talking to the target.
#[derive(Debug, Error)]
pub enum InitiatorError {
    #[error("I/O with the target: {0}")]
    Io(#[from] std::io::Error),
    #[error("no answer from the target within {0:?}")]
    Timeout(Duration),
    #[error("the target closed the connection")]
    Closed,
    #[error("bad PDU from the target: {0}")]
    Pdu(#[from] PduError),
    #[error("bad framing from the target: {0}")]
    Framing(#[from] FramingError),
    #[error("bad text from the target: {0}")]
    Text(#[from] TextError),
    #[error("login refused: status class {class:#04x} detail {detail:#04x}")]
    LoginRejected { class: u8, detail: u8 },
    #[error("login: {0}")]
    Login(String),
    #[error("CHAP: {0}")]
    Chap(String),
    #[error("unexpected {got:?} while waiting for {waiting}")]
    Unexpected { got: Opcode, waiting: &'static str },
    #[error("the target rejected a PDU (reason {0:#04x})")]
    Reject(u8),
    #[error("protocol violation by the target: {0}")]
    Protocol(String),
    #[error("iSCSI service response {0:#04x}: the target failed the command")]
    TargetFailure(u8),
    #[error("SCSI status {status:#04x} (sense {sense:02x?})")]
    Status { status: u8, sense: Vec<u8> },
    #[error("logout refused with response {0}")]
    Logout(u8),
    #[error("invalid request: {0}")]
    Invalid(String),
}

/// PDUs of each data-flow path so far, for tests that must know a path ran.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub commands: u64,
    /// Bytes sent as immediate data in SCSI Command PDUs.
    pub immediate_bytes: u64,
    /// Data-Out PDUs sent unsolicited (TTT 0xffffffff).
    pub unsolicited_data_outs: u64,
    pub r2ts: u64,
    /// Data-Out PDUs sent for R2Ts.
    pub solicited_data_outs: u64,
    pub data_ins: u64,
    pub nop_ins_answered: u64,
}

/// One logged-in session over one connection.
pub struct Initiator {
    conn: Conn,
    seq: Seq,
    params: Negotiated,
    timeout: Duration,
    counters: Counters,
}

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Initiator")
            .field("seq", &self.seq)
            .field("params", &self.params)
            .finish()
    }
}

/// One Data-Out sequence: `data[offset..offset + len]` in segments of at most `max`.
struct Burst<'a> {
    data: &'a [u8],
    lun: [u8; 8],
    itt: u32,
    ttt: u32,
    offset: usize,
    len: usize,
    max: usize,
}

impl Initiator {
    /// Logs in to `cfg.target_name` at `addr`: a normal session, security
    /// (None, or CHAP as the target asks) then operational negotiation.
    pub fn connect(addr: SocketAddr, cfg: InitiatorConfig) -> Result<Initiator, InitiatorError> {
        let p = LoginParams {
            initiator_name: &cfg.initiator_name,
            target_name: Some(&cfg.target_name),
            isid: cfg.isid,
            chap: cfg.chap.as_ref(),
            mutual_chap: cfg.mutual_chap.as_ref(),
            header_digest: cfg.header_digest,
            data_digest: cfg.data_digest,
            initial_r2t: cfg.initial_r2t,
            immediate_data: cfg.immediate_data,
        };
        Self::login(addr, cfg.timeout, &p)
    }

    fn login(
        addr: SocketAddr,
        timeout: Duration,
        p: &LoginParams<'_>,
    ) -> Result<Initiator, InitiatorError> {
        let mut conn = Conn::open(addr, timeout, OUR_MAX_RECV)?;
        let mut seq = Seq::new();
        let params = login::login(&mut conn, &mut seq, p)?;
        conn.framing.header_digest = params.header_digest;
        conn.framing.data_digest = params.data_digest;
        Ok(Initiator {
            conn,
            seq,
            params,
            timeout,
            counters: Counters::default(),
        })
    }

    /// A discovery session asking SendTargets=All: each target with its
    /// addresses (as `host:port,tpgt`).
    pub fn discover(
        addr: SocketAddr,
        initiator_name: &str,
        timeout: Duration,
    ) -> Result<Vec<(String, Vec<String>)>, InitiatorError> {
        let p = LoginParams {
            initiator_name,
            target_name: None,
            isid: [0x80, 0x6f, 0x78, 0x74, 0x00, 0x02],
            chap: None,
            mutual_chap: None,
            header_digest: false,
            data_digest: false,
            initial_r2t: true,
            immediate_data: false,
        };
        let mut s = Self::login(addr, timeout, &p)?;
        let text = s.send_targets()?;
        s.logout()?;
        parse_send_targets(&text)
    }

    fn send_targets(&mut self) -> Result<Vec<u8>, InitiatorError> {
        let itt = self.seq.next_itt();
        let mut ttt = RESERVED_TAG;
        let mut out = b"SendTargets=All\0".to_vec();
        let mut text = Vec::new();
        loop {
            self.wait_window()?;
            let req = TextRequest {
                immediate: false,
                final_: true,
                continue_: false,
                data_segment_len: len32(out.len())?,
                lun: [0; 8],
                itt,
                ttt,
                cmd_sn: self.seq.cmd_sn,
                exp_stat_sn: self.seq.exp_stat_sn,
            };
            self.conn.send(&Pdu::TextRequest(req), &out)?;
            self.seq.cmd_sn = self.seq.cmd_sn.wrapping_add(1);
            let (resp, data) = match self.recv("text response")? {
                (Pdu::TextResponse(r), d) if r.itt == itt => (r, d),
                (p, _) => return Err(unexpected(&p, "text response")),
            };
            self.seq
                .on_status(resp.stat_sn, resp.exp_cmd_sn, resp.max_cmd_sn);
            text.extend_from_slice(&data);
            if text.len() > MAX_DISCOVERY_TEXT {
                return Err(InitiatorError::Protocol("SendTargets text too long".into()));
            }
            if !resp.continue_ {
                return Ok(text);
            }
            ttt = resp.ttt;
            out = Vec::new();
        }
    }

    /// The values the login settled, for tests that check them.
    pub fn negotiated_digests(&self) -> (bool, bool) {
        (self.params.header_digest, self.params.data_digest)
    }

    /// What went over the wire so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// InitialR2T and ImmediateData as negotiated.
    pub fn negotiated_data_flow(&self) -> (bool, bool) {
        (self.params.initial_r2t, self.params.immediate_data)
    }

    /// Runs one SCSI command to completion: `data_out` written (immediate,
    /// unsolicited and R2T-solicited as negotiated) or up to `data_in_len`
    /// bytes read. Bidirectional commands are not supported.
    pub fn command(
        &mut self,
        lun: u64,
        cdb: &[u8],
        data_out: &[u8],
        data_in_len: usize,
    ) -> Result<ScsiResult, InitiatorError> {
        if !data_out.is_empty() && data_in_len > 0 {
            return Err(InitiatorError::Invalid("bidirectional command".into()));
        }
        if cdb.is_empty() {
            return Err(InitiatorError::Invalid("empty CDB".into()));
        }
        let lun = encode_lun(lun)?;
        let mut cdb16 = [0u8; 16];
        cdb16
            .get_mut(..cdb.len())
            .ok_or_else(|| InitiatorError::Invalid(format!("CDB of {} bytes", cdb.len())))?
            .copy_from_slice(cdb);
        let write = !data_out.is_empty();
        let expected = if write { data_out.len() } else { data_in_len };
        let max_xmit = usize::try_from(self.params.max_xmit).unwrap_or(usize::MAX);
        let first_burst = usize::try_from(self.params.first_burst).unwrap_or(usize::MAX);
        let max_burst = usize::try_from(self.params.max_burst).unwrap_or(usize::MAX);
        let unsolicited = if write && !self.params.initial_r2t {
            data_out.len().min(first_burst)
        } else {
            0
        };
        let immediate = if write && self.params.immediate_data {
            data_out.len().min(first_burst).min(max_xmit)
        } else {
            0
        };
        self.wait_window()?;
        let itt = self.seq.next_itt();
        let cmd = ScsiCommand {
            immediate: false,
            final_: unsolicited <= immediate,
            read: data_in_len > 0,
            write,
            attr: TaskAttribute::Simple,
            total_ahs_words: 0,
            data_segment_len: len32(immediate)?,
            lun,
            itt,
            expected_data_len: len32(expected)?,
            cmd_sn: self.seq.cmd_sn,
            exp_stat_sn: self.seq.exp_stat_sn,
            cdb: cdb16,
        };
        self.conn.send(
            &Pdu::ScsiCommand(cmd),
            data_out.get(..immediate).unwrap_or_default(),
        )?;
        self.seq.cmd_sn = self.seq.cmd_sn.wrapping_add(1);
        self.counters.commands += 1;
        self.counters.immediate_bytes += u64::try_from(immediate).unwrap_or(u64::MAX);
        if unsolicited > immediate {
            self.data_out(&Burst {
                data: data_out,
                lun,
                itt,
                ttt: RESERVED_TAG,
                offset: immediate,
                len: unsolicited - immediate,
                max: max_xmit,
            })?;
        }
        let mut data = vec![0u8; data_in_len];
        let mut received = 0usize;
        let mut data_sn = 0u32;
        for _ in 0..MAX_PDUS_PER_TASK {
            match self.recv("command completion")? {
                (Pdu::DataIn(d), seg) if d.itt == itt => {
                    // In order over TCP at ErrorRecoveryLevel 0: a gap is a bug.
                    if d.data_sn != data_sn {
                        return Err(InitiatorError::Protocol(format!(
                            "Data-In DataSN {} where {data_sn} was due",
                            d.data_sn
                        )));
                    }
                    data_sn = data_sn.wrapping_add(1);
                    let off = usize::try_from(d.buffer_offset).unwrap_or(usize::MAX);
                    let dst = off
                        .checked_add(seg.len())
                        .and_then(|end| data.get_mut(off..end))
                        .ok_or_else(|| {
                            InitiatorError::Protocol(format!(
                                "Data-In of {} bytes at {off} beyond {data_in_len}",
                                seg.len()
                            ))
                        })?;
                    dst.copy_from_slice(&seg);
                    self.counters.data_ins += 1;
                    received = received.max(off + seg.len());
                    if let Some(status) = d.status {
                        self.seq.on_status(d.stat_sn, d.exp_cmd_sn, d.max_cmd_sn);
                        data.truncate(received);
                        return Ok(ScsiResult {
                            status,
                            sense: Vec::new(),
                            data,
                            residual: d.residual,
                            residual_count: d.residual_count,
                        });
                    }
                    self.seq.on_window(d.exp_cmd_sn, d.max_cmd_sn);
                }
                (Pdu::R2t(r), _) if r.itt == itt => {
                    self.seq.on_window(r.exp_cmd_sn, r.max_cmd_sn);
                    self.counters.r2ts += 1;
                    let offset = usize::try_from(r.buffer_offset).unwrap_or(usize::MAX);
                    let len = usize::try_from(r.desired_len).unwrap_or(usize::MAX);
                    if len == 0 || len > max_burst {
                        return Err(InitiatorError::Protocol(format!(
                            "R2T for {len} bytes (MaxBurstLength {max_burst})"
                        )));
                    }
                    self.data_out(&Burst {
                        data: data_out,
                        lun,
                        itt,
                        ttt: r.ttt,
                        offset,
                        len,
                        max: max_xmit,
                    })?;
                }
                (Pdu::ScsiResponse(r), seg) if r.itt == itt => {
                    self.seq.on_status(r.stat_sn, r.exp_cmd_sn, r.max_cmd_sn);
                    if r.response != 0 {
                        return Err(InitiatorError::TargetFailure(r.response));
                    }
                    data.truncate(received);
                    return Ok(ScsiResult {
                        status: r.status,
                        sense: sense_of(&seg)?,
                        data,
                        residual: r.residual,
                        residual_count: r.residual_count,
                    });
                }
                (p, _) => return Err(unexpected(&p, "command completion")),
            }
        }
        Err(InitiatorError::Protocol("command never completed".into()))
    }

    /// Sends one Data-Out sequence, checked against the command's buffer.
    fn data_out(&mut self, b: &Burst<'_>) -> Result<(), InitiatorError> {
        let end = b.offset.checked_add(b.len).filter(|&e| e <= b.data.len());
        let Some(end) = end else {
            return Err(InitiatorError::Protocol(format!(
                "asked for {} bytes at {} of a {}-byte write",
                b.len,
                b.offset,
                b.data.len()
            )));
        };
        let mut at = b.offset;
        let mut data_sn = 0u32;
        while at < end {
            let n = (end - at).min(b.max.max(1));
            let pdu = DataOut {
                final_: at + n == end,
                data_segment_len: len32(n)?,
                lun: b.lun,
                itt: b.itt,
                ttt: b.ttt,
                exp_stat_sn: self.seq.exp_stat_sn,
                data_sn,
                buffer_offset: len32(at)?,
            };
            self.conn.send(
                &Pdu::DataOut(pdu),
                b.data.get(at..at + n).unwrap_or_default(),
            )?;
            data_sn = data_sn.wrapping_add(1);
            if b.ttt == RESERVED_TAG {
                self.counters.unsolicited_data_outs += 1;
            } else {
                self.counters.solicited_data_outs += 1;
            }
            at += n;
        }
        Ok(())
    }

    /// Receives the next PDU, answering NOP-In pings and passing over
    /// asynchronous messages on the way; a Reject ends the wait.
    fn recv(&mut self, waiting: &'static str) -> Result<(Pdu, Vec<u8>), InitiatorError> {
        for _ in 0..MAX_PDUS_PER_TASK {
            if let Some(got) = self.recv_one()? {
                return Ok(got);
            }
        }
        Err(InitiatorError::Protocol(format!(
            "only NOP-Ins while waiting for {waiting}"
        )))
    }

    /// One PDU from the target; `None` if it was a NOP-In or an asynchronous
    /// message, dealt with here.
    fn recv_one(&mut self) -> Result<Option<(Pdu, Vec<u8>)>, InitiatorError> {
        let (pdu, data) = self.conn.recv()?;
        match pdu {
            Pdu::NopIn(n) => {
                if n.itt == RESERVED_TAG {
                    // A ping of the target's: StatSN does not advance.
                    self.seq.on_window(n.exp_cmd_sn, n.max_cmd_sn);
                } else {
                    self.seq.on_status(n.stat_sn, n.exp_cmd_sn, n.max_cmd_sn);
                }
                if n.ttt != RESERVED_TAG {
                    let out = NopOut {
                        immediate: true,
                        data_segment_len: len32(data.len())?,
                        lun: n.lun,
                        itt: RESERVED_TAG,
                        ttt: n.ttt,
                        cmd_sn: self.seq.cmd_sn,
                        exp_stat_sn: self.seq.exp_stat_sn,
                    };
                    self.conn.send(&Pdu::NopOut(out), &data)?;
                    self.counters.nop_ins_answered += 1;
                }
                Ok(None)
            }
            Pdu::AsyncMessage(a) => {
                self.seq.on_status(a.stat_sn, a.exp_cmd_sn, a.max_cmd_sn);
                Ok(None)
            }
            Pdu::Reject(r) => {
                self.seq.on_status(r.stat_sn, r.exp_cmd_sn, r.max_cmd_sn);
                Err(InitiatorError::Reject(r.reason))
            }
            p => Ok(Some((p, data))),
        }
    }

    /// Waits (answering NOP-Ins) until MaxCmdSN admits our next CmdSN; with
    /// nothing outstanding, only a NOP-In or an asynchronous message can open it.
    fn wait_window(&mut self) -> Result<(), InitiatorError> {
        for _ in 0..MAX_PDUS_PER_TASK {
            if self.seq.window_open() {
                return Ok(());
            }
            if let Some((p, _)) = self.recv_one()? {
                return Err(unexpected(&p, "the command window to open"));
            }
        }
        Err(InitiatorError::Protocol(format!(
            "command window stays closed (CmdSN {}, MaxCmdSN {})",
            self.seq.cmd_sn, self.seq.max_cmd_sn
        )))
    }

    /// A task management function; the iSCSI response code comes back
    /// (0 function complete, see [`crate::pdu::tmf_response`]).
    pub fn tmf(
        &mut self,
        function: u8,
        lun: u64,
        referenced_tag: u32,
    ) -> Result<u8, InitiatorError> {
        let itt = self.seq.next_itt();
        let req = TaskMgmtRequest {
            immediate: true,
            function,
            lun: encode_lun(lun)?,
            itt,
            referenced_task_tag: referenced_tag,
            cmd_sn: self.seq.cmd_sn,
            exp_stat_sn: self.seq.exp_stat_sn,
            ref_cmd_sn: self.seq.cmd_sn,
            exp_data_sn: 0,
        };
        self.conn.send(&Pdu::TaskMgmtRequest(req), &[])?;
        match self.recv("task management response")? {
            (Pdu::TaskMgmtResponse(r), _) if r.itt == itt => {
                self.seq.on_status(r.stat_sn, r.exp_cmd_sn, r.max_cmd_sn);
                Ok(r.response)
            }
            (p, _) => Err(unexpected(&p, "task management response")),
        }
    }

    /// Closes the session and the connection.
    pub fn logout(mut self) -> Result<(), InitiatorError> {
        let itt = self.seq.next_itt();
        let req = LogoutRequest {
            immediate: true,
            reason: LogoutReason::CloseSession,
            itt,
            cid: 0,
            cmd_sn: self.seq.cmd_sn,
            exp_stat_sn: self.seq.exp_stat_sn,
        };
        self.conn.send(&Pdu::LogoutRequest(req), &[])?;
        let r = match self.recv("logout response") {
            Ok((Pdu::LogoutResponse(r), _)) if r.itt == itt => r,
            Ok((p, _)) => return Err(unexpected(&p, "logout response")),
            Err(e) => return Err(e),
        };
        self.conn.close();
        if r.response != 0 {
            return Err(InitiatorError::Logout(r.response));
        }
        Ok(())
    }

    /// The timeout every wait is bounded by.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// The LUN field as libiscsi sends it: peripheral addressing below 256, flat
/// space below 16384.
pub fn encode_lun(lun: u64) -> Result<[u8; 8], InitiatorError> {
    if lun >= 0x4000 {
        return Err(InitiatorError::Invalid(format!(
            "LUN {lun} beyond flat space"
        )));
    }
    Ok(engine::spc::encode_lun(lun))
}

/// TargetName/TargetAddress groups of a SendTargets answer (keys repeat, so
/// not through [`crate::text::parse`]).
fn parse_send_targets(text: &[u8]) -> Result<Vec<(String, Vec<String>)>, InitiatorError> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for item in text.split(|&b| b == 0).filter(|i| !i.is_empty()) {
        let item = std::str::from_utf8(item)
            .map_err(|_| InitiatorError::Protocol("SendTargets text not UTF-8".into()))?;
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| InitiatorError::Protocol(format!("{item:?} has no '='")))?;
        match k {
            "TargetName" => out.push((v.to_string(), Vec::new())),
            "TargetAddress" => out
                .last_mut()
                .ok_or_else(|| InitiatorError::Protocol("TargetAddress before TargetName".into()))?
                .1
                .push(v.to_string()),
            _ => {}
        }
    }
    Ok(out)
}

fn len32(n: usize) -> Result<u32, InitiatorError> {
    u32::try_from(n).map_err(|_| InitiatorError::Invalid(format!("length {n} beyond 32 bits")))
}

fn unexpected(p: &Pdu, waiting: &'static str) -> InitiatorError {
    InitiatorError::Unexpected {
        got: p.opcode(),
        waiting,
    }
}
