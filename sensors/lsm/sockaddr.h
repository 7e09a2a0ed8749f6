/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Shared by sockaddr.bpf.c and netguard.py (ctypes mirrors; checked against the object's BTF in tests). */
#ifndef __SENSORIUM_LSM_SOCKADDR_H
#define __SENSORIUM_LSM_SOCKADDR_H

#define LSM_NET_MAX_RULES 8
#define LSM_NET_MAX_PORTS 16
#define LSM_NET_MAX_ADDRS 16
#define LSM_NET_MAX_PIDS 16

#define LSM_NET_RECORD 0x4c01 /* sensorium_hdr.type of lsm_net_event */

/* lsm_net_rule.flags: which filters the selector has */
#define LSM_NET_DPORT (1 << 0)
#define LSM_NET_NOT_DPORT (1 << 1)
#define LSM_NET_DADDR (1 << 2)
#define LSM_NET_NOT_DADDR (1 << 3)
#define LSM_NET_FAMILY (1 << 4)
#define LSM_NET_PROTO (1 << 5)
#define LSM_NET_PID (1 << 6)
#define LSM_NET_NOT_PID (1 << 7)

/* lsm_net_rule.action */
#define LSM_NET_ACT_POST (1 << 0)
#define LSM_NET_ACT_DENY (1 << 1)
#define LSM_NET_ACT_KILL (1 << 2)

/* lsm_net_event.verdict */
#define LSM_NET_ALLOWED 0
#define LSM_NET_BLOCKED 1
#define LSM_NET_WOULD_BLOCK 2

#define LSM_NET_HOOK_CONNECT 1
#define LSM_NET_HOOK_SENDMSG 2

struct lsm_net_cidr {
	__u32 family; /* 2 or 10 */
	__u32 net[4]; /* network byte order, already masked */
	__u32 mask[4];
};

struct lsm_net_rule {
	__u32 flags;
	__u32 action;
	__u32 err; /* errno to return (positive) */
	__u32 families; /* bit 0 AF_INET, bit 1 AF_INET6 */
	__u32 protos; /* bit 0 TCP, bit 1 UDP, bit 2 other */
	__u32 nports;
	__u32 naddrs;
	__u32 npids;
	__u16 ports[LSM_NET_MAX_PORTS];
	__u32 pids[LSM_NET_MAX_PIDS];
	struct lsm_net_cidr addrs[LSM_NET_MAX_ADDRS];
};

/* All the rules of one hook, in one map value (first match wins). */
struct lsm_net_rules {
	struct lsm_net_rule r[LSM_NET_MAX_RULES];
};

struct lsm_net_config {
	__u32 policy_id;
	__u32 nrules;
	__u32 enforce; /* 0: monitoring (report, allow) */
	__u32 scoped; /* only tasks in net_scope (sens_task_in_scope); 0: host-wide */
	__u64 matched;
	__u64 blocked;
	__u64 dropped;
};

struct lsm_net_event {
	struct sensorium_hdr hdr;
	__u32 policy_id;
	__u32 rule;
	__u8 hook;
	__u8 verdict;
	__u8 family;
	__u8 protocol;
	__u16 dport;
	__u16 pad;
	__u32 daddr[4];
	__u32 action;
	__u32 err;
	__u64 cgroup_id;
	char comm[16];
};

#endif
