/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * sensorium/path.h: sensorium_d_path(), the absolute path of a `struct path`, for program types where
 * bpf_d_path() is not allowed (tp_btf, raw_tp, tracepoint, kprobe). Include after sensorium/common.h.
 *
 * It does what the kernel's d_path() does, with bounds: walk dentry->d_parent up to the root of each
 * mount, cross to the parent mount at mnt_mountpoint (struct mount from container_of(vfsmnt)), and stop
 * at the current task's root (current->fs->root, so a chrooted or containerised process gets the path it
 * sees) or at the root of the mount namespace. All reads are CO-RE (BPF_CORE_READ), so one object works
 * on 6.1, 6.12 and 6.18.
 *
 * Bounds and what is reported when they are hit (bits in *flags):
 *   SENSORIUM_PATH_COMPONENTS (32) components and SENSORIUM_PATH_MOUNTS (8) mount crossings:
 *       deeper paths keep the innermost components, still written from a leading "/", and set
 *       SENSORIUM_PATH_TRUNC_DEPTH (the outer components are missing).
 *   SENSORIUM_PATH_MAX (4096) bytes including the NUL: longer paths are cut at the end and set
 *       SENSORIUM_PATH_TRUNC_BYTES.
 *   SENSORIUM_PATH_DETACHED: the walk ended at a root that is not reachable from the task's root
 *       (a lazily unmounted mount, or a disconnected dentry); the path is relative to that root.
 *   SENSORIUM_PATH_DELETED: the file itself was unlinked (d_path would append " (deleted)").
 *
 * The caller's `buf` must point to at least SENSORIUM_D_PATH_BUF bytes of a map value (a per-CPU
 * array slot, say): the path is written at buf[0..], NUL-terminated; the bytes after
 * SENSORIUM_PATH_MAX + SENSORIUM_NAME_MAX are used as scratch for the component pointers.
 * Returns the path length in bytes (without the NUL), or a negative errno.
 */
#ifndef __SENSORIUM_PATH_H
#define __SENSORIUM_PATH_H

#define SENSORIUM_PATH_MAX        4096 /* power of 2: offsets are masked with it */
#define SENSORIUM_NAME_MAX        256  /* NAME_MAX + NUL: the most one component read writes */
#define SENSORIUM_PATH_COMPONENTS 32   /* power of 2 */
#define SENSORIUM_PATH_MOUNTS     8

/* Lives in the caller's buffer after the path. The walk keeps its counter here, in map memory, on
 * purpose: the verifier does not track values loaded from a map, so the states of different walks
 * (how many components, where the mount crossings were) look alike and are pruned. With the counter
 * in a register every combination is explored and the program hits the 1M instruction limit. */
struct sensorium_d_path_scratch {
	const unsigned char *names[SENSORIUM_PATH_COMPONENTS];
	__u32 n;
	__u32 off;
};

#define SENSORIUM_D_PATH_BUF \
	(SENSORIUM_PATH_MAX + SENSORIUM_NAME_MAX + sizeof(struct sensorium_d_path_scratch))
#define SENSORIUM_READ_ONCE(x) (*(volatile typeof(x) *)&(x))

#define SENSORIUM_PATH_TRUNC_DEPTH 0x1
#define SENSORIUM_PATH_TRUNC_BYTES 0x2
#define SENSORIUM_PATH_DETACHED    0x4
#define SENSORIUM_PATH_DELETED     0x8

static __always_inline struct mount *sensorium_real_mount(struct vfsmount *vfsmnt)
{
	/* container_of(vfsmnt, struct mount, mnt), with the offset relocated for the running kernel */
	return (struct mount *)((void *)vfsmnt - bpf_core_field_offset(struct mount, mnt));
}

static __always_inline int sensorium_d_path(const struct path *path, char *buf, __u32 size, __u32 *flags)
{
	struct sensorium_d_path_scratch *s =
		(struct sensorium_d_path_scratch *)(buf + SENSORIUM_PATH_MAX + SENSORIUM_NAME_MAX);
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct dentry *dentry, *parent, *mnt_root, *root_dentry;
	struct vfsmount *vfsmnt, *root_mnt;
	struct mount *mnt, *mnt_parent;
	__u32 n, off, f = 0, i;
	int done = 0;
	long r;

	if (size < SENSORIUM_D_PATH_BUF) /* a constant in every caller: folds away */
		return -22; /* EINVAL */

	dentry = BPF_CORE_READ(path, dentry);
	vfsmnt = BPF_CORE_READ(path, mnt);
	if (!dentry || !vfsmnt)
		return -14; /* EFAULT */
	mnt = sensorium_real_mount(vfsmnt);
	root_dentry = BPF_CORE_READ(task, fs, root.dentry);
	root_mnt = BPF_CORE_READ(task, fs, root.mnt);

	/* A hashed dentry has d_hash.pprev set; an unlinked file's dentry is unhashed (d_unhashed()). */
	if (dentry != BPF_CORE_READ(dentry, d_parent) && !BPF_CORE_READ(dentry, d_hash.pprev))
		f |= SENSORIUM_PATH_DELETED;

	/* Walk up, collecting component names leaf first. */
	SENSORIUM_READ_ONCE(s->n) = 0;
	for (i = 0; i < SENSORIUM_PATH_COMPONENTS + SENSORIUM_PATH_MOUNTS; i++) {
		if (dentry == root_dentry && vfsmnt == root_mnt) {
			done = 1; /* the task's root */
			break;
		}
		mnt_root = BPF_CORE_READ(vfsmnt, mnt_root);
		parent = BPF_CORE_READ(dentry, d_parent);
		if (dentry == mnt_root || dentry == parent) {
			if (dentry != mnt_root) {
				/* its own parent but not a mount's root: a disconnected dentry */
				f |= SENSORIUM_PATH_DETACHED;
				done = 1;
				break;
			}
			mnt_parent = BPF_CORE_READ(mnt, mnt_parent);
			if (mnt_parent == mnt) {
				/* the root mount of a namespace (global root), or a mount detached by umount -l */
				if (!BPF_CORE_READ(mnt, mnt_ns))
					f |= SENSORIUM_PATH_DETACHED;
				done = 1;
				break;
			}
			dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
			mnt = mnt_parent;
			vfsmnt = (struct vfsmount *)((void *)mnt + bpf_core_field_offset(struct mount, mnt));
			continue;
		}
		n = SENSORIUM_READ_ONCE(s->n);
		if (n >= SENSORIUM_PATH_COMPONENTS)
			break;
		s->names[n & (SENSORIUM_PATH_COMPONENTS - 1)] = BPF_CORE_READ(dentry, d_name.name);
		SENSORIUM_READ_ONCE(s->n) = n + 1;
		dentry = parent;
	}
	if (!done)
		f |= SENSORIUM_PATH_TRUNC_DEPTH;

	/* Write "/" + name for each component, root first. */
	SENSORIUM_READ_ONCE(s->off) = 0;
	for (i = 0; i < SENSORIUM_PATH_COMPONENTS; i++) {
		const unsigned char *name;

		n = SENSORIUM_READ_ONCE(s->n);
		off = SENSORIUM_READ_ONCE(s->off);
		if (i >= n)
			break;
		name = s->names[(n - 1 - i) & (SENSORIUM_PATH_COMPONENTS - 1)];
		if (off >= SENSORIUM_PATH_MAX - 1) {
			f |= SENSORIUM_PATH_TRUNC_BYTES;
			break;
		}
		buf[off & (SENSORIUM_PATH_MAX - 1)] = '/';
		off++;
		r = bpf_probe_read_kernel_str(buf + (off & (SENSORIUM_PATH_MAX - 1)), SENSORIUM_NAME_MAX, name);
		if (r < 0)
			return r;
		off += r - 1; /* r counts the NUL */
		if (off > SENSORIUM_PATH_MAX - 1) {
			f |= SENSORIUM_PATH_TRUNC_BYTES;
			SENSORIUM_READ_ONCE(s->off) = SENSORIUM_PATH_MAX - 1;
			break;
		}
		SENSORIUM_READ_ONCE(s->off) = off;
	}
	off = SENSORIUM_READ_ONCE(s->off) & (SENSORIUM_PATH_MAX - 1);
	if (off == 0)
		buf[off++] = '/';
	buf[off & (SENSORIUM_PATH_MAX - 1)] = '\0';
	if (flags)
		*flags = f;
	return off;
}

#endif /* __SENSORIUM_PATH_H */
