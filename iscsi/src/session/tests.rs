//! Scripted PDU exchanges against a real engine worker and a RAM LUN.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backends::ram::RamBackend;
use engine::nexus::iscsi_transport_id;
use engine::{Lun, LunConfig, LunMap, LunRegistry, Nexus, Protocol, TargetPort, Worker};

use super::*;
use crate::pdu::{Frame, LogoutRequest, Snack, SnackType, TaskAttribute};

const LUN0: [u8; 8] = [0; 8];
const BS: u32 = 512;

struct Dir;

impl Discovery for Dir {
    fn send_targets(
        &self,
        _initiator: &str,
        _target: Option<&str>,
        query: &str,
    ) -> Vec<(String, String)> {
        let n = if query == "All" { 40 } else { 1 };
        let mut v = Vec::new();
        for i in 0..n {
            v.push((
                "TargetName".to_string(),
                format!("iqn.2026-11.org.oxtarget:target-with-a-long-name-{i:04}"),
            ));
            v.push(("TargetAddress".to_string(), "127.0.0.1:3260,1".to_string()));
        }
        v
    }
}

struct H {
    s: Session,
    w: Worker,
    cmd_sn: u32,
    itt: u32,
    now: Instant,
}

fn params() -> FfpParams {
    FfpParams {
        max_xmit_data_segment_length: 1024,
        max_recv_data_segment_length: 8192,
        max_burst_length: 2048,
        first_burst_length: 1024,
        initial_r2t: true,
        immediate_data: true,
        max_outstanding_r2t: 2,
        queue_depth: 8,
        ..FfpParams::default()
    }
}

impl H {
    fn new(p: FfpParams) -> H {
        let registry = LunRegistry::new();
        let lun = Lun::new(
            LunConfig::new("lun0", [7; 16]),
            Arc::new(RamBackend::new(16 << 20)),
        )
        .expect("lun");
        registry.add(lun.clone());
        let map = LunMap::new();
        map.insert(0, lun);
        let port = Arc::new(TargetPort {
            name: "iqn.2026-11.org.oxtarget:t0,t,0x0001".into(),
            protocol: Protocol::Iscsi,
            relative_id: 1,
            group_id: 1,
        });
        let name = "iqn.2026-11.org.test:init";
        let nexus = Nexus::new(
            &format!("{name},i,0x23d000000001"),
            iscsi_transport_id(name),
            port,
            map,
        );
        let now = Instant::now();
        let s = Session::new(
            SessionSetup {
                params: p,
                nexus: Some(nexus),
                initiator_name: name.to_string(),
                target_name: Some("iqn.2026-11.org.oxtarget:t0".to_string()),
                directory: Some(Arc::new(Dir)),
                cid: 1,
                exp_cmd_sn: 10,
                stat_sn: 100,
                token_base: 7 << 32,
                pool: BufPool::new(),
            },
            now,
        );
        let mut h = H {
            s,
            w: Worker::new(registry).expect("worker"),
            cmd_sn: 10,
            itt: 1,
            now,
        };
        // Take the power-on unit attention: CmdSN 10 and StatSN 100 are used.
        let c = h.command(&[0; 6], 0, false, false, true);
        h.scsi(c, &[]);
        let (r, _) = response(&h.out()).expect("TUR");
        assert_eq!((r.status, r.stat_sn), (2, 100));
        h
    }

    fn send(&mut self, pdu: Pdu, data: &[u8]) {
        let frame = Frame {
            header: pdu.to_bytes().expect("encode"),
            ahs: Vec::new(),
            data: data.to_vec(),
        };
        self.send_frame(frame);
    }

    fn send_frame(&mut self, frame: Frame) {
        self.s
            .receive(FrameRef::from(&frame), &mut self.w, self.now)
            .expect("session stays up");
        self.pump();
    }

    /// Runs the engine until it has nothing left for us.
    fn pump(&mut self) {
        for _ in 0..200 {
            let mut ev = Vec::new();
            if self.s.tasks() > 0 {
                self.w.wait(5, &mut ev);
            } else {
                self.w.poll(&mut ev);
            }
            let idle = ev.is_empty();
            for e in ev {
                self.s.complete(e).expect("complete");
            }
            if idle && self.w.in_flight() == 0 {
                break;
            }
        }
    }

    /// Everything the session sent so far: parsed headers and data bytes.
    fn out(&mut self) -> Vec<(Pdu, Vec<u8>)> {
        let mut v = Vec::new();
        while let Some(o) = self.s.pop_output() {
            for p in &o.pdus {
                let parsed = Pdu::parse(&p.header).expect("our PDUs parse");
                v.push((parsed, o.segment_bytes(p)));
            }
        }
        v
    }

    fn next_itt(&mut self) -> u32 {
        self.itt += 1;
        self.itt
    }

    fn next_sn(&mut self) -> u32 {
        let s = self.cmd_sn;
        self.cmd_sn += 1;
        s
    }

    fn command(
        &mut self,
        cdb: &[u8],
        edtl: u32,
        read: bool,
        write: bool,
        final_: bool,
    ) -> ScsiCommand {
        let mut c = [0u8; 16];
        c[..cdb.len()].copy_from_slice(cdb);
        ScsiCommand {
            immediate: false,
            final_,
            read,
            write,
            attr: TaskAttribute::Simple,
            total_ahs_words: 0,
            data_segment_len: 0,
            lun: LUN0,
            itt: self.next_itt(),
            expected_data_len: edtl,
            cmd_sn: self.next_sn(),
            exp_stat_sn: 0,
            cdb: c,
        }
    }

    fn scsi(&mut self, c: ScsiCommand, data: &[u8]) {
        let mut c = c;
        c.data_segment_len = data.len() as u32;
        self.send(Pdu::ScsiCommand(c), data);
    }

    fn data_out(
        &mut self,
        itt: u32,
        ttt: u32,
        data_sn: u32,
        offset: u32,
        data: &[u8],
        final_: bool,
    ) {
        self.send(
            Pdu::DataOut(DataOut {
                final_,
                data_segment_len: data.len() as u32,
                lun: LUN0,
                itt,
                ttt,
                exp_stat_sn: 0,
                data_sn,
                buffer_offset: offset,
            }),
            data,
        );
    }

    /// READ(10) of `blocks` and the data that came back, checking the Data-In
    /// sequence on the way.
    fn read(&mut self, lba: u32, blocks: u16) -> (Vec<u8>, Vec<(Pdu, Vec<u8>)>) {
        let c = self.command(
            &read10(lba, blocks),
            u32::from(blocks) * BS,
            true,
            false,
            true,
        );
        self.scsi(c, &[]);
        let out = self.out();
        let mut data = Vec::new();
        for (i, (p, d)) in out.iter().enumerate() {
            if let Pdu::DataIn(din) = p {
                assert_eq!(din.data_sn, i as u32);
                assert_eq!(din.buffer_offset as usize, data.len());
                data.extend_from_slice(d);
            }
        }
        (data, out)
    }
}

fn read10(lba: u32, blocks: u16) -> [u8; 10] {
    let l = lba.to_be_bytes();
    let n = blocks.to_be_bytes();
    [0x28, 0, l[0], l[1], l[2], l[3], 0, n[0], n[1], 0]
}

fn write10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = read10(lba, blocks);
    c[0] = 0x2a;
    c
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn r2ts(out: &[(Pdu, Vec<u8>)]) -> Vec<pdu::R2t> {
    out.iter()
        .filter_map(|(p, _)| match p {
            Pdu::R2t(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

fn response(out: &[(Pdu, Vec<u8>)]) -> Option<(ScsiResponse, Vec<u8>)> {
    out.iter().find_map(|(p, d)| match p {
        Pdu::ScsiResponse(r) => Some((r.clone(), d.clone())),
        _ => None,
    })
}

#[test]
fn write_with_immediate_data_and_r2ts_then_read_back_in_several_data_in() {
    let mut h = H::new(params());
    let data = pattern(8 * BS as usize, 3);
    let c = h.command(&write10(100, 8), 4096, false, true, true);
    let itt = c.itt;
    h.scsi(c, &data[..512]);
    let out = h.out();
    let r = r2ts(&out);
    // Two outstanding R2Ts of MaxBurstLength from the end of the immediate data.
    assert_eq!(r.len(), 2);
    assert_eq!(
        (r[0].buffer_offset, r[0].desired_len, r[0].r2t_sn),
        (512, 2048, 0)
    );
    assert_eq!(
        (r[1].buffer_offset, r[1].desired_len, r[1].r2t_sn),
        (2560, 1536, 1)
    );
    assert_ne!(r[0].ttt, r[1].ttt);
    assert_eq!(r[0].stat_sn, 101, "R2T carries the next StatSN");
    // First burst in two PDUs of 1024.
    h.data_out(itt, r[0].ttt, 0, 512, &data[512..1536], false);
    h.data_out(itt, r[0].ttt, 1, 1536, &data[1536..2560], true);
    assert!(h.out().is_empty());
    h.data_out(itt, r[1].ttt, 0, 2560, &data[2560..], true);
    let out = h.out();
    let (resp, sense) = response(&out).expect("response");
    assert_eq!(resp.status, 0, "{sense:02x?}");
    assert!(sense.is_empty());
    assert_eq!(resp.itt, itt);
    assert_eq!(resp.stat_sn, 101);
    assert_eq!(resp.exp_cmd_sn, 12);
    assert_eq!(resp.exp_data_sn, 2, "ExpDataSN counts the R2Ts");

    let (back, out) = h.read(100, 8);
    assert_eq!(back, data);
    let dins: Vec<&DataIn> = out
        .iter()
        .filter_map(|(p, _)| match p {
            Pdu::DataIn(d) => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(dins.len(), 4, "split at the initiator's 1024-byte segments");
    // F at the end of each 2048-byte burst; status only in the last.
    let f: Vec<bool> = dins.iter().map(|d| d.final_).collect();
    assert_eq!(f, [false, true, false, true]);
    assert_eq!(dins[3].status, Some(0));
    assert!(dins[..3].iter().all(|d| d.status.is_none()));
    assert_eq!(dins[3].stat_sn, 102);
    assert!(response(&out).is_none(), "status went with the data");
}

#[test]
fn data_in_sequences_end_at_max_burst_length() {
    // 1000-byte bursts, 768-byte segments: PDUs of 768 and 232 bytes.
    let mut h = H::new(FfpParams {
        max_xmit_data_segment_length: 768,
        max_burst_length: 1000,
        ..params()
    });
    let (data, out) = h.read(0, 5);
    assert_eq!(data.len(), 2560);
    let lens: Vec<(u32, bool)> = out
        .iter()
        .filter_map(|(p, _)| match p {
            Pdu::DataIn(d) => Some((d.data_segment_len, d.final_)),
            _ => None,
        })
        .collect();
    assert_eq!(
        lens,
        [
            (768, false),
            (232, true),
            (768, false),
            (232, true),
            (560, true)
        ]
    );
}

#[test]
fn unsolicited_data_out_then_r2t() {
    let mut h = H::new(FfpParams {
        initial_r2t: false,
        ..params()
    });
    let data = pattern(4096, 9);
    let c = h.command(&write10(8, 8), 4096, false, true, false);
    let itt = c.itt;
    h.scsi(c, &data[..256]);
    assert!(
        h.out().is_empty(),
        "no R2T before the unsolicited burst ends"
    );
    // The unsolicited sequence: up to FirstBurstLength (1024), DataSN from 0.
    h.data_out(itt, RESERVED_TAG, 0, 256, &data[256..768], false);
    h.data_out(itt, RESERVED_TAG, 1, 768, &data[768..1024], true);
    let out = h.out();
    let r = r2ts(&out);
    assert_eq!(r.len(), 2);
    assert_eq!((r[0].buffer_offset, r[0].desired_len), (1024, 2048));
    assert_eq!((r[1].buffer_offset, r[1].desired_len), (3072, 1024));
    h.data_out(itt, r[0].ttt, 0, 1024, &data[1024..2048], false);
    h.data_out(itt, r[0].ttt, 1, 2048, &data[2048..3072], true);
    h.data_out(itt, r[1].ttt, 0, 3072, &data[3072..], true);
    assert_eq!(response(&h.out()).expect("response").0.status, 0);
    assert_eq!(h.read(8, 8).0, data);
}

#[test]
fn data_out_placed_by_the_adapter() {
    let mut h = H::new(params());
    let data = pattern(2048, 77);
    let c = h.command(&write10(40, 4), 2048, false, true, true);
    let itt = c.itt;
    h.scsi(c, &[]);
    let r = r2ts(&h.out());
    let header = |sn: u32, off: u32, final_: bool| {
        Pdu::DataOut(DataOut {
            final_,
            data_segment_len: 1024,
            lun: LUN0,
            itt,
            ttt: r[0].ttt,
            exp_stat_sn: 0,
            data_sn: sn,
            buffer_offset: off,
        })
        .to_bytes()
        .expect("enc")
    };
    // A wrong DataSN gets no placement (it goes through `receive` and a Reject).
    assert!(h.s.placement(&header(1, 0, false)).is_none());
    for (sn, off) in [(0u32, 0u32), (1, 1024)] {
        let hd = header(sn, off, sn == 1);
        let dst = h.s.placement(&hd).expect("placement");
        assert_eq!(dst.len(), 1024);
        dst.copy_from_slice(&data[off as usize..off as usize + 1024]);
        h.s.receive_placed(&hd, &mut h.w, h.now).expect("placed");
        h.pump();
    }
    let (resp, _) = response(&h.out()).expect("response");
    assert_eq!(resp.status, 0);
    assert_eq!(h.read(40, 4).0, data);
}

#[test]
fn unsolicited_data_refused_when_initial_r2t_is_yes() {
    let mut h = H::new(params());
    let c = h.command(&write10(0, 8), 4096, false, true, false);
    h.scsi(c, &[]);
    let out = h.out();
    assert!(matches!(out[0].0, Pdu::Reject(ref r) if r.reason == reject_reason::PROTOCOL_ERROR));
    // Immediate data beyond FirstBurstLength is a protocol error too.
    let c = h.command(&write10(0, 8), 4096, false, true, true);
    h.scsi(c, &[0u8; 2048]);
    assert!(matches!(h.out()[0].0, Pdu::Reject(_)));
}

#[test]
fn residuals_follow_expected_data_transfer_length() {
    let mut h = H::new(params());
    // One block read with room for 10000 bytes: underflow.
    let c = h.command(&read10(0, 1), 10_000, true, false, true);
    h.scsi(c, &[]);
    let out = h.out();
    let last = out
        .iter()
        .rev()
        .find_map(|(p, _)| match p {
            Pdu::DataIn(d) => Some(d.clone()),
            _ => None,
        })
        .expect("data-in");
    assert_eq!(last.residual, ResidualFlag::Underflow);
    assert_eq!(last.residual_count, 10_000 - 512);
    let total: usize = out.iter().map(|(_, d)| d.len()).sum();
    assert_eq!(total, 512);
    // Room for 200 bytes: overflow, 200 bytes sent.
    let c = h.command(&read10(0, 1), 200, true, false, true);
    h.scsi(c, &[]);
    let out = h.out();
    let total: usize = out.iter().map(|(_, d)| d.len()).sum();
    assert_eq!(total, 200);
    match &out.last().expect("pdu").0 {
        Pdu::DataIn(d) => {
            assert_eq!(d.residual, ResidualFlag::Overflow);
            assert_eq!(d.residual_count, 312);
        }
        p => panic!("{p:?}"),
    }
    // No room at all: a SCSI Response with the overflow.
    let c = h.command(&read10(0, 1), 0, true, false, true);
    h.scsi(c, &[]);
    let (r, _) = response(&h.out()).expect("response");
    assert_eq!(r.residual, ResidualFlag::Overflow);
    assert_eq!(r.residual_count, 512);
    // A write with more data than the CDB wants: underflow.
    let c = h.command(&write10(0, 1), 1024, false, true, true);
    h.scsi(c, &[5u8; 1024]);
    let (r, _) = response(&h.out()).expect("response");
    assert_eq!(
        (r.status, r.residual, r.residual_count),
        (0, ResidualFlag::Underflow, 512)
    );
}

#[test]
fn check_condition_carries_sense_with_length_prefix() {
    let mut h = H::new(params());
    let blocks = (16 << 20) / 512;
    let c = h.command(&read10(blocks, 1), 512, true, false, true);
    h.scsi(c, &[]);
    let (r, d) = response(&h.out()).expect("response");
    assert_eq!(r.status, 2);
    let n = usize::from(u16::from_be_bytes([d[0], d[1]]));
    assert_eq!(n, d.len() - 2);
    assert_eq!(d[2] & 0x7f, 0x70);
    assert_eq!(d[2 + 2] & 0x0f, 5, "ILLEGAL REQUEST");
    assert_eq!(d[2 + 12], 0x21, "LBA OUT OF RANGE");
    assert_eq!(r.residual, ResidualFlag::Underflow);
}

#[test]
fn wrong_data_sn_is_rejected_and_ends_the_task() {
    for bad in [5u32, RESERVED_TAG] {
        let mut h = H::new(params());
        let c = h.command(&write10(0, 2), 1024, false, true, true);
        let itt = c.itt;
        h.scsi(c, &[]);
        let r = r2ts(&h.out());
        h.data_out(itt, r[0].ttt, 0, 0, &[1u8; 512], false);
        h.data_out(itt, r[0].ttt, bad, 512, &[1u8; 512], true);
        let out = h.out();
        assert_eq!(out.len(), 1);
        match &out[0] {
            (Pdu::Reject(r), d) => {
                assert_eq!(r.reason, reject_reason::PROTOCOL_ERROR);
                assert_eq!(d.len(), 48);
                assert_eq!(u32::from_be_bytes([d[16], d[17], d[18], d[19]]), itt);
            }
            p => panic!("{p:?}"),
        }
        assert_eq!(h.s.tasks(), 0);
        // The rest of that task's data is dropped; the session goes on.
        h.data_out(itt, r[0].ttt, 1, 512, &[1u8; 512], true);
        assert!(h.out().is_empty());
        let c = h.command(&[0, 0, 0, 0, 0, 0], 0, false, false, true);
        h.scsi(c, &[]);
        assert_eq!(response(&h.out()).expect("TUR").0.status, 0);
    }
}

/// RFC 7143 §7.8: a Data-Out whose data digest fails is discarded with a
/// Reject (data digest error); its write takes the rest of its outstanding
/// data and ends with CHECK CONDITION, ABORTED COMMAND / PROTOCOL SERVICE CRC
/// ERROR, writing nothing. A command whose immediate data fails keeps its
/// CmdSN: sent again, it runs.
#[test]
fn data_digest_errors_are_rejected_and_end_the_write() {
    let mut h = H::new(params());
    // A 4 KiB write: two R2Ts of 2 KiB (MaxBurstLength), each in 1 KiB PDUs.
    let c = h.command(&write10(0, 8), 4096, false, true, true);
    let itt = c.itt;
    h.scsi(c, &[]);
    let r = r2ts(&h.out());
    assert_eq!(r.len(), 2);
    let bad = Pdu::DataOut(DataOut {
        final_: false,
        data_segment_len: 1024,
        lun: LUN0,
        itt,
        ttt: r[0].ttt,
        exp_stat_sn: 0,
        data_sn: 0,
        buffer_offset: 0,
    })
    .to_bytes()
    .expect("encode");
    h.s.data_digest_error(&bad, h.now).expect("stays up");
    let out = h.out();
    match &out[..] {
        [(Pdu::Reject(rj), d)] => {
            assert_eq!(rj.reason, reject_reason::DATA_DIGEST_ERROR);
            assert_eq!(d[..], bad[..]);
        }
        other => panic!("{other:?}"),
    }
    // The rest of both sequences is taken, unchecked; then the status.
    h.data_out(itt, r[0].ttt, 1, 1024, &[1u8; 1024], true);
    assert!(h.out().is_empty());
    h.data_out(itt, r[1].ttt, 0, 2048, &[1u8; 1024], false);
    h.data_out(itt, r[1].ttt, 1, 3072, &[1u8; 1024], true);
    let (resp, sense) = response(&h.out()).expect("status");
    assert_eq!(resp.status, 2);
    assert_eq!(resp.exp_data_sn, 2, "two R2Ts");
    // After the two-byte SenseLength.
    assert_eq!((sense[4] & 0x0f, sense[14], sense[15]), (0x0b, 0x47, 0x05));
    assert_eq!(h.s.tasks(), 0);
    let (data, _) = h.read(0, 8);
    assert!(data.iter().all(|&b| b == 0), "nothing written");

    // A command with immediate data whose digest fails: discarded, its CmdSN
    // still expected.
    let exp = h.s.exp_cmd_sn();
    let mut c = h.command(&write10(0, 1), 512, false, true, true);
    c.data_segment_len = 512;
    let header = Pdu::ScsiCommand(c.clone()).to_bytes().expect("encode");
    h.s.data_digest_error(&header, h.now).expect("stays up");
    assert_eq!(reject_of(&h.out()), reject_reason::DATA_DIGEST_ERROR);
    assert_eq!(h.s.exp_cmd_sn(), exp);
    h.scsi(c, &[9u8; 512]);
    assert_eq!(response(&h.out()).expect("status").0.status, 0);
    assert_eq!(h.read(0, 1).0, vec![9u8; 512]);
}

fn reject_of(out: &[(Pdu, Vec<u8>)]) -> u8 {
    match out {
        [(Pdu::Reject(r), _)] => r.reason,
        other => panic!("{other:?}"),
    }
}

#[test]
fn data_out_with_wrong_ttt_offset_or_length_is_rejected() {
    type Bad = fn(&mut u32, &mut u32, &mut usize);
    let cases: [Bad; 3] = [
        |ttt, _, _| *ttt ^= 0x55,
        |_, off, _| *off += 512,
        |_, _, len| *len += 512,
    ];
    for bad in cases {
        let mut h = H::new(params());
        let c = h.command(&write10(0, 2), 1024, false, true, true);
        let itt = c.itt;
        h.scsi(c, &[]);
        let r = r2ts(&h.out());
        let (mut ttt, mut off, mut len) = (r[0].ttt, 0u32, 1024usize);
        bad(&mut ttt, &mut off, &mut len);
        h.data_out(itt, ttt, 0, off, &vec![0u8; len], true);
        let out = h.out();
        assert!(matches!(out[0].0, Pdu::Reject(_)), "{out:?}");
        assert_eq!(h.s.tasks(), 0);
    }
}

#[test]
fn final_bit_before_the_burst_ends_is_rejected() {
    let mut h = H::new(params());
    let c = h.command(&write10(0, 2), 1024, false, true, true);
    let itt = c.itt;
    h.scsi(c, &[]);
    let r = r2ts(&h.out());
    h.data_out(itt, r[0].ttt, 0, 0, &[0u8; 512], true);
    assert!(matches!(h.out()[0].0, Pdu::Reject(_)));
}

#[test]
fn cmd_sn_window_drops_outside_and_holds_ahead() {
    let mut h = H::new(params());
    assert_eq!(h.s.exp_cmd_sn(), 11);
    assert_eq!(h.s.max_cmd_sn(), 18);
    // Beyond MaxCmdSN: ignored.
    let mut c = h.command(&[0; 6], 0, false, false, true);
    c.cmd_sn = 19;
    h.scsi(c, &[]);
    // A duplicate of an old CmdSN: ignored.
    let mut c = h.command(&[0; 6], 0, false, false, true);
    c.cmd_sn = 10;
    h.scsi(c, &[]);
    assert!(h.out().is_empty());
    assert_eq!(h.s.exp_cmd_sn(), 11);
    // CmdSN 11 waits for 10.
    let mut c = h.command(&[0; 6], 0, false, false, true);
    c.cmd_sn = 12;
    let late = c.itt;
    h.scsi(c, &[]);
    assert!(h.out().is_empty());
    let mut c = h.command(&[0; 6], 0, false, false, true);
    c.cmd_sn = 11;
    let first = c.itt;
    h.scsi(c, &[]);
    let out = h.out();
    let itts: Vec<u32> = out
        .iter()
        .filter_map(|(p, _)| match p {
            Pdu::ScsiResponse(r) => Some(r.itt),
            _ => None,
        })
        .collect();
    assert_eq!(itts, [first, late]);
    assert_eq!(h.s.exp_cmd_sn(), 13);
    // Immediate commands do not use the window.
    let mut c = h.command(&[0; 6], 0, false, false, true);
    c.immediate = true;
    c.cmd_sn = 13;
    h.scsi(c, &[]);
    assert_eq!(response(&h.out()).expect("response").0.status, 0);
    assert_eq!(h.s.exp_cmd_sn(), 13);
}

#[test]
fn window_closes_at_queue_depth() {
    let mut h = H::new(FfpParams {
        queue_depth: 2,
        ..params()
    });
    assert_eq!(h.s.max_cmd_sn(), 12);
    // Two writes waiting for data fill the queue.
    for _ in 0..2 {
        let c = h.command(&write10(0, 1), 512, false, true, true);
        h.scsi(c, &[]);
    }
    let out = h.out();
    let last = r2ts(&out).pop().expect("r2t");
    assert_eq!(last.exp_cmd_sn, 13);
    assert_eq!(last.max_cmd_sn, 12, "no room: MaxCmdSN = ExpCmdSN - 1");
    // A command sent into the closed window is ignored, even at ExpCmdSN.
    let c = h.command(&[0; 6], 0, false, false, true);
    h.scsi(c, &[]);
    assert!(h.out().is_empty());
    assert_eq!(h.s.tasks(), 2);
    assert_eq!(h.s.exp_cmd_sn(), 13);
}

#[test]
fn nop_out_is_echoed_and_pings_time_out() {
    let mut h = H::new(params());
    let itt = h.next_itt();
    let sn = h.next_sn();
    let ping = pattern(3000, 1);
    h.send(
        Pdu::NopOut(NopOut {
            immediate: false,
            data_segment_len: ping.len() as u32,
            lun: LUN0,
            itt,
            ttt: RESERVED_TAG,
            cmd_sn: sn,
            exp_stat_sn: 0,
        }),
        &ping,
    );
    let out = h.out();
    match &out[0] {
        (Pdu::NopIn(n), d) => {
            assert_eq!(n.itt, itt);
            assert_eq!(n.ttt, RESERVED_TAG);
            assert_eq!(n.stat_sn, 101);
            assert_eq!(
                d[..],
                ping[..1024],
                "echo bounded by MaxRecvDataSegmentLength"
            );
        }
        p => panic!("{p:?}"),
    }
    // Silence: a ping with a TTT, StatSN not advanced.
    let t0 = h.now;
    h.s.tick(t0 + Duration::from_secs(5)).expect("tick");
    assert!(h.out().is_empty());
    h.s.tick(t0 + Duration::from_secs(16)).expect("tick");
    let out = h.out();
    let ttt = match &out[0].0 {
        Pdu::NopIn(n) => {
            assert_eq!(n.itt, RESERVED_TAG);
            assert_ne!(n.ttt, RESERVED_TAG);
            assert_eq!(n.stat_sn, 102);
            n.ttt
        }
        p => panic!("{p:?}"),
    };
    // Answered: no timeout.
    h.now = t0 + Duration::from_secs(20);
    h.send(
        Pdu::NopOut(NopOut {
            immediate: true,
            itt: RESERVED_TAG,
            ttt,
            cmd_sn: h.cmd_sn,
            ..NopOut::default()
        }),
        &[],
    );
    assert!(h.out().is_empty());
    h.s.tick(t0 + Duration::from_secs(40)).expect("tick");
    h.out();
    // Unanswered for ping_timeout: the connection goes.
    assert!(matches!(
        h.s.tick(t0 + Duration::from_secs(80)),
        Err(SessionError::PingTimeout(_))
    ));
}

fn tmf(h: &mut H, function: u8, referenced: u32, ref_cmd_sn: u32) -> TaskMgmtResponse {
    let itt = h.next_itt();
    h.send(
        Pdu::TaskMgmtRequest(TaskMgmtRequest {
            immediate: true,
            function,
            lun: LUN0,
            itt,
            referenced_task_tag: referenced,
            cmd_sn: h.cmd_sn,
            exp_stat_sn: 0,
            ref_cmd_sn,
            exp_data_sn: 0,
        }),
        &[],
    );
    let out = h.out();
    out.iter()
        .find_map(|(p, _)| match p {
            Pdu::TaskMgmtResponse(r) if r.itt == itt => Some(r.clone()),
            _ => None,
        })
        .expect("TMF response")
}

#[test]
fn abort_task_answers_by_ref_cmd_sn() {
    let mut h = H::new(params());
    // A write waiting for its data: aborted here, no SCSI response; the answer
    // waits until the R2T already sent has its data (RFC 7143 §4.2.3.3).
    let c = h.command(&write10(0, 4), 2048, false, true, true);
    let (itt, sn) = (c.itt, c.cmd_sn);
    h.scsi(c, &[]);
    let r2t = r2ts(&h.out())[0].clone();
    let tmf_itt = h.next_itt();
    h.send(
        Pdu::TaskMgmtRequest(TaskMgmtRequest {
            immediate: true,
            function: tmf_code::ABORT_TASK,
            lun: LUN0,
            itt: tmf_itt,
            referenced_task_tag: itt,
            cmd_sn: h.cmd_sn,
            exp_stat_sn: 0,
            ref_cmd_sn: sn,
            exp_data_sn: 0,
        }),
        &[],
    );
    assert!(h.out().is_empty(), "no answer while the R2T is outstanding");
    h.data_out(itt, r2t.ttt, 0, 0, &[7u8; 1024], false);
    assert!(h.out().is_empty());
    h.data_out(itt, r2t.ttt, 1, 1024, &[7u8; 1024], true);
    let out = h.out();
    assert_eq!(out.len(), 1, "{out:?}");
    match &out[0].0 {
        Pdu::TaskMgmtResponse(r) => {
            assert_eq!(
                (r.itt, r.response),
                (tmf_itt, tmf_response::FUNCTION_COMPLETE)
            )
        }
        p => panic!("{p:?}"),
    }
    assert_eq!(h.s.tasks(), 0);
    // Nothing was written.
    assert_eq!(h.read(0, 4).0, vec![0u8; 2048]);
    // A task long done: does not exist.
    let r = tmf(&mut h, tmf_code::ABORT_TASK, 0x999, sn);
    assert_eq!(r.response, tmf_response::TASK_DOES_NOT_EXIST);
    // A command not received yet (RefCmdSN in the window, below the TMF's own
    // CmdSN): function complete, and the command is dropped when it comes.
    let ahead = h.cmd_sn;
    h.cmd_sn += 1;
    let r = tmf(&mut h, tmf_code::ABORT_TASK, 0x777, ahead);
    assert_eq!(r.response, tmf_response::FUNCTION_COMPLETE);
    let mut c = h.command(&[0; 6], 0, false, false, true);
    c.cmd_sn = ahead;
    c.itt = 0x777;
    h.cmd_sn -= 1;
    h.scsi(c, &[]);
    assert!(h.out().is_empty());
    assert_eq!(h.s.exp_cmd_sn(), ahead + 1);
}

#[test]
fn lun_reset_waits_for_aborted_writes_to_drain() {
    let mut h = H::new(params());
    let c = h.command(&write10(8, 2), 1024, false, true, true);
    let itt = c.itt;
    h.scsi(c, &[]);
    let r2t = r2ts(&h.out())[0].clone();
    let tmf_itt = h.next_itt();
    h.send(
        Pdu::TaskMgmtRequest(TaskMgmtRequest {
            immediate: true,
            function: tmf_code::LOGICAL_UNIT_RESET,
            lun: LUN0,
            itt: tmf_itt,
            referenced_task_tag: RESERVED_TAG,
            cmd_sn: h.cmd_sn,
            exp_stat_sn: 0,
            ref_cmd_sn: 0,
            exp_data_sn: 0,
        }),
        &[],
    );
    assert!(
        h.out().is_empty(),
        "the engine answered, the write still drains"
    );
    h.data_out(itt, r2t.ttt, 0, 0, &[1u8; 1024], true);
    let out = h.out();
    assert!(
        matches!(&out[..], [(Pdu::TaskMgmtResponse(r), _)] if r.itt == tmf_itt && r.response == 0),
        "{out:?}"
    );
    assert_eq!(h.s.tasks(), 0);
}

#[test]
fn every_function_code_is_answered() {
    let mut h = H::new(params());
    let cases = [
        (tmf_code::ABORT_TASK_SET, tmf_response::FUNCTION_COMPLETE),
        (tmf_code::CLEAR_ACA, tmf_response::REJECTED),
        (tmf_code::CLEAR_TASK_SET, tmf_response::FUNCTION_COMPLETE),
        (
            tmf_code::LOGICAL_UNIT_RESET,
            tmf_response::FUNCTION_COMPLETE,
        ),
        (tmf_code::TARGET_WARM_RESET, tmf_response::FUNCTION_COMPLETE),
        (
            tmf_code::TASK_REASSIGN,
            tmf_response::REASSIGNMENT_NOT_SUPPORTED,
        ),
        (9, tmf_response::FUNCTION_COMPLETE),
        (10, tmf_response::FUNCTION_COMPLETE),
        (11, tmf_response::FUNCTION_COMPLETE),
        (12, 7),
        (13, tmf_response::NOT_SUPPORTED),
        (0x7f, tmf_response::NOT_SUPPORTED),
    ];
    for (code, want) in cases {
        let sn = h.cmd_sn;
        let r = tmf(&mut h, code, 0x1234, sn);
        assert_eq!(r.response, want, "function {code}");
    }
    assert!(!h.s.is_closing());
    let sn = h.cmd_sn;
    let r = tmf(&mut h, tmf_code::TARGET_COLD_RESET, 0, sn);
    assert_eq!(r.response, tmf_response::FUNCTION_COMPLETE);
    assert!(h.s.is_closing());
}

#[test]
fn logout_closes_after_commands_and_refuses_recovery() {
    let mut h = H::new(params());
    let itt = h.next_itt();
    h.send(
        Pdu::LogoutRequest(LogoutRequest {
            immediate: true,
            reason: LogoutReason::RemoveConnectionForRecovery,
            itt,
            cid: 1,
            cmd_sn: h.cmd_sn,
            exp_stat_sn: 0,
        }),
        &[],
    );
    match &h.out()[0].0 {
        Pdu::LogoutResponse(r) => assert_eq!(r.response, logout_response::RECOVERY_NOT_SUPPORTED),
        p => panic!("{p:?}"),
    }
    let itt = h.next_itt();
    let sn = h.next_sn();
    h.send(
        Pdu::LogoutRequest(LogoutRequest {
            immediate: false,
            reason: LogoutReason::CloseConnection,
            itt,
            cid: 9,
            cmd_sn: sn,
            exp_stat_sn: 0,
        }),
        &[],
    );
    match &h.out()[0].0 {
        Pdu::LogoutResponse(r) => assert_eq!(r.response, logout_response::CID_NOT_FOUND),
        p => panic!("{p:?}"),
    }
    let itt = h.next_itt();
    let sn = h.next_sn();
    h.send(
        Pdu::LogoutRequest(LogoutRequest {
            immediate: false,
            reason: LogoutReason::CloseSession,
            itt,
            cid: 1,
            cmd_sn: sn,
            exp_stat_sn: 0,
        }),
        &[],
    );
    match &h.out()[0].0 {
        Pdu::LogoutResponse(r) => {
            assert_eq!(r.response, logout_response::CLOSED);
            assert_eq!(r.itt, itt);
        }
        p => panic!("{p:?}"),
    }
    assert!(h.s.is_closing());
}

#[test]
fn logout_waits_for_commands_in_the_engine() {
    let mut h = H::new(params());
    let c = h.command(&read10(0, 1), 512, true, false, true);
    let sn = h.next_sn();
    // Submit without letting the engine run.
    let frame = Frame {
        header: Pdu::ScsiCommand(c).to_bytes().expect("enc"),
        ahs: Vec::new(),
        data: Vec::new(),
    };
    h.s.receive(FrameRef::from(&frame), &mut h.w, h.now)
        .expect("rx");
    let itt = h.next_itt();
    let frame = Frame {
        header: Pdu::LogoutRequest(LogoutRequest {
            immediate: false,
            reason: LogoutReason::CloseSession,
            itt,
            cid: 1,
            cmd_sn: sn,
            exp_stat_sn: 0,
        })
        .to_bytes()
        .expect("enc"),
        ahs: Vec::new(),
        data: Vec::new(),
    };
    h.s.receive(FrameRef::from(&frame), &mut h.w, h.now)
        .expect("rx");
    // The READ completed inline (RAM); its Data-In goes before the logout.
    h.pump();
    let out = h.out();
    assert!(matches!(out.first().map(|x| &x.0), Some(Pdu::DataIn(_))));
    assert!(matches!(
        out.last().map(|x| &x.0),
        Some(Pdu::LogoutResponse(_))
    ));
    assert!(h.s.is_closing());
}

#[test]
fn snack_login_and_unknown_opcodes_are_rejected() {
    let mut h = H::new(params());
    h.send(
        Pdu::Snack(Snack {
            snack_type: SnackType::Status,
            lun: LUN0,
            itt: 5,
            ttt: 0,
            exp_stat_sn: 0,
            beg_run: 0,
            run_length: 0,
        }),
        &[],
    );
    assert!(
        matches!(h.out()[0].0, Pdu::Reject(ref r) if r.reason == reject_reason::PROTOCOL_ERROR)
    );
    let mut header = [0u8; 48];
    header[0] = 0x1c;
    h.send_frame(Frame {
        header,
        ahs: Vec::new(),
        data: Vec::new(),
    });
    assert!(
        matches!(h.out()[0].0, Pdu::Reject(ref r) if r.reason == reject_reason::COMMAND_NOT_SUPPORTED)
    );
    // A target opcode from the initiator.
    header[0] = Opcode::NopIn as u8;
    h.send_frame(Frame {
        header,
        ahs: Vec::new(),
        data: Vec::new(),
    });
    assert!(matches!(h.out()[0].0, Pdu::Reject(_)));
}

/// MaxRecvDataSegmentLength declared again in the full feature phase holds
/// for the Data-In that follows; a value out of range is rejected; unknown
/// keys are not understood.
#[test]
fn text_declarations_in_the_full_feature_phase() {
    let mut h = H::new(params());
    let text = |h: &mut H, body: &[u8]| -> Vec<u8> {
        let itt = h.next_itt();
        let sn = h.next_sn();
        h.send(
            Pdu::TextRequest(TextRequest {
                immediate: false,
                final_: true,
                continue_: false,
                data_segment_len: body.len() as u32,
                lun: LUN0,
                itt,
                ttt: RESERVED_TAG,
                cmd_sn: sn,
                exp_stat_sn: 0,
            }),
            body,
        );
        match &h.out()[..] {
            [(Pdu::TextResponse(r), d)] => {
                assert!(r.final_);
                d.clone()
            }
            other => panic!("{other:?}"),
        }
    };
    assert!(text(&mut h, b"MaxRecvDataSegmentLength=512\0InitiatorAlias=x\0").is_empty());
    assert_eq!(h.s.params().max_xmit_data_segment_length, 512);
    assert_eq!(
        text(&mut h, b"MaxRecvDataSegmentLength=100\0X-y=1\0"),
        b"MaxRecvDataSegmentLength=Reject\0X-y=NotUnderstood\0".to_vec()
    );
    let (data, out) = h.read(0, 4);
    assert_eq!(data.len(), 2048);
    for (p, d) in &out {
        if let Pdu::DataIn(_) = p {
            assert!(d.len() <= 512);
        }
    }
}

/// A request continued with C=1 is acknowledged with an empty response and
/// a TTT; its next part carries that TTT; the whole text is answered once.
/// A request with the reserved TTT starts afresh.
#[test]
fn continued_text_requests() {
    let mut h = H::new(params());
    let itt = h.next_itt();
    let part = |h: &mut H, ttt: u32, cont: bool, body: &[u8]| -> (TextResponse, Vec<u8>) {
        let sn = h.next_sn();
        h.send(
            Pdu::TextRequest(TextRequest {
                immediate: false,
                final_: !cont,
                continue_: cont,
                data_segment_len: body.len() as u32,
                lun: LUN0,
                itt,
                ttt,
                cmd_sn: sn,
                exp_stat_sn: 0,
            }),
            body,
        );
        match &h.out()[..] {
            [(Pdu::TextResponse(r), d)] => (r.clone(), d.clone()),
            other => panic!("{other:?}"),
        }
    };
    let (ack, d) = part(&mut h, RESERVED_TAG, true, b"X-a=1\0X-b");
    assert!(!ack.final_ && d.is_empty());
    assert_ne!(ack.ttt, RESERVED_TAG);
    let (r, d) = part(&mut h, ack.ttt, false, b"=2\0");
    assert!(r.final_);
    assert_eq!(d, b"X-a=NotUnderstood\0X-b=NotUnderstood\0".to_vec());
    // Half a text, then a new request: the half is forgotten.
    let (ack, _) = part(&mut h, RESERVED_TAG, true, b"X-c=1\0");
    assert_ne!(ack.ttt, RESERVED_TAG);
    let (_, d) = part(&mut h, RESERVED_TAG, false, b"X-d=1\0");
    assert_eq!(d, b"X-d=NotUnderstood\0".to_vec());
    // A TTT nobody gave out.
    let sn = h.next_sn();
    h.send(
        Pdu::TextRequest(TextRequest {
            immediate: false,
            final_: true,
            continue_: false,
            data_segment_len: 0,
            lun: LUN0,
            itt,
            ttt: 0x4242,
            cmd_sn: sn,
            exp_stat_sn: 0,
        }),
        &[],
    );
    assert!(matches!(&h.out()[..], [(Pdu::Reject(_), _)]));
}

#[test]
fn send_targets_spans_several_text_responses() {
    let mut h = H::new(params());
    let itt = h.next_itt();
    let sn = h.next_sn();
    h.send(
        Pdu::TextRequest(TextRequest {
            immediate: false,
            final_: true,
            continue_: false,
            data_segment_len: 16,
            lun: LUN0,
            itt,
            ttt: RESERVED_TAG,
            cmd_sn: sn,
            exp_stat_sn: 0,
        }),
        b"SendTargets=All\0",
    );
    let mut text = Vec::new();
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds < 100);
        let out = h.out();
        let (r, d) = match &out[0] {
            (Pdu::TextResponse(r), d) => (r.clone(), d.clone()),
            p => panic!("{p:?}"),
        };
        assert!(d.len() <= 1024);
        text.extend_from_slice(&d);
        if r.final_ {
            assert_eq!(r.ttt, RESERVED_TAG);
            break;
        }
        assert!(r.continue_);
        let sn = h.next_sn();
        h.send(
            Pdu::TextRequest(TextRequest {
                immediate: false,
                final_: true,
                continue_: false,
                data_segment_len: 0,
                lun: LUN0,
                itt,
                ttt: r.ttt,
                cmd_sn: sn,
                exp_stat_sn: 0,
            }),
            &[],
        );
    }
    assert!(rounds > 1);
    let s = String::from_utf8(text).expect("utf8");
    assert_eq!(s.matches("TargetName=").count(), 40);
    assert!(s.contains("TargetAddress=127.0.0.1:3260,1\0"));
}

#[test]
fn discovery_session_refuses_scsi_commands() {
    let mut h = H::new(params());
    h.s.nexus = None;
    let c = h.command(&[0; 6], 0, false, false, true);
    h.scsi(c, &[]);
    assert!(matches!(h.out()[0].0, Pdu::Reject(_)));
}

#[test]
fn buffers_are_bounded_per_command_and_session() {
    let mut h = H::new(FfpParams {
        max_cmd_data: 1 << 20,
        max_session_data: 3 << 20,
        ..params()
    });
    let c = h.command(&read10(0, 1), 2 << 20, true, false, true);
    h.scsi(c, &[]);
    let (r, _) = response(&h.out()).expect("response");
    assert_eq!(r.status, 2);
    for _ in 0..3 {
        let c = h.command(&write10(0, 2048), 1 << 20, false, true, true);
        h.scsi(c, &[]);
    }
    let c = h.command(&write10(0, 2048), 1 << 20, false, true, true);
    h.scsi(c, &[]);
    let (r, _) = response(&h.out()).expect("response");
    assert_eq!(r.status, 0x28, "TASK SET FULL");
}

mod fuzz {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn any_pdus_never_panic(frames in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 48), proptest::collection::vec(any::<u8>(), 0..64)),
            1..12,
        )) {
            let mut h = H::new(params());
            for (hdr, data) in frames {
                let mut header = [0u8; 48];
                header.copy_from_slice(&hdr);
                // Mostly initiator opcodes, some valid CmdSNs.
                header[0] &= 0x47;
                header[24..28].copy_from_slice(&h.s.exp_cmd_sn().to_be_bytes());
                let f = Frame { header, ahs: Vec::new(), data };
                let _ = h.s.receive(FrameRef::from(&f), &mut h.w, h.now);
                h.pump();
                h.out();
            }
        }
    }
}
