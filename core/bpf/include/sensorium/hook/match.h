/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * sensorium/hook/match.h: the selectors of a hook in the kernel (Tetragon's semantics: selectors OR-ed,
 * the filters inside one AND-ed). Each filter family has its matcher here: strings, integers, sockets,
 * PIDs, namespaces, capabilities, binaries. The selector loop is inlined into each program, where the
 * frozen rodata makes every count and operator a constant (a policy with one matchArgs costs one
 * compare); the string compare, the only byte loop, is a global function verified once.
 */
#ifndef __SENSORIUM_HOOK_MATCH_H
#define __SENSORIUM_HOOK_MATCH_H

#include "sensorium/hook/defs.h"
#include "sensorium/hook/path.h"

/* Where a string to match lives in the scratch, as an offset from its start (a global function takes
 * integers): an argument's payload, or the process's binary. */
#define SENS_AT_DATA(off) ((__u32)__builtin_offsetof(struct sens_scratch, data) + ((off) & (SENS_DATA_MAX - 1)))
#define SENS_AT_BIN ((__u32)__builtin_offsetof(struct sens_scratch, bin.path))
/* The last offset a string may start at: the compare reads up to 2 * SENS_STR_MAX bytes on from it (a
 * postfix's shift, then the value's length rounded up to a word), all inside the scratch. */
#define SENS_AT_MAX ((__u32)(sizeof(struct sens_scratch) - 2 * SENS_STR_MAX - 8))
/* Every offset above is below 4096 (the payloads and the binary's path sit in the first 4 KiB of the scratch):
 * masked with this at the access, an offset the verifier lost track of is still provably inside the scratch. */
#define SENS_AT_MASK 4095
_Static_assert(__builtin_offsetof(struct sens_scratch, bin.path) + SENS_STR_MAX <= SENS_AT_MASK + 1 &&
		       __builtin_offsetof(struct sens_scratch, data) + SENS_DATA_MAX <= SENS_AT_MASK + 1 &&
		       SENS_AT_MASK + 2 * SENS_STR_MAX + 8 <= sizeof(struct sens_scratch),
	       "string offsets must stay under SENS_AT_MASK");

/*
 * The string of `alen` bytes at scratch offset `at` against value strs[vi] with base operator EQ, PREFIX
 * or POSTFIX. Compared eight bytes at a time (the value's tail word masked), in a global function: one
 * short loop verified once, whatever the number of values and selectors that call it.
 */
SENS_GLOBAL int sens_str_cmp_g(__u32 at, __u32 alen, __u32 vi, __u32 op)
{
	struct sens_scratch *s = sens_scratch_get();
	const volatile struct sens_str *v;
	const __u8 *p;
	__u32 vlen, w, nw, rem;

	if (!s || vi >= SENS_MAX_STRINGS || at > SENS_AT_MAX || alen > SENS_STR_MAX - 1)
		return 0;
	v = &sens_cfg.strs[SENS_BOUND(vi, SENS_MAX_STRINGS - 1)];
	vlen = v->len;
	if (vlen > SENS_STR_MAX - 1)
		return 0;
	if (op == SENS_OP_EQ && alen != vlen)
		return 0;
	if (alen < vlen)
		return 0;
	p = (const __u8 *)s + SENS_BOUND(at, SENS_AT_MASK);
	if (op == SENS_OP_POSTFIX)
		p += (alen - vlen) & (SENS_STR_MAX - 1);
	nw = vlen >> 3;
	for (w = 0; w < SENS_STR_MAX / 8; w++) {
		if (w >= nw)
			break;
		if (*(const __u64 *)(p + w * 8) != *(const volatile __u64 *)&v->s[w * 8])
			return 0;
	}
	rem = vlen & 7;
	if (rem) {
		/* the value's last bytes: a whole word read (it stays inside the string's slot and the scratch),
		 * compared under a mask of the bytes that count (little-endian: the low ones) */
		__u64 mask = (1ULL << (rem * 8)) - 1;
		__u32 o = (nw * 8) & (SENS_STR_MAX - 8);

		if ((*(const __u64 *)(p + o) & mask) != (*(const volatile __u64 *)&v->s[o] & mask))
			return 0;
	}
	return 1;
}

/* A string operator (In/Equal/Prefix/Postfix and their negations) over values strs[first .. first + nvals). */
SENS_GLOBAL int sens_str_op_g(__u32 at, __u32 alen, __u32 first, __u32 nvals, __u32 op)
{
	__u32 base = op;
	int neg = 0;
	__u32 k;

	if (op == SENS_OP_NE || op == SENS_OP_NOTIN) {
		base = SENS_OP_EQ;
		neg = 1;
	} else if (op == SENS_OP_IN) {
		base = SENS_OP_EQ;
	} else if (op == SENS_OP_NOTPREFIX) {
		base = SENS_OP_PREFIX;
		neg = 1;
	} else if (op == SENS_OP_NOTPOSTFIX) {
		base = SENS_OP_POSTFIX;
		neg = 1;
	}
	for (k = 0; k < SENS_MAX_VALUES; k++) {
		if (k >= nvals)
			break;
		if (sens_str_cmp_g(at, alen, first + k, base))
			return !neg;
	}
	return neg;
}

static __always_inline int sens_match_int(__u64 v, int is_signed, const volatile struct sens_match_arg *m)
{
	__u32 k;

	switch (m->op) {
	case SENS_OP_GT:
		return is_signed ? (__s64)v > (__s64)m->vals[0] : v > m->vals[0];
	case SENS_OP_LT:
		return is_signed ? (__s64)v < (__s64)m->vals[0] : v < m->vals[0];
	default:
		break;
	}
	for (k = 0; k < SENS_MAX_VALUES; k++) {
		if (k >= m->nvals)
			break;
		if (m->op == SENS_OP_MASK) {
			if (v & m->vals[k])
				return 1;
		} else if (v == m->vals[k]) {
			return m->op == SENS_OP_EQ || m->op == SENS_OP_IN;
		}
	}
	if (m->op == SENS_OP_MASK)
		return 0;
	return m->op == SENS_OP_NE || m->op == SENS_OP_NOTIN;
}

static __always_inline __u32 sens_ns_inum(struct task_struct *task, __u32 ns)
{
	switch (ns) {
	case SENS_NS_UTS:
		return BPF_CORE_READ(task, nsproxy, uts_ns, ns.inum);
	case SENS_NS_IPC:
		return BPF_CORE_READ(task, nsproxy, ipc_ns, ns.inum);
	case SENS_NS_MNT:
		return BPF_CORE_READ(task, nsproxy, mnt_ns, ns.inum);
	case SENS_NS_PID: {
		struct pid *pid = BPF_CORE_READ(task, thread_pid);
		unsigned int level = BPF_CORE_READ(pid, level);

		return BPF_CORE_READ(pid, numbers[level].ns, ns.inum);
	}
	case SENS_NS_PID_FOR_CHILDREN:
		return BPF_CORE_READ(task, nsproxy, pid_ns_for_children, ns.inum);
	case SENS_NS_NET:
		return BPF_CORE_READ(task, nsproxy, net_ns, ns.inum);
	case SENS_NS_TIME:
		if (!bpf_core_field_exists(task->nsproxy->time_ns))
			return 0;
		return BPF_CORE_READ(task, nsproxy, time_ns, ns.inum);
	case SENS_NS_TIME_FOR_CHILDREN:
		if (!bpf_core_field_exists(task->nsproxy->time_ns_for_children))
			return 0;
		return BPF_CORE_READ(task, nsproxy, time_ns_for_children, ns.inum);
	case SENS_NS_CGROUP:
		return BPF_CORE_READ(task, nsproxy, cgroup_ns, ns.inum);
	case SENS_NS_USER:
		return BPF_CORE_READ(task, cred, user_ns, ns.inum);
	}
	return 0;
}

static __always_inline __u32 sens_ns_pid(struct task_struct *task)
{
	struct pid *pid = BPF_CORE_READ(task, group_leader, thread_pid);
	unsigned int level = BPF_CORE_READ(pid, level);

	return BPF_CORE_READ(pid, numbers[level].nr);
}

static __always_inline __u64 sens_caps(struct task_struct *task, __u32 set)
{
	const struct cred *cred = BPF_CORE_READ(task, cred);
	__u64 v = 0;

	/* kernel_cap_t is 64 bits in both its layouts (u32 cap[2] before 6.3, u64 val after) */
	if (set == SENS_CAP_EFFECTIVE)
		bpf_probe_read_kernel(&v, 8, &cred->cap_effective);
	else if (set == SENS_CAP_INHERITABLE)
		bpf_probe_read_kernel(&v, 8, &cred->cap_inheritable);
	else
		bpf_probe_read_kernel(&v, 8, &cred->cap_permitted);
	return v;
}

/* The three capability sets of `task`'s credentials into out (indexed by SENS_CAP_* - 1). */
static __always_inline void sens_read_capset(struct task_struct *task, struct sens_capset *out)
{
	const struct cred *cred = BPF_CORE_READ(task, cred);

	bpf_probe_read_kernel(&out->c[0], 8, &cred->cap_effective);
	bpf_probe_read_kernel(&out->c[1], 8, &cred->cap_inheritable);
	bpf_probe_read_kernel(&out->c[2], 8, &cred->cap_permitted);
	out->c[3] = 0;
}

/* Record the current task's capability sets as its process's reference (matchCapabilityChanges). */
static __always_inline void sens_note_caps(struct sens_scratch *s, struct task_struct *task, __u32 tgid)
{
	sens_read_capset(task, &s->capnow);
	bpf_map_update_elem(&sens_execcaps, &tgid, &s->capnow, BPF_ANY);
}

/*
 * One matchCapabilities (change = 0) or matchCapabilityChanges (change = 1) entry, Tetragon's semantics:
 * with isNamespaceCapability (m->userns set) a task in the host's user namespace never matches, whatever
 * the operator. Capabilities: In = the set holds one of the values, NotIn = none. Changes, the set now
 * against `was` (recorded at exec): In = one of the values changed; NotIn = only other capabilities changed.
 */
static __always_inline int sens_caps_entry(const volatile struct sens_match_caps *m, struct task_struct *task,
					   int change, const struct sens_capset *was)
{
	__u32 set = m->set;
	__u64 mask = m->mask, now;

	if (m->userns && sens_ns_inum(task, SENS_NS_USER) == m->userns)
		return 0;
	now = sens_caps(task, set);
	if (!change)
		return (m->op == SENS_OP_IN) == ((now & mask) != 0);
	if (set < SENS_CAP_EFFECTIVE || set > SENS_CAP_PERMITTED)
		return 0;
	__u64 then = was->c[(set - 1) & 3];

	if ((then & mask) != (now & mask))
		return m->op == SENS_OP_IN;
	if (then != now)
		return m->op == SENS_OP_NOTIN;
	return 0;
}

/*
 * The source or destination address of k (16 bytes, network order; IPv4 in the first 4) against the CIDR
 * value strs[vi]: s[0..16) the network, s[16..32) its mask, len the family (2 or 10). An IPv6 CIDR never
 * matches an IPv4 address; an IPv4 CIDR matches an IPv4 address and an IPv4-mapped IPv6 one
 * (::ffff:a.b.c.d, what a dual-stack socket connects to for an IPv4 peer): otherwise a rule on 10.0.0.0/8
 * could be passed by the same connection made from an IPv6 socket.
 */
SENS_GLOBAL int sens_addr_in_g(__u32 at, __u32 dst, __u32 vi)
{
	struct sens_scratch *s = sens_scratch_get();
	const volatile struct sens_str *v;
	const volatile __u32 *net, *mask;
	const struct sens_sock *k;
	__u32 a[4];
	int w;

	if (!s || at > SENS_AT_MAX || vi >= SENS_MAX_STRINGS)
		return 0;
	k = (const struct sens_sock *)((const __u8 *)s + SENS_BOUND(at, SENS_AT_MASK));
	v = &sens_cfg.strs[SENS_BOUND(vi, SENS_MAX_STRINGS - 1)];
	net = (const volatile __u32 *)&v->s[0];
	mask = (const volatile __u32 *)&v->s[16];
	if (dst)
		__builtin_memcpy(a, k->daddr, 16);
	else
		__builtin_memcpy(a, k->saddr, 16);
	if (v->len != k->family) {
		if (!(v->len == 2 && k->family == 10 && a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0xffff)))
			return 0;
		a[0] = a[3];
		a[1] = a[2] = a[3] = 0;
	}
#pragma unroll
	for (w = 0; w < 4; w++) {
		if ((a[w] & mask[w]) != net[w])
			return 0;
	}
	return 1;
}

/* Socket operator k of selector si on the struct sens_sock at scratch offset `at`. */
SENS_GLOBAL int sens_sock_op_g(__u32 at, __u32 si, __u32 k)
{
	struct sens_scratch *s = sens_scratch_get();
	const volatile struct sens_match_arg *m;
	const struct sens_sock *sk;
	__u32 q;

	if (!s || at > SENS_AT_MAX || si >= SENS_MAX_SELECTORS || k >= SENS_MAX_MATCH_ARGS)
		return 0;
	m = &sens_cfg.sel[SENS_BOUND(si, 7)].args[SENS_BOUND(k, SENS_MAX_MATCH_ARGS - 1)];
	sk = (const struct sens_sock *)((const __u8 *)s + SENS_BOUND(at, SENS_AT_MASK));
	__u32 op = m->op;
	int neg = op == SENS_OP_NOTSADDR || op == SENS_OP_NOTDADDR || op == SENS_OP_NOTSPORT || op == SENS_OP_NOTDPORT;

	if (op >= SENS_OP_SADDR && op <= SENS_OP_NOTDADDR) {
		__u32 dst = op == SENS_OP_DADDR || op == SENS_OP_NOTDADDR;

		for (q = 0; q < SENS_MAX_VALUES; q++) {
			if (q >= m->nvals)
				break;
			if (sens_addr_in_g(at, dst, m->str_first + q))
				return !neg;
		}
		return neg;
	}
	__u16 v;

	if (op == SENS_OP_SPORT || op == SENS_OP_NOTSPORT)
		v = sk->sport;
	else if (op == SENS_OP_DPORT || op == SENS_OP_NOTDPORT)
		v = sk->dport;
	else if (op == SENS_OP_PROTOCOL)
		v = sk->protocol;
	else if (op == SENS_OP_FAMILY)
		v = sk->family;
	else if (op == SENS_OP_STATE)
		v = sk->state;
	else
		return 0;
	for (q = 0; q < SENS_MAX_VALUES; q++) {
		if (q >= m->nvals)
			break;
		__u64 r = m->vals[q];

		if (v >= (r & 0xffff) && v <= ((r >> 16) & 0xffff))
			return !neg;
	}
	return neg;
}

/* Does selector `i` match the captured event (in the scratch)? A global function: verified once for every
 * selector a policy may have, so a program's cost does not grow with its selectors and their filters. */
SENS_GLOBAL int sens_sel_match_g(__u32 i)
{
	struct sens_scratch *s = sens_scratch_get();
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	const volatile struct sens_selector *sel;
	__u32 k, q;

	if (!s || i >= SENS_MAX_SELECTORS)
		return 0;
	sel = &sens_cfg.sel[SENS_BOUND(i, 7)];
	/* cheapest first: pids, then arguments, then binaries (may walk a path once per process) */
	for (k = 0; k < SENS_MAX_PIDF; k++) {
		if (k >= sel->npids)
			break;
		const volatile struct sens_match_pids *m = &sel->pids[k];
		__u32 pid = (m->flags & SENS_PID_NS) ? sens_ns_pid(task) : (bpf_get_current_pid_tgid() >> 32);
		int found = 0;

		for (q = 0; q < SENS_MAX_VALUES; q++) {
			if (q >= m->nvals)
				break;
			if (pid == m->pids[q]) {
				found = 1;
				break;
			}
		}
		if (!found && (m->flags & SENS_PID_FOLLOW) && (s->follow & (1u << (8 + i))))
			found = 1;
		if ((m->op == SENS_OP_IN) != found)
			return 0;
	}
	for (k = 0; k < SENS_MAX_MATCH_ARGS; k++) {
		if (k >= sel->nargs)
			break;
		const volatile struct sens_match_arg *m = &sel->args[k];
		__u32 a0 = m->arg;

		if (a0 >= SENS_MAX_ARGS)
			return 0;
		__u64 a = SENS_BOUND(a0, 7);

		__u32 off = s->off[a] & (SENS_DATA_MAX - 1);
		__u32 kind = sens_cfg.args[a].kind;

		if (kind == SENS_ARG_INT) {
			if (!sens_match_int(s->ival[a], sens_cfg.args[a].is_signed, m))
				return 0;
		} else if (kind == SENS_ARG_STRUCT) {
			return 0; /* reported only: user space refuses matchArgs on it (a guard, never compiled) */
		} else if (kind == SENS_ARG_SOCK) {
			if (m->op < SENS_OP_SADDR || s->len[a] != sizeof(struct sens_sock))
				return 0;
			if (!sens_sock_op_g(SENS_AT_DATA(off), i, k))
				return 0;
		} else {
			__u32 len = s->len[a];

			if (m->op == SENS_OP_GT || m->op == SENS_OP_LT || m->op == SENS_OP_MASK)
				return 0;
			if (len > SENS_STR_MAX - 1)
				len = SENS_STR_MAX - 1;
			if (!sens_str_op_g(SENS_AT_DATA(off), len, m->str_first, m->nvals, m->op))
				return 0;
		}
	}
	if (sel->nret) {
		if (!sens_match_int((__u64)s->ev.retval, 1, &sel->ret))
			return 0;
	}
	for (k = 0; k < SENS_MAX_NS; k++) {
		if (k >= sel->nns)
			break;
		const volatile struct sens_match_ns *m = &sel->ns[k];
		__u32 inum = sens_ns_inum(task, m->ns);
		int found = 0;

		for (q = 0; q < SENS_MAX_VALUES; q++) {
			if (q >= m->nvals)
				break;
			if (inum == m->inums[q]) {
				found = 1;
				break;
			}
		}
		if ((m->op == SENS_OP_IN) != found)
			return 0;
	}
	for (k = 0; k < SENS_MAX_CAPS; k++) {
		if (k >= sel->ncaps)
			break;
		if (!sens_caps_entry(&sel->caps[k], task, 0, NULL))
			return 0;
	}
	if (sel->ncapch) {
		__u32 tgid = bpf_get_current_pid_tgid() >> 32;
		struct sens_capset *was = bpf_map_lookup_elem(&sens_execcaps, &tgid);

		if (!was) {
			/* a process older than the policy: seen now for the first time, so no change yet (Tetragon
			 * rejects a process missing from its execve_map too) */
			sens_note_caps(s, task, tgid);
			return 0;
		}
		for (k = 0; k < SENS_MAX_CAPS; k++) {
			if (k >= sel->ncapch)
				break;
			if (!sens_caps_entry(&sel->capch[k], task, 1, was))
				return 0;
		}
	}
	/* matchBinaries entries are ANDed (e.g. Prefix /usr/bin/ and NotIn /usr/bin/cat) */
	for (k = 0; k < SENS_MAX_BINS; k++) {
		if (k >= sel->nbins)
			break;
		const volatile struct sens_match_bin *b = &sel->bins[k];
		int ok;

		if (!s->bin_ok) {
			if (sens_load_binary_g() < 0)
				return 0;
			s->bin_ok = 1;
		}
		ok = sens_str_op_g(SENS_AT_BIN, s->bin.len & (SENS_STR_MAX - 1), b->str_first, b->nvals, b->op);
		/* followChildren: a descendant of a matching process matches too (In/Prefix/Postfix only) */
		if (!ok && b->follow)
			ok = (s->follow & (1u << i)) != 0;
		if (!ok)
			return 0;
	}
	return 1;
}

#endif /* __SENSORIUM_HOOK_MATCH_H */
