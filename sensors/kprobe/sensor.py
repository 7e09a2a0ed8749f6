"""The kprobe sensor: TracingPolicy ``kprobes`` items.

Mechanism per hook, from the kernel probe (`KernelCapabilities`):

* syscalls (``syscall: true``, or ``sys_openat`` / ``__x64_sys_openat`` names): raw tracepoints
  sys_enter (and sys_exit for ``return: true``) filtered by the syscall number in the kernel, planned by the
  hook library (`sensorium.hooks.syscalls`). They need neither kprobes nor trampolines, so they run on
  every kernel with BTF, this host included.
* other kernel functions (``syscall: false``): fentry/fexit where BPF trampolines load, else
  kprobe/kretprobe where the kernel has kprobes (`MECHANISMS`, built in kfunc.py / kfunc.bpf.c); on a
  kernel with neither they are refused with the reason. Every item is first checked against the
  function's BTF prototype (exists, index in range, type fits), whatever the kernel can load.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from typing import Any

from sensorium.hooks.plan import HookPlan
from sensorium.hooks.sensor import HookSensor
from sensorium.hooks.syscalls import ARCH_PREFIX, plan_syscall, syscall_name
from sensorium.hookspecs import PolicyLoadError, SensorContext
from sensorium_sensors.kprobe.kfunc import (
    KfuncHookSet,
    overrides,
    plan_kernel_function,
    plan_syscall_override,
    wrap_decode,
)

# Mechanisms for kernel functions that are not syscalls, tried in order: (capability, name, builder).
# Both are built by kfunc.plan_kernel_function, which picks fentry/fexit or kprobe/kretprobe per hook.
MECHANISMS: list[tuple[str, str, Callable[..., HookPlan | None] | None]] = [
    ("fentry", "fentry", plan_kernel_function), ("kprobe", "kprobe", plan_kernel_function)]


class KprobeSensor(HookSensor):
    name = "kprobe"
    section = "kprobes"
    supports_scope = True  # every hook (raw_tp syscalls, fentry/fexit/kprobe/fmod_ret) checks sens_scope first
    handle_class = KfuncHookSet

    def __init__(self, ctx: SensorContext) -> None:
        super().__init__(ctx)
        self.opened_file_paths = bool((ctx.config or {}).get("opened_file_paths", True))

    def start(self) -> None:
        self.ring.decode = wrap_decode(self.ring, self.ring.decode)  # type: ignore[method-assign]
        super().start()

    def plan_item(self, policy: Any, index: int, item: Any) -> HookPlan | None:
        hook = f"{policy.section}[{index}] {item.call}"
        base = f"spec.{policy.section}[{index}]"
        name = syscall_name(item.call)
        if item.call.startswith(("__ia32_", "__ia32_compat_", "__x32_")):
            raise PolicyLoadError(hook, "32-bit compat syscalls are not served (raw_tp sys_enter is filtered by "
                                        "64-bit syscall numbers)", f"{base}.call")
        if not item.syscall and not item.call.startswith(("__x64_sys_", "sys_")):
            name = None
        if name is None:
            if platform.machine() not in ARCH_PREFIX:
                raise PolicyLoadError(hook, f"kernel-function hooks are only built for x86_64 (this is "
                                            f"{platform.machine()})", f"{base}.call")
            return plan_kernel_function(self, policy, index, item)
        if overrides(item) is not None:  # fmod_ret on the syscall's __x64_sys_ wrapper, where it loads
            return plan_syscall_override(self, policy, index, item, name)
        return plan_syscall(self.ctx.kernel, policy, index, item, name, opened_file_paths=self.opened_file_paths,
                            skipped=self._skipped.setdefault(policy.id, []))
