// SPDX-License-Identifier: GPL-2.0
/* Test probe for tests/test_bpf_loader.py and tests/test_bpf_ringbuf.py: a tracepoint on getpgid()
 * that sends one record per call from the test's own process. */
#include "vmlinux.h"
#include <sensorium/common.h>

SENSORIUM_LICENSE("GPL");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u32);
} pcpu SEC(".maps");

const volatile __u32 target_tgid = 0;
const volatile __u16 blocked_port = 0; /* network byte order */
const volatile __u64 magic = 0;
const volatile __u8 force_wakeup = 0;

struct test_rec {
	struct sensorium_hdr hdr;
	__u64 magic;
	__s64 arg;
};

SEC("tracepoint/syscalls/sys_enter_getpgid")
int on_getpgid(struct trace_event_raw_sys_enter *ctx)
{
	struct test_rec r;
	__u32 key = 0;
	__u64 one = 1, *cnt;

	if ((bpf_get_current_pid_tgid() >> 32) != target_tgid)
		return 0;
	sensorium_hdr_fill(&r.hdr, 7, sizeof(r));
	r.magic = magic;
	r.arg = ctx->args[0];
	if (force_wakeup)
		bpf_ringbuf_output(&events, &r, sizeof(r), BPF_RB_FORCE_WAKEUP);
	else
		sensorium_submit(&events, &r, sizeof(r));
	cnt = bpf_map_lookup_elem(&counts, &key);
	if (cnt)
		__sync_fetch_and_add(cnt, 1);
	else
		bpf_map_update_elem(&counts, &key, &one, BPF_NOEXIST);
	return 0;
}

/* Not loaded unless a test asks ("?" prefix): dereferences a map value without the NULL check, which
 * the verifier must refuse. */
SEC("?tracepoint/syscalls/sys_enter_getpgid")
int bad_deref(void *ctx)
{
	__u32 key = 0;
	__u64 *v = bpf_map_lookup_elem(&counts, &key);

	return *v;
}

/* Not loaded unless a test asks: the verifier walks every one of the 100000 iterations (i is precise)
 * and gives up at its 1M instruction limit, after writing a very long log. */
SEC("?tracepoint/syscalls/sys_enter_getpgid")
int too_complex(void *ctx)
{
	__u32 key = 0;
	__u64 *v;

	for (int i = 0; i < 100000; i++) {
		v = bpf_map_lookup_elem(&counts, &key);
		if (v && *v == i)
			return 1;
	}
	return 0;
}

/* connect() to blocked_port fails with EPERM for processes in the cgroup this is attached to. */
SEC("cgroup/connect4")
int deny_port(struct bpf_sock_addr *ctx)
{
	return ctx->user_port == blocked_port ? 0 : 1;
}
