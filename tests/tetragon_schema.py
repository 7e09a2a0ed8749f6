"""Strict decoding of our JSON events with Tetragon's own protobuf messages.

Tetragon's .proto files (cilium/tetragon api/v1/tetragon, Apache License 2.0, copyright the Tetragon
authors) live in /work/shared/tetragon-proto (or $SENSORIUM_TETRAGON_PROTO); they are compiled here at test
time with grpcio-tools into build/tetragon-proto/<hash of the sources>/, never vendored.

`problems(line)` decodes one JSON line as a `tetragon.GetEventsResponse` with unknown fields rejected
(protojson, as a Tetragon consumer does) and then compares the decoded message, written back as JSON, with
what we wrote: a value Tetragon would write differently (a 64-bit integer as a number, a null) is a problem
too. An empty list means the line is exactly what a Tetragon consumer expects.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = Path(os.environ.get("SENSORIUM_TETRAGON_PROTO",
                                 REPO.parent / "shared" / "tetragon-proto"))
if not PROTO_ROOT.is_dir():
    PROTO_ROOT = Path("/work/shared/tetragon-proto")

_lock = threading.Lock()
_mod: Any = None


def available() -> str | None:
    """None when the schema can be compiled, else why not (a skip reason)."""
    if not (PROTO_ROOT / "tetragon" / "tetragon.proto").is_file():
        return f"Tetragon's .proto files not found in {PROTO_ROOT}"
    try:
        import google.protobuf  # noqa: F401
        import grpc_tools  # noqa: F401
    except ImportError as e:
        return f"grpcio-tools is not installed ({e}); scripts/setup.sh installs it"
    return None


def messages() -> Any:
    """The compiled ``tetragon_pb2`` module (compiled once per source hash, cached in build/)."""
    global _mod
    with _lock:
        if _mod is not None:
            return _mod
        sources = sorted((PROTO_ROOT / "tetragon").glob("*.proto"))
        digest = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in sources)).hexdigest()[:16]
        out = REPO / "build" / "tetragon-proto" / digest
        if not (out / "tetragon" / "tetragon_pb2.py").is_file():
            tmp = out.with_name(out.name + f".tmp{os.getpid()}")
            tmp.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}", f"--python_out={tmp}",
                            *map(str, sources)], check=True, capture_output=True)
            try:
                tmp.rename(out)
            except OSError:  # another process compiled it first
                pass
        if str(out) not in sys.path:
            sys.path.insert(0, str(out))
        _mod = importlib.import_module("tetragon.tetragon_pb2")
        importlib.import_module("tetragon.events_pb2")
        return _mod


def decode(line: bytes | str) -> Any:
    """One JSON line -> ``tetragon.GetEventsResponse``, strictly (raises json_format.ParseError)."""
    from google.protobuf import json_format

    messages()
    import tetragon.events_pb2 as ev

    text = line.decode() if isinstance(line, bytes) else line
    return json_format.Parse(text, ev.GetEventsResponse(), ignore_unknown_fields=False)


_RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")


def _ts(s: str) -> tuple[_dt.datetime, int]:
    base, _, frac = s[:-1].partition(".")
    return _dt.datetime.fromisoformat(base), int((frac or "0").ljust(9, "0"))


def _default(v: Any) -> bool:
    return v in (0, "", False, [], {}) and v is not True


def _compare(ours: Any, theirs: Any, path: str, out: list[str]) -> None:
    if isinstance(ours, dict):
        if not isinstance(theirs, dict):
            out.append(f"{path}: we wrote an object, Tetragon's message gives {theirs!r}")
            return
        for k, v in ours.items():
            p = f"{path}.{k}" if path else k
            if v is None:
                out.append(f"{p}: null (Tetragon writes a value or leaves the field out)")
            elif k not in theirs:
                if not _default(v):
                    out.append(f"{p}: {v!r} is lost in decoding")
            else:
                _compare(v, theirs[k], p, out)
        return
    if isinstance(ours, list):
        if not isinstance(theirs, list) or len(theirs) != len(ours):
            out.append(f"{path}: list of {len(ours)} decodes as {theirs!r}")
            return
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            _compare(a, b, f"{path}[{i}]", out)
        return
    if isinstance(ours, str) and isinstance(theirs, str) and _RFC3339.match(ours) and _RFC3339.match(theirs):
        if _ts(ours) != _ts(theirs):
            out.append(f"{path}: time {ours} decodes as {theirs}")
        return
    if type(ours) is not type(theirs) or ours != theirs:
        out.append(f"{path}: we wrote {ours!r} ({type(ours).__name__}), Tetragon writes {theirs!r}")


def _root() -> Any:
    messages()
    import tetragon.events_pb2 as ev

    return ev.GetEventsResponse.DESCRIPTOR


def _field(desc: Any, k: str) -> Any:
    return desc.fields_by_name.get(k) or next((x for x in desc.fields if x.json_name == k), None)


def known_part(obj: Any, desc: Any = None) -> Any:
    """``obj`` without the keys Tetragon's messages have no field for (what a lenient consumer reads)."""
    desc = desc or _root()
    if desc.full_name.startswith("google.protobuf.") or not isinstance(obj, dict):
        return obj
    out = {}
    for k, v in obj.items():
        f = _field(desc, k)
        if f is None:
            continue
        if f.message_type is not None and not f.message_type.GetOptions().map_entry:
            out[k] = ([known_part(x, f.message_type) for x in v] if isinstance(v, list)
                      else known_part(v, f.message_type))
        else:
            out[k] = v
    return out


def unknown_fields(obj: Any, desc: Any = None, path: str = "") -> list[str]:
    """Every key of ``obj`` (a decoded JSON event) that Tetragon's message has no field for, by path."""
    desc = desc or _root()
    out: list[str] = []
    if desc.full_name.startswith("google.protobuf.") or not isinstance(obj, dict):
        return out
    for k, v in obj.items():
        f = _field(desc, k)
        p = k if not path else f"{path}.{k}"
        if f is None:
            out.append(p)
        elif f.message_type is not None and not f.message_type.GetOptions().map_entry:
            for item in (v if isinstance(v, list) else [v]):
                out.extend(unknown_fields(item, f.message_type, f"{path}.{k}" if path else k))
    return out


def problems(line: bytes | str, strict: bool = True) -> list[str]:
    """What keeps ``line`` from being exactly what Tetragon's protojson export gives (empty: nothing).
    ``strict`` False (the ``extended`` format): our own fields are allowed; Tetragon's must still be right."""
    from google.protobuf import json_format

    messages()
    obj = orjson.loads(line)
    if not strict:
        obj = known_part(obj)
        line = orjson.dumps(obj)
    try:
        msg = decode(line)
    except json_format.ParseError as e:
        unknown = unknown_fields(orjson.loads(line))
        if unknown:
            return [f"unknown field {u}" for u in unknown]
        return [f"strict decode: {e}"]
    theirs = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    out: list[str] = []
    _compare(obj, theirs, "", out)
    return out


def event_label(obj: dict[str, Any]) -> str:
    """What kind of event a decoded line is, for the coverage summary: "process_kprobe tcp_connect", ..."""
    kind = next((k for k in obj if k not in ("node_name", "time", "cluster_name", "node_labels")), "?")
    body = obj.get(kind) or {}
    detail = body.get("function_name") or body.get("symbol") or (
        f"{body['subsys']}/{body['event']}" if "subsys" in body else "")
    return f"{kind} {detail}".strip()


def agent_outputs(config: dict[str, Any], stdout_path: Path) -> tuple[list[Path], bool]:
    """The JSON-lines files an agent run with ``config`` writes events to, and whether its format is strict."""
    paths: list[Path] = []
    for item in config.get("exporters") or [{"type": "stdout"}]:
        if item.get("type") == "stdout" and item.get("format", "json") == "json" and item.get("stream") != "stderr":
            paths.append(stdout_path)
        elif item.get("type") == "file" and item.get("path"):
            paths.append(Path(item["path"]))
    fmt = (config.get("events") or {}).get("format", "tetragon")
    return paths, fmt == "tetragon"


# What the session's agents wrote and this module checked, by format and `event_label` (the summary).
SEEN: dict[str, dict[str, int]] = {"tetragon": {}, "extended": {}}


def enabled() -> bool:
    """The check runs unless SENSORIUM_SCHEMA_CHECK=0 or the schema cannot be compiled here."""
    if os.environ.get("SENSORIUM_SCHEMA_CHECK", "1").lower() in ("0", "false", "no", "off"):
        return False
    return available() is None


def check_agent_run(config: dict[str, Any], stdout_path: Path, extra_paths: list[Path] = ()) -> None:
    """Fail the test (pytest.fail) when an event an agent run with ``config`` wrote does not decode as
    Tetragon's export would (strictly in the default format, Tetragon's fields only in ``extended``)."""
    import pytest

    if not enabled():
        return
    paths, strict = agent_outputs(config, stdout_path)
    bad = check_files(paths + list(extra_paths), strict, SEEN["tetragon" if strict else "extended"])
    if bad:
        pytest.fail(f"{len(bad)}+ events do not decode as Tetragon's export (tests/tetragon_schema.py):\n"
                    + "\n".join(bad[:10]), pytrace=False)


def check_events(events: Any, what: str) -> None:
    """Fail the test when one of ``events`` (`sensorium.events.Event`s, e.g. a test context's) does not
    encode to what Tetragon's export would be, in the format this process renders (`sensorium.schema`)."""
    import pytest

    from sensorium import schema

    if not enabled():
        return
    strict = schema.current_format() == "tetragon"
    seen = SEEN["tetragon" if strict else "extended"]
    bad: list[str] = []
    for ev in events:
        line = ev.json()
        label = event_label(orjson.loads(line))
        seen[label] = seen.get(label, 0) + 1
        bad += [f"{prob}\n    in {line[:300].decode(errors='replace')}" for prob in problems(line, strict)]
    if bad:
        pytest.fail(f"{len(bad)} problems: events of {what} do not decode as Tetragon's export:\n"
                    + "\n".join(bad[:10]), pytrace=False)


_DIGITS = re.compile(rb"\d+")
_CHECKED: set[tuple[bool, bytes]] = set()


def check_files(paths: list[Path], strict: bool, seen: dict[str, int] | None = None,
                limit: int = 20) -> list[str]:
    """Every event line of ``paths`` checked with `problems`; the first ``limit`` problems, each with its
    line. ``seen`` counts the events checked by `event_label`."""
    out: list[str] = []
    for p in dict.fromkeys(paths):
        try:
            data = p.read_bytes()
        except OSError:
            continue
        for raw in data.split(b"\n"):
            line = raw.strip()
            if not line.startswith(b"{"):
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # not an event line (a test wrote something else there)
            if not isinstance(obj, dict) or "node_name" not in obj:
                continue
            if seen is not None:
                label = event_label(obj)
                seen[label] = seen.get(label, 0) + 1
            # A line equal to one already checked but for its numbers (pids, times, ids, sizes) has the same
            # fields and the same enum names: decoding it again proves nothing and, with the pure-Python
            # protobuf parser, costs minutes for an agent's event storm in a TCG guest.
            shape = (strict, _DIGITS.sub(b"0", line))
            if shape in _CHECKED:
                continue
            if len(_CHECKED) > 500_000:
                _CHECKED.clear()
            _CHECKED.add(shape)
            for prob in problems(line, strict):
                if len(out) < limit:
                    out.append(f"{prob}\n    in {p.name}: {line[:300].decode(errors='replace')}")
    return out
