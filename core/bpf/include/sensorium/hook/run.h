/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * sensorium/hook/run.h: the common path of every hook (scope check, capture, selectors, actions, rate
 * limit, ring output) and the programs of the hook object: tracepoint, raw tracepoint, syscalls through
 * raw_tp sys_enter/sys_exit, uprobe/uretprobe, and the process tracking of followChildren/followForks.
 */
#ifndef __SENSORIUM_HOOK_RUN_H
#define __SENSORIUM_HOOK_RUN_H

#include "sensorium/hook/defs.h"
#include "sensorium/hook/path.h"
#include "sensorium/hook/match.h"
#include "sensorium/hook/capture.h"

/* ------------------------------------------------------------------------------------------------ */
/* The common path of every hook                                                                     */
/* ------------------------------------------------------------------------------------------------ */

/*
 * Like sensorium_submit(), but the forced wakeup is sent only when this record makes the unread data
 * cross SENSORIUM_WAKEUP_BYTES, not for every record above it: with a consumer that falls behind, a
 * wakeup per record (~18 us in a VM) would slow the traced process ~10x. The reader polls on a timer,
 * so a missed wakeup costs at most one poll interval.
 */
static __always_inline long sens_submit(void *data, __u64 size)
{
	__u64 avail = bpf_ringbuf_query(&sens_events, BPF_RB_AVAIL_DATA);
	__u64 flags = BPF_RB_NO_WAKEUP;

	if (avail <= SENSORIUM_WAKEUP_BYTES && avail + size > SENSORIUM_WAKEUP_BYTES)
		flags = BPF_RB_FORCE_WAKEUP;
	return bpf_ringbuf_output(&sens_events, data, size, flags);
}

/*
 * Every hook starts here. A hook of a policy transaction that is attached but not yet committed
 * (sens_mode SENS_MODE_INACTIVE, set by user space between load and attach) does nothing at all: a policy
 * that fails at its last attach never posted an event or enforced (sensorium.hookspecs, PreparedSection).
 */
static __always_inline struct sens_scratch *sens_begin(void)
{
	__u32 zero = 0;
	__u32 *mode = bpf_map_lookup_elem(&sens_mode, &zero);

	if (!mode || *mode == SENS_MODE_INACTIVE)
		return NULL;
	if ((sens_cfg.flags & SENS_CFG_CGROUP_SCOPED) && !sens_task_in_scope(&sens_scope))
		return NULL;
	return bpf_map_lookup_elem(&sens_scratch_map, &zero);
}

/* FNV-1a over the first 256 bytes of the captured arguments: "the same arguments" for a rate limit. */
SENS_GLOBAL int sens_rl_hash_g(__u32 len)
{
	struct sens_scratch *s = sens_scratch_get();
	__u32 h = 2166136261u;
	__u32 i;

	if (!s)
		return 0;
	for (i = 0; i < 256; i++) {
		if (i >= len)
			break;
		h ^= s->data[i];
		h *= 16777619u;
	}
	return (int)h;
}

/*
 * Socket tracking of the selector that matched (Tetragon's TrackSock/UntrackSock and returnArgAction): taken
 * whatever Post/NoPost and the mode say, as they only change whom later events are reported as.
 *   matchActions TrackSock: the sock argument argSock becomes the current process's;
 *   returnArgAction TrackSock: the returned sock becomes the event's process's: the owner of a tracked sock
 *     argument when there is one (the child socket tcp_create_openreq_child returns in softirq is the
 *     listener's owner's), else the current one;
 *   UntrackSock (either): the socket is forgotten.
 */
static __always_inline void sens_sock_actions(struct sens_scratch *s, int matched)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct sens_sock_owner cur = {
		.pid = pid_tgid >> 32, .tid = (__u32)pid_tgid, .cgroup_id = bpf_get_current_cgroup_id(),
	};
	__u64 key;

	if (matched >= 0 && matched < SENS_MAX_SELECTORS && sens_cfg.sel[matched].sock_act) {
		__u8 sa = sens_cfg.sel[matched].sock_arg;

		key = s->ival[sa < SENS_MAX_ARGS ? sa : 0];
		if (key) {
			if (sens_cfg.sel[matched].sock_act == SENS_SOCK_TRACK) {
				if (bpf_map_update_elem(&sens_socks, &key, &cur, BPF_ANY) < 0)
					sens_count(SENS_CNT_SOCK_ERR);
			} else {
				bpf_map_delete_elem(&sens_socks, &key);
			}
		}
	}
	if (!(sens_cfg.flags & (SENS_CFG_RET_TRACK | SENS_CFG_RET_UNTRACK)) || !(s->ev.flags & SENS_EV_HAS_RET))
		return;
	key = (__u64)s->ev.retval;
	if (!key)
		return;
	if (sens_cfg.flags & SENS_CFG_RET_UNTRACK) {
		bpf_map_delete_elem(&sens_socks, &key);
		return;
	}
	if (bpf_map_update_elem(&sens_socks, &key, s->owned ? &s->owner : &cur, BPF_ANY) < 0)
		sens_count(SENS_CNT_SOCK_ERR);
}

/*
 * kernelStackTrace / userStackTrace of the matching selector's Post action: the stack ids, written after the
 * record's `dl` bytes of arguments (struct sens_stack_ids; 8 bytes more in the record, only for these events).
 * Returns the bytes added. An error of bpf_get_stackid (map full, a hash collision, no user stack) is kept as
 * the id and counted by user space, which also deletes every id it reads.
 */
_Static_assert(__builtin_offsetof(struct sens_scratch, data) + 4095 + sizeof(struct sens_stack_ids) <=
		       sizeof(struct sens_scratch),
	       "the masked stack-id offset and record size stay inside the scratch");

static __always_inline __u32 sens_take_stacks(void *ctx, struct sens_scratch *s, __u8 want, __u32 dl)
{
	/* dl <= SENS_DATA_MAX, so the ids land inside data[]; the mask alone bounds the offset for every verifier
	 * (data[] and the scratch fields after it are larger than 4095 + 8 bytes) */
	__u64 off = SENS_BOUND(dl, 4095);
	struct sens_stack_ids *ids;

	if (dl > SENS_DATA_MAX)
		return 0;
	ids = (struct sens_stack_ids *)&s->data[off];
	ids->kernel = -1;
	ids->user = -1;
	if (want & SENS_STACK_KERNEL) {
		ids->kernel = bpf_get_stackid(ctx, &sens_stacks, 0);
		s->ev.flags |= SENS_EV_KSTACK;
	}
	if (want & SENS_STACK_USER) {
		ids->user = bpf_get_stackid(ctx, &sens_stacks, BPF_F_USER_STACK);
		s->ev.flags |= SENS_EV_USTACK;
	}
	return sizeof(*ids);
}

static __always_inline int sens_finish(void *ctx, struct sens_scratch *s, __u32 datalen)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u32 zero = 0, i;
	int matched = -1;

	s->bin_ok = 0;
	s->follow = 0;
	if (sens_cfg.flags & SENS_CFG_FOLLOW) {
		__u32 tgid = bpf_get_current_pid_tgid() >> 32;
		__u32 *f = bpf_map_lookup_elem(&sens_follow, &tgid);

		if (f)
			s->follow = *f;
	}
	if (sens_cfg.nsel == 0) {
		matched = SENS_MAX_SELECTORS; /* no selectors: every event is posted */
	} else {
		for (i = 0; i < SENS_MAX_SELECTORS; i++) {
			if (i >= sens_cfg.nsel)
				break;
			if (sens_sel_match_g(i)) {
				matched = i;
				break;
			}
		}
	}
	s->matched = matched;
	if (matched < 0) {
		sens_count(SENS_CNT_FILTERED);
		return 0;
	}
	__u8 actions = SENS_ACT_POST;
	__u8 sig = 0;
	__u64 rl_ns = 0;
	__u8 rl_scope = 0;

	if (matched < SENS_MAX_SELECTORS) {
		actions = sens_cfg.sel[matched].actions;
		sig = sens_cfg.sel[matched].signal;
		rl_ns = sens_cfg.sel[matched].rl_ns;
		rl_scope = sens_cfg.sel[matched].rl_scope;
	}
	__u32 *mode = bpf_map_lookup_elem(&sens_mode, &zero);
	int monitor = mode && *mode == 1;

	s->ev.flags &= SENS_EV_HAS_RET;
	if (monitor)
		s->ev.flags |= SENS_EV_MONITOR;
	if ((actions & (SENS_ACT_SIGKILL | SENS_ACT_SIGNAL)) && !monitor) {
		if (bpf_send_signal(sig) < 0) {
			s->ev.flags |= SENS_EV_SIGNAL_ERR;
			sens_count(SENS_CNT_SIGERR);
		} else {
			sens_count(SENS_CNT_SIGNALS);
		}
	}
	sens_sock_actions(s, matched);
	/* NoPost hides the event, except in monitoring: "would have killed" must reach someone */
	if (!(actions & SENS_ACT_POST) && !(monitor && (actions & (SENS_ACT_SIGKILL | SENS_ACT_SIGNAL))))
		return 0;
	if (rl_ns) {
		struct sens_rl_key key = {};
		__u64 now = bpf_ktime_get_ns();
		__u64 pid_tgid = bpf_get_current_pid_tgid();
		__u64 *last;

		key.sel = matched;
		key.id = rl_scope == SENS_RL_THREAD ? (__u32)pid_tgid : rl_scope == SENS_RL_PROCESS ? pid_tgid >> 32 : 0;
		key.hash = (__u32)sens_rl_hash_g(datalen);
		last = bpf_map_lookup_elem(&sens_ratelimit, &key);
		if (last && now - *last < rl_ns) {
			sens_count(SENS_CNT_RATELIMITED);
			return 0;
		}
		bpf_map_update_elem(&sens_ratelimit, &key, &now, BPF_ANY);
	}
	/* a change of capabilities reported: it becomes the process's reference (Tetragon updates its
	 * execve_map), so the next event reports the next change */
	if (matched < SENS_MAX_SELECTORS && sens_cfg.sel[matched].ncapch)
		sens_note_caps(s, task, bpf_get_current_pid_tgid() >> 32);
	__u32 size = sizeof(struct sens_event) + datalen;

	if (size > sizeof(struct sens_event) + SENS_DATA_MAX)
		size = sizeof(struct sens_event) + SENS_DATA_MAX;
	if (matched < SENS_MAX_SELECTORS && sens_cfg.sel[matched].stacks)
		size += sens_take_stacks(ctx, s, sens_cfg.sel[matched].stacks, size - sizeof(struct sens_event));
	/* at most sizeof(sens_event) + SENS_DATA_MAX + 8: a bound 5.10's and 6.1's verifiers see for the ring output's
	 * size on every path (they lose the clamp above where the paths with and without stack ids meet) */
	size = SENS_BOUND(size, 4095);
	sensorium_hdr_fill(&s->ev.hdr, SENS_REC_HOOK, size);
	s->ev.policy_id = sens_cfg.policy_id;
	s->ev.hook_id = sens_cfg.syscall_nr == SENS_SYSCALL_SET ? s->hook : sens_cfg.hook_id;
	s->ev.cgroup_id = bpf_get_current_cgroup_id();
	if ((sens_cfg.flags & SENS_CFG_SOCK_OWNER) && s->owned) {
		/* the socket's owner, not the task the call happens to run in (softirq, a child using an inherited fd) */
		s->ev.hdr.pid = s->owner.pid;
		s->ev.hdr.tid = s->owner.tid;
		s->ev.cgroup_id = s->owner.cgroup_id;
		sens_count(SENS_CNT_SOCK_OWNED);
	}
	s->ev.sel = matched;
	s->ev.actions = actions;
	s->ev.nargs = sens_cfg.nargs;
	s->ev.data_len = datalen;
	if (sens_submit(&s->ev, size) < 0)
		sens_count(SENS_CNT_DROPPED);
	else
		sens_count(SENS_CNT_POSTED);
	return 0;
}

static __always_inline int sens_run(void *ctx, struct sens_scratch *s)
{
	__u32 len = sens_capture(ctx, s);

	return sens_finish(ctx, s, len);
}

/* Evaluate the hook on a call (no return value) or on a return (`ret`): what every program ends with. */
static __always_inline int sens_run_call(void *ctx, struct sens_scratch *s)
{
	s->ev.flags = 0;
	s->ev.retval = 0;
	return sens_run(ctx, s);
}

static __always_inline int sens_run_ret(void *ctx, struct sens_scratch *s, __s64 ret)
{
	s->ev.retval = ret;
	s->ev.flags = SENS_EV_HAS_RET;
	return sens_run(ctx, s);
}

/* ------------------------------------------------------------------------------------------------ */
/* Programs                                                                                          */
/* ------------------------------------------------------------------------------------------------ */

SEC("tracepoint")
int sens_tp(void *ctx)
{
	struct sens_scratch *s = sens_begin();

	if (!s)
		return 0;
	return sens_run_call(ctx, s);
}

SEC("raw_tp")
int sens_raw(struct bpf_raw_tracepoint_args *ctx)
{
	struct sens_scratch *s = sens_begin();

	if (!s)
		return 0;
	return sens_run_call(ctx, s);
}

/* Entry half of a hook evaluated at return (SENS_CFG_AT_EXIT): keep this thread's arguments. */
static __always_inline void sens_stash(struct sens_scratch *s)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();

	bpf_map_update_elem(&sens_inflight, &tid, s->raw, BPF_ANY);
}

/* Return half: the scratch holding the arguments the entry kept, or NULL (none kept, or out of scope). */
static __always_inline struct sens_scratch *sens_unstash(void)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct sens_saved *saved = bpf_map_lookup_elem(&sens_inflight, &tid);
	struct sens_scratch *s;

	if (!saved)
		return NULL;
	s = sens_begin();
	if (s)
		bpf_probe_read_kernel(s->raw, sizeof(s->raw), saved->raw);
	bpf_map_delete_elem(&sens_inflight, &tid);
	return s;
}

/* The entry of a call: a hook evaluated at return (SENS_CFG_AT_EXIT) keeps this thread's arguments for its
 * return half (`sens_unstash`); any other is evaluated now. */
static __always_inline int sens_entry(void *ctx, struct sens_scratch *s)
{
	if (sens_cfg.flags & SENS_CFG_AT_EXIT) {
		sens_stash(s);
		return 0;
	}
	return sens_run_call(ctx, s);
}

static __always_inline void sens_read_regs(struct sens_scratch *s, struct pt_regs *regs)
{
	struct pt_regs *r = &s->regs;

	/* one helper call for the whole frame instead of six (each probe read costs ~30 ns in a VM), into the
	 * scratch: on the stack its 168 bytes put the deepest call chain over the 512-byte limit (6.1 counts
	 * the global functions' frames too). Field offsets below are still CO-RE relocated. */
	bpf_probe_read_kernel(r, sizeof(*r), regs);
	s->raw[0] = r->di;
	s->raw[1] = r->si;
	s->raw[2] = r->dx;
	s->raw[3] = r->r10;
	s->raw[4] = r->r8;
	s->raw[5] = r->r9;
}

/* raw_tp sys_enter(struct pt_regs *regs, long id): filtered by syscall number first, so every other
 * syscall costs one compare. */
const volatile __u16 sens_sysset[SENS_SYSSET_NR] = {};

/* The hook id + 1 of the syscall `nr` for this object: its one syscall (sens_cfg.syscall_nr), or a member of its
 * set (SENS_SYSCALL_SET: one array load, whatever the set's size); 0 when `nr` is not hooked here. */
static __always_inline __u32 sens_syscall_hook(long nr)
{
	if (sens_cfg.syscall_nr == SENS_SYSCALL_SET) {
		if ((unsigned long)nr >= SENS_SYSSET_NR)
			return 0;
		return sens_sysset[nr & (SENS_SYSSET_NR - 1)];
	}
	return nr == sens_cfg.syscall_nr ? sens_cfg.hook_id + 1 : 0;
}

SEC("raw_tp/sys_enter")
int sens_sys_enter(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 hook = sens_syscall_hook((long)ctx->args[1]);

	if (!hook)
		return 0;
	if (sens_task_compat())
		return 0;
	struct sens_scratch *s = sens_begin();

	if (!s)
		return 0;
	s->hook = hook - 1;
	sens_read_regs(s, (struct pt_regs *)ctx->args[0]);
	return sens_entry(ctx, s);
}

/* raw_tp sys_exit(struct pt_regs *regs, long ret) */
SEC("raw_tp/sys_exit")
int sens_sys_exit(struct bpf_raw_tracepoint_args *ctx)
{
	struct pt_regs *regs = (struct pt_regs *)ctx->args[0];

	/* every syscall of the machine passes here: the number first, the per-thread lookup after */
	__u32 hook = sens_syscall_hook((long)BPF_CORE_READ(regs, orig_ax));

	if (!hook)
		return 0;
	struct sens_scratch *s = sens_unstash();

	if (!s)
		return 0;
	s->hook = hook - 1;
	return sens_run_ret(ctx, s, (__s64)ctx->args[1]);
}

/* uprobe/uretprobe on a user function: its parameters are the user calling convention's registers
 * (PT_REGS_PARM1..6), read into s->raw so that SENS_FROM_SYSCALL arguments work unchanged. With
 * `return: true` the entry saves them (sens_inflight, by thread) and the uretprobe posts with the
 * return value: registers are clobbered by the time the function returns. */
SEC("uprobe")
int sens_uprobe(struct pt_regs *ctx)
{
	struct sens_scratch *s = sens_begin();

	if (!s)
		return 0;
	s->raw[0] = PT_REGS_PARM1(ctx);
	s->raw[1] = PT_REGS_PARM2(ctx);
	s->raw[2] = PT_REGS_PARM3(ctx);
	s->raw[3] = PT_REGS_PARM4(ctx);
	s->raw[4] = PT_REGS_PARM5(ctx);
#if defined(__TARGET_ARCH_x86)
	s->raw[5] = ctx->r9; /* libbpf 1.1's bpf_tracing.h stops at PT_REGS_PARM5 */
#else
	s->raw[5] = 0;
#endif
	return sens_entry(ctx, s);
}

SEC("uretprobe")
int sens_uretprobe(struct pt_regs *ctx)
{
	struct sens_scratch *s = sens_unstash();

	if (!s)
		return 0;
	return sens_run_ret(ctx, s, (__s64)PT_REGS_RC(ctx));
}

/* Selector i's followChildren/followForks bits for a child of the current process (bit i: its binary
 * matches a followChildren entry; bit 8 + i: its pid one of a followForks entry), added to `bits`. A
 * global function, verified once whatever the selectors. */
SENS_GLOBAL int sens_follow_sel_g(__u32 i, __u32 bits, __u32 ptgid, __u32 pnspid)
{
	struct sens_scratch *s = sens_scratch_get();
	const volatile struct sens_selector *sel;
	__u32 q, k;

	if (!s || i >= SENS_MAX_SELECTORS)
		return bits;
	sel = &sens_cfg.sel[SENS_BOUND(i, 7)];
	for (q = 0; q < SENS_MAX_BINS; q++) {
		if (q >= sel->nbins)
			break;
		const volatile struct sens_match_bin *b = &sel->bins[q];

		if (!b->follow || (bits & (1u << i)))
			continue;
		if (!s->bin_ok) {
			if (sens_load_binary_g() < 0)
				break;
			s->bin_ok = 1;
		}
		if (sens_str_op_g(SENS_AT_BIN, s->bin.len & (SENS_STR_MAX - 1), b->str_first, b->nvals, b->op))
			bits |= 1u << i;
	}
	for (q = 0; q < SENS_MAX_PIDF; q++) {
		if (q >= sel->npids)
			break;
		const volatile struct sens_match_pids *m = &sel->pids[q];

		if (m->op != SENS_OP_IN || !(m->flags & SENS_PID_FOLLOW) || (bits & (1u << (8 + i))))
			continue;
		__u32 pid = (m->flags & SENS_PID_NS) ? pnspid : ptgid;

		for (k = 0; k < SENS_MAX_VALUES; k++) {
			if (k >= m->nvals)
				break;
			if (pid == m->pids[k]) {
				bits |= 1u << (8 + i);
				break;
			}
		}
	}
	return bits;
}

/* Process tracking for followChildren/followForks and the binary cache. */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(sens_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 ptgid = BPF_CORE_READ(parent, tgid);
	__u32 ctgid = BPF_CORE_READ(child, tgid);
	__u32 bits = 0, i;
	__u32 *f;

	if (ptgid == ctgid)
		return 0; /* a thread: same process */
	struct sens_scratch *s = sens_scratch_get();

	if (!s)
		return 0;
	/* matchCapabilityChanges: a new process starts from the capabilities it was forked with (Tetragon) */
	if (sens_cfg.flags & SENS_CFG_CAP_CHANGES)
		sens_note_caps(s, child, ctgid);
	if (!(sens_cfg.flags & SENS_CFG_FOLLOW))
		return 0;
	f = bpf_map_lookup_elem(&sens_follow, &ptgid);
	if (f)
		bits = *f;
	s->bin_ok = 0;
	__u32 pnspid = sens_ns_pid(parent);

	for (i = 0; i < SENS_MAX_SELECTORS; i++) {
		if (i >= sens_cfg.nsel)
			break;
		bits = sens_follow_sel_g(i, bits, ptgid, pnspid);
	}
	if (bits)
		bpf_map_update_elem(&sens_follow, &ctgid, &bits, BPF_ANY);
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(sens_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 tgid = BPF_CORE_READ(p, tgid);
	struct sens_scratch *s;

	bpf_map_delete_elem(&sens_bins, &tgid);
	/* matchCapabilityChanges: the capabilities the new program starts with (its credentials are committed) */
	if ((sens_cfg.flags & SENS_CFG_CAP_CHANGES) && (s = sens_scratch_get()))
		sens_note_caps(s, p, tgid);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(sens_exit, struct task_struct *p)
{
	__u32 tgid = BPF_CORE_READ(p, tgid);
	__u32 pid = BPF_CORE_READ(p, pid);

	if (tgid != pid)
		return 0;
	bpf_map_delete_elem(&sens_bins, &tgid);
	bpf_map_delete_elem(&sens_follow, &tgid);
	if (sens_cfg.flags & SENS_CFG_CAP_CHANGES)
		bpf_map_delete_elem(&sens_execcaps, &tgid);
	return 0;
}


#endif /* __SENSORIUM_HOOK_RUN_H */
