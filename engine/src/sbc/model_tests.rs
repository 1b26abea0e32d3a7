//! Property test: random sequences of WRITE, READ, UNMAP, WRITE SAME and COMPARE
//! AND WRITE agree with a plain in-memory model of the disk (unmapped blocks read
//! zero: the RAM backend has LBPRZ). Mutating commands go in batches submitted
//! together on a backend whose completions arrive late, so the task set and the
//! write ranges really interleave them; for the commands generated here (each one
//! backend operation, or exclusive) the outcome is that of submission order.

use proptest::prelude::*;

use super::test_cdb::*;
use crate::cmd::{CmdResponse, DataDir};
use crate::sense::{asc, ScsiStatus, SenseKey};

const BLOCKS: u64 = 256;
const BS: usize = 512;

#[derive(Clone, Debug)]
enum Op {
    Write {
        lba: u64,
        blocks: u64,
        byte: u8,
    },
    Unmap {
        lba: u64,
        blocks: u64,
    },
    WriteSame {
        lba: u64,
        blocks: u64,
        byte: u8,
        unmap: bool,
    },
    Caw {
        lba: u64,
        blocks: u64,
        expect_model: bool,
        byte: u8,
    },
}

fn extent() -> impl Strategy<Value = (u64, u64)> {
    (0..BLOCKS).prop_flat_map(|lba| (Just(lba), 1..=(BLOCKS - lba).min(16)))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (extent(), any::<u8>()).prop_map(|((lba, blocks), byte)| Op::Write { lba, blocks, byte }),
        extent().prop_map(|(lba, blocks)| Op::Unmap { lba, blocks }),
        (extent(), prop_oneof![Just(0u8), any::<u8>()], any::<bool>()).prop_map(
            |((lba, blocks), byte, unmap)| Op::WriteSame {
                lba,
                blocks,
                byte,
                unmap
            }
        ),
        (extent(), any::<bool>(), any::<u8>()).prop_map(|((lba, blocks), expect_model, byte)| {
            Op::Caw {
                lba,
                blocks,
                expect_model,
                byte,
            }
        }),
    ]
}

/// Block contents are derived from a byte and the block number, so that data
/// moved to the wrong block shows.
fn fill(lba: u64, blocks: u64, byte: u8) -> Vec<u8> {
    let mut v = Vec::with_capacity(blocks as usize * BS);
    for b in lba..lba + blocks {
        v.extend((0..BS).map(|i| byte ^ (b as u8) ^ (i as u8 & 0x0f)));
    }
    v
}

fn range(lba: u64, blocks: u64) -> std::ops::Range<usize> {
    lba as usize * BS..(lba + blocks) as usize * BS
}

/// The command for `op` against the model state at submission, and what the model
/// expects of it (applied to `model`).
fn command(op: &Op, model: &mut [u8]) -> ((Vec<u8>, DataDir, Vec<u8>), Option<u8>) {
    match *op {
        Op::Write { lba, blocks, byte } => {
            let data = fill(lba, blocks, byte);
            model[range(lba, blocks)].copy_from_slice(&data);
            (
                (rw16(0x8a, lba, blocks as u32), DataDir::ToDevice, data),
                None,
            )
        }
        Op::Unmap { lba, blocks } => {
            model[range(lba, blocks)].fill(0);
            let p = unmap_params(&[(lba, blocks as u32)]);
            ((unmap_cdb(p.len() as u16), DataDir::ToDevice, p), None)
        }
        Op::WriteSame {
            lba,
            blocks,
            byte,
            unmap,
        } => {
            let block = vec![byte; BS];
            // With UNMAP the (thin, LBPRZ) blocks are deallocated: zeroes.
            model[range(lba, blocks)].fill(if unmap { 0 } else { byte });
            let mut c = rw16(0x93, lba, blocks as u32);
            if unmap {
                c[1] = 0x08;
            }
            ((c, DataDir::ToDevice, block), None)
        }
        Op::Caw {
            lba,
            blocks,
            expect_model,
            byte,
        } => {
            let r = range(lba, blocks);
            let mut verify = model[r.clone()].to_vec();
            let mut miscompare = None;
            if !expect_model {
                // Change one byte: the compare must fail there.
                let at = (byte as usize * 7) % verify.len();
                verify[at] ^= 0x80;
                miscompare = Some(0);
                let _ = at;
            }
            let new = fill(lba, blocks, byte);
            if expect_model {
                model[r].copy_from_slice(&new);
            }
            verify.extend_from_slice(&new);
            (
                (caw(lba, blocks as u8), DataDir::ToDevice, verify),
                miscompare,
            )
        }
    }
}

fn check_response(op: &Op, r: &CmdResponse, miscompare: Option<u8>) {
    match (op, miscompare) {
        (Op::Caw { byte, blocks, .. }, Some(_)) => {
            assert_eq!(r.status, ScsiStatus::CheckCondition, "{op:?}");
            let s = r.sense_data.expect("sense");
            assert_eq!(
                (s.key, s.asc),
                (SenseKey::Miscompare, asc::MISCOMPARE_DURING_VERIFY)
            );
            let len = *blocks as usize * BS;
            assert_eq!(s.information, Some(((*byte as usize * 7) % len) as u64));
        }
        _ => assert_eq!(r.status, ScsiStatus::Good, "{op:?}: {r:?}"),
    }
}

/// Submits `batch` together, applies it to `model` in submission order, and
/// checks each command's answer.
fn run_checked(f: &mut crate::testutil::Fixture, batch: &[Op], model: &mut [u8]) {
    let mut cmds = Vec::new();
    let mut expect = Vec::new();
    for op in batch {
        let (c, m) = command(op, model);
        cmds.push(c);
        expect.push(m);
    }
    let out = run_batch(f, cmds);
    for ((op, m), (r, _)) in batch.iter().zip(&expect).zip(&out) {
        check_response(op, r, *m);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_the_model(
        batches in prop::collection::vec(prop::collection::vec(op(), 1..4), 1..10),
        reads in prop::collection::vec(extent(), 10),
    ) {
        let mut f = deferred_fixture(BLOCKS * BS as u64);
        let mut model = vec![0u8; BLOCKS as usize * BS];
        for (i, batch) in batches.iter().enumerate() {
            run_checked(&mut f, batch, &mut model);
            let (lba, blocks) = reads[i % reads.len()];
            let (r, d) = f.read_in(&rw16(0x88, lba, blocks as u32), blocks as usize * BS);
            prop_assert_eq!(r.status, ScsiStatus::Good);
            prop_assert!(d == model[range(lba, blocks)], "read {}+{} after batch {}", lba, blocks, i);
        }
        let (r, d) = f.read_in(&rw16(0x88, 0, BLOCKS as u32), BLOCKS as usize * BS);
        prop_assert_eq!(r.status, ScsiStatus::Good);
        prop_assert!(d == model, "final medium differs from the model");
    }
}

/// Found by the property test: an UNMAP held back by a COMPARE AND WRITE on one
/// of its blocks, then a WRITE SAME over the UNMAP's other blocks. The WRITE SAME
/// overlaps nothing exclusive, but it must not overtake the older UNMAP.
#[test]
fn a_write_does_not_overtake_an_older_one_held_back() {
    let mut f = deferred_fixture(BLOCKS * BS as u64);
    let mut model = vec![0u8; BLOCKS as usize * BS];
    let batch = [
        Op::Caw {
            lba: 118,
            blocks: 1,
            expect_model: false,
            byte: 52,
        },
        Op::Unmap {
            lba: 110,
            blocks: 14,
        },
        Op::WriteSame {
            lba: 106,
            blocks: 12,
            byte: 234,
            unmap: false,
        },
    ];
    run_checked(&mut f, &batch, &mut model);
    let (r, d) = f.read_in(&rw16(0x88, 0, BLOCKS as u32), BLOCKS as usize * BS);
    assert_eq!(r.status, ScsiStatus::Good);
    assert!(d == model, "blocks 106-117 hold the WRITE SAME's data");
}
