//! Property tests of the codec: for generated values, decode ∘ encode = id.

use engine::{Residual, TaskAttr};
use proptest::prelude::*;
use smallvec::SmallVec;

use super::*;

fn attr() -> impl Strategy<Value = TaskAttr> {
    prop_oneof![
        Just(TaskAttr::Simple),
        Just(TaskAttr::Ordered),
        Just(TaskAttr::HeadOfQueue),
        Just(TaskAttr::Aca),
    ]
}

fn residual() -> impl Strategy<Value = Residual> {
    prop_oneof![
        Just(Residual::None),
        any::<u32>().prop_map(Residual::Under),
        any::<u32>().prop_map(Residual::Over),
    ]
}

fn bufs() -> impl Strategy<Value = RemoteBufs> {
    (
        prop::collection::vec((any::<u64>(), any::<u32>(), 0u32..1 << 24), 1..8),
        any::<bool>(),
    )
        .prop_map(|(v, ind)| {
            let bufs: SmallVec<[RemoteBuf; 4]> = v
                .into_iter()
                .map(|(va, rkey, len)| RemoteBuf { va, rkey, len })
                .collect();
            let total_len = bufs.iter().map(|b| b.len).sum();
            let indirect = ind || bufs.len() > 1;
            RemoteBufs {
                bufs,
                total_len,
                indirect,
            }
        })
}

/// 0 none, 1 immediate, 2 out, 3 in.
#[derive(Clone, Debug)]
enum Data {
    None,
    Imm(Vec<u8>),
    Out(RemoteBufs),
    In(RemoteBufs),
}

fn data() -> impl Strategy<Value = Data> {
    prop_oneof![
        Just(Data::None),
        prop::collection::vec(any::<u8>(), 0..600).prop_map(Data::Imm),
        bufs().prop_map(Data::Out),
        bufs().prop_map(Data::In),
    ]
}

proptest! {
    #[test]
    fn cmd_round_trips(
        tag in any::<[u8; 8]>(),
        lun in any::<[u8; 8]>(),
        add in 0usize..=8,
        cdb_bytes in prop::collection::vec(any::<u8>(), 48),
        task_attr in attr(),
        d in data(),
    ) {
        let cdb = &cdb_bytes[..16 + 4 * add];
        let data = match &d {
            Data::None => DataXfer::None,
            Data::Imm(v) => DataXfer::Immediate(v),
            Data::Out(b) => DataXfer::Out(b.clone()),
            Data::In(b) => DataXfer::In(b.clone()),
        };
        let c = Cmd { tag, lun, cdb, task_attr, data };
        // Immediate data at Linux's 68, or just past the descriptor when a long
        // additional CDB pushes it further.
        let imm = u16::try_from((48 + 4 * add + 4).max(68)).unwrap();
        let bytes = c.encode(Some(imm)).unwrap();
        prop_assert_eq!(Cmd::parse(&bytes, Some(imm)).unwrap(), c.clone());
        let p = ChannelParams { max_it_iu_len: u32::MAX, max_ti_iu_len: 8260, imm_data_offset: Some(imm) };
        prop_assert_eq!(parse(&bytes, &p).unwrap(), Iu::Cmd(c));
    }

    #[test]
    fn rsp_round_trips(
        tag in any::<[u8; 8]>(),
        sol_not in any::<u8>(),
        req_lim_delta in any::<u32>(),
        status in any::<u8>(),
        data_in in residual(),
        data_out in residual(),
        resp_data in prop::collection::vec(any::<u8>(), 0..8),
        sense in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let r = Rsp { tag, sol_not, req_lim_delta, status, data_in, data_out, resp_data: &resp_data, sense: &sense };
        let mut out = vec![0u8; 400];
        let n = encode_rsp(&r, 8260, &mut out).unwrap();
        prop_assert_eq!(Rsp::parse(&out[..n]).unwrap(), r);
    }

    #[test]
    fn login_and_short_ius_round_trip(
        tag in any::<[u8; 8]>(),
        a in any::<u32>(),
        b in any::<u32>(),
        fmt in any::<u16>(),
        flags in any::<u8>(),
        ip in any::<[u8; 16]>(),
        tp in any::<[u8; 16]>(),
        imm in any::<u16>(),
        func in any::<u8>(),
        sense in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let req = LoginReq { tag, req_it_iu_len: a, req_buf_fmt: fmt, req_flags: flags, initiator_port_id: ip, target_port_id: tp, imm_data_offset: imm };
        prop_assert_eq!(LoginReq::parse_rdma_cm(&req.encode_rdma_cm()).unwrap(), req);
        prop_assert_eq!(LoginReq::parse_ib(&req.encode_ib()).unwrap(), req);
        let rsp = LoginRsp { req_lim_delta: a, tag, max_it_iu_len: b, max_ti_iu_len: a ^ b, buf_fmt: fmt, rsp_flags: flags };
        prop_assert_eq!(LoginRsp::parse(&rsp.encode()).unwrap(), rsp);
        let rej = LoginRej { reason: a, tag, buf_fmt: fmt };
        prop_assert_eq!(LoginRej::parse(&rej.encode()).unwrap(), rej);
        let t = TskMgmt { tag, sol_not: flags, lun: ip[..8].try_into().unwrap(), func, task_tag: tp[..8].try_into().unwrap() };
        prop_assert_eq!(TskMgmt::parse(&t.encode()).unwrap(), t);
        let tl = TLogout { sol_not: flags, reason: a, tag };
        prop_assert_eq!(TLogout::parse(&tl.encode()).unwrap(), tl);
        let cr = CredReq { sol_not: flags, req_lim_delta: b, tag };
        prop_assert_eq!(CredReq::parse(&cr.encode()).unwrap(), cr);
        let aer = AerReq { sol_not: flags, req_lim_delta: a, tag, lun: tp[8..].try_into().unwrap(), sense: &sense };
        let mut out = [0u8; 100];
        let n = aer.encode(&mut out).unwrap();
        prop_assert_eq!(AerReq::parse(&out[..n]).unwrap(), aer);
    }
}
