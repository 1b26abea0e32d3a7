//! The initiator's side of the login phase: security (None or CHAP, mutual if
//! asked) and operational negotiation, into the parameters the full feature
//! phase runs with.

use super::conn::Conn;
use super::seq::Seq;
use super::InitiatorError;
use crate::chap::{constant_time_eq, decode_binary, encode_hex, ChapAlgorithm, Secret};
use crate::negotiate::parse_number;
use crate::pdu::{Isid, LoginRequest, LoginResponse, Pdu, Stage};
use crate::text::{self, Pairs, TextAccumulator};

/// The largest data segment we receive, declared to the target.
pub(super) const OUR_MAX_RECV: u32 = 256 * 1024;
/// Login text of one PDU at most (the login phase's 8192-byte segments).
const LOGIN_SEGMENT: usize = 8192;
/// Exchanges of one stage at most, against a target that never transits.
const MAX_ROUNDS: usize = 8;
/// The keys the target declares, which take no answer.
const DECLARATIVE: [&str; 5] = [
    "MaxRecvDataSegmentLength",
    "TargetAlias",
    "TargetPortalGroupTag",
    "TargetAddress",
    "TargetName",
];

/// What the login asks for.
pub(super) struct LoginParams<'a> {
    pub initiator_name: &'a str,
    /// `None` for a discovery session.
    pub target_name: Option<&'a str>,
    pub isid: [u8; 6],
    pub chap: Option<&'a Secret>,
    pub mutual_chap: Option<&'a Secret>,
    pub header_digest: bool,
    pub data_digest: bool,
    pub initial_r2t: bool,
    pub immediate_data: bool,
}

/// What the login settled.
#[derive(Clone, Debug)]
pub(super) struct Negotiated {
    pub header_digest: bool,
    pub data_digest: bool,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    /// The target's MaxRecvDataSegmentLength: our largest Data-Out segment.
    pub max_xmit: u32,
    pub max_burst: u32,
    pub first_burst: u32,
}

impl Default for Negotiated {
    /// RFC 7143's defaults for every key left unanswered.
    fn default() -> Self {
        Negotiated {
            header_digest: false,
            data_digest: false,
            initial_r2t: true,
            immediate_data: true,
            max_xmit: 8192,
            max_burst: 262_144,
            first_burst: 65_536,
        }
    }
}

struct Login<'c> {
    conn: &'c mut Conn,
    seq: &'c mut Seq,
    isid: Isid,
    itt: u32,
    first: bool,
}

pub(super) fn login(
    conn: &mut Conn,
    seq: &mut Seq,
    p: &LoginParams<'_>,
) -> Result<Negotiated, InitiatorError> {
    let itt = seq.next_itt();
    let mut l = Login {
        conn,
        seq,
        isid: Isid(p.isid),
        itt,
        first: true,
    };
    security(&mut l, p)?;
    operational(&mut l, p)
}

fn security(l: &mut Login<'_>, p: &LoginParams<'_>) -> Result<(), InitiatorError> {
    let mut keys = Pairs::default();
    keys.push("InitiatorName", p.initiator_name);
    match p.target_name {
        Some(t) => {
            keys.push("TargetName", t);
            keys.push("SessionType", "Normal");
        }
        None => keys.push("SessionType", "Discovery"),
    }
    // Mutual CHAP is asked for to authenticate the target: None will not do.
    let offer = match (p.chap.is_some(), p.mutual_chap.is_some()) {
        (true, true) => "CHAP",
        (true, false) => "CHAP,None",
        (false, _) => "None",
    };
    keys.push("AuthMethod", offer);
    let (resp, got) = l.exchange(Stage::Security, Some(Stage::Operational), &keys)?;
    match got.get("AuthMethod") {
        Some("None") | None if p.mutual_chap.is_some() => Err(InitiatorError::Chap(
            "target did not authenticate itself (mutual CHAP asked)".into(),
        )),
        Some("None") | None if resp.transit == Some(Stage::Operational) => Ok(()),
        Some("CHAP") => chap(l, p),
        other => Err(InitiatorError::Login(format!(
            "target answered AuthMethod {other:?} without leaving the security stage"
        ))),
    }
}

fn chap(l: &mut Login<'_>, p: &LoginParams<'_>) -> Result<(), InitiatorError> {
    let secret = p
        .chap
        .ok_or_else(|| InitiatorError::Chap("target chose CHAP, we have no secret".into()))?;
    let mut keys = Pairs::default();
    keys.push("CHAP_A", "7,5");
    let (_, got) = l.exchange(Stage::Security, None, &keys)?;
    let alg = got
        .get("CHAP_A")
        .and_then(parse_number)
        .and_then(ChapAlgorithm::from_number)
        .filter(|a| matches!(a, ChapAlgorithm::Sha256 | ChapAlgorithm::Md5))
        .ok_or_else(|| InitiatorError::Chap(format!("CHAP_A {:?}", got.get("CHAP_A"))))?;
    let id = got
        .get("CHAP_I")
        .and_then(parse_number)
        .and_then(|n| u8::try_from(n).ok())
        .ok_or_else(|| InitiatorError::Chap(format!("CHAP_I {:?}", got.get("CHAP_I"))))?;
    let challenge = binary(&got, "CHAP_C")?;
    let mut keys = Pairs::default();
    keys.push("CHAP_N", secret.user.clone());
    keys.push(
        "CHAP_R",
        encode_hex(&alg.response(id, &secret.secret, &challenge)),
    );
    let mut ours = None;
    if p.mutual_chap.is_some() {
        let mut r = [0u8; 17];
        getrandom::fill(&mut r).map_err(|e| InitiatorError::Chap(e.to_string()))?;
        let (id, c) = (r[0], r[1..].to_vec());
        keys.push("CHAP_I", id.to_string());
        keys.push("CHAP_C", encode_hex(&c));
        ours = Some((id, c));
    }
    let (resp, got) = l.exchange(Stage::Security, Some(Stage::Operational), &keys)?;
    if let (Some(target), Some((id, c))) = (p.mutual_chap, ours) {
        if c == challenge {
            // The target sent back our own challenge: a reflection, not a proof.
            return Err(InitiatorError::Chap(
                "target reflected our challenge".into(),
            ));
        }
        if got.get("CHAP_N") != Some(target.user.as_str()) {
            return Err(InitiatorError::Chap(format!(
                "target CHAP_N {:?}",
                got.get("CHAP_N")
            )));
        }
        let r = binary(&got, "CHAP_R")?;
        if !constant_time_eq(&r, &alg.response(id, &target.secret, &c)) {
            return Err(InitiatorError::Chap("target's CHAP_R is wrong".into()));
        }
    }
    if resp.transit != Some(Stage::Operational) {
        return Err(InitiatorError::Login(
            "target stayed in the security stage after CHAP".into(),
        ));
    }
    Ok(())
}

fn binary(got: &Pairs, key: &'static str) -> Result<Vec<u8>, InitiatorError> {
    let v = got
        .get(key)
        .ok_or_else(|| InitiatorError::Chap(format!("{key} missing")))?;
    decode_binary(v).map_err(|e| InitiatorError::Chap(format!("{key}: {e}")))
}

fn operational(l: &mut Login<'_>, p: &LoginParams<'_>) -> Result<Negotiated, InitiatorError> {
    let digest = |on: bool| if on { "CRC32C" } else { "None" };
    let yes_no = |on: bool| if on { "Yes" } else { "No" };
    let mut keys = Pairs::default();
    keys.push("HeaderDigest", digest(p.header_digest));
    keys.push("DataDigest", digest(p.data_digest));
    keys.push("MaxRecvDataSegmentLength", OUR_MAX_RECV.to_string());
    if p.target_name.is_some() {
        keys.push("MaxConnections", "1");
        keys.push("InitialR2T", yes_no(p.initial_r2t));
        keys.push("ImmediateData", yes_no(p.immediate_data));
        keys.push("MaxBurstLength", "16776192");
        keys.push("FirstBurstLength", "262144");
        keys.push("DefaultTime2Wait", "0");
        keys.push("DefaultTime2Retain", "0");
        keys.push("MaxOutstandingR2T", "1");
        keys.push("DataPDUInOrder", "Yes");
        keys.push("DataSequenceInOrder", "Yes");
        keys.push("ErrorRecoveryLevel", "0");
    }
    let mut sent: Vec<String> = keys.iter().map(|(k, _)| k.to_string()).collect();
    let mut n = Negotiated::default();
    for _ in 0..MAX_ROUNDS {
        let (resp, got) = l.exchange(Stage::Operational, Some(Stage::FullFeature), &keys)?;
        keys = Pairs::default();
        for (k, v) in got.iter() {
            apply(&mut n, k, v)?;
            if !sent.iter().any(|s| s == k) && !DECLARATIVE.contains(&k) {
                // A proposal of the target's: take its value (the first of a list).
                let v = v.split(',').next().unwrap_or(v);
                apply(&mut n, k, v)?;
                keys.push(k, v);
                sent.push(k.to_string());
            }
        }
        if resp.transit == Some(Stage::FullFeature) && keys.is_empty() {
            return Ok(n);
        }
    }
    Err(InitiatorError::Login(
        "target never left the operational stage".into(),
    ))
}

/// Takes one negotiated value into `n`; unknown keys and refusals keep defaults.
fn apply(n: &mut Negotiated, key: &str, value: &str) -> Result<(), InitiatorError> {
    let num = || {
        parse_number(value)
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| InitiatorError::Login(format!("{key}={value} is not a number")))
    };
    match key {
        "HeaderDigest" => n.header_digest = value == "CRC32C",
        "DataDigest" => n.data_digest = value == "CRC32C",
        "InitialR2T" => n.initial_r2t = value != "No",
        "ImmediateData" => n.immediate_data = value == "Yes",
        "MaxRecvDataSegmentLength" => {
            let v = num()?;
            if !(512..=crate::pdu::MAX_DATA_SEGMENT_LEN).contains(&v) {
                return Err(InitiatorError::Login(format!("{key}={v} out of range")));
            }
            n.max_xmit = v;
        }
        "MaxBurstLength" | "FirstBurstLength" => {
            let v = num()?;
            if !(512..=crate::pdu::MAX_DATA_SEGMENT_LEN).contains(&v) {
                return Err(InitiatorError::Login(format!("{key}={v} out of range")));
            }
            if key == "MaxBurstLength" {
                n.max_burst = v;
            } else {
                n.first_burst = v;
            }
        }
        _ => {}
    }
    Ok(())
}

impl Login<'_> {
    /// Sends one login request with `keys` and gathers the whole answer (asking
    /// for the rest while the target sets the C bit).
    fn exchange(
        &mut self,
        csg: Stage,
        transit: Option<Stage>,
        keys: &Pairs,
    ) -> Result<(LoginResponse, Pairs), InitiatorError> {
        let data = keys.encode();
        if data.len() > LOGIN_SEGMENT {
            return Err(InitiatorError::Login("login text too long".into()));
        }
        let mut acc = TextAccumulator::new(text::DEFAULT_MAX_TEXT);
        let mut out = data;
        let mut transit = transit;
        loop {
            let req = LoginRequest {
                transit,
                continue_: false,
                csg,
                version_max: 0,
                version_min: 0,
                data_segment_len: u32::try_from(out.len()).unwrap_or(u32::MAX),
                isid: self.isid,
                tsih: 0,
                itt: self.itt,
                cid: 0,
                cmd_sn: self.seq.cmd_sn,
                exp_stat_sn: self.seq.exp_stat_sn,
            };
            self.conn.send(&Pdu::LoginRequest(req), &out)?;
            let (pdu, data) = self.conn.recv()?;
            let resp = match pdu {
                Pdu::LoginResponse(r) => r,
                other => {
                    return Err(InitiatorError::Unexpected {
                        got: other.opcode(),
                        waiting: "login response",
                    })
                }
            };
            if !resp.status.is_success() {
                return Err(InitiatorError::LoginRejected {
                    class: resp.status.class,
                    detail: resp.status.detail,
                });
            }
            if resp.itt != self.itt || resp.csg != csg || resp.version_active != 0 {
                return Err(InitiatorError::Login(format!(
                    "response does not match the request: {resp:?}"
                )));
            }
            if !self.first && resp.stat_sn != self.seq.exp_stat_sn {
                return Err(InitiatorError::Login(format!(
                    "StatSN {} where {} was expected",
                    resp.stat_sn, self.seq.exp_stat_sn
                )));
            }
            self.first = false;
            self.seq
                .on_status(resp.stat_sn, resp.exp_cmd_sn, resp.max_cmd_sn);
            if let Some(pairs) = acc.push(&data, resp.continue_)? {
                return Ok((resp, pairs));
            }
            // The target has more text: an empty request fetches it.
            out = Vec::new();
            transit = None;
        }
    }
}
