// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * One kprobes item on a kernel function (not a syscall): the shared selector engine
 * (sensorium/selectors.h: cgroup scope, argument capture with the in-kernel path walk, matchArgs,
 * matchBinaries/PIDs/Namespaces/Capabilities, Post/NoPost/Sigkill/Signal, live mode) entered from
 *
 *   sens_fentry / sens_fexit        trampolines (arguments copied from the trampoline's context in one
 *                                   read, the return value read at its constant offset: every kernel with
 *                                   trampolines, 5.5+, not only those with bpf_get_func_arg), where the
 *                                   kernel loads them;
 *   sens_kprobe / sens_kretprobe    kprobes (x86_64 calling convention: di, si, dx, cx, r8, r9; at
 *                                   return, the entry's arguments are kept per thread in sens_inflight).
 *
 * One object for every function: user space names it (bpf_program__set_attach_target for the trampolines, the
 * kprobe attach for kprobes). The function's parameters are
 * copied into s->raw[], and the engine reads them as SENS_FROM_SYSCALL parameter `index`. Before that,
 * kf_prepare() rewrites the parameters whose type needs more than a pointer read (rodata kf_pre):
 *   KF_PRE_SYSREGS  a syscall's __x64_sys_ wrapper: its one parameter is the call's struct pt_regs *, and
 *                the syscall's arguments are read from those registers (fmod_ret Override on a syscall);
 *   KF_PRE_STR   a char * that may be a user pointer (do_sys_openat2's filename): copied into a
 *                per-CPU kernel buffer, so the engine's kernel-string read works for both;
 *   KF_PRE_CRED  a struct cred *: ids and capability sets, hex-encoded into the buffer (kfunc.py decodes
 *                it into Tetragon's process_credentials_arg).
 * sock and sockaddr parameters need no preparation: the engine reads them itself (SENS_ARG_SOCK) and the
 * socket operators (SAddr, DPort, Protocol...) match them in the kernel; so do the kernel structures of
 * sensorium.hooks.kstructs (bpf_attr, perf_event, user_namespace, net_device, kernel_cap_t...: capture.h).
 */
#include "vmlinux.h"
#include "sensorium/common.h"
#include "sensorium/selectors.h"
#include <bpf/bpf_endian.h>

SENSORIUM_LICENSE("Dual BSD/GPL");

#define KF_PRE_STR 1
#define KF_PRE_SOCK 2 /* unused: sock arguments are SENS_ARG_SOCK */
#define KF_PRE_DENTRY 3 /* struct dentry *: a struct path {NULL mnt, dentry}: walked to its filesystem root */
#define KF_PRE_CRED 4   /* struct cred *: ids and capability sets, hex-encoded (kfunc.py: _CRED) */
/* parameter 0 only: the struct pt_regs * a syscall's __x64_sys_ wrapper receives; the syscall's six arguments
 * are read from it, as raw_tp sys_enter reads them (an Override on a syscall: fmod_ret on its wrapper) */
#define KF_PRE_SYSREGS 5

#define KF_USER_MAX 0x00007fffffffffffULL /* x86_64 user addresses are below this */

/* Per selector: the errno its Override returns from sens_fmod_ret (positive; 0: no Override). */
const volatile __u32 kf_errno[SENS_MAX_SELECTORS] = {};

/* Per function parameter (0..5): what kf_prepare does with it. */
const volatile __u8 kf_pre[SENS_MAX_ARGS] = {};

/* The function's parameter count (its BTF prototype): trampoline context slots 0 .. kf_nargs - 1 hold the
 * parameters and slot kf_nargs the return value (fexit). */
const volatile __u32 kf_nargs = 0;

struct kf_bufs {
	char b[SENS_MAX_ARGS][SENS_STR_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kf_bufs);
} kf_buf SEC(".maps");

/* The cred summary, hex-encoded (kept in step with kfunc.py: _CRED). */
struct kf_cred {
	__u32 uid, gid, suid, sgid, euid, egid, fsuid, fsgid;
	__u64 cap_inheritable, cap_permitted, cap_effective;
};

static __always_inline void kf_cred_hex(char *out, struct cred *c)
{
	struct kf_cred k = {};
	const char hex[] = "0123456789abcdef";
	__u8 *p = (__u8 *)&k;
	int i;

	k.uid = BPF_CORE_READ(c, uid.val);
	k.gid = BPF_CORE_READ(c, gid.val);
	k.suid = BPF_CORE_READ(c, suid.val);
	k.sgid = BPF_CORE_READ(c, sgid.val);
	k.euid = BPF_CORE_READ(c, euid.val);
	k.egid = BPF_CORE_READ(c, egid.val);
	k.fsuid = BPF_CORE_READ(c, fsuid.val);
	k.fsgid = BPF_CORE_READ(c, fsgid.val);
	/* kernel_cap_t is u32 cap[2] before 6.3 and u64 val after: the same 8 bytes (little-endian) */
	bpf_probe_read_kernel(&k.cap_inheritable, 8, (void *)c + bpf_core_field_offset(struct cred, cap_inheritable));
	bpf_probe_read_kernel(&k.cap_permitted, 8, (void *)c + bpf_core_field_offset(struct cred, cap_permitted));
	bpf_probe_read_kernel(&k.cap_effective, 8, (void *)c + bpf_core_field_offset(struct cred, cap_effective));
#pragma unroll
	for (i = 0; i < (int)sizeof(k); i++) {
		out[2 * i] = hex[(p[i] >> 4) & 15];
		out[2 * i + 1] = hex[p[i] & 15];
	}
	out[2 * sizeof(k)] = 0;
}

static __always_inline void kf_prepare(struct sens_scratch *s)
{
	__u32 zero = 0;
	struct kf_bufs *b = NULL;
	int i;

	if (kf_pre[0] == KF_PRE_SYSREGS) { /* rodata: the other objects never see this branch */
		if (s->raw[0])
			sens_read_regs(s, (struct pt_regs *)s->raw[0]);
		return;
	}

#pragma unroll
	for (i = 0; i < SENS_MAX_ARGS; i++) {
		__u8 pre = kf_pre[i];

		if (!pre || !s->raw[i])
			continue;
		if (!b) {
			b = bpf_map_lookup_elem(&kf_buf, &zero);
			if (!b)
				return;
		}
		if (pre == KF_PRE_STR) {
			if (s->raw[i] > KF_USER_MAX)
				continue; /* a kernel string: the engine reads it */
			if (bpf_probe_read_user_str(b->b[i], SENS_STR_MAX, (void *)s->raw[i]) < 0)
				b->b[i][0] = 0;
			s->raw[i] = (__u64)(long)b->b[i];
		} else if (pre == KF_PRE_DENTRY) {
			struct path *pp = (struct path *)b->b[i];

			pp->mnt = NULL;
			pp->dentry = (struct dentry *)s->raw[i];
			s->raw[i] = (__u64)(long)b->b[i];
		} else if (pre == KF_PRE_CRED) {
			kf_cred_hex(b->b[i], (struct cred *)s->raw[i]);
			s->raw[i] = (__u64)(long)b->b[i];
		}
	}
}

static __always_inline int kf_emit(void *ctx, struct sens_scratch *s, __s64 ret, int has_ret)
{
	kf_prepare(s);
	s->ev.flags = has_ret ? SENS_EV_HAS_RET : 0;
	s->ev.retval = ret;
	return sens_run(ctx, s);
}

/* Slot `i` (a constant) of a trampoline's context. An inline-asm load keeps the offset in the instruction:
 * the verifier refuses a context read at a computed offset, and the compiler could fold the constant
 * branches below into one. */
#define KF_CTX(ctx, i)                                                                        \
	({                                                                                    \
		__u64 __kf_v;                                                                 \
		asm volatile("%[v] = *(u64 *)(%[c] + %[o])" : [v] "=r"(__kf_v) : [c] "r"(ctx), [o] "i"((i) * 8)); \
		__kf_v;                                                                       \
	})

/* The parameters, in one copy of the context's first slots. Not read as context fields: the verifier checks
 * each such read against the parameter's BTF type and refuses some (a pointer to a pointer, e.g.
 * vfs_unlink's struct inode **), which would make a policy on any parameter of such a function unloadable. */
static __always_inline void kf_trampoline_args(unsigned long long *ctx, struct sens_scratch *s)
{
	__u32 n = kf_nargs < SENS_MAX_ARGS ? kf_nargs : SENS_MAX_ARGS; /* rodata: a constant to the verifier */

	__builtin_memset(s->raw, 0, sizeof(s->raw));
	if (n)
		bpf_probe_read_kernel(s->raw, n * 8, ctx);
}

/* fexit: the return value follows the parameters (x86_64 trampolines pass up to 12 of them). */
static __always_inline __u64 kf_trampoline_ret(unsigned long long *ctx)
{
	switch (kf_nargs) {
	case 0: return KF_CTX(ctx, 0);
	case 1: return KF_CTX(ctx, 1);
	case 2: return KF_CTX(ctx, 2);
	case 3: return KF_CTX(ctx, 3);
	case 4: return KF_CTX(ctx, 4);
	case 5: return KF_CTX(ctx, 5);
	case 6: return KF_CTX(ctx, 6);
	case 7: return KF_CTX(ctx, 7);
	case 8: return KF_CTX(ctx, 8);
	case 9: return KF_CTX(ctx, 9);
	case 10: return KF_CTX(ctx, 10);
	case 11: return KF_CTX(ctx, 11);
	case 12: return KF_CTX(ctx, 12);
	}
	return 0;
}

SEC("fentry")
int sens_fentry(unsigned long long *ctx)
{
	struct sens_scratch *s = sens_begin();

	if (!s)
		return 0;
	kf_trampoline_args(ctx, s);
	return kf_emit(ctx, s, 0, 0);
}

SEC("fexit")
int sens_fexit(unsigned long long *ctx)
{
	struct sens_scratch *s = sens_begin();
	__u64 ret = 0;

	if (!s)
		return 0;
	kf_trampoline_args(ctx, s);
	ret = kf_trampoline_ret(ctx);
	return kf_emit(ctx, s, (__s64)ret, 1);
}

/* Override: fmod_ret runs before the function; a non-zero return skips it and becomes its return value.
 * The kernel allows this only on security_* hooks and ALLOW_ERROR_INJECTION functions (kfunc.py checks). */
SEC("fmod_ret")
int sens_fmod_ret(unsigned long long *ctx)
{
	struct sens_scratch *s = sens_begin();
	__u32 zero = 0;

	if (!s)
		return 0;
	kf_trampoline_args(ctx, s);
	s->matched = -1;
	kf_emit(ctx, s, 0, 0);

	int m = s->matched;

	if (m < 0 || m >= SENS_MAX_SELECTORS)
		return 0;
	__u32 err = kf_errno[m];

	if (!err)
		return 0;
	__u32 *mode = bpf_map_lookup_elem(&sens_mode, &zero);

	if (mode && *mode == 1)
		return 0; /* monitoring: the event says what would have happened */
	return -(int)(err & 0xfff);
}

static __always_inline void kf_regs(struct sens_scratch *s, struct pt_regs *regs)
{
	struct pt_regs *r = &s->regs; /* in the scratch: see sens_read_regs */

	bpf_probe_read_kernel(r, sizeof(*r), regs);
	s->raw[0] = r->di;
	s->raw[1] = r->si;
	s->raw[2] = r->dx;
	s->raw[3] = r->cx;
	s->raw[4] = r->r8;
	s->raw[5] = r->r9;
}

SEC("kprobe")
int sens_kprobe(struct pt_regs *ctx)
{
	struct sens_scratch *s = sens_begin();

	if (!s)
		return 0;
	kf_regs(s, ctx);
	if (sens_cfg.flags & SENS_CFG_AT_EXIT) {
		sens_stash(s);
		return 0;
	}
	return kf_emit(ctx, s, 0, 0);
}

SEC("kretprobe")
int sens_kretprobe(struct pt_regs *ctx)
{
	struct sens_scratch *s = sens_unstash();

	if (!s)
		return 0;
	return kf_emit(ctx, s, (__s64)PT_REGS_RC(ctx), 1);
}
