#!/usr/bin/env python3
"""Tetragon compatibility table: what Sensorium does with each policy of Tetragon's example corpus.

For every file of tests/data/tetragon-policies it records whether the policy is valid for Sensorium's
models (parse stage), and, with ``--load`` (root, real kernel), whether the running agent's sensors load
it on this host and by which mechanism (policies are loaded in monitoring mode, so nothing is blocked or
killed, and deleted at once). It writes docs/tetragon-compat.md, so the table stays what the code does:

    .venv/bin/python scripts/compat_table.py --load      # regenerate the doc (as root)
    .venv/bin/python scripts/compat_table.py --check     # parse stage only; exit 1 if the doc disagrees

tests/test_tetragon_compat.py uses the same functions.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "tests" / "data" / "tetragon-policies"
DOC = REPO / "docs" / "tetragon-compat.md"

SECTION_OWNERS = {"tracepoints": "tracepoint", "kprobes": "kprobe", "uprobes": "uprobe", "lsmhooks": "lsm"}


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
        policies = parse_policies(path.read_bytes(), name, ModelSections())
    except SourceError as exc:
        return Row(name, "refused", "parse", reason=_short(exc, name)), []
    secs = ", ".join(f"{s.key} x{len(s.items)}" for p in policies for s in p.sections)
    return Row(name, "valid", "parse", sections=secs), policies


def start_sensors() -> tuple[Any, dict[str, Any], list[Any]]:
    """The installed registry and every implemented sensor that owns a policy section, started for real
    (each with its own direct context: real objects and ring buffers, no exporters)."""
    from sensorium.plugins import PluginRegistry
    from sensorium_sensors.tracepoint.testing import DirectContext

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
            logging.warning("sensor %s did not start: %s", name, exc)
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
                        m = h.get("mechanism") or "?"
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
            except Exception:  # noqa: BLE001
                logging.exception("stopping a sensor")
        for ctx in contexts:
            ctx.close()


def classify(load: bool) -> list[Row]:
    files = corpus_files()
    rows = [parse_row(f)[0] for f in files]
    if load:
        load_rows(rows, files)
    return rows


def _cell(text: str, limit: int = 260) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render(rows: list[Row], loaded: bool) -> str:
    n = len(rows)
    counts = {k: sum(r.result == k for r in rows) for k in ("loads", "valid", "refused")}
    host = f"{platform.node()} (Linux {platform.release()})"
    out = [
        "# Tetragon policy compatibility",
        "",
        "Generated by `scripts/compat_table.py` from the 55 example policies of cilium/tetragon in",
        "`tests/data/tetragon-policies` (Apache-2.0). Do not edit by hand: run",
        "`.venv/bin/python scripts/compat_table.py --load` as root to regenerate it.",
        "",
        "- **loads**: the policy loaded on the generating host through the running agent's sensors (in",
        "  monitoring mode) and was deleted again; *mechanism* is what served its hooks there.",
        "- **valid**: Sensorium's models accept every field, but no sensor on the generating host could be",
        "  asked to load it" + (" (generated without `--load`)." if not loaded else "."),
        "- **refused**: the reason is what the user sees: line, field path and why. *parse* refusals hold on",
        "  every host (a field, operator or action Sensorium does not implement); *load* refusals depend on",
        "  the host (a sensor not installed or not running, a hook this kernel cannot serve).",
        "",
        f"Result on {host if loaded else 'the models alone'}: {counts['loads']} load, {counts['valid']} valid, "
        f"{counts['refused']} refused, of {n}.",
        "",
        "| file | result | stage | sections | mechanism | reason |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(f"| {r.file} | {r.result} | {r.stage} | {_cell(r.sections)} | {_cell(r.mechanism)} | {_cell(r.reason)} |")
    out.append("")
    return "\n".join(out)


def read_doc_rows(text: str) -> dict[str, dict[str, str]]:
    """file -> {result, stage, reason} from a generated table (for freshness checks)."""
    rows: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        if not line.startswith("| ") or line.startswith("| file ") or line.startswith("|---"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) == 6:
            rows[cells[0]] = {"result": cells[1], "stage": cells[2], "reason": cells[5]}
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--load", action="store_true", help="also load each valid policy on this host (root)")
    ap.add_argument("--check", action="store_true", help="compare the parse stage with the doc; do not write")
    ap.add_argument("--output", type=Path, default=DOC)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.load and os.geteuid() != 0:
        ap.error("--load needs root (it loads eBPF programs)")
    rows = classify(load=args.load)
    if args.check:
        doc = read_doc_rows(args.output.read_text())
        bad = []
        for r in rows:
            d = doc.get(r.file)
            if d is None:
                bad.append(f"{r.file}: missing from {args.output}")
            elif r.result == "refused" and (d["stage"] != "parse" or d["reason"] != _cell(r.reason)):
                bad.append(f"{r.file}: doc says {d['result']}/{d['stage']}, parser says refused: {r.reason}")
            elif r.result == "valid" and d["stage"] == "parse":
                bad.append(f"{r.file}: doc says refused at parse, parser accepts it")
        for b in bad:
            print(b, file=sys.stderr)
        return 1 if bad else 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(rows, loaded=args.load))
    print(f"wrote {args.output}: " + ", ".join(f"{k} {sum(r.result == k for r in rows)}" for k in ("loads", "valid", "refused")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
