// SPDX-License-Identifier: GPL-2.0
/*
 * Traces TCP sessions from the TCP stack's own socket-operations callbacks: a
 * cgroup sock_ops program attached to the root of the cgroup v2 hierarchy,
 * which every socket belongs to.
 *
 * A session is born at connect() (BPF_SOCK_OPS_TCP_CONNECT_CB, the local
 * port already chosen) or when a child of a listener completes its handshake
 * (BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB). At its birth the program asks the
 * kernel to report that socket's state changes (BPF_SOCK_OPS_STATE_CB_FLAG):
 * tcp_set_state() then calls it at each one, before the socket is unhashed,
 * so ports and counters are still in place at the close. Only the birth, the
 * two transitions that close() makes in the owner's context and the close do
 * any work; sockets that no filter selects are never asked for more.
 *
 * Why not the inet_sock_set_state tracepoint: the kernel may skip a tracing
 * program for an event and nothing else sees the event. It skips it when the
 * program is already running on that CPU (a softirq interrupting it, counted
 * only as a recursion miss), and some kernels run no tracing program while
 * certain tasks are current, softirqs on top of them included (seen on the
 * project's test VMs: README, "No event skipped"). A cgroup program is part
 * of the TCP stack's control path: it runs for every callback of a socket
 * with the flag set, whatever context raised it.
 *
 * At the close a session is emitted as a record (the tcplife command), folded
 * into histograms keyed by its labels (the exporter), or both.
 */
#include "kernel.h"
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "tcplife.h"

#define PORT_BITMAP_BYTES (65536 / 8)

/* Set by user space before load; the verifier prunes what they turn off. */
const volatile bool emit_records = true;
const volatile bool fold_metrics = false;
/* What the settings above need: user space derives them, the verifier drops the rest. */
const volatile bool need_owner = true;		/* pid and comm */
const volatile bool need_addresses = true;	/* laddr and raddr */
const volatile __u32 filter_tgid = 0;
const volatile __u8 filter_family = 0;		/* 0: any, else 4 or 6 */
const volatile bool filter_lports = false;
const volatile bool filter_rports = false;
const volatile __u8 lport_bitmap[PORT_BITMAP_BYTES] = {};
const volatile __u8 rport_bitmap[PORT_BITMAP_BYTES] = {};
const volatile __u64 ringbuf_wakeup_bytes = 0;

/* Labels and buckets of the folded metrics. */
const volatile bool label_comm = false;
const volatile bool label_networks = false;
const volatile bool auto_port_labels = false;	/* else the bitmap lists them */
const volatile __u8 port_label_bitmap[PORT_BITMAP_BYTES] = {};
const volatile __u16 ephemeral_low = 0;		/* never a label in automatic mode */
const volatile __u16 ephemeral_high = 0;
const volatile __u32 duration_nbounds = 0;
const volatile __u64 duration_bounds_ns[MAX_BOUNDS] = {};
const volatile __u32 bytes_nbounds = 0;
const volatile __u64 bytes_bounds[MAX_BOUNDS] = {};

/* Not used by the program: they put the shared types into the object's BTF. */
const volatile struct session_record btf_session_record = {};
const volatile enum direction btf_direction = DIRECTION_UNKNOWN;
const volatile enum counter btf_counter = COUNTER_MAX;
const volatile enum record_flag btf_record_flag = RECORD_BIRTH_SEEN;
const volatile struct series_key btf_series_key = {};
const volatile struct series btf_series = {};
const volatile struct network_key btf_network_key = {};
const volatile struct bpf_prog_info btf_prog_info = {};	/* run time and count */

/*
 * Open sessions: a table with open addressing over two arrays indexed alike,
 * the socket's address in session_keys and what is known of the session in
 * session_values. Array lookups are inlined by the verifier; a hash map's
 * update and delete take a bucket lock and a free list, which made up most
 * of the program's cost. A socket's slot is one of the SESSION_PROBES slots
 * from its hash on; a free slot (key 0) is claimed with a compare-and-swap,
 * so two CPUs never take the same one. User space sizes both arrays (a power
 * of two, twice the configured open sessions) and maps them to read them.
 */
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
	__type(value, struct session);
} session_values SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} records SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/*
 * Per-CPU so that folding takes no lock. Entries are allocated on first use,
 * so memory follows the label sets seen, up to the cap user space sets here
 * (plus the pre-created overflow series).
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1024);
	__type(key, struct series_key);
	__type(value, struct series);
} series SEC(".maps");

/* A zeroed value to create series from: too big for the BPF stack. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct series);
} empty_series SEC(".maps");

/* Ports given their own label in automatic mode, first come first served. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u16);
	__type(value, __u8);
} labelled_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 256);
	__type(key, struct network_key);
	__type(value, __u16);
} networks SEC(".maps");

#define EEXIST 17
#define E2BIG 7

/*
 * Per-CPU values are added to atomically: a softirq can run the program
 * again on the same CPU halfway through an update of the same value.
 */
static __always_inline void count(enum counter which)
{
	__u32 key = which;
	__u64 *value = bpf_map_lookup_elem(&counters, &key);

	if (value)
		__sync_fetch_and_add(value, 1);
}

/* Fibonacci hashing: the upper half of the product mixes every address bit. */
static __always_inline __u32 slot_hash(__u64 key)
{
	return (key * 0x9E3779B97F4A7C15ULL) >> 32;
}

static __always_inline __u64 *key_at(__u32 index)
{
	return bpf_map_lookup_elem(&session_keys, &index);
}

static __always_inline struct session *session_at(int index)
{
	__u32 at = index;

	return index < 0 ? NULL : bpf_map_lookup_elem(&session_values, &at);
}

/*
 * The SESSION_PROBES slots from the key's hash on: the one holding the key
 * (claim false), or a free one claimed for it with a compare-and-swap (claim
 * true; the caller knows the key holds none). -1 if there is none.
 */
static __always_inline int session_probe(__u64 key, bool claim)
{
	__u32 start = slot_hash(key), index;
	__u64 *slot;

	for (int i = 0; i < SESSION_PROBES; i++) {
		index = (start + i) & session_slot_mask;
		slot = key_at(index);
		if (!slot)
			continue;
		if (claim ? *slot == 0 && __sync_val_compare_and_swap(slot, 0, key) == 0
			  : *slot == key)
			return index;
	}
	return -1;
}

static __always_inline int session_find(__u64 key)
{
	return session_probe(key, false);
}

static __always_inline int session_claim(__u64 key)
{
	return session_probe(key, true);
}

/*
 * Ordering between CPUs without locks: the atomic exchange and compare-and-
 * swap are fully ordered on every architecture (plain stores are not on
 * arm64). A slot's birth_ns is 0 while it is free or being filled, and user
 * space skips such slots: it is published last, and cleared before the key
 * frees the slot, so another CPU can never see the old key with a new
 * session, nor a new session lose its birth to an old clear.
 */
static __always_inline void session_publish(struct session *slot, __u64 birth_ns)
{
	__atomic_exchange_n(&slot->birth_ns, birth_ns, __ATOMIC_SEQ_CST);
}

static __always_inline void session_forget(int index)
{
	struct session *s = session_at(index);
	__u64 *held;

	if (!s)
		return;
	__atomic_exchange_n(&s->birth_ns, 0, __ATOMIC_SEQ_CST);
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
 * A socket locked by a user task changes state in that task (connect(),
 * close()); otherwise it runs in softirq or a timer, where "current" is
 * whatever task the CPU happened to be running.
 */
static __always_inline bool in_owner_context(const struct sock *sk)
{
	return sk->sk_lock.owned;
}

/*
 * The running task, read through its BTF: sock_ops programs may not call
 * bpf_get_current_pid_tgid() on Linux 6.1 nor bpf_get_current_comm() on
 * 6.12 (the verifier refuses both there: seen on Debian's kernels), while
 * bpf_get_current_task_btf() is open to them. Only meaningful where
 * in_owner_context() holds: the owner is the running task then.
 */
static __always_inline __u32 running_tgid(void)
{
	return bpf_get_current_task_btf()->tgid;
}

static __always_inline void running_owner(__u32 *pid, char *comm)
{
	struct task_struct *task = bpf_get_current_task_btf();

	*pid = task->tgid;
	bpf_probe_read_kernel(comm, TASK_COMM_LEN, task->comm);
}

static __always_inline void remember_owner(struct session *s)
{
	running_owner(&s->pid, s->comm);
}

/* The family on the wire: a dual-stack socket with an IPv4 peer counts as 4. */
static __always_inline __u8 wire_family(const struct sock *sk)
{
	const struct sock_common *skc = &sk->__sk_common;

	if (skc->skc_family == AF_INET)
		return 4;
	if (skc->skc_family != AF_INET6)
		return 0;
	if (skc->skc_v6_daddr.in6_u.u6_addr32[0] == 0 &&
	    skc->skc_v6_daddr.in6_u.u6_addr32[1] == 0 &&
	    skc->skc_v6_daddr.in6_u.u6_addr32[2] == bpf_htonl(0xffff))
		return 4;
	return 6;
}

static __always_inline bool port_in(const volatile __u8 *bitmap, __u16 port)
{
	return bitmap[port >> 3] & (1 << (port & 7));
}

/* A port of 0 is not known yet (connect() binds the local port later). */
static __always_inline bool selected(__u8 family, __u16 lport, __u16 rport)
{
	if (family == 0 || (filter_family && family != filter_family))
		return false;
	if (filter_lports && lport && !port_in(lport_bitmap, lport))
		return false;
	if (filter_rports && rport && !port_in(rport_bitmap, rport))
		return false;
	return true;
}

/* IPv4 addresses take the first 4 bytes. */
static __always_inline void copy_remote_address(const struct sock *sk, __u8 family, __u8 *dst)
{
	const struct sock_common *skc = &sk->__sk_common;

	if (family == 4)
		__builtin_memcpy(dst, (const void *)&skc->skc_daddr, 4);
	else
		__builtin_memcpy(dst, (const void *)&skc->skc_v6_daddr, 16);
}

/*
 * True if the session is to be reported, so its state changes are wanted:
 * also when the table has no slot for it, so that its close is counted.
 */
static __always_inline bool session_born(const struct sock *sk, __u64 key, __u8 direction)
{
	struct session s, *slot;
	__u16 lport = sk->__sk_common.skc_num;
	__u16 rport = bpf_ntohs(sk->__sk_common.skc_dport);
	__u64 birth_ns;
	__u8 family;

	if (sk->sk_protocol != IPPROTO_TCP)
		return false;
	/* Before any filter: a stale entry must not pass for this socket's at its close. */
	forget_unseen_close(key);
	family = wire_family(sk);
	if (!selected(family, lport, rport))
		return false;

	__builtin_memset(&s, 0, sizeof(s));
	birth_ns = bpf_ktime_get_ns();
	s.direction = direction;
	s.family = family;
	s.service_port = direction == DIRECTION_INBOUND ? lport : rport;
	if (need_addresses)
		copy_remote_address(sk, family, s.raddr);
	if (need_owner && direction == DIRECTION_OUTBOUND && in_owner_context(sk)) {
		remember_owner(&s);
		if (filter_tgid && s.pid != filter_tgid)
			return false;
	}
	slot = session_at(session_claim(key));
	if (!slot) {
		count(COUNTER_SESSION_MAP_FULL);
		return true;
	}
	*slot = s;	/* birth_ns 0 until published */
	session_publish(slot, birth_ns);
	return true;
}

/* close() or shutdown() sending our FIN: the owner is running. */
static __always_inline int owner_seen(const struct sock *sk, __u64 key)
{
	struct session *s;
	int index;

	if (!need_owner || !in_owner_context(sk) || sk->sk_protocol != IPPROTO_TCP)
		return 0;
	index = session_find(key);
	s = session_at(index);
	if (s) {
		if (!s->pid)
			remember_owner(s);
		/* An accepted session's owner is known only now: apply -p / filters.pid. */
		if (filter_tgid && s->pid != filter_tgid)
			session_forget(index);
		return 0;
	}
	/*
	 * Born under an earlier program: keep at least who closes it, if the close will
	 * be reported at all (a slot held for nothing could crowd out others).
	 */
	if (!selected(wire_family(sk), sk->__sk_common.skc_num,
		      bpf_ntohs(sk->__sk_common.skc_dport)))
		return 0;
	if (filter_tgid && running_tgid() != filter_tgid)
		return 0;
	s = session_at(session_claim(key));
	if (!s) {
		count(COUNTER_SESSION_MAP_FULL);
		return 0;
	}
	__builtin_memset(s, 0, sizeof(*s));	/* birth_ns stays 0: birth unseen */
	remember_owner(s);
	return 0;
}

static __always_inline bool sent_fin(int oldstate)
{
	return oldstate == TCP_FIN_WAIT1 || oldstate == TCP_FIN_WAIT2 ||
	       oldstate == TCP_CLOSING || oldstate == TCP_LAST_ACK;
}

/*
 * bytes_acked and bytes_received count sequence numbers, not payload: the
 * active opener's SYN and our own FIN once acknowledged, and the peer's FIN
 * once received. Take those out using the socket's own state.
 */
static __always_inline void payload_bytes(const struct sock *sk, const struct tcp_sock *tp,
					  int oldstate, struct session_record *r)
{
	bool all_acked = tp->snd_una == tp->write_seq;
	__u64 acked = tp->bytes_acked;
	__u64 received = tp->bytes_received;
	__u64 done = 1UL << bpf_core_enum_value(enum sock_flags, SOCK_DONE);

	if (sent_fin(oldstate) && all_acked && acked)
		acked--;
	if ((sk->__sk_common.skc_flags & done) && received)
		received--;

	/*
	 * Born under an earlier program: with no retransmission and everything
	 * acknowledged, payload sent equals bytes_sent, so one more acked
	 * sequence number can only be our SYN.
	 */
	if (r->direction == DIRECTION_UNKNOWN && all_acked && tp->bytes_retrans == 0) {
		if (acked == tp->bytes_sent + 1)
			r->direction = DIRECTION_OUTBOUND;
		else if (acked == tp->bytes_sent)
			r->direction = DIRECTION_INBOUND;
	}
	if (r->direction == DIRECTION_OUTBOUND && oldstate != TCP_SYN_SENT && acked)
		acked--;

	r->tx_bytes = acked;
	r->rx_bytes = received;
}

static __always_inline void copy_addresses(const struct sock *sk, struct session_record *r)
{
	const struct sock_common *skc = &sk->__sk_common;

	if (r->family == 4)
		__builtin_memcpy(r->laddr, (const void *)&skc->skc_rcv_saddr, 4);
	else
		__builtin_memcpy(r->laddr, (const void *)&skc->skc_v6_rcv_saddr, 16);
	copy_remote_address(sk, r->family, r->raddr);
}

/*
 * Wake the reader once, when the waiting data grows past the threshold: not
 * at every record while it stays above (each wake-up is an irq_work, several
 * microseconds), nor below it (the reader polls every 100 ms anyway).
 */
static __always_inline long wakeup_flag(__u64 size)
{
	__u64 waiting = bpf_ringbuf_query(&records, BPF_RB_AVAIL_DATA);

	if (waiting < ringbuf_wakeup_bytes && waiting + size >= ringbuf_wakeup_bytes)
		return BPF_RB_FORCE_WAKEUP;
	return BPF_RB_NO_WAKEUP;
}

/* Everything known about a session at its close, in the record's layout. */
static __always_inline void describe(const struct sock *sk, const struct tcp_sock *tp,
				     int oldstate, const struct session *s,
				     struct session_record *r)
{
	r->close_ns = bpf_ktime_get_ns();
	if (oldstate != TCP_SYN_SENT && oldstate != TCP_SYN_RECV)
		r->flags |= RECORD_ESTABLISHED;
	if (s) {
		r->direction = s->direction;
		if (s->birth_ns) {
			r->flags |= RECORD_BIRTH_SEEN;
			r->duration_ns = r->close_ns - s->birth_ns;
		}
		if (need_owner) {
			r->pid = s->pid;
			__builtin_memcpy(r->comm, s->comm, sizeof(r->comm));
		}
	}
	if (need_owner && !r->pid && in_owner_context(sk)) {
		running_owner(&r->pid, r->comm);
	}
	if (need_addresses)
		copy_addresses(sk, r);
	payload_bytes(sk, tp, oldstate, r);
}

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

/*
 * Listed ports always have their own label, in both modes, and never take an
 * automatic slot; in automatic mode other ports take the free slots, first
 * come first served.
 */
static __always_inline __u16 port_label(__u16 port)
{
	__u8 one = 1;
	long err;

	if (port_in(port_label_bitmap, port))
		return port;
	if (!auto_port_labels)
		return 0;
	if (port >= ephemeral_low && port <= ephemeral_high)
		return 0;
	if (bpf_map_lookup_elem(&labelled_ports, &port))
		return port;
	err = bpf_map_update_elem(&labelled_ports, &port, &one, BPF_NOEXIST);
	if (!err || err == -EEXIST)
		return port;
	count(COUNTER_PORT_LABELS_FULL);
	return 0;
}

static __always_inline __u16 network_label(const struct session_record *r)
{
	struct network_key key = { .prefixlen = 128 };
	__u16 *index;

	if (r->family == 4) {
		key.addr[10] = 0xff;
		key.addr[11] = 0xff;
		__builtin_memcpy(&key.addr[12], r->raddr, 4);
	} else {
		__builtin_memcpy(key.addr, r->raddr, 16);
	}
	index = bpf_map_lookup_elem(&networks, &key);
	return index ? *index : 0;
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

static __always_inline void fold(const struct session_record *r)
{
	struct series_key key;
	struct series *into;
	__u32 slot;

	__builtin_memset(&key, 0, sizeof(key));
	key.direction = r->direction;
	key.family = r->family;
	key.port = port_label(r->direction == DIRECTION_INBOUND ? r->lport : r->rport);
	if (label_networks)
		key.network = network_label(r);
	if (label_comm)
		__builtin_memcpy(key.comm, r->comm, sizeof(key.comm));

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
}

/* A full ring refuses the record: the reader fell behind. Counted, never retried. */
static __always_inline void emit(struct session_record *r)
{
	if (bpf_ringbuf_output(&records, r, sizeof(*r), wakeup_flag(sizeof(*r))))
		count(COUNTER_RINGBUF_DROPS);
}

static __always_inline int session_closed(const struct sock *sk, __u64 key, int oldstate)
{
	struct session_record r;
	const struct tcp_sock *tp;
	struct session *s;
	int index;
	__u32 pid;

	if (oldstate == TCP_LISTEN || sk->sk_protocol != IPPROTO_TCP)
		return 0;	/* a listener closing is not a session */
	index = session_find(key);
	s = session_at(index);
	tp = bpf_skc_to_tcp_sock((void *)sk);
	if (!tp)
		goto forget;

	__builtin_memset(&r, 0, sizeof(r));
	r.family = wire_family(sk);
	r.lport = bpf_ntohs(tp->inet_conn.icsk_inet.inet_sport);
	r.rport = bpf_ntohs(sk->__sk_common.skc_dport);
	if (!selected(r.family, r.lport, r.rport))
		goto forget;
	if (filter_tgid) {
		pid = s ? s->pid : 0;
		if (!pid && in_owner_context(sk))
			pid = running_tgid();
		if (pid != filter_tgid)
			goto forget;
	}
	describe(sk, tp, oldstate, s, &r);
	if (!(r.flags & RECORD_BIRTH_SEEN))
		count(COUNTER_BIRTH_UNSEEN);
	else if (fold_metrics)
		fold(&r);
	if (emit_records)
		emit(&r);
forget:
	session_forget(index);
	return 0;
}

/* key: the socket's address as a number, see address_of() */
static __always_inline int state_changed(const struct sock *sk, __u64 key, int oldstate,
					 int newstate)
{
	switch (newstate) {
	case TCP_CLOSE:
		return session_closed(sk, key, oldstate);
	case TCP_FIN_WAIT1:
	case TCP_LAST_ACK:
		return owner_seen(sk, key);
	}
	return 0;
}

/*
 * The socket's address as a number: the verifier allows arithmetic on
 * numbers, not on pointers, and bytes copied by bpf_probe_read_kernel() are
 * a number. Copied from the program's own stack, so nothing is shared with
 * other runs. (A per-CPU scratch slot, written and read back, was shared: the
 * compiler dropped the depth updates that kept nested runs apart, and a
 * softirq between the write and the read handed its socket's address to the
 * run it interrupted; preemptible kernels can interleave tasks there too.)
 */
static __always_inline __u64 address_of(const struct tcp_sock *tp)
{
	__u64 key = 0;

	bpf_probe_read_kernel(&key, sizeof(key), &tp);
	return key;
}

static __always_inline void watch_state_changes(struct bpf_sock_ops *ops)
{
	bpf_sock_ops_cb_flags_set(ops, ops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
}

SEC("sockops")
int tcp_sessions(struct bpf_sock_ops *ops)
{
	const struct tcp_sock *tp;
	const struct sock *sk;
	struct bpf_sock *bsk;
	__u32 op = ops->op;
	__u64 key;

	/* Most callbacks (window and timeout choices, RTT samples) are not ours. */
	if (op != BPF_SOCK_OPS_STATE_CB && op != BPF_SOCK_OPS_TCP_CONNECT_CB &&
	    op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		return 1;
	bsk = ops->sk;
	if (!bsk)
		return 1;
	tp = bpf_skc_to_tcp_sock(bsk);
	if (!tp)
		return 1;
	sk = &tp->inet_conn.icsk_inet.sk;
	key = address_of(tp);
	if (!key)	/* never a socket's address; 0 marks a free slot */
		return 1;
	if (op == BPF_SOCK_OPS_STATE_CB)
		state_changed(sk, key, ops->args[0], ops->args[1]);
	else if (session_born(sk, key, op == BPF_SOCK_OPS_TCP_CONNECT_CB ? DIRECTION_OUTBOUND
									  : DIRECTION_INBOUND))
		watch_state_changes(ops);
	return 1;	/* sock_ops programs answer 1: nothing refused */
}

char LICENSE[] SEC("license") = "GPL";
