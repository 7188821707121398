/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Histograms folded in the kernel: each closed session is added to the
 * `series` entry of its label set (bucket counts and sums; native
 * histograms' counts in bpf/native.h), which user space
 * reads at scrape time. User space does no work per session.
 *
 * Relies on: a per-CPU hash takes no lock for a lookup, but its value is
 * shared with any run that interrupts this one on the same CPU (softirq), so
 * every addition is atomic; a BPF_NOEXIST insert fails with -E2BIG at the
 * cap and -EEXIST when another run inserted the key first.
 * Checked by: test_exporter.py (exact counts and buckets, the label-set cap
 * and its overflow series, concurrent churns), bench/run.py and
 * bench/stress.py (millions of sessions, every one folded).
 */
#ifndef TCPLIFE_FOLDING_H
#define TCPLIFE_FOLDING_H

const volatile bool fold_metrics = false;
const volatile bool label_comm = false;
const volatile bool label_cgroup = false;
const volatile __u32 duration_nbounds = 0;
const volatile __u64 duration_bounds_ns[MAX_BOUNDS] = {};
const volatile __u32 bytes_nbounds = 0;
const volatile __u64 bytes_bounds[MAX_BOUNDS] = {};

/*
 * Per-CPU so that folding takes no lock. Entries are allocated on first use,
 * so memory follows the label sets seen, up to the cap user space sets here
 * (plus the pre-created overflow series). Sizes, not types: with native
 * histograms on, user space makes the values longer (bpf/native.h), and a
 * map's BTF type would have to match its value size.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1024);
	__uint(key_size, sizeof(struct series_key));
	__uint(value_size, sizeof(struct series));
} series SEC(".maps");

/* A zeroed value to create series from: too big for the BPF stack. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(struct series));
} empty_series SEC(".maps");

/* The first slot whose bound is >= value (le is inclusive), or nbounds: +Inf. */
static __always_inline __u32 bucket_of(const volatile __u64 *bounds, __u32 nbounds, __u64 value)
{
	__u32 low = 0, high = nbounds, mid;

	for (int step = 0; step < 6 && low < high; step++) {	/* 2^6 > MAX_BOUNDS */
		mid = (low + high) / 2;
		if (value <= bounds[mid & (MAX_BOUNDS - 1)])
			high = mid;
		else
			low = mid + 1;
	}
	return low < HIST_SLOTS ? low : MAX_BOUNDS;
}

/* The session's series, created on first use; over the cap, the overflow one. */
static __always_inline struct series *series_of(struct series_key *key)
{
	struct series *found, *empty;
	__u32 zero = 0;
	long err;

	found = bpf_map_lookup_elem(&series, key);
	if (found)
		return found;
	empty = bpf_map_lookup_elem(&empty_series, &zero);
	if (!empty)
		return NULL;
	err = bpf_map_update_elem(&series, key, empty, BPF_NOEXIST);
	if (err == -E2BIG) {
		/* User space pre-creates one per direction and family. */
		__builtin_memset(key->comm, 0, sizeof(key->comm));
		key->cgroup_id = 0;
		key->network = 0;
		key->port = 0;
		key->overflow = 1;
		count(COUNTER_SERIES_OVERFLOW);
	} else if (err && err != -EEXIST) {
		count(COUNTER_SERIES_MAP_FULL);
		return NULL;
	}
	found = bpf_map_lookup_elem(&series, key);
	/* This CPU's copy; the others stay zero (the reader takes the largest). */
	if (found && !err)
		found->created_ns = bpf_ktime_get_ns();
	return found;
}

static __always_inline void fold(const struct session_labels *labels,
				 const struct session_record *r)
{
	struct series_key key;
	struct series *into;
	__u32 slot;

	__builtin_memset(&key, 0, sizeof(key));
	key.direction = labels->direction;
	key.family = labels->family;
	key.port = labels->port;
	key.network = labels->network;
	if (label_comm)
		__builtin_memcpy(key.comm, r->comm, sizeof(key.comm));
	if (label_cgroup)
		key.cgroup_id = r->cgroup_id;
	if (labels->flags & LABEL_PORT_LIMITED)
		count(COUNTER_PORT_LABELS_FULL);

	into = series_of(&key);
	if (!into)
		return;
	if (!(r->flags & RECORD_ESTABLISHED)) {
		__sync_fetch_and_add(&into->failed_handshakes, 1);
		return;
	}
	__sync_fetch_and_add(&into->duration_sum_ns, r->duration_ns);
	__sync_fetch_and_add(&into->sent_sum, r->tx_bytes);
	__sync_fetch_and_add(&into->received_sum, r->rx_bytes);
	slot = bucket_of(duration_bounds_ns, duration_nbounds, r->duration_ns);
	__sync_fetch_and_add(&into->duration[slot], 1);
	slot = bucket_of(bytes_bounds, bytes_nbounds, r->tx_bytes);
	__sync_fetch_and_add(&into->sent[slot], 1);
	slot = bucket_of(bytes_bounds, bytes_nbounds, r->rx_bytes);
	__sync_fetch_and_add(&into->received[slot], 1);
	if (native_nbuckets) {
		fold_native(into, NATIVE_DURATION, r->duration_ns);
		fold_native(into, NATIVE_SENT, r->tx_bytes);
		fold_native(into, NATIVE_RECEIVED, r->rx_bytes);
	}
}

#endif /* TCPLIFE_FOLDING_H */
