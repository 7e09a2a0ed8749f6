/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * sensorium/hook/capture.h: reading a hook's arguments into its record: integers, strings (user, kernel,
 * tracepoint __data_loc and inline arrays), buffers, paths of files/fds/binprms (walked in the kernel),
 * path strings made absolute, sockets, socket addresses and packets. Which arguments and how is the
 * rodata sens_cfg.args[]; each argument is captured by code specialised to it.
 */
#ifndef __SENSORIUM_HOOK_CAPTURE_H
#define __SENSORIUM_HOOK_CAPTURE_H

#include "sensorium/hook/defs.h"
#include "sensorium/hook/path.h"

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

/* CO-RE flavours of the module loader's structures (libbpf matches them to struct load_info and struct
 * module by name). A kernel built without modules has no struct load_info (this project's host), so their
 * reads sit behind bpf_core_type_exists: the branch is dead there, and its relocations are never verified. */
struct module___sens {
	char name[56]; /* MODULE_NAME_LEN */
	unsigned long taints;
} __attribute__((preserve_access_index));

struct load_info___sens {
	const char *name;
	struct module___sens *mod;
	bool sig_ok; /* CONFIG_MODULE_SIG only */
} __attribute__((preserve_access_index));

#define SENS_USER_MAX 0x00007fffffffffffULL /* x86_64 user addresses are below this */

/* Every SENS_ARG_STRUCT payload: the parameter type of sens_kstruct_read, which puts them all in the object's
 * BTF (tests/test_layouts.py compares them with sensorium.hooks.selectors). */
union sens_kstruct {
	struct sens_k_bpf_prog bpf_prog;
	struct sens_k_bpf_map bpf_map;
	struct sens_k_perf_event perf_event;
	struct sens_k_user_ns user_ns;
	struct sens_k_module module;
};

/* The fields Tetragon reports of the kernel structure at `ptr` (of kind `deref`) into k, read with CO-RE (the
 * field offsets of the running kernel). Returns the payload's length, or -1 for a structure this kernel does
 * not have. */
static __noinline int sens_kstruct_read(union sens_kstruct *k, __u64 ptr, __u32 deref)
{
	if (deref == SENS_DEREF_BPF_ATTR) {
		union bpf_attr *a = (union bpf_attr *)ptr;

		k->bpf_prog.prog_type = BPF_CORE_READ(a, prog_type);
		k->bpf_prog.insn_cnt = BPF_CORE_READ(a, insn_cnt);
		bpf_core_read(k->bpf_prog.name, sizeof(k->bpf_prog.name), &a->prog_name);
		return sizeof(k->bpf_prog);
	}
	if (deref == SENS_DEREF_BPF_PROG) {
		struct bpf_prog *prog = (struct bpf_prog *)ptr;
		struct bpf_prog_aux *aux = BPF_CORE_READ(prog, aux);

		k->bpf_prog.prog_type = BPF_CORE_READ(prog, type);
		k->bpf_prog.insn_cnt = BPF_CORE_READ(prog, len);
		if (aux)
			bpf_core_read_str(k->bpf_prog.name, sizeof(k->bpf_prog.name), &aux->name);
		return sizeof(k->bpf_prog);
	}
	if (deref == SENS_DEREF_BPF_MAP) {
		struct bpf_map *m = (struct bpf_map *)ptr;

		k->bpf_map.map_type = BPF_CORE_READ(m, map_type);
		k->bpf_map.key_size = BPF_CORE_READ(m, key_size);
		k->bpf_map.value_size = BPF_CORE_READ(m, value_size);
		k->bpf_map.max_entries = BPF_CORE_READ(m, max_entries);
		bpf_core_read(k->bpf_map.name, sizeof(k->bpf_map.name), &m->name);
		return sizeof(k->bpf_map);
	}
	if (deref == SENS_DEREF_PERF_EVENT) {
		struct perf_event *e = (struct perf_event *)ptr;
		__u64 func = BPF_CORE_READ(e, attr.kprobe_func); /* attr.config1: the function of a kprobe event */

		k->perf_event.type = BPF_CORE_READ(e, attr.type);
		k->perf_event.config = BPF_CORE_READ(e, attr.config);
		k->perf_event.probe_offset = BPF_CORE_READ(e, attr.probe_offset);
		/* the name as perf_event_open's caller passed it: a user pointer, kept in the kernel's copy of attr */
		if (func && func <= SENS_USER_MAX)
			bpf_probe_read_user_str(k->perf_event.kprobe_func, sizeof(k->perf_event.kprobe_func), (void *)func);
		else if (func)
			bpf_probe_read_kernel_str(k->perf_event.kprobe_func, sizeof(k->perf_event.kprobe_func), (void *)func);
		return sizeof(k->perf_event);
	}
	if (deref == SENS_DEREF_USER_NS) {
		struct user_namespace *ns = (struct user_namespace *)ptr;

		k->user_ns.level = BPF_CORE_READ(ns, level);
		k->user_ns.owner = BPF_CORE_READ(ns, owner.val);
		k->user_ns.group = BPF_CORE_READ(ns, group.val);
		k->user_ns.inum = BPF_CORE_READ(ns, ns.inum);
		return sizeof(k->user_ns);
	}
	if (deref == SENS_DEREF_LOAD_INFO) {
		if (!bpf_core_type_exists(struct load_info___sens))
			return -1;
		struct load_info___sens *info = (struct load_info___sens *)ptr;
		const char *name = BPF_CORE_READ(info, name);
		struct module___sens *mod = BPF_CORE_READ(info, mod);

		if (name)
			bpf_probe_read_kernel_str(k->module.name, sizeof(k->module.name), name);
		if (mod)
			k->module.taints = BPF_CORE_READ(mod, taints);
		k->module.sig_ok = SENS_SIG_UNKNOWN;
		if (bpf_core_field_exists(info->sig_ok))
			k->module.sig_ok = BPF_CORE_READ(info, sig_ok) ? SENS_SIG_OK : SENS_SIG_BAD;
		return sizeof(k->module);
	}
	if (deref == SENS_DEREF_MODULE) {
		if (!bpf_core_type_exists(struct module___sens))
			return -1;
		struct module___sens *mod = (struct module___sens *)ptr;

		bpf_core_read_str(k->module.name, sizeof(k->module.name), &mod->name);
		k->module.taints = BPF_CORE_READ(mod, taints);
		k->module.sig_ok = SENS_SIG_UNKNOWN;
		return sizeof(k->module);
	}
	return -1;
}

/*
 * A kernel structure argument (SENS_ARG_STRUCT) into s->data[off ..]: zeroed, then filled by
 * sens_kstruct_read. Returns the payload's length, or -1 for a NULL pointer (or a structure this kernel does
 * not have). A global function: verified once, whatever the hook and its other arguments.
 */
SENS_GLOBAL int sens_kstruct_g(__u32 off, __u64 ptr, __u32 deref)
{
	struct sens_scratch *s = sens_scratch_get();
	__u8 *p;
	__u32 i;

	if (!s)
		return -1;
	p = &s->data[off & (SENS_DATA_MAX - 1)];
#pragma unroll
	for (i = 0; i < SENS_KSTRUCT_MAX / 8; i++)
		((__u64 *)p)[i] = 0;
	if (!ptr)
		return -1;
	return sens_kstruct_read((union sens_kstruct *)p, ptr, deref);
}

/* Copy walk[start ..] (a walked path, as sens_walk_g left it) into a payload: returns len + 1 like the
 * string helpers (n > 0: read), or -1. */
static __always_inline long sens_walked_to(struct sens_scratch *s, __u8 *payload, int start, __u32 max)
{
	if (start < 0 || start > SENS_PATHBUF - 1)
		return -1;
	__u32 wl = SENS_PATHBUF - start;

	if (wl > max - 1)
		wl = max - 1;
	bpf_probe_read_kernel(payload, SENS_BOUND(wl, SENS_STR_MAX - 1), &s->walk[start & SENS_PATHMASK]);
	payload[wl & (SENS_STR_MAX - 1)] = 0;
	return wl + 1;
}

/*
 * Capture argument `a` (a constant at every call site) into s->data at s->dpos. The write position lives
 * in the scratch, not in a register: each argument starts from the same abstract state, so the verifier
 * does not explore every combination of the earlier arguments' lengths. Returns 0, or -1 when the record
 * has no room left for another argument.
 */
static __always_inline int sens_capture_arg(void *ctx, struct sens_scratch *s, __u32 a)
{
	const volatile struct sens_arg *d = &sens_cfg.args[a];
	struct sens_arg_rec *rec;
	__u32 pos = SENS_ONCE(s->dpos);
	__u32 p;
	__u8 *payload;
	long n = 0;
	__u64 raw;

	if (pos + sizeof(*rec) + SENS_STR_MAX > SENS_DATA_MAX)
		return -1;
	p = pos & (SENS_DATA_MAX - 1);
	rec = (struct sens_arg_rec *)&s->data[p];
	payload = &s->data[(p + sizeof(*rec)) & (SENS_DATA_MAX - 1)];
	rec->kind = d->kind;
	rec->flags = 0;
	rec->pad = 0;
	s->off[a] = (p + sizeof(*rec)) & (SENS_DATA_MAX - 1);
	s->trunc[a] = 0;

	if (d->kind == SENS_ARG_INT) {
		raw = sens_raw_value(ctx, s, d->src, d->offset, d->size, d->is_signed);
		if (d->sys64 && sens_task_compat())
			raw |= SENS_SYSCALL_I386;
		if (d->deref == SENS_DEREF_KCAP) {
			/* kernel_cap_t *: u64 val since 6.3, u32 cap[2] before: the same 8 bytes (little-endian) */
			__u64 caps = 0;

			if (!raw || bpf_probe_read_kernel(&caps, 8, (void *)raw) < 0)
				rec->flags |= SENS_ARGF_ERR;
			raw = caps;
		}
		s->ival[a] = raw;
		*(__u64 *)payload = raw;
		rec->len = 8;
		s->len[a] = 8;
		SENS_ONCE(s->dpos) = pos + sizeof(*rec) + 8;
		return 0;
	}
	if (d->kind == SENS_ARG_STRUCT) {
		raw = sens_raw_value(ctx, s, d->src, d->offset, 8, 0);
		n = sens_kstruct_g((p + sizeof(*rec)) & (SENS_DATA_MAX - 1), raw, d->deref);
		if (n < 0) {
			rec->flags |= SENS_ARGF_ERR;
			n = 0;
		}
		n = SENS_BOUND(n, 0xff); /* at most SENS_KSTRUCT_MAX */
		rec->len = n;
		s->len[a] = n;
		SENS_ONCE(s->dpos) = pos + sizeof(*rec) + ((n + 7) & ~7);
		return 0;
	}
	if (d->kind == SENS_ARG_SOCK) {
		raw = sens_raw_value(ctx, s, d->src, d->offset, 8, 0);
		rec->len = sizeof(struct sens_sock);
		s->len[a] = sizeof(struct sens_sock);
		s->ival[a] = raw; /* the pointer: what TrackSock/UntrackSock (argSock) key the socket map with */
		if (sens_capture_sock((struct sens_sock *)payload, raw, d->deref) < 0) {
			rec->flags |= SENS_ARGF_ERR;
			s->len[a] = 0; /* unreadable: matches no socket operator, Not* included */
		}
		/* A tracked socket: the event is its owner's (the last tracked sock argument wins, as in Tetragon). A
		 * returned sock that this very call (re)tracks is not looked up: a freed socket's address comes back. */
		if ((sens_cfg.flags & SENS_CFG_SOCK_OWNER) && raw && d->deref == SENS_DEREF_SOCK &&
		    !(d->src == SENS_FROM_RETVAL && (sens_cfg.flags & (SENS_CFG_RET_TRACK | SENS_CFG_RET_UNTRACK)))) {
			struct sens_sock_owner *o = bpf_map_lookup_elem(&sens_socks, &raw);

			if (o) {
				s->owner = *o;
				s->owned = 1;
			}
		}
		SENS_ONCE(s->dpos) = pos + sizeof(*rec) + sizeof(struct sens_sock);
		return 0;
	}
	__u32 max = d->max;

	if (max > SENS_STR_MAX)
		max = SENS_STR_MAX;
	if (max == 0)
		max = SENS_STR_MAX;
	int at_fd = d->ret_fd && (s->ev.flags & SENS_EV_HAS_RET) && s->ev.retval >= 0;

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
		__u64 dentry = 0, mnt = 0;

		raw = sens_raw_value(ctx, s, d->src, d->offset, 8, 0);
		if (d->deref == SENS_DEREF_PATH) {
			if (raw) {
				dentry = (__u64)BPF_CORE_READ((struct path *)raw, dentry);
				mnt = (__u64)BPF_CORE_READ((struct path *)raw, mnt);
			}
		} else {
			struct file *f;

			if (d->deref == SENS_DEREF_BINPRM)
				f = BPF_CORE_READ((struct linux_binprm *)raw, file);
			else if (d->deref == SENS_DEREF_FILE)
				f = (struct file *)raw;
			else
				f = sens_fd_file((struct task_struct *)bpf_get_current_task(), (__s64)raw);
			if (f) {
				dentry = (__u64)BPF_CORE_READ(f, f_path.dentry);
				mnt = (__u64)BPF_CORE_READ(f, f_path.mnt);
			}
		}
		n = -1;
		if (dentry)
			n = sens_walked_to(s, payload, sens_walk_g(dentry, mnt), max);
	} else if (at_fd) {
		n = 1; /* the opened file's path replaces the string below: no need to read it */
		payload[0] = 0;
	} else {
		raw = sens_raw_value(ctx, s, d->src, d->offset, 8, 0);
		if (d->deref == SENS_DEREF_NETDEV) {
			/* struct net_device *: its name, an array inside the structure (IFNAMSIZ) */
			n = -1;
			if (raw)
				n = bpf_probe_read_kernel_str(payload, max < 16 ? max : 16,
							      (void *)(raw + bpf_core_field_offset(struct net_device, name)));
		} else if (d->deref == SENS_DEREF_USER_BUF) {
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
	if (at_fd) {
		/* What was really opened: the returned fd's file (symlinks, "..", dirfd all resolved by the
		 * kernel's own lookup), not the string the process passed. */
		struct file *rf = sens_fd_file((struct task_struct *)bpf_get_current_task(), s->ev.retval);
		long w = rf ? sens_walked_to(s, payload, sens_walk_file(rf), SENS_STR_MAX) : -1;

		if (w > 0) {
			len = (__u32)(w - 1);
			rec->flags &= ~SENS_ARGF_ERR;
			goto resolved;
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
		int r = sens_resolve_g(s->off[a], len, dirfd);

		len = r & (SENS_STR_MAX - 1);
		if (r & SENS_RESOLVE_TRUNC)
			s->trunc[a] = 1;
	}
resolved:
	len &= (SENS_STR_MAX - 1);
	if (s->trunc[a])
		rec->flags |= SENS_ARGF_TRUNC;
	rec->len = len;
	s->len[a] = len;
	/* Zero the bytes after the value up to the record's 8-byte end: per-CPU scratch holds whatever an earlier
	 * call left there, and a record must be a function of its arguments alone (the rate-limit key hashes the
	 * captured bytes; stale bytes would make the same call count as different arguments). */
	for (__u32 k = 0; k < 8; k++) {
		__u32 at = len + k;

		if (at >= ((len + 7) & ~7))
			break;
		payload[at & (SENS_STR_MAX - 1)] = 0;
	}
	SENS_ONCE(s->dpos) = pos + sizeof(*rec) + ((len + 7) & ~7);
	return 0;
}

/* Capture every configured argument into s->data; returns the data length. */
static __always_inline __u32 sens_capture(void *ctx, struct sens_scratch *s)
{
	__u32 a;

	SENS_ONCE(s->dpos) = 0;
	s->owned = 0;
	for (a = 0; a < SENS_MAX_ARGS; a++) {
		if (a >= sens_cfg.nargs)
			break;
		if (sens_capture_arg(ctx, s, a) < 0)
			break;
	}
	__u32 n = SENS_ONCE(s->dpos);

	return n > SENS_DATA_MAX ? SENS_DATA_MAX : n;
}

#endif /* __SENSORIUM_HOOK_CAPTURE_H */
