"""The hook decoder's native formatter (fastrest.c): build, load and call it.

``fastrest.c`` is compiled with the system C compiler (``$SENSORIUM_CC``, else ``cc``) on first use into
the build cache (``<cache>/native/<hash>/libsensfast.so``, `sensorium.bpf.native.build_shared`). Where there is no
compiler or the build fails, `load` returns None with the reason in `STATUS`, and the decoder stays on its Python path.
``SENSORIUM_NATIVE_DECODE=0`` forces the Python path (the benchmark compares both).
"""

from __future__ import annotations

import array
import ctypes
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sensorium import schema
from sensorium.bpf.native import build_shared, native_enabled
from sensorium.bpf.ringbuf import RecordBlob

__all__ = ["SfHook", "MAX_ARGS", "STATUS", "load", "enabled", "Formatter"]

SOURCE = Path(__file__).resolve().parent / "fastrest.c"
MAX_ARGS = 8
ST_OK, ST_FALLBACK, ST_SKIP, ST_SHORT = 0, 1, 2, 3
MAX_SLOTS = 256

STATUS = "native formatter not loaded yet"
_lock = threading.Lock()
_lib: Any = None
_tried = False


class SfHook(ctypes.Structure):
    """``struct sf_hook`` of fastrest.c."""

    _fields_ = [("policy_id", ctypes.c_uint32), ("hook_id", ctypes.c_uint32), ("nargs", ctypes.c_int32),
                ("ret", ctypes.c_int32), ("akind", ctypes.c_uint8 * MAX_ARGS), ("abits", ctypes.c_uint8 * MAX_ARGS),
                ("asigned", ctypes.c_uint8 * MAX_ARGS), ("rbits", ctypes.c_uint8), ("rsigned", ctypes.c_uint8),
                ("aquote", ctypes.c_uint8), ("rquote", ctypes.c_uint8), ("cgroup", ctypes.c_uint8),
                ("pad", ctypes.c_uint8 * 3), ("frag_off", ctypes.c_uint32 * MAX_ARGS),
                ("frag_len", ctypes.c_uint32 * MAX_ARGS), ("ret_off", ctypes.c_uint32), ("ret_len", ctypes.c_uint32),
                ("pn_off", ctypes.c_uint32), ("pn_len", ctypes.c_uint32)]


def enabled() -> bool:
    """False when ``SENSORIUM_NATIVE_DECODE`` is 0/false/no/off (forced Python path)."""
    return native_enabled()


def _build() -> Path:
    return build_shared(SOURCE, "libsensfast")


def load() -> Any:
    """The loaded library (ctypes CDLL with ``sf_format`` typed), or None (reason in `STATUS`)."""
    global _lib, _tried, STATUS
    if _tried:
        return _lib
    with _lock:
        if _tried:
            return _lib
        try:
            lib = ctypes.CDLL(str(_build()))
            f = lib.sf_format
            P = ctypes.c_void_p
            f.restype = ctypes.c_int64
            f.argtypes = [P, ctypes.c_uint64, P, ctypes.c_uint32, P, ctypes.c_uint32, P, ctypes.c_uint64,
                          P, ctypes.c_uint32, ctypes.c_int64, P, ctypes.c_uint64, P, P, P, P, P, ctypes.c_uint32]
            _lib, STATUS = lib, "native"
        except Exception as e:  # noqa: BLE001 - the Python path does everything, only slower
            _lib, STATUS = None, f"python (native formatter unavailable: {e})"
        _tried = True
    return _lib


def _addr(buf: Any) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buf)) if len(buf) else 0


class Formatter:
    """The native formatter bound to one set of loaded hooks (rebuilt when the hooks change)."""

    def __init__(self, lib: Any, specs: Sequence[tuple[int, int, Any, str]]) -> None:
        """``specs``: (policy_id, hook_id, plan, policy_name) of every loaded hook; a hook whose records
        must all take the Python path has plan None."""
        import orjson

        self.lib = lib
        frags = bytearray()

        def frag(b: bytes) -> tuple[int, int]:
            off = len(frags)
            frags.extend(b)
            return off, len(b)

        hooks = (SfHook * max(1, len(specs)))()
        for i, (policy_id, hook_id, plan, policy_name) in enumerate(specs):
            h = hooks[i]
            h.policy_id, h.hook_id, h.nargs = policy_id, hook_id, -1
            if plan is None:
                continue
            desc = describe(plan)
            if desc is None:
                continue
            args, ret = desc
            for a, (kind, key, bits, signed, quote) in enumerate(args):
                sep = b"," if a else b""
                h.akind[a], h.abits[a], h.asigned[a] = kind, bits, signed
                if kind == 1:
                    h.aquote |= quote << a
                    h.frag_off[a], h.frag_len[a] = frag(sep + b'{"' + key + (b'":"' if quote else b'":'))
                else:
                    h.frag_off[a], h.frag_len[a] = frag(sep + b'{"string_arg":"')
            if ret is None:
                h.ret = 0
            elif ret == ():
                h.ret = 2
            else:
                key, h.rbits, h.rsigned, h.rquote = ret
                h.ret = 1
                h.ret_off, h.ret_len = frag(b',"return":{"' + key + (b'":"' if h.rquote else b'":'))
            h.cgroup = int(schema.extended())
            h.pn_off, h.pn_len = frag(b',"policy_name":' + orjson.dumps(policy_name)
                                      + b',"action":"KPROBE_ACTION_POST"')
            h.nargs = len(args)
        self.hooks, self.nhooks = hooks, len(specs)
        self.frags = bytes(frags) or b"\0"
        self.frags_buf = ctypes.create_string_buffer(self.frags, len(self.frags))
        self._busy = threading.Lock()
        self._bufs: dict[str, Any] = {}

    def format(self, records: Sequence[bytes], tail: bytes, boot_ns: int) -> tuple[Any, ...] | None:
        """Run over one batch: (status bytes, out bytes, out_end list, slot list, slots list, slot_n list,
        nslots) or None when the call refused its arguments. A `RecordBlob` (native ring drain) is
        formatted from its blob as it is; other sequences are joined first."""
        n = len(records)
        if isinstance(records, RecordBlob):
            blob, lens = records.blob, records.lens
        else:
            blob = b"".join(records)
            lens = array.array("I", map(len, records))
        cap = 2 * len(blob) + n * (len(tail) + 64 + min(len(self.frags), 4096)) + 64
        if not self._busy.acquire(blocking=False):  # another thread formats: buffers of its own
            return self._format(records, blob, lens, cap, tail, boot_ns, {})
        try:
            return self._format(records, blob, lens, cap, tail, boot_ns, self._bufs)
        finally:
            self._busy.release()

    def _format(self, records: Sequence[bytes], blob: bytes, lens: Any, cap: int, tail: bytes, boot_ns: int,
                bufs: dict[str, Any]) -> tuple[Any, ...] | None:
        # The buffers are kept between batches (zeroing megabytes per batch costs more than the formatting);
        # what is returned is copied out of them.
        n = len(records)
        if bufs.get("cap", -1) < cap:
            bufs["out"], bufs["cap"] = ctypes.create_string_buffer(cap), cap
        if bufs.get("n", -1) < n:
            bufs["out_end"], bufs["status"] = array.array("Q", bytes(8 * n)), bytearray(n)
            bufs["slot"], bufs["n"] = array.array("I", bytes(4 * n)), n
        if "slots" not in bufs:
            bufs["slots"] = array.array("I", bytes(16 * MAX_SLOTS))
            bufs["slot_n"] = array.array("I", bytes(4 * MAX_SLOTS))
        out, out_end, status, slot = bufs["out"], bufs["out_end"], bufs["status"], bufs["slot"]
        slots, slot_n = bufs["slots"], bufs["slot_n"]
        tail_buf = ctypes.create_string_buffer(tail, len(tail))
        ns = self.lib.sf_format(blob, len(blob), _addr(lens), n, ctypes.addressof(self.hooks), self.nhooks,
                                ctypes.addressof(self.frags_buf), len(self.frags), ctypes.addressof(tail_buf),
                                len(tail), boot_ns, ctypes.addressof(out), cap, _addr(out_end), _addr(status),
                                _addr(slot), _addr(slots), _addr(slot_n), MAX_SLOTS)
        if ns < 0:
            return None
        used = out_end[n - 1] if n else 0
        return (status[:n], ctypes.string_at(out, used), out_end[:n], slot[:n], slots[:4 * ns], slot_n[:ns],
                ns)


def describe(plan: Any) -> tuple[list[tuple[int, bytes, int, int, int]], Any] | None:
    """What fastrest.c renders of a hook's usual records, from the plan's fast descriptions (the same
    ones render.quick_rest generates its formatter from): per argument (1, key, bits, signed, quoted) for
    a plain integer, (2, b"", 0, 0, 0) for a plain string_arg; the return value as None (no return plan, or
    one the event format does not show), () (present but not a plain integer: such records fall back) or
    (key, bits, signed, quoted). None when some argument is of another kind (every record of the hook then
    takes the Python path). ``quoted``: a 64-bit integer, written as a JSON string (`sensorium.schema`)."""
    fast = plan.fast
    if len(fast) > MAX_ARGS:
        return None
    args = []
    for ap, f in fast:
        if f is None:
            return None
        if len(f) == 4 and ap.kind == 1:  # S.ARG_INT
            key, mask, sign, quote = f
            bits = mask.bit_length()
            if bits not in (8, 16, 32, 64) or mask != (1 << bits) - 1 or sign not in (1 << (bits - 1), 1 << 64):
                return None
            if b'"' in key or b"\\" in key or any(c < 0x20 for c in key):
                return None
            args.append((1, key, bits, int(sign <= mask), int(quote)))
        elif f == ("string_arg",) and ap.kind == 2:  # S.ARG_STR: fastrest.c renders no other kind
            args.append((2, b"", 0, 0, 0))
        else:
            return None
    if plan.return_plan is None or not schema.exported(plan.kind, "return"):
        ret: Any = None
    elif plan.ret_fast is None:
        ret = ()
    else:
        key, mask, sign, quote = plan.ret_fast
        bits = mask.bit_length()
        if bits not in (8, 16, 32, 64) or mask != (1 << bits) - 1 or sign not in (1 << (bits - 1), 1 << 64):
            return None
        if b'"' in key or b"\\" in key or any(c < 0x20 for c in key):
            return None
        ret = (key, bits, int(sign <= mask), int(quote))
    return args, ret
