/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The open-session table: open addressing over one array of slots (struct
 * open_session, one cache line each), keyed by the socket's address. A
 * socket's slot is one of the SESSION_PROBES slots from its hash (its home)
 * on; a free slot (key 0) is claimed with a compare-and-swap, so two CPUs
 * never take the same one. Each slot also keeps, as a home, which of its
 * probes hold a key of that home (reach): a lookup reads those slots only, so
 * looking for a socket that is not in the table (at every birth) reads one
 * slot, not SESSION_PROBES, and a session usually lives in its home slot, so
 * its callbacks touch one line. User space sizes the array (a power of two,
 * twice the configured open sessions), hands it to the next program at a
 * reload, and reads the labels in place.
 *
 * Relies on:
 * - Array lookups are inlined by the verifier: no bucket lock or free list,
 *   which made a hash map's update and delete most of the program's cost.
 *   An mmapable array's values start on a page, so 64-byte slots are lines.
 * - BPF atomics (compare-and-swap, exchange, and, or; the last two from
 *   kernel 5.12) are fully ordered on every architecture (plain stores are
 *   not on arm64), and an aligned 64-bit exchange is seen whole by user
 *   space's aligned 64-bit loads.
 * - One socket's callbacks never run at once on two CPUs (the socket lock).
 * Reach is exact while a session lives: its bit is set after the slot is
 * claimed and cleared before the slot is freed, each bit stands for one
 * (home, slot) pair, and only the slot's holder changes it.
 * Checked by: test_exporter.py (a full table counted and adding up, slots
 * freed and reused, the open gauge), bench/stress.py (concurrent churn and
 * reloads, every session folded).
 */
#ifndef TCPLIFE_OPEN_SESSIONS_H
#define TCPLIFE_OPEN_SESSIONS_H

#define SESSION_PROBES 16	/* at most the bits of a reach word */
const volatile __u32 session_slot_mask = 0;	/* slots - 1 */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct open_session);
} session_slots SEC(".maps");

_Static_assert(sizeof(struct session_labels) == sizeof(__u64), "labels are one word");
_Static_assert(sizeof(struct open_session) == 64, "a slot is one cache line");

/* Fibonacci hashing: the upper half of the product mixes every address bit. */
static __always_inline __u32 home_of(__u64 key)
{
	return ((key * 0x9E3779B97F4A7C15ULL) >> 32) & session_slot_mask;
}

static __always_inline struct open_session *session_at(int index)
{
	__u32 at = index;

	return index < 0 ? NULL : bpf_map_lookup_elem(&session_slots, &at);
}

/* The index of the slot holding the key, or -1. */
static __always_inline int session_find(__u64 key)
{
	__u32 home = home_of(key), index;
	struct open_session *slot = session_at(home);
	__u64 reach;

	if (!slot)
		return -1;
	reach = slot->reach;
	for (int i = 0; i < SESSION_PROBES && reach; i++, reach >>= 1) {
		if (!(reach & 1))
			continue;
		index = (home + i) & session_slot_mask;
		slot = session_at(index);
		if (slot && slot->key == key)
			return index;
	}
	return -1;
}

/*
 * A free slot claimed for the key (which holds none) with a compare-and-swap:
 * a slot another CPU claimed first is passed over. -1 if there is none.
 */
static __always_inline int session_claim(__u64 key)
{
	__u32 home = home_of(key), index;
	struct open_session *slot, *at_home;

	for (int i = 0; i < SESSION_PROBES; i++) {
		index = (home + i) & session_slot_mask;
		slot = session_at(index);
		if (!slot || slot->key || __sync_val_compare_and_swap(&slot->key, 0, key))
			continue;
		at_home = session_at(home);
		if (at_home)
			__sync_fetch_and_or(&at_home->reach, 1ULL << i);
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

/* Labels first (for user space), then the reach bit, then the key frees the slot. */
static __always_inline void session_forget(int index)
{
	struct open_session *s = session_at(index), *at_home;
	__u32 home;

	if (!s)
		return;
	__atomic_exchange_n(labels_word(s), 0, __ATOMIC_SEQ_CST);
	home = home_of(s->key);
	at_home = session_at(home);
	if (at_home)
		__sync_fetch_and_and(&at_home->reach,
				     ~(1ULL << ((index - home) & (SESSION_PROBES - 1))));
	__atomic_exchange_n(&s->key, 0, __ATOMIC_SEQ_CST);
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
 * A slot for a socket being born: a slot still holding this address is a
 * close never seen (counted, and taken over, its labels cleared first); else
 * a free one is claimed. -1 if there is none.
 */
static __always_inline int session_claim_new(__u64 key)
{
	struct open_session *stale;
	int index = session_find(key);

	if (index < 0)
		return session_claim(key);
	count(COUNTER_CLOSE_UNSEEN);
	stale = session_at(index);
	if (stale)
		__atomic_exchange_n(labels_word(stale), 0, __ATOMIC_SEQ_CST);
	return index;
}

#endif /* TCPLIFE_OPEN_SESSIONS_H */
