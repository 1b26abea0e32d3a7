//! The `oxtarget` daemon as a library: its configuration, its objects and
//! their RPC methods, and the CLI client. The binary (`src/main.rs`) is a thin
//! shell over it; the fuzz targets and integration tests use it directly.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod serve;
