#!/usr/bin/env python3
"""Write the coverage-guided fuzzers' stored seed corpus, tests/data/fuzz-corpus/<target>/ (deterministic):

    .venv/bin/python tests/fuzz/seeds.py           # (re)write the seeds
    .venv/bin/python tests/fuzz/seeds.py --check   # exit 1 if the stored seeds are not what this writes

Seeds are valid inputs, so the fuzzer starts from the readers' deep paths; the policy and config targets also
read the hostile corpus (tests/data/hostile/) as it stands.
Inputs that once broke something are kept beside them as ``regress-*`` files (never rewritten here) and
replayed by tests/test_fuzz_coverage.py on every run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS), str(TESTS.parent / "scripts"), str(TESTS / "fuzz")]
CORPUS = TESTS / "data" / "fuzz-corpus"


def _name(data: bytes) -> str:
    return "seed-" + hashlib.sha1(data).hexdigest()[:16]


def policy_seeds() -> list[bytes]:
    """The corpus generator's own valid policies (for the sections Tetragon's examples lack). Tetragon's
    examples (tests/data/tetragon-policies) and the hostile corpus (tests/data/hostile/policies) are corpora
    of the run as they stand (tests/fuzz/run.py), so changing either needs nothing here."""
    import hostile_corpus as H

    return [v.encode() for _, v in sorted(H.EXTRA_POLICY_BASES.items())]


def config_seeds() -> list[bytes]:
    import hostile_corpus as H

    return [v.encode() for _, v in sorted(H.CONFIG_BASES.items())]


def api_seeds() -> list[bytes]:
    def line(o: object) -> bytes:
        return json.dumps(o).encode()

    pol = "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: p\nspec:\n  tracepoints:\n" \
          "  - subsystem: syscalls\n    event: sys_enter_openat\n"
    reqs = [
        {"id": 1, "method": "status"}, {"id": "x", "method": "plugins", "params": None},
        {"method": "policy.list", "params": {}}, {"id": 2, "method": "policy.get", "params": {"name": "p"}},
        {"id": 3, "method": "policy.add", "params": {"text": pol, "file": "p.yaml", "mode": "monitoring"}},
        {"id": 4, "method": "policy.set_mode", "params": {"name": "p", "mode": "enforcement"}},
        {"id": 5, "method": "policy.disable", "params": {"name": "p"}},
        {"id": 6, "method": "policy.enable", "params": {"name": "p"}},
        {"id": 7, "method": "policy.delete", "params": {"name": "ns/p"}},
        {"id": 8, "method": "events.subscribe", "params": {"queue_size": 16, "filters": {
            "event_set": ["PROCESS_EXEC"], "binary_regex": ["^/bin/"], "namespace": ["default"],
            "pod_regex": ["a.*"], "policy_names": ["p"]}}},
        {"id": 9, "method": "nope", "params": {"x": [1, {"y": None}]}},
    ]
    out = [line(r) for r in reqs]
    out.append(b"\n".join(out[:4]) + b"\n \r\n" + out[4])  # pipelined, blank lines between
    out += [b'{"method": "status"', b"[1, 2]", b'{"id": true, "method": "status"}', "\u00e9\u2028".encode(),
            b"\xff\xfe{}", b'{"method": "status", "extra": 1}']
    return out


def _hook_record(spec: object, int_value: int = 0xFFFFFFFF_FFFFFF85, text: bytes = '/etc/p"a\\ss\u00e9'.encode(),
                 retval: int = 0) -> bytes:
    """A well-formed hook record of ``spec`` with every argument filled."""
    import record_fuzz as R

    from sensorium.hooks import selectors as S

    args = []
    for i in spec.args:  # type: ignore[attr-defined]
        ap = R.ARG_TYPES[i]
        if ap.kind == S.ARG_INT:
            args.append(R.HookArg(i, S.ARG_INT, 0, int_value))
        elif ap.kind == S.ARG_SOCK:
            args.append(R.HookArg(i, ap.kind, 0, struct.pack("<6H", 2, 80, 6, 1, 1234, 4) + bytes(range(32))
                                  + b"\1\0\0\0"))
        else:
            args.append(R.HookArg(i, ap.kind, 0, text))
    sel = 0 if spec.nsel else S.MAX_SELECTORS  # type: ignore[attr-defined]
    return R.HookRecord(spec, args, sel=sel, retval=retval).encode()  # type: ignore[arg-type]


def records_seeds() -> list[bytes]:
    import record_fuzz as R

    from sensorium.hooks import selectors as S

    out: list[bytes] = []
    # the hook engine: for a few heads, one well-formed record per hook with every argument type filled
    for h0 in range(0, 24, 3):
        head = bytes([h0, 2 + h0, h0 * 5 % 256, 5, 11, 7, 3, 0])  # head[7] % 5 == 0: the hook decoder
        out.append(R.join_batch(head, [_hook_record(spec) for spec in R.specs_from_bytes(head)]))
    # exec, fork, exit
    e = R.ExecRec(argv=(b"/bin/sh", b"-c", b"echo \"hi\""), binary=b"/bin/sh", cwd=b"/tmp", cg_name=b"cg")
    out.append(R.join_batch(bytes([0, 0, 0, 0, 0, 0, 0, 1]),
                            [e.encode(), R.fork_record(4242, 4300, 2000), R.exit_record(4300, 3000, 0, 9, 4)]))
    # network: tcp connect, accept, close, udp
    tcp = [R.tcp_record(t, pid=77, family=2, sport=40000, dport=443, saddr=[10, 0, 0, 1] + [0] * 12,
                        daddr=[1, 1, 1, 1] + [0] * 12) for t in (R.N.NET_REC_CONNECT, R.N.NET_REC_ACCEPT,
                                                                 R.N.NET_REC_CLOSE)]
    out.append(R.join_batch(bytes([0, 0, 0, 0, 0, 0, 0, 2]),
                            tcp + [R.udp_record(pid=78, family=10, dport=53, protocol=17)]))
    # BPF LSM: one record per hook
    for i in range(len(R.LSM_HOOKS)):
        _plan, prog = R.lsm_program(i)
        spec = R.HookSpec(policy_id=3, hook_id=i, args=tuple(range(len(prog.args))), ret=0, nsel=len(prog.errnos))
        args = [R.HookArg(0, ap.kind, 0, 9 if ap.kind == S.ARG_INT else b"/tmp/x") for ap in prog.args]
        rec = R.HookRecord(spec, args, sel=0 if spec.nsel else S.MAX_SELECTORS).encode()
        out.append(R.join_batch(bytes([i, 0, 0, 0, 0, 0, 0, 3]), [rec]))
    # the socket guard
    for nsel in (0, 2):
        rec = R.net_event(pid=99, policy_id=7, rule=0, hook=1, verdict=1, family=2, protocol=6, dport=9,
                          daddr=(0x0100007F, 0, 0, 0), comm=b"curl")
        out.append(R.join_batch(bytes([nsel, 0, 0, 0, 0, 0, 0, 4]), [rec]))
    return out


def fastrest_seeds() -> list[bytes]:
    """Batches of the C harness's hooks (tests/fuzz/targets.py `fastrest_specs`): each hook's records with
    small and extreme values, plain and escaped text, a batch mixing them all."""
    import record_fuzz as R
    import targets

    out, mixed = [], []
    for spec in targets.fastrest_specs():
        recs = [_hook_record(spec, v, t, r) for v, t, r in ((0, b"/tmp/a", 0), (1 << 63, b"", -1),
                                                            (0x7F, b"\x01\x7f\xff\"\\", 1 << 40))]
        out.append(R.join_batch(bytes(8), recs))
        mixed += recs
    out.append(R.join_batch(bytes([1, 2, 0, 0, 0, 0, 0, 0]), mixed))
    return out


SEEDS = {"policy": policy_seeds, "config": config_seeds, "api": api_seeds, "records": records_seeds,
         "fastrest": fastrest_seeds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    bad = 0
    for target, make in SEEDS.items():
        d = CORPUS / target
        want = {_name(s): s for s in make()}
        have = {p.name: p.read_bytes() for p in d.glob("seed-*")} if d.is_dir() else {}
        if args.check:
            if want != have:
                print(f"{d}: seeds differ from what tests/fuzz/seeds.py writes", file=sys.stderr)
                bad += 1
            continue
        d.mkdir(parents=True, exist_ok=True)
        for name in set(have) - set(want):
            (d / name).unlink()
        for name, data in want.items():
            (d / name).write_bytes(data)
        print(f"{d.relative_to(TESTS.parent)}: {len(want)} seeds")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
