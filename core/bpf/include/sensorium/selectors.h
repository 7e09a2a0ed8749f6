/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * sensorium/selectors.h: TracingPolicy hooks evaluated in the kernel.
 *
 * One compiled object serves one hook of a policy (a tracepoint, a raw tracepoint, or a syscall served
 * by raw_tp sys_enter/sys_exit). Its whole configuration is the read-only global `sens_cfg` (set from
 * user space before load by sensorium.selectors): which arguments to read and how, the selectors and
 * their values. Because rodata is frozen, the verifier sees every count, operator and value as a
 * constant and prunes what the policy does not use: a policy with one matchArgs costs one compare.
 *
 * Semantics (Tetragon's): selectors are OR-ed, the filters inside one selector AND-ed; the first
 * matching selector decides the actions. An event no selector matches never reaches the ring buffer.
 * The policy mode (enforcement/monitoring) lives in the writable map `sens_mode` so it can be switched
 * live; in monitoring, Sigkill/Signal are not sent and the event says what would have been done.
 *
 * Path arguments flagged `resolve` are made absolute before matching (dirfd or cwd prepended, then "."
 * and ".." collapsed, see sens_normalize): a relative path or ".." cannot slip past a rule written for
 * an absolute path. Symbolic links are not followed at enter time; docs/selectors.md says more.
 *
 * Programs here: sens_tp (tracepoint), sens_raw (raw tracepoint), sens_sys_enter/sens_sys_exit
 * (syscalls via raw_tp), sens_open_exit (open family on the opened file, tp_btf sys_exit alone; only with
 * -DSENS_OPEN_EXIT, at the end of this file), and sens_fork/sens_exec/sens_exit (tp_btf; keep the per-process state for
 * followChildren/followForks and the binary cache fresh). User space sets autoload for the ones it uses.
 */
#ifndef __SENSORIUM_SELECTORS_H
#define __SENSORIUM_SELECTORS_H

#include "sensorium/common.h"
#include "sensorium/scope.h"
#include <bpf/bpf_endian.h>

/* v & m as the verifier sees it: the compiler drops a mask it can prove useless (len <= 255 already),
 * and 6.1's verifier, tracking only the signed bound of such a 32-bit value, then refuses the access. */
#define SENS_BOUND(v, m)                                                      \
	({                                                                    \
		__u64 __sens_b = (v);                                         \
		asm volatile("%[b] &= %[mm]" : [b] "+r"(__sens_b) : [mm] "i"(m)); \
		__sens_b;                                                     \
	})

/* Limits: mirrored in sensorium.selectors (checked before load, with the limit in the message). */
#define SENS_MAX_ARGS 6
#define SENS_MAX_SELECTORS 5
#define SENS_MAX_MATCH_ARGS 4
#define SENS_MAX_VALUES 8
#define SENS_MAX_STRINGS 32
#define SENS_STR_MAX 256 /* bytes of a string value or captured string, NUL included */
#define SENS_MAX_NS 4
#define SENS_MAX_CAPS 2
#define SENS_MAX_PIDF 2 /* matchPIDs entries per selector */
#define SENS_MAX_BINS 4 /* matchBinaries entries per selector (ANDed) */
#define SENS_DATA_MAX 2048 /* argument bytes in one event record */
#define SENS_PATH_DEPTH 32 /* components of an in-kernel path walk */

/* Record type in sensorium_hdr.type */
#define SENS_REC_HOOK 1

/* Hook kinds */
#define SENS_HOOK_TP 1
#define SENS_HOOK_RAW_TP 2
#define SENS_HOOK_SYSCALL 3
#define SENS_HOOK_UPROBE 4

/* Argument kinds */
#define SENS_ARG_INT 1
#define SENS_ARG_STR 2
#define SENS_ARG_BUF 3
#define SENS_ARG_SOCK 4 /* a struct sens_sock summary (sock or sockaddr): matched by the socket operators */

/* Where the raw value of an argument is */
#define SENS_FROM_CTX 1     /* tracepoint record at byte `offset` */
#define SENS_FROM_RAW 2     /* raw tracepoint args[offset] */
#define SENS_FROM_SYSCALL 3 /* syscall parameter number `offset` (pt_regs) */
#define SENS_FROM_RETVAL 4  /* the syscall's return value */

/* How the data is reached from the raw value */
#define SENS_DEREF_NONE 0        /* the value itself (integers) */
#define SENS_DEREF_USER_STR 1    /* pointer to a user string */
#define SENS_DEREF_KERNEL_STR 2  /* pointer to a kernel string */
#define SENS_DEREF_DATALOC 3     /* __data_loc u32 (offset | len << 16) into the record */
#define SENS_DEREF_INLINE 4      /* char array inside the record, `max` bytes */
#define SENS_DEREF_USER_BUF 5    /* pointer to user bytes, length from arg `size_arg` */
#define SENS_DEREF_BINPRM 6      /* struct linux_binprm *: the file's path */
#define SENS_DEREF_FD_PATH 7     /* an fd of the current task: its file's path */
#define SENS_DEREF_FILE 8        /* struct file *: its path (lsm/kprobe arguments) */
#define SENS_DEREF_PATH 9        /* struct path *: the path (lsm/kprobe arguments) */
#define SENS_DEREF_SOCK 10       /* struct sock * (kernel): family, type, protocol, ports, addresses, state */
#define SENS_DEREF_SOCKADDR 11   /* struct sockaddr * (kernel): family, address, port */
#define SENS_DEREF_USER_SOCKADDR 12 /* struct sockaddr __user * (a syscall's address argument) */
#define SENS_DEREF_SKB 13        /* struct sk_buff * (kernel): its IPv4/IPv6 header and TCP/UDP/SCTP ports */

/* Operators */
#define SENS_OP_EQ 1
#define SENS_OP_NE 2
#define SENS_OP_PREFIX 3
#define SENS_OP_NOTPREFIX 4
#define SENS_OP_POSTFIX 5
#define SENS_OP_NOTPOSTFIX 6
#define SENS_OP_GT 7
#define SENS_OP_LT 8
#define SENS_OP_MASK 9
#define SENS_OP_IN 10
#define SENS_OP_NOTIN 11
/* Socket operators (SENS_ARG_SOCK arguments). Addresses: values are CIDRs in strs[] (see sens_addr_in);
 * ports, protocol, family: vals[k] = lo | hi << 16, an inclusive range. "Not": none of the values. */
#define SENS_OP_SADDR 12
#define SENS_OP_NOTSADDR 13
#define SENS_OP_DADDR 14
#define SENS_OP_NOTDADDR 15
#define SENS_OP_SPORT 16
#define SENS_OP_NOTSPORT 17
#define SENS_OP_DPORT 18
#define SENS_OP_NOTDPORT 19
#define SENS_OP_PROTOCOL 20
#define SENS_OP_FAMILY 21

/* Actions (bit set in sens_selector.actions) */
#define SENS_ACT_POST 1
#define SENS_ACT_SIGKILL 2
#define SENS_ACT_SIGNAL 4

/* Event flags */
#define SENS_EV_MONITOR 1   /* policy in monitoring: blocking actions were not taken */
#define SENS_EV_HAS_RET 2
#define SENS_EV_SIGNAL_ERR 4 /* bpf_send_signal failed */

/* Argument flags in a record */
#define SENS_ARGF_TRUNC 1
#define SENS_ARGF_ERR 2

/* Hook config flags */
#define SENS_CFG_CGROUP_SCOPED 1 /* only tasks in the scope held by sens_scope */
#define SENS_CFG_NEED_BINARY 2   /* some selector matches binaries */
#define SENS_CFG_FOLLOW 4        /* some selector follows children/forks */
#define SENS_CFG_AT_EXIT 8       /* syscall: evaluate and emit at sys_exit (return value) */

/* Selector pid flags */
#define SENS_PID_NS 1
#define SENS_PID_FOLLOW 2

/* Namespaces */
#define SENS_NS_UTS 1
#define SENS_NS_IPC 2
#define SENS_NS_MNT 3
#define SENS_NS_PID 4
#define SENS_NS_PID_FOR_CHILDREN 5
#define SENS_NS_NET 6
#define SENS_NS_TIME 7
#define SENS_NS_TIME_FOR_CHILDREN 8
#define SENS_NS_CGROUP 9
#define SENS_NS_USER 10

/* Capability sets */
#define SENS_CAP_EFFECTIVE 1
#define SENS_CAP_INHERITABLE 2
#define SENS_CAP_PERMITTED 3

/* Rate limit scopes */
#define SENS_RL_THREAD 1
#define SENS_RL_PROCESS 2
#define SENS_RL_GLOBAL 3

struct sens_arg {
	__u8 kind;
	__u8 src;
	__u8 deref;
	__u8 size;      /* integer width in bytes */
	__u8 is_signed;
	__u8 resolve;   /* 1: a path to make absolute and normalise */
	__u8 has_dirfd; /* resolve against the dirfd at dirfd_off (same `from`) instead of the cwd */
	__u8 size_arg;  /* BUF: index of the arg holding the length; 0xff: `max` */
	__u16 offset;
	__u16 max;
	__u16 dirfd_off;
	__u8 ret_fd; /* syscall at exit: when it returned an fd, report/match the opened file's path */
	__u8 pad;
};

struct sens_match_arg {
	__u8 arg; /* index into sens_cfg.args */
	__u8 op;
	__u8 nvals;
	__u8 pad;
	__u32 str_first; /* strings: values are strs[str_first .. str_first + nvals) */
	__u64 vals[SENS_MAX_VALUES];
};

struct sens_match_pids {
	__u8 op;
	__u8 nvals;
	__u8 flags; /* SENS_PID_NS, SENS_PID_FOLLOW */
	__u8 pad[5];
	__u32 pids[SENS_MAX_VALUES];
};

struct sens_match_ns {
	__u8 ns;
	__u8 op;
	__u8 nvals;
	__u8 pad[5];
	__u32 inums[SENS_MAX_VALUES];
};

struct sens_match_caps {
	__u8 set;
	__u8 op;
	__u8 pad[6];
	__u64 mask;
};

/* One matchBinaries entry: the executable's path against strs[str_first .. str_first + nvals) */
struct sens_match_bin {
	__u8 op;
	__u8 nvals;
	__u8 follow; /* followChildren: a descendant of a matching process matches (at most one per selector) */
	__u8 pad;
	__u32 str_first;
};

struct sens_selector {
	__u8 nargs;
	__u8 nret;
	__u8 nbins;     /* matchBinaries entries (ANDed) */
	__u8 pad1[2];
	__u8 npids;     /* matchPIDs entries (ANDed) */
	__u8 pad0[2];
	__u8 nns;
	__u8 ncaps;
	__u8 actions;
	__u8 signal;
	__u8 rl_scope;
	__u8 pad[3];
	__u64 rl_ns; /* rate limit interval, 0: none */
	struct sens_match_arg args[SENS_MAX_MATCH_ARGS];
	struct sens_match_arg ret;
	struct sens_match_pids pids[SENS_MAX_PIDF];
	struct sens_match_ns ns[SENS_MAX_NS];
	struct sens_match_caps caps[SENS_MAX_CAPS];
	struct sens_match_bin bins[SENS_MAX_BINS];
};

struct sens_str {
	__u16 len; /* without NUL */
	__u8 pad[6];
	char s[SENS_STR_MAX];
};

struct sens_hook_cfg {
	__u32 policy_id;
	__u32 hook_id;
	__u8 kind;
	__u8 nargs;
	__u8 nsel;
	__u8 flags;
	__s32 syscall_nr;
	struct sens_arg args[SENS_MAX_ARGS];
	struct sens_selector sel[SENS_MAX_SELECTORS];
	struct sens_str strs[SENS_MAX_STRINGS];
};

/* The record sent to user space: this header, then per argument a sens_arg_rec and its payload
 * (8 bytes for integers, `len` bytes for strings/buffers) padded to 8 bytes. */
struct sens_event {
	struct sensorium_hdr hdr;
	__u32 policy_id;
	__u32 hook_id;
	__s64 retval;
	__u64 cgroup_id;
	__u8 sel;
	__u8 actions;
	__u8 flags;
	__u8 nargs;
	__u32 data_len;
};

struct sens_arg_rec {
	__u8 kind;
	__u8 flags;
	__u16 len;
	__u32 pad;
};

/* Payload of a SENS_ARG_SOCK argument (sensorium.selectors.SensSock). Ports in host order; addresses in
 * network order (IPv4 in the first 4 bytes). A sockaddr carries one address and port: it is stored as
 * both source and destination, and user space decides which operators may name it. An skb's are those
 * of its packet's headers, with its length in `len`. */
struct sens_sock {
	__u16 family;
	__u16 type;
	__u16 protocol;
	__u16 sport;
	__u16 dport;
	__u16 state;
	__u8 saddr[16];
	__u8 daddr[16];
	__u32 len; /* skb: the packet's length; 0 otherwise */
};

const volatile struct sens_hook_cfg sens_cfg = {};

/* Live policy mode: key 0 -> 0 enforcement, 1 monitoring. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} sens_mode SEC(".maps");

/* The policy's scope (SENS_CFG_CGROUP_SCOPED): filled by sensorium.bpf.scope.ScopeMap, see scope.h. */
SENS_SCOPE_MAP(sens_scope) sens_scope SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} sens_events SEC(".maps");

/* Counters (per CPU): 0 events posted, 1 ring full drops, 2 hits filtered by selectors, 3 signals sent,
 * 4 signal errors, 5 rate-limited. */
#define SENS_CNT_POSTED 0
#define SENS_CNT_DROPPED 1
#define SENS_CNT_FILTERED 2
#define SENS_CNT_SIGNALS 3
#define SENS_CNT_SIGERR 4
#define SENS_CNT_RATELIMITED 5
#define SENS_NCOUNTERS 8
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SENS_NCOUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} sens_counters SEC(".maps");

/* followChildren/followForks: tgid -> bit s (binaries) / bit 8+s (pids) of selectors it inherits. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 32768);
	__type(key, __u32);
	__type(value, __u32);
} sens_follow SEC(".maps");

struct sens_bin {
	__u32 len;
	__u32 pad;
	char path[SENS_STR_MAX];
};

/* tgid -> its executable's path, filled on first use, dropped at exec and exit. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, struct sens_bin);
} sens_bins SEC(".maps");

struct sens_rl_key {
	__u64 id;
	__u32 sel;
	__u32 hash;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct sens_rl_key);
	__type(value, __u64);
} sens_ratelimit SEC(".maps");

/* Syscalls evaluated at exit: the arguments captured at enter, by thread id. */
struct sens_saved {
	__u64 raw[6];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct sens_saved);
} sens_inflight SEC(".maps");

#define SENS_PATHBUF 1024
#define SENS_PATHMASK (SENS_PATHBUF - 1)

struct sens_scratch {
	struct sens_event ev;
	__u8 data[SENS_DATA_MAX + SENS_STR_MAX * 2];
	/* per-argument view of what was captured */
	__u64 ival[SENS_MAX_ARGS];
	__u16 off[SENS_MAX_ARGS]; /* offset into data of the payload */
	__u16 len[SENS_MAX_ARGS];
	__u8 trunc[SENS_MAX_ARGS];
	__u8 pad[3];
	__u64 raw[6]; /* syscall parameters */
	struct sens_bin bin;
	__u32 bin_ok;
	__u32 follow;
	/* path work areas */
	char walk[SENS_PATHBUF + SENS_STR_MAX];  /* d_path built backwards */
	char join[SENS_PATHBUF + SENS_STR_MAX];  /* dir + "/" + relative */
	__u32 depth;
	__u32 starts[SENS_PATH_DEPTH + 1];
	__s32 matched; /* the selector sens_finish chose (-1: none); lsm programs turn it into Override */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sens_scratch);
} sens_scratch_map SEC(".maps");

static __always_inline void sens_count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&sens_counters, &idx);

	if (v)
		*v += 1;
}

/* ------------------------------------------------------------------------------------------------ */
/* Paths                                                                                             */
/* ------------------------------------------------------------------------------------------------ */

/*
 * Write the absolute path of `path` at the END of s->walk (the string occupies
 * walk[start .. SENS_PATHBUF), NUL not included); returns start, or a negative value.
 * The walk climbs at most SENS_PATH_DEPTH components and crosses mount points; deeper paths are
 * reported from the deepest SENS_PATH_DEPTH components with a leading "/..." (never a false match on
 * an absolute rule, since that marker cannot be a real top-level component on the hosts we run).
 */
struct sens_walk_ctx {
	struct sens_scratch *s;
	struct dentry *dentry;
	struct mount *mnt;
	struct dentry *mnt_root; /* of mnt, read once per mount rather than once per component */
	int pos;
	int done;
};

/* One component of sens_walk_path, as a bpf_loop callback: verified once, not once per depth. */
static long sens_walk_step(__u32 i, struct sens_walk_ctx *c)
{
	struct sens_scratch *s = c->s;
	struct dentry *dentry = c->dentry;
	struct mount *mnt = c->mnt;
	if (dentry == c->mnt_root) {
		struct mount *mparent = BPF_CORE_READ(mnt, mnt_parent);

		if (mparent == mnt) {
			c->done = 1; /* the root of the namespace */
			return 1;
		}
		c->dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
		c->mnt = mparent;
		c->mnt_root = BPF_CORE_READ(mparent, mnt.mnt_root);
		return 0;
	}
	struct dentry *parent;
	const unsigned char *name;
	__u32 len;

	/* d_parent and d_name (hash_len, name) are adjacent in struct dentry: read them in one helper call
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
	if (dentry == parent) {
		c->done = 1;
		return 1;
	}
	int pos = c->pos;

	if (len > 255)
		len = 255;
	if (pos - (int)len - 1 < 0 || pos > SENS_PATHBUF)
		return 1;
	pos -= len;
	bpf_probe_read_kernel(&s->walk[pos & SENS_PATHMASK], len & 255, name);
	pos -= 1;
	s->walk[pos & SENS_PATHMASK] = '/';
	c->pos = pos;
	c->dentry = parent;
	return 0;
}

/*
 * Write the absolute path of `path` at the END of s->walk (the string occupies
 * walk[start .. SENS_PATHBUF), NUL not included); returns start, or a negative value.
 * The walk takes at most SENS_PATH_DEPTH steps (components and mount crossings); a deeper path is
 * reported from its deepest components with a leading "/..." so it cannot equal an absolute rule.
 */
static __noinline int sens_walk_path(struct sens_scratch *s, struct path *path)
{
	struct sens_walk_ctx c = {};
	struct vfsmount *vfsmnt = BPF_CORE_READ(path, mnt);
	int pos;

	c.s = s;
	c.dentry = BPF_CORE_READ(path, dentry);
	c.mnt = container_of(vfsmnt, struct mount, mnt);
	c.mnt_root = BPF_CORE_READ(vfsmnt, mnt_root);
	c.pos = SENS_PATHBUF;
	bpf_loop(SENS_PATH_DEPTH, sens_walk_step, &c, 0);
	pos = c.pos;
	if (!c.done && pos >= 4 && pos <= SENS_PATHBUF) {
		pos -= 4;
		s->walk[pos & SENS_PATHMASK] = '/';
		s->walk[(pos + 1) & SENS_PATHMASK] = '.';
		s->walk[(pos + 2) & SENS_PATHMASK] = '.';
		s->walk[(pos + 3) & SENS_PATHMASK] = '.';
	}
	if (pos == SENS_PATHBUF) {
		pos -= 1;
		s->walk[pos & SENS_PATHMASK] = '/';
	}
	return pos;
}

struct sens_norm_ctx {
	struct sens_scratch *s;
	__u8 *out;     /* destination (SENS_STR_MAX bytes) */
	__u32 in_len;
	__u32 j;        /* write position in out */
	__u32 comp;     /* start of the current component in out */
	__u32 depth;
	__u32 overflow;
};

/* One byte of sens_normalize, as a bpf_loop callback (verified once whatever the path length). */
static long sens_norm_step(__u32 i, struct sens_norm_ctx *c)
{
	struct sens_scratch *s = c->s;
	__u8 *out = c->out;
	char ch = 0;

	if (i < c->in_len)
		ch = s->join[i & SENS_PATHMASK];
	if (ch == '/' || ch == 0) {
		__u32 clen = c->j - c->comp;
		__u32 comp = c->comp & (SENS_STR_MAX - 1);

		if (clen == 0) {
			/* empty component ("//"): nothing */
		} else if (clen == 1 && out[comp] == '.') {
			c->j = c->comp;
		} else if (clen == 2 && out[comp] == '.' && out[(comp + 1) & (SENS_STR_MAX - 1)] == '.') {
			c->j = c->comp;
			if (c->depth > 0) {
				c->depth--;
				c->j = s->starts[c->depth & SENS_PATH_DEPTH];
			}
		} else {
			if (c->depth < SENS_PATH_DEPTH)
				s->starts[c->depth & SENS_PATH_DEPTH] = c->comp;
			c->depth++;
			if (c->j < SENS_STR_MAX - 1) {
				out[c->j & (SENS_STR_MAX - 1)] = '/';
				c->j++;
			} else {
				c->overflow = 1;
			}
		}
		c->comp = c->j;
		if (ch == 0)
			return 1;
		return 0;
	}
	if (c->j < SENS_STR_MAX - 1) {
		out[c->j & (SENS_STR_MAX - 1)] = ch;
		c->j++;
	} else {
		c->overflow = 1;
	}
	return 0;
}

/*
 * Collapse s->join[0 .. in_len) (an absolute path) into `out`: "." and empty components dropped,
 * ".." removes the previous component (never above "/"). Returns the length (without NUL).
 */
static __always_inline __u32 sens_normalize(struct sens_scratch *s, __u8 *out, __u32 in_len, __u8 *trunc)
{
	struct sens_norm_ctx c = { .s = s, .out = out, .in_len = in_len, .j = 1, .comp = 1 };

	out[0] = '/';
	bpf_loop(SENS_PATHBUF + 1, sens_norm_step, &c, 0);
	if (c.j > 1 && out[(c.j - 1) & (SENS_STR_MAX - 1)] == '/')
		c.j--;
	if (c.overflow)
		*trunc = 1;
	out[c.j & (SENS_STR_MAX - 1)] = 0;
	return c.j & (SENS_STR_MAX - 1);
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

/*
 * Make the path string at `out` (length *len, as the process gave it) absolute and normalised, in place.
 * A relative path is joined to the directory of `dirfd` (AT_FDCWD or no dirfd: the cwd).
 */
static __noinline __u32 sens_resolve(struct sens_scratch *s, __u8 *out, __u32 len, __s64 dirfd, __u8 *trunc)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u32 n = 0;
	int start;

	if (len > SENS_STR_MAX - 1)
		len = SENS_STR_MAX - 1;
	if (len > 0 && out[0] == '/') {
		/* Fast path (the common case): an absolute path with no "." or ".." component and no "//" is
		 * already normal. A plain loop: a bpf_loop callback per byte costs more than the check. */
		__u32 i;
		char prev = 0;
		int clean = 1;

		for (i = 0; i < SENS_STR_MAX - 1; i++) {
			if (i >= len)
				break;
			char c = out[i];

			if (prev == '/' && (c == '.' || c == '/')) {
				clean = 0;
				break;
			}
			prev = c;
		}
		if (clean && !(len > 1 && prev == '/'))
			return len;
		bpf_probe_read_kernel(s->join, SENS_BOUND(len, SENS_STR_MAX - 1), out);
		n = len;
	} else {
		struct path dir;

		if (dirfd == -100 /* AT_FDCWD */) {
			dir.dentry = BPF_CORE_READ(task, fs, pwd.dentry);
			dir.mnt = BPF_CORE_READ(task, fs, pwd.mnt);
		} else {
			struct file *f = sens_fd_file(task, dirfd);

			if (!f)
				return len;
			dir.dentry = BPF_CORE_READ(f, f_path.dentry);
			dir.mnt = BPF_CORE_READ(f, f_path.mnt);
		}
		start = sens_walk_path(s, &dir);
		if (start < 0 || start > SENS_PATHBUF)
			return len;
		n = SENS_PATHBUF - start;
		if (n > SENS_PATHBUF - SENS_STR_MAX)
			n = SENS_PATHBUF - SENS_STR_MAX;
		bpf_probe_read_kernel(s->join, n & SENS_PATHMASK, &s->walk[start & SENS_PATHMASK]);
		s->join[n & SENS_PATHMASK] = '/';
		n += 1;
		bpf_probe_read_kernel(&s->join[n & SENS_PATHMASK], SENS_BOUND(len, SENS_STR_MAX - 1), out);
		n += len;
	}
	return sens_normalize(s, out, n, trunc);
}

/* The executable of the current process into s->bin (cached per tgid). */
static __noinline int sens_load_binary(struct sens_scratch *s)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct sens_bin *b = bpf_map_lookup_elem(&sens_bins, &tgid);

	if (b) {
		bpf_probe_read_kernel(&s->bin, sizeof(s->bin), b);
		return 0;
	}
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct file *exe = BPF_CORE_READ(task, mm, exe_file);
	struct path p;

	if (!exe) {
		s->bin.len = 0; /* kernel thread: no binary */
		s->bin.path[0] = 0;
		return 0;
	}
	p.dentry = BPF_CORE_READ(exe, f_path.dentry);
	p.mnt = BPF_CORE_READ(exe, f_path.mnt);
	int start = sens_walk_path(s, &p);

	if (start < 0 || start > SENS_PATHBUF)
		return -1;
	__u32 n = SENS_PATHBUF - start;

	if (n > SENS_STR_MAX - 1)
		n = SENS_STR_MAX - 1;
	bpf_probe_read_kernel(s->bin.path, n & (SENS_STR_MAX - 1), &s->walk[start & SENS_PATHMASK]);
	s->bin.path[n & (SENS_STR_MAX - 1)] = 0;
	s->bin.len = n;
	bpf_map_update_elem(&sens_bins, &tgid, &s->bin, BPF_ANY);
	return 0;
}

/* ------------------------------------------------------------------------------------------------ */
/* Matching                                                                                          */
/* ------------------------------------------------------------------------------------------------ */

/* String `a` (length alen, in scratch memory) against value `v` with op EQ/PREFIX/POSTFIX. */
static __always_inline int sens_str_match(struct sens_scratch *s, const __u8 *a, __u32 alen, __u32 vi, __u8 op)
{
	const volatile struct sens_str *v = &sens_cfg.strs[vi & (SENS_MAX_STRINGS - 1)];
	__u32 vlen = v->len;
	const __u8 *p = a;
	__u32 i;

	if (vlen > SENS_STR_MAX - 1)
		return 0;
	if (op == SENS_OP_EQ && alen != vlen)
		return 0;
	if (alen < vlen)
		return 0;
	if (op == SENS_OP_POSTFIX)
		p = a + ((alen - vlen) & (SENS_STR_MAX - 1));
	for (i = 0; i < SENS_STR_MAX - 1; i++) {
		if (i >= vlen)
			break;
		if (p[i] != v->s[i])
			return 0;
	}
	return 1;
}

static __always_inline int sens_match_str_op(struct sens_scratch *s, const __u8 *a, __u32 alen,
					     __u32 first, __u32 nvals, __u8 op)
{
	__u8 base = op;
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
		if (sens_str_match(s, a, alen, first + k, base))
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

static __always_inline __u32 sens_ns_inum(struct task_struct *task, __u8 ns)
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
		return BPF_CORE_READ(task, nsproxy, time_ns, ns.inum);
	case SENS_NS_TIME_FOR_CHILDREN:
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

static __always_inline __u64 sens_caps(struct task_struct *task, __u8 set)
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

/*
 * The source or destination address of k (16 bytes, network order; IPv4 in the first 4) against the CIDR
 * value strs[vi]: s[0..16) the network, s[16..32) its mask, len the family (2 or 10). An IPv6 CIDR never
 * matches an IPv4 address; an IPv4 CIDR matches an IPv4 address and an IPv4-mapped IPv6 one
 * (::ffff:a.b.c.d, what a dual-stack socket connects to for an IPv4 peer): otherwise a rule on 10.0.0.0/8
 * could be passed by the same connection made from an IPv6 socket.
 */
static __always_inline int sens_addr_in(const struct sens_sock *k, int dst, __u32 vi)
{
	const volatile struct sens_str *v = &sens_cfg.strs[vi & (SENS_MAX_STRINGS - 1)];
	const volatile __u32 *net = (const volatile __u32 *)&v->s[0];
	const volatile __u32 *mask = (const volatile __u32 *)&v->s[16];
	__u32 a[4];
	int w;

	__builtin_memcpy(a, dst ? k->daddr : k->saddr, 16);
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

/* A socket operator on a SENS_ARG_SOCK argument. */
static __always_inline int sens_match_sock(const struct sens_sock *k, const volatile struct sens_match_arg *m)
{
	__u8 op = m->op;
	int neg = op == SENS_OP_NOTSADDR || op == SENS_OP_NOTDADDR || op == SENS_OP_NOTSPORT || op == SENS_OP_NOTDPORT;
	__u32 q;

	if (op >= SENS_OP_SADDR && op <= SENS_OP_NOTDADDR) {
		int dst = op == SENS_OP_DADDR || op == SENS_OP_NOTDADDR;

		for (q = 0; q < SENS_MAX_VALUES; q++) {
			if (q >= m->nvals)
				break;
			if (sens_addr_in(k, dst, m->str_first + q))
				return !neg;
		}
		return neg;
	}
	__u16 v;

	if (op == SENS_OP_SPORT || op == SENS_OP_NOTSPORT)
		v = k->sport;
	else if (op == SENS_OP_DPORT || op == SENS_OP_NOTDPORT)
		v = k->dport;
	else if (op == SENS_OP_PROTOCOL)
		v = k->protocol;
	else if (op == SENS_OP_FAMILY)
		v = k->family;
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

/* Does selector `i` match the captured event? */
static __always_inline int sens_selector_match(struct sens_scratch *s, __u32 i, struct task_struct *task)
{
	const volatile struct sens_selector *sel = &sens_cfg.sel[i];
	__u32 k;

	/* cheapest first: pids, then arguments, then binaries (may walk a path once per process) */
	for (k = 0; k < SENS_MAX_PIDF; k++) {
		if (k >= sel->npids)
			break;
		const volatile struct sens_match_pids *m = &sel->pids[k];
		__u32 pid = (m->flags & SENS_PID_NS) ? sens_ns_pid(task) : (bpf_get_current_pid_tgid() >> 32);
		int found = 0;
		__u32 q;

		for (q = 0; q < SENS_MAX_VALUES; q++) {
			if (q >= m->nvals)
				break;
			if (pid == m->pids[q])
				found = 1;
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
		__u32 a = m->arg;

		if (a >= SENS_MAX_ARGS)
			return 0;
		if (sens_cfg.args[a].kind == SENS_ARG_INT) {
			if (!sens_match_int(s->ival[a], sens_cfg.args[a].is_signed, m))
				return 0;
		} else if (sens_cfg.args[a].kind == SENS_ARG_SOCK) {
			if (m->op < SENS_OP_SADDR || s->len[a] != sizeof(struct sens_sock))
				return 0;
			if (!sens_match_sock((const struct sens_sock *)&s->data[s->off[a] & (SENS_DATA_MAX - 1)], m))
				return 0;
		} else {
			__u32 off = s->off[a] & (SENS_DATA_MAX - 1);
			__u32 len = s->len[a];

			if (m->op == SENS_OP_GT || m->op == SENS_OP_LT || m->op == SENS_OP_MASK)
				return 0;
			if (len > SENS_STR_MAX - 1)
				len = SENS_STR_MAX - 1;
			if (!sens_match_str_op(s, &s->data[off], len, m->str_first, m->nvals, m->op))
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
		__u32 q;

		for (q = 0; q < SENS_MAX_VALUES; q++) {
			if (q >= m->nvals)
				break;
			if (inum == m->inums[q])
				found = 1;
		}
		if ((m->op == SENS_OP_IN) != found)
			return 0;
	}
	for (k = 0; k < SENS_MAX_CAPS; k++) {
		if (k >= sel->ncaps)
			break;
		const volatile struct sens_match_caps *m = &sel->caps[k];
		int any = (sens_caps(task, m->set) & m->mask) != 0;

		if ((m->op == SENS_OP_IN) != any)
			return 0;
	}
	/* matchBinaries entries are ANDed (e.g. Prefix /usr/bin/ and NotIn /usr/bin/cat) */
	for (k = 0; k < SENS_MAX_BINS; k++) {
		if (k >= sel->nbins)
			break;
		const volatile struct sens_match_bin *b = &sel->bins[k];
		int ok;

		if (!s->bin_ok) {
			if (sens_load_binary(s) < 0)
				return 0;
			s->bin_ok = 1;
		}
		ok = sens_match_str_op(s, (const __u8 *)s->bin.path, s->bin.len & (SENS_STR_MAX - 1),
				       b->str_first, b->nvals, b->op);
		/* followChildren: a descendant of a matching process matches too (In/Prefix/Postfix only) */
		if (!ok && b->follow)
			ok = (s->follow & (1u << i)) != 0;
		if (!ok)
			return 0;
	}
	return 1;
}

/* ------------------------------------------------------------------------------------------------ */
/* Capture                                                                                           */
/* ------------------------------------------------------------------------------------------------ */

static __always_inline __u64 sens_raw_value(void *ctx, struct sens_scratch *s, __u8 from, __u16 offset, __u8 size,
					    __u8 is_signed)
{
	__u64 v = 0;

	if (from == SENS_FROM_CTX) {
		if (size == 8) {
			bpf_probe_read_kernel(&v, 8, ctx + offset);
		} else if (size == 4) {
			__u32 x = 0;

			bpf_probe_read_kernel(&x, 4, ctx + offset);
			v = is_signed ? (__u64)(__s64)(__s32)x : x;
		} else if (size == 2) {
			__u16 x = 0;

			bpf_probe_read_kernel(&x, 2, ctx + offset);
			v = is_signed ? (__u64)(__s64)(__s16)x : x;
		} else {
			__u8 x = 0;

			bpf_probe_read_kernel(&x, 1, ctx + offset);
			v = is_signed ? (__u64)(__s64)(__s8)x : x;
		}
	} else if (from == SENS_FROM_RAW) {
		bpf_probe_read_kernel(&v, 8, &((struct bpf_raw_tracepoint_args *)ctx)->args[offset & 7]);
	} else if (from == SENS_FROM_SYSCALL) {
		v = s->raw[offset < 6 ? offset : 0];
	} else if (from == SENS_FROM_RETVAL) {
		v = (__u64)s->ev.retval;
	}
	if (from != SENS_FROM_CTX && size < 8) {
		if (size == 4)
			v = is_signed ? (__u64)(__s64)(__s32)v : (__u32)v;
		else if (size == 2)
			v = is_signed ? (__u64)(__s64)(__s16)v : (__u16)v;
		else if (size == 1)
			v = is_signed ? (__u64)(__s64)(__s8)v : (__u8)v;
	}
	return v;
}

/* Read a sockaddr (kernel or user pointer) into k: family, and for AF_INET/AF_INET6 the address and port,
 * stored as both source and destination (see struct sens_sock). Returns 0, or -1 if unreadable. */
static __always_inline int sens_read_sockaddr(struct sens_sock *k, __u64 ptr, int user)
{
	struct {
		__u16 family;
		__u16 port; /* network order */
		__u32 flow_or_addr4;
		__u8 addr6[16];
		__u32 scope;
	} sa = {};
	long err;

	/* sockaddr_in is 16 bytes, sockaddr_in6 28: read the short form first (a 28-byte read of an
	 * IPv4 address at the end of a page would fail) */
	err = user ? bpf_probe_read_user(&sa, 16, (void *)ptr) : bpf_probe_read_kernel(&sa, 16, (void *)ptr);
	if (err < 0)
		err = user ? bpf_probe_read_user(&sa, 2, (void *)ptr) : bpf_probe_read_kernel(&sa, 2, (void *)ptr);
	if (err < 0)
		return -1;
	k->family = sa.family;
	if (sa.family == 2 /* AF_INET */) {
		__builtin_memcpy(k->saddr, &sa.flow_or_addr4, 4);
		__builtin_memcpy(k->daddr, &sa.flow_or_addr4, 4);
	} else if (sa.family == 10 /* AF_INET6 */) {
		err = user ? bpf_probe_read_user(&sa, 28, (void *)ptr) : bpf_probe_read_kernel(&sa, 28, (void *)ptr);
		if (err < 0)
			return -1;
		__builtin_memcpy(k->saddr, sa.addr6, 16);
		__builtin_memcpy(k->daddr, sa.addr6, 16);
	} else {
		return 0;
	}
	k->sport = bpf_ntohs(sa.port);
	k->dport = k->sport;
	return 0;
}

/* A struct sock (kernel pointer) into k. Returns 0, or -1 for a NULL sock. */
static __always_inline int sens_read_sock(struct sens_sock *k, struct sock *sk)
{
	if (!sk)
		return -1;
	k->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	k->type = BPF_CORE_READ(sk, sk_type);
	k->protocol = BPF_CORE_READ(sk, sk_protocol);
	k->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	k->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	k->state = BPF_CORE_READ(sk, __sk_common.skc_state);
	if (k->family == 10 /* AF_INET6 */) {
		BPF_CORE_READ_INTO(&k->saddr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO(&k->daddr, sk, __sk_common.skc_v6_daddr);
	} else if (k->family == 2 /* AF_INET */) {
		BPF_CORE_READ_INTO((__u32 *)k->saddr, sk, __sk_common.skc_rcv_saddr);
		BPF_CORE_READ_INTO((__u32 *)k->daddr, sk, __sk_common.skc_daddr);
	}
	return 0;
}

/* The packet headers of an skb into k: IPv4 or IPv6 (by the version nibble at the network header), the
 * protocol (IPv6: the first next-header, extension headers are not walked), and the ports of TCP, UDP,
 * UDP-Lite and SCTP. Wire offsets, not struct iphdr: they are fixed by the protocols, not by the kernel. */
static __always_inline int sens_read_skb(struct sens_sock *k, struct sk_buff *skb)
{
	unsigned char *head;
	__u16 nh, th;
	__u8 vb = 0, proto = 0;
	__u16 ports[2];

	if (!skb)
		return -1;
	head = BPF_CORE_READ(skb, head);
	nh = BPF_CORE_READ(skb, network_header);
	th = BPF_CORE_READ(skb, transport_header);
	k->len = BPF_CORE_READ(skb, len);
	if (nh == 0xffff)
		return 0; /* no network header yet */
	if (bpf_probe_read_kernel(&vb, 1, head + nh) < 0)
		return -1;
	if ((vb >> 4) == 4) {
		k->family = 2;
		bpf_probe_read_kernel(&proto, 1, head + nh + 9);
		bpf_probe_read_kernel(k->saddr, 4, head + nh + 12);
		bpf_probe_read_kernel(k->daddr, 4, head + nh + 16);
		if (th == 0xffff || th <= nh)
			th = nh + (vb & 0xf) * 4;
	} else if ((vb >> 4) == 6) {
		k->family = 10;
		bpf_probe_read_kernel(&proto, 1, head + nh + 6);
		bpf_probe_read_kernel(k->saddr, 16, head + nh + 8);
		bpf_probe_read_kernel(k->daddr, 16, head + nh + 24);
		if (th == 0xffff || th <= nh)
			th = nh + 40;
	} else {
		return 0;
	}
	k->protocol = proto;
	if ((proto == 6 || proto == 17 || proto == 132 || proto == 136) &&
	    bpf_probe_read_kernel(ports, 4, head + th) == 0) {
		k->sport = bpf_ntohs(ports[0]);
		k->dport = bpf_ntohs(ports[1]);
	}
	return 0;
}

/* A sock or sockaddr argument into k (a function of its own: one copy of the readers, and struct
 * sens_sock in the object's BTF for the layout check). Returns 0, or -1 if unreadable. */
static __noinline int sens_capture_sock(struct sens_sock *k, __u64 raw, __u8 deref)
{
	if (!k)
		return -1;
	__builtin_memset(k, 0, sizeof(*k));
	if (deref == SENS_DEREF_SOCK)
		return sens_read_sock(k, (struct sock *)raw);
	if (deref == SENS_DEREF_SKB)
		return sens_read_skb(k, (struct sk_buff *)raw);
	return sens_read_sockaddr(k, raw, deref == SENS_DEREF_USER_SOCKADDR);
}

/* Capture every configured argument into s->data; returns the data length. */
static __always_inline __u32 sens_capture(void *ctx, struct sens_scratch *s)
{
	__u32 pos = 0;
	__u32 a;

	for (a = 0; a < SENS_MAX_ARGS; a++) {
		if (a >= sens_cfg.nargs)
			break;
		const volatile struct sens_arg *d = &sens_cfg.args[a];
		struct sens_arg_rec *rec;
		__u32 p = pos & (SENS_DATA_MAX - 1);
		__u8 *payload;
		long n = 0;
		__u64 raw;

		if (pos + sizeof(*rec) + SENS_STR_MAX > SENS_DATA_MAX)
			break;
		rec = (struct sens_arg_rec *)&s->data[p];
		payload = &s->data[(p + sizeof(*rec)) & (SENS_DATA_MAX - 1)];
		rec->kind = d->kind;
		rec->flags = 0;
		rec->pad = 0;
		s->off[a] = (p + sizeof(*rec)) & (SENS_DATA_MAX - 1);
		s->trunc[a] = 0;

		if (d->kind == SENS_ARG_INT) {
			raw = sens_raw_value(ctx, s, d->src, d->offset, d->size, d->is_signed);
			s->ival[a] = raw;
			*(__u64 *)payload = raw;
			rec->len = 8;
			s->len[a] = 8;
			pos += sizeof(*rec) + 8;
			continue;
		}
		if (d->kind == SENS_ARG_SOCK) {
			raw = sens_raw_value(ctx, s, d->src, d->offset, 8, 0);
			rec->len = sizeof(struct sens_sock);
			s->len[a] = sizeof(struct sens_sock);
			if (sens_capture_sock((struct sens_sock *)payload, raw, d->deref) < 0) {
				rec->flags |= SENS_ARGF_ERR;
				s->len[a] = 0; /* unreadable: matches no socket operator, Not* included */
			}
			pos += sizeof(*rec) + sizeof(struct sens_sock);
			continue;
		}
		__u32 max = d->max;

		if (max > SENS_STR_MAX)
			max = SENS_STR_MAX;
		if (max == 0)
			max = SENS_STR_MAX;
		if (d->deref == SENS_DEREF_DATALOC) {
			__u32 loc = (__u32)sens_raw_value(ctx, s, SENS_FROM_CTX, d->offset, 4, 0);
			__u32 doff = loc & 0xffff;
			__u32 dlen = loc >> 16;

			if (dlen > max)
				dlen = max;
			n = bpf_probe_read_kernel_str(payload, dlen & (SENS_STR_MAX - 1) ? dlen : 1, ctx + doff);
		} else if (d->deref == SENS_DEREF_INLINE) {
			n = bpf_probe_read_kernel_str(payload, max, ctx + d->offset);
		} else if (d->deref == SENS_DEREF_BINPRM || d->deref == SENS_DEREF_FD_PATH || d->deref == SENS_DEREF_FILE ||
			   d->deref == SENS_DEREF_PATH) {
			struct file *f;
			struct path pth;

			raw = sens_raw_value(ctx, s, d->src, d->offset, 8, 0);
			if (d->deref == SENS_DEREF_BINPRM)
				f = BPF_CORE_READ((struct linux_binprm *)raw, file);
			else if (d->deref == SENS_DEREF_FILE)
				f = (struct file *)raw;
			else if (d->deref == SENS_DEREF_PATH)
				f = NULL;
			else
				f = sens_fd_file((struct task_struct *)bpf_get_current_task(), (__s64)raw);
			n = -1;
			if (d->deref == SENS_DEREF_PATH && raw) {
				pth.dentry = BPF_CORE_READ((struct path *)raw, dentry);
				pth.mnt = BPF_CORE_READ((struct path *)raw, mnt);
				f = (struct file *)1; /* walk below */
			} else if (f) {
				pth.dentry = BPF_CORE_READ(f, f_path.dentry);
				pth.mnt = BPF_CORE_READ(f, f_path.mnt);
			}
			if (f) {
				int start = sens_walk_path(s, &pth);

				if (start >= 0 && start <= SENS_PATHBUF) {
					__u32 wl = SENS_PATHBUF - start;

					if (wl > max - 1)
						wl = max - 1;
					bpf_probe_read_kernel(payload, wl & (SENS_STR_MAX - 1), &s->walk[start & SENS_PATHMASK]);
					payload[wl & (SENS_STR_MAX - 1)] = 0;
					n = wl + 1;
				}
			}
		} else if (d->ret_fd && (s->ev.flags & SENS_EV_HAS_RET) && s->ev.retval >= 0) {
			n = 1; /* the opened file's path replaces the string below: no need to read it */
			payload[0] = 0;
		} else {
			raw = sens_raw_value(ctx, s, d->src, d->offset, 8, 0);
			if (d->deref == SENS_DEREF_USER_BUF) {
				__u64 want = max;

				if (d->size_arg < SENS_MAX_ARGS) {
					/* read the size argument itself: it may be declared after the buffer */
					const volatile struct sens_arg *sz = &sens_cfg.args[d->size_arg];

					want = sens_raw_value(ctx, s, sz->src, sz->offset, sz->size, 0);
				}
				if (want > max) {
					want = max;
					s->trunc[a] = 1;
				}
				n = bpf_probe_read_user(payload, want & (SENS_STR_MAX - 1) ? want & (SENS_STR_MAX - 1) : 0, (void *)raw);
				n = n < 0 ? n : (long)(want & (SENS_STR_MAX - 1));
				if (n >= 0)
					n += 1; /* bytes, not a string: keep the str convention (len + 1) */
			} else if (d->deref == SENS_DEREF_USER_STR) {
				n = bpf_probe_read_user_str(payload, max, (void *)raw);
			} else {
				n = bpf_probe_read_kernel_str(payload, max, (void *)raw);
			}
		}
		__u32 len = 0;

		if (n <= 0) {
			rec->flags |= SENS_ARGF_ERR;
			payload[0] = 0;
		} else {
			len = (__u32)(n - 1);
			if (len >= max - 1 && d->kind == SENS_ARG_STR)
				s->trunc[a] = 1;
		}
		if (d->ret_fd && (s->ev.flags & SENS_EV_HAS_RET) && s->ev.retval >= 0) {
			/* What was really opened: the returned fd's file (symlinks, "..", dirfd all resolved by
			 * the kernel's own lookup), not the string the process passed. */
			struct file *rf = sens_fd_file((struct task_struct *)bpf_get_current_task(), s->ev.retval);

			if (rf) {
				struct path rp;

				rp.dentry = BPF_CORE_READ(rf, f_path.dentry);
				rp.mnt = BPF_CORE_READ(rf, f_path.mnt);
				int start = sens_walk_path(s, &rp);

				if (start >= 0 && start <= SENS_PATHBUF) {
					__u32 wl = SENS_PATHBUF - start;

					if (wl > SENS_STR_MAX - 1)
						wl = SENS_STR_MAX - 1;
					bpf_probe_read_kernel(payload, wl & (SENS_STR_MAX - 1), &s->walk[start & SENS_PATHMASK]);
					payload[wl & (SENS_STR_MAX - 1)] = 0;
					len = wl;
					rec->flags &= ~SENS_ARGF_ERR;
					goto resolved;
				}
			}
			/* the fd is already gone (another thread closed it): fall back to the string */
			n = bpf_probe_read_user_str(payload, max, (void *)sens_raw_value(ctx, s, d->src, d->offset, 8, 0));
			len = n > 0 ? (__u32)(n - 1) : 0;
			if (n <= 0) {
				rec->flags |= SENS_ARGF_ERR;
				payload[0] = 0;
			}
		}
		if (d->resolve && len > 0 && !(rec->flags & SENS_ARGF_ERR)) {
			__s64 dirfd = -100;

			if (d->has_dirfd)
				dirfd = (__s64)(__s32)sens_raw_value(ctx, s, d->src, d->dirfd_off, 4, 1);
			len = sens_resolve(s, payload, len, dirfd, &s->trunc[a]);
		}
resolved:
		len &= (SENS_STR_MAX - 1);
		if (s->trunc[a])
			rec->flags |= SENS_ARGF_TRUNC;
		rec->len = len;
		s->len[a] = len;
		pos += sizeof(*rec) + ((len + 7) & ~7);
	}
	return pos;
}

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

static __always_inline struct sens_scratch *sens_begin(void)
{
	__u32 zero = 0;

	if ((sens_cfg.flags & SENS_CFG_CGROUP_SCOPED) && !sens_task_in_scope(&sens_scope))
		return NULL;
	return bpf_map_lookup_elem(&sens_scratch_map, &zero);
}

static __always_inline __u64 sens_rl_hash(struct sens_scratch *s, __u32 len)
{
	/* FNV-1a over the first 64 bytes of every argument's data: "the same arguments" for the limit */
	__u32 h = 2166136261u;
	__u32 i;

	for (i = 0; i < 256; i++) {
		if (i >= len)
			break;
		h ^= s->data[i & (SENS_DATA_MAX - 1)];
		h *= 16777619u;
	}
	return h;
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
			if (sens_selector_match(s, i, task)) {
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
		key.hash = sens_rl_hash(s, datalen);
		last = bpf_map_lookup_elem(&sens_ratelimit, &key);
		if (last && now - *last < rl_ns) {
			sens_count(SENS_CNT_RATELIMITED);
			return 0;
		}
		bpf_map_update_elem(&sens_ratelimit, &key, &now, BPF_ANY);
	}
	__u32 size = sizeof(struct sens_event) + datalen;

	if (size > sizeof(struct sens_event) + SENS_DATA_MAX)
		size = sizeof(struct sens_event) + SENS_DATA_MAX;
	sensorium_hdr_fill(&s->ev.hdr, SENS_REC_HOOK, size);
	s->ev.policy_id = sens_cfg.policy_id;
	s->ev.hook_id = sens_cfg.hook_id;
	s->ev.cgroup_id = bpf_get_current_cgroup_id();
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

/* ------------------------------------------------------------------------------------------------ */
/* Programs                                                                                          */
/* ------------------------------------------------------------------------------------------------ */

SEC("tracepoint")
int sens_tp(void *ctx)
{
	struct sens_scratch *s = sens_begin();

	if (!s)
		return 0;
	s->ev.flags = 0;
	s->ev.retval = 0;
	return sens_run(ctx, s);
}

SEC("raw_tp")
int sens_raw(struct bpf_raw_tracepoint_args *ctx)
{
	struct sens_scratch *s = sens_begin();

	if (!s)
		return 0;
	s->ev.flags = 0;
	s->ev.retval = 0;
	return sens_run(ctx, s);
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

static __always_inline void sens_read_regs(struct sens_scratch *s, struct pt_regs *regs)
{
	struct pt_regs r;

	/* one helper call for the whole frame instead of six (each probe read costs ~30 ns in a VM);
	 * field offsets below are still CO-RE relocated (vmlinux.h types preserve access indexes) */
	bpf_probe_read_kernel(&r, sizeof(r), regs);
	s->raw[0] = r.di;
	s->raw[1] = r.si;
	s->raw[2] = r.dx;
	s->raw[3] = r.r10;
	s->raw[4] = r.r8;
	s->raw[5] = r.r9;
}

/* raw_tp sys_enter(struct pt_regs *regs, long id): filtered by syscall number first, so every other
 * syscall costs one compare. */
/* A 32-bit (compat) task's syscall numbers are another table: never match them against x86_64's. */
static __always_inline int sens_task_compat(void)
{
#if defined(__TARGET_ARCH_x86)
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();

	return BPF_CORE_READ(t, thread_info.status) & 0x0002; /* TS_COMPAT */
#else
	return 0;
#endif
}

SEC("raw_tp/sys_enter")
int sens_sys_enter(struct bpf_raw_tracepoint_args *ctx)
{
	if ((long)ctx->args[1] != sens_cfg.syscall_nr)
		return 0;
	if (sens_task_compat())
		return 0;
	struct sens_scratch *s = sens_begin();

	if (!s)
		return 0;
	sens_read_regs(s, (struct pt_regs *)ctx->args[0]);
	if (sens_cfg.flags & SENS_CFG_AT_EXIT) {
		sens_stash(s);
		return 0;
	}
	s->ev.flags = 0;
	s->ev.retval = 0;
	return sens_run(ctx, s);
}

/* raw_tp sys_exit(struct pt_regs *regs, long ret) */
SEC("raw_tp/sys_exit")
int sens_sys_exit(struct bpf_raw_tracepoint_args *ctx)
{
	struct pt_regs *regs = (struct pt_regs *)ctx->args[0];

	/* every syscall of the machine passes here: the number first, the per-thread lookup after */
	if ((long)BPF_CORE_READ(regs, orig_ax) != sens_cfg.syscall_nr)
		return 0;
	struct sens_scratch *s = sens_unstash();

	if (!s)
		return 0;
	s->ev.retval = (__s64)ctx->args[1];
	s->ev.flags = SENS_EV_HAS_RET;
	return sens_run(ctx, s);
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
	if (sens_cfg.flags & SENS_CFG_AT_EXIT) {
		sens_stash(s);
		return 0;
	}
	s->ev.flags = 0;
	s->ev.retval = 0;
	return sens_run(ctx, s);
}

SEC("uretprobe")
int sens_uretprobe(struct pt_regs *ctx)
{
	struct sens_scratch *s = sens_unstash();

	if (!s)
		return 0;
	s->ev.retval = (__s64)PT_REGS_RC(ctx);
	s->ev.flags = SENS_EV_HAS_RET;
	return sens_run(ctx, s);
}

/* Process tracking for followChildren/followForks and the binary cache. */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(sens_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 ptgid = BPF_CORE_READ(parent, tgid);
	__u32 ctgid = BPF_CORE_READ(child, tgid);
	__u32 zero = 0, bits = 0, i;
	__u32 *f;

	if (ptgid == ctgid)
		return 0; /* a thread: same process */
	f = bpf_map_lookup_elem(&sens_follow, &ptgid);
	if (f)
		bits = *f;
	struct sens_scratch *s = bpf_map_lookup_elem(&sens_scratch_map, &zero);

	if (!s)
		return 0;
	s->bin_ok = 0;
	for (i = 0; i < SENS_MAX_SELECTORS; i++) {
		if (i >= sens_cfg.nsel)
			break;
		const volatile struct sens_selector *sel = &sens_cfg.sel[i];

		__u32 q;

		for (q = 0; q < SENS_MAX_BINS; q++) {
			if (q >= sel->nbins)
				break;
			const volatile struct sens_match_bin *b = &sel->bins[q];

			if (!b->follow || (bits & (1u << i)))
				continue;
			if (!s->bin_ok) {
				if (sens_load_binary(s) < 0)
					break;
				s->bin_ok = 1;
			}
			if (sens_match_str_op(s, (const __u8 *)s->bin.path, s->bin.len & (SENS_STR_MAX - 1),
					      b->str_first, b->nvals, b->op))
				bits |= 1u << i;
		}

		for (q = 0; q < SENS_MAX_PIDF; q++) {
			if (q >= sel->npids)
				break;
			const volatile struct sens_match_pids *m = &sel->pids[q];

			if (m->op != SENS_OP_IN || !(m->flags & SENS_PID_FOLLOW) || (bits & (1u << (8 + i))))
				continue;
			__u32 pid = (m->flags & SENS_PID_NS) ? sens_ns_pid(parent) : ptgid;
			__u32 k;

			for (k = 0; k < SENS_MAX_VALUES; k++) {
				if (k >= m->nvals)
					break;
				if (pid == m->pids[k])
					bits |= 1u << (8 + i);
			}
		}
	}
	if (bits)
		bpf_map_update_elem(&sens_follow, &ctgid, &bits, BPF_ANY);
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(sens_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 tgid = BPF_CORE_READ(p, tgid);

	bpf_map_delete_elem(&sens_bins, &tgid);
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
	return 0;
}

#ifdef SENS_OPEN_EXIT
/* ------------------------------------------------------------------------------------------------ */
/* Opened-file syscalls (open, openat, openat2, creat) served at sys_exit alone                      */
/* ------------------------------------------------------------------------------------------------ */

/*
 * Built only into the object with -DSENS_OPEN_EXIT (sensors/tracepoint/engine.py: HOOK_OPEN_PROBE), since it
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
#define SENS_ONCE(x) (*(volatile typeof(x) *)&(x))
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

	/* The same steps as sens_walk_path/sens_walk_step, counting instead of copying. */
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
	s->ev.retval = ret;
	s->ev.flags = SENS_EV_HAS_RET;
	return sens_run(ctx, s);
}
#endif /* SENS_OPEN_EXIT */

#endif /* __SENSORIUM_SELECTORS_H */
