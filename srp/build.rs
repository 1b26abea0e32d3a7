//! Builds the C shim that exports libibverbs' static-inline verbs, and links
//! libibverbs and librdmacm. The Rust bindings themselves are committed
//! (src/rdma/ffi.rs), so a build needs no libclang.

fn main() {
    println!("cargo:rerun-if-changed=src/rdma/shim.c");
    cc::Build::new()
        .file("src/rdma/shim.c")
        .warnings(true)
        .compile("oxt_rdma_shim");
    println!("cargo:rustc-link-lib=ibverbs");
    println!("cargo:rustc-link-lib=rdmacm");
}
