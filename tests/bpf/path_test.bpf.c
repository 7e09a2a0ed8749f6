// SPDX-License-Identifier: GPL-2.0
/* Test probe for tests/test_bpf_path.py: on exec by a child of the test process, send the absolute path
 * of the executed file (bprm->file->f_path) as sensorium_d_path() builds it. Two variants: tp_btf and
 * raw_tp (the test loads one at a time). */
#include "vmlinux.h"
#include <sensorium/common.h>
#include <sensorium/path.h>

SENSORIUM_LICENSE("GPL");

const volatile __u32 parent_tgid = 0;

struct path_rec {
	struct sensorium_hdr hdr;
	__s32 len;
	__u32 flags;
	char buf[SENSORIUM_D_PATH_BUF];
};

#define REC_HEAD 32 /* offsetof(struct path_rec, buf) */

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct path_rec);
} scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");

static __always_inline int report(struct task_struct *task, struct linux_binprm *bprm)
{
	struct path_rec *r;
	struct file *file;
	__u32 key = 0;
	int len;

	if (BPF_CORE_READ(task, real_parent, tgid) != parent_tgid)
		return 0;
	r = bpf_map_lookup_elem(&scratch, &key);
	if (!r)
		return 0;
	file = BPF_CORE_READ(bprm, file);
	r->flags = 0;
	len = sensorium_d_path(&file->f_path, r->buf, sizeof(r->buf), &r->flags);
	r->len = len;
	if (len < 0)
		len = 0;
	sensorium_hdr_fill(&r->hdr, 1, 0);
	r->hdr.size = REC_HEAD + (len & (SENSORIUM_PATH_MAX - 1)) + 1;
	sensorium_submit(&events, r, REC_HEAD + (len & (SENSORIUM_PATH_MAX - 1)) + 1);
	return 0;
}

SEC("?tp_btf/sched_process_exec")
int BPF_PROG(exec_tp_btf, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	return report(p, bprm);
}

SEC("?raw_tp/sched_process_exec")
int BPF_PROG(exec_raw_tp, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	return report((struct task_struct *)bpf_get_current_task(), bprm);
}
