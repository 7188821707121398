// SPDX-License-Identifier: GPL-2.0
/*
 * Programs that do nothing. noop_sockops is the floor of tcplife-exporter's
 * design: a sock_ops program on the root cgroup that asks for state-change
 * callbacks at each birth, as the exporter does, and nothing else; the bench
 * runs the churn with it attached to measure what the callbacks cost before
 * any work. noop_tracepoint sits where other TCP tracers (bcc, bpftrace)
 * attach: the stress test attaches and detaches both, over and over, beside
 * the exporter.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("sockops")
int noop_sockops(struct bpf_sock_ops *ops)
{
	if (ops->op == BPF_SOCK_OPS_TCP_CONNECT_CB ||
	    ops->op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		bpf_sock_ops_cb_flags_set(ops, ops->bpf_sock_ops_cb_flags |
					  BPF_SOCK_OPS_STATE_CB_FLAG);
	return 1;
}

SEC("tp_btf/inet_sock_set_state")
int noop_tracepoint(void *ctx)
{
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
