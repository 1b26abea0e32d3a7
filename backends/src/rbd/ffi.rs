//! The few librados and librbd calls the RBD backend makes, declared by hand from
//! `rados/librados.h` and `rbd/librbd.h` (Ceph 16.2 "Pacific"; every call here is
//! older than that and unchanged since). Handles are opaque pointers; every
//! function returns 0 or a negative errno unless noted.

use std::ffi::{c_char, c_int, c_void};

pub type RadosT = *mut c_void;
pub type RadosIoctxT = *mut c_void;
pub type RbdImageT = *mut c_void;
pub type RbdCompletionT = *mut c_void;

/// `rbd_callback_t`: called once per completion, on a librbd thread.
pub type RbdCallback = unsafe extern "C" fn(c: RbdCompletionT, arg: *mut c_void);
/// `rbd_update_callback_t`: called on a librbd thread when the image header changed.
pub type RbdUpdateCallback = unsafe extern "C" fn(arg: *mut c_void);

/// `RBD_MAX_BLOCK_NAME_SIZE`.
const MAX_BLOCK_NAME_SIZE: usize = 24;
/// `RBD_MAX_IMAGE_NAME_SIZE`.
const MAX_IMAGE_NAME_SIZE: usize = 96;

/// `rbd_image_info_t` (`rbd_stat` fills it; the last three fields are deprecated).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RbdImageInfo {
    pub size: u64,
    pub obj_size: u64,
    pub num_objs: u64,
    pub order: c_int,
    pub block_name_prefix: [c_char; MAX_BLOCK_NAME_SIZE],
    pub parent_pool: i64,
    pub parent_name: [c_char; MAX_IMAGE_NAME_SIZE],
}

impl Default for RbdImageInfo {
    fn default() -> Self {
        RbdImageInfo {
            size: 0,
            obj_size: 0,
            num_objs: 0,
            order: 0,
            block_name_prefix: [0; MAX_BLOCK_NAME_SIZE],
            parent_pool: 0,
            parent_name: [0; MAX_IMAGE_NAME_SIZE],
        }
    }
}

#[link(name = "rados")]
extern "C" {
    pub fn rados_create(cluster: *mut RadosT, id: *const c_char) -> c_int;
    pub fn rados_conf_read_file(cluster: RadosT, path: *const c_char) -> c_int;
    pub fn rados_conf_set(cluster: RadosT, option: *const c_char, value: *const c_char) -> c_int;
    pub fn rados_connect(cluster: RadosT) -> c_int;
    pub fn rados_shutdown(cluster: RadosT);
    pub fn rados_ioctx_create(
        cluster: RadosT,
        pool_name: *const c_char,
        ioctx: *mut RadosIoctxT,
    ) -> c_int;
    pub fn rados_ioctx_destroy(io: RadosIoctxT);
    pub fn rados_ioctx_set_namespace(io: RadosIoctxT, nspace: *const c_char);
}

/// The callback of `rbd_diff_iterate2`: one extent (offset, length, whether it
/// holds data), on the calling thread; a negative return stops the iteration and
/// becomes the call's return value.
pub type RbdDiffCallback =
    unsafe extern "C" fn(off: u64, len: usize, exists: c_int, arg: *mut c_void) -> c_int;

#[link(name = "rbd")]
extern "C" {
    pub fn rbd_open(
        io: RadosIoctxT,
        name: *const c_char,
        image: *mut RbdImageT,
        snap_name: *const c_char,
    ) -> c_int;
    pub fn rbd_open_read_only(
        io: RadosIoctxT,
        name: *const c_char,
        image: *mut RbdImageT,
        snap_name: *const c_char,
    ) -> c_int;
    pub fn rbd_close(image: RbdImageT) -> c_int;
    pub fn rbd_get_size(image: RbdImageT, size: *mut u64) -> c_int;
    pub fn rbd_stat(image: RbdImageT, info: *mut RbdImageInfo, infosize: usize) -> c_int;
    pub fn rbd_resize(image: RbdImageT, size: u64) -> c_int;
    pub fn rbd_flush(image: RbdImageT) -> c_int;
    /// Calls `cb` for the extents of `[ofs, ofs + len)` that hold data (with
    /// `fromsnapname` NULL: against nothing, i.e. every allocated extent), in no
    /// promised order. `whole_object` 0 asks the OSDs for the extents inside each
    /// object instead of reporting whole objects.
    pub fn rbd_diff_iterate2(
        image: RbdImageT,
        fromsnapname: *const c_char,
        ofs: u64,
        len: u64,
        include_parent: u8,
        whole_object: u8,
        cb: RbdDiffCallback,
        arg: *mut c_void,
    ) -> c_int;
    pub fn rbd_update_watch(
        image: RbdImageT,
        handle: *mut u64,
        watch_cb: RbdUpdateCallback,
        arg: *mut c_void,
    ) -> c_int;
    pub fn rbd_update_unwatch(image: RbdImageT, handle: u64) -> c_int;

    pub fn rbd_aio_create_completion(
        cb_arg: *mut c_void,
        complete_cb: RbdCallback,
        c: *mut RbdCompletionT,
    ) -> c_int;
    /// Bytes transferred (reads, writes) or 0, or a negative errno.
    pub fn rbd_aio_get_return_value(c: RbdCompletionT) -> isize;
    pub fn rbd_aio_release(c: RbdCompletionT);
    pub fn rbd_aio_readv(
        image: RbdImageT,
        iov: *const libc::iovec,
        iovcnt: c_int,
        off: u64,
        c: RbdCompletionT,
    ) -> c_int;
    pub fn rbd_aio_writev(
        image: RbdImageT,
        iov: *const libc::iovec,
        iovcnt: c_int,
        off: u64,
        c: RbdCompletionT,
    ) -> c_int;
    pub fn rbd_aio_flush(image: RbdImageT, c: RbdCompletionT) -> c_int;
    /// With `zero_flags` 0: whole objects are removed, partial ones zeroed (a
    /// discard with no granularity: nothing is skipped).
    pub fn rbd_aio_write_zeroes(
        image: RbdImageT,
        off: u64,
        len: usize,
        c: RbdCompletionT,
        zero_flags: c_int,
        op_flags: c_int,
    ) -> c_int;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    /// Offsets and size as gcc lays out `rbd_image_info_t` on x86_64 and aarch64
    /// (`offsetof` in a C program built against librbd-dev 16.2.15).
    #[test]
    fn image_info_layout_matches_c() {
        assert_eq!(size_of::<RbdImageInfo>(), 160);
        assert_eq!(offset_of!(RbdImageInfo, obj_size), 8);
        assert_eq!(offset_of!(RbdImageInfo, num_objs), 16);
        assert_eq!(offset_of!(RbdImageInfo, order), 24);
        assert_eq!(offset_of!(RbdImageInfo, block_name_prefix), 28);
        assert_eq!(offset_of!(RbdImageInfo, parent_pool), 56);
        assert_eq!(offset_of!(RbdImageInfo, parent_name), 64);
    }
}
