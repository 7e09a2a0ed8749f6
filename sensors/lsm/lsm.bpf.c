// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * One lsmhooks item as a BPF LSM program: the shared selector engine (sensorium/selectors.h: scope by
 * cgroup, argument capture with in-kernel path walks, matchArgs/Binaries/PIDs/Namespaces/Capabilities,
 * Post/Sigkill/Signal, live mode) plus what only an LSM hook can do: Override, i.e. return -errno from
 * the hook before the operation happens.
 *
 * One object for every hook: user space names the hook (bpf_program__set_attach_target) and sets the
 * arguments to read (from the hook's BTF signature) and the selectors in the rodata `sens_cfg`, and the
 * errno of each selector that has an Override action in `lsm_errno`.
 *
 * Ordering with other LSMs: BPF LSM runs after the built-in LSMs listed before it in lsm=, and a BPF
 * program that returns non-zero ends the chain of BPF programs on that hook (the first denial wins).
 */
#include "vmlinux.h"
#include "sensorium/common.h"
#include "sensorium/selectors.h"

SENSORIUM_LICENSE("Dual BSD/GPL");

/* Per selector: the errno its Override returns (positive; 0: the selector does not override). */
const volatile __u32 lsm_errno[SENS_MAX_SELECTORS] = {};

/* LSM programs must return 0 or a negative errno (the 6.12 verifier checks [-4095, 0] on the 32-bit
 * return value): clamp explicitly so the verifier sees the bounds. */
static __always_inline int sens_lsm_ret(__u32 err)
{
	__u32 e = err & 0xfff; /* the verifier sees [0, 4095] */
	__u32 r;

	/* 0 - e as a 32-bit subtraction: clang would emit a negation, whose bounds the verifier does not
	 * track, and the return value is checked as a 32-bit signed range */
	asm volatile("%[r] = 0; %[r] -= %[e]" : [r] "=&w"(r) : [e] "w"(e));
	return (int)r;
}

SEC("lsm")
int sens_lsm(unsigned long long *ctx)
{
	struct sens_scratch *s = sens_begin();

	if (!s)
		return 0; /* out of the policy's cgroups */
	s->matched = -1;
	sens_run_call(ctx, s);

	int m = s->matched;

	if (m < 0 || m >= SENS_MAX_SELECTORS)
		return 0;
	__u32 err = lsm_errno[m];

	if (!err)
		return 0;
	__u32 zero = 0;
	__u32 *mode = bpf_map_lookup_elem(&sens_mode, &zero);

	if (mode && *mode == 1)
		return 0; /* monitoring: the event says what would have happened */
	return sens_lsm_ret(err);
}
