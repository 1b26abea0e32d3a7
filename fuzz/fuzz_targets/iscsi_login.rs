//! Arbitrary PDU sequences through the login state machine (and their data
//! segments through the text parser and a bare negotiator): every input gets
//! Login Responses or nothing, never a panic.
//!
//! Input: one byte of directory settings, then PDUs. Each PDU starts with a
//! control byte: with bit 7 set, 48 raw header bytes follow; otherwise the
//! control byte's low bits give the T, C, CSG and NSG bits of a well-formed
//! Login Request header, and with bit 4 set the data bytes pick key=value pairs
//! from a vocabulary (so the fuzzer reaches the later stages quickly) instead of
//! being the text itself. Then one length byte and that many data bytes.
#![no_main]

use iscsi::chap::{ChapCredentials, Secret};
use iscsi::login::{AuthPolicy, Login, LoginConfig, TargetDirectory, TargetInfo, TargetLookup};
use iscsi::negotiate::{Negotiator, TargetPolicy};
use iscsi::pdu::{off, Bhs, Isid, Stage, BHS_LEN};
use libfuzzer_sys::fuzz_target;

struct Dir(u8);

impl TargetDirectory for Dir {
    fn lookup(&self, name: &str) -> TargetLookup {
        match self.0 & 3 {
            _ if name != "iqn.2026-11.org.oxtarget:fuzz" => TargetLookup::NotFound,
            1 => TargetLookup::Removed,
            2 => TargetLookup::Moved {
                address: "127.0.0.1:3260,1".into(),
                permanent: true,
            },
            _ => TargetLookup::Found(TargetInfo {
                name: name.into(),
                alias: None,
                portal_group_tag: 1,
                auth: if self.0 & 4 != 0 {
                    AuthPolicy::Chap
                } else {
                    AuthPolicy::None
                },
            }),
        }
    }
    fn discovery(&self) -> Option<AuthPolicy> {
        (self.0 & 8 != 0).then_some(AuthPolicy::None)
    }
    fn initiator_allowed(&self, _: &str, _: &str) -> bool {
        self.0 & 16 == 0
    }
    fn chap_credentials(&self, _: Option<&str>, _: &str) -> Option<ChapCredentials> {
        (self.0 & 32 != 0).then(|| ChapCredentials {
            initiator: Secret {
                user: "u".into(),
                secret: b"initiator-secret".to_vec(),
            },
            target: (self.0 & 64 != 0).then(|| Secret {
                user: "t".into(),
                secret: b"target-secret-xx".to_vec(),
            }),
        })
    }
    fn existing_session(&self, _: Option<&str>, _: &str, _: Isid) -> Option<u16> {
        (self.0 & 128 != 0).then_some(3)
    }
    fn session_exists(&self, _: Option<&str>, _: &str, _: Isid, tsih: u16) -> bool {
        tsih == 3
    }
}

const VOCAB: &[&str] = &[
    "InitiatorName=iqn.2026-11.org.oxtarget:fuzzer",
    "TargetName=iqn.2026-11.org.oxtarget:fuzz",
    "TargetName=iqn.2026-11.org.oxtarget:other",
    "SessionType=Normal",
    "SessionType=Discovery",
    "AuthMethod=None",
    "AuthMethod=CHAP,None",
    "AuthMethod=CHAP",
    "CHAP_A=7,6,5",
    "CHAP_A=8",
    "CHAP_N=u",
    "CHAP_R=0x00112233445566778899aabbccddeeff",
    "CHAP_I=3",
    "CHAP_C=0x0102030405060708090a0b0c0d0e0f10",
    "HeaderDigest=CRC32C,None",
    "DataDigest=None",
    "InitialR2T=No",
    "ImmediateData=Yes",
    "MaxRecvDataSegmentLength=262144",
    "MaxBurstLength=16776192",
    "FirstBurstLength=262144",
    "MaxOutstandingR2T=4",
    "ErrorRecoveryLevel=0",
    "DefaultTime2Wait=2",
    "IFMarker=No",
    "IFMarkInt=2048",
    "RDMAExtensions=Yes",
    "X-vendor.key=1",
    "MaxBurstLength=Reject",
    "InitialR2T=Yes",
];

fn vocabulary_text(picks: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for &p in picks {
        out.extend_from_slice(VOCAB[usize::from(p) % VOCAB.len()].as_bytes());
        out.push(0);
    }
    out
}

fn structured(ctl: u8, len: usize) -> [u8; BHS_LEN] {
    let mut h = Bhs::default();
    h.set_u8(off::OPCODE, 0x43);
    // T(0x80 of the flags) from bit 6, C from bit 5, CSG/NSG from bits 0-3.
    let flags = ((ctl & 0x40) << 1) | ((ctl & 0x20) << 1) | (ctl & 0x0f);
    h.set_u8(off::FLAGS, flags);
    h.set_u24(off::DATA_SEGMENT_LEN, u32::try_from(len).unwrap_or(0));
    h.set_u32(off::ITT, 1);
    h.set_u32(off::CMD_SN, 1);
    h.0
}

fuzz_target!(|input: &[u8]| {
    let Some((&cfg, mut rest)) = input.split_first() else {
        return;
    };
    let dir = Dir(cfg);
    let mut login = Login::new(LoginConfig {
        response_segment_len: 64,
        ..LoginConfig::default()
    });
    let mut neg = Negotiator::new(TargetPolicy::default());
    for _ in 0..40 {
        let Some((&ctl, r)) = rest.split_first() else {
            return;
        };
        rest = r;
        let mut header = [0u8; BHS_LEN];
        if ctl & 0x80 != 0 {
            let Some(h) = rest.get(..BHS_LEN) else { return };
            header.copy_from_slice(h);
            rest = &rest[BHS_LEN..];
        }
        let Some((&len, r)) = rest.split_first() else {
            return;
        };
        rest = r;
        let len = usize::from(len).min(rest.len());
        let (raw_data, r) = rest.split_at(len);
        rest = r;
        let picked;
        let data = if ctl & 0x90 == 0x10 {
            picked = vocabulary_text(raw_data);
            &picked[..]
        } else {
            raw_data
        };
        if ctl & 0x80 == 0 {
            header = structured(ctl, data.len());
        } else {
            let mut b = Bhs(header);
            b.set_u24(
                off::DATA_SEGMENT_LEN,
                u32::try_from(data.len()).unwrap_or(0),
            );
            header = b.0;
        }
        if let Ok(pairs) = iscsi::text::parse(data) {
            let stage = if ctl & 1 != 0 {
                Stage::Operational
            } else {
                Stage::Security
            };
            let _ = neg.respond(stage, &pairs);
            let _ = neg.offers();
            let _ = neg.params();
        }
        let step = login.on_pdu(&dir, &header, data);
        for r in &step.responses {
            assert_eq!(r.header[0] & 0x3f, 0x23, "only Login Responses");
        }
    }
});
