//! `[srp]` and `[[srp_target]]`: SRP target ports reached over RDMA CM. One
//! listener serves every target: an initiator names the target it wants by the
//! target port id in its login (id_ext and ioc_guid), not by address.
//!
//! ```toml
//! [srp]
//! listen = ["0.0.0.0:5555"]        # RDMA CM addresses; default 0.0.0.0:5555
//! queue_depth = 128                # credits granted per channel
//!
//! [[srp_target]]
//! name = "srp0"
//! id_ext = "0x0002c90300a1b2c3"   # the initiator's add_target id_ext=
//! ioc_guid = "0x0002c90300a1b2c3" # and ioc_guid=
//! luns = [{ id = 0, lun = "lun0" }]
//! ```

use std::collections::HashSet;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::{check_mappings, valid_object_name, ConfigError, Ctx, RawMapping};

/// The RDMA CM port the Linux initiator's test suites (blktests) use; SRP has no
/// assigned port.
pub const DEFAULT_SRP_PORT: u16 = 5555;

/// Credits granted per channel unless configured.
pub const DEFAULT_SRP_QUEUE_DEPTH: u32 = 128;

/// Server-wide SRP settings as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSrpSettings {
    /// "ADDRESS:PORT" to listen on with RDMA CM; default 0.0.0.0:5555.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listen: Vec<Spanned<String>>,
    /// Requests each channel may have outstanding (the credits it is granted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_depth: Option<Spanned<u32>>,
}

/// Server-wide SRP settings, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrpSettings {
    pub listen: Vec<SocketAddr>,
    pub queue_depth: u32,
}

/// An SRP target as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSrpTarget {
    pub name: Spanned<String>,
    /// The 64-bit identifier extension of the target port, as hex ("0x...").
    pub id_ext: Spanned<String>,
    /// The I/O controller GUID, as hex ("0x...").
    pub ioc_guid: Spanned<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub luns: Vec<Spanned<RawMapping>>,
}

/// An SRP target as the daemon serves it (LUN names not yet resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrpTargetDef {
    pub name: String,
    pub id_ext: u64,
    pub ioc_guid: u64,
    pub luns: Vec<RawMapping>,
}

/// Parses a 64-bit identifier written as hex, with or without "0x" (how ib_srp's
/// add_target and ibv_devinfo print them).
pub fn parse_guid(s: &str) -> Option<u64> {
    let h = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    if h.is_empty() || h.len() > 16 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(h, 16).ok()
}

/// Checks one `[[srp_target]]` on its own (the LUNs' existence is the caller's
/// to check).
pub fn check_srp_target(cx: &Ctx<'_>, t: &RawSrpTarget) -> Result<SrpTargetDef, ConfigError> {
    let name = t.name.get_ref();
    if !valid_object_name(name) {
        return cx.err(
            t.name.span(),
            format!("SRP target name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.'"),
        );
    }
    let guid = |v: &Spanned<String>, what: &str| match parse_guid(v.get_ref()) {
        Some(g) => Ok(g),
        None => cx.err(
            v.span(),
            format!(
                "SRP target {name:?}: {what} {:?} is not a 64-bit hex number",
                v.get_ref()
            ),
        ),
    };
    let id_ext = guid(&t.id_ext, "id_ext")?;
    let ioc_guid = guid(&t.ioc_guid, "ioc_guid")?;
    let luns = check_mappings(cx, &t.luns)?;
    Ok(SrpTargetDef {
        name: name.clone(),
        id_ext,
        ioc_guid,
        luns,
    })
}

/// Checks `[srp]`.
pub fn check_srp_settings(
    cx: &Ctx<'_>,
    raw: Option<&RawSrpSettings>,
) -> Result<SrpSettings, ConfigError> {
    let default = RawSrpSettings::default();
    let raw = raw.unwrap_or(&default);
    let mut listen = Vec::new();
    for l in &raw.listen {
        match l.get_ref().parse::<SocketAddr>() {
            Ok(a) if a.port() == 0 => {
                return cx.err(
                    l.span(),
                    format!("srp.listen {:?} needs a port", l.get_ref()),
                )
            }
            Ok(a) if !listen.contains(&a) => listen.push(a),
            Ok(_) => {
                return cx.err(
                    l.span(),
                    format!("srp.listen {:?} is listed twice", l.get_ref()),
                )
            }
            Err(_) => {
                return cx.err(
                    l.span(),
                    format!(
                        "srp.listen {:?} is not ADDRESS:PORT (IPv6 as [ADDRESS]:PORT)",
                        l.get_ref()
                    ),
                )
            }
        }
    }
    if listen.is_empty() {
        listen.push(SocketAddr::from(([0, 0, 0, 0], DEFAULT_SRP_PORT)));
    }
    let queue_depth = match &raw.queue_depth {
        None => DEFAULT_SRP_QUEUE_DEPTH,
        // Below 2 the initiator has no credit for a command besides the one it
        // keeps for task management; above 4096 one channel pins too much memory.
        Some(q) if !(2..=4096).contains(q.get_ref()) => {
            return cx.err(q.span(), "srp.queue_depth must be 2 to 4096")
        }
        Some(q) => *q.get_ref(),
    };
    Ok(SrpSettings {
        listen,
        queue_depth,
    })
}

/// Two SRP targets must differ in their port identity, or an initiator could not
/// tell them apart.
pub fn check_unique(
    cx: &Ctx<'_>,
    raws: &[RawSrpTarget],
    defs: &[SrpTargetDef],
) -> Result<(), ConfigError> {
    let mut names = HashSet::new();
    let mut ids = HashSet::new();
    for (r, d) in raws.iter().zip(defs) {
        if !names.insert(d.name.clone()) {
            return cx.err(
                r.name.span(),
                format!("SRP target {:?} is defined twice", d.name),
            );
        }
        if !ids.insert((d.id_ext, d.ioc_guid)) {
            return cx.err(
                r.id_ext.span(),
                format!(
                    "SRP target {:?}: id_ext and ioc_guid are those of another SRP target",
                    d.name
                ),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Doc {
        srp: Option<RawSrpSettings>,
        #[serde(default)]
        srp_target: Vec<RawSrpTarget>,
    }

    fn check(text: &str) -> Result<SrpTargetDef, String> {
        let doc: Doc = toml::from_str(text).map_err(|e| e.message().to_string())?;
        let cx = Ctx {
            path: "t.toml",
            text,
        };
        check_srp_target(&cx, &doc.srp_target[0]).map_err(|e| e.to_string())
    }

    fn settings(text: &str) -> Result<SrpSettings, String> {
        let doc: Doc = toml::from_str(text).map_err(|e| e.message().to_string())?;
        let cx = Ctx {
            path: "t.toml",
            text,
        };
        check_srp_settings(&cx, doc.srp.as_ref()).map_err(|e| e.to_string())
    }

    #[test]
    fn guids_parse_as_ib_srp_writes_them() {
        assert_eq!(
            parse_guid("0x0002c90300a1b2c3"),
            Some(0x0002_c903_00a1_b2c3)
        );
        assert_eq!(parse_guid("0002C90300A1B2C3"), Some(0x0002_c903_00a1_b2c3));
        assert_eq!(parse_guid("0x1"), Some(1));
        assert_eq!(parse_guid("0x"), None);
        assert_eq!(parse_guid("0x10002c90300a1b2c3"), None);
        assert_eq!(parse_guid("0xg"), None);
        assert_eq!(parse_guid("+1"), None);
    }

    #[test]
    fn a_target_gets_defaults() {
        let d = check(
            "[[srp_target]]\nname = \"s\"\nid_ext = \"0x1\"\nioc_guid = \"0x2\"\n\
             luns = [{ id = 0, lun = \"l\" }]\n",
        )
        .unwrap();
        assert_eq!((d.id_ext, d.ioc_guid), (1, 2));
        assert_eq!(d.luns.len(), 1);
        let s = settings("").unwrap();
        assert_eq!(s.listen, vec!["0.0.0.0:5555".parse().unwrap()]);
        assert_eq!(s.queue_depth, DEFAULT_SRP_QUEUE_DEPTH);
        let s = settings("[srp]\nlisten = [\"10.0.2.15:5556\", \"[::]:5555\"]\nqueue_depth = 64\n")
            .unwrap();
        assert_eq!(s.listen.len(), 2);
        assert_eq!(s.queue_depth, 64);
    }

    #[test]
    fn errors_name_the_line() {
        let e = check("[[srp_target]]\nname = \"s\"\nid_ext = \"0xzz\"\nioc_guid = \"1\"\n")
            .unwrap_err();
        assert!(e.starts_with("t.toml:3:"), "{e}");
        assert!(e.contains("id_ext"), "{e}");
        let e = settings("\n[srp]\n\nlisten = [\"10.0.0.1\"]\n").unwrap_err();
        assert!(
            e.starts_with("t.toml:4:") && e.contains("ADDRESS:PORT"),
            "{e}"
        );
        let e = settings("[srp]\nqueue_depth = 1\n").unwrap_err();
        assert!(e.contains("queue_depth"), "{e}");
        let e = settings("[srp]\nlisten = [\"0.0.0.0:0\"]\n").unwrap_err();
        assert!(e.contains("needs a port"), "{e}");
        let e = check("[[srp_target]]\nname = \"s s\"\nid_ext = \"1\"\nioc_guid = \"1\"\n")
            .unwrap_err();
        assert!(e.contains("SRP target name"), "{e}");
    }
}
