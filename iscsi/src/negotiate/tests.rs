use proptest::prelude::*;

use super::*;
use crate::text::parse;

fn pairs(s: &str) -> Pairs {
    let mut b = Vec::new();
    for kv in s.split(' ').filter(|x| !x.is_empty()) {
        b.extend_from_slice(kv.as_bytes());
        b.push(0);
    }
    parse(&b).unwrap()
}

fn first(n: &mut Negotiator, s: &str) -> Pairs {
    n.respond(Stage::Operational, &pairs(s)).unwrap()
}

const LINUX: &str = "InitiatorName=iqn.2004-10.com.ubuntu:01:c0ffee SessionType=Normal \
    TargetName=iqn.2026-11.org.oxtarget:t0 HeaderDigest=None DataDigest=None \
    DefaultTime2Wait=2 DefaultTime2Retain=0 IFMarker=No OFMarker=No ErrorRecoveryLevel=0 \
    InitialR2T=No ImmediateData=Yes MaxBurstLength=16776192 FirstBurstLength=262144 \
    MaxOutstandingR2T=1 MaxConnections=1 DataPDUInOrder=Yes DataSequenceInOrder=Yes \
    MaxRecvDataSegmentLength=262144";

#[test]
fn linux_initiator_login_keys() {
    let mut n = Negotiator::new(TargetPolicy::default());
    let r = first(&mut n, LINUX);
    // Declarations (names, SessionType, MaxRecvDataSegmentLength) get no answer.
    assert_eq!(r.get("InitiatorName"), None);
    assert_eq!(r.get("MaxRecvDataSegmentLength"), None);
    assert_eq!(r.get("HeaderDigest"), Some("None"));
    assert_eq!(r.get("DefaultTime2Retain"), Some("0"));
    assert_eq!(r.get("IFMarker"), Some("No"));
    assert_eq!(r.get("InitialR2T"), Some("No"));
    assert_eq!(r.get("ImmediateData"), Some("Yes"));
    assert_eq!(r.get("MaxBurstLength"), Some("16776192"));
    assert_eq!(r.get("FirstBurstLength"), Some("262144"));
    assert_eq!(r.get("MaxOutstandingR2T"), Some("1"));
    // Everything was raised by the initiator: only our declaration remains.
    let o = n.offers();
    assert_eq!(
        o.0,
        vec![("MaxRecvDataSegmentLength".to_string(), "262144".to_string())]
    );
    assert!(!n.awaiting_answers());
    let p = n.params();
    assert_eq!(
        p.initiator_name.as_deref(),
        Some("iqn.2004-10.com.ubuntu:01:c0ffee")
    );
    assert_eq!(
        p.target_name.as_deref(),
        Some("iqn.2026-11.org.oxtarget:t0")
    );
    assert!(!p.initial_r2t);
    assert_eq!(p.max_xmit_data_segment_length, 262_144);
    assert_eq!(p.max_recv_data_segment_length, 262_144);
    assert_eq!(p.default_time2retain, 0);
}

#[test]
fn result_functions_table() {
    // (key=offer, expected answer) with the default policy.
    let table = [
        ("HeaderDigest=CRC32C,None", "CRC32C"),
        ("DataDigest=None,CRC32C", "None"),
        ("HeaderDigest=MD5", "Reject"),
        ("MaxConnections=8", "1"),
        ("InitialR2T=Yes", "Yes"),
        ("InitialR2T=No", "No"),
        ("ImmediateData=No", "No"),
        ("ImmediateData=Yes", "Yes"),
        ("ImmediateData=maybe", "Reject"),
        ("MaxBurstLength=65536", "65536"),
        ("MaxBurstLength=511", "Reject"),
        ("MaxBurstLength=16777216", "Reject"),
        ("FirstBurstLength=0x10000", "65536"),
        ("DefaultTime2Wait=0", "2"),
        ("DefaultTime2Wait=10", "10"),
        ("DefaultTime2Wait=3601", "Reject"),
        ("DefaultTime2Retain=60", "20"),
        ("MaxOutstandingR2T=64", "16"),
        ("MaxOutstandingR2T=0", "Reject"),
        ("DataPDUInOrder=No", "Yes"),
        ("DataSequenceInOrder=No", "Yes"),
        ("ErrorRecoveryLevel=2", "0"),
        ("ErrorRecoveryLevel=3", "Reject"),
        ("iSCSIProtocolLevel=2", "1"),
        ("TaskReporting=FastAbort,RFC3720", "RFC3720"),
        ("TaskReporting=FastAbort", "Reject"),
        ("OFMarker=Yes", "No"),
        ("IFMarkInt=2048~8192", "Reject"),
        ("RDMAExtensions=Yes", "No"),
        ("TargetRecvDataSegmentLength=8192", "Irrelevant"),
        ("MaxOutstandingUnexpectedPDUs=4", "Irrelevant"),
        ("X-com.example.Foo=1", "NotUnderstood"),
        ("FooBar=1", "NotUnderstood"),
        ("TargetAlias=x", "Reject"),
        ("TargetPortalGroupTag=1", "Reject"),
        ("SendTargets=All", "Irrelevant"),
        ("MaxRecvDataSegmentLength=100", "Reject"),
        ("MaxBurstLength=", "Reject"),
        ("MaxBurstLength=99999999999999999999999", "Reject"),
    ];
    for (offer, want) in table {
        let mut n = Negotiator::new(TargetPolicy::default());
        let r = first(&mut n, offer);
        let key = offer.split('=').next().unwrap();
        assert_eq!(r.get(key), Some(want), "{offer}");
    }
}

#[test]
fn discovery_sessions_answer_operational_keys_irrelevant() {
    let mut n = Negotiator::new(TargetPolicy::default());
    let r = first(
        &mut n,
        "InitialR2T=No InitiatorName=iqn.1994-05.com.redhat:x SessionType=Discovery \
         MaxBurstLength=1024 ErrorRecoveryLevel=0 HeaderDigest=None MaxRecvDataSegmentLength=32768          TaskReporting=RFC3720",
    );
    // SessionType applies to keys before it in the same text.
    assert_eq!(r.get("InitialR2T"), Some("Irrelevant"));
    assert_eq!(r.get("TaskReporting"), Some("Irrelevant"));
    assert_eq!(r.get("MaxBurstLength"), Some("Irrelevant"));
    assert_eq!(r.get("ErrorRecoveryLevel"), Some("0"));
    assert_eq!(r.get("HeaderDigest"), Some("None"));
    assert_eq!(n.session_type(), SessionType::Discovery);
    // Discovery: only the declaration, no proposals.
    assert_eq!(n.offers().0.len(), 1);
    assert_eq!(n.params().max_xmit_data_segment_length, 32768);
}

#[test]
fn duplicates_and_misplaced_keys_fail() {
    let mut n = Negotiator::new(TargetPolicy::default());
    first(&mut n, "InitiatorName=iqn.a:b MaxBurstLength=8192");
    // The same value again is a retransmission and gets the same answer.
    let again = n
        .respond(
            Stage::Operational,
            &pairs("InitiatorName=iqn.a:b MaxBurstLength=8192"),
        )
        .unwrap();
    assert_eq!(again.get("MaxBurstLength"), Some("8192"));
    assert_eq!(
        n.respond(Stage::Operational, &pairs("MaxBurstLength=4096")),
        Err(NegotiationError::DuplicateKey("MaxBurstLength".into()))
    );
    assert_eq!(
        n.respond(Stage::Operational, &pairs("AuthMethod=None")),
        Err(NegotiationError::SecurityKeyOutsideSecurityStage(
            "AuthMethod".into()
        ))
    );
    // In the security stage, security keys are left to the login machine.
    assert_eq!(
        n.respond(Stage::Security, &pairs("CHAP_A=5")),
        Ok(Pairs::default())
    );
    assert_eq!(
        n.respond(Stage::Operational, &pairs("InitiatorName=iqn.c:d")),
        Err(NegotiationError::DuplicateKey("InitiatorName".into()))
    );
    assert_eq!(
        n.respond(Stage::Operational, &pairs("TargetName=iqn.c:d")),
        Err(NegotiationError::LateIdentity("TargetName".into()))
    );
    let mut n = Negotiator::new(TargetPolicy::default());
    assert!(matches!(
        n.respond(Stage::Security, &pairs("SessionType=Other")),
        Err(NegotiationError::InvalidSessionType(_))
    ));
    let mut n = Negotiator::new(TargetPolicy::default());
    assert!(matches!(
        n.respond(Stage::Security, &pairs("InitiatorName=bob")),
        Err(NegotiationError::InvalidName { .. })
    ));
}

#[test]
fn target_offers_large_io_and_takes_the_answers() {
    let mut n = Negotiator::new(TargetPolicy::default());
    first(
        &mut n,
        "InitiatorName=iqn.a:b SessionType=Normal TargetName=iqn.t:t",
    );
    let o = n.offers();
    assert_eq!(o.get("InitialR2T"), Some("No"));
    assert_eq!(o.get("MaxBurstLength"), Some("16776192"));
    assert_eq!(o.get("FirstBurstLength"), Some("262144"));
    assert_eq!(o.get("MaxOutstandingR2T"), Some("16"));
    assert_eq!(o.get("ImmediateData"), None, "default already Yes");
    assert!(n.awaiting_answers());
    // Offers are made once.
    assert!(n.offers().is_empty());
    // The initiator answers within its own limits; answers get no reply.
    let r = first(
        &mut n,
        "InitialR2T=Yes MaxBurstLength=262144 FirstBurstLength=65536 MaxOutstandingR2T=Reject",
    );
    assert!(r.is_empty());
    assert!(!n.awaiting_answers());
    let p = n.params();
    assert!(p.initial_r2t, "OR with the initiator's Yes");
    assert_eq!(p.max_burst_length, 262_144);
    assert_eq!(p.first_burst_length, 65_536);
    assert_eq!(p.max_outstanding_r2t, 1, "Reject keeps the default");
    // An answered key proposed again with another value is a repeat.
    assert_eq!(
        n.respond(Stage::Operational, &pairs("InitialR2T=No")),
        Err(NegotiationError::DuplicateKey("InitialR2T".into()))
    );
}

#[test]
fn full_feature_framing_follows_the_digests() {
    let mut n = Negotiator::new(TargetPolicy::default());
    first(&mut n, "HeaderDigest=CRC32C,None DataDigest=None");
    n.offers();
    let f = n.params().framing();
    assert!(f.header_digest);
    assert!(!f.data_digest);
    assert_eq!(f.max_recv_data_segment_len, 256 * 1024);
}

#[test]
fn first_burst_is_held_to_max_burst() {
    let mut n = Negotiator::new(TargetPolicy::default());
    first(&mut n, "MaxBurstLength=4096 FirstBurstLength=65536");
    let p = n.params();
    assert_eq!(p.max_burst_length, 4096);
    assert_eq!(p.first_burst_length, 4096);
}

#[test]
fn abandoned_offers_keep_defaults() {
    let mut n = Negotiator::new(TargetPolicy::default());
    n.offers();
    n.abandon_offers();
    assert!(!n.awaiting_answers());
    let p = n.params();
    assert!(p.initial_r2t);
    assert_eq!(p.max_burst_length, 262_144);
}

#[test]
fn numbers() {
    assert_eq!(parse_number("0"), Some(0));
    assert_eq!(parse_number("0x1F"), Some(31));
    assert_eq!(parse_number("0x"), None);
    assert_eq!(parse_number("-1"), None);
    assert_eq!(parse_number("1e3"), None);
    assert_eq!(parse_number(""), None);
}

proptest! {
    #[test]
    fn any_text_negotiates_without_panic(
        keys in proptest::collection::vec(
            (prop_oneof![
                Just("HeaderDigest"), Just("MaxBurstLength"), Just("InitialR2T"),
                Just("SessionType"), Just("InitiatorName"), Just("ErrorRecoveryLevel"),
                Just("DefaultTime2Wait"), Just("AuthMethod"), Just("X-y"), Just("MaxRecvDataSegmentLength"),
            ], "[ -~]{0,12}"),
            0..12,
        ),
        stage in prop_oneof![Just(Stage::Security), Just(Stage::Operational)],
    ) {
        let mut p = Pairs::default();
        for (k, v) in keys {
            if p.get(k).is_none() {
                p.push(k, v);
            }
        }
        let mut n = Negotiator::new(TargetPolicy::default());
        let _ = n.respond(stage, &p);
        let _ = n.offers();
        let _ = n.respond(stage, &p);
        let params = n.params();
        prop_assert!(params.first_burst_length <= params.max_burst_length);
    }
}
