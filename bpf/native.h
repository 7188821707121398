/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Native histograms (Prometheus's exponential buckets), folded in the kernel
 * with integer arithmetic only. Bucket i of schema s holds the values in
 * (2^((i-1)/2^s), 2^(i/2^s)] of the base unit (seconds, bytes).
 *
 * A value v (in nanoseconds or bytes) is e doublings above 1 (e: its highest
 * set bit) times a mantissa in [1, 2), which v << (63 - e) holds exactly in
 * fixed point. Its index is e * 2^s, plus the unit's offset (nanoseconds to
 * seconds: -log2(10^9) * 2^s, whole part in native_base), plus how many of
 * the schema's boundaries inside one doubling, shifted by the offset's
 * fraction (native_bounds, same fixed point, rounded down), lie below the
 * mantissa. Rounding a boundary down does not change the comparison with an
 * integer: the index is exact. Negative schemas merge 2^-s buckets of
 * schema 0: the index is rounded up after dividing.
 * User space computes the tables (native.py) and a test compares the index
 * with ceil(log2(v) * 2^s) computed exactly (test_native.py).
 *
 * Each histogram keeps a window of native_nbuckets buckets per label set
 * from index native_low, above the zero bucket. A value above the window is
 * counted in its last bucket and in a self-metric.
 */
#ifndef TCPLIFE_NATIVE_H
#define TCPLIFE_NATIVE_H

const volatile __u32 native_nbuckets = 0;	/* per histogram and label set; 0: off */
const volatile __u32 native_table_schema = 0;	/* the tables' schema: max(schema, 0) */
const volatile __u32 native_coarsen = 0;	/* -schema, for negative schemas */
/* Per histogram; one row more, unused, so that a mask bounds the index. */
const volatile __s64 native_base[NATIVE_ROWS] = {};
const volatile __s64 native_low[NATIVE_ROWS] = {};
const volatile __u64 native_bounds[NATIVE_ROWS * NATIVE_TABLE] = {};

/*
 * Without branches: the verifier walks every path through a branch, and
 * three histograms' binary searches would multiply into millions.
 */

/* 1 if x > 0, for x < 2^32. */
static __always_inline __u64 nonzero(__u64 x)
{
	return (x + 0xffffffffULL) >> 32;
}

/* 1 if a < b, for a and b in [2^63, 2^64): the sign of their difference. */
static __always_inline __u64 below(__u64 a, __u64 b)
{
	return (a - b) >> 63;
}

/* floor(log2(v)) for v > 0: BPF has no count-leading-zeros instruction. */
static __always_inline __u64 highest_bit(__u64 v)
{
	__u64 bit = 0, shift;

	shift = nonzero(v >> 32) << 5;
	v >>= shift;
	bit += shift;
	shift = nonzero(v >> 16) << 4;
	v >>= shift;
	bit += shift;
	shift = nonzero(v >> 8) << 3;
	v >>= shift;
	bit += shift;
	shift = nonzero(v >> 4) << 2;
	v >>= shift;
	bit += shift;
	shift = nonzero(v >> 2) << 1;
	v >>= shift;
	bit += shift;
	return bit + (v >> 1);
}

/*
 * Entry i of row `row` of the tables. clang makes row + i an OR (their bits
 * do not overlap), whose bounds 6.1's verifier loses ("math between map_value
 * pointer and register with unbounded min value"); the barrier keeps the mask
 * that bounds it again, which clang would otherwise drop as redundant.
 */
static __always_inline __u64 bound_at(__u64 row, __u64 i)
{
	__u64 at = row + i;

	barrier_var(at);
	return native_bounds[at & (NATIVE_ROWS * NATIVE_TABLE - 1)];
}

/*
 * The bucket index of v > 0 units of histogram h. The table is padded with
 * all ones past the schema's 2^s bounds, so that a search over all
 * NATIVE_TABLE entries counts only those below the mantissa.
 */
static __always_inline __s64 native_index(__u32 h, __u64 v)
{
	__u64 top = highest_bit(v), mantissa = v << (63 - top), below_count = 0;
	__u64 row = (h & (NATIVE_ROWS - 1)) * NATIVE_TABLE;
	__s64 index;

	for (__u64 step = NATIVE_TABLE / 2; step; step >>= 1)
		below_count += below(bound_at(row, (below_count + step - 1) & (NATIVE_TABLE - 1)),
				     mantissa) * step;
	below_count += below(bound_at(row, below_count & (NATIVE_TABLE - 1)), mantissa);
	index = ((__s64)top << native_table_schema) + native_base[h & (NATIVE_ROWS - 1)] +
		below_count;
	if (native_coarsen)	/* ceil(index / 2^coarsen), arithmetic shifts */
		index = -((-index) >> native_coarsen);
	return index;
}

/*
 * The slot of v in histogram h's counts: 0 for the zero bucket, then the
 * window's. A global function: the verifier checks it once, not once per
 * path that reaches each of its three calls.
 */
__noinline __u64 native_slot(__u32 h, __u64 v)
{
	__s64 position;

	if (!v)
		return 0;
	position = native_index(h, v) - native_low[h & (NATIVE_ROWS - 1)];
	if (position < 0)
		return 0;
	if (position >= (__s64)native_nbuckets) {
		count(COUNTER_NATIVE_DURATION_ABOVE + h);
		return native_nbuckets;
	}
	return position + 1;
}

/* Count v in histogram h of the label set whose value is `into`. */
static __always_inline void fold_native(struct series *into, __u32 h, __u64 v)
{
	__u64 *counts = (__u64 *)(into + 1), slot = native_slot(h, v);

	if (slot <= native_nbuckets)	/* for the verifier: it is */
		__sync_fetch_and_add(&counts[h * (native_nbuckets + 1) + slot], 1);
}

#endif /* TCPLIFE_NATIVE_H */
