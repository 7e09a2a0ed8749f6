/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * sensorium/common.h: what every Sensorium probe shares. Include it right after "vmlinux.h".
 *
 *   - libbpf's helper headers (bpf_helpers.h, bpf_core_read.h, bpf_tracing.h);
 *   - SENSORIUM_LICENSE("..."): declares the program license (GPL-only helpers such as
 *     bpf_probe_read_kernel need a GPL-compatible one);
 *   - struct sensorium_hdr: the header every ring-buffer record starts with, and sensorium_hdr_fill();
 *   - sensorium_submit(): ring-buffer output without a per-event wakeup (the agent polls on a short
 *     timer; a wakeup per event costs about 10x in a VM, see INFRA.md), forcing one wakeup only when
 *     the ring fills past SENSORIUM_WAKEUP_BYTES so a burst is drained before it overflows;
 *   - SENSORIUM_MAP(name, type, entries, key type, value type): a BTF-defined map in one line;
 *   - SENSORIUM_COUNTERS(name, n) and sensorium_count(): a per-CPU array of n u64 counters (drops, skipped
 *     events), which the agent reads summed with obj.map(name).counters([...]); sensorium_submit_counted():
 *     sensorium_submit() that counts a record the full ring refused;
 *   - SENSORIUM_BTF_KEEP(name): keeps a record struct no program names in the object's BTF.
 */
#ifndef __SENSORIUM_COMMON_H
#define __SENSORIUM_COMMON_H

#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#define SENSORIUM_LICENSE(name) char LICENSE[] SEC("license") = name

/* Unread bytes in a ring above which sensorium_submit() wakes the reader at once. */
#ifndef SENSORIUM_WAKEUP_BYTES
#define SENSORIUM_WAKEUP_BYTES (256 * 1024)
#endif

/*
 * Every ring record starts with this header (24 bytes, naturally aligned).
 *   type:  sensor-specific record type (the decoder dispatches on it)
 *   flags: sensor-specific flags
 *   size:  bytes of the whole record, header included
 *   ktime: bpf_ktime_get_ns() at the event (CLOCK_MONOTONIC)
 *   pid:   the process id (kernel tgid); tid: the thread id (kernel pid)
 */
struct sensorium_hdr {
	__u16 type;
	__u16 flags;
	__u32 size;
	__u64 ktime;
	__u32 pid;
	__u32 tid;
};

/* Fill a record header for the current task. */
static __always_inline void sensorium_hdr_fill(struct sensorium_hdr *hdr, __u16 type, __u32 size)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	hdr->type = type;
	hdr->flags = 0;
	hdr->size = size;
	hdr->ktime = bpf_ktime_get_ns();
	hdr->pid = pid_tgid >> 32;
	hdr->tid = (__u32)pid_tgid;
}

/*
 * Copy `size` bytes at `data` into the ring buffer map `ringbuf` as one record.
 * `size` may vary per event (build the record in a per-CPU array scratch map), but the verifier must
 * see it bounded by the size of `data`, e.g. `size & (SCRATCH_SIZE - 1)` or an explicit `if`.
 * No wakeup is sent unless this record makes the unread data cross SENSORIUM_WAKEUP_BYTES.
 * Returns 0, or a negative errno (-EAGAIN when the ring is full: count it as a drop).
 */
static __always_inline long sensorium_submit(void *ringbuf, void *data, __u64 size)
{
	__u64 flags = BPF_RB_NO_WAKEUP;
	__u64 avail = bpf_ringbuf_query(ringbuf, BPF_RB_AVAIL_DATA);

	/* Wake only when this record crosses the threshold: while a slow reader leaves the ring above it,
	 * a wakeup per record would cost every traced call again (the reader polls on its timer anyway). */
	if (avail <= SENSORIUM_WAKEUP_BYTES && avail + size > SENSORIUM_WAKEUP_BYTES)
		flags = BPF_RB_FORCE_WAKEUP;
	return bpf_ringbuf_output(ringbuf, data, size, flags);
}

/* A BTF-defined map in one line. */
#define SENSORIUM_MAP(name, map_type, entries, key_type, value_type)	\
	struct {							\
		__uint(type, map_type);					\
		__uint(max_entries, entries);				\
		__type(key, key_type);					\
		__type(value, value_type);				\
	} name SEC(".maps")

#define SENSORIUM_COUNTERS(name, n) SENSORIUM_MAP(name, BPF_MAP_TYPE_PERCPU_ARRAY, n, __u32, __u64)

/* Add one to counter `which` of a SENSORIUM_COUNTERS map (this CPU's slot: no atomics needed). */
static __always_inline void sensorium_count(void *counters, __u32 which)
{
	__u64 *v = bpf_map_lookup_elem(counters, &which);

	if (v)
		*v += 1;
}

/* sensorium_submit(), counting a record the ring refused in counter `which` of `counters`. */
static __always_inline void sensorium_submit_counted(void *ringbuf, void *data, __u64 size, void *counters,
						     __u32 which)
{
	if (sensorium_submit(ringbuf, data, size) < 0)
		sensorium_count(counters, which);
}

/* Keep `struct name` in the object's BTF though no program names it (tests/test_layouts.py checks each record
 * layout a sensor declares against the BTF): an unused global pointer to it. */
#define SENSORIUM_BTF_KEEP(name) struct name *sensorium_btf_keep_##name __attribute__((unused))

#endif /* __SENSORIUM_COMMON_H */
