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
	DIRECTION_UNKNOWN = 0,	/* born under an earlier program, not inferable */
	DIRECTION_INBOUND = 1,	/* passive open: a listener accepted it */
	DIRECTION_OUTBOUND = 2,	/* active open: connect() */
};

/*
 * Indexes into the per-CPU `counters` array: what the program could not
 * deliver or fold as asked, so that nothing is lost silently.
 */
enum counter {
	COUNTER_RINGBUF_DROPS = 0,	/* record not emitted: ring buffer full */
	COUNTER_SESSION_MAP_FULL = 1,	/* session not tracked: `sessions` insert failed */
	COUNTER_BIRTH_UNSEEN = 2,	/* closed, but born before this program: not folded */
	COUNTER_SERIES_OVERFLOW = 3,	/* folded into the overflow series: label-set cap */
	COUNTER_SERIES_MAP_FULL = 4,	/* not folded: `series` insert failed otherwise */
	COUNTER_PORT_LABELS_FULL = 5,	/* folded as port "other": automatic port cap */
	COUNTER_CLOSE_UNSEEN = 6,	/* a tracked session's close never arrived */
	/* counted in the last bucket of a native histogram's window: above it */
	COUNTER_NATIVE_DURATION_ABOVE = 7,
	COUNTER_NATIVE_SENT_ABOVE = 8,
	COUNTER_NATIVE_RECEIVED_ABOVE = 9,
	COUNTER_MAX = 10,
};

enum record_flag {
	RECORD_BIRTH_SEEN = 1,		/* the open was traced: duration is valid */
	RECORD_ESTABLISHED = 2,		/* the handshake completed */
};

enum label_flag {
	LABEL_PORT_LIMITED = 1,		/* port "other": the automatic port cap was reached */
};

/*
 * A session's labels but the process name, given at its birth by the program
 * whose label rules are `rules` (user space numbers them from 1). One 64-bit
 * word, written and cleared whole (open_sessions.h): user space reads it in
 * place to count open sessions per label set, and 0 marks a slot with none.
 */
struct session_labels {
	__u16 port;			/* service port label; 0: "other" */
	__u16 network;			/* 1 + index of the remote network; 0: other */
	__u8 direction;			/* enum direction */
	__u8 family;			/* 4 or 6 */
	__u8 rules;			/* never 0 once given */
	__u8 flags;			/* enum label_flag */
};

/*
 * One slot of the open-session table (bpf/open_sessions.h): what is
 * remembered between a session's birth and its close, keyed by the socket's
 * address; and, for the slot as a home, which slots hold keys of that home.
 * One cache line, so that a session's callbacks touch one line of the table.
 */
struct open_session {
	__u64 key;			/* the socket's address; 0: free */
	__u64 reach;			/* as a home: bit i, slot + i holds a key of it */
	struct session_labels labels;	/* 8-byte aligned, read as one word */
	__u64 birth_ns;			/* 0: opened before the program */
	__u32 pid;			/* 0 until seen in the owner's context */
	char comm[TASK_COMM_LEN];
} __attribute__((aligned(64)));

/* One closed TCP session, as sent through the ring buffer. */
struct session_record {
	__u64 close_ns;			/* CLOCK_MONOTONIC time of the close */
	__u64 duration_ns;		/* 0 unless RECORD_BIRTH_SEEN */
	__u64 tx_bytes;			/* payload bytes sent and acknowledged */
	__u64 rx_bytes;			/* payload bytes received */
	__u64 cgroup_id;		/* the socket's cgroup v2 (its directory's inode) */
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

/*
 * Histograms folded in the kernel. Bucket i counts values v with
 * bounds[i-1] < v <= bounds[i] (Prometheus's inclusive `le`); the last used
 * slot, index nbounds, is +Inf. User space makes the counts cumulative.
 */
#define MAX_BOUNDS 32
#define HIST_SLOTS (MAX_BOUNDS + 1)

/* One label set. Zeroed fields are labels the config leaves off. */
struct series_key {
	__u64 cgroup_id;		/* the socket's cgroup v2, if the cgroup label is on */
	char comm[TASK_COMM_LEN];	/* owner's name, if the comm label is on */
	__u16 network;			/* 1 + index of the remote network; 0: other */
	__u16 port;			/* service port; 0: "other" */
	__u8 direction;			/* enum direction, never unknown */
	__u8 family;			/* 4 or 6 */
	__u8 overflow;			/* 1: the label-set cap was reached */
	__u8 _pad;
};

/*
 * A label set's folded values. With native histograms on, user space sizes
 * the map's values to hold, after this, the native counts of each histogram
 * (enum native_histogram): the zero bucket, then the window's buckets.
 */
struct series {
	__u64 failed_handshakes;	/* closed before the handshake completed */
	__u64 duration_sum_ns;
	__u64 sent_sum;
	__u64 received_sum;
	__u64 created_ns;		/* CLOCK_MONOTONIC time of the first fold, on one CPU */
	__u64 duration[HIST_SLOTS];	/* nanoseconds */
	__u64 sent[HIST_SLOTS];		/* payload bytes */
	__u64 received[HIST_SLOTS];
};

/* Native histograms (bpf/native.h), in the order of their counts in a value. */
enum native_histogram {
	NATIVE_DURATION = 0,		/* nanoseconds */
	NATIVE_SENT = 1,		/* payload bytes */
	NATIVE_RECEIVED = 2,
	NATIVE_HISTOGRAMS = 3,
};

/* Boundaries per doubling at the finest schema, 8; a power of two. */
#define NATIVE_TABLE 256
/* Rows of the per-histogram settings: NATIVE_HISTOGRAMS rounded up to a power of two. */
#define NATIVE_ROWS 4

/* Remote networks: an LPM trie over IPv6, IPv4 as ::ffff:a.b.c.d/96+len. */
struct network_key {
	__u32 prefixlen;
	__u8 addr[16];
};

#endif /* TCPLIFE_H */
