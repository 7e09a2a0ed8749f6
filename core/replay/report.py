"""Run candidate policies over a recording and count what they would have done.

`Replay` takes the policies (parsed by `sensorium.policy_rules.validate_policies`, as `policy check` and
`policy add` do), streams the recording once, asks each hook's evaluator (`sensorium.replay.evaluate`) for
the kernel's decision on each event of its hook, applies the actions as the kernel does (run.h:
sens_finish: NoPost hides the event except a would-be signal in monitoring; a rate limit posts one event
per period per selector, scope and argument bytes; Sigkill/Signal/Override act only in enforcement) and
keeps the books: per policy, hook and selector, counts by action, binaries, pods and a few examples.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import orjson

from sensorium.replay.evaluate import HookEval, ProcessTable, ReplayRefused, compile_item, item_keys
from sensorium.replay.records import HOOK_KINDS, Malformed, Recorded, format_rfc3339, hook_key
from sensorium.replay.scope import scope_test

TOP = 10            # binaries and pods listed per selector
MALFORMED_SHOWN = 5


@dataclasses.dataclass(frozen=True)
class Decision:
    """The replay's decision on one recorded event for one policy (kept when asked: the differential test)."""

    policy: str
    hook: str
    line: int
    selector: int | None   # the selector whose actions apply (-1: the hook has no selectors), None: no match
    posted: bool
    undecided: str | None


class _SelBooks:
    def __init__(self, index: int, actions: Sequence[str]) -> None:
        self.index, self.action_names = index, list(actions)
        self.matched = self.posted = self.rate_limited = 0
        self.actions: collections.Counter[str] = collections.Counter()
        self.binaries: collections.Counter[str] = collections.Counter()
        self.pods: collections.Counter[str] = collections.Counter()
        self.examples: list[dict[str, Any]] = []

    def as_dict(self) -> dict[str, Any]:
        return {"selector": self.index, "action_names": self.action_names, "matched": self.matched,
                "posted": self.posted, "rate_limited": self.rate_limited, "actions": dict(self.actions),
                "binaries": dict(self.binaries.most_common(TOP)), "pods": dict(self.pods.most_common(TOP)),
                "examples": self.examples}


class _HookBooks:
    def __init__(self, hook: HookEval) -> None:
        self.hook = hook
        self.events = self.matched = self.undecided = 0
        self.recorded_policies: collections.Counter[str] = collections.Counter()
        self.sels = {s.index: _SelBooks(s.index, s.actions) for s in hook.selectors} or {-1: _SelBooks(-1, ["Post"])}
        self.reasons: collections.Counter[str] = collections.Counter()

    def as_dict(self) -> dict[str, Any]:
        return {"hook": self.hook.name, "events": self.events, "matched": self.matched,
                "undecided": self.undecided, "undecided_reasons": dict(self.reasons.most_common(TOP)),
                "recorded_by": dict(self.recorded_policies), "selectors": [s.as_dict() for s in self.sels.values()]}


class _PolicyRun:
    def __init__(self, name: str, mode: str, hooks: list[HookEval],
                 in_scope: Callable[[dict[str, Any]], bool] | None = None) -> None:
        self.name, self.mode, self.in_scope = name, mode, in_scope
        self.out_of_scope = 0
        self.hooks = [_HookBooks(h) for h in hooks]
        self.by_key: dict[tuple[str, ...], list[_HookBooks]] = {}
        for b in self.hooks:
            for k in b.hook.keys:
                self.by_key.setdefault(k, []).append(b)
        self.rl_last: dict[tuple[Any, ...], int] = {}
        self.killed_procs: set[Any] = set()
        self.after_kill = 0

    def totals(self) -> dict[str, Any]:
        matched = sum(h.matched for h in self.hooks)
        posted = sum(s.posted for h in self.hooks for s in h.sels.values())
        actions: collections.Counter[str] = collections.Counter()
        for h in self.hooks:
            for s in h.sels.values():
                actions.update(s.actions)
        enforce = self.mode == "enforcement"
        return {"matched": matched, "posted": posted, "actions": dict(actions),
                "killed": actions["Sigkill"] if enforce else 0,
                "signalled": actions["Signal"] if enforce else 0,
                "overridden": actions["Override"] if enforce else 0,
                "rate_limited": sum(s.rate_limited for h in self.hooks for s in h.sels.values()),
                "undecided": sum(h.undecided for h in self.hooks),
                "events_after_kill": self.after_kill, "out_of_scope": self.out_of_scope}


def _example(rec: Recorded, body: Mapping[str, Any]) -> dict[str, Any]:
    p = body.get("process") or {}
    pod = p.get("pod") or {}
    out = {"line": rec.line, "time": rec.time, "pid": p.get("pid"), "binary": p.get("binary"),
           "args": body.get("args")}
    if pod:
        out["pod"] = f"{pod.get('namespace')}/{pod.get('name')}"
    return out


class Replay:
    """Evaluate ``policies`` over a recording. ``recorded_with``: the policies that made the recording (their
    names select its events; their args say where each argument sits); None: every hook event of the
    recording, assumed to declare each hook's args as the candidate does."""

    def __init__(self, policies: Sequence[Any], *, mode: str | None = None, recorded_with: Sequence[Any] = (),
                 since_ns: int | None = None, until_ns: int | None = None, examples: int = 3,
                 keep_decisions: bool = False, unknown_ancestors: str = "undecided") -> None:
        self.since_ns, self.until_ns, self.examples = since_ns, until_ns, examples
        self.recorded_names = {p.key for p in recorded_with} | {p.name for p in recorded_with}
        rec_items: dict[tuple[str, ...], Any] = {}
        for p in recorded_with:
            for sec in p.sections:
                for item in sec.items:
                    for k in item_keys(item):
                        rec_items.setdefault(k, item)
        self.runs: list[_PolicyRun] = []
        for p in policies:
            hooks = []
            for sec in p.sections:
                for i, item in enumerate(sec.items):
                    line = p.hook_line(sec.key, i)
                    where = f"{p.file or '<policy>'}{f':{line}' if line else ''}"
                    rec = None
                    if recorded_with:
                        ks = item_keys(item)
                        rec = next((rec_items[k] for k in ks if k in rec_items), None)
                        if rec is None:
                            what = " ".join(ks[0][1:]) if ks else "?"
                            names = ", ".join(sorted({r.key for r in recorded_with}))
                            raise ReplayRefused(f"{where}: spec.{sec.key}[{i}]: the recording policy ({names}) does "
                                                f"not hook {what}: there is nothing to replay it on")
                    try:
                        hooks.append(compile_item(sec.key, i, item, rec))
                    except ReplayRefused as e:
                        raise ReplayRefused(f"{where}: {e}") from None
            self.runs.append(_PolicyRun(p.key, mode or p.mode, hooks, scope_test(p)))
        if unknown_ancestors not in ("undecided", "no-match"):
            raise ReplayRefused(f"unknown_ancestors {unknown_ancestors!r}: undecided or no-match")
        self.unknown_ancestors = unknown_ancestors
        self.table = ProcessTable(unknown_ancestors_match=None if unknown_ancestors == "undecided" else False)
        self.lines = self.events = self.in_window = self.untimed = 0
        self.hook_events = self.other_hooks = 0
        self.rate_limit_info = 0
        self.malformed = 0
        self.malformed_examples: list[str] = []
        self.keep = keep_decisions
        self.decisions: list[Decision] = []
        self.sources: list[str] = []

    # -- the stream -------------------------------------------------------------------------------
    def feed(self, items: Iterable[Recorded | Malformed], source: str = "") -> Replay:
        self.sources.append(source)
        for it in items:
            if isinstance(it, Malformed):
                self.malformed += 1
                if len(self.malformed_examples) < MALFORMED_SHOWN:
                    self.malformed_examples.append(f"{source}:{it.line}: {it.reason}")
                continue
            self.events += 1
            self._one(it)
        return self

    def _one(self, rec: Recorded) -> None:
        body = rec.body
        self.table.add(body.get("parent"))
        self.table.add(body.get("process"))
        if rec.kind == "process_exec" and rec.time_ns is not None and isinstance(body.get("process"), dict):
            eid = body["process"].get("exec_id")
            if eid:
                self.table.exec_time[eid] = rec.time_ns
        if rec.kind == "rate_limit_info":
            self.rate_limit_info += 1
            return
        if rec.kind not in HOOK_KINDS:
            return
        if self.since_ns is not None or self.until_ns is not None:
            if rec.time_ns is None:
                self.untimed += 1
                return
            if (self.since_ns is not None and rec.time_ns < self.since_ns) or \
                    (self.until_ns is not None and rec.time_ns >= self.until_ns):
                return
        self.in_window += 1
        pname = body.get("policy_name")
        if self.recorded_names and pname not in self.recorded_names:
            return
        key = hook_key(rec.kind, body)
        on_any = False
        for run in self.runs:
            hooks = run.by_key.get(key, ())
            if hooks and run.in_scope is not None and not run.in_scope(body):
                run.out_of_scope += 1
                on_any = True
                continue
            for hb in hooks:
                on_any = True
                self._decide(run, hb, rec, body)
        if on_any:
            self.hook_events += 1
        else:
            self.other_hooks += 1

    def _decide(self, run: _PolicyRun, hb: _HookBooks, rec: Recorded, body: dict[str, Any]) -> None:
        hb.events += 1
        hb.recorded_policies[str(body.get("policy_name"))] += 1
        proc = body.get("process") or {}
        who = proc.get("exec_id") or proc.get("pid")
        if who is not None and who in run.killed_procs:
            run.after_kill += 1
        sel, why = hb.hook.decide(body, self.table, rec.time_ns)
        if why is not None:
            hb.undecided += 1
            hb.reasons[why] += 1
            if self.keep:
                self.decisions.append(Decision(run.name, hb.hook.name, rec.line, None, False, why))
            return
        if sel is None:
            if self.keep:
                self.decisions.append(Decision(run.name, hb.hook.name, rec.line, None, False, None))
            return
        hb.matched += 1
        books = hb.sels[sel]
        books.matched += 1
        s = next((x for x in hb.hook.selectors if x.index == sel), None)
        post, signal = (s.post, s.signal) if s else (True, False)
        monitor = run.mode != "enforcement"
        posted = post or (monitor and signal)
        limited = False
        if posted and s is not None and s.rate_limit_ns and post:
            scope_id = {"thread": proc.get("tid"), "process": proc.get("pid")}.get(s.rate_scope, 0)
            # one rate-limit map per hook object: an uprobe item's symbols are one object each
            k = (hb.hook.name, hook_key(rec.kind, body), sel, scope_id, orjson.dumps(body.get("args")))
            last = run.rl_last.get(k)
            if rec.time_ns is not None and last is not None and rec.time_ns - last < s.rate_limit_ns:
                limited = True
                posted = False
                books.rate_limited += 1
            elif rec.time_ns is not None:
                run.rl_last[k] = rec.time_ns
        if posted:
            books.posted += 1
        for name in books.action_names:
            if name == "Post" and not (post and not limited):
                continue
            books.actions[name] += 1
        if s is not None and s.kills and not monitor and who is not None:
            run.killed_procs.add(who)
        b = proc.get("binary")
        books.binaries[str(b) if b else "?"] += 1
        pod = proc.get("pod")
        if isinstance(pod, dict) and pod.get("name"):
            books.pods[f"{pod.get('namespace')}/{pod.get('name')}"] += 1
        if len(books.examples) < self.examples:
            books.examples.append(_example(rec, body))
        if self.keep:
            self.decisions.append(Decision(run.name, hb.hook.name, rec.line, sel, posted, None))

    # -- the result -------------------------------------------------------------------------------
    def result(self) -> dict[str, Any]:
        pols = []
        total: collections.Counter[str] = collections.Counter()
        acts: collections.Counter[str] = collections.Counter()
        for run in self.runs:
            t = run.totals()
            pols.append({"policy": run.name, "mode": run.mode, **t, "hooks": [h.as_dict() for h in run.hooks]})
            for k in ("matched", "posted", "killed", "signalled", "overridden", "rate_limited", "undecided",
                      "events_after_kill"):
                total[k] += t[k]
            acts.update(t["actions"])
        return {"matched": total["matched"], "posted": total["posted"], "actions": dict(acts),
                "killed": total["killed"], "signalled": total["signalled"], "overridden": total["overridden"],
                "rate_limited": total["rate_limited"], "undecided": total["undecided"],
                "events_after_kill": total["events_after_kill"],
                "recording": {"files": self.sources, "events": self.events, "in_window": self.in_window,
                              "on_policy_hooks": self.hook_events, "on_other_hooks": self.other_hooks,
                              "untimed": self.untimed, "rate_limit_info": self.rate_limit_info,
                              "malformed": self.malformed, "malformed_examples": self.malformed_examples,
                              "since": None if self.since_ns is None else format_rfc3339(self.since_ns),
                              "until": None if self.until_ns is None else format_rfc3339(self.until_ns)},
                "assumptions": ({"unknown_ancestors": "no-match"} if self.unknown_ancestors == "no-match" else {}),
                "policies": pols}


def render_text(res: Mapping[str, Any]) -> Iterator[str]:
    """The report for people: one block per policy, hook and selector."""
    r = res["recording"]
    yield (f"recording {', '.join(r['files'])}: {r['events']} events, {r['on_policy_hooks']} on the policy's hooks"
           + (f", {r['malformed']} malformed lines" if r["malformed"] else "")
           + (f", {r['untimed']} without a time (left out by --since/--until)" if r["untimed"] else ""))
    for p in res["policies"]:
        acts = ", ".join(f"{k} {v}" for k, v in sorted(p["actions"].items())) or "none"
        yield f"policy {p['policy']} ({p['mode']}): matched {p['matched']}, posted {p['posted']}; actions: {acts}"
        if p["mode"] != "enforcement" and any(p["actions"].get(a) for a in ("Sigkill", "Signal", "Override")):
            yield "  monitoring: nothing would be killed or overridden; the actions above say what enforcement would do"
        if p["events_after_kill"]:
            yield (f"  {p['events_after_kill']} recorded events came from processes after the policy would have "
                   f"killed them (they would not have happened)")
        for h in p["hooks"]:
            yield f"  {h['hook']}: {h['events']} events, matched {h['matched']}" + (
                f", undecided {h['undecided']}" if h["undecided"] else "")
            if len(h["recorded_by"]) > 1:
                yield (f"    the recording holds this hook's events from {len(h['recorded_by'])} policies "
                       f"({', '.join(sorted(h['recorded_by']))}): a call may be counted once per policy; pass "
                       f"--recorded-with to choose one")
            for why, n in h["undecided_reasons"].items():
                yield f"    undecided ({n}): {why}"
            for s in h["selectors"]:
                if not s["matched"]:
                    continue
                name = "no selectors" if s["selector"] < 0 else f"selectors[{s['selector']}]"
                acts = ", ".join(f"{k} {v}" for k, v in s["actions"].items())
                yield (f"    {name} ({'+'.join(s['action_names'])}): matched {s['matched']}, posted {s['posted']}"
                       + (f", rate-limited {s['rate_limited']}" if s["rate_limited"] else "") + f"; {acts}")
                yield "      binaries: " + ", ".join(f"{b} ({n})" for b, n in s["binaries"].items())
                if s["pods"]:
                    yield "      pods: " + ", ".join(f"{b} ({n})" for b, n in s["pods"].items())
                for e in s["examples"]:
                    yield (f"      e.g. line {e['line']} {e['time']} pid {e['pid']} {e['binary']} "
                           f"{orjson.dumps(e['args']).decode()}")
    for m in r["malformed_examples"]:
        yield f"malformed: {m}"


__all__ = ["Replay", "Decision", "render_text", "ReplayRefused"]
