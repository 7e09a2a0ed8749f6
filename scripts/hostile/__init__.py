"""The hostile-input corpus's generator, by concern (scripts/hostile_corpus.py is its command and its API).

checks: what `sensorium policy check` and `sensorium run --config` run on an input; schema: the type pydantic
expects at each key of a document; inputs: one input and the collection of a corpus; mutations: the faults of
any document (fields, YAML); policies and configs: the valid bases and their own faults.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "data" / "hostile"
TETRAGON = REPO / "tests" / "data" / "tetragon-policies"
