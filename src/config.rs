//! The daemon's TOML configuration: backends, LUNs and (as the transports land) their
//! exports. Parsing is strict (unknown keys are errors) and every error names the
//! file, the line and the key, so an admin can fix a config without guessing.
//!
//! ```toml
//! state_dir = "/var/lib/oxtarget"
//!
//! [[backend]]
//! name = "disk0"
//! type = "file"            # ram | null | file | blockdev
//! path = "/var/lib/oxtarget/disk0.img"
//! size = "10G"             # ram, null; for a file: create it with this size if missing
//! direct = true            # file: O_DIRECT
//!
//! [[lun]]
//! name = "lun0"
//! backend = "disk0"
//! uuid = "0b6f2a4e-5d1c-4c1e-9a63-2f0e8f6d7a11"   # identity: NAA id, serial
//! block_size = 512
//! ```

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use backends::{BackendSpec, IoEngine};
use engine::LunConfig;
use serde::Deserialize;
use toml::Spanned;

/// A configuration error, with where it is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    At {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub state_dir: Option<PathBuf>,
    #[serde(default, rename = "backend")]
    pub backends: Vec<RawBackend>,
    #[serde(default, rename = "lun")]
    pub luns: Vec<RawLun>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BackendType {
    Ram,
    Null,
    File,
    Blockdev,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EngineName {
    Uring,
    Threads,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub name: Spanned<String>,
    #[serde(rename = "type")]
    pub kind: BackendType,
    pub size: Option<Spanned<Size>>,
    pub path: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub direct: bool,
    #[serde(default)]
    pub read_only: bool,
    pub engine: Option<EngineName>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLun {
    pub name: Spanned<String>,
    pub backend: Spanned<String>,
    pub uuid: Option<Spanned<String>>,
    pub serial: Option<Spanned<String>>,
    pub vendor: Option<Spanned<String>>,
    pub product: Option<Spanned<String>>,
    pub revision: Option<Spanned<String>>,
    pub block_size: Option<Spanned<u32>>,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub removable: bool,
    pub thin: Option<bool>,
    pub write_cache: Option<bool>,
}

/// A byte count: an integer, or a string with a binary suffix ("512M", "1G").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            N(u64),
            S(String),
        }
        match Either::deserialize(d)? {
            Either::N(n) => Ok(Size(n)),
            Either::S(s) => parse_size(&s).map(Size).map_err(serde::de::Error::custom),
        }
    }
}

/// Parses "4096", "64K", "512M", "1G", "2T" (powers of 1024; an optional "iB"/"B").
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                'P' => 50,
                _ => return Err(format!("size {s:?}: unknown suffix {c:?} (use K, M, G, T)")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("size {s:?} is not a number with an optional K/M/G/T suffix"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// A backend as the daemon opens it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendDef {
    pub name: String,
    pub spec: BackendSpec,
}

/// A LUN as the daemon creates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunDef {
    pub config: LunConfig,
    pub backend: String,
    /// The UUID was not in the file: one was generated, and the admin should save
    /// the config (or it changes on every start, and so does the LUN's identity).
    pub generated_uuid: bool,
}

/// The checked configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub state_dir: Option<PathBuf>,
    pub backends: Vec<BackendDef>,
    pub luns: Vec<LunDef>,
}

/// Reads and checks a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&path.display().to_string(), &text)
}

/// 1-based line and column of byte `at` in `text`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let at = at.min(text.len());
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(at, |nl| at - nl - 1) + 1;
    (line, column)
}

struct Ctx<'a> {
    path: &'a str,
    text: &'a str,
}

impl Ctx<'_> {
    fn err<T>(
        &self,
        span: std::ops::Range<usize>,
        message: impl Into<String>,
    ) -> Result<T, ConfigError> {
        let (line, column) = line_col(self.text, span.start);
        Err(ConfigError::At {
            path: self.path.to_string(),
            line,
            column,
            message: message.into(),
        })
    }
}

/// Parses and checks config `text` (from `path`, for messages).
pub fn parse(path: &str, text: &str) -> Result<Config, ConfigError> {
    let cx = Ctx { path, text };
    let raw: RawConfig = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            return cx.err(span, e.message().to_string());
        }
    };
    let mut names = HashSet::new();
    let mut backends = Vec::new();
    for b in &raw.backends {
        if !names.insert(b.name.get_ref().clone()) {
            return cx.err(
                b.name.span(),
                format!("backend {:?} is defined twice", b.name.get_ref()),
            );
        }
        backends.push(BackendDef {
            name: b.name.get_ref().clone(),
            spec: backend_spec(&cx, b)?,
        });
    }
    let mut lun_names = HashSet::new();
    let mut uuids = HashSet::new();
    let mut luns = Vec::new();
    for l in &raw.luns {
        if !lun_names.insert(l.name.get_ref().clone()) {
            return cx.err(
                l.name.span(),
                format!("LUN {:?} is defined twice", l.name.get_ref()),
            );
        }
        if !names.contains(l.backend.get_ref()) {
            return cx.err(
                l.backend.span(),
                format!(
                    "LUN {:?}: no backend named {:?}",
                    l.name.get_ref(),
                    l.backend.get_ref()
                ),
            );
        }
        let def = lun_def(&cx, l, raw.state_dir.as_deref())?;
        if !uuids.insert(def.config.uuid) {
            let span = l.uuid.as_ref().map_or(l.name.span(), |u| u.span());
            return cx.err(
                span,
                format!(
                    "LUN {:?}: its uuid is used by another LUN",
                    l.name.get_ref()
                ),
            );
        }
        luns.push(def);
    }
    Ok(Config {
        state_dir: raw.state_dir,
        backends,
        luns,
    })
}

fn backend_spec(cx: &Ctx<'_>, b: &RawBackend) -> Result<BackendSpec, ConfigError> {
    let name = b.name.get_ref();
    let size = b.size.as_ref().map(|s| s.get_ref().0);
    let need_size = |what: &str| -> Result<u64, ConfigError> {
        match size {
            Some(0) => cx.err(
                b.size.as_ref().map_or(b.name.span(), |s| s.span()),
                format!("backend {name:?}: size must not be 0"),
            ),
            Some(s) => Ok(s),
            None => cx.err(
                b.name.span(),
                format!("backend {name:?}: a {what} backend needs `size`"),
            ),
        }
    };
    let need_path = |what: &str| -> Result<PathBuf, ConfigError> {
        match &b.path {
            Some(p) => Ok(p.get_ref().clone()),
            None => cx.err(
                b.name.span(),
                format!("backend {name:?}: a {what} backend needs `path`"),
            ),
        }
    };
    let no_path = |what: &str| -> Result<(), ConfigError> {
        match &b.path {
            Some(p) => cx.err(
                p.span(),
                format!("backend {name:?}: a {what} backend has no `path`"),
            ),
            None => Ok(()),
        }
    };
    Ok(match b.kind {
        BackendType::Ram => {
            no_path("ram")?;
            BackendSpec::Ram {
                size: need_size("ram")?,
            }
        }
        BackendType::Null => {
            no_path("null")?;
            BackendSpec::Null {
                size: need_size("null")?,
            }
        }
        BackendType::File => BackendSpec::File {
            path: need_path("file")?,
            direct: b.direct,
            read_only: b.read_only,
            engine: match b.engine {
                Some(EngineName::Threads) => IoEngine::Threads,
                _ => IoEngine::Uring,
            },
            create_size: size,
        },
        BackendType::Blockdev => {
            if let Some(s) = &b.size {
                return cx.err(
                    s.span(),
                    format!("backend {name:?}: a block device's size comes from the device"),
                );
            }
            BackendSpec::BlockDev {
                path: need_path("blockdev")?,
                read_only: b.read_only,
            }
        }
    })
}

/// Parses "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" (or 32 hex digits).
pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let mut u = [0u8; 16];
    for (i, b) in u.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(u)
}

pub fn format_uuid(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// A random version-4 UUID.
pub fn random_uuid() -> std::io::Result<[u8; 16]> {
    use std::io::Read;
    let mut u = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut u)?;
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    Ok(u)
}

fn lun_def(cx: &Ctx<'_>, l: &RawLun, state_dir: Option<&Path>) -> Result<LunDef, ConfigError> {
    let name = l.name.get_ref();
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return cx.err(
            l.name.span(),
            format!("LUN name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.'"),
        );
    }
    let (uuid, generated_uuid) = match &l.uuid {
        Some(u) => match parse_uuid(u.get_ref()) {
            Some(v) => (v, false),
            None => {
                return cx.err(
                    u.span(),
                    format!("LUN {name:?}: uuid {:?} is not a UUID", u.get_ref()),
                )
            }
        },
        None => match random_uuid() {
            Ok(u) => (u, true),
            Err(e) => {
                return cx.err(
                    l.name.span(),
                    format!("LUN {name:?}: cannot generate a uuid: {e}"),
                )
            }
        },
    };
    let mut c = LunConfig::new(name, uuid);
    let ascii = |v: &Option<Spanned<String>>,
                 key: &str,
                 max: usize|
     -> Result<Option<String>, ConfigError> {
        match v {
            None => Ok(None),
            Some(s)
                if s.get_ref().is_empty()
                    || s.get_ref().len() > max
                    || !s.get_ref().chars().all(|c| (' '..='~').contains(&c)) =>
            {
                cx.err(
                    s.span(),
                    format!("LUN {name:?}: {key} must be 1 to {max} printable ASCII characters"),
                )
            }
            Some(s) => Ok(Some(s.get_ref().clone())),
        }
    };
    if let Some(s) = ascii(&l.serial, "serial", 252)? {
        c.serial = s;
    }
    if let Some(s) = ascii(&l.vendor, "vendor", 8)? {
        c.vendor = s;
    }
    if let Some(s) = ascii(&l.product, "product", 16)? {
        c.product = s;
    }
    if let Some(s) = ascii(&l.revision, "revision", 4)? {
        c.revision = s;
    }
    if let Some(bs) = &l.block_size {
        let v = *bs.get_ref();
        if !v.is_power_of_two() || !(512..=65536).contains(&v) {
            return cx.err(
                bs.span(),
                format!("LUN {name:?}: block_size {v} is not a power of two from 512 to 65536"),
            );
        }
        c.block_size = v;
    }
    c.read_only = l.read_only;
    c.removable = l.removable;
    if let Some(t) = l.thin {
        c.thin = t;
    }
    if let Some(w) = l.write_cache {
        c.write_cache = w;
    }
    c.state_dir = state_dir.map(Path::to_path_buf);
    Ok(LunDef {
        config: c,
        backend: l.backend.get_ref().clone(),
        generated_uuid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
state_dir = "/var/lib/oxtarget"

[[backend]]
name = "ram0"
type = "ram"
size = "1G"

[[backend]]
name = "disk"
type = "file"
path = "/tmp/x.img"
size = 1048576
direct = true
engine = "threads"

[[lun]]
name = "lun0"
backend = "ram0"
uuid = "0b6f2a4e-5d1c-4c1e-9a63-2f0e8f6d7a11"
serial = "OX0001"
block_size = 4096
removable = true
"#;

    #[test]
    fn a_good_config_parses_into_specs() {
        let c = parse("t.toml", GOOD).unwrap();
        assert_eq!(c.backends[0].spec, BackendSpec::Ram { size: 1 << 30 });
        assert_eq!(
            c.backends[1].spec,
            BackendSpec::File {
                path: "/tmp/x.img".into(),
                direct: true,
                read_only: false,
                engine: IoEngine::Threads,
                create_size: Some(1 << 20),
            }
        );
        let l = &c.luns[0];
        assert_eq!(l.backend, "ram0");
        assert_eq!(
            format_uuid(&l.config.uuid),
            "0b6f2a4e-5d1c-4c1e-9a63-2f0e8f6d7a11"
        );
        assert_eq!(l.config.serial, "OX0001");
        assert_eq!(l.config.block_size, 4096);
        assert!(l.config.removable && !l.generated_uuid);
        assert_eq!(
            l.config.state_dir.as_deref(),
            Some(Path::new("/var/lib/oxtarget"))
        );
    }

    fn err_of(text: &str) -> (usize, String) {
        match parse("t.toml", text) {
            Err(ConfigError::At {
                line,
                message,
                path,
                ..
            }) => {
                assert_eq!(path, "t.toml");
                (line, message)
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_line_and_the_key() {
        let (line, msg) =
            err_of("[[backend]]\nname = \"a\"\ntype = \"ram\"\nsize = \"1G\"\nsped = 3\n");
        assert_eq!(line, 5, "{msg}");
        assert!(msg.contains("sped"), "{msg}");

        let (line, msg) = err_of("[[backend]]\nname = \"a\"\ntype = \"tape\"\n");
        assert_eq!(line, 3, "{msg}");

        let (line, msg) = err_of("[[backend]]\nname = \"a\"\ntype = \"ram\"\nsize = \"12Q\"\n");
        assert_eq!(line, 4, "{msg}");
        assert!(msg.contains("suffix"), "{msg}");

        let (line, msg) = err_of("[[backend]]\nname = \"a\"\ntype = \"ram\"\nsize = 1\n[[lun]]\nname = \"l\"\nbackend = \"b\"\n");
        assert_eq!(line, 7, "{msg}");
        assert!(msg.contains("no backend named \"b\""), "{msg}");

        let (line, msg) = err_of("[[backend]]\nname = \"a\"\ntype = \"ram\"\nsize = 1\n[[lun]]\nname = \"l\"\nbackend = \"a\"\nuuid = \"nope\"\n");
        assert_eq!(line, 8, "{msg}");

        let (line, msg) = err_of("[[backend]]\nname = \"a\"\ntype = \"ram\"\nsize = 1\n[[lun]]\nname = \"l\"\nbackend = \"a\"\nblock_size = 1000\n");
        assert_eq!(line, 8, "{msg}");

        let (line, msg) = err_of("[[backend]]\nname = \"a\"\ntype = \"file\"\n");
        assert_eq!(line, 2, "{msg}");
        assert!(msg.contains("path"), "{msg}");

        let (_, msg) = err_of("[[backend]]\nname = \"a\"\ntype = \"ram\"\nsize = 1\n[[backend]]\nname = \"a\"\ntype = \"null\"\nsize = 1\n");
        assert!(msg.contains("twice"), "{msg}");

        let (line, _) = err_of("state_dir = [\n");
        assert_eq!(line, 2);
    }

    #[test]
    fn a_missing_uuid_is_generated_and_flagged() {
        let c = parse("t", "[[backend]]\nname=\"a\"\ntype=\"null\"\nsize=\"1M\"\n[[lun]]\nname=\"l\"\nbackend=\"a\"\n").unwrap();
        assert!(c.luns[0].generated_uuid);
        assert_eq!(c.luns[0].config.uuid[6] >> 4, 4, "version 4");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert!(parse_size("99999999999P").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn uuids_round_trip() {
        let u = random_uuid().unwrap();
        assert_eq!(parse_uuid(&format_uuid(&u)), Some(u));
        assert_eq!(parse_uuid("xyz"), None);
    }
}
