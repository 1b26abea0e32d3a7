//! One TCP connection carrying framed PDUs, every read and write bounded by a
//! deadline so a silent target cannot hang a test.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::InitiatorError;
use crate::pdu::{Framing, Pdu, BHS_LEN};

pub(super) struct Conn {
    stream: TcpStream,
    pub(super) framing: Framing,
    timeout: Duration,
}

impl Conn {
    pub(super) fn open(
        addr: SocketAddr,
        timeout: Duration,
        max_recv: u32,
    ) -> Result<Conn, InitiatorError> {
        let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| io(e, timeout))?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Conn {
            stream,
            // Digests start with the full feature phase; the login phase runs without.
            framing: Framing {
                header_digest: false,
                data_digest: false,
                max_recv_data_segment_len: max_recv,
            },
            timeout,
        })
    }

    pub(super) fn send(&mut self, pdu: &Pdu, data: &[u8]) -> Result<(), InitiatorError> {
        let header = pdu.to_bytes()?;
        let bytes = self.framing.encode(&header, &[], data);
        let t = self.timeout;
        self.stream.write_all(&bytes).map_err(|e| io(e, t))
    }

    /// The next PDU and its data segment, within the timeout.
    pub(super) fn recv(&mut self) -> Result<(Pdu, Vec<u8>), InitiatorError> {
        let now = Instant::now();
        // A timeout too large for the clock is as good as none.
        let deadline = now
            .checked_add(self.timeout)
            .unwrap_or_else(|| now + Duration::from_secs(1 << 32));
        let mut header = [0u8; BHS_LEN];
        self.read_exact(&mut header, deadline)?;
        let layout = self.framing.layout(&header)?;
        let mut body = vec![0u8; layout.remaining()];
        self.read_exact(&mut body, deadline)?;
        let parts = self.framing.split(&header, &body)?;
        let pdu = Pdu::parse(&header)?;
        Ok((pdu, parts.data.to_vec()))
    }

    fn read_exact(&mut self, mut buf: &mut [u8], deadline: Instant) -> Result<(), InitiatorError> {
        while !buf.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(InitiatorError::Timeout(self.timeout));
            }
            self.stream.set_read_timeout(Some(left))?;
            match self.stream.read(buf) {
                Ok(0) => return Err(InitiatorError::Closed),
                Ok(n) => buf = buf.get_mut(n..).unwrap_or_default(),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(io(e, self.timeout)),
            }
        }
        Ok(())
    }

    pub(super) fn close(&self) {
        // The peer may already be gone; nothing to report then.
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

fn io(e: std::io::Error, timeout: Duration) -> InitiatorError {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => InitiatorError::Timeout(timeout),
        _ => InitiatorError::Io(e),
    }
}
