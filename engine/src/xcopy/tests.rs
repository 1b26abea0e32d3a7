//! EXTENDED COPY and RECEIVE COPY RESULTS through the worker: copies within and
//! across LUNs of the registry, and every error class.

use std::sync::Arc;

use backends::ram::{RamBackend, RamStore};

use super::parse::tests::{param_list, seg_desc, target_desc};
use super::*;
use crate::cmd::{CmdResponse, DataDir};
use crate::lun::LunConfig;
use crate::sense::{asc, FieldPointer, SenseKey};
use crate::testutil::{assert_check, assert_good, uuid_for, Fixture};

const HOLD: u8 = 0b00;
const NO_HOLD: u8 = 0b10;
const NONE: u8 = 0b11;

fn xcopy_cdb(len: usize) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = EXTENDED_COPY;
    c[10..14].copy_from_slice(&(len as u32).to_be_bytes());
    c
}

fn rcr_cdb(sa: u8, list_id: u8, alloc: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = RECEIVE_COPY_RESULTS;
    c[1] = sa;
    c[2] = list_id;
    c[10..14].copy_from_slice(&alloc.to_be_bytes());
    c
}

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

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

fn xcopy(f: &mut Fixture, list: Vec<u8>) -> CmdResponse {
    let cdb = xcopy_cdb(list.len());
    f.run(&cdb, DataDir::ToDevice, list).0
}

fn write(f: &mut Fixture, lba: u32, data: &[u8]) {
    let (r, _) = f.run(
        &write10(lba, (data.len() / 512) as u16),
        DataDir::ToDevice,
        data.to_vec(),
    );
    assert_good(&r);
}

fn read(f: &mut Fixture, lba: u32, blocks: u16) -> Vec<u8> {
    let (r, d) = f.read_in(&read10(lba, blocks), usize::from(blocks) * 512);
    assert_good(&r);
    d
}

/// A second LUN in the registry (not mapped to the nexus), with its store.
fn second_lun(f: &Fixture, block_size: u32, read_only: bool) -> (Arc<Lun>, Arc<RamStore>) {
    let store = RamStore::new(16 << 20);
    let mut cfg = LunConfig::new("lun1", uuid_for("lun1"));
    cfg.block_size = block_size;
    cfg.read_only = read_only;
    let lun = Lun::new(cfg, Arc::new(RamBackend(store.clone()))).unwrap();
    assert!(f.registry.add(lun.clone()));
    (lun, store)
}

fn copy_status(f: &mut Fixture, list_id: u8) -> (CmdResponse, Vec<u8>) {
    f.read_in(&rcr_cdb(0x00, list_id, 1024), 1024)
}

fn sense_of(r: &CmdResponse) -> Sense {
    r.sense_data.expect("sense")
}

#[test]
fn copy_within_one_lun_and_copy_status() {
    let mut f = Fixture::ram();
    let naa = f.lun.naa();
    let data = pattern(16 * 512, 3);
    write(&mut f, 0, &data);
    let list = param_list(
        1,
        HOLD,
        &[target_desc(&naa, 512)],
        &[seg_desc(0, 0, 16, 0, 1000)],
    );
    let r = xcopy(&mut f, list);
    assert_good(&r);
    assert_eq!(read(&mut f, 1000, 16), data);

    let (r, d) = copy_status(&mut f, 1);
    assert_good(&r);
    assert_eq!(d.len(), 12);
    assert_eq!(d[4], CopyStatus::Completed as u8);
    assert_eq!(&d[5..7], &1u16.to_be_bytes());
    assert_eq!(d[7], 0);
    assert_eq!(&d[8..12], &(16u32 * 512).to_be_bytes());
    // Delivered: gone.
    let (r, _) = copy_status(&mut f, 1);
    assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
    assert_eq!(
        sense_of(&r).field,
        Some(FieldPointer {
            cdb: true,
            byte: 2,
            bit: Some(7)
        })
    );
}

#[test]
fn multi_chunk_and_overlapping_copies() {
    let mut f = Fixture::ram();
    let naa = f.lun.naa();
    // 3 MiB + a bit: several chunks.
    let blocks = 6200u16;
    let data = pattern(usize::from(blocks) * 512, 9);
    write(&mut f, 0, &data);
    let r = xcopy(
        &mut f,
        param_list(
            2,
            NO_HOLD,
            &[target_desc(&naa, 512)],
            &[seg_desc(0, 0, blocks, 0, 20000)],
        ),
    );
    assert_good(&r);
    assert_eq!(read(&mut f, 20000, blocks), data);
    // Overlap, destination after the source: copied from the end.
    let r = xcopy(
        &mut f,
        param_list(
            3,
            NONE,
            &[target_desc(&naa, 512)],
            &[seg_desc(0, 0, blocks, 0, 100)],
        ),
    );
    assert_good(&r);
    assert_eq!(read(&mut f, 100, blocks), data);
    // Overlap, destination before the source: copied from the start.
    let r = xcopy(
        &mut f,
        param_list(
            4,
            NONE,
            &[target_desc(&naa, 512)],
            &[seg_desc(0, 0, blocks, 100, 50)],
        ),
    );
    assert_good(&r);
    assert_eq!(read(&mut f, 50, blocks), data);
}

#[test]
fn copy_across_two_luns_both_ways() {
    let mut f = Fixture::ram();
    let (lun1, store) = second_lun(&f, 512, false);
    let naa0 = f.lun.naa();
    let naa1 = lun1.naa();
    let data = pattern(64 * 512, 5);
    write(&mut f, 10, &data);
    // LUN 0 -> LUN 1 (descriptor 1), two segments.
    let r = xcopy(
        &mut f,
        param_list(
            1,
            HOLD,
            &[target_desc(&naa0, 512), target_desc(&naa1, 0)],
            &[seg_desc(0, 1, 32, 10, 500), seg_desc(0, 1, 32, 42, 532)],
        ),
    );
    assert_good(&r);
    let mut back = vec![0u8; data.len()];
    store.read_at(500 * 512, &mut back).unwrap();
    assert_eq!(back, data);
    // LUN 1 -> LUN 0.
    let other = pattern(8 * 512, 77);
    store.write_at(7 * 512, &other).unwrap();
    let r = xcopy(
        &mut f,
        param_list(
            2,
            HOLD,
            &[target_desc(&naa1, 512), target_desc(&naa0, 512)],
            &[seg_desc(0, 1, 8, 7, 3000)],
        ),
    );
    assert_good(&r);
    assert_eq!(read(&mut f, 3000, 8), other);
    let (_, d) = copy_status(&mut f, 1);
    assert_eq!(&d[5..7], &2u16.to_be_bytes());
    assert_eq!(&d[8..12], &(64u32 * 512).to_be_bytes());
}

#[test]
fn copy_between_block_sizes_counts_blocks_by_dc() {
    let mut f = Fixture::ram();
    let (lun1, store) = second_lun(&f, 4096, false);
    let naa0 = f.lun.naa();
    let naa1 = lun1.naa();
    let data = pattern(16 * 512, 1);
    write(&mut f, 0, &data);
    // 16 source blocks of 512 = 2 destination blocks of 4096.
    let r = xcopy(
        &mut f,
        param_list(
            1,
            HOLD,
            &[target_desc(&naa0, 512), target_desc(&naa1, 4096)],
            &[seg_desc(0, 1, 16, 0, 3)],
        ),
    );
    assert_good(&r);
    let mut back = vec![0u8; data.len()];
    store.read_at(3 * 4096, &mut back).unwrap();
    assert_eq!(back, data);
    // DC set: 1 destination block = 8 source blocks.
    let mut seg = seg_desc(0, 1, 1, 8, 10);
    seg[1] |= 0x02;
    let r = xcopy(
        &mut f,
        param_list(
            2,
            HOLD,
            &[target_desc(&naa0, 512), target_desc(&naa1, 4096)],
            &[seg],
        ),
    );
    assert_good(&r);
    let mut back = vec![0u8; 4096];
    store.read_at(10 * 4096, &mut back).unwrap();
    assert_eq!(back, data[4096..]);
    // An inexact segment (3 source blocks into 4096-byte blocks) is refused,
    // pointing at NUMBER OF BLOCKS.
    let r = xcopy(
        &mut f,
        param_list(
            3,
            HOLD,
            &[target_desc(&naa0, 512), target_desc(&naa1, 4096)],
            &[seg_desc(0, 1, 3, 0, 0)],
        ),
    );
    assert_check(
        &r,
        SenseKey::IllegalRequest,
        asc::INVALID_FIELD_IN_PARAMETER_LIST,
    );
    assert_eq!(sense_of(&r).field.map(|p| p.byte), Some(16 + 64 + 10));
    // A descriptor whose DISK BLOCK LENGTH disagrees with the LUN.
    let r = xcopy(
        &mut f,
        param_list(
            4,
            HOLD,
            &[target_desc(&naa0, 512), target_desc(&naa1, 512)],
            &[seg_desc(0, 1, 8, 0, 0)],
        ),
    );
    assert_check(
        &r,
        SenseKey::IllegalRequest,
        asc::INVALID_FIELD_IN_PARAMETER_LIST,
    );
    assert_eq!(sense_of(&r).field.map(|p| p.byte), Some(16 + 32 + 29));
}

#[test]
fn unknown_naa_and_missing_descriptor_are_unreachable() {
    let mut f = Fixture::ram();
    let naa = f.lun.naa();
    let mut other = naa;
    other[15] ^= 0xff;
    let r = xcopy(
        &mut f,
        param_list(
            1,
            HOLD,
            &[target_desc(&naa, 512), target_desc(&other, 512)],
            &[seg_desc(0, 0, 1, 0, 1), seg_desc(0, 1, 1, 0, 1)],
        ),
    );
    assert_check(
        &r,
        SenseKey::CopyAborted,
        asc::COPY_TARGET_DEVICE_NOT_REACHABLE,
    );
    assert_eq!(sense_of(&r).command_specific, Some(1));
    // Fixed format: segment number in bytes 10-11.
    let s = r.sense.as_ref().unwrap();
    assert_eq!(s[2], 0x0a);
    assert_eq!(&s[10..12], &[0, 1]);
    // The failure is on record.
    let (r, d) = copy_status(&mut f, 1);
    assert_good(&r);
    assert_eq!(d[4], CopyStatus::CompletedWithErrors as u8);
    // libiscsi ValidSegDescr: destination index 1 with one descriptor.
    let r = xcopy(
        &mut f,
        param_list(
            1,
            HOLD,
            &[target_desc(&naa, 512)],
            &[seg_desc(0, 1, 1, 0, 1)],
        ),
    );
    assert_check(
        &r,
        SenseKey::CopyAborted,
        asc::COPY_TARGET_DEVICE_NOT_REACHABLE,
    );
}

#[test]
fn bad_descriptor_types_and_parse_errors() {
    let mut f = Fixture::ram();
    let naa = f.lun.naa();
    let mut t = target_desc(&naa, 512);
    t[0] = 0xe0;
    let r = xcopy(
        &mut f,
        param_list(1, HOLD, &[t], &[seg_desc(0, 0, 1, 0, 1)]),
    );
    assert_check(
        &r,
        SenseKey::IllegalRequest,
        asc::UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE,
    );
    let mut s = vec![0u8; 20];
    s[0] = 0x03;
    s[3] = 0x10;
    let r = xcopy(&mut f, param_list(1, HOLD, &[target_desc(&naa, 512)], &[s]));
    assert_check(
        &r,
        SenseKey::IllegalRequest,
        asc::UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE,
    );
    // LIST ID USAGE 01b is reserved.
    let r = xcopy(
        &mut f,
        param_list(
            1,
            0b01,
            &[target_desc(&naa, 512)],
            &[seg_desc(0, 0, 1, 0, 1)],
        ),
    );
    assert_check(
        &r,
        SenseKey::IllegalRequest,
        asc::INVALID_FIELD_IN_PARAMETER_LIST,
    );
    assert_eq!(
        sense_of(&r).field,
        Some(FieldPointer {
            cdb: false,
            byte: 1,
            bit: Some(4)
        })
    );
    // Header shorter than 16 bytes; a list truncated by PARAMETER LIST LENGTH.
    let r = xcopy(&mut f, vec![0u8; 8]);
    assert_check(
        &r,
        SenseKey::IllegalRequest,
        asc::PARAMETER_LIST_LENGTH_ERROR,
    );
    let mut list = param_list(
        1,
        HOLD,
        &[target_desc(&naa, 512)],
        &[seg_desc(0, 0, 1, 0, 1)],
    );
    list.truncate(16 + 31);
    let r = xcopy(&mut f, list);
    assert_check(
        &r,
        SenseKey::IllegalRequest,
        asc::PARAMETER_LIST_LENGTH_ERROR,
    );
    // PARAMETER LIST LENGTH zero: nothing to do, GOOD.
    let (r, _) = f.run(&xcopy_cdb(0), DataDir::None, Vec::new());
    assert_good(&r);
    // Parse errors leave no record.
    let (r, _) = copy_status(&mut f, 1);
    assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
}

#[test]
fn out_of_range_aborts_at_the_segment_and_is_reported() {
    let mut f = Fixture::ram();
    let naa = f.lun.naa();
    let last = f.lun.num_blocks() - 1;
    let data = pattern(4 * 512, 4);
    write(&mut f, 0, &data);
    let list = param_list(
        5,
        HOLD,
        &[target_desc(&naa, 512)],
        &[seg_desc(0, 0, 4, 0, 64), seg_desc(0, 0, 4, 0, last)],
    );
    let r = xcopy(&mut f, list);
    assert_check(&r, SenseKey::CopyAborted, asc::NO_ADDITIONAL_SENSE);
    let s = sense_of(&r);
    assert_eq!(s.command_specific, Some(1));
    // Segment pointer at the DESTINATION LBA of segment 1.
    assert_eq!(s.field.map(|p| p.byte), Some(16 + 32 + 28 + 20));
    assert_eq!(s.information, None);
    // Segment 0 was copied before the error.
    assert_eq!(read(&mut f, 64, 4), data);

    let (r, d) = copy_status(&mut f, 5);
    assert_good(&r);
    assert_eq!(d[4], CopyStatus::CompletedWithErrors as u8);
    assert_eq!(&d[5..7], &2u16.to_be_bytes());
    assert_eq!(&d[8..12], &(4u32 * 512).to_be_bytes());

    let (r, d) = f.read_in(&rcr_cdb(0x04, 5, 1024), 1024);
    assert_good(&r);
    let sense = r.sense.clone();
    assert!(sense.is_none());
    assert_eq!(d[56], 0x02);
    let slen = usize::from(u16::from_be_bytes([d[58], d[59]]));
    assert_eq!(slen, 18);
    assert_eq!(&d[..4], &((56 + slen) as u32).to_be_bytes());
    assert_eq!(d[60], 0x70);
    assert_eq!(d[60 + 2], 0x0a);
    assert_eq!(&d[60 + 10..60 + 12], &[0, 1]);
    // Delivered whole: discarded.
    let (r, d) = f.read_in(&rcr_cdb(0x04, 5, 1024), 1024);
    assert_good(&r);
    assert_eq!(d, vec![0u8; 4]);

    // Source out of range, in the first segment.
    let r = xcopy(
        &mut f,
        param_list(
            6,
            HOLD,
            &[target_desc(&naa, 512)],
            &[seg_desc(0, 0, 2, last, 0)],
        ),
    );
    assert_check(&r, SenseKey::CopyAborted, asc::NO_ADDITIONAL_SENSE);
    let s = sense_of(&r);
    assert_eq!(s.command_specific, Some(0));
    assert_eq!(s.field.map(|p| p.byte), Some(16 + 32 + 12));
}

#[test]
fn read_only_destination_is_data_protect() {
    let mut f = Fixture::ram();
    let (lun1, _) = second_lun(&f, 512, true);
    let naa0 = f.lun.naa();
    let r = xcopy(
        &mut f,
        param_list(
            1,
            HOLD,
            &[target_desc(&naa0, 512), target_desc(&lun1.naa(), 512)],
            &[seg_desc(0, 1, 1, 0, 0)],
        ),
    );
    assert_check(&r, SenseKey::DataProtect, asc::WRITE_PROTECTED);
    // Reading from it is fine.
    let r = xcopy(
        &mut f,
        param_list(
            2,
            HOLD,
            &[target_desc(&lun1.naa(), 512), target_desc(&naa0, 512)],
            &[seg_desc(0, 1, 1, 0, 0)],
        ),
    );
    assert_good(&r);
}

#[test]
fn list_identifier_rules() {
    let mut f = Fixture::ram();
    let naa = f.lun.naa();
    let list = |id, usage| {
        param_list(
            id,
            usage,
            &[target_desc(&naa, 512)],
            &[seg_desc(0, 0, 1, 0, 1)],
        )
    };
    // 11b keeps nothing.
    assert_good(&xcopy(&mut f, list(3, NONE)));
    let (r, _) = copy_status(&mut f, 3);
    assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
    // A copy with this list id in progress on this nexus.
    let key = f.nexus.key.clone();
    let id = f
        .lun
        .copy
        .lock()
        .unwrap()
        .begin(&key, 9, ListIdUsage::Hold)
        .unwrap()
        .unwrap();
    let (r, d) = copy_status(&mut f, 9);
    assert_good(&r);
    assert_eq!(d[4], CopyStatus::InProgress as u8);
    let r = xcopy(&mut f, list(9, HOLD));
    assert_check(&r, SenseKey::IllegalRequest, asc::OPERATION_IN_PROGRESS);
    // Another nexus may use the same list id.
    let n2 = f.second_nexus("iqn.x:other,i,0x2");
    let l = list(9, HOLD);
    let (r, _) = f.run_on(&n2, &xcopy_cdb(l.len()), DataDir::ToDevice, l);
    assert_good(&r);
    // An unfinished job that goes away (aborted) leaves "completed with errors".
    drop(job::CopyJob::new(f.lun.clone(), Some(id), Vec::new(), 0));
    let (_, d) = copy_status(&mut f, 9);
    assert_eq!(d[4], CopyStatus::CompletedWithErrors as u8);
    // Nexus loss and LU reset discard.
    assert_good(&xcopy(&mut f, list(10, HOLD)));
    on_nexus_loss(&f.lun, &key);
    let (r, _) = copy_status(&mut f, 10);
    assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
    assert_good(&xcopy(&mut f, list(11, HOLD)));
    on_lun_reset(&f.lun);
    let (r, _) = copy_status(&mut f, 11);
    assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
}

#[test]
fn operating_parameters_and_unsupported_service_actions() {
    let mut f = Fixture::ram();
    let (r, d) = f.read_in(&rcr_cdb(0x03, 0, 1024), 1024);
    assert_good(&r);
    assert_eq!(d.len(), 46);
    assert_eq!(&d[..4], &42u32.to_be_bytes());
    assert_eq!(d[4] & 1, 1);
    assert_eq!(&d[10..12], &(MAX_SEGMENT_DESCRIPTORS as u16).to_be_bytes());
    assert_eq!(&d[20..24], &[0; 4]);
    assert_eq!(&d[44..46], &[0x02, 0xe4]);
    // Truncated to the allocation length.
    let (r, d) = f.read_in(&rcr_cdb(0x03, 0, 10), 1024);
    assert_good(&r);
    assert_eq!(d.len(), 10);
    // RECEIVE DATA is not supported.
    let (r, _) = f.read_in(&rcr_cdb(0x01, 0, 1024), 1024);
    assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
    // Nor is EXTENDED COPY(LID4).
    let mut c = xcopy_cdb(0);
    c[1] = 0x01;
    let (r, _) = f.run(&c, DataDir::None, Vec::new());
    assert_check(&r, SenseKey::IllegalRequest, asc::INVALID_FIELD_IN_CDB);
}

#[test]
fn third_party_copy_vpd_page_lists_the_commands() {
    let f = Fixture::ram();
    let p = third_party_copy_vpd(&f.lun);
    assert_eq!(p[1], 0x8f);
    assert_eq!(usize::from(u16::from_be_bytes([p[2], p[3]])), p.len() - 4);
    // Walk the descriptors; each is a multiple of 4 long.
    let mut off = 4;
    let mut types = Vec::new();
    while off < p.len() {
        let ty = u16::from_be_bytes([p[off], p[off + 1]]);
        let len = usize::from(u16::from_be_bytes([p[off + 2], p[off + 3]]));
        assert_eq!(len % 4, 0);
        if ty == 1 {
            let list = &p[off + 5..off + 5 + usize::from(p[off + 4])];
            assert_eq!(list, &[0x83, 1, 0x00, 0x84, 3, 0x00, 0x03, 0x04]);
        }
        types.push(ty);
        off += 4 + len;
    }
    assert_eq!(off, p.len());
    assert_eq!(types, vec![0x0001, 0x0004, 0x0008, 0x8001]);
}

#[test]
fn write_range_only_when_every_destination_is_this_lun() {
    let f = Fixture::ram();
    let (lun1, _) = second_lun(&f, 512, false);
    let naa0 = f.lun.naa();
    let p = parse_xcopy(&param_list(
        1,
        HOLD,
        &[target_desc(&naa0, 512), target_desc(&lun1.naa(), 512)],
        &[seg_desc(1, 0, 8, 0, 100), seg_desc(0, 0, 4, 0, 40)],
    ))
    .unwrap();
    let plans = job::resolve(&f.registry, &f.lun, &p).unwrap();
    assert_eq!(
        job::write_range(&f.lun, &plans),
        Some(crate::exec::LbaRange {
            lba: 40,
            blocks: 68,
            exclusive: false
        })
    );
    let p = parse_xcopy(&param_list(
        1,
        HOLD,
        &[target_desc(&naa0, 512), target_desc(&lun1.naa(), 512)],
        &[seg_desc(0, 1, 8, 0, 100)],
    ))
    .unwrap();
    let plans = job::resolve(&f.registry, &f.lun, &p).unwrap();
    assert_eq!(job::write_range(&f.lun, &plans), None);
}

#[test]
fn stopped_copy_target_is_unreachable() {
    let mut f = Fixture::ram();
    let (lun1, _) = second_lun(&f, 512, false);
    lun1.media.lock().unwrap().stopped = true;
    let naa0 = f.lun.naa();
    let list = param_list(
        1,
        HOLD,
        &[target_desc(&naa0, 512), target_desc(&lun1.naa(), 512)],
        &[seg_desc(0, 1, 1, 0, 0)],
    );
    let r = xcopy(&mut f, list.clone());
    assert_check(
        &r,
        SenseKey::CopyAborted,
        asc::COPY_TARGET_DEVICE_NOT_REACHABLE,
    );
    lun1.media.lock().unwrap().stopped = false;
    let r = xcopy(&mut f, list);
    assert_good(&r);
}
