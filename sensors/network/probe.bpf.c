// SPDX-License-Identifier: GPL-2.0-only
/*
 * The network sensor's kernel half.
 *
 * TCP: one classic tracepoint, sock/inet_sock_set_state (kprobes, fentry and BPF LSM are refused on the
 * kernels this must run on). It fires for every state change of a TCP socket, but not always in the
 * context of the task that owns the socket: a passive open completes in softirq, on whatever task the
 * CPU was running. So ownership is remembered where it is certain (process context) and carried along:
 *   - CLOSE -> LISTEN runs in listen(): the task is remembered per listening (netns, family, addr, port);
 *   - CLOSE -> SYN_SENT runs in connect(): the task is remembered per socket (skaddr);
 *   - SYN_SENT -> ESTABLISHED: the connect record, owned by the task remembered at SYN_SENT;
 *   - SYN_RECV -> ESTABLISHED: the accept record, owned by the task that listened on the local
 *     address (exact address first, then the wildcard address of the same family);
 *   - -> CLOSE: the close record from the tuple cached at ESTABLISHED (the ports may be gone by then)
 *     and the byte counters of struct tcp_sock read with CO-RE.
 * Per-socket state lives in a bounded LRU hash keyed by skaddr, so sockets whose close is never seen
 * cannot fill it.
 *
 * UDP: cgroup sock_addr programs (connect4/6, sendmsg4/6) attached to the cgroup2 root. They only
 * observe: every path returns 1 (allow). A (process, destination) pair is reported at most once per
 * dedup window (an LRU map of when each pair was last reported), never once per datagram.
 *
 * Layouts: event.h.
 */
#include "vmlinux.h"
#include <sensorium/common.h>
#include <bpf/bpf_endian.h>
#include "event.h"

SENSORIUM_LICENSE("GPL");

#define NET_AF_INET  2
#define NET_AF_INET6 10
#define NET_SOCK_DGRAM 2

/* TCP states (include/net/tcp_states.h) */
#define NET_TCP_ESTABLISHED 1
#define NET_TCP_SYN_SENT    2
#define NET_TCP_SYN_RECV    3
#define NET_TCP_FIN_WAIT1   4
#define NET_TCP_CLOSE       7
#define NET_TCP_LAST_ACK    9
#define NET_TCP_LISTEN      10

#define NET_SOCK_DONE 1 /* enum sock_flags: set by tcp_fin() when the peer's FIN is taken in sequence */

/* net_sock.flags beyond the record's NET_F_* bits */
#define SKF_FIN_OUT 0x0100 /* our FIN was queued (the socket entered FIN_WAIT1 or LAST_ACK) */

/* What a tracked socket is. */
#define SK_ACTIVE   1 /* connect() */
#define SK_PASSIVE  2 /* accepted from a listener */
#define SK_LISTENER 3

/* How long a (process, UDP destination) pair stays quiet after it was reported. */
const volatile __u64 udp_dedup_ns = 10ULL * 1000 * 1000 * 1000;

struct net_sock {
	__u64 open_ktime;
	__u64 acked0;    /* bytes_acked at ESTABLISHED: the SYN of an active open is counted in it */
	__u64 received0; /* bytes_received at ESTABLISHED */
	__u32 pid;
	__u32 tid;
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u8 kind;
	__u8 established;
	__u32 netns;
	__u32 flags;
};

struct net_listen_key {
	__u32 netns;
	__u16 family;
	__u16 port;
	__u8 addr[16];
};

struct net_listener {
	__u64 skaddr;
	__u32 pid;
	__u32 tid;
};

struct net_udp_key {
	__u32 tgid;
	__u16 hook;
	__u16 port;
	__u16 family;
	__u16 _pad;
	__u8 addr[16];
};

/* Counters, per CPU. */
#define CNT_RING_FULL      0
#define CNT_UNTRACKED      1 /* a close/established of a socket opened before the agent attached */
#define CNT_OWNER_UNKNOWN  2 /* an accept whose listener was not found */
#define CNT_UDP_DEDUP      3 /* UDP sends folded into an earlier report */
#define CNT_MAX            4

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} net_events SEC(".maps");

/* LRU hashes: their sizes are set from the options before load. */
SENSORIUM_MAP(net_socks, BPF_MAP_TYPE_LRU_HASH, 65536, __u64, struct net_sock);
SENSORIUM_MAP(net_listeners, BPF_MAP_TYPE_LRU_HASH, 8192, struct net_listen_key, struct net_listener);
SENSORIUM_MAP(net_udp_seen, BPF_MAP_TYPE_LRU_HASH, 16384, struct net_udp_key, __u64);

SENSORIUM_COUNTERS(net_counters, CNT_MAX);

SENSORIUM_BTF_KEEP(net_tcp_record);
SENSORIUM_BTF_KEEP(net_udp_record);

#define submit(data, size) sensorium_submit_counted(&net_events, data, size, &net_counters, CNT_RING_FULL)

static __always_inline __u32 sk_netns(const struct sock *sk)
{
	return BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
}

/* The local and remote addresses of the tracepoint record, by family. Copied with a helper: the
 * verifier refuses loads through a ctx pointer with a variable offset, which memcpy can produce. */
static __always_inline void tp_addrs(struct trace_event_raw_inet_sock_set_state *ctx, __u8 *saddr, __u8 *daddr)
{
	if (ctx->family == NET_AF_INET) {
		bpf_probe_read_kernel(saddr, 4, ctx->saddr);
		bpf_probe_read_kernel(daddr, 4, ctx->daddr);
	} else {
		bpf_probe_read_kernel(saddr, 16, ctx->saddr_v6);
		bpf_probe_read_kernel(daddr, 16, ctx->daddr_v6);
	}
}

static __always_inline void emit_tcp(__u16 type, __u16 flags, __u64 skaddr, const struct net_sock *st,
				     int oldstate, int newstate, __u64 acked, __u64 received)
{
	const struct sock *sk = (const struct sock *)skaddr;
	struct net_tcp_record r = {};

	r.hdr.type = type;
	r.hdr.flags = flags;
	r.hdr.size = sizeof(r);
	r.hdr.ktime = bpf_ktime_get_ns();
	r.hdr.pid = st->pid;
	r.hdr.tid = st->tid;
	r.skaddr = skaddr;
	r.bytes_acked = acked;
	r.bytes_received = received;
	r.open_ktime = st->open_ktime;
	__builtin_memcpy(r.saddr, st->saddr, 16);
	__builtin_memcpy(r.daddr, st->daddr, 16);
	r.sport = st->sport;
	r.dport = st->dport;
	r.family = st->family;
	r.protocol = IPPROTO_TCP;
	r.netns = st->netns;
	r.mark = BPF_CORE_READ(sk, sk_mark);
	r.priority = BPF_CORE_READ(sk, sk_priority);
	r.sk_type = BPF_CORE_READ(sk, sk_type);
	r.oldstate = oldstate;
	r.newstate = newstate;
	submit(&r, sizeof(r));
}

static __always_inline void on_listen(struct trace_event_raw_inet_sock_set_state *ctx, __u64 skaddr)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct net_listen_key key = {};
	struct net_listener l = {};
	struct net_sock st = {};
	__u8 daddr[16];

	key.netns = sk_netns((const struct sock *)skaddr);
	key.family = ctx->family;
	key.port = ctx->sport;
	tp_addrs(ctx, key.addr, daddr);
	l.skaddr = skaddr;
	l.pid = pid_tgid >> 32;
	l.tid = (__u32)pid_tgid;
	bpf_map_update_elem(&net_listeners, &key, &l, BPF_ANY);

	st.kind = SK_LISTENER;
	st.pid = l.pid;
	st.tid = l.tid;
	st.family = key.family;
	st.sport = key.port;
	st.netns = key.netns;
	__builtin_memcpy(st.saddr, key.addr, 16);
	bpf_map_update_elem(&net_socks, &skaddr, &st, BPF_ANY);
}

static __always_inline void on_syn_sent(__u64 skaddr)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct net_sock st = {};

	st.kind = SK_ACTIVE;
	st.pid = pid_tgid >> 32;
	st.tid = (__u32)pid_tgid;
	bpf_map_update_elem(&net_socks, &skaddr, &st, BPF_ANY);
}

static __always_inline void fill_tuple(struct trace_event_raw_inet_sock_set_state *ctx, __u64 skaddr,
				       struct net_sock *st)
{
	tp_addrs(ctx, st->saddr, st->daddr);
	st->sport = ctx->sport;
	st->dport = ctx->dport;
	st->family = ctx->family;
	st->netns = sk_netns((const struct sock *)skaddr);
	st->open_ktime = bpf_ktime_get_ns();
	st->established = 1;
	st->acked0 = BPF_CORE_READ((const struct tcp_sock *)skaddr, bytes_acked);
	st->received0 = BPF_CORE_READ((const struct tcp_sock *)skaddr, bytes_received);
}

/*
 * Payload bytes of a closing socket. The kernel's counters follow sequence numbers, so they include
 * the SYN (taken off with the baseline read at ESTABLISHED) and the FINs: ours once it was acked
 * (queued, and snd_una reached write_seq, which counts it), the peer's once tcp_fin() took it in
 * sequence (SOCK_DONE).
 */
static __always_inline void payload_bytes(__u64 skaddr, const struct net_sock *st, __u64 *sent, __u64 *received)
{
	const struct tcp_sock *tp = (const struct tcp_sock *)skaddr;
	__u64 acked = BPF_CORE_READ(tp, bytes_acked) - st->acked0;
	__u64 rcvd = BPF_CORE_READ(tp, bytes_received) - st->received0;
	unsigned long sk_flags = BPF_CORE_READ((const struct sock *)skaddr, __sk_common.skc_flags);

	if ((st->flags & SKF_FIN_OUT) && acked &&
	    BPF_CORE_READ(tp, snd_una) == BPF_CORE_READ(tp, write_seq))
		acked -= 1;
	if ((sk_flags & (1UL << NET_SOCK_DONE)) && rcvd)
		rcvd -= 1;
	*sent = acked;
	*received = rcvd;
}

/* No owner was recorded for the socket: say so, and count it. The current task is never taken for the owner:
 * it is whoever the softirq interrupted. Returns the record flags. */
static __always_inline __u16 owner_unknown(struct net_sock *st, __u32 counter)
{
	st->flags = NET_F_OWNER_UNKNOWN;
	sensorium_count(&net_counters, counter);
	return NET_F_OWNER_UNKNOWN;
}

static __always_inline void on_active_established(struct trace_event_raw_inet_sock_set_state *ctx, __u64 skaddr)
{
	struct net_sock *found = bpf_map_lookup_elem(&net_socks, &skaddr);
	struct net_sock st = {};
	__u16 flags = 0;

	if (found) {
		st.pid = found->pid;
		st.tid = found->tid;
	} else {
		flags = owner_unknown(&st, CNT_UNTRACKED); /* connect() began before the agent attached */
	}
	st.kind = SK_ACTIVE;
	fill_tuple(ctx, skaddr, &st);
	bpf_map_update_elem(&net_socks, &skaddr, &st, BPF_ANY);
	emit_tcp(NET_REC_CONNECT, flags, skaddr, &st, ctx->oldstate, ctx->newstate, 0, 0);
}

static __always_inline void on_passive_established(struct trace_event_raw_inet_sock_set_state *ctx, __u64 skaddr)
{
	struct net_listen_key key = {};
	struct net_listener *l;
	struct net_sock st = {};
	__u16 flags = 0;
	__u8 daddr[16];

	st.kind = SK_PASSIVE;
	fill_tuple(ctx, skaddr, &st);
	key.netns = st.netns;
	key.family = st.family;
	key.port = st.sport;
	tp_addrs(ctx, key.addr, daddr);
	l = bpf_map_lookup_elem(&net_listeners, &key);
	if (!l) {
		/* a listener on the wildcard address of this family (0.0.0.0 or ::, which also takes
		 * IPv4-mapped connections) */
		__builtin_memset(key.addr, 0, sizeof(key.addr));
		l = bpf_map_lookup_elem(&net_listeners, &key);
	}
	if (l) {
		st.pid = l->pid;
		st.tid = l->tid;
	} else {
		flags = owner_unknown(&st, CNT_OWNER_UNKNOWN);
	}
	bpf_map_update_elem(&net_socks, &skaddr, &st, BPF_ANY);
	emit_tcp(NET_REC_ACCEPT, flags, skaddr, &st, ctx->oldstate, ctx->newstate, 0, 0);
}

static __always_inline void on_close(struct trace_event_raw_inet_sock_set_state *ctx, __u64 skaddr)
{
	struct net_sock *found = bpf_map_lookup_elem(&net_socks, &skaddr);
	__u64 sent, received;
	struct net_sock st;

	if (!found) {
		sensorium_count(&net_counters, CNT_UNTRACKED);
		return;
	}
	st = *found;
	bpf_map_delete_elem(&net_socks, &skaddr);
	if (st.kind == SK_LISTENER) {
		struct net_listen_key key = {};
		struct net_listener *l;

		key.netns = st.netns;
		key.family = st.family;
		key.port = st.sport;
		__builtin_memcpy(key.addr, st.saddr, 16);
		l = bpf_map_lookup_elem(&net_listeners, &key);
		/* SO_REUSEPORT: another socket may own the key now; remove only our own entry */
		if (l && l->skaddr == skaddr)
			bpf_map_delete_elem(&net_listeners, &key);
		return;
	}
	if (!st.established) {
		/* an active open that failed (refused, timed out, reset): report the attempt */
		fill_tuple(ctx, skaddr, &st);
		st.open_ktime = 0;
		emit_tcp(NET_REC_CLOSE, NET_F_NOT_ESTABLISHED | (st.flags & NET_F_OWNER_UNKNOWN), skaddr, &st, ctx->oldstate,
			 ctx->newstate, 0, 0);
		return;
	}
	payload_bytes(skaddr, &st, &sent, &received);
	emit_tcp(NET_REC_CLOSE, st.flags & NET_F_OWNER_UNKNOWN, skaddr, &st, ctx->oldstate, ctx->newstate,
		 sent, received);
}

static __always_inline void on_fin_out(__u64 skaddr)
{
	struct net_sock *found = bpf_map_lookup_elem(&net_socks, &skaddr);

	if (found)
		found->flags |= SKF_FIN_OUT;
}

SEC("tracepoint/sock/inet_sock_set_state")
int net_sock_state(struct trace_event_raw_inet_sock_set_state *ctx)
{
	__u64 skaddr = (__u64)ctx->skaddr;
	int oldstate = ctx->oldstate;
	int newstate = ctx->newstate;

	if (ctx->protocol != IPPROTO_TCP)
		return 0;
	if (ctx->family != NET_AF_INET && ctx->family != NET_AF_INET6)
		return 0;
	switch (newstate) {
	case NET_TCP_LISTEN:
		on_listen(ctx, skaddr);
		break;
	case NET_TCP_SYN_SENT:
		on_syn_sent(skaddr);
		break;
	case NET_TCP_ESTABLISHED:
		if (oldstate == NET_TCP_SYN_SENT)
			on_active_established(ctx, skaddr);
		else if (oldstate == NET_TCP_SYN_RECV)
			on_passive_established(ctx, skaddr);
		break;
	case NET_TCP_FIN_WAIT1:
	case NET_TCP_LAST_ACK:
		on_fin_out(skaddr);
		break;
	case NET_TCP_CLOSE:
		on_close(ctx, skaddr);
		break;
	}
	return 0;
}

/* ---- UDP: cgroup sock_addr programs. Observe only: every path returns 1 (allow). ------------------ */

/* An address from a sock_addr context's or a socket's fields (ctx->user_ip4/6, sk->src_ip4/6; each read as a
 * whole u32, as the verifier wants) into a 16-byte field, IPv4 in its first 4 bytes. `ip6[i]`, not `(ip6)[i]`:
 * clang builds the parenthesized form as a pointer to the field plus an offset, a modified ctx pointer that
 * the verifier refuses. */
#define COPY_ADDR(dst, family, ip4, ip6)					\
	do {									\
		if ((family) == NET_AF_INET) {					\
			__u32 a4 = (ip4);					\
			__builtin_memcpy((dst), &a4, 4);			\
		} else {							\
			__u32 a6[4];						\
									\
			a6[0] = ip6[0];					\
			a6[1] = ip6[1];					\
			a6[2] = ip6[2];					\
			a6[3] = ip6[3];					\
			__builtin_memcpy((dst), a6, 16);			\
		}								\
	} while (0)

static __always_inline void udp_report(struct bpf_sock_addr *ctx, __u16 family, __u16 hook)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct net_udp_record r = {};
	struct net_udp_key key = {};
	struct bpf_sock *sk;
	__u64 now, *last;

	if (ctx->protocol != IPPROTO_UDP)
		return;
	key.tgid = pid_tgid >> 32;
	key.hook = hook;
	key.family = family;
	key.port = bpf_ntohs((__u16)ctx->user_port);
	COPY_ADDR(key.addr, family, ctx->user_ip4, ctx->user_ip6);
	now = bpf_ktime_get_ns();
	last = bpf_map_lookup_elem(&net_udp_seen, &key);
	if (last && now - *last < udp_dedup_ns) {
		sensorium_count(&net_counters, CNT_UDP_DEDUP);
		return;
	}
	bpf_map_update_elem(&net_udp_seen, &key, &now, BPF_ANY);

	r.hdr.type = NET_REC_UDP;
	r.hdr.size = sizeof(r);
	r.hdr.ktime = now;
	r.hdr.pid = key.tgid;
	r.hdr.tid = (__u32)pid_tgid;
	r.cookie = bpf_get_socket_cookie(ctx);
	__builtin_memcpy(r.daddr, key.addr, 16);
	r.dport = key.port;
	r.family = family;
	r.protocol = IPPROTO_UDP;
	r.hook = hook;
	r.sk_type = ctx->type;
	sk = ctx->sk;
	if (sk) {
		r.sport = sk->src_port;
		COPY_ADDR(r.saddr, family, sk->src_ip4, sk->src_ip6);
	}
	submit(&r, sizeof(r));
}

/* net_udp_sendmsg4/6 and net_udp_connect4/6: they differ only in their attach point and what udp_report()
 * is told. */
#define UDP_PROG(name, family, hook)					\
	SEC("cgroup/" #name)						\
	int net_udp_##name(struct bpf_sock_addr *ctx)			\
	{								\
		udp_report(ctx, family, hook);				\
		return 1;						\
	}

UDP_PROG(sendmsg4, NET_AF_INET, NET_UDP_SENDMSG)
UDP_PROG(sendmsg6, NET_AF_INET6, NET_UDP_SENDMSG)
UDP_PROG(connect4, NET_AF_INET, NET_UDP_CONNECT)
UDP_PROG(connect6, NET_AF_INET6, NET_UDP_CONNECT)
