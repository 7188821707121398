/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What the BPF program and user space share. User space reads these layouts
 * and enum values from the compiled object's BTF, so this header is their
 * only definition: change a field here and both sides follow.
 */
#ifndef TCPLIFE_H
#define TCPLIFE_H

#define TASK_COMM_LEN 16

enum direction {
	DIRECTION_UNKNOWN = 0,	/* opened before the tracer and not inferable */
	DIRECTION_INBOUND = 1,	/* passive open: a listener accepted it */
	DIRECTION_OUTBOUND = 2,	/* active open: connect() */
};

/* Indexes into the per-CPU `counters` array: everything the tracer loses. */
enum counter {
	COUNTER_RINGBUF_DROPS = 0,	/* record not emitted: ring buffer full */
	COUNTER_SESSION_MAP_FULL = 1,	/* session not tracked: `sessions` map full */
	COUNTER_MAX = 2,
};

enum record_flag {
	RECORD_BIRTH_SEEN = 1,		/* the open was traced: duration is valid */
	RECORD_ESTABLISHED = 2,		/* the handshake completed */
};

/* One closed TCP session, as sent through the ring buffer. */
struct session_record {
	__u64 close_ns;			/* CLOCK_MONOTONIC time of the close */
	__u64 duration_ns;		/* 0 unless RECORD_BIRTH_SEEN */
	__u64 tx_bytes;			/* payload bytes sent and acknowledged */
	__u64 rx_bytes;			/* payload bytes received */
	__u8 laddr[16];			/* IPv4 uses the first 4 bytes */
	__u8 raddr[16];
	__u32 pid;			/* owning process (tgid), 0 if unknown */
	__u16 lport;
	__u16 rport;
	char comm[TASK_COMM_LEN];	/* empty if unknown */
	__u8 family;			/* 4 or 6: the family on the wire */
	__u8 direction;			/* enum direction */
	__u8 flags;			/* enum record_flag */
	__u8 _pad[5];
};

#endif /* TCPLIFE_H */
