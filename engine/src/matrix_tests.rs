//! The command matrix: for every row of the opcode table (each opcode and service
//! action) at least one case that succeeds and one that fails, each run through the
//! worker on a fresh LUN on every backend kind (RAM and a sparse io_uring file).
//!
//! A case is data: its CDB, data direction and data-out (or allocation length),
//! a LUN configuration tweak, setup commands (on the first or a second I_T nexus),
//! the expected status (GOOD, CONDITION MET, RESERVATION CONFLICT, or CHECK
//! CONDITION with an exact sense key and ASC/ASCQ) and, where it means something, a
//! check of the returned data, the sense data's fields or the medium afterwards.
//! Every failure of every case on every backend is collected and reported at once.
//!
//! `every_row_has_a_success_and_an_error_case` holds the table to the opcode
//! table: a command added without matrix cases fails it. The row a case covers is
//! the row its CDB decodes to, so a case cannot be filed under the wrong command.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crate::cmd::{CmdResponse, DataDir};
use crate::lun::LunConfig;
use crate::nexus::{iscsi_transport_id, Nexus};
use crate::opcodes;
use crate::sense::{asc, Asc, FieldPointer, ScsiStatus, SenseKey};
use crate::testutil::{uuid_for, Fixture};

const N2: &str = "iqn.2026-11.org.oxtarget:init2,i,0x000000000002";
const BS: usize = 512;
const SIZE: u64 = 64 << 20;
const BLOCKS: u64 = SIZE / BS as u64;
/// LUN size of the SANITIZE cases (they rewrite the whole medium).
const SMALL: u64 = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    One,
    Two,
}
use Who::{One, Two};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Good,
    Met,
    Conflict,
    Check(SenseKey, Asc),
}

impl Expect {
    fn success(self) -> bool {
        matches!(self, Expect::Good | Expect::Met)
    }
}

/// One LUN (on one backend) with two initiators on one target port.
struct Env {
    f: Fixture,
    n2: Arc<Nexus>,
}

fn describe(r: &CmdResponse) -> String {
    match r.sense_data {
        Some(s) => format!(
            "{:?} {:?} asc {:02x}/{:02x} field {:?} info {:?}",
            r.status, s.key, s.asc.0, s.asc.1, s.field, s.information
        ),
        None => format!("{:?}", r.status),
    }
}

impl Env {
    fn new(mut f: Fixture) -> Self {
        let n2 = f.second_nexus(N2);
        Env { f, n2 }
    }

    fn nexus(&self, who: Who) -> Arc<Nexus> {
        match who {
            One => self.f.nexus.clone(),
            Two => self.n2.clone(),
        }
    }

    /// Runs a command; data-in is cut to what was transferred.
    fn run(&mut self, who: Who, cdb: &[u8], dir: DataDir, data: Vec<u8>) -> (CmdResponse, Vec<u8>) {
        let n = self.nexus(who);
        let (r, mut d) = self.f.run_on(&n, cdb, dir, data);
        if dir == DataDir::FromDevice {
            d.truncate(r.transferred as usize);
        }
        (r, d)
    }

    /// Runs a command that must end as `want`.
    fn expect(
        &mut self,
        who: Who,
        cdb: &[u8],
        dir: DataDir,
        data: Vec<u8>,
        want: Expect,
    ) -> Result<(CmdResponse, Vec<u8>), String> {
        let (r, d) = self.run(who, cdb, dir, data);
        outcome(&r, want).map_err(|e| format!("{who:?} {cdb:02x?}: {e}"))?;
        Ok((r, d))
    }

    fn good(
        &mut self,
        who: Who,
        cdb: &[u8],
        dir: DataDir,
        data: Vec<u8>,
    ) -> Result<Vec<u8>, String> {
        Ok(self.expect(who, cdb, dir, data, Expect::Good)?.1)
    }

    fn data_in(&mut self, who: Who, cdb: &[u8], alloc: usize) -> Result<Vec<u8>, String> {
        self.good(who, cdb, DataDir::FromDevice, vec![0; alloc])
    }

    fn write(&mut self, lba: u64, data: Vec<u8>) -> Result<(), String> {
        let blocks = u16::try_from(data.len() / BS).map_err(|e| e.to_string())?;
        self.good(One, &rw10(0x2a, lba, blocks), DataDir::ToDevice, data)
            .map(drop)
    }

    fn read(&mut self, lba: u64, blocks: u16) -> Result<Vec<u8>, String> {
        self.data_in(One, &rw10(0x28, lba, blocks), usize::from(blocks) * BS)
    }

    /// Whether `who` may write: GOOD or RESERVATION CONFLICT.
    fn write_status(&mut self, who: Who) -> ScsiStatus {
        self.run(who, &rw10(0x2a, 0, 1), DataDir::ToDevice, vec![0; BS])
            .0
            .status
    }

    /// GET LBA STATUS descriptors (lba, blocks, status) from `lba`.
    fn lba_status(&mut self, lba: u64) -> Result<Vec<(u64, u32, u8)>, String> {
        let d = self.data_in(One, &get_lba_status(lba, 1024), 1024)?;
        Ok(d.get(8..)
            .unwrap_or(&[])
            .chunks_exact(16)
            .map(|c| (be64(c, 0), be32(c, 8), c[12]))
            .collect())
    }
}

/// Whether a response is the outcome expected.
fn outcome(r: &CmdResponse, want: Expect) -> Result<(), String> {
    let ok = match want {
        Expect::Good => r.status == ScsiStatus::Good,
        Expect::Met => r.status == ScsiStatus::ConditionMet,
        Expect::Conflict => r.status == ScsiStatus::ReservationConflict,
        Expect::Check(key, a) => {
            r.status == ScsiStatus::CheckCondition
                && r.sense_data.is_some_and(|s| s.key == key && s.asc == a)
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!("expected {want:?}, got {}", describe(r)))
    }
}

fn eq<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got:?}, want {want:?}"))
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(u32::MAX, |s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn be64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8).map_or(u64::MAX, |s| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_be_bytes(a)
    })
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

type Setup = Box<dyn Fn(&mut Env) -> Result<(), String>>;
type Check = Box<dyn Fn(&mut Env, &CmdResponse, &[u8]) -> Result<(), String>>;

struct Case {
    name: &'static str,
    who: Who,
    cdb: Vec<u8>,
    dir: DataDir,
    data: Vec<u8>,
    config: Option<fn(&mut LunConfig)>,
    size: u64,
    setup: Vec<Setup>,
    expect: Expect,
    checks: Vec<Check>,
    /// Also run on an `O_DIRECT` file (the block I/O success cases).
    direct: bool,
}

fn case(name: &'static str, cdb: Vec<u8>) -> Case {
    Case {
        name,
        who: One,
        cdb,
        dir: DataDir::None,
        data: Vec::new(),
        config: None,
        size: SIZE,
        setup: Vec::new(),
        expect: Expect::Good,
        checks: Vec::new(),
        direct: false,
    }
}

impl Case {
    fn out(mut self, data: Vec<u8>) -> Self {
        self.dir = DataDir::ToDevice;
        self.data = data;
        self
    }
    fn alloc(mut self, n: usize) -> Self {
        self.dir = DataDir::FromDevice;
        self.data = vec![0; n];
        self
    }
    fn on(mut self, who: Who) -> Self {
        self.who = who;
        self
    }
    fn cfg(mut self, f: fn(&mut LunConfig)) -> Self {
        self.config = Some(f);
        self
    }
    fn size(mut self, s: u64) -> Self {
        self.size = s;
        self
    }
    fn setup(mut self, f: impl Fn(&mut Env) -> Result<(), String> + 'static) -> Self {
        self.setup.push(Box::new(f));
        self
    }
    /// A setup command that must succeed.
    fn pre(self, who: Who, cdb: Vec<u8>, dir: DataDir, data: Vec<u8>) -> Self {
        self.setup(move |e| {
            let (r, _) = e.run(who, &cdb, dir, data.clone());
            if matches!(r.status, ScsiStatus::Good | ScsiStatus::ConditionMet) {
                Ok(())
            } else {
                Err(format!("{who:?} {cdb:02x?}: {}", describe(&r)))
            }
        })
    }
    fn pre_write(self, lba: u64, data: Vec<u8>) -> Self {
        self.setup(move |e| e.write(lba, data.clone()))
    }
    fn register(self, who: Who, key: u64) -> Self {
        self.pre(
            who,
            prout_cdb(SA_REGISTER_AND_IGNORE, 0, 24),
            DataDir::ToDevice,
            pr_params(0, key, 0),
        )
    }
    fn reserve(self, who: Who, key: u64, ptype: u8) -> Self {
        self.pre(
            who,
            prout_cdb(SA_RESERVE, ptype, 24),
            DataDir::ToDevice,
            pr_params(key, 0, 0),
        )
    }
    fn spc2(self, who: Who) -> Self {
        self.pre(who, vec![0x16, 0, 0, 0, 0, 0], DataDir::None, Vec::new())
    }
    fn stopped(self) -> Self {
        self.pre(One, vec![0x1b, 0, 0, 0, 0, 0], DataDir::None, Vec::new())
    }
    fn met(mut self) -> Self {
        self.expect = Expect::Met;
        self
    }
    fn conflict(mut self) -> Self {
        self.expect = Expect::Conflict;
        self
    }
    fn fails(mut self, key: SenseKey, a: Asc) -> Self {
        self.expect = Expect::Check(key, a);
        self
    }
    fn illegal(self, a: Asc) -> Self {
        self.fails(SenseKey::IllegalRequest, a)
    }
    /// INVALID FIELD IN CDB pointing at `byte` (and `bit`).
    fn bad_cdb(self, byte: u16, bit: Option<u8>) -> Self {
        self.illegal(asc::INVALID_FIELD_IN_CDB)
            .field(true, byte, bit)
    }
    /// INVALID FIELD IN PARAMETER LIST pointing at `byte` (and `bit`).
    fn bad_param(self, byte: u16, bit: Option<u8>) -> Self {
        self.illegal(asc::INVALID_FIELD_IN_PARAMETER_LIST)
            .field(false, byte, bit)
    }
    fn field(self, cdb: bool, byte: u16, bit: Option<u8>) -> Self {
        self.then(move |_, r, _| {
            eq(
                "field pointer",
                r.sense_data.and_then(|s| s.field),
                Some(FieldPointer { cdb, byte, bit }),
            )
        })
    }
    fn info(self, v: u64) -> Self {
        self.then(move |_, r, _| {
            eq(
                "INFORMATION",
                r.sense_data.and_then(|s| s.information),
                Some(v),
            )
        })
    }
    fn then(
        mut self,
        f: impl Fn(&mut Env, &CmdResponse, &[u8]) -> Result<(), String> + 'static,
    ) -> Self {
        self.checks.push(Box::new(f));
        self
    }
    /// The returned data must be exactly `want`.
    fn returns(self, want: Vec<u8>) -> Self {
        self.then(move |_, _, d| eq("data", d, want.as_slice()))
    }
    /// Afterwards `blocks` at `lba` read back as `want`.
    fn medium(self, lba: u64, want: Vec<u8>) -> Self {
        self.then(move |e, _, _| {
            let blocks = u16::try_from(want.len() / BS).map_err(|x| x.to_string())?;
            let got = e.read(lba, blocks)?;
            if got == want {
                Ok(())
            } else {
                let at = got.iter().zip(&want).position(|(a, b)| a != b);
                Err(format!(
                    "medium at LBA {lba}: first difference at byte {at:?}"
                ))
            }
        })
    }
    /// Afterwards a WRITE from `who` ends with `status`.
    fn write_by(self, who: Who, status: ScsiStatus) -> Self {
        self.then(move |e, _, _| eq("write status", e.write_status(who), status))
    }
    fn direct(mut self) -> Self {
        self.direct = true;
        self
    }
}

// ---- CDB and parameter list builders ----

fn rw6(op: u8, lba: u64, blocks: u8) -> Vec<u8> {
    let l = (lba as u32).to_be_bytes();
    vec![op, l[1] & 0x1f, l[2], l[3], blocks, 0]
}

fn rw10(op: u8, lba: u64, blocks: u16) -> Vec<u8> {
    let l = (lba as u32).to_be_bytes();
    let n = blocks.to_be_bytes();
    vec![op, 0, l[0], l[1], l[2], l[3], 0, n[0], n[1], 0]
}

fn rw12(op: u8, lba: u64, blocks: u32) -> Vec<u8> {
    let mut c = vec![0u8; 12];
    c[0] = op;
    c[2..6].copy_from_slice(&(lba as u32).to_be_bytes());
    c[6..10].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn rw16(op: u8, lba: u64, blocks: u32) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = op;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn with_b1(mut c: Vec<u8>, b1: u8) -> Vec<u8> {
    c[1] = b1;
    c
}

fn with(mut c: Vec<u8>, at: usize, v: u8) -> Vec<u8> {
    c[at] = v;
    c
}

fn caw(lba: u64, blocks: u8) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = 0x89;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[13] = blocks;
    c
}

fn watomic(lba: u64, blocks: u16) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = 0x9c;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[12..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn get_lba_status(lba: u64, alloc: u32) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = 0x9e;
    c[1] = 0x12;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&alloc.to_be_bytes());
    c
}

fn read_capacity16(lba: u64, alloc: u32) -> Vec<u8> {
    let mut c = get_lba_status(lba, alloc);
    c[1] = 0x10;
    c
}

fn unmap_cdb(len: u16) -> Vec<u8> {
    let l = len.to_be_bytes();
    vec![0x42, 0, 0, 0, 0, 0, 0, l[0], l[1], 0]
}

fn unmap_params(descs: &[(u64, u32)]) -> Vec<u8> {
    let mut p = vec![0u8; 8];
    for (lba, n) in descs {
        p.extend_from_slice(&lba.to_be_bytes());
        p.extend_from_slice(&n.to_be_bytes());
        p.extend_from_slice(&[0; 4]);
    }
    let bd = (p.len() - 8) as u16;
    p[0..2].copy_from_slice(&(bd + 6).to_be_bytes());
    p[2..4].copy_from_slice(&bd.to_be_bytes());
    p
}

fn sanitize(sa: u8, pll: u16) -> Vec<u8> {
    let l = pll.to_be_bytes();
    vec![0x48, sa, 0, 0, 0, 0, 0, l[0], l[1], 0]
}

/// MAINTENANCE IN with an allocation length.
fn maint_in(sa: u8, b2: u8, b3: u8, alloc: u32) -> Vec<u8> {
    let mut c = vec![0xa3, sa, b2, b3, 0, 0, 0, 0, 0, 0, 0, 0];
    c[6..10].copy_from_slice(&alloc.to_be_bytes());
    c
}

fn report_luns(select: u8, alloc: u32) -> Vec<u8> {
    let mut c = vec![0xa0, 0, select, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    c[6..10].copy_from_slice(&alloc.to_be_bytes());
    c
}

const SA_REGISTER: u8 = 0x00;
const SA_RESERVE: u8 = 0x01;
const SA_RELEASE: u8 = 0x02;
const SA_CLEAR: u8 = 0x03;
const SA_PREEMPT: u8 = 0x04;
const SA_PREEMPT_AND_ABORT: u8 = 0x05;
const SA_REGISTER_AND_IGNORE: u8 = 0x06;
const SA_REGISTER_AND_MOVE: u8 = 0x07;
const WE: u8 = 0x1;
const EA: u8 = 0x3;

fn prout_cdb(sa: u8, ptype: u8, len: u32) -> Vec<u8> {
    let l = len.to_be_bytes();
    vec![0x5f, sa, ptype, 0, 0, l[0], l[1], l[2], l[3], 0]
}

fn prin_cdb(sa: u8, alloc: u16) -> Vec<u8> {
    let a = alloc.to_be_bytes();
    vec![0x5e, sa, 0, 0, 0, 0, 0, a[0], a[1], 0]
}

fn pr_params(key: u64, sa_key: u64, flags: u8) -> Vec<u8> {
    let mut d = vec![0u8; 24];
    d[0..8].copy_from_slice(&key.to_be_bytes());
    d[8..16].copy_from_slice(&sa_key.to_be_bytes());
    d[20] = flags;
    d
}

/// REGISTER AND MOVE parameters: to the iSCSI initiator `to` on `rel_port`.
fn move_params(key: u64, sa_key: u64, rel_port: u16, to: &str) -> Vec<u8> {
    let tid = iscsi_transport_id(to);
    let mut d = vec![0u8; 24];
    d[0..8].copy_from_slice(&key.to_be_bytes());
    d[8..16].copy_from_slice(&sa_key.to_be_bytes());
    d[18..20].copy_from_slice(&rel_port.to_be_bytes());
    d[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
    d.extend_from_slice(&tid);
    d
}

fn prout(sa: u8, ptype: u8, params: Vec<u8>) -> Case {
    case("", prout_cdb(sa, ptype, params.len() as u32)).out(params)
}

/// READ KEYS must list exactly `keys`.
fn keys_are(keys: &'static [u64]) -> impl Fn(&mut Env, &CmdResponse, &[u8]) -> Result<(), String> {
    move |e, _, _| {
        let d = e.data_in(One, &prin_cdb(0, 256), 256)?;
        let got: Vec<u64> = d
            .get(8..)
            .unwrap_or(&[])
            .chunks_exact(8)
            .map(|c| be64(c, 0))
            .collect();
        eq("registered keys", got.as_slice(), keys)
    }
}

/// READ RESERVATION must show `Some((key, type))` or none.
fn reservation_is(
    want: Option<(u64, u8)>,
) -> impl Fn(&mut Env, &CmdResponse, &[u8]) -> Result<(), String> {
    move |e, _, _| {
        let d = e.data_in(One, &prin_cdb(1, 64), 64)?;
        let got = if be32(&d, 4) == 0 {
            None
        } else {
            Some((be64(&d, 8), d.get(21).copied().unwrap_or(0xff) & 0x0f))
        };
        eq("reservation", got, want)
    }
}

const XCOPY: u8 = 0x83;
const RCR: u8 = 0x84;

fn xcopy_cdb(len: usize) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = XCOPY;
    c[10..14].copy_from_slice(&(len as u32).to_be_bytes());
    c
}

fn rcr_cdb(sa: u8, list_id: u8, alloc: u32) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = RCR;
    c[1] = sa;
    c[2] = list_id;
    c[10..14].copy_from_slice(&alloc.to_be_bytes());
    c
}

/// An identification CSCD descriptor (NAA, block device) for `naa`.
fn target_desc(naa: &[u8; 16]) -> Vec<u8> {
    let mut d = vec![0u8; 32];
    d[0] = 0xe4;
    d[4] = 0x01;
    d[5] = 0x03;
    d[7] = 16;
    d[8..24].copy_from_slice(naa);
    d[29..32].copy_from_slice(&(BS as u32).to_be_bytes()[1..]);
    d
}

/// A block-to-block segment descriptor.
fn seg_desc(src: u16, dst: u16, blocks: u16, src_lba: u64, dst_lba: u64) -> Vec<u8> {
    let mut d = vec![0u8; 28];
    d[0] = 0x02;
    d[2..4].copy_from_slice(&0x18u16.to_be_bytes());
    d[4..6].copy_from_slice(&src.to_be_bytes());
    d[6..8].copy_from_slice(&dst.to_be_bytes());
    d[10..12].copy_from_slice(&blocks.to_be_bytes());
    d[12..20].copy_from_slice(&src_lba.to_be_bytes());
    d[20..28].copy_from_slice(&dst_lba.to_be_bytes());
    d
}

/// LIST ID USAGE 00b: the copy manager holds the results.
const HOLD: u8 = 0b00;

fn xcopy_list(list_id: u8, targets: &[Vec<u8>], segs: &[Vec<u8>]) -> Vec<u8> {
    let t: Vec<u8> = targets.concat();
    let s: Vec<u8> = segs.concat();
    let mut d = vec![0u8; 16];
    d[0] = list_id;
    d[1] = HOLD << 3;
    d[2..4].copy_from_slice(&(t.len() as u16).to_be_bytes());
    d[8..12].copy_from_slice(&(s.len() as u32).to_be_bytes());
    d.extend_from_slice(&t);
    d.extend_from_slice(&s);
    d
}

/// A setup step: EXTENDED COPY of `segs` within the LUN, with `want` as outcome.
fn xcopy_setup(
    list_id: u8,
    segs: Vec<Vec<u8>>,
    want: Expect,
) -> impl Fn(&mut Env) -> Result<(), String> {
    move |e| {
        let naa = e.f.lun.naa();
        let list = xcopy_list(list_id, &[target_desc(&naa)], &segs);
        e.expect(One, &xcopy_cdb(list.len()), DataDir::ToDevice, list, want)
            .map(drop)
    }
}

/// A copy whose second segment's destination runs past the end: fails.
fn failing_segs() -> Vec<Vec<u8>> {
    vec![seg_desc(0, 0, 4, 0, 64), seg_desc(0, 0, 4, 0, BLOCKS - 1)]
}

fn read_only(c: &mut LunConfig) {
    c.read_only = true;
}
fn removable(c: &mut LunConfig) {
    c.removable = true;
}
fn thick(c: &mut LunConfig) {
    c.thin = false;
}

/// A mode parameter list: header of `hdr` zero bytes, then `page`.
fn mode_list(hdr: usize, page: &[u8]) -> Vec<u8> {
    let mut d = vec![0u8; hdr];
    d.extend_from_slice(page);
    d
}

/// The caching mode page with WCE as given (other fields as the LUN has them).
fn caching_page(wce: bool) -> Vec<u8> {
    let mut p = vec![0u8; 20];
    p[0] = 0x08;
    p[1] = 0x12;
    p[2] = if wce { 0x04 } else { 0 };
    p
}

/// The control mode page with D_SENSE as given.
fn control_page(d_sense: bool) -> Vec<u8> {
    vec![
        0x0a,
        0x0a,
        if d_sense { 0x04 } else { 0 },
        0x10,
        0,
        0,
        0,
        0,
        0xff,
        0xff,
        0,
        0,
    ]
}

// ---- The table ----

fn spc_cases() -> Vec<Case> {
    let ua_mode_changed = |e: &mut Env, _: &CmdResponse, _: &[u8]| {
        let (r, _) = e.run(Two, &[0, 0, 0, 0, 0, 0], DataDir::None, vec![]);
        outcome(
            &r,
            Expect::Check(SenseKey::UnitAttention, asc::MODE_PARAMETERS_CHANGED),
        )
    };
    vec![
        // TEST UNIT READY
        case("TUR ready", vec![0; 6]),
        case("TUR stopped", vec![0; 6])
            .stopped()
            .fails(SenseKey::NotReady, asc::LUN_NOT_READY_INITIALIZING_REQUIRED),
        case("TUR ejected", vec![0; 6])
            .cfg(removable)
            .pre(One, vec![0x1b, 0, 0, 0, 0x02, 0], DataDir::None, vec![])
            .fails(SenseKey::NotReady, asc::MEDIUM_NOT_PRESENT),
        // REQUEST SENSE
        case("REQUEST SENSE no sense", vec![0x03, 0, 0, 0, 18, 0])
            .alloc(18)
            .then(|_, _, d| {
                eq("length", d.len(), 18)?;
                eq(
                    "response code, key, asc",
                    (d[0], d[2], d[12], d[13]),
                    (0x70, 0, 0, 0),
                )
            }),
        case(
            "REQUEST SENSE descriptor, stopped",
            vec![0x03, 1, 0, 0, 252, 0],
        )
        .alloc(252)
        .stopped()
        .then(|_, _, d| eq("sense", d.get(..4), Some(&[0x72, 0x02, 0x04, 0x02][..]))),
        case("REQUEST SENSE NACA", vec![0x03, 0, 0, 0, 18, 0x04])
            .alloc(18)
            .bad_cdb(5, Some(2)),
        // INQUIRY
        case("INQUIRY standard", vec![0x12, 0, 0, 0, 96, 0])
            .alloc(96)
            .then(|_, _, d| {
                eq("peripheral", d[0], 0)?;
                eq("vendor", &d[8..16], b"OXTARGET".as_slice())?;
                eq("length", d.len(), (usize::from(d[4]) + 5).min(96))
            }),
        case("INQUIRY unit serial VPD", vec![0x12, 1, 0x80, 0, 64, 0])
            .alloc(64)
            .then(|e, _, d| {
                eq("page", d[1], 0x80)?;
                let serial = e.f.lun.config.serial.clone();
                eq(
                    "serial",
                    d.get(4..4 + usize::from(d[3])),
                    Some(serial.as_bytes()),
                )
            }),
        case("INQUIRY supported VPD pages", vec![0x12, 1, 0, 0, 64, 0])
            .alloc(64)
            .then(|_, _, d| {
                let pages = d.get(4..4 + usize::from(d[3])).unwrap_or(&[]);
                for p in [0x00, 0x80, 0x83, 0x8f, 0xb0, 0xb1, 0xb2] {
                    if !pages.contains(&p) {
                        return Err(format!("VPD page {p:02x} missing from {pages:02x?}"));
                    }
                }
                Ok(())
            }),
        case(
            "INQUIRY page code without EVPD",
            vec![0x12, 0, 0x80, 0, 96, 0],
        )
        .alloc(96)
        .bad_cdb(2, None),
        case(
            "INQUIRY unsupported VPD page",
            vec![0x12, 1, 0xfe, 0, 96, 0],
        )
        .alloc(96)
        .bad_cdb(2, None),
        case("INQUIRY CmdDt", vec![0x12, 2, 0, 0, 96, 0])
            .alloc(96)
            .bad_cdb(1, Some(1)),
        // MODE SELECT(6)
        case("MODE SELECT(6) clears WCE", vec![0x15, 0x10, 0, 0, 24, 0])
            .out(mode_list(4, &caching_page(false)))
            .then(|e, _, _| {
                eq("WCE", crate::mode::write_cache_enabled(&e.f.lun), false)?;
                let d = e.data_in(One, &[0x1a, 0x08, 0x08, 0, 255, 0], 255)?;
                eq("caching page WCE", d.get(6).map(|b| b & 0x04), Some(0))
            })
            .then(ua_mode_changed),
        case("MODE SELECT(6) SP", vec![0x15, 0x11, 0, 0, 24, 0])
            .out(mode_list(4, &caching_page(false)))
            .bad_cdb(1, Some(0)),
        case(
            "MODE SELECT(6) unchangeable bit",
            vec![0x15, 0x10, 0, 0, 24, 0],
        )
        .out(mode_list(4, &with(caching_page(true), 3, 0xff)))
        .bad_param(4 + 3, Some(7))
        .then(|e, _, _| eq("WCE", crate::mode::write_cache_enabled(&e.f.lun), true)),
        // MODE SENSE(6)
        case("MODE SENSE(6) all pages", vec![0x1a, 0, 0x3f, 0, 255, 0])
            .alloc(255)
            .then(|_, _, d| {
                eq("mode data length", usize::from(d[0]) + 1, d.len())?;
                eq("block descriptor length", d[3], 8)?;
                eq("blocks", be32(d, 4), BLOCKS as u32)?;
                eq("block length", &d[9..12], &[0, 2, 0][..])
            }),
        case("MODE SENSE(6) saved values", vec![0x1a, 0, 0xff, 0, 255, 0])
            .alloc(255)
            .illegal(asc::SAVING_PARAMETERS_NOT_SUPPORTED),
        case("MODE SENSE(6) unknown page", vec![0x1a, 0, 0x05, 0, 255, 0])
            .alloc(255)
            .bad_cdb(2, Some(5)),
        // START STOP UNIT
        case("START STOP UNIT stop", vec![0x1b, 0, 0, 0, 0, 0]).then(|e, _, _| {
            let (r, _) = e.run(One, &[0; 6], DataDir::None, vec![]);
            outcome(
                &r,
                Expect::Check(SenseKey::NotReady, asc::LUN_NOT_READY_INITIALIZING_REQUIRED),
            )
        }),
        case("START STOP UNIT start", vec![0x1b, 0, 0, 0, 1, 0])
            .stopped()
            .then(|e, _, _| e.good(One, &[0; 6], DataDir::None, vec![]).map(drop)),
        case(
            "START STOP UNIT eject removable",
            vec![0x1b, 0, 0, 0, 0x02, 0],
        )
        .cfg(removable)
        .then(|e, _, _| {
            let (r, _) = e.run(One, &[0; 6], DataDir::None, vec![]);
            outcome(
                &r,
                Expect::Check(SenseKey::NotReady, asc::MEDIUM_NOT_PRESENT),
            )
        }),
        case(
            "START STOP UNIT LOEJ, not removable",
            vec![0x1b, 0, 0, 0, 0x02, 0],
        )
        .bad_cdb(4, Some(1)),
        case(
            "START STOP UNIT eject prevented",
            vec![0x1b, 0, 0, 0, 0x02, 0],
        )
        .cfg(removable)
        .pre(One, vec![0x1e, 0, 0, 0, 1, 0], DataDir::None, vec![])
        .illegal(asc::MEDIUM_REMOVAL_PREVENTED),
        // PREVENT ALLOW MEDIUM REMOVAL
        case("PREVENT removable", vec![0x1e, 0, 0, 0, 1, 0])
            .cfg(removable)
            .then(|e, _, _| {
                let (r, _) = e.run(Two, &[0x1b, 0, 0, 0, 0x02, 0], DataDir::None, vec![]);
                outcome(
                    &r,
                    Expect::Check(SenseKey::IllegalRequest, asc::MEDIUM_REMOVAL_PREVENTED),
                )
            }),
        case("ALLOW not removable", vec![0x1e, 0, 0, 0, 0, 0]),
        case("PREVENT not removable", vec![0x1e, 0, 0, 0, 1, 0]).bad_cdb(4, Some(0)),
        case("PREVENT obsolete value", vec![0x1e, 0, 0, 0, 2, 0])
            .cfg(removable)
            .bad_cdb(4, Some(1)),
        // MODE SELECT(10)
        case(
            "MODE SELECT(10) sets D_SENSE",
            vec![0x55, 0x10, 0, 0, 0, 0, 0, 0, 20, 0],
        )
        .out(mode_list(8, &control_page(true)))
        .then(|e, _, _| {
            let (r, _) = e.run(
                One,
                &[0x12, 0, 0x80, 0, 96, 0],
                DataDir::FromDevice,
                vec![0; 96],
            );
            eq("sense format", r.sense.as_ref().map(|s| s[0]), Some(0x72))
        })
        .then(ua_mode_changed),
        case(
            "MODE SELECT(10) short header",
            vec![0x55, 0x10, 0, 0, 0, 0, 0, 0, 3, 0],
        )
        .out(vec![0; 3])
        .illegal(asc::PARAMETER_LIST_LENGTH_ERROR),
        case(
            "MODE SELECT(10) medium type",
            vec![0x55, 0x10, 0, 0, 0, 0, 0, 0, 20, 0],
        )
        .out(with(mode_list(8, &control_page(true)), 2, 1))
        .bad_param(2, None),
        // MODE SENSE(10)
        case(
            "MODE SENSE(10) long LBA",
            vec![0x5a, 0x10, 0x08, 0, 0, 0, 0, 1, 0, 0],
        )
        .alloc(256)
        .then(|_, _, d| {
            eq("LONGLBA", d[4] & 1, 1)?;
            eq("block descriptor length", &d[6..8], &[0, 16][..])?;
            eq("blocks", be64(d, 8), BLOCKS)?;
            eq("block length", be32(d, 20), BS as u32)?;
            eq("page", d.get(24).map(|b| b & 0x3f), Some(0x08))
        }),
        case(
            "MODE SENSE(10) unknown subpage",
            vec![0x5a, 0, 0x3f, 0x05, 0, 0, 0, 1, 0, 0],
        )
        .alloc(256)
        .bad_cdb(3, Some(7)),
        // REPORT LUNS
        case("REPORT LUNS", report_luns(0, 16))
            .alloc(16)
            .returns(vec![0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        case("REPORT LUNS small allocation", report_luns(0, 8))
            .alloc(8)
            .bad_cdb(6, None),
        case("REPORT LUNS bad SELECT REPORT", report_luns(5, 16))
            .alloc(16)
            .bad_cdb(2, None),
        // REPORT TARGET PORT GROUPS
        case("REPORT TARGET PORT GROUPS", maint_in(0x0a, 0, 0, 256))
            .alloc(256)
            .returns(vec![0, 0, 0, 12, 0, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1]),
        case(
            "REPORT TARGET PORT GROUPS extended",
            maint_in(0x2a, 0, 0, 256),
        )
        .alloc(256)
        .then(|_, _, d| eq("header", (d.len(), d[4]), (20, 0x10))),
        case(
            "REPORT TARGET PORT GROUPS bad format",
            maint_in(0x4a, 0, 0, 256),
        )
        .alloc(256)
        .bad_cdb(1, Some(7)),
        // REPORT SUPPORTED OPERATION CODES
        case("RSOC all commands", maint_in(0x0c, 0, 0, 8192))
            .alloc(8192)
            .then(|_, _, d| {
                let n = opcodes::all().count();
                eq("length", be32(d, 0) as usize, n * 8)?;
                let listed: Vec<(u8, Option<u16>)> = d[4..]
                    .chunks_exact(8)
                    .map(|c| {
                        let sa = u16::from_be_bytes([c[2], c[3]]);
                        (c[0], (c[5] & 1 != 0).then_some(sa))
                    })
                    .collect();
                let rows: Vec<(u8, Option<u16>)> = opcodes::all()
                    .map(|o| (o.opcode, o.service_action))
                    .collect();
                eq("commands", listed, rows)
            }),
        case("RSOC one command", maint_in(0x0c, 1, 0x28, 64))
            .alloc(64)
            .then(|_, _, d| {
                let usage = opcodes::find(0x28, None).map(|o| o.usage).unwrap_or(&[]);
                eq("support", d[1] & 7, 3)?;
                eq("usage", d.get(4..), Some(usage))
            }),
        case("RSOC reserved options", maint_in(0x0c, 7, 0, 64))
            .alloc(64)
            .bad_cdb(2, Some(2)),
        case(
            "RSOC one command with service actions",
            maint_in(0x0c, 1, 0x9e, 64),
        )
        .alloc(64)
        .bad_cdb(3, None),
        // REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS
        case("RSTMF", maint_in(0x0d, 0, 0, 4))
            .alloc(4)
            .returns(vec![0xde, 0x07, 0, 0]),
        case("RSTMF REPD", maint_in(0x0d, 0x80, 0, 16))
            .alloc(16)
            .then(|_, _, d| eq("length, additional", (d.len(), d[3]), (16, 0x0c))),
        case("RSTMF small allocation", maint_in(0x0d, 0, 0, 2))
            .alloc(2)
            .bad_cdb(6, None),
    ]
}

fn sbc_cases() -> Vec<Case> {
    let p2 = pattern(2 * BS, 1);
    let blk = pattern(BS, 7);
    let a = vec![b'A'; 2 * BS];
    let b = vec![b'B'; 2 * BS];
    let mut ab = a.clone();
    ab.extend_from_slice(&b);
    let mut miscompare = ab.clone();
    miscompare[300] = b'Z';
    let mut p2_bad = p2.clone();
    p2_bad[700] ^= 0xff;
    let mut four = blk.repeat(4);
    four[2 * BS + 5] ^= 0x01;
    let range_err = asc::LBA_OUT_OF_RANGE;
    vec![
        // READ(6)
        case("READ(6)", rw6(0x08, 5, 2))
            .alloc(2 * BS)
            .pre_write(5, p2.clone())
            .returns(p2.clone())
            .direct(),
        case("READ(6) past the end", rw6(0x08, BLOCKS - 1, 2))
            .alloc(2 * BS)
            .illegal(range_err),
        // WRITE(6)
        case("WRITE(6)", rw6(0x0a, 7, 2))
            .out(p2.clone())
            .medium(7, p2.clone())
            .direct(),
        case("WRITE(6) read-only", rw6(0x0a, 7, 2))
            .out(p2.clone())
            .cfg(read_only)
            .fails(SenseKey::DataProtect, asc::WRITE_PROTECTED)
            .medium(7, vec![0; 2 * BS]),
        case("WRITE(6) past the end", rw6(0x0a, BLOCKS - 1, 2))
            .out(p2.clone())
            .illegal(range_err),
        // READ CAPACITY(10)
        case("READ CAPACITY(10)", vec![0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0])
            .alloc(8)
            .returns(vec![0, 1, 0xff, 0xff, 0, 0, 2, 0]),
        case(
            "READ CAPACITY(10) LBA without PMI",
            vec![0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0],
        )
        .alloc(8)
        .bad_cdb(2, None),
        // READ(10)
        case("READ(10)", rw10(0x28, 100, 2))
            .alloc(2 * BS)
            .pre_write(100, p2.clone())
            .returns(p2.clone())
            .direct(),
        case("READ(10) RDPROTECT", with_b1(rw10(0x28, 0, 1), 0x20))
            .alloc(BS)
            .bad_cdb(1, Some(7)),
        case("READ(10) past the end", rw10(0x28, BLOCKS, 1))
            .alloc(BS)
            .illegal(range_err),
        // WRITE(10)
        case("WRITE(10)", rw10(0x2a, 9, 2))
            .out(p2.clone())
            .medium(9, p2.clone())
            .direct(),
        case("WRITE(10) past the end", rw10(0x2a, BLOCKS - 1, 2))
            .out(p2.clone())
            .illegal(range_err),
        case("WRITE(10) over the transfer limit", rw10(0x2a, 0, 16385))
            .out(Vec::new())
            .bad_cdb(7, None),
        // WRITE AND VERIFY(10)
        case(
            "WRITE AND VERIFY(10) BYTCHK=1",
            with_b1(rw10(0x2e, 20, 2), 0x02),
        )
        .out(p2.clone())
        .medium(20, p2.clone())
        .direct(),
        case(
            "WRITE AND VERIFY(10) BYTCHK=11b",
            with_b1(rw10(0x2e, 20, 2), 0x06),
        )
        .out(p2.clone())
        .bad_cdb(1, Some(2))
        .medium(20, vec![0; 2 * BS]),
        // VERIFY(10)
        case("VERIFY(10) BYTCHK=1", with_b1(rw10(0x2f, 30, 2), 0x02))
            .out(p2.clone())
            .pre_write(30, p2.clone())
            .direct(),
        case("VERIFY(10) medium", rw10(0x2f, 30, 2)).direct(),
        case("VERIFY(10) miscompare", with_b1(rw10(0x2f, 30, 2), 0x02))
            .out(p2_bad.clone())
            .pre_write(30, p2.clone())
            .fails(SenseKey::Miscompare, asc::MISCOMPARE_DURING_VERIFY)
            .info(700),
        case("VERIFY(10) BYTCHK=10b", with_b1(rw10(0x2f, 30, 2), 0x04))
            .out(p2.clone())
            .bad_cdb(1, Some(2)),
        // PRE-FETCH(10)
        case("PRE-FETCH(10)", rw10(0x34, 0, 16)).met(),
        case("PRE-FETCH(10) past the end", rw10(0x34, BLOCKS - 1, 2)).illegal(range_err),
        // SYNCHRONIZE CACHE(10)
        case("SYNCHRONIZE CACHE(10)", rw10(0x35, 0, 0)),
        case("SYNCHRONIZE CACHE(10) past the end", rw10(0x35, BLOCKS, 1)).illegal(range_err),
        // READ DEFECT DATA(10)
        case(
            "READ DEFECT DATA(10)",
            vec![0x37, 0, 0x18, 0, 0, 0, 0, 0, 4, 0],
        )
        .alloc(4)
        .returns(vec![0, 0x18, 0, 0]),
        case(
            "READ DEFECT DATA(10) stopped",
            vec![0x37, 0, 0x18, 0, 0, 0, 0, 0, 4, 0],
        )
        .alloc(4)
        .stopped()
        .fails(SenseKey::NotReady, asc::LUN_NOT_READY_INITIALIZING_REQUIRED),
        // WRITE SAME(10)
        case("WRITE SAME(10)", rw10(0x41, 3, 5))
            .out(blk.clone())
            .pre_write(2, vec![0xee; 7 * BS])
            .medium(3, blk.repeat(5))
            .medium(2, vec![0xee; BS])
            .medium(8, vec![0xee; BS])
            .direct(),
        case("WRITE SAME(10) ANCHOR", with_b1(rw10(0x41, 3, 5), 0x10))
            .out(blk.clone())
            .bad_cdb(1, Some(4)),
        case("WRITE SAME(10) two blocks of data", rw10(0x41, 3, 5))
            .out(blk.repeat(2))
            .bad_cdb(7, None),
        // UNMAP
        case("UNMAP", unmap_cdb(24))
            .out(unmap_params(&[(2048, 2048)]))
            .pre_write(0, pattern(2048 * BS, 3))
            .pre_write(2048, pattern(2048 * BS, 4))
            .then(|e, _, _| {
                let runs = e.lba_status(0)?;
                eq(
                    "LBA status",
                    runs.get(..2),
                    Some(&[(0, 2048, 0), (2048, (BLOCKS - 2048) as u32, 1)][..]),
                )
            })
            .medium(2048, vec![0; 16 * BS])
            .medium(2047, pattern(2048 * BS, 3)[2047 * BS..].to_vec()),
        case("UNMAP fully provisioned", unmap_cdb(24))
            .out(unmap_params(&[(0, 8)]))
            .cfg(thick)
            .illegal(asc::INVALID_COMMAND_OPERATION_CODE),
        case("UNMAP past the end", unmap_cdb(24))
            .out(unmap_params(&[(BLOCKS - 1, 2)]))
            .illegal(range_err),
        case("UNMAP short list", unmap_cdb(4))
            .out(vec![0; 4])
            .illegal(asc::PARAMETER_LIST_LENGTH_ERROR),
        case("UNMAP ANCHOR", with_b1(unmap_cdb(24), 0x01))
            .out(unmap_params(&[(0, 8)]))
            .bad_cdb(1, Some(0)),
        // SANITIZE
        case("SANITIZE OVERWRITE", sanitize(0x01, 8))
            .out(vec![0x01, 0, 0, 4, 0xde, 0xad, 0xbe, 0xef])
            .size(SMALL)
            .pre_write(0, p2.clone())
            .medium(0, [0xde, 0xad, 0xbe, 0xef].repeat(BS / 2))
            .medium(
                SMALL / BS as u64 - 1,
                [0xde, 0xad, 0xbe, 0xef].repeat(BS / 4),
            ),
        case("SANITIZE OVERWRITE short list length", sanitize(0x01, 4))
            .out(vec![0x01, 0, 0, 4])
            .size(SMALL)
            .bad_cdb(7, None),
        case("SANITIZE OVERWRITE count zero", sanitize(0x01, 8))
            .out(vec![0x00, 0, 0, 4, 0xde, 0xad, 0xbe, 0xef])
            .size(SMALL)
            .bad_param(0, Some(4)),
        case("SANITIZE OVERWRITE read-only", sanitize(0x01, 8))
            .out(vec![0x01, 0, 0, 4, 0xde, 0xad, 0xbe, 0xef])
            .size(SMALL)
            .cfg(read_only)
            .fails(SenseKey::DataProtect, asc::WRITE_PROTECTED),
        case("SANITIZE BLOCK ERASE", sanitize(0x02, 0))
            .size(SMALL)
            .pre_write(0, p2.clone())
            .medium(0, vec![0; 2 * BS]),
        case(
            "SANITIZE BLOCK ERASE with a parameter list",
            sanitize(0x02, 8),
        )
        .out(vec![0; 8])
        .size(SMALL)
        .bad_cdb(7, None),
        case("SANITIZE EXIT FAILURE MODE", sanitize(0x1f, 0)).size(SMALL),
        case(
            "SANITIZE EXIT FAILURE MODE with a parameter list",
            sanitize(0x1f, 8),
        )
        .out(vec![0; 8])
        .size(SMALL)
        .bad_cdb(7, None),
        // READ(16)
        case("READ(16)", rw16(0x88, 200, 2))
            .alloc(2 * BS)
            .pre_write(200, p2.clone())
            .returns(p2.clone())
            .direct(),
        case("READ(16) past the end", rw16(0x88, u64::MAX, 1))
            .alloc(BS)
            .illegal(range_err),
        // COMPARE AND WRITE
        case("COMPARE AND WRITE", caw(10, 2))
            .out(ab.clone())
            .pre_write(10, a.clone())
            .medium(10, b.clone())
            .direct(),
        case("COMPARE AND WRITE miscompare", caw(10, 2))
            .out(miscompare)
            .pre_write(10, a.clone())
            .fails(SenseKey::Miscompare, asc::MISCOMPARE_DURING_VERIFY)
            .info(300)
            .medium(10, a.clone()),
        case("COMPARE AND WRITE wrong data length", caw(10, 1))
            .out(ab.clone())
            .bad_cdb(13, None),
        // WRITE(16)
        case("WRITE(16) FUA", with_b1(rw16(0x8a, 300, 2), 0x08))
            .out(p2.clone())
            .medium(300, p2.clone())
            .direct(),
        case("WRITE(16) WRPROTECT", with_b1(rw16(0x8a, 300, 2), 0x20))
            .out(p2.clone())
            .bad_cdb(1, Some(7)),
        // ORWRITE(16)
        case("ORWRITE(16)", rw16(0x8b, 4, 2))
            .out(vec![0x05; 2 * BS])
            .pre_write(4, vec![0xa0; 2 * BS])
            .medium(4, vec![0xa5; 2 * BS]),
        case("ORWRITE(16) ORPROTECT", with_b1(rw16(0x8b, 4, 2), 0x20))
            .out(vec![0x05; 2 * BS])
            .bad_cdb(1, Some(7)),
        case("ORWRITE(16) past the end", rw16(0x8b, BLOCKS - 1, 2))
            .out(vec![0x05; 2 * BS])
            .illegal(range_err),
        // WRITE AND VERIFY(16)
        case("WRITE AND VERIFY(16)", rw16(0x8e, 40, 2))
            .out(p2.clone())
            .medium(40, p2.clone())
            .direct(),
        case(
            "WRITE AND VERIFY(16) past the end",
            rw16(0x8e, BLOCKS - 1, 2),
        )
        .out(p2.clone())
        .illegal(range_err),
        // VERIFY(16)
        case("VERIFY(16) BYTCHK=11b", with_b1(rw16(0x8f, 50, 4), 0x06))
            .out(blk.clone())
            .pre_write(50, blk.repeat(4))
            .direct(),
        case(
            "VERIFY(16) BYTCHK=11b miscompare",
            with_b1(rw16(0x8f, 50, 4), 0x06),
        )
        .out(blk.clone())
        .pre_write(50, four)
        .fails(SenseKey::Miscompare, asc::MISCOMPARE_DURING_VERIFY)
        .info((2 * BS + 5) as u64),
        case("VERIFY(16) past the end", rw16(0x8f, BLOCKS, 1)).illegal(range_err),
        // PRE-FETCH(16)
        case("PRE-FETCH(16)", rw16(0x90, 0, 8)).met(),
        case("PRE-FETCH(16) IMMED", with_b1(rw16(0x90, 0, 8), 0x02)).met(),
        case("PRE-FETCH(16) past the end", rw16(0x90, BLOCKS, 1)).illegal(range_err),
        // SYNCHRONIZE CACHE(16)
        case("SYNCHRONIZE CACHE(16)", rw16(0x91, 0, 0)),
        case("SYNCHRONIZE CACHE(16) past the end", rw16(0x91, BLOCKS, 1)).illegal(range_err),
        // WRITE SAME(16)
        case("WRITE SAME(16)", rw16(0x93, 100, 300))
            .out(blk.clone())
            .medium(100, blk.repeat(300))
            .medium(400, vec![0; BS])
            .direct(),
        case(
            "WRITE SAME(16) NDOB UNMAP",
            with_b1(rw16(0x93, 0, 256), 0x09),
        )
        .pre_write(0, vec![0xff; 256 * BS])
        .medium(0, vec![0; 256 * BS])
        .then(|e, _, _| {
            let runs = e.lba_status(0)?;
            eq(
                "first LBA status",
                runs.first().map(|r| (r.0, r.2)),
                Some((0, 1)),
            )
        }),
        case(
            "WRITE SAME(16) UNMAP, fully provisioned",
            with_b1(rw16(0x93, 0, 1), 0x08),
        )
        .out(vec![0; BS])
        .cfg(thick)
        .bad_cdb(1, Some(3)),
        case("WRITE SAME(16) past the end", rw16(0x93, BLOCKS - 1, 2))
            .out(blk.clone())
            .illegal(range_err),
        // WRITE ATOMIC(16)
        case("WRITE ATOMIC(16)", watomic(60, 2))
            .out(p2.clone())
            .medium(60, p2.clone())
            .direct(),
        case("WRITE ATOMIC(16) boundary", with(watomic(60, 2), 11, 1))
            .out(p2.clone())
            .bad_cdb(10, None),
        case("WRITE ATOMIC(16) too long", watomic(0, 257))
            .out(vec![0; 257 * BS])
            .bad_cdb(12, None),
        // READ CAPACITY(16)
        case("READ CAPACITY(16)", read_capacity16(0, 32))
            .alloc(32)
            .then(|_, _, d| {
                eq("last LBA", be64(d, 0), BLOCKS - 1)?;
                eq("block length", be32(d, 8), BS as u32)?;
                eq("LBPME, LBPRZ", d[14] & 0xc0, 0xc0)
            }),
        case("READ CAPACITY(16) LBA without PMI", read_capacity16(1, 32))
            .alloc(32)
            .bad_cdb(2, None),
        // GET LBA STATUS
        case("GET LBA STATUS", get_lba_status(256, 1024))
            .alloc(1024)
            .pre_write(256, pattern(128 * BS, 5))
            .then(|_, _, d| {
                eq("parameter data length", be32(d, 0) as usize, d.len() - 4)?;
                let runs: Vec<(u64, u32, u8)> = d[8..]
                    .chunks_exact(16)
                    .map(|c| (be64(c, 0), be32(c, 8), c[12]))
                    .collect();
                eq(
                    "descriptors",
                    runs,
                    vec![(256, 128, 0), (384, (BLOCKS - 384) as u32, 1)],
                )
            }),
        case("GET LBA STATUS past the end", get_lba_status(BLOCKS, 1024))
            .alloc(1024)
            .illegal(range_err),
        // READ(12)
        case("READ(12)", rw12(0xa8, 400, 2))
            .alloc(2 * BS)
            .pre_write(400, p2.clone())
            .returns(p2.clone())
            .direct(),
        case("READ(12) past the end", rw12(0xa8, BLOCKS - 1, 2))
            .alloc(2 * BS)
            .illegal(range_err),
        // WRITE(12)
        case("WRITE(12)", rw12(0xaa, 500, 2))
            .out(p2.clone())
            .medium(500, p2.clone())
            .direct(),
        case("WRITE(12) read-only", rw12(0xaa, 500, 2))
            .out(p2.clone())
            .cfg(read_only)
            .fails(SenseKey::DataProtect, asc::WRITE_PROTECTED),
        // WRITE AND VERIFY(12)
        case("WRITE AND VERIFY(12)", with_b1(rw12(0xae, 600, 2), 0x02))
            .out(p2.clone())
            .medium(600, p2.clone())
            .direct(),
        case(
            "WRITE AND VERIFY(12) VRPROTECT",
            with_b1(rw12(0xae, 600, 2), 0x20),
        )
        .out(p2.clone())
        .bad_cdb(1, Some(7)),
        // VERIFY(12)
        case("VERIFY(12) BYTCHK=1", with_b1(rw12(0xaf, 700, 2), 0x02))
            .out(p2.clone())
            .pre_write(700, p2.clone())
            .direct(),
        case(
            "VERIFY(12) miscompare against zeroes",
            with_b1(rw12(0xaf, 700, 2), 0x02),
        )
        .out(p2.clone())
        .fails(SenseKey::Miscompare, asc::MISCOMPARE_DURING_VERIFY)
        .info(p2.iter().position(|&x| x != 0).unwrap_or(0) as u64),
        // Paths a file serves differently from RAM: holes punched and zeroed
        // inside file system blocks, write zeroes, partial blocks, 4096-byte
        // blocks, writes through with the cache off, transfers cut into chunks.
        case(
            "WRITE SAME(10) UNMAP, unaligned",
            with_b1(rw10(0x41, 3, 5), 0x08),
        )
        .out(vec![0; BS])
        .pre_write(0, vec![0xff; 16 * BS])
        .medium(
            0,
            [vec![0xff; 3 * BS], vec![0; 5 * BS], vec![0xff; 8 * BS]].concat(),
        ),
        case("WRITE SAME(16) zeroes, fully provisioned", rw16(0x93, 3, 5))
            .out(vec![0; BS])
            .cfg(thick)
            .pre_write(0, vec![0xff; 16 * BS])
            .medium(
                0,
                [vec![0xff; 3 * BS], vec![0; 5 * BS], vec![0xff; 8 * BS]].concat(),
            )
            .then(|e, _, _| eq("LBA status", e.lba_status(0)?, vec![(0, BLOCKS as u32, 0)])),
        case("WRITE SAME(16) to the end", rw16(0x93, BLOCKS - 100, 0))
            .out(blk.clone())
            .medium(BLOCKS - 100, blk.repeat(100))
            .medium(BLOCKS - 101, vec![0; BS]),
        case("UNMAP unaligned", unmap_cdb(40))
            .out(unmap_params(&[(3, 5), (12, 1)]))
            .pre_write(0, vec![0xff; 16 * BS])
            .medium(
                0,
                [
                    vec![0xff; 3 * BS],
                    vec![0; 5 * BS],
                    vec![0xff; 4 * BS],
                    vec![0; BS],
                    vec![0xff; 3 * BS],
                ]
                .concat(),
            ),
        case("SANITIZE BLOCK ERASE, fully provisioned", sanitize(0x02, 0))
            .size(SMALL)
            .cfg(thick)
            .pre_write(0, p2.clone())
            .medium(0, vec![0; 2 * BS]),
        case("WRITE(10) short data-out", rw10(0x2a, 70, 2))
            .out(pattern(700, 8))
            .pre_write(70, vec![0xee; 2 * BS])
            .then(|_, r, _| {
                eq(
                    "transferred, residual",
                    (r.transferred, r.residual),
                    (700, crate::cmd::Residual::Over(324)),
                )
            })
            .medium(70, [pattern(700, 8), vec![0xee; 2 * BS - 700]].concat()),
        case("WRITE(10) write cache off", rw10(0x2a, 80, 2))
            .out(p2.clone())
            .cfg(|c| c.write_cache = false)
            .medium(80, p2.clone()),
        case("COMPARE AND WRITE over a hole", caw(90, 1))
            .out([vec![0; BS], blk.clone()].concat())
            .medium(90, blk.clone())
            .medium(91, vec![0; BS]),
        case("ORWRITE(16) over a hole", rw16(0x8b, 95, 1))
            .out(blk.clone())
            .medium(95, blk.clone()),
        case(
            "WRITE(16) and READ(16) of 16384 blocks",
            rw16(0x8a, 1000, 16384),
        )
        .out(pattern(16384 * BS, 11))
        .then(|e, _, _| {
            let d = e.data_in(One, &rw16(0x88, 1000, 16384), 16384 * BS)?;
            eq("read back", d == pattern(16384 * BS, 11), true)
        }),
        // RAM maps 64 KiB chunks, a file its file system's blocks: LBA 400 is in a
        // hole for both.
        case("GET LBA STATUS inside a hole", get_lba_status(400, 1024))
            .alloc(1024)
            .pre_write(256, vec![1; 8 * BS])
            .pre_write(1024, vec![1; 8 * BS])
            .then(|_, _, d| {
                eq(
                    "first descriptors",
                    (be64(d, 8), be32(d, 16), d[20], be64(d, 24), d[36]),
                    (400, 1024 - 400, 1, 1024, 0),
                )
            }),
        case(
            "GET LBA STATUS at the last blocks",
            get_lba_status(BLOCKS - 8, 1024),
        )
        .alloc(1024)
        .pre_write(BLOCKS - 8, vec![1; 8 * BS])
        .returns(
            [
                &20u32.to_be_bytes()[..],
                &[0; 4],
                &(BLOCKS - 8).to_be_bytes(),
                &8u32.to_be_bytes(),
                &[0; 4],
            ]
            .concat(),
        ),
        case("UNMAP the last block", unmap_cdb(24))
            .out(unmap_params(&[(BLOCKS - 1, 1)]))
            .pre_write(BLOCKS - 2, vec![0xff; 2 * BS])
            .medium(BLOCKS - 2, [vec![0xff; BS], vec![0; BS]].concat()),
        case("PRE-FETCH(16) more than the cache", rw16(0x90, 0, 0)),
        case("WRITE(10) 4096-byte blocks", rw10(0x2a, 3, 2))
            .out(pattern(8192, 12))
            .cfg(|c| c.block_size = 4096)
            .then(|e, _, _| {
                let d = e.data_in(One, &rw10(0x28, 2, 4), 4 * 4096)?;
                let want = [vec![0; 4096], pattern(8192, 12), vec![0; 4096]].concat();
                eq("read back", d == want, true)
            }),
        case("READ CAPACITY(16) 4096-byte blocks", read_capacity16(0, 32))
            .alloc(32)
            .cfg(|c| c.block_size = 4096)
            .then(|_, _, d| {
                eq(
                    "capacity",
                    (be64(d, 0), be32(d, 8)),
                    (SIZE / 4096 - 1, 4096),
                )
            }),
        case(
            "READ(10) 4096-byte blocks past the end",
            rw10(0x28, SIZE / 4096, 1),
        )
        .alloc(4096)
        .cfg(|c| c.block_size = 4096)
        .illegal(range_err),
        // READ DEFECT DATA(12)
        case(
            "READ DEFECT DATA(12)",
            vec![0xb7, 0x18, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0],
        )
        .alloc(8)
        .returns(vec![0, 0x18, 0, 0, 0, 0, 0, 0]),
        case(
            "READ DEFECT DATA(12) NACA",
            vec![0xb7, 0x18, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0x04],
        )
        .alloc(8)
        .bad_cdb(11, Some(2)),
    ]
}

fn named(name: &'static str, mut c: Case) -> Case {
    c.name = name;
    c
}

fn pr_cases() -> Vec<Case> {
    let reserve6 = vec![0x16, 0, 0, 0, 0, 0];
    let release6 = vec![0x17, 0, 0, 0, 0, 0];
    let reserve10 = vec![0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let release10 = vec![0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    use ScsiStatus::{Good, ReservationConflict};
    vec![
        // RESERVE(6) / RELEASE(6) / RESERVE(10) / RELEASE(10)
        case("RESERVE(6)", reserve6.clone())
            .write_by(Two, ReservationConflict)
            .write_by(One, Good),
        case("RESERVE(6) held by another", reserve6.clone())
            .spc2(One)
            .on(Two)
            .conflict(),
        case("RELEASE(6)", release6.clone())
            .spc2(One)
            .write_by(Two, Good),
        case("RELEASE(6) with registrations", release6.clone())
            .register(Two, 5)
            .conflict(),
        case("RESERVE(10)", reserve10.clone()).then(|e, _, _| {
            let (r, _) = e.run(Two, &rw10(0x28, 0, 1), DataDir::FromDevice, vec![0; BS]);
            outcome(&r, Expect::Conflict)
        }),
        case("RESERVE(10) third party", with_b1(reserve10.clone(), 0x10)).bad_cdb(1, Some(4)),
        case("RELEASE(10)", release10.clone())
            .pre(One, reserve10, DataDir::None, vec![])
            .write_by(Two, Good),
        case("RELEASE(10) LongID", with_b1(release10, 0x02)).bad_cdb(1, Some(1)),
        // PERSISTENT RESERVE IN
        case("PRIN READ KEYS", prin_cdb(0, 64))
            .alloc(64)
            .register(One, 0x1122)
            .returns(vec![0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x11, 0x22]),
        case("PRIN READ KEYS under an SPC-2 reservation", prin_cdb(0, 64))
            .alloc(64)
            .spc2(Two)
            .conflict(),
        case("PRIN READ RESERVATION", prin_cdb(1, 64))
            .alloc(64)
            .register(One, 0xab)
            .reserve(One, 0xab, WE)
            .then(|_, _, d| {
                eq("generation, length", (be32(d, 0), be32(d, 4)), (1, 16))?;
                eq("key, type", (be64(d, 8), d[21]), (0xab, WE))
            }),
        case(
            "PRIN READ RESERVATION, own SPC-2 reservation",
            prin_cdb(1, 64),
        )
        .alloc(64)
        .spc2(One)
        .conflict(),
        case("PRIN REPORT CAPABILITIES", prin_cdb(2, 8))
            .alloc(8)
            .returns(vec![0, 8, 0x14, 0xb0, 0xea, 0x01, 0, 0]),
        case(
            "PRIN REPORT CAPABILITIES under an SPC-2 reservation",
            prin_cdb(2, 8),
        )
        .alloc(8)
        .spc2(Two)
        .conflict(),
        case("PRIN READ FULL STATUS", prin_cdb(3, 256))
            .alloc(256)
            .register(One, 7)
            .then(|e, _, d| {
                let tid = e.f.nexus.transport_id.clone();
                eq("additional length", be32(d, 4) as usize, 24 + tid.len())?;
                eq("key", be64(d, 8), 7)?;
                eq("holder, port", (d[20], &d[26..28]), (0, &[0u8, 1][..]))?;
                eq(
                    "transport id",
                    d.get(32..32 + tid.len()),
                    Some(tid.as_slice()),
                )
            }),
        case(
            "PRIN READ FULL STATUS under an SPC-2 reservation",
            prin_cdb(3, 256),
        )
        .alloc(256)
        .spc2(Two)
        .conflict(),
        // PERSISTENT RESERVE OUT
        named(
            "PROUT REGISTER",
            prout(SA_REGISTER, 0, pr_params(0, 0x77, 0)),
        )
        .then(keys_are(&[0x77])),
        named(
            "PROUT REGISTER wrong key",
            prout(SA_REGISTER, 0, pr_params(5, 0x77, 0)),
        )
        .conflict()
        .then(keys_are(&[])),
        named(
            "PROUT REGISTER short list",
            prout(SA_REGISTER, 0, vec![0; 23]),
        )
        .illegal(asc::PARAMETER_LIST_LENGTH_ERROR),
        named(
            "PROUT REGISTER APTPL without a state directory",
            prout(SA_REGISTER, 0, pr_params(0, 0x77, 0x01)),
        )
        .bad_param(20, Some(0)),
        named("PROUT RESERVE", prout(SA_RESERVE, WE, pr_params(1, 0, 0)))
            .register(One, 1)
            .then(reservation_is(Some((1, WE))))
            .write_by(Two, ReservationConflict)
            .then(|e, _, _| {
                e.good(Two, &rw10(0x28, 0, 1), DataDir::FromDevice, vec![0; BS])
                    .map(drop)
            }),
        named(
            "PROUT RESERVE unregistered",
            prout(SA_RESERVE, WE, pr_params(1, 0, 0)),
        )
        .conflict()
        .then(reservation_is(None)),
        named(
            "PROUT RESERVE bad type",
            prout(SA_RESERVE, 0x2, pr_params(1, 0, 0)),
        )
        .register(One, 1)
        .bad_cdb(2, Some(3)),
        named("PROUT RELEASE", prout(SA_RELEASE, WE, pr_params(1, 0, 0)))
            .register(One, 1)
            .reserve(One, 1, WE)
            .then(reservation_is(None))
            .write_by(Two, Good),
        named(
            "PROUT RELEASE wrong type",
            prout(SA_RELEASE, EA, pr_params(1, 0, 0)),
        )
        .register(One, 1)
        .reserve(One, 1, WE)
        .illegal(asc::INVALID_RELEASE_OF_PERSISTENT_RESERVATION)
        .then(reservation_is(Some((1, WE)))),
        named("PROUT CLEAR", prout(SA_CLEAR, 0, pr_params(1, 0, 0)))
            .register(One, 1)
            .register(Two, 2)
            .reserve(One, 1, WE)
            .then(keys_are(&[]))
            .then(reservation_is(None))
            .then(|e, _, _| {
                let (r, _) = e.run(Two, &[0; 6], DataDir::None, vec![]);
                outcome(
                    &r,
                    Expect::Check(SenseKey::UnitAttention, asc::RESERVATIONS_PREEMPTED),
                )
            }),
        named(
            "PROUT CLEAR wrong key",
            prout(SA_CLEAR, 0, pr_params(9, 0, 0)),
        )
        .register(Two, 2)
        .conflict()
        .then(keys_are(&[2])),
        named("PROUT PREEMPT", prout(SA_PREEMPT, WE, pr_params(1, 2, 0)))
            .register(One, 1)
            .register(Two, 2)
            .reserve(Two, 2, WE)
            .then(reservation_is(Some((1, WE))))
            .then(keys_are(&[1])),
        named(
            "PROUT PREEMPT zero key without reservation",
            prout(SA_PREEMPT, WE, pr_params(1, 0, 0)),
        )
        .register(One, 1)
        .bad_param(8, None),
        named(
            "PROUT PREEMPT AND ABORT",
            prout(SA_PREEMPT_AND_ABORT, EA, pr_params(1, 2, 0)),
        )
        .register(One, 1)
        .register(Two, 2)
        .reserve(Two, 2, WE)
        .then(reservation_is(Some((1, EA))))
        .then(keys_are(&[1])),
        named(
            "PROUT PREEMPT AND ABORT unknown key",
            prout(SA_PREEMPT_AND_ABORT, EA, pr_params(1, 0x99, 0)),
        )
        .register(One, 1)
        .conflict(),
        named(
            "PROUT REGISTER AND IGNORE EXISTING KEY",
            prout(SA_REGISTER_AND_IGNORE, 0, pr_params(0, 0x55, 0)),
        )
        .register(One, 1)
        .then(keys_are(&[0x55])),
        named(
            "PROUT REGISTER AND IGNORE SPEC_I_PT",
            prout(SA_REGISTER_AND_IGNORE, 0, pr_params(0, 0x55, 0x08)),
        )
        .bad_param(20, Some(3)),
        named(
            "PROUT REGISTER AND MOVE",
            prout(SA_REGISTER_AND_MOVE, 0, move_params(1, 0x42, 1, N2)),
        )
        .register(One, 1)
        .reserve(One, 1, WE)
        .then(reservation_is(Some((0x42, WE))))
        .write_by(Two, Good)
        .write_by(One, ReservationConflict),
        named(
            "PROUT REGISTER AND MOVE without reservation",
            prout(SA_REGISTER_AND_MOVE, 0, move_params(1, 0x42, 1, N2)),
        )
        .register(One, 1)
        .conflict(),
        named(
            "PROUT REGISTER AND MOVE relative port zero",
            prout(SA_REGISTER_AND_MOVE, 0, move_params(1, 0x42, 0, N2)),
        )
        .register(One, 1)
        .reserve(One, 1, WE)
        .bad_param(18, None)
        .then(reservation_is(Some((1, WE)))),
    ]
}

fn xcopy_cases() -> Vec<Case> {
    let data = pattern(16 * BS, 9);
    // Every case's LUN has this identity, so its NAA designator is known here.
    let naa = crate::lun::naa_from_uuid(&uuid_for("lun0"));
    let naa1 = crate::lun::naa_from_uuid(&uuid_for("lun1"));
    let mut other = naa;
    other[15] ^= 0xff;
    let xcopy = |list: Vec<u8>| case("", xcopy_cdb(list.len())).out(list);
    vec![
        named(
            "EXTENDED COPY",
            xcopy(xcopy_list(
                1,
                &[target_desc(&naa)],
                &[seg_desc(0, 0, 16, 0, 1000)],
            )),
        )
        .pre_write(0, data.clone())
        .medium(1000, data.clone())
        .medium(0, data.clone()),
        named(
            "EXTENDED COPY of several chunks",
            xcopy(xcopy_list(
                2,
                &[target_desc(&naa)],
                &[seg_desc(0, 0, 6200, 0, 20000)],
            )),
        )
        .pre_write(0, pattern(6200 * BS, 13))
        .then(|e, _, _| {
            let d = e.data_in(One, &rw16(0x88, 20000, 6200), 6200 * BS)?;
            eq("copied", d == pattern(6200 * BS, 13), true)
        }),
        named(
            "EXTENDED COPY to another LUN",
            xcopy(xcopy_list(
                3,
                &[target_desc(&naa), target_desc(&naa1)],
                &[seg_desc(0, 1, 16, 0, 40)],
            )),
        )
        .pre_write(0, data.clone())
        .setup(|e| {
            // A second LUN in the registry (RAM), mapped as LUN 1.
            let cfg = LunConfig::new("lun1", uuid_for("lun1"));
            let lun = crate::lun::Lun::new(cfg, Arc::new(backends::ram::RamBackend::new(1 << 20)))
                .map_err(|x| x.to_string())?;
            e.f.registry.add(lun.clone());
            e.f.map_lun(1, lun);
            Ok(())
        })
        .then(move |e, _, _| {
            // The first command to LUN 1 reports its power-on unit attention.
            let mut resp = Vec::new();
            for _ in 0..2 {
                let mut c =
                    e.f.cmd(&rw10(0x28, 40, 16), DataDir::FromDevice, vec![0; 16 * BS]);
                c.lun = 1;
                let token = c.token;
                let n = e.f.nexus.clone();
                e.f.worker.submit(&n, c);
                let done = e.f.wait_token(token);
                let mut d = vec![0u8; 16 * BS];
                done.data.read_at(0, &mut d);
                resp.push((done.response.map(|r| r.status), d));
            }
            eq("first status", resp[0].0, Some(ScsiStatus::CheckCondition))?;
            eq("second status", resp[1].0, Some(ScsiStatus::Good))?;
            eq("copied to LUN 1", resp[1].1 == pattern(16 * BS, 9), true)
        }),
        named(
            "EXTENDED COPY unreachable target",
            xcopy(xcopy_list(
                1,
                &[target_desc(&naa), target_desc(&other)],
                &[seg_desc(0, 0, 1, 0, 1), seg_desc(0, 1, 1, 0, 1)],
            )),
        )
        .fails(SenseKey::CopyAborted, asc::COPY_TARGET_DEVICE_NOT_REACHABLE)
        .then(|_, r, _| {
            eq(
                "segment",
                r.sense_data.and_then(|s| s.command_specific),
                Some(1),
            )
        }),
        named(
            "EXTENDED COPY to a read-only LUN",
            xcopy(xcopy_list(
                1,
                &[target_desc(&naa)],
                &[seg_desc(0, 0, 16, 0, 1000)],
            )),
        )
        .cfg(read_only)
        .fails(SenseKey::DataProtect, asc::WRITE_PROTECTED),
        named("EXTENDED COPY short header", xcopy(vec![0; 8]))
            .illegal(asc::PARAMETER_LIST_LENGTH_ERROR),
        named(
            "RECEIVE COPY RESULTS copy status",
            case("", rcr_cdb(0x00, 1, 1024)),
        )
        .alloc(1024)
        .pre_write(0, data.clone())
        .setup(xcopy_setup(
            1,
            vec![seg_desc(0, 0, 16, 0, 1000)],
            Expect::Good,
        ))
        .then(|_, _, d| {
            eq("length", d.len(), 12)?;
            eq("status", d[4], crate::xcopy::CopyStatus::Completed as u8)?;
            eq("segments", &d[5..7], &[0, 1][..])?;
            eq("bytes", be32(d, 8), (16 * BS) as u32)
        }),
        named(
            "RECEIVE COPY RESULTS copy status, unknown list",
            case("", rcr_cdb(0x00, 9, 1024)),
        )
        .alloc(1024)
        .bad_cdb(2, Some(7)),
        named(
            "RECEIVE COPY RESULTS operating parameters",
            case("", rcr_cdb(0x03, 0, 1024)),
        )
        .alloc(1024)
        .then(|_, _, d| eq("length", (d.len(), be32(d, 0)), (46, 42))),
        named(
            "RECEIVE COPY RESULTS operating parameters, reserved",
            case("", rcr_cdb(0x03, 0, 1024)),
        )
        .alloc(1024)
        .spc2(Two)
        .conflict(),
        named(
            "RECEIVE COPY RESULTS failed segment details",
            case("", rcr_cdb(0x04, 5, 1024)),
        )
        .alloc(1024)
        .setup(xcopy_setup(
            5,
            failing_segs(),
            Expect::Check(SenseKey::CopyAborted, asc::NO_ADDITIONAL_SENSE),
        ))
        .then(|_, _, d| {
            eq("status", d.get(56).copied(), Some(0x02))?;
            eq("sense", d.get(60..63), Some(&[0x70, 0, 0x0a][..]))
        }),
        named(
            "RECEIVE COPY RESULTS failed segment details, none",
            case("", rcr_cdb(0x04, 5, 1024)),
        )
        .alloc(1024)
        .returns(vec![0; 4]),
        named(
            "RECEIVE COPY RESULTS failed segment details, reserved",
            case("", rcr_cdb(0x04, 5, 1024)),
        )
        .alloc(1024)
        .spc2(Two)
        .conflict(),
    ]
}

fn all_cases() -> Vec<Case> {
    let mut v = spc_cases();
    v.extend(sbc_cases());
    v.extend(pr_cases());
    v.extend(xcopy_cases());
    v
}

// ---- Running the table ----

fn config(c: &Case) -> LunConfig {
    let mut cfg = LunConfig::new("lun0", uuid_for("lun0"));
    if let Some(f) = c.config {
        f(&mut cfg);
    }
    cfg
}

/// Runs `c` on a fresh `Env`; `Err` describes what went wrong.
fn run_case(make: impl FnOnce() -> Fixture, c: &Case) -> Result<(), String> {
    let outcome_of = catch_unwind(AssertUnwindSafe(|| {
        let mut e = Env::new(make());
        for (i, s) in c.setup.iter().enumerate() {
            s(&mut e).map_err(|x| format!("setup {i}: {x}"))?;
        }
        let (r, d) = e.run(c.who, &c.cdb, c.dir, c.data.clone());
        outcome(&r, c.expect)?;
        for chk in &c.checks {
            chk(&mut e, &r, &d)?;
        }
        Ok(())
    }));
    match outcome_of {
        Ok(r) => r,
        Err(p) => Err(format!(
            "panicked: {}",
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        )),
    }
}

/// Runs every case of `family` on RAM and on a file; panics listing every failure.
fn run_family(family: &str) {
    let mut failures = Vec::new();
    let mut ran = 0;
    for c in all_cases().iter().filter(|c| family_of(c) == family) {
        for (kind, f) in Fixture::both_with(config(c), c.size) {
            ran += 1;
            if let Err(e) = run_case(move || f, c) {
                failures.push(format!("{} [{kind}]: {e}", c.name));
            }
        }
    }
    assert!(ran > 0, "no cases for {family}");
    assert!(
        failures.is_empty(),
        "{} of {ran} matrix runs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The family a case belongs to, by the table its CDB decodes to.
fn family_of(c: &Case) -> &'static str {
    let Ok(op) = opcodes::lookup(&c.cdb) else {
        return "none";
    };
    // The tables are consts: compare rows by what identifies them, not by address.
    let is = |t: &[opcodes::OpInfo]| {
        t.iter()
            .any(|o| (o.opcode, o.service_action) == (op.opcode, op.service_action))
    };
    if is(crate::spc::OPS) {
        "spc"
    } else if is(crate::sbc::OPS) {
        "sbc"
    } else if is(crate::pr::OPS) {
        "pr"
    } else if is(crate::xcopy::OPS) {
        "xcopy"
    } else {
        "none"
    }
}

#[test]
fn matrix_spc() {
    run_family("spc");
}

#[test]
fn matrix_sbc() {
    run_family("sbc");
}

#[test]
fn matrix_pr() {
    run_family("pr");
}

#[test]
fn matrix_xcopy() {
    run_family("xcopy");
}

/// The block I/O success cases on an `O_DIRECT` file, with the engine handing the
/// command's own buffer (a `VecBuf`, not aligned) to the backend.
///
/// Fails today: `O_DIRECT` needs buffers aligned to the logical block size of the
/// file system's device, and neither a `VecBuf` (heap memory, 16-byte aligned) nor
/// the job scratch buffers of the worker (a `Vec<u8>`: WRITE SAME patterns,
/// compare reads, read-modify-write) are; the kernel answers EINVAL, which
/// `backends::IoError::from_errno` turns into `OutOfRange`, so the initiator gets
/// ILLEGAL REQUEST, LBA OUT OF RANGE for an in-range command, depending on where
/// the allocator put the buffer. See `o_direct_*` below for the exact split.
#[test]
fn matrix_o_direct() {
    let mut failures = Vec::new();
    let mut ran = 0;
    for c in all_cases().iter().filter(|c| c.direct) {
        assert!(c.config.is_none() && c.size == SIZE, "{}", c.name);
        ran += 1;
        if let Err(e) = run_case(Fixture::file_direct, c) {
            failures.push(format!("{} [file O_DIRECT]: {e}", c.name));
        }
    }
    assert!(ran > 0);
    assert!(
        failures.is_empty(),
        "{} of {ran} O_DIRECT runs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_row_has_a_success_and_an_error_case() {
    let cases = all_cases();
    let mut problems = Vec::new();
    let mut names = std::collections::HashSet::new();
    for c in &cases {
        if !names.insert(c.name) {
            problems.push(format!("duplicate case name {:?}", c.name));
        }
        if family_of(c) == "none" {
            problems.push(format!("{}: CDB {:02x?} decodes to no row", c.name, c.cdb));
        }
    }
    for op in opcodes::all() {
        let mine: Vec<&Case> = cases
            .iter()
            .filter(|c| {
                opcodes::lookup(&c.cdb)
                    .is_ok_and(|o| (o.opcode, o.service_action) == (op.opcode, op.service_action))
            })
            .collect();
        if !mine.iter().any(|c| c.expect.success()) {
            problems.push(format!("{}: no success case", op.name));
        }
        if !mine.iter().any(|c| !c.expect.success()) {
            problems.push(format!("{}: no error case", op.name));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let good = cases.iter().filter(|c| c.expect.success()).count();
    eprintln!(
        "{} matrix cases ({good} success, {} error) for {} rows",
        cases.len(),
        cases.len() - good,
        opcodes::all().count()
    );
}

/// A data buffer whose bytes start `skew` bytes past a 4096-byte boundary, inside
/// an ordinary `Vec` (the heap memory does not move when the `Vec` does).
struct PlacedBuf {
    v: Vec<u8>,
    start: usize,
    len: usize,
}

impl PlacedBuf {
    fn new(data: &[u8], skew: usize) -> Self {
        let mut v = vec![0u8; data.len() + 4096 + skew];
        let addr = v.as_ptr() as usize;
        let start = (4096 - addr % 4096) % 4096 + skew;
        v[start..start + data.len()].copy_from_slice(data);
        PlacedBuf {
            v,
            start,
            len: data.len(),
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.v[self.start..self.start + self.len]
    }
}

impl crate::cmd::DataBuf for PlacedBuf {
    fn len(&self) -> usize {
        self.len
    }

    fn iovecs(&mut self, offset: usize, len: usize, out: &mut Vec<libc::iovec>) {
        let s = offset.min(self.len);
        let e = offset.saturating_add(len).min(self.len);
        if e > s {
            let (a, b) = (self.start + s, self.start + e);
            out.push(libc::iovec {
                iov_base: self.v[a..b].as_mut_ptr().cast(),
                iov_len: b - a,
            });
        }
    }

    fn write_at(&mut self, offset: usize, src: &[u8]) -> usize {
        let s = offset.min(self.len);
        let n = src.len().min(self.len - s);
        let a = self.start + s;
        self.v[a..a + n].copy_from_slice(&src[..n]);
        n
    }

    fn read_at(&self, offset: usize, dst: &mut [u8]) -> usize {
        let s = offset.min(self.len);
        let n = dst.len().min(self.len - s);
        dst[..n].copy_from_slice(&self.bytes()[s..s + n]);
        n
    }
}

/// Runs one command with `buf` as its data buffer; returns the response and the
/// buffer's bytes afterwards.
fn run_placed(f: &mut Fixture, cdb: &[u8], dir: DataDir, buf: PlacedBuf) -> (CmdResponse, Vec<u8>) {
    let mut c = f.cmd(cdb, dir, Vec::new());
    c.data = Box::new(buf);
    let token = c.token;
    let n = f.nexus.clone();
    f.worker.submit(&n, c);
    let done = f.wait_token(token);
    let mut out = vec![0u8; done.data.len()];
    done.data.read_at(0, &mut out);
    (done.response.expect("not aborted"), out)
}

/// WRITE and READ on an `O_DIRECT` file with transport buffers aligned to 4096
/// bytes: the zero-copy path works when the transport's memory is aligned.
#[test]
fn o_direct_with_aligned_transport_buffers() {
    let mut f = Fixture::file_direct();
    let data = pattern(8 * BS, 21);
    let (r, _) = run_placed(
        &mut f,
        &rw10(0x2a, 16, 8),
        DataDir::ToDevice,
        PlacedBuf::new(&data, 0),
    );
    assert_eq!(r.status, ScsiStatus::Good, "{}", describe(&r));
    let (r, back) = run_placed(
        &mut f,
        &rw10(0x28, 16, 8),
        DataDir::FromDevice,
        PlacedBuf::new(&vec![0; 8 * BS], 0),
    );
    assert_eq!(r.status, ScsiStatus::Good, "{}", describe(&r));
    assert_eq!(back, data);
    let bounced = f
        .lun
        .stats
        .bounce_copies
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(bounced, 0, "aligned memory goes to the backend as it is");
}

/// The same with a transport buffer 16 bytes past an aligned address (what a heap
/// allocation or a guest's memory may well be): the worker bounces it through an
/// aligned copy, and counts the copy.
#[test]
fn o_direct_with_unaligned_transport_buffers() {
    let mut f = Fixture::file_direct();
    let data = pattern(8 * BS, 22);
    let (r, _) = run_placed(
        &mut f,
        &rw10(0x2a, 16, 8),
        DataDir::ToDevice,
        PlacedBuf::new(&data, 16),
    );
    assert_eq!(r.status, ScsiStatus::Good, "{}", describe(&r));
    let bounced = f
        .lun
        .stats
        .bounce_copies
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(bounced, 1, "one bounce for the unaligned write");
    let (r, back) = run_placed(
        &mut f,
        &rw10(0x28, 16, 8),
        DataDir::FromDevice,
        PlacedBuf::new(&vec![0u8; 8 * BS], 16),
    );
    assert_eq!(r.status, ScsiStatus::Good, "{}", describe(&r));
    assert_eq!(back, data);
    let bounced = f
        .lun
        .stats
        .bounce_copies
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(bounced, 2, "and one for the unaligned read");
}

/// WRITE SAME with an aligned data-out block on an `O_DIRECT` file: the pattern
/// is written from the worker's scratch buffer (`Slot::scratch`, a `Vec<u8>`), not
/// from the transport's buffer, so aligning the transport's memory is not enough:
/// the worker bounces unaligned scratch too (as for COMPARE AND WRITE's compare
/// read, VERIFY with BYTCHK and the read-modify-write of a partial block).
#[test]
fn o_direct_write_same_from_scratch() {
    let mut f = Fixture::file_direct();
    let blk = pattern(BS, 23);
    let (r, _) = run_placed(
        &mut f,
        &rw16(0x93, 0, 300),
        DataDir::ToDevice,
        PlacedBuf::new(&blk, 0),
    );
    assert_eq!(r.status, ScsiStatus::Good, "{}", describe(&r));
}
