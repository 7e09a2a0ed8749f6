"""The usdt sensor: TracingPolicy ``usdts`` items, served by the hook library (`sensorium.hooks`).

An item names a binary and a USDT probe (provider, name). The binary's ``.note.stapsdt`` notes are read
before anything is loaded (`sensorium_sensors.usdt.notes`); every site of the probe (a probe the compiler
emitted at several places has several) is its own hook object (usdt.bpf.c), attached as a uprobe at the
site's nop with the probe's semaphore as the uprobe's reference counter (the kernel counts it up in every
process mapping the binary while the probe is attached, so code guarded by the semaphore runs). Each
declared argument ``args[j]`` names the probe's argument ``index``; where the note says it is (constant,
register, memory) is the rodata ``sens_usdt_cfg`` slot j, read into the engine's parameter slots, so capture,
selectors and actions are the engine's. The Set action overwrites an argument in memory
(``sens_usdt_set``). Events: ``process_usdt`` (path, provider, name, args).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sensorium.hooks import selectors as S
from sensorium.hooks.hookset import HookSet, read_binary, refused_as
from sensorium.hooks.plan import HookPlan, UsdtAttach, extras, plan_params
from sensorium.hooks.sensor import HookSensor
from sensorium.hookspecs import PolicyLoadError, ProbeSource, SensorContext
from sensorium_sensors.usdt.notes import ARG_DEREF, UsdtArg, UsdtProbe, usdt_probes
from sensorium_sensors.usdt.schema import without_set

__all__ = ["UsdtSensor", "UsdtHookSet", "USDT_PROBE", "UsdtCfg", "usdt_cfg"]

USDT_PROBE = ProbeSource(name="sens_usdt", source=Path(__file__).resolve().parent / "usdt.bpf.c")
HOOK_USDT = 4       # the engine's hook kind of user probes (informational in the kernel)
MAX_SLOTS = 6       # SENS_MAX_ARGS: declared arguments of one probe
HOOKS_PER_ITEM = 128  # hook_id = item index * HOOKS_PER_ITEM + site
NO_SET = 0xFF


class UsdtArgCfg(ctypes.Structure):
    """struct sens_usdt_arg (usdt.bpf.c)"""

    _fields_ = [("val", ctypes.c_int64), ("reg", ctypes.c_uint16), ("idx", ctypes.c_uint16),
                ("type", ctypes.c_uint8), ("size", ctypes.c_uint8), ("is_signed", ctypes.c_uint8),
                ("scale", ctypes.c_uint8)]


class UsdtCfg(ctypes.Structure):
    """struct sens_usdt_cfg (usdt.bpf.c): the rodata ``sens_usdt_cfg``"""

    _fields_ = [("args", UsdtArgCfg * MAX_SLOTS), ("set_value", ctypes.c_uint32 * 8), ("set_slot", ctypes.c_uint8 * 8)]


def usdt_cfg(slots: Sequence[UsdtArg | None], sets: Sequence[tuple[int, int] | None] = ()) -> UsdtCfg:
    """The ``sens_usdt_cfg`` rodata: where each slot's argument is, and per selector the (slot, value) of its Set."""
    cfg = UsdtCfg()
    for i, a in enumerate(slots):
        if a is None:
            continue
        c = cfg.args[i]
        c.val, c.reg, c.idx, c.type = a.val, a.reg, a.idx, a.type
        c.size, c.is_signed, c.scale = a.size, int(a.signed), a.scale
    for i in range(8):
        cfg.set_slot[i] = NO_SET
    for i, st in enumerate(sets):
        if st is not None:
            cfg.set_slot[i], cfg.set_value[i] = st[0], st[1] & 0xFFFFFFFF
    return cfg


class UsdtHookSet(HookSet):
    """The engine's `HookSet` for USDT sites (attach ``("usdt", ...)``) from usdt.bpf.c. Preparation, scope,
    process tracking and the rounds of a transaction are the engine's."""

    def enforces(self, plan: HookPlan) -> bool:
        # Set changes what the process computes: enforcement as much as a signal
        return super().enforces(plan) or (plan.attach[0] == "usdt" and plan.attach[5])

    def _load_one(self, plan: HookPlan) -> None:
        at = plan.attach
        if at[0] != "usdt":
            super()._load_one(plan)
            return
        _k, binary, offset, ref_ctr, rodata, has_set = at
        try:
            obj = self.ctx.open_object(self.ctx.build(USDT_PROBE))
        except Exception as e:
            raise PolicyLoadError(plan.hook, f"cannot build the USDT program: {e}") from e
        self.objects.append((plan, obj))
        prog = "sens_usdt_set" if has_set else "sens_usdt"
        with refused_as(plan):
            wanted = self.prepare_object(plan, obj, {prog}, inflight=False)
            obj.set_rodata("sens_usdt_cfg", rodata)
            obj.load()
            self.start_object(plan, obj, wanted)

        def attach() -> None:
            with refused_as(plan):
                self.attach_tracking(plan, obj, wanted)
                obj.program(prog).attach_uprobe(binary, None, offset, ref_ctr_offset=ref_ctr)

        self._attach.append(attach)


class UsdtSensor(HookSensor):
    name = "usdt"
    section = "usdts"
    handle_class = UsdtHookSet
    supports_scope = True  # every hook checks the policy scope (sens_scope) before anything else

    def __init__(self, ctx: SensorContext) -> None:
        super().__init__(ctx)
        self.ring.decode = _wrap_decode(self.ring, self.ring.decode)  # type: ignore[method-assign]

    def plan(self, policy: Any) -> list[HookPlan]:
        plans: list[HookPlan] = []
        for i, item in enumerate(policy.items):
            plans.extend(self.plan_sites(policy, i, item))
        return plans

    def plan_item(self, policy: Any, index: int, item: Any) -> HookPlan | None:
        plans = self.plan_sites(policy, index, item)
        return plans[0] if plans else None

    def _probes(self, hook: str, base: str, path: str) -> list[UsdtProbe]:
        return read_binary(hook, f"{base}.path", path, usdt_probes)

    def plan_sites(self, policy: Any, index: int, item: Any) -> list[HookPlan]:
        base = f"spec.{policy.section}[{index}]"
        hook = f"{policy.section}[{index}] {item.path} {item.provider}:{item.name}"
        sites = [p for p in self._probes(hook, base, item.path) if (p.provider, p.name) == (item.provider, item.name)]
        if not sites:
            raise PolicyLoadError(hook, f"USDT probe {item.provider}:{item.name} is not in {item.path} (no such "
                                        f".note.stapsdt note)", f"{base}.name")
        selectors = list(item.selectors)
        plans: list[HookPlan] = []
        for t, site in enumerate(sites):
            where = f"{hook}@{site.offset:#x}" if len(sites) > 1 else hook
            slots: list[UsdtArg | None] = []
            for j, a in enumerate(item.args):
                if a.index >= len(site.args):
                    raise PolicyLoadError(where, f"index {a.index}: the probe has {len(site.args)} arguments "
                                                 f"({site.args_spec or 'none'})", f"{base}.args[{j}].index")
                slots.append(site.args[a.index] if (a.type or "auto") != "nop" else None)
            sets: list[tuple[int, int] | None] = []
            for si, sel in enumerate(selectors):
                found: tuple[int, int] | None = None
                for ai, act in enumerate(sel.matchActions):
                    if act.action != "Set":
                        continue
                    slot = act.argIndex or 0
                    field = f"{base}.selectors[{si}].matchActions[{ai}].argIndex"
                    target = slots[slot] if slot < len(slots) else None
                    if target is None:
                        raise PolicyLoadError(where, f"argIndex {slot} names no declared argument", field)
                    if target.type != ARG_DEREF or target.size != 4:
                        raise PolicyLoadError(where, f"Set writes 4 bytes of memory: argument "
                                                     f"{item.args[slot].index} is '{target.spec}' (Set needs a "
                                                     f"4-byte argument in memory, like '4@-20(%rbp)')", field)
                    found = (slot, int(act.argValue))
                sets.append(found)
            args, positions = self._arg_plans(where, base, item)
            try:
                compiled = S.compile_hook(policy_id=policy.id, hook_id=index * HOOKS_PER_ITEM + t, kind=HOOK_USDT,
                                          args=args, selectors=without_set(selectors), arg_position=positions)
            except S.SelectorError as e:
                raise PolicyLoadError(where, e.reason, f"{base}.{e.field}") from None
            has_set = any(s is not None for s in sets)
            kernel = getattr(self.ctx, "kernel", None)
            if has_set and kernel is not None and not kernel.has("bpf_probe_write_user"):
                si = next(i for i, st in enumerate(sets) if st is not None)
                why = kernel.features["bpf_probe_write_user"].error if "bpf_probe_write_user" in kernel.features else ""
                raise PolicyLoadError(where, f"the Set action cannot be served on this kernel: it needs the "
                                             f"bpf_probe_write_user helper, which this kernel refuses (kernel lockdown "
                                             f"refuses it){': ' + why if why else ''}",
                                      f"{base}.selectors[{si}].matchActions")
            note = "semaphore counted while attached" if site.semaphore else ""
            if has_set:
                note = (note + "; " if note else "") + ("Set overwrites the argument in the process's memory at "
                                                        "the probe, before the code after it runs")
            if compiled.blocking:
                note = (note + "; " if note else "") + "Sigkill/Signal are sent from the probe"
            body: dict[str, Any] = {"path": item.path, "provider": item.provider, "name": item.name, **extras(item)}
            cfg = bytes(usdt_cfg(slots, sets))
            attach: UsdtAttach = ("usdt", item.path, site.offset, site.semaphore_offset, cfg, has_set)
            plan = HookPlan(hook=where, field=base, compiled=compiled, args=args, attach=attach,
                            mechanism="uprobe (USDT)", note=note, body=body, kind="process_usdt")
            plans.append(plan)
        return plans

    def _arg_plans(self, hook: str, base: str, item: Any) -> tuple[list[S.ArgPlan], dict[int, int]]:
        def read(a: Any, typ: str, field: str) -> S.ArgPlan:
            if typ == "string":
                return S.ArgPlan(kind=S.ARG_STR, from_=S.FROM_SYSCALL, offset=a.index, deref=S.DEREF_USER_STR,
                                 json_key="string_arg", label=a.label, type_name=typ)
            raise PolicyLoadError(hook, f"type {typ} is not supported for usdts (integers; string)", f"{field}.type")

        # The engine reads parameter slots: declared argument j is in slot j, whatever probe argument it names.
        by_slot = [a.model_copy(update={"index": j}) for j, a in enumerate(item.args)]
        args, slot_pos = plan_params(hook, base, by_slot, nparams=MAX_SLOTS, what="usdts", read=read,
                                     index_error="at most 6 arguments per USDT probe")
        positions = {a.index: slot_pos[j] for j, a in enumerate(item.args) if j in slot_pos}
        return args, positions


def _wrap_decode(ring: Any, decode: Any) -> Any:
    """The ring's decoder, plus Tetragon's action for an event whose selector took the Set action."""
    from sensorium.hooks.render import EV

    def run(records: Sequence[bytes]) -> Sequence[Any]:
        sets = [h for h in ring.hooks.values() if h[0].attach[0] == "usdt" and h[0].attach[5]]
        if not sets:
            return decode(records)  # no Set anywhere: the engine's fast path
        out: list[Any] = []
        for rec in records:
            evs = ring.decode_dicts([rec])
            if evs and len(rec) >= EV.size:
                f = EV.unpack_from(rec)
                entry = ring.hooks.get((f[6], f[7]))
                sel, flags = f[10], f[12]
                if entry is not None and entry[0].attach[0] == "usdt" and entry[0].attach[5]:
                    plan = entry[0]
                    st = _set_of(plan, sel)
                    if st is not None:
                        monitoring = bool(flags & S.EV_MONITOR)
                        body = evs[0].body
                        body["action"] = "KPROBE_ACTION_SET"
                        body["policy_mode"] = "monitoring" if monitoring else "enforcement"
                        body["action_taken"] = not monitoring
            out.extend(evs)
        return out
    return run


def _set_of(plan: HookPlan, sel: int) -> tuple[int, int] | None:
    cfg = UsdtCfg.from_buffer_copy(plan.attach[4]) if plan.attach[0] == "usdt" else None
    if cfg is None or sel >= 8 or cfg.set_slot[sel] == NO_SET:
        return None
    return int(cfg.set_slot[sel]), int(cfg.set_value[sel])

