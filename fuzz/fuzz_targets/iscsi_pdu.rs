//! Any byte stream through the iSCSI frame decoder and header parser: every
//! header either fails with an error or parses into a PDU that encodes back to a
//! header that parses to the same PDU; AHS and CDB assembly never panic.
#![no_main]

use iscsi::pdu::{full_cdb, parse_ahs, FrameDecoder, Framing, Pdu, BHS_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&cfg, rest)) = input.split_first() else {
        return;
    };
    let framing = Framing {
        header_digest: cfg & 1 != 0,
        data_digest: cfg & 2 != 0,
        max_recv_data_segment_len: 512 << (cfg >> 4),
    };
    // Any 48 bytes: parse and re-encode.
    if let Some(h) = rest.get(..BHS_LEN) {
        let mut header = [0u8; BHS_LEN];
        header.copy_from_slice(h);
        let _ = framing.layout(&header);
        if let Ok(p) = Pdu::parse(&header) {
            let again = p.to_bytes().expect("a parsed PDU encodes");
            assert_eq!(Pdu::parse(&again).expect("re-parse"), p);
        }
    }
    // The whole stream through the decoder.
    let mut dec = FrameDecoder::new(framing);
    if dec.push(rest).is_err() {
        return;
    }
    for _ in 0..64 {
        match dec.next_frame() {
            Ok(Some(f)) => {
                let ahs = parse_ahs(&f.ahs);
                if let (Ok(Pdu::ScsiCommand(c)), Ok(ahs)) = (Pdu::parse(&f.header), ahs) {
                    let _ = full_cdb(&c, &ahs);
                }
            }
            Ok(None) | Err(_) => return,
        }
    }
});
