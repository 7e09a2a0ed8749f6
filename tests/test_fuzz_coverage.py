"""Coverage-guided fuzzing in the suite: atheris over the policy parser, the config loader, the API request
decoder and the ring-record decoders, and libFuzzer with ASan and UBSan over the C that reads ring records
(the native drain and the native hook formatter), each bounded (``SENSORIUM_FUZZ_SECONDS``, default 15 s a
target; `make fuzz` is the long run). Each run first replays the stored corpus (tests/data/fuzz-corpus/<target>/:
seeds, and ``regress-*`` inputs that once broke something), then mutates. A finding fails the test with
libFuzzer's report; its input is in build/fuzz/artifacts/<target>/. Figures: build/reliability/coverage-*.json.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "fuzz"))
import run as fuzz_run  # noqa: E402
import seeds as fuzz_seeds  # noqa: E402

SECONDS = float(os.environ.get("SENSORIUM_FUZZ_SECONDS") or (600 if os.environ.get("SENSORIUM_FUZZ") == "long" else 15))

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(SECONDS + 600)]


def test_the_stored_seeds_are_what_the_seed_script_writes() -> None:
    assert fuzz_seeds.main(["--check"]) == 0, "run tests/fuzz/seeds.py and commit tests/data/fuzz-corpus"


@pytest.mark.parametrize("target", fuzz_run.TARGETS)
def test_coverage_guided_fuzzing_finds_no_crash_hang_or_wrong_accept(target: str) -> None:
    if target in fuzz_run.PY_TARGETS and importlib.util.find_spec("atheris") is None:
        # the test extra installs it (scripts/setup.sh) wherever it has wheels: x86_64
        assert platform.machine() != "x86_64", "atheris is missing: run make setup"
        pytest.skip(f"atheris has no wheel for {platform.machine()}")
    body = fuzz_run.run(target, SECONDS,
                        f"tests/test_fuzz_coverage.py::test_coverage_guided_fuzzing_finds_no_crash_hang_or_wrong_accept[{target}]")
    f = body["figures"]
    assert body["exit_code"] == 0, f"{target}: {body['examples']['finding']}"
    assert (f["tracebacks"], f["hangs"], f["wrong_accepts"]) == (0, 0, 0), f
    # the run did fuzz: the stored inputs and then new ones, with coverage feedback
    assert f["tried"] > f["stored_inputs_replayed"] > 0, f
    assert f["coverage_edges"] and f["coverage_edges"] >= f["coverage_edges_start"] > 0, f
