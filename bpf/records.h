/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Closed sessions sent to user space one record each (the tcplife command),
 * through a ring buffer.
 *
 * Relies on: bpf_ringbuf_output() copies the record and commits it at once,
 * failing (never blocking) when the ring is full; BPF_RB_NO_WAKEUP leaves the
 * reader asleep, BPF_RB_FORCE_WAKEUP wakes it.
 * Checked by: test_ring_readers.py (every record arrives, through both
 * readers; no wake-up is lost), test_cli.py (losses reported).
 */
#ifndef TCPLIFE_RECORDS_H
#define TCPLIFE_RECORDS_H

const volatile bool emit_records = true;
const volatile __u64 ringbuf_wakeup_bytes = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} records SEC(".maps");

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

/* A full ring refuses the record: the reader fell behind. Counted, never retried. */
static __always_inline void emit(struct session_record *r)
{
	if (bpf_ringbuf_output(&records, r, sizeof(*r), wakeup_flag(sizeof(*r))))
		count(COUNTER_RINGBUF_DROPS);
}

#endif /* TCPLIFE_RECORDS_H */
