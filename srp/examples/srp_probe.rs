//! srp_probe: a small user-space SRP initiator over RDMA/CM that takes a
//! target through what the Linux initiator never sends: logins the target
//! must refuse, immediate data, direct and indirect descriptors, a malformed
//! SRP_CMD, unknown task management, credit accounting, a single-channel
//! login that must end the older channel, and a multichannel login that must
//! keep it. Then hostile input, each on a fresh channel: commands to LUNs
//! the target does not have, an IU longer than the granted max_it_iu_len,
//! one longer than any receive buffer, and a burst of commands three times
//! the credits without reading a response; the target must answer each or
//! drop that channel, and still serve a new login afterwards.
//!
//! ```text
//! srp_probe DEST_IP:PORT ID_EXT IOC_GUID
//! ```
//!
//! It expects LUN 0 with 512-byte blocks and at least 1 MiB, which it
//! overwrites. Each result is a `KEY VALUE` line on stdout, followed by
//! `KEY-expected WANT` where the target answered otherwise than it should;
//! the last line is `probe-mismatches N` (or `probe-failed WHY` when a step
//! could not run). Exit status 0 only when every step ran and matched.

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use srp::iu::{
    login_flags, opcode, tsk_func, Cmd, DataXfer, LoginRej, LoginReq, LoginRsp, RemoteBuf,
    RemoteBufs, Rsp, TskMgmt,
};
use srp::rdma::{
    AcceptParams, CmEvent, CmEventKind, CmId, CompChannel, Cq, EventChannel, Mr, Pd, QpCaps,
    SendOp, SendWr, Wc, WcOpcode, ACCESS_REMOTE_READ, ACCESS_REMOTE_WRITE,
};

const IU_LEN: usize = 8260;
/// A send buffer: room for an IU longer than any the target accepts.
const SEND_SLOT: usize = 16384;
/// An IU no receive buffer of a target that granted IU_LEN holds.
const OVERSIZE_IU: usize = 12288;
const IMM_OFFSET: u16 = 68;
const RING: u32 = 32;
const DATA: usize = 1 << 20;
const WAIT: Duration = Duration::from_secs(10);

type R<T> = Result<T, String>;

fn poll_in(fd: RawFd, until: Instant) -> R<()> {
    let left = until.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err("timed out".into());
    }
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut p, 1, ms) };
    Ok(())
}

/// Waits until one of `fds` is readable; `Err` once `until` has passed.
fn poll_any(fds: &[RawFd], until: Instant) -> R<()> {
    let left = until.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err("timed out".into());
    }
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
    // SAFETY: `p` holds `p.len()` valid pollfds for the duration of the call.
    unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, ms) };
    Ok(())
}

/// How a hostile request ended: an IU came back, the channel went away
/// (what ended it), or neither within the wait.
enum End {
    Answered(Vec<u8>),
    Dropped(String),
    Hung,
}

impl End {
    /// `answered`, `dropped` or `hung`, with what ended a dropped channel on
    /// stderr.
    fn word(&self, key: &str) -> &'static str {
        match self {
            End::Answered(_) => "answered",
            End::Dropped(why) => {
                eprintln!("srp_probe: {key}: channel ended: {why}");
                "dropped"
            }
            End::Hung => "hung",
        }
    }
}

fn wait_event(ev: &EventChannel, until: Instant) -> R<CmEvent> {
    loop {
        if let Some(e) = ev.get_event().map_err(|e| e.to_string())? {
            return Ok(e);
        }
        poll_in(ev.fd(), until)?;
    }
}

fn expect_event(ev: &EventChannel, want: CmEventKind) -> R<CmEvent> {
    let e = wait_event(ev, Instant::now() + WAIT)?;
    if e.kind != want {
        return Err(format!(
            "{:?} (status {}) instead of {want:?}",
            e.kind, e.status
        ));
    }
    Ok(e)
}

/// One channel of the probe. Field order is drop order: the QP (in `id`)
/// goes first.
struct Conn {
    id: CmId,
    recv: Mr,
    send: Mr,
    data: Mr,
    cq: Arc<Cq>,
    comp: Arc<CompChannel>,
    _pd: Arc<Pd>,
    ev: EventChannel,
    rsp: LoginRsp,
    /// Credits we hold (the target's request limit as we count it).
    credits: i64,
    next_tag: u64,
    next_send: u32,
}

enum Login {
    Accepted(Box<Conn>),
    Rejected(LoginRej),
}

fn login(
    dst: SocketAddr,
    t_port: [u8; 16],
    i_port: [u8; 16],
    flags: u8,
    it_iu_len: u32,
) -> R<Login> {
    let ev = EventChannel::new().map_err(|e| e.to_string())?;
    let mut id = CmId::new(&ev, 0).map_err(|e| e.to_string())?;
    id.resolve_addr(None, dst, 2000)
        .map_err(|e| e.to_string())?;
    expect_event(&ev, CmEventKind::AddrResolved)?;
    id.resolve_route(2000).map_err(|e| e.to_string())?;
    expect_event(&ev, CmEventKind::RouteResolved)?;
    let s = |e: srp::rdma::RdmaError| e.to_string();
    let pd = id.alloc_pd().map_err(s)?;
    let comp = id.comp_channel().map_err(s)?;
    let cq = id.create_cq(4 * RING, &comp).map_err(s)?;
    id.create_qp(
        &pd,
        &cq,
        &cq,
        QpCaps {
            max_send_wr: 2 * RING,
            max_recv_wr: RING,
            max_send_sge: 1,
        },
    )
    .map_err(s)?;
    let ring = usize::try_from(RING).unwrap_or(0);
    let recv = Mr::new(&pd, ring * IU_LEN, 0).map_err(s)?;
    let send = Mr::new(&pd, ring * SEND_SLOT, 0).map_err(s)?;
    let data = Mr::new(&pd, DATA, ACCESS_REMOTE_READ | ACCESS_REMOTE_WRITE).map_err(s)?;
    for i in 0..ring {
        id.post_recv(i as u64, recv.addr(i * IU_LEN), IU_LEN as u32, recv.lkey())
            .map_err(s)?;
    }
    let req = LoginReq {
        tag: *b"probeLGN",
        req_it_iu_len: it_iu_len,
        req_buf_fmt: login_flags::BUF_FMT_DIRECT | login_flags::BUF_FMT_INDIRECT,
        req_flags: flags | login_flags::IMMED_REQUESTED,
        initiator_port_id: i_port,
        target_port_id: t_port,
        imm_data_offset: IMM_OFFSET,
    };
    id.connect(
        &req.encode_rdma_cm(),
        AcceptParams {
            responder_resources: 4,
            initiator_depth: 0,
            rnr_retry_count: 7,
        },
    )
    .map_err(s)?;
    let e = wait_event(&ev, Instant::now() + WAIT)?;
    match e.kind {
        CmEventKind::Established => {
            let rsp = LoginRsp::parse(&e.private_data).map_err(|e| e.to_string())?;
            cq.req_notify().map_err(s)?;
            Ok(Login::Accepted(Box::new(Conn {
                id,
                recv,
                send,
                data,
                cq,
                comp,
                _pd: pd,
                ev,
                credits: i64::from(rsp.req_lim_delta),
                rsp,
                next_tag: 1,
                next_send: 0,
            })))
        }
        CmEventKind::Rejected => LoginRej::parse(&e.private_data)
            .map(Login::Rejected)
            .map_err(|e| format!("reject without SRP_LOGIN_REJ: {e}")),
        k => Err(format!("login ended in {k:?} (status {})", e.status)),
    }
}

impl Conn {
    fn tag(&mut self) -> [u8; 8] {
        self.next_tag += 1;
        self.next_tag.to_be_bytes()
    }

    /// Sends one IU (taking a credit for commands and TM requests).
    fn send(&mut self, bytes: &[u8]) -> R<()> {
        if bytes.len() > SEND_SLOT {
            return Err("IU too long".into());
        }
        let slot = (self.next_send % RING) as usize;
        self.next_send += 1;
        let off = slot * SEND_SLOT;
        // SAFETY: slot `slot` lies in the send region and its previous SEND
        // completed (we wait for each IU's answer before reusing RING slots
        // in these short sequences).
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.send.ptr().add(off), bytes.len())
        };
        if matches!(bytes.first(), Some(&opcode::CMD) | Some(&opcode::TSK_MGMT)) {
            self.credits -= 1;
        }
        self.id
            .post_send(&[SendWr {
                wr_id: 1 << 32,
                op: SendOp::Send,
                local_addr: self.send.addr(off),
                len: bytes.len() as u32,
                lkey: self.send.lkey(),
                signaled: true,
            }])
            .map_err(|e| e.to_string())
    }

    /// The next IU the target sends (its receive is posted again).
    fn recv(&mut self) -> R<Vec<u8>> {
        let until = Instant::now() + WAIT;
        let mut armed = false;
        let mut wcs: Vec<Wc> = Vec::new();
        loop {
            wcs.clear();
            self.cq.poll(1, &mut wcs).map_err(|e| e.to_string())?;
            match wcs.first() {
                Some(wc) => {
                    if let Some(v) = self.take(wc)? {
                        return Ok(v);
                    }
                }
                None if !armed => {
                    // Arm, then look once more: a completion that came in
                    // between raises no event.
                    while self.comp.take_event().map_err(|e| e.to_string())? {}
                    self.cq.req_notify().map_err(|e| e.to_string())?;
                    armed = true;
                }
                None => {
                    poll_in(self.comp.fd(), until)?;
                    armed = false;
                }
            }
        }
    }

    /// A received IU out of a completion (and its receive posted again);
    /// `None` for our SENDs' completions.
    fn take(&mut self, wc: &Wc) -> R<Option<Vec<u8>>> {
        if !wc.ok() {
            return Err(format!("completion {}", wc.status_str()));
        }
        if wc.opcode != WcOpcode::Recv {
            return Ok(None);
        }
        let i = usize::try_from(wc.wr_id).unwrap_or(0);
        let len = usize::try_from(wc.byte_len).unwrap_or(0).min(IU_LEN);
        let mut v = vec![0u8; len];
        // SAFETY: the receive completed: the device is done with the buffer
        // until we post it again below.
        unsafe {
            std::ptr::copy_nonoverlapping(self.recv.ptr().add(i * IU_LEN), v.as_mut_ptr(), len)
        };
        self.id
            .post_recv(
                wc.wr_id,
                self.recv.addr(i * IU_LEN),
                IU_LEN as u32,
                self.recv.lkey(),
            )
            .map_err(|e| e.to_string())?;
        Ok(Some(v))
    }

    /// Sends an IU and returns the SRP_RSP that answers it (its credits
    /// counted).
    fn exchange(&mut self, iu_bytes: &[u8]) -> R<Vec<u8>> {
        self.send(iu_bytes)?;
        let v = self.recv()?;
        let r = Rsp::parse(&v).map_err(|e| format!("not an SRP_RSP: {e}"))?;
        if r.tag != iu_bytes[8..16] {
            return Err("response for another tag".into());
        }
        self.credits += i64::from(r.req_lim_delta);
        Ok(v)
    }

    /// A SCSI command, sent again (with a new tag) while the LUN reports a
    /// unit attention (the first command of every new I_T nexus sees POWER ON
    /// OR RESET).
    fn command(&mut self, cdb: &[u8], data: DataXfer<'_>) -> R<Vec<u8>> {
        for _ in 0..4 {
            let tag = self.tag();
            let v = self.exchange(&cmd_iu(tag, cdb, data.clone())?)?;
            if !sense_of(&v).starts_with("6/") {
                return Ok(v);
            }
        }
        Err("unit attention after 4 tries".into())
    }

    /// The next completion, or how the channel ended: a CM event (the
    /// target's disconnect) or nothing at all until `until`.
    fn next_wc(&mut self, until: Instant) -> Result<Wc, End> {
        let mut armed = false;
        let mut wcs: Vec<Wc> = Vec::new();
        loop {
            match self.ev.get_event() {
                Ok(Some(e)) => return Err(End::Dropped(format!("{:?}", e.kind))),
                Ok(None) => {}
                Err(e) => return Err(End::Dropped(e.to_string())),
            }
            wcs.clear();
            if let Err(e) = self.cq.poll(1, &mut wcs) {
                return Err(End::Dropped(e.to_string()));
            }
            if let Some(wc) = wcs.first() {
                return Ok(*wc);
            }
            if !armed {
                let armed_ok = (|| -> Result<(), srp::rdma::RdmaError> {
                    while self.comp.take_event()? {}
                    self.cq.req_notify()
                })();
                if let Err(e) = armed_ok {
                    return Err(End::Dropped(e.to_string()));
                }
                armed = true;
                continue;
            }
            if poll_any(&[self.comp.fd(), self.ev.fd()], until).is_err() {
                return Err(End::Hung);
            }
            armed = false;
        }
    }

    /// The next IU the target sends, or how the channel ended.
    fn answer_or_drop(&mut self, until: Instant) -> End {
        loop {
            let wc = match self.next_wc(until) {
                Ok(wc) => wc,
                Err(end) => return end,
            };
            match self.take(&wc) {
                Ok(Some(v)) => return End::Answered(v),
                Ok(None) => {}
                Err(e) => return End::Dropped(e),
            }
        }
    }

    /// Sends `n` TEST UNIT READYs as fast as the send queue takes them,
    /// reading no response meanwhile (receives that complete are set aside,
    /// not posted again: the target's responses soon find no receive), then
    /// reads the answers. Returns the answers read and how it ended
    /// (`Answered` once all `n` came back).
    fn burst(&mut self, n: usize) -> (usize, End) {
        let until = Instant::now() + 3 * WAIT;
        let ring = RING as usize;
        let mut in_flight = 0usize;
        let mut held: Vec<Wc> = Vec::new();
        let mut sent = 0usize;
        while sent < n {
            if in_flight < ring {
                // Our SENDs complete in order: with fewer than RING in
                // flight, the slot `send` takes next is free.
                let tag = self.tag();
                let sent_ok = cmd_iu(tag, &[0u8; 16], DataXfer::None).and_then(|iu| self.send(&iu));
                if let Err(e) = sent_ok {
                    return (0, End::Dropped(e));
                }
                sent += 1;
                in_flight += 1;
                continue;
            }
            match self.next_wc(until) {
                Ok(wc) if !wc.ok() => {
                    return (0, End::Dropped(format!("completion {}", wc.status_str())))
                }
                Ok(wc) if wc.opcode == WcOpcode::Recv => held.push(wc),
                Ok(_) => in_flight -= 1,
                Err(end) => return (0, end),
            }
        }
        let mut answers = 0;
        for wc in held {
            match self.take(&wc) {
                Ok(Some(_)) => answers += 1,
                Ok(None) => {}
                Err(e) => return (answers, End::Dropped(e)),
            }
        }
        while answers < n {
            match self.answer_or_drop(until) {
                End::Answered(v) if v.first() == Some(&opcode::RSP) => answers += 1,
                End::Answered(_) => {}
                end => return (answers, end),
            }
        }
        (answers, End::Answered(Vec::new()))
    }

    fn remote(&self, off: usize, len: u32) -> RemoteBuf {
        RemoteBuf {
            va: self.data.addr(off),
            rkey: self.data.rkey(),
            len,
        }
    }

    fn data_mut(&mut self, off: usize, len: usize) -> &mut [u8] {
        assert!(off + len <= DATA);
        // SAFETY: inside the data region; no transfer is in flight while the
        // probe looks at it (it waits for each response).
        unsafe { std::slice::from_raw_parts_mut(self.data.ptr().add(off), len) }
    }
}

fn cdb10(op: u8, lba: u32, blocks: u16) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

/// Sense key, ASC and ASCQ of a fixed-format sense in an SRP_RSP, or "-".
fn sense_of(v: &[u8]) -> String {
    match Rsp::parse(v) {
        Ok(r) if r.sense.len() >= 14 => format!(
            "{:x}/{:02x}/{:02x}",
            r.sense[2] & 0x0f,
            r.sense[12],
            r.sense[13]
        ),
        _ => "-".into(),
    }
}

fn status(v: &[u8]) -> u8 {
    Rsp::parse(v).map_or(0xff, |r| r.status)
}

fn cmd_iu(tag: [u8; 8], cdb: &[u8], data: DataXfer<'_>) -> R<Vec<u8>> {
    cmd_iu_lun(tag, [0; 8], cdb, data)
}

fn cmd_iu_lun(tag: [u8; 8], lun: [u8; 8], cdb: &[u8], data: DataXfer<'_>) -> R<Vec<u8>> {
    Cmd {
        tag,
        lun,
        cdb,
        task_attr: engine::TaskAttr::Simple,
        data,
    }
    .encode(Some(IMM_OFFSET))
    .map_err(|e| e.to_string())
}

fn bufs(list: &[RemoteBuf], indirect: bool) -> RemoteBufs {
    RemoteBufs {
        bufs: list.iter().copied().collect(),
        total_len: list.iter().map(|b| b.len).sum(),
        indirect,
    }
}

/// What oxtarget answers: the value of each key, or `None` for keys that
/// only inform. The kernel's ib_srpt (6.1) differs on three: it grants all
/// its receives as credits (`login-req-lim` 128, no spare for CRED_RSP),
/// runs a command with a reserved task attribute as if it were valid
/// (`bad-iu-status` 0), and answers ABORT TASK of an unknown tag with
/// FAILED (`tm-abort-none-code` 5) where SAM-5 says FUNCTION COMPLETE.
fn expected(key: &str) -> Option<&'static str> {
    Some(match key {
        "reject-unknown-target" => "0x00010003",
        "reject-it-iu-len" => "0x00010002",
        "login-flags" => "0x80",
        "inquiry-status"
        | "imm-write-status"
        | "imm-read-status"
        | "rdma-write-status"
        | "indirect-read-status"
        | "underflow-status"
        | "multi-tur-status"
        | "first-still-up-status"
        | "takeover-read-status" => "0",
        "imm-readback" | "indirect-readback" | "takeover-readback" => "ok",
        "underflow-residual" => "Under(12288)",
        "bad-iu-status" => "2",
        "bad-iu-sense-key" => "5",
        "tm-unknown-code" => "4",
        "tm-abort-none-code" => "0",
        "credits-balanced" => "yes",
        "multi-flags" => "0x02",
        "takeover-flags" => "0x01",
        "takeover-first" | "takeover-multi" | "logout" => "Disconnected",
        "bad-lun-status" | "bad-lun-format-status" => "2",
        "bad-lun-sense" | "bad-lun-format-sense" => "5/25/00",
        "long-iu" | "oversize-iu" | "credit-burst" => "answered|dropped",
        "after-hostile-read-status" => "0",
        "after-hostile-readback" => "ok",
        _ => return None,
    })
}

static MISMATCHES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Prints `KEY VALUE`, and `KEY-expected WANT` when the value is not what a
/// conforming target answers (WANT may list alternatives: `a|b`).
fn out(key: &str, v: impl std::fmt::Display) {
    let v = v.to_string();
    println!("{key} {v}");
    if let Some(want) = expected(key) {
        if !want.split('|').any(|w| w == v) {
            println!("{key}-expected {want}");
            MISMATCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

fn run(dst: SocketAddr, id_ext: u64, ioc_guid: u64) -> R<()> {
    let mut t_port = [0u8; 16];
    t_port[..8].copy_from_slice(&id_ext.to_be_bytes());
    t_port[8..].copy_from_slice(&ioc_guid.to_be_bytes());
    let i_port = *b"probe-initiator1";
    let single = login_flags::MULTICHAN_SINGLE;

    // Logins the target must refuse.
    match login(dst, [0x33; 16], i_port, single, IU_LEN as u32)? {
        Login::Rejected(r) => out("reject-unknown-target", format!("{:#010x}", r.reason)),
        Login::Accepted(_) => out("reject-unknown-target", "accepted"),
    }
    match login(dst, t_port, i_port, single, 1 << 20)? {
        Login::Rejected(r) => out("reject-it-iu-len", format!("{:#010x}", r.reason)),
        Login::Accepted(_) => out("reject-it-iu-len", "accepted"),
    }

    let Login::Accepted(mut a) = login(dst, t_port, i_port, single, IU_LEN as u32)? else {
        return Err("login refused".into());
    };
    let granted = a.credits;
    out("login-req-lim", a.rsp.req_lim_delta);
    out("login-flags", format!("{:#04x}", a.rsp.rsp_flags));
    out("login-max-ti-iu-len", a.rsp.max_ti_iu_len);

    // INQUIRY through a direct data-in descriptor.
    let tag = a.tag();
    let mut inq = [0u8; 16];
    inq[0] = 0x12;
    inq[4] = 96;
    let v = a.exchange(&cmd_iu(
        tag,
        &inq,
        DataXfer::In(bufs(&[a.remote(0, 96)], false)),
    )?)?;
    out("inquiry-status", status(&v));
    let vendor = String::from_utf8_lossy(a.data_mut(8, 8)).trim().to_string();
    out("inquiry-vendor", vendor);

    // A write with immediate data, read back through one direct descriptor.
    let p1 = pattern(1, 4096);
    let v = a.command(&cdb10(0x2a, 8, 8), DataXfer::Immediate(&p1))?;
    out("imm-write-status", status(&v));
    out("imm-write-sense", sense_of(&v));
    a.data_mut(0, 4096).fill(0);
    let v = a.command(
        &cdb10(0x28, 8, 8),
        DataXfer::In(bufs(&[a.remote(0, 4096)], false)),
    )?;
    out("imm-read-status", status(&v));
    out(
        "imm-readback",
        if a.data_mut(0, 4096) == &p1[..] {
            "ok"
        } else {
            "differ"
        },
    );

    // A 64 KiB write the target fetches with RDMA READ (direct), read back
    // through an indirect table of three descriptors.
    let p2 = pattern(2, 65536);
    a.data_mut(0, 65536).copy_from_slice(&p2);
    let v = a.command(
        &cdb10(0x2a, 64, 128),
        DataXfer::Out(bufs(&[a.remote(0, 65536)], false)),
    )?;
    out("rdma-write-status", status(&v));
    a.data_mut(65536, 3 * 65536).fill(0);
    let parts = [
        a.remote(65536, 4096),
        a.remote(2 * 65536, 28672),
        a.remote(3 * 65536, 32768),
    ];
    let v = a.command(&cdb10(0x28, 64, 128), DataXfer::In(bufs(&parts, true)))?;
    out("indirect-read-status", status(&v));
    let mut back = a.data_mut(65536, 4096).to_vec();
    back.extend_from_slice(a.data_mut(2 * 65536, 28672));
    back.extend_from_slice(a.data_mut(3 * 65536, 32768));
    out(
        "indirect-readback",
        if back == p2 { "ok" } else { "differ" },
    );

    // A short read: 8 blocks into a 16 KiB buffer: DIUNDER, residual 12288.
    let v = a.command(
        &cdb10(0x28, 64, 8),
        DataXfer::In(bufs(&[a.remote(0, 16384)], false)),
    )?;
    let r = Rsp::parse(&v).map_err(|e| e.to_string())?;
    out("underflow-status", r.status);
    out("underflow-residual", format!("{:?}", r.data_in));

    // A malformed SRP_CMD (reserved task attribute): CHECK CONDITION, same tag.
    let tag = a.tag();
    let mut bad = cmd_iu(tag, &[0u8; 16], DataXfer::None)?;
    bad[29] = 3;
    let v = a.exchange(&bad)?;
    let r = Rsp::parse(&v).map_err(|e| e.to_string())?;
    out("bad-iu-status", r.status);
    out(
        "bad-iu-sense-key",
        r.sense.get(2).map_or(0xff, |k| k & 0x0f),
    );

    // Task management: an unknown function, and ABORT TASK of no command.
    for (key, func) in [
        ("tm-unknown-code", 0x77),
        ("tm-abort-none-code", tsk_func::ABORT_TASK),
    ] {
        let tm = TskMgmt {
            tag: a.tag(),
            sol_not: 0,
            lun: [0; 8],
            func,
            task_tag: 0xdead_u64.to_be_bytes(),
        };
        let v = a.exchange(&tm.encode())?;
        let r = Rsp::parse(&v).map_err(|e| e.to_string())?;
        out(key, r.resp_data.get(3).map_or(0xff, |c| *c));
    }
    out(
        "credits-balanced",
        if a.credits == granted { "yes" } else { "no" },
    );

    // A multichannel login joins the nexus; the first channel stays.
    let Login::Accepted(mut m) = login(
        dst,
        t_port,
        i_port,
        login_flags::MULTICHAN_MULTI,
        IU_LEN as u32,
    )?
    else {
        return Err("multichannel login refused".into());
    };
    out(
        "multi-flags",
        format!("{:#04x}", m.rsp.rsp_flags & login_flags::MULTICHAN_MASK),
    );
    let v = m.command(&[0u8; 16], DataXfer::None)?;
    out("multi-tur-status", status(&v));
    let v = a.command(&[0u8; 16], DataXfer::None)?;
    out("first-still-up-status", status(&v));

    // A single-channel login of the same initiator port ends both.
    let Login::Accepted(mut b) = login(dst, t_port, i_port, single, IU_LEN as u32)? else {
        return Err("second single login refused".into());
    };
    out(
        "takeover-flags",
        format!("{:#04x}", b.rsp.rsp_flags & login_flags::MULTICHAN_MASK),
    );
    for (key, c) in [("takeover-first", &a), ("takeover-multi", &m)] {
        let e = wait_event(&c.ev, Instant::now() + WAIT);
        out(key, e.map_or_else(|e| e, |e| format!("{:?}", e.kind)));
    }
    let v = b.command(
        &cdb10(0x28, 8, 8),
        DataXfer::In(bufs(&[b.remote(0, 4096)], false)),
    )?;
    out("takeover-read-status", status(&v));
    out(
        "takeover-readback",
        if b.data_mut(0, 4096) == &p1[..] {
            "ok"
        } else {
            "differ"
        },
    );

    // Logout: a CM disconnect, answered by the target's.
    b.id.disconnect().map_err(|e| e.to_string())?;
    let e = wait_event(&b.ev, Instant::now() + WAIT);
    out("logout", e.map_or_else(|e| e, |e| format!("{:?}", e.kind)));
    drop((a, m, b));

    hostile(dst, t_port, i_port, &p1)
}

/// Hostile input, each on a fresh single-channel login (which ends the
/// one before): the target answers or drops that channel, and a login after
/// it all still reads back what the probe wrote.
fn hostile(dst: SocketAddr, t_port: [u8; 16], i_port: [u8; 16], p1: &[u8]) -> R<()> {
    let single = login_flags::MULTICHAN_SINGLE;
    let fresh = || -> R<Box<Conn>> {
        match login(dst, t_port, i_port, single, IU_LEN as u32)? {
            Login::Accepted(c) => Ok(c),
            Login::Rejected(r) => Err(format!("login refused: {:#x}", r.reason)),
        }
    };

    // Commands to a LUN the target does not have, and to a LUN in an
    // addressing method it does not use: CHECK CONDITION, LOGICAL UNIT NOT
    // SUPPORTED.
    let mut c = fresh()?;
    for (key, lun) in [
        ("bad-lun", [0, 5, 0, 0, 0, 0, 0, 0]),
        ("bad-lun-format", [0xff; 8]),
    ] {
        let tag = c.tag();
        let v = c.exchange(&cmd_iu_lun(
            tag,
            lun,
            &cdb10(0x28, 0, 1),
            DataXfer::In(bufs(&[c.remote(0, 512)], false)),
        )?)?;
        out(&format!("{key}-status"), status(&v));
        out(&format!("{key}-sense"), sense_of(&v));
    }

    // An IU longer than the granted max_it_iu_len (it still fits a receive
    // buffer rounded up to 64 bytes), then one no receive buffer holds.
    for (key, len) in [("long-iu", IU_LEN + 40), ("oversize-iu", OVERSIZE_IU)] {
        let tag = c.tag();
        let mut iu = cmd_iu(tag, &[0u8; 16], DataXfer::None)?;
        iu.resize(len, 0);
        if let Err(e) = c.send(&iu) {
            return Err(format!("{key}: {e}"));
        }
        let end = c.answer_or_drop(Instant::now() + WAIT);
        if let End::Answered(v) = &end {
            out(&format!("{key}-status"), status(v));
        }
        let dropped = matches!(end, End::Dropped(_));
        out(key, end.word(key));
        if dropped {
            c = fresh()?;
        }
    }
    drop(c);

    // Three times the credits, no response read until all are sent.
    let mut c = fresh()?;
    let n = usize::try_from(c.credits.max(1))
        .unwrap_or(1)
        .saturating_mul(3);
    let (answers, end) = c.burst(n);
    out("credit-burst-sent", n);
    out("credit-burst-answers", answers);
    out("credit-burst", end.word("credit-burst"));
    drop(c);

    // The target still serves: what the immediate-data write left reads back.
    let mut c = fresh()?;
    let v = c.command(
        &cdb10(0x28, 8, 8),
        DataXfer::In(bufs(&[c.remote(0, 4096)], false)),
    )?;
    out("after-hostile-read-status", status(&v));
    out(
        "after-hostile-readback",
        if c.data_mut(0, 4096) == p1 {
            "ok"
        } else {
            "differ"
        },
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = (|| -> R<(SocketAddr, u64, u64)> {
        let [d, e, g] = args.as_slice() else {
            return Err("usage: srp_probe DEST_IP:PORT ID_EXT IOC_GUID".into());
        };
        let hex = |s: &str| {
            u64::from_str_radix(s.trim_start_matches("0x"), 16).map_err(|e| e.to_string())
        };
        Ok((
            d.parse().map_err(|e| format!("{d}: {e}"))?,
            hex(e)?,
            hex(g)?,
        ))
    })();
    let (dst, id_ext, ioc_guid) = match parsed {
        Ok(p) => p,
        Err(e) => {
            eprintln!("srp_probe: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match run(dst, id_ext, ioc_guid) {
        Ok(()) => {
            let bad = MISMATCHES.load(std::sync::atomic::Ordering::Relaxed);
            out("probe-mismatches", bad);
            if bad == 0 {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::from(1)
            }
        }
        Err(e) => {
            out("probe-failed", &e);
            std::process::ExitCode::from(1)
        }
    }
}
