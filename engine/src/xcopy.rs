//! EXTENDED COPY (LID1) and RECEIVE COPY RESULTS (SPC-4 6.4, 6.18): the copy
//! offload VMware VAAI calls XCOPY. This LUN's device server is the copy manager;
//! the copy targets are named by NAA designators and may be any LUN of this daemon
//! (`LunRegistry::by_naa`), so copies run within a LUN and across LUNs.
//!
//! - [`parse_xcopy`] turns the parameter list into an [`XcopyParams`] (pure, never
//!   panics, fuzzed);
//! - `job::resolve` finds the LUNs and checks what needs them;
//! - `job::CopyJob` moves the blocks in chunks of at most 1 MiB through its scratch
//!   buffer: read from the source LUN, write to the destination LUN, repeat;
//! - `results::CopyState` (in `Lun::copy`) keeps, per (I_T nexus, list identifier),
//!   the status and failed segment details RECEIVE COPY RESULTS reports.
//!
//! Errors found before any segment is processed get their own sense key (ILLEGAL
//! REQUEST, DATA PROTECT for a read-only destination); errors while processing a
//! segment (a copy target out of range, a failed read or write) end the command
//! with COPY ABORTED, the segment number in COMMAND-SPECIFIC INFORMATION and, for a
//! capacity error, a segment pointer to the LBA field. A copy target's own sense
//! data is not appended (SPC-4 lets the copy manager place it after the sense
//! data; the engine's `Sense` has no room for it), so such errors carry NO
//! ADDITIONAL SENSE INFORMATION. A segment naming an unknown LUN, or a descriptor
//! the list does not have, is COPY TARGET DEVICE NOT REACHABLE (as LIO answers).
//!
//! Reach: any LUN of the daemon is a copy target, found by its NAA designator,
//! even one the I_T nexus has not mapped (LIO limits copy targets to the LUNs of
//! the initiator's ACL; doing the same here is a check in `job::target`).
//!
//! Atomicity: a copy is not atomic, and need not be (SPC-4 makes no such promise;
//! LIO's and SCST's copies are series of READs and WRITEs). It does declare a
//! shared write range when every destination is the LUN the command came to, so
//! COMPARE AND WRITE on that LUN stays atomic against it; a copy into another LUN
//! cannot hold a range in that LUN's task set and declares none. Reservations of
//! the other LUN are not checked (the copy manager acts on its own behalf).
//!
//! Descriptor-format sense: the engine encodes COMMAND-SPECIFIC INFORMATION as a
//! number, so the segment number lands in its last two bytes there; in fixed
//! format (the default) it is in bytes 10-11 as SPC-4 asks.

mod job;
mod parse;
mod results;

use std::sync::Arc;

use crate::exec::{CmdCtx, Exec, ExecResult};
use crate::lun::Lun;
use crate::nexus::NexusKey;
use crate::opcodes::{flags, OpInfo};
use crate::sense::Sense;

pub use parse::{
    parse_xcopy, ListIdUsage, Segment, TargetDescriptor, XcopyParams, MAX_DESCRIPTOR_LIST_LEN,
    MAX_SEGMENT_DESCRIPTORS, MAX_TARGET_DESCRIPTORS,
};
pub use results::{CopyState, CopyStatus, MAX_COPY_RECORDS, MAX_SEGMENT_LEN};

use results::{FailedDetails, Outcome};

/// EXTENDED COPY's opcode.
pub const EXTENDED_COPY: u8 = 0x83;
/// RECEIVE COPY RESULTS' opcode.
pub const RECEIVE_COPY_RESULTS: u8 = 0x84;
/// RECEIVE COPY RESULTS service actions we serve. RECEIVE DATA (01h) is not one:
/// no segment type we support holds data, and the opcode table answers INVALID
/// FIELD IN CDB for it.
const SA_COPY_STATUS: u8 = 0x00;
const SA_OPERATING_PARAMETERS: u8 = 0x03;
const SA_FAILED_SEGMENT_DETAILS: u8 = 0x04;

/// The most of a parameter list the handler looks at.
const MAX_PARAM_COPY: usize = 64 << 10;
const _: () = assert!(MAX_PARAM_COPY >= parse::HEADER_LEN + MAX_DESCRIPTOR_LIST_LEN as usize);

fn be32(b: &[u8], at: usize) -> u32 {
    match b.get(at..at + 4) {
        Some(s) => u32::from_be_bytes([s[0], s[1], s[2], s[3]]),
        None => 0,
    }
}

fn extended_copy(ctx: &mut CmdCtx<'_>) -> ExecResult {
    let len = be32(ctx.cdb, 10);
    if len == 0 {
        // Not an error (SPC-4 6.4.1): nothing to do.
        return Ok(Exec::Good(0));
    }
    // A valid list is at most the header and MAX_DESCRIPTOR_LIST_LEN bytes (no
    // inline data): copying more of a huge buffer would only waste time.
    let data = ctx.data_out(
        usize::try_from(len)
            .unwrap_or(usize::MAX)
            .min(MAX_PARAM_COPY),
    );
    let params = parse_xcopy(&data)?;
    let record = ctx
        .lun
        .copy
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .begin(&ctx.nexus.key, params.list_id, params.usage)?;
    let plans = match job::resolve(ctx.registry, ctx.lun, &params) {
        Ok(p) => p,
        Err(s) => {
            if let Some(id) = record {
                let sense = s.encode(crate::mode::sense_format(ctx.lun));
                ctx.lun
                    .copy
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .finish(
                        id,
                        Outcome::Failed(FailedDetails {
                            status: 0x02,
                            sense,
                        }),
                    );
            }
            return Err(s.into());
        }
    };
    if plans.is_empty() {
        if let Some(id) = record {
            ctx.lun
                .copy
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .finish(id, Outcome::Good);
        }
        return Ok(Exec::Good(len));
    }
    Ok(Exec::Job(Box::new(job::CopyJob::new(
        ctx.lun.clone(),
        record,
        plans,
        len,
    ))))
}

fn receive_copy_results(ctx: &mut CmdCtx<'_>) -> ExecResult {
    let sa = ctx.cdb[1] & 0x1f;
    let list_id = ctx.cdb[2];
    let alloc = usize::try_from(be32(ctx.cdb, 10)).unwrap_or(usize::MAX);
    let mut d = match sa {
        SA_OPERATING_PARAMETERS => results::operating_parameters(),
        SA_COPY_STATUS => ctx
            .lun
            .copy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .copy_status(&ctx.nexus.key, list_id, alloc)
            // No such copy from this I_T nexus: the LIST IDENTIFIER is invalid.
            .ok_or(Sense::invalid_cdb_field(2, Some(7)))?,
        SA_FAILED_SEGMENT_DETAILS => ctx
            .lun
            .copy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .failed_segment_details(&ctx.nexus.key, list_id, alloc),
        _ => return Err(Sense::invalid_cdb_field(1, Some(4)).into()),
    };
    d.truncate(alloc);
    Ok(Exec::Data(d))
}

/// The Third-party Copy VPD page (SPC-4 7.8.17, page code 8Fh) for a LUN whose
/// copy manager is this module: Supported Commands, Parameter Data, Supported
/// Descriptors and General Copy Operations descriptors. The INQUIRY handler
/// serves it (and lists 8Fh among the supported VPD pages).
pub fn third_party_copy_vpd(lun: &Lun) -> Vec<u8> {
    let _ = lun; // every LUN's copy manager is alike
    let mut page = vec![0x00, 0x8f, 0, 0];
    // Supported Commands (0001h): each opcode with its service actions.
    let cmds: [(u8, &[u8]); 2] = [
        (EXTENDED_COPY, &[0x00]),
        (
            RECEIVE_COPY_RESULTS,
            &[
                SA_COPY_STATUS,
                SA_OPERATING_PARAMETERS,
                SA_FAILED_SEGMENT_DETAILS,
            ],
        ),
    ];
    let mut list = Vec::new();
    for (op, sas) in cmds {
        list.push(op);
        list.push(sas.len() as u8);
        list.extend_from_slice(sas);
    }
    let mut body = vec![list.len() as u8];
    body.extend_from_slice(&list);
    push_descriptor(&mut page, 0x0001, &body);
    // Parameter Data (0004h).
    let mut body = vec![0u8; 28];
    body[4..6].copy_from_slice(&(MAX_TARGET_DESCRIPTORS as u16).to_be_bytes());
    body[6..8].copy_from_slice(&(MAX_SEGMENT_DESCRIPTORS as u16).to_be_bytes());
    body[8..12].copy_from_slice(&MAX_DESCRIPTOR_LIST_LEN.to_be_bytes());
    // MAXIMUM INLINE DATA LENGTH (body 13..17): zero.
    push_descriptor(&mut page, 0x0004, &body);
    // Supported Descriptors (0008h).
    push_descriptor(&mut page, 0x0008, &[2, 0x02, 0xe4]);
    // General Copy Operations (8001h).
    let mut body = vec![0u8; 28];
    body[0..4].copy_from_slice(&(MAX_COPY_RECORDS as u32).to_be_bytes());
    body[4..8].copy_from_slice(&(MAX_COPY_RECORDS as u32).to_be_bytes());
    body[8..12].copy_from_slice(&MAX_SEGMENT_LEN.to_be_bytes());
    body[12] = 9; // DATA SEGMENT GRANULARITY (log 2)
    body[13] = 9; // INLINE DATA GRANULARITY (log 2)
    push_descriptor(&mut page, 0x8001, &body);
    let len = (page.len() - 4) as u16;
    page[2..4].copy_from_slice(&len.to_be_bytes());
    page
}

/// Appends a third-party copy descriptor, padded to a multiple of 4 bytes.
fn push_descriptor(page: &mut Vec<u8>, ty: u16, body: &[u8]) {
    let padded = body.len().div_ceil(4) * 4;
    page.extend_from_slice(&ty.to_be_bytes());
    page.extend_from_slice(&(padded as u16).to_be_bytes());
    page.extend_from_slice(body);
    page.resize(page.len() + padded - body.len(), 0);
}

/// LOGICAL UNIT RESET: the copy manager forgets every copy's results.
pub(crate) fn on_lun_reset(lun: &Arc<Lun>) {
    lun.copy.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// I_T nexus loss: the results of that nexus' copies are discarded.
pub(crate) fn on_nexus_loss(lun: &Arc<Lun>, key: &NexusKey) {
    lun.copy
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .forget_nexus(key);
}

pub(crate) const OPS: &[OpInfo] = &[
    OpInfo {
        opcode: EXTENDED_COPY,
        service_action: Some(0x00),
        name: "EXTENDED COPY(LID1)",
        usage: &[
            EXTENDED_COPY,
            0x00,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0xff,
            0xff,
            0xff,
            0xff,
            0,
            0x07,
        ],
        handler: extended_copy,
        flags: flags::MEDIUM | flags::READS,
    },
    OpInfo {
        opcode: RECEIVE_COPY_RESULTS,
        service_action: Some(SA_COPY_STATUS as u16),
        name: "RECEIVE COPY RESULTS(COPY STATUS)",
        usage: &[
            RECEIVE_COPY_RESULTS,
            SA_COPY_STATUS,
            0xff,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0xff,
            0xff,
            0xff,
            0xff,
            0,
            0x07,
        ],
        handler: receive_copy_results,
        flags: 0,
    },
    OpInfo {
        opcode: RECEIVE_COPY_RESULTS,
        service_action: Some(SA_OPERATING_PARAMETERS as u16),
        name: "RECEIVE COPY RESULTS(OPERATING PARAMETERS)",
        usage: &[
            RECEIVE_COPY_RESULTS,
            SA_OPERATING_PARAMETERS,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0xff,
            0xff,
            0xff,
            0xff,
            0,
            0x07,
        ],
        handler: receive_copy_results,
        flags: 0,
    },
    OpInfo {
        opcode: RECEIVE_COPY_RESULTS,
        service_action: Some(SA_FAILED_SEGMENT_DETAILS as u16),
        name: "RECEIVE COPY RESULTS(FAILED SEGMENT DETAILS)",
        usage: &[
            RECEIVE_COPY_RESULTS,
            SA_FAILED_SEGMENT_DETAILS,
            0xff,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0xff,
            0xff,
            0xff,
            0xff,
            0,
            0x07,
        ],
        handler: receive_copy_results,
        flags: 0,
    },
];

#[cfg(test)]
mod tests;
