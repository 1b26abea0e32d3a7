use proptest::prelude::*;

use super::*;

fn dsl() -> impl Strategy<Value = u32> {
    0..=MAX_DATA_SEGMENT_LEN
}

fn stage_pair() -> impl Strategy<Value = (Stage, Option<Stage>, bool)> {
    prop_oneof![
        (
            prop_oneof![Just(Stage::Security), Just(Stage::Operational)],
            any::<bool>()
        )
            .prop_map(|(s, c)| (s, None, c)),
        Just((Stage::Security, Some(Stage::Operational), false)),
        Just((Stage::Security, Some(Stage::FullFeature), false)),
        Just((Stage::Operational, Some(Stage::FullFeature), false)),
    ]
}

fn residual() -> impl Strategy<Value = ResidualFlag> {
    prop_oneof![
        Just(ResidualFlag::None),
        Just(ResidualFlag::Overflow),
        Just(ResidualFlag::Underflow)
    ]
}

fn text_fc() -> impl Strategy<Value = (bool, bool)> {
    prop_oneof![
        Just((false, false)),
        Just((true, false)),
        Just((false, true))
    ]
}

fn initiator_pdu() -> impl Strategy<Value = Pdu> {
    let attr = prop_oneof![
        Just(TaskAttribute::Untagged),
        Just(TaskAttribute::Simple),
        Just(TaskAttribute::Ordered),
        Just(TaskAttribute::HeadOfQueue),
        Just(TaskAttribute::Aca)
    ];
    prop_oneof![
        (any::<bool>(), dsl(), any::<[u8; 8]>(), any::<[u32; 4]>()).prop_map(
            |(immediate, d, lun, w)| Pdu::NopOut(NopOut {
                immediate,
                data_segment_len: d,
                lun,
                itt: w[0],
                ttt: w[1],
                cmd_sn: w[2],
                exp_stat_sn: w[3],
            })
        ),
        (
            any::<[bool; 4]>(),
            attr,
            any::<u8>(),
            dsl(),
            any::<[u8; 8]>(),
            any::<[u32; 4]>(),
            any::<[u8; 16]>()
        )
            .prop_map(
                |(b, attr, ahs, d, lun, w, cdb)| Pdu::ScsiCommand(ScsiCommand {
                    immediate: b[0],
                    final_: b[1],
                    read: b[2],
                    write: b[3],
                    attr,
                    total_ahs_words: ahs,
                    data_segment_len: d,
                    lun,
                    itt: w[0],
                    expected_data_len: w[1],
                    cmd_sn: w[2],
                    exp_stat_sn: w[3],
                    cdb,
                })
            ),
        (
            any::<bool>(),
            0u8..0x80,
            any::<[u8; 8]>(),
            any::<[u32; 6]>()
        )
            .prop_map(|(immediate, function, lun, w)| Pdu::TaskMgmtRequest(
                TaskMgmtRequest {
                    immediate,
                    function,
                    lun,
                    itt: w[0],
                    referenced_task_tag: w[1],
                    cmd_sn: w[2],
                    exp_stat_sn: w[3],
                    ref_cmd_sn: w[4],
                    exp_data_sn: w[5],
                }
            )),
        (
            stage_pair(),
            any::<[u8; 2]>(),
            dsl(),
            any::<[u8; 6]>(),
            any::<[u16; 2]>(),
            any::<[u32; 3]>()
        )
            .prop_map(|((csg, transit, continue_), v, d, isid, s, w)| {
                Pdu::LoginRequest(LoginRequest {
                    transit,
                    continue_,
                    csg,
                    version_max: v[0],
                    version_min: v[1],
                    data_segment_len: d,
                    isid: Isid(isid),
                    tsih: s[0],
                    itt: w[0],
                    cid: s[1],
                    cmd_sn: w[1],
                    exp_stat_sn: w[2],
                })
            }),
        (
            any::<bool>(),
            text_fc(),
            dsl(),
            any::<[u8; 8]>(),
            any::<[u32; 4]>()
        )
            .prop_map(
                |(immediate, (final_, continue_), d, lun, w)| Pdu::TextRequest(TextRequest {
                    immediate,
                    final_,
                    continue_,
                    data_segment_len: d,
                    lun,
                    itt: w[0],
                    ttt: w[1],
                    cmd_sn: w[2],
                    exp_stat_sn: w[3],
                })
            ),
        (any::<bool>(), dsl(), any::<[u8; 8]>(), any::<[u32; 5]>()).prop_map(
            |(final_, d, lun, w)| Pdu::DataOut(DataOut {
                final_,
                data_segment_len: d,
                lun,
                itt: w[0],
                ttt: w[1],
                exp_stat_sn: w[2],
                data_sn: w[3],
                buffer_offset: w[4],
            })
        ),
        (
            any::<bool>(),
            prop_oneof![
                Just(LogoutReason::CloseSession),
                Just(LogoutReason::CloseConnection),
                Just(LogoutReason::RemoveConnectionForRecovery)
            ],
            any::<u16>(),
            any::<[u32; 3]>()
        )
            .prop_map(
                |(immediate, reason, cid, w)| Pdu::LogoutRequest(LogoutRequest {
                    immediate,
                    reason,
                    itt: w[0],
                    cid,
                    cmd_sn: w[1],
                    exp_stat_sn: w[2],
                })
            ),
        (
            prop_oneof![
                Just(SnackType::DataR2t),
                Just(SnackType::Status),
                Just(SnackType::DataAck),
                Just(SnackType::RData)
            ],
            any::<[u8; 8]>(),
            any::<[u32; 5]>()
        )
            .prop_map(|(snack_type, lun, w)| Pdu::Snack(Snack {
                snack_type,
                lun,
                itt: w[0],
                ttt: w[1],
                exp_stat_sn: w[2],
                beg_run: w[3],
                run_length: w[4],
            })),
    ]
}

fn target_pdu() -> impl Strategy<Value = Pdu> {
    prop_oneof![
        (dsl(), any::<[u8; 8]>(), any::<[u32; 5]>()).prop_map(|(d, lun, w)| Pdu::NopIn(NopIn {
            data_segment_len: d,
            lun,
            itt: w[0],
            ttt: w[1],
            stat_sn: w[2],
            exp_cmd_sn: w[3],
            max_cmd_sn: w[4],
        })),
        (
            residual(),
            residual(),
            any::<[u8; 2]>(),
            dsl(),
            any::<[u32; 8]>()
        )
            .prop_map(|(b, r, rs, d, w)| Pdu::ScsiResponse(ScsiResponse {
                bidi_residual: b,
                residual: r,
                response: rs[0],
                status: rs[1],
                data_segment_len: d,
                itt: w[0],
                snack_tag: w[1],
                stat_sn: w[2],
                exp_cmd_sn: w[3],
                max_cmd_sn: w[4],
                exp_data_sn: w[5],
                bidi_residual_count: w[6],
                residual_count: w[7],
            })),
        (any::<u8>(), any::<[u32; 4]>()).prop_map(|(response, w)| Pdu::TaskMgmtResponse(
            TaskMgmtResponse {
                response,
                itt: w[0],
                stat_sn: w[1],
                exp_cmd_sn: w[2],
                max_cmd_sn: w[3],
            }
        )),
        (
            stage_pair(),
            any::<[u8; 4]>(),
            dsl(),
            any::<[u8; 6]>(),
            any::<u16>(),
            any::<[u32; 4]>()
        )
            .prop_map(|((csg, transit, continue_), v, d, isid, tsih, w)| {
                Pdu::LoginResponse(LoginResponse {
                    transit,
                    continue_,
                    csg,
                    version_max: v[0],
                    version_active: v[1],
                    data_segment_len: d,
                    isid: Isid(isid),
                    tsih,
                    itt: w[0],
                    stat_sn: w[1],
                    exp_cmd_sn: w[2],
                    max_cmd_sn: w[3],
                    status: LoginStatus::new(v[2], v[3]),
                })
            }),
        (text_fc(), dsl(), any::<[u8; 8]>(), any::<[u32; 5]>()).prop_map(
            |((final_, continue_), d, lun, w)| Pdu::TextResponse(TextResponse {
                final_,
                continue_,
                data_segment_len: d,
                lun,
                itt: w[0],
                ttt: w[1],
                stat_sn: w[2],
                exp_cmd_sn: w[3],
                max_cmd_sn: w[4],
            })
        ),
        (
            any::<[bool; 2]>(),
            residual(),
            proptest::option::of(any::<u8>()),
            dsl(),
            any::<[u8; 8]>(),
            any::<[u32; 9]>()
        )
            .prop_map(|(b, residual, status, d, lun, w)| Pdu::DataIn(DataIn {
                final_: b[0] || status.is_some(),
                acknowledge: b[1],
                residual,
                status,
                data_segment_len: d,
                lun,
                itt: w[0],
                ttt: w[1],
                stat_sn: w[2],
                exp_cmd_sn: w[3],
                max_cmd_sn: w[4],
                data_sn: w[5],
                buffer_offset: w[6],
                residual_count: w[7],
            })),
        (any::<u8>(), any::<[u32; 4]>(), any::<[u16; 2]>()).prop_map(|(response, w, t)| {
            Pdu::LogoutResponse(LogoutResponse {
                response,
                itt: w[0],
                stat_sn: w[1],
                exp_cmd_sn: w[2],
                max_cmd_sn: w[3],
                time2wait: t[0],
                time2retain: t[1],
            })
        }),
        (any::<[u8; 8]>(), any::<[u32; 8]>()).prop_map(|(lun, w)| Pdu::R2t(R2t {
            lun,
            itt: w[0],
            ttt: w[1],
            stat_sn: w[2],
            exp_cmd_sn: w[3],
            max_cmd_sn: w[4],
            r2t_sn: w[5],
            buffer_offset: w[6],
            desired_len: w[7],
        })),
        (
            dsl(),
            any::<[u8; 8]>(),
            any::<[u32; 3]>(),
            any::<[u8; 2]>(),
            any::<[u16; 3]>()
        )
            .prop_map(|(d, lun, w, e, p)| Pdu::AsyncMessage(AsyncMessage {
                data_segment_len: d,
                lun,
                stat_sn: w[0],
                exp_cmd_sn: w[1],
                max_cmd_sn: w[2],
                event: e[0],
                vcode: e[1],
                parameter1: p[0],
                parameter2: p[1],
                parameter3: p[2],
            })),
        (any::<u8>(), dsl(), any::<[u32; 4]>()).prop_map(|(reason, d, w)| Pdu::Reject(Reject {
            reason,
            data_segment_len: d,
            stat_sn: w[0],
            exp_cmd_sn: w[1],
            max_cmd_sn: w[2],
            data_sn: w[3],
        })),
    ]
}

proptest! {
    #[test]
    fn initiator_pdus_round_trip(p in initiator_pdu()) {
        let b = p.to_bytes().unwrap();
        prop_assert_eq!(Pdu::parse(&b).unwrap(), p);
    }

    #[test]
    fn target_pdus_round_trip(p in target_pdu()) {
        let b = p.to_bytes().unwrap();
        prop_assert_eq!(Pdu::parse(&b).unwrap(), p);
    }

    #[test]
    fn any_header_parses_or_errors_and_reencodes_stably(h in any::<[u8; 32]>(), t in any::<[u8; 16]>()) {
        let mut b = [0u8; BHS_LEN];
        b[..32].copy_from_slice(&h);
        b[32..].copy_from_slice(&t);
        if let Ok(p) = Pdu::parse(&b) {
            let again = Pdu::parse(&p.to_bytes().unwrap()).unwrap();
            prop_assert_eq!(again, p);
        }
        let _ = Framing::default().layout(&b);
    }

    #[test]
    fn ahs_round_trip(cdb in proptest::collection::vec(any::<u8>(), 1..17), bidi in any::<u32>()) {
        let segs = vec![Ahs::ExtendedCdb(cdb), Ahs::BidiReadLength(bidi)];
        let b = encode_ahs(&segs).unwrap();
        prop_assert_eq!(b.len() % 4, 0);
        prop_assert_eq!(parse_ahs(&b).unwrap(), segs);
    }

    #[test]
    fn ahs_parser_never_panics(b in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = parse_ahs(&b);
    }

    #[test]
    fn frames_round_trip_with_digests(
        data in proptest::collection::vec(any::<u8>(), 0..100),
        hd in any::<bool>(), dd in any::<bool>(),
    ) {
        let framing = Framing { header_digest: hd, data_digest: dd, max_recv_data_segment_len: 128 };
        let hdr = Pdu::NopOut(NopOut {
            data_segment_len: u32::try_from(data.len()).unwrap(),
            itt: 7,
            ..Default::default()
        })
        .to_bytes()
        .unwrap();
        let wire = framing.encode(&hdr, &[], &data);
        prop_assert_eq!(wire.len(), BHS_LEN + framing.layout(&hdr).unwrap().remaining());
        let mut dec = FrameDecoder::new(framing);
        // Feed in two halves: the first may not complete a frame.
        let (a, b) = wire.split_at(wire.len() / 2);
        dec.push(a).unwrap();
        prop_assert!(dec.next_frame().unwrap().is_none() || a.len() == wire.len());
        dec.push(b).unwrap();
        let f = dec.next_frame().unwrap().unwrap();
        prop_assert_eq!(f.header, hdr);
        prop_assert_eq!(f.data, data);
        prop_assert!(dec.next_frame().unwrap().is_none());
    }
}

#[test]
fn crc32c_matches_rfc_7143_appendix_b() {
    // 32 bytes of zeros → aa 36 91 8a on the wire.
    assert_eq!(digest_bytes(crc32c(&[0u8; 32])), [0xaa, 0x36, 0x91, 0x8a]);
    // 32 bytes of 0xff → 43 ab a8 62.
    assert_eq!(
        digest_bytes(crc32c(&[0xffu8; 32])),
        [0x43, 0xab, 0xa8, 0x62]
    );
    // Incrementing 0..31 → 4e 79 dd 46.
    let inc: Vec<u8> = (0u8..32).collect();
    assert_eq!(digest_bytes(crc32c(&inc)), [0x4e, 0x79, 0xdd, 0x46]);
}

#[test]
fn framing_counts_ahs_digests_padding() {
    let mut h = [0u8; BHS_LEN];
    h[off::OPCODE] = Opcode::ScsiCommand as u8;
    h[off::TOTAL_AHS_LEN] = 2;
    h[off::DATA_SEGMENT_LEN + 2] = 5;
    let f = Framing {
        header_digest: true,
        data_digest: true,
        max_recv_data_segment_len: 8192,
    };
    let l = f.layout(&h).unwrap();
    assert_eq!(
        l,
        FrameLayout {
            ahs_len: 8,
            header_digest_len: 4,
            data_len: 5,
            padding: 3,
            data_digest_len: 4
        }
    );
    assert_eq!(l.remaining(), 24);
    // No data: no data digest.
    h[off::DATA_SEGMENT_LEN + 2] = 0;
    assert_eq!(f.layout(&h).unwrap().remaining(), 12);
}

#[test]
fn framing_refuses_oversized_data_segments() {
    let mut b = Bhs::default();
    b.set_u24(off::DATA_SEGMENT_LEN, 8193);
    let h = b.0;
    assert_eq!(
        Framing::default().layout(&h),
        Err(FramingError::DataSegmentTooLong {
            len: 8193,
            max: 8192
        })
    );
}

#[test]
fn digest_mismatch_is_reported() {
    let framing = Framing {
        header_digest: true,
        data_digest: true,
        max_recv_data_segment_len: 64,
    };
    let hdr = Pdu::NopOut(NopOut {
        data_segment_len: 3,
        ..Default::default()
    })
    .to_bytes()
    .unwrap();
    let mut wire = framing.encode(&hdr, &[], b"abc");
    let n = wire.len();
    wire[n - 1] ^= 1;
    assert!(matches!(
        framing.split(&hdr, &wire[BHS_LEN..]),
        Err(FramingError::DataDigest { .. })
    ));
    wire[n - 1] ^= 1;
    wire[BHS_LEN] ^= 1;
    assert!(matches!(
        framing.split(&hdr, &wire[BHS_LEN..]),
        Err(FramingError::HeaderDigest { .. })
    ));
}

#[test]
fn parse_names_each_violation() {
    let mut h = [0u8; BHS_LEN];
    h[0] = 0x07;
    assert_eq!(Pdu::parse(&h), Err(PduError::UnknownOpcode(7)));

    h[0] = Opcode::ScsiCommand as u8;
    h[1] = 0x85;
    assert_eq!(Pdu::parse(&h), Err(PduError::InvalidTaskAttribute(5)));

    h = [0u8; BHS_LEN];
    h[0] = Opcode::LoginRequest as u8 | flag::IMMEDIATE;
    h[1] = flag::TRANSIT | flag::CONTINUE | 1;
    assert_eq!(Pdu::parse(&h), Err(PduError::ContinueAndTransit));
    h[1] = 2 << 2;
    assert_eq!(Pdu::parse(&h), Err(PduError::InvalidStage(2)));
    h[1] = flag::TRANSIT | (1 << 2);
    assert_eq!(
        Pdu::parse(&h),
        Err(PduError::StageNotForward {
            from: Stage::Operational,
            to: Stage::Security
        })
    );

    h = [0u8; BHS_LEN];
    h[0] = Opcode::LogoutRequest as u8;
    h[1] = 0x83;
    assert_eq!(Pdu::parse(&h), Err(PduError::InvalidLogoutReason(3)));
    h[1] = 0x80;
    h[off::DATA_SEGMENT_LEN + 2] = 4;
    assert_eq!(
        Pdu::parse(&h),
        Err(PduError::UnexpectedDataSegment {
            opcode: Opcode::LogoutRequest,
            len: 4
        })
    );

    h = [0u8; BHS_LEN];
    h[0] = Opcode::NopOut as u8;
    h[off::TOTAL_AHS_LEN] = 1;
    assert_eq!(
        Pdu::parse(&h),
        Err(PduError::UnexpectedAhs {
            opcode: Opcode::NopOut,
            len: 4
        })
    );

    h = [0u8; BHS_LEN];
    h[0] = Opcode::DataIn as u8;
    h[1] = flag::STATUS;
    assert_eq!(Pdu::parse(&h), Err(PduError::StatusWithoutFinal));
    h[1] = flag::FINAL | flag::OVERFLOW | flag::UNDERFLOW;
    assert_eq!(Pdu::parse(&h), Err(PduError::OverflowAndUnderflow));

    h = [0u8; BHS_LEN];
    h[0] = Opcode::Snack as u8;
    h[1] = 0x84;
    assert_eq!(Pdu::parse(&h), Err(PduError::InvalidSnackType(4)));

    h = [0u8; BHS_LEN];
    h[0] = Opcode::TextRequest as u8;
    h[1] = flag::FINAL | flag::CONTINUE;
    assert_eq!(Pdu::parse(&h), Err(PduError::ContinueAndFinal));
}

#[test]
fn scsi_command_fields_sit_at_their_offsets() {
    let p = Pdu::ScsiCommand(ScsiCommand {
        immediate: false,
        final_: true,
        read: true,
        write: false,
        attr: TaskAttribute::Simple,
        total_ahs_words: 0,
        data_segment_len: 0,
        lun: encode_lun(3).unwrap(),
        itt: 0x0102_0304,
        expected_data_len: 4096,
        cmd_sn: 9,
        exp_stat_sn: 10,
        cdb: [0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0],
    });
    let b = p.to_bytes().unwrap();
    assert_eq!(b[0], 0x01);
    assert_eq!(b[1], 0xc1);
    assert_eq!(&b[8..10], &[0, 3]);
    assert_eq!(&b[16..20], &[1, 2, 3, 4]);
    assert_eq!(&b[20..24], &4096u32.to_be_bytes());
    assert_eq!(b[32], 0x28);
    assert_eq!(TaskAttribute::Simple.to_engine(), engine::TaskAttr::Simple);
    let Pdu::ScsiCommand(mut c) = p else { panic!() };
    assert_eq!(c.data_dir(), Some(engine::DataDir::FromDevice));
    c.write = true;
    assert_eq!(c.data_dir(), None);
    c.read = false;
    assert_eq!(c.data_dir(), Some(engine::DataDir::ToDevice));
    c.write = false;
    assert_eq!(c.data_dir(), Some(engine::DataDir::None));
}

#[test]
fn login_request_is_always_immediate() {
    let p = Pdu::LoginRequest(LoginRequest {
        transit: Some(Stage::Operational),
        continue_: false,
        csg: Stage::Security,
        version_max: 0,
        version_min: 0,
        data_segment_len: 10,
        isid: Isid([0x80, 0, 0x23, 0x3d, 0, 0]),
        tsih: 0,
        itt: 0,
        cid: 0,
        cmd_sn: 1,
        exp_stat_sn: 0,
    });
    let b = p.to_bytes().unwrap();
    assert_eq!(b[0], 0x43);
    assert_eq!(b[1], 0x81);
    assert_eq!(
        format!("{}", Isid([0x80, 0, 0x23, 0x3d, 0, 0])),
        "8000233d0000"
    );
}

#[test]
fn lun_encoding_matches_the_engine() {
    for n in [0u64, 1, 255, 256, 1000, MAX_FLAT_LUN] {
        let b = encode_lun(n).unwrap();
        assert_eq!(b, engine::spc::encode_lun(n));
        assert_eq!(decode_lun(&b), Some(n));
    }
    assert_eq!(encode_lun(MAX_FLAT_LUN + 1), None);
    // Peripheral with a bus number, logical unit addressing, second level.
    assert_eq!(decode_lun(&[0x01, 0, 0, 0, 0, 0, 0, 0]), None);
    assert_eq!(decode_lun(&[0x80, 1, 0, 0, 0, 0, 0, 0]), None);
    assert_eq!(decode_lun(&[0, 1, 0, 2, 0, 0, 0, 0]), None);
}

#[test]
fn ahs_errors() {
    assert_eq!(parse_ahs(&[0, 5, 2]), Err(PduError::AhsTruncated(0)));
    assert_eq!(
        parse_ahs(&[0, 0, 1, 0]),
        Err(PduError::AhsBadLength {
            ahs_type: 1,
            len: 0
        })
    );
    assert_eq!(
        parse_ahs(&[0, 3, 2, 0, 0, 0, 0, 0]),
        Err(PduError::AhsBadLength {
            ahs_type: 2,
            len: 3
        })
    );
    assert_eq!(
        parse_ahs(&[0, 9, 1, 0, 0, 0, 0, 0]),
        Err(PduError::AhsTruncated(0))
    );
}

#[test]
fn full_cdb_joins_extended_cdb() {
    let cmd = ScsiCommand {
        immediate: false,
        final_: true,
        read: false,
        write: false,
        attr: TaskAttribute::Simple,
        total_ahs_words: 2,
        data_segment_len: 0,
        lun: [0; 8],
        itt: 1,
        expected_data_len: 0,
        cmd_sn: 1,
        exp_stat_sn: 1,
        cdb: [0x7f; 16],
    };
    let ahs = parse_ahs(&encode_ahs(&[Ahs::ExtendedCdb(vec![1, 2, 3, 4])]).unwrap()).unwrap();
    let cdb = full_cdb(&cmd, &ahs).unwrap();
    assert_eq!(cdb.len(), 20);
    assert_eq!(&cdb[16..], &[1, 2, 3, 4]);
    let long = vec![Ahs::ExtendedCdb(vec![0; 17])];
    assert_eq!(full_cdb(&cmd, &long), Err(PduError::CdbTooLong(33)));
}

#[test]
fn decoder_refuses_unbounded_buffering() {
    let mut d = FrameDecoder::new(Framing {
        max_recv_data_segment_len: 512,
        ..Framing::default()
    });
    assert!(d.push(&vec![0u8; 100_000]).is_err());
}

#[test]
fn tmf_codes_map_to_engine_functions() {
    use engine::TmfFunction as F;
    let mut r = TaskMgmtRequest {
        function: tmf_code::ABORT_TASK,
        referenced_task_tag: 77,
        ..Default::default()
    };
    assert_eq!(r.engine_function(), Some(F::AbortTask { tag: 77 }));
    let table = [
        (tmf_code::ABORT_TASK_SET, Some(F::AbortTaskSet)),
        (tmf_code::CLEAR_ACA, Some(F::ClearAca)),
        (tmf_code::CLEAR_TASK_SET, Some(F::ClearTaskSet)),
        (tmf_code::LOGICAL_UNIT_RESET, Some(F::LogicalUnitReset)),
        (tmf_code::TARGET_WARM_RESET, Some(F::TargetReset)),
        (tmf_code::TARGET_COLD_RESET, Some(F::TargetReset)),
        (tmf_code::TASK_REASSIGN, None),
        (0, None),
        (99, None),
    ];
    for (code, want) in table {
        r.function = code;
        assert_eq!(r.engine_function(), want, "{code}");
    }
}
