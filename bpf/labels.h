/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The labels a session is folded under: service port and remote network
 * (the process name is added at the close). They are given once, at the
 * session's birth, and kept in its table slot, so that user space counts
 * open sessions by the very labels their close will be folded under,
 * without a second copy of these rules.
 *
 * Relies on: an LPM trie lookup with a full-length key returns the longest
 * matching prefix; a hash map insert with BPF_NOEXIST fails with -E2BIG once
 * max_entries are taken and -EEXIST when another CPU inserted the key first.
 * Checked by: test_exporter.py (listed and automatic ports, the automatic
 * cap, longest-prefix networks, the open gauge), test_prometheus.py.
 */
#ifndef TCPLIFE_LABELS_H
#define TCPLIFE_LABELS_H

const volatile __u8 label_rules = 0;		/* 0: no labels (nothing folded) */
const volatile bool label_networks = false;
const volatile bool auto_port_labels = false;	/* else the bitmap lists them */
const volatile __u8 port_label_bitmap[PORT_BITMAP_BYTES] = {};
const volatile __u16 ephemeral_low = 0;		/* never a label in automatic mode */
const volatile __u16 ephemeral_high = 0;

/* Ports given their own label in automatic mode, first come first served. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u16);
	__type(value, __u8);
} labelled_ports SEC(".maps");

/*
 * What labelled_ports has said so far, one bit a port, for an inlined array
 * lookup: only a port's first sessions pay for the hash. Ports refused at the
 * cap stay refused (labelled_ports never drops a port), so both answers keep.
 */
struct port_bits {
	__u64 labelled[65536 / 64];
	__u64 refused[65536 / 64];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct port_bits);
} auto_port_bits SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 256);
	__type(key, struct network_key);
	__type(value, __u16);
} networks SEC(".maps");

/*
 * Listed ports always have their own label, in both modes, and never take an
 * automatic slot; in automatic mode other ports take the free slots, first
 * come first served.
 */
static __always_inline __u16 port_label(__u16 port, __u8 *flags)
{
	__u32 zero = 0, word = port / 64;
	__u64 bit = 1ULL << (port % 64);
	struct port_bits *known;
	__u8 one = 1;
	long err;

	if (port_in(port_label_bitmap, port))
		return port;
	if (!auto_port_labels)
		return 0;
	if (port >= ephemeral_low && port <= ephemeral_high)
		return 0;
	known = bpf_map_lookup_elem(&auto_port_bits, &zero);
	if (!known)
		return 0;
	if (known->labelled[word] & bit)
		return port;
	if (known->refused[word] & bit)
		goto refused;
	err = bpf_map_update_elem(&labelled_ports, &port, &one, BPF_NOEXIST);
	if (!err || err == -EEXIST) {
		__sync_fetch_and_or(&known->labelled[word], bit);
		return port;
	}
	if (err == -E2BIG)
		__sync_fetch_and_or(&known->refused[word], bit);
refused:
	*flags |= LABEL_PORT_LIMITED;
	return 0;
}

/* IPv4 peers are looked up as ::ffff:a.b.c.d. */
static __always_inline __u16 network_label(const struct sock *sk, __u8 family)
{
	struct network_key key = { .prefixlen = 128 };
	__u16 *index;

	if (family == 4) {
		key.addr[10] = 0xff;
		key.addr[11] = 0xff;
		copy_remote_address(sk, family, &key.addr[12]);
	} else {
		copy_remote_address(sk, family, key.addr);
	}
	index = bpf_map_lookup_elem(&networks, &key);
	return index ? *index : 0;
}

/* The labels of this program's rules; direction and family are set already. */
static __always_inline void give_labels(const struct sock *sk, __u16 service_port,
					struct session_labels *labels)
{
	labels->rules = label_rules;
	labels->flags = 0;
	labels->port = label_rules ? port_label(service_port, &labels->flags) : 0;
	labels->network = label_networks ? network_label(sk, labels->family) : 0;
}

#endif /* TCPLIFE_LABELS_H */
