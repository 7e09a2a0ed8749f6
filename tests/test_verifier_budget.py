"""The verifier budget (DESIGN.md): every program every sensor ships verifies in at most
`sensorium.hooks.selectors.VERIFIER_BUDGET` processed instructions (20% of the kernel's 1M limit) in its most
expensive configuration, measured by the kernel itself (bpf_prog_info.verified_insns, or the verifier's
statistics line before 5.16).

The cases come from the sensors (`SensorSpec.budget_cases`), through the same plugin discovery as the
agent's, so a third-party sensor is held to the same budget. A program the kernel cannot load at all here
(a hook type it refuses) is recorded as such and measured in the VM lane, which runs this file on every
lane kernel. Each run writes its table to build/verifier-budget/<kernel release>.json;
scripts/budget_table.py merges those into docs/verifier-budget.md.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import pytest

from sensorium.bpf.build import build_object
from sensorium.bpf.libbpf import BpfObject, LibbpfError
from sensorium.hooks import selectors as S
from sensorium.hookspecs import BudgetCase, ProbeSource
from sensorium.plugins import PluginRegistry

pytestmark = [pytest.mark.kernel, pytest.mark.vm]

ROOT = Path(__file__).resolve().parent.parent
RESULTS: dict[str, dict[str, Any]] = {}


def _cases() -> list[tuple[str, BudgetCase]]:
    out: list[tuple[str, BudgetCase]] = []
    seen: set[tuple[str, str, str]] = set()
    for name, spec in sorted(PluginRegistry().discover().sensors.items()):
        if spec.budget_cases is None:
            continue
        for c in spec.budget_cases():
            key = (_probe_id(c.probe), c.program, c.config)
            if key not in seen:
                seen.add(key)
                out.append((name, c))
    return out


def _probe_id(p: ProbeSource) -> str:
    defs = ",".join(f"{k}={v}" for k, v in sorted(p.defines.items()))
    return f"{p.name}" + (f"[{defs}]" if defs and not p.name.endswith(tuple(p.defines.values())) else "")


CASES = _cases()


def _case_id(item: tuple[str, BudgetCase]) -> str:
    _, c = item
    return f"{c.probe.name}:{c.program}:{c.config.replace(' ', '_')}"


def test_every_shipped_program_has_a_budget_case() -> None:
    """No program escapes the budget: each program of each object a sensor declares or builds has a case
    (objects built per hook count by their source: one instance covers the others)."""
    covered = {(str(c.probe.source), c.program) for _, c in CASES}
    probes: dict[str, ProbeSource] = {}
    for _name, spec in sorted(PluginRegistry().discover().sensors.items()):
        for p in list(spec.probes) + [c.probe for c in (spec.budget_cases() if spec.budget_cases else [])]:
            probes.setdefault(_probe_id(p), p)
    missing = []
    for pid, p in sorted(probes.items()):
        obj = BpfObject.open(build_object(p))
        try:
            for prog in obj.programs:
                if (str(p.source), prog) not in covered:
                    missing.append(f"{pid}:{prog}")
        finally:
            obj.close()
    assert not missing, f"programs with no verifier budget case (SensorSpec.budget_cases): {missing}"


@pytest.mark.parametrize("item", CASES, ids=_case_id)
def test_program_verifies_within_budget(item: tuple[str, BudgetCase], kernel_caps: Any) -> None:
    sensor, case = item
    key = _case_id(item)
    row: dict[str, Any] = {"sensor": sensor, "object": case.probe.name, "program": case.program,
                           "config": case.config}
    RESULTS[key] = row
    lacking = sorted(n for n in case.needs if not kernel_caps.has(n))
    if lacking:
        row["result"] = "cannot load here: no " + ", ".join(lacking)
        pytest.skip(f"{row['result']} (the VM lane measures it)")
    obj = BpfObject.open(build_object(case.probe))
    try:
        for name, prog in obj.programs.items():
            prog.set_autoload(name == case.program)
        if case.prepare is not None:
            case.prepare(obj)
        started = time.monotonic()
        try:
            obj.load(stats=True)
        except LibbpfError as e:
            v = e.verifier
            row["result"] = "refused"
            row["insns"] = v.insns if v is not None else None
            row["reason"] = (v.error if v is not None else str(e))[:300]
            pytest.fail(f"{key} does not load on {platform.release()}:\n{e}")
        row["seconds"] = round(time.monotonic() - started, 3)
        prog = obj.program(case.program)
        n = prog.verified_insns
        row["insns"] = n
        row["states"] = prog.stats.get("total_states")
        assert n is not None, f"{key}: the kernel reported no processed-instruction count"
        row["result"] = "ok" if n <= S.VERIFIER_BUDGET else "over budget"
        assert n <= S.VERIFIER_BUDGET, (f"{key}: {n:,} processed instructions on {platform.release()}, over the "
                                        f"budget of {S.VERIFIER_BUDGET:,}")
    finally:
        obj.close()


def test_budget_table_written() -> None:
    """Print the table of this kernel (program, processed instructions, % of budget) and keep it for
    scripts/budget_table.py. Runs after the cases (file order)."""
    if not RESULTS:
        pytest.skip("no budget case ran in this session (a selection without them)")
    release = os.environ.get("SENSORIUM_IN_VM") or platform.release()
    lines = [f"verifier budget on {platform.release()} (budget {S.VERIFIER_BUDGET:,}):"]
    for key, r in sorted(RESULTS.items(), key=lambda kv: -(kv[1].get("insns") or 0)):
        n = r.get("insns")
        pct = f"{100 * n / S.VERIFIER_BUDGET:5.1f}%" if n else "     "
        lines.append(f"  {key:<72} {n if n is not None else '-':>9} {pct}  {r.get('result', '?')}")
    print("\n".join(lines))
    out = ROOT / "build" / "verifier-budget"
    out.mkdir(parents=True, exist_ok=True)
    doc = {"kernel": platform.release(), "label": release, "budget": S.VERIFIER_BUDGET,
           "measured": time.strftime("%Y-%m-%d"), "cases": RESULTS}
    tmp = out / f".{platform.release()}.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
    tmp.replace(out / f"{platform.release()}.json")
    worst = max((r.get("insns") or 0) for r in RESULTS.values())
    assert worst <= S.VERIFIER_BUDGET
