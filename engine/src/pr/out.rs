//! PERSISTENT RESERVE OUT (SPC-4 6.17 and 5.13): REGISTER, REGISTER AND IGNORE
//! EXISTING KEY, RESERVE, RELEASE, CLEAR, PREEMPT, PREEMPT AND ABORT, REGISTER
//! AND MOVE. The parameter list is parsed once by [`parse_prout_params`] (a pure
//! function, fuzzed); each service action then checks and changes the LUN's
//! [`PrState`] under its lock, or changes nothing and fails.

use std::sync::Arc;

use crate::exec::{CmdCtx, Exec, ExecResult};
use crate::nexus::{Nexus, NexusKey, Protocol};
use crate::opcodes::OpInfo;
use crate::sense::{asc, Asc, CmdError, Sense, SenseKey};

use super::{PrState, PrType, Registration, Reservation};

pub const SA_REGISTER: u8 = 0x00;
pub const SA_RESERVE: u8 = 0x01;
pub const SA_RELEASE: u8 = 0x02;
pub const SA_CLEAR: u8 = 0x03;
pub const SA_PREEMPT: u8 = 0x04;
pub const SA_PREEMPT_AND_ABORT: u8 = 0x05;
pub const SA_REGISTER_AND_IGNORE: u8 = 0x06;
pub const SA_REGISTER_AND_MOVE: u8 = 0x07;

/// The basic parameter list is exactly this long (6.17.3).
pub const BASIC_LEN: usize = 24;

/// A parsed PERSISTENT RESERVE OUT parameter list (6.17.3 basic, 6.17.4 REGISTER
/// AND MOVE).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProutParams {
    /// RESERVATION KEY.
    pub key: u64,
    /// SERVICE ACTION RESERVATION KEY.
    pub sa_key: u64,
    pub all_tg_pt: bool,
    pub aptpl: bool,
    /// REGISTER AND MOVE: UNREG.
    pub unreg: bool,
    /// REGISTER AND MOVE: RELATIVE TARGET PORT IDENTIFIER.
    pub rel_port: u16,
    /// REGISTER AND MOVE: the TransportID of the destination.
    pub transport_id: Vec<u8>,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

fn plle() -> Sense {
    Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR)
}

/// Checks the shape of a TransportID (SPC-4 7.6.4): the iSCSI one carries its own
/// length, the others are 24 bytes.
fn check_transport_id(tid: &[u8], at: u16) -> Result<(), Sense> {
    if tid.len() < 4 {
        return Err(Sense::invalid_param_field(at, None));
    }
    if tid[0] & 0x0f == Protocol::Iscsi as u8 {
        let addl = usize::from(be16(tid, 2));
        if addl < 4 || addl & 3 != 0 || addl > tid.len() - 4 {
            return Err(Sense::invalid_param_field(at.saturating_add(2), None));
        }
    } else if tid.len() != 24 {
        return Err(Sense::invalid_param_field(at, None));
    }
    Ok(())
}

/// Parses the parameter list `data` (PARAMETER LIST LENGTH bytes) of service
/// action `sa`. Never panics.
pub fn parse_prout_params(sa: u8, data: &[u8]) -> Result<ProutParams, Sense> {
    if sa == SA_REGISTER_AND_MOVE {
        if data.len() < BASIC_LEN {
            return Err(plle());
        }
        let tid_len = usize::try_from(be32(data, 20)).map_err(|_| plle())?;
        let end = BASIC_LEN.checked_add(tid_len).ok_or_else(plle)?;
        let Some(tid) = data.get(BASIC_LEN..end) else {
            return Err(plle());
        };
        check_transport_id(tid, 24)?;
        return Ok(ProutParams {
            key: be64(data, 0),
            sa_key: be64(data, 8),
            all_tg_pt: false,
            aptpl: data[17] & 0x01 != 0,
            unreg: data[17] & 0x02 != 0,
            rel_port: be16(data, 18),
            transport_id: tid.to_vec(),
        });
    }
    // SPEC_I_PT is not supported (REPORT CAPABILITIES SIP_C = 0).
    if data.get(20).is_some_and(|b| b & 0x08 != 0) {
        return Err(Sense::invalid_param_field(20, Some(3)));
    }
    if data.len() != BASIC_LEN {
        return Err(plle());
    }
    Ok(ProutParams {
        key: be64(data, 0),
        sa_key: be64(data, 8),
        all_tg_pt: data[20] & 0x04 != 0,
        aptpl: data[20] & 0x01 != 0,
        unreg: false,
        rel_port: 0,
        transport_id: Vec::new(),
    })
}

/// The initiator port name a TransportID stands for, in the form the iSCSI
/// transport gives `NexusKey::initiator` (`name` or `name,i,0x<isid>`).
pub(crate) fn tid_initiator(tid: &[u8]) -> Option<Arc<str>> {
    if tid.first()? & 0x0f != Protocol::Iscsi as u8 || tid.len() < 4 {
        return None;
    }
    let addl = usize::from(be16(tid, 2));
    let name = tid.get(4..4usize.checked_add(addl)?)?;
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    let s = std::str::from_utf8(&name[..end]).ok()?;
    (!s.is_empty()).then(|| Arc::from(s))
}

/// What a service action does beyond the state: unit attentions to queue and
/// I_T nexuses whose commands to abort, after the lock is dropped.
#[derive(Default)]
struct Effects {
    /// Unit attentions for every I_T nexus of a registration.
    uas: Vec<(Registration, Asc)>,
    /// Registrations whose I_T nexuses lose their commands (PREEMPT AND ABORT).
    abort: Vec<Registration>,
}

impl Effects {
    fn ua(&mut self, r: &Registration, a: Asc) {
        self.uas.push((r.clone(), a));
    }
}

fn conflict<T>() -> Result<T, CmdError> {
    Err(CmdError::ReservationConflict)
}

/// The index of the issuing nexus's registration; RESERVATION CONFLICT if it has
/// none or its key is not `key`.
fn own_reg(st: &PrState, n: &Nexus, key: u64) -> Result<usize, CmdError> {
    match st.reg_index(n) {
        Some(i) if st.regs[i].key == key => Ok(i),
        _ => conflict(),
    }
}

/// REGISTER and REGISTER AND IGNORE EXISTING KEY (5.13.7). `Ok(changed)`.
fn register(
    st: &mut PrState,
    n: &Nexus,
    p: &ProutParams,
    ignore: bool,
    fx: &mut Effects,
) -> Result<bool, CmdError> {
    match st.reg_index(n) {
        None => {
            if !ignore && p.key != 0 {
                return conflict();
            }
            if p.sa_key == 0 {
                return Ok(false);
            }
            let id = st.new_id();
            st.regs.push(Registration {
                id,
                key: p.sa_key,
                initiator: Some(n.key.initiator.clone()),
                rel_port: n.key.relative_port,
                all_tg_pt: p.all_tg_pt,
                transport_id: n.transport_id.clone(),
            });
        }
        Some(i) => {
            if !ignore && st.regs[i].key != p.key {
                return conflict();
            }
            if p.sa_key == 0 {
                if let Some(t) = st.remove_reg(i) {
                    if t.registrants_only() {
                        for r in &st.regs {
                            fx.ua(r, asc::RESERVATIONS_RELEASED);
                        }
                    }
                }
            } else {
                st.regs[i].key = p.sa_key;
            }
        }
    }
    st.aptpl = p.aptpl;
    st.bump_generation();
    Ok(true)
}

/// RESERVE (5.13.9).
fn reserve(st: &mut PrState, n: &Nexus, p: &ProutParams, t: PrType) -> Result<bool, CmdError> {
    let i = own_reg(st, n, p.key)?;
    match st.res {
        None => {
            st.res = Some(Reservation {
                ptype: t,
                holder: st.regs[i].id,
            });
            Ok(true)
        }
        Some(res) if res.ptype == t && st.is_holder(&st.regs[i]) => Ok(false),
        Some(_) => conflict(),
    }
}

/// RELEASE (5.13.11.2).
fn release(
    st: &mut PrState,
    n: &Nexus,
    p: &ProutParams,
    t: PrType,
    fx: &mut Effects,
) -> Result<bool, CmdError> {
    let i = own_reg(st, n, p.key)?;
    let Some(res) = st.res else { return Ok(false) };
    if !st.is_holder(&st.regs[i]) {
        return Ok(false);
    }
    if res.ptype != t {
        return Err(Sense::illegal(asc::INVALID_RELEASE_OF_PERSISTENT_RESERVATION).into());
    }
    st.res = None;
    if t.registrants_only() || t.all_registrants() {
        let me = st.regs[i].id;
        for r in st.regs.iter().filter(|r| r.id != me) {
            fx.ua(r, asc::RESERVATIONS_RELEASED);
        }
    }
    Ok(true)
}

/// CLEAR (5.13.11.3).
fn clear(st: &mut PrState, n: &Nexus, p: &ProutParams, fx: &mut Effects) -> Result<bool, CmdError> {
    let i = own_reg(st, n, p.key)?;
    let me = st.regs[i].id;
    for r in st.regs.iter().filter(|r| r.id != me) {
        fx.ua(r, asc::RESERVATIONS_PREEMPTED);
    }
    st.regs.clear();
    st.res = None;
    st.bump_generation();
    Ok(true)
}

/// PREEMPT and PREEMPT AND ABORT (5.13.11.4).
fn preempt(
    st: &mut PrState,
    n: &Nexus,
    p: &ProutParams,
    t: PrType,
    abort: bool,
    fx: &mut Effects,
) -> Result<bool, CmdError> {
    let i = own_reg(st, n, p.key)?;
    let me = st.regs[i].id;
    let old = st.res;
    let takes_reservation = match old {
        None => false,
        Some(res) if res.ptype.all_registrants() => p.sa_key == 0,
        Some(res) => st
            .regs
            .iter()
            .any(|r| r.id == res.holder && r.key == p.sa_key),
    };
    if !takes_reservation {
        if p.sa_key == 0 {
            return Err(Sense::invalid_param_field(8, None).into());
        }
        if !st.regs.iter().any(|r| r.key == p.sa_key) {
            return conflict();
        }
    }
    let all_others = takes_reservation && old.is_some_and(|r| r.ptype.all_registrants());
    let (gone, kept): (Vec<Registration>, Vec<Registration>) = std::mem::take(&mut st.regs)
        .into_iter()
        .partition(|r| r.id != me && (all_others || r.key == p.sa_key));
    st.regs = kept;
    for r in &gone {
        fx.ua(r, asc::REGISTRATIONS_PREEMPTED);
        if abort {
            fx.abort.push(r.clone());
        }
    }
    if takes_reservation {
        st.res = Some(Reservation {
            ptype: t,
            holder: me,
        });
        if old.is_some_and(|o| o.ptype != t) {
            for r in st.regs.iter().filter(|r| r.id != me) {
                fx.ua(r, asc::RESERVATIONS_RELEASED);
            }
        }
    } else if let Some(res) = old {
        // Registrations of a non-holder key went; an all-registrants
        // reservation goes with its last registrant.
        if res.ptype.all_registrants() && st.regs.is_empty() {
            st.res = None;
        }
    }
    st.bump_generation();
    Ok(true)
}

/// REGISTER AND MOVE (5.13.8).
fn register_and_move(st: &mut PrState, n: &Nexus, p: &ProutParams) -> Result<bool, CmdError> {
    let i = own_reg(st, n, p.key)?;
    let me = st.regs[i].id;
    let res = match st.res {
        Some(res) if !res.ptype.all_registrants() && res.holder == me => res,
        _ => return conflict(),
    };
    if p.sa_key == 0 {
        return Err(Sense::invalid_param_field(8, None).into());
    }
    if p.rel_port == 0 {
        return Err(Sense::invalid_param_field(18, None).into());
    }
    let dest = tid_initiator(&p.transport_id);
    let dest_name: &str = dest.as_deref().unwrap_or("");
    let same_initiator = dest.as_deref() == Some(&*n.key.initiator)
        || (dest.is_none() && p.transport_id == n.transport_id);
    if same_initiator && p.rel_port == n.key.relative_port {
        return Err(Sense::invalid_param_field(24, None).into());
    }
    let existing = st
        .regs
        .iter()
        .position(|r| r.matches(dest_name, p.rel_port, &p.transport_id));
    let dest_id = match existing {
        Some(j) => {
            st.regs[j].key = p.sa_key;
            st.regs[j].id
        }
        None => {
            let id = st.new_id();
            st.regs.push(Registration {
                id,
                key: p.sa_key,
                initiator: dest,
                rel_port: p.rel_port,
                all_tg_pt: false,
                transport_id: p.transport_id.clone(),
            });
            id
        }
    };
    st.res = Some(Reservation {
        ptype: res.ptype,
        holder: dest_id,
    });
    if p.unreg {
        st.regs.retain(|r| r.id != me);
    }
    st.aptpl = p.aptpl;
    st.bump_generation();
    Ok(true)
}

fn prout(ctx: &mut CmdCtx<'_>) -> ExecResult {
    let cdb = ctx.cdb;
    let sa = cdb[1] & 0x1f;
    let scope = cdb[2] >> 4;
    let uses_type = matches!(
        sa,
        SA_RESERVE | SA_RELEASE | SA_PREEMPT | SA_PREEMPT_AND_ABORT
    );
    if (uses_type || sa == SA_REGISTER_AND_MOVE) && scope != 0 {
        return Err(Sense::invalid_cdb_field(2, Some(7)).into());
    }
    let ptype = PrType::from_code(cdb[2] & 0x0f);
    if uses_type && ptype.is_none() {
        return Err(Sense::invalid_cdb_field(2, Some(3)).into());
    }
    let plen = usize::try_from(be32(cdb, 5)).unwrap_or(usize::MAX);
    let data = ctx.data_out(plen);
    if data.len() < plen {
        return Err(plle().into());
    }
    let p = parse_prout_params(sa, &data)?;
    let persists = matches!(
        sa,
        SA_REGISTER | SA_REGISTER_AND_IGNORE | SA_REGISTER_AND_MOVE
    );
    if persists && p.aptpl && ctx.lun.config.state_dir.is_none() {
        let at = if sa == SA_REGISTER_AND_MOVE { 17 } else { 20 };
        return Err(Sense::invalid_param_field(at, Some(0)).into());
    }
    let mut fx = Effects::default();
    {
        let mut st = super::lock(ctx.lun);
        let before = st.clone();
        let n = ctx.nexus;
        let t = ptype.unwrap_or(PrType::WriteExclusive);
        let changed = match sa {
            SA_REGISTER => register(&mut st, n, &p, false, &mut fx),
            SA_REGISTER_AND_IGNORE => register(&mut st, n, &p, true, &mut fx),
            SA_RESERVE => reserve(&mut st, n, &p, t),
            SA_RELEASE => release(&mut st, n, &p, t, &mut fx),
            SA_CLEAR => clear(&mut st, n, &p, &mut fx),
            SA_PREEMPT => preempt(&mut st, n, &p, t, false, &mut fx),
            SA_PREEMPT_AND_ABORT => preempt(&mut st, n, &p, t, true, &mut fx),
            SA_REGISTER_AND_MOVE => register_and_move(&mut st, n, &p),
            _ => Err(Sense::invalid_cdb_field(1, Some(4)).into()),
        }?;
        if changed && (st.aptpl || before.aptpl) {
            if let Err(_e) = super::aptpl::store(ctx.lun, &st) {
                *st = before;
                return Err(
                    Sense::new(SenseKey::HardwareError, asc::INTERNAL_TARGET_FAILURE).into(),
                );
            }
        }
    }
    let me = &ctx.nexus.key;
    for (r, a) in fx.uas {
        let pred = |k: &NexusKey| k != me && r.matches(&k.initiator, k.relative_port, &[]);
        ctx.lun.ua.establish_matching(a, pred);
    }
    if !fx.abort.is_empty() {
        let gone = fx.abort;
        let pred = |k: &NexusKey| {
            gone.iter()
                .any(|r| r.matches(&k.initiator, k.relative_port, &[]))
        };
        crate::taskset::abort_nexuses(&ctx.lun.tasks, pred, ctx.nexus.id);
    }
    Ok(Exec::Good(u32::try_from(plen).unwrap_or(u32::MAX)))
}

const fn prout_op(sa: u8, name: &'static str) -> OpInfo {
    OpInfo {
        opcode: 0x5f,
        service_action: Some(sa as u16),
        name,
        usage: match sa {
            SA_REGISTER => &[0x5f, 0x00, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x07],
            SA_RESERVE => &[0x5f, 0x01, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x07],
            SA_RELEASE => &[0x5f, 0x02, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x07],
            SA_CLEAR => &[0x5f, 0x03, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x07],
            SA_PREEMPT => &[0x5f, 0x04, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x07],
            SA_PREEMPT_AND_ABORT => &[0x5f, 0x05, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x07],
            SA_REGISTER_AND_IGNORE => &[0x5f, 0x06, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x07],
            _ => &[0x5f, 0x07, 0xf0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x07],
        },
        handler: prout,
        flags: 0,
    }
}

pub(crate) const REGISTER: OpInfo = prout_op(SA_REGISTER, "PERSISTENT RESERVE OUT/REGISTER");
pub(crate) const RESERVE: OpInfo = prout_op(SA_RESERVE, "PERSISTENT RESERVE OUT/RESERVE");
pub(crate) const RELEASE: OpInfo = prout_op(SA_RELEASE, "PERSISTENT RESERVE OUT/RELEASE");
pub(crate) const CLEAR: OpInfo = prout_op(SA_CLEAR, "PERSISTENT RESERVE OUT/CLEAR");
pub(crate) const PREEMPT: OpInfo = prout_op(SA_PREEMPT, "PERSISTENT RESERVE OUT/PREEMPT");
pub(crate) const PREEMPT_AND_ABORT: OpInfo = prout_op(
    SA_PREEMPT_AND_ABORT,
    "PERSISTENT RESERVE OUT/PREEMPT AND ABORT",
);
pub(crate) const REGISTER_AND_IGNORE: OpInfo = prout_op(
    SA_REGISTER_AND_IGNORE,
    "PERSISTENT RESERVE OUT/REGISTER AND IGNORE EXISTING KEY",
);
pub(crate) const REGISTER_AND_MOVE: OpInfo = prout_op(
    SA_REGISTER_AND_MOVE,
    "PERSISTENT RESERVE OUT/REGISTER AND MOVE",
);

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(key: u64, sa_key: u64, flags: u8) -> Vec<u8> {
        let mut d = vec![0u8; 24];
        d[0..8].copy_from_slice(&key.to_be_bytes());
        d[8..16].copy_from_slice(&sa_key.to_be_bytes());
        d[20] = flags;
        d
    }

    #[test]
    fn basic_list_parses_keys_and_flags() {
        let p = parse_prout_params(SA_REGISTER, &basic(1, 2, 0x05)).unwrap();
        assert_eq!((p.key, p.sa_key, p.all_tg_pt, p.aptpl), (1, 2, true, true));
    }

    #[test]
    fn basic_list_must_be_24_bytes() {
        for len in [0usize, 8, 23, 25, 32] {
            let mut d = basic(1, 2, 0);
            d.resize(len, 0);
            let e = parse_prout_params(SA_RESERVE, &d).unwrap_err();
            assert_eq!(e.asc, asc::PARAMETER_LIST_LENGTH_ERROR, "len {len}");
        }
    }

    #[test]
    fn spec_i_pt_is_refused() {
        let e = parse_prout_params(SA_REGISTER, &basic(0, 2, 0x08)).unwrap_err();
        assert_eq!(e.asc, asc::INVALID_FIELD_IN_PARAMETER_LIST);
        assert_eq!(e.field.map(|f| (f.byte, f.bit)), Some((20, Some(3))));
    }

    #[test]
    fn register_and_move_list() {
        let tid = crate::nexus::iscsi_transport_id("iqn.x:dest,i,0x1");
        let mut d = vec![0u8; 24];
        d[0..8].copy_from_slice(&7u64.to_be_bytes());
        d[8..16].copy_from_slice(&9u64.to_be_bytes());
        d[17] = 0x03;
        d[18..20].copy_from_slice(&2u16.to_be_bytes());
        d[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
        d.extend_from_slice(&tid);
        let p = parse_prout_params(SA_REGISTER_AND_MOVE, &d).unwrap();
        assert_eq!(
            (p.key, p.sa_key, p.unreg, p.aptpl, p.rel_port),
            (7, 9, true, true, 2)
        );
        assert_eq!(p.transport_id, tid);
        assert_eq!(
            tid_initiator(&p.transport_id).as_deref(),
            Some("iqn.x:dest,i,0x1")
        );
        // TransportID longer than the list.
        d[20..24].copy_from_slice(&1000u32.to_be_bytes());
        let e = parse_prout_params(SA_REGISTER_AND_MOVE, &d).unwrap_err();
        assert_eq!(e.asc, asc::PARAMETER_LIST_LENGTH_ERROR);
        // Malformed iSCSI TransportID.
        d[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
        d[26] = 0xff;
        let e = parse_prout_params(SA_REGISTER_AND_MOVE, &d).unwrap_err();
        assert_eq!(e.asc, asc::INVALID_FIELD_IN_PARAMETER_LIST);
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics(sa in 0u8..32, data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)) {
            let _ = parse_prout_params(sa, &data);
            let _ = tid_initiator(&data);
        }
    }
}
