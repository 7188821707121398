/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Self-metrics: what the program could not deliver or fold as asked (enum
 * counter in tcplife.h), per CPU, summed by user space.
 *
 * Relies on: a per-CPU value is not private to one run. A softirq can run
 * the program again on the same CPU halfway through an update of the same
 * counter, so every increment is an atomic add. Checked by the tests that
 * force each loss and read its counter (test_exporter.py, test_faults.py).
 */
#ifndef TCPLIFE_COUNTERS_H
#define TCPLIFE_COUNTERS_H

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(enum counter which)
{
	__u32 key = which;
	__u64 *value = bpf_map_lookup_elem(&counters, &key);

	if (value)
		__sync_fetch_and_add(value, 1);
}

#endif /* TCPLIFE_COUNTERS_H */
