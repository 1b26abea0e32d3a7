//! Receiving PDUs from a non-blocking stream with one copy: small reads go
//! through a staging buffer (several PDUs per `read`), the rest of a large data
//! segment is read straight into the PDU buffer, which is reused from PDU to
//! PDU. At most one PDU body (bounded by the negotiated MaxRecvDataSegmentLength)
//! and one staging buffer are held per connection.

use std::io::{ErrorKind, Read};
use std::time::Instant;

use crate::pdu::{Framing, FramingError, BHS_LEN};
use crate::session::FrameRef;

/// Staging buffer size.
pub const STAGE: usize = 16 * 1024;

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
    since: Option<Instant>,
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
            since: None,
        }
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
    ) -> Result<bool, RxError> {
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
                    continue;
                }
                // Keep the partial header at the front and read more.
                self.stage.copy_within(self.pos..self.end, 0);
                self.end -= self.pos;
                self.pos = 0;
                let end = self.end;
                if !self.read_into(stream, reads, Target::Stage(end), now)? {
                    return Ok(false);
                }
                continue;
            }
            let need = self.body_len - self.filled;
            if need == 0 {
                return Ok(true);
            }
            let avail = self.end - self.pos;
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
                return Ok(false);
            }
        }
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
            match stream.read(buf) {
                Ok(0) => return Err(RxError::Closed),
                Ok(n) => {
                    match target {
                        Target::Stage(_) => self.end += n,
                        Target::Body => self.filled += n,
                    }
                    self.since.get_or_insert(now);
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
        let parts = self
            .framing
            .split(&self.header, &self.body[..self.body_len])?;
        Ok(FrameRef {
            header: &self.header,
            ahs: parts.ahs,
            data: parts.data,
        })
    }

    /// Done with the current PDU.
    pub fn consume(&mut self, now: Instant) {
        self.have_header = false;
        self.filled = 0;
        self.body_len = 0;
        self.since = (self.end > self.pos).then_some(now);
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
                    if rx.poll(&mut s, &mut reads, Instant::now()).expect("poll") {
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
        assert!(rx.poll(&mut s, &mut reads, Instant::now()).expect("poll"));
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
        assert!(!rx.poll(&mut s, &mut reads, t).expect("poll"));
        assert_eq!(rx.partial_since(), Some(t));
    }
}
