/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Records of the exec sensor, shared by probe.bpf.c and (as ctypes structures) decoder.py.
 * tests/test_layouts.py compares decoder.py's structures with these structs in the object's BTF.
 *
 * Every record starts with struct sensorium_hdr; hdr.type says which record follows:
 *   EXEC_REC_EXEC  struct exec_record, then hdr.size - sizeof(struct exec_record) bytes of strings:
 *                  args (argv NUL-separated, args_len), binary (binary_len), cwd (cwd_len),
 *                  cgroup2 leaf name (cgroup_name_len), v1 memory cgroup leaf name (memcg_name_len);
 *                  no NULs between fields, lengths exclude any terminator.
 *   EXEC_REC_FORK  struct fork_record: a new thread group (threads are not reported).
 *   EXEC_REC_EXIT  struct exit_record: the last thread of a thread group exited.
 */
#ifndef __SENSORIUM_EXEC_EVENT_H
#define __SENSORIUM_EXEC_EVENT_H

#define EXEC_REC_EXEC 1
#define EXEC_REC_FORK 2
#define EXEC_REC_EXIT 3

/* hdr.flags of an exec record */
#define EXEC_F_ARGS_TRUNC   0x0001 /* the argument list was longer than max_args_bytes */
#define EXEC_F_BINARY_TRUNC 0x0002 /* the binary path was deeper/longer than the walk allows */
#define EXEC_F_CWD_TRUNC    0x0004 /* same for cwd */
#define EXEC_F_ARGS_ERR     0x0008 /* the argument pages could not be read */
#define EXEC_F_NO_MEMCG     0x0010 /* no v1/v2 memory controller cgroup found */
#define EXEC_F_BINARY_DELETED 0x0020 /* the executed file was unlinked (or is a memfd) */

struct exec_record {
	struct sensorium_hdr hdr;
	__u32 ppid;          /* tgid of task->real_parent */
	__u32 uid;
	__u32 euid;
	__u32 suid;
	__u32 fsuid;
	__u32 gid;
	__u32 egid;
	__u32 sgid;
	__u32 fsgid;
	__u32 auid;          /* login uid; 4294967295 when unset */
	__u32 ns_mnt;
	__u32 ns_pid;
	__u32 ns_pid_for_children;
	__u32 ns_net;
	__u32 ns_uts;
	__u32 ns_ipc;
	__u32 ns_cgroup;
	__u32 ns_user;
	__u32 ns_time;
	__u32 ns_time_for_children;
	__u32 args_total;    /* bytes of the argument area in the process (before truncation) */
	__u32 _pad0;
	__u64 start_time;    /* task->start_time (ns, CLOCK_MONOTONIC), i.e. the fork that made this pid */
	__u64 cgroup_id;     /* cgroup2 id (== inode of its directory) */
	__u64 memcg_id;      /* v1 memory controller cgroup id (== inode under its hierarchy) */
	__u64 cgroup_parent_id; /* id of the cgroup2 cgroup's parent (user space joins parent path + name) */
	__u64 memcg_parent_id;
	__u64 cap_permitted;   /* cred capability sets (kernel_cap_t: one u64, or u32[2] before 6.3) */
	__u64 cap_effective;
	__u64 cap_inheritable;
	__u32 securebits;      /* cred->securebits (SECBIT_* bits) */
	__u32 user_ns_level;   /* cred->user_ns: nesting level (0: the initial namespace), owner and group */
	__u32 user_ns_uid;
	__u32 user_ns_gid;
	__u16 args_len;
	__u16 binary_len;
	__u16 cwd_len;
	__u16 cgroup_name_len;
	__u16 memcg_name_len;
	__u16 _pad[3];
};

struct fork_record {
	struct sensorium_hdr hdr;  /* pid/tid: the forking task */
	__u32 child_pid;           /* the new thread group's id */
	__u32 parent_pid;          /* child's real_parent tgid (differs from hdr.pid with CLONE_PARENT) */
	__u64 child_start_time;
};

struct exit_record {
	struct sensorium_hdr hdr;  /* pid: the thread group; tid: its last thread */
	__u32 exit_code;           /* task->exit_code (wait status: code << 8 | signal) */
	__u32 group_exit_code;     /* signal->group_exit_code */
	__u32 signal_flags;        /* signal->flags (SIGNAL_GROUP_EXIT says which code counts) */
	__u32 _pad;
};

#endif /* __SENSORIUM_EXEC_EVENT_H */
