//! What RECEIVE COPY RESULTS reports: the copy operations of one LUN keyed by
//! (I_T nexus, list identifier), their status, progress and failed segment
//! details, and the data of the OPERATING PARAMETERS service action.

use crate::nexus::NexusKey;
use crate::sense::{asc, Sense};

use super::parse::{
    ListIdUsage, MAX_DESCRIPTOR_LIST_LEN, MAX_SEGMENT_DESCRIPTORS, MAX_TARGET_DESCRIPTORS,
    SEG_DESC_BLOCK_TO_BLOCK, TARGET_DESC_IDENTIFICATION,
};

/// Copy operations remembered per LUN. When full, the oldest finished one goes.
pub const MAX_COPY_RECORDS: usize = 64;
/// MAXIMUM SEGMENT LENGTH we report and enforce, bytes.
pub const MAX_SEGMENT_LEN: u32 = 256 << 20;

/// COPY MANAGER STATUS values (SPC-4 6.18.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyStatus {
    InProgress = 0x00,
    Completed = 0x01,
    CompletedWithErrors = 0x02,
}

/// The details of a failed copy, for FAILED SEGMENT DETAILS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FailedDetails {
    /// The status byte the EXTENDED COPY command ended with.
    pub status: u8,
    /// Its sense data, as sent.
    pub sense: Vec<u8>,
}

#[derive(Debug)]
struct Record {
    key: NexusKey,
    list_id: u8,
    /// Unique per LUN: tells this copy from a later one with the same list id.
    id: u64,
    usage: ListIdUsage,
    status: CopyStatus,
    segments_processed: u16,
    bytes: u64,
    /// COPY STATUS of the finished copy was delivered: it is gone.
    status_taken: bool,
    failed: Option<FailedDetails>,
}

impl Record {
    fn spent(&self) -> bool {
        self.status_taken && self.failed.is_none()
    }
}

/// Copy operations of one LUN, for RECEIVE COPY RESULTS (in `Lun::copy`).
#[derive(Debug, Default)]
pub struct CopyState {
    records: Vec<Record>,
    next_id: u64,
}

/// How an EXTENDED COPY command ended, for its record.
pub(crate) enum Outcome {
    Good,
    Failed(FailedDetails),
}

impl CopyState {
    /// Starts the record of a copy. `Ok(None)`: LIST ID USAGE 11b, nothing kept.
    /// OPERATION IN PROGRESS if this I_T nexus has a copy with this list id
    /// running; INSUFFICIENT RESOURCES if every slot holds a running copy.
    pub(crate) fn begin(
        &mut self,
        key: &NexusKey,
        list_id: u8,
        usage: ListIdUsage,
    ) -> Result<Option<u64>, Sense> {
        if usage == ListIdUsage::None {
            return Ok(None);
        }
        let same = |r: &Record| r.list_id == list_id && r.key == *key;
        if self
            .records
            .iter()
            .any(|r| same(r) && r.status == CopyStatus::InProgress)
        {
            return Err(Sense::illegal(asc::OPERATION_IN_PROGRESS));
        }
        // A new copy with the same list id discards what the old one left.
        self.records.retain(|r| !same(r));
        if self.records.len() >= MAX_COPY_RECORDS {
            // Records are in arrival order: drop the oldest finished one.
            match self
                .records
                .iter()
                .position(|r| r.status != CopyStatus::InProgress)
            {
                Some(i) => {
                    self.records.remove(i);
                }
                None => return Err(Sense::illegal(asc::INSUFFICIENT_RESOURCES)),
            }
        }
        self.next_id += 1;
        let id = self.next_id;
        self.records.push(Record {
            key: key.clone(),
            list_id,
            id,
            usage,
            status: CopyStatus::InProgress,
            segments_processed: 0,
            bytes: 0,
            status_taken: false,
            failed: None,
        });
        Ok(Some(id))
    }

    fn get_mut(&mut self, id: u64) -> Option<&mut Record> {
        self.records.iter_mut().find(|r| r.id == id)
    }

    /// Progress of a running copy: segments processed (the current one included)
    /// and bytes written.
    pub(crate) fn progress(&mut self, id: u64, segments: usize, bytes: u64) {
        if let Some(r) = self.get_mut(id) {
            r.segments_processed = u16::try_from(segments).unwrap_or(u16::MAX);
            r.bytes = bytes;
        }
    }

    /// A copy ended. Failed segment details are held only with LIST ID USAGE 00b.
    pub(crate) fn finish(&mut self, id: u64, outcome: Outcome) {
        if let Some(r) = self.get_mut(id) {
            if r.status != CopyStatus::InProgress {
                return;
            }
            match outcome {
                Outcome::Good => r.status = CopyStatus::Completed,
                Outcome::Failed(f) => {
                    r.status = CopyStatus::CompletedWithErrors;
                    if r.usage == ListIdUsage::Hold {
                        r.failed = Some(f);
                    }
                }
            }
        }
    }

    /// COPY STATUS data (SPC-4 6.18.3) for this nexus' list id, or `None` if there
    /// is no such copy (its status already delivered, or never started). The
    /// status of a finished copy is discarded once delivered whole.
    pub(crate) fn copy_status(
        &mut self,
        key: &NexusKey,
        list_id: u8,
        alloc: usize,
    ) -> Option<Vec<u8>> {
        let i = self
            .records
            .iter()
            .position(|r| r.key == *key && r.list_id == list_id && !r.status_taken)?;
        let r = &mut self.records[i];
        let mut d = vec![0u8; 12];
        d[0..4].copy_from_slice(&8u32.to_be_bytes());
        d[4] = r.status as u8;
        d[5..7].copy_from_slice(&r.segments_processed.to_be_bytes());
        let (units, count) = transfer_count(r.bytes);
        d[7] = units;
        d[8..12].copy_from_slice(&count.to_be_bytes());
        if r.status != CopyStatus::InProgress && alloc >= d.len() {
            r.status_taken = true;
            if r.spent() {
                self.records.remove(i);
            }
        }
        Some(d)
    }

    /// FAILED SEGMENT DETAILS data (SPC-4 6.18.5): empty (AVAILABLE DATA zero) if
    /// none are held. Held details are discarded once delivered whole, or when
    /// asked for with an allocation length of zero.
    pub(crate) fn failed_segment_details(
        &mut self,
        key: &NexusKey,
        list_id: u8,
        alloc: usize,
    ) -> Vec<u8> {
        let Some(i) = self.records.iter().position(|r| {
            r.key == *key
                && r.list_id == list_id
                && r.status != CopyStatus::InProgress
                && r.failed.is_some()
        }) else {
            return vec![0u8; 4];
        };
        let r = &mut self.records[i];
        let Some(f) = &r.failed else {
            return vec![0u8; 4];
        };
        let sense_len = f.sense.len().min(usize::from(u16::MAX) - 60);
        let mut d = vec![0u8; 60];
        let avail = u32::try_from(56 + sense_len).unwrap_or(u32::MAX);
        d[0..4].copy_from_slice(&avail.to_be_bytes());
        d[56] = f.status;
        d[58..60].copy_from_slice(&(sense_len as u16).to_be_bytes());
        d.extend_from_slice(&f.sense[..sense_len]);
        if alloc == 0 || alloc >= d.len() {
            r.failed = None;
            if r.spent() {
                self.records.remove(i);
            }
        }
        d
    }

    /// I_T nexus loss: what that nexus' copies left is discarded.
    pub(crate) fn forget_nexus(&mut self, key: &NexusKey) {
        self.records.retain(|r| r.key != *key);
    }

    /// Logical unit reset: everything is discarded.
    pub(crate) fn clear(&mut self) {
        self.records.clear();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }
}

/// TRANSFER COUNT UNITS and TRANSFER COUNT: bytes while they fit in 32 bits,
/// else the smallest power-of-1024 unit that makes them fit (rounded down).
fn transfer_count(bytes: u64) -> (u8, u32) {
    let mut units = 0u8;
    let mut v = bytes;
    while v > u64::from(u32::MAX) {
        v >>= 10;
        units += 1;
    }
    (units, v as u32)
}

/// OPERATING PARAMETERS data (SPC-4 6.18.4).
pub(crate) fn operating_parameters() -> Vec<u8> {
    let codes = [SEG_DESC_BLOCK_TO_BLOCK, TARGET_DESC_IDENTIFICATION];
    let mut d = vec![0u8; 44];
    d[4] = 0x01; // SNLID: LIST ID USAGE 11b supported
    d[8..10].copy_from_slice(&(MAX_TARGET_DESCRIPTORS as u16).to_be_bytes());
    d[10..12].copy_from_slice(&(MAX_SEGMENT_DESCRIPTORS as u16).to_be_bytes());
    d[12..16].copy_from_slice(&MAX_DESCRIPTOR_LIST_LEN.to_be_bytes());
    d[16..20].copy_from_slice(&MAX_SEGMENT_LEN.to_be_bytes());
    // MAXIMUM INLINE DATA LENGTH, HELD DATA LIMIT, MAXIMUM STREAM DEVICE TRANSFER
    // SIZE: zero (no inline data, no held data, no stream devices).
    d[34..36].copy_from_slice(&(MAX_COPY_RECORDS as u16).to_be_bytes());
    d[36] = MAX_COPY_RECORDS as u8; // MAXIMUM CONCURRENT COPIES
    d[37] = 9; // DATA SEGMENT GRANULARITY: 512 bytes (log 2)
    d[38] = 9; // INLINE DATA GRANULARITY
    d[39] = 9; // HELD DATA GRANULARITY
    d[43] = codes.len() as u8;
    d.extend_from_slice(&codes);
    let avail = (d.len() - 4) as u32;
    d[0..4].copy_from_slice(&avail.to_be_bytes());
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn key(n: &str) -> NexusKey {
        NexusKey {
            initiator: Arc::from(n),
            relative_port: 1,
        }
    }

    #[test]
    fn status_lifecycle_and_discard_after_delivery() {
        let mut s = CopyState::default();
        let k = key("a");
        let id = s.begin(&k, 5, ListIdUsage::Hold).unwrap().unwrap();
        let d = s.copy_status(&k, 5, 255).unwrap();
        assert_eq!(d[4], CopyStatus::InProgress as u8);
        assert_eq!(
            s.begin(&k, 5, ListIdUsage::Hold).unwrap_err().asc,
            asc::OPERATION_IN_PROGRESS
        );
        // Another nexus may use the same list id.
        assert!(s
            .begin(&key("b"), 5, ListIdUsage::NoHold)
            .unwrap()
            .is_some());
        s.progress(id, 2, 4096);
        s.finish(id, Outcome::Good);
        // A short allocation does not consume it.
        assert!(s.copy_status(&k, 5, 4).is_some());
        let d = s.copy_status(&k, 5, 12).unwrap();
        assert_eq!(&d[..4], &8u32.to_be_bytes());
        assert_eq!(d[4], CopyStatus::Completed as u8);
        assert_eq!(&d[5..7], &2u16.to_be_bytes());
        assert_eq!(d[7], 0);
        assert_eq!(&d[8..12], &4096u32.to_be_bytes());
        assert!(s.copy_status(&k, 5, 12).is_none());
    }

    #[test]
    fn failed_details_held_only_with_hold() {
        let mut s = CopyState::default();
        let k = key("a");
        let id = s.begin(&k, 1, ListIdUsage::Hold).unwrap().unwrap();
        s.finish(
            id,
            Outcome::Failed(FailedDetails {
                status: 2,
                sense: vec![0x70, 0, 0x0a],
            }),
        );
        let d = s.failed_segment_details(&k, 1, 10);
        assert_eq!(&d[..4], &59u32.to_be_bytes());
        assert_eq!(d[56], 2);
        assert_eq!(&d[58..60], &3u16.to_be_bytes());
        assert_eq!(&d[60..], &[0x70, 0, 0x0a]);
        // Short allocation kept it; a full one consumes it.
        assert_eq!(s.failed_segment_details(&k, 1, 100).len(), 63);
        assert_eq!(s.failed_segment_details(&k, 1, 100), vec![0u8; 4]);
        let id = s.begin(&k, 2, ListIdUsage::NoHold).unwrap().unwrap();
        s.finish(
            id,
            Outcome::Failed(FailedDetails {
                status: 2,
                sense: vec![1],
            }),
        );
        assert_eq!(s.failed_segment_details(&k, 2, 100), vec![0u8; 4]);
        assert_eq!(s.copy_status(&k, 2, 12).unwrap()[4], 2);
    }

    #[test]
    fn bounded_and_no_list_id() {
        let mut s = CopyState::default();
        let k = key("a");
        assert_eq!(s.begin(&k, 9, ListIdUsage::None).unwrap(), None);
        assert_eq!(s.len(), 0);
        for i in 0..MAX_COPY_RECORDS {
            let id = s.begin(&k, i as u8, ListIdUsage::Hold).unwrap().unwrap();
            if i > 0 {
                s.finish(id, Outcome::Good);
            }
        }
        // Full: the oldest finished (list id 1) goes, the running one (0) stays.
        s.begin(&k, 200, ListIdUsage::Hold).unwrap();
        assert_eq!(s.len(), MAX_COPY_RECORDS);
        assert!(s.copy_status(&k, 1, 12).is_none());
        assert!(s.copy_status(&k, 0, 12).is_some());
        s.forget_nexus(&k);
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn transfer_count_scales() {
        assert_eq!(transfer_count(5), (0, 5));
        assert_eq!(transfer_count(1 << 33), (1, 1 << 23));
    }

    #[test]
    fn operating_parameters_layout() {
        let d = operating_parameters();
        assert_eq!(d.len(), 46);
        assert_eq!(&d[..4], &42u32.to_be_bytes());
        assert_eq!(&d[8..10], &(MAX_TARGET_DESCRIPTORS as u16).to_be_bytes());
        assert_eq!(d[43], 2);
        assert_eq!(&d[44..], &[0x02, 0xe4]);
    }
}
