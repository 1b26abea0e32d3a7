//! Serves RAM LUNs over iSCSI on 127.0.0.1 until killed, for running initiators
//! (libiscsi's iscsi-test-cu, qemu-img) by hand:
//! `cargo run -p oxtarget-iscsi --example serve -- PORT [LUNS] [MIB] [removable]
//! [readonly] [r2t]` (`r2t`: InitialR2T=Yes, no immediate data, 64 KiB
//! bursts, so that writes go through R2T and Data-Out).

#[path = "../tests/common/mod.rs"]
mod common;

fn main() {
    let mut args = std::env::args().skip(1);
    let port = args.next().and_then(|a| a.parse().ok()).unwrap_or(3260);
    let luns = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let mib: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(256);
    let flags: Vec<String> = args.collect();
    let removable = flags.iter().any(|f| f == "removable");
    let read_only = flags.iter().any(|f| f == "readonly");
    let r2t = flags.iter().any(|f| f == "r2t");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let server = common::start_custom(
        addr,
        luns,
        mib << 20,
        &|c| {
            c.removable = removable;
            c.read_only = read_only;
        },
        |c| {
            if r2t {
                c.policy.initial_r2t = true;
                c.policy.immediate_data = false;
                c.policy.max_burst_length = 64 * 1024;
                c.policy.max_recv_data_segment_length = 16 * 1024;
                c.policy.max_outstanding_r2t = 4;
            }
        },
    );
    println!(
        "serving iscsi://{}/{}/0 ({luns} LUNs of {mib} MiB)",
        server.local_addrs()[0],
        common::IQN
    );
    loop {
        std::thread::park();
    }
}
