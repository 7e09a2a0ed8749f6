#!/usr/bin/env python3
"""Tetragon compatibility: what Sensorium does with each policy of Tetragon's example corpus, per kernel.

For every file of tests/data/tetragon-policies, the *outcome* on one kernel is one line: "loads: <the
mechanisms that serve its hooks>", or "refused (<class>): <field>: <reason>" where the class is
``kernel`` (this kernel cannot serve it), ``not implemented`` (a Tetragon feature Sensorium does not
have, named in the reason) or ``invalid`` (the policy itself is wrong for Sensorium or this kernel).
Policies are loaded through the real policy manager and sensors, in monitoring mode (nothing is blocked
or killed), and deleted at once.

The expected outcome of every policy on every kernel we test (the host kind and each VM-lane kernel) is
recorded in tests/data/tetragon-compat.yaml; tests/test_tetragon_compat.py observes the outcomes on the
kernel it runs on and fails on any difference, in either direction. An improvement or a regression is
recorded deliberately:

    SENSORIUM_COMPAT_OBSERVED=1 .venv/bin/python -m pytest tests/test_tetragon_compat.py   # host, and
    scripts/vm/run.sh <kernel> tests/test_tetragon_compat.py (same variable)                 # each lane kernel
    .venv/bin/python scripts/compat_table.py --merge      # build/compat/*.json -> the record
    .venv/bin/python scripts/compat_table.py              # the record -> docs/tetragon-compat.md
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "tests" / "data" / "tetragon-policies"
DOC = REPO / "docs" / "tetragon-compat.md"

log = logging.getLogger("compat_table")

SECTION_OWNERS = {"tracepoints": "tracepoint", "kprobes": "kprobe", "uprobes": "uprobe", "lsmhooks": "lsm",
                  "usdts": "usdt"}


@dataclasses.dataclass
class Row:
    file: str
    result: str               # "loads" | "valid" | "refused"
    stage: str                # "parse" (models), "load" (this host's sensors)
    sections: str = ""        # e.g. "kprobes x3"
    mechanism: str = ""       # what serves the hooks on this host, when loaded
    reason: str = ""          # why refused (file:line: field: reason, without the file name)


class ModelSections:
    """Every section Sensorium has a model for, as if all built-in sensors were installed."""

    def policy_sections(self) -> Mapping[str, tuple[str, Any]]:
        from sensorium.policy import SECTION_MODELS

        return {k: (SECTION_OWNERS[k], m) for k, m in SECTION_MODELS.items()}


def corpus_files() -> list[Path]:
    return sorted(CORPUS.rglob("*.yaml"))


def rel(path: Path) -> str:
    return str(path.relative_to(CORPUS))


def _short(exc: Exception, file: str) -> str:
    msg = str(exc)
    if not msg.startswith(file + ":"):
        return msg
    rest = msg[len(file) + 1:]
    line, sep, tail = rest.partition(": ")
    return f"line {line}: {tail}" if sep and line.isdigit() else rest.lstrip()


def parse_row(path: Path) -> tuple[Row, list[Any]]:
    """The parse stage for one file: (row, parsed policies)."""
    from sensorium.policy import parse_policies
    from sensorium.yamlsrc import SourceError

    name = rel(path)
    try:
        # As `sensorium policy check` parses: a scoped policy is valid; whether an agent serves it is the load's
        policies = parse_policies(path.read_bytes(), name, ModelSections(), scoping_supported=True)
    except SourceError as exc:
        return Row(name, "refused", "parse", reason=_short(exc, name)), []
    secs = ", ".join(f"{s.key} x{len(s.items)}" for p in policies for s in p.sections)
    return Row(name, "valid", "parse", sections=secs), policies


def start_sensors() -> tuple[Any, dict[str, Any], list[Any]]:
    """The installed registry and every implemented sensor that owns a policy section, started for real
    (each with its own direct context: real objects and ring buffers, no exporters)."""
    from sensorium.hooks.testing import DirectContext
    from sensorium.plugins import PluginRegistry

    reg = PluginRegistry().discover()
    sensors: dict[str, Any] = {}
    contexts: list[Any] = []
    for name, spec in sorted(reg.sensors.items()):
        if not spec.implemented or not spec.policy_sections:
            continue
        ctx = DirectContext()
        contexts.append(ctx)
        try:
            sensor = spec.factory(ctx)
            sensor.start()
        except Exception as exc:  # noqa: BLE001 - the table says the sensor did not start
            rec = reg.record("sensor", name)
            if rec is not None:
                rec.state, rec.reason = "failed", f"{type(exc).__name__}: {exc}"
            log.warning("sensor %s did not start: %s", name, exc)
            continue
        rec = reg.record("sensor", name)
        if rec is not None:
            rec.state = "running"
        sensors[name] = sensor
    return reg, sensors, contexts


def load_rows(rows: list[Row], files: Iterable[Path]) -> None:
    """Load each valid file through the policy manager and the real sensors (monitoring mode), fill in
    the mechanism or the refusal, and delete it again."""
    from sensorium.policy_manager import PolicyManager
    from sensorium.yamlsrc import SourceError

    reg, sensors, contexts = start_sensors()
    pm = PolicyManager(reg, sensors)
    try:
        by_name = {r.file: r for r in rows}
        for path in files:
            row = by_name[rel(path)]
            if row.result != "valid":
                continue
            try:
                names = pm.add(path.read_bytes(), row.file, mode="monitoring")
            except SourceError as exc:
                row.result, row.stage, row.reason = "refused", "load", _short(exc, row.file)
                continue
            try:
                mechs: list[str] = []
                for n in names:
                    for h in pm.get(n)["hooks"]:
                        m = h.get("mechanism") or h.get("state") or "?"  # "skipped": ignore.callNotFound
                        if m not in mechs:
                            mechs.append(m)
                row.result, row.stage, row.mechanism = "loads", "load", ", ".join(mechs)
            finally:
                for n in names:
                    pm.delete(n)
    finally:
        pm.unload_all()
        for s in sensors.values():
            try:
                s.stop()
            except Exception:  # one sensor's failing stop must not leave the others running
                log.exception("stopping a sensor")
        for ctx in contexts:
            ctx.close()


def observe(load: bool = True) -> list[Row]:
    """Every corpus file's row on this kernel: the parse stage, and with ``load`` the load stage."""
    files = corpus_files()
    rows = [parse_row(f)[0] for f in files]
    if load:
        load_rows(rows, files)
    return rows


# ---- outcomes, classes, the record ----------------------------------------------------------------
RECORD = REPO / "tests" / "data" / "tetragon-compat.yaml"
OBSERVED = REPO / "build" / "compat"

# Why a policy is refused, from the words of our own messages (kept with them: a new kind of refusal that
# matches none of these is "unclassified", which the test refuses to record).
_KERNEL_WORDS = ("on this kernel", "this kernel refuses", "kernel lacks", "does not exist in this kernel",
                 "needs fmod_ret", "cannot be hooked", "not available here", "do not load on this kernel",
                 "BPF LSM is not", "refuses lsm", "no fallback on this kernel", "not offered by this kernel",
                 "cannot attach")
_MISSING_WORDS = ("not supported by Sensorium", "not implemented", "not supported yet",
                  "no Sensorium sensor implements",
                  "is not supported in the kernel selectors", "is not supported on kernel functions yet",
                  "are not supported", "is not supported here", "not supported for syscall hooks")


# What this agent's config leaves off (the compat harness runs an agent without Kubernetes).
_CONFIG_WORDS = ("(kubernetes.enabled in the agent config)",)


def reason_class(stage: str, reason: str) -> str:
    if stage == "load" and any(w in reason for w in _KERNEL_WORDS):
        return "kernel"
    if stage == "load" and any(w in reason for w in _CONFIG_WORDS):
        return "config"
    if any(w in reason for w in _MISSING_WORDS):
        return "not implemented"
    if (stage == "parse" or "does not match" in reason or "out of range" in reason or "is declared twice" in reason
            or "does not exist" in reason or " together" in reason):
        return "invalid"
    return "unclassified"


def outcome(row: Row) -> str:
    """One line for a row: what a user gets on this kernel."""
    if row.result == "loads":
        return f"loads: {row.mechanism}"
    if row.result == "refused":
        return f"refused ({reason_class(row.stage, row.reason)}): {row.reason}"[:400]
    return "valid: not loaded"


def kernel_label() -> str:
    """The record's column for this kernel: the VM lane's kernel series (5.10, 6.1, 6.12), or "host"."""
    release = os.environ.get("SENSORIUM_IN_VM")
    if not release:
        return "host"
    parts = release.split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 else release


# What decides outcomes on the host: the record's host column holds for a host with this profile only.
PROFILE_NAMES = ("raw_tp", "tp_btf", "tracepoint", "uprobe", "kprobe", "kprobes", "fentry", "fexit", "fmod_ret",
                 "lsm", "bpf_lsm", "cgroup_sock_addr", "bpf_rdonly_cast", "bpf_set_retval")


def host_profile(caps: Any) -> str:
    return " ".join(f"{n}={'yes' if caps.has(n) else 'no'}" for n in PROFILE_NAMES)


def read_record() -> dict[str, Any]:
    import yaml

    if not RECORD.is_file():
        return {"kernels": {}, "policies": {}}
    return yaml.safe_load(RECORD.read_text()) or {"kernels": {}, "policies": {}}


def write_record(rec: dict[str, Any]) -> None:
    import yaml

    head = ("# Expected outcome of each Tetragon example policy on each kernel we test (scripts/compat_table.py,\n"
            "# tests/test_tetragon_compat.py). Update with `scripts/compat_table.py --merge` after observing,\n"
            "# never by hand: an entry that changes is a change of what users get.\n")
    RECORD.write_text(head + yaml.safe_dump(rec, sort_keys=True, width=200, allow_unicode=True))


def save_observed(label: str, rows: list[Row], profile: str) -> Path:
    import json

    OBSERVED.mkdir(parents=True, exist_ok=True)
    out = OBSERVED / f"{label}.json"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"label": label, "kernel": platform.release(), "profile": profile,
                               "outcomes": {r.file: outcome(r) for r in rows}}, indent=1, sort_keys=True))
    tmp.replace(out)
    return out


def merge() -> int:
    """build/compat/*.json (observed) -> the record."""
    import json

    rec = read_record()
    files = sorted(OBSERVED.glob("*.json"))
    if not files:
        print(f"compat_table: nothing observed in {OBSERVED}", file=sys.stderr)
        return 1
    for f in files:
        obs = json.loads(f.read_text())
        bad = [k for k, v in obs["outcomes"].items() if "(unclassified)" in v]
        if bad:
            print(f"compat_table: {f.name}: unclassified refusals (teach reason_class their words): {bad}",
                  file=sys.stderr)
            return 1
        label = obs["label"]
        rec["kernels"][label] = {"kernel": obs["kernel"], "profile": obs["profile"]}
        for name, out in obs["outcomes"].items():
            rec["policies"].setdefault(name, {})[label] = out
        print(f"compat_table: merged {label} ({obs['kernel']}) from {f.name}")
    write_record(rec)
    return 0


def _cell(text: str, limit: int = 200) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


_LABEL_ORDER = {"host": (99,), "5.10": (5, 10), "6.1": (6, 1), "6.12": (6, 12)}


def render(rec: dict[str, Any]) -> str:
    labels = sorted(rec["kernels"], key=lambda k: _LABEL_ORDER.get(k, (50,)))
    pol = rec["policies"]
    n = len(pol)

    def count(label: str, prefix: str) -> int:
        return sum(1 for v in pol.values() if v.get(label, "").startswith(prefix))

    out = [
        "# Tetragon policy compatibility",
        "",
        "Generated by `scripts/compat_table.py` from the record `tests/data/tetragon-compat.yaml`, which",
        "`tests/test_tetragon_compat.py` checks on every kernel it runs on (any difference fails it). The",
        f"corpus: the {n} example policies of cilium/tetragon in `tests/data/tetragon-policies` (Apache-2.0).",
        "",
        "- **loads**: loaded through the real policy manager and sensors (in monitoring mode, then deleted);",
        "  the mechanisms are what served its hooks on that kernel.",
        "- **refused (kernel)**: that kernel cannot serve a hook of the policy (no kprobes or trampolines, a",
        "  helper missing); **refused (not implemented)**: a Tetragon feature Sensorium does not have yet, named;",
        "  **refused (invalid)**: the policy does not fit Sensorium's model or that kernel (e.g. an argument type",
        "  that does not match the function's prototype); **refused (config)**: valid, and served by an agent",
        "  configured for it (a scoped policy needs `kubernetes.enabled`; the compat run has no Kubernetes).",
        "  The reason is what the user sees.",
        "",
        "| kernel | release | loads | refused (kernel) | refused (not implemented) | refused (invalid) "
        "| refused (config) |",
        "|---|---|---|---|---|---|---|",
    ]
    for label in labels:
        k = rec["kernels"][label]
        out.append(f"| {label} | {k['kernel']} | {count(label, 'loads')} | {count(label, 'refused (kernel)')} | "
                   f"{count(label, 'refused (not implemented)')} | {count(label, 'refused (invalid)')} | "
                   f"{count(label, 'refused (config)')} |")
    out += ["", "Host profile the host column holds for: `" + rec["kernels"].get("host", {}).get("profile", "?") + "`.",
            "", "A refusal's reason, as the user sees it, is listed once under its number below the table.", "",
            "| file | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    reasons: dict[str, int] = {}

    def short(outcome: str) -> str:
        head, sep, reason = outcome.partition("): ")
        if not outcome.startswith("refused (") or not sep:
            return _cell(outcome)
        num = reasons.setdefault(reason, len(reasons) + 1)
        return f"{head[len('refused ('):]} [R{num}](#r{num})"

    for name in sorted(pol):
        out.append(f"| {name} | " + " | ".join(short(pol[name].get(lb, "not recorded")) for lb in labels) + " |")
    out += ["", "## Reasons", ""]
    for reason, num in reasons.items():
        out.append(f'<a id="r{num}"></a>**R{num}**: {_cell(reason, 1000)}')
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--merge", action="store_true", help="merge build/compat/*.json into the record first")
    ap.add_argument("--output", type=Path, default=DOC)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.merge and merge() != 0:
        return 1
    rec = read_record()
    if not rec["policies"]:
        print(f"compat_table: the record {RECORD} is empty", file=sys.stderr)
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(rec))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
