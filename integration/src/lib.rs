//! End-to-end tests of oxtarget against real peers.
