//! CHAP (RFC 1994) as iSCSI's security stage uses it (RFC 7143 §12.1.3), target
//! side: the initiator offers algorithms (CHAP_A), the target picks one and sends
//! an identifier and a random challenge (CHAP_I, CHAP_C), the initiator proves
//! its secret (CHAP_N, CHAP_R) and may challenge the target in turn (mutual CHAP:
//! CHAP_I, CHAP_C, answered with the target's CHAP_N and CHAP_R).
//!
//! The response is H(identifier ‖ secret ‖ challenge) with MD5 (5), SHA-1 (6),
//! SHA-256 (7) or SHA3-256 (8), the algorithms the Linux initiator offers.
//! Binary values travel hex-encoded (`0x`) or base64-encoded (`0b`).

use base64::Engine as _;
use thiserror::Error;

use crate::text::Pairs;

/// The longest challenge we accept from an initiator (RFC 7143 §12.1.3 bounds
/// CHAP_C to 1024 bytes).
pub const MAX_CHALLENGE_LEN: usize = 1024;

/// CHAP algorithms by their CHAP_A number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChapAlgorithm {
    Md5 = 5,
    Sha1 = 6,
    Sha256 = 7,
    Sha3_256 = 8,
}

impl ChapAlgorithm {
    pub const ALL: [ChapAlgorithm; 4] = [
        ChapAlgorithm::Sha3_256,
        ChapAlgorithm::Sha256,
        ChapAlgorithm::Sha1,
        ChapAlgorithm::Md5,
    ];

    pub fn from_number(n: u64) -> Option<Self> {
        match n {
            5 => Some(ChapAlgorithm::Md5),
            6 => Some(ChapAlgorithm::Sha1),
            7 => Some(ChapAlgorithm::Sha256),
            8 => Some(ChapAlgorithm::Sha3_256),
            _ => None,
        }
    }

    pub fn digest_len(self) -> usize {
        match self {
            ChapAlgorithm::Md5 => 16,
            ChapAlgorithm::Sha1 => 20,
            ChapAlgorithm::Sha256 | ChapAlgorithm::Sha3_256 => 32,
        }
    }

    /// H(identifier ‖ secret ‖ challenge).
    pub fn response(self, id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
        fn h<D: sha2::Digest>(id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
            let mut d = D::new();
            d.update([id]);
            d.update(secret);
            d.update(challenge);
            d.finalize().to_vec()
        }
        match self {
            ChapAlgorithm::Md5 => h::<md5::Md5>(id, secret, challenge),
            ChapAlgorithm::Sha1 => h::<sha1::Sha1>(id, secret, challenge),
            ChapAlgorithm::Sha256 => h::<sha2::Sha256>(id, secret, challenge),
            ChapAlgorithm::Sha3_256 => h::<sha3::Sha3_256>(id, secret, challenge),
        }
    }
}

/// The first algorithm of the initiator's CHAP_A list that we allow.
pub fn select_algorithm(offer: &str, allowed: &[ChapAlgorithm]) -> Option<ChapAlgorithm> {
    offer
        .split(',')
        .filter_map(|a| crate::negotiate::parse_number(a).and_then(ChapAlgorithm::from_number))
        .find(|a| allowed.contains(a))
}

/// Why a binary value does not decode.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum BinaryError {
    #[error("binary value without a 0x or 0b prefix")]
    NoPrefix,
    #[error("invalid hex digits")]
    BadHex,
    #[error("invalid base64")]
    BadBase64,
    #[error("empty binary value")]
    Empty,
}

/// Decodes a binary value: `0x`/`0X` hex (an odd digit count has an implied
/// leading zero) or `0b`/`0B` base64.
pub fn decode_binary(v: &str) -> Result<Vec<u8>, BinaryError> {
    let (prefix, body) = v.split_at_checked(2).ok_or(BinaryError::NoPrefix)?;
    let out = match prefix {
        "0x" | "0X" => {
            let digits: Vec<u8> = body
                .bytes()
                .map(|c| match c {
                    b'0'..=b'9' => Ok(c - b'0'),
                    b'a'..=b'f' => Ok(c - b'a' + 10),
                    b'A'..=b'F' => Ok(c - b'A' + 10),
                    _ => Err(BinaryError::BadHex),
                })
                .collect::<Result<_, _>>()?;
            let mut out = Vec::with_capacity(digits.len().div_ceil(2));
            let odd = digits.len() % 2;
            if odd == 1 {
                out.push(digits[0]);
            }
            for pair in digits[odd..].chunks_exact(2) {
                out.push((pair[0] << 4) | pair[1]);
            }
            out
        }
        "0b" | "0B" => base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| BinaryError::BadBase64)?,
        _ => return Err(BinaryError::NoPrefix),
    };
    if out.is_empty() {
        return Err(BinaryError::Empty);
    }
    Ok(out)
}

/// `0x` followed by lower-case hex digits.
pub fn encode_hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(2 + 2 * b.len());
    s.push_str("0x");
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

/// `0b` followed by padded base64.
pub fn encode_base64(b: &[u8]) -> String {
    format!("0b{}", base64::engine::general_purpose::STANDARD.encode(b))
}

/// Compares without an early exit, so timing does not tell where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// A user name and secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    pub user: String,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("user", &self.user)
            .field("secret", &"<hidden>")
            .finish()
    }
}

/// What the target checks the initiator against, and (for mutual CHAP) how it
/// answers the initiator's challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChapCredentials {
    /// The initiator's expected CHAP_N and its secret.
    pub initiator: Secret,
    /// The target's name and secret for mutual CHAP, if configured.
    pub target: Option<Secret>,
}

/// Why authentication fails.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ChapError {
    #[error("no CHAP algorithm in common with {0:?}")]
    NoAlgorithm(String),
    #[error("{0} missing")]
    Missing(&'static str),
    #[error("{key} is malformed: {value:?}")]
    Malformed { key: &'static str, value: String },
    #[error("{0} sent out of sequence")]
    OutOfSequence(String),
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    #[error("wrong response from user {0:?}")]
    WrongResponse(String),
    #[error("the initiator sent a challenge but no target secret is configured")]
    MutualNotConfigured,
    #[error("the initiator's challenge repeats ours")]
    ReflectedChallenge,
    #[error("the target and initiator secrets are the same")]
    SameSecrets,
    #[error("no randomness: {0}")]
    Random(String),
}

#[derive(Debug)]
enum State {
    AwaitAlgorithm,
    Challenged {
        alg: ChapAlgorithm,
        id: u8,
        challenge: Vec<u8>,
    },
    Done,
    Failed,
}

/// One CHAP exchange, target side.
#[derive(Debug)]
pub struct ChapTarget {
    allowed: Vec<ChapAlgorithm>,
    state: State,
}

impl ChapTarget {
    /// `allowed` in no particular order: the initiator's preference wins.
    pub fn new(allowed: &[ChapAlgorithm]) -> Self {
        ChapTarget {
            allowed: allowed.to_vec(),
            state: State::AwaitAlgorithm,
        }
    }

    /// Whether the initiator has proven itself (and any mutual answer is sent).
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Consumes the CHAP keys of one text and answers. `creds` gives the
    /// credentials once the initiator's CHAP_N is known.
    pub fn step(
        &mut self,
        keys: &Pairs,
        creds: impl FnOnce(&str) -> Option<ChapCredentials>,
    ) -> Result<Pairs, ChapError> {
        let r = self.step_inner(keys, creds);
        if r.is_err() {
            self.state = State::Failed;
        }
        r
    }

    fn step_inner(
        &mut self,
        keys: &Pairs,
        creds: impl FnOnce(&str) -> Option<ChapCredentials>,
    ) -> Result<Pairs, ChapError> {
        let chap: Vec<(&str, &str)> = keys
            .iter()
            .filter(|(k, _)| k.starts_with("CHAP_"))
            .collect();
        match &self.state {
            State::AwaitAlgorithm => {
                if chap.is_empty() {
                    return Ok(Pairs::default());
                }
                if let Some((k, _)) = chap.iter().find(|(k, _)| *k != "CHAP_A") {
                    return Err(ChapError::OutOfSequence(k.to_string()));
                }
                let offer = keys.get("CHAP_A").unwrap_or_default();
                let alg = select_algorithm(offer, &self.allowed)
                    .ok_or_else(|| ChapError::NoAlgorithm(offer.to_string()))?;
                let mut idb = [0u8; 1];
                let mut challenge = vec![0u8; alg.digest_len().max(16)];
                getrandom::fill(&mut idb).map_err(|e| ChapError::Random(e.to_string()))?;
                getrandom::fill(&mut challenge).map_err(|e| ChapError::Random(e.to_string()))?;
                let mut out = Pairs::default();
                out.push("CHAP_A", (alg as u8).to_string());
                out.push("CHAP_I", idb[0].to_string());
                out.push("CHAP_C", encode_hex(&challenge));
                self.state = State::Challenged {
                    alg,
                    id: idb[0],
                    challenge,
                };
                Ok(out)
            }
            State::Challenged { alg, id, challenge } => {
                let (alg, id) = (*alg, *id);
                if let Some((k, _)) = chap
                    .iter()
                    .find(|(k, _)| !matches!(*k, "CHAP_N" | "CHAP_R" | "CHAP_I" | "CHAP_C"))
                {
                    return Err(ChapError::OutOfSequence(k.to_string()));
                }
                let name = keys.get("CHAP_N").ok_or(ChapError::Missing("CHAP_N"))?;
                let r = keys.get("CHAP_R").ok_or(ChapError::Missing("CHAP_R"))?;
                let r = decode_binary(r).map_err(|_| ChapError::Malformed {
                    key: "CHAP_R",
                    value: r.to_string(),
                })?;
                let creds = creds(name).ok_or_else(|| ChapError::UnknownUser(name.to_string()))?;
                let want = alg.response(id, &creds.initiator.secret, challenge);
                // Compare both name and response before deciding, so an unknown
                // name and a wrong secret take the same path.
                let name_ok = constant_time_eq(name.as_bytes(), creds.initiator.user.as_bytes());
                let resp_ok = constant_time_eq(&r, &want);
                if !(name_ok && resp_ok) {
                    return Err(ChapError::WrongResponse(name.to_string()));
                }
                let mut out = Pairs::default();
                match (keys.get("CHAP_I"), keys.get("CHAP_C")) {
                    (None, None) => {}
                    (Some(i), Some(c)) => {
                        let their_id = crate::negotiate::parse_number(i)
                            .and_then(|n| u8::try_from(n).ok())
                            .ok_or_else(|| ChapError::Malformed {
                                key: "CHAP_I",
                                value: i.to_string(),
                            })?;
                        let their_c = decode_binary(c)
                            .ok()
                            .filter(|c| c.len() <= MAX_CHALLENGE_LEN)
                            .ok_or_else(|| ChapError::Malformed {
                                key: "CHAP_C",
                                value: c.to_string(),
                            })?;
                        if constant_time_eq(&their_c, challenge) {
                            return Err(ChapError::ReflectedChallenge);
                        }
                        let target = creds
                            .target
                            .as_ref()
                            .ok_or(ChapError::MutualNotConfigured)?;
                        if constant_time_eq(&target.secret, &creds.initiator.secret) {
                            return Err(ChapError::SameSecrets);
                        }
                        out.push("CHAP_N", target.user.clone());
                        out.push(
                            "CHAP_R",
                            encode_hex(&alg.response(their_id, &target.secret, &their_c)),
                        );
                    }
                    (None, Some(_)) => return Err(ChapError::Missing("CHAP_I")),
                    (Some(_), None) => return Err(ChapError::Missing("CHAP_C")),
                }
                self.state = State::Done;
                Ok(out)
            }
            State::Done | State::Failed => match chap.first() {
                Some((k, _)) => Err(ChapError::OutOfSequence(k.to_string())),
                None => Ok(Pairs::default()),
            },
        }
    }

    /// The challenge sent (tests and initiator-side helpers).
    pub fn challenge(&self) -> Option<(ChapAlgorithm, u8, &[u8])> {
        match &self.state {
            State::Challenged { alg, id, challenge } => Some((*alg, *id, challenge)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
