"""The ``kprobes`` section of a TracingPolicy: its model, and what no kernel lets this sensor serve.

The plugin declares it in `SensorSpec.policy_sections`; `sensorium.policy` composes it into the document.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, ClassVar

from pydantic import Field

from sensorium.policy import INT_ARG_TYPES, KERNEL_STRUCT_TYPES, RETURN_ARG_ACTIONS, ArgSpec, HookSpec
from sensorium.policy_fields import PolicyModel, max_bytes, one_of
from sensorium.policy_rules import MAX_PARAMS, char_buf_size_problem, engine_selector_rules

__all__ = ["KProbeSpec", "KProbeIgnore"]

# A kernel symbol: a C identifier, with the compiler's suffixes (``tcp_v4_connect.isra.0``, ``foo.cold``).
_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")
# Names that are syscalls whatever ``syscall:`` says (as the kprobe sensor reads them).
_SYSCALL_FORM = re.compile(r"(?:__x64_)?sys_[a-z0-9_]+")
_COMPAT_PREFIXES = ("__ia32_", "__ia32_compat_", "__x32_")
# Types that read a kernel structure: a syscall's parameters are the values a process passed, never one.
_STRUCT_TYPES = ("file", "path", "dentry", "sock", "skb", "cred", "linux_binprm", "syscall64",
                 *(t for t in KERNEL_STRUCT_TYPES if t != "capability"))


class KProbeIgnore(PolicyModel):
    callNotFound: bool = Field(default=False, description="Skip (do not fail on) a kernel function that does not exist")


class KProbeSpec(HookSpec):
    """A ``kprobes`` item: a kernel function (or syscall with ``syscall: true``)."""

    SECTION: ClassVar[str] = "kprobes"
    call: Annotated[str, max_bytes(128, "call")] = Field(min_length=1)
    syscall: bool = True  # Tetragon's default
    return_: bool = Field(default=False, alias="return")
    returnArg: ArgSpec | None = None
    returnArgAction: Annotated[str, one_of("returnArgAction", RETURN_ARG_ACTIONS,
                                           ("TrackSock", "UntrackSock"))] | None = None
    ignore: KProbeIgnore | None = None

    def describe(self) -> str:
        return self.call

    def rules(self) -> Sequence[tuple[str, str]]:
        return self._call_rules() or engine_selector_rules(self, sorted(
            {a.index for a in self.args if (a.type or "auto") != "nop"})) or self._kstruct_rules()

    def _kstruct_rules(self) -> list[tuple[str, str]]:
        """matchArgs on a kernel structure argument: only the operators Tetragon takes on its type (none for
        most), in the words the planner uses (`sensorium.hooks.selectors.ops_problem`)."""
        from sensorium.hooks.kstructs import KTYPES  # ctypes structures: loaded when needed
        from sensorium.hooks.selectors import ops_problem

        types = {a.index: a.type for a in self.args if a.type in KTYPES}
        for si, sel in enumerate(self.selectors):
            for mi, m in enumerate(sel.matchArgs):
                typ = types.get(m.index) if m.index is not None else None
                if typ is None:
                    continue
                kt = KTYPES[typ]
                found = ops_problem(m.op, kt.ops, kt.why, typ)
                if found:
                    return [(f"selectors[{si}].matchArgs[{mi}]{found[0]}", found[1])]
        return []

    def _call_rules(self) -> list[tuple[str, str]]:
        call = self.call
        if call.startswith("list:"):
            return [("call", "a 'list:' reference is expanded from spec.lists when the policy is parsed; this one "
                             "was not")]
        if call.startswith(_COMPAT_PREFIXES):
            return [("call", "32-bit compat syscalls are not served (raw_tp sys_enter is filtered by 64-bit syscall "
                             "numbers)")]
        if not _SYMBOL.fullmatch(call):
            return [("call", f"call {call!r} cannot name a kernel function or syscall (letters, digits and '_', "
                             "with '.' suffixes such as .isra.0)")]
        # Only names that are syscalls whatever the kernel get the syscall rules; a bare name may be either.
        syscall = bool(_SYSCALL_FORM.fullmatch(call))
        declared = {a.index for a in self.args}
        for i, a in enumerate(self.args):
            if a.index >= MAX_PARAMS:
                why = (f"index {a.index}: syscalls have 6 parameters (0..5)" if syscall else
                       f"index {a.index}: the first {MAX_PARAMS} parameters (0..5) of a kernel function or syscall "
                       "can be read")
                return [(f"args[{i}].index", why)]
            typ = a.type or "auto"
            if not syscall or typ == "nop":
                continue
            if a.returnCopy:
                return [(f"args[{i}].returnCopy", "returnCopy is not supported for syscall hooks")]
            if typ in _STRUCT_TYPES:
                return [(f"args[{i}].type", f"type {typ} is a kernel structure; a syscall parameter is a user value "
                                            "(use int, string, char_buf, fd, or sockaddr for the address passed to "
                                            "connect, bind or sendto)")]
            if found := char_buf_size_problem(i, a, declared):
                return found
        if self.returnArgAction in ("TrackSock", "UntrackSock"):
            rtyp = (self.returnArg.type if self.returnArg is not None else None) or "auto"
            if syscall or self.syscall or not self.return_ or rtyp not in ("sock", "auto"):
                return [("returnArgAction", f"returnArgAction {self.returnArgAction} needs a kernel function "
                                            "(syscall: false) with 'return: true' and a returnArg of type sock")]
        if syscall and self.return_:
            rtyp = (self.returnArg.type if self.returnArg is not None else "long") or "long"
            if rtyp != "auto" and rtyp not in INT_ARG_TYPES:
                return [("returnArg.type", f"returnArg type {rtyp}: a syscall returns an integer")]
        return []
