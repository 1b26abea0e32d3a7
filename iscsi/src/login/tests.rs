use proptest::prelude::*;

use super::*;
use crate::chap::{decode_binary, encode_hex, Secret};
use crate::pdu::{LoginStatus as S, NopOut};
use crate::text::parse;

const TARGET: &str = "iqn.2026-11.org.oxtarget:disk0";
const INITIATOR: &str = "iqn.2004-10.com.ubuntu:01:c0ffee";
const ISID: Isid = Isid([0x00, 0x02, 0x3d, 0x00, 0x00, 0x01]);

#[derive(Default)]
struct Dir {
    auth: AuthPolicy,
    discovery: Option<AuthPolicy>,
    removed: bool,
    unavailable: bool,
    moved: bool,
    deny: bool,
    creds: Option<ChapCredentials>,
    existing: Option<u16>,
    sessions: Vec<u16>,
    /// CIDs of session 9's connections.
    cids: Vec<u16>,
    full: bool,
}

impl TargetDirectory for Dir {
    fn lookup(&self, name: &str) -> TargetLookup {
        if name != TARGET {
            return TargetLookup::NotFound;
        }
        if self.removed {
            return TargetLookup::Removed;
        }
        if self.unavailable {
            return TargetLookup::Unavailable;
        }
        if self.moved {
            return TargetLookup::Moved {
                address: "192.0.2.1:3260,1".into(),
                permanent: false,
            };
        }
        TargetLookup::Found(TargetInfo {
            name: TARGET.into(),
            alias: Some("disk zero".into()),
            portal_group_tag: 1,
            auth: self.auth,
        })
    }
    fn discovery(&self) -> Option<AuthPolicy> {
        self.discovery
    }
    fn initiator_allowed(&self, _t: &str, i: &str) -> bool {
        !self.deny && i == INITIATOR
    }
    fn chap_credentials(&self, _t: Option<&str>, _i: &str) -> Option<ChapCredentials> {
        self.creds.clone()
    }
    fn existing_session(&self, _t: Option<&str>, _i: &str, _isid: Isid) -> Option<u16> {
        self.existing
    }
    fn session_exists(&self, _t: Option<&str>, _i: &str, _isid: Isid, tsih: u16) -> bool {
        self.sessions.contains(&tsih)
    }
    fn session_connections(&self, _t: Option<&str>, _i: &str, _isid: Isid, tsih: u16) -> Vec<u16> {
        if tsih == 9 {
            self.cids.clone()
        } else {
            Vec::new()
        }
    }
    fn session_slot_free(&self) -> bool {
        !self.full
    }
}

fn creds(mutual: bool) -> ChapCredentials {
    ChapCredentials {
        initiator: Secret {
            user: "alice".into(),
            secret: b"initiator-secret".to_vec(),
        },
        target: mutual.then(|| Secret {
            user: TARGET.into(),
            secret: b"target-secret-12".to_vec(),
        }),
    }
}

struct Req {
    csg: Stage,
    transit: Option<Stage>,
    cont: bool,
    tsih: u16,
    cid: u16,
    version_min: u8,
}

fn req(csg: Stage, transit: Option<Stage>) -> Req {
    Req {
        csg,
        transit,
        cont: false,
        tsih: 0,
        cid: 0,
        version_min: 0,
    }
}

fn text(kv: &[(&str, &str)]) -> Vec<u8> {
    let mut p = Pairs::default();
    for (k, v) in kv {
        p.push(*k, *v);
    }
    p.encode()
}

fn header(r: &Req, data: &[u8]) -> [u8; BHS_LEN] {
    Pdu::LoginRequest(LoginRequest {
        transit: r.transit,
        continue_: r.cont,
        csg: r.csg,
        version_max: 0,
        version_min: r.version_min,
        data_segment_len: u32::try_from(data.len()).unwrap(),
        isid: ISID,
        tsih: r.tsih,
        itt: 0x1234,
        cid: r.cid,
        cmd_sn: 100,
        exp_stat_sn: 0,
    })
    .to_bytes()
    .unwrap()
}

fn send(l: &mut Login, d: &Dir, r: Req, data: &[u8]) -> (LoginResponse, Pairs, Option<LoginEvent>) {
    let step = l.on_pdu(d, &header(&r, data), data);
    assert_eq!(step.responses.len(), 1);
    let out = &step.responses[0];
    let Pdu::LoginResponse(resp) = Pdu::parse(&out.header).unwrap() else {
        panic!("not a login response");
    };
    assert_eq!(resp.data_segment_len as usize, out.data.len());
    assert_eq!(resp.itt, 0x1234);
    assert_eq!(resp.isid, ISID);
    (resp, parse(&out.data).unwrap(), step.event)
}

fn identity(session: &str) -> Vec<(&'static str, String)> {
    let mut v = vec![("InitiatorName", INITIATOR.to_string())];
    if session == "Discovery" {
        v.push(("SessionType", "Discovery".into()));
    } else {
        v.push(("SessionType", "Normal".into()));
        v.push(("TargetName", TARGET.into()));
    }
    v
}

fn owned(kv: &[(&'static str, String)]) -> Vec<u8> {
    let b: Vec<(&str, &str)> = kv.iter().map(|(k, v)| (*k, v.as_str())).collect();
    text(&b)
}

const OPERATIONAL: &[(&str, &str)] = &[
    ("HeaderDigest", "None"),
    ("DataDigest", "None"),
    ("InitialR2T", "No"),
    ("ImmediateData", "Yes"),
    ("MaxRecvDataSegmentLength", "262144"),
    ("MaxBurstLength", "16776192"),
    ("FirstBurstLength", "262144"),
    ("MaxOutstandingR2T", "1"),
    ("MaxConnections", "1"),
    ("DefaultTime2Wait", "2"),
    ("DefaultTime2Retain", "0"),
    ("DataPDUInOrder", "Yes"),
    ("DataSequenceInOrder", "Yes"),
    ("ErrorRecoveryLevel", "0"),
    ("IFMarker", "No"),
    ("OFMarker", "No"),
];

fn complete(ev: Option<LoginEvent>) -> LoginOutcome {
    match ev {
        Some(LoginEvent::Complete(o)) => *o,
        other => panic!("expected completion, got {other:?}"),
    }
}

fn failed(ev: Option<LoginEvent>) -> LoginStatus {
    match ev {
        Some(LoginEvent::Failed { status, .. }) => status,
        other => panic!("expected failure, got {other:?}"),
    }
}

#[test]
fn open_iscsi_style_login_without_authentication() {
    let d = Dir::default();
    let mut l = Login::new(LoginConfig {
        new_tsih: 7,
        initial_stat_sn: 50,
        ..LoginConfig::default()
    });
    let mut kv = identity("Normal");
    kv.push(("AuthMethod", "None".into()));
    let (r, p, ev) = send(
        &mut l,
        &d,
        req(Stage::Security, Some(Stage::Operational)),
        &owned(&kv),
    );
    assert!(ev.is_none());
    assert_eq!(r.status, S::SUCCESS);
    assert_eq!(r.csg, Stage::Security);
    assert_eq!(r.transit, Some(Stage::Operational));
    assert_eq!(r.stat_sn, 50);
    assert_eq!(r.exp_cmd_sn, 100);
    assert_eq!(r.max_cmd_sn, 227);
    assert_eq!(r.tsih, 0);
    assert_eq!(p.get("AuthMethod"), Some("None"));
    assert_eq!(p.get("TargetPortalGroupTag"), Some("1"));
    assert_eq!(p.get("TargetAlias"), Some("disk zero"));

    let (r, p, ev) = send(
        &mut l,
        &d,
        req(Stage::Operational, Some(Stage::FullFeature)),
        &text(OPERATIONAL),
    );
    assert_eq!(r.status, S::SUCCESS);
    assert_eq!(r.csg, Stage::Operational);
    assert_eq!(r.transit, Some(Stage::FullFeature));
    assert_eq!(r.stat_sn, 51);
    assert_eq!(r.tsih, 7);
    assert_eq!(p.get("MaxRecvDataSegmentLength"), Some("262144"));
    assert_eq!(p.get("InitialR2T"), Some("No"));
    assert_eq!(p.get("MaxBurstLength"), Some("16776192"));
    let o = complete(ev);
    assert_eq!(o.tsih, 7);
    assert_eq!(o.binding, SessionBinding::New);
    assert_eq!(o.initiator_port, format!("{INITIATOR},i,0x00023d000001"));
    assert_eq!(o.next_stat_sn, 52);
    assert_eq!(o.exp_cmd_sn, 100);
    assert!(!o.params.initial_r2t);
    assert!(o.params.immediate_data);
    assert_eq!(o.params.max_xmit_data_segment_length, 262_144);
    let port = std::sync::Arc::new(engine::TargetPort {
        name: format!("{TARGET},t,0x0001"),
        protocol: engine::Protocol::Iscsi,
        relative_id: 1,
        group_id: 1,
    });
    let nexus = o.nexus(port, engine::LunMap::new());
    assert_eq!(&*nexus.key.initiator, o.initiator_port.as_str());
    assert_eq!(
        nexus.transport_id,
        engine::nexus::iscsi_transport_id(INITIATOR)
    );
    assert_eq!(o.target.unwrap().name, TARGET);
    assert!(l.is_finished());
    // Nothing more comes out once finished.
    let step = l.on_pdu(&d, &header(&req(Stage::Operational, None), &[]), &[]);
    assert!(step.responses.is_empty() && step.event.is_none());
}

#[test]
fn operational_start_and_target_proposals() {
    let d = Dir::default();
    let mut l = Login::new(LoginConfig::default());
    // libiscsi-like minimal keys, straight to the operational stage.
    let (r, p, ev) = send(
        &mut l,
        &d,
        req(Stage::Operational, Some(Stage::FullFeature)),
        &owned(&identity("Normal")),
    );
    assert!(ev.is_none());
    // Our proposals need answers: no transit yet.
    assert_eq!(r.transit, None);
    assert_eq!(p.get("InitialR2T"), Some("No"));
    assert_eq!(p.get("MaxBurstLength"), Some("16776192"));
    assert_eq!(p.get("FirstBurstLength"), Some("262144"));
    let answers = text(&[
        ("InitialR2T", "No"),
        ("MaxBurstLength", "1048576"),
        ("FirstBurstLength", "262144"),
        ("MaxOutstandingR2T", "8"),
    ]);
    let (r, p, ev) = send(
        &mut l,
        &d,
        req(Stage::Operational, Some(Stage::FullFeature)),
        &answers,
    );
    assert!(p.is_empty());
    assert_eq!(r.transit, Some(Stage::FullFeature));
    let o = complete(ev);
    assert!(!o.params.initial_r2t);
    assert_eq!(o.params.max_burst_length, 1_048_576);
    assert_eq!(o.params.first_burst_length, 262_144);
    assert_eq!(o.params.max_outstanding_r2t, 8);
}

#[test]
fn unanswered_proposals_keep_defaults() {
    let d = Dir::default();
    let mut l = Login::new(LoginConfig::default());
    send(
        &mut l,
        &d,
        req(Stage::Operational, None),
        &owned(&identity("Normal")),
    );
    let (r, _, ev) = send(
        &mut l,
        &d,
        req(Stage::Operational, Some(Stage::FullFeature)),
        &[],
    );
    assert_eq!(r.transit, Some(Stage::FullFeature));
    let o = complete(ev);
    assert!(o.params.initial_r2t);
    assert_eq!(o.params.max_burst_length, 262_144);
}

fn chap_login(mutual: bool) -> (Login, Dir) {
    let d = Dir {
        auth: AuthPolicy::Chap,
        creds: Some(creds(mutual)),
        ..Dir::default()
    };
    let mut l = Login::new(LoginConfig::default());
    let mut kv = identity("Normal");
    kv.push(("AuthMethod", "CHAP,None".into()));
    let (r, p, _) = send(
        &mut l,
        &d,
        req(Stage::Security, Some(Stage::Operational)),
        &owned(&kv),
    );
    assert_eq!(p.get("AuthMethod"), Some("CHAP"));
    assert_eq!(r.transit, None, "no transit before CHAP");
    (l, d)
}

fn chap_challenge(l: &mut Login, d: &Dir) -> (ChapAlgorithm, u8, Vec<u8>) {
    let (r, p, _) = send(
        l,
        d,
        req(Stage::Security, Some(Stage::Operational)),
        &text(&[("CHAP_A", "7,6,5")]),
    );
    assert_eq!(r.transit, None);
    assert_eq!(p.get("CHAP_A"), Some("7"));
    let id: u8 = p.get("CHAP_I").unwrap().parse().unwrap();
    (
        ChapAlgorithm::Sha256,
        id,
        decode_binary(p.get("CHAP_C").unwrap()).unwrap(),
    )
}

#[test]
fn chap_login_then_operational() {
    let (mut l, d) = chap_login(false);
    let (alg, id, c) = chap_challenge(&mut l, &d);
    let resp = encode_hex(&alg.response(id, b"initiator-secret", &c));
    let (r, p, ev) = send(
        &mut l,
        &d,
        req(Stage::Security, Some(Stage::Operational)),
        &text(&[("CHAP_N", "alice"), ("CHAP_R", &resp)]),
    );
    assert!(ev.is_none());
    assert!(p.is_empty());
    assert_eq!(r.transit, Some(Stage::Operational));
    let (_, _, ev) = send(
        &mut l,
        &d,
        req(Stage::Operational, Some(Stage::FullFeature)),
        &text(OPERATIONAL),
    );
    complete(ev);
}

#[test]
fn libiscsi_style_chap_login_repeats_its_names() {
    // libiscsi: names and AuthMethod with T=1, CHAP_A=5 with T=0, the response
    // with T=1, then names again with every operational key.
    let (mut l, d) = chap_login(false);
    let (r, p, _) = send(
        &mut l,
        &d,
        req(Stage::Security, Some(Stage::Operational)),
        &text(&[("CHAP_A", "5")]),
    );
    assert_eq!(r.transit, None);
    assert_eq!(p.get("CHAP_A"), Some("5"));
    let id: u8 = p.get("CHAP_I").unwrap().parse().unwrap();
    let c = decode_binary(p.get("CHAP_C").unwrap()).unwrap();
    let resp = encode_hex(&ChapAlgorithm::Md5.response(id, b"initiator-secret", &c)).to_uppercase();
    let resp = resp.replacen("0X", "0x", 1);
    let (r, _, _) = send(
        &mut l,
        &d,
        req(Stage::Security, Some(Stage::Operational)),
        &text(&[("CHAP_N", "alice"), ("CHAP_R", &resp)]),
    );
    assert_eq!(r.transit, Some(Stage::Operational));
    let mut kv = identity("Normal");
    kv.extend(OPERATIONAL.iter().map(|(k, v)| (*k, v.to_string())));
    let (r, _, ev) = send(
        &mut l,
        &d,
        req(Stage::Operational, Some(Stage::FullFeature)),
        &owned(&kv),
    );
    assert_eq!(r.status, S::SUCCESS);
    complete(ev);
}

#[test]
fn mutual_chap_login() {
    let (mut l, d) = chap_login(true);
    let (alg, id, c) = chap_challenge(&mut l, &d);
    let resp = encode_hex(&alg.response(id, b"initiator-secret", &c));
    let mine = [0x5au8; 32];
    let (r, p, _) = send(
        &mut l,
        &d,
        req(Stage::Security, Some(Stage::Operational)),
        &text(&[
            ("CHAP_N", "alice"),
            ("CHAP_R", &resp),
            ("CHAP_I", "9"),
            ("CHAP_C", &encode_hex(&mine)),
        ]),
    );
    assert_eq!(r.transit, Some(Stage::Operational));
    assert_eq!(p.get("CHAP_N"), Some(TARGET));
    let want = encode_hex(&alg.response(9, b"target-secret-12", &mine));
    assert_eq!(p.get("CHAP_R"), Some(want.as_str()));
}

#[test]
fn chap_failures_are_authentication_failures() {
    let (mut l, d) = chap_login(false);
    let (alg, id, c) = chap_challenge(&mut l, &d);
    let resp = encode_hex(&alg.response(id, b"wrong", &c));
    let (r, _, ev) = send(
        &mut l,
        &d,
        req(Stage::Security, Some(Stage::Operational)),
        &text(&[("CHAP_N", "alice"), ("CHAP_R", &resp)]),
    );
    assert_eq!(r.status, S::AUTHENTICATION_FAILURE);
    assert_eq!(failed(ev), S::AUTHENTICATION_FAILURE);
    assert!(l.is_finished());

    // CHAP required, initiator offers only None.
    let d = Dir {
        auth: AuthPolicy::Chap,
        creds: Some(creds(false)),
        ..Dir::default()
    };
    let mut l = Login::new(LoginConfig::default());
    let mut kv = identity("Normal");
    kv.push(("AuthMethod", "None".into()));
    let (_, p, ev) = send(
        &mut l,
        &d,
        req(Stage::Security, Some(Stage::Operational)),
        &owned(&kv),
    );
    assert_eq!(p.get("AuthMethod"), Some("Reject"));
    assert_eq!(failed(ev), S::AUTHENTICATION_FAILURE);

    // CHAP required, initiator skips the security stage.
    let mut l = Login::new(LoginConfig::default());
    let (_, _, ev) = send(
        &mut l,
        &d,
        req(Stage::Operational, Some(Stage::FullFeature)),
        &owned(&identity("Normal")),
    );
    assert_eq!(failed(ev), S::AUTHENTICATION_FAILURE);

    // CHAP required, transit requested without any AuthMethod.
    let mut l = Login::new(LoginConfig::default());
    let (_, _, ev) = send(
        &mut l,
        &d,
        req(Stage::Security, Some(Stage::Operational)),
        &owned(&identity("Normal")),
    );
    assert_eq!(failed(ev), S::AUTHENTICATION_FAILURE);
}

#[test]
fn identity_failures() {
    type Case = (Dir, Vec<(&'static str, String)>, LoginStatus);
    let cases: Vec<Case> = vec![
        (
            Dir::default(),
            vec![("TargetName", TARGET.into())],
            S::MISSING_PARAMETER,
        ),
        (
            Dir::default(),
            vec![("InitiatorName", INITIATOR.into())],
            S::MISSING_PARAMETER,
        ),
        (
            Dir::default(),
            vec![
                ("InitiatorName", INITIATOR.into()),
                ("TargetName", "iqn.2026-11.org.oxtarget:nope".into()),
            ],
            S::NOT_FOUND,
        ),
        (
            Dir {
                removed: true,
                ..Dir::default()
            },
            identity("Normal"),
            S::TARGET_REMOVED,
        ),
        (
            Dir {
                deny: true,
                ..Dir::default()
            },
            identity("Normal"),
            S::AUTHORIZATION_FAILURE,
        ),
        (
            Dir::default(),
            identity("Discovery"),
            S::SESSION_TYPE_NOT_SUPPORTED,
        ),
        (
            Dir::default(),
            vec![
                ("InitiatorName", INITIATOR.into()),
                ("SessionType", "Bogus".into()),
            ],
            S::INITIATOR_ERROR,
        ),
    ];
    for (d, kv, want) in cases {
        let mut l = Login::new(LoginConfig::default());
        let (r, _, ev) = send(&mut l, &d, req(Stage::Security, None), &owned(&kv));
        assert_eq!(r.status, want, "{kv:?}");
        assert_eq!(failed(ev), want);
        assert_eq!(r.transit, None);
    }
}

#[test]
fn no_free_tsih_is_out_of_resources() {
    let d = Dir::default();
    let mut l = Login::new(LoginConfig {
        new_tsih: 0,
        ..LoginConfig::default()
    });
    let (r, _, ev) = send(
        &mut l,
        &d,
        req(Stage::Security, None),
        &owned(&identity("Normal")),
    );
    assert_eq!(r.status, S::OUT_OF_RESOURCES);
    assert_eq!(failed(ev), S::OUT_OF_RESOURCES);
}

#[test]
fn redirect_carries_target_address() {
    let d = Dir {
        moved: true,
        ..Dir::default()
    };
    let mut l = Login::new(LoginConfig::default());
    let (r, p, ev) = send(
        &mut l,
        &d,
        req(Stage::Security, None),
        &owned(&identity("Normal")),
    );
    assert_eq!(r.status, S::TARGET_MOVED_TEMPORARILY);
    assert_eq!(p.get("TargetAddress"), Some("192.0.2.1:3260,1"));
    assert_eq!(failed(ev), S::TARGET_MOVED_TEMPORARILY);
}

#[test]
fn version_and_pdu_errors() {
    let d = Dir::default();
    let mut l = Login::new(LoginConfig::default());
    let r = Req {
        version_min: 1,
        ..req(Stage::Security, None)
    };
    let (resp, _, ev) = send(&mut l, &d, r, &owned(&identity("Normal")));
    assert_eq!(resp.status, S::UNSUPPORTED_VERSION);
    assert_eq!(failed(ev), S::UNSUPPORTED_VERSION);

    // A non-login PDU during login.
    let mut l = Login::new(LoginConfig::default());
    let nop = Pdu::NopOut(NopOut {
        itt: 0x1234,
        ..Default::default()
    })
    .to_bytes()
    .unwrap();
    let step = l.on_pdu(&d, &nop, &[]);
    assert_eq!(failed(step.event), S::INVALID_DURING_LOGIN);
    let Pdu::LoginResponse(r) = Pdu::parse(&step.responses[0].header).unwrap() else {
        panic!()
    };
    assert_eq!(r.itt, 0x1234);

    // A malformed login header (C and T both set).
    let mut l = Login::new(LoginConfig::default());
    let mut h = header(&req(Stage::Security, None), &[]);
    h[1] |= 0xc0;
    assert_eq!(failed(l.on_pdu(&d, &h, &[]).event), S::INITIATOR_ERROR);

    // Data that does not match DataSegmentLength.
    let mut l = Login::new(LoginConfig::default());
    let h = header(&req(Stage::Security, None), &[]);
    assert_eq!(failed(l.on_pdu(&d, &h, b"x").event), S::INITIATOR_ERROR);
}

#[test]
fn sequence_errors() {
    let d = Dir::default();
    // A key proposed twice.
    let mut l = Login::new(LoginConfig::default());
    let mut kv = identity("Normal");
    kv.push(("MaxBurstLength", "65536".into()));
    send(&mut l, &d, req(Stage::Operational, None), &owned(&kv));
    let (r, _, ev) = send(
        &mut l,
        &d,
        req(Stage::Operational, None),
        &text(&[("MaxBurstLength", "131072")]),
    );
    assert_eq!(r.status, S::INITIATOR_ERROR);
    assert_eq!(failed(ev), S::INITIATOR_ERROR);

    // CSG that does not match the stage.
    let mut l = Login::new(LoginConfig::default());
    send(
        &mut l,
        &d,
        req(Stage::Security, None),
        &owned(&identity("Normal")),
    );
    let (_, _, ev) = send(&mut l, &d, req(Stage::Operational, None), &[]);
    assert_eq!(failed(ev), S::INITIATOR_ERROR);

    // TSIH changed mid-login.
    let mut l = Login::new(LoginConfig::default());
    send(
        &mut l,
        &d,
        req(Stage::Security, None),
        &owned(&identity("Normal")),
    );
    let r = Req {
        tsih: 5,
        ..req(Stage::Security, None)
    };
    let (_, _, ev) = send(&mut l, &d, r, &[]);
    assert_eq!(failed(ev), S::INITIATOR_ERROR);

    // Too many PDUs.
    let mut l = Login::new(LoginConfig {
        max_login_pdus: 3,
        ..LoginConfig::default()
    });
    send(
        &mut l,
        &d,
        req(Stage::Security, None),
        &owned(&identity("Normal")),
    );
    send(&mut l, &d, req(Stage::Security, None), &[]);
    send(&mut l, &d, req(Stage::Security, None), &[]);
    let (_, _, ev) = send(&mut l, &d, req(Stage::Security, None), &[]);
    assert_eq!(failed(ev), S::INITIATOR_ERROR);

    // CHAP keys without AuthMethod=CHAP.
    let mut l = Login::new(LoginConfig::default());
    let mut kv = identity("Normal");
    kv.push(("CHAP_A", "5".into()));
    let (_, _, ev) = send(&mut l, &d, req(Stage::Security, None), &owned(&kv));
    assert_eq!(failed(ev), S::INITIATOR_ERROR);
}

#[test]
fn tsih_handling_and_reinstatement() {
    // Unknown TSIH.
    let d = Dir::default();
    let mut l = Login::new(LoginConfig::default());
    let r = Req {
        tsih: 9,
        ..req(Stage::Operational, Some(Stage::FullFeature))
    };
    let mut kv = identity("Normal");
    kv.extend(OPERATIONAL.iter().map(|(k, v)| (*k, v.to_string())));
    let (_, _, ev) = send(&mut l, &d, r, &owned(&kv));
    assert_eq!(failed(ev), S::SESSION_DOES_NOT_EXIST);

    // Known TSIH: the connection joins the session.
    let d = Dir {
        sessions: vec![9],
        ..Dir::default()
    };
    let mut l = Login::new(LoginConfig::default());
    let r = Req {
        tsih: 9,
        ..req(Stage::Operational, Some(Stage::FullFeature))
    };
    let (resp, _, ev) = send(&mut l, &d, r, &owned(&kv));
    assert_eq!(resp.tsih, 9);
    let o = complete(ev);
    assert_eq!(o.binding, SessionBinding::AddConnection);

    // TSIH 0 with a live session of the same initiator port: reinstatement.
    let d = Dir {
        existing: Some(4),
        ..Dir::default()
    };
    let mut l = Login::new(LoginConfig {
        new_tsih: 5,
        ..LoginConfig::default()
    });
    let (resp, _, ev) = send(
        &mut l,
        &d,
        req(Stage::Operational, Some(Stage::FullFeature)),
        &owned(&kv),
    );
    assert_eq!(resp.tsih, 5);
    assert_eq!(
        complete(ev).binding,
        SessionBinding::Reinstate { old_tsih: 4 }
    );
}

/// A login naming a session's TSIH with one of its CIDs reinstates that
/// connection; another CID beyond MaxConnections is one too many; a new
/// session beyond the directory's slots is out of resources, a reinstatement
/// or a discovery session is not.
#[test]
fn connection_reinstatement_and_session_limits() {
    let mut kv = identity("Normal");
    kv.extend(OPERATIONAL.iter().map(|(k, v)| (*k, v.to_string())));
    let on = |d: &Dir, tsih: u16, cid: u16, kv: &[(&'static str, String)]| {
        let mut l = Login::new(LoginConfig::default());
        let r = Req {
            tsih,
            cid,
            ..req(Stage::Operational, Some(Stage::FullFeature))
        };
        send(&mut l, d, r, &owned(kv)).2
    };
    let d = Dir {
        sessions: vec![9],
        cids: vec![1],
        ..Dir::default()
    };
    let o = complete(on(&d, 9, 1, &kv));
    assert_eq!(
        (o.tsih, o.cid, o.binding),
        (9, 1, SessionBinding::AddConnection)
    );
    assert_eq!(failed(on(&d, 9, 2, &kv)), S::TOO_MANY_CONNECTIONS);

    let full = Dir {
        full: true,
        ..Dir::default()
    };
    assert_eq!(failed(on(&full, 0, 1, &kv)), S::OUT_OF_RESOURCES);
    let reinstating = Dir {
        full: true,
        existing: Some(3),
        ..Dir::default()
    };
    assert_eq!(
        complete(on(&reinstating, 0, 1, &kv)).binding,
        SessionBinding::Reinstate { old_tsih: 3 }
    );
    let discovery = Dir {
        full: true,
        discovery: Some(AuthPolicy::None),
        ..Dir::default()
    };
    let kv = vec![
        ("InitiatorName", INITIATOR.to_string()),
        ("SessionType", "Discovery".to_string()),
    ];
    assert_eq!(
        complete(on(&discovery, 0, 1, &kv)).params.session_type,
        SessionType::Discovery
    );
}

/// Keys the target declares itself, sent by the initiator: one value each
/// in the response, the target's.
#[test]
fn declarations_are_not_answered_twice() {
    let d = Dir::default();
    let mut l = Login::new(LoginConfig::default());
    let mut kv = identity("Normal");
    kv.push(("TargetPortalGroupTag", "9".into()));
    kv.push(("TargetAlias", "mine".into()));
    kv.push(("MaxRecvDataSegmentLength", "100".into()));
    let (_, p, _) = send(
        &mut l,
        &d,
        req(Stage::Operational, Some(Stage::FullFeature)),
        &owned(&kv),
    );
    // `send` parses the response, which refuses duplicate keys.
    assert_eq!(p.get("TargetPortalGroupTag"), Some("1"));
    assert_eq!(p.get("TargetAlias"), Some("disk zero"));
    assert_eq!(p.get("MaxRecvDataSegmentLength"), Some("262144"));
}

#[test]
fn discovery_session() {
    let d = Dir {
        discovery: Some(AuthPolicy::None),
        ..Dir::default()
    };
    let mut l = Login::new(LoginConfig::default());
    let mut kv = identity("Discovery");
    kv.push(("AuthMethod", "None".into()));
    let (_, p, _) = send(
        &mut l,
        &d,
        req(Stage::Security, Some(Stage::Operational)),
        &owned(&kv),
    );
    assert_eq!(p.get("TargetPortalGroupTag"), None);
    let (r, p, ev) = send(
        &mut l,
        &d,
        req(Stage::Operational, Some(Stage::FullFeature)),
        &text(OPERATIONAL),
    );
    assert_eq!(r.transit, Some(Stage::FullFeature));
    assert_eq!(p.get("InitialR2T"), Some("Irrelevant"));
    assert_eq!(p.get("HeaderDigest"), Some("None"));
    let o = complete(ev);
    assert_eq!(o.params.session_type, SessionType::Discovery);
    assert!(o.target.is_none());
}

#[test]
fn security_straight_to_full_feature_keeps_default_receive_limit() {
    let d = Dir::default();
    let mut l = Login::new(LoginConfig::default());
    let mut kv = identity("Normal");
    kv.push(("AuthMethod", "None".into()));
    let (r, p, ev) = send(
        &mut l,
        &d,
        req(Stage::Security, Some(Stage::FullFeature)),
        &owned(&kv),
    );
    assert_eq!(r.transit, Some(Stage::FullFeature));
    // Only security-stage keys in a security-stage response.
    assert_eq!(p.get("MaxRecvDataSegmentLength"), None);
    assert_eq!(p.get("AuthMethod"), Some("None"));
    let o = complete(ev);
    assert_eq!(o.params.max_recv_data_segment_length, 8192);
    assert_eq!(o.params.max_xmit_data_segment_length, 8192);
}

#[test]
fn continued_request_and_response_text() {
    let d = Dir::default();
    let mut l = Login::new(LoginConfig {
        response_segment_len: 40,
        ..LoginConfig::default()
    });
    let mut kv = identity("Normal");
    kv.extend(OPERATIONAL.iter().map(|(k, v)| (*k, v.to_string())));
    let all = owned(&kv);
    let (a, b) = all.split_at(all.len() / 2);
    // First half with C=1: an empty acknowledgement.
    let r1 = Req {
        cont: true,
        ..req(Stage::Operational, None)
    };
    let (r, p, ev) = send(&mut l, &d, r1, a);
    assert!(p.is_empty() && ev.is_none());
    assert!(!r.continue_);
    // Second half with T=1: the answer is long and comes back in pieces.
    let step = l.on_pdu(
        &d,
        &header(&req(Stage::Operational, Some(Stage::FullFeature)), b),
        b,
    );
    let mut joined = step.responses[0].data.clone();
    let Pdu::LoginResponse(mut r) = Pdu::parse(&step.responses[0].header).unwrap() else {
        panic!()
    };
    let mut event = step.event;
    let mut rounds = 0;
    while r.continue_ {
        assert_eq!(r.transit, None);
        assert!(event.is_none());
        rounds += 1;
        assert!(rounds < 50);
        let step = l.on_pdu(
            &d,
            &header(&req(Stage::Operational, Some(Stage::FullFeature)), &[]),
            &[],
        );
        joined.extend_from_slice(&step.responses[0].data);
        let Pdu::LoginResponse(next) = Pdu::parse(&step.responses[0].header).unwrap() else {
            panic!()
        };
        r = next;
        event = step.event;
    }
    assert!(rounds > 1);
    assert_eq!(r.transit, Some(Stage::FullFeature));
    let p = parse(&joined).unwrap();
    assert_eq!(p.get("MaxBurstLength"), Some("16776192"));
    complete(event);
}

#[test]
fn out_pdu_wire_form_is_padded() {
    let o = OutPdu {
        header: [0; BHS_LEN],
        data: vec![1, 2, 3, 4, 5],
    };
    assert_eq!(o.to_wire().len(), BHS_LEN + 8);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    #[test]
    fn arbitrary_pdu_sequences_never_panic(
        pdus in proptest::collection::vec(
            (any::<[u8; BHS_LEN]>(), proptest::collection::vec(any::<u8>(), 0..64), any::<bool>()),
            1..8,
        )
    ) {
        let d = Dir { discovery: Some(AuthPolicy::None), creds: Some(creds(true)), ..Dir::default() };
        let mut l = Login::new(LoginConfig::default());
        for (mut h, data, login) in pdus {
            if login {
                h[0] = 0x43;
            }
            let mut b = Bhs(h);
            b.set_u24(crate::pdu::off::DATA_SEGMENT_LEN, u32::try_from(data.len()).unwrap());
            let step = l.on_pdu(&d, &b.0, &data);
            for r in step.responses {
                prop_assert!(matches!(Pdu::parse(&r.header), Ok(Pdu::LoginResponse(_))));
            }
        }
    }
}
