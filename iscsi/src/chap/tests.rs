use proptest::prelude::*;

use super::*;

fn creds(mutual: bool) -> ChapCredentials {
    ChapCredentials {
        initiator: Secret {
            user: "alice".into(),
            secret: b"0123456789ab".to_vec(),
        },
        target: mutual.then(|| Secret {
            user: "iqn.2026-11.org.oxtarget:t0".into(),
            secret: b"target-secret-1".to_vec(),
        }),
    }
}

fn kv(list: &[(&str, &str)]) -> Pairs {
    let mut p = Pairs::default();
    for (k, v) in list {
        p.push(*k, *v);
    }
    p
}

/// Runs the exchange to the challenge; returns (algorithm, id, challenge).
fn challenge(t: &mut ChapTarget, offer: &str) -> (ChapAlgorithm, u8, Vec<u8>) {
    let r = t.step(&kv(&[("CHAP_A", offer)]), |_| None).unwrap();
    let alg = ChapAlgorithm::from_number(r.get("CHAP_A").unwrap().parse().unwrap()).unwrap();
    let id: u8 = r.get("CHAP_I").unwrap().parse().unwrap();
    let c = decode_binary(r.get("CHAP_C").unwrap()).unwrap();
    assert_eq!((alg, id, c.as_slice()), t.challenge().unwrap());
    (alg, id, c)
}

#[test]
fn known_answers() {
    let c: Vec<u8> = (0u8..16).collect();
    let want = [
        (ChapAlgorithm::Md5, "bc51ec4cb4c50931b91f9d6167bf33f8"),
        (
            ChapAlgorithm::Sha1,
            "4938307e83d1a92c871c661eaf7f8954da24c714",
        ),
        (
            ChapAlgorithm::Sha256,
            "5424f8f983223c6cbec2633fc05baf38be8bc0bef8cfae01c4537d01140fb5dc",
        ),
        (
            ChapAlgorithm::Sha3_256,
            "55dbe95407b1f9a78f5a9919406c0dab0ecc92fbf0066f2c0075a291dbb2c7b5",
        ),
    ];
    for (alg, hex) in want {
        let r = alg.response(7, b"0123456789ab", &c);
        assert_eq!(r.len(), alg.digest_len());
        assert_eq!(encode_hex(&r), format!("0x{hex}"), "{alg:?}");
    }
}

#[test]
fn algorithm_choice_follows_the_initiator() {
    let all = ChapAlgorithm::ALL;
    assert_eq!(select_algorithm("7,6,5", &all), Some(ChapAlgorithm::Sha256));
    assert_eq!(
        select_algorithm("8,7,6,5", &all),
        Some(ChapAlgorithm::Sha3_256)
    );
    assert_eq!(select_algorithm("9,5", &all), Some(ChapAlgorithm::Md5));
    assert_eq!(select_algorithm("7,6", &[ChapAlgorithm::Md5]), None);
    assert_eq!(select_algorithm("junk", &all), None);
}

#[test]
fn binary_encodings() {
    assert_eq!(decode_binary("0x0aFf").unwrap(), vec![0x0a, 0xff]);
    assert_eq!(decode_binary("0XabC").unwrap(), vec![0x0a, 0xbc]);
    assert_eq!(decode_binary("0bAQID").unwrap(), vec![1, 2, 3]);
    assert_eq!(decode_binary("0B/w==").unwrap(), vec![0xff]);
    assert_eq!(decode_binary("1234"), Err(BinaryError::NoPrefix));
    assert_eq!(decode_binary("0x"), Err(BinaryError::Empty));
    assert_eq!(decode_binary("0xzz"), Err(BinaryError::BadHex));
    assert_eq!(decode_binary("0b!!"), Err(BinaryError::BadBase64));
    assert_eq!(decode_binary("é"), Err(BinaryError::NoPrefix));
    assert_eq!(encode_base64(&[1, 2, 3]), "0bAQID");
}

#[test]
fn one_way_chap_succeeds_with_the_right_secret() {
    for offer in ["5", "6", "7", "8", "7,6,5"] {
        let mut t = ChapTarget::new(&ChapAlgorithm::ALL);
        let (alg, id, c) = challenge(&mut t, offer);
        assert!(c.len() >= 16);
        let resp = encode_hex(&alg.response(id, b"0123456789ab", &c));
        let r = t
            .step(&kv(&[("CHAP_N", "alice"), ("CHAP_R", &resp)]), |n| {
                assert_eq!(n, "alice");
                Some(creds(false))
            })
            .unwrap();
        assert!(r.is_empty());
        assert!(t.is_done());
    }
}

#[test]
fn base64_response_is_accepted() {
    let mut t = ChapTarget::new(&ChapAlgorithm::ALL);
    let (alg, id, c) = challenge(&mut t, "5");
    let resp = encode_base64(&alg.response(id, b"0123456789ab", &c));
    t.step(&kv(&[("CHAP_N", "alice"), ("CHAP_R", &resp)]), |_| {
        Some(creds(false))
    })
    .unwrap();
    assert!(t.is_done());
}

#[test]
fn wrong_secret_user_or_sequence_fails() {
    let mut t = ChapTarget::new(&ChapAlgorithm::ALL);
    let (alg, id, c) = challenge(&mut t, "7");
    let bad = encode_hex(&alg.response(id, b"wrong-secret", &c));
    assert_eq!(
        t.step(&kv(&[("CHAP_N", "alice"), ("CHAP_R", &bad)]), |_| Some(
            creds(false)
        )),
        Err(ChapError::WrongResponse("alice".into()))
    );
    assert!(!t.is_done());

    let mut t = ChapTarget::new(&ChapAlgorithm::ALL);
    let (alg, id, c) = challenge(&mut t, "7");
    let good = encode_hex(&alg.response(id, b"0123456789ab", &c));
    assert_eq!(
        t.step(&kv(&[("CHAP_N", "mallory"), ("CHAP_R", &good)]), |_| Some(
            creds(false)
        )),
        Err(ChapError::WrongResponse("mallory".into()))
    );

    let mut t = ChapTarget::new(&ChapAlgorithm::ALL);
    challenge(&mut t, "7");
    assert_eq!(
        t.step(&kv(&[("CHAP_N", "bob"), ("CHAP_R", "0x00")]), |_| None),
        Err(ChapError::UnknownUser("bob".into()))
    );

    let mut t = ChapTarget::new(&ChapAlgorithm::ALL);
    assert_eq!(
        t.step(&kv(&[("CHAP_R", "0x00")]), |_| None),
        Err(ChapError::OutOfSequence("CHAP_R".into()))
    );
    let mut t = ChapTarget::new(&[ChapAlgorithm::Sha256]);
    assert_eq!(
        t.step(&kv(&[("CHAP_A", "5")]), |_| None),
        Err(ChapError::NoAlgorithm("5".into()))
    );

    let mut t = ChapTarget::new(&ChapAlgorithm::ALL);
    challenge(&mut t, "5");
    assert_eq!(
        t.step(&kv(&[("CHAP_N", "alice")]), |_| None),
        Err(ChapError::Missing("CHAP_R"))
    );
    // A failed exchange stays failed.
    assert!(t.step(&kv(&[("CHAP_A", "5")]), |_| None).is_err());
}

#[test]
fn mutual_chap_answers_the_initiator_challenge() {
    let mut t = ChapTarget::new(&ChapAlgorithm::ALL);
    let (alg, id, c) = challenge(&mut t, "6");
    let resp = encode_hex(&alg.response(id, b"0123456789ab", &c));
    let their_c = [9u8; 20];
    let r = t
        .step(
            &kv(&[
                ("CHAP_N", "alice"),
                ("CHAP_R", &resp),
                ("CHAP_I", "33"),
                ("CHAP_C", &encode_hex(&their_c)),
            ]),
            |_| Some(creds(true)),
        )
        .unwrap();
    assert_eq!(r.get("CHAP_N"), Some("iqn.2026-11.org.oxtarget:t0"));
    let want = encode_hex(&alg.response(33, b"target-secret-1", &their_c));
    assert_eq!(r.get("CHAP_R"), Some(want.as_str()));
    assert!(t.is_done());
}

#[test]
fn mutual_chap_refusals() {
    // The initiator reflects our own challenge back.
    let mut t = ChapTarget::new(&ChapAlgorithm::ALL);
    let (alg, id, c) = challenge(&mut t, "7");
    let resp = encode_hex(&alg.response(id, b"0123456789ab", &c));
    let reflect = encode_hex(&c);
    let keys = kv(&[
        ("CHAP_N", "alice"),
        ("CHAP_R", &resp),
        ("CHAP_I", "1"),
        ("CHAP_C", &reflect),
    ]);
    assert_eq!(
        t.step(&keys, |_| Some(creds(true))),
        Err(ChapError::ReflectedChallenge)
    );

    // No target secret configured.
    let mut t = ChapTarget::new(&ChapAlgorithm::ALL);
    let (alg, id, c) = challenge(&mut t, "7");
    let resp = encode_hex(&alg.response(id, b"0123456789ab", &c));
    let keys = kv(&[
        ("CHAP_N", "alice"),
        ("CHAP_R", &resp),
        ("CHAP_I", "1"),
        ("CHAP_C", "0x0102030405060708090a0b0c0d0e0f10"),
    ]);
    assert_eq!(
        t.step(&keys, |_| Some(creds(false))),
        Err(ChapError::MutualNotConfigured)
    );

    // Same secret both ways.
    let mut t = ChapTarget::new(&ChapAlgorithm::ALL);
    let (alg, id, c) = challenge(&mut t, "7");
    let resp = encode_hex(&alg.response(id, b"0123456789ab", &c));
    let keys = kv(&[
        ("CHAP_N", "alice"),
        ("CHAP_R", &resp),
        ("CHAP_I", "1"),
        ("CHAP_C", "0x0102030405060708090a0b0c0d0e0f10"),
    ]);
    let mut same = creds(true);
    same.target.as_mut().unwrap().secret = b"0123456789ab".to_vec();
    assert_eq!(t.step(&keys, |_| Some(same)), Err(ChapError::SameSecrets));

    // CHAP_I without CHAP_C, and an oversized challenge.
    let mut t = ChapTarget::new(&ChapAlgorithm::ALL);
    let (alg, id, c) = challenge(&mut t, "7");
    let resp = encode_hex(&alg.response(id, b"0123456789ab", &c));
    let keys = kv(&[("CHAP_N", "alice"), ("CHAP_R", &resp), ("CHAP_I", "1")]);
    assert_eq!(
        t.step(&keys, |_| Some(creds(true))),
        Err(ChapError::Missing("CHAP_C"))
    );
    let mut t = ChapTarget::new(&ChapAlgorithm::ALL);
    let (alg, id, c) = challenge(&mut t, "7");
    let resp = encode_hex(&alg.response(id, b"0123456789ab", &c));
    let big = encode_hex(&[1u8; MAX_CHALLENGE_LEN + 1]);
    let keys = kv(&[
        ("CHAP_N", "alice"),
        ("CHAP_R", &resp),
        ("CHAP_I", "1"),
        ("CHAP_C", &big),
    ]);
    assert!(matches!(
        t.step(&keys, |_| Some(creds(true))),
        Err(ChapError::Malformed { key: "CHAP_C", .. })
    ));
}

#[test]
fn secrets_stay_out_of_debug_output() {
    let s = format!("{:?}", creds(true));
    assert!(!s.contains("0123456789ab"));
}

proptest! {
    #[test]
    fn hex_and_base64_round_trip(b in proptest::collection::vec(any::<u8>(), 1..64)) {
        prop_assert_eq!(decode_binary(&encode_hex(&b)).unwrap(), b.clone());
        prop_assert_eq!(decode_binary(&encode_base64(&b)).unwrap(), b);
    }

    #[test]
    fn decode_never_panics(s in "\\PC{0,40}") {
        let _ = decode_binary(&s);
    }

    #[test]
    fn constant_time_eq_is_eq(a in proptest::collection::vec(any::<u8>(), 0..8), b in proptest::collection::vec(any::<u8>(), 0..8)) {
        prop_assert_eq!(constant_time_eq(&a, &b), a == b);
    }
}
