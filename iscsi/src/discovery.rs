//! SendTargets (RFC 7143 §13.3 and Appendix C): what a Text Request
//! `SendTargets=...` is answered with. Discovery sessions ask for `All` or one
//! target name; normal sessions for one target name or, with an empty value,
//! their own target. The caller passes the targets this initiator may see.

use crate::negotiate::{SessionType, REJECT};
use crate::text::Pairs;

/// One target and its portals as `address:port` (IPv6 in brackets) with the
/// portal group tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetEntry {
    pub name: String,
    pub portals: Vec<(String, u16)>,
}

/// The answer to `SendTargets=<value>`: TargetName/TargetAddress groups, an empty
/// text when nothing matches, or `SendTargets=Reject` when the request is not
/// allowed in this session.
pub fn send_targets(
    value: &str,
    session: SessionType,
    current_target: Option<&str>,
    visible: &[TargetEntry],
) -> Pairs {
    let wanted: Box<dyn Fn(&TargetEntry) -> bool + '_> = match (session, value) {
        (SessionType::Discovery, "All") => Box::new(|_| true),
        (SessionType::Discovery, "") => {
            return reject();
        }
        (SessionType::Discovery, name) => Box::new(move |t| t.name.eq_ignore_ascii_case(name)),
        // RFC 7143 Appendix C: All only in discovery sessions; a target name
        // in both kinds; nothing means the session's own target.
        (SessionType::Normal, "All") => return reject(),
        (SessionType::Normal, v) => {
            let Some(cur) = current_target else {
                return reject();
            };
            let name = if v.is_empty() { cur } else { v };
            Box::new(move |t| t.name.eq_ignore_ascii_case(name))
        }
    };
    let mut out = Pairs::default();
    for t in visible.iter().filter(|t| wanted(t)) {
        out.push("TargetName", t.name.clone());
        for (addr, tpgt) in &t.portals {
            out.push("TargetAddress", format!("{addr},{tpgt}"));
        }
    }
    out
}

fn reject() -> Pairs {
    let mut p = Pairs::default();
    p.push("SendTargets", REJECT);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets() -> Vec<TargetEntry> {
        vec![
            TargetEntry {
                name: "iqn.2026-11.org.oxtarget:a".into(),
                portals: vec![
                    ("192.0.2.1:3260".into(), 1),
                    ("[2001:db8::1]:3260".into(), 1),
                ],
            },
            TargetEntry {
                name: "iqn.2026-11.org.oxtarget:b".into(),
                portals: vec![("192.0.2.1:3260".into(), 2)],
            },
        ]
    }

    #[test]
    fn all_lists_every_visible_target() {
        let p = send_targets("All", SessionType::Discovery, None, &targets());
        let got: Vec<(&str, &str)> = p.iter().collect();
        assert_eq!(
            got,
            vec![
                ("TargetName", "iqn.2026-11.org.oxtarget:a"),
                ("TargetAddress", "192.0.2.1:3260,1"),
                ("TargetAddress", "[2001:db8::1]:3260,1"),
                ("TargetName", "iqn.2026-11.org.oxtarget:b"),
                ("TargetAddress", "192.0.2.1:3260,2"),
            ]
        );
        // Encodes with NULs, keys repeating as SendTargets answers do.
        assert!(p
            .encode()
            .starts_with(b"TargetName=iqn.2026-11.org.oxtarget:a\0"));
    }

    #[test]
    fn one_name_or_the_current_target() {
        let p = send_targets(
            "iqn.2026-11.org.oxtarget:B",
            SessionType::Discovery,
            None,
            &targets(),
        );
        assert_eq!(p.0.len(), 2);
        let p = send_targets(
            "iqn.2026-11.org.oxtarget:nope",
            SessionType::Discovery,
            None,
            &targets(),
        );
        assert!(p.is_empty());
        let cur = Some("iqn.2026-11.org.oxtarget:a");
        let p = send_targets("", SessionType::Normal, cur, &targets());
        assert_eq!(p.0.len(), 3);
        let p = send_targets(
            "iqn.2026-11.org.oxtarget:b",
            SessionType::Normal,
            cur,
            &targets(),
        );
        assert_eq!(p.get("TargetName"), Some("iqn.2026-11.org.oxtarget:b"));
        assert_eq!(p.0.len(), 2);
        assert_eq!(
            send_targets("All", SessionType::Normal, cur, &targets()).get("SendTargets"),
            Some("Reject")
        );
        assert_eq!(
            send_targets("", SessionType::Normal, None, &targets()).get("SendTargets"),
            Some("Reject")
        );
        assert_eq!(
            send_targets("", SessionType::Discovery, None, &targets()).get("SendTargets"),
            Some("Reject")
        );
    }
}
