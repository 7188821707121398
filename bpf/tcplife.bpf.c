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
 * into histograms under the labels it was given at its birth (the exporter),
 * or both. This file holds the session's life, from callback to close; the
 * headers included below hold the mechanisms, each with what it relies on.
 */
#include "kernel.h"
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <asm-generic/errno-base.h>	/* what map updates return */
#include "tcplife.h"

/* The program's parts, each with the kernel behaviour it relies on. */
#include "counters.h"
#include "open_sessions.h"
#include "owner.h"
#include "sockets.h"
#include "labels.h"
#include "native.h"
#include "folding.h"
#include "records.h"

/*
 * What the settings need, derived here so that user space sets each setting
 * once: owners and addresses cost helper calls and copies, and the verifier
 * drops the code of what the frozen .rodata turns off.
 */
#define need_owner (emit_records || filter_tgid || label_comm)

/* Not used by the program: they put the shared types into the object's BTF. */
const volatile struct session_record btf_session_record = {};
const volatile enum direction btf_direction = DIRECTION_UNKNOWN;
const volatile enum counter btf_counter = COUNTER_MAX;
const volatile enum record_flag btf_record_flag = RECORD_BIRTH_SEEN;
const volatile enum label_flag btf_label_flag = LABEL_PORT_LIMITED;
const volatile struct series_key btf_series_key = {};
const volatile struct series btf_series = {};
const volatile struct network_key btf_network_key = {};
const volatile struct bpf_prog_info btf_prog_info = {};	/* run time and count */

/*
 * True if the session is to be reported, so its state changes are wanted:
 * also when the table has no slot for it, so that its close is counted.
 */
static __always_inline bool session_born(const struct sock *sk, __u64 key, __u8 direction)
{
	struct session_labels labels = { .direction = direction };
	struct open_session *slot;
	__u16 lport = local_port(sk), rport = remote_port(sk);
	__u64 birth_ns;
	__u32 pid = 0;
	char comm[TASK_COMM_LEN] = {};

	labels.family = wire_family(sk);
	/* An accepted socket's owner is not running: it is known at the close. */
	if (!selected(labels.family, lport, rport) ||
	    (need_owner && direction == DIRECTION_OUTBOUND && owner_if_running(sk, &pid, comm) &&
	     filter_tgid && pid != filter_tgid)) {
		/* Not tracked: a stale entry must not pass for this socket's at its close. */
		forget_unseen_close(key);
		return false;
	}

	birth_ns = bpf_ktime_get_ns();
	give_labels(sk, direction == DIRECTION_INBOUND ? lport : rport, &labels);
	slot = session_at(session_claim_new(key));
	if (!slot) {
		count(COUNTER_SESSION_MAP_FULL);
		return true;
	}
	slot->birth_ns = birth_ns;
	slot->pid = pid;
	__builtin_memcpy(slot->comm, comm, sizeof(comm));
	session_publish(slot, &labels);
	return true;
}

/* close() or shutdown() sending our FIN: the owner is running if it holds the lock. */
static __always_inline int owner_seen(const struct sock *sk, __u64 key)
{
	struct open_session *s;
	__u32 pid;
	char comm[TASK_COMM_LEN];
	int index;

	if (!need_owner || !in_owner_context(sk))
		return 0;
	index = session_find(key);
	s = session_at(index);
	if (s) {
		if (!s->pid)
			owner_if_running(sk, &s->pid, s->comm);
		/* An accepted session's owner is known only now: apply -p / filters.pid. */
		if (filter_tgid && s->pid != filter_tgid)
			session_forget(index);
		return 0;
	}
	/*
	 * Born under an earlier program: keep at least who closes it, if the close will
	 * be reported at all (a slot held for nothing could crowd out others). Its
	 * labels stay 0: not counted as open, and not folded (birth unseen).
	 */
	if (!selected(wire_family(sk), local_port(sk), remote_port(sk)) ||
	    !owner_if_running(sk, &pid, comm) || (filter_tgid && pid != filter_tgid))
		return 0;
	s = session_at(session_claim(key));
	if (!s) {
		count(COUNTER_SESSION_MAP_FULL);
		return 0;
	}
	s->birth_ns = 0;
	s->pid = pid;
	__builtin_memcpy(s->comm, comm, sizeof(comm));
	return 0;
}

/* Everything known about a session at its close, in the record's layout. */
static __always_inline void describe(const struct sock *sk, const struct tcp_sock *tp,
				     int oldstate, const struct open_session *s,
				     struct session_record *r)
{
	r->close_ns = bpf_ktime_get_ns();
	if (oldstate != TCP_SYN_SENT && oldstate != TCP_SYN_RECV)
		r->flags |= RECORD_ESTABLISHED;
	if (s) {
		r->direction = s->labels.direction;
		if (s->birth_ns) {
			r->flags |= RECORD_BIRTH_SEEN;
			r->duration_ns = r->close_ns - s->birth_ns;
		}
	}
	if (emit_records) {
		copy_local_address(sk, r->family, r->laddr);
		copy_remote_address(sk, r->family, r->raddr);
	}
	if (emit_records || label_cgroup)
		r->cgroup_id = socket_cgroup_id(sk);
	payload_bytes(sk, tp, oldstate, r);
}

/* The owner as known at the close: remembered, or running now. */
static __always_inline void close_owner(const struct sock *sk, const struct open_session *s,
					struct session_record *r)
{
	if (s && s->pid) {
		r->pid = s->pid;
		__builtin_memcpy(r->comm, s->comm, sizeof(r->comm));
	} else {
		owner_if_running(sk, &r->pid, r->comm);
	}
}

/*
 * The labels to fold under: those given at the birth, unless a program with
 * other label rules gave them (the session was open across a reload).
 */
static __always_inline void close_labels(const struct sock *sk, const struct open_session *s,
					 const struct session_record *r,
					 struct session_labels *labels)
{
	*labels = s->labels;
	if (labels->rules == label_rules)
		return;
	labels->direction = r->direction;
	labels->family = r->family;
	give_labels(sk, r->direction == DIRECTION_INBOUND ? r->lport : r->rport, labels);
}

static __always_inline int session_closed(const struct tcp_sock *tp, __u64 key, int oldstate)
{
	const struct sock *sk = &tp->inet_conn.icsk_inet.sk;
	struct session_labels labels;
	struct session_record r;
	struct open_session *s;
	int index;

	if (oldstate == TCP_LISTEN)
		return 0;	/* a listener closing is not a session */
	index = session_find(key);
	s = session_at(index);

	__builtin_memset(&r, 0, sizeof(r));
	r.family = wire_family(sk);
	r.lport = bpf_ntohs(tp->inet_conn.icsk_inet.inet_sport);
	r.rport = remote_port(sk);
	if (!selected(r.family, r.lport, r.rport))
		goto forget;
	if (need_owner) {
		close_owner(sk, s, &r);
		if (filter_tgid && r.pid != filter_tgid)
			goto forget;
	}
	describe(sk, tp, oldstate, s, &r);
	if (!(r.flags & RECORD_BIRTH_SEEN)) {
		count(COUNTER_BIRTH_UNSEEN);
	} else if (fold_metrics && s) {
		close_labels(sk, s, &r, &labels);
		fold(&labels, &r);
	}
	if (emit_records)
		emit(&r);
forget:
	session_forget(index);
	return 0;
}

/* key: the socket's address as a number, see address_of() */
static __always_inline int state_changed(const struct tcp_sock *tp, __u64 key, int oldstate,
					 int newstate)
{
	switch (newstate) {
	case TCP_CLOSE:
		return session_closed(tp, key, oldstate);
	case TCP_FIN_WAIT1:
	case TCP_LAST_ACK:
		return owner_seen(&tp->inet_conn.icsk_inet.sk, key);
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

/*
 * Whether a callback has work: a birth, a close, or (when the owner is wanted)
 * one of the transitions close() makes in the owner's context. Decided before
 * any helper call: most callbacks (window and timeout choices, the other state
 * changes) return at once, as in the do-nothing floor.
 */
static __always_inline bool wanted(__u32 op, __u32 newstate)
{
	if (op == BPF_SOCK_OPS_TCP_CONNECT_CB || op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		return true;
	if (op != BPF_SOCK_OPS_STATE_CB)
		return false;
	return newstate == TCP_CLOSE ||
	       (need_owner && (newstate == TCP_FIN_WAIT1 || newstate == TCP_LAST_ACK));
}

SEC("sockops")
int tcp_sessions(struct bpf_sock_ops *ops)
{
	const struct tcp_sock *tp;
	const struct sock *sk;
	struct bpf_sock *bsk;
	__u32 op = ops->op;
	__u64 key;

	if (!wanted(op, ops->args[1]))
		return 1;
	bsk = ops->sk;
	if (!bsk)
		return 1;
	tp = bpf_skc_to_tcp_sock(bsk);	/* a full TCP socket, or NULL */
	if (!tp)
		return 1;
	sk = &tp->inet_conn.icsk_inet.sk;
	key = address_of(tp);
	if (!key)	/* never a socket's address; 0 marks a free slot */
		return 1;
	if (op == BPF_SOCK_OPS_STATE_CB)
		state_changed(tp, key, ops->args[0], ops->args[1]);
	else if (session_born(sk, key, op == BPF_SOCK_OPS_TCP_CONNECT_CB ? DIRECTION_OUTBOUND
									  : DIRECTION_INBOUND))
		watch_state_changes(ops);
	return 1;	/* sock_ops programs answer 1: nothing refused */
}

char LICENSE[] SEC("license") = "GPL";
