"""Property-based fuzzing (hypothesis) of the local API's request decoder, over a real unix socket and the real
server (`sensorium.api.ApiServer` with the policy manager of tests/test_api.py's `LiveAgent`).

Requests made bad by construction: lines that are not JSON (random bytes, JSON-ish pieces, bytes that are not
UTF-8, NUL), JSON that is not a request object, ids, methods and params of the wrong type, unknown top-level
keys, unknown methods, every method's parameters with a wrong type, a value out of range or an unknown key,
deep nesting, hostile policy texts; pipelined on one connection with blank lines and good requests between
them; lines too long for the server to read, connections that end mid-line; slow clients holding every
connection slot (slowloris). Properties:

* every non-blank line gets exactly one response line, in order, on the same connection;
* a bad request gets ``ok: false`` with the code its fault deserves (``bad_request``, ``unknown_method``,
  ``invalid_params`` naming the parameter, ``invalid_policy`` naming the file, ``request_too_large``) and a
  one-line message; ``internal`` (a handler's exception) counts as a traceback;
* no request goes unanswered for `reliability.HANG_S`, and the server answers a good request afterwards;
* nothing the server logs carries a traceback (``log.exception``) or is an error;
* a request line that does not arrive whole within the request deadline is answered ``request_timeout`` and
  its connection closed, and a client beyond the connection cap is told ``busy`` at once.

The normal suite runs a bounded, reproducible number of examples (derandomized). The long run:

    SENSORIUM_FUZZ=long .venv/bin/python -m pytest -p no:cacheprovider tests/test_fuzz_api.py

Figures go to build/reliability/api-*.json (docs/reliability.md).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability import HANG_S, Hang, Tally
from test_api import LiveAgent

from sensorium.api import (
    MAX_FILTER_PATTERNS,
    MAX_PATTERN_LEN,
    MAX_QUEUE_EVENTS,
    MAX_REQUEST_BYTES,
    METHODS,
    POLICY_KEY_MAX,
    ApiServer,
)
from sensorium.policy import MAX_POLICY_BYTES

LONG = os.environ.get("SENSORIUM_FUZZ") == "long"
EXAMPLES = int(os.environ.get("SENSORIUM_FUZZ_EXAMPLES") or (10_000 if LONG else 300))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not LONG, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

pytestmark = pytest.mark.fuzz

CODES = {"bad_request", "unknown_method", "invalid_params", "invalid_policy", "not_found", "request_too_large",
         "unavailable"}


class _LogTracebacks(logging.Handler):
    """Log records of the agent that carry a traceback (``log.exception``) or are errors: none may appear."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.ERROR:
            self.records.append(f"{record.name}: {record.getMessage()[:200]}")


@pytest.fixture(scope="module")
def logged() -> Iterator[_LogTracebacks]:
    h = _LogTracebacks()
    logger = logging.getLogger("sensorium")
    logger.addHandler(h)
    try:
        yield h
    finally:
        logger.removeHandler(h)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, logged: _LogTracebacks) -> Iterator[ApiServer]:
    srv = ApiServer(tmp_path_factory.mktemp("api") / "run" / "api.sock", LiveAgent())
    srv.start()
    yield srv
    srv.stop()


def _no_logged_tracebacks(t: Tally, logged: _LogTracebacks) -> None:
    """What the server logged with a traceback during this test counts as a traceback of the test."""
    t.tracebacks.extend(f"logged: {r}" for r in logged.records)
    logged.records.clear()


class Conn:
    """One client connection that sends raw bytes and reads response lines, each within HANG_S."""

    def __init__(self, path: Path) -> None:
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # blocking connect: with a timeout set, a unix connect fails (EAGAIN) when the listen backlog is full
        # for an instant instead of waiting for the acceptor
        self.s.connect(str(path))
        self.s.settimeout(HANG_S)
        self.buf = b""

    def send(self, data: bytes) -> None:
        try:
            self.s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed (an oversized line): the answer is read below

    def line(self) -> bytes | None:
        """The next response line; None when the server closed the connection; raises Hang after HANG_S."""
        while b"\n" not in self.buf:
            try:
                chunk = self.s.recv(1 << 16)
            except TimeoutError:
                raise Hang() from None
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def close(self) -> None:
        self.s.close()


def alive(server: ApiServer) -> bool:
    c = Conn(server.path)
    try:
        c.send(b'{"id": "alive", "method": "status"}\n')
        r = orjson.loads(c.line() or b"{}")
        return r.get("ok") is True and r.get("id") == "alive"
    finally:
        c.close()


# ---- requests made bad by construction: (what, line, expected codes, words the message must hold) -------

JSON_PIECES = ['{', '}', '[', ']', '"method"', '"params"', '"id"', ':', ',', '"status"', '"policy.add"', 'null',
               'true', '1e999', '-0', '18446744073709551616', '"\\ud800"', '"\\u0000"', '" "', '\\', '"', "'",
               '{"method": "status"', 'NaN', 'Infinity', '0x10', '01', '/*', '\t', '\r', '\x00', 'é', '\u2028']
scalar = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70),
                   st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
json_value = st.recursive(scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                          st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                          max_leaves=8)
not_str = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                    st.lists(scalar, max_size=2), st.dictionaries(st.text(max_size=5), scalar, max_size=2))
not_str_or_null = not_str.filter(lambda v: v is not None)
not_int = st.one_of(st.booleans(),
                    st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer()),
                    st.text(max_size=8), st.lists(st.integers(), max_size=2),
                    st.dictionaries(st.text(max_size=3), st.integers(), max_size=1))
not_list = st.one_of(st.booleans(), st.integers(), st.text(max_size=8), st.dictionaries(st.text(max_size=3), scalar,
                                                                                          max_size=1))
NAMED = ("policy.get", "policy.delete", "policy.enable", "policy.disable")


def _line(obj: Any) -> bytes:
    # The stdlib writes what orjson would refuse to (integers past 64 bits); non-ASCII goes as raw UTF-8.
    return json.dumps(obj, ensure_ascii=False).encode()


def _params_faults() -> st.SearchStrategy[tuple[str, bytes, set[str], list[str]]]:
    """A known method with one parameter made wrong: (what, line, {"invalid_params"}, [the parameter])."""
    unknown_key = st.text(min_size=1, max_size=10).filter(lambda k: k not in ("name", "text", "file", "mode",
                                                                               "filters", "queue_size"))
    filters = ("event_set", "binary_regex", "namespace", "pod_regex", "policy_names")
    out = [
        st.tuples(st.sampled_from(["status", "plugins", "policy.list"]), unknown_key, json_value).map(
            lambda t: ("unknown parameter", _line({"method": t[0], "params": {t[1]: t[2]}}), {"invalid_params"},
                       [t[1]])),
        st.tuples(st.sampled_from(NAMED), not_str).map(
            lambda t: ("name of the wrong type", _line({"method": t[0], "params": {"name": t[1]}}), {"invalid_params"},
                       ["name"])),
        st.tuples(st.sampled_from(NAMED), st.sampled_from(["", "x" * (POLICY_KEY_MAX + 1)])).map(
            lambda t: ("name too short or too long", _line({"method": t[0], "params": {"name": t[1]}}),
                       {"invalid_params"}, ["name"])),
        st.sampled_from(NAMED + ("policy.set_mode", "policy.add")).map(
            lambda m: ("a required parameter missing", _line({"method": m, "params": {}}), {"invalid_params"},
                       ["text" if m == "policy.add" else "name"])),
        st.tuples(st.sampled_from(["text", "file", "mode"]), not_str_or_null).map(
            lambda t: ("policy.add parameter of the wrong type",
                       _line({"method": "policy.add", "params": {"text": "x", t[0]: t[1]} if t[0] != "text"
                              else {"text": t[1]}}), {"invalid_params"}, [t[0]])),
        st.text(max_size=12).filter(lambda m: m not in ("enforcement", "monitoring")).map(
            lambda m: ("an unknown mode", _line({"method": "policy.set_mode", "params": {"name": "p", "mode": m}}),
                       {"invalid_params"}, ["mode"])),
        st.just(("a policy text over the size cap",
                 _line({"method": "policy.add", "params": {"text": "a" * (MAX_POLICY_BYTES + 1)}}), {"invalid_params"},
                 ["text"])),
        st.just(("a file name over 4096 characters",
                 _line({"method": "policy.add", "params": {"text": "a", "file": "f" * 4097}}), {"invalid_params"},
                 ["file"])),
        st.one_of(not_int, st.integers(-(1 << 40), 15), st.integers(MAX_QUEUE_EVENTS + 1, 1 << 62)).map(
            lambda q: ("queue_size of the wrong type or range",
                       _line({"method": "events.subscribe", "params": {"queue_size": q}}), {"invalid_params"},
                       ["queue_size"])),
        st.tuples(st.sampled_from(filters), not_list).map(
            lambda t: ("a stream filter of the wrong type",
                       _line({"method": "events.subscribe", "params": {"filters": {t[0]: t[1]}}}), {"invalid_params"},
                       [t[0]])),
        st.sampled_from(filters[1:]).map(
            lambda f: ("a stream filter with too many patterns",
                       _line({"method": "events.subscribe",
                              "params": {"filters": {f: ["a"] * (MAX_FILTER_PATTERNS + 1)}}}),
                       {"invalid_params"}, [f])),
        st.sampled_from(["(", "[", "a{2,1}", "*", "(?P<", "\\", "x" * (MAX_PATTERN_LEN + 1)]).map(
            lambda rx: ("a stream filter regex that does not compile or is too long",
                        _line({"method": "events.subscribe", "params": {"filters": {"binary_regex": [rx]}}}),
                        {"invalid_params"}, ["regex"])),
        st.text(max_size=12).filter(lambda v: v.upper() not in ("PROCESS_EXEC", "PROCESS_EXIT", "PROCESS_KPROBE",
                                                                 "PROCESS_TRACEPOINT", "PROCESS_UPROBE",
                                                                 "PROCESS_LSM")).map(
            lambda v: ("an unknown event type in a stream filter",
                       _line({"method": "events.subscribe", "params": {"filters": {"event_set": [v]}}}),
                       {"invalid_params"}, ["event_set"])),
        st.tuples(st.text(min_size=1, max_size=10).filter(lambda k: k not in filters), scalar).map(
            lambda t: ("an unknown stream filter",
                       _line({"method": "events.subscribe", "params": {"filters": {t[0]: t[1]}}}), {"invalid_params"},
                       [t[0]])),
    ]
    return st.one_of(*out)


def _hostile_policies() -> st.SearchStrategy[tuple[str, bytes, set[str], list[str]]]:
    pieces = ["apiVersion: cilium.io/v1alpha1\n", "kind: TracingPolicy\n", "metadata:\n  name: p\n", "spec:\n",
              "  tracepoints:\n", "  - subsystem: x\n", "&a [*a]\n", "!!python/object:os.system\n", "\0", "\t",
              "{{{{", "- - -", "\xff", "a: b\n" * 3]
    text = st.lists(st.sampled_from(pieces), max_size=12).map("".join).filter(lambda s: s.strip() != "")
    file = st.one_of(st.none(), st.text(min_size=1, max_size=30).filter(lambda f: "\n" not in f and "\r" not in f))
    return st.tuples(text, file).map(
        lambda t: ("a hostile policy text", _line({"method": "policy.add", "params": {"text": t[0], "file": t[1]}}),
                   {"invalid_policy"}, [t[1] or "<api>"]))


def _envelope_faults() -> st.SearchStrategy[tuple[str, bytes, set[str], list[str]]]:
    non_blank = lambda b: b.strip() != b""  # noqa: E731
    known = {"method", "params", "id"}
    return st.one_of(
        st.binary(min_size=1, max_size=300).map(lambda b: b.replace(b"\n", b" ")).filter(non_blank).map(
            lambda b: ("random bytes", b, {"bad_request"}, [])),
        st.lists(st.sampled_from(JSON_PIECES), min_size=1, max_size=30).map("".join).map(
            lambda s: s.encode("utf-8", "surrogatepass").replace(b"\n", b" ")).filter(non_blank).filter(
            lambda b: not _is_request(b)).map(lambda b: ("JSON-ish pieces", b, {"bad_request"}, [])),
        st.one_of(scalar, st.lists(json_value, max_size=3)).map(
            lambda v: ("JSON that is not an object", _line(v), {"bad_request"}, [])),
        st.one_of(st.booleans(), st.floats(allow_nan=False, allow_infinity=False), st.lists(scalar, max_size=2),
                  st.dictionaries(st.text(max_size=3), scalar, max_size=2)).map(
            lambda i: ("an id that is not an integer or a string", _line({"id": i, "method": "status"}),
                       {"bad_request"}, ["id"])),
        st.tuples(st.text(min_size=1, max_size=10).filter(lambda k: k not in known), json_value).map(
            lambda t: ("an unknown request key", _line({"method": "status", t[0]: t[1]}), {"bad_request"},
                       ["unknown request keys"])),
        not_str.map(lambda m: ("a method that is not a string", _line({"method": m}), {"bad_request"}, ["method"])),
        st.one_of(st.booleans(), st.integers(), st.text(max_size=5), st.lists(scalar, max_size=2)).map(
            lambda p: ("params that are not an object", _line({"method": "status", "params": p}), {"bad_request"},
                       ["params"])),
        st.text(max_size=80).filter(lambda m: m not in METHODS).map(
            lambda m: ("an unknown method", _line({"method": m, "params": {}}), {"unknown_method"},
                       ["unknown method"])),
        st.tuples(st.integers(2000, 20000), st.sampled_from(["[", '{"a":'])).map(
            lambda t: ("JSON nested deeper than the parser goes", (t[1] * t[0]).encode(), {"bad_request"}, ["depth"])),
        st.integers(1, 900).map(
            lambda n: ("deep JSON inside params",
                       b'{"method": "status", "params": {"x": ' + b"[" * n + b"]" * n + b"}}",
                       {"invalid_params"}, ["x"])),
    )


def _is_request(b: bytes) -> bool:
    try:
        v = json.loads(b)
    except ValueError:
        return False
    return isinstance(v, dict)


GOOD = [_line({"id": 1, "method": "status"}), _line({"id": "p", "method": "policy.list", "params": {}}),
        _line({"method": "plugins", "params": None}), _line({"id": -(1 << 63), "method": "policy.list"})]
bad_request = st.one_of(_envelope_faults(), _params_faults(), _hostile_policies())


def _judge(t: Tally, what: str, line: bytes, codes: set[str], words: list[str], reply: bytes | None) -> None:
    """One response against what the request deserves; counts it; AssertionError on a broken promise."""
    t.kinds.add(what)
    label = f"{what}: {line[:120]!r}"
    assert reply is not None, f"no response: {label}"
    r = orjson.loads(reply)
    err = r.get("error") or {}
    if err.get("code") == "internal":
        t.tracebacks.append(f"{label}: {err.get('message')}")
        raise AssertionError(f"a handler raised: {label}: {err}")
    if r.get("ok") is not False:
        t.accepted_bad(label)
        raise AssertionError(f"accepted: {label}: {reply[:200]!r}")
    msg = str(err.get("message", ""))
    clear = (err.get("code") in codes and bool(msg) and "\n" not in msg and "\r" not in msg
             and all(w in msg for w in words))
    t.refused(label, clear, f"{err.get('code')}: {msg[:200]}")
    assert clear, (label, err)


def test_any_bad_request_gets_one_clear_refusal_and_the_server_lives_on(server: ApiServer,
                                                                       logged: _LogTracebacks) -> None:
    t = Tally("api-requests", "tests/test_fuzz_api.py::test_any_bad_request_gets_one_clear_refusal_and_the_server_lives_on",
              "request lines made bad by construction (not JSON, not a request, wrong types, unknown keys and "
              "methods, every method's parameters wrong, deep nesting, hostile policies) over the real socket, "
              "one connection each")

    @FUZZ
    @given(bad_request)
    def prop(case: tuple[str, bytes, set[str], list[str]]) -> None:
        what, line, codes, words = case
        c = Conn(server.path)
        try:
            outcome, reply = t.run(f"{what}: {line[:80]!r}", lambda: (c.send(line + b"\n"), c.line())[1])
        finally:
            c.close()
        assert outcome == "ok", (outcome, what, line[:200])
        _judge(t, what, line, codes, words, reply)

    try:
        prop()
        assert alive(server)
    finally:
        _no_logged_tracebacks(t, logged)
        t.write()
    t.assert_clean()


def test_pipelined_garbage_is_answered_line_by_line_in_order(server: ApiServer, logged: _LogTracebacks) -> None:
    t = Tally("api-pipelined", "tests/test_fuzz_api.py::test_pipelined_garbage_is_answered_line_by_line_in_order",
              "1 to 30 request lines sent at once on one connection: bad ones, good ones, blank lines, CRLF")
    t.extra["good_requests_answered"] = 0
    blank = st.sampled_from([b"", b" ", b"\t", b"\r", b" \t \r"])

    @FUZZ
    @given(st.lists(st.one_of(bad_request.map(lambda c: ("bad", c)), st.sampled_from(GOOD).map(lambda g: ("good", g)),
                              blank.map(lambda b: ("blank", b))), min_size=1, max_size=30))
    def prop(lines: list[tuple[str, Any]]) -> None:
        data = b"".join((x[1] if kind == "bad" else x) + b"\n" for kind, x in lines)
        c = Conn(server.path)
        try:
            c.send(data)

            def answers() -> list[bytes | None]:
                return [c.line() for kind, _ in lines if kind != "blank"]

            outcome, replies = t.run(f"{len(lines)} lines", answers)
            assert outcome == "ok", (outcome, replies)
            t.tried += len(lines) - 1
            replies = iter(replies)
            for kind, x in lines:
                if kind == "blank":
                    t.accepted += 1  # skipped, as documented: no response
                    continue
                reply = next(replies)
                if kind == "good":
                    r = orjson.loads(reply or b"{}")
                    assert r.get("ok") is True and r.get("id") == orjson.loads(x).get("id"), (x, reply)
                    t.accepted += 1
                    t.extra["good_requests_answered"] += 1
                else:
                    _judge(t, *x, reply)
            # the connection still serves
            c.send(GOOD[0] + b"\n")
            assert orjson.loads(c.line() or b"{}").get("ok") is True
        finally:
            c.close()

    try:
        prop()
        assert alive(server)
    finally:
        _no_logged_tracebacks(t, logged)
        t.write()
    t.assert_clean()


FRAMING = [
    ("a line over the size limit", b"x" * (MAX_REQUEST_BYTES + 1), None, "request_too_large"),
    ("a JSON string over the size limit, then a newline",
     b'{"method": "policy.add", "params": {"text": "' + b"a" * (MAX_REQUEST_BYTES + 10) + b'"}}\n', None,
     "request_too_large"),
    ("a good request after an oversized line on the same connection",
     b"y" * (MAX_REQUEST_BYTES + 1) + b"\n" + GOOD[0] + b"\n", None, "request_too_large"),
    ("a line that never ends, then the client hangs up", b'{"method": "status"', "close", None),
    ("NUL bytes and a lone CR", b"\0\0\0\r\n", None, "bad_request"),
    ("a request split into one-byte writes", GOOD[0] + b"\n", "bytewise", "ok"),
    ("a partial line then a half-close", b'{"method": "sta', "shut_wr", None),
]


@pytest.mark.parametrize("what,data,how,code", FRAMING, ids=[f[0] for f in FRAMING])
def test_framing_faults_are_answered_or_dropped_and_the_server_lives_on(server: ApiServer, logged: _LogTracebacks,
                                                                       what: str, data: bytes, how: str | None,
                                                                       code: str | None) -> None:
    t = Tally("api-framing", "tests/test_fuzz_api.py::test_framing_faults_are_answered_or_dropped_and_the_server_lives_on",
              "framing faults: lines over the size limit, a line that never ends, a half-closed or hung-up client, "
              "NUL bytes, one-byte writes")
    t.kinds.add(what)
    _load(t)
    c = Conn(server.path)
    t0 = time.monotonic()
    try:
        if how == "bytewise":
            for i in range(len(data)):
                c.send(data[i:i + 1])
        else:
            c.send(data)
        if how == "close":
            c.close()
            t.tried += 1
            t.refused(what, True, "")  # nothing to answer: the server must only survive it
        elif how == "shut_wr":
            c.s.shutdown(socket.SHUT_WR)
            t.tried += 1
            assert c.line() is None  # an unfinished line is not a request: the server closes without a response
            t.refused(what, True, "")
        else:
            t.tried += 1
            reply = c.line()
            assert reply is not None, what
            r = orjson.loads(reply)
            if code == "ok":
                assert r["ok"] is True
                t.accepted += 1
            else:
                clear = r["ok"] is False and r["error"]["code"] == code and "\n" not in r["error"]["message"]
                t.refused(what, clear, str(r.get("error")))
                assert clear, r
                if code == "request_too_large":  # refused without reading it all: the connection ends
                    assert c.line() is None
    finally:
        c.close()
        t.max_s = max(t.max_s, time.monotonic() - t0)
        assert alive(server)
        _no_logged_tracebacks(t, logged)
        _save(t)
    t.assert_clean()


def _load(t: Tally) -> None:
    """The framing cases are one test each: their figures add up in one file."""
    from reliability import OUT

    path = OUT / f"{t.name}.json"
    if path.exists() and os.environ.get("PYTEST_XDIST_WORKER") is None:
        try:
            f = json.loads(path.read_text())
        except ValueError:
            return
        if f.get("run") != _RUN:
            return
        fig = f["figures"]
        t.tried, t.clear, t.accepted = fig["tried"], fig["clear_errors"], fig["accepted"]
        t.max_s = fig["max_seconds_per_input"]
        t.kinds.update(f.get("kind_names", []))


_RUN = f"{os.getpid()}-{time.time_ns()}"


def _save(t: Tally) -> None:
    path = t.write()
    body = json.loads(path.read_text())
    body["run"], body["kind_names"] = _RUN, sorted(t.kinds)
    path.write_text(json.dumps(body, indent=2) + "\n")


# ---- slow clients (slowloris) ----------------------------------------------------------------------------

SLOW_REQUEST_S = 1.0  # the real server with a short request deadline, so the test takes seconds


@pytest.fixture
def slow_server(tmp_path: Path, logged: _LogTracebacks) -> Iterator[ApiServer]:
    srv = ApiServer(tmp_path / "run" / "api.sock", LiveAgent(), request_timeout_s=SLOW_REQUEST_S, idle_timeout_s=30)
    srv.start()
    yield srv
    srv.stop()


def _trickle(conns: list[Conn], stop: threading.Event) -> None:
    """One byte of an endless request on every connection every 0.1 s, as a slowloris client does."""
    while not stop.wait(0.1):
        for c in conns:
            try:
                c.s.send(b" ")
            except OSError:
                pass


def test_slow_clients_are_cut_off_at_the_request_deadline_and_others_are_served(slow_server: ApiServer,
                                                                                 logged: _LogTracebacks) -> None:
    from sensorium.api import MAX_CONNECTIONS

    t = Tally("api-slowloris",
              "tests/test_fuzz_api.py::test_slow_clients_are_cut_off_at_the_request_deadline_and_others_are_served",
              f"slowloris: every one of the {MAX_CONNECTIONS} connection slots held by a client trickling a request "
              f"a byte at a time (request deadline {SLOW_REQUEST_S:g} s in this test, 30 s by default), one more "
              "client while they hold them, and a good client after")
    slow = [Conn(slow_server.path) for _ in range(MAX_CONNECTIONS)]
    stop = threading.Event()
    for c in slow:
        c.send(b'{"method": "status", "params": {"x": "')
    trickler = threading.Thread(target=_trickle, args=(slow, stop), daemon=True)
    trickler.start()
    try:
        time.sleep(0.3)  # every slot is taken and trickling
        # one more client while all slots are held: refused at once, clearly, not left waiting
        extra = Conn(slow_server.path)
        t0 = time.monotonic()
        outcome, reply = t.run("a client beyond the connection cap", extra.line)
        extra.close()
        assert outcome == "ok" and reply is not None, outcome
        r = orjson.loads(reply)
        t.kinds.add("a client beyond the connection cap")
        t.refused("beyond the cap", r["ok"] is False and r["error"]["code"] == "busy", str(r))
        assert r["error"]["code"] == "busy" and time.monotonic() - t0 < 1.0, r
        # each slow client is answered request_timeout at its deadline, though it never stopped sending
        t.kinds.add("a request trickled a byte every 0.1 s")
        for c in slow:
            outcome, reply = t.run("a trickled request", c.line)
            assert outcome == "ok" and reply is not None, outcome
            r = orjson.loads(reply)
            clear = (r["ok"] is False and r["error"]["code"] == "request_timeout"
                     and "within 1 s" in r["error"]["message"] and "\n" not in r["error"]["message"])
            t.refused("a trickled request", clear, str(r))
            assert clear, r
            assert c.line() is None  # and the connection is closed
        waited = time.monotonic() - t0
        assert waited < SLOW_REQUEST_S + 2.0, waited
        t.extra["slow_connections"] = len(slow)
        t.extra["seconds_until_all_cut_off"] = round(waited, 2)
    finally:
        stop.set()
        trickler.join()
        for c in slow:
            c.close()
    # the slots are free again: a good client is answered at once
    t0 = time.monotonic()
    assert alive(slow_server) and time.monotonic() - t0 < 1.0
    _no_logged_tracebacks(t, logged)
    t.write()
    t.assert_clean()


def test_the_request_deadline_runs_per_line_not_per_connection(tmp_path: Path) -> None:
    deadline = 3.0  # roomy: the point is which clock runs, not how fast this machine is
    with ApiServer(tmp_path / "run" / "api.sock", LiveAgent(), request_timeout_s=deadline) as srv:
        c = Conn(srv.path)
        try:
            for i in range(0, len(GOOD[0]), 8):  # one request in pieces, within its deadline
                c.send(GOOD[0][i:i + 8])
                time.sleep(0.05)
            c.send(b"\n")
            r = orjson.loads(c.line() or b"{}")
            assert r["ok"] is True and r["id"] == 1, r
            time.sleep(deadline * 0.6)  # idle between requests: no deadline runs
            c.send(GOOD[0][:5])
            time.sleep(deadline * 0.6)  # the connection is older than the deadline, this line is not
            c.send(GOOD[0][5:] + b"\n")
            r = orjson.loads(c.line() or b"{}")
            assert r["ok"] is True and r["id"] == 1, r
        finally:
            c.close()
