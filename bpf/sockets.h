/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What a TCP socket tells of its session: the family on the wire, ports and
 * addresses, and the payload bytes each way; and which sockets the filters
 * select.
 *
 * Relies on: tcp_set_state() calls the program before the socket is
 * unhashed, so ports, addresses and counters are still in place at the
 * close; bytes_acked and bytes_received count sequence numbers (see
 * payload_bytes()).
 * Checked by: test_accuracy.py (exact bytes for every close kind, IPv4,
 * IPv6 and IPv4-mapped), test_filters.py, test_cgroups.py.
 */
#ifndef TCPLIFE_SOCKETS_H
#define TCPLIFE_SOCKETS_H

#define PORT_BITMAP_BYTES (65536 / 8)

const volatile __u32 filter_tgid = 0;
const volatile __u8 filter_family = 0;		/* 0: any, else 4 or 6 */
const volatile bool filter_lports = false;
const volatile bool filter_rports = false;
const volatile __u8 lport_bitmap[PORT_BITMAP_BYTES] = {};
const volatile __u8 rport_bitmap[PORT_BITMAP_BYTES] = {};

/*
 * The socket's cgroup v2, as its id (the cgroup directory's inode number). It
 * is set once, when the socket is created, from its creator's cgroup (an
 * accepted socket takes its listener's), and the socket holds the cgroup
 * until it is freed: the same at the close as at the birth, even if the owner
 * moved or the cgroup was removed since. Read through BTF pointers, which
 * the kernel guards against faults.
 */
static __always_inline __u64 socket_cgroup_id(const struct sock *sk)
{
	const struct cgroup *cgroup = sk->sk_cgrp_data.cgroup;

	return cgroup ? cgroup->kn->id : 0;
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

static __always_inline __u16 local_port(const struct sock *sk)
{
	return sk->__sk_common.skc_num;
}

static __always_inline __u16 remote_port(const struct sock *sk)
{
	return bpf_ntohs(sk->__sk_common.skc_dport);
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
static __always_inline void copy_address(__u8 family, const void *v4, const void *v6, __u8 *dst)
{
	if (family == 4)
		__builtin_memcpy(dst, v4, 4);
	else
		__builtin_memcpy(dst, v6, 16);
}

static __always_inline void copy_remote_address(const struct sock *sk, __u8 family, __u8 *dst)
{
	const struct sock_common *skc = &sk->__sk_common;

	copy_address(family, &skc->skc_daddr, &skc->skc_v6_daddr, dst);
}

static __always_inline void copy_local_address(const struct sock *sk, __u8 family, __u8 *dst)
{
	const struct sock_common *skc = &sk->__sk_common;

	copy_address(family, &skc->skc_rcv_saddr, &skc->skc_v6_rcv_saddr, dst);
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

#endif /* TCPLIFE_SOCKETS_H */
