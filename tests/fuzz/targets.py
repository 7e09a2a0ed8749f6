"""Coverage-guided fuzz targets (atheris): one ``one_input(data: bytes)`` per input reader of the agent.

Each target raises (an uncaught exception is libFuzzer's crash) when the code under test breaks a promise:
anything but the project's error escaping, an error message that is not one line naming its input, an API
answer that is an ``internal`` error or accepts what the request decoder must refuse, a ring record that
vanishes uncounted or comes out differently from the native formatter and the Python path. Hangs are
libFuzzer's ``-timeout``. The same properties as the hypothesis tests (tests/test_fuzz_*.py), reached by
coverage feedback instead of strategies. Run through tests/fuzz/run.py (bounded in the suite, long with
``make fuzz``).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
for p in (TESTS, REPO / "scripts"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

# What the instrumented import covers: the agent's own code and the YAML parser it drives.
INSTRUMENT = ("sensorium", "sensorium_sensors", "sensorium_exporters", "yaml", "hostile_corpus", "hostile",
              "record_fuzz")


def _one_line(msg: str, starts: str) -> None:
    if not msg.startswith(starts) or "\n" in msg or "\r" in msg:
        raise AssertionError(f"unclear error: {msg[:300]!r}")


def policy() -> Callable[[bytes], None]:
    """A policy file through `sensorium policy check` (loader, model, kernel-independent rules)."""
    import hostile_corpus as H

    from sensorium.yamlsrc import SourceError

    reg = H.registry()

    def one_input(data: bytes) -> None:
        try:
            H.check_policy(data, "p.yaml", reg)
        except SourceError as exc:
            _one_line(str(exc), "p.yaml")

    return one_input


def config() -> Callable[[bytes], None]:
    """An agent config file through what `sensorium run --config` validates before starting anything."""
    import hostile_corpus as H

    from sensorium.yamlsrc import SourceError

    reg = H.registry()
    # One file, rewritten per input, in the repo's build directory (libFuzzer ends the process without
    # running cleanups, so a temporary directory would be left behind by every run).
    path = REPO / "build" / "fuzz" / "work" / f"config-{os.getpid()}" / "agent.yaml"
    for old in path.parent.parent.glob("config-*"):
        if not Path(f"/proc/{old.name.removeprefix('config-')}").exists():
            shutil.rmtree(old, ignore_errors=True)  # a finished run's
    path.parent.mkdir(parents=True, exist_ok=True)

    def one_input(data: bytes) -> None:
        path.write_bytes(data)
        try:
            H.check_config(path, reg)
        except SourceError as exc:
            _one_line(str(exc), str(path))

    return one_input


API_CODES = {"bad_request", "unknown_method", "invalid_params", "invalid_policy", "not_found", "unavailable"}


def api() -> Callable[[bytes], None]:
    """Request lines through the API server's decoder and dispatch (`ApiServer.answer`, what the socket
    server runs for each line), with the test agent of tests/test_api.py (real policy manager, table sensors)."""
    from test_api import LiveAgent

    from sensorium.api import METHODS, ApiServer, encode_response

    state = {"n": 0, "srv": None}

    def server() -> ApiServer:
        if state["srv"] is None or state["n"] % 500 == 0:  # policies added by the fuzzer do not pile up
            state["srv"] = ApiServer("/nonexistent/fuzz.sock", LiveAgent())
        state["n"] += 1
        return state["srv"]  # type: ignore[return-value]

    def one_input(data: bytes) -> None:
        srv = server()
        for line in data.split(b"\n")[:16]:
            if not line.strip():
                continue
            msg, stream = srv.answer(line)
            out = encode_response(msg)
            if out.count(b"\n") != 1 or not out.endswith(b"\n"):
                raise AssertionError(f"response is not one line: {out[:200]!r}")
            back = json.loads(out)
            if back["ok"] is False:
                err = back["error"]
                if err["code"] not in API_CODES:
                    raise AssertionError(f"{err['code']}: {err['message'][:300]} for {line[:200]!r}")
                _one_line(err["message"], "")
                if not err["message"]:
                    raise AssertionError("empty error message")
                continue
            # Accepted: an oracle apart from the decoder (the stdlib's JSON) must agree it was a request.
            req = json.loads(line)
            if not (isinstance(req, dict) and set(req) <= {"id", "method", "params"}
                    and req.get("method") in METHODS and isinstance(req.get("params", {}), (dict, type(None)))
                    and (req.get("id") is None or (type(req["id"]) in (int, str)))):
                raise AssertionError(f"accepted a bad request: {line[:300]!r} -> {out[:200]!r}")
            if (stream is not None) != (req["method"] == "events.subscribe"):
                raise AssertionError(f"stream for {req['method']}")

    return one_input


def records() -> Callable[[bytes], None]:
    """A batch of ring records (`record_fuzz.split_batch`) through one decoder chosen by the input: the hook
    engine (native formatter and Python paths compared), exec, network, BPF LSM, the socket guard."""
    import record_fuzz as R

    def one_input(data: bytes) -> None:
        head, recs = R.split_batch(data, max_records=16)
        which = head[7] % 5
        if which == 0:
            R.check_hook_batch(R.specs_from_bytes(head), recs, isolation=len(recs) <= 4)
        elif which == 1:
            R.check_exec_batch(recs)
        elif which == 2:
            R.check_net_batch(recs)
        elif which == 3:
            R.check_lsm_batch(head[0] % len(R.LSM_HOOKS), recs)
        else:
            R.check_net_guard_batch(head[0] % 6, recs)

    return one_input


TARGETS: dict[str, Callable[[], Callable[[bytes], None]]] = {
    "policy": policy, "config": config, "api": api, "records": records}


def fastrest_specs() -> list:
    """The hooks of the C harness's table (record_fuzz.HookSpec; argument indexes into record_fuzz.ARG_TYPES)."""
    import record_fuzz as R

    return [R.HookSpec(3, 0, (0, 1, 2, 3, 4, 5, 6, 7), 1, 2), R.HookSpec(3, 1, (11, 11, 6), 0, 0),
            R.HookSpec(3, 2, (11, 9, 8), 2, 5), R.HookSpec(4, 0, (18,), 0, 1)]


def fastrest_tables(out_dir: Path) -> None:
    """The hook table and text fragments the C harness (fastrest_fuzz.c) formats with, built by the agent's
    own `Formatter` from hooks of the kinds it renders natively (every integer width, string_arg, a return
    value) and one it does not (a socket argument: every record falls back)."""
    import record_fuzz as R

    from sensorium.hooks import native as _native

    ring = R.hook_ring(fastrest_specs())
    fmt = _native.Formatter(None, [(k[0], k[1], p, 'policy "q"') for k, (p, _n, _h) in ring.hooks.items()])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "hooks.bin").write_bytes(bytes(fmt.hooks))
    (out_dir / "frags.bin").write_bytes(fmt.frags)
