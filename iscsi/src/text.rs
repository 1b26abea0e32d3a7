//! The key=value text of Login and Text PDUs (RFC 7143 §6.1): pairs separated by
//! NUL bytes, keys of at most 63 bytes from a small alphabet, values of at most
//! 255 bytes (8192 for the keys that carry large binary values), text continued
//! across PDUs with the C bit up to a bounded total.

use thiserror::Error;

/// Longest key name (RFC 7143 §6.1).
pub const MAX_KEY_LEN: usize = 63;
/// Longest ordinary value.
pub const MAX_VALUE_LEN: usize = 255;
/// Longest value of the keys that carry large binary values (CHAP, SRP, Kerberos).
pub const MAX_LARGE_VALUE_LEN: usize = 8192;
/// Pairs in one negotiation text.
pub const MAX_PAIRS: usize = 256;
/// Default bound on text accumulated across continued PDUs.
pub const DEFAULT_MAX_TEXT: usize = 64 * 1024;

/// What is wrong with a text segment.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum TextError {
    #[error("pair {0} has no '='")]
    MissingEquals(usize),
    #[error("pair {0} is not NUL-terminated")]
    MissingTerminator(usize),
    #[error("empty key in pair {0}")]
    EmptyKey(usize),
    #[error("key of {0} bytes exceeds 63")]
    KeyTooLong(usize),
    #[error("invalid character {byte:#04x} in key {key:?}")]
    InvalidKeyChar { key: String, byte: u8 },
    #[error("value of key {key} is {len} bytes, more than {max}")]
    ValueTooLong { key: String, len: usize, max: usize },
    #[error("value of key {0} is not UTF-8")]
    NotUtf8(String),
    #[error("key {0} appears twice")]
    DuplicateKey(String),
    #[error("more than {0} pairs")]
    TooManyPairs(usize),
    #[error("continued text exceeds {0} bytes")]
    TooLong(usize),
}

/// The longest value `key` may carry.
pub fn max_value_len(key: &str) -> usize {
    const LARGE: [&str; 10] = [
        "CHAP_C",
        "CHAP_R",
        "SRP_A",
        "SRP_B",
        "SRP_M",
        "SRP_HM",
        "SRP_s",
        "KRB_AP_REQ",
        "KRB_AP_REP",
        "TargetAddress",
    ];
    if LARGE.contains(&key) {
        MAX_LARGE_VALUE_LEN
    } else {
        MAX_VALUE_LEN
    }
}

/// Key characters of RFC 7143 §6.1, and '#' of the IANA-registered public
/// extension keys (`X#NodeArchitecture`, §13.5.2 and §13.26).
fn key_char_ok(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+' | b'@' | b'_' | b'#')
}

/// Key=value pairs in the order they came.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pairs(pub Vec<(String, String)>);

impl Pairs {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn push(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.0.push((key.into(), value.into()));
    }

    /// NUL-terminated `key=value` pairs.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in &self.0 {
            out.extend_from_slice(k.as_bytes());
            out.push(b'=');
            out.extend_from_slice(v.as_bytes());
            out.push(0);
        }
        out
    }
}

/// Parses a complete text (all continuations joined). Empty entries (stray NULs)
/// are skipped; every pair must end with a NUL; duplicate keys are an error.
pub fn parse(data: &[u8]) -> Result<Pairs, TextError> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut rest = data;
    let mut index = 0usize;
    while !rest.is_empty() {
        let Some(end) = rest.iter().position(|&b| b == 0) else {
            return Err(TextError::MissingTerminator(index));
        };
        let (entry, tail) = rest.split_at(end);
        rest = tail.get(1..).unwrap_or(&[]);
        if entry.is_empty() {
            continue;
        }
        let eq = entry
            .iter()
            .position(|&b| b == b'=')
            .ok_or(TextError::MissingEquals(index))?;
        let (k, v) = entry.split_at(eq);
        let v = v.get(1..).unwrap_or(&[]);
        if k.is_empty() {
            return Err(TextError::EmptyKey(index));
        }
        if k.len() > MAX_KEY_LEN {
            return Err(TextError::KeyTooLong(k.len()));
        }
        if let Some(&byte) = k.iter().find(|&&b| !key_char_ok(b)) {
            return Err(TextError::InvalidKeyChar {
                key: String::from_utf8_lossy(k).into_owned(),
                byte,
            });
        }
        // Checked above: ASCII only.
        let key = String::from_utf8_lossy(k).into_owned();
        let max = max_value_len(&key);
        if v.len() > max {
            return Err(TextError::ValueTooLong {
                key,
                len: v.len(),
                max,
            });
        }
        let value = String::from_utf8(v.to_vec()).map_err(|_| TextError::NotUtf8(key.clone()))?;
        if pairs.iter().any(|(pk, _)| *pk == key) {
            return Err(TextError::DuplicateKey(key));
        }
        if pairs.len() >= MAX_PAIRS {
            return Err(TextError::TooManyPairs(MAX_PAIRS));
        }
        pairs.push((key, value));
        index += 1;
    }
    Ok(Pairs(pairs))
}

/// Joins text continued with the C bit across PDUs, bounded in total.
#[derive(Debug)]
pub struct TextAccumulator {
    buf: Vec<u8>,
    max: usize,
}

impl Default for TextAccumulator {
    fn default() -> Self {
        TextAccumulator::new(DEFAULT_MAX_TEXT)
    }
}

impl TextAccumulator {
    pub fn new(max: usize) -> Self {
        TextAccumulator {
            buf: Vec::new(),
            max,
        }
    }

    /// Adds one PDU's data segment. With `continues` (C bit) the text is held and
    /// `None` returned; otherwise the whole text is parsed and the buffer reset.
    pub fn push(&mut self, data: &[u8], continues: bool) -> Result<Option<Pairs>, TextError> {
        if self.buf.len().saturating_add(data.len()) > self.max {
            self.buf.clear();
            return Err(TextError::TooLong(self.max));
        }
        self.buf.extend_from_slice(data);
        if continues {
            return Ok(None);
        }
        let text = std::mem::take(&mut self.buf);
        parse(&text).map(Some)
    }

    /// Whether a continued text is pending.
    pub fn is_pending(&self) -> bool {
        !self.buf.is_empty()
    }
}

/// Cuts an encoded text into data segments of at most `max` bytes (at least 1);
/// all but the last go out with the C bit.
pub fn split_segments(text: &[u8], max: usize) -> Vec<Vec<u8>> {
    if text.is_empty() {
        return vec![Vec::new()];
    }
    text.chunks(max.max(1)).map(<[u8]>::to_vec).collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn parses_pairs_in_order() {
        let p =
            parse(b"InitiatorName=iqn.1993-08.org.debian:01:abc\0SessionType=Normal\0").unwrap();
        assert_eq!(p.get("SessionType"), Some("Normal"));
        assert_eq!(p.0[0].0, "InitiatorName");
        assert_eq!(parse(b"").unwrap(), Pairs::default());
        // Empty values and stray NULs are fine.
        let p = parse(b"X=\0\0\0Y=1\0").unwrap();
        assert_eq!(p.get("X"), Some(""));
        assert_eq!(p.get("Y"), Some("1"));
        // A value may contain '='.
        assert_eq!(parse(b"A=b=c\0").unwrap().get("A"), Some("b=c"));
        // Public extension keys carry a '#'.
        let p = parse(b"X#NodeArchitecture=oxtarget-0.1\0").unwrap();
        assert_eq!(p.get("X#NodeArchitecture"), Some("oxtarget-0.1"));
    }

    #[test]
    fn errors_name_the_violation() {
        assert_eq!(parse(b"A=1"), Err(TextError::MissingTerminator(0)));
        assert_eq!(parse(b"A=1\0B\0"), Err(TextError::MissingEquals(1)));
        assert_eq!(parse(b"=1\0"), Err(TextError::EmptyKey(0)));
        assert_eq!(
            parse(b"A=1\0A=2\0"),
            Err(TextError::DuplicateKey("A".into()))
        );
        assert!(matches!(
            parse(b"A B=1\0"),
            Err(TextError::InvalidKeyChar { byte: b' ', .. })
        ));
        let long_key = format!("{}=1\0", "K".repeat(64));
        assert_eq!(parse(long_key.as_bytes()), Err(TextError::KeyTooLong(64)));
        let ok_key = format!("{}=1\0", "K".repeat(63));
        assert!(parse(ok_key.as_bytes()).is_ok());
        let long_val = format!("A={}\0", "v".repeat(256));
        assert!(matches!(
            parse(long_val.as_bytes()),
            Err(TextError::ValueTooLong {
                len: 256,
                max: 255,
                ..
            })
        ));
        let chap = format!("CHAP_C=0x{}\0", "ab".repeat(1024));
        assert!(parse(chap.as_bytes()).is_ok());
        assert!(matches!(parse(b"A=\xff\0"), Err(TextError::NotUtf8(_))));
        let mut many = Vec::new();
        for i in 0..=MAX_PAIRS {
            many.extend_from_slice(format!("K{i}=1\0").as_bytes());
        }
        assert_eq!(parse(&many), Err(TextError::TooManyPairs(MAX_PAIRS)));
    }

    #[test]
    fn continuation_joins_and_bounds() {
        let mut acc = TextAccumulator::new(32);
        assert_eq!(acc.push(b"Initiator", true), Ok(None));
        assert!(acc.is_pending());
        let p = acc.push(b"Name=x\0", false).unwrap().unwrap();
        assert_eq!(p.get("InitiatorName"), Some("x"));
        assert!(!acc.is_pending());
        assert_eq!(acc.push(&[b'a'; 20], true), Ok(None));
        assert_eq!(acc.push(&[b'a'; 20], true), Err(TextError::TooLong(32)));
        assert!(!acc.is_pending());
    }

    #[test]
    fn split_segments_covers_text() {
        assert_eq!(split_segments(b"", 4), vec![Vec::<u8>::new()]);
        let s = split_segments(b"abcdefghij", 4);
        assert_eq!(s.len(), 3);
        assert_eq!(s.concat(), b"abcdefghij");
    }

    fn key() -> impl Strategy<Value = String> {
        "[A-Z][A-Za-z0-9._@+-]{0,62}"
    }

    proptest! {
        #[test]
        fn encode_then_parse_is_identity(
            pairs in proptest::collection::btree_map(key(), "[^\u{0}]{0,40}", 0..20)
        ) {
            let p = Pairs(pairs.into_iter().filter(|(_, v)| v.len() <= MAX_VALUE_LEN).collect());
            prop_assert_eq!(parse(&p.encode()).unwrap(), p);
        }

        #[test]
        fn parse_never_panics(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&b);
        }
    }
}
