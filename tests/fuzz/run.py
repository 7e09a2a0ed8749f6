#!/usr/bin/env python3
"""Run the coverage-guided fuzzers: atheris over tests/fuzz/targets.py, libFuzzer (clang, ASan, UBSan) over
tests/fuzz/fastrest_fuzz.c. Each starts from its stored corpus (tests/data/fuzz-corpus/<target>/: seeds and
``regress-*`` inputs that once broke something; for policies also Tetragon's examples, and for policies and
configs the hostile corpus, tests/data/hostile/; all replayed first) plus what earlier runs found
(build/fuzz/corpus/<target>/, not kept in git), and writes its figures to build/reliability/.

    .venv/bin/python tests/fuzz/run.py --seconds 20            # what `make test` runs (tests/test_fuzz_coverage.py)
    make fuzz FUZZ_SECONDS=1800                                # the long run, every target

A crash, a promise broken (an AssertionError in a target) or an input slower than the timeout fails the run;
libFuzzer leaves the input in build/fuzz/artifacts/<target>/: fix the code, then copy the input to
tests/data/fuzz-corpus/<target>/regress-<what> so it is replayed on every run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CORPUS = REPO / "tests" / "data" / "fuzz-corpus"
WORK = REPO / "build" / "fuzz"
FIGURES = Path(os.environ.get("SENSORIUM_RELIABILITY_DIR", REPO / "build" / "reliability"))
PY_TARGETS = ("policy", "config", "api", "records")
C_TARGETS = ("fastrest",)
TARGETS = PY_TARGETS + C_TARGETS
TIMEOUT_S = 10  # an input slower than this is a hang (libFuzzer -timeout); Python targets run instrumented
# Stored inputs a target also starts from, read-only: the hostile corpus as it stands (regenerating it
# needs no change here).
EXTRA_CORPUS = {"policy": [REPO / "tests" / "data" / "tetragon-policies",
                           REPO / "tests" / "data" / "hostile" / "policies"],
                "config": [REPO / "tests" / "data" / "hostile" / "configs"]}

WHAT = {
    "policy": "policy files through `sensorium policy check` (loader, model, kernel-independent rules)",
    "config": "agent config files through what `sensorium run --config` validates before it starts",
    "api": "request lines through the API server's decoder and dispatch (`ApiServer.answer`)",
    "records": "ring-record batches through the hook (native formatter and Python paths compared), exec, "
               "network, BPF LSM and socket-guard decoders",
    "fastrest": "ring-record batches through the native ring drain and the native hook formatter (C, ASan + UBSan)",
}


class BuildError(Exception):
    pass


def build_c(target: str) -> tuple[Path, dict[str, str]]:
    """The libFuzzer binary of a C target, and the environment it runs with."""
    cc = os.environ.get("SENSORIUM_FUZZ_CC", "clang")
    if shutil.which(cc) is None:
        raise BuildError(f"{cc} not found (scripts/setup.sh installs clang)")
    out = WORK / "bin" / f"{target}_fuzz"
    out.parent.mkdir(parents=True, exist_ok=True)
    src = HERE / f"{target}_fuzz.c"
    includes = [REPO / "core" / "hooks", REPO / "core" / "bpf"]
    cmd = [cc, "-g", "-O1", "-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=undefined",
           *[f"-I{i}" for i in includes], "-o", str(out), str(src)]
    b = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if b.returncode != 0:
        raise BuildError(f"{' '.join(cmd)}: {b.stderr.strip()[-1500:]} (the fuzzer and sanitizer runtimes are in "
                         "Debian's libclang-rt-14-dev, which scripts/setup.sh installs)")
    tables = WORK / "tables" / target
    sys.path.insert(0, str(HERE))
    import targets

    targets.fastrest_tables(tables)
    return out, {"SENSORIUM_FASTREST_TABLES": str(tables), "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0",
                 "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}


def run(target: str, seconds: float, test: str, name: str | None = None) -> dict[str, Any]:
    """One bounded run; returns (and writes) its figures. Raises nothing for a finding: it is in the figures."""
    work = WORK / "corpus" / target
    arts = WORK / "artifacts" / target
    work.mkdir(parents=True, exist_ok=True)
    arts.mkdir(parents=True, exist_ok=True)
    seeds = CORPUS / target
    stored = [seeds] + EXTRA_CORPUS.get(target, [])
    flags = [f"-max_total_time={int(seconds)}", f"-timeout={TIMEOUT_S}", "-rss_limit_mb=2048",
             "-print_final_stats=1", f"-artifact_prefix={arts}/", "-error_exitcode=77", "-timeout_exitcode=78",
             "-max_len=65536"]
    env = dict(os.environ, PYTHONHASHSEED="0")
    if target in C_TARGETS:
        exe, extra = build_c(target)
        cmd = [str(exe)] + flags + [str(work)] + [str(d) for d in stored]
        env.update(extra)
    else:
        cmd = [sys.executable, str(HERE / "atheris_main.py"), target] + flags + [str(work)] + [str(d) for d in stored]
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=seconds + 600)
    took = time.monotonic() - t0
    log = p.stderr
    (WORK / f"{target}.log").write_text(log)
    execs = _stat(log, "number_of_executed_units")
    done = re.findall(r"#(\d+)\s+DONE\s+cov: (\d+) ft: (\d+) corp: (\d+)/", log)
    inited = re.findall(r"#\d+\s+INITED\s+cov: (\d+) ft: (\d+) corp: (\d+)/", log)
    crash = p.returncode == 77 or "ERROR: " in log or "Uncaught Python exception" in log
    hang = p.returncode == 78 or "ERROR: libFuzzer: timeout" in log
    finding = _finding(log) if (crash or hang or p.returncode != 0) else ""
    wrong_accept = "accepted a bad request" in finding
    figs: dict[str, Any] = {
        "tried": execs, "kinds": None, "refused": None, "clear_errors": None, "clear_errors_pct": None,
        "tracebacks": int((crash or p.returncode not in (0, 78)) and not hang and not wrong_accept),
        "hangs": int(hang), "wrong_accepts": int(wrong_accept), "accepted": None, "max_seconds_per_input": None,
        "seconds": round(took, 1),
        "stored_inputs_replayed": sum(1 for d in stored if d.is_dir() for f in d.rglob("*") if f.is_file()),
        "coverage_edges_start": int(inited[0][0]) if inited else None,
        "coverage_edges": int(done[-1][1]) if done else None,
        "corpus_after": int(done[-1][3]) if done else None,
    }
    body = {"name": name or f"coverage-{target}", "test": test, "what": WHAT[target], "kernel": os.uname().release,
            "figures": figs, "examples": {"finding": finding[-2000:], "artifacts": sorted(os.listdir(arts))[:10]},
            "exit_code": p.returncode}
    FIGURES.mkdir(parents=True, exist_ok=True)
    (FIGURES / f"{body['name']}.json").write_text(json.dumps(body, indent=2) + "\n")
    return body


def _stat(log: str, key: str) -> int:
    m = re.findall(rf"stat::{key}:\s*(\d+)", log)
    return int(m[-1]) if m else 0


def _finding(log: str) -> str:
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if "Uncaught Python exception" in line or (line.startswith("==") and "ERROR" in line) \
                or "ERROR: libFuzzer" in line or "runtime error:" in line:
            return "\n".join(lines[i:i + 40])
    return "\n".join(lines[-40:])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("FUZZ_SECONDS", "20")),
                    help="per target (default 20, or $FUZZ_SECONDS)")
    ap.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, of {', '.join(TARGETS)}")
    ap.add_argument("--name-suffix", default="", help="figure files coverage-<target><suffix>.json")
    args = ap.parse_args(argv)
    bad = 0
    for target in [t for t in args.targets.split(",") if t]:
        if target not in TARGETS:
            ap.error(f"unknown target {target!r}")
        try:
            body = run(target, args.seconds, f"make fuzz (tests/fuzz/run.py --seconds {args.seconds:g})",
                       f"coverage-{target}{args.name_suffix}")
        except BuildError as exc:
            print(f"{target}: cannot build: {exc}", file=sys.stderr)
            bad += 1
            continue
        f = body["figures"]
        ok = body["exit_code"] == 0
        bad += not ok
        print(f"{target}: {'ok' if ok else 'FOUND SOMETHING'}: {f['tried']} inputs in {f['seconds']} s, "
              f"coverage {f['coverage_edges_start']} -> {f['coverage_edges']} edges, corpus {f['corpus_after']}"
              + ("" if ok else f"\n{body['examples']['finding']}\nartifacts: {WORK / 'artifacts' / target}"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
