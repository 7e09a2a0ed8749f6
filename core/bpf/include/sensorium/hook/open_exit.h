/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * sensorium/hook/open_exit.h: the opened-file syscalls (open, openat, openat2, creat) served at sys_exit
 * alone, with early rejection. Compiled only with -DSENS_OPEN_EXIT (tp_btf and bpf_rdonly_cast, 6.2+).
 */
#ifndef __SENSORIUM_HOOK_OPEN_EXIT_H
#define __SENSORIUM_HOOK_OPEN_EXIT_H

#include "sensorium/hook/run.h"

/* ------------------------------------------------------------------------------------------------ */
/* Opened-file syscalls (open, openat, openat2, creat) served at sys_exit alone                      */
/* ------------------------------------------------------------------------------------------------ */

/*
 * Built only into the object with -DSENS_OPEN_EXIT (core/hooks/probes.py: HOOK_OPEN_PROBE), since it
 * needs tp_btf and the bpf_rdonly_cast kfunc (6.2+); where that object does not load, the engine falls
 * back to sens_sys_enter + sens_sys_exit, which decide exactly the same.
 *
 * Why the exit alone: these syscalls never rewrite their saved registers, so at sys_exit pt_regs still
 * holds the arguments the call used (seccomp and ptrace act before sys_enter, ptrace's exit stop after
 * sys_exit). That saves the sys_enter program on every syscall of the machine and the per-thread hash
 * update/lookup/delete of each open. tp_btf makes regs, the task, the fd table and (through
 * bpf_rdonly_cast) the file, its dentries and mounts plain loads instead of helper calls.
 *
 * Early rejection (sens_pq, computed by the engine from the selectors): a selector that has, on the
 * opened-file path, a matchArgs with Equal/In/Prefix/Postfix can only match if one of its values fits
 * facts that a walk of the file's dentries gives without copying a byte: the path's length, its last
 * component (for Equal/Postfix: must equal the value's part after its last '/', or end with the value)
 * and its first component (for Prefix: must equal the value's first component, or start with it). Those
 * are necessary conditions on the very string the full evaluation would build from the same dentries
 * (same walk, same bounds; a path the full evaluation would cut at 255 bytes or shorten to "/..." is
 * never rejected after the walk, and before it only by rules that cannot match a cut path), so a call rejected
 * here is one no selector matches: symlinks, "..", relative paths and dirfds were resolved by the
 * kernel's lookup before the fd existed, and another name of the same inode (a hard link) is its own
 * dentry chain either way. Anything else (a failed open, a selector without such a filter, a deep path)
 * goes through the full evaluation (sens_run) unchanged.
 */
extern void *bpf_rdonly_cast(const void *obj__ign, __u32 btf_id__k) __ksym;

#define SENS_PQ_LEAF 1  /* compare with the last component */
#define SENS_PQ_TOP 2   /* compare with the first component */
#define SENS_PQ_NEVER 3 /* the value cannot match an absolute path */
#define SENS_PQ_EXACT 1
#define SENS_PQ_STARTS 2
#define SENS_PQ_ENDS 3

#define SENS_PQ_LEN_EQ 1     /* the path's length must equal vlen (else be at least vlen) */
#define SENS_PQ_LEAF_FIRST 2 /* the last-component condition holds before the walk (below) */

struct sens_pq_val {
	__u16 vlen;
	__u8 flags;   /* SENS_PQ_LEN_EQ, SENS_PQ_LEAF_FIRST */
	__u8 comp;    /* SENS_PQ_LEAF/TOP/NEVER; 0: the length only */
	__u8 mode;    /* SENS_PQ_EXACT/STARTS/ENDS */
	__u8 clen;    /* bytes compared with the component */
	__u8 str;     /* they are sens_cfg.strs[str].s[coff .. coff + clen) */
	__u8 coff;
};

struct sens_pq_group { /* one matchArgs: some value must fit */
	__u8 nvals;
	__u8 pad[7];
	struct sens_pq_val v[SENS_MAX_VALUES];
};

struct sens_pq_sel { /* one selector: every group must have a fitting value */
	__u8 ngroups;
	__u8 pad[7];
	struct sens_pq_group g[SENS_MAX_MATCH_ARGS];
};

struct sens_pq_cfg {
	__u8 on; /* every selector has at least one group: a call may be rejected early */
	__u8 leaf_first; /* some value has SENS_PQ_LEAF_FIRST: try the file's own name before the walk */
	__u8 pad[6];
	struct sens_pq_sel sel[SENS_MAX_SELECTORS];
};

const volatile struct sens_pq_cfg sens_pq = {};

/* Facts of the walk, kept in map memory (s->join, unused until sens_capture) rather than in registers:
 * values loaded from a map are unknown to the verifier, so the 32 steps verify in linear time. */
struct sens_pq_state {
	__u32 len;      /* of the path string the full evaluation would build */
	__u32 ncomp;
	__u32 leaf_len;
	__u32 top_len;
	__u64 leaf;     /* const unsigned char * */
	__u64 top;
	__u32 got;      /* bit 0: leaf bytes read, bit 1: top bytes read */
	__u32 pad;
};
#define SENS_PQ_LEAF_BUF 64
#define SENS_PQ_TOP_BUF (64 + 512)

/* Can value `v` match? `leaf_only`: only the last component is known yet (no walk done). */
static __always_inline int sens_pq_val_fits(struct sens_scratch *s, struct sens_pq_state *q,
					    const volatile struct sens_pq_val *v, int leaf_only)
{
	__u32 plen = SENS_ONCE(q->len);
	__u32 cl, off, bufoff, bit;
	__u64 name;
	__u8 clen = v->clen;

	if (v->comp == SENS_PQ_NEVER)
		return 0;
	if (leaf_only) {
		if (v->comp != SENS_PQ_LEAF || !(v->flags & SENS_PQ_LEAF_FIRST))
			return 1;
	} else if ((v->flags & SENS_PQ_LEN_EQ) ? plen != v->vlen : plen < v->vlen) {
		return 0;
	}
	if (v->comp != SENS_PQ_LEAF && v->comp != SENS_PQ_TOP)
		return 1;
	if (v->comp == SENS_PQ_LEAF) {
		cl = SENS_ONCE(q->leaf_len);
		name = SENS_ONCE(q->leaf);
		bufoff = SENS_PQ_LEAF_BUF;
		bit = 1;
	} else {
		cl = SENS_ONCE(q->top_len);
		name = SENS_ONCE(q->top);
		bufoff = SENS_PQ_TOP_BUF;
		bit = 2;
	}
	if (v->mode == SENS_PQ_EXACT ? cl != clen : cl < clen)
		return 0;
	if (clen == 0)
		return 1;
	/* the lengths fit: compare the bytes (the component's name read once per event) */
	cl &= 255;
	if (!(SENS_ONCE(q->got) & bit)) {
		if (cl == 0 || bpf_probe_read_kernel(&s->join[bufoff], cl, (const void *)name) < 0)
			return 1; /* unreadable: let the full evaluation decide */
		q->got |= bit;
	}
	off = v->mode == SENS_PQ_ENDS ? cl - clen : 0;
	return bpf_strncmp(&s->join[bufoff + (off & 255)], clen,
			   (const char *)&sens_cfg.strs[v->str & (SENS_MAX_STRINGS - 1)].s[v->coff]) == 0;
}

/* Can any selector match, given what q holds? */
static __always_inline int sens_pq_may_match(struct sens_scratch *s, struct sens_pq_state *q, int leaf_only)
{
	__u32 i, g, k;

	for (i = 0; i < SENS_MAX_SELECTORS; i++) {
		if (i >= sens_cfg.nsel)
			break;
		const volatile struct sens_pq_sel *sel = &sens_pq.sel[i];
		int fits = 1;

		for (g = 0; g < SENS_MAX_MATCH_ARGS; g++) {
			if (g >= sel->ngroups)
				break;
			const volatile struct sens_pq_group *grp = &sel->g[g];
			int any = 0;

			for (k = 0; k < SENS_MAX_VALUES; k++) {
				if (k >= grp->nvals)
					break;
				if (sens_pq_val_fits(s, q, &grp->v[k], leaf_only)) {
					any = 1;
					break;
				}
			}
			if (!any) {
				fits = 0;
				break;
			}
		}
		if (fits)
			return 1;
	}
	return 0;
}

/* 1: no selector can match the file behind `fd` (count it filtered and stop); 0: evaluate fully. */
static __always_inline int sens_pq_reject(struct sens_scratch *s, struct task_struct *task, long fd)
{
	struct sens_pq_state *q = (struct sens_pq_state *)s->join;
	struct files_struct *files = task->files;
	struct dentry *dentry, *parent, *mnt_root;
	struct vfsmount *vfsmnt;
	struct mount *mnt, *mparent;
	struct fdtable *fdt;
	struct file *f;
	void *fp = NULL;
	__u32 i, n, done = 0;

	if (!files)
		return 0;
	fdt = files->fdt;
	if (!fdt || fd >= fdt->max_fds)
		return 0;
	fp = (void *)fdt->fd + fd * sizeof(fp); /* &fdt->fd[fd] */
	if (bpf_core_field_offset(struct kiocb, ki_filp) == 0) {
		/* The slot read as a plain load instead of a helper call: a struct kiocb starts with its
		 * `struct file *ki_filp`, so the slot seen as one is a pointer the verifier types as a file.
		 * (The condition is a CO-RE constant: one branch is kept.) */
		f = ((struct kiocb *)bpf_rdonly_cast(fp, bpf_core_type_id_kernel(struct kiocb)))->ki_filp;
	} else {
		void *slot = NULL;

		if (bpf_probe_read_kernel(&slot, sizeof(slot), fp) < 0)
			return 0;
		f = bpf_rdonly_cast(slot, bpf_core_type_id_kernel(struct file));
	}
	if (!f)
		return 0; /* already closed by another thread: the full evaluation falls back to the string */
	dentry = f->f_path.dentry;
	vfsmnt = f->f_path.mnt;
	if (!dentry || !vfsmnt)
		return 0;
	mnt = bpf_rdonly_cast((void *)vfsmnt - bpf_core_field_offset(struct mount, mnt), bpf_core_type_id_kernel(struct mount));
	mnt_root = vfsmnt->mnt_root;

	/* First the file's own name, no walk: an Equal rule is mostly decided by its length alone. Only
	 * values flagged SENS_PQ_LEAF_FIRST are checked here: an Equal value shorter than a captured
	 * string (255 bytes) can only equal a path that was not cut, whose last component is this name.
	 * A Postfix value could end a path cut at 255 bytes, so it waits for the walk, which knows the
	 * length. (A file that is the root of a mount or of its filesystem has another dentry's name
	 * as its last component: the walk finds it.) */
	if (sens_pq.leaf_first && dentry != mnt_root && dentry != dentry->d_parent) {
		__u32 clen = dentry->d_name.len;

		q->leaf = (__u64)dentry->d_name.name;
		q->leaf_len = clen > 255 ? 255 : clen;
		q->got = 0;
		if (!sens_pq_may_match(s, q, 1))
			return 1;
	}

	/* The same steps as sens_walk_g, counting instead of copying. */
	SENS_ONCE(q->len) = 0;
	SENS_ONCE(q->ncomp) = 0;
	q->leaf_len = 0;
	q->top_len = 0;
	q->got = 0;
	for (i = 0; i < SENS_PATH_DEPTH; i++) {
		if (dentry == mnt_root) {
			mparent = mnt->mnt_parent;
			if (mparent == mnt) {
				done = 1;
				break;
			}
			dentry = mnt->mnt_mountpoint;
			mnt = mparent;
			mnt_root = mparent->mnt.mnt_root;
			continue;
		}
		parent = dentry->d_parent;
		if (dentry == parent) {
			done = 1;
			break;
		}
		__u32 clen = dentry->d_name.len;
		__u64 name = (__u64)dentry->d_name.name;

		if (clen > 255)
			clen = 255;
		__u32 len = SENS_ONCE(q->len) + clen + 1;

		if (len > SENS_STR_MAX - 1)
			return 0; /* longer than a captured string: the full evaluation truncates it */
		SENS_ONCE(q->len) = len;
		n = SENS_ONCE(q->ncomp);
		if (n == 0) {
			q->leaf = name;
			q->leaf_len = clen;
		}
		q->top = name;
		q->top_len = clen;
		SENS_ONCE(q->ncomp) = n + 1;
		dentry = parent;
	}
	if (!done)
		return 0; /* deeper than the walk: reported with a leading "/..." by the full evaluation */
	if (SENS_ONCE(q->ncomp) == 0)
		SENS_ONCE(q->len) = 1; /* "/" */

	return !sens_pq_may_match(s, q, 0);
}

SEC("tp_btf/sys_exit")
int BPF_PROG(sens_open_exit, struct pt_regs *regs, long ret)
{
	struct task_struct *task;
	struct sens_scratch *s;

	/* every syscall of the machine comes here: one compare for all but the hooked one */
	if ((long)regs->orig_ax != sens_cfg.syscall_nr)
		return 0;
	task = bpf_get_current_task_btf();
#if defined(__TARGET_ARCH_x86)
	if (task->thread_info.status & 0x0002) /* TS_COMPAT, still set at sys_exit: another syscall table */
		return 0;
#endif
	s = sens_begin();
	if (!s)
		return 0;
	if (ret >= 0 && sens_pq.on && sens_pq_reject(s, task, ret)) {
		sens_count(SENS_CNT_FILTERED);
		return 0;
	}
	s->raw[0] = regs->di;
	s->raw[1] = regs->si;
	s->raw[2] = regs->dx;
	s->raw[3] = regs->r10;
	s->raw[4] = regs->r8;
	s->raw[5] = regs->r9;
	return sens_run_ret(ctx, s, ret);
}

#endif /* __SENSORIUM_HOOK_OPEN_EXIT_H */
