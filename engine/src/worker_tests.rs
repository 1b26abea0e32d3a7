//! Tests of the worker: the command pipeline, task attributes, aborts.

use crate::cmd::{DataDir, Residual};
use crate::sense::{asc, SenseKey};
use crate::testutil::{assert_check, assert_good, Fixture};

fn write10(lba: u32, blocks: u16) -> [u8; 10] {
    let l = lba.to_be_bytes();
    let n = blocks.to_be_bytes();
    [0x2a, 0, l[0], l[1], l[2], l[3], 0, n[0], n[1], 0]
}

fn read10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = write10(lba, blocks);
    c[0] = 0x28;
    c
}

#[test]
fn write_then_read_back() {
    for (kind, mut f) in Fixture::both() {
        let data: Vec<u8> = (0..1024).map(|i| (i * 7) as u8).collect();
        let (r, _) = f.run(&write10(10, 2), DataDir::ToDevice, data.clone());
        assert_good(&r);
        let (r, back) = f.read_in(&read10(10, 2), 1024);
        assert_good(&r);
        assert_eq!(back, data, "{kind}");
    }
}

#[test]
fn read_past_the_end_is_lba_out_of_range() {
    for (_, mut f) in Fixture::both() {
        let last = (f.lun.num_blocks() - 1) as u32;
        let (r, _) = f.read_in(&read10(last, 2), 1024);
        assert_check(&r, SenseKey::IllegalRequest, asc::LBA_OUT_OF_RANGE);
    }
}

#[test]
fn short_allocation_reports_overflow_and_long_underflow() {
    let mut f = Fixture::ram();
    let (r, d) = f.read_in(&[0x12, 0, 0, 0, 36, 0], 8);
    assert_good(&r);
    assert_eq!(d.len(), 8);
    assert_eq!(r.residual, Residual::Over(28));
    let (r, _) = f.read_in(&[0x12, 0, 0, 0, 36, 0], 100);
    assert_eq!(r.residual, Residual::Under(64));
}

#[test]
fn unknown_opcode_and_unmapped_lun() {
    let mut f = Fixture::ram();
    let (r, _) = f.read_in(&[0xff, 0, 0, 0, 0, 0], 0);
    assert_check(
        &r,
        SenseKey::IllegalRequest,
        asc::INVALID_COMMAND_OPERATION_CODE,
    );
    let mut c = f.cmd(&[0x00, 0, 0, 0, 0, 0], DataDir::None, vec![]);
    c.lun = 7;
    let t = c.token;
    let n = f.nexus.clone();
    f.worker.submit(&n, c);
    let done = f.wait_token(t);
    assert_check(
        &done.response.unwrap(),
        SenseKey::IllegalRequest,
        asc::LOGICAL_UNIT_NOT_SUPPORTED,
    );
}

#[test]
fn new_nexus_sees_power_on_unit_attention_once() {
    let mut f = Fixture::ram();
    let n2 = f.second_nexus("iqn.x:second,i,0x1");
    let (r, _) = f.run_on(&n2, &[0, 0, 0, 0, 0, 0], DataDir::None, vec![]);
    assert_good(&r);
}
