//! The Rust structs of `ffi` against the C compiler's idea of them (shim.c's
//! table), so that a header that changes under us fails a test instead of
//! corrupting a work request.

use std::mem::{offset_of, size_of};

use super::ffi::*;
use super::shim::{oxt_layout, oxt_layout_count};

/// (name, value in Rust), in the order of shim.c's table.
fn rust_layout() -> Vec<(&'static str, usize)> {
    vec![
        ("sizeof ibv_sge", size_of::<ibv_sge>()),
        ("ibv_sge.addr", offset_of!(ibv_sge, addr)),
        ("ibv_sge.length", offset_of!(ibv_sge, length)),
        ("ibv_sge.lkey", offset_of!(ibv_sge, lkey)),
        ("sizeof ibv_send_wr", size_of::<ibv_send_wr>()),
        ("ibv_send_wr.wr_id", offset_of!(ibv_send_wr, wr_id)),
        ("ibv_send_wr.next", offset_of!(ibv_send_wr, next)),
        ("ibv_send_wr.sg_list", offset_of!(ibv_send_wr, sg_list)),
        ("ibv_send_wr.num_sge", offset_of!(ibv_send_wr, num_sge)),
        ("ibv_send_wr.opcode", offset_of!(ibv_send_wr, opcode)),
        (
            "ibv_send_wr.send_flags",
            offset_of!(ibv_send_wr, send_flags),
        ),
        (
            "ibv_send_wr.wr.rdma.remote_addr",
            offset_of!(ibv_send_wr, wr)
                + offset_of!(ibv_send_wr__bindgen_ty_2__bindgen_ty_1, remote_addr),
        ),
        (
            "ibv_send_wr.wr.rdma.rkey",
            offset_of!(ibv_send_wr, wr) + offset_of!(ibv_send_wr__bindgen_ty_2__bindgen_ty_1, rkey),
        ),
        ("sizeof ibv_recv_wr", size_of::<ibv_recv_wr>()),
        ("ibv_recv_wr.wr_id", offset_of!(ibv_recv_wr, wr_id)),
        ("ibv_recv_wr.next", offset_of!(ibv_recv_wr, next)),
        ("ibv_recv_wr.sg_list", offset_of!(ibv_recv_wr, sg_list)),
        ("ibv_recv_wr.num_sge", offset_of!(ibv_recv_wr, num_sge)),
        ("sizeof ibv_wc", size_of::<ibv_wc>()),
        ("ibv_wc.wr_id", offset_of!(ibv_wc, wr_id)),
        ("ibv_wc.status", offset_of!(ibv_wc, status)),
        ("ibv_wc.opcode", offset_of!(ibv_wc, opcode)),
        ("ibv_wc.byte_len", offset_of!(ibv_wc, byte_len)),
        ("ibv_wc.qp_num", offset_of!(ibv_wc, qp_num)),
        ("sizeof ibv_qp_init_attr", size_of::<ibv_qp_init_attr>()),
        (
            "ibv_qp_init_attr.send_cq",
            offset_of!(ibv_qp_init_attr, send_cq),
        ),
        (
            "ibv_qp_init_attr.recv_cq",
            offset_of!(ibv_qp_init_attr, recv_cq),
        ),
        ("ibv_qp_init_attr.cap", offset_of!(ibv_qp_init_attr, cap)),
        (
            "ibv_qp_init_attr.qp_type",
            offset_of!(ibv_qp_init_attr, qp_type),
        ),
        (
            "ibv_qp_init_attr.sq_sig_all",
            offset_of!(ibv_qp_init_attr, sq_sig_all),
        ),
        ("sizeof ibv_qp_cap", size_of::<ibv_qp_cap>()),
        ("sizeof rdma_conn_param", size_of::<rdma_conn_param>()),
        (
            "rdma_conn_param.private_data",
            offset_of!(rdma_conn_param, private_data),
        ),
        (
            "rdma_conn_param.private_data_len",
            offset_of!(rdma_conn_param, private_data_len),
        ),
        (
            "rdma_conn_param.responder_resources",
            offset_of!(rdma_conn_param, responder_resources),
        ),
        (
            "rdma_conn_param.initiator_depth",
            offset_of!(rdma_conn_param, initiator_depth),
        ),
        (
            "rdma_conn_param.flow_control",
            offset_of!(rdma_conn_param, flow_control),
        ),
        (
            "rdma_conn_param.rnr_retry_count",
            offset_of!(rdma_conn_param, rnr_retry_count),
        ),
        (
            "rdma_conn_param.qp_num",
            offset_of!(rdma_conn_param, qp_num),
        ),
        ("sizeof rdma_cm_event", size_of::<rdma_cm_event>()),
        ("rdma_cm_event.id", offset_of!(rdma_cm_event, id)),
        (
            "rdma_cm_event.listen_id",
            offset_of!(rdma_cm_event, listen_id),
        ),
        ("rdma_cm_event.event", offset_of!(rdma_cm_event, event)),
        ("rdma_cm_event.status", offset_of!(rdma_cm_event, status)),
        (
            "rdma_cm_event.param.conn.private_data",
            offset_of!(rdma_cm_event, param) + offset_of!(rdma_conn_param, private_data),
        ),
        (
            "rdma_cm_event.param.conn.private_data_len",
            offset_of!(rdma_cm_event, param) + offset_of!(rdma_conn_param, private_data_len),
        ),
        ("sizeof rdma_cm_id", size_of::<rdma_cm_id>()),
        ("rdma_cm_id.verbs", offset_of!(rdma_cm_id, verbs)),
        ("rdma_cm_id.channel", offset_of!(rdma_cm_id, channel)),
        ("rdma_cm_id.context", offset_of!(rdma_cm_id, context)),
        ("rdma_cm_id.qp", offset_of!(rdma_cm_id, qp)),
        ("rdma_cm_id.route", offset_of!(rdma_cm_id, route)),
        (
            "rdma_cm_id.route.addr.dst_addr",
            offset_of!(rdma_cm_id, route)
                + offset_of!(rdma_route, addr)
                + offset_of!(rdma_addr, __bindgen_anon_2),
        ),
        ("sizeof rdma_event_channel", size_of::<rdma_event_channel>()),
        ("rdma_event_channel.fd", offset_of!(rdma_event_channel, fd)),
        ("sizeof ibv_comp_channel", size_of::<ibv_comp_channel>()),
        ("ibv_comp_channel.fd", offset_of!(ibv_comp_channel, fd)),
        ("sizeof ibv_mr", size_of::<ibv_mr>()),
        ("ibv_mr.addr", offset_of!(ibv_mr, addr)),
        ("ibv_mr.length", offset_of!(ibv_mr, length)),
        ("ibv_mr.lkey", offset_of!(ibv_mr, lkey)),
        ("ibv_mr.rkey", offset_of!(ibv_mr, rkey)),
        ("sizeof ibv_device_attr", size_of::<ibv_device_attr>()),
        (
            "ibv_device_attr.max_qp_wr",
            offset_of!(ibv_device_attr, max_qp_wr),
        ),
        (
            "ibv_device_attr.max_sge",
            offset_of!(ibv_device_attr, max_sge),
        ),
        (
            "ibv_device_attr.max_cqe",
            offset_of!(ibv_device_attr, max_cqe),
        ),
        (
            "ibv_device_attr.max_qp_init_rd_atom",
            offset_of!(ibv_device_attr, max_qp_init_rd_atom),
        ),
    ]
}

#[test]
fn rust_structs_match_the_c_headers() {
    let rust = rust_layout();
    // SAFETY: plain functions of the shim without arguments or side effects.
    let n = unsafe { oxt_layout_count() };
    assert_eq!(
        n,
        rust.len(),
        "shim.c's table and this list differ in length"
    );
    let mut wrong = Vec::new();
    for (i, (name, r)) in rust.iter().enumerate() {
        // SAFETY: as above; `i` is in range (and out of range returns usize::MAX).
        let c = unsafe { oxt_layout(i) };
        if c != *r {
            wrong.push(format!("{name}: C {c}, Rust {r}"));
        }
    }
    assert!(wrong.is_empty(), "layout mismatch: {wrong:?}");
    // SAFETY: as above.
    assert_eq!(unsafe { oxt_layout(n) }, usize::MAX);
}

#[test]
fn wc_status_names_come_from_the_library() {
    let ok = super::Wc {
        wr_id: 0,
        status: IBV_WC_SUCCESS,
        opcode: super::WcOpcode::Send,
        byte_len: 0,
    };
    assert!(ok.ok());
    assert_eq!(ok.status_str(), "success");
    let flushed = super::Wc {
        status: IBV_WC_WR_FLUSH_ERR,
        ..ok
    };
    assert!(!flushed.ok());
    assert_eq!(flushed.status_str(), "Work Request Flushed Error");
}
