"""`sensorium policy check` and `sensorium policy add` agree: the whole hostile policy corpus goes through
both commands (check offline; add over a real API socket to a policy manager whose sensors run for real
in this kernel), and check refuses every bad policy add refuses, with the same message.

Every input of the corpus is bad for a reason that holds on any kernel (tests/data/hostile/, written by
scripts/hostile_corpus.py), so none may pass check and be refused by add: that was the gap (index 6 on a
syscall, a NUL byte in a value, a call name with shell characters passed check).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from reliability import Tally

from sensorium.api import ApiServer
from sensorium.cli import cli
from sensorium.policy_manager import PolicyManager

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import compat_table as C  # noqa: E402
import hostile_corpus as H  # noqa: E402

POLICIES = sorted((H.CORPUS / "policies").glob("*.yaml"))


class PolicyAgent:
    """What the API serves from an agent, built from the real parts: registry, running sensors, manager."""

    def __init__(self, registry: Any, sensors: dict[str, Any]) -> None:
        self.registry = registry
        # As `policy check` parses: selectors accepted, their scope the agent's business.
        self.policies = PolicyManager(registry, sensors, scoping_supported=True)

    def status(self) -> dict[str, Any]:
        return {"policies": self.policies.list()}

    def subscribe(self, callback: Callable[[Sequence[Any]], None]) -> Callable[[], None]:
        return lambda: None


def _error(output: str) -> str | None:
    """The refusal click printed ("Error: <message>"), or None when the command succeeded."""
    lines = [ln for ln in output.splitlines() if ln.startswith("Error: ")]
    return lines[0][len("Error: "):] if lines else None


@pytest.mark.kernel
@pytest.mark.skipif(os.geteuid() != 0, reason="starts the policy sensors in the kernel: needs root")
def test_check_refuses_every_bad_policy_add_refuses_with_the_same_message(tmp_path: Path) -> None:
    reg, sensors, contexts = C.start_sensors()
    if not sensors:
        for ctx in contexts:
            ctx.close()
        pytest.skip("no sensor that serves policy sections started on this host")
    agent = PolicyAgent(reg, sensors)
    srv = ApiServer(tmp_path / "run" / "api.sock", agent)
    srv.start()
    t = Tally("check-add-agreement",
              "tests/test_policy_check_add.py::test_check_refuses_every_bad_policy_add_refuses_with_the_same_message",
              "the hostile policy corpus through `sensorium policy add` (real API, real sensors) and "
              "`sensorium policy check`: same refusal, same message")
    runner = CliRunner()
    agree = differ = 0
    differences: list[str] = []
    try:
        for path in POLICIES:
            rel = str(path.relative_to(REPO))
            t.kinds.add(H.header(path.read_bytes())["kind"])
            outcome, added = t.run(path.name, lambda rel=rel: runner.invoke(cli, ["policy", "add", rel, "--socket",
                                                                          str(srv.path)]))
            if outcome != "ok":
                continue
            add_error = _error(added.output)
            if added.exit_code == 0:  # add took a bad policy: undo it, and count it
                t.accepted_bad(f"add {path.name}")
                for key in agent.policies.names():
                    agent.policies.delete(key)
                continue
            checked = runner.invoke(cli, ["policy", "check", rel])
            check_error = _error(checked.output)
            if checked.exit_code == 1 and check_error == add_error:
                agree += 1
                t.refused(path.name, True, add_error or "")
            else:
                differ += 1
                differences.append(f"{path.name}: add: {add_error} | check: {check_error or checked.output.strip()}")
                t.refused(path.name, False, differences[-1])
    finally:
        srv.stop()
        agent.policies.unload_all()
        for s in sensors.values():
            s.stop()
        for ctx in contexts:
            ctx.close()
        t.extra.update(same_message=agree, different=differ, sensors=sorted(sensors))
        t.write()
    assert not differences, differences[:5]
    t.assert_clean()
    assert agree == len(POLICIES)
