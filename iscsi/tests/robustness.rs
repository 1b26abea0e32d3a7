//! The target against a hand-written raw TCP client: malformed and stalled PDUs,
//! session and connection reinstatement, resource limits, NOP pings, Data-Out
//! checks, residuals, MaxRecvDataSegmentLength both ways, login negotiation of
//! RFC 7143 §13's keys, CHAP with every algorithm, and SendTargets. Each test
//! starts its own server on an ephemeral port with short timeouts, and every
//! hostile connection is checked against a well-behaved session on the same
//! server that keeps writing and reading real data.
//!
//! No assertion depends on how fast anything runs: a wait for the target is
//! bounded only so that a broken target fails the test instead of hanging it,
//! and a timeout is checked from below (the target cannot drop a connection
//! before its timeout has passed, however slow the machine).

mod common;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::{LunMap, Protocol, TargetPort};
use iscsi::chap::{ChapCredentials, Secret};
use iscsi::pdu::{
    reject_reason, DataOut, Framing, Isid, LoginRequest, LoginResponse, LoginStatus, LogoutReason,
    LogoutRequest, NopOut, Pdu, ScsiCommand, Stage, TaskAttribute, TaskMgmtRequest, TextRequest,
    BHS_LEN, RESERVED_TAG,
};
use iscsi::server::{Server, ServerConfig, Target};
use iscsi::text::Pairs;

const INITIATOR: &str = "iqn.2026-11.org.oxtarget:robust";
/// Every wait for the target is bounded by this, so a broken target fails the
/// test rather than hanging it. Not a performance bound.
const IO_LIMIT: Duration = Duration::from_secs(30);
const BS: usize = 512;

// ---------------------------------------------------------------------------
// The raw client

/// One PDU from the target.
#[derive(Debug)]
struct Got {
    header: [u8; BHS_LEN],
    pdu: Pdu,
    data: Vec<u8>,
}

/// Negotiated values the client needs to send data the way the target agreed.
#[derive(Clone, Copy, Debug)]
struct Negotiated {
    initial_r2t: bool,
    immediate_data: bool,
    first_burst: usize,
    max_burst: usize,
    /// The target's MaxRecvDataSegmentLength: our largest data segment.
    target_mrdsl: usize,
}

impl Default for Negotiated {
    fn default() -> Self {
        Negotiated {
            initial_r2t: true,
            immediate_data: true,
            first_burst: 65536,
            max_burst: 262_144,
            target_mrdsl: 8192,
        }
    }
}

/// The end of one SCSI command.
#[derive(Debug, Default)]
struct Done {
    status: u8,
    data: Vec<u8>,
    sense: Vec<u8>,
    /// 'O' overflow, 'U' underflow, '-' none.
    residual: char,
    residual_count: u32,
    /// Data segment lengths of the Data-In PDUs.
    data_in_lens: Vec<usize>,
    r2ts: usize,
}

struct Client {
    s: TcpStream,
    isid: Isid,
    tsih: u16,
    cid: u16,
    itt: u32,
    cmd_sn: u32,
    exp_stat_sn: u32,
    max_cmd_sn: u32,
    neg: Negotiated,
    /// Every key=value the target sent during login, in order.
    login_keys: Vec<(String, String)>,
    /// Answer the target's NOP-In pings while waiting for other PDUs.
    answer_pings: bool,
    pings_seen: u32,
    /// Digests of the full feature phase, as negotiated.
    framing: Framing,
}

fn isid(n: u8) -> Isid {
    Isid([0x80, 0x12, 0x34, 0x56, 0x00, n])
}

/// Reads exactly `buf.len()` bytes. `false`: the peer closed (or reset) before
/// the first byte.
fn read_full(s: &mut TcpStream, buf: &mut [u8]) -> bool {
    let mut at = 0;
    while at < buf.len() {
        match s.read(&mut buf[at..]) {
            Ok(0) => {
                assert_eq!(at, 0, "the target closed in the middle of a PDU");
                return false;
            }
            Ok(n) => at += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("no answer from the target within {IO_LIMIT:?}")
            }
            Err(e) if at == 0 => {
                // Reset by the target: closed.
                assert!(
                    matches!(
                        e.kind(),
                        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                    ),
                    "read: {e}"
                );
                return false;
            }
            Err(e) => panic!("read: {e}"),
        }
    }
    true
}

fn kv(list: &[(&str, &str)]) -> Pairs {
    let mut p = Pairs::default();
    for (k, v) in list {
        p.push(*k, *v);
    }
    p
}

/// key=value pairs of a text, repeated keys kept (SendTargets answers repeat).
fn text_pairs(data: &[u8]) -> Vec<(String, String)> {
    data.split(|&b| b == 0)
        .filter(|e| !e.is_empty())
        .map(|e| {
            let s = String::from_utf8_lossy(e);
            let (k, v) = s.split_once('=').expect("key=value");
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn serial_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 0x8000_0000
}

/// Keys the target may propose and the client accepts as proposed.
const PROPOSABLE: &[&str] = &[
    "HeaderDigest",
    "DataDigest",
    "MaxConnections",
    "InitialR2T",
    "ImmediateData",
    "MaxBurstLength",
    "FirstBurstLength",
    "DefaultTime2Wait",
    "DefaultTime2Retain",
    "MaxOutstandingR2T",
    "DataPDUInOrder",
    "DataSequenceInOrder",
    "ErrorRecoveryLevel",
    "iSCSIProtocolLevel",
];

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(IO_LIMIT)).expect("timeout");
        s.set_write_timeout(Some(IO_LIMIT)).expect("timeout");
        let _ = s.set_nodelay(true);
        Client {
            s,
            isid: isid(1),
            tsih: 0,
            cid: 1,
            itt: 0x100,
            cmd_sn: 1,
            exp_stat_sn: 0,
            max_cmd_sn: 1,
            neg: Negotiated::default(),
            login_keys: Vec::new(),
            answer_pings: true,
            pings_seen: 0,
            framing: Framing {
                max_recv_data_segment_len: 1 << 24,
                ..Framing::default()
            },
        }
    }

    fn next_itt(&mut self) -> u32 {
        self.itt = self.itt.wrapping_add(1);
        self.itt
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("send");
    }

    fn send(&mut self, header: [u8; BHS_LEN], data: &[u8]) {
        let wire = self.framing.encode(&header, &[], data);
        self.send_raw(&wire);
    }

    fn send_pdu(&mut self, p: Pdu, data: &[u8]) {
        let h = p.to_bytes().expect("encode");
        self.send(h, data);
    }

    /// The next PDU, checking the target's StatSN order; `None` once the
    /// target closed the connection.
    fn recv_any(&mut self) -> Option<Got> {
        let mut header = [0u8; BHS_LEN];
        if !read_full(&mut self.s, &mut header) {
            return None;
        }
        let layout = self.framing.layout(&header).expect("layout");
        let mut body = vec![0u8; layout.remaining()];
        assert!(read_full(&mut self.s, &mut body), "PDU body missing");
        let pdu = Pdu::parse(&header).expect("the target's PDUs parse");
        // Checks the target's digests.
        let data = self
            .framing
            .split(&header, &body)
            .expect("digests")
            .data
            .to_vec();
        self.track(&pdu);
        Some(Got { header, pdu, data })
    }

    /// StatSN must be the one expected on every PDU that carries a status;
    /// MaxCmdSN only ever moves forward.
    fn track(&mut self, p: &Pdu) {
        let (stat_sn, max_cmd_sn) = match p {
            Pdu::ScsiResponse(r) => (Some(r.stat_sn), r.max_cmd_sn),
            Pdu::DataIn(d) if d.status.is_some() => (Some(d.stat_sn), d.max_cmd_sn),
            Pdu::DataIn(d) => (None, d.max_cmd_sn),
            Pdu::NopIn(n) if n.itt != RESERVED_TAG => (Some(n.stat_sn), n.max_cmd_sn),
            Pdu::NopIn(n) => {
                // An unsolicited NOP-In carries the next StatSN, unadvanced.
                assert_eq!(n.stat_sn, self.exp_stat_sn, "ping StatSN");
                (None, n.max_cmd_sn)
            }
            Pdu::TextResponse(r) => (Some(r.stat_sn), r.max_cmd_sn),
            Pdu::LogoutResponse(r) => (Some(r.stat_sn), r.max_cmd_sn),
            Pdu::TaskMgmtResponse(r) => (Some(r.stat_sn), r.max_cmd_sn),
            Pdu::Reject(r) => (Some(r.stat_sn), r.max_cmd_sn),
            Pdu::R2t(r) => {
                assert_eq!(r.stat_sn, self.exp_stat_sn, "R2T StatSN");
                (None, r.max_cmd_sn)
            }
            Pdu::LoginResponse(r) => {
                if self.exp_stat_sn != 0 {
                    assert_eq!(r.stat_sn, self.exp_stat_sn, "login StatSN");
                }
                self.exp_stat_sn = r.stat_sn.wrapping_add(1);
                return;
            }
            other => panic!("the target sent an initiator PDU: {other:?}"),
        };
        if let Some(sn) = stat_sn {
            assert_eq!(sn, self.exp_stat_sn, "StatSN out of order on {p:?}");
            self.exp_stat_sn = sn.wrapping_add(1);
        }
        if serial_lt(self.max_cmd_sn, max_cmd_sn) {
            self.max_cmd_sn = max_cmd_sn;
        }
    }

    /// The next PDU that is not a ping (pings are answered or counted).
    fn recv(&mut self) -> Got {
        loop {
            let g = self.recv_any().expect("the target closed the connection");
            if let Pdu::NopIn(n) = &g.pdu {
                if n.itt == RESERVED_TAG {
                    self.pings_seen += 1;
                    if self.answer_pings {
                        self.answer_ping(n.ttt);
                    }
                    continue;
                }
            }
            return g;
        }
    }

    fn answer_ping(&mut self, ttt: u32) {
        let p = Pdu::NopOut(NopOut {
            immediate: true,
            data_segment_len: 0,
            lun: [0; 8],
            itt: RESERVED_TAG,
            ttt,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        });
        self.send_pdu(p, &[]);
    }

    /// Reads until the target closes; the PDUs it sent first.
    fn expect_closed(&mut self) -> Vec<Got> {
        let mut seen = Vec::new();
        while let Some(g) = self.recv_any() {
            assert!(seen.len() < 100_000, "the connection stays open");
            seen.push(g);
        }
        seen
    }

    // -- login -------------------------------------------------------------

    /// One Login Request and its response.
    fn login_step(
        &mut self,
        csg: Stage,
        transit: Option<Stage>,
        keys: &Pairs,
    ) -> Option<(LoginResponse, Vec<(String, String)>)> {
        let data = keys.encode();
        let req = Pdu::LoginRequest(LoginRequest {
            transit,
            continue_: false,
            csg,
            version_max: 0,
            version_min: 0,
            data_segment_len: data.len() as u32,
            isid: self.isid,
            tsih: self.tsih,
            itt: self.itt,
            cid: self.cid,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        });
        self.send_pdu(req, &data);
        let g = self.recv_any()?;
        let Pdu::LoginResponse(r) = g.pdu else {
            panic!("expected a Login Response, got {:?}", g.pdu);
        };
        let pairs = text_pairs(&g.data);
        let mut keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        keys.sort_unstable();
        let n = keys.len();
        keys.dedup();
        assert_eq!(keys.len(), n, "a key twice in one response: {pairs:?}");
        self.login_keys.extend(pairs.iter().cloned());
        Some((r, pairs))
    }

    /// The operational stage to the full feature phase, accepting the
    /// target's proposals. `Err` with the status of a failed login.
    fn login_operational(&mut self, keys: &Pairs) -> Result<(), LoginStatus> {
        let mut send = keys.clone();
        for _ in 0..8 {
            let (r, pairs) = self
                .login_step(Stage::Operational, Some(Stage::FullFeature), &send)
                .expect("login response");
            if !r.status.is_success() {
                return Err(r.status);
            }
            if r.transit == Some(Stage::FullFeature) {
                self.entered_ffp(&r);
                return Ok(());
            }
            send = Pairs::default();
            for (k, v) in &pairs {
                if PROPOSABLE.contains(&k.as_str()) && keys.get(k).is_none() {
                    send.push(k.clone(), v.clone());
                }
            }
        }
        panic!("login does not end");
    }

    fn entered_ffp(&mut self, r: &LoginResponse) {
        assert_ne!(r.tsih, 0, "a session has a TSIH");
        self.tsih = r.tsih;
        self.cmd_sn = r.exp_cmd_sn;
        self.max_cmd_sn = r.max_cmd_sn;
        let get = |k: &str| -> Option<String> {
            self.login_keys
                .iter()
                .rev()
                .find(|(kk, _)| kk == k)
                .map(|(_, v)| v.clone())
        };
        // Reject, Irrelevant: the default stands.
        let num = |k: &str, d: usize| get(k).and_then(|v| v.parse().ok()).unwrap_or(d);
        self.framing.header_digest = get("HeaderDigest").as_deref() == Some("CRC32C");
        self.framing.data_digest = get("DataDigest").as_deref() == Some("CRC32C");
        let d = Negotiated::default();
        self.neg = Negotiated {
            initial_r2t: match get("InitialR2T").as_deref() {
                Some("Yes") => true,
                Some("No") => false,
                _ => d.initial_r2t,
            },
            immediate_data: match get("ImmediateData").as_deref() {
                Some("Yes") => true,
                Some("No") => false,
                _ => d.immediate_data,
            },
            first_burst: num("FirstBurstLength", d.first_burst),
            max_burst: num("MaxBurstLength", d.max_burst),
            target_mrdsl: num("MaxRecvDataSegmentLength", d.target_mrdsl),
        };
    }

    /// A normal session to the test target, with `extra` keys.
    fn login(addr: SocketAddr, n: u8, extra: &[(&str, &str)]) -> Client {
        Self::try_login(addr, n, extra).expect("login succeeds")
    }

    fn try_login(addr: SocketAddr, n: u8, extra: &[(&str, &str)]) -> Result<Client, LoginStatus> {
        let mut c = Client::connect(addr);
        c.isid = isid(n);
        if let Err(e) = c.login_as(INITIATOR, common::IQN, extra) {
            // A failed login ends with the connection.
            assert!(c.expect_closed().is_empty());
            return Err(e);
        }
        Ok(c)
    }

    fn login_as(
        &mut self,
        initiator: &str,
        target: &str,
        extra: &[(&str, &str)],
    ) -> Result<(), LoginStatus> {
        let mut keys = kv(&[
            ("InitiatorName", initiator),
            ("TargetName", target),
            ("SessionType", "Normal"),
        ]);
        for (k, v) in extra {
            keys.push(*k, *v);
        }
        self.login_operational(&keys)
    }

    fn discovery(addr: SocketAddr, initiator: &str, extra: &[(&str, &str)]) -> Client {
        let mut c = Client::connect(addr);
        let mut keys = kv(&[("InitiatorName", initiator), ("SessionType", "Discovery")]);
        for (k, v) in extra {
            keys.push(*k, *v);
        }
        c.login_operational(&keys).expect("discovery login");
        c
    }

    // -- full feature phase ------------------------------------------------

    fn nop(&mut self, data: &[u8]) -> Got {
        let itt = self.next_itt();
        let p = Pdu::NopOut(NopOut {
            immediate: true,
            data_segment_len: data.len() as u32,
            lun: [0; 8],
            itt,
            ttt: RESERVED_TAG,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        });
        self.send_pdu(p, data);
        let g = self.recv();
        match &g.pdu {
            Pdu::NopIn(n) => assert_eq!(n.itt, itt),
            other => panic!("expected a NOP-In, got {other:?}"),
        }
        g
    }

    fn command_header(
        &mut self,
        cdb: &[u8],
        edtl: u32,
        read: bool,
        write: bool,
        imm: usize,
        final_: bool,
    ) -> (u32, [u8; BHS_LEN]) {
        let itt = self.next_itt();
        let mut c16 = [0u8; 16];
        c16[..cdb.len()].copy_from_slice(cdb);
        let c = Pdu::ScsiCommand(ScsiCommand {
            immediate: false,
            final_,
            read,
            write,
            attr: TaskAttribute::Simple,
            total_ahs_words: 0,
            data_segment_len: imm as u32,
            lun: [0; 8],
            itt,
            expected_data_len: edtl,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            cdb: c16,
        });
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        (itt, c.to_bytes().expect("encode"))
    }

    fn data_out(
        &mut self,
        itt: u32,
        ttt: u32,
        data_sn: u32,
        offset: usize,
        data: &[u8],
        fin: bool,
    ) {
        let p = Pdu::DataOut(DataOut {
            final_: fin,
            data_segment_len: data.len() as u32,
            lun: [0; 8],
            itt,
            ttt,
            exp_stat_sn: self.exp_stat_sn,
            data_sn,
            buffer_offset: offset as u32,
        });
        self.send_pdu(p, data);
    }

    /// Sends `out[from..to]` as one Data-Out sequence, cut at the target's
    /// MaxRecvDataSegmentLength.
    fn sequence(&mut self, itt: u32, ttt: u32, out: &[u8], from: usize, to: usize) {
        let mut at = from;
        let mut sn = 0;
        while at < to {
            let n = self.neg.target_mrdsl.min(to - at);
            self.data_out(itt, ttt, sn, at, &out[at..at + n], at + n == to);
            at += n;
            sn += 1;
        }
    }

    /// Runs one command to its end: immediate and unsolicited data as
    /// negotiated, R2Ts answered from `out`, Data-In gathered.
    fn run(&mut self, cdb: &[u8], edtl: u32, read: bool, out: Option<&[u8]>) -> Done {
        let out = out.unwrap_or(&[]);
        let write = !out.is_empty();
        let len = out.len().min(edtl as usize);
        let imm = if write && self.neg.immediate_data {
            len.min(self.neg.first_burst).min(self.neg.target_mrdsl)
        } else {
            0
        };
        let unsolicited_end = if write && !self.neg.initial_r2t {
            len.min(self.neg.first_burst)
        } else {
            imm
        };
        let (itt, h) = self.command_header(cdb, edtl, read, write, imm, unsolicited_end == imm);
        self.send(h, &out[..imm]);
        if unsolicited_end > imm {
            self.sequence(itt, RESERVED_TAG, out, imm, unsolicited_end);
        }
        self.finish(itt, edtl, out)
    }

    /// Collects a command's R2Ts (answered from `out`), Data-In and status.
    fn finish(&mut self, itt: u32, edtl: u32, out: &[u8]) -> Done {
        let mut d = Done {
            residual: '-',
            ..Done::default()
        };
        let mut data = vec![0u8; edtl as usize];
        let mut got = 0usize;
        loop {
            let g = self.recv();
            match g.pdu {
                Pdu::R2t(r) => {
                    assert_eq!(r.itt, itt);
                    d.r2ts += 1;
                    let from = r.buffer_offset as usize;
                    let to = from + r.desired_len as usize;
                    assert!(
                        r.desired_len as usize <= self.neg.max_burst,
                        "R2T beyond MaxBurstLength"
                    );
                    self.sequence(itt, r.ttt, out, from, to);
                }
                Pdu::DataIn(din) => {
                    assert_eq!(din.itt, itt);
                    let at = din.buffer_offset as usize;
                    data[at..at + g.data.len()].copy_from_slice(&g.data);
                    got = got.max(at + g.data.len());
                    d.data_in_lens.push(g.data.len());
                    if let Some(s) = din.status {
                        d.status = s;
                        (d.residual, d.residual_count) =
                            residual_of(g.header[1], din.residual_count);
                        break;
                    }
                }
                Pdu::ScsiResponse(r) => {
                    assert_eq!(r.itt, itt);
                    d.status = r.status;
                    if g.data.len() >= 2 {
                        let n = usize::from(u16::from_be_bytes([g.data[0], g.data[1]]));
                        d.sense = g.data[2..2 + n].to_vec();
                    }
                    (d.residual, d.residual_count) = residual_of(g.header[1], r.residual_count);
                    break;
                }
                other => panic!("unexpected {other:?} for command {itt:#x}"),
            }
        }
        data.truncate(got);
        d.data = data;
        d
    }

    /// Takes the unit attention a new nexus starts with.
    fn clear_ua(&mut self) {
        let d = self.run_past_ua(&[0u8; 6], 0, false, None);
        assert_eq!(d.status, 0, "TEST UNIT READY");
    }

    /// Runs a command again while it meets a unit attention (the first
    /// command of a nexus, or one after a reinstatement, reports it).
    fn run_past_ua(&mut self, cdb: &[u8], edtl: u32, read: bool, out: Option<&[u8]>) -> Done {
        for _ in 0..4 {
            let d = self.run(cdb, edtl, read, out);
            if !(d.status == 2 && d.sense.get(2).is_some_and(|k| k & 0x0f == 6)) {
                return d;
            }
        }
        panic!("unit attentions do not end");
    }

    fn read(&mut self, lba: u32, blocks: u16) -> Vec<u8> {
        let edtl = u32::from(blocks) * BS as u32;
        let d = self.run_past_ua(&read10(lba, blocks), edtl, true, None);
        assert_eq!(d.status, 0, "READ status, sense {:02x?}", d.sense);
        assert_eq!(d.data.len(), edtl as usize);
        d.data
    }

    fn write(&mut self, lba: u32, data: &[u8]) {
        let blocks = (data.len() / BS) as u16;
        let d = self.run_past_ua(&write10(lba, blocks), data.len() as u32, false, Some(data));
        assert_eq!(d.status, 0, "WRITE status, sense {:02x?}", d.sense);
    }

    /// Writes a pattern and reads it back: the session does real I/O.
    fn check_io(&mut self, lba: u32, seed: u8) {
        let data = pattern(16 * BS, seed);
        self.write(lba, &data);
        assert!(self.read(lba, 16) == data, "read back what was written");
    }

    fn text(&mut self, text: &[u8]) -> Vec<(String, String)> {
        let mut answer = Vec::new();
        let mut ttt = RESERVED_TAG;
        let itt = self.next_itt();
        let mut first = true;
        for _ in 0..1000 {
            let body: &[u8] = if first { text } else { &[] };
            first = false;
            let p = Pdu::TextRequest(TextRequest {
                immediate: false,
                final_: true,
                continue_: false,
                data_segment_len: body.len() as u32,
                lun: [0; 8],
                itt,
                ttt,
                cmd_sn: self.cmd_sn,
                exp_stat_sn: self.exp_stat_sn,
            });
            self.cmd_sn = self.cmd_sn.wrapping_add(1);
            self.send_pdu(p, body);
            let g = self.recv();
            let Pdu::TextResponse(r) = g.pdu else {
                panic!("expected a Text Response, got {:?}", g.pdu);
            };
            assert_eq!(r.itt, itt);
            answer.extend_from_slice(&g.data);
            if r.final_ {
                assert!(!r.continue_);
                return text_pairs(&answer);
            }
            ttt = r.ttt;
            assert_ne!(ttt, RESERVED_TAG, "a continued Text Response names its TTT");
        }
        panic!("text response does not end");
    }
}

fn residual_of(flags: u8, count: u32) -> (char, u32) {
    match (flags & 0x04 != 0, flags & 0x02 != 0) {
        (true, false) => ('O', count),
        (false, true) => ('U', count),
        (false, false) => ('-', count),
        (true, true) => panic!("overflow and underflow both set"),
    }
}

fn read10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x28;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn write10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = read10(lba, blocks);
    c[0] = 0x2a;
    c
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed ^ ((i >> 9) as u8))
        .collect()
}

/// Deterministic garbage.
fn garbage(n: usize, mut x: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn server(adjust: impl FnOnce(&mut ServerConfig)) -> (Server, SocketAddr) {
    let s = common::start_with(0, 1, 64 << 20, adjust);
    let a = s.local_addrs()[0];
    (s, a)
}

fn reject_of(g: &Got) -> (u8, Vec<u8>) {
    match &g.pdu {
        Pdu::Reject(r) => (r.reason, g.data.clone()),
        other => panic!("expected a Reject, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Malformed PDUs

/// Bad opcodes, AHS where none may be, malformed AHS and target opcodes are
/// answered with Reject (RFC 7143 §11.17: the rejected header comes back);
/// a data segment beyond our MaxRecvDataSegmentLength and garbage drop the
/// connection. Another session writes and reads throughout.
#[test]
fn malformed_pdus_are_rejected_or_dropped_while_another_session_works() {
    // Garbage may well look like the start of a long PDU: it is dropped when
    // the rest does not come.
    let (_srv, addr) = server(|c| c.stall_timeout = Duration::from_millis(500));
    let mut good = Client::login(addr, 1, &[]);
    good.check_io(0, 1);

    let mut bad = Client::login(addr, 2, &[]);
    // An opcode RFC 7143 does not define: Command not supported.
    let mut h = [0u8; BHS_LEN];
    h[0] = 0x1c | 0x40;
    h[16..20].copy_from_slice(&7u32.to_be_bytes());
    bad.send(h, &[]);
    let (reason, data) = reject_of(&bad.recv());
    assert_eq!(reason, reject_reason::COMMAND_NOT_SUPPORTED);
    assert_eq!(data, h.to_vec(), "the Reject carries the rejected header");
    bad.nop(b"still here");

    // A NOP-Out with an AHS: invalid PDU field.
    let mut h = Pdu::NopOut(NopOut {
        immediate: true,
        itt: 9,
        ttt: RESERVED_TAG,
        cmd_sn: bad.cmd_sn,
        ..NopOut::default()
    })
    .to_bytes()
    .expect("encode");
    h[4] = 1;
    let mut wire = h.to_vec();
    wire.extend_from_slice(&[0, 1, 0x7f, 0]);
    bad.send_raw(&wire);
    let (reason, data) = reject_of(&bad.recv());
    assert_eq!(reason, reject_reason::INVALID_PDU_FIELD);
    assert_eq!(data, h.to_vec());

    // A SCSI Command whose AHS has length 0: invalid PDU field; the command's
    // CmdSN is used up, the next command goes on.
    let (_, mut h) = bad.command_header(&read10(0, 1), 512, true, false, 0, true);
    h[4] = 1;
    let mut wire = h.to_vec();
    wire.extend_from_slice(&[0, 0, 1, 0]);
    bad.send_raw(&wire);
    let (reason, _) = reject_of(&bad.recv());
    assert_eq!(reason, reject_reason::INVALID_PDU_FIELD);
    // An extended-CDB AHS that announces more bytes than TotalAHSLength holds.
    let (_, mut h) = bad.command_header(&read10(0, 1), 512, true, false, 0, true);
    h[4] = 1;
    let mut wire = h.to_vec();
    wire.extend_from_slice(&[0, 40, 1, 0]);
    bad.send_raw(&wire);
    let (reason, _) = reject_of(&bad.recv());
    assert_eq!(reason, reject_reason::INVALID_PDU_FIELD);
    assert_eq!(bad.read(0, 16), good.read(0, 16));

    // A target opcode from the initiator: protocol error.
    let mut h = [0u8; BHS_LEN];
    h[0] = 0x21;
    h[1] = 0x80;
    bad.send(h, &[]);
    let (reason, _) = reject_of(&bad.recv());
    assert_eq!(reason, reject_reason::PROTOCOL_ERROR);
    // SNACK at ErrorRecoveryLevel 0: rejected, not a crash.
    let mut h = [0u8; BHS_LEN];
    h[0] = 0x10;
    h[1] = 0x80;
    h[16..20].copy_from_slice(&RESERVED_TAG.to_be_bytes());
    bad.send(h, &[]);
    assert_eq!(reject_of(&bad.recv()).0, reject_reason::PROTOCOL_ERROR);
    bad.check_io(64, 2);
    // A second command with the tag of one still running: task in progress.
    let (itt, h) = bad.command_header(&write10(64, 16), 8192, false, true, 0, true);
    bad.send(h, &[]);
    let r = expect_r2t(&mut bad);
    let (_, mut h) = bad.command_header(&read10(0, 1), 512, true, false, 0, true);
    h[16..20].copy_from_slice(&itt.to_be_bytes());
    bad.send(h, &[]);
    assert_eq!(reject_of(&bad.recv()).0, reject_reason::TASK_IN_PROGRESS);
    let data = pattern(8192, 5);
    bad.sequence(itt, r.ttt, &data, 0, 8192);
    assert_eq!(bad.finish(itt, 8192, &data).status, 0);

    // A data segment beyond our MaxRecvDataSegmentLength: dropped.
    let mrdsl = bad.neg.target_mrdsl;
    let mut h = Pdu::NopOut(NopOut {
        immediate: true,
        itt: 10,
        ttt: RESERVED_TAG,
        cmd_sn: bad.cmd_sn,
        ..NopOut::default()
    })
    .to_bytes()
    .expect("encode");
    h[5..8].copy_from_slice(&((mrdsl + 4) as u32).to_be_bytes()[1..]);
    bad.send_raw(&h);
    // The target may not even read what follows; it only has to close.
    let _ = bad.s.write_all(&vec![0u8; 4096]);
    let seen = bad.expect_closed();
    assert!(
        seen.is_empty(),
        "nothing answers an oversized segment: {seen:?}"
    );
    good.check_io(128, 3);

    // Garbage after login, then garbage instead of a login.
    for seed in 1..=4u64 {
        let mut g = Client::login(addr, 10 + seed as u8, &[]);
        let junk = garbage(64 * 1024, seed);
        let _ = g.s.write_all(&junk);
        for p in g.expect_closed() {
            assert!(
                matches!(&p.pdu, Pdu::Reject(_))
                    || matches!(&p.pdu, Pdu::NopIn(n) if n.itt == RESERVED_TAG),
                "only Rejects (or pings) answer garbage: {:?}",
                p.pdu
            );
        }
        let mut g = Client::connect(addr);
        let _ = g.s.write_all(&junk[..4096]);
        for p in g.expect_closed() {
            match p.pdu {
                Pdu::LoginResponse(r) => assert!(!r.status.is_success()),
                other => panic!("garbage in login answered with {other:?}"),
            }
        }
        good.check_io(192 + 16 * seed as u32, seed as u8);
    }
    // A login that is not a Login Request.
    let h = Pdu::NopOut(NopOut {
        immediate: true,
        itt: 11,
        ttt: RESERVED_TAG,
        ..NopOut::default()
    })
    .to_bytes()
    .expect("encode");
    let mut g = Client::connect(addr);
    g.send(h, &[]);
    let seen = g.expect_closed();
    assert!(
        matches!(&seen[..], [Got { pdu: Pdu::LoginResponse(r), .. }] if r.status == LoginStatus::INVALID_DURING_LOGIN),
        "{seen:?}"
    );
    good.check_io(0, 9);
}

// ---------------------------------------------------------------------------
// Stalls

/// Half a header, a header and half its data segment, a silent new
/// connection and a login left half done are all dropped once their timeout
/// has passed, never before; another session keeps working.
#[test]
fn stalled_connections_are_dropped_while_another_session_works() {
    let stall = Duration::from_millis(400);
    let login_timeout = Duration::from_millis(600);
    let (_srv, addr) = server(|c| {
        c.stall_timeout = stall;
        c.login_timeout = login_timeout;
    });
    let mut good = Client::login(addr, 1, &[]);
    good.check_io(0, 1);

    // Half a header.
    let mut a = Client::login(addr, 2, &[]);
    let h = Pdu::NopOut(NopOut {
        immediate: true,
        itt: 5,
        ttt: RESERVED_TAG,
        cmd_sn: a.cmd_sn,
        data_segment_len: 2000,
        ..NopOut::default()
    })
    .to_bytes()
    .expect("encode");
    let t = Instant::now();
    a.send_raw(&h[..20]);
    // Header and half of its data segment.
    let mut b = Client::login(addr, 3, &[]);
    let tb = Instant::now();
    b.send_raw(&h);
    b.send_raw(&[0x55; 1000]);
    // A large Data-Out (the in-place path) stalled half way.
    let mut c = Client::login(addr, 4, &[("InitialR2T", "Yes")]);
    let (itt, hc) = c.command_header(&write10(1000, 64), 64 * 512, false, true, 0, true);
    c.send(hc, &[]);
    let r2t = match c.recv().pdu {
        Pdu::R2t(r) => r,
        other => panic!("expected an R2T, got {other:?}"),
    };
    let n = c.neg.target_mrdsl.min(r2t.desired_len as usize);
    let p = Pdu::DataOut(DataOut {
        final_: true,
        data_segment_len: n as u32,
        itt,
        ttt: r2t.ttt,
        exp_stat_sn: c.exp_stat_sn,
        ..DataOut::default()
    });
    let tc = Instant::now();
    c.send_raw(&p.to_bytes().expect("encode"));
    c.send_raw(&vec![7u8; n / 2]);

    // A connection that never sends a byte, and one whose login stops half way.
    // (Clocks read before connecting: the target may accept before
    // `connect` returns here.)
    let td = Instant::now();
    let mut d = Client::connect(addr);
    let te = Instant::now();
    let mut e = Client::connect(addr);
    let (r, _) = e
        .login_step(
            Stage::Security,
            None,
            &kv(&[
                ("InitiatorName", INITIATOR),
                ("TargetName", common::IQN),
                ("AuthMethod", "None"),
            ]),
        )
        .expect("response");
    assert!(r.status.is_success());

    for (name, cl, since, limit) in [
        ("half header", &mut a, t, stall),
        ("half data", &mut b, tb, stall),
        ("half placed data", &mut c, tc, stall),
        ("silent", &mut d, td, login_timeout),
        ("half login", &mut e, te, login_timeout),
    ] {
        let seen = cl.expect_closed();
        assert!(seen.is_empty(), "{name}: {seen:?}");
        assert!(
            since.elapsed() >= limit,
            "{name} dropped before its timeout"
        );
        good.check_io(0, 2);
    }
    // The half-written command never reached the medium.
    assert!(good.read(1000, 64).iter().all(|&b| b == 0));
}

// ---------------------------------------------------------------------------
// Reinstatement

/// A second login with the same initiator name and ISID and TSIH 0 closes the
/// old session — its connection closes, its write waiting for data is
/// aborted — and the new session works; other sessions are untouched. A login
/// with the old session's TSIH and CID reinstates its connection; another CID
/// is one connection too many; an unknown TSIH names no session.
#[test]
fn session_and_connection_reinstatement() {
    let (srv, addr) = server(|_| {});
    let mut other = Client::login(addr, 9, &[]);
    other.check_io(0, 1);

    let mut old = Client::login(addr, 1, &[("InitialR2T", "Yes"), ("ImmediateData", "No")]);
    let data = pattern(8 * BS, 0x77);
    let (_itt, h) = old.command_header(&write10(100, 8), data.len() as u32, false, true, 0, true);
    old.send(h, &[]);
    let Pdu::R2t(_) = old.recv().pdu else {
        panic!("expected an R2T");
    };
    assert_eq!(srv.sessions(), 2);

    let mut new = Client::login(addr, 1, &[]);
    assert_ne!(new.tsih, old.tsih, "a reinstated session gets a new TSIH");
    let seen = old.expect_closed();
    assert!(
        seen.is_empty(),
        "the old session is closed silently: {seen:?}"
    );
    assert_eq!(srv.sessions(), 2);
    // The aborted write never happened.
    assert!(new.read(100, 8).iter().all(|&b| b == 0));
    new.check_io(100, 2);
    other.check_io(0, 3);

    // Connection reinstatement: same ISID, TSIH and CID.
    let mut again = Client::connect(addr);
    again.isid = new.isid;
    again.tsih = new.tsih;
    again.cid = new.cid;
    again.cmd_sn = new.cmd_sn;
    again
        .login_as(INITIATOR, common::IQN, &[])
        .expect("connection reinstatement");
    assert_eq!(again.tsih, new.tsih, "the session keeps its TSIH");
    assert!(new.expect_closed().is_empty());
    assert_eq!(again.cmd_sn, new.cmd_sn, "the session's CmdSN goes on");
    again.check_io(100, 4);
    assert_eq!(srv.sessions(), 2);

    // A second connection (another CID) in a MaxConnections=1 session.
    let mut extra = Client::connect(addr);
    extra.isid = again.isid;
    extra.tsih = again.tsih;
    extra.cid = again.cid + 1;
    assert_eq!(
        extra.login_as(INITIATOR, common::IQN, &[]),
        Err(LoginStatus::TOO_MANY_CONNECTIONS)
    );
    assert!(extra.expect_closed().is_empty());
    // A TSIH no session has.
    let mut stray = Client::connect(addr);
    stray.isid = isid(44);
    stray.tsih = 0x7777;
    assert_eq!(
        stray.login_as(INITIATOR, common::IQN, &[]),
        Err(LoginStatus::SESSION_DOES_NOT_EXIST)
    );
    again.check_io(200, 5);
    other.check_io(0, 6);
}

/// Logout: removing a connection for recovery is refused at ERL 0 and the
/// session goes on; closing the session answers, closes the connection and
/// frees the session, whose ISID then starts a new one.
#[test]
fn logout_closes_the_session() {
    let (srv, addr) = server(|_| {});
    let mut c = Client::login(addr, 1, &[]);
    c.check_io(0, 1);
    let logout = |c: &mut Client, reason: LogoutReason| -> u8 {
        let itt = c.next_itt();
        let p = Pdu::LogoutRequest(LogoutRequest {
            immediate: true,
            reason,
            itt,
            cid: c.cid,
            cmd_sn: c.cmd_sn,
            exp_stat_sn: c.exp_stat_sn,
        });
        c.send_pdu(p, &[]);
        match c.recv().pdu {
            Pdu::LogoutResponse(r) => {
                assert_eq!(r.itt, itt);
                r.response
            }
            other => panic!("expected a Logout Response, got {other:?}"),
        }
    };
    assert_eq!(logout(&mut c, LogoutReason::RemoveConnectionForRecovery), 2);
    c.check_io(16, 2);
    assert_eq!(logout(&mut c, LogoutReason::CloseSession), 0);
    assert!(c.expect_closed().is_empty());
    // The target forgets the session once the connection is gone (it notices
    // asynchronously: a bounded number of looks).
    let mut gone = false;
    for _ in 0..500 {
        if srv.sessions() == 0 {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(gone, "the session outlives its logout");
    let mut again = Client::login(addr, 1, &[]);
    again.check_io(0, 3);
}

fn tmf(c: &mut Client, function: u8, referenced: u32, ref_cmd_sn: u32) -> u32 {
    let itt = c.next_itt();
    let p = Pdu::TaskMgmtRequest(TaskMgmtRequest {
        immediate: true,
        function,
        lun: [0; 8],
        itt,
        referenced_task_tag: referenced,
        cmd_sn: c.cmd_sn,
        exp_stat_sn: c.exp_stat_sn,
        ref_cmd_sn,
        exp_data_sn: 0,
    });
    c.send_pdu(p, &[]);
    itt
}

fn tmf_response(c: &mut Client, itt: u32) -> u8 {
    match c.recv().pdu {
        Pdu::TaskMgmtResponse(r) => {
            assert_eq!(r.itt, itt);
            r.response
        }
        other => panic!("expected a Task Management Response, got {other:?}"),
    }
}

/// ABORT TASK of a write with an R2T outstanding is answered only once that
/// R2T's data is in (RFC 7143 §4.2.3.3), the write neither answered nor
/// written; a tag nobody knows does not exist; LOGICAL UNIT RESET completes.
#[test]
fn task_management_over_the_wire() {
    let (_srv, addr) = server(|_| {});
    let mut c = Client::login(addr, 1, &[("InitialR2T", "Yes"), ("ImmediateData", "No")]);
    c.clear_ua();
    let data = pattern(8 * BS, 0x41);
    let cmd_sn = c.cmd_sn;
    let (itt, h) = c.command_header(&write10(300, 8), data.len() as u32, false, true, 0, true);
    c.send(h, &[]);
    let r = expect_r2t(&mut c);
    let t = tmf(&mut c, 1, itt, cmd_sn);
    // Nothing until the outstanding R2T is answered.
    c.nop(&[]);
    c.sequence(itt, r.ttt, &data, 0, data.len());
    assert_eq!(tmf_response(&mut c, t), 0, "function complete");
    c.nop(&[]);
    assert!(
        c.read(300, 8).iter().all(|&b| b == 0),
        "the aborted write wrote nothing"
    );
    let long_ago = c.cmd_sn.wrapping_sub(100);
    let t = tmf(&mut c, 1, 0xdead, long_ago);
    assert_eq!(tmf_response(&mut c, t), 1, "task does not exist");
    let t = tmf(&mut c, 5, 0, 0);
    assert_eq!(tmf_response(&mut c, t), 0, "LU reset complete");
    c.check_io(300, 2);
}

// ---------------------------------------------------------------------------
// Limits

/// Sessions beyond `max_sessions` get "out of resources" (a reinstatement
/// still gets in); connections beyond `max_connections` are closed at once
/// and a slot freed is usable again.
#[test]
fn session_and_connection_limits() {
    let (srv, addr) = server(|c| {
        c.max_sessions = 2;
        c.max_connections = 4;
    });
    let mut a = Client::login(addr, 1, &[]);
    let mut b = Client::login(addr, 2, &[]);
    assert_eq!(
        Client::try_login(addr, 3, &[]).err(),
        Some(LoginStatus::OUT_OF_RESOURCES)
    );
    // Reinstating one of the two is not a third session.
    let mut b2 = Client::login(addr, 2, &[]);
    assert!(b.expect_closed().is_empty());
    // Discovery sessions do not take normal session slots.
    let mut d = Client::discovery(addr, INITIATOR, &[]);
    assert!(!d.text(b"SendTargets=All\0").is_empty());
    assert_eq!(srv.sessions(), 2);

    // a, b2, d: three connections; one more is the fourth, the fifth is closed.
    let _fourth = Client::connect(addr);
    let mut fifth = Client::connect(addr);
    assert!(fifth.expect_closed().is_empty());
    a.check_io(0, 1);
    b2.check_io(32, 2);
    drop(d);
    // Once the discovery connection is gone its slot is free again (the
    // target notices the close asynchronously: retry a bounded number of times).
    let mut ok = false;
    for _ in 0..200 {
        let mut c = Client::connect(addr);
        let keys = kv(&[("InitiatorName", INITIATOR), ("SessionType", "Discovery")]);
        let data = keys.encode();
        let req = Pdu::LoginRequest(LoginRequest {
            transit: Some(Stage::FullFeature),
            continue_: false,
            csg: Stage::Operational,
            version_max: 0,
            version_min: 0,
            data_segment_len: data.len() as u32,
            isid: isid(50),
            tsih: 0,
            itt: 1,
            cid: 1,
            cmd_sn: 1,
            exp_stat_sn: 0,
        });
        c.send_pdu(req, &data);
        if c.recv_any().is_some() {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(ok, "a freed connection slot is not reused");
}

/// The CmdSN window: with `queue_depth` commands held (writes waiting for
/// data), MaxCmdSN closes the window, a command beyond it is dropped
/// unanswered, and one finished command opens one slot.
#[test]
fn cmd_sn_window_bounds_commands_in_flight() {
    let (_srv, addr) = server(|c| c.queue_depth = 4);
    let mut c = Client::login(addr, 1, &[("InitialR2T", "Yes"), ("ImmediateData", "No")]);
    c.clear_ua();
    let first = c.cmd_sn;
    assert_eq!(c.max_cmd_sn, first.wrapping_add(3), "window of queue_depth");
    let data = pattern(4 * BS, 5);
    let mut held = Vec::new();
    for i in 0..4u32 {
        let (itt, h) =
            c.command_header(&write10(i * 8, 4), data.len() as u32, false, true, 0, true);
        c.send(h, &[]);
        let Pdu::R2t(r) = c.recv().pdu else {
            panic!("expected an R2T")
        };
        held.push((itt, r));
    }
    let n = c.nop(&[]);
    let Pdu::NopIn(n) = n.pdu else { unreachable!() };
    assert_eq!(n.exp_cmd_sn, first.wrapping_add(4));
    assert_eq!(n.max_cmd_sn, first.wrapping_add(3), "window closed");

    // Beyond MaxCmdSN: silently dropped.
    let (_, h) = c.command_header(&read10(0, 1), 512, true, false, 0, true);
    c.send(h, &[]);
    let Pdu::NopIn(n) = c.nop(&[]).pdu else {
        unreachable!()
    };
    assert_eq!(
        n.exp_cmd_sn,
        first.wrapping_add(4),
        "the command was not taken"
    );
    c.cmd_sn = c.cmd_sn.wrapping_sub(1);

    // One write finishes: one slot opens.
    let (itt, r) = held.remove(0);
    c.sequence(itt, r.ttt, &data, 0, data.len());
    let Pdu::ScsiResponse(resp) = c.recv().pdu else {
        panic!("expected a SCSI Response")
    };
    assert_eq!(resp.status, 0);
    assert_eq!(resp.max_cmd_sn, first.wrapping_add(4));
    let d = c.run(&read10(0, 4), 2048, true, None);
    assert_eq!(d.status, 0);
    assert!(d.data == data);
    for (itt, r) in held {
        c.sequence(itt, r.ttt, &data, 0, data.len());
        let Pdu::ScsiResponse(resp) = c.recv().pdu else {
            panic!("expected a SCSI Response")
        };
        assert_eq!(resp.status, 0);
    }
    c.check_io(64, 6);
}

/// A command's buffer is bounded by `max_cmd_data` (beyond: CHECK CONDITION,
/// INVALID FIELD IN CDB) and a session's by `max_session_data` (beyond: TASK
/// SET FULL until buffers are freed).
#[test]
fn command_buffers_are_bounded() {
    let (_srv, addr) = server(|c| {
        c.max_cmd_data = 1 << 20;
        c.max_session_data = 2 << 20;
    });
    let mut c = Client::login(addr, 1, &[("InitialR2T", "Yes"), ("ImmediateData", "No")]);
    c.clear_ua();
    let d = c.run(&read10(0, 4096), 2 << 20, true, None);
    assert_eq!(d.status, 2);
    assert_eq!((d.sense[2] & 0x0f, d.sense[12], d.sense[13]), (5, 0x24, 0));
    // Two writes of 1 MiB wait for their data: the session's 2 MiB are taken.
    let data = pattern(1 << 20, 3);
    let mut held = Vec::new();
    for lba in [0u32, 2048] {
        let (itt, h) = c.command_header(&write10(lba, 2048), 1 << 20, false, true, 0, true);
        c.send(h, &[]);
        held.push((itt, expect_r2t(&mut c)));
    }
    let d = c.run(&read10(0, 1), 512, true, None);
    assert_eq!(d.status, 0x28, "TASK SET FULL");
    // Finishing one frees its buffer.
    let (itt, r) = held.remove(0);
    c.sequence(itt, r.ttt, &data, 0, r.desired_len as usize);
    let d = c.finish(itt, 1 << 20, &data);
    assert_eq!(d.status, 0);
    assert_eq!(c.read(0, 1), data[..512].to_vec());
    let (itt, r) = held.remove(0);
    c.sequence(itt, r.ttt, &data, 0, r.desired_len as usize);
    assert_eq!(c.finish(itt, 1 << 20, &data).status, 0);
}

/// A peer that sends commands and never reads the answers: the target stops
/// reading once `max_queued_output` bytes wait for it, so the peer's socket
/// fills up instead of the target's memory. PDUs held ahead of a CmdSN gap
/// are bounded too (the connection is dropped). Another session works.
#[test]
fn buffered_bytes_per_connection_are_bounded() {
    let (_srv, addr) = server(|c| {
        c.max_queued_output = 256 << 10;
        c.max_session_data = 1 << 20;
    });
    let mut good = Client::login(addr, 1, &[]);
    good.check_io(0, 1);

    let mut hog = Client::login(addr, 2, &[]);
    hog.s
        .set_write_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut sent = 0usize;
    let mut blocked = false;
    // Each READ asks for 256 KiB; its 48-byte header costs us nothing.
    for _ in 0..400_000 {
        let (_, h) = hog.command_header(&read10(0, 512), 512 * 512, true, false, 0, true);
        match hog.s.write(&h) {
            Ok(n) => sent += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                blocked = true;
                break;
            }
            Err(e) => panic!("write: {e}"),
        }
    }
    assert!(
        blocked,
        "the target kept reading {sent} bytes of commands whose answers nobody reads"
    );
    good.check_io(16, 2);
    drop(hog);
    good.check_io(32, 3);

    // Commands ahead of a CmdSN gap, each with 128 KiB of immediate data.
    let mut gap = Client::login(addr, 3, &[("FirstBurstLength", "131072")]);
    let imm = gap.neg.first_burst.min(gap.neg.target_mrdsl);
    assert!(imm >= 64 << 10);
    let data = pattern(imm, 1);
    gap.cmd_sn = gap.cmd_sn.wrapping_add(1);
    let _ = gap.s.set_write_timeout(Some(Duration::from_secs(5)));
    for i in 0..40u32 {
        let (_, h) = gap.command_header(
            &write10(i * 256, (imm / BS) as u16),
            imm as u32,
            false,
            true,
            imm,
            true,
        );
        let wire = Framing::default().encode(&h, &[], &data);
        if gap.s.write_all(&wire).is_err() {
            break;
        }
    }
    assert!(gap.expect_closed().is_empty());
    good.check_io(48, 4);
}

// ---------------------------------------------------------------------------
// NOP

/// The target pings an idle connection with NOP-In (ITT 0xffffffff, a TTT,
/// StatSN not advanced); a peer that answers stays, a silent one is dropped
/// after `ping_timeout`. NOP-Out with a tag is echoed with its data.
#[test]
fn nop_pings_drop_dead_connections_and_nop_out_is_answered() {
    let interval = Duration::from_millis(200);
    let timeout = Duration::from_millis(1500);
    let (_srv, addr) = server(|c| {
        c.ping_interval = interval;
        c.ping_timeout = timeout;
    });
    let mut alive = Client::login(addr, 1, &[]);
    let t = Instant::now();
    let mut dead = Client::login(addr, 2, &[]);
    dead.answer_pings = false;
    std::thread::scope(|scope| {
        // The dead one sees pings and then the end.
        let dead = scope.spawn(move || {
            let seen = dead.expect_closed();
            assert!(
                t.elapsed() >= interval + timeout,
                "dropped before the ping timed out"
            );
            assert!(!seen.is_empty());
            for g in &seen {
                let Pdu::NopIn(n) = &g.pdu else {
                    panic!("only pings: {:?}", g.pdu)
                };
                assert_eq!(n.itt, RESERVED_TAG);
                assert_ne!(n.ttt, RESERVED_TAG, "a ping wants an answer");
            }
        });
        // Meanwhile the live one answers its pings as they come, and stays.
        while !dead.is_finished() || alive.pings_seen < 3 {
            let g = alive.recv_any().expect("a ping, not the end");
            let Pdu::NopIn(n) = g.pdu else {
                panic!("expected a ping, got {:?}", g.pdu)
            };
            assert_eq!(n.itt, RESERVED_TAG);
            alive.pings_seen += 1;
            alive.answer_ping(n.ttt);
        }
        dead.join().expect("dead connection checks");
    });
    alive.check_io(0, 1);
    // Echo of a NOP-Out's data; StatSN advanced (checked by the client).
    let big = pattern(4000, 3);
    assert_eq!(alive.nop(&big).data, big);
}

// ---------------------------------------------------------------------------
// Data-Out, R2T, residuals, MaxRecvDataSegmentLength

fn expect_r2t(c: &mut Client) -> iscsi::pdu::R2t {
    match c.recv().pdu {
        Pdu::R2t(r) => r,
        other => panic!("expected an R2T, got {other:?}"),
    }
}

/// A Data-Out with the wrong DataSN or BufferOffset, or unsolicited data past
/// FirstBurstLength, is rejected with its header and its command ends there;
/// the session goes on.
#[test]
fn data_out_sequence_errors_are_rejected() {
    let (_srv, addr) = server(|_| {});
    let mut c = Client::login(addr, 1, &[("InitialR2T", "Yes"), ("ImmediateData", "No")]);
    let data = pattern(16 * BS, 4);
    for (what, data_sn, offset) in [("DataSN", 1u32, 0usize), ("BufferOffset", 0, 512)] {
        let (itt, h) = c.command_header(&write10(0, 16), data.len() as u32, false, true, 0, true);
        c.send(h, &[]);
        let r = expect_r2t(&mut c);
        let p = Pdu::DataOut(DataOut {
            final_: false,
            data_segment_len: 4096,
            itt,
            ttt: r.ttt,
            exp_stat_sn: c.exp_stat_sn,
            data_sn,
            buffer_offset: offset as u32,
            ..DataOut::default()
        });
        let h = p.to_bytes().expect("encode");
        c.send(h, &data[..4096]);
        let (reason, back) = reject_of(&c.recv());
        assert_eq!(reason, reject_reason::PROTOCOL_ERROR, "{what}");
        assert_eq!(back, h.to_vec(), "{what}");
        // The rest of the task's data is ignored; nothing more comes for it.
        c.sequence(itt, r.ttt, &data, 4096, data.len());
        c.nop(&[]);
        assert!(
            c.read(0, 16).iter().all(|&b| b == 0),
            "{what}: nothing written"
        );
    }

    // Unsolicited data beyond FirstBurstLength.
    let mut u = Client::login(
        addr,
        2,
        &[
            ("InitialR2T", "No"),
            ("ImmediateData", "Yes"),
            ("FirstBurstLength", "8192"),
        ],
    );
    assert_eq!(u.neg.first_burst, 8192);
    let big = pattern(32 * BS, 6);
    // Immediate data longer than the first burst.
    let (_, h) = u.command_header(&write10(0, 32), big.len() as u32, false, true, 12288, true);
    u.send(h, &big[..12288]);
    assert_eq!(reject_of(&u.recv()).0, reject_reason::PROTOCOL_ERROR);
    // Unsolicited Data-Out running past it.
    let (itt, h) = u.command_header(&write10(0, 32), big.len() as u32, false, true, 4096, false);
    u.send(h, &big[..4096]);
    u.data_out(itt, RESERVED_TAG, 0, 4096, &big[4096..12288], true);
    assert_eq!(reject_of(&u.recv()).0, reject_reason::PROTOCOL_ERROR);
    u.nop(&[]);
    u.check_io(64, 7);
    c.check_io(0, 8);
}

/// With MaxOutstandingR2T=2 and MaxBurstLength=8192 a 64 KiB write gets two
/// R2Ts, a third only when a sequence is done; all of them cover the write.
#[test]
fn r2ts_stay_within_max_outstanding_r2t() {
    let (_srv, addr) = server(|_| {});
    let mut c = Client::login(
        addr,
        1,
        &[
            ("InitialR2T", "Yes"),
            ("ImmediateData", "No"),
            ("MaxOutstandingR2T", "2"),
            ("MaxBurstLength", "8192"),
            ("FirstBurstLength", "8192"),
        ],
    );
    c.clear_ua();
    let data = pattern(128 * BS, 9);
    let (itt, h) = c.command_header(&write10(0, 128), data.len() as u32, false, true, 0, true);
    c.send(h, &[]);
    let r1 = expect_r2t(&mut c);
    let r2 = expect_r2t(&mut c);
    // Nothing else is outstanding: the next PDU is the NOP-In.
    c.nop(&[]);
    assert_eq!((r1.buffer_offset, r1.desired_len, r1.r2t_sn), (0, 8192, 0));
    assert_eq!(
        (r2.buffer_offset, r2.desired_len, r2.r2t_sn),
        (8192, 8192, 1)
    );
    c.sequence(itt, r1.ttt, &data, 0, 8192);
    let r3 = expect_r2t(&mut c);
    assert_eq!((r3.buffer_offset, r3.r2t_sn), (16384, 2));
    c.sequence(itt, r2.ttt, &data, 8192, 16384);
    c.sequence(itt, r3.ttt, &data, 16384, 24576);
    let d = c.finish(itt, data.len() as u32, &data);
    assert_eq!(d.status, 0);
    assert_eq!(d.r2ts, 5, "the remaining 40 KiB in 8 KiB bursts");
    assert!(c.read(0, 128) == data);
}

/// Residuals: a READ with a buffer smaller than the data overflows, larger
/// underflows; the same for WRITE. The data that fits moves.
#[test]
fn residual_overflow_and_underflow() {
    let (_srv, addr) = server(|_| {});
    let mut c = Client::login(addr, 1, &[]);
    let data = pattern(8 * BS, 1);
    c.write(0, &data);
    let d = c.run(&read10(0, 8), 4 * BS as u32, true, None);
    assert_eq!(
        (d.status, d.residual, d.residual_count),
        (0, 'O', 4 * BS as u32)
    );
    assert!(d.data == data[..4 * BS]);
    let d = c.run(&read10(0, 8), 12 * BS as u32, true, None);
    assert_eq!(
        (d.status, d.residual, d.residual_count),
        (0, 'U', 4 * BS as u32)
    );
    assert!(d.data[..8 * BS] == data[..]);
    // WRITE of 8 blocks with 4 blocks of data: overflow of 4 blocks.
    let short = pattern(4 * BS, 2);
    let d = c.run(&write10(16, 8), short.len() as u32, false, Some(&short));
    assert_eq!(
        (d.residual, d.residual_count),
        ('O', 4 * BS as u32),
        "status {}",
        d.status
    );
    // WRITE of 4 blocks with room for 8: underflow of 4 blocks.
    let mut long = short.clone();
    long.resize(8 * BS, 0);
    let (itt, h) = c.command_header(&write10(32, 4), long.len() as u32, false, true, 0, true);
    c.send(h, &[]);
    let d = c.finish(itt, long.len() as u32, &long);
    assert_eq!(
        (d.status, d.residual, d.residual_count),
        (0, 'U', 4 * BS as u32)
    );
    assert!(c.read(32, 4) == short);
}

/// The initiator declares MaxRecvDataSegmentLength=512: every Data-In, NOP-In
/// echo and Text Response the target sends stays within it.
#[test]
fn max_recv_data_segment_length_is_honoured_both_ways() {
    let (_srv, addr) = server(|_| {});
    let mut c = Client::login(addr, 1, &[("MaxRecvDataSegmentLength", "512")]);
    let data = pattern(128 * BS, 3);
    c.write(0, &data);
    let d = c.run(&read10(0, 128), data.len() as u32, true, None);
    assert_eq!(d.status, 0);
    assert!(d.data == data);
    assert!(
        d.data_in_lens.iter().all(|&n| n <= 512),
        "{:?}",
        d.data_in_lens
    );
    assert_eq!(d.data_in_lens.len(), 128);
    let g = c.nop(&pattern(4000, 1));
    assert!(g.data.len() <= 512);
    let targets = c.text(b"SendTargets=\0");
    assert_eq!(
        targets[0],
        ("TargetName".to_string(), common::IQN.to_string())
    );
    // Ours: the target declared it, and a bigger segment is refused (the
    // malformed-PDU test drops such a connection).
    let mrdsl = c
        .login_keys
        .iter()
        .find(|(k, _)| k == "MaxRecvDataSegmentLength")
        .map(|(_, v)| v.parse::<usize>().expect("number"))
        .expect("the target declares its MaxRecvDataSegmentLength");
    assert_eq!(c.neg.target_mrdsl, mrdsl);
    // Exactly that much is fine.
    let exact = pattern(mrdsl, 4);
    let g = c.nop(&exact);
    assert_eq!(g.data.len(), 512);
    // Declared again in the full feature phase, it holds from then on.
    assert!(c.text(b"MaxRecvDataSegmentLength=2048\0").is_empty());
    let d = c.run(&read10(0, 128), data.len() as u32, true, None);
    assert!(d.data == data);
    assert!(
        d.data_in_lens.iter().all(|&n| n <= 2048),
        "{:?}",
        d.data_in_lens
    );
    assert_eq!(d.data_in_lens.len(), 32);
    assert_eq!(c.nop(&exact).data.len(), 2048);
}

/// With CRC32C digests: every PDU of the target carries correct ones (the
/// client checks them); a Data-Out, small or large (read in place), whose data
/// digest is wrong is answered with Reject (data digest error) and its write
/// ends with CHECK CONDITION, PROTOCOL SERVICE CRC ERROR, writing nothing; a
/// NOP-Out with a bad data digest is rejected; the session goes on. A wrong
/// header digest drops the connection (the header cannot be trusted).
#[test]
fn digest_errors() {
    let (_srv, addr) = server(|_| {});
    // Without header digests large Data-Outs are read in place.
    for header_digest in ["None", "CRC32C"] {
        digest_errors_with(addr, header_digest);
    }
}

fn digest_errors_with(addr: SocketAddr, header_digest: &str) {
    let digests = [
        ("HeaderDigest", header_digest),
        ("DataDigest", "CRC32C"),
        ("InitialR2T", "Yes"),
        ("ImmediateData", "No"),
    ];
    let mut c = Client::login(addr, 1, &digests);
    assert_eq!(c.framing.header_digest, header_digest == "CRC32C");
    assert!(c.framing.data_digest);
    c.check_io(0, 1);
    for (n, len) in [(1u32, 1024usize), (2, 65536)] {
        let data = pattern(len, 0x30 + n as u8);
        let blocks = (len / BS) as u16;
        let (itt, h) =
            c.command_header(&write10(1000 * n, blocks), len as u32, false, true, 0, true);
        c.send(h, &[]);
        let r = expect_r2t(&mut c);
        let seg = len.min(c.neg.target_mrdsl) / 2;
        let bad = Pdu::DataOut(DataOut {
            final_: false,
            data_segment_len: seg as u32,
            itt,
            ttt: r.ttt,
            exp_stat_sn: c.exp_stat_sn,
            ..DataOut::default()
        })
        .to_bytes()
        .expect("encode");
        let mut wire = c.framing.encode(&bad, &[], &data[..seg]);
        let last = wire.len() - 1;
        wire[last] ^= 0x5a;
        c.send_raw(&wire);
        let (reason, back) = reject_of(&c.recv());
        assert_eq!(reason, reject_reason::DATA_DIGEST_ERROR, "{len}");
        assert_eq!(back, bad.to_vec());
        // The rest of the sequence, then the status.
        c.data_out(itt, r.ttt, 1, seg, &data[seg..r.desired_len as usize], true);
        let d = c.finish(itt, len as u32, &data);
        assert_eq!(d.status, 2, "{len}");
        assert_eq!(
            (d.sense[2] & 0x0f, d.sense[12], d.sense[13]),
            (0x0b, 0x47, 0x05)
        );
        assert!(
            c.read(1000 * n, blocks).iter().all(|&b| b == 0),
            "nothing written"
        );
    }
    // A NOP-Out whose data digest is wrong.
    let h = Pdu::NopOut(NopOut {
        immediate: true,
        data_segment_len: 100,
        itt: 77,
        ttt: RESERVED_TAG,
        cmd_sn: c.cmd_sn,
        exp_stat_sn: c.exp_stat_sn,
        ..NopOut::default()
    })
    .to_bytes()
    .expect("encode");
    let mut wire = c.framing.encode(&h, &[], &[3u8; 100]);
    let last = wire.len() - 1;
    wire[last] ^= 1;
    c.send_raw(&wire);
    assert_eq!(reject_of(&c.recv()).0, reject_reason::DATA_DIGEST_ERROR);
    c.check_io(0, 2);
    if !c.framing.header_digest {
        return;
    }
    // A wrong header digest: the connection goes.
    let h = Pdu::NopOut(NopOut {
        immediate: true,
        itt: 78,
        ttt: RESERVED_TAG,
        cmd_sn: c.cmd_sn,
        exp_stat_sn: c.exp_stat_sn,
        ..NopOut::default()
    })
    .to_bytes()
    .expect("encode");
    let mut wire = c.framing.encode(&h, &[], &[]);
    wire[BHS_LEN] ^= 1;
    c.send_raw(&wire);
    assert!(c.expect_closed().is_empty());
}

// ---------------------------------------------------------------------------
// Login negotiation

fn answers(c: &Client) -> BTreeMap<String, String> {
    c.login_keys.iter().cloned().collect()
}

/// Every key of RFC 7143 §13 in one normal-session login, with the answers
/// the result functions give; unknown and X- keys NotUnderstood; malformed
/// values Reject; declarations only a target makes Reject.
#[test]
fn login_keys_are_answered_by_their_result_functions() {
    let (_srv, addr) = server(|_| {});
    let mut c = Client::connect(addr);
    c.login_as(
        INITIATOR,
        common::IQN,
        &[
            ("HeaderDigest", "CRC32C,None"),
            ("DataDigest", "None"),
            ("MaxConnections", "8"),
            ("InitialR2T", "No"),
            ("ImmediateData", "Yes"),
            ("MaxRecvDataSegmentLength", "65536"),
            ("MaxBurstLength", "1048576"),
            ("FirstBurstLength", "4096"),
            ("DefaultTime2Wait", "7"),
            ("DefaultTime2Retain", "5"),
            ("MaxOutstandingR2T", "300"),
            ("DataPDUInOrder", "No"),
            ("DataSequenceInOrder", "No"),
            ("ErrorRecoveryLevel", "2"),
            ("InitiatorAlias", "robust"),
            ("TaskReporting", "FastAbort,RFC3720"),
            ("iSCSIProtocolLevel", "2"),
            ("IFMarker", "Yes"),
            ("OFMarker", "Yes"),
            ("IFMarkInt", "2048"),
            ("OFMarkInt", "2048~8192"),
            ("X#NodeArchitecture", "oxtarget-tests"),
            ("X-org.oxtarget.private", "1"),
            ("Z-unheard-of", "x"),
            ("MadeUpKey", "7"),
            ("SendTargets", "All"),
            ("TargetAddress", "192.0.2.1:3260,1"),
            ("RDMAExtensions", "Yes"),
        ],
    )
    .expect("login");
    let a = answers(&c);
    let want = [
        ("HeaderDigest", "CRC32C"),
        ("DataDigest", "None"),
        ("MaxConnections", "1"),
        ("InitialR2T", "No"),
        ("ImmediateData", "Yes"),
        ("MaxBurstLength", "1048576"),
        ("FirstBurstLength", "4096"),
        ("DefaultTime2Wait", "7"),
        ("DefaultTime2Retain", "5"),
        ("MaxOutstandingR2T", "16"),
        // OR: our Yes wins.
        ("DataPDUInOrder", "Yes"),
        ("DataSequenceInOrder", "Yes"),
        ("ErrorRecoveryLevel", "0"),
        ("TaskReporting", "RFC3720"),
        ("iSCSIProtocolLevel", "1"),
        ("IFMarkInt", "Reject"),
        ("OFMarkInt", "Reject"),
        ("X-org.oxtarget.private", "NotUnderstood"),
        ("Z-unheard-of", "NotUnderstood"),
        ("MadeUpKey", "NotUnderstood"),
        // A full feature phase request, not a login key.
        ("SendTargets", "Irrelevant"),
        ("TargetAddress", "Reject"),
        // iSER on a TCP portal.
        ("RDMAExtensions", "No"),
        ("TargetPortalGroupTag", "1"),
        ("TargetAlias", "oxtarget test"),
    ];
    for (k, v) in want {
        assert_eq!(a.get(k).map(String::as_str), Some(v), "{k} in {a:?}");
    }
    for k in ["IFMarker", "OFMarker"] {
        assert!(
            matches!(a.get(k).map(String::as_str), Some("Reject" | "No")),
            "{k}"
        );
    }
    for k in ["X#NodeArchitecture", "InitiatorAlias"] {
        assert!(!a.contains_key(k), "{k} is a declaration: no answer");
    }
    assert!(
        a.contains_key("MaxRecvDataSegmentLength"),
        "the target declares its own"
    );
    // The session runs as negotiated: header digests on, ERL 0, the target's
    // MaxOutstandingR2T, unsolicited data up to 4 KiB.
    assert!(c.framing.header_digest && !c.framing.data_digest);
    assert_eq!(c.neg.first_burst, 4096);
    c.check_io(0, 1);

    // Malformed values: Reject, and the login goes on with the defaults.
    let mut c = Client::connect(addr);
    c.isid = isid(2);
    c.login_as(
        INITIATOR,
        common::IQN,
        &[
            ("MaxBurstLength", "lots"),
            ("FirstBurstLength", "100"),
            ("InitialR2T", "Maybe"),
            ("HeaderDigest", "MD5"),
            ("MaxRecvDataSegmentLength", "100"),
            ("ErrorRecoveryLevel", "9"),
            ("MaxConnections", "0"),
            ("DefaultTime2Wait", "0x"),
            ("TargetAlias", "not yours"),
            ("TargetPortalGroupTag", "5"),
        ],
    )
    .expect("login with rejected keys");
    let a = answers(&c);
    for k in [
        "MaxBurstLength",
        "FirstBurstLength",
        "InitialR2T",
        "HeaderDigest",
        "ErrorRecoveryLevel",
        "MaxConnections",
        "DefaultTime2Wait",
    ] {
        assert_eq!(a.get(k).map(String::as_str), Some("Reject"), "{k} in {a:?}");
    }
    // Keys the target declares itself get its one value, not a Reject too.
    assert_eq!(
        a.get("TargetAlias").map(String::as_str),
        Some("oxtarget test")
    );
    assert_eq!(a.get("TargetPortalGroupTag").map(String::as_str), Some("1"));
    assert_eq!(c.neg.target_mrdsl, 262_144);
    c.check_io(0, 1);

    // A security key outside the security stage fails the login.
    let mut c = Client::connect(addr);
    assert_eq!(
        c.login_as(INITIATOR, common::IQN, &[("AuthMethod", "None")]),
        Err(LoginStatus::INITIATOR_ERROR)
    );
    // Identity errors fail the login with their status.
    let cases: [(&[(&str, &str)], LoginStatus); 4] = [
        (
            &[("InitiatorName", INITIATOR), ("SessionType", "Normal")],
            LoginStatus::MISSING_PARAMETER,
        ),
        (
            &[("TargetName", common::IQN), ("SessionType", "Normal")],
            LoginStatus::MISSING_PARAMETER,
        ),
        (
            &[
                ("InitiatorName", INITIATOR),
                ("TargetName", "iqn.2026-11.org.oxtarget:none"),
            ],
            LoginStatus::NOT_FOUND,
        ),
        (
            &[("InitiatorName", INITIATOR), ("SessionType", "Bogus")],
            LoginStatus::INITIATOR_ERROR,
        ),
    ];
    for (keys, status) in cases {
        let mut c = Client::connect(addr);
        assert_eq!(c.login_operational(&kv(keys)), Err(status), "{keys:?}");
        assert!(c.expect_closed().is_empty());
    }
}

/// In a discovery session the session keys that only matter for SCSI data
/// are Irrelevant; the connection keys still negotiate.
#[test]
fn discovery_sessions_answer_session_keys_irrelevant() {
    let (_srv, addr) = server(|_| {});
    let c = Client::discovery(
        addr,
        INITIATOR,
        &[
            ("MaxConnections", "1"),
            ("InitialR2T", "Yes"),
            ("ImmediateData", "No"),
            ("MaxBurstLength", "262144"),
            ("FirstBurstLength", "65536"),
            ("MaxOutstandingR2T", "1"),
            ("DataPDUInOrder", "Yes"),
            ("DataSequenceInOrder", "Yes"),
            ("TaskReporting", "RFC3720"),
            ("HeaderDigest", "None"),
            ("ErrorRecoveryLevel", "0"),
            ("DefaultTime2Wait", "2"),
            ("MaxRecvDataSegmentLength", "8192"),
        ],
    );
    let a = answers(&c);
    for k in [
        "MaxConnections",
        "InitialR2T",
        "ImmediateData",
        "MaxBurstLength",
        "FirstBurstLength",
        "MaxOutstandingR2T",
        "DataPDUInOrder",
        "DataSequenceInOrder",
        "TaskReporting",
    ] {
        assert_eq!(
            a.get(k).map(String::as_str),
            Some("Irrelevant"),
            "{k} in {a:?}"
        );
    }
    assert_eq!(a.get("HeaderDigest").map(String::as_str), Some("None"));
    assert_eq!(a.get("ErrorRecoveryLevel").map(String::as_str), Some("0"));
    assert!(
        !a.contains_key("TargetPortalGroupTag"),
        "no target in discovery"
    );
}

// ---------------------------------------------------------------------------
// CHAP

const CHAP_USER: &str = "robust-user";
const CHAP_SECRET: &[u8] = b"initiator-secret-16";
const TARGET_USER: &str = "robust-target";
const TARGET_SECRET: &[u8] = b"target-secret-0016";

fn chap_hash(alg: u8, id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
    fn h<D: sha2::Digest>(id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
        let mut d = D::new();
        d.update([id]);
        d.update(secret);
        d.update(challenge);
        d.finalize().to_vec()
    }
    match alg {
        5 => h::<md5::Md5>(id, secret, challenge),
        6 => h::<sha1::Sha1>(id, secret, challenge),
        7 => h::<sha2::Sha256>(id, secret, challenge),
        8 => h::<sha3::Sha3_256>(id, secret, challenge),
        _ => panic!("algorithm {alg}"),
    }
}

fn hex(b: &[u8]) -> String {
    let mut s = "0x".to_string();
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

fn unhex(s: &str) -> Vec<u8> {
    let s = s.strip_prefix("0x").expect("hex value");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn chap_server() -> (Server, SocketAddr) {
    server(|c| {
        let t = &mut c.targets[0];
        t.chap = Some(ChapCredentials {
            initiator: Secret {
                user: CHAP_USER.into(),
                secret: CHAP_SECRET.to_vec(),
            },
            target: Some(Secret {
                user: TARGET_USER.into(),
                secret: TARGET_SECRET.to_vec(),
            }),
        });
        t.chap_required = true;
    })
}

/// Runs the security stage with CHAP; `Err` with the failure status.
fn chap_login(c: &mut Client, offer: &str, secret: &[u8], mutual: bool) -> Result<u8, LoginStatus> {
    let first = kv(&[
        ("InitiatorName", INITIATOR),
        ("TargetName", common::IQN),
        ("SessionType", "Normal"),
        ("AuthMethod", "CHAP,None"),
    ]);
    let (r, p) = c
        .login_step(Stage::Security, Some(Stage::Operational), &first)
        .expect("response");
    assert!(r.status.is_success(), "{:?}", r.status);
    let p: BTreeMap<_, _> = p.into_iter().collect();
    assert_eq!(p.get("AuthMethod").map(String::as_str), Some("CHAP"));
    assert!(
        p.contains_key("TargetPortalGroupTag"),
        "TPGT in the first response"
    );
    assert_eq!(r.transit, None, "no transit before authentication");
    let (r, p) = c
        .login_step(Stage::Security, None, &kv(&[("CHAP_A", offer)]))
        .expect("response");
    if !r.status.is_success() {
        return Err(r.status);
    }
    let p: BTreeMap<_, _> = p.into_iter().collect();
    let alg: u8 = p["CHAP_A"].parse().expect("CHAP_A");
    let id: u8 = p["CHAP_I"].parse().expect("CHAP_I");
    let challenge = unhex(&p["CHAP_C"]);
    assert!(challenge.len() >= 16);
    let mut keys = kv(&[
        ("CHAP_N", CHAP_USER),
        ("CHAP_R", &hex(&chap_hash(alg, id, secret, &challenge))),
    ]);
    let my_challenge = garbage(24, u64::from(alg) + 11);
    let my_id = 0x42u8;
    if mutual {
        keys.push("CHAP_I", my_id.to_string());
        keys.push("CHAP_C", hex(&my_challenge));
    }
    let (r, p) = c
        .login_step(Stage::Security, Some(Stage::Operational), &keys)
        .expect("response");
    if !r.status.is_success() {
        return Err(r.status);
    }
    assert_eq!(r.transit, Some(Stage::Operational));
    let p: BTreeMap<_, _> = p.into_iter().collect();
    if mutual {
        assert_eq!(p.get("CHAP_N").map(String::as_str), Some(TARGET_USER));
        let want = chap_hash(alg, my_id, TARGET_SECRET, &my_challenge);
        assert_eq!(unhex(&p["CHAP_R"]), want, "the target proves its secret");
    } else {
        assert!(!p.contains_key("CHAP_R"));
    }
    Ok(alg)
}

/// CHAP with MD5, SHA-1, SHA-256 and SHA3-256, one-way and mutual; the Linux
/// initiator's offer 7,6,5 gets SHA-256; a wrong secret or no CHAP at all is
/// an authentication failure.
#[test]
fn chap_with_every_algorithm_one_way_and_mutual() {
    let (_srv, addr) = chap_server();
    let mut n = 0u8;
    for alg in ["5", "6", "7", "8", "7,6,5"] {
        for mutual in [false, true] {
            n += 1;
            let mut c = Client::connect(addr);
            c.isid = isid(n);
            let got = chap_login(&mut c, alg, CHAP_SECRET, mutual).expect("CHAP");
            let want: u8 = alg.split(',').next().expect("alg").parse().expect("number");
            assert_eq!(got, want, "the initiator's first choice");
            c.login_operational(&Pairs::default()).expect("operational");
            c.check_io(u32::from(n) * 16, n);
        }
    }
    let mut c = Client::connect(addr);
    assert_eq!(
        chap_login(&mut c, "5", b"wrong-secret-0000", false),
        Err(LoginStatus::AUTHENTICATION_FAILURE)
    );
    assert!(c.expect_closed().is_empty());
    // An algorithm we do not have.
    let mut c = Client::connect(addr);
    assert_eq!(
        chap_login(&mut c, "99", CHAP_SECRET, false),
        Err(LoginStatus::AUTHENTICATION_FAILURE)
    );
    // No authentication where CHAP is required.
    let mut c = Client::connect(addr);
    let (r, _) = c
        .login_step(
            Stage::Security,
            Some(Stage::Operational),
            &kv(&[
                ("InitiatorName", INITIATOR),
                ("TargetName", common::IQN),
                ("AuthMethod", "None"),
            ]),
        )
        .expect("response");
    assert_eq!(r.status, LoginStatus::AUTHENTICATION_FAILURE);
    // Skipping the security stage altogether.
    let mut c = Client::connect(addr);
    assert_eq!(
        c.login_as(INITIATOR, common::IQN, &[]),
        Err(LoginStatus::AUTHENTICATION_FAILURE)
    );
}

// ---------------------------------------------------------------------------
// SendTargets

fn ipv6_loopback() -> bool {
    TcpListener::bind("[::1]:0").is_ok()
}

fn second_target(name: &str, portals: Vec<SocketAddr>, tag: u16, acl: Vec<String>) -> Target {
    Target {
        name: name.into(),
        alias: None,
        portals,
        portal_group_tag: tag,
        port: Arc::new(TargetPort {
            name: format!("{name},t,0x{tag:04x}"),
            protocol: Protocol::Iscsi,
            relative_id: tag,
            group_id: 1,
        }),
        luns: LunMap::new(),
        acl,
        chap: None,
        chap_required: false,
    }
}

/// SendTargets=All and =<name> in a discovery session, and as a Text request
/// in a normal session: only the targets the initiator may log in to, each
/// with a TargetAddress per portal, IPv4 and IPv6, and its portal group tag.
#[test]
fn send_targets_lists_what_the_initiator_may_reach() {
    let v6 = ipv6_loopback();
    if !v6 {
        eprintln!("no IPv6 loopback: the [::1] portal is left out");
    }
    let secret_name = "iqn.2026-11.org.oxtarget:secret";
    let open_name = "iqn.2026-11.org.oxtarget:open";
    let (srv, addr) = server(|c| {
        c.targets[0].portal_group_tag = 7;
        if v6 {
            c.targets[0].portals.push("[::1]:0".parse().expect("addr"));
        }
        let p = c.targets[0].portals.clone();
        c.targets.push(second_target(
            secret_name,
            p.clone(),
            3,
            vec!["iqn.2026-11.org.oxtarget:someone-else".into()],
        ));
        c.targets
            .push(second_target(open_name, vec![p[0]], 4, Vec::new()));
    });
    let addrs = srv.local_addrs().to_vec();
    let shown = |a: &SocketAddr, tag: u16| match a {
        SocketAddr::V4(v) => format!("{}:{},{tag}", v.ip(), v.port()),
        SocketAddr::V6(v) => format!("[{}]:{},{tag}", v.ip(), v.port()),
    };
    let mut want_all = vec![("TargetName".to_string(), common::IQN.to_string())];
    for a in &addrs {
        want_all.push(("TargetAddress".into(), shown(a, 7)));
    }
    want_all.push(("TargetName".into(), open_name.into()));
    want_all.push(("TargetAddress".into(), shown(&addrs[0], 4)));

    let mut d = Client::discovery(addr, INITIATOR, &[]);
    assert_eq!(d.text(b"SendTargets=All\0"), want_all);
    assert_eq!(
        d.text(format!("SendTargets={open_name}\0").as_bytes()),
        want_all[want_all.len() - 2..].to_vec()
    );
    // A target this initiator may not see is not there, by name either.
    assert!(d
        .text(format!("SendTargets={secret_name}\0").as_bytes())
        .is_empty());
    assert!(d
        .text(b"SendTargets=iqn.2026-11.org.oxtarget:nothing\0")
        .is_empty());
    // Nor may it log in to it.
    let mut c = Client::connect(addr);
    assert_eq!(
        c.login_as(INITIATOR, secret_name, &[]),
        Err(LoginStatus::AUTHORIZATION_FAILURE)
    );
    // The one allowed sees it.
    let mut other = Client::discovery(addr, "iqn.2026-11.org.oxtarget:someone-else", &[]);
    let all = other.text(b"SendTargets=All\0");
    assert!(
        all.contains(&("TargetName".into(), secret_name.into())),
        "{all:?}"
    );
    // A normal session: its own target for an empty value, a named one on
    // request, All is not for normal sessions.
    let mut n = Client::login(addr, 1, &[]);
    assert_eq!(
        n.text(b"SendTargets=\0"),
        want_all[..1 + addrs.len()].to_vec()
    );
    assert_eq!(
        n.text(format!("SendTargets={open_name}\0").as_bytes()),
        want_all[want_all.len() - 2..].to_vec()
    );
    assert_eq!(
        n.text(b"SendTargets=All\0"),
        vec![("SendTargets".to_string(), "Reject".to_string())]
    );
    // The same request continued over two Text Requests (C=1, then the TTT
    // of the target's acknowledgement).
    let itt = n.next_itt();
    let mut ttt = RESERVED_TAG;
    let mut answer = Vec::new();
    for (cont, body) in [(true, &b"SendTar"[..]), (false, &b"gets=\0"[..])] {
        let p = Pdu::TextRequest(TextRequest {
            immediate: false,
            final_: !cont,
            continue_: cont,
            data_segment_len: body.len() as u32,
            lun: [0; 8],
            itt,
            ttt,
            cmd_sn: n.cmd_sn,
            exp_stat_sn: n.exp_stat_sn,
        });
        n.cmd_sn = n.cmd_sn.wrapping_add(1);
        n.send_pdu(p, body);
        let g = n.recv();
        let Pdu::TextResponse(r) = g.pdu else {
            panic!("expected a Text Response, got {:?}", g.pdu)
        };
        assert_eq!(r.final_, !cont);
        ttt = r.ttt;
        answer = g.data;
    }
    assert_eq!(text_pairs(&answer), want_all[..1 + addrs.len()].to_vec());
    // Unknown text keys in the full feature phase.
    assert_eq!(
        n.text(b"X-org.oxtarget.what=1\0"),
        vec![(
            "X-org.oxtarget.what".to_string(),
            "NotUnderstood".to_string()
        )]
    );
    n.check_io(0, 1);
    // The same target through the IPv6 portal.
    if v6 {
        let a6 = *addrs.iter().find(|a| a.is_ipv6()).expect("v6 portal");
        let mut c = Client::login(a6, 2, &[]);
        c.check_io(16, 2);
        let mut d6 = Client::discovery(a6, INITIATOR, &[]);
        assert_eq!(d6.text(b"SendTargets=All\0"), want_all);
    }
}
