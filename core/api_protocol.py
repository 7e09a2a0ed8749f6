"""The local API's wire protocol, without the socket: its limits, its errors, the parameter models of each
method, the request decoder and the response encoder. The server (`sensorium.api`) and the client
(`sensorium.api_client`) both speak it; the fuzzers drive `decode_request` directly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sensorium.events import Event
from sensorium.filters import EventFilter, compile_event_filter
from sensorium.policy import MAX_POLICY_BYTES

MAX_REQUEST_BYTES = 4 * MAX_POLICY_BYTES  # a policy text JSON-escaped, with room to spare
MAX_CONNECTIONS = 32
IDLE_TIMEOUT_S = 300.0         # a connection that sends nothing for this long is closed
# A request line must arrive whole this soon after its first byte: a client trickling bytes (slowloris)
# holds one of the MAX_CONNECTIONS slots for this long at most, not for IDLE_TIMEOUT_S per byte.
REQUEST_TIMEOUT_S = 30.0
SEND_TIMEOUT_S = 30.0          # a client that reads nothing for this long is dropped
DEFAULT_QUEUE_EVENTS = 8192    # per subscriber
MAX_QUEUE_EVENTS = 1 << 20
# All subscribers together: events queued or being sent (about 1 KB each in memory). Without it, 32
# subscribers asking for the largest queue could hold 32M events.
MAX_TOTAL_QUEUED_EVENTS = 1 << 18
SEND_CHUNK_EVENTS = 4096       # events taken from a subscriber's queue per send
MAX_FILTER_PATTERNS = 64
MAX_PATTERN_LEN = 1024

METHODS = ("status", "plugins", "policy.add", "policy.delete", "policy.list", "policy.get", "policy.enable",
           "policy.disable", "policy.set_mode", "events.subscribe")


class ApiError(Exception):
    """An error answered to the client: ``code`` is stable, ``message`` is for people."""

    def __init__(self, code: str, message: str, req_id: Any = None) -> None:
        # One line, whatever names from the request it quotes (as `SourceError` does).
        message = message.replace("\r", "\\r").replace("\n", "\\n")
        super().__init__(message)
        self.code, self.message, self.req_id = code, message, req_id


# ---- parameters (validated; unknown keys refused) ------------------------------------------------


class Params(BaseModel):
    """Parameters of one method: strict types, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", strict=True)


class NoParams(Params):
    pass


# A policy's key: ``name``, or ``namespace/name`` for a TracingPolicyNamespaced (63 + 1 + 253).
POLICY_KEY_MAX = 317


class NameParams(Params):
    name: str = Field(min_length=1, max_length=POLICY_KEY_MAX)


class AddParams(Params):
    text: str = Field(max_length=MAX_POLICY_BYTES)
    file: str | None = Field(default=None, max_length=4096)
    mode: Literal["enforcement", "monitoring"] | None = None


class ModeParams(Params):
    name: str = Field(min_length=1, max_length=POLICY_KEY_MAX)
    mode: Literal["enforcement", "monitoring"]


class StreamFilters(Params):
    """Server-side filters of ``events.subscribe``: every given field must match (AND)."""

    event_set: list[str] | None = Field(default=None, max_length=16)
    binary_regex: list[str] | None = Field(default=None, max_length=MAX_FILTER_PATTERNS)
    namespace: list[str] | None = Field(default=None, max_length=MAX_FILTER_PATTERNS)
    pod_regex: list[str] | None = Field(default=None, max_length=MAX_FILTER_PATTERNS)
    policy_names: list[str] | None = Field(default=None, max_length=MAX_FILTER_PATTERNS)


class SubscribeParams(Params):
    filters: StreamFilters = Field(default_factory=StreamFilters)
    queue_size: int = Field(default=DEFAULT_QUEUE_EVENTS, ge=16, le=MAX_QUEUE_EVENTS)


def compile_stream_filter(f: StreamFilters) -> Callable[[Event], bool]:
    """The match function of ``events.subscribe``'s filters (`ApiError` ``invalid_params`` when one is bad)."""
    for patterns in (f.binary_regex, f.pod_regex):
        for p in patterns or ():
            if len(p) > MAX_PATTERN_LEN:
                raise ApiError("invalid_params", f"regex longer than {MAX_PATTERN_LEN} characters")
    try:
        ef = EventFilter.model_validate(f.model_dump(exclude_none=True))
    except ValidationError as exc:
        raise ApiError("invalid_params", "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                                   for e in exc.errors())) from None
    return compile_event_filter(ef)


# ---- the request decoder (pure: bytes in, a request or an ApiError out) -----------------------------

_REQUEST_KEYS = frozenset({"method", "params", "id"})


def decode_request(line: bytes) -> tuple[Any, str, dict[str, Any]]:
    """One request line -> (id, method, params), or `ApiError` ``bad_request`` saying what is wrong (with
    ``req_id`` set once the id is known good, so the error answers that id). Methods and parameters are
    checked later, by `ApiServer.answer`."""
    try:
        req = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ApiError("bad_request", f"invalid JSON: {exc}") from None
    if not isinstance(req, dict):
        raise ApiError("bad_request", "a request is a JSON object")
    req_id = req.get("id")
    # true/false are not integers here (strict types at the boundary, as in every input)
    if req_id is not None and (not isinstance(req_id, (int, str)) or isinstance(req_id, bool)):
        raise ApiError("bad_request", "id must be an integer or a string")
    extra = set(req) - _REQUEST_KEYS
    if extra:
        names = ", ".join(repr(k)[:66] for k in sorted(extra)[:8])
        raise ApiError("bad_request", f"unknown request keys: {names}", req_id)
    method = req.get("method")
    params = req.get("params", {})
    if params is None:
        params = {}
    if not isinstance(method, str) or not isinstance(params, dict):
        raise ApiError("bad_request", "method must be a string and params an object", req_id)
    return req_id, method, params


def encode_response(msg: Mapping[str, Any]) -> bytes:
    """One response line (with its newline); a result JSON cannot carry becomes an ``internal`` error."""
    try:
        return orjson.dumps(msg, default=str, option=orjson.OPT_NON_STR_KEYS) + b"\n"
    except TypeError as exc:
        return orjson.dumps({"id": msg.get("id"), "ok": False,
                             "error": {"code": "internal", "message": f"unserializable result: {exc}"}}) + b"\n"


def error_response(req_id: Any, exc: ApiError) -> dict[str, Any]:
    """The response object that answers ``req_id`` with ``exc``."""
    return {"id": req_id, "ok": False, "error": {"code": exc.code, "message": exc.message}}

