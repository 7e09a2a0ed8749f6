"""Per-exporter event filters with Tetragon's semantics, built once from config.

An exporter item's ``filters`` key holds::

    filters:
      allow: [ {event_set: [PROCESS_EXEC], binary_regex: ["^/usr/bin/"]}, {namespace: [prod]} ]
      deny:  [ {pod_regex: ["^debug-"]} ]
      fields: [ {event_set: [PROCESS_EXEC], fields: "process.binary,process.arguments", action: include} ]
      redact: [ {match: [{binary_regex: ["mysql"]}], redact: ["--password[= ](\\S+)"]} ]
      rate_limit: {events: 1000, interval_s: 60}

As in Tetragon's export allow/deny lists, a list of filters is an OR and the fields inside one filter
are an AND; within one field, any listed value matches. An event is exported when the allow list is
empty or one allow filter matches, and no deny filter matches. Regexes are searched (unanchored) like
Go's ``MatchString``. Redaction replaces every capture group of a matching regex in the process (and
parent, ancestors) arguments with ``*****``. The rate limit drops events over ``events`` per
``interval_s`` and then exports one ``rate_limit_info`` event saying how many were dropped.

Every stage is a plain callable ``event -> event | None`` (None drops); `FilterChain` runs them.
Bad input (an invalid regex or label selector, an unknown event type) is a config error that names the
key path, raised by pydantic when the config is loaded.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import (
    Callable,
    Iterable,
    Mapping,  # not typing.Mapping: isinstance() on it is ~3x slower
    Sequence,
)
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from sensorium.events import EVENT_KINDS, Event

Filter = Callable[[Event], "Event | None"]
"""One stage: return the event (possibly a changed copy) or None to drop it."""

REDACTED = "*****"

# ---------------------------------------------------------------------------------------------------
# Config models
# ---------------------------------------------------------------------------------------------------


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None


def _check_regex(p: str) -> str:
    _compile(p)
    return p


def _check_selector(s: str) -> str:
    parse_label_selector(s)
    return s


def _check_redact(p: str) -> str:
    if _compile(p).groups == 0:
        raise ValueError(f"redaction regex {p!r} has no capture group (only groups are replaced)")
    return p


# Validated per item, so an error names the index: exporters[0].filters.allow[1].binary_regex[2]
Regex = Annotated[str, AfterValidator(_check_regex)]
RedactRegex = Annotated[str, AfterValidator(_check_redact)]
LabelSelector = Annotated[str, AfterValidator(_check_selector)]


def _event_kind(name: str) -> str:
    kind = name.strip().lower()
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event type {name!r} (one of: {', '.join(k.upper() for k in EVENT_KINDS)})")
    return kind


EventKind = Annotated[str, AfterValidator(_event_kind)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EventFilter(_Strict):
    """One Tetragon-style filter: every field that is set must match (AND)."""

    event_set: list[EventKind] | None = Field(default=None, description="Event types, e.g. PROCESS_EXEC")
    binary_regex: list[Regex] | None = None
    parent_binary_regex: list[Regex] | None = None
    arguments_regex: list[Regex] | None = None
    namespace: list[str] | None = Field(default=None, description='Pod namespaces; "" matches host processes')
    pod_regex: list[Regex] | None = None
    labels: list[LabelSelector] | None = Field(default=None, description="Label selectors, e.g. 'app=web,tier!=db'")
    policy_names: list[str] | None = None
    container_id: list[Regex] | None = Field(default=None, description="Regexes on the container id")
    pid: list[int] | None = None


class FieldFilter(_Strict):
    """Keep (include) or remove (exclude) field paths of the event body, for some event types."""

    event_set: list[EventKind] | None = None
    invert_event_set: bool = False
    fields: list[str] | str = Field(description="Paths like process.binary, as a list or comma-separated")
    action: Literal["include", "exclude", "INCLUDE", "EXCLUDE"] = "include"

    @field_validator("fields")
    @classmethod
    def _v_fields(cls, v: list[str] | str) -> list[str]:
        items = v.split(",") if isinstance(v, str) else v
        out = [p.strip() for p in items if p.strip()]
        if not out:
            raise ValueError("at least one field path is needed")
        for p in out:
            if not re.fullmatch(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*", p):
                raise ValueError(f"invalid field path {p!r} (expected dotted names like process.binary)")
        return out


class RedactionFilter(_Strict):
    """Replace capture groups of ``redact`` regexes in process arguments, for matching events."""

    match: list[EventFilter] = Field(default_factory=list, description="OR of filters; empty matches all")
    binary_regex: list[Regex] | None = None
    redact: list[RedactRegex] = Field(min_length=1)


class RateLimit(_Strict):
    events: int = Field(ge=1, description="Events exported per interval; the rest are dropped and counted")
    interval_s: float = Field(default=60.0, gt=0, le=86400)


class ExportFilters(_Strict):
    """The ``filters`` key of an exporter item."""

    allow: list[EventFilter] = Field(default_factory=list)
    deny: list[EventFilter] = Field(default_factory=list)
    fields: list[FieldFilter] = Field(default_factory=list)
    redact: list[RedactionFilter] = Field(default_factory=list)
    rate_limit: RateLimit | None = None

    def is_empty(self) -> bool:
        return not (self.allow or self.deny or self.fields or self.redact or self.rate_limit)


# ---------------------------------------------------------------------------------------------------
# Kubernetes label selectors (the subset Tetragon accepts through k8s.io/apimachinery labels.Parse)
# ---------------------------------------------------------------------------------------------------

_LABEL_KEY = r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?"
_LABEL_VAL = r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_REQ = re.compile(
    rf"^\s*(?:(?P<neg>!)\s*(?P<nkey>{_LABEL_KEY})"
    rf"|(?P<key>{_LABEL_KEY})\s*(?:(?P<op>==|!=|=)\s*(?P<val>{_LABEL_VAL})"
    rf"|\s+(?P<setop>in|notin)\s*\((?P<set>[^()]*)\))?)\s*$"
)

LabelPredicate = Callable[[Mapping[str, str]], bool]


def _split_selector(sel: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in sel:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return parts


class _Requirement:
    """One requirement of a label selector: the key exists (``exists``) or not (``absent``), or its value is
    (``in``) or is not (``notin``) one of ``values`` (``=`` and ``==`` are ``in`` one value, ``!=`` ``notin``)."""

    __slots__ = ("key", "op", "values")

    def __init__(self, key: str, op: str, values: frozenset[str] = frozenset()) -> None:
        self.key, self.op, self.values = key, op, values

    def __call__(self, labels: Mapping[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "absent":
            return self.key not in labels
        return (labels.get(self.key) in self.values) == (self.op == "in")


def parse_label_selector(sel: str) -> LabelPredicate:
    """Parse ``app=web,tier!=db,env in (a,b),!canary,team`` into a predicate over a label mapping."""
    reqs: list[LabelPredicate] = []
    if not sel.strip():
        return lambda labels: True  # the empty selector selects everything, as in Kubernetes
    for part in _split_selector(sel):
        m = _REQ.match(part)
        if not m:
            raise ValueError(f"invalid label selector {sel!r}: cannot parse {part.strip()!r}")
        if m["neg"]:
            reqs.append(_Requirement(m["nkey"], "absent"))
        elif m["op"]:
            reqs.append(_Requirement(m["key"], "notin" if m["op"] == "!=" else "in", frozenset({m["val"] or ""})))
        elif m["setop"]:
            k = m["key"]
            values = frozenset(x.strip() for x in m["set"].split(",") if x.strip())
            if not values:
                raise ValueError(f"invalid label selector {sel!r}: empty value set for {k!r}")
            reqs.append(_Requirement(k, m["setop"], values))
        else:
            reqs.append(_Requirement(m["key"], "exists"))
    return lambda labels: all(r(labels) for r in reqs)


# ---------------------------------------------------------------------------------------------------
# Matching
# ---------------------------------------------------------------------------------------------------

Predicate = Callable[[Event], bool]


def _pod(proc: Mapping[str, Any]) -> Mapping[str, Any] | None:
    pod = proc.get("pod")
    return pod if isinstance(pod, Mapping) else None


def _any_regex(patterns: Sequence[str], get: Callable[[Event], Iterable[object]]) -> Predicate:
    """Whether any string ``get`` finds in an event matches any of ``patterns`` (what is not a string never does)."""
    rx = [_compile(p) for p in patterns]

    def pred(ev: Event) -> bool:
        for value in get(ev):
            if isinstance(value, str) and any(r.search(value) for r in rx):
                return True
        return False

    return pred


def _container_ids(ev: Event) -> list[str]:
    proc = ev.process
    out = []
    if proc.get("docker"):
        out.append(proc["docker"])
    pod = _pod(proc)
    cid = ((pod or {}).get("container") or {}).get("id")
    if isinstance(cid, str) and cid:
        out.append(cid)
    return out


def compile_event_filter(f: EventFilter) -> Predicate:
    """One filter -> predicate; fields AND together, an unset field matches everything."""
    preds: list[Predicate] = []
    if f.event_set is not None:
        kinds = frozenset(f.event_set)
        preds.append(lambda ev: ev.kind in kinds)
    if f.binary_regex is not None:
        preds.append(_any_regex(f.binary_regex, lambda ev: (ev.process.get("binary"),)))
    if f.parent_binary_regex is not None:
        preds.append(_any_regex(f.parent_binary_regex, lambda ev: (ev.parent.get("binary"),)))
    if f.arguments_regex is not None:
        preds.append(_any_regex(f.arguments_regex, lambda ev: (ev.process.get("arguments"),)))
    if f.pod_regex is not None:
        preds.append(_any_regex(f.pod_regex, lambda ev: ((_pod(ev.process) or {}).get("name"),)))
    if f.container_id is not None:
        preds.append(_any_regex(f.container_id, _container_ids))
    if f.namespace is not None:
        namespaces = frozenset(f.namespace)

        def ns_pred(ev: Event) -> bool:
            pod = _pod(ev.process)
            return ("" in namespaces) if pod is None else pod.get("namespace") in namespaces

        preds.append(ns_pred)
    if f.labels is not None:
        selectors = [parse_label_selector(s) for s in f.labels]

        def labels_pred(ev: Event) -> bool:
            pod = _pod(ev.process)
            if pod is None:
                return False
            labels = pod.get("pod_labels") or {}
            return any(s(labels) for s in selectors)

        preds.append(labels_pred)
    if f.policy_names is not None:
        names = frozenset(f.policy_names)
        preds.append(lambda ev: ev.body.get("policy_name") in names)
    if f.pid is not None:
        pids = frozenset(f.pid)
        preds.append(lambda ev: ev.process.get("pid") in pids)
    return lambda ev: all(p(ev) for p in preds)


def compile_filter_list(filters: Sequence[EventFilter]) -> Predicate:
    """A list of filters -> their OR."""
    preds = [compile_event_filter(f) for f in filters]
    return lambda ev: any(p(ev) for p in preds)


class AllowDeny:
    """The allow/deny stage."""

    reason = "filtered"

    def __init__(self, allow: Sequence[EventFilter], deny: Sequence[EventFilter]) -> None:
        self._allow = compile_filter_list(allow) if allow else None
        self._deny = compile_filter_list(deny) if deny else None

    def __call__(self, ev: Event) -> Event | None:
        if self._allow is not None and not self._allow(ev):
            return None
        if self._deny is not None and self._deny(ev):
            return None
        return ev


# ---------------------------------------------------------------------------------------------------
# Field filters and redaction (they return new events: an Event is never mutated)
# ---------------------------------------------------------------------------------------------------


def _pick(body: Mapping[str, Any], paths: Sequence[tuple[str, ...]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in paths:
        src: Any = body
        for part in path:
            if not isinstance(src, Mapping) or part not in src:
                break
            src = src[part]
        else:
            dst = out
            for part in path[:-1]:
                dst = dst.setdefault(part, {})
                if not isinstance(dst, dict):
                    break
            else:
                dst[path[-1]] = src
    return out


def _drop(body: Mapping[str, Any], path: tuple[str, ...]) -> Mapping[str, Any]:
    head, rest = path[0], path[1:]
    if head not in body:
        return body
    new = dict(body)
    if not rest:
        del new[head]
    elif isinstance(body[head], Mapping):
        new[head] = _drop(body[head], rest)
    return new


class FieldStage:
    reason = "filtered"

    def __init__(self, f: FieldFilter) -> None:
        self.kinds = frozenset(f.event_set) if f.event_set else None
        self.invert = f.invert_event_set
        self.paths = [tuple(p.split(".")) for p in f.fields]
        self.include = f.action.lower() == "include"

    def __call__(self, ev: Event) -> Event:
        if self.kinds is not None and ((ev.kind in self.kinds) == self.invert):
            return ev
        if self.include:
            body: Mapping[str, Any] = _pick(ev.body, self.paths)
        else:
            body = ev.body
            for p in self.paths:
                body = _drop(body, p)
        return ev.replace(body=body)


class RedactStage:
    reason = "filtered"

    def __init__(self, f: RedactionFilter) -> None:
        self.match = compile_filter_list(f.match) if f.match else None
        self.binary = _any_regex(f.binary_regex, lambda ev: (ev.process.get("binary"),)) if f.binary_regex else None
        self.rx = [_compile(p) for p in f.redact]

    def redact(self, text: str) -> str:
        for rx in self.rx:
            pieces, pos = [], 0
            for m in rx.finditer(text):
                for g in range(1, rx.groups + 1):
                    start, end = m.span(g)
                    if start < 0 or start < pos:
                        continue  # group did not take part, or overlaps a previous one
                    pieces.append(text[pos:start])
                    pieces.append(REDACTED)
                    pos = end
            pieces.append(text[pos:])
            text = "".join(pieces)
        return text

    def _proc(self, proc: Any) -> Any:
        if isinstance(proc, Mapping) and isinstance(proc.get("arguments"), str):
            new = self.redact(proc["arguments"])
            if new != proc["arguments"]:
                return {**proc, "arguments": new}
        return proc

    def __call__(self, ev: Event) -> Event:
        if self.match is not None and not self.match(ev):
            return ev
        if self.binary is not None and not self.binary(ev):
            return ev
        body = dict(ev.body)
        changed = False
        for key in ("process", "parent"):
            if key in body:
                new = self._proc(body[key])
                if new is not body[key]:
                    body[key], changed = new, True
        if isinstance(body.get("ancestors"), list):
            anc = [self._proc(a) for a in body["ancestors"]]
            if any(a is not b for a, b in zip(anc, body["ancestors"], strict=True)):
                body["ancestors"], changed = anc, True
        return ev.replace(body=body) if changed else ev


# ---------------------------------------------------------------------------------------------------
# Rate limit
# ---------------------------------------------------------------------------------------------------


class RateLimiter:
    """Fixed-window limit; after a window with drops, one ``rate_limit_info`` event reports the count."""

    reason = "rate_limit"

    def __init__(self, events: int, interval_s: float, node_name: str, clock: Callable[[], float] = time.monotonic):
        self.limit, self.interval, self.node_name, self.clock = events, interval_s, node_name, clock
        self._lock = threading.Lock()
        self._window = clock()
        self._count = 0
        self._dropped = 0
        self._info: list[Event] = []
        self.dropped_total = 0

    def _roll(self, now: float) -> None:
        if now - self._window >= self.interval:
            if self._dropped:
                self._info.append(
                    Event(
                        "rate_limit_info",
                        {"number_of_dropped_process_events": self._dropped},
                        self.node_name,
                        time.time_ns(),
                    )
                )
            self._window, self._count, self._dropped = now, 0, 0

    def __call__(self, ev: Event) -> Event | None:
        with self._lock:
            self._roll(self.clock())
            if self._count < self.limit:
                self._count += 1
                return ev
            self._dropped += 1
            self.dropped_total += 1
            return None

    def take_info(self) -> list[Event]:
        """Close the window if it is over and return the pending ``rate_limit_info`` events."""
        with self._lock:
            self._roll(self.clock())
            out, self._info = self._info, []
            return out


# ---------------------------------------------------------------------------------------------------
# The chain
# ---------------------------------------------------------------------------------------------------


class FilterChain:
    """Runs stages in order; counts drops by the stage's ``reason`` (``filtered`` or ``rate_limit``)."""

    def __init__(self, stages: Sequence[Filter] = ()) -> None:
        self.stages = list(stages)
        self.rate_limiter = next((s for s in self.stages if isinstance(s, RateLimiter)), None)

    def __bool__(self) -> bool:
        return bool(self.stages)

    def __call__(self, ev: Event) -> Event | None:
        for stage in self.stages:
            ev = stage(ev)  # type: ignore[assignment]
            if ev is None:
                return None
        return ev

    def apply(self, events: Iterable[Event]) -> tuple[list[Event], dict[str, int]]:
        """Filter a batch: ``(kept events, {reason: dropped count})``; appends due rate_limit_info."""
        kept: list[Event] = []
        drops: dict[str, int] = {}
        stages = self.stages
        for ev in events:
            cur: Event | None = ev
            for stage in stages:
                try:
                    cur = stage(cur)  # type: ignore[arg-type]
                except Exception:  # noqa: BLE001 - a malformed event must not stop the exporter
                    cur, reason = None, "filter_error"
                else:
                    reason = getattr(stage, "reason", "filtered")
                if cur is None:
                    drops[reason] = drops.get(reason, 0) + 1
                    break
            if cur is not None:
                kept.append(cur)
        kept.extend(self.tick())
        return kept, drops

    def tick(self) -> list[Event]:
        """Events the chain itself produces when time passes (rate_limit_info)."""
        return self.rate_limiter.take_info() if self.rate_limiter is not None else []


def build_filters(cfg: ExportFilters | Mapping[str, Any] | None, node_name: str) -> FilterChain:
    """Build the chain once: allow/deny, then redaction, then field filters, then the rate limit."""
    if cfg is None:
        return FilterChain()
    if not isinstance(cfg, ExportFilters):
        cfg = ExportFilters.model_validate(cfg)
    stages: list[Filter] = []
    if cfg.allow or cfg.deny:
        stages.append(AllowDeny(cfg.allow, cfg.deny))
    stages.extend(RedactStage(r) for r in cfg.redact)
    stages.extend(FieldStage(f) for f in cfg.fields)
    if cfg.rate_limit is not None:
        stages.append(RateLimiter(cfg.rate_limit.events, cfg.rate_limit.interval_s, node_name))
    return FilterChain(stages)
