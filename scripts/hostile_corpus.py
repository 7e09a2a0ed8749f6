#!/usr/bin/env python3
"""The hostile-input corpus: bad policies and bad agent configs kept under tests/data/hostile/.

Every input is bad by construction: a mutation of a valid policy (Tetragon's examples that Sensorium
accepts, and a few written here for the other sections) or of a valid agent config, or a YAML-level
attack (alias bomb, deep nesting, custom tags, bad bytes...). Each file starts with comment lines saying
what is wrong with it and which words its refusal must contain:

    # hostile input: <what is wrong>
    # expect: <words the error must contain>      (one line per expectation)
    # where: file                                 (the error need not name a line: the input has none)

tests/test_hostile_corpus.py reads every file through what `sensorium policy check` and `sensorium run
--config` run, and counts refusals, tracebacks, hangs and wrong accepts (docs/reliability.md).

    .venv/bin/python scripts/hostile_corpus.py           # rewrite the corpus
    .venv/bin/python scripts/hostile_corpus.py --check   # exit 1 if the stored corpus differs

Generating checks each input against the real parser and loader: an input it believes bad that is
accepted stops the generator (a wrong accept is a bug to fix, or a mutation to correct; never an input
to drop quietly).

The generator's parts are the package scripts/hostile/ (checks, schema walking, inputs, mutations, the policy
and config bases); this module is its command and the names the tests use.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from hostile import CORPUS, REPO, TETRAGON
from hostile.checks import check_config, check_policy, registry
from hostile.configs import CONFIG_BASES, config_corpus, config_nodes, mutate_config
from hostile.inputs import PER_KIND, Collector, Input, dump_docs, pattern, to_yaml
from hostile.mutations import mutate_fields, yaml_attacks
from hostile.policies import EXTRA_POLICY_BASES, mutate_policy, policy_bases, policy_corpus, policy_nodes
from hostile.schema import Node, bounds, delete, field_of, fmt, get, item_type, kind_of, model_in, put, walk

# What tests/ and tests/fuzz/ use (as `hostile_corpus.X`), whichever module of hostile/ holds it.
__all__ = ["CONFIG_BASES", "CORPUS", "EXTRA_POLICY_BASES", "PER_KIND", "REPO", "TETRAGON", "Collector", "Input",
           "Node", "bounds", "check_config", "check_policy", "config_corpus", "config_nodes", "delete", "dump_docs",
           "field_of", "fmt", "get", "header", "item_type", "kind_of", "main", "model_in", "mutate_config",
           "mutate_fields", "mutate_policy", "pattern", "policy_bases", "policy_corpus", "policy_nodes", "put",
           "registry", "to_yaml", "verify", "walk", "yaml_attacks"]


def header(data: bytes) -> dict[str, Any]:
    """An input's comment lines: its kind, the words its refusal must contain, whether it must name a line."""
    out: dict[str, Any] = {"expect": [], "line": True, "kind": None}
    for raw in data.split(b"\n"):
        if not raw.startswith(b"# "):
            break
        key, _, value = raw[2:].decode("utf-8", "replace").partition(": ")
        if key == "expect":
            out["expect"].append(value)
        elif key == "kind":
            out["kind"] = value
        elif key == "where" and value == "file":
            out["line"] = False
    return out


def verify(col: Collector, reg: Any, tmp: Path) -> list[str]:
    """Each input through the real checks: refused with a SourceError containing its words, else a
    problem to fix (returned)."""
    from sensorium.yamlsrc import SourceError

    problems = []
    for name, inp in sorted(col.inputs.items()):
        data = inp.file_bytes()
        try:
            if col.directory == "policies":
                check_policy(data, name, reg)
            else:
                f = tmp / name
                f.write_bytes(data)
                check_config(f, reg)
        except SourceError as exc:
            missing = [w for w in inp.expect if w not in str(exc)]
            if missing:
                problems.append(f"{col.directory}/{name}: refused without {missing}: {exc}")
            continue
        except Exception as exc:  # noqa: BLE001 - the point: report it, it is a bug
            problems.append(f"{col.directory}/{name}: {type(exc).__name__}: {exc}")
            continue
        problems.append(f"{col.directory}/{name}: ACCEPTED ({inp.what})")
    return problems


def main(argv: list[str] | None = None) -> int:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the stored corpus instead of writing it")
    args = ap.parse_args(argv)
    reg = registry()
    cols = [policy_corpus(reg), config_corpus(reg)]
    if not args.check:  # checking what is stored is tests/test_hostile_corpus.py's job; writing is ours
        with tempfile.TemporaryDirectory() as tmp:
            problems = [p for col in cols for p in verify(col, reg, Path(tmp))]
        for p in problems:
            print(p, file=sys.stderr)
        if problems:
            print(f"{len(problems)} inputs are not refused as expected: fix the code or the mutation", file=sys.stderr)
            return 1
    differ = 0
    for col in cols:
        d = CORPUS / col.directory
        want = {name: inp.file_bytes() for name, inp in col.inputs.items()}
        have = {p.name: p.read_bytes() for p in d.glob("*.yaml")} if d.is_dir() else {}
        if args.check:
            differ += sum(1 for n in set(want) | set(have) if want.get(n) != have.get(n))
            continue
        d.mkdir(parents=True, exist_ok=True)
        for n in set(have) - set(want):
            (d / n).unlink()
        for n, data in want.items():
            if have.get(n) != data:
                (d / n).write_bytes(data)
        print(f"{col.directory}: {len(want)} inputs in {d.relative_to(REPO)}")
    if args.check and differ:
        print(f"{differ} files differ from what the generator writes: run scripts/hostile_corpus.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
