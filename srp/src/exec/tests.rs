//! The mapping, checked by running SRP IUs through a real engine `Worker` on a
//! RAM LUN: bytes in, parsed, prepared, executed, answered, encoded, parsed back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backends::fault::{FaultAction, FaultBackend, FaultControl, FaultRule, OpKind, OpMatch};
use backends::ram::RamBackend;
use backends::Backend;
use engine::{
    Event, Lun, LunConfig, LunMap, LunRegistry, Nexus, Protocol, ScsiStatus, TargetPort, VecBuf,
    Worker,
};

use super::*;
use crate::iu::{self, encode_rsp, encode_tm_rsp, rsp_flags, ChannelParams, Iu};

const I_PORT: [u8; 16] = [
    0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x50, 0x54, 0x00, 0xff, 0xfe, 0x12, 0x34, 0x56,
];
const PARAMS: ChannelParams = ChannelParams {
    max_it_iu_len: 8260,
    max_ti_iu_len: 8260,
    imm_data_offset: Some(68),
};

struct Rig {
    worker: Worker,
    nexus: Arc<Nexus>,
    next_token: u64,
}

impl Rig {
    fn new(backend: Arc<dyn Backend>) -> Self {
        let registry = LunRegistry::new();
        let lun = Lun::new(LunConfig::new("srp-lun0", [7u8; 16]), backend).expect("lun");
        registry.add(lun.clone());
        let map = LunMap::new();
        map.insert(0, lun);
        let port = Arc::new(TargetPort {
            name: "0x0002c90300a1b2c30002c90300a1b2c3".into(),
            protocol: Protocol::Srp,
            relative_id: 1,
            group_id: 1,
        });
        let nexus = make_nexus(&I_PORT, &port, &map);
        let worker = Worker::new(registry).expect("worker");
        Rig {
            worker,
            nexus,
            next_token: 1,
        }
    }

    fn ram() -> Self {
        Rig::new(Arc::new(RamBackend::new(4 << 20)))
    }

    /// Submits an SRP_CMD IU; `data` is the data-out (immediate or fetched) or a
    /// buffer of the descriptors' length for data-in. Returns the token.
    fn submit(&mut self, iu_bytes: &[u8]) -> (u64, Prepared) {
        let Iu::Cmd(cmd) = iu::parse(iu_bytes, &PARAMS).expect("parses") else {
            panic!("not a command")
        };
        let p = prepare(&cmd).expect("prepares");
        let buf = match cmd.data {
            DataXfer::Immediate(d) => d.to_vec(),
            // A real transport RDMA READs these; the test's payload is a pattern.
            DataXfer::Out(b) => (0..b.total_len).map(|i| (i % 253) as u8).collect(),
            DataXfer::In(b) => vec![0u8; b.total_len as usize],
            DataXfer::None => Vec::new(),
        };
        let token = self.next_token;
        self.next_token += 1;
        let n = self.nexus.clone();
        self.worker
            .submit(&n, p.into_scsi_cmd(token, Box::new(VecBuf(buf))));
        (token, p)
    }

    fn wait(&mut self, want: impl Fn(&Event) -> bool) -> Event {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut ev = Vec::new();
        loop {
            self.worker.wait(20, &mut ev);
            if let Some(i) = ev.iter().position(&want) {
                return ev.swap_remove(i);
            }
            assert!(Instant::now() < deadline, "nothing came: {ev:?}");
        }
    }

    /// Runs one command; returns the encoded SRP_RSP and the data buffer.
    fn run(&mut self, iu_bytes: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let tag: [u8; 8] = iu_bytes[8..16].try_into().unwrap();
        let (token, p) = self.submit(iu_bytes);
        let Event::Cmd(done) = self.wait(|e| matches!(e, Event::Cmd(c) if c.token == token)) else {
            unreachable!()
        };
        let resp = done.response.expect("not aborted");
        let mut out = vec![0u8; PARAMS.max_ti_iu_len as usize];
        let n = encode_rsp(
            &rsp_for(tag, 1, p.dir, &resp),
            PARAMS.max_ti_iu_len,
            &mut out,
        )
        .expect("fits");
        out.truncate(n);
        let mut data = vec![0u8; done.data.len()];
        done.data.read_at(0, &mut data);
        (out, data)
    }

    /// Consumes the power-on unit attention.
    fn clear_ua(&mut self) {
        let (rsp, _) = self.run(&cmd_iu(b"tur-tag!", &[0; 6], 0, &[]));
        assert_eq!(iu::Rsp::parse(&rsp).unwrap().status, 2);
    }
}

/// An SRP_CMD from the offsets of notes §3 (not from our encoder).
fn cmd_iu(tag: &[u8; 8], cdb: &[u8], fmt: u8, tail: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 48];
    b[0] = 0x02;
    b[5] = fmt;
    b[8..16].copy_from_slice(tag);
    b[32..32 + cdb.len()].copy_from_slice(cdb);
    b.extend_from_slice(tail);
    b
}

fn direct(va: u64, len: u32) -> Vec<u8> {
    let mut d = va.to_be_bytes().to_vec();
    d.extend_from_slice(&0x1234u32.to_be_bytes());
    d.extend_from_slice(&len.to_be_bytes());
    d
}

fn rw10(op: u8, lba: u32, blocks: u16) -> [u8; 10] {
    let l = lba.to_be_bytes();
    let n = blocks.to_be_bytes();
    [op, 0, l[0], l[1], l[2], l[3], 0, n[0], n[1], 0]
}

fn imm_write(tag: &[u8; 8], lba: u32, data: &[u8]) -> Vec<u8> {
    let blocks = u16::try_from(data.len() / 512).unwrap();
    let mut tail = u32::try_from(data.len()).unwrap().to_be_bytes().to_vec();
    tail.resize(20, 0); // to offset 68
    tail.extend_from_slice(data);
    cmd_iu(tag, &rw10(0x2a, lba, blocks), 0x30, &tail)
}

#[test]
fn names_and_transport_id() {
    assert_eq!(
        initiator_name(&I_PORT),
        "0xfe80000000000000505400fffe123456"
    );
    let t = transport_id(&I_PORT);
    assert_eq!(t.len(), 24);
    assert_eq!(t[0], 0x04);
    assert_eq!(&t[1..8], &[0; 7]);
    assert_eq!(&t[8..], &I_PORT);
    assert_eq!(tag_u64([0, 0, 0, 0, 0, 0, 1, 2]), 0x102);
}

#[test]
fn luns_decode_as_report_luns_encodes_them() {
    for n in [
        0u64,
        1,
        255,
        256,
        0x3fff,
        0x4000,
        0xff_ffff,
        0x100_0000,
        0x00ff_ffff_ffff,
    ] {
        assert_eq!(decode_lun(&engine::spc::encode_lun(n)), Some(n), "{n:#x}");
    }
    assert_eq!(decode_lun(&[0, 1, 0, 0, 0, 0, 0, 1]), None);
    assert_eq!(decode_lun(&[0x01, 0, 0, 0, 0, 0, 0, 0]), None);
    assert_eq!(decode_lun(&[0x80, 1, 0, 0, 0, 0, 0, 0]), None);
}

#[test]
fn prepare_trims_the_padded_cdb_and_sets_direction() {
    let b = cmd_iu(b"abcdefgh", &rw10(0x28, 0, 2), 0x01, &direct(0x1000, 1024));
    let Iu::Cmd(c) = iu::parse(&b, &PARAMS).unwrap() else {
        panic!()
    };
    let p = prepare(&c).unwrap();
    assert_eq!(p.cdb.as_slice(), &rw10(0x28, 0, 2));
    assert_eq!(p.dir, DataDir::FromDevice);
    assert_eq!(p.len, 1024);
    assert_eq!(p.tag, u64::from_be_bytes(*b"abcdefgh"));
    assert_eq!(p.lun, 0);
    // A 48-byte CDB (16 + 32 additional) is more than the engine holds.
    let mut big = cmd_iu(b"abcdefgh", &[0x7f, 0, 0, 0, 0, 0, 0, 40], 0, &[0; 32]);
    big[31] = 32;
    let Iu::Cmd(c) = iu::parse(&big, &PARAMS).unwrap() else {
        panic!()
    };
    assert_eq!(prepare(&c).unwrap_err(), Sense::invalid_cdb_field(0, None));
}

#[test]
fn commands_run_through_the_engine() {
    let mut r = Rig::ram();
    // The first command meets the power-on unit attention: CHECK CONDITION
    // with sense in the SRP_RSP.
    let (rsp, _) = r.run(&cmd_iu(b"tur-tag!", &[0; 6], 0, &[]));
    let p = iu::Rsp::parse(&rsp).unwrap();
    assert_eq!(p.tag, *b"tur-tag!");
    assert_eq!(p.status, ScsiStatus::CheckCondition as u8);
    assert_eq!(rsp[18] & rsp_flags::SNSVALID, rsp_flags::SNSVALID);
    assert_eq!(p.sense[2] & 0x0f, 0x6, "UNIT ATTENTION");
    assert_eq!(p.req_lim_delta, 1);

    // An immediate-data write of two blocks, then a read of them into a
    // larger buffer: DIUNDER with the difference.
    let data: Vec<u8> = (0..1024u32).map(|i| (i * 7 % 256) as u8).collect();
    let (rsp, _) = r.run(&imm_write(b"write-01", 8, &data));
    let p = iu::Rsp::parse(&rsp).unwrap();
    assert_eq!(
        (p.status, p.data_out, p.sense.len()),
        (0, Residual::None, 0)
    );
    assert_eq!(rsp.len(), 36);

    let (rsp, got) = r.run(&cmd_iu(
        b"read--01",
        &rw10(0x28, 8, 2),
        0x01,
        &direct(0x1000, 1536),
    ));
    let p = iu::Rsp::parse(&rsp).unwrap();
    assert_eq!(p.status, 0);
    assert_eq!(p.data_in, Residual::Under(512));
    assert_eq!(rsp[18], rsp_flags::DIUNDER);
    assert_eq!(&got[..1024], data.as_slice());

    // An indirect data-out (two descriptors) overwrites block 9 and 10; a read
    // with a buffer too small: DIOVER.
    let mut tail = direct(0, 32);
    tail.extend_from_slice(&1024u32.to_be_bytes());
    tail.extend(direct(0x2000, 512));
    tail.extend(direct(0x3000, 512));
    let mut w = cmd_iu(b"write-02", &rw10(0x2a, 9, 2), 0x20, &tail);
    w[6] = 2;
    let (rsp, _) = r.run(&w);
    assert_eq!(iu::Rsp::parse(&rsp).unwrap().status, 0);
    let (rsp, got) = r.run(&cmd_iu(
        b"read--02",
        &rw10(0x28, 8, 3),
        0x01,
        &direct(0x1000, 1024),
    ));
    let p = iu::Rsp::parse(&rsp).unwrap();
    assert_eq!(p.data_in, Residual::Over(512));
    assert_eq!(rsp[18], rsp_flags::DIOVER);
    assert_eq!(&got[..512], &data[..512]);
    let pattern: Vec<u8> = (0..512u32).map(|i| (i % 253) as u8).collect();
    assert_eq!(&got[512..], pattern.as_slice());

    // A write whose data-out (512 bytes) is shorter than its CDB's two blocks:
    // the residual lands in the data-out counts, never in the data-in ones.
    let mut short = imm_write(b"write-03", 20, &[0u8; 512]);
    short[32..42].copy_from_slice(&rw10(0x2a, 20, 2));
    let (rsp, _) = r.run(&short);
    let p = iu::Rsp::parse(&rsp).unwrap();
    assert_eq!(p.data_in, Residual::None);
    assert_eq!(rsp[18] & (rsp_flags::DIOVER | rsp_flags::DIUNDER), 0);
    // The engine writes what came and reports the rest as overflow (SAM-5: the
    // command wanted more than the initiator sent).
    assert_eq!((p.status, p.data_out), (0, Residual::Over(512)));
    assert_eq!(rsp[18], rsp_flags::DOOVER);

    // A LUN we do not have.
    let mut l = cmd_iu(b"nolun-01", &[0x00; 6], 0, &[]);
    l[20..28].copy_from_slice(&[0, 5, 0, 0, 0, 0, 0, 0]);
    let (rsp, _) = r.run(&l);
    let p = iu::Rsp::parse(&rsp).unwrap();
    assert_eq!(p.status, 2);
    assert_eq!(p.sense[12], 0x25, "LOGICAL UNIT NOT SUPPORTED");
}

#[test]
fn sense_is_capped_by_max_ti_iu_len() {
    let mut r = Rig::ram();
    let (token, p) = r.submit(&cmd_iu(b"tur-tag!", &[0; 6], 0, &[]));
    let Event::Cmd(done) = r.wait(|e| matches!(e, Event::Cmd(c) if c.token == token)) else {
        unreachable!()
    };
    let resp = done.response.unwrap();
    assert!(resp.sense.as_ref().unwrap().len() > 8);
    let mut out = [0u8; 256];
    let n = encode_rsp(&rsp_for(*b"tur-tag!", 1, p.dir, &resp), 36 + 8, &mut out).unwrap();
    assert_eq!(n, 44);
    assert_eq!(iu::Rsp::parse(&out[..n]).unwrap().sense.len(), 8);
}

#[test]
fn malformed_command_answers_check_condition() {
    // An external indirect table: the transport answers with the tag.
    let mut tail = direct(0, 64);
    tail.extend_from_slice(&4096u32.to_be_bytes());
    tail.extend(direct(0x1000, 1024));
    let mut b = cmd_iu(b"ext-tbl!", &rw10(0x28, 0, 8), 0x02, &tail);
    b[7] = 1;
    let e = iu::parse(&b, &PARAMS).unwrap_err();
    assert_eq!(e.tag, Some(*b"ext-tbl!"));
    let s = iu_error_sense(&e);
    assert_eq!(
        (s.key, s.asc),
        (SenseKey::IllegalRequest, INVALID_FIELD_IN_INFORMATION_UNIT)
    );
    let sense = sense_bytes(&s);
    let mut out = [0u8; 128];
    let n = encode_rsp(&check_condition(*b"ext-tbl!", 1, &sense), 8260, &mut out).unwrap();
    let p = iu::Rsp::parse(&out[..n]).unwrap();
    assert_eq!((p.tag, p.status), (*b"ext-tbl!", 2));
    assert_eq!((p.sense[12], p.sense[13]), (0x0e, 0x03));
}

fn tsk(tag: &[u8; 8], func: u8, lun: u8, task_tag: &[u8; 8]) -> TskMgmt {
    let mut b = [0u8; 48];
    b[0] = 0x01;
    b[8..16].copy_from_slice(tag);
    b[21] = lun;
    b[30] = func;
    b[32..40].copy_from_slice(task_tag);
    let Iu::TskMgmt(t) = iu::parse(&b, &PARAMS).unwrap() else {
        panic!()
    };
    t
}

/// Runs a task management request; returns its RSP_CODE as the SRP_RSP says.
fn tmf(r: &mut Rig, t: &TskMgmt, token: u64) -> u8 {
    let code = match tmf_request(t, &r.nexus, token) {
        Err(code) => code,
        Ok(req) => {
            r.worker.task_mgmt(req);
            let Event::Tmf { response, .. } =
                r.wait(|e| matches!(e, Event::Tmf { token: x, .. } if *x == token))
            else {
                unreachable!()
            };
            tmf_rsp_code(response)
        }
    };
    let mut out = [0u8; 64];
    let n = encode_tm_rsp(t.tag, 1, code, &mut out).unwrap();
    let p = iu::Rsp::parse(&out[..n]).unwrap();
    assert_eq!(p.tag, t.tag);
    p.resp_data[3]
}

fn held_rig() -> (Rig, FaultControl) {
    let fault = FaultBackend::new(Arc::new(RamBackend::new(4 << 20)));
    let ctl = fault.control();
    let mut r = Rig::new(Arc::new(fault));
    r.clear_ua();
    (r, ctl)
}

#[test]
fn abort_task_of_a_held_write() {
    let (mut r, ctl) = held_rig();
    ctl.add(FaultRule::new(
        OpMatch::kind(OpKind::Write),
        FaultAction::Hold,
    ));
    let (token, _) = r.submit(&imm_write(b"held-wr1", 0, &[0xaa; 512]));
    assert!(
        ctl.wait_held(1, Duration::from_secs(5)),
        "the write is held"
    );
    let t = tsk(b"\x80\0\0\0tmf1", tsk_func::ABORT_TASK, 0, b"held-wr1");
    // The abort cannot finish while the write is in the device: release it
    // after the request is in, then the function completes and the command
    // never answers.
    let req = tmf_request(&t, &r.nexus, 900).unwrap();
    r.worker.task_mgmt(req);
    ctl.clear();
    ctl.release();
    let mut cmd_done = None;
    let mut tmf_done = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut ev = Vec::new();
    while tmf_done.is_none() || cmd_done.is_none() {
        r.worker.wait(20, &mut ev);
        for e in ev.drain(..) {
            match e {
                Event::Cmd(c) if c.token == token => cmd_done = Some(c.response),
                Event::Tmf {
                    token: 900,
                    response,
                } => tmf_done = Some(response),
                _ => {}
            }
        }
        assert!(Instant::now() < deadline, "{cmd_done:?} {tmf_done:?}");
    }
    assert_eq!(tmf_done.map(tmf_rsp_code), Some(tm_rsp_code::COMPLETE));
    assert_eq!(cmd_done, Some(None), "the aborted write gets no response");
    // A second abort of the same tag: the task is gone, which SAM calls complete.
    assert_eq!(tmf(&mut r, &t, 901), tm_rsp_code::COMPLETE);
}

#[test]
fn task_set_functions_and_answer_codes() {
    let (mut r, ctl) = held_rig();
    ctl.add(FaultRule::new(
        OpMatch::kind(OpKind::Write),
        FaultAction::Hold,
    ));
    let (a, _) = r.submit(&imm_write(b"held-wr2", 0, &[1; 512]));
    let (b, _) = r.submit(&imm_write(b"held-wr3", 1, &[2; 512]));
    assert!(ctl.wait_held(2, Duration::from_secs(5)));
    ctl.clear();
    let reset = tsk(b"\x80\0\0\0tmf2", tsk_func::LUN_RESET, 0, &[0xff; 8]);
    r.worker
        .task_mgmt(tmf_request(&reset, &r.nexus, 902).unwrap());
    ctl.release();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut ev = Vec::new();
    while seen.len() < 3 {
        r.worker.wait(20, &mut ev);
        for e in ev.drain(..) {
            match e {
                Event::Cmd(c) => seen.push((c.token, c.response.is_none())),
                Event::Tmf { token, response } => {
                    assert_eq!(tmf_rsp_code(response), tm_rsp_code::COMPLETE);
                    seen.push((token, true));
                }
            }
        }
        assert!(Instant::now() < deadline, "{seen:?}");
    }
    seen.sort_unstable();
    assert_eq!(seen, vec![(a, true), (b, true), (902, true)]);
    // After the reset: a unit attention for the nexus, then the other functions.
    r.clear_ua();
    let abort_set = tsk(b"\x80\0\0\0tmf3", tsk_func::ABORT_TASK_SET, 0, &[0; 8]);
    assert_eq!(tmf(&mut r, &abort_set, 903), tm_rsp_code::COMPLETE);
    let clear_set = tsk(b"\x80\0\0\0tmf4", tsk_func::CLEAR_TASK_SET, 0, &[0; 8]);
    assert_eq!(tmf(&mut r, &clear_set, 904), tm_rsp_code::COMPLETE);
    let clear_aca = tsk(b"\x80\0\0\0tmf5", tsk_func::CLEAR_ACA, 0, &[0; 8]);
    assert_eq!(tmf(&mut r, &clear_aca, 905), tm_rsp_code::NOT_SUPPORTED);
    let unknown = tsk(b"\x80\0\0\0tmf6", 0x80, 0, &[0; 8]);
    assert_eq!(tmf(&mut r, &unknown, 906), tm_rsp_code::NOT_SUPPORTED);
    let no_lun = tsk(b"\x80\0\0\0tmf7", tsk_func::LUN_RESET, 9, &[0; 8]);
    assert_eq!(tmf(&mut r, &no_lun, 907), tm_rsp_code::FAILED);
}
