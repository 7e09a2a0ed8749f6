// SPDX-License-Identifier: GPL-2.0
#include "vmlinux.h"
#include <sensorium/common.h>
#include "event.h"

SENSORIUM_LICENSE("GPL");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} kill_events SEC(".maps");

/* Keeps the record's type in the object's BTF, where the layout test compares it with plugin.py. */
struct kill_event kill_event_btf_anchor __attribute__((unused));

/* Knob set by the sensor before load: report only this signal (0: all). */
const volatile __s32 only_signal = 0;

SEC("tracepoint/syscalls/sys_enter_kill")
int on_kill(struct trace_event_raw_sys_enter *ctx)
{
	struct kill_event e = {};
	__s32 sig = (__s32)ctx->args[1];

	if (only_signal && sig != only_signal)
		return 0;
	sensorium_hdr_fill(&e.hdr, 1, sizeof(e));
	e.target_pid = (__s32)ctx->args[0];
	e.sig = sig;
	sensorium_submit(&kill_events, &e, sizeof(e));
	return 0;
}
