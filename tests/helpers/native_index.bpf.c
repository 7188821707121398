// SPDX-License-Identifier: GPL-2.0
/*
 * The exporter's native bucket index (bpf/native.h), run on values the test
 * writes into `values`: each one's index as a duration in nanoseconds and as
 * a byte count, for the test to compare with the exact formula.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "tcplife.h"
#include "counters.h"
#include "native.h"

#define CASES 4096

__u64 values[CASES];
__s64 duration_index[CASES];
__s64 bytes_index[CASES];

static long index_one(__u64 i, void *unused)
{
	if (i >= CASES)
		return 1;
	if (values[i]) {
		duration_index[i] = native_index(NATIVE_DURATION, values[i]);
		bytes_index[i] = native_index(NATIVE_SENT, values[i]);
	}
	return 0;
}

SEC("syscall")
int index_values(void *ctx)
{
	bpf_loop(CASES, index_one, NULL, 0);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
