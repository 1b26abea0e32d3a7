//! Arbitrary bytes through every SRP IU parser: each either fails with an error
//! or yields a value that encodes back to bytes that parse to the same value. The
//! login decision and the engine mapping run on whatever parses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use srp::iu::{
    self, AerReq, ChannelParams, Cmd, CredReq, Iu, LoginRej, LoginReq, LoginRsp, Rsp, TLogout,
    TskMgmt,
};
use srp::{exec, login};

fn check_cmd(c: &Cmd, imm: Option<u16>) {
    let again = c.encode(imm).expect("a parsed command encodes");
    assert_eq!(&Cmd::parse(&again, imm).expect("re-parse"), c);
    let _ = exec::prepare(c);
}

fn check_login(r: &LoginReq) {
    assert_eq!(&LoginReq::parse_rdma_cm(&r.encode_rdma_cm()).expect("rdma"), r);
    assert_eq!(&LoginReq::parse_ib(&r.encode_ib()).expect("ib"), r);
    // Decide against the identity the request names and against another.
    let me = login::TargetIdentity {
        id_ext: u64::from_be_bytes(r.target_port_id[..8].try_into().unwrap_or_default()),
        ioc_guid: u64::from_be_bytes(r.target_port_id[8..].try_into().unwrap_or_default()),
    };
    for lim in [login::Limits::default(), login::Limits { max_it_iu_len: 64, rq_size: 2 }] {
        match login::decide(r, &me, &lim) {
            Ok(mut a) => {
                a.note_terminated(1);
                assert_eq!(LoginRsp::parse(&a.rsp.encode()).expect("rsp"), a.rsp);
                assert!(a.params.max_ti_iu_len <= lim.max_it_iu_len);
                assert!(a.rsp.req_lim_delta < lim.rq_size);
            }
            Err(rej) => assert_eq!(LoginRej::parse(&rej.encode()).expect("rej"), rej),
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&cfg, b)) = input.split_first() else {
        return;
    };
    let imm = match cfg & 3 {
        0 => None,
        1 => Some(68),
        2 => Some(52),
        _ => Some(u16::from(cfg)),
    };
    let params = ChannelParams {
        max_it_iu_len: if cfg & 4 != 0 { 8260 } else { 256 },
        max_ti_iu_len: 36 + u32::from(cfg >> 3),
        imm_data_offset: imm,
    };

    match iu::parse(b, &params) {
        Ok(Iu::Cmd(c)) => check_cmd(&c, imm),
        Ok(Iu::TskMgmt(t)) => {
            assert_eq!(TskMgmt::parse(&t.encode()).expect("tsk"), t);
            let _ = exec::tmf_function(&t);
        }
        Ok(other) => {
            let op = b.first().copied().unwrap_or_default();
            assert_eq!(
                iu::parse(&iu::encode_tag_only(op, other.tag()), &params).expect("tag only"),
                other
            );
        }
        Err(e) => {
            // The transport answers an error with a tag; its sense must encode.
            if let Some(tag) = e.tag {
                let sense = exec::sense_bytes(&exec::iu_error_sense(&e));
                let mut out = [0u8; 300];
                let n = iu::encode_rsp(
                    &exec::check_condition(tag, 1, &sense),
                    params.max_ti_iu_len,
                    &mut out,
                )
                .expect("header fits");
                assert!(n <= params.max_ti_iu_len as usize);
                assert_eq!(Rsp::parse(&out[..n]).expect("rsp").tag, tag);
            }
        }
    }
    // Without the channel's length limit, straight into the command parser.
    if let Ok(c) = Cmd::parse(b, imm) {
        check_cmd(&c, imm);
    }

    if let Ok(r) = LoginReq::parse_rdma_cm(b) {
        check_login(&r);
    } else if let Err(e) = LoginReq::parse_rdma_cm(b) {
        let _ = login::reject_malformed(&e).encode();
    }
    if let Ok(r) = LoginReq::parse_ib(b) {
        check_login(&r);
    }
    if let Ok(r) = LoginRsp::parse(b) {
        assert_eq!(LoginRsp::parse(&r.encode()).expect("login rsp"), r);
    }
    if let Ok(r) = LoginRej::parse(b) {
        assert_eq!(LoginRej::parse(&r.encode()).expect("login rej"), r);
    }
    if let Ok(r) = Rsp::parse(b) {
        let mut out = vec![0u8; b.len() + 36];
        let n = iu::encode_rsp(&r, u32::MAX, &mut out).expect("rsp fits");
        assert_eq!(Rsp::parse(&out[..n]).expect("rsp again"), r);
        // Capped to a small initiator buffer, it still parses.
        let n = iu::encode_rsp(&r, params.max_ti_iu_len, &mut out);
        if let Ok(n) = n {
            assert!(n <= params.max_ti_iu_len as usize);
            assert!(Rsp::parse(&out[..n]).is_ok());
        }
    }
    if let Ok(t) = TLogout::parse(b) {
        assert_eq!(TLogout::parse(&t.encode()).expect("t logout"), t);
    }
    if let Ok(c) = CredReq::parse(b) {
        assert_eq!(CredReq::parse(&c.encode()).expect("cred req"), c);
    }
    if let Ok(a) = AerReq::parse(b) {
        let mut out = vec![0u8; b.len() + 36];
        let n = a.encode(&mut out).expect("aer fits");
        assert_eq!(AerReq::parse(&out[..n]).expect("aer again"), a);
    }
    if let Some(lun) = b.get(..8).and_then(|l| <[u8; 8]>::try_from(l).ok()) {
        if let Some(n) = exec::decode_lun(&lun) {
            assert_eq!(exec::decode_lun(&engine::spc::encode_lun(n)), Some(n));
        }
    }
});
