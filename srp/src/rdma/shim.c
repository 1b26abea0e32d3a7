/*
 * The verbs that libibverbs defines as static inline functions in its header
 * (they call through the provider's ops table), exported as real symbols so that
 * Rust can call them, plus the sizes and offsets of the structs Rust builds
 * itself, for the layout tests.
 */
#include <stddef.h>
#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>

int oxt_ibv_post_send(struct ibv_qp *qp, struct ibv_send_wr *wr,
		      struct ibv_send_wr **bad_wr)
{
	return ibv_post_send(qp, wr, bad_wr);
}

int oxt_ibv_post_recv(struct ibv_qp *qp, struct ibv_recv_wr *wr,
		      struct ibv_recv_wr **bad_wr)
{
	return ibv_post_recv(qp, wr, bad_wr);
}

int oxt_ibv_poll_cq(struct ibv_cq *cq, int num_entries, struct ibv_wc *wc)
{
	return ibv_poll_cq(cq, num_entries, wc);
}

int oxt_ibv_req_notify_cq(struct ibv_cq *cq, int solicited_only)
{
	return ibv_req_notify_cq(cq, solicited_only);
}

/* The order must match LAYOUT_NAMES in src/rdma/layout_tests.rs. */
static const size_t oxt_layout_table[] = {
	sizeof(struct ibv_sge),
	offsetof(struct ibv_sge, addr),
	offsetof(struct ibv_sge, length),
	offsetof(struct ibv_sge, lkey),
	sizeof(struct ibv_send_wr),
	offsetof(struct ibv_send_wr, wr_id),
	offsetof(struct ibv_send_wr, next),
	offsetof(struct ibv_send_wr, sg_list),
	offsetof(struct ibv_send_wr, num_sge),
	offsetof(struct ibv_send_wr, opcode),
	offsetof(struct ibv_send_wr, send_flags),
	offsetof(struct ibv_send_wr, wr.rdma.remote_addr),
	offsetof(struct ibv_send_wr, wr.rdma.rkey),
	sizeof(struct ibv_recv_wr),
	offsetof(struct ibv_recv_wr, wr_id),
	offsetof(struct ibv_recv_wr, next),
	offsetof(struct ibv_recv_wr, sg_list),
	offsetof(struct ibv_recv_wr, num_sge),
	sizeof(struct ibv_wc),
	offsetof(struct ibv_wc, wr_id),
	offsetof(struct ibv_wc, status),
	offsetof(struct ibv_wc, opcode),
	offsetof(struct ibv_wc, byte_len),
	offsetof(struct ibv_wc, qp_num),
	sizeof(struct ibv_qp_init_attr),
	offsetof(struct ibv_qp_init_attr, send_cq),
	offsetof(struct ibv_qp_init_attr, recv_cq),
	offsetof(struct ibv_qp_init_attr, cap),
	offsetof(struct ibv_qp_init_attr, qp_type),
	offsetof(struct ibv_qp_init_attr, sq_sig_all),
	sizeof(struct ibv_qp_cap),
	sizeof(struct rdma_conn_param),
	offsetof(struct rdma_conn_param, private_data),
	offsetof(struct rdma_conn_param, private_data_len),
	offsetof(struct rdma_conn_param, responder_resources),
	offsetof(struct rdma_conn_param, initiator_depth),
	offsetof(struct rdma_conn_param, flow_control),
	offsetof(struct rdma_conn_param, rnr_retry_count),
	offsetof(struct rdma_conn_param, qp_num),
	sizeof(struct rdma_cm_event),
	offsetof(struct rdma_cm_event, id),
	offsetof(struct rdma_cm_event, listen_id),
	offsetof(struct rdma_cm_event, event),
	offsetof(struct rdma_cm_event, status),
	offsetof(struct rdma_cm_event, param.conn.private_data),
	offsetof(struct rdma_cm_event, param.conn.private_data_len),
	sizeof(struct rdma_cm_id),
	offsetof(struct rdma_cm_id, verbs),
	offsetof(struct rdma_cm_id, channel),
	offsetof(struct rdma_cm_id, context),
	offsetof(struct rdma_cm_id, qp),
	offsetof(struct rdma_cm_id, route),
	offsetof(struct rdma_cm_id, route.addr.dst_addr),
	sizeof(struct rdma_event_channel),
	offsetof(struct rdma_event_channel, fd),
	sizeof(struct ibv_comp_channel),
	offsetof(struct ibv_comp_channel, fd),
	sizeof(struct ibv_mr),
	offsetof(struct ibv_mr, addr),
	offsetof(struct ibv_mr, length),
	offsetof(struct ibv_mr, lkey),
	offsetof(struct ibv_mr, rkey),
	sizeof(struct ibv_device_attr),
	offsetof(struct ibv_device_attr, max_qp_wr),
	offsetof(struct ibv_device_attr, max_sge),
	offsetof(struct ibv_device_attr, max_cqe),
	offsetof(struct ibv_device_attr, max_qp_init_rd_atom),
};

size_t oxt_layout_count(void)
{
	return sizeof(oxt_layout_table) / sizeof(oxt_layout_table[0]);
}

size_t oxt_layout(size_t i)
{
	return i < oxt_layout_count() ? oxt_layout_table[i] : (size_t)-1;
}
