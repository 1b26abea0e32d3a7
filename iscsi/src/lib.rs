//! oxtarget's iSCSI target (RFC 7143), sans I/O. Bytes from a connection enter as
//! PDUs: [`pdu`] delimits them ([`pdu::Framing`], digests) and parses each
//! 48-byte header into a typed [`pdu::Pdu`]; [`text`] decodes the key=value data
//! segment of Login and Text PDUs; [`negotiate`] runs the parameter negotiation
//! of RFC 7143 §13 into [`negotiate::SessionParams`]; [`chap`] authenticates the
//! initiator (and the target to it); [`login`] drives the login phase and hands
//! back response PDUs and events; [`discovery`] answers SendTargets. Nothing
//! here owns a socket or a thread: a thin adapter feeds bytes in and writes the
//! PDUs that come out.
//!
//! After login, [`session`] runs the full feature phase (commands, R2T and
//! Data-Out, Data-In, task management, NOP, logout, text) against the engine.
//! [`server`] is that thin adapter: TCP portals and epoll worker threads, each
//! owning its connections and one engine worker.

pub mod chap;
pub mod discovery;
pub mod initiator;
pub mod inthash;
pub mod login;
pub mod negotiate;
pub mod pdu;
pub mod server;
pub mod session;
pub mod text;
