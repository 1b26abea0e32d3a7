//! The login phase (RFC 7143 §6.3, §11.12–11.13), target side, as a state
//! machine: Login Request PDUs in, Login Response PDUs and events out, no sockets.
//!
//! A login starts in the security stage (or, when the target needs no
//! authentication, straight in the operational stage), moves forward on the
//! initiator's Transit requests as far as the target agrees, and ends in the full
//! feature phase with [`LoginEvent::Complete`] — the negotiated
//! [`SessionParams`], the session binding (new, reinstating an older session of
//! the same initiator port, or a connection joining an existing session) — or
//! with a failure status, after which the caller closes the connection. Targets,
//! ACLs, CHAP secrets and existing sessions come from the caller's
//! [`TargetDirectory`].

use std::collections::VecDeque;

use crate::chap::{ChapAlgorithm, ChapCredentials, ChapError, ChapTarget};
use crate::negotiate::{NegotiationError, Negotiator, SessionParams, SessionType, TargetPolicy};
use crate::pdu::{
    Bhs, Framing, Isid, LoginRequest, LoginResponse, LoginStatus, Opcode, Pdu, Stage, BHS_LEN,
};
use crate::text::{split_segments, Pairs, TextAccumulator, DEFAULT_MAX_TEXT};

/// The iSCSI version this target speaks (RFC 7143: 0x00).
pub const VERSION: u8 = 0;

/// How a target (or the discovery service) authenticates initiators.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AuthPolicy {
    /// No authentication; CHAP if the initiator asks and credentials exist.
    #[default]
    None,
    /// CHAP required.
    Chap,
}

/// A target as the directory describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetInfo {
    pub name: String,
    pub alias: Option<String>,
    pub portal_group_tag: u16,
    pub auth: AuthPolicy,
}

/// The answer to a target lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetLookup {
    Found(TargetInfo),
    NotFound,
    /// Known but taken out of service.
    Removed,
    /// Temporarily unable to serve (e.g. being reconfigured).
    Unavailable,
    /// Served elsewhere: answered with a redirection and this TargetAddress.
    Moved {
        address: String,
        permanent: bool,
    },
}

/// What the login machine asks of its caller.
pub trait TargetDirectory {
    fn lookup(&self, target_name: &str) -> TargetLookup;
    /// The discovery service's authentication, or `None` if discovery is off.
    fn discovery(&self) -> Option<AuthPolicy>;
    /// The ACL: may this initiator log in to this target?
    fn initiator_allowed(&self, target_name: &str, initiator_name: &str) -> bool;
    /// CHAP credentials for this initiator on this target (`None`: discovery).
    fn chap_credentials(
        &self,
        target_name: Option<&str>,
        initiator_name: &str,
    ) -> Option<ChapCredentials>;
    /// The TSIH of a live session of the same initiator port (name and ISID) on
    /// this target: a new login with TSIH 0 reinstates it.
    fn existing_session(
        &self,
        target_name: Option<&str>,
        initiator_name: &str,
        isid: Isid,
    ) -> Option<u16>;
    /// Whether the session a login with TSIH ≠ 0 names exists for this port.
    fn session_exists(
        &self,
        target_name: Option<&str>,
        initiator_name: &str,
        isid: Isid,
        tsih: u16,
    ) -> bool;
    /// The CIDs of the connections of that session, where the directory knows
    /// them: a login with one of them reinstates that connection (RFC 7143
    /// §6.3.4), one with another CID adds a connection, which MaxConnections
    /// bounds.
    fn session_connections(
        &self,
        _target_name: Option<&str>,
        _initiator_name: &str,
        _isid: Isid,
        _tsih: u16,
    ) -> Vec<u16> {
        Vec::new()
    }
    /// Whether another session may start (a new login that reinstates no
    /// session is refused with "out of resources" otherwise).
    fn session_slot_free(&self) -> bool {
        true
    }
}

/// Settings of one login.
#[derive(Clone, Debug)]
pub struct LoginConfig {
    pub policy: TargetPolicy,
    pub chap_algorithms: Vec<ChapAlgorithm>,
    /// The TSIH a new session gets; the caller allocates it. 0 means none is
    /// free: a login for a new session then fails with "out of resources".
    pub new_tsih: u16,
    /// StatSN of the first response on this connection.
    pub initial_stat_sn: u32,
    /// Commands the initiator may have queued: MaxCmdSN = ExpCmdSN + window − 1.
    pub cmd_window: u32,
    /// Login Request PDUs one login may take.
    pub max_login_pdus: u32,
    /// Bound on text continued across PDUs.
    pub max_text_len: usize,
    /// Data segment limit of our Login Responses (the initiator's default
    /// MaxRecvDataSegmentLength during login).
    pub response_segment_len: usize,
}

impl Default for LoginConfig {
    fn default() -> Self {
        LoginConfig {
            policy: TargetPolicy::default(),
            chap_algorithms: ChapAlgorithm::ALL.to_vec(),
            new_tsih: 1,
            initial_stat_sn: 1,
            cmd_window: 128,
            max_login_pdus: 32,
            max_text_len: DEFAULT_MAX_TEXT,
            response_segment_len: 8192,
        }
    }
}

/// One PDU to send: header and (unpadded) data segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutPdu {
    pub header: [u8; BHS_LEN],
    pub data: Vec<u8>,
}

impl OutPdu {
    /// The bytes on the wire (login PDUs carry no digests).
    pub fn to_wire(&self) -> Vec<u8> {
        Framing::default().encode(&self.header, &[], &self.data)
    }
}

/// How the new connection relates to existing sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionBinding {
    /// A new session.
    New,
    /// A new session that replaces the live session `old_tsih` of the same
    /// initiator port: the caller must close that one (session reinstatement).
    Reinstate { old_tsih: u16 },
    /// The connection joins (or reinstates a connection of) session `tsih`.
    AddConnection,
}

/// A successful login.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginOutcome {
    pub params: SessionParams,
    pub isid: Isid,
    pub tsih: u16,
    pub cid: u16,
    pub binding: SessionBinding,
    /// The target (normal sessions).
    pub target: Option<TargetInfo>,
    /// SCSI initiator port name: `<InitiatorName>,i,0x<ISID>`.
    pub initiator_port: String,
    /// Sequence numbers to continue from in the full feature phase.
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub next_stat_sn: u32,
}

impl LoginOutcome {
    /// The engine's I_T nexus for this session: keyed on the initiator port name
    /// (`<name>,i,0x<ISID>`), with the iSCSI-name TransportID (SPC-4 format 00b).
    pub fn nexus(
        &self,
        port: std::sync::Arc<engine::TargetPort>,
        luns: std::sync::Arc<engine::LunMap>,
    ) -> std::sync::Arc<engine::Nexus> {
        let name = self.params.initiator_name.as_deref().unwrap_or_default();
        engine::Nexus::new(
            &self.initiator_port,
            engine::nexus::iscsi_transport_id(name),
            port,
            luns,
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoginEvent {
    Complete(Box<LoginOutcome>),
    /// The login failed or was redirected; the response carries `status`, then
    /// the connection closes.
    Failed {
        status: LoginStatus,
        reason: String,
    },
}

/// What one input produced.
#[derive(Debug, Default)]
pub struct Step {
    pub responses: Vec<OutPdu>,
    pub event: Option<LoginEvent>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Active,
    Done,
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    None,
    Chap,
}

/// A failed login: status, reason for the log, and keys for the response.
struct Fail {
    status: LoginStatus,
    reason: String,
    keys: Pairs,
}

fn fail(status: LoginStatus, reason: impl Into<String>) -> Fail {
    Fail {
        status,
        reason: reason.into(),
        keys: Pairs::default(),
    }
}

impl From<NegotiationError> for Fail {
    fn from(e: NegotiationError) -> Self {
        fail(LoginStatus::INITIATOR_ERROR, e.to_string())
    }
}

/// The login phase of one connection.
pub struct Login {
    cfg: LoginConfig,
    phase: Phase,
    stage: Stage,
    first: Option<(Isid, u16, u16)>,
    neg: Negotiator,
    acc: TextAccumulator,
    /// Response text still to send, chunk by chunk, and the transit to grant
    /// with the last chunk.
    out_chunks: VecDeque<Vec<u8>>,
    out_transit: Option<Stage>,
    stat_sn: u32,
    pdus: u32,
    identified: bool,
    target: Option<TargetInfo>,
    auth: AuthPolicy,
    method: Option<Method>,
    chap: Option<ChapTarget>,
    /// PDU count when our proposals went out.
    offered_at: Option<u32>,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("phase", &self.phase)
            .field("stage", &self.stage)
            .field("pdus", &self.pdus)
            .finish()
    }
}

impl Login {
    pub fn new(cfg: LoginConfig) -> Self {
        Login {
            neg: Negotiator::new(cfg.policy.clone()),
            acc: TextAccumulator::new(cfg.max_text_len),
            stat_sn: cfg.initial_stat_sn,
            cfg,
            phase: Phase::Active,
            stage: Stage::Security,
            first: None,
            out_chunks: VecDeque::new(),
            out_transit: None,
            pdus: 0,
            identified: false,
            target: None,
            auth: AuthPolicy::None,
            method: None,
            chap: None,
            offered_at: None,
        }
    }

    /// Framing of the connection during login: no digests, 8192-byte segments.
    pub fn framing(&self) -> Framing {
        Framing::default()
    }

    /// Whether the login is over (completed or failed): stop feeding it.
    pub fn is_finished(&self) -> bool {
        self.phase != Phase::Active
    }

    /// Handles one PDU: its 48-byte header and its data segment (no padding).
    pub fn on_pdu(
        &mut self,
        dir: &dyn TargetDirectory,
        header: &[u8; BHS_LEN],
        data: &[u8],
    ) -> Step {
        if self.phase != Phase::Active {
            return Step::default();
        }
        let raw = Bhs(*header);
        let req = match Pdu::parse(header) {
            Ok(Pdu::LoginRequest(r)) => r,
            Ok(_) => {
                return self.fail_raw(
                    &raw,
                    LoginStatus::INVALID_DURING_LOGIN,
                    "not a Login Request",
                )
            }
            Err(e) if raw.opcode_byte() == Opcode::LoginRequest as u8 => {
                return self.fail_raw(&raw, LoginStatus::INITIATOR_ERROR, &e.to_string())
            }
            Err(e) => {
                return self.fail_raw(&raw, LoginStatus::INVALID_DURING_LOGIN, &e.to_string())
            }
        };
        match self.handle(dir, &req, data) {
            Ok(step) => step,
            Err(f) => self.fail(&req, f.status, f.reason, f.keys),
        }
    }

    fn handle(
        &mut self,
        dir: &dyn TargetDirectory,
        req: &LoginRequest,
        data: &[u8],
    ) -> Result<Step, Fail> {
        self.pdus = self.pdus.saturating_add(1);
        if self.pdus > self.cfg.max_login_pdus {
            return Err(fail(LoginStatus::INITIATOR_ERROR, "too many login PDUs"));
        }
        if usize::try_from(req.data_segment_len).ok() != Some(data.len()) {
            return Err(fail(
                LoginStatus::INITIATOR_ERROR,
                "data segment length does not match the header",
            ));
        }
        match self.first {
            None => {
                if req.version_min > VERSION || req.version_max < req.version_min {
                    return Err(fail(
                        LoginStatus::UNSUPPORTED_VERSION,
                        format!("versions {}..{}", req.version_min, req.version_max),
                    ));
                }
                if req.csg == Stage::FullFeature {
                    return Err(fail(LoginStatus::INITIATOR_ERROR, "CSG is full feature"));
                }
                self.first = Some((req.isid, req.tsih, req.cid));
                self.stage = req.csg;
            }
            Some(f) => {
                if f != (req.isid, req.tsih, req.cid) {
                    return Err(fail(
                        LoginStatus::INITIATOR_ERROR,
                        "ISID, TSIH or CID changed during login",
                    ));
                }
                if req.csg != self.stage {
                    return Err(fail(
                        LoginStatus::INITIATOR_ERROR,
                        format!("CSG {:?} in stage {:?}", req.csg, self.stage),
                    ));
                }
            }
        }

        // The rest of a long response of ours: the initiator asks with empty
        // requests.
        if !self.out_chunks.is_empty() {
            if !data.is_empty() || req.continue_ {
                return Err(fail(
                    LoginStatus::INITIATOR_ERROR,
                    "text while a continued response is pending",
                ));
            }
            return Ok(self.send_chunk(dir, req));
        }

        let pairs = match self.acc.push(data, req.continue_) {
            Err(e) => return Err(fail(LoginStatus::INITIATOR_ERROR, e.to_string())),
            Ok(None) => {
                // Acknowledge a continued request with an empty response.
                let r = self.response(req, None, false, Vec::new(), req.tsih);
                return Ok(Step {
                    responses: vec![r],
                    event: None,
                });
            }
            Ok(Some(p)) => p,
        };

        let mut out = self.neg.respond(self.stage, &pairs)?;
        if !self.identified {
            self.identify(dir, req, &mut out)?;
        }

        let transit = match self.stage {
            Stage::Security => self.security(dir, req, &pairs, &mut out)?,
            _ => self.operational(req, &mut out),
        };
        let text = last_wins(out).encode();
        let max_chunk = usize::try_from(crate::pdu::MAX_DATA_SEGMENT_LEN).unwrap_or(usize::MAX);
        let chunk = self.cfg.response_segment_len.clamp(1, max_chunk);
        self.out_chunks = split_segments(&text, chunk).into();
        self.out_transit = transit;
        Ok(self.send_chunk(dir, req))
    }

    /// Checks who is logging in to what, on the first complete text.
    fn identify(
        &mut self,
        dir: &dyn TargetDirectory,
        req: &LoginRequest,
        out: &mut Pairs,
    ) -> Result<(), Fail> {
        self.identified = true;
        let Some(initiator) = self.neg.initiator_name().map(str::to_string) else {
            return Err(fail(LoginStatus::MISSING_PARAMETER, "no InitiatorName"));
        };
        let target_name = match self.neg.session_type() {
            SessionType::Discovery => {
                self.auth = dir.discovery().ok_or_else(|| {
                    fail(
                        LoginStatus::SESSION_TYPE_NOT_SUPPORTED,
                        "discovery sessions are off",
                    )
                })?;
                None
            }
            SessionType::Normal => {
                let Some(name) = self.neg.target_name().map(str::to_string) else {
                    return Err(fail(LoginStatus::MISSING_PARAMETER, "no TargetName"));
                };
                let info = match dir.lookup(&name) {
                    TargetLookup::Found(t) => t,
                    TargetLookup::NotFound => {
                        return Err(fail(LoginStatus::NOT_FOUND, format!("no target {name}")))
                    }
                    TargetLookup::Unavailable => {
                        return Err(fail(
                            LoginStatus::SERVICE_UNAVAILABLE,
                            format!("{name} unavailable"),
                        ))
                    }
                    TargetLookup::Removed => {
                        return Err(fail(LoginStatus::TARGET_REMOVED, format!("{name} removed")))
                    }
                    TargetLookup::Moved { address, permanent } => {
                        let status = if permanent {
                            LoginStatus::TARGET_MOVED_PERMANENTLY
                        } else {
                            LoginStatus::TARGET_MOVED_TEMPORARILY
                        };
                        let mut f = fail(status, format!("{name} moved"));
                        f.keys.push("TargetAddress", address);
                        return Err(f);
                    }
                };
                if !dir.initiator_allowed(&info.name, &initiator) {
                    return Err(fail(
                        LoginStatus::AUTHORIZATION_FAILURE,
                        format!("{initiator} may not log in to {name}"),
                    ));
                }
                self.auth = info.auth;
                out.push("TargetPortalGroupTag", info.portal_group_tag.to_string());
                if let Some(a) = &info.alias {
                    out.push("TargetAlias", a.clone());
                }
                self.target = Some(info);
                Some(name)
            }
        };
        let target = target_name.as_deref();
        if req.tsih != 0 {
            if !dir.session_exists(target, &initiator, req.isid, req.tsih) {
                return Err(fail(
                    LoginStatus::SESSION_DOES_NOT_EXIST,
                    format!("no session with TSIH {}", req.tsih),
                ));
            }
            let cids = dir.session_connections(target, &initiator, req.isid, req.tsih);
            let max = usize::from(self.cfg.policy.max_connections.max(1));
            if !cids.contains(&req.cid) && cids.len() >= max {
                return Err(fail(
                    LoginStatus::TOO_MANY_CONNECTIONS,
                    format!("session {} has {} connection(s)", req.tsih, cids.len()),
                ));
            }
        } else {
            if self.cfg.new_tsih == 0 {
                return Err(fail(LoginStatus::OUT_OF_RESOURCES, "no TSIH available"));
            }
            // A reinstatement replaces a session: it needs no new slot.
            // Discovery sessions take none (connections bound them).
            let normal = self.neg.session_type() == SessionType::Normal;
            let reinstates = dir.existing_session(target, &initiator, req.isid).is_some();
            if normal && !reinstates && !dir.session_slot_free() {
                return Err(fail(LoginStatus::OUT_OF_RESOURCES, "too many sessions"));
            }
        }
        if self.stage == Stage::Operational && self.auth == AuthPolicy::Chap {
            return Err(fail(
                LoginStatus::AUTHENTICATION_FAILURE,
                "authentication required",
            ));
        }
        Ok(())
    }

    fn target_name(&self) -> Option<&str> {
        self.target.as_ref().map(|t| t.name.as_str())
    }

    /// Security stage: AuthMethod and CHAP. Returns the transit granted.
    fn security(
        &mut self,
        dir: &dyn TargetDirectory,
        req: &LoginRequest,
        pairs: &Pairs,
        out: &mut Pairs,
    ) -> Result<Option<Stage>, Fail> {
        let initiator = self.neg.initiator_name().unwrap_or_default().to_string();
        let target = self.target_name().map(str::to_string);
        if let Some(offer) = pairs.get("AuthMethod") {
            if self.method.is_some() {
                return Err(fail(LoginStatus::INITIATOR_ERROR, "AuthMethod twice"));
            }
            let has_creds = dir
                .chap_credentials(target.as_deref(), &initiator)
                .is_some();
            let ours: &[(&str, Method)] = match (self.auth, has_creds) {
                (AuthPolicy::Chap, _) => &[("CHAP", Method::Chap)],
                (AuthPolicy::None, true) => &[("CHAP", Method::Chap), ("None", Method::None)],
                (AuthPolicy::None, false) => &[("None", Method::None)],
            };
            let chosen = offer
                .split(',')
                .find_map(|m| ours.iter().find(|(n, _)| *n == m).copied());
            let Some((name, method)) = chosen else {
                let mut f = fail(
                    LoginStatus::AUTHENTICATION_FAILURE,
                    format!("no acceptable AuthMethod in {offer:?}"),
                );
                f.keys.push("AuthMethod", crate::negotiate::REJECT);
                return Err(f);
            };
            out.push("AuthMethod", name);
            self.method = Some(method);
            if method == Method::Chap {
                self.chap = Some(ChapTarget::new(&self.cfg.chap_algorithms));
            }
        }
        for (k, _) in pairs.iter() {
            if k != "AuthMethod"
                && !k.starts_with("CHAP_")
                && crate::negotiate::classify(k) == crate::negotiate::KeyClass::Security
            {
                out.push(k, crate::negotiate::NOT_UNDERSTOOD);
            }
        }
        let has_chap_keys = pairs.iter().any(|(k, _)| k.starts_with("CHAP_"));
        if has_chap_keys {
            let Some(chap) = self.chap.as_mut() else {
                return Err(fail(
                    LoginStatus::INITIATOR_ERROR,
                    "CHAP keys without AuthMethod=CHAP",
                ));
            };
            let answers = chap
                .step(pairs, |_| {
                    dir.chap_credentials(target.as_deref(), &initiator)
                })
                .map_err(|e| match e {
                    ChapError::Random(_) => fail(LoginStatus::TARGET_ERROR, e.to_string()),
                    _ => fail(LoginStatus::AUTHENTICATION_FAILURE, e.to_string()),
                })?;
            out.0.extend(answers.0);
        }
        let authenticated = match self.method {
            Some(Method::None) => true,
            Some(Method::Chap) => self.chap.as_ref().is_some_and(ChapTarget::is_done),
            None => self.auth == AuthPolicy::None,
        };
        let Some(nsg) = req.transit else {
            return Ok(None);
        };
        if !authenticated {
            if self.method.is_none() {
                return Err(fail(
                    LoginStatus::AUTHENTICATION_FAILURE,
                    "transit without authentication",
                ));
            }
            // CHAP still under way: stay in the security stage.
            return Ok(None);
        }
        // Straight to full feature: no declaration of our MaxRecvDataSegmentLength
        // here (open-iscsi refuses operational keys in a security-stage
        // response), so the initiator keeps the 8192-byte default, as do we.
        Ok(Some(nsg))
    }

    /// Operational stage: our proposals and declaration; transit unless answers
    /// to proposals made in this very response are still due.
    fn operational(&mut self, req: &LoginRequest, out: &mut Pairs) -> Option<Stage> {
        if self.offered_at.is_none() {
            self.offered_at = Some(self.pdus);
            out.0.extend(self.neg.offers().0);
        }
        let nsg = req.transit?;
        if self.neg.awaiting_answers() {
            if self.offered_at == Some(self.pdus) {
                return None;
            }
            // The initiator moved on without answering: keep the defaults.
            self.neg.abandon_offers();
        }
        Some(nsg)
    }

    fn send_chunk(&mut self, dir: &dyn TargetDirectory, req: &LoginRequest) -> Step {
        let chunk = self.out_chunks.pop_front().unwrap_or_default();
        let more = !self.out_chunks.is_empty();
        let transit = if more { None } else { self.out_transit.take() };
        let mut event = None;
        let mut tsih = req.tsih;
        if transit == Some(Stage::FullFeature) {
            let outcome = self.complete(dir, req);
            tsih = outcome.tsih;
            event = Some(LoginEvent::Complete(Box::new(outcome)));
            self.phase = Phase::Done;
        } else if let Some(s) = transit {
            self.stage = s;
        }
        let r = self.response(req, transit, more, chunk, tsih);
        Step {
            responses: vec![r],
            event,
        }
    }

    fn complete(&mut self, dir: &dyn TargetDirectory, req: &LoginRequest) -> LoginOutcome {
        let params = self.neg.params();
        let initiator = params.initiator_name.clone().unwrap_or_default();
        let (tsih, binding) = if req.tsih != 0 {
            (req.tsih, SessionBinding::AddConnection)
        } else {
            let b = match dir.existing_session(self.target_name(), &initiator, req.isid) {
                Some(old_tsih) => SessionBinding::Reinstate { old_tsih },
                None => SessionBinding::New,
            };
            (self.cfg.new_tsih, b)
        };
        LoginOutcome {
            initiator_port: format!("{initiator},i,0x{}", req.isid),
            params,
            isid: req.isid,
            tsih,
            cid: req.cid,
            binding,
            target: self.target.clone(),
            exp_cmd_sn: req.cmd_sn,
            max_cmd_sn: self.max_cmd_sn(req),
            // The final response takes the current StatSN.
            next_stat_sn: self.stat_sn.wrapping_add(1),
        }
    }

    fn max_cmd_sn(&self, req: &LoginRequest) -> u32 {
        req.cmd_sn
            .wrapping_add(self.cfg.cmd_window.max(1))
            .wrapping_sub(1)
    }

    fn response(
        &mut self,
        req: &LoginRequest,
        transit: Option<Stage>,
        more: bool,
        data: Vec<u8>,
        tsih: u16,
    ) -> OutPdu {
        self.respond_with(
            req.csg,
            req.isid,
            req.itt,
            req.cmd_sn,
            self.max_cmd_sn(req),
            transit,
            more,
            data,
            tsih,
            LoginStatus::SUCCESS,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn respond_with(
        &mut self,
        csg: Stage,
        isid: Isid,
        itt: u32,
        exp_cmd_sn: u32,
        max_cmd_sn: u32,
        transit: Option<Stage>,
        more: bool,
        data: Vec<u8>,
        tsih: u16,
        status: LoginStatus,
    ) -> OutPdu {
        let pdu = Pdu::LoginResponse(LoginResponse {
            transit,
            continue_: more,
            csg,
            version_max: VERSION,
            version_active: VERSION,
            // Chunks are at most `response_segment_len`, itself far below 2^24.
            data_segment_len: u32::try_from(data.len()).unwrap_or(u32::MAX),
            isid,
            tsih,
            itt,
            stat_sn: self.stat_sn,
            exp_cmd_sn,
            max_cmd_sn,
            status,
        });
        self.stat_sn = self.stat_sn.wrapping_add(1);
        let header = match pdu.to_bytes() {
            Ok(h) => h,
            // A data segment too long for the 24-bit field cannot happen with
            // bounded chunks; answer with an empty segment rather than panic.
            Err(_) => {
                return OutPdu {
                    header: [0; BHS_LEN],
                    data: Vec::new(),
                }
            }
        };
        OutPdu { header, data }
    }

    fn fail(
        &mut self,
        req: &LoginRequest,
        status: LoginStatus,
        reason: String,
        data: Pairs,
    ) -> Step {
        self.phase = Phase::Failed;
        let r = self.respond_with(
            req.csg,
            req.isid,
            req.itt,
            req.cmd_sn,
            req.cmd_sn,
            None,
            false,
            data.encode(),
            req.tsih,
            status,
        );
        Step {
            responses: vec![r],
            event: Some(LoginEvent::Failed { status, reason }),
        }
    }

    fn fail_raw(&mut self, raw: &Bhs, status: LoginStatus, reason: &str) -> Step {
        let mut isid = [0u8; 6];
        isid.copy_from_slice(&raw.0[8..14]);
        let cmd_sn = raw.u32(crate::pdu::off::CMD_SN);
        let req = LoginRequest {
            transit: None,
            continue_: false,
            csg: self.stage,
            version_max: 0,
            version_min: 0,
            data_segment_len: 0,
            isid: Isid(isid),
            tsih: raw.u16(crate::pdu::off::TSIH),
            itt: raw.itt(),
            cid: 0,
            cmd_sn,
            exp_stat_sn: 0,
        };
        self.fail(&req, status, reason.to_string(), Pairs::default())
    }
}

/// One value per key in a response. The target's own declarations
/// (TargetPortalGroupTag, TargetAlias, MaxRecvDataSegmentLength) come after the
/// answers: where the initiator sent one of those keys itself, the declaration
/// replaces the answer to it rather than follow it as a second, contradicting
/// value.
fn last_wins(p: Pairs) -> Pairs {
    let mut out: Vec<(String, String)> = Vec::with_capacity(p.0.len());
    for (k, v) in p.0 {
        match out.iter_mut().find(|(ok, _)| *ok == k) {
            Some(slot) => slot.1 = v,
            None => out.push((k, v)),
        }
    }
    Pairs(out)
}

#[cfg(test)]
mod tests;
