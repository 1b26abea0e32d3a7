//! Block status of an RBD image: which bytes from an offset on hold data, from
//! the extents `rbd_diff_iterate2` reports over a bounded window (a few objects),
//! turned into the first [`Extent`] the `Backend` contract asks for.
//!
//! librbd knows allocation per object: an object that was never written or was
//! discarded whole does not exist (deallocated); one that exists reports its
//! data up to its size (an object truncated by a discard that reached its end
//! reports less). Zeroed ranges inside an object stay allocated, so they are
//! reported mapped, which is always a correct answer.

use crate::{Extent, ExtentState};

/// Objects one answer looks at: librbd asks about them together (one round of
/// concurrent OSD requests, or none with a fast-diff object map), so the call
/// takes about one OSD round trip, and a GET LBA STATUS that walks a
/// deallocated LUN covers 8 objects (32 MiB by default) per call.
pub(crate) const WINDOW_OBJECTS: u64 = 8;

/// Most extents one call collects: with no parent image librbd reports about
/// one per object; more means something unexpected, answered conservatively.
pub(crate) const MAX_EXTENTS: usize = 1024;

/// The window `[offset, end)` one answer covers: to the end of the
/// `WINDOW_OBJECTS`th object boundary after `offset`, never past `size`.
/// `None` if `offset` is not inside the image.
pub(crate) fn window(offset: u64, size: u64, obj_size: u64) -> Option<u64> {
    if offset >= size {
        return None;
    }
    let obj = obj_size.max(1);
    let start = offset - offset % obj;
    let end = start
        .saturating_add(obj.saturating_mul(WINDOW_OBJECTS))
        .min(size);
    Some(end.max(offset.saturating_add(1)).min(size))
}

/// What librbd reported for one window.
#[derive(Debug, Default)]
pub(crate) struct Reported {
    /// `(offset, len, holds data)` in the order librbd called back.
    pub extents: Vec<(u64, u64, bool)>,
    /// More than `MAX_EXTENTS` came: the list is incomplete.
    pub overflow: bool,
}

/// The first extent from `offset` within `[offset, end)`, given what librbd
/// reported for that window (in any order, possibly overlapping or running
/// outside it). `end > offset`.
pub(crate) fn first_extent(offset: u64, end: u64, obj_size: u64, r: &Reported) -> Extent {
    // Data extents clipped to the window, sorted, merged when they touch.
    let mut data: Vec<(u64, u64)> = r
        .extents
        .iter()
        .filter(|&&(_, len, exists)| exists && len > 0)
        .filter_map(|&(o, len, _)| {
            let s = o.max(offset);
            let e = o.saturating_add(len).min(end);
            (s < e).then_some((s, e))
        })
        .collect();
    data.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(data.len());
    for (s, e) in data {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    let mapped = |to: u64| Extent {
        offset,
        len: to - offset,
        state: ExtentState::Mapped,
    };
    if r.overflow {
        // An incomplete list: data known at `offset` is mapped as far as it is
        // known; anything else is answered mapped to the end of this object,
        // never deallocated on a guess.
        return match merged.first() {
            Some(&(s, e)) if s == offset => mapped(e),
            _ => {
                let obj = obj_size.max(1);
                mapped((offset - offset % obj).saturating_add(obj).min(end))
            }
        };
    }
    match merged.first() {
        Some(&(s, e)) if s == offset => mapped(e),
        Some(&(s, _)) => Extent {
            offset,
            len: s - offset,
            state: ExtentState::Deallocated,
        },
        None => Extent {
            offset,
            len: end - offset,
            state: ExtentState::Deallocated,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OBJ: u64 = 4 << 20;

    fn rep(extents: &[(u64, u64, bool)]) -> Reported {
        Reported {
            extents: extents.to_vec(),
            overflow: false,
        }
    }

    fn ext(offset: u64, len: u64, mapped: bool) -> Extent {
        Extent {
            offset,
            len,
            state: if mapped {
                ExtentState::Mapped
            } else {
                ExtentState::Deallocated
            },
        }
    }

    #[test]
    fn window_is_a_few_objects_and_stays_inside_the_image() {
        assert_eq!(window(0, 1 << 40, OBJ), Some(8 * OBJ));
        // From inside an object: to the 8th boundary after its start.
        assert_eq!(window(OBJ + 512, 1 << 40, OBJ), Some(9 * OBJ));
        assert_eq!(window(0, 64 << 20, OBJ), Some(32 << 20));
        assert_eq!(window(60 << 20, 64 << 20, OBJ), Some(64 << 20));
        // An image that ends inside an object.
        assert_eq!(window(5000, 6000, OBJ), Some(6000));
        assert_eq!(window(6000, 6000, OBJ), None);
        assert_eq!(window(u64::MAX - 1, u64::MAX, OBJ), Some(u64::MAX));
        // A zero object size (librbd never says so) does not divide by zero.
        assert_eq!(window(0, 100, 0), Some(WINDOW_OBJECTS));
    }

    #[test]
    fn nothing_reported_is_deallocated_to_the_window_end() {
        assert_eq!(
            first_extent(4096, OBJ * 8, OBJ, &rep(&[])),
            ext(4096, OBJ * 8 - 4096, false)
        );
    }

    #[test]
    fn data_at_the_offset_is_mapped_across_touching_extents() {
        // librbd calls back per object, not in order.
        let r = rep(&[(OBJ, OBJ, true), (0, OBJ, true), (3 * OBJ, OBJ, true)]);
        assert_eq!(
            first_extent(512, 8 * OBJ, OBJ, &r),
            ext(512, 2 * OBJ - 512, true)
        );
    }

    #[test]
    fn a_hole_before_data_is_deallocated_up_to_it() {
        let r = rep(&[(2 * OBJ, OBJ - 4096, true)]);
        assert_eq!(first_extent(0, 8 * OBJ, OBJ, &r), ext(0, 2 * OBJ, false));
        // After the truncated object's data: deallocated to the window end.
        assert_eq!(
            first_extent(3 * OBJ - 4096, 8 * OBJ, OBJ, &r),
            ext(3 * OBJ - 4096, 5 * OBJ + 4096, false)
        );
    }

    #[test]
    fn extents_outside_the_window_and_holes_are_ignored() {
        let r = rep(&[
            (0, 2 * OBJ, true),
            (OBJ, OBJ, false),
            (9 * OBJ, OBJ, true),
            (5, 0, true),
        ]);
        // From inside the data: mapped to its end.
        assert_eq!(first_extent(OBJ, 8 * OBJ, OBJ, &r), ext(OBJ, OBJ, true));
        // exists = false is a hole, not data.
        let r = rep(&[(OBJ, OBJ, false)]);
        assert_eq!(first_extent(OBJ, 2 * OBJ, OBJ, &r), ext(OBJ, OBJ, false));
        // Data reported past the window end is clipped to it.
        let r = rep(&[(0, 100 * OBJ, true)]);
        assert_eq!(first_extent(0, 8 * OBJ, OBJ, &r), ext(0, 8 * OBJ, true));
    }

    #[test]
    fn an_incomplete_list_never_claims_a_hole() {
        let r = Reported {
            extents: vec![(2 * OBJ, OBJ, true)],
            overflow: true,
        };
        assert_eq!(
            first_extent(4096, 8 * OBJ, OBJ, &r),
            ext(4096, OBJ - 4096, true)
        );
        let r = Reported {
            extents: vec![(0, OBJ + 4096, true)],
            overflow: true,
        };
        assert_eq!(first_extent(0, 8 * OBJ, OBJ, &r), ext(0, OBJ + 4096, true));
    }
}
