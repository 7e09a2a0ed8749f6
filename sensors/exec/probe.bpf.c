// SPDX-License-Identifier: GPL-2.0-only
/*
 * The exec sensor's kernel half: process exec, fork (new thread groups) and exit, as tp_btf programs.
 *
 * Records are built in a per-CPU slot of an array map (too big for the stack, and a per-CPU array value
 * is limited to 32 KiB) and copied to one ring buffer with sensorium_submit() (no per-event wakeup).
 * Layouts: event.h. Paths come from sensorium_d_path() (bpf_d_path is not allowed in tp_btf);
 * everything is CO-RE so one object loads on 6.1, 6.12 and 6.18.
 */
#include "vmlinux.h"
#include <sensorium/common.h>
#include <sensorium/path.h>
#include <sensorium/scope.h> /* sens_scope_kn_parent(): kernfs_node.parent, renamed __parent in 6.15 */
#include "event.h"

SENSORIUM_LICENSE("GPL");

/* Upper bounds. The byte budget for arguments is the rodata knob max_args_bytes (<= ARGS_CAP). */
#define ARGS_CAP     32768
#define CGNAME_CAP   256
#define OFF_MASK     0xffff /* every field starts at data[off & OFF_MASK]: keeps the verifier's bounds */
#define DATA_SIZE    (OFF_MASK + 1 + SENSORIUM_D_PATH_BUF)

const volatile __u32 max_args_bytes = 4096;

struct exec_scratch {
	struct exec_record rec;
	char data[DATA_SIZE];
};

/* Drop counters, per CPU: [0] ring full, [1] no scratch slot for this CPU. */
#define DROP_RING    0
#define DROP_SCRATCH 1

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} exec_events SEC(".maps");

/* One slot per possible CPU (user space sets max_entries before load). Tracepoints run their
 * programs with preemption disabled, and only sensorium_exec uses the slots, so a CPU's slot is never
 * used by two builds at once. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, struct exec_scratch);
} exec_scratch SEC(".maps");

SENSORIUM_COUNTERS(exec_drops, 2);

SENSORIUM_BTF_KEEP(fork_record);
SENSORIUM_BTF_KEEP(exit_record);

#define submit(data, size) sensorium_submit_counted(&exec_events, data, size, &exec_drops, DROP_RING)

static __always_inline struct exec_scratch *scratch_slot(void)
{
	__u32 cpu = bpf_get_smp_processor_id();

	return bpf_map_lookup_elem(&exec_scratch, &cpu);
}

/* The path of the struct path at `path_p` into this CPU's scratch at data[off & OFF_MASK]
 * (sensorium_d_path: bounded walk to the task's root). Returns its length | its flags << 16, or -1. A
 * global function: the walk is verified once for the binary and the cwd (DESIGN.md, verifier budget). */
__attribute__((noinline)) int exec_put_path_g(__u64 path_p, __u32 off)
{
	struct exec_scratch *s = scratch_slot();
	__u32 pflags = 0;
	int len;

	if (!s)
		return -1;
	len = sensorium_d_path((const struct path *)path_p, &s->data[off & OFF_MASK], SENSORIUM_D_PATH_BUF, &pflags);
	if (len < 0)
		return -1;
	return (len & (SENSORIUM_PATH_MAX - 1)) | (int)((pflags & 0xff) << 16);
}

static __always_inline __u32 put_path(struct exec_scratch *s, const struct path *path, __u32 off, __u16 *flags,
				      __u16 trunc, __u16 deleted)
{
	int r = exec_put_path_g((__u64)path, off);

	if (r < 0) {
		*flags |= trunc;
		return 0;
	}
	__u32 pflags = (__u32)r >> 16;

	if (pflags & (SENSORIUM_PATH_TRUNC_DEPTH | SENSORIUM_PATH_TRUNC_BYTES))
		*flags |= trunc;
	if (pflags & SENSORIUM_PATH_DELETED)
		*flags |= deleted;
	return r & (SENSORIUM_PATH_MAX - 1);
}

static __always_inline __u32 ns_inum(void *ns_common_ptr)
{
	unsigned int inum = 0;

	if (ns_common_ptr)
		bpf_core_read(&inum, sizeof(inum), &((struct ns_common *)ns_common_ptr)->inum);
	return inum;
}

static __always_inline void fill_namespaces(struct exec_record *r, struct task_struct *task)
{
	struct nsproxy *nsp = BPF_CORE_READ(task, nsproxy);
	struct pid *tpid = BPF_CORE_READ(task, thread_pid);
	unsigned int level = BPF_CORE_READ(tpid, level);
	struct pid_namespace *pidns = NULL;

	r->ns_mnt = BPF_CORE_READ(nsp, mnt_ns, ns.inum);
	r->ns_pid_for_children = BPF_CORE_READ(nsp, pid_ns_for_children, ns.inum);
	r->ns_net = BPF_CORE_READ(nsp, net_ns, ns.inum);
	r->ns_uts = BPF_CORE_READ(nsp, uts_ns, ns.inum);
	r->ns_ipc = BPF_CORE_READ(nsp, ipc_ns, ns.inum);
	r->ns_cgroup = BPF_CORE_READ(nsp, cgroup_ns, ns.inum);
	r->ns_time = 0;
	r->ns_time_for_children = 0;
	if (bpf_core_field_exists(nsp->time_ns)) {
		r->ns_time = BPF_CORE_READ(nsp, time_ns, ns.inum);
		r->ns_time_for_children = BPF_CORE_READ(nsp, time_ns_for_children, ns.inum);
	}
	r->ns_user = BPF_CORE_READ(task, cred, user_ns, ns.inum);
	/* The task's own pid namespace: thread_pid->numbers[level].ns (pid_ns_for_children may differ). */
	bpf_probe_read_kernel(&pidns, sizeof(pidns),
			      (void *)tpid + bpf_core_field_offset(struct pid, numbers) +
				      (level & 31) * bpf_core_type_size(struct upid) +
				      bpf_core_field_offset(struct upid, ns));
	if (pidns)
		r->ns_pid = BPF_CORE_READ(pidns, ns.inum);
}

static __always_inline __u32 cgroup_leaf(struct cgroup *cgrp, char *buf, __u64 *id, __u64 *parent_id)
{
	struct kernfs_node *kn = BPF_CORE_READ(cgrp, kn);
	struct kernfs_node *parent;
	const char *name;
	long r;

	if (!kn)
		return 0;
	*id = BPF_CORE_READ(kn, id);
	parent = sens_scope_kn_parent(kn);
	*parent_id = parent ? BPF_CORE_READ(parent, id) : 0;
	name = BPF_CORE_READ(kn, name);
	r = bpf_probe_read_kernel_str(buf, CGNAME_CAP, name);
	return r > 1 ? r - 1 : 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(sensorium_exec, struct task_struct *task, pid_t old_pid, struct linux_binprm *bprm)
{
	struct exec_scratch *s = scratch_slot();
	struct exec_record *r;
	const struct cred *cred;
	struct mm_struct *mm;
	struct file *file;
	struct fs_struct *fs;
	struct css_set *cgroups;
	unsigned long arg_start, arg_end;
	__u64 total;
	__u32 n, limit, off, len;
	__u16 flags = 0;

	if (!s) {
		sensorium_count(&exec_drops, DROP_SCRATCH);
		return 0;
	}
	r = &s->rec;
	sensorium_hdr_fill(&r->hdr, EXEC_REC_EXEC, 0);
	r->ppid = BPF_CORE_READ(task, real_parent, tgid);
	cred = BPF_CORE_READ(task, cred);
	r->uid = BPF_CORE_READ(cred, uid.val);
	r->euid = BPF_CORE_READ(cred, euid.val);
	r->suid = BPF_CORE_READ(cred, suid.val);
	r->fsuid = BPF_CORE_READ(cred, fsuid.val);
	r->gid = BPF_CORE_READ(cred, gid.val);
	r->egid = BPF_CORE_READ(cred, egid.val);
	r->sgid = BPF_CORE_READ(cred, sgid.val);
	r->fsgid = BPF_CORE_READ(cred, fsgid.val);
	/* kernel_cap_t is 8 bytes in both its layouts (u64 val since 6.3, u32 cap[2] before; little endian) */
	bpf_core_read(&r->cap_permitted, sizeof(r->cap_permitted), &cred->cap_permitted);
	bpf_core_read(&r->cap_effective, sizeof(r->cap_effective), &cred->cap_effective);
	bpf_core_read(&r->cap_inheritable, sizeof(r->cap_inheritable), &cred->cap_inheritable);
	r->securebits = BPF_CORE_READ(cred, securebits);
	r->user_ns_level = BPF_CORE_READ(cred, user_ns, level);
	r->user_ns_uid = BPF_CORE_READ(cred, user_ns, owner.val);
	r->user_ns_gid = BPF_CORE_READ(cred, user_ns, group.val);
	r->auid = (__u32)-1;
	if (bpf_core_field_exists(task->loginuid))
		r->auid = BPF_CORE_READ(task, loginuid.val);
	r->start_time = BPF_CORE_READ(task, start_time);
	fill_namespaces(r, task);

	/* Arguments: argv strings, NUL-separated, as the new image's stack holds them. */
	mm = BPF_CORE_READ(task, mm);
	arg_start = BPF_CORE_READ(mm, arg_start);
	arg_end = BPF_CORE_READ(mm, arg_end);
	total = arg_end > arg_start ? arg_end - arg_start : 0;
	r->args_total = total > 0xffffffff ? 0xffffffff : total;
	limit = max_args_bytes;
	if (limit > ARGS_CAP)
		limit = ARGS_CAP;
	n = total;
	if (total > limit) {
		n = limit;
		flags |= EXEC_F_ARGS_TRUNC;
	}
	n &= OFF_MASK;
	if (n && bpf_probe_read_user(s->data, n, (void *)arg_start) < 0) {
		flags |= EXEC_F_ARGS_ERR;
		n = 0;
	}
	r->args_len = n;
	off = n;

	/* Binary: the file being executed (bprm->file), not the interpreter's argv[0]. */
	file = BPF_CORE_READ(bprm, file);
	len = put_path(s, __builtin_preserve_access_index(&file->f_path), off, &flags, EXEC_F_BINARY_TRUNC,
		       EXEC_F_BINARY_DELETED);
	r->binary_len = len;
	off += len;

	fs = BPF_CORE_READ(task, fs);
	len = put_path(s, __builtin_preserve_access_index(&fs->pwd), off, &flags, EXEC_F_CWD_TRUNC, 0);
	r->cwd_len = len;
	off += len;

	/* cgroups: the cgroup2 one, and the v1 memory controller's (hybrid hosts place processes there). */
	r->cgroup_id = 0;
	r->memcg_id = 0;
	r->cgroup_parent_id = 0;
	r->memcg_parent_id = 0;
	cgroups = BPF_CORE_READ(task, cgroups);
	len = cgroup_leaf(BPF_CORE_READ(cgroups, dfl_cgrp), &s->data[off & OFF_MASK], &r->cgroup_id,
			  &r->cgroup_parent_id);
	r->cgroup_name_len = len;
	off += len;
	len = 0;
	if (bpf_core_enum_value_exists(enum cgroup_subsys_id, memory_cgrp_id)) {
		int id = bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id);
		struct cgroup_subsys_state *css = NULL;

		if (id >= 0 && id < 16) {
			bpf_probe_read_kernel(&css, sizeof(css),
					      (void *)cgroups + bpf_core_field_offset(struct css_set, subsys) +
						      id * sizeof(void *));
			if (css)
				len = cgroup_leaf(BPF_CORE_READ(css, cgroup), &s->data[off & OFF_MASK], &r->memcg_id,
						  &r->memcg_parent_id);
		}
	}
	if (!r->memcg_id)
		flags |= EXEC_F_NO_MEMCG;
	r->memcg_name_len = len;
	off += len;

	r->hdr.flags = flags;
	off &= OFF_MASK;
	r->hdr.size = sizeof(*r) + off;
	submit(r, sizeof(*r) + off);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(sensorium_fork, struct task_struct *parent, struct task_struct *child)
{
	struct fork_record r = {};
	__u32 pid = BPF_CORE_READ(child, tgid);

	if (BPF_CORE_READ(child, pid) != pid)
		return 0; /* a thread: its events belong to its thread group */
	sensorium_hdr_fill(&r.hdr, EXEC_REC_FORK, sizeof(r));
	r.child_pid = pid;
	r.parent_pid = BPF_CORE_READ(child, real_parent, tgid);
	r.child_start_time = BPF_CORE_READ(child, start_time);
	submit(&r, sizeof(r));
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(sensorium_exit, struct task_struct *task)
{
	struct exit_record r = {};
	struct signal_struct *sig = BPF_CORE_READ(task, signal);

	/* do_exit() decremented signal->live before this tracepoint: 0 means the whole group is gone. */
	if (BPF_CORE_READ(sig, live.counter) != 0)
		return 0;
	sensorium_hdr_fill(&r.hdr, EXEC_REC_EXIT, sizeof(r));
	r.hdr.pid = BPF_CORE_READ(task, tgid);
	r.hdr.tid = BPF_CORE_READ(task, pid);
	r.exit_code = BPF_CORE_READ(task, exit_code);
	r.group_exit_code = BPF_CORE_READ(sig, group_exit_code);
	r.signal_flags = BPF_CORE_READ(sig, flags);
	submit(&r, sizeof(r));
	return 0;
}
