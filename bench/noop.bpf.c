// SPDX-License-Identifier: GPL-2.0
/*
 * Two programs that do nothing, on the tracepoint tcplife-exporter uses (it
 * attaches two there: see "No event skipped" in the README). The bench runs
 * the churn with these attached to measure the floor: what enabling the
 * tracepoint and calling two programs per state change costs, before any work.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("tp_btf/inet_sock_set_state")
int noop_first(void *ctx)
{
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int noop_second(void *ctx)
{
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
