/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Records of the network sensor, shared by probe.bpf.c and (as ctypes structures) decoder.py.
 * tests/test_layouts.py compares decoder.py's structures with these structs in the object's BTF.
 *
 * Every record starts with struct sensorium_hdr; hdr.type says which record follows:
 *   NET_REC_CONNECT  struct net_tcp_record: an active TCP open reached ESTABLISHED
 *   NET_REC_ACCEPT   struct net_tcp_record: a passive TCP open (SYN_RECV -> ESTABLISHED)
 *   NET_REC_CLOSE    struct net_tcp_record: a tracked TCP socket reached CLOSE (bytes filled in)
 *   NET_REC_UDP      struct net_udp_record: a UDP send/connect to a (process, destination) not seen
 *                    within the dedup window
 * hdr.pid/tid are the socket's OWNER as remembered by the probe (the task that called connect() or
 * listen()), not necessarily the task running when the state changed (accept completes in softirq).
 * Addresses are in network byte order; IPv4 uses the first 4 bytes. Ports are in host byte order.
 */
#ifndef __SENSORIUM_NETWORK_EVENT_H
#define __SENSORIUM_NETWORK_EVENT_H

#define NET_REC_CONNECT 1
#define NET_REC_ACCEPT  2
#define NET_REC_CLOSE   3
#define NET_REC_UDP     4

/* hdr.flags */
#define NET_F_OWNER_UNKNOWN 0x0001 /* no owner remembered (socket older than the agent): pid is 0 */
#define NET_F_NOT_ESTABLISHED 0x0002 /* close of an active open that never reached ESTABLISHED */

/* net_udp_record.hook */
#define NET_UDP_SENDMSG 1
#define NET_UDP_CONNECT 2

struct net_tcp_record {
	struct sensorium_hdr hdr;
	__u64 skaddr;          /* kernel socket address: user space turns it into an opaque cookie */
	__u64 bytes_acked;     /* tcp_sock.bytes_acked at close: payload bytes sent and acknowledged */
	__u64 bytes_received;  /* tcp_sock.bytes_received at close */
	__u64 open_ktime;      /* when the socket reached ESTABLISHED (0: unknown) */
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u16 family;          /* AF_INET 2, AF_INET6 10 */
	__u16 protocol;        /* IPPROTO_TCP */
	__u32 netns;           /* network namespace inode */
	__u32 mark;            /* sk_mark */
	__u32 priority;        /* sk_priority */
	__u16 sk_type;         /* SOCK_STREAM */
	__u8 oldstate;
	__u8 newstate;
};

struct net_udp_record {
	struct sensorium_hdr hdr;
	__u64 cookie;          /* bpf_get_socket_cookie() */
	__u8 daddr[16];
	__u8 saddr[16];        /* the socket's bound source address (zero while unbound) */
	__u16 dport;
	__u16 sport;           /* the socket's bound port (0 while unbound) */
	__u16 family;
	__u16 protocol;        /* IPPROTO_UDP */
	__u16 hook;            /* NET_UDP_SENDMSG or NET_UDP_CONNECT */
	__u16 sk_type;
	__u32 _pad;
};

#endif /* __SENSORIUM_NETWORK_EVENT_H */
