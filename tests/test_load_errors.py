"""A program the kernel refuses is reported with the verifier's own reason (its error line and the instructions
it processed), a hint for the usual causes, and, through the policy manager, the policy file, line, field and
hook: never libbpf's progress lines in place of the reason (issue 10, item 3)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from policy_sensors import default_registry

from sensorium.bpf.build import build_object
from sensorium.bpf.libbpf import VERIFIER_LIMIT, BpfObject, LibbpfError
from sensorium.bpf.probe import ensure_mounts
from sensorium.hookspecs import PolicyLoadError, PolicyView, ProbeSource
from sensorium.policy import PolicyError
from sensorium.policy_manager import PolicyManager

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root"),
]

PROBE = ProbeSource(name="loader_test", source=Path(__file__).resolve().parent / "bpf" / "loader_test.bpf.c")


def refusal(program: str) -> LibbpfError:
    ensure_mounts()
    with BpfObject.open(build_object(PROBE), name="refused") as obj:
        obj.program(program).set_autoload(True)
        with pytest.raises(LibbpfError) as ei:
            obj.load()
    return ei.value


def assert_no_libbpf_chatter(text: str) -> None:
    chatter = [ln for ln in text.splitlines() if ln.startswith("libbpf:") or re.match(r"^\d+: \(", ln)]
    assert not chatter, f"libbpf's log or the verifier's trace in place of the reason: {chatter[:3]}"


def test_a_program_over_the_complexity_limit_names_the_limit_and_a_hint() -> None:
    e = refusal("too_complex")
    text = str(e)
    lines = text.splitlines()
    assert lines[0].startswith("cannot load BPF object 'refused'") and "program 'too_complex' failed" in lines[0]
    # The verifier gives up in one of its ways (the instruction limit, or a sequence of jumps too long),
    # and says how far it got: both are shown, not libbpf's lines.
    assert e.verifier is not None and e.verifier.too_complex, e.verifier
    assert "too complex" in e.verifier.error or "too large" in e.verifier.error, e.verifier.error
    assert e.verifier.insns is not None
    assert f"verifier: processed {e.verifier.insns:,} instructions (limit {VERIFIER_LIMIT:,})" in lines
    assert any(ln.startswith("hint: the program is over the verifier's complexity limit") for ln in lines)
    assert_no_libbpf_chatter(text)


def test_a_refused_memory_access_shows_the_verifiers_own_words() -> None:
    e = refusal("bad_deref")
    assert e.verifier is not None
    assert "invalid mem access 'map_value_or_null'" in e.verifier.error
    assert not e.verifier.too_complex
    assert "hint: the program is over" not in str(e)
    assert_no_libbpf_chatter(str(e))


class _VerifierRefusingSensor:
    """A sensor whose program the verifier refuses: it reports the refusal the way the built-in sensors do
    (`PolicyLoadError(hook, str(LibbpfError), field)`)."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def check_policy(self, policy: PolicyView) -> None:
        self.inner.check_policy(policy)

    def load_policy(self, policy: PolicyView):
        for i, item in enumerate(policy.items):
            if item.describe() == "verifier_refuses":
                err = refusal("bad_deref")
                raise PolicyLoadError(f"{policy.section}[{i}] {item.describe()}", f"LibbpfError: {err}",
                                      field=f"spec.{policy.section}[{i}]")
        return self.inner.load_policy(policy)


def test_through_the_policy_manager_the_reason_keeps_file_line_field_hook_and_verdict() -> None:
    reg, sensors = default_registry()
    sensors["lsm"] = _VerifierRefusingSensor(sensors["lsm"])
    pm = PolicyManager(reg, sensors)
    doc = ("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: p\nspec:\n"
           "  lsmhooks:\n  - hook: file_open\n  - hook: verifier_refuses\n")
    with pytest.raises(PolicyError) as ei:
        pm.add(doc, "p.yaml")
    e = ei.value
    assert (e.file, e.line, e.path) == ("p.yaml", 8, "spec.lsmhooks[1]")
    text = str(e)
    assert text.startswith("p.yaml:8: spec.lsmhooks[1]: failed to load lsmhooks[1] verifier_refuses: LibbpfError: "
                           "cannot load BPF object 'refused'"), text
    assert "\n" not in text  # one line: the verifier's lines are joined
    assert "; verifier: " in text and "invalid mem access 'map_value_or_null'" in text
    assert re.search(r"; verifier: processed [\d,]+ instructions \(limit 1,000,000\)", text), text
    assert_no_libbpf_chatter(text)
    assert pm.list() == []
