//! Command-level tests of reservations, after libiscsi's Reserve6*, Prout*, Prin*
//! families: two initiators on one target port, through the worker.

use std::sync::Arc;

use crate::cmd::{CmdResponse, DataDir, TaskAttr};
use crate::nexus::{iscsi_transport_id, Nexus};
use crate::sense::{asc, ScsiStatus, SenseKey};
use crate::testutil::{assert_check, assert_good, Fixture};
use crate::worker::Event;

use super::out::*;
use super::PrType;

const N2: &str = "iqn.2026-11.org.oxtarget:init2,i,0x000000000002";

fn prout_cdb(sa: u8, t: PrType, len: u32) -> [u8; 10] {
    let l = len.to_be_bytes();
    [0x5f, sa, t.code(), 0, 0, l[0], l[1], l[2], l[3], 0]
}

fn params(key: u64, sa_key: u64, flags: u8) -> Vec<u8> {
    let mut d = vec![0u8; 24];
    d[0..8].copy_from_slice(&key.to_be_bytes());
    d[8..16].copy_from_slice(&sa_key.to_be_bytes());
    d[20] = flags;
    d
}

fn prout(f: &mut Fixture, n: &Arc<Nexus>, sa: u8, t: PrType, key: u64, sa_key: u64) -> CmdResponse {
    prout_flags(f, n, sa, t, key, sa_key, 0)
}

fn prout_flags(
    f: &mut Fixture,
    n: &Arc<Nexus>,
    sa: u8,
    t: PrType,
    key: u64,
    sa_key: u64,
    flags: u8,
) -> CmdResponse {
    f.run_on(
        n,
        &prout_cdb(sa, t, 24),
        DataDir::ToDevice,
        params(key, sa_key, flags),
    )
    .0
}

fn register(f: &mut Fixture, n: &Arc<Nexus>, key: u64) {
    let r = prout(f, n, SA_REGISTER_AND_IGNORE, PrType::WriteExclusive, 0, key);
    assert_good(&r);
}

fn prin(f: &mut Fixture, n: &Arc<Nexus>, sa: u8, alloc: u16) -> (CmdResponse, Vec<u8>) {
    let a = alloc.to_be_bytes();
    let (r, mut d) = f.run_on(
        n,
        &[0x5e, sa, 0, 0, 0, 0, 0, a[0], a[1], 0],
        DataDir::FromDevice,
        vec![0u8; usize::from(alloc)],
    );
    d.truncate(r.transferred as usize);
    (r, d)
}

fn be32(d: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(d[at..at + 4].try_into().unwrap())
}

fn be64(d: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(d[at..at + 8].try_into().unwrap())
}

/// (PRgeneration, keys).
fn read_keys(f: &mut Fixture) -> (u32, Vec<u64>) {
    let n = f.nexus.clone();
    let (r, d) = prin(f, &n, 0, 4096);
    assert_good(&r);
    assert_eq!(be32(&d, 4) as usize, d.len() - 8);
    (be32(&d, 0), d[8..].chunks(8).map(|c| be64(c, 0)).collect())
}

/// (key, type code) of the reservation, if any.
fn read_reservation(f: &mut Fixture) -> Option<(u64, u8)> {
    let n = f.nexus.clone();
    let (r, d) = prin(f, &n, 1, 4096);
    assert_good(&r);
    match be32(&d, 4) {
        0 => None,
        16 => Some((be64(&d, 8), d[21])),
        l => panic!("additional length {l}"),
    }
}

fn read10(lba: u32) -> [u8; 10] {
    let l = lba.to_be_bytes();
    [0x28, 0, l[0], l[1], l[2], l[3], 0, 0, 1, 0]
}

fn write10(lba: u32) -> [u8; 10] {
    let mut c = read10(lba);
    c[0] = 0x2a;
    c
}

fn can_read(f: &mut Fixture, n: &Arc<Nexus>) -> bool {
    let (r, _) = f.run_on(n, &read10(1), DataDir::FromDevice, vec![0; 512]);
    match r.status {
        ScsiStatus::Good => true,
        ScsiStatus::ReservationConflict => false,
        _ => panic!("read: {r:?}"),
    }
}

fn can_write(f: &mut Fixture, n: &Arc<Nexus>) -> bool {
    let (r, _) = f.run_on(n, &write10(1), DataDir::ToDevice, vec![0; 512]);
    match r.status {
        ScsiStatus::Good => true,
        ScsiStatus::ReservationConflict => false,
        _ => panic!("write: {r:?}"),
    }
}

/// Takes the pending unit attention of `n`, if any (through TEST UNIT READY).
fn take_ua(f: &mut Fixture, n: &Arc<Nexus>) -> Option<crate::sense::Asc> {
    let (r, _) = f.run_on(n, &[0, 0, 0, 0, 0, 0], DataDir::None, vec![]);
    match r.status {
        ScsiStatus::Good => None,
        ScsiStatus::CheckCondition => {
            let s = r.sense_data.unwrap();
            assert_eq!(s.key, SenseKey::UnitAttention);
            Some(s.asc)
        }
        _ => panic!("{r:?}"),
    }
}

#[test]
fn register_read_keys_reregister_unregister() {
    let mut f = Fixture::ram();
    let n1 = f.nexus.clone();
    let (g0, keys) = read_keys(&mut f);
    assert!(keys.is_empty());
    register(&mut f, &n1, 0xabc);
    let (g1, keys) = read_keys(&mut f);
    assert_eq!(keys, vec![0xabc]);
    assert_eq!(g1, g0 + 1);
    // REGISTER with a wrong RESERVATION KEY from a registered nexus conflicts.
    let r = prout(&mut f, &n1, SA_REGISTER, PrType::WriteExclusive, 0, 0xabd);
    assert_eq!(r.status, ScsiStatus::ReservationConflict);
    assert_eq!(read_keys(&mut f), (g1, vec![0xabc]));
    // REGISTER with the right key changes it; with SA key 0 unregisters.
    assert_good(&prout(
        &mut f,
        &n1,
        SA_REGISTER,
        PrType::WriteExclusive,
        0xabc,
        0xdef,
    ));
    assert_eq!(read_keys(&mut f).1, vec![0xdef]);
    assert_good(&prout(
        &mut f,
        &n1,
        SA_REGISTER,
        PrType::WriteExclusive,
        0xdef,
        0,
    ));
    let (g, keys) = read_keys(&mut f);
    assert!(keys.is_empty());
    assert_eq!(g, g1 + 2);
    // From an unregistered nexus, REGISTER with a non-zero key conflicts.
    let r = prout(&mut f, &n1, SA_REGISTER, PrType::WriteExclusive, 5, 6);
    assert_eq!(r.status, ScsiStatus::ReservationConflict);
}

#[test]
fn read_keys_truncated_keeps_additional_length() {
    let mut f = Fixture::ram();
    let n1 = f.nexus.clone();
    register(&mut f, &n1, 0x1234);
    let (r, d) = prin(&mut f, &n1, 0, 8);
    assert_good(&r);
    assert_eq!(d.len(), 8);
    assert_eq!(be32(&d, 4), 8);
    let (r, d) = prin(&mut f, &n1, 0, 12);
    assert_good(&r);
    assert_eq!(d.len(), 12);
}

#[test]
fn prin_service_action_range() {
    let mut f = Fixture::ram();
    let n1 = f.nexus.clone();
    for sa in 0..4u8 {
        assert_good(&prin(&mut f, &n1, sa, 1024).0);
    }
    for sa in 4..0x20u8 {
        let (r, _) = prin(&mut f, &n1, sa, 1024);
        assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
    }
}

#[test]
fn report_capabilities() {
    let mut f = Fixture::ram();
    let n1 = f.nexus.clone();
    let (r, d) = prin(&mut f, &n1, 2, 1024);
    assert_good(&r);
    assert_eq!(d.len(), 8);
    assert_eq!(u16::from_be_bytes([d[0], d[1]]), 8);
    assert_eq!(
        d[2], 0x14,
        "CRH, ATP_C; no SIP_C, no PTPL_C without a state dir"
    );
    assert_eq!(d[3], 0x80 | 0x30, "TMV, ALLOW COMMANDS 011b, PTPL_A 0");
    assert_eq!((d[4], d[5]), (0xea, 0x01));
    let (r, d) = prin(&mut f, &n1, 2, 4);
    assert_good(&r);
    assert_eq!(d.len(), 4);
}

#[test]
fn reserve_and_release_every_type() {
    let mut f = Fixture::ram();
    let n1 = f.nexus.clone();
    register(&mut f, &n1, 77);
    let (g, _) = read_keys(&mut f);
    for t in PrType::ALL {
        assert_good(&prout(&mut f, &n1, SA_RESERVE, t, 77, 0));
        let key = if t.all_registrants() { 0 } else { 77 };
        assert_eq!(read_reservation(&mut f), Some((key, t.code())), "{t:?}");
        // Reserving again with the same type is a no-op; another type conflicts.
        assert_good(&prout(&mut f, &n1, SA_RESERVE, t, 77, 0));
        let other = if t == PrType::WriteExclusive {
            PrType::ExclusiveAccess
        } else {
            PrType::WriteExclusive
        };
        let r = prout(&mut f, &n1, SA_RESERVE, other, 77, 0);
        assert_eq!(r.status, ScsiStatus::ReservationConflict);
        // RELEASE with another type: INVALID RELEASE OF PERSISTENT RESERVATION.
        let r = prout(&mut f, &n1, SA_RELEASE, other, 77, 0);
        assert_check(
            &r,
            SenseKey::IllegalRequest,
            asc::INVALID_RELEASE_OF_PERSISTENT_RESERVATION,
        );
        assert_good(&prout(&mut f, &n1, SA_RELEASE, t, 77, 0));
        assert_eq!(read_reservation(&mut f), None);
    }
    // RESERVE and RELEASE leave the generation alone.
    assert_eq!(read_keys(&mut f).0, g);
    // Wrong key and unregistered nexus conflict.
    let r = prout(&mut f, &n1, SA_RESERVE, PrType::WriteExclusive, 78, 0);
    assert_eq!(r.status, ScsiStatus::ReservationConflict);
    let n2 = f.second_nexus(N2);
    let r = prout(&mut f, &n2, SA_RESERVE, PrType::WriteExclusive, 0, 0);
    assert_eq!(r.status, ScsiStatus::ReservationConflict);
    let r = prout(&mut f, &n2, SA_RELEASE, PrType::WriteExclusive, 0, 0);
    assert_eq!(r.status, ScsiStatus::ReservationConflict);
}

#[test]
fn reserve_access_per_type() {
    // libiscsi ProutReserveAccess*: (type, registered i2 read, write, unregistered
    // i2 read, write).
    let cases = [
        (PrType::ExclusiveAccess, false, false, false, false),
        (PrType::WriteExclusive, true, false, true, false),
        (
            PrType::ExclusiveAccessRegistrantsOnly,
            true,
            true,
            false,
            false,
        ),
        (
            PrType::WriteExclusiveRegistrantsOnly,
            true,
            true,
            true,
            false,
        ),
        (
            PrType::ExclusiveAccessAllRegistrants,
            true,
            true,
            false,
            false,
        ),
        (
            PrType::WriteExclusiveAllRegistrants,
            true,
            true,
            true,
            false,
        ),
    ];
    for (t, rr, rw, ur, uw) in cases {
        let mut f = Fixture::ram();
        let n1 = f.nexus.clone();
        let n2 = f.second_nexus(N2);
        register(&mut f, &n1, 1);
        register(&mut f, &n2, 2);
        assert_good(&prout(&mut f, &n1, SA_RESERVE, t, 1, 0));
        assert!(
            can_read(&mut f, &n1) && can_write(&mut f, &n1),
            "{t:?} holder"
        );
        assert_eq!(can_read(&mut f, &n2), rr, "{t:?} registered read");
        assert_eq!(can_write(&mut f, &n2), rw, "{t:?} registered write");
        assert_good(&prout(&mut f, &n2, SA_REGISTER, t, 2, 0));
        assert_eq!(can_read(&mut f, &n2), ur, "{t:?} unregistered read");
        assert_eq!(can_write(&mut f, &n2), uw, "{t:?} unregistered write");
        // INQUIRY and PERSISTENT RESERVE IN always pass.
        let (r, _) = f.run_on(
            &n2,
            &[0x12, 0, 0, 0, 36, 0],
            DataDir::FromDevice,
            vec![0; 36],
        );
        assert_good(&r);
        assert_good(&prin(&mut f, &n2, 0, 64).0);
        assert_good(&prout(&mut f, &n1, SA_RELEASE, t, 1, 0));
        assert!(can_write(&mut f, &n2));
    }
}

#[test]
fn reserve_ownership_when_the_holder_unregisters() {
    for t in PrType::ALL {
        let mut f = Fixture::ram();
        let n1 = f.nexus.clone();
        let n2 = f.second_nexus(N2);
        register(&mut f, &n1, 1);
        register(&mut f, &n2, 2);
        assert_good(&prout(&mut f, &n1, SA_RESERVE, t, 1, 0));
        assert_good(&prout(&mut f, &n1, SA_REGISTER, t, 1, 0));
        if t.all_registrants() {
            assert_eq!(read_reservation(&mut f), Some((0, t.code())), "{t:?}");
            assert_eq!(take_ua(&mut f, &n2), None);
            assert_good(&prout(&mut f, &n2, SA_RELEASE, t, 2, 0));
            assert_eq!(read_reservation(&mut f), None);
        } else {
            assert_eq!(read_reservation(&mut f), None, "{t:?}");
            let ua = t.registrants_only().then_some(asc::RESERVATIONS_RELEASED);
            assert_eq!(take_ua(&mut f, &n2), ua, "{t:?}");
        }
        assert_good(&prout(&mut f, &n2, SA_REGISTER, t, 2, 0));
        assert!(read_keys(&mut f).1.is_empty());
    }
}

#[test]
fn last_all_registrants_registrant_leaving_releases() {
    let mut f = Fixture::ram();
    let n1 = f.nexus.clone();
    register(&mut f, &n1, 1);
    let t = PrType::ExclusiveAccessAllRegistrants;
    assert_good(&prout(&mut f, &n1, SA_RESERVE, t, 1, 0));
    assert_good(&prout(&mut f, &n1, SA_REGISTER, t, 1, 0));
    assert_eq!(read_reservation(&mut f), None);
}

#[test]
fn release_unit_attentions_only_for_shared_types() {
    for t in PrType::ALL {
        let mut f = Fixture::ram();
        let n1 = f.nexus.clone();
        let n2 = f.second_nexus(N2);
        register(&mut f, &n1, 1);
        register(&mut f, &n2, 2);
        assert_good(&prout(&mut f, &n1, SA_RESERVE, t, 1, 0));
        // A registered non-holder's RELEASE is GOOD and changes nothing.
        if !t.all_registrants() {
            assert_good(&prout(&mut f, &n2, SA_RELEASE, t, 2, 0));
            assert!(read_reservation(&mut f).is_some());
        }
        assert_good(&prout(&mut f, &n1, SA_RELEASE, t, 1, 0));
        let want =
            (t.registrants_only() || t.all_registrants()).then_some(asc::RESERVATIONS_RELEASED);
        assert_eq!(take_ua(&mut f, &n2), want, "{t:?}");
        assert_eq!(take_ua(&mut f, &n1), None, "{t:?}: not the releasing nexus");
    }
}

#[test]
fn clear_removes_everything_and_bumps_generation() {
    let mut f = Fixture::ram();
    let n1 = f.nexus.clone();
    let n2 = f.second_nexus(N2);
    register(&mut f, &n1, 1);
    register(&mut f, &n2, 2);
    assert_good(&prout(
        &mut f,
        &n1,
        SA_RESERVE,
        PrType::ExclusiveAccess,
        1,
        0,
    ));
    let (g, _) = read_keys(&mut f);
    // Wrong key conflicts.
    let r = prout(&mut f, &n2, SA_CLEAR, PrType::WriteExclusive, 3, 0);
    assert_eq!(r.status, ScsiStatus::ReservationConflict);
    assert_good(&prout(&mut f, &n1, SA_CLEAR, PrType::WriteExclusive, 1, 0));
    assert_eq!(read_reservation(&mut f), None);
    assert_eq!(read_keys(&mut f), (g + 1, vec![]));
    assert_eq!(take_ua(&mut f, &n2), Some(asc::RESERVATIONS_PREEMPTED));
    assert_eq!(take_ua(&mut f, &n1), None);
}

#[test]
fn preempt_removes_a_registration() {
    // libiscsi ProutPreempt.
    let mut f = Fixture::ram();
    let n1 = f.nexus.clone();
    let n2 = f.second_nexus(N2);
    register(&mut f, &n1, 1);
    register(&mut f, &n2, 2);
    let (g, _) = read_keys(&mut f);
    assert_good(&prout(
        &mut f,
        &n2,
        SA_PREEMPT,
        PrType::ExclusiveAccess,
        2,
        1,
    ));
    assert_eq!(take_ua(&mut f, &n1), Some(asc::REGISTRATIONS_PREEMPTED));
    assert_eq!(take_ua(&mut f, &n2), None);
    assert_eq!(read_keys(&mut f), (g + 1, vec![2]));
    assert_eq!(read_reservation(&mut f), None);
    // No reservation and SA key 0: INVALID FIELD IN PARAMETER LIST; an unknown
    // key: RESERVATION CONFLICT.
    let r = prout(&mut f, &n2, SA_PREEMPT, PrType::ExclusiveAccess, 2, 0);
    assert_check(
        &r,
        SenseKey::IllegalRequest,
        asc::INVALID_FIELD_IN_PARAMETER_LIST,
    );
    let r = prout(&mut f, &n2, SA_PREEMPT, PrType::ExclusiveAccess, 2, 99);
    assert_eq!(r.status, ScsiStatus::ReservationConflict);
}

#[test]
fn preempt_takes_the_reservation() {
    let mut f = Fixture::ram();
    let n1 = f.nexus.clone();
    let n2 = f.second_nexus(N2);
    register(&mut f, &n1, 1);
    register(&mut f, &n2, 2);
    assert_good(&prout(
        &mut f,
        &n1,
        SA_RESERVE,
        PrType::WriteExclusive,
        1,
        0,
    ));
    assert_good(&prout(
        &mut f,
        &n2,
        SA_PREEMPT,
        PrType::ExclusiveAccess,
        2,
        1,
    ));
    assert_eq!(take_ua(&mut f, &n1), Some(asc::REGISTRATIONS_PREEMPTED));
    assert_eq!(
        read_reservation(&mut f),
        Some((2, PrType::ExclusiveAccess.code()))
    );
    assert_eq!(read_keys(&mut f).1, vec![2]);
    assert!(!can_read(&mut f, &n1));
}

#[test]
fn preempt_all_registrants_with_key_zero() {
    let mut f = Fixture::ram();
    let n1 = f.nexus.clone();
    let n2 = f.second_nexus(N2);
    register(&mut f, &n1, 1);
    register(&mut f, &n2, 2);
    let t = PrType::WriteExclusiveAllRegistrants;
    assert_good(&prout(&mut f, &n1, SA_RESERVE, t, 1, 0));
    assert_good(&prout(
        &mut f,
        &n2,
        SA_PREEMPT,
        PrType::WriteExclusive,
        2,
        0,
    ));
    assert_eq!(take_ua(&mut f, &n1), Some(asc::REGISTRATIONS_PREEMPTED));
    assert_eq!(
        read_reservation(&mut f),
        Some((2, PrType::WriteExclusive.code()))
    );
    assert_eq!(read_keys(&mut f).1, vec![2]);
}

#[test]
fn preempt_and_abort_aborts_the_preempted_commands() {
    let mut f = Fixture::ram();
    let n1 = f.nexus.clone();
    let n2 = f.second_nexus(N2);
    register(&mut f, &n1, 1);
    register(&mut f, &n2, 2);
    assert_good(&prout(
        &mut f,
        &n1,
        SA_RESERVE,
        PrType::WriteExclusive,
        1,
        0,
    ));
    // A: a read in flight; B: an ORDERED read waiting behind it.
    let a = f.cmd(&read10(1), DataDir::FromDevice, vec![0; 512]);
    let mut b = f.cmd(&read10(2), DataDir::FromDevice, vec![0; 512]);
    b.attr = TaskAttr::Ordered;
    let mut pa = f.cmd(
        &prout_cdb(SA_PREEMPT_AND_ABORT, PrType::ExclusiveAccess, 24),
        DataDir::ToDevice,
        params(2, 1, 0),
    );
    pa.attr = TaskAttr::HeadOfQueue;
    let (ta, tb, tp) = (a.token, b.token, pa.token);
    f.worker.submit(&n1, a);
    f.worker.submit(&n1, b);
    f.worker.submit(&n2, pa);
    let mut done = std::collections::HashMap::new();
    let mut ev = Vec::new();
    for _ in 0..200 {
        f.worker.wait(10, &mut ev);
        for e in ev.drain(..) {
            if let Event::Cmd(c) = e {
                done.insert(c.token, c.response);
            }
        }
        if done.len() == 3 {
            break;
        }
    }
    assert_eq!(done.len(), 3, "all three completed");
    assert_good(done[&tp].as_ref().unwrap());
    assert!(done[&tb].is_none(), "B aborted without a response");
    assert!(done.contains_key(&ta));
    assert_eq!(take_ua(&mut f, &n1), Some(asc::REGISTRATIONS_PREEMPTED));
    assert_eq!(
        read_reservation(&mut f),
        Some((2, PrType::ExclusiveAccess.code()))
    );
}

#[test]
fn register_and_move() {
    let mut f = Fixture::ram();
    let n1 = f.nexus.clone();
    let n2 = f.second_nexus(N2);
    register(&mut f, &n1, 1);
    assert_good(&prout(
        &mut f,
        &n1,
        SA_RESERVE,
        PrType::ExclusiveAccess,
        1,
        0,
    ));
    let ram = |key: u64, sa_key: u64, port: u16, tid: &[u8], unreg: bool| {
        let mut d = vec![0u8; 24];
        d[0..8].copy_from_slice(&key.to_be_bytes());
        d[8..16].copy_from_slice(&sa_key.to_be_bytes());
        d[17] = u8::from(unreg) << 1;
        d[18..20].copy_from_slice(&port.to_be_bytes());
        d[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
        d.extend_from_slice(tid);
        d
    };
    let cdb = |len: usize| prout_cdb(SA_REGISTER_AND_MOVE, PrType::ExclusiveAccess, len as u32);
    // To itself: INVALID FIELD IN PARAMETER LIST.
    let d = ram(1, 9, 1, &n1.transport_id, false);
    let (r, _) = f.run_on(&n1, &cdb(d.len()), DataDir::ToDevice, d);
    assert_check(
        &r,
        SenseKey::IllegalRequest,
        asc::INVALID_FIELD_IN_PARAMETER_LIST,
    );
    // From a non-holder: RESERVATION CONFLICT.
    register(&mut f, &n2, 2);
    let d = ram(2, 9, 1, &n1.transport_id, false);
    let (r, _) = f.run_on(&n2, &cdb(d.len()), DataDir::ToDevice, d);
    assert_eq!(r.status, ScsiStatus::ReservationConflict);
    // To the second initiator, unregistering the first.
    let d = ram(1, 9, 1, &iscsi_transport_id(N2), true);
    let (g, _) = read_keys(&mut f);
    let (r, _) = f.run_on(&n1, &cdb(d.len()), DataDir::ToDevice, d);
    assert_good(&r);
    assert_eq!(
        read_reservation(&mut f),
        Some((9, PrType::ExclusiveAccess.code()))
    );
    assert_eq!(read_keys(&mut f), (g + 1, vec![9]));
    assert!(can_write(&mut f, &n2));
    assert!(!can_read(&mut f, &n1));
}

#[test]
fn read_full_status_reports_holder_and_transport_ids() {
    let mut f = Fixture::ram();
    let n1 = f.nexus.clone();
    let n2 = f.second_nexus(N2);
    register(&mut f, &n1, 1);
    assert_good(&prout_flags(
        &mut f,
        &n2,
        SA_REGISTER_AND_IGNORE,
        PrType::WriteExclusive,
        0,
        2,
        0x04,
    ));
    assert_good(&prout(
        &mut f,
        &n1,
        SA_RESERVE,
        PrType::WriteExclusiveRegistrantsOnly,
        1,
        0,
    ));
    let (r, d) = prin(&mut f, &n1, 3, 4096);
    assert_good(&r);
    assert_eq!(be32(&d, 4) as usize, d.len() - 8);
    let mut at = 8;
    let mut seen = Vec::new();
    while at < d.len() {
        let key = be64(&d, at);
        let flags = d[at + 12];
        let t = d[at + 13];
        let port = u16::from_be_bytes([d[at + 18], d[at + 19]]);
        let len = be32(&d, at + 20) as usize;
        let tid = d[at + 24..at + 24 + len].to_vec();
        seen.push((key, flags, t, port, tid));
        at += 24 + len;
    }
    assert_eq!(
        seen,
        vec![
            (1, 0x01, 0x05, 1, n1.transport_id.clone()),
            (2, 0x02, 0x00, 1, n2.transport_id.clone()),
        ]
    );
    // Truncated: the header still tells the full length.
    let (r, t) = prin(&mut f, &n1, 3, 10);
    assert_good(&r);
    assert_eq!(t.len(), 10);
    assert_eq!(be32(&t, 4) as usize, d.len() - 8);
}

#[test]
fn prout_cdb_and_parameter_list_errors() {
    let mut f = Fixture::ram();
    let n1 = f.nexus.clone();
    // Parameter list length other than 24.
    let (r, _) = f.run_on(
        &n1,
        &prout_cdb(SA_REGISTER, PrType::WriteExclusive, 0),
        DataDir::None,
        vec![],
    );
    assert_check(
        &r,
        SenseKey::IllegalRequest,
        asc::PARAMETER_LIST_LENGTH_ERROR,
    );
    let (r, _) = f.run_on(
        &n1,
        &prout_cdb(SA_REGISTER, PrType::WriteExclusive, 32),
        DataDir::ToDevice,
        vec![0; 32],
    );
    assert_check(
        &r,
        SenseKey::IllegalRequest,
        asc::PARAMETER_LIST_LENGTH_ERROR,
    );
    register(&mut f, &n1, 1);
    // Invalid type and scope.
    let mut c = prout_cdb(SA_RESERVE, PrType::WriteExclusive, 24);
    c[2] = 0x02;
    let (r, _) = f.run_on(&n1, &c, DataDir::ToDevice, params(1, 0, 0));
    assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
    assert_eq!(
        r.sense_data.unwrap().field.map(|p| (p.byte, p.bit)),
        Some((2, Some(3)))
    );
    c[2] = 0x11;
    let (r, _) = f.run_on(&n1, &c, DataDir::ToDevice, params(1, 0, 0));
    assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
    // Unsupported service action 08h.
    let c = prout_cdb(0x08, PrType::WriteExclusive, 24);
    let (r, _) = f.run_on(&n1, &c, DataDir::ToDevice, params(1, 0, 0));
    assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
    // SPEC_I_PT is not supported; APTPL without a state directory is refused.
    let r = prout_flags(&mut f, &n1, SA_REGISTER, PrType::WriteExclusive, 1, 2, 0x08);
    assert_check(
        &r,
        SenseKey::IllegalRequest,
        asc::INVALID_FIELD_IN_PARAMETER_LIST,
    );
    let r = prout_flags(&mut f, &n1, SA_REGISTER, PrType::WriteExclusive, 1, 2, 0x01);
    assert_check(
        &r,
        SenseKey::IllegalRequest,
        asc::INVALID_FIELD_IN_PARAMETER_LIST,
    );
    assert_eq!(read_keys(&mut f).1, vec![1]);
}

fn aptpl_fixture(dir: &std::path::Path) -> Fixture {
    let mut cfg = crate::lun::LunConfig::new("aptpl", crate::testutil::uuid_for("aptpl"));
    cfg.state_dir = Some(dir.to_path_buf());
    Fixture::with(cfg, Arc::new(backends::ram::RamBackend::new(1 << 20)))
}

#[test]
fn aptpl_state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = aptpl_fixture(dir.path());
    let n1 = f.nexus.clone();
    let n2 = f.second_nexus(N2);
    let r = prout_flags(
        &mut f,
        &n1,
        SA_REGISTER_AND_IGNORE,
        PrType::WriteExclusive,
        0,
        0x77,
        0x01,
    );
    assert_good(&r);
    let r = prout_flags(
        &mut f,
        &n2,
        SA_REGISTER_AND_IGNORE,
        PrType::WriteExclusive,
        0,
        0x88,
        0x01,
    );
    assert_good(&r);
    assert_good(&prout(
        &mut f,
        &n1,
        SA_RESERVE,
        PrType::ExclusiveAccess,
        0x77,
        0,
    ));
    let (r, caps) = prin(&mut f, &n1, 2, 8);
    assert_good(&r);
    assert_eq!(caps[2] & 0x01, 1, "PTPL_C");
    assert_eq!(caps[3] & 0x01, 1, "PTPL_A");
    let (gen, _) = read_keys(&mut f);
    drop(f);

    // A new LUN with the same identity and state directory loads it when created.
    let mut f = aptpl_fixture(dir.path());
    assert_eq!(read_keys(&mut f), (gen, vec![0x77, 0x88]));
    assert_eq!(
        read_reservation(&mut f),
        Some((0x77, PrType::ExclusiveAccess.code()))
    );
    // The holder (same initiator port name) still holds it.
    let n1 = f.nexus.clone();
    assert!(can_write(&mut f, &n1));
    let n2 = f.second_nexus(N2);
    assert!(!can_read(&mut f, &n2));
    // APTPL 0 on the next REGISTER drops the saved state.
    assert_good(&prout(
        &mut f,
        &n2,
        SA_REGISTER,
        PrType::WriteExclusive,
        0x88,
        0x89,
    ));
    assert!(!super::aptpl::state_path(&f.lun).unwrap().exists());
}

#[test]
fn aptpl_corrupt_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let f = aptpl_fixture(dir.path());
    let path = super::aptpl::state_path(&f.lun).unwrap();
    std::fs::write(&path, b"oxtarget-pr 1\nreg nonsense\n").unwrap();
    assert!(matches!(
        super::load_aptpl(&f.lun),
        Err(super::PrError::Corrupt { .. })
    ));
    std::fs::write(&path, [0xffu8, 0xfe, 0x00]).unwrap();
    assert!(super::load_aptpl(&f.lun).is_err());
    std::fs::remove_file(&path).unwrap();
    assert!(super::load_aptpl(&f.lun).is_ok(), "no file is no state");
}

const RESERVE6: [u8; 6] = [0x16, 0, 0, 0, 0, 0];
const RELEASE6: [u8; 6] = [0x17, 0, 0, 0, 0, 0];
const TUR: [u8; 6] = [0, 0, 0, 0, 0, 0];

fn status(f: &mut Fixture, n: &Arc<Nexus>, cdb: &[u8]) -> ScsiStatus {
    f.run_on(n, cdb, DataDir::None, vec![]).0.status
}

#[test]
fn reserve6_two_initiators() {
    let mut f = Fixture::ram();
    let n1 = f.nexus.clone();
    let n2 = f.second_nexus(N2);
    assert_eq!(status(&mut f, &n1, &RESERVE6), ScsiStatus::Good);
    assert_eq!(
        status(&mut f, &n1, &RESERVE6),
        ScsiStatus::Good,
        "re-reserve"
    );
    assert_eq!(
        status(&mut f, &n2, &RESERVE6),
        ScsiStatus::ReservationConflict
    );
    assert_eq!(
        status(&mut f, &n2, &RELEASE6),
        ScsiStatus::Good,
        "no effect"
    );
    assert_eq!(status(&mut f, &n1, &TUR), ScsiStatus::Good);
    assert_eq!(status(&mut f, &n2, &TUR), ScsiStatus::ReservationConflict);
    assert!(!can_read(&mut f, &n2));
    assert!(can_write(&mut f, &n1));
    let (r, _) = f.run_on(
        &n2,
        &[0x12, 0, 0, 0, 36, 0],
        DataDir::FromDevice,
        vec![0; 36],
    );
    assert_good(&r);
    // PERSISTENT RESERVE IN/OUT conflict for everyone under an SPC-2 reservation.
    assert_eq!(
        prin(&mut f, &n1, 0, 64).0.status,
        ScsiStatus::ReservationConflict
    );
    assert_eq!(
        status(&mut f, &n2, &RESERVE6),
        ScsiStatus::ReservationConflict
    );
    assert_eq!(status(&mut f, &n1, &RELEASE6), ScsiStatus::Good);
    assert_eq!(status(&mut f, &n2, &RESERVE6), ScsiStatus::Good);
    assert_eq!(status(&mut f, &n2, &RELEASE6), ScsiStatus::Good);
    assert_eq!(status(&mut f, &n1, &TUR), ScsiStatus::Good);
}

#[test]
fn reserve10_third_party_is_refused() {
    let mut f = Fixture::ram();
    let n1 = f.nexus.clone();
    let (r, _) = f.run_on(
        &n1,
        &[0x56, 0x10, 0, 5, 0, 0, 0, 0, 0, 0],
        DataDir::None,
        vec![],
    );
    assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
    assert_eq!(
        status(&mut f, &n1, &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        ScsiStatus::Good
    );
    assert_eq!(
        status(&mut f, &n1, &[0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        ScsiStatus::Good
    );
}

fn tmf(f: &mut Fixture, n: &Arc<Nexus>, function: crate::tmf::TmfFunction) {
    f.worker.task_mgmt(crate::tmf::TmfRequest {
        nexus: n.clone(),
        lun: 0,
        function,
        token: 999,
    });
    let mut ev = Vec::new();
    for _ in 0..100 {
        f.worker.wait(10, &mut ev);
        if ev
            .iter()
            .any(|e| matches!(e, Event::Tmf { token: 999, .. }))
        {
            return;
        }
    }
    panic!("TMF did not complete");
}

#[test]
fn reserve6_released_by_lun_reset_and_nexus_loss() {
    let mut f = Fixture::ram();
    let n1 = f.nexus.clone();
    let n2 = f.second_nexus(N2);
    assert_eq!(status(&mut f, &n1, &RESERVE6), ScsiStatus::Good);
    tmf(&mut f, &n1, crate::tmf::TmfFunction::LogicalUnitReset);
    for n in [&n1, &n2] {
        assert_eq!(
            take_ua(&mut f, n),
            Some(asc::BUS_DEVICE_RESET_FUNCTION_OCCURRED)
        );
    }
    assert_eq!(status(&mut f, &n2, &RESERVE6), ScsiStatus::Good);
    assert_eq!(
        status(&mut f, &n1, &RESERVE6),
        ScsiStatus::ReservationConflict
    );
    f.worker.nexus_lost(&n2);
    assert_eq!(status(&mut f, &n1, &RESERVE6), ScsiStatus::Good);
}

#[test]
fn reserve6_with_persistent_reservations() {
    let mut f = Fixture::ram();
    let n1 = f.nexus.clone();
    let n2 = f.second_nexus(N2);
    register(&mut f, &n1, 1);
    // Registrations exist: RESERVE and RELEASE conflict for everyone.
    for n in [&n1, &n2] {
        assert_eq!(
            status(&mut f, n, &RESERVE6),
            ScsiStatus::ReservationConflict
        );
        assert_eq!(
            status(&mut f, n, &RELEASE6),
            ScsiStatus::ReservationConflict
        );
    }
    // The persistent reservation holder gets GOOD and nothing changes.
    assert_good(&prout(
        &mut f,
        &n1,
        SA_RESERVE,
        PrType::WriteExclusive,
        1,
        0,
    ));
    assert_eq!(status(&mut f, &n1, &RESERVE6), ScsiStatus::Good);
    assert_eq!(status(&mut f, &n1, &RELEASE6), ScsiStatus::Good);
    assert_eq!(
        read_reservation(&mut f),
        Some((1, PrType::WriteExclusive.code()))
    );
    assert!(can_read(&mut f, &n2));
    // A registered non-holder: RESERVATION CONFLICT under Write Exclusive, GOOD
    // under a registrants-only reservation.
    register(&mut f, &n2, 2);
    assert_eq!(
        status(&mut f, &n2, &RELEASE6),
        ScsiStatus::ReservationConflict
    );
    assert_good(&prout(
        &mut f,
        &n1,
        SA_RELEASE,
        PrType::WriteExclusive,
        1,
        0,
    ));
    let t = PrType::WriteExclusiveRegistrantsOnly;
    assert_good(&prout(&mut f, &n1, SA_RESERVE, t, 1, 0));
    assert_eq!(status(&mut f, &n2, &RESERVE6), ScsiStatus::Good);
    assert_eq!(status(&mut f, &n2, &RELEASE6), ScsiStatus::Good);
    assert_eq!(read_reservation(&mut f), Some((1, t.code())));
}

#[test]
fn persistent_reservations_survive_nexus_loss_and_lun_reset() {
    let mut f = Fixture::ram();
    let n1 = f.nexus.clone();
    register(&mut f, &n1, 1);
    assert_good(&prout(
        &mut f,
        &n1,
        SA_RESERVE,
        PrType::ExclusiveAccess,
        1,
        0,
    ));
    tmf(&mut f, &n1, crate::tmf::TmfFunction::LogicalUnitReset);
    f.worker.nexus_lost(&n1);
    assert_eq!(take_ua(&mut f, &n1), Some(asc::I_T_NEXUS_LOSS_OCCURRED));
    assert_eq!(
        read_reservation(&mut f),
        Some((1, PrType::ExclusiveAccess.code()))
    );
}

#[test]
fn all_tg_pt_registration_covers_every_target_port() {
    let mut f = Fixture::ram();
    let n1 = f.nexus.clone();
    let port2 = Arc::new(crate::nexus::TargetPort {
        name: "iqn.2026-11.org.oxtarget:test,t,0x0002".into(),
        protocol: crate::nexus::Protocol::Iscsi,
        relative_id: 2,
        group_id: 1,
    });
    let same_init = Fixture::make_nexus(&port2, &f.map, &n1.key.initiator);
    let _ = take_ua(&mut f, &same_init);
    // Without ALL_TG_PT the other port's nexus is not registered.
    register(&mut f, &n1, 5);
    let r = prout(&mut f, &same_init, SA_RESERVE, PrType::WriteExclusive, 5, 0);
    assert_eq!(r.status, ScsiStatus::ReservationConflict);
    assert_good(&prout(
        &mut f,
        &n1,
        SA_REGISTER,
        PrType::WriteExclusive,
        5,
        0,
    ));
    // With it, it is.
    let r = prout_flags(&mut f, &n1, SA_REGISTER, PrType::WriteExclusive, 0, 6, 0x04);
    assert_good(&r);
    assert_good(&prout(
        &mut f,
        &same_init,
        SA_RESERVE,
        PrType::WriteExclusive,
        6,
        0,
    ));
    assert!(can_write(&mut f, &n1));
    assert_eq!(
        read_reservation(&mut f),
        Some((6, PrType::WriteExclusive.code()))
    );
    // Another initiator preempts it: the initiator's nexuses on both ports hear.
    let n2 = f.second_nexus(N2);
    register(&mut f, &n2, 7);
    assert_good(&prout(
        &mut f,
        &n2,
        SA_PREEMPT,
        PrType::ExclusiveAccess,
        7,
        6,
    ));
    assert_eq!(take_ua(&mut f, &n1), Some(asc::REGISTRATIONS_PREEMPTED));
    assert_eq!(
        take_ua(&mut f, &same_init),
        Some(asc::REGISTRATIONS_PREEMPTED)
    );
    assert_eq!(take_ua(&mut f, &n2), None);
}

/// EXTENDED COPY writes (SPC-4 table 66: it conflicts where writes do): an
/// initiator without write access under a WRITE EXCLUSIVE reservation cannot copy
/// into the reserved LUN.
#[test]
fn extended_copy_from_a_non_holder_conflicts_under_write_exclusive() {
    let mut f = Fixture::ram();
    let n1 = f.nexus.clone();
    let n2 = f.second_nexus(N2);
    register(&mut f, &n1, 0x11);
    assert_good(&prout(
        &mut f,
        &n1,
        SA_RESERVE,
        PrType::WriteExclusive,
        0x11,
        0,
    ));
    let naa = f.lun.naa();
    // One segment: block 0 to block 8 of this LUN.
    let mut list = vec![0u8; 16];
    list[1] = 0x18; // LIST ID USAGE 11b
    list[3] = 32;
    list[11] = 28;
    let mut t = vec![0u8; 32];
    t[0] = 0xe4;
    t[4] = 0x01;
    t[5] = 0x03;
    t[7] = 16;
    t[8..24].copy_from_slice(&naa);
    t[30] = 0x02; // block length 512
    list.extend_from_slice(&t);
    let mut s = vec![0u8; 28];
    s[0] = 0x02;
    s[3] = 0x18;
    s[11] = 1;
    s[27] = 8;
    list.extend_from_slice(&s);
    let mut cdb = [0u8; 16];
    cdb[0] = 0x83;
    cdb[13] = list.len() as u8;
    let (r, _) = f.run_on(&n2, &cdb, DataDir::ToDevice, list.clone());
    assert_eq!(r.status, ScsiStatus::ReservationConflict, "{r:?}");
    // The holder may.
    let (r, _) = f.run_on(&n1, &cdb, DataDir::ToDevice, list);
    assert_good(&r);
}
