"""Hook records -> Tetragon's JSON: the reference renderers (`render_args`, `render_int`, `render_bytes`,
`body_of`) and the generated fast path (`quick_rest`: one hook's usual record in one bytes formatting).

A record is a ``struct sens_event`` (selectors.h) followed by its arguments, each a ``sens_arg_rec`` header
and its value. `EV`, `ARG` and `ARGQ` unpack them; every decoder of these records (`sensorium.hooks.ring`,
the lsm sensor's) reads them through the rules of `render_args`.
"""

from __future__ import annotations

import base64
import ctypes
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from sensorium import schema
from sensorium.hooks import kstructs as K
from sensorium.hooks import selectors as S
from sensorium.hooks.plan import HookPlan

__all__ = ["SYSCALL_ABI", "EV", "ARG", "ARGQ", "Q", "EV_SIZE", "UNSAFE", "ACTION_NAMES", "BODY_KEYS", "QuickRest",
           "quick_rest",
           "json_middle", "action_fields", "notify_action", "render_args", "body_of", "render_int", "render_bytes"]

SYSCALL_ABI = "x64"

EV = struct.Struct("<HHIQII II q Q BBBB I")  # sens_event
ARG = struct.Struct("<BBHI")                 # sens_arg_rec
Q = struct.Struct("<Q")
EV_SIZE = EV.size
assert S.EV_HAS_RET == 2 and S.ACT_SIGKILL | S.ACT_SIGNAL == 6 and S.ACT_NOTIFY == 96  # inlined in EventRing.decode
assert EV.size == ctypes.sizeof(S.SensEvent), (EV.size, ctypes.sizeof(S.SensEvent))

ACTION_NAMES = {S.ACT_SIGKILL: "KPROBE_ACTION_SIGKILL", S.ACT_SIGNAL: "KPROBE_ACTION_SIGNAL",
                S.ACT_GETURL: "KPROBE_ACTION_GETURL", S.ACT_DNSLOOKUP: "KPROBE_ACTION_DNSLOOKUP"}

ARGQ = struct.Struct("<BBHIQ")  # sens_arg_rec and the 8 bytes after it (an integer's value)

UNSAFE = re.compile(rb'[\x00-\x1f"\\\x80-\xff]').search  # bytes a JSON string cannot hold as they are

QuickRest = Callable[[bytes, int, int, int, int, int, bytes, int], bytes | None]
"""``rest(rec, end, flags, retval, actions, cgroup_id, cur_time, nanos)``: what `quick_rest` generates."""


def quick_rest(plan: HookPlan, policy_name: str) -> QuickRest | None:
    """Generate, for one hook, a function that formats the JSON rest of a record (args .. time, newline)
    in one bytes formatting when the record has the hook's usual shape: every argument a plain integer or
    a string JSON needs not escape, complete within the record, the return value plainly an integer, no
    signal action. It returns None for anything else, and `EventRing.decode` then takes the general path
    (the test compares both with the dict encoding). None when the hook has an argument it cannot do."""
    def lit(b: bytes) -> bytes:  # a constant inside a %-format
        return b.replace(b"%", b"%%")

    # ``end``: where the record's data ends (the caller has checked that the record holds it).
    src = ["def rest(rec, end, flags, retval, actions, cgroup_id, cur_time, nanos):",
           # a signal or a request (the Python path acts on it), stack ids after the arguments: not here
           "    if actions & %d or flags & %d:" % (S.ACT_SIGKILL | S.ACT_SIGNAL | S.ACT_NOTIFY,
                                                  S.EV_KSTACK | S.EV_USTACK),
           "        return None", "    pos = %d" % EV_SIZE]
    fmts, values = [], []
    for i, (ap, fast) in enumerate(plan.fast):
        if fast is None:
            return None
        if ap.kind == S.ARG_INT and len(fast) == 4:  # an integer's entry is always a `FastInt`
            key, mask, sign, quote = fast
            src += ["    if pos + 16 > end:", "        return None",
                    "    k, f, l, _, v%d = unpack_argq(rec, pos)" % i, "    if k != 1:", "        return None",
                    "    v%d &= %d" % (i, mask)]
            if sign <= mask:
                src += ["    if v%d >= %d:" % (i, sign), "        v%d -= %d" % (i, sign << 1)]
            src += ["    pos += 16"]
            fmts.append(b'{"' + lit(key) + (b'":"%d"}' if quote else b'":%d}'))
        elif fast == ("string_arg",):
            src += ["    if pos + 8 > end:", "        return None", "    k, f, l, _ = unpack_arg(rec, pos)",
                    "    if k != %d or f or pos + 8 + ((l + 7) & ~7) > end:" % ap.kind, "        return None",
                    "    v%d = rec[pos + 8:pos + 8 + l]" % i,
                    # strings repeat (the same paths): a set lookup instead of the regex for the ones seen
                    "    if v%d not in safe:" % i, "        if unsafe(v%d) is not None:" % i, "            return None",
                    "        if len(safe) >= 4096:", "            safe.clear()", "        safe.add(v%d)" % i,
                    "    pos += 8 + ((l + 7) & ~7)"]
            fmts.append(b'{"string_arg":"%b"}')
        else:
            return None
        values.append("v%d" % i)
    args = b',"args":[' + b",".join(fmts) + b"]"
    pname = lit(b',"policy_name":' + orjson.dumps(policy_name)) + b',"action":"KPROBE_ACTION_POST"'
    end = b'%b.%09dZ"}\n'
    vals = ", ".join(values + [""])
    src += ["    if pos != end:", "        return None"]  # more data than these arguments: the general path decides
    t = {"T": args + pname + end, "TC": args + pname + b',"cgroup_id":%d' + end}
    if plan.return_plan is not None and schema.exported(plan.kind, "return"):
        src += ["    if flags & 2:"]
        if plan.ret_fast is None:
            src += ["        return None"]
        else:
            key, mask, sign, quote = plan.ret_fast
            ret = b',"return":{"' + lit(key) + (b'":"%d"}' if quote else b'":%d}')
            t["R"] = args + ret + pname + end
            t["RC"] = args + ret + pname + b',"cgroup_id":%d' + end
            whole = mask == (1 << 64) - 1 and sign == 1 << 63
            src += ["        r = retval" if whole else "        r = retval & %d" % mask]
            if sign <= mask and mask != (1 << 64) - 1:  # a 64-bit signed value is already one (retval is)
                src += ["        if r >= %d:" % sign, "            r -= %d" % (sign << 1)]
            src += ["        if cgroup_id:", "            return RC %% (%sr, cgroup_id, cur_time, nanos)" % vals,
                    "        return R %% (%sr, cur_time, nanos)" % vals]
    src += ["    if cgroup_id:", "        return TC %% (%scgroup_id, cur_time, nanos)" % vals,
            "    return T %% (%scur_time, nanos)" % vals]
    ns: dict[str, Any] = {"unpack_argq": ARGQ.unpack_from, "unpack_arg": ARG.unpack_from, "unsafe": UNSAFE,
                          "safe": set(), **t}
    exec(compile("\n".join(src), f"<quick rest of {plan.hook}>", "exec"), ns)  # our own source
    rest: QuickRest = ns["rest"]
    return rest


BODY_KEYS = frozenset({"process", "parent", "args", "return", "policy_name", "action", "signal", "policy_mode",
                        "action_taken", "cgroup_id"})


def json_middle(body: Mapping[str, Any]) -> bytes:
    """The plan's fixed fields as they sit inside the body's JSON (after process/parent)."""
    if BODY_KEYS.intersection(body):
        raise ValueError(f"a hook's fixed event fields may not use the keys {sorted(BODY_KEYS & set(body))}")
    inner = orjson.dumps(dict(body))[1:-1]
    return b"," + inner if inner else b""


def action_fields(plan: HookPlan, sel: int, actions: int, flags: int) -> dict[str, Any]:
    """The action part of a body whose selector (``sel`` < the hook's ``nsel``: the decoders check) took a
    signal action."""
    out: dict[str, Any] = {"action": ACTION_NAMES[S.ACT_SIGKILL if actions & S.ACT_SIGKILL else S.ACT_SIGNAL]}
    if actions & S.ACT_SIGNAL:
        out["signal"] = plan.compiled.cfg.sel[sel].signal
    monitoring = bool(flags & S.EV_MONITOR)
    out["policy_mode"] = "monitoring" if monitoring else "enforcement"
    out["action_taken"] = not monitoring and not (flags & S.EV_SIGNAL_ERR)
    return out


def notify_action(actions: int) -> str:
    """The action an event without a signal reports: GetUrl or DnsLookup when its selector has one (the request
    the agent made for it, `sensorium.actions`), else Post. A signal is reported before either (Tetragon reports
    one action per event; the kill is the one that changed what the process could do)."""
    if actions & S.ACT_GETURL:
        return "KPROBE_ACTION_GETURL"
    if actions & S.ACT_DNSLOOKUP:
        return "KPROBE_ACTION_DNSLOOKUP"
    return "KPROBE_ACTION_POST"


def render_args(rec: bytes, args: Sequence[S.ArgPlan]) -> list[dict[str, Any]] | None:
    """The arguments of a ``struct sens_event`` record (selectors.h) as Tetragon's KprobeArgument dicts, or
    None when the record is malformed: shorter than its ``data_len``, an argument cut or of another kind
    than ``args`` says, or data left after the arguments. The kernel writes the arguments in order, each a
    ``sens_arg_rec`` header and its value (8 bytes for an integer; ``len`` bytes padded to 8 otherwise), and
    ``data_len`` is exactly their size; it may write fewer arguments than the hook has (no room left), never
    more. Every decoder of these records (the engine's, the lsm sensor's) reads them through these rules."""
    n = len(rec)
    if n < EV_SIZE:
        return None
    end = EV_SIZE + EV.unpack_from(rec)[14]
    if end > n:
        return None
    out: list[dict[str, Any]] = []
    pos = EV_SIZE
    for ap in args:
        if pos >= end:
            break
        if pos + 8 > end:
            return None
        kind, aflags, alen, _ = ARG.unpack_from(rec, pos)
        if kind != ap.kind:
            return None
        pos += 8
        if kind == S.ARG_INT:
            if pos + 8 > end:
                return None
            out.append(render_int(ap, Q.unpack_from(rec, pos)[0]))
            pos += 8
        else:
            data = rec[pos:pos + alen]
            pos += (alen + 7) & ~7
            if pos > end:
                return None
            out.append(render_bytes(ap, data, aflags))
    return out if pos == end else None


def body_of(rec: bytes, plan: HookPlan, policy_name: str, proc: Mapping[str, Any],
             parent: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The event body of one record as a dict (None: malformed, see `render_args`): the reference for the
    JSON `EventRing.decode` assembles."""
    (_t, _f, _size, _kt, _pid, _tid, _pol, _hook, retval, cgroup_id, sel, actions, flags, _n,
     _data_len) = EV.unpack_from(rec)
    rp = plan.return_plan
    captured = rp is not None and rp.kind != S.ARG_INT  # a returned sock: read at return, the record's last argument
    args = render_args(rec, [*plan.args, rp] if captured and rp is not None else plan.args)
    if args is None:
        return None
    ret = args.pop() if captured and len(args) > len(plan.args) else None
    body: dict[str, Any] = {"process": proc}
    if parent:
        body["parent"] = parent
    body.update(plan.body)
    body["args"] = args
    if rp is not None and flags & S.EV_HAS_RET:
        if not captured:
            body["return"] = render_int(rp, retval & 0xFFFFFFFFFFFFFFFF)
        elif ret is not None:
            body["return"] = ret
    body["policy_name"] = policy_name
    if actions & (S.ACT_SIGKILL | S.ACT_SIGNAL):
        body.update(action_fields(plan, sel, actions, flags))
    else:
        body["action"] = notify_action(actions)
    if cgroup_id:
        body["cgroup_id"] = cgroup_id
    return body


def render_int(ap: S.ArgPlan, v: int) -> dict[str, Any]:
    size = ap.size
    if size < 8:
        v &= (1 << (size * 8)) - 1
    if ap.signed and v >= 1 << (size * 8 - 1):
        v -= 1 << (size * 8)
    key = ap.json_key
    if key == "syscall_id":  # a 32-bit task's id carries Tetragon's IS_32BIT mark
        abi = "i386" if v & S.SYSCALL_I386 else SYSCALL_ABI
        out: dict[str, Any] = {"syscall_id": {"id": v & ~S.SYSCALL_I386, "abi": abi}}
    elif key in K.INT_KEYS:  # a capability, a capability set (sensorium.hooks.kstructs)
        out = {key: K.render_int(key, v)}
    else:
        out = {key: v}
    if ap.label:
        out["label"] = ap.label
    return out


def render_bytes(ap: S.ArgPlan, data: bytes, flags: int) -> dict[str, Any]:
    key = ap.json_key
    if key == "bytes_arg":
        out: dict[str, Any] = {key: base64.b64encode(data).decode()}
        if flags & S.ARGF_TRUNC:
            out = {"truncated_bytes_arg": {"bytes_arg": out[key], "orig_size": None}}
    elif key in ("sock_arg", "sockaddr_arg", "skb_arg"):  # a struct sens_sock (S.ARG_SOCK)
        out = {key: S.render_sock(key, data)}
    elif key in K.STRUCT_KEYS:  # a kernel structure (sensorium.hooks.kstructs)
        out = {key: K.render_struct(key, ap.deref, data)}
    else:
        text = data.decode("utf-8", "backslashreplace")
        if key in ("file_arg", "path_arg", "linux_binprm_arg"):
            out = {key: {"path": text}}
        else:
            out = {key: text}
    if flags & S.ARGF_ERR:
        out["error"] = "unreadable"
    if ap.label:
        out["label"] = ap.label
    return out

