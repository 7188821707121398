// SPDX-License-Identifier: GPL-2.0
/*
 * Traces TCP sessions from the inet_sock_set_state tracepoint.
 *
 * A session is born at its first transition out of CLOSE (SYN_SENT for
 * connect(), SYN_RECV for a child cloned from a listener) and dies at its
 * transition to CLOSE. Only those transitions, and the two that close() makes
 * in the owner's context, do any work; every other one returns at once.
 */
#include "kernel.h"
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "tcplife.h"

#define PORT_BITMAP_BYTES (65536 / 8)

/* Set by user space before load; the verifier prunes what they turn off. */
const volatile bool emit_records = true;
const volatile __u32 filter_tgid = 0;
const volatile __u8 filter_family = 0;		/* 0: any, else 4 or 6 */
const volatile bool filter_lports = false;
const volatile bool filter_rports = false;
const volatile __u8 lport_bitmap[PORT_BITMAP_BYTES] = {};
const volatile __u8 rport_bitmap[PORT_BITMAP_BYTES] = {};
const volatile __u64 ringbuf_wakeup_bytes = 0;

/* Not used by the program: they put the shared types into the object's BTF. */
const volatile struct session_record btf_session_record = {};
const volatile enum direction btf_direction = DIRECTION_UNKNOWN;
const volatile enum counter btf_counter = COUNTER_MAX;
const volatile enum record_flag btf_record_flag = RECORD_BIRTH_SEEN;

/* What must be remembered between a session's birth and its close. */
struct session {
	__u64 birth_ns;			/* 0: opened before the tracer */
	__u32 pid;			/* 0 until seen in the owner's context */
	__u8 direction;
	char comm[TASK_COMM_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);	/* user space sets the real size */
	__type(key, __u64);		/* the socket's address */
	__type(value, struct session);
} sessions SEC(".maps");

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

#define EEXIST 17

static __always_inline void count(enum counter which)
{
	__u32 key = which;
	__u64 *value = bpf_map_lookup_elem(&counters, &key);

	if (value)
		*value += 1;
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

static __always_inline void remember_owner(struct session *s)
{
	s->pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(s->comm, sizeof(s->comm));
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

static __always_inline int session_born(const struct sock *sk, __u8 direction)
{
	struct session s;
	__u64 key = (__u64)sk;

	if (sk->sk_protocol != IPPROTO_TCP)
		return 0;
	if (!selected(wire_family(sk), sk->__sk_common.skc_num,
		      bpf_ntohs(sk->__sk_common.skc_dport)))
		return 0;

	__builtin_memset(&s, 0, sizeof(s));
	s.birth_ns = bpf_ktime_get_ns();
	s.direction = direction;
	if (direction == DIRECTION_OUTBOUND && in_owner_context(sk)) {
		remember_owner(&s);
		if (filter_tgid && s.pid != filter_tgid)
			return 0;
	}
	if (bpf_map_update_elem(&sessions, &key, &s, BPF_ANY))
		count(COUNTER_SESSION_MAP_FULL);
	return 0;
}

/* close() or shutdown() sending our FIN: the owner is running. */
static __always_inline int owner_seen(const struct sock *sk)
{
	struct session *s, fresh;
	__u64 key = (__u64)sk;
	long err;

	if (!in_owner_context(sk) || sk->sk_protocol != IPPROTO_TCP)
		return 0;
	s = bpf_map_lookup_elem(&sessions, &key);
	if (s) {
		if (!s->pid)
			remember_owner(s);
		return 0;
	}
	/* Opened before the tracer: keep at least who closed it. */
	__builtin_memset(&fresh, 0, sizeof(fresh));
	remember_owner(&fresh);
	err = bpf_map_update_elem(&sessions, &key, &fresh, BPF_NOEXIST);
	if (err && err != -EEXIST)	/* EEXIST: another CPU was first, nothing lost */
		count(COUNTER_SESSION_MAP_FULL);
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
	 * Opened before the tracer: with no retransmission and everything
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

	if (r->family == 4) {
		__builtin_memcpy(r->laddr, (const void *)&skc->skc_rcv_saddr, 4);
		__builtin_memcpy(r->raddr, (const void *)&skc->skc_daddr, 4);
	} else {
		__builtin_memcpy(r->laddr, (const void *)&skc->skc_v6_rcv_saddr, 16);
		__builtin_memcpy(r->raddr, (const void *)&skc->skc_v6_daddr, 16);
	}
}

static __always_inline long wakeup_flag(void)
{
	if (bpf_ringbuf_query(&records, BPF_RB_AVAIL_DATA) >= ringbuf_wakeup_bytes)
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
		r->pid = s->pid;
		__builtin_memcpy(r->comm, s->comm, sizeof(r->comm));
	}
	if (!r->pid && in_owner_context(sk)) {
		r->pid = bpf_get_current_pid_tgid() >> 32;
		bpf_get_current_comm(r->comm, sizeof(r->comm));
	}
	copy_addresses(sk, r);
	payload_bytes(sk, tp, oldstate, r);
}

static __always_inline int session_closed(const struct sock *sk, int oldstate)
{
	struct session_record r;
	const struct tcp_sock *tp;
	struct session *s;
	__u64 key = (__u64)sk;
	__u32 pid;

	if (oldstate == TCP_LISTEN || sk->sk_protocol != IPPROTO_TCP)
		return 0;	/* a listener closing is not a session */
	s = bpf_map_lookup_elem(&sessions, &key);
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
			pid = bpf_get_current_pid_tgid() >> 32;
		if (pid != filter_tgid)
			goto forget;
	}
	describe(sk, tp, oldstate, s, &r);
	if (emit_records && bpf_ringbuf_output(&records, &r, sizeof(r), wakeup_flag()))
		count(COUNTER_RINGBUF_DROPS);
forget:
	if (s)
		bpf_map_delete_elem(&sessions, &key);
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(inet_sock_set_state, const struct sock *sk, int oldstate, int newstate)
{
	switch (newstate) {
	case TCP_CLOSE:
		return session_closed(sk, oldstate);
	case TCP_SYN_SENT:
		return oldstate == TCP_CLOSE ? session_born(sk, DIRECTION_OUTBOUND) : 0;
	case TCP_SYN_RECV:
		return oldstate == TCP_LISTEN ? session_born(sk, DIRECTION_INBOUND) : 0;
	case TCP_FIN_WAIT1:
	case TCP_LAST_ACK:
		return owner_seen(sk);
	}
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
