//! Unit tests of the parts that need no target.

use super::scsi::sense_of;
use super::seq::{serial_lt, Seq};
use super::*;

#[test]
fn lun_encoding() {
    assert_eq!(encode_lun(0).unwrap(), [0; 8]);
    assert_eq!(encode_lun(5).unwrap(), [0, 5, 0, 0, 0, 0, 0, 0]);
    assert_eq!(encode_lun(300).unwrap(), [0x41, 0x2c, 0, 0, 0, 0, 0, 0]);
    assert!(encode_lun(0x4000).is_err());
}

#[test]
fn sense_segment() {
    assert_eq!(sense_of(&[]).unwrap(), Vec::<u8>::new());
    assert_eq!(sense_of(&[0, 2, 0x70, 0, 9]).unwrap(), vec![0x70, 0]);
    assert!(sense_of(&[0, 9, 0x70]).is_err());
}

#[test]
fn send_targets_groups() {
    let t =
        b"TargetName=a\0TargetAddress=1.2.3.4:3260,1\0TargetAddress=[::1]:3260,1\0TargetName=b\0";
    let got = parse_send_targets(t).unwrap();
    assert_eq!(
        got,
        vec![
            (
                "a".to_string(),
                vec!["1.2.3.4:3260,1".to_string(), "[::1]:3260,1".to_string()]
            ),
            ("b".to_string(), vec![])
        ]
    );
    assert!(parse_send_targets(b"TargetAddress=x\0").is_err());
}

#[test]
fn serial_numbers() {
    assert!(serial_lt(1, 2));
    assert!(serial_lt(u32::MAX, 0));
    assert!(!serial_lt(2, 2));
    let mut s = Seq::new();
    s.cmd_sn = 5;
    s.on_window(5, 3); // MaxCmdSN < ExpCmdSN - 1: ignored
    assert_eq!(s.max_cmd_sn, 1);
    s.on_window(5, 4); // window closed but valid
    assert!(!s.window_open());
    s.on_window(5, 20);
    assert!(s.window_open());
}

#[test]
fn sense_keys() {
    let mut fixed = vec![0u8; 18];
    fixed[0] = 0x70;
    fixed[2] = 0x05;
    fixed[12] = 0x21;
    let r = ScsiResult {
        status: CHECK_CONDITION,
        sense: fixed,
        ..ScsiResult::default()
    };
    assert_eq!(r.sense_key(), Some((5, 0x21, 0)));
    assert!(r.good().is_err());
}
