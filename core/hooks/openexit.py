"""Early rejection of opened files: the ``sens_pq`` rodata of the open-exit object (``struct sens_pq_cfg`` in
selectors.h). A hook whose path argument is the opened file (``ret_fd``) is served at sys_exit alone, and the
kernel drops opens no selector can match from the path's length and first/last component before walking it.
"""

from __future__ import annotations

import ctypes

from sensorium.hooks import selectors as S

__all__ = ["PqVal", "PqGroup", "PqSel", "PqCfg", "pq_value", "open_exit_filter", "PQ_LEAF", "PQ_TOP", "PQ_NEVER",
           "PQ_EXACT", "PQ_STARTS", "PQ_ENDS", "PQ_LEN_EQ", "PQ_LEAF_FIRST"]

PQ_LEAF, PQ_TOP, PQ_NEVER = 1, 2, 3
PQ_EXACT, PQ_STARTS, PQ_ENDS = 1, 2, 3
PQ_LEN_EQ, PQ_LEAF_FIRST = 1, 2


class PqVal(ctypes.Structure):
    _fields_ = [("vlen", ctypes.c_uint16), ("flags", ctypes.c_uint8), ("comp", ctypes.c_uint8),
                ("mode", ctypes.c_uint8), ("clen", ctypes.c_uint8), ("str", ctypes.c_uint8), ("coff", ctypes.c_uint8)]


class PqGroup(ctypes.Structure):
    _fields_ = [("nvals", ctypes.c_uint8), ("pad", ctypes.c_uint8 * 7), ("v", PqVal * S.MAX_VALUES)]


class PqSel(ctypes.Structure):
    _fields_ = [("ngroups", ctypes.c_uint8), ("pad", ctypes.c_uint8 * 7), ("g", PqGroup * S.MAX_MATCH_ARGS)]


class PqCfg(ctypes.Structure):
    """``struct sens_pq_cfg``: the rodata ``sens_pq`` of the opened-file object."""

    _fields_ = [("on", ctypes.c_uint8), ("leaf_first", ctypes.c_uint8), ("pad", ctypes.c_uint8 * 6),
                ("sel", PqSel * S.MAX_SELECTORS)]


_PQ_OPS = {S.OPS["Equal"]: "eq", S.OPS["In"]: "eq", S.OPS["Prefix"]: "prefix", S.OPS["Postfix"]: "postfix"}


def pq_value(op: str, v: bytes) -> tuple[int, int, int, int, int, int]:
    """(vlen, flags, comp, mode, clen, coff) of one string value: conditions that the opened file's path S
    (absolute, "/" + components joined by "/", no empty component) meets whenever S matches ``v``:

    Equal v:   len(S) == len(v) and S's last component == v's part after its last "/" (v must start with "/");
    Prefix v:  len(S) >= len(v) and S's first component == v's first component when v goes on past it with
               "/", else starts with it (v must start with "/");
    Postfix v: len(S) >= len(v) and S's last component == v's part after its last "/", or ends with v
               when v has no "/".
    The kernel checks them on paths it walked completely and that fit a captured string (255 bytes).
    PQ_LEAF_FIRST: the last-component condition also holds for a path cut at 255 bytes, so it is checked
    before the walk (an Equal value shorter than 255 bytes can only equal a path that was not cut).
    """
    n = len(v)
    if op == "eq":
        if not v.startswith(b"/"):
            return (n, 1, PQ_NEVER, 0, 0, 0)
        last = v.rfind(b"/")
        return (n, PQ_LEN_EQ | (PQ_LEAF_FIRST if n < S.STR_MAX - 1 else 0), PQ_LEAF, PQ_EXACT, n - last - 1, last + 1)
    if op == "prefix":
        if not v.startswith(b"/"):
            return (n, 0, PQ_NEVER, 0, 0, 0)
        rest = v[1:]
        if not rest:
            return (n, 0, 0, 0, 0, 0)
        if b"/" in rest:
            return (n, 0, PQ_TOP, PQ_EXACT, rest.index(b"/"), 1)
        return (n, 0, PQ_TOP, PQ_STARTS, len(rest), 1)
    if b"/" in v:
        last = v.rfind(b"/")
        return (n, 0, PQ_LEAF, PQ_EXACT, n - last - 1, last + 1)
    return (n, 0, PQ_LEAF, PQ_ENDS, n, 0)


def open_exit_filter(cfg: S.HookCfg) -> PqCfg:
    """The early-rejection table of a hook whose path argument is the opened file (``ret_fd``): per selector,
    its matchArgs with a positive string operator on that argument. ``on`` only when every selector has
    one (a selector without any may match anything, so nothing can be rejected early)."""
    pq = PqCfg()
    if cfg.nsel == 0:
        return pq
    on = True
    for i in range(cfg.nsel):
        sel, out = cfg.sel[i], pq.sel[i]
        for k in range(sel.nargs):
            m = sel.args[k]
            if m.arg >= cfg.nargs or not cfg.args[m.arg].ret_fd or cfg.args[m.arg].kind != S.ARG_STR:
                continue
            op = _PQ_OPS.get(m.op)
            if op is None or m.nvals == 0:
                continue
            grp = out.g[out.ngroups]
            for j in range(m.nvals):
                si = m.str_first + j
                st = cfg.strs[si]
                v = bytes(st.s[:st.len]) if st.len <= S.STR_MAX - 1 else None
                if v is None or len(v) != st.len:  # a NUL inside: never rejected early
                    pv = (st.len, 0, 0, 0, 0, 0)
                else:
                    pv = pq_value(op, v)
                d = grp.v[j]
                d.vlen, d.flags, d.comp, d.mode, d.clen, d.coff = pv
                d.str = si
                if pv[1] & PQ_LEAF_FIRST:
                    pq.leaf_first = 1
            grp.nvals = m.nvals
            out.ngroups += 1
        if out.ngroups == 0:
            on = False
    pq.on = int(on)
    return pq

