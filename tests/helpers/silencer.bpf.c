// SPDX-License-Identifier: GPL-2.0
/*
 * A fault for the tests: attached to a cgroup below the root, this sock_ops
 * program runs before the tools' program (a cgroup's own programs run before
 * its ancestors') and, at a socket's first state change after its birth,
 * takes back the state-change callbacks the tools asked for. The tools then
 * never see that session close: a loss they must count when the socket's
 * address is used again.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("sockops")
int silence_closes(struct bpf_sock_ops *ops)
{
	if (ops->op == BPF_SOCK_OPS_STATE_CB)
		bpf_sock_ops_cb_flags_set(ops, ops->bpf_sock_ops_cb_flags &
					  ~BPF_SOCK_OPS_STATE_CB_FLAG);
	return 1;
}

char LICENSE[] SEC("license") = "GPL";
