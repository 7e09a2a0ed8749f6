// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * One usdts item: a USDT probe (a nop the compiler placed in a user binary, described by an ELF
 * .note.stapsdt note), entered as a uprobe at the nop. Its arguments are not in the calling convention's
 * registers: each is wherever the note's argument spec says ("-4@%edi", "8@-16(%rbp)",
 * "4@$5", "8@8(%rdi,%rsi,8)"), decoded in user space (sensorium_sensors.usdt.notes) into the rodata
 * sens_usdt_cfg. sens_usdt_read_g() reads them into s->raw[], and the shared engine (sensorium/selectors.h:
 * capture, matchArgs, matchBinaries/PIDs/..., Post/NoPost/Sigkill/Signal, live mode, scope) treats them as
 * SENS_FROM_SYSCALL parameters.
 *
 * sens_usdt_set is the same program plus Tetragon's Set action: once the matched selector is known, the
 * 4-byte value of its argument (memory addressed by a register, checked in user space) is overwritten with
 * bpf_probe_write_user. A program of its own, so that a kernel that refuses that helper (lockdown)
 * refuses only the policies that ask for Set.
 */
#include "vmlinux.h"
#include "sensorium/common.h"
#include "sensorium/selectors.h"

SENSORIUM_LICENSE("Dual BSD/GPL");

/* Where an argument is (sensorium_sensors.usdt.notes: UsdtArg) */
#define SENS_USDT_NONE 0
#define SENS_USDT_CONST 1 /* the value is `val` */
#define SENS_USDT_REG 2   /* in register `reg` (its offset in struct pt_regs) */
#define SENS_USDT_DEREF 3 /* at user address reg + val */
#define SENS_USDT_SIB 4   /* at user address reg + (idx << scale) + val */

#define SENS_USDT_NO_SET 0xff

struct sens_usdt_arg {
	__s64 val;
	__u16 reg;
	__u16 idx;
	__u8 type;
	__u8 size; /* 1, 2, 4 or 8 bytes */
	__u8 is_signed;
	__u8 scale;
};

struct sens_usdt_cfg {
	struct sens_usdt_arg args[SENS_MAX_ARGS]; /* per slot of s->raw[] */
	__u32 set_value[8];                        /* per selector: what Set writes */
	__u8 set_slot[8];                          /* per selector: the slot whose memory Set writes, or NO_SET */
};

const volatile struct sens_usdt_cfg sens_usdt_cfg = {};

#define SENS_USDT_REGS_MAX (sizeof(struct pt_regs) - 8)

/* A register of the probed thread, by its offset in struct pt_regs (s->regs holds a copy). */
static __always_inline __u64 sens_usdt_reg(struct sens_scratch *s, __u32 off)
{
	off = SENS_BOUND(off, 0xff);
	if (off > SENS_USDT_REGS_MAX)
		return 0;
	return *(__u64 *)((char *)&s->regs + off);
}

/* The user address of argument `a` (DEREF and SIB), or 0. */
static __always_inline __u64 sens_usdt_addr(struct sens_scratch *s, const volatile struct sens_usdt_arg *d)
{
	__u64 addr = sens_usdt_reg(s, d->reg) + (__u64)d->val;

	if (d->type == SENS_USDT_SIB)
		addr += sens_usdt_reg(s, d->idx) << (d->scale & 3);
	return addr;
}

/* Every configured argument into s->raw[] (global: verified once, whatever the configuration). */
SENS_GLOBAL int sens_usdt_read_g(void)
{
	struct sens_scratch *s = sens_scratch_get();
	__u32 i;

	if (!s)
		return 0;
	for (i = 0; i < SENS_MAX_ARGS; i++) {
		const volatile struct sens_usdt_arg *d = &sens_usdt_cfg.args[i];
		__u64 v = 0;
		__u32 size = d->size;

		if (d->type == SENS_USDT_CONST) {
			v = (__u64)d->val;
		} else if (d->type == SENS_USDT_REG) {
			v = sens_usdt_reg(s, d->reg);
		} else if (d->type == SENS_USDT_DEREF || d->type == SENS_USDT_SIB) {
			if (size == 0 || size > 8)
				size = 8;
			/* only the argument's bytes: a full 8-byte read could cross into an unmapped page */
			if (bpf_probe_read_user(&v, SENS_BOUND(size, 15), (void *)sens_usdt_addr(s, d)) < 0)
				v = 0;
		}
		/* to 64 bits: the note's size and sign (a 4-byte register is the low half of the 64-bit one) */
		if (size == 4)
			v = d->is_signed ? (__u64)(__s64)(__s32)v : (__u32)v;
		else if (size == 2)
			v = d->is_signed ? (__u64)(__s64)(__s16)v : (__u16)v;
		else if (size == 1)
			v = d->is_signed ? (__u64)(__s64)(__s8)v : (__u8)v;
		s->raw[i] = v;
	}
	return 0;
}

static __always_inline int sens_usdt_enter(struct pt_regs *ctx, struct sens_scratch *s)
{
	bpf_probe_read_kernel(&s->regs, sizeof(s->regs), ctx);
	sens_usdt_read_g();
	return sens_run_call(ctx, s);
}

SEC("uprobe")
int sens_usdt(struct pt_regs *ctx)
{
	struct sens_scratch *s = sens_begin();

	if (!s)
		return 0;
	return sens_usdt_enter(ctx, s);
}

/* Counter slot of a failed Set write (sens_counters; the engine uses 0..5) */
#define SENS_CNT_SET_ERR 6

SEC("uprobe")
int sens_usdt_set(struct pt_regs *ctx)
{
	struct sens_scratch *s = sens_begin();
	__u32 zero = 0;

	if (!s)
		return 0;
	sens_usdt_enter(ctx, s);
	__s32 m = s->matched;

	if (m < 0 || m > 7)
		return 0;
	__u8 slot = sens_usdt_cfg.set_slot[m & 7];

	if (slot >= SENS_MAX_ARGS)
		return 0;
	__u32 *mode = bpf_map_lookup_elem(&sens_mode, &zero);

	if (!mode || *mode != 0)
		return 0; /* monitoring: the event says what Set would have written */
	__u32 value = sens_usdt_cfg.set_value[m & 7];
	const volatile struct sens_usdt_arg *d = &sens_usdt_cfg.args[slot];

	if (d->type != SENS_USDT_DEREF ||
	    bpf_probe_write_user((void *)sens_usdt_addr(s, d), &value, sizeof(value)) < 0)
		sens_count(SENS_CNT_SET_ERR);
	return 0;
}
