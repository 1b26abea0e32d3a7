//! Relays one vhost-user connection between the frontend (QEMU, cloud-hypervisor)
//! and vhost-user-backend, message by message, file descriptors included, and
//! keeps a copy of the backend request channel the frontend hands over
//! (SET_BACKEND_REQ_FD). vhost 0.18 keeps that channel to itself and has no way to
//! send VHOST_USER_BACKEND_CONFIG_CHANGE_MSG on it; with the copy, the device
//! announces a capacity change itself. Only the control messages pass through
//! here: the data path is shared memory and eventfds.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::thread;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// vhost-user message header: request, flags, payload size (little-endian u32s).
const HEADER_LEN: usize = 12;
/// VHOST_USER_SET_BACKEND_REQ_FD.
const SET_BACKEND_REQ_FD: u32 = 21;
/// The largest payload we relay: far above any vhost-user message (memory tables
/// of a few hundred regions, 256 bytes of config).
const MAX_PAYLOAD: usize = 1 << 20;
/// File descriptors one message may carry: vhost-user sends at most 8 (a
/// memory table's regions; ADD_MEM_REG sends one at a time).
const MAX_FDS: usize = 32;

/// One message: header and payload bytes, and the descriptors that came with it.
struct Message {
    bytes: Vec<u8>,
    fds: Vec<File>,
}

impl Message {
    fn request(&self) -> u32 {
        u32::from_le_bytes([self.bytes[0], self.bytes[1], self.bytes[2], self.bytes[3]])
    }
}

/// Reads one message; `None` at the end of the stream.
fn recv(sock: &UnixStream) -> io::Result<Option<Message>> {
    let mut header = [0u8; HEADER_LEN];
    let mut raw = [-1 as RawFd; MAX_FDS];
    let mut iov = [libc::iovec {
        iov_base: header.as_mut_ptr().cast(),
        iov_len: HEADER_LEN,
    }];
    // SAFETY: the iovec points at `header`, which lives across the call and may
    // hold any bytes.
    let (n, nfds) = unsafe { sock.recv_with_fds(&mut iov, &mut raw) }.map_err(io::Error::from)?;
    let fds: Vec<File> = raw[..nfds.min(MAX_FDS)]
        .iter()
        // SAFETY: recvmsg just installed these descriptors in this process; each
        // is owned by exactly one `File` from here on.
        .map(|&fd| unsafe { File::from_raw_fd(fd) })
        .collect();
    if n == 0 {
        return Ok(None);
    }
    let mut s = sock;
    if n < HEADER_LEN {
        s.read_exact(&mut header[n..])?;
    }
    let size = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    if size > MAX_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("vhost-user message of {size} bytes"),
        ));
    }
    let mut bytes = vec![0u8; HEADER_LEN + size];
    bytes[..HEADER_LEN].copy_from_slice(&header);
    s.read_exact(&mut bytes[HEADER_LEN..])?;
    Ok(Some(Message { bytes, fds }))
}

fn send(sock: &UnixStream, m: &Message) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fds: Vec<RawFd> = m.fds.iter().map(|f| f.as_raw_fd()).collect();
    let sent = sock
        .send_with_fds(&[&m.bytes[..]], &fds)
        .map_err(io::Error::from)?;
    if sent < m.bytes.len() {
        let mut s = sock;
        s.write_all(&m.bytes[sent..])?;
    }
    Ok(())
}

/// Copies messages from `from` to `to` until either side ends; `watch` sees each
/// message first.
fn pump(from: &UnixStream, to: &UnixStream, mut watch: impl FnMut(&Message)) -> io::Result<()> {
    while let Some(m) = recv(from)? {
        watch(&m);
        send(to, &m)?;
    }
    Ok(())
}

/// Relays between `frontend` and `library` on two threads until one side closes
/// (then both are shut down); `backend_req` gets a copy of each backend request
/// channel the frontend sends. Returns the threads to join.
pub fn spawn(
    frontend: UnixStream,
    library: UnixStream,
    backend_req: impl Fn(UnixStream) + Send + 'static,
) -> io::Result<Vec<thread::JoinHandle<()>>> {
    let (f2, l2) = (frontend.try_clone()?, library.try_clone()?);
    let down = |a: &UnixStream, b: &UnixStream| {
        let _ = a.shutdown(Shutdown::Both);
        let _ = b.shutdown(Shutdown::Both);
    };
    let to_library = thread::Builder::new()
        .name("vhost-blk-relay".into())
        .spawn(move || {
            let _ = pump(&frontend, &library, |m| {
                if m.request() == SET_BACKEND_REQ_FD {
                    if let Some(Ok(f)) = m.fds.first().map(File::try_clone) {
                        backend_req(UnixStream::from(std::os::fd::OwnedFd::from(f)));
                    }
                }
            });
            down(&frontend, &library);
        })?;
    let to_frontend = thread::Builder::new()
        .name("vhost-blk-relay".into())
        .spawn(move || {
            let _ = pump(&l2, &f2, |_| {});
            down(&l2, &f2);
        })?;
    Ok(vec![to_library, to_frontend])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::sync::mpsc;

    fn message(request: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&request.to_le_bytes());
        m.extend_from_slice(&1u32.to_le_bytes());
        m.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_le_bytes());
        m.extend_from_slice(payload);
        m
    }

    #[test]
    fn relays_messages_and_descriptors_and_keeps_the_backend_channel() {
        let (qemu, frontend) = UnixStream::pair().unwrap();
        let (library, lib) = UnixStream::pair().unwrap();
        let (tx, rx) = mpsc::channel();
        let threads = spawn(frontend, library, move |s| tx.send(s).unwrap()).unwrap();

        // A message with a payload, then SET_BACKEND_REQ_FD with a socket.
        let get_config = message(24, &[7u8; 20]);
        qemu.send_with_fds(&[&get_config[..]], &[]).unwrap();
        let (ours, theirs) = UnixStream::pair().unwrap();
        let set_fd = message(SET_BACKEND_REQ_FD, &[]);
        qemu.send_with_fds(&[&set_fd[..]], &[theirs.as_raw_fd()])
            .unwrap();
        drop(theirs);

        let got = recv(&lib).unwrap().unwrap();
        assert_eq!(got.bytes, get_config);
        assert!(got.fds.is_empty());
        let got = recv(&lib).unwrap().unwrap();
        assert_eq!(got.bytes, set_fd);
        assert_eq!(got.fds.len(), 1, "the descriptor reaches the library");

        // Our copy of the channel reaches the frontend's end.
        let mut copy = rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        copy.write_all(b"config").unwrap();
        let mut b = [0u8; 6];
        (&ours).read_exact(&mut b).unwrap();
        assert_eq!(&b, b"config");

        // Replies go back; a bad size ends the relay; both sides are closed.
        let reply = message(24, &[1, 2, 3]);
        lib.send_with_fds(&[&reply[..]], &[]).unwrap();
        let got = recv(&qemu).unwrap().unwrap();
        assert_eq!(got.bytes, reply);
        let mut huge = message(1, &[]);
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        qemu.send_with_fds(&[&huge[..]], &[]).unwrap();
        for t in threads {
            t.join().unwrap();
        }
        assert!(recv(&lib).unwrap().is_none());
        assert!(recv(&qemu).unwrap().is_none());
    }
}
