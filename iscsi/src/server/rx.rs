//! Receiving PDUs from a non-blocking stream with one copy: small reads go
//! through a staging buffer (several PDUs per `read`), the rest of a large data
//! segment is read straight into the PDU buffer, which is reused from PDU to
//! PDU. At most one PDU body (bounded by the negotiated MaxRecvDataSegmentLength)
//! and one staging buffer are held per connection.
//!
//! A large Data-Out can skip the PDU buffer altogether: [`Rx::poll`] stops at its
//! header ([`Progress::Place`]), and the caller either reads its data segment
//! straight into the command's buffer ([`Rx::poll_into`], [`Rx::finish_placed`])
//! or declines ([`Rx::decline`]).

use std::io::{ErrorKind, Read};
use std::time::Instant;

use crate::pdu::{digest_bytes, Framing, FramingError, Opcode, BHS_LEN, DIGEST_LEN};
use crate::session::FrameRef;

/// Staging buffer size.
pub const STAGE: usize = 16 * 1024;

/// What [`Rx::poll`] got to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Nothing more to read now (or the read budget is spent).
    Blocked,
    /// A whole PDU: [`Rx::frame`], then [`Rx::consume`].
    Pdu,
    /// The header of a Data-Out whose data may go straight to its place.
    Place,
}

#[derive(Debug)]
pub enum RxError {
    Closed,
    Io(std::io::Error),
    Framing(FramingError),
}

pub struct Rx {
    pub framing: Framing,
    stage: Box<[u8]>,
    pos: usize,
    end: usize,
    header: [u8; BHS_LEN],
    have_header: bool,
    body: Vec<u8>,
    body_len: usize,
    filled: usize,
    /// The current PDU's body lies whole in the staging buffer from here: it is
    /// handed out from there, not copied into `body` first.
    in_stage: Option<usize>,
    since: Option<Instant>,
    /// Data segments of at least this many bytes may be placed (0: never).
    pub place_min: usize,
    /// The current PDU is (or may be) placed: data length and suffix (padding
    /// and data digest) length.
    placing: Option<(usize, usize)>,
}

impl Rx {
    pub fn new(framing: Framing) -> Self {
        Rx {
            framing,
            stage: vec![0u8; STAGE].into_boxed_slice(),
            pos: 0,
            end: 0,
            header: [0; BHS_LEN],
            have_header: false,
            body: Vec::new(),
            body_len: 0,
            filled: 0,
            in_stage: None,
            since: None,
            place_min: 0,
            placing: None,
        }
    }

    pub fn header(&self) -> &[u8; BHS_LEN] {
        &self.header
    }

    /// Whether bytes of the current PDU already went to a placement.
    pub fn placing_started(&self) -> bool {
        self.placing.is_some() && self.filled > 0
    }

    /// Bytes read from the stream and not yet handed out as a PDU.
    pub fn buffered(&self) -> usize {
        self.end - self.pos
    }

    /// Since when a PDU has been incomplete.
    pub fn partial_since(&self) -> Option<Instant> {
        self.since
            .filter(|_| self.have_header || self.end > self.pos)
    }

    /// Makes progress towards one whole PDU, reading at most `reads` times.
    /// `Ok(true)`: a PDU is ready ([`Rx::frame`], then [`Rx::consume`]);
    /// `Ok(false)`: the stream has nothing more now (or the budget is spent).
    pub fn poll(
        &mut self,
        stream: &mut impl Read,
        reads: &mut u32,
        now: Instant,
    ) -> Result<Progress, RxError> {
        if self.placing.is_some() {
            return Ok(Progress::Place);
        }
        loop {
            if !self.have_header {
                if self.end - self.pos >= BHS_LEN {
                    self.header
                        .copy_from_slice(&self.stage[self.pos..self.pos + BHS_LEN]);
                    self.pos += BHS_LEN;
                    self.have_header = true;
                    self.since.get_or_insert(now);
                    let layout = self
                        .framing
                        .layout(&self.header)
                        .map_err(RxError::Framing)?;
                    self.body_len = layout.remaining();
                    if self.body.len() < self.body_len {
                        self.body.resize(self.body_len, 0);
                    }
                    self.filled = 0;
                    // Placement needs a header it can trust before its digest:
                    // only without header digests (and AHS).
                    let data_out = self.header[0] & 0x3f == Opcode::DataOut as u8;
                    if self.place_min > 0
                        && data_out
                        && !self.framing.header_digest
                        && layout.ahs_len == 0
                        && layout.data_len >= self.place_min
                    {
                        self.placing =
                            Some((layout.data_len, layout.padding + layout.data_digest_len));
                        return Ok(Progress::Place);
                    }
                    continue;
                }
                // Keep the partial header at the front and read more.
                self.stage.copy_within(self.pos..self.end, 0);
                self.end -= self.pos;
                self.pos = 0;
                let end = self.end;
                if !self.read_into(stream, reads, Target::Stage(end), now)? {
                    return Ok(Progress::Blocked);
                }
                continue;
            }
            let need = self.body_len - self.filled;
            if need == 0 {
                return Ok(Progress::Pdu);
            }
            let avail = self.end - self.pos;
            if self.filled == 0 && avail >= need {
                // Whole in the staging buffer: no copy (a 4K write's data then
                // goes from here straight to its command's buffer).
                self.in_stage = Some(self.pos);
                self.pos += need;
                self.filled = need;
                return Ok(Progress::Pdu);
            }
            if avail > 0 {
                let k = avail.min(need);
                self.body[self.filled..self.filled + k]
                    .copy_from_slice(&self.stage[self.pos..self.pos + k]);
                self.pos += k;
                self.filled += k;
                continue;
            }
            self.pos = 0;
            self.end = 0;
            let target = if need >= STAGE / 2 {
                Target::Body
            } else {
                Target::Stage(0)
            };
            if !self.read_into(stream, reads, target, now)? {
                return Ok(Progress::Blocked);
            }
        }
    }

    /// Refuses placement of the current PDU (before any of it was placed): it is
    /// buffered and handed out as a whole.
    pub fn decline(&mut self) {
        if self.filled == 0 {
            self.placing = None;
        }
    }

    /// Reads the rest of a placed PDU: its data into `dst` (exactly its data
    /// segment length), padding and digest into the PDU buffer. `Ok(true)` when
    /// all of it is in; then [`Rx::finish_placed`] and [`Rx::consume`].
    pub fn poll_into(
        &mut self,
        stream: &mut impl Read,
        reads: &mut u32,
        now: Instant,
        dst: &mut [u8],
    ) -> Result<bool, RxError> {
        let Some((data_len, suffix)) = self.placing else {
            return Ok(false);
        };
        if dst.len() != data_len {
            return Err(RxError::Io(std::io::Error::other(
                "placement of the wrong size",
            )));
        }
        loop {
            if self.filled >= data_len + suffix {
                return Ok(true);
            }
            let in_data = self.filled < data_len;
            let avail = self.end - self.pos;
            if avail > 0 {
                let dest = if in_data {
                    &mut dst[self.filled..]
                } else {
                    &mut self.body[self.filled - data_len..suffix]
                };
                let k = avail.min(dest.len());
                dest[..k].copy_from_slice(&self.stage[self.pos..self.pos + k]);
                self.pos += k;
                self.filled += k;
                continue;
            }
            self.pos = 0;
            self.end = 0;
            if *reads == 0 {
                return Ok(false);
            }
            *reads -= 1;
            let direct = in_data && data_len - self.filled >= STAGE / 2;
            let r = if direct {
                stream.read(&mut dst[self.filled..])
            } else {
                stream.read(&mut self.stage)
            };
            match r {
                Ok(0) => return Err(RxError::Closed),
                Ok(n) => {
                    let asked = if direct {
                        data_len - self.filled
                    } else {
                        self.stage.len()
                    };
                    if direct {
                        self.filled += n;
                    } else {
                        self.end = n;
                    }
                    self.since.get_or_insert(now);
                    drained(reads, n, asked);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(RxError::Io(e)),
            }
        }
    }

    /// Checks the data digest of a placed PDU whose data is `dst`.
    pub fn finish_placed(&self, dst: &[u8]) -> Result<(), FramingError> {
        let Some((data_len, suffix)) = self.placing else {
            return Ok(());
        };
        if !self.framing.data_digest || data_len == 0 {
            return Ok(());
        }
        let pad = suffix.saturating_sub(DIGEST_LEN);
        let want = crc32c::crc32c_append(crc32c::crc32c(dst), &self.body[..pad]);
        let mut got = [0u8; DIGEST_LEN];
        got.copy_from_slice(&self.body[pad..pad + DIGEST_LEN]);
        if got != digest_bytes(want) {
            return Err(FramingError::DataDigest {
                got: u32::from_le_bytes(got),
                want,
            });
        }
        Ok(())
    }

    fn read_into(
        &mut self,
        stream: &mut impl Read,
        reads: &mut u32,
        target: Target,
        now: Instant,
    ) -> Result<bool, RxError> {
        loop {
            if *reads == 0 {
                return Ok(false);
            }
            *reads -= 1;
            let buf = match target {
                Target::Stage(at) => &mut self.stage[at..],
                Target::Body => &mut self.body[self.filled..self.body_len],
            };
            let asked = buf.len();
            match stream.read(buf) {
                Ok(0) => return Err(RxError::Closed),
                Ok(n) => {
                    match target {
                        Target::Stage(_) => self.end += n,
                        Target::Body => self.filled += n,
                    }
                    self.since.get_or_insert(now);
                    drained(reads, n, asked);
                    return Ok(true);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(RxError::Io(e)),
            }
        }
    }

    /// The PDU [`Rx::poll`] completed, digests checked.
    pub fn frame(&self) -> Result<FrameRef<'_>, FramingError> {
        let body = match self.in_stage {
            Some(at) => &self.stage[at..at + self.body_len],
            None => &self.body[..self.body_len],
        };
        let parts = self.framing.split(&self.header, body)?;
        Ok(FrameRef {
            header: &self.header,
            ahs: parts.ahs,
            data: parts.data,
        })
    }

    /// Done with the current PDU.
    pub fn consume(&mut self, now: Instant) {
        self.placing = None;
        self.in_stage = None;
        self.have_header = false;
        self.filled = 0;
        self.body_len = 0;
        self.since = (self.end > self.pos).then_some(now);
    }
}

/// A read that returned less than it asked for emptied the socket: the next one
/// would only say `WouldBlock`, so the budget of this readiness event ends here
/// (a syscall saved per event; level-triggered epoll reports data that comes later).
fn drained(reads: &mut u32, got: usize, asked: usize) {
    if got < asked {
        *reads = 0;
    }
}

#[derive(Clone, Copy)]
enum Target {
    Stage(usize),
    Body,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that hands out its bytes in fixed-size pieces, then blocks.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        piece: usize,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.at == self.data.len() {
                return Err(ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.piece).min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    fn pdu(framing: &Framing, len: usize, seed: u8) -> (Vec<u8>, Vec<u8>) {
        let mut h = [0u8; BHS_LEN];
        h[0] = 0x05;
        h[5..8].copy_from_slice(&(len as u32).to_be_bytes()[1..]);
        h[16] = seed;
        let data: Vec<u8> = (0..len).map(|i| (i as u8) ^ seed).collect();
        (framing.encode(&h, &[], &data), data)
    }

    /// A read that got less than it asked for ends the event's reads: the socket
    /// is empty and another read would only block.
    #[test]
    fn a_short_read_ends_the_budget() {
        let framing = Framing {
            header_digest: false,
            data_digest: false,
            max_recv_data_segment_len: 1 << 20,
        };
        let (wire, _) = pdu(&framing, 500, 1);
        let mut s = Trickle {
            data: wire,
            at: 0,
            piece: 100,
        };
        let mut rx = Rx::new(framing);
        let mut reads = 4;
        let p = rx.poll(&mut s, &mut reads, Instant::now()).expect("poll");
        assert_eq!(p, Progress::Blocked);
        assert_eq!((s.at, reads), (100, 0));
    }

    #[test]
    fn pdus_of_every_size_through_every_piece_size() {
        for digests in [false, true] {
            let framing = Framing {
                header_digest: digests,
                data_digest: digests,
                max_recv_data_segment_len: 1 << 20,
            };
            let sizes = [0usize, 1, 3, 47, 48, 4096, 8191, 70_000, 262_144, 5];
            let mut wire = Vec::new();
            let mut want = Vec::new();
            for (i, &n) in sizes.iter().enumerate() {
                let (w, d) = pdu(&framing, n, i as u8);
                wire.extend_from_slice(&w);
                want.push(d);
            }
            for piece in [1usize, 7, 48, 1000, 16 * 1024, 1 << 20] {
                let mut s = Trickle {
                    data: wire.clone(),
                    at: 0,
                    piece,
                };
                let mut rx = Rx::new(framing);
                let mut got = Vec::new();
                let mut guard = 0;
                while got.len() < want.len() {
                    guard += 1;
                    assert!(guard < 1_000_000);
                    let mut reads = 4;
                    if rx.poll(&mut s, &mut reads, Instant::now()).expect("poll") == Progress::Pdu {
                        let f = rx.frame().expect("frame");
                        assert_eq!(f.header[16] as usize, got.len());
                        got.push(f.data.to_vec());
                        rx.consume(Instant::now());
                    }
                }
                assert_eq!(got, want, "piece {piece}");
                assert_eq!(rx.buffered(), 0);
                assert!(rx.partial_since().is_none());
            }
        }
    }

    /// Data-Outs of at least `place_min` bytes come out as placements, read into
    /// the caller's buffer; the others as whole PDUs; digests checked either way.
    #[test]
    fn large_data_outs_are_placed() {
        for digests in [false, true] {
            let framing = Framing {
                header_digest: false,
                data_digest: digests,
                max_recv_data_segment_len: 1 << 20,
            };
            let sizes = [4096usize, 10, 70_001, 4095, 262_144, 5000];
            let mut wire = Vec::new();
            let mut want = Vec::new();
            for (i, &n) in sizes.iter().enumerate() {
                let (w, d) = pdu(&framing, n, i as u8);
                wire.extend_from_slice(&w);
                want.push(d);
            }
            for piece in [1usize, 1000, 9000, 1 << 20] {
                let mut s = Trickle {
                    data: wire.clone(),
                    at: 0,
                    piece,
                };
                let mut rx = Rx::new(framing);
                rx.place_min = 4096;
                let mut got = Vec::new();
                let mut placed = 0;
                let mut dst = Vec::new();
                let mut guard = 0;
                while got.len() < want.len() {
                    guard += 1;
                    assert!(guard < 2_000_000);
                    let mut reads = 3;
                    match rx.poll(&mut s, &mut reads, Instant::now()).expect("poll") {
                        Progress::Blocked => {}
                        Progress::Pdu => {
                            got.push(rx.frame().expect("frame").data.to_vec());
                            rx.consume(Instant::now());
                        }
                        Progress::Place => {
                            let h = *rx.header();
                            let len = u32::from_be_bytes([0, h[5], h[6], h[7]]) as usize;
                            if dst.len() != len {
                                dst = vec![0u8; len];
                            }
                            if rx
                                .poll_into(&mut s, &mut reads, Instant::now(), &mut dst)
                                .expect("poll_into")
                            {
                                rx.finish_placed(&dst).expect("digest");
                                got.push(std::mem::take(&mut dst));
                                placed += 1;
                                rx.consume(Instant::now());
                            }
                        }
                    }
                }
                assert_eq!(got, want, "piece {piece}");
                assert_eq!(placed, 4);
                assert_eq!(rx.buffered(), 0);
            }
            // A corrupted placed data segment fails its digest.
            if digests {
                let (mut w, d) = pdu(&framing, 8192, 9);
                w[BHS_LEN + 100] ^= 0x40;
                let mut s = Trickle {
                    data: w,
                    at: 0,
                    piece: 1 << 20,
                };
                let mut rx = Rx::new(framing);
                rx.place_min = 4096;
                let mut reads = 8;
                assert_eq!(
                    rx.poll(&mut s, &mut reads, Instant::now()).expect("poll"),
                    Progress::Place
                );
                let mut dst = vec![0u8; d.len()];
                assert!(rx
                    .poll_into(&mut s, &mut reads, Instant::now(), &mut dst)
                    .expect("poll_into"));
                assert!(matches!(
                    rx.finish_placed(&dst),
                    Err(FramingError::DataDigest { .. })
                ));
            }
        }
    }

    /// A declined placement comes out as a whole PDU.
    #[test]
    fn declined_placement_is_buffered() {
        let framing = Framing::default();
        let (w, d) = pdu(&framing, 6000, 3);
        let mut s = Trickle {
            data: w,
            at: 0,
            piece: 100,
        };
        let mut rx = Rx::new(framing);
        rx.place_min = 4096;
        let mut out = None;
        for _ in 0..10_000 {
            let mut reads = 2;
            match rx.poll(&mut s, &mut reads, Instant::now()).expect("poll") {
                Progress::Place => rx.decline(),
                Progress::Pdu => {
                    out = Some(rx.frame().expect("frame").data.to_vec());
                    break;
                }
                Progress::Blocked => {}
            }
        }
        assert_eq!(out, Some(d));
    }

    #[test]
    fn oversized_segments_and_bad_digests_fail() {
        let framing = Framing {
            header_digest: true,
            data_digest: false,
            max_recv_data_segment_len: 8192,
        };
        let (wire, _) = pdu(&framing, 8193, 1);
        let mut rx = Rx::new(framing);
        let mut reads = 8;
        let mut s = Trickle {
            data: wire,
            at: 0,
            piece: 100_000,
        };
        assert!(matches!(
            rx.poll(&mut s, &mut reads, Instant::now()),
            Err(RxError::Framing(FramingError::DataSegmentTooLong { .. }))
        ));
        let (mut wire, _) = pdu(&framing, 100, 1);
        wire[49] ^= 1;
        let mut rx = Rx::new(framing);
        let mut s = Trickle {
            data: wire,
            at: 0,
            piece: 100_000,
        };
        let mut reads = 8;
        assert_eq!(
            rx.poll(&mut s, &mut reads, Instant::now()).expect("poll"),
            Progress::Pdu
        );
        assert!(matches!(rx.frame(), Err(FramingError::HeaderDigest { .. })));
    }

    #[test]
    fn a_partial_pdu_is_timed() {
        let framing = Framing::default();
        let (wire, _) = pdu(&framing, 100, 1);
        let mut s = Trickle {
            data: wire[..60].to_vec(),
            at: 0,
            piece: 1000,
        };
        let mut rx = Rx::new(framing);
        let t = Instant::now();
        let mut reads = 8;
        assert_eq!(
            rx.poll(&mut s, &mut reads, t).expect("poll"),
            Progress::Blocked
        );
        assert_eq!(rx.partial_since(), Some(t));
    }
}
