// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The socket_connect / socket_sendmsg fallback of the lsm sensor: cgroup sock_addr programs
 * (cgroup/connect4, connect6, sendmsg4, sendmsg6). They see the destination before the kernel acts on
 * it and refuse the call (EPERM, or the policy's errno through bpf_set_retval) when a selector with an
 * Override or Sigkill action matches.
 *
 * Scope (sensorium.hookspecs.Scope): netguard.py attaches the programs to the scope's cgroup2
 * directories when it can (inherited by descendants), else to the cgroup2 root; either way, when
 * lsm_net_config.scoped is set, the program first asks sens_task_in_scope(&net_scope) (sensorium/scope.h:
 * cgroup2 and v1 memory ancestry of the current task) and lets everything outside the scope through.
 * That check is what bounds a pod scope on hybrid hosts, where pods sit at the cgroup2 root.
 *
 * One object per lsmhooks item. Selectors are rows of `rules` (first match wins, as Tetragon), compiled by
 * netguard.py; `config` holds the live mode. Matched calls are reported through `events`.
 */
#include "vmlinux.h"
#include "sensorium/common.h"
#include <bpf/bpf_endian.h>
#include "sensorium/scope.h"
#include "sockaddr.h"

SENSORIUM_LICENSE("Dual BSD/GPL");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lsm_net_rules);
} net_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lsm_net_config);
} net_config SEC(".maps");

/* The record is built here (also puts struct lsm_net_event in the object's BTF for the layout check). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lsm_net_event);
} net_scratch SEC(".maps");

/* The policy's scope (checked when net_config.scoped), filled by sensorium.bpf.scope.ScopeMap. */
SENS_SCOPE_MAP(net_scope) net_scope SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} net_events SEC(".maps");

static __always_inline int port_in(const struct lsm_net_rule *r, __u16 port)
{
#pragma clang loop unroll(full)
	for (int i = 0; i < LSM_NET_MAX_PORTS; i++) {
		if (i >= r->nports)
			break;
		if (r->ports[i] == port)
			return 1;
	}
	return 0;
}

static __always_inline int addr_in(const struct lsm_net_rule *r, __u8 family, const __u32 *addr)
{
#pragma clang loop unroll(full)
	for (int i = 0; i < LSM_NET_MAX_ADDRS; i++) {
		if (i >= r->naddrs)
			break;
		const struct lsm_net_cidr *c = &r->addrs[i];
		if (c->family != family)
			continue;
		if ((addr[0] & c->mask[0]) == c->net[0] && (addr[1] & c->mask[1]) == c->net[1] &&
		    (addr[2] & c->mask[2]) == c->net[2] && (addr[3] & c->mask[3]) == c->net[3])
			return 1;
	}
	return 0;
}

static __always_inline int pid_in(const struct lsm_net_rule *r, __u32 pid)
{
#pragma clang loop unroll(full)
	for (int i = 0; i < LSM_NET_MAX_PIDS; i++) {
		if (i >= r->npids)
			break;
		if (r->pids[i] == pid)
			return 1;
	}
	return 0;
}

static __always_inline int rule_matches(const struct lsm_net_rule *r, __u8 family, __u8 proto, __u16 port,
					const __u32 *addr, __u32 pid)
{
	if ((r->flags & LSM_NET_FAMILY) && !(r->families & (family == 2 ? 1 : 2)))
		return 0;
	if ((r->flags & LSM_NET_PROTO) && !(r->protos & (proto == 6 ? 1 : proto == 17 ? 2 : 4)))
		return 0;
	if (r->flags & LSM_NET_DPORT) {
		int in = port_in(r, port);
		if (in == !!(r->flags & LSM_NET_NOT_DPORT))
			return 0;
	}
	if (r->flags & LSM_NET_DADDR) {
		int in = addr_in(r, family, addr);
		if (in == !!(r->flags & LSM_NET_NOT_DADDR))
			return 0;
	}
	if (r->flags & LSM_NET_PID) {
		int in = pid_in(r, pid);
		if (in == !!(r->flags & LSM_NET_NOT_PID))
			return 0;
	}
	return 1;
}

/*
 * The first rule that matches decides. Returns the verdict (LSM_NET_ALLOWED when nothing blocks) and,
 * through *err and *kill, the errno to return and whether the rule kills.
 */
static __always_inline int net_decide(struct lsm_net_config *cfg, __u8 family, __u8 proto, __u16 port,
				      const __u32 *addr, __u8 hook, __u32 *err, int *kill)
{
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	__u32 zero = 0;
	struct lsm_net_rules *rules = bpf_map_lookup_elem(&net_rules, &zero);

	if (!rules)
		return LSM_NET_ALLOWED;
	for (__u32 i = 0; i < LSM_NET_MAX_RULES; i++) {
		if (i >= cfg->nrules)
			break;
		struct lsm_net_rule *r = &rules->r[i];
		if (!rule_matches(r, family, proto, port, addr, pid))
			continue;
		int block = (r->action & (LSM_NET_ACT_DENY | LSM_NET_ACT_KILL)) != 0;
		__u8 verdict = !block ? LSM_NET_ALLOWED : cfg->enforce ? LSM_NET_BLOCKED : LSM_NET_WOULD_BLOCK;
		__sync_fetch_and_add(&cfg->matched, 1);
		struct lsm_net_event *ev = (r->action & LSM_NET_ACT_POST) ? bpf_map_lookup_elem(&net_scratch, &zero) : NULL;

		if (ev) {
			sensorium_hdr_fill(&ev->hdr, LSM_NET_RECORD, sizeof(*ev));
			ev->policy_id = cfg->policy_id;
			ev->rule = i;
			ev->hook = hook;
			ev->verdict = verdict;
			ev->family = family;
			ev->protocol = proto;
			ev->dport = port;
			ev->pad = 0;
			ev->daddr[0] = addr[0];
			ev->daddr[1] = addr[1];
			ev->daddr[2] = addr[2];
			ev->daddr[3] = addr[3];
			ev->action = r->action;
			ev->err = r->err;
			ev->cgroup_id = bpf_get_current_cgroup_id();
			bpf_get_current_comm(ev->comm, sizeof(ev->comm));
			if (sensorium_submit(&net_events, ev, sizeof(*ev)) < 0)
				__sync_fetch_and_add(&cfg->dropped, 1);
		}
		if (verdict == LSM_NET_BLOCKED) {
			__sync_fetch_and_add(&cfg->blocked, 1);
			*err = r->err ? r->err : 1;
			*kill = (r->action & LSM_NET_ACT_KILL) != 0;
		}
		return verdict;
	}
	return LSM_NET_ALLOWED;
}

static __always_inline int decide(struct bpf_sock_addr *ctx, __u8 family, __u8 hook)
{
	__u32 zero = 0;
	struct lsm_net_config *cfg = bpf_map_lookup_elem(&net_config, &zero);
	if (!cfg)
		return 1;
	__u32 addr[4] = {};
	if (family == 2) {
		addr[0] = ctx->user_ip4;
	} else {
		addr[0] = ctx->user_ip6[0];
		addr[1] = ctx->user_ip6[1];
		addr[2] = ctx->user_ip6[2];
		addr[3] = ctx->user_ip6[3];
	}
	__u32 err = 0;
	int kill = 0;

	/* Outside the scope: allowed, not even reported. (Attached at the cgroup2 root on hybrid hosts, this
	 * runs for every connect of the host and returns here for those outside.) */
	if (cfg->scoped && !sens_task_in_scope(&net_scope))
		return 1;
	/* A kill is done by the agent on the record (bpf_send_signal is not available to sock_addr programs). */
	if (net_decide(cfg, family, (__u8)ctx->protocol, bpf_ntohs((__u16)ctx->user_port), addr, hook, &err, &kill) !=
	    LSM_NET_BLOCKED)
		return 1;
#ifdef LSM_NET_SET_RETVAL
	if (err != 1)
		bpf_set_retval(-(int)err);
#endif
	return 0;
}

SEC("cgroup/connect4")
int lsm_connect4(struct bpf_sock_addr *ctx)
{
	return decide(ctx, 2, LSM_NET_HOOK_CONNECT);
}

SEC("cgroup/connect6")
int lsm_connect6(struct bpf_sock_addr *ctx)
{
	return decide(ctx, 10, LSM_NET_HOOK_CONNECT);
}

SEC("cgroup/sendmsg4")
int lsm_sendmsg4(struct bpf_sock_addr *ctx)
{
	return decide(ctx, 2, LSM_NET_HOOK_SENDMSG);
}

SEC("cgroup/sendmsg6")
int lsm_sendmsg6(struct bpf_sock_addr *ctx)
{
	return decide(ctx, 10, LSM_NET_HOOK_SENDMSG);
}

/* ---- BPF LSM variants (kernels with BPF LSM): the same rules, decided in the LSM hook. ---------- */

/* 0 or -errno, with bounds the verifier can see (6.12 checks [-4095, 0] on LSM return values). */
static __always_inline int lsm_net_ret(__u32 err)
{
	__u32 e = err & 0xfff; /* the verifier sees [0, 4095] */
	__u32 r;

	/* 0 - e as a 32-bit subtraction: clang would emit a negation, whose bounds the verifier does not
	 * track, and the return value is checked as a 32-bit signed range */
	asm volatile("%[r] = 0; %[r] -= %[e]" : [r] "=&w"(r) : [e] "w"(e));
	return (int)r;
}

static __always_inline int lsm_addr_decide(struct socket *sock, struct sockaddr *address, __u8 hook)
{
	__u32 zero = 0;
	struct lsm_net_config *cfg = bpf_map_lookup_elem(&net_config, &zero);

	if (!cfg || !address)
		return 0;
	if (cfg->scoped && !sens_task_in_scope(&net_scope))
		return 0;
	__u16 fam = BPF_CORE_READ(address, sa_family);
	__u32 addr[4] = {};
	__u16 port;

	if (fam == 2) {
		struct sockaddr_in *in = (struct sockaddr_in *)address;

		port = bpf_ntohs(BPF_CORE_READ(in, sin_port));
		addr[0] = BPF_CORE_READ(in, sin_addr.s_addr);
	} else if (fam == 10) {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)address;

		port = bpf_ntohs(BPF_CORE_READ(in6, sin6_port));
		bpf_probe_read_kernel(addr, 16, &in6->sin6_addr);
	} else {
		return 0;
	}
	__u8 proto = (__u8)BPF_CORE_READ(sock, sk, sk_protocol);
	__u32 err = 0;
	int kill = 0;

	if (net_decide(cfg, (__u8)fam, proto, port, addr, hook, &err, &kill) != LSM_NET_BLOCKED)
		return 0;
	if (kill)
		bpf_send_signal(9);
	return lsm_net_ret(err);
}

SEC("lsm/socket_connect")
int BPF_PROG(lsm_socket_connect, struct socket *sock, struct sockaddr *address, int addrlen, int ret)
{
	if (ret)
		return lsm_net_ret(-ret); /* an earlier program refused: keep its errno */
	return lsm_addr_decide(sock, address, LSM_NET_HOOK_CONNECT);
}

SEC("lsm/socket_sendmsg")
int BPF_PROG(lsm_socket_sendmsg, struct socket *sock, struct msghdr *msg, int size, int ret)
{
	if (ret)
		return lsm_net_ret(-ret); /* an earlier program refused: keep its errno */
	/* Only datagrams with an explicit address, as the cgroup sendmsg programs: connected sockets were
	 * checked by socket_connect. */
	struct sockaddr *name = (struct sockaddr *)BPF_CORE_READ(msg, msg_name);

	return lsm_addr_decide(sock, name, LSM_NET_HOOK_SENDMSG);
}
