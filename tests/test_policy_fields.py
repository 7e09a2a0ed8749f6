"""Every field of Tetragon's TracingPolicy format has a recorded outcome in `policy check`, and the docs show it.

The catalogue (scripts/policy_fields.py) tries each field in a small policy; the outcome (supported, ignored
with a warning, refused with its reason) is recorded in tests/data/tetragon-policy-fields.yaml and rendered in
docs/policy-fields.md. A change either way fails here until it is recorded (`scripts/policy_fields.py --record`).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import policy_fields as F  # noqa: E402


def test_every_field_has_the_recorded_outcome() -> None:
    observed = F.observe()
    recorded = F.load_record()
    assert [(r["group"], r["field"]) for r in observed] == [(r["group"], r["field"]) for r in recorded], \
        "the catalogue changed: record it (scripts/policy_fields.py --record)"
    changed = [f"{o['group']} {o['field']}: recorded {r['status']} ({r['reason']}), now {o['status']} ({o['reason']})"
               for o, r in zip(observed, recorded, strict=True) if o != r]
    assert not changed, "outcomes changed (record them with scripts/policy_fields.py --record):\n" + "\n".join(changed)


def test_the_doc_is_the_record() -> None:
    assert F.DOC.read_text() == F.render(F.load_record()), \
        "docs/policy-fields.md is stale: run scripts/policy_fields.py"


def test_the_catalogue_names_what_the_docs_promise() -> None:
    fields = {(r["group"], r["field"]): r["status"] for r in F.load_record()}
    # Fields the rest of the docs call supported, and the one Tetragon accepts and ignores.
    for key in [("spec", "lists (type: syscalls)"), ("spec", "podSelector"), ("matchActions[].action", "Override"),
                ("matchArgs[].operator", "InMap"), ("selectors[]", "matchCapabilities"), ("args[].type", "sockaddr")]:
        assert fields[key] == "supported", key
    assert fields[("matchActions[] parameters", "argError (with Sigkill)")] == "ignored"
