//! SPC-2 RESERVE(6)/(10) and RELEASE(6)/(10): a reservation of the whole logical
//! unit held by one I_T nexus, with the exceptions of SPC-4 5.13.3 when
//! persistent reservations exist (CRH = 1).

use crate::exec::{CmdCtx, Exec, ExecResult};
use crate::opcodes::OpInfo;
use crate::sense::{CmdError, Sense};

/// Third-party reservations (3RDPTY, LONGID) are not supported.
fn check_third_party(ctx: &CmdCtx<'_>) -> Result<(), CmdError> {
    if ctx.cdb.len() >= 10 && matches!(ctx.cdb[0], 0x56 | 0x57) {
        let b1 = ctx.cdb[1];
        if b1 & 0x10 != 0 {
            return Err(Sense::invalid_cdb_field(1, Some(4)).into());
        }
        if b1 & 0x02 != 0 {
            return Err(Sense::invalid_cdb_field(1, Some(1)).into());
        }
    }
    Ok(())
}

/// With persistent registrations present (SPC-4 5.13.3, CRH = 1), RESERVE and
/// RELEASE complete with GOOD and change nothing when they come from the
/// persistent reservation holder, or from a registered I_T nexus while a
/// registrants-only or all-registrants reservation exists; otherwise they
/// conflict (SPC-2 5.5.1). `None`: no persistent state, SPC-2 rules apply.
fn crh(st: &super::PrState, ctx: &CmdCtx<'_>) -> Option<ExecResult> {
    if !st.has_pr() {
        return None;
    }
    let shared = st
        .res
        .is_some_and(|r| r.ptype.registrants_only() || r.ptype.all_registrants());
    Some(match st.reg_of(ctx.nexus) {
        Some(r) if shared || st.is_holder(r) => Ok(Exec::Good(0)),
        _ => Err(CmdError::ReservationConflict),
    })
}

fn reserve(ctx: &mut CmdCtx<'_>) -> ExecResult {
    check_third_party(ctx)?;
    let mut st = super::lock(ctx.lun);
    if let Some(r) = crh(&st, ctx) {
        return r;
    }
    match &st.spc2 {
        Some(h) if *h != ctx.nexus.key => Err(CmdError::ReservationConflict),
        _ => {
            st.spc2 = Some(ctx.nexus.key.clone());
            Ok(Exec::Good(0))
        }
    }
}

fn release(ctx: &mut CmdCtx<'_>) -> ExecResult {
    check_third_party(ctx)?;
    let mut st = super::lock(ctx.lun);
    if let Some(r) = crh(&st, ctx) {
        return r;
    }
    // RELEASE from another I_T nexus, or with no reservation: GOOD, no effect.
    if st.spc2.as_ref() == Some(&ctx.nexus.key) {
        st.spc2 = None;
    }
    Ok(Exec::Good(0))
}

pub(crate) const RESERVE6: OpInfo = OpInfo {
    opcode: 0x16,
    service_action: None,
    name: "RESERVE(6)",
    usage: &[0x16, 0, 0, 0, 0, 0x07],
    handler: reserve,
    flags: 0,
};

pub(crate) const RELEASE6: OpInfo = OpInfo {
    opcode: 0x17,
    service_action: None,
    name: "RELEASE(6)",
    usage: &[0x17, 0, 0, 0, 0, 0x07],
    handler: release,
    flags: 0,
};

pub(crate) const RESERVE10: OpInfo = OpInfo {
    opcode: 0x56,
    service_action: None,
    name: "RESERVE(10)",
    usage: &[0x56, 0x12, 0, 0, 0, 0, 0, 0, 0, 0x07],
    handler: reserve,
    flags: 0,
};

pub(crate) const RELEASE10: OpInfo = OpInfo {
    opcode: 0x57,
    service_action: None,
    name: "RELEASE(10)",
    usage: &[0x57, 0x12, 0, 0, 0, 0, 0, 0, 0, 0x07],
    handler: release,
    flags: 0,
};
