//! Field access over byte slices: every read is bounds-checked and returns
//! `None` past the end, so that a parser's length check is the only place a
//! short IU is diagnosed.

use super::Tag;

/// Offset of the tag in every IU but the RDMA/CM login request.
pub(crate) const TAG_OFF: usize = 8;

pub(crate) fn bytes<const N: usize>(b: &[u8], off: usize) -> Option<[u8; N]> {
    let end = off.checked_add(N)?;
    b.get(off..end)?.try_into().ok()
}

pub(crate) fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    bytes::<2>(b, off).map(u16::from_be_bytes)
}

pub(crate) fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    bytes::<4>(b, off).map(u32::from_be_bytes)
}

pub(crate) fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    bytes::<8>(b, off).map(u64::from_be_bytes)
}

pub(crate) fn u8_at(b: &[u8], off: usize) -> Option<u8> {
    b.get(off).copied()
}

/// The tag at byte 8, if the IU reaches that far.
pub(crate) fn tag(b: &[u8]) -> Option<Tag> {
    bytes::<8>(b, TAG_OFF)
}

/// Copies `src` into `out` at `off`; `false` (and nothing written) if it does
/// not fit.
pub(crate) fn put(out: &mut [u8], off: usize, src: &[u8]) -> bool {
    let Some(end) = off.checked_add(src.len()) else {
        return false;
    };
    match out.get_mut(off..end) {
        Some(dst) => {
            dst.copy_from_slice(src);
            true
        }
        None => false,
    }
}

/// Writes fields into a fixed-size array whose layout the caller knows fits:
/// offsets are constants checked by the tests, and a miss writes nothing.
pub(crate) struct Fixed<'a>(pub &'a mut [u8]);

impl Fixed<'_> {
    pub fn u8(&mut self, off: usize, v: u8) -> &mut Self {
        put(self.0, off, &[v]);
        self
    }
    pub fn u16(&mut self, off: usize, v: u16) -> &mut Self {
        put(self.0, off, &v.to_be_bytes());
        self
    }
    pub fn u32(&mut self, off: usize, v: u32) -> &mut Self {
        put(self.0, off, &v.to_be_bytes());
        self
    }
    pub fn u64(&mut self, off: usize, v: u64) -> &mut Self {
        put(self.0, off, &v.to_be_bytes());
        self
    }
    pub fn bytes(&mut self, off: usize, v: &[u8]) -> &mut Self {
        put(self.0, off, v);
        self
    }
}
