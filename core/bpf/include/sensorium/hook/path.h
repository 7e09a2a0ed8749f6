/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * sensorium/hook/path.h: paths in the kernel for the policy hook engine.
 *
 *   sens_walk_g        the absolute path of a (dentry, vfsmount), built backwards in s->walk;
 *   sens_resolve_g     a path string as a process gave it, made absolute (cwd or dirfd prepended) and
 *                      normalised ("." and empty components dropped, ".." removes the previous one);
 *   sens_load_binary_g the current process's executable, cached per process.
 *
 * All three are global functions: the verifier checks each once per program, with no knowledge of the
 * caller, so their cost does not depend on the policy (how many arguments, which kinds) nor multiply with
 * the loops around their call sites. Their loops keep what one step hands to the next in the scratch
 * (see struct sens_scratch), plain bounded loops that every kernel since 5.3 verifies, no bpf_loop: one
 * code path, the same decisions on every kernel.
 */
#ifndef __SENSORIUM_HOOK_PATH_H
#define __SENSORIUM_HOOK_PATH_H

#include "sensorium/hook/defs.h"

/* The last index of walk[] a write may use: room for the NUL the copy to a payload never needs. */
#define SENS_WALK_LAST (SENS_WALKBUF - 1)
#define SENS_RESOLVE_TRUNC (1 << 16) /* sens_resolve_g: the normalised path was cut at SENS_STR_MAX - 1 */

/*
 * One step of sens_walk_g: the component at s->wdentry (or a mount crossing). Returns 0 to go on, 1 when
 * the root was reached, 2 when the buffer is full. A global function: the steps' branches are verified
 * once, not once per step.
 */
SENS_GLOBAL int sens_walk_step_g(void)
{
	struct sens_scratch *s = sens_scratch_get();

	if (!s)
		return 2;
	struct dentry *dentry = (struct dentry *)SENS_ONCE(s->wdentry);
	struct mount *mnt = (struct mount *)SENS_ONCE(s->wmnt);

	if (mnt && (__u64)dentry == SENS_ONCE(s->wroot)) {
		struct mount *mparent = BPF_CORE_READ(mnt, mnt_parent);

		if (mparent == mnt)
			return 1; /* the root of the namespace */
		SENS_ONCE(s->wdentry) = (__u64)BPF_CORE_READ(mnt, mnt_mountpoint);
		SENS_ONCE(s->wmnt) = (__u64)mparent;
		SENS_ONCE(s->wroot) = (__u64)BPF_CORE_READ(mparent, mnt.mnt_root);
		return 0;
	}
	struct dentry *parent;
	const unsigned char *name;
	__u32 len, pos, n;

	/* d_parent and d_name (hash_len, name) are adjacent in struct dentry: one helper call reads them
	 * (the test is a constant after CO-RE relocation, so the verifier keeps one branch). */
	if (bpf_core_field_offset(struct dentry, d_name) == bpf_core_field_offset(struct dentry, d_parent) + 8 &&
	    bpf_core_field_size(struct dentry, d_name) == 16) {
		struct {
			struct dentry *parent;
			__u64 hash_len;
			const unsigned char *name;
		} blk = {};

		bpf_probe_read_kernel(&blk, sizeof(blk), (void *)dentry + bpf_core_field_offset(struct dentry, d_parent));
		parent = blk.parent;
		len = blk.hash_len >> 32; /* qstr: u32 hash, u32 len (little-endian hash_len) */
		name = blk.name;
	} else {
		parent = BPF_CORE_READ(dentry, d_parent);
		len = BPF_CORE_READ(dentry, d_name.len);
		name = BPF_CORE_READ(dentry, d_name.name);
	}
	if (dentry == parent)
		return 1;
	if (len > 255)
		len = 255;
	pos = SENS_ONCE(s->wpos);
	if (pos > SENS_PATHBUF || pos < len + 1)
		return 2;
	pos -= len;
	bpf_probe_read_kernel(&s->walk[pos & SENS_PATHMASK], SENS_BOUND(len, 255), name);
	pos -= 1;
	s->walk[pos & SENS_PATHMASK] = '/';
	SENS_ONCE(s->wpos) = pos;
	n = SENS_ONCE(s->wn);
	if (n < SENS_PATH_DEPTH) {
		s->wslash[SENS_BOUND(n, 63)] = pos;
		SENS_ONCE(s->wn) = n + 1;
	}
	SENS_ONCE(s->wdentry) = (__u64)parent;
	return 0;
}

/*
 * Write the absolute path of (dentry, vfsmnt) at the END of s->walk: the string occupies
 * walk[start .. SENS_PATHBUF), no NUL; returns start (0 .. SENS_PATHBUF - 1), or -1.
 * s->wn components are recorded: wslash[k] is where the '/' before the k-th component from the leaf was
 * written. The walk takes at most SENS_PATH_DEPTH steps (components and mount crossings) and crosses
 * mount points; a deeper path is reported from its deepest components with a leading "/..." (recorded as
 * one more component), which cannot equal an absolute rule. With no vfsmnt (0: a bare dentry argument)
 * the path is the one from the dentry's filesystem root.
 */
SENS_GLOBAL int sens_walk_g(__u64 dentry_p, __u64 vfsmnt_p)
{
	struct sens_scratch *s = sens_scratch_get();
	struct vfsmount *vfsmnt = (struct vfsmount *)vfsmnt_p;
	__u32 i, pos, n;

	if (!s || !dentry_p)
		return -1;
	SENS_ONCE(s->wdentry) = dentry_p;
	if (vfsmnt_p) {
		SENS_ONCE(s->wmnt) = (__u64)container_of(vfsmnt, struct mount, mnt);
		SENS_ONCE(s->wroot) = (__u64)BPF_CORE_READ(vfsmnt, mnt_root);
	} else {
		/* a dentry alone (no mount known): walked up to its own filesystem's root, no mount crossed */
		SENS_ONCE(s->wmnt) = 0;
		SENS_ONCE(s->wroot) = 0;
	}
	SENS_ONCE(s->wpos) = SENS_PATHBUF;
	SENS_ONCE(s->wn) = 0;
	SENS_ONCE(s->wdone) = 0;
	for (i = 0; i < SENS_PATH_DEPTH; i++) {
		int r = sens_walk_step_g();

		if (r) {
			SENS_ONCE(s->wdone) = r == 1;
			break;
		}
	}
	pos = SENS_ONCE(s->wpos);
	if (pos > SENS_PATHBUF)
		return -1;
	if (!SENS_ONCE(s->wdone) && pos >= 4) {
		pos -= 4;
		s->walk[pos & SENS_PATHMASK] = '/';
		s->walk[(pos + 1) & SENS_PATHMASK] = '.';
		s->walk[(pos + 2) & SENS_PATHMASK] = '.';
		s->walk[(pos + 3) & SENS_PATHMASK] = '.';
		n = SENS_ONCE(s->wn);
		if (n < SENS_PATH_DEPTH + 1) {
			s->wslash[SENS_BOUND(n, 63)] = pos; /* wslash has SENS_PATH_DEPTH + 2 slots */
			SENS_ONCE(s->wn) = n + 1;
		}
	}
	if (pos == SENS_PATHBUF) {
		pos -= 1;
		s->walk[pos & SENS_PATHMASK] = '/';
	}
	return pos & SENS_PATHMASK;
}

static __always_inline struct file *sens_fd_file(struct task_struct *task, __s64 fd)
{
	struct file **fds = BPF_CORE_READ(task, files, fdt, fd);
	unsigned int max = BPF_CORE_READ(task, files, fdt, max_fds);
	struct file *f = NULL;

	if (fd < 0 || fd >= max)
		return NULL;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	return f;
}

/* The walked path of a file, or of a struct path, through sens_walk_g. */
static __always_inline int sens_walk_file(struct file *f)
{
	return sens_walk_g((__u64)BPF_CORE_READ(f, f_path.dentry), (__u64)BPF_CORE_READ(f, f_path.mnt));
}

/*
 * The end of a component during sens_resolve_g (a '/' or the end of the string): walk[ncomp .. nj) is the
 * component just read. "." and empty components are dropped, ".." pops the previous component (never
 * above the root), anything else is kept: its start pushed on s->stack, a '/' appended. A global function,
 * so that its branches are verified once rather than at every byte of the loop.
 */
SENS_GLOBAL int sens_norm_sep_g(void)
{
	struct sens_scratch *s = sens_scratch_get();

	if (!s)
		return 0;
	__u32 j = SENS_ONCE(s->nj);
	__u32 comp = SENS_ONCE(s->ncomp);
	__u32 d = SENS_ONCE(s->ndepth);

	if (j > SENS_WALK_LAST)
		return 0;
	if (comp > j || comp > SENS_WALK_LAST - 1)
		comp = j;
	__u32 clen = j - comp;

	if (clen == 0) {
		/* an empty component ("//" or the leading "/"): nothing */
	} else if (clen == 1 && s->walk[SENS_BOUND(comp, 2047)] == '.') {
		SENS_ONCE(s->nj) = comp;
	} else if (clen == 2 && s->walk[SENS_BOUND(comp, 2047)] == '.' && s->walk[SENS_BOUND(comp + 1, 2047)] == '.') {
		if (d > 0) {
			d -= 1;
			SENS_ONCE(s->nj) = s->stack[d & (SENS_NORM_STACK - 1)];
			SENS_ONCE(s->ndepth) = d;
		} else {
			SENS_ONCE(s->nj) = comp;
		}
	} else {
		s->stack[d & (SENS_NORM_STACK - 1)] = comp;
		if (d < SENS_NORM_STACK - 1)
			SENS_ONCE(s->ndepth) = d + 1;
		if (j < SENS_WALK_LAST) {
			s->walk[SENS_BOUND(j, 2047)] = '/';
			SENS_ONCE(s->nj) = j + 1;
		} else {
			SENS_ONCE(s->nover) = 1;
		}
	}
	SENS_ONCE(s->ncomp) = SENS_ONCE(s->nj);
	return 0;
}

/* 1 when the `len` bytes at s->data[off] are an absolute path already normal: no "." or ".." component,
 * no "//", no trailing '/' (the common case, decided without copying). The previous byte is kept in the
 * scratch (see struct sens_scratch). */
SENS_GLOBAL int sens_path_clean_g(__u32 off, __u32 len)
{
	struct sens_scratch *s = sens_scratch_get();
	const __u8 *out;
	__u32 i;

	if (!s || len > SENS_STR_MAX - 1 || len == 0)
		return 0;
	out = &s->data[off & (SENS_DATA_MAX - 1)];
	if (out[0] != '/')
		return 0;
	SENS_ONCE(s->nprev) = 0;
	for (i = 0; i < SENS_STR_MAX - 1; i++) {
		if (i >= len)
			break;
		__u8 c = out[i];

		if ((c == '.' || c == '/') && SENS_ONCE(s->nprev) == '/')
			return 0;
		SENS_ONCE(s->nprev) = c;
	}
	return !(len > 1 && SENS_ONCE(s->nprev) == '/');
}

/* One byte of the string being normalised (0: its end): appended to the component being read, or the
 * component ends (sens_norm_sep_g). A global function, so that the loop over the bytes verifies one call
 * per step. */
SENS_GLOBAL int sens_norm_byte_g(__u32 ch)
{
	struct sens_scratch *s = sens_scratch_get();

	if (!s)
		return 0;
	if (ch == '/' || ch == 0)
		return sens_norm_sep_g();
	__u32 j = SENS_ONCE(s->nj);

	if (j < SENS_WALK_LAST) {
		s->walk[SENS_BOUND(j, 2047)] = ch;
		SENS_ONCE(s->nj) = j + 1;
	} else {
		SENS_ONCE(s->nover) = 1;
	}
	return 0;
}

/*
 * Normalise the `len` bytes at s->data[off] into walk[base ..] (set up by sens_resolve_g: walk[base .. nj)
 * the directory with a trailing '/', s->stack its components), then copy the result back over the string.
 * Returns the new length | SENS_RESOLVE_TRUNC, or -1.
 */
SENS_GLOBAL int sens_norm_g(__u32 off, __u32 len, __u32 base)
{
	struct sens_scratch *s = sens_scratch_get();
	__u8 *out;
	__u32 i, j, n;

	if (!s || len > SENS_STR_MAX - 1 || base > SENS_PATHBUF - 1)
		return -1;
	out = &s->data[off & (SENS_DATA_MAX - 1)];
	SENS_ONCE(s->ncomp) = SENS_ONCE(s->nj);
	SENS_ONCE(s->nover) = 0;
	/* One step per byte of the string, and one for its end. Invariant: walk[base .. nj) is the result so
	 * far, ending with '/'; ncomp is where the component being read started. */
	for (i = 0; i < SENS_STR_MAX; i++) {
		__u32 ch = 0;

		if (i < len)
			ch = out[i & (SENS_STR_MAX - 1)];
		sens_norm_byte_g(ch);
		if (i >= len)
			break;
	}
	j = SENS_ONCE(s->nj);
	if (j > SENS_WALK_LAST || j <= base)
		return -1;
	n = j - base;
	/* j - 1 through SENS_BOUND: 6.1's verifier loses j's bounds in the 32-bit subtraction (walk[] is
	 * followed by join[] in the scratch, so the masked index stays inside the map value) */
	if (n > 1 && s->walk[SENS_BOUND(j - 1, 2047)] == '/')
		n -= 1; /* the separator after the last component */
	int trunc = SENS_ONCE(s->nover) != 0;

	if (n > SENS_STR_MAX - 1) {
		n = SENS_STR_MAX - 1;
		trunc = 1;
	}
	bpf_probe_read_kernel(out, SENS_BOUND(n, SENS_STR_MAX - 1), &s->walk[SENS_BOUND(base, SENS_PATHMASK)]);
	out[n & (SENS_STR_MAX - 1)] = 0;
	return n | (trunc ? SENS_RESOLVE_TRUNC : 0);
}

/*
 * Make the path string at s->data[off .. off + len) (as the process gave it) absolute and normalised, in
 * place. A relative path is joined to the directory of `dirfd` (AT_FDCWD: the cwd). Returns the new length,
 * | SENS_RESOLVE_TRUNC when the result was cut at SENS_STR_MAX - 1 bytes; the unchanged length when the
 * directory cannot be read.
 *
 * The result is built in s->walk after the walked directory (or after a "/" for an absolute path): each
 * kept component's start is pushed on s->stack, so ".." pops back to the previous one in one step, into
 * the directory's components too (whose starts the walk recorded). Only the string's own bytes (at most
 * 255) are stepped through; the directory is never copied.
 */
SENS_GLOBAL int sens_resolve_g(__u32 off, __u32 len, __s64 dirfd)
{
	struct sens_scratch *s = sens_scratch_get();
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u32 i, base, n;
	int r;

	if (len > SENS_STR_MAX - 1)
		len = SENS_STR_MAX - 1;
	if (!s || len == 0)
		return len;
	if (sens_path_clean_g(off, len))
		return len;
	if (s->data[off & (SENS_DATA_MAX - 1)] == '/') {
		base = SENS_PATHBUF - 1;
		s->walk[base] = '/';
		SENS_ONCE(s->nj) = SENS_PATHBUF;
		SENS_ONCE(s->ndepth) = 0;
	} else {
		struct dentry *dd;
		struct vfsmount *dm;
		int start;

		if (dirfd == -100 /* AT_FDCWD */) {
			dd = BPF_CORE_READ(task, fs, pwd.dentry);
			dm = BPF_CORE_READ(task, fs, pwd.mnt);
		} else {
			struct file *f = sens_fd_file(task, dirfd);

			if (!f)
				return len;
			dd = BPF_CORE_READ(f, f_path.dentry);
			dm = BPF_CORE_READ(f, f_path.mnt);
		}
		start = sens_walk_g((__u64)dd, (__u64)dm);
		if (start < 0 || start > SENS_PATHBUF - 1)
			return len;
		base = start;
		n = SENS_ONCE(s->wn);
		if (n > SENS_PATH_DEPTH + 1)
			n = SENS_PATH_DEPTH + 1;
		if (base == SENS_PATHBUF - 1) {
			SENS_ONCE(s->nj) = SENS_PATHBUF; /* the directory is "/" */
			n = 0;
		} else {
			s->walk[SENS_PATHBUF] = '/';
			SENS_ONCE(s->nj) = SENS_PATHBUF + 1;
		}
		/* the directory's components, outermost first: wslash[] has them from the leaf up */
		for (i = 0; i < SENS_PATH_DEPTH + 1; i++) {
			if (i >= n)
				break;
			__u32 k = n - 1 - i;

			if (k > SENS_PATH_DEPTH)
				break;
			s->stack[i] = s->wslash[SENS_BOUND(k, 63)] + 1;
		}
		SENS_ONCE(s->ndepth) = n;
	}
	r = sens_norm_g(off, len, base);
	return r < 0 ? (int)len : r;
}

/* The executable of the current process into s->bin (cached per tgid). Returns 0, or -1. */
SENS_GLOBAL int sens_load_binary_g(void)
{
	struct sens_scratch *s = sens_scratch_get();
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct sens_bin *b;

	if (!s)
		return -1;
	b = bpf_map_lookup_elem(&sens_bins, &tgid);
	if (b) {
		bpf_probe_read_kernel(&s->bin, sizeof(s->bin), b);
		return 0;
	}
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct file *exe = BPF_CORE_READ(task, mm, exe_file);

	if (!exe) {
		s->bin.len = 0; /* kernel thread: no binary */
		s->bin.path[0] = 0;
		return 0;
	}
	int start = sens_walk_file(exe);

	if (start < 0 || start > SENS_PATHBUF - 1)
		return -1;
	__u32 n = SENS_PATHBUF - start;

	if (n > SENS_STR_MAX - 1)
		n = SENS_STR_MAX - 1;
	bpf_probe_read_kernel(s->bin.path, SENS_BOUND(n, SENS_STR_MAX - 1), &s->walk[start & SENS_PATHMASK]);
	s->bin.path[n & (SENS_STR_MAX - 1)] = 0;
	s->bin.len = n;
	bpf_map_update_elem(&sens_bins, &tgid, &s->bin, BPF_ANY);
	return 0;
}

#endif /* __SENSORIUM_HOOK_PATH_H */
