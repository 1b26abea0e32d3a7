//! Persist through power loss (APTPL): while the last valid APTPL bit received was
//! one, every change to the registrations and the reservation is written to the
//! LUN's state directory (write a temporary file, fsync, rename, fsync the
//! directory), and [`load_aptpl`] restores it when the daemon creates the LUN.
//!
//! The file is small, line-oriented text, versioned, and ends with an `end` line so
//! that a truncated file is detected:
//!
//! ```text
//! oxtarget-pr 1
//! generation 7
//! reg <key hex> <all_tg_pt 0|1> <relative port> <initiator hex|-> <TransportID hex|->
//! res <type code> <index of the holder's reg line>
//! end
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::lun::Lun;

use super::{PrState, PrType, Registration, Reservation};

const MAGIC: &str = "oxtarget-pr 1";
/// Bounds that a sane file stays within; beyond them it is corrupt.
const MAX_REGS: usize = 65536;
const MAX_FIELD: usize = 4096;

/// Why persistent reservation state could not be saved or loaded.
#[derive(Debug, thiserror::Error)]
pub enum PrError {
    #[error("persistent reservations of LUN {lun}: {path}: {source}")]
    Io {
        lun: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("persistent reservations of LUN {lun}: {path} line {line}: {reason}")]
    Corrupt {
        lun: String,
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

/// The state file of `lun`, named by its UUID (its stable identity).
pub fn state_path(lun: &Lun) -> Option<PathBuf> {
    let dir = lun.config.state_dir.as_ref()?;
    let id: String = lun.config.uuid.iter().map(|b| format!("{b:02x}")).collect();
    Some(dir.join(format!("pr-{id}.state")))
}

fn hex(b: &[u8]) -> String {
    if b.is_empty() {
        return "-".into();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s == "-" {
        return Some(Vec::new());
    }
    if s.len() & 1 != 0 || s.len() > MAX_FIELD * 2 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The file contents for `st`.
pub fn encode(st: &PrState) -> String {
    let mut s = format!("{MAGIC}\ngeneration {}\n", st.generation);
    for r in &st.regs {
        let init = r.initiator.as_deref().map(str::as_bytes).unwrap_or(&[]);
        s.push_str(&format!(
            "reg {:016x} {} {} {} {}\n",
            r.key,
            u8::from(r.all_tg_pt),
            r.rel_port,
            hex(init),
            hex(&r.transport_id)
        ));
    }
    if let Some(res) = st.res {
        let idx = st.regs.iter().position(|r| r.id == res.holder).unwrap_or(0);
        s.push_str(&format!("res {} {}\n", res.ptype.code(), idx));
    }
    s.push_str("end\n");
    s
}

/// Parses file contents; `Err((line, reason))` if they are not a valid state.
pub fn decode(text: &str) -> Result<PrState, (usize, String)> {
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    let bad = |n: usize, r: &str| Err((n, r.to_string()));
    match lines.next() {
        Some((_, l)) if l == MAGIC => {}
        _ => return bad(1, "not an oxtarget persistent reservation file (version 1)"),
    }
    let mut st = PrState {
        aptpl: true,
        ..PrState::default()
    };
    let mut res_line: Option<(usize, u8, usize)> = None;
    let mut ended = false;
    for (n, line) in lines.by_ref() {
        let f: Vec<&str> = line.split(' ').collect();
        match f.as_slice() {
            ["generation", g] => match g.parse() {
                Ok(g) => st.generation = g,
                Err(_) => return bad(n, "bad generation"),
            },
            ["reg", key, atp, port, init, tid] => {
                if st.regs.len() >= MAX_REGS {
                    return bad(n, "too many registrations");
                }
                let Ok(key) = u64::from_str_radix(key, 16) else {
                    return bad(n, "bad key");
                };
                let all_tg_pt = match *atp {
                    "0" => false,
                    "1" => true,
                    _ => return bad(n, "bad ALL_TG_PT"),
                };
                let Ok(rel_port) = port.parse::<u16>() else {
                    return bad(n, "bad relative port");
                };
                let (Some(init), Some(tid)) = (unhex(init), unhex(tid)) else {
                    return bad(n, "bad hex field");
                };
                let initiator = if init.is_empty() {
                    None
                } else {
                    match String::from_utf8(init) {
                        Ok(s) => Some(Arc::<str>::from(s)),
                        Err(_) => return bad(n, "initiator is not UTF-8"),
                    }
                };
                if initiator.is_none() && tid.is_empty() {
                    return bad(n, "registration names no initiator");
                }
                if key == 0 {
                    return bad(n, "registration with key 0");
                }
                let id = st.new_id();
                st.regs.push(Registration {
                    id,
                    key,
                    initiator,
                    rel_port,
                    all_tg_pt,
                    transport_id: tid,
                });
            }
            ["res", t, idx] => {
                let (Ok(t), Ok(idx)) = (t.parse::<u8>(), idx.parse::<usize>()) else {
                    return bad(n, "bad reservation");
                };
                res_line = Some((n, t, idx));
            }
            ["end"] => {
                ended = true;
                break;
            }
            _ => return bad(n, "unknown line"),
        }
    }
    if !ended {
        return bad(0, "truncated (no end line)");
    }
    if let Some((n, l)) = lines.find(|(_, l)| !l.is_empty()) {
        let _ = l;
        return bad(n, "data after end");
    }
    if let Some((n, t, idx)) = res_line {
        let Some(ptype) = PrType::from_code(t) else {
            return bad(n, "bad reservation type");
        };
        let Some(holder) = st.regs.get(idx).map(|r| r.id) else {
            return bad(n, "reservation holder is not registered");
        };
        st.res = Some(Reservation { ptype, holder });
    }
    Ok(st)
}

fn io_err<'a>(lun: &'a Lun, path: &Path) -> impl Fn(std::io::Error) -> PrError + 'a {
    let path = path.to_path_buf();
    move |source| PrError::Io {
        lun: lun.config.name.clone(),
        path: path.clone(),
        source,
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Saves `st` if APTPL is active, or removes the saved state if not.
pub(crate) fn store(lun: &Lun, st: &PrState) -> Result<(), PrError> {
    let Some(path) = state_path(lun) else {
        return Ok(());
    };
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let err = io_err(lun, &path);
    if !st.aptpl {
        return match std::fs::remove_file(&path) {
            Ok(()) => sync_dir(&dir).map_err(err),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(err(e)),
        };
    }
    let tmp = path.with_extension("state.tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(encode(st).as_bytes())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &path)?;
        sync_dir(&dir)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}

/// Restores the persistent reservations of `lun` saved with APTPL, if any. The
/// daemon calls it when it creates the LUN, before any command. A missing file
/// is no state; a corrupt one is an error (the state is left empty).
pub fn load_aptpl(lun: &Lun) -> Result<(), PrError> {
    let Some(path) = state_path(lun) else {
        return Ok(());
    };
    let text = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(lun, &path)(e)),
    };
    let corrupt = |line: usize, reason: String| PrError::Corrupt {
        lun: lun.config.name.clone(),
        path: path.clone(),
        line,
        reason,
    };
    let text = String::from_utf8(text).map_err(|_| corrupt(0, "not UTF-8".into()))?;
    let st = decode(&text).map_err(|(l, r)| corrupt(l, r))?;
    *super::lock(lun) = st;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PrState {
        let mut st = PrState {
            aptpl: true,
            generation: 42,
            ..PrState::default()
        };
        for (i, name) in ["iqn.a,i,0x1", "iqn.b,i,0x2"].iter().enumerate() {
            let id = st.new_id();
            st.regs.push(Registration {
                id,
                key: 0x1000 + i as u64,
                initiator: Some(Arc::from(*name)),
                rel_port: 1 + i as u16,
                all_tg_pt: i == 1,
                transport_id: crate::nexus::iscsi_transport_id(name),
            });
        }
        let holder = st.regs[1].id;
        st.res = Some(Reservation {
            ptype: PrType::ExclusiveAccessRegistrantsOnly,
            holder,
        });
        st
    }

    #[test]
    fn encode_decode_round_trip() {
        let st = sample();
        let back = decode(&encode(&st)).unwrap();
        assert_eq!(back.generation, 42);
        assert_eq!(back.regs.len(), 2);
        for (a, b) in st.regs.iter().zip(&back.regs) {
            assert_eq!(
                (
                    a.key,
                    &a.initiator,
                    a.rel_port,
                    a.all_tg_pt,
                    &a.transport_id
                ),
                (
                    b.key,
                    &b.initiator,
                    b.rel_port,
                    b.all_tg_pt,
                    &b.transport_id
                )
            );
        }
        let res = back.res.unwrap();
        assert_eq!(res.ptype, PrType::ExclusiveAccessRegistrantsOnly);
        assert_eq!(res.holder, back.regs[1].id);
        assert!(back.aptpl);
    }

    #[test]
    fn corrupt_files_are_errors() {
        let good = encode(&sample());
        let cases = [
            String::new(),
            "garbage".to_string(),
            good.replace("end\n", ""),
            good.replace("generation 42", "generation x"),
            good.replace("res 6 1", "res 2 1"),
            good.replace("res 6 1", "res 6 9"),
            format!("{good}reg 1 0 1 - -\n"),
            good.replacen("reg ", "reg zz", 1),
        ];
        for c in cases {
            assert!(decode(&c).is_err(), "accepted {c:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(s in ".{0,200}") {
            let _ = decode(&s);
            let _ = decode(&format!("{MAGIC}\n{s}"));
        }
    }
}
