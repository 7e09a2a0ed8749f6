"""libFuzzer entry for one target of tests/fuzz/targets.py:

    .venv/bin/python tests/fuzz/atheris_main.py TARGET [libFuzzer flags] [corpus dirs]

(tests/fuzz/run.py runs it with the stored corpus, bounded; `make fuzz` for the long run.)
"""

from __future__ import annotations

import logging
import os
import sys

import atheris

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

if __name__ == "__main__":
    target = sys.argv.pop(1)
    logging.disable(logging.CRITICAL)  # a refused input is logged by some readers; only raising matters here
    with atheris.instrument_imports(include=["targets"]):
        import targets
    with atheris.instrument_imports(include=list(targets.INSTRUMENT)):
        one_input = targets.TARGETS[target]()
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
