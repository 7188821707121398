// SPDX-License-Identifier: GPL-2.0
/*
 * The floor of tcplife-exporter's design: a sock_ops program on the root
 * cgroup that asks for state-change callbacks at each birth, as the exporter
 * does, and does nothing else. The bench runs the churn with it attached to
 * measure what the callbacks cost before any work.
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

char LICENSE[] SEC("license") = "GPL";
