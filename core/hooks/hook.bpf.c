/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * One TracingPolicy hook (tracepoint, raw tracepoint, or a syscall through raw_tp sys_enter/sys_exit),
 * configured entirely by the rodata `sens_cfg` that sensorium.hooks.selectors compiles from the policy.
 * The logic lives in sensorium/selectors.h so that other sensors (kprobe, uprobe, lsm) share it.
 */
#include "vmlinux.h"
#include "sensorium/common.h"
#include "sensorium/selectors.h"

SENSORIUM_LICENSE("Dual BSD/GPL");
