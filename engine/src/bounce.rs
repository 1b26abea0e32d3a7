//! Aligned bounce buffers, for the one case the zero-copy path cannot serve: a
//! backend that needs aligned memory (`O_DIRECT`) and a buffer that is not aligned
//! (a transport's heap buffer, a job's scratch vector). The copy is counted in the
//! LUN's statistics, so an unexpected bounce shows.

use crate::cmd::DataBuf;
use crate::exec::IoBuf;

/// `len` bytes whose start is a multiple of `align`. Safe code: an over-sized vector
/// and an offset into it; the vector is never resized, so the address is stable.
pub(crate) struct AlignedBuf {
    v: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn new(len: usize, align: usize) -> Self {
        let align = align.max(1);
        let v = vec![0u8; len + align];
        let addr = v.as_ptr() as usize;
        let start = (align - addr % align) % align;
        AlignedBuf { v, start, len }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.v[self.start..self.start + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.v[self.start..self.start + self.len]
    }
}

/// An operation in flight through a bounce buffer.
pub(crate) struct Bounce {
    pub buf: AlignedBuf,
    /// Where the data really lives.
    pub target: IoBuf,
    /// Bytes of `target` (the bounce may be longer: reads are rounded up).
    pub len: usize,
    pub read: bool,
}

/// Whether every iovec's address and length are multiples of `align`.
pub(crate) fn aligned(iovs: &[libc::iovec], align: usize) -> bool {
    align <= 1
        || iovs
            .iter()
            .all(|v| (v.iov_base as usize).is_multiple_of(align) && v.iov_len.is_multiple_of(align))
}

/// Copies `target`'s bytes into `out` (a write's data into the bounce).
pub(crate) fn gather(target: IoBuf, data: &dyn DataBuf, scratch: &[u8], out: &mut [u8]) {
    match target {
        IoBuf::None => {}
        IoBuf::Data { offset, .. } => {
            data.read_at(offset, out);
        }
        IoBuf::Scratch { offset, .. } => {
            let src = scratch.get(offset..).unwrap_or(&[]);
            let n = src.len().min(out.len());
            out[..n].copy_from_slice(&src[..n]);
        }
    }
}

/// Copies `src` into `target` (a read's data out of the bounce).
pub(crate) fn scatter(target: IoBuf, data: &mut dyn DataBuf, scratch: &mut [u8], src: &[u8]) {
    match target {
        IoBuf::None => {}
        IoBuf::Data { offset, .. } => {
            data.write_at(offset, src);
        }
        IoBuf::Scratch { offset, .. } => {
            if let Some(dst) = scratch.get_mut(offset..) {
                let n = dst.len().min(src.len());
                dst[..n].copy_from_slice(&src[..n]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffers_start_on_the_boundary() {
        for align in [512usize, 4096] {
            for len in [0usize, 1, 512, 5000] {
                let mut b = AlignedBuf::new(len, align);
                assert_eq!(b.as_slice().as_ptr() as usize % align, 0);
                assert_eq!(b.as_mut_slice().len(), len);
            }
        }
    }

    #[test]
    fn alignment_check_looks_at_address_and_length() {
        let b = AlignedBuf::new(1024, 512);
        let base = b.as_slice().as_ptr() as *mut libc::c_void;
        let ok = [libc::iovec {
            iov_base: base,
            iov_len: 512,
        }];
        assert!(aligned(&ok, 512));
        let short = [libc::iovec {
            iov_base: base,
            iov_len: 100,
        }];
        assert!(!aligned(&short, 512));
        assert!(aligned(&short, 1));
    }
}
