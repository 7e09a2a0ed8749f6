/* SPDX-License-Identifier: GPL-2.0 */
/*
 * sensorium/scope.h: is the current task inside a policy's scope (sensorium.hookspecs.Scope)?
 *
 * A scope map holds cgroup ids keyed by hierarchy. A task is in scope when its cgroup or one of its
 * ancestors (up to SENS_SCOPE_MAX_DEPTH levels) is an INCLUDE entry: a pod's cgroup covers every
 * container of the pod, including one the runtime creates later. Two hierarchies are walked, as the
 * flags entry asks: the unified one (cgroup2) and the v1 memory controller's (on hybrid hosts runtimes
 * with the v1 driver leave containers at the cgroup2 root and place them only in v1 hierarchies).
 * cgroup ids of different hierarchies can collide (each kernfs root numbers its own nodes): hence the
 * hierarchy in the key.
 *
 * The flags entry (key {SENS_SCOPE_FLAGS, 0}) says which hierarchies to walk and whether host
 * processes are in scope (Tetragon's hostSelector: {}): a task is a host process when no walk met a
 * CONTAINER_ROOT entry (the runtime's kubepods cgroups). The map is filled by sensorium.bpf.scope.
 * No flags entry = nothing is in scope (a scoped policy whose pods are not here applies to nothing).
 */
#ifndef SENSORIUM_SCOPE_H
#define SENSORIUM_SCOPE_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#define SENS_SCOPE_CGROUP2 0
#define SENS_SCOPE_MEMORY 1
#define SENS_SCOPE_FLAGS 0xff

/* values of cgroup entries */
#define SENS_SCOPE_INCLUDE 1
#define SENS_SCOPE_CONTAINER_ROOT 2
/* value bits of the flags entry */
#define SENS_SCOPE_F_CGROUP2 1
#define SENS_SCOPE_F_MEMORY 2
#define SENS_SCOPE_F_HOST 4

#define SENS_SCOPE_MAX_DEPTH 8
#define SENS_SCOPE_MAX_ENTRIES 4096

struct sens_scope_key {
	__u32 hier;
	__u32 pad;
	__u64 id;
};

#define SENS_SCOPE_MAP(name)                                                                             \
	struct {                                                                                         \
		__uint(type, BPF_MAP_TYPE_HASH);                                                         \
		__uint(max_entries, SENS_SCOPE_MAX_ENTRIES);                                             \
		__type(key, struct sens_scope_key);                                                      \
		__type(value, __u8);                                                                     \
	}

/* kernfs_node.parent became __parent in 6.15 */
struct kernfs_node___scope_new {
	struct kernfs_node *__parent;
} __attribute__((preserve_access_index));
struct kernfs_node___scope_old {
	struct kernfs_node *parent;
} __attribute__((preserve_access_index));

static __always_inline struct kernfs_node *sens_scope_kn_parent(struct kernfs_node *kn)
{
	struct kernfs_node___scope_new *kn_new = (void *)kn;
	struct kernfs_node___scope_old *kn_old = (void *)kn;

	if (bpf_core_field_exists(kn_new->__parent))
		return BPF_CORE_READ(kn_new, __parent);
	return BPF_CORE_READ(kn_old, parent);
}

/* The first entry met walking up from kn (0 when none). */
static __always_inline __u8 sens_scope_walk(void *map, __u32 hier, struct kernfs_node *kn)
{
	struct sens_scope_key key = {.hier = hier};
	__u8 *v;
	int i;

#pragma unroll
	for (i = 0; i < SENS_SCOPE_MAX_DEPTH; i++) {
		if (!kn)
			break;
		key.id = BPF_CORE_READ(kn, id);
		v = bpf_map_lookup_elem(map, &key);
		if (v)
			return *v;
		kn = sens_scope_kn_parent(kn);
	}
	return 0;
}

static __always_inline struct kernfs_node *sens_scope_memcg_kn(struct css_set *cgroups)
{
	struct cgroup_subsys_state *css = NULL;
	int id;

	if (!bpf_core_enum_value_exists(enum cgroup_subsys_id, memory_cgrp_id))
		return NULL;
	id = bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id);
	if (id < 0 || id >= 16)
		return NULL;
	bpf_probe_read_kernel(&css, sizeof(css),
			      (void *)cgroups + bpf_core_field_offset(struct css_set, subsys) + id * sizeof(void *));
	if (!css)
		return NULL;
	return BPF_CORE_READ(css, cgroup, kn);
}

/* Is the current task in the scope held by map? */
static __always_inline bool sens_task_in_scope(void *map)
{
	struct sens_scope_key fkey = {.hier = SENS_SCOPE_FLAGS};
	struct task_struct *task;
	struct css_set *cgroups;
	__u8 *flags, f, v, container = 0;

	flags = bpf_map_lookup_elem(map, &fkey);
	if (!flags)
		return false;
	f = *flags;
	task = (struct task_struct *)bpf_get_current_task();
	cgroups = BPF_CORE_READ(task, cgroups);
	if (f & SENS_SCOPE_F_CGROUP2) {
		v = sens_scope_walk(map, SENS_SCOPE_CGROUP2, BPF_CORE_READ(cgroups, dfl_cgrp, kn));
		if (v == SENS_SCOPE_INCLUDE)
			return true;
		if (v == SENS_SCOPE_CONTAINER_ROOT)
			container = 1;
	}
	if (f & SENS_SCOPE_F_MEMORY) {
		v = sens_scope_walk(map, SENS_SCOPE_MEMORY, sens_scope_memcg_kn(cgroups));
		if (v == SENS_SCOPE_INCLUDE)
			return true;
		if (v == SENS_SCOPE_CONTAINER_ROOT)
			container = 1;
	}
	return (f & SENS_SCOPE_F_HOST) && !container;
}

#endif /* SENSORIUM_SCOPE_H */
