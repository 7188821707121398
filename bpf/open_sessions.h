/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The open-session table: open addressing over two arrays indexed alike, the
 * socket's address in session_keys and what is known of the session in
 * session_values (struct open_session). A socket's slot is one of the
 * SESSION_PROBES slots from its hash on; a free slot (key 0) is claimed with
 * a compare-and-swap, so two CPUs never take the same one. User space sizes
 * both arrays (a power of two, twice the configured open sessions), hands
 * them to the next program at a reload, and reads the labels in place.
 *
 * Relies on:
 * - Array lookups are inlined by the verifier: no bucket lock or free list,
 *   which made a hash map's update and delete most of the program's cost.
 * - BPF atomics (compare-and-swap, exchange) are fully ordered on every
 *   architecture (plain stores are not on arm64), and an aligned 64-bit
 *   exchange is seen whole by user space's aligned 64-bit loads.
 * - One socket's callbacks never run at once on two CPUs (the socket lock).
 * Checked by: test_exporter.py (a full table counted and adding up, slots
 * freed and reused, the open gauge), bench/stress.py (concurrent churn and
 * reloads, every session folded).
 */
#ifndef TCPLIFE_OPEN_SESSIONS_H
#define TCPLIFE_OPEN_SESSIONS_H

#define SESSION_PROBES 16
const volatile __u32 session_slot_mask = 0;	/* slots - 1 */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);		/* the socket's address, 0: free */
} session_keys SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct open_session);
} session_values SEC(".maps");

_Static_assert(sizeof(struct session_labels) == sizeof(__u64), "labels are one word");

/* Fibonacci hashing: the upper half of the product mixes every address bit. */
static __always_inline __u32 slot_hash(__u64 key)
{
	return (key * 0x9E3779B97F4A7C15ULL) >> 32;
}

static __always_inline __u64 *key_at(__u32 index)
{
	return bpf_map_lookup_elem(&session_keys, &index);
}

static __always_inline struct open_session *session_at(int index)
{
	__u32 at = index;

	return index < 0 ? NULL : bpf_map_lookup_elem(&session_values, &at);
}

/*
 * The SESSION_PROBES slots from the key's hash on: the index of the one
 * holding the key, or -1; and, in *free, the number of the first probe that
 * found a free slot (SESSION_PROBES if none did).
 */
static __always_inline int session_scan(__u64 key, int *free)
{
	__u32 start = slot_hash(key), index;
	__u64 *slot;

	*free = SESSION_PROBES;
	for (int i = 0; i < SESSION_PROBES; i++) {
		index = (start + i) & session_slot_mask;
		slot = key_at(index);
		if (!slot)
			continue;
		if (*slot == key)
			return index;
		if (*slot == 0 && *free == SESSION_PROBES)
			*free = i;
	}
	return -1;
}

static __always_inline int session_find(__u64 key)
{
	int free;

	return session_scan(key, &free);
}

/*
 * A free slot claimed for the key (which holds none) with a compare-and-swap,
 * from probe number `from` on: a slot another CPU claimed first is passed
 * over. -1 if there is none.
 */
static __always_inline int session_claim(__u64 key, int from)
{
	__u32 start = slot_hash(key), index;
	__u64 *slot;

	for (int i = from; i < SESSION_PROBES; i++) {
		index = (start + i) & session_slot_mask;
		slot = key_at(index);
		if (slot && *slot == 0 && __sync_val_compare_and_swap(slot, 0, key) == 0)
			return index;
	}
	return -1;
}

static __always_inline __u64 *labels_word(struct open_session *slot)
{
	return (__u64 *)&slot->labels;
}

/*
 * The labels are written last, in one exchange, and cleared first, before
 * the key frees the slot: user space, which reads only the labels word,
 * never counts a slot being filled or one whose session is gone.
 */
static __always_inline void session_publish(struct open_session *slot,
					    const struct session_labels *labels)
{
	union {
		struct session_labels labels;
		__u64 word;
	} as = { .labels = *labels };

	__atomic_exchange_n(labels_word(slot), as.word, __ATOMIC_SEQ_CST);
}

static __always_inline void session_forget(int index)
{
	struct open_session *s = session_at(index);
	__u64 *held;

	if (!s)
		return;
	__atomic_exchange_n(labels_word(s), 0, __ATOMIC_SEQ_CST);
	held = key_at(index);
	if (held)
		__atomic_exchange_n(held, 0, __ATOMIC_SEQ_CST);
}

/*
 * A socket at this address was tracked and its close never seen: count it,
 * so that such a loss cannot go unnoticed, and free its slot.
 */
static __always_inline void forget_unseen_close(__u64 key)
{
	int stale = session_find(key);

	if (stale < 0)
		return;
	count(COUNTER_CLOSE_UNSEEN);
	session_forget(stale);
}

/*
 * A slot for a socket being born, found in one pass over its probes: a slot
 * still holding this address is a close never seen (counted, and taken over,
 * its labels cleared first); else a free one is claimed. -1 if there is none.
 */
static __always_inline int session_claim_new(__u64 key)
{
	struct open_session *stale;
	int free, index = session_scan(key, &free);

	if (index < 0)
		return session_claim(key, free);
	count(COUNTER_CLOSE_UNSEEN);
	stale = session_at(index);
	if (stale)
		__atomic_exchange_n(labels_word(stale), 0, __ATOMIC_SEQ_CST);
	return index;
}

#endif /* TCPLIFE_OPEN_SESSIONS_H */
