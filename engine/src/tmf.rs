//! Task management functions (SAM-5 7): which commands each one aborts, what it
//! resets, and what it answers. The worker marks the commands aborted in their
//! LUNs' task sets and answers only when the last of them is gone, so an aborted
//! command never completes to its initiator and never writes after the function
//! was reported done.

use std::sync::Arc;

use crate::lun::Lun;
use crate::nexus::Nexus;
use crate::sense::asc;
use crate::taskset::TaskEntry;

/// The functions of SAM-5 7.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TmfFunction {
    AbortTask { tag: u64 },
    AbortTaskSet,
    ClearTaskSet,
    ClearAca,
    LogicalUnitReset,
    ItNexusReset,
    TargetReset,
    QueryTask { tag: u64 },
    QueryTaskSet,
    QueryAsyncEvent,
}

/// One request, from one I_T nexus, for one LUN (ignored by the nexus- and
/// target-wide functions).
#[derive(Debug)]
pub struct TmfRequest {
    pub nexus: Arc<Nexus>,
    pub lun: u64,
    pub function: TmfFunction,
    /// The transport's handle, returned with the response.
    pub token: u64,
}

/// Service responses (SAM-5 7.1) plus the "no such task" case that transports
/// report in their own ways (iSCSI "Task does not exist").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TmfResponse {
    FunctionComplete,
    /// With QUERY ASYNCHRONOUS EVENT: sense key, ASC, ASCQ of the pending unit
    /// attention (the ADDITIONAL RESPONSE INFORMATION).
    FunctionSucceeded {
        additional: [u8; 3],
    },
    FunctionRejected,
    IncorrectLun,
    TaskNotFound,
}

/// Which commands of a task set a function aborts.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Selector {
    Task { nexus: u64, tag: u64 },
    FromNexus(u64),
    All,
}

impl Selector {
    pub fn matches(&self, t: &TaskEntry) -> bool {
        match *self {
            Selector::Task { nexus, tag } => t.nexus == nexus && t.tag == tag,
            Selector::FromNexus(n) => t.nexus == n,
            Selector::All => true,
        }
    }
}

/// What the worker must do for a request.
pub(crate) enum Plan {
    /// Answer at once.
    Answer(TmfResponse),
    /// Abort the selected commands in each LUN's task set, answer `response` once
    /// they are all gone (or `if_none` at once if there were none).
    Abort {
        targets: Vec<(Arc<Lun>, Selector)>,
        response: TmfResponse,
        if_none: TmfResponse,
    },
}

/// Decides what `req` does, and performs its side effects on LUN state (unit
/// attentions, SPC-2 reservation release) right away.
pub(crate) fn plan(req: &TmfRequest) -> Plan {
    let nexus = &req.nexus;
    let lun = nexus.luns.get(req.lun);
    let per_lun = matches!(
        req.function,
        TmfFunction::AbortTask { .. }
            | TmfFunction::AbortTaskSet
            | TmfFunction::ClearTaskSet
            | TmfFunction::ClearAca
            | TmfFunction::LogicalUnitReset
            | TmfFunction::QueryTask { .. }
            | TmfFunction::QueryTaskSet
            | TmfFunction::QueryAsyncEvent
    );
    let lun = match (per_lun, lun) {
        (true, None) => return Plan::Answer(TmfResponse::IncorrectLun),
        (_, l) => l,
    };
    let done = TmfResponse::FunctionComplete;
    match (req.function, lun) {
        (TmfFunction::AbortTask { tag }, Some(l)) => Plan::Abort {
            targets: vec![(
                l,
                Selector::Task {
                    nexus: nexus.id,
                    tag,
                },
            )],
            response: done,
            if_none: TmfResponse::TaskNotFound,
        },
        (TmfFunction::AbortTaskSet, Some(l)) => Plan::Abort {
            targets: vec![(l, Selector::FromNexus(nexus.id))],
            response: done,
            if_none: done,
        },
        (TmfFunction::ClearTaskSet, Some(l)) => {
            l.ua.establish_all(asc::COMMANDS_CLEARED_BY_ANOTHER_INITIATOR, Some(&nexus.key));
            Plan::Abort {
                targets: vec![(l, Selector::All)],
                response: done,
                if_none: done,
            }
        }
        // NormACA = 0: there is never an ACA condition to clear.
        (TmfFunction::ClearAca, Some(_)) => Plan::Answer(TmfResponse::FunctionRejected),
        (TmfFunction::LogicalUnitReset, Some(l)) => {
            reset_lun(&l, None);
            Plan::Abort {
                targets: vec![(l, Selector::All)],
                response: done,
                if_none: done,
            }
        }
        (TmfFunction::TargetReset, _) => {
            let luns: Vec<Arc<Lun>> = nexus.luns.entries().into_iter().map(|(_, l)| l).collect();
            for l in &luns {
                reset_lun(l, Some(&nexus.key));
            }
            Plan::Abort {
                targets: luns.into_iter().map(|l| (l, Selector::All)).collect(),
                response: done,
                if_none: done,
            }
        }
        (TmfFunction::ItNexusReset, _) => {
            let luns: Vec<Arc<Lun>> = nexus.luns.entries().into_iter().map(|(_, l)| l).collect();
            for l in &luns {
                nexus_loss(l, nexus);
            }
            Plan::Abort {
                targets: luns
                    .into_iter()
                    .map(|l| (l, Selector::FromNexus(nexus.id)))
                    .collect(),
                response: done,
                if_none: done,
            }
        }
        (TmfFunction::QueryTask { tag }, Some(l)) => {
            let found = l
                .tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(nexus.id, tag);
            Plan::Answer(if found {
                TmfResponse::FunctionSucceeded { additional: [0; 3] }
            } else {
                done
            })
        }
        (TmfFunction::QueryTaskSet, Some(l)) => {
            let any = l
                .tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .any_from(nexus.id);
            Plan::Answer(if any {
                TmfResponse::FunctionSucceeded { additional: [0; 3] }
            } else {
                done
            })
        }
        (TmfFunction::QueryAsyncEvent, Some(l)) => Plan::Answer(match l.ua.peek(&nexus.key) {
            Some(a) => TmfResponse::FunctionSucceeded {
                additional: [crate::sense::SenseKey::UnitAttention as u8, a.0, a.1],
            },
            None => done,
        }),
        (_, None) => Plan::Answer(TmfResponse::IncorrectLun),
    }
}

/// Logical unit reset side effects (SAM-5 6.3.3): the SPC-2 reservation is
/// released, state reset, and the I_T nexuses see a unit attention — all but
/// `except`.
///
/// A LOGICAL UNIT RESET tells every I_T nexus, the one that asked included (SAM-5
/// 6.3.3 e; libiscsi's MultipathIO.Reset expects it on the issuing path too).
/// TARGET RESET, obsolete in SAM since SAM-4 and defined by iSCSI alone, tells
/// every other nexus: the issuer knows, and libiscsi's Reserve6 tests go on
/// using the issuing session after a warm reset without expecting one.
fn reset_lun(l: &Arc<Lun>, except: Option<&crate::nexus::NexusKey>) {
    crate::pr::on_lun_reset(l);
    crate::spc::on_lun_reset(l);
    crate::xcopy::on_lun_reset(l);
    l.ua.establish_all(asc::BUS_DEVICE_RESET_FUNCTION_OCCURRED, except);
}

/// I_T nexus loss (or I_T NEXUS RESET) for `nexus` on `l` (SAM-5 6.3.4).
pub(crate) fn nexus_loss(l: &Arc<Lun>, nexus: &Nexus) {
    crate::pr::on_nexus_loss(l, &nexus.key);
    crate::xcopy::on_nexus_loss(l, &nexus.key);
    crate::spc::on_nexus_loss(l, &nexus.key);
    l.ua.clear(&nexus.key);
    l.ua.establish(&nexus.key, asc::I_T_NEXUS_LOSS_OCCURRED);
}
