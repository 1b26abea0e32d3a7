//! PERSISTENT RESERVE IN (SPC-4 6.16): READ KEYS, READ RESERVATION, REPORT
//! CAPABILITIES, READ FULL STATUS. The ADDITIONAL LENGTH fields always describe
//! the whole answer; the data is then cut to the allocation length.

use crate::exec::{CmdCtx, Exec, ExecResult};
use crate::lun::Lun;
use crate::opcodes::OpInfo;

use super::PrState;

fn alloc_len(cdb: &[u8]) -> usize {
    usize::from(u16::from_be_bytes([cdb[7], cdb[8]]))
}

fn header(generation: u32, additional: usize) -> Vec<u8> {
    let mut d = Vec::with_capacity(8usize.saturating_add(additional));
    d.extend_from_slice(&generation.to_be_bytes());
    d.extend_from_slice(&u32::try_from(additional).unwrap_or(u32::MAX).to_be_bytes());
    d
}

/// READ KEYS data (6.16.2).
pub(crate) fn read_keys_data(st: &PrState) -> Vec<u8> {
    let mut d = header(st.generation, st.regs.len().saturating_mul(8));
    for r in &st.regs {
        d.extend_from_slice(&r.key.to_be_bytes());
    }
    d
}

/// READ RESERVATION data (6.16.3).
pub(crate) fn read_reservation_data(st: &PrState) -> Vec<u8> {
    let Some(res) = st.res else {
        return header(st.generation, 0);
    };
    let mut d = header(st.generation, 16);
    // An all-registrants reservation reports key 0 (5.13.10).
    let key = if res.ptype.all_registrants() {
        0
    } else {
        st.regs
            .iter()
            .find(|r| r.id == res.holder)
            .map_or(0, |r| r.key)
    };
    d.extend_from_slice(&key.to_be_bytes());
    d.extend_from_slice(&[0; 4]); // obsolete
    d.push(0);
    d.push(res.ptype.code()); // scope LU_SCOPE (0) | type
    d.extend_from_slice(&[0; 2]); // obsolete
    d
}

/// REPORT CAPABILITIES data (6.16.4).
pub(crate) fn report_capabilities_data(lun: &Lun, st: &PrState) -> Vec<u8> {
    let mut d = vec![0u8; 8];
    d[1] = 8;
    // CRH 1, SIP_C 0, ATP_C 1, PTPL_C if there is somewhere to persist.
    d[2] = 0x10 | 0x04 | u8::from(lun.config.state_dir.is_some());
    // TMV 1, ALLOW COMMANDS 011b, PTPL_A.
    d[3] = 0x80 | (0b011 << 4) | u8::from(st.aptpl);
    // WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX | EX_AC_AR.
    d[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02;
    d[5] = 0x01;
    d
}

/// READ FULL STATUS data (6.16.5).
pub(crate) fn read_full_status_data(st: &PrState) -> Vec<u8> {
    let mut body = Vec::new();
    for r in &st.regs {
        let holder = st.is_holder(r);
        body.extend_from_slice(&r.key.to_be_bytes());
        body.extend_from_slice(&[0; 4]);
        body.push(u8::from(r.all_tg_pt) << 1 | u8::from(holder));
        body.push(match (holder, st.res) {
            (true, Some(res)) => res.ptype.code(),
            _ => 0,
        });
        body.extend_from_slice(&[0; 4]);
        body.extend_from_slice(&r.rel_port.to_be_bytes());
        let tid_len = u32::try_from(r.transport_id.len()).unwrap_or(0);
        body.extend_from_slice(&tid_len.to_be_bytes());
        if tid_len > 0 {
            body.extend_from_slice(&r.transport_id);
        }
    }
    let mut d = header(st.generation, body.len());
    d.extend_from_slice(&body);
    d
}

fn run(ctx: &mut CmdCtx<'_>, f: impl FnOnce(&Lun, &PrState) -> Vec<u8>) -> ExecResult {
    let alloc = alloc_len(ctx.cdb);
    let mut d = {
        let st = super::lock(ctx.lun);
        f(ctx.lun, &st)
    };
    d.truncate(alloc);
    Ok(Exec::Data(d))
}

fn read_keys(ctx: &mut CmdCtx<'_>) -> ExecResult {
    run(ctx, |_, st| read_keys_data(st))
}

fn read_reservation(ctx: &mut CmdCtx<'_>) -> ExecResult {
    run(ctx, |_, st| read_reservation_data(st))
}

fn report_capabilities(ctx: &mut CmdCtx<'_>) -> ExecResult {
    run(ctx, report_capabilities_data)
}

fn read_full_status(ctx: &mut CmdCtx<'_>) -> ExecResult {
    run(ctx, |_, st| read_full_status_data(st))
}

const fn prin(sa: u8, name: &'static str, handler: crate::exec::Handler) -> OpInfo {
    OpInfo {
        opcode: 0x5e,
        service_action: Some(sa as u16),
        name,
        usage: match sa {
            0 => &[0x5e, 0x00, 0, 0, 0, 0, 0, 0xff, 0xff, 0x07],
            1 => &[0x5e, 0x01, 0, 0, 0, 0, 0, 0xff, 0xff, 0x07],
            2 => &[0x5e, 0x02, 0, 0, 0, 0, 0, 0xff, 0xff, 0x07],
            _ => &[0x5e, 0x03, 0, 0, 0, 0, 0, 0xff, 0xff, 0x07],
        },
        handler,
        flags: 0,
    }
}

pub(crate) const READ_KEYS: OpInfo = prin(0, "PERSISTENT RESERVE IN/READ KEYS", read_keys);
pub(crate) const READ_RESERVATION: OpInfo = prin(
    1,
    "PERSISTENT RESERVE IN/READ RESERVATION",
    read_reservation,
);
pub(crate) const REPORT_CAPABILITIES: OpInfo = prin(
    2,
    "PERSISTENT RESERVE IN/REPORT CAPABILITIES",
    report_capabilities,
);
pub(crate) const READ_FULL_STATUS: OpInfo = prin(
    3,
    "PERSISTENT RESERVE IN/READ FULL STATUS",
    read_full_status,
);
