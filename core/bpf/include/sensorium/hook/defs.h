/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * sensorium/hook/defs.h: what every part of the policy hook engine shares: limits, the configuration
 * (rodata `sens_cfg`, mirrored by sensorium.hooks.selectors), the record layout, the maps and the per-CPU
 * scratch. Included through sensorium/selectors.h.
 */
#ifndef __SENSORIUM_HOOK_DEFS_H
#define __SENSORIUM_HOOK_DEFS_H

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

/* Limits: mirrored in sensorium.hooks.selectors (checked before load, with the limit in the message). */
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
#define SENS_ARG_STRUCT 5 /* a kernel structure's summary (struct sens_k_*, by deref): reported, never matched */

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
/* Kernel structures read field by field (CO-RE), Tetragon's BTF-described argument types */
#define SENS_DEREF_NETDEV 14     /* struct net_device * (STR): its name */
#define SENS_DEREF_KCAP 15       /* kernel_cap_t * (INT): the 64-bit capability set it points to */
#define SENS_DEREF_BPF_ATTR 16   /* union bpf_attr * (STRUCT, sens_k_bpf_prog): prog_type, insn_cnt, prog_name */
#define SENS_DEREF_BPF_PROG 17   /* struct bpf_prog * (STRUCT, sens_k_bpf_prog): type, len, aux->name */
#define SENS_DEREF_BPF_MAP 18    /* struct bpf_map * (STRUCT, sens_k_bpf_map) */
#define SENS_DEREF_PERF_EVENT 19 /* struct perf_event * (STRUCT, sens_k_perf_event): attr's kprobe fields */
#define SENS_DEREF_USER_NS 20    /* struct user_namespace * (STRUCT, sens_k_user_ns) */
#define SENS_DEREF_LOAD_INFO 21  /* struct load_info * (STRUCT, sens_k_module): name, mod->taints, sig_ok */
#define SENS_DEREF_MODULE 22     /* struct module * (STRUCT, sens_k_module): name, taints */

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
#define SENS_OP_STATE 22 /* a sock's TCP state (skc_state) */

/* Actions (bit set in sens_selector.actions) */
#define SENS_ACT_POST 1
#define SENS_ACT_SIGKILL 2
#define SENS_ACT_SIGNAL 4

/* Event flags */
#define SENS_EV_MONITOR 1   /* policy in monitoring: blocking actions were not taken */
#define SENS_EV_HAS_RET 2
#define SENS_EV_SIGNAL_ERR 4 /* bpf_send_signal failed */
/* Stack traces the matching selector's Post action asked for (kernelStackTrace / userStackTrace). A record with
 * either flag ends with struct sens_stack_ids after its data_len bytes of arguments (so its size is
 * sizeof(struct sens_event) + data_len + 8); a record with neither is exactly as long as its arguments. */
#define SENS_EV_KSTACK 8
#define SENS_EV_USTACK 16

/* Argument flags in a record */
#define SENS_ARGF_TRUNC 1
#define SENS_ARGF_ERR 2

/* Hook config flags */
#define SENS_CFG_CGROUP_SCOPED 1 /* only tasks in the scope held by sens_scope */
#define SENS_CFG_NEED_BINARY 2   /* some selector matches binaries */
#define SENS_CFG_FOLLOW 4        /* some selector follows children/forks */
#define SENS_CFG_AT_EXIT 8       /* syscall: evaluate and emit at sys_exit (return value) */
#define SENS_CFG_SOCK_OWNER 16   /* sock arguments: report the event as the process that owns a tracked socket */
#define SENS_CFG_RET_TRACK 32    /* returnArgAction TrackSock: a matched call's returned sock gets the event's owner */
#define SENS_CFG_RET_UNTRACK 64  /* returnArgAction UntrackSock: a matched call's returned sock is forgotten */
#define SENS_CFG_CAP_CHANGES 128 /* some selector has matchCapabilityChanges: track exec-time caps (sens_execcaps) */

/* Stack traces of a selector (sens_selector.stacks) */
#define SENS_STACK_KERNEL 1
#define SENS_STACK_USER 2

/* Socket tracking actions of a selector (sens_selector.sock_act) */
#define SENS_SOCK_TRACK 1
#define SENS_SOCK_UNTRACK 2

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
	__u8 sys64;  /* a syscall64 id: SENS_SYSCALL_I386 marks a 32-bit (compat) task's (Tetragon's IS_32BIT) */
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
	__u8 pad[2];
	__u32 userns; /* isNamespaceCapability: the host's user namespace inode (the entry fails a task in it); 0: any */
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
	__u8 sock_act;  /* TrackSock/UntrackSock (SENS_SOCK_*), 0: none */
	__u8 sock_arg;  /* its argSock: the position in sens_cfg.args of a sock argument */
	__u8 npids;     /* matchPIDs entries (ANDed) */
	__u8 ncapch;    /* matchCapabilityChanges entries (ANDed) */
	__u8 stacks;    /* SENS_STACK_*: the stack traces its Post action takes */
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
	struct sens_match_caps capch[SENS_MAX_CAPS]; /* matchCapabilityChanges: against the caps at exec */
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

/* After the arguments of a record flagged SENS_EV_KSTACK/SENS_EV_USTACK: each id is a key of sens_stacks (>= 0),
 * bpf_get_stackid's error (< 0), or -1 when not asked for. User space reads each stack and deletes its id. */
struct sens_stack_ids {
	__s32 kernel;
	__s32 user;
};
SENSORIUM_BTF_KEEP(sens_stack_ids); /* written through a cast: kept in the BTF for the layout check */

struct sens_arg_rec {
	__u8 kind;
	__u8 flags;
	__u16 len;
	__u32 pad;
};

/* Payload of a SENS_ARG_SOCK argument (sensorium.hooks.selectors.SensSock). Ports in host order; addresses in
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

/* Payloads of SENS_ARG_STRUCT arguments (sensorium.hooks.kstructs mirrors them; the unused bytes are zero).
 * Tetragon's layouts' fields, read the way Tetragon reads them (bpf/process/types/basic.h). */
struct sens_k_bpf_prog { /* union bpf_attr (BPF_PROG_LOAD) or struct bpf_prog */
	__u32 prog_type;
	__u32 insn_cnt;
	char name[16];
};

struct sens_k_bpf_map {
	__u32 map_type;
	__u32 key_size;
	__u32 value_size;
	__u32 max_entries;
	char name[16];
};

struct sens_k_perf_event {
	__u64 config;
	__u64 probe_offset;
	__u32 type;
	__u32 pad;
	char kprobe_func[128];
};

struct sens_k_user_ns {
	__s32 level;
	__u32 owner;
	__u32 group;
	__u32 inum;
};

struct sens_k_module {
	__u64 taints;
	__u32 sig_ok; /* SENS_SIG_*: a struct module knows no signature */
	__u32 pad;
	char name[64];
};

#define SENS_SIG_BAD 0
#define SENS_SIG_OK 1
#define SENS_SIG_UNKNOWN 2 /* no signature to report (a struct module; a kernel without CONFIG_MODULE_SIG) */
#define SENS_KSTRUCT_MAX 152 /* the largest payload above (sens_k_perf_event), a multiple of 8 */

const volatile struct sens_hook_cfg sens_cfg = {};

/* Live policy mode: key 0 -> 0 enforcement, 1 monitoring, 2 inactive (SENS_MODE_INACTIVE: loaded and
 * attached as part of a policy transaction that is not committed yet: every hook returns at once, posts
 * nothing, enforces nothing). */
#define SENS_MODE_INACTIVE 2
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
#define SENS_CNT_SOCK_OWNED 6  /* events reported as the owner of a tracked socket */
#define SENS_CNT_SOCK_ERR 7    /* TrackSock updates the socket map refused */
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

/* matchCapabilityChanges (SENS_CFG_CAP_CHANGES): tgid -> its capability sets as recorded at exec (and at fork,
 * and at first sight for a process older than the policy), updated when a posted event reports a change:
 * Tetragon's execve_map caps. */
struct sens_capset {
	/* indexed by SENS_CAP_* - 1: effective, inheritable, permitted; c[3] unused, so that an index masked
	 * with 3 is inside the value even for 5.10's verifier, which loses the range check before it */
	__u64 c[4];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 32768);
	__type(key, __u32);
	__type(value, struct sens_capset);
} sens_execcaps SEC(".maps");

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

/* Socket tracking (TrackSock/UntrackSock, Tetragon's socktrack_map): struct sock pointer -> the process that owns it,
 * so that an event on the socket from another task (softirq, a forked child) is reported as its owner. One map per
 * policy section, shared by its hook objects (sensorium.hooks.hookset reuses the first object's); LRU: a socket no
 * UntrackSock removed is evicted rather than refusing new ones. Shrunk to one entry where no hook tracks. */
struct sens_sock_owner {
	__u32 pid;
	__u32 tid;
	__u64 cgroup_id;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768);
	__type(key, __u64);
	__type(value, struct sens_sock_owner);
} sens_socks SEC(".maps");

/* Stack traces (kernelStackTrace / userStackTrace): bpf_get_stackid's map, read and emptied by user space
 * (sensorium.hooks.stacks). One per policy section, shared by its hook objects like sens_socks; shrunk to one entry
 * where no selector takes stacks. 127 frames: the kernel's default perf_event_max_stack. */
#define SENS_STACK_DEPTH 127
#define SENS_STACK_ENTRIES 4096
struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, SENS_STACK_ENTRIES);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, SENS_STACK_DEPTH * sizeof(__u64));
} sens_stacks SEC(".maps");

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
#define SENS_WALKBUF (SENS_PATHBUF + SENS_STR_MAX) /* walk[]: a walked path, then a relative part joined to it */
#define SENS_NORM_STACK 256 /* components a normalised path can have: 32 walked + 128 of a 255-byte string */

/*
 * Per-CPU scratch of every hook program: the record being built and the work areas of the path and
 * matching code. Values that loops carry from one step to the next (write positions, depths) live here
 * and are re-read at every step (SENS_ONCE) rather than kept in registers: the verifier does not track
 * map memory, so every step starts from the same abstract state and each loop is verified in time linear
 * in its bound, never in the product of its branches (DESIGN.md, verifier budget).
 */
struct sens_scratch {
	struct sens_event ev;
	__u8 data[SENS_DATA_MAX + SENS_STR_MAX * 2];
	/* per-argument view of what was captured */
	__u64 ival[SENS_MAX_ARGS];
	__u16 off[SENS_MAX_ARGS]; /* offset into data of the payload */
	__u16 len[SENS_MAX_ARGS];
	__u8 trunc[SENS_MAX_ARGS];
	__u8 pad[2];
	__u32 dpos; /* capture: next free byte of data */
	__u64 raw[6]; /* syscall parameters */
	struct sens_bin bin;
	__u32 bin_ok;
	__u32 follow;
	__s32 matched; /* the selector sens_finish chose (-1: none); lsm programs turn it into Override */
	__u32 owned;   /* capture found a sock argument in sens_socks: `owner` is the process to report */
	__u32 hook;    /* a syscall set's member that ran (sens_sysset): the hook id its record reports */
	struct sens_sock_owner owner;
	/* path walk (sens_walk_g): write position in walk[], and where each component's '/' was written */
	__u64 wdentry; /* the dentry to step from, its mount, and that mount's root */
	__u64 wmnt;
	__u64 wroot;
	__u32 wpos;
	__u32 wn;
	__u32 wdone; /* the walk reached the root */
	__u32 wpad;
	__u16 wslash[SENS_PATH_DEPTH + 2];
	/* normalisation (sens_resolve_g): write position, start of the current component, depth, overflow */
	__u32 nj;
	__u32 ncomp;
	__u32 ndepth;
	__u32 nover;
	__u32 nprev; /* the byte before, while checking a path is already normal */
	__u16 stack[SENS_NORM_STACK]; /* start of each kept component, outermost first */
	char walk[SENS_WALKBUF];
	char join[SENS_WALKBUF]; /* the open-exit program's early-rejection state (sens_pq_state) and buffers */
	struct pt_regs regs; /* a syscall's registers, read in one helper call (sens_read_regs) */
	struct sens_capset capnow; /* the current task's capability sets, to record (sens_execcaps) */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sens_scratch);
} sens_scratch_map SEC(".maps");

/* A syscall id of the i386 table (a 32-bit task's) in a syscall64 argument, as Tetragon marks it */
#define SENS_SYSCALL_I386 0x80000000ULL

/* sens_cfg.syscall_nr of a syscall set: one object serves a list of syscalls that share args and selectors
 * (sensorium.hooks.syscalls.merge_syscall_sets); `sens_sysset` (run.h) maps each syscall number to its member's
 * hook id + 1 (0: not in the set), and the record reports the member, so events name the syscall that ran. */
#define SENS_SYSCALL_SET (-2)
#define SENS_SYSSET_NR 512

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

/* Read or write a scratch field as memory, never as a value the compiler keeps in a register. */
#define SENS_ONCE(x) (*(volatile typeof(x) *)&(x))

static __always_inline struct sens_scratch *sens_scratch_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&sens_scratch_map, &zero);
}

/* Functions verified once, whatever the caller's state and however many call sites they have (BPF global
 * functions, kernel 5.6+): the heavy, configuration-independent parts (path walks, normalisation, string
 * compares). Their arguments are plain integers and they find the scratch themselves, the form every
 * kernel we support accepts for a global function. */
#define SENS_GLOBAL __attribute__((noinline))

static __always_inline void sens_count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&sens_counters, &idx);

	if (v)
		*v += 1;
}


#endif /* __SENSORIUM_HOOK_DEFS_H */
