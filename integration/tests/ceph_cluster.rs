//! The test cluster helper (`integration::ceph`) itself: a cluster comes up,
//! takes an image's bytes through `rbd import` and gives them back through
//! `rbd export`; a bluestore OSD keeps them across `stop_osd`/`start_osd`;
//! dropping the cluster leaves none of its daemons running.
//!
//! Run: `cargo test -p oxtarget-integration --features rbd --test ceph_cluster`.

#![cfg(feature = "rbd")]

use integration::ceph::{Cluster, Store};

/// The PIDs the cluster's script recorded.
fn pids(dir: &std::path::Path) -> Vec<i32> {
    ["mon", "osd"]
        .iter()
        .filter_map(|n| std::fs::read_to_string(dir.join("pids").join(format!("{n}.pid"))).ok())
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.starts_with("ceph-"))
}

#[test]
fn bluestore_cluster_keeps_an_image_across_an_osd_restart_and_stops_on_drop() {
    let Some(cluster) = Cluster::require(Store::Bluestore) else {
        return;
    };
    let data: Vec<u8> = (0..(4u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let file = cluster.dir().join("data.raw");
    std::fs::write(&file, &data).expect("data");
    cluster
        .rbd(&[
            "import",
            "--no-progress",
            &file.display().to_string(),
            &cluster.spec("img"),
        ])
        .expect("rbd import");
    assert!(cluster.export("img").expect("rbd export") == data);
    cluster.stop_osd().expect("stop-osd");
    cluster.start_osd().expect("start-osd");
    assert!(cluster.export("img").expect("rbd export after the restart") == data);
    let dir = cluster.dir().to_path_buf();
    let running = pids(&dir);
    assert_eq!(running.len(), 2, "mon and OSD PIDs");
    assert!(running.iter().all(|p| alive(*p)));
    drop(cluster);
    for p in running {
        assert!(!alive(p), "ceph daemon {p} outlived its cluster");
    }
    if std::env::var("OXTARGET_KEEP_CEPH").as_deref() != Ok("1") {
        assert!(!dir.exists(), "the cluster's directory is gone");
    }
}
