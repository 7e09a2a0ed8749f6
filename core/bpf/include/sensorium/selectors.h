/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * sensorium/selectors.h: TracingPolicy hooks evaluated in the kernel.
 *
 * One compiled object serves one hook of a policy (a tracepoint, a raw tracepoint, or a syscall served
 * by raw_tp sys_enter/sys_exit). Its whole configuration is the read-only global `sens_cfg` (set from
 * user space before load by sensorium.hooks.selectors): which arguments to read and how, the selectors and
 * their values. Because rodata is frozen, the verifier sees every count, operator and value as a
 * constant and prunes what the policy does not use: a policy with one matchArgs costs one compare.
 *
 * Semantics (Tetragon's): selectors are OR-ed, the filters inside one selector AND-ed; the first
 * matching selector decides the actions. An event no selector matches never reaches the ring buffer.
 * The policy mode (enforcement/monitoring) lives in the writable map `sens_mode` so it can be switched
 * live; in monitoring, Sigkill/Signal are not sent and the event says what would have been done.
 *
 * Path arguments flagged `resolve` are made absolute before matching (dirfd or cwd prepended, then "."
 * and ".." collapsed, see sens_resolve_g): a relative path or ".." cannot slip past a rule written for
 * an absolute path. Symbolic links are not followed at enter time; docs/selectors.md says more.
 *
 * Verifier budget (DESIGN.md): every program here verifies in a small, policy-independent number of
 * steps on every kernel we support. Loops that step through bytes or path components are in global
 * functions (verified once per program, not once per call site) and keep their loop-carried state in
 * the per-CPU scratch; tests/test_verifier_budget.py loads each program in its most expensive
 * configuration (sensorium.hooks.selectors.worst_case_cfgs) and fails above 200,000 processed instructions.
 *
 * Programs here: sens_tp (tracepoint), sens_raw (raw tracepoint), sens_sys_enter/sens_sys_exit
 * (syscalls via raw_tp), sens_open_exit (open family on the opened file, tp_btf sys_exit alone; only with
 * -DSENS_OPEN_EXIT, at the end of this file), and sens_fork/sens_exec/sens_exit (tp_btf; keep the per-process state for
 * followChildren/followForks and the binary cache fresh). User space sets autoload for the ones it uses.
 *
 * The parts, by concern: hook/defs.h (limits, configuration, record, maps, scratch), hook/path.h (walks and
 * normalisation), hook/match.h (the filters of a selector), hook/capture.h (arguments), hook/run.h (the
 * common path and the programs), hook/open_exit.h (the opened-file syscalls at sys_exit alone).
 */
#ifndef __SENSORIUM_SELECTORS_H
#define __SENSORIUM_SELECTORS_H

#include "sensorium/hook/defs.h"
#include "sensorium/hook/path.h"
#include "sensorium/hook/match.h"
#include "sensorium/hook/capture.h"
#include "sensorium/hook/run.h"
#ifdef SENS_OPEN_EXIT
#include "sensorium/hook/open_exit.h"
#endif

#endif /* __SENSORIUM_SELECTORS_H */
