// SPDX-License-Identifier: GPL-2.0
/* Test probe for tests/test_bpf_ringbuf.py: getpgid(n) from the test process emits records through
 * sensorium_submit(); with flood mode, (n & 0xfffff) 64-byte records from one syscall (bpf_loop). */
#include "vmlinux.h"
#include <sensorium/common.h>

SENSORIUM_LICENSE("GPL");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 24);
} events SEC(".maps");

const volatile __u32 target_tgid = 0;

struct flood_rec {
	struct sensorium_hdr hdr;
	__u64 seq;
	__u64 pad[4];
};

static long emit_one(__u32 i, void *ctx)
{
	struct flood_rec r = {};

	r.hdr.type = 9;
	r.hdr.size = sizeof(r);
	r.seq = i;
	sensorium_submit(&events, &r, sizeof(r));
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_getpgid")
int flood(struct trace_event_raw_sys_enter *ctx)
{
	if ((bpf_get_current_pid_tgid() >> 32) != target_tgid)
		return 0;
	bpf_loop(ctx->args[0] & 0xfffff, emit_one, NULL, 0);
	return 0;
}
