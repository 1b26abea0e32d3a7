//! Login parameter negotiation (RFC 7143 §6.2 and §13) as a pure state machine,
//! target side. The initiator's key=value pairs go in; the answers come out;
//! [`Negotiator::offers`] adds the target's own proposals (large-I/O values the
//! initiator did not mention) and its declarations; [`Negotiator::params`] is the
//! outcome.
//!
//! Result functions: list keys take the first of the initiator's values that we
//! support; numeric keys take the minimum (DefaultTime2Wait the maximum) of both
//! sides; boolean keys AND (ImmediateData, RDMAExtensions) or OR (InitialR2T,
//! DataPDUInOrder, DataSequenceInOrder). Unknown and X- keys are answered
//! NotUnderstood, malformed values Reject, keys that do not apply to a discovery
//! session Irrelevant; a key proposed again with another value fails the login
//! (the same value again is a retransmission and is answered again).

use std::collections::BTreeMap;

use thiserror::Error;

use crate::pdu::Stage;
use crate::text::Pairs;

pub const NOT_UNDERSTOOD: &str = "NotUnderstood";
pub const IRRELEVANT: &str = "Irrelevant";
pub const REJECT: &str = "Reject";

/// Smallest and largest MaxRecvDataSegmentLength / burst lengths (RFC 7143 §13.12).
pub const MIN_DATA_LEN: u32 = 512;
pub const MAX_DATA_LEN: u32 = 0x00ff_ffff;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SessionType {
    #[default]
    Normal,
    Discovery,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Digest {
    #[default]
    None,
    Crc32c,
}

impl Digest {
    fn name(self) -> &'static str {
        match self {
            Digest::None => "None",
            Digest::Crc32c => "CRC32C",
        }
    }

    fn parse(s: &str) -> Option<Digest> {
        match s {
            "None" => Some(Digest::None),
            "CRC32C" => Some(Digest::Crc32c),
            _ => None,
        }
    }
}

/// What this target supports and prefers. The defaults serve large I/O:
/// unsolicited data (InitialR2T=No, ImmediateData=Yes), 256 KiB data segments and
/// first bursts, 16 MiB bursts, several R2Ts in flight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetPolicy {
    /// Digests we accept, in the order we would propose them.
    pub header_digests: Vec<Digest>,
    pub data_digests: Vec<Digest>,
    pub max_connections: u16,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    /// The largest data segment we receive (declared to the initiator).
    pub max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub default_time2wait: u16,
    pub default_time2retain: u16,
    pub max_outstanding_r2t: u16,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub error_recovery_level: u8,
    /// iSCSIProtocolLevel (RFC 7144): 1 is RFC 7143.
    pub protocol_level: u8,
}

impl Default for TargetPolicy {
    fn default() -> Self {
        TargetPolicy {
            header_digests: vec![Digest::None, Digest::Crc32c],
            data_digests: vec![Digest::None, Digest::Crc32c],
            max_connections: 1,
            initial_r2t: false,
            immediate_data: true,
            max_recv_data_segment_length: 256 * 1024,
            max_burst_length: 16 * 1024 * 1024 - 1024,
            first_burst_length: 256 * 1024,
            default_time2wait: 2,
            default_time2retain: 20,
            max_outstanding_r2t: 16,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
            protocol_level: 1,
        }
    }
}

/// The outcome of a login's negotiation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionParams {
    pub session_type: SessionType,
    pub initiator_name: Option<String>,
    pub initiator_alias: Option<String>,
    pub target_name: Option<String>,
    pub header_digest: Digest,
    pub data_digest: Digest,
    pub max_connections: u16,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    /// The largest data segment we may send: the initiator's declaration.
    pub max_xmit_data_segment_length: u32,
    /// The largest data segment we accept: our declaration.
    pub max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub default_time2wait: u16,
    pub default_time2retain: u16,
    pub max_outstanding_r2t: u16,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub error_recovery_level: u8,
    pub protocol_level: u8,
}

impl Default for SessionParams {
    /// RFC 7143's defaults, used for every key left unnegotiated.
    fn default() -> Self {
        SessionParams {
            session_type: SessionType::Normal,
            initiator_name: None,
            initiator_alias: None,
            target_name: None,
            header_digest: Digest::None,
            data_digest: Digest::None,
            max_connections: 1,
            initial_r2t: true,
            immediate_data: true,
            max_xmit_data_segment_length: 8192,
            max_recv_data_segment_length: 8192,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            default_time2wait: 2,
            default_time2retain: 20,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
            protocol_level: 1,
        }
    }
}

impl SessionParams {
    /// The framing of the full feature phase: the negotiated digests and our
    /// declared receive limit.
    pub fn framing(&self) -> crate::pdu::Framing {
        crate::pdu::Framing {
            header_digest: self.header_digest == Digest::Crc32c,
            data_digest: self.data_digest == Digest::Crc32c,
            max_recv_data_segment_len: self.max_recv_data_segment_length,
        }
    }
}

/// What fails a negotiation (and so the login, as an initiator error).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum NegotiationError {
    #[error("key {0} negotiated twice")]
    DuplicateKey(String),
    #[error("security key {0} outside the security stage")]
    SecurityKeyOutsideSecurityStage(String),
    #[error("invalid SessionType {0:?}")]
    InvalidSessionType(String),
    #[error("invalid {key} {value:?}")]
    InvalidName { key: &'static str, value: String },
    #[error("{0} sent after the first login request")]
    LateIdentity(String),
}

/// How the login machine must treat a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyClass {
    /// AuthMethod and the CHAP/SRP/Kerberos keys: the security stage's.
    Security,
    /// Everything the [`Negotiator`] answers.
    Operational,
}

pub fn classify(key: &str) -> KeyClass {
    if key == "AuthMethod"
        || key.starts_with("CHAP_")
        || key.starts_with("SRP_")
        || key.starts_with("KRB_")
        || key.starts_with("SPKM_")
        || key == "TargetAuth"
    {
        KeyClass::Security
    } else {
        KeyClass::Operational
    }
}

/// Numeric values: decimal or 0x hex, at most 64 bits.
pub fn parse_number(v: &str) -> Option<u64> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        if h.is_empty() || h.len() > 16 {
            return None;
        }
        return u64::from_str_radix(h, 16).ok();
    }
    if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "Yes"
    } else {
        "No"
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Digest,
    Min(u32, u32),
    Max(u32, u32),
    And,
    Or,
}

/// The negotiated operational keys: name, result function, and whether the key
/// is irrelevant in a discovery session (RFC 7143 §13: the eight session keys
/// that only matter for SCSI data transfer — the same set open-iscsi answers
/// Irrelevant to).
const KEYS: &[(&str, Kind, bool)] = &[
    ("HeaderDigest", Kind::Digest, false),
    ("DataDigest", Kind::Digest, false),
    ("MaxConnections", Kind::Min(1, 65535), true),
    ("InitialR2T", Kind::Or, true),
    ("ImmediateData", Kind::And, true),
    (
        "MaxBurstLength",
        Kind::Min(MIN_DATA_LEN, MAX_DATA_LEN),
        true,
    ),
    (
        "FirstBurstLength",
        Kind::Min(MIN_DATA_LEN, MAX_DATA_LEN),
        true,
    ),
    ("DefaultTime2Wait", Kind::Max(0, 3600), false),
    ("DefaultTime2Retain", Kind::Min(0, 3600), false),
    ("MaxOutstandingR2T", Kind::Min(1, 65535), true),
    ("DataPDUInOrder", Kind::Or, true),
    ("DataSequenceInOrder", Kind::Or, true),
    // Relevant in discovery too: open-iscsi insists on an answer of "0".
    ("ErrorRecoveryLevel", Kind::Min(0, 2), false),
    ("iSCSIProtocolLevel", Kind::Min(0, 31), true),
];

/// The target side of one login's negotiation.
#[derive(Debug)]
pub struct Negotiator {
    policy: TargetPolicy,
    params: SessionParams,
    /// Keys the initiator proposed or declared, with the value it sent.
    seen: BTreeMap<String, String>,
    /// Our proposals still awaiting the initiator's answer.
    offered: BTreeMap<&'static str, String>,
    declared: bool,
    offers_made: bool,
    identity_open: bool,
}

impl Negotiator {
    pub fn new(policy: TargetPolicy) -> Self {
        Negotiator {
            policy,
            params: SessionParams::default(),
            seen: BTreeMap::new(),
            offered: BTreeMap::new(),
            declared: false,
            offers_made: false,
            identity_open: true,
        }
    }

    pub fn policy(&self) -> &TargetPolicy {
        &self.policy
    }

    pub fn session_type(&self) -> SessionType {
        self.params.session_type
    }

    pub fn initiator_name(&self) -> Option<&str> {
        self.params.initiator_name.as_deref()
    }

    pub fn target_name(&self) -> Option<&str> {
        self.params.target_name.as_deref()
    }

    /// Answers the initiator's keys of one (complete) text. Security keys are
    /// skipped in the security stage (the login machine answers them) and fail the
    /// negotiation elsewhere. SessionType and the names take effect before the
    /// other keys of the same text, whatever their order.
    ///
    /// A key sent again with a different value fails the negotiation. Sent again
    /// with the same value it is a retransmission — libiscsi repeats its names
    /// after CHAP and all its keys after a response without Transit — and gets
    /// the same answer again.
    pub fn respond(&mut self, stage: Stage, pairs: &Pairs) -> Result<Pairs, NegotiationError> {
        let identity = ["SessionType", "InitiatorName", "TargetName"];
        for (k, v) in pairs.iter().filter(|(k, _)| identity.contains(k)) {
            match self.seen.get(k) {
                Some(prev) if prev == v => continue,
                Some(_) => return Err(NegotiationError::DuplicateKey(k.to_string())),
                None if !self.identity_open => {
                    return Err(NegotiationError::LateIdentity(k.to_string()))
                }
                None => {}
            }
            match k {
                "SessionType" => {
                    self.params.session_type = match v {
                        "Normal" => SessionType::Normal,
                        "Discovery" => SessionType::Discovery,
                        _ => return Err(NegotiationError::InvalidSessionType(v.to_string())),
                    }
                }
                "InitiatorName" => {
                    self.params.initiator_name = Some(valid_name("InitiatorName", v)?)
                }
                _ => self.params.target_name = Some(valid_name("TargetName", v)?),
            }
            self.seen.insert(k.to_string(), v.to_string());
        }
        self.identity_open = false;
        let mut out = Pairs::default();
        for (k, v) in pairs.iter().filter(|(k, _)| !identity.contains(k)) {
            if classify(k) == KeyClass::Security {
                if stage != Stage::Security {
                    return Err(NegotiationError::SecurityKeyOutsideSecurityStage(
                        k.to_string(),
                    ));
                }
                continue;
            }
            if let Some(ours) = self.offered.remove(k) {
                // Answered once; a later proposal of the same key is a repeat.
                self.seen.insert(k.to_string(), v.to_string());
                self.answer(k, &ours, v);
                continue;
            }
            if matches!(v, NOT_UNDERSTOOD | IRRELEVANT | REJECT) {
                // Not a proposal; nothing to answer.
                continue;
            }
            match self.seen.get(k) {
                Some(prev) if prev == v => {}
                Some(_) => return Err(NegotiationError::DuplicateKey(k.to_string())),
                None => {
                    self.seen.insert(k.to_string(), v.to_string());
                }
            }
            // Results depend only on the value and our policy: a repeat gets
            // the same answer.
            if let Some(a) = self.propose(k, v) {
                out.push(k, a);
            }
        }
        Ok(out)
    }

    /// One proposal or declaration from the initiator; the answer, if any.
    fn propose(&mut self, k: &str, v: &str) -> Option<String> {
        let discovery = self.params.session_type == SessionType::Discovery;
        if let Some(&(name, kind, irrelevant_in_discovery)) = KEYS.iter().find(|e| e.0 == k) {
            if discovery && irrelevant_in_discovery {
                return Some(IRRELEVANT.into());
            }
            return Some(self.negotiate(name, kind, v));
        }
        match k {
            "MaxRecvDataSegmentLength" => {
                // Declarative: the initiator's receive limit, ours to respect.
                match parse_number(v).and_then(|n| u32::try_from(n).ok()) {
                    Some(n) if (MIN_DATA_LEN..=MAX_DATA_LEN).contains(&n) => {
                        self.params.max_xmit_data_segment_length = n;
                        None
                    }
                    _ => Some(REJECT.into()),
                }
            }
            "InitiatorAlias" => {
                self.params.initiator_alias = Some(v.to_string());
                None
            }
            // Declarations only a target makes.
            "TargetAlias" | "TargetAddress" | "TargetPortalGroupTag" => Some(REJECT.into()),
            // A Text request of a discovery session's full feature phase, not login.
            "SendTargets" => Some(IRRELEVANT.into()),
            // RFC 7143 §13.23: irrelevant when SessionType=Discovery.
            "TaskReporting" if discovery => Some(IRRELEVANT.into()),
            "TaskReporting" => Some(if v.split(',').any(|x| x == "RFC3720") {
                "RFC3720".into()
            } else {
                REJECT.into()
            }),
            // Obsoleted by RFC 7143 §13.25: "No" for the markers, Reject for
            // their intervals, never NotUnderstood.
            "IFMarker" | "OFMarker" => Some("No".into()),
            "IFMarkInt" | "OFMarkInt" => Some(REJECT.into()),
            // iSER (RFC 7145) on a TCP portal: no RDMA, so its keys do not apply.
            "RDMAExtensions" => Some(match parse_bool(v) {
                Some(_) => "No".into(),
                None => REJECT.into(),
            }),
            "TargetRecvDataSegmentLength"
            | "InitiatorRecvDataSegmentLength"
            | "MaxOutstandingUnexpectedPDUs" => Some(IRRELEVANT.into()),
            // Informational declaration.
            "X#NodeArchitecture" => None,
            _ => Some(NOT_UNDERSTOOD.into()),
        }
    }

    fn negotiate(&mut self, name: &str, kind: Kind, v: &str) -> String {
        match kind {
            Kind::Digest => {
                let ours = if name == "HeaderDigest" {
                    &self.policy.header_digests
                } else {
                    &self.policy.data_digests
                };
                match v
                    .split(',')
                    .filter_map(Digest::parse)
                    .find(|d| ours.contains(d))
                {
                    Some(d) => {
                        self.set_digest(name, d);
                        d.name().into()
                    }
                    None => REJECT.into(),
                }
            }
            Kind::And | Kind::Or => match parse_bool(v) {
                Some(theirs) => {
                    let ours = self.policy_bool(name);
                    let r = if kind == Kind::And {
                        theirs && ours
                    } else {
                        theirs || ours
                    };
                    self.set_bool(name, r);
                    yes_no(r).into()
                }
                None => REJECT.into(),
            },
            Kind::Min(lo, hi) | Kind::Max(lo, hi) => {
                match parse_number(v).and_then(|n| u32::try_from(n).ok()) {
                    Some(theirs) if (lo..=hi).contains(&theirs) => {
                        let ours = self.policy_number(name);
                        let r = if matches!(kind, Kind::Min(..)) {
                            theirs.min(ours)
                        } else {
                            theirs.max(ours)
                        };
                        self.set_number(name, r);
                        r.to_string()
                    }
                    _ => REJECT.into(),
                }
            }
        }
    }

    /// The initiator's answer to one of our proposals.
    fn answer(&mut self, k: &str, ours: &str, theirs: &str) {
        let Some(&(name, kind, _)) = KEYS.iter().find(|e| e.0 == k) else {
            return;
        };
        if matches!(theirs, NOT_UNDERSTOOD | IRRELEVANT | REJECT) {
            return;
        }
        match kind {
            Kind::Digest => {
                if let Some(d) =
                    Digest::parse(theirs).filter(|d| ours.split(',').any(|o| o == d.name()))
                {
                    self.set_digest(name, d);
                }
            }
            Kind::And | Kind::Or => {
                if let (Some(t), Some(o)) = (parse_bool(theirs), parse_bool(ours)) {
                    let r = if kind == Kind::And { t && o } else { t || o };
                    self.set_bool(name, r);
                }
            }
            Kind::Min(lo, hi) | Kind::Max(lo, hi) => {
                let t = parse_number(theirs).and_then(|n| u32::try_from(n).ok());
                let o = parse_number(ours).and_then(|n| u32::try_from(n).ok());
                if let (Some(t), Some(o)) = (t, o) {
                    if (lo..=hi).contains(&t) {
                        let r = if matches!(kind, Kind::Min(..)) {
                            t.min(o)
                        } else {
                            t.max(o)
                        };
                        self.set_number(name, r);
                    }
                }
            }
        }
    }

    /// The target's own proposals for keys the initiator has not raised, and its
    /// MaxRecvDataSegmentLength declaration: each at most once, operational stage
    /// only. Proposals wait for an answer ([`Negotiator::awaiting_answers`]).
    pub fn offers(&mut self) -> Pairs {
        let mut out = self.declaration();
        if self.offers_made || self.params.session_type == SessionType::Discovery {
            return out;
        }
        self.offers_made = true;
        let defaults = SessionParams::default();
        let mut want: Vec<(&'static str, String)> = Vec::new();
        for &(name, kind, _) in KEYS {
            if self.seen.contains_key(name) {
                continue;
            }
            match kind {
                Kind::Digest => {
                    let list = if name == "HeaderDigest" {
                        &self.policy.header_digests
                    } else {
                        &self.policy.data_digests
                    };
                    if list.first().is_some_and(|d| *d != Digest::None) {
                        let v: Vec<&str> = list.iter().map(|d| d.name()).collect();
                        want.push((name, v.join(",")));
                    }
                }
                Kind::And | Kind::Or => {
                    let ours = self.policy_bool(name);
                    if ours != bool_of(&defaults, name) {
                        want.push((name, yes_no(ours).into()));
                    }
                }
                Kind::Min(..) | Kind::Max(..) => {
                    let ours = self.policy_number(name);
                    if ours != number_of(&defaults, name) {
                        want.push((name, ours.to_string()));
                    }
                }
            }
        }
        for (k, v) in want {
            out.push(k, v.clone());
            self.offered.insert(k, v);
        }
        out
    }

    /// Our MaxRecvDataSegmentLength declaration, once.
    pub fn declaration(&mut self) -> Pairs {
        let mut out = Pairs::default();
        if !self.declared {
            self.declared = true;
            self.params.max_recv_data_segment_length = self.policy.max_recv_data_segment_length;
            out.push(
                "MaxRecvDataSegmentLength",
                self.policy.max_recv_data_segment_length.to_string(),
            );
        }
        out
    }

    /// Whether proposals of ours still wait for the initiator's answer.
    pub fn awaiting_answers(&self) -> bool {
        !self.offered.is_empty()
    }

    /// Gives up on unanswered proposals: those keys keep their defaults.
    pub fn abandon_offers(&mut self) {
        self.offered.clear();
    }

    /// The negotiated parameters, with FirstBurstLength held to MaxBurstLength.
    pub fn params(&self) -> SessionParams {
        let mut p = self.params.clone();
        p.first_burst_length = p.first_burst_length.min(p.max_burst_length);
        p
    }

    fn set_digest(&mut self, name: &str, d: Digest) {
        if name == "HeaderDigest" {
            self.params.header_digest = d;
        } else {
            self.params.data_digest = d;
        }
    }

    fn policy_bool(&self, name: &str) -> bool {
        let p = &self.policy;
        match name {
            "InitialR2T" => p.initial_r2t,
            "ImmediateData" => p.immediate_data,
            "DataPDUInOrder" => p.data_pdu_in_order,
            _ => p.data_sequence_in_order,
        }
    }

    fn set_bool(&mut self, name: &str, v: bool) {
        let p = &mut self.params;
        match name {
            "InitialR2T" => p.initial_r2t = v,
            "ImmediateData" => p.immediate_data = v,
            "DataPDUInOrder" => p.data_pdu_in_order = v,
            _ => p.data_sequence_in_order = v,
        }
    }

    fn policy_number(&self, name: &str) -> u32 {
        let p = &self.policy;
        match name {
            "MaxConnections" => p.max_connections.into(),
            "MaxBurstLength" => p.max_burst_length,
            "FirstBurstLength" => p.first_burst_length,
            "DefaultTime2Wait" => p.default_time2wait.into(),
            "DefaultTime2Retain" => p.default_time2retain.into(),
            "MaxOutstandingR2T" => p.max_outstanding_r2t.into(),
            "ErrorRecoveryLevel" => p.error_recovery_level.into(),
            _ => p.protocol_level.into(),
        }
    }

    /// Stores a result already checked against the key's range.
    fn set_number(&mut self, name: &str, v: u32) {
        let p = &mut self.params;
        let v16 = u16::try_from(v).unwrap_or(u16::MAX);
        let v8 = u8::try_from(v).unwrap_or(u8::MAX);
        match name {
            "MaxConnections" => p.max_connections = v16,
            "MaxBurstLength" => p.max_burst_length = v,
            "FirstBurstLength" => p.first_burst_length = v,
            "DefaultTime2Wait" => p.default_time2wait = v16,
            "DefaultTime2Retain" => p.default_time2retain = v16,
            "MaxOutstandingR2T" => p.max_outstanding_r2t = v16,
            "ErrorRecoveryLevel" => p.error_recovery_level = v8,
            _ => p.protocol_level = v8,
        }
    }
}

fn bool_of(p: &SessionParams, name: &str) -> bool {
    match name {
        "InitialR2T" => p.initial_r2t,
        "ImmediateData" => p.immediate_data,
        "DataPDUInOrder" => p.data_pdu_in_order,
        _ => p.data_sequence_in_order,
    }
}

fn number_of(p: &SessionParams, name: &str) -> u32 {
    match name {
        "MaxConnections" => p.max_connections.into(),
        "MaxBurstLength" => p.max_burst_length,
        "FirstBurstLength" => p.first_burst_length,
        "DefaultTime2Wait" => p.default_time2wait.into(),
        "DefaultTime2Retain" => p.default_time2retain.into(),
        "MaxOutstandingR2T" => p.max_outstanding_r2t.into(),
        "ErrorRecoveryLevel" => p.error_recovery_level.into(),
        _ => p.protocol_level.into(),
    }
}

/// iSCSI names (RFC 7143 §4.2.7): iqn., eui. or naa. forms, at most 223 bytes.
fn valid_name(key: &'static str, v: &str) -> Result<String, NegotiationError> {
    let lower = v.to_ascii_lowercase();
    let ok = v.len() <= 223
        && (lower.starts_with("iqn.") || lower.starts_with("eui.") || lower.starts_with("naa."))
        && !v
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control());
    if !ok {
        return Err(NegotiationError::InvalidName {
            key,
            value: v.to_string(),
        });
    }
    Ok(v.to_string())
}

#[cfg(test)]
mod tests;
