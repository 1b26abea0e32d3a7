//! A channel's verbs resources, made at login before the accept: its own CM
//! event channel, completion channel and CQ, PD, QP, the receive ring (every
//! receive posted), the send ring and the data region.

use std::sync::Arc;

use crate::iu::ChannelParams;
use crate::rdma::{
    AcceptParams, CmId, CompChannel, Cq, DeviceLimits, EventChannel, Mr, Pd, QpCaps, RdmaError,
};

use super::pool::ChunkPool;
use super::ServerConfig;

/// Bytes of one send buffer: an SRP_RSP header (36), 4 bytes of response data
/// and sense data up to 252 bytes fit, and so does every other IU we send.
pub(super) const SEND_SLOT: usize = 512;
/// Granularity of the data region's runs.
const CHUNK: usize = 4096;
/// RDMA READs we keep outstanding against the initiator at most (ib_srp grants
/// 4 responder resources, as ib_srpt asks).
const MAX_RD_ATOM: u8 = 4;

/// The accept's parameters for an initiator that grants `granted` RDMA READs
/// on a device that can issue `dev_max` at once; `None` if that is none.
fn accept_params(granted: u8, dev_max: u32) -> Option<AcceptParams> {
    let dev = u8::try_from(dev_max).unwrap_or(u8::MAX);
    let depth = granted.min(dev).min(MAX_RD_ATOM);
    (depth > 0).then_some(AcceptParams {
        responder_resources: MAX_RD_ATOM,
        initiator_depth: depth,
        rnr_retry_count: 7,
    })
}

/// What a work request id says: kind in the top byte, index below.
pub(super) mod wr {
    pub const RECV: u64 = 1 << 56;
    pub const SEND: u64 = 2 << 56;
    pub const READ: u64 = 3 << 56;
    pub const DRAIN_SEND: u64 = 4 << 56;
    const KIND: u64 = 0xff << 56;

    pub fn kind(id: u64) -> u64 {
        id & KIND
    }

    pub fn index(id: u64) -> usize {
        usize::try_from(id & !KIND).unwrap_or(usize::MAX)
    }
}

/// Everything a channel owns besides its CM id. Field order is drop order:
/// regions before the PD, the CQ before its completion channel.
pub(crate) struct Resources {
    pub recv: Mr,
    pub send: Mr,
    pub data: Mr,
    /// Completions of the send queue (SENDs, RDMA READs): they wake the
    /// channel only when it waits for one.
    pub send_cq: Arc<Cq>,
    /// Completions of the receive queue: every one wakes the channel.
    pub recv_cq: Arc<Cq>,
    pub comp: Arc<CompChannel>,
    pub pd: Arc<Pd>,
    /// The channel's own CM event channel (the id migrates to it).
    pub events: EventChannel,
    pub pool: ChunkPool,
    /// Receive buffers (= credits granted + 1 spare) and each one's size.
    pub rq_size: u32,
    pub recv_len: usize,
    pub send_slots: u32,
    /// The send queue as granted (after `create_qp`).
    pub sq_size: u32,
    pub limits: DeviceLimits,
}

fn too_big(what: &'static str, value: usize) -> RdmaError {
    RdmaError::OutOfRange { what, value }
}

impl Resources {
    /// Makes the resources for a channel of `id`'s device.
    pub fn new(id: &CmId, cfg: &ServerConfig, p: &ChannelParams) -> Result<Self, RdmaError> {
        let limits = id.device_limits()?;
        let rq_size = cfg.queue_depth;
        let rq = usize::try_from(rq_size).map_err(|_| too_big("queue depth", usize::MAX))?;
        // Receives: rq_size + the drain marker.
        if limits.max_qp_wr < rq_size.saturating_add(1) {
            return Err(too_big("queue depth", rq));
        }
        let recv_len = usize::try_from(p.max_it_iu_len)
            .map_err(|_| too_big("IU length", usize::MAX))?
            .next_multiple_of(64);
        let recv_total = rq
            .checked_mul(recv_len)
            .ok_or(too_big("receive ring", usize::MAX))?;
        // Responses in flight are at most the credits granted; completed ones
        // are reaped at least once per batch of 32 receives: twice the queue
        // depth never runs out.
        let send_slots = rq_size.saturating_mul(2).saturating_add(1);
        let send_total = usize::try_from(send_slots)
            .map_err(|_| too_big("send ring", usize::MAX))?
            .checked_mul(SEND_SLOT)
            .ok_or(too_big("send ring", usize::MAX))?;
        let pd = id.alloc_pd()?;
        let comp = id.comp_channel()?;
        let want_sq = rq_size.saturating_mul(4).saturating_add(8);
        let sq = want_sq.min(limits.max_qp_wr);
        let max_cqe = limits.max_cqe.max(1);
        let send_cq = id.create_cq(sq.saturating_add(1).min(max_cqe), &comp)?;
        let recv_cq = id.create_cq(rq_size.saturating_add(2).min(max_cqe), &comp)?;
        let recv = Mr::new(&pd, recv_total, 0)?;
        let send = Mr::new(&pd, send_total, 0)?;
        let data = Mr::new(&pd, cfg.data_pool, 0)?;
        Ok(Resources {
            recv,
            send,
            data,
            send_cq,
            recv_cq,
            comp,
            pd,
            events: EventChannel::new()?,
            pool: ChunkPool::new(cfg.data_pool, CHUNK),
            rq_size,
            recv_len,
            send_slots,
            sq_size: sq,
            limits,
        })
    }

    /// Creates the RC QP on `id`.
    pub fn create_qp(&mut self, id: &mut CmId) -> Result<(), RdmaError> {
        let caps = QpCaps {
            max_send_wr: self.sq_size,
            max_recv_wr: self.rq_size.saturating_add(1),
            max_send_sge: 1,
        };
        let got = id.create_qp(&self.pd, &self.send_cq, &self.recv_cq, caps)?;
        self.sq_size = got.max_send_wr.min(caps.max_send_wr);
        Ok(())
    }

    /// Posts every receive buffer (before the accept: the initiator may send
    /// as soon as it hears the login response).
    pub fn post_all_receives(&self, id: &CmId) -> Result<(), RdmaError> {
        for i in 0..self.rq_size {
            self.post_recv(id, i)?;
        }
        Ok(())
    }

    /// Posts receive buffer `i` (again).
    pub fn post_recv(&self, id: &CmId, i: u32) -> Result<(), RdmaError> {
        let i = usize::try_from(i).map_err(|_| too_big("receive index", usize::MAX))?;
        let len = u32::try_from(self.recv_len).map_err(|_| too_big("IU length", self.recv_len))?;
        id.post_recv(
            wr::RECV | i as u64,
            self.recv.addr(i * self.recv_len),
            len,
            self.recv.lkey(),
        )
    }

    /// The accept's connection parameters: we issue the RDMA READs, so our
    /// initiator depth is at most what the initiator grants as responder
    /// (`granted`: the connect request event's `initiator_depth`, which the
    /// CM has already turned to our point of view). ib_srp grants 4; with 0
    /// no RDMA READ could ever run, so the login is refused instead.
    pub fn accept_params(&self, granted: u8) -> Option<AcceptParams> {
        accept_params(granted, self.limits.max_qp_init_rd_atom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rdma_read_depth_is_what_both_sides_allow() {
        // ib_srp grants 4; rxe can issue 128.
        assert_eq!(accept_params(4, 128).map(|p| p.initiator_depth), Some(4));
        assert_eq!(accept_params(16, 128).map(|p| p.initiator_depth), Some(4));
        assert_eq!(accept_params(2, 128).map(|p| p.initiator_depth), Some(2));
        assert_eq!(accept_params(4, 1).map(|p| p.initiator_depth), Some(1));
        assert_eq!(
            accept_params(4, 100_000).map(|p| p.initiator_depth),
            Some(4)
        );
        // Without RDMA READ no write could run: refuse the login.
        assert!(accept_params(0, 128).is_none());
        assert!(accept_params(4, 0).is_none());
    }

    #[test]
    fn work_request_ids_keep_kind_and_index_apart() {
        for kind in [wr::RECV, wr::SEND, wr::READ, wr::DRAIN_SEND] {
            for idx in [0usize, 1, 127, (1 << 56) - 1] {
                let id = kind | idx as u64;
                assert_eq!(wr::kind(id), kind);
                assert_eq!(wr::index(id), idx);
            }
        }
    }
}
