# Sensorium: the two commands of the README are `make run` and `make test`.
# Every target that needs the toolchain or the venv depends on `setup` (idempotent, quick when done).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV := .venv
PYTEST := $(VENV)/bin/python -m pytest
# Extra pytest arguments, e.g. `make test-host PYTEST_ARGS='-k ringbuf -x'`
PYTEST_ARGS ?=
# Arguments of `sensorium run`, e.g. `make run ARGS='--config examples/agent.yaml'`
ARGS ?=

.PHONY: setup run lint test test-host test-vm vm-prepare k8s-setup image cluster-up cluster-down bench fuzz clean distclean

setup:
	@bash scripts/setup.sh

# The agent with its embedded defaults: the exec sensor, JSON lines on stdout. Setup logs go to
# stderr and the command is not echoed, so stdout carries nothing but events (`make run | jq`).
run: setup
	@exec $(VENV)/bin/sensorium run $(ARGS)

# Host suite, then the VM lane (two stock kernels with every hook). Both run even when the first
# fails, so one CI run reports everything; any failure (or a suite that ran nothing) fails the target.
test: setup
	@rc=0; \
	$(MAKE) --no-print-directory test-host || rc=$$?; \
	$(MAKE) --no-print-directory test-vm || rc=$$?; \
	if [[ $$rc != 0 ]]; then echo "make test: FAILED (see above)" >&2; fi; \
	exit $$rc

# Lint first, then the suite: the suite runs even when lint found something, so one CI run reports
# everything; either failing fails the target. pytest exits 5 when it collected nothing: that is a failure
# here, never a silent success.
# The Kubernetes test infrastructure (kube-apiserver built once from Debian's source, etcd, containerd,
# helm) is the tests' business, not `make run`'s: it is set up here, cached, seconds when done.
test-host: setup k8s-setup
	@rc=0; $(MAKE) --no-print-directory lint || rc=$$?; \
	prc=0; $(PYTEST) -ra $(PYTEST_ARGS) || prc=$$?; \
	if [[ $$prc == 5 ]]; then echo "test-host: pytest collected no tests" >&2; fi; \
	if [[ $$prc != 0 ]]; then rc=$$prc; fi; \
	exit $$rc

# ruff over the whole tree, then mypy (both configured in pyproject.toml; setup installs the pinned versions).
# mypy checks the packages under their import names: core/ is `sensorium`, sensors/ `sensorium_sensors`,
# exporters/ `sensorium_exporters` (setuptools' package-dir), a mapping mypy cannot read from the editable
# install's import hook. So build/mypy/ holds one symlink per package (sensorium -> core, ...), mypy is given
# those (a folder with an __init__.py is checked as the package of that name; build/mypy is on mypy_path), and
# the paths it reports are mapped back to the tree. scripts/ is checked too (on mypy_path for its hostile/).
MYPY_PACKAGES := sensorium:core sensorium_sensors:sensors sensorium_exporters:exporters
lint: setup
	@rc=0; echo "lint: ruff check" >&2; $(VENV)/bin/ruff check . || rc=$$?; \
	echo "lint: mypy" >&2; mkdir -p build/mypy; \
	for p in $(MYPY_PACKAGES); do ln -sfn "../../$${p#*:}" "build/mypy/$${p%%:*}"; done; \
	$(VENV)/bin/mypy $(foreach p,$(MYPY_PACKAGES),build/mypy/$(firstword $(subst :, ,$(p)))) scripts/hostile scripts/*.py \
	    | sed -E $(foreach p,$(MYPY_PACKAGES),-e 's#^build/mypy/$(firstword $(subst :, ,$(p)))/#$(lastword $(subst :, ,$(p)))/#') \
	    || rc=$$?; \
	if [[ $$rc != 0 ]]; then echo "lint: FAILED (see above)" >&2; fi; \
	exit $$rc

test-vm: setup
	bash scripts/vm/lane.sh $(PYTEST_ARGS)

vm-prepare:
	bash scripts/vm/prepare.sh

k8s-setup: setup
	bash scripts/k8s/setup.sh

# The agent's OCI image from Debian's archive and PyPI, without a container engine (the Dockerfile builds the
# same with `docker build .`); cached per layer. With a cluster up (make cluster-up), also imported into it.
image: setup
	@$(VENV)/bin/python scripts/k8s/agent_image.py build
	@if bash scripts/k8s/cluster.sh status >/dev/null 2>&1; then \
	    $(VENV)/bin/python scripts/k8s/agent_image.py import /run/sensorium-cluster/containerd.sock; fi

# A real single-node cluster on this machine (scripts/k8s/cluster.sh); `up` prints the KUBECONFIG path.
cluster-up: k8s-setup
	bash scripts/k8s/cluster.sh up

cluster-down:
	bash scripts/k8s/cluster.sh down

# The long fuzzing run (the suite runs a bounded one): every coverage-guided target for FUZZ_SECONDS each
# (tests/fuzz/run.py; findings land in build/fuzz/artifacts/), then the property-based tests with random
# seeds and FUZZ_EXAMPLES examples a property. `make fuzz FUZZ_TARGETS=api,records FUZZ_SECONDS=3600`.
FUZZ_SECONDS ?= 600
FUZZ_EXAMPLES ?= 20000
FUZZ_TARGETS ?= policy,config,api,records,fastrest
fuzz: setup
	@rc=0; \
	$(VENV)/bin/python tests/fuzz/run.py --seconds $(FUZZ_SECONDS) --targets $(FUZZ_TARGETS) --name-suffix=-long || rc=$$?; \
	SENSORIUM_FUZZ=long SENSORIUM_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PYTEST) -p no:cacheprovider -m fuzz \
	    --timeout=0 tests/test_fuzz_inputs.py tests/test_fuzz_records.py tests/test_fuzz_api.py || rc=$$?; \
	exit $$rc

# Every benchmarks/*.py with its defaults, or one: `make bench BENCH=exec_storm BENCH_ARGS='--execs 2000'`.
BENCH ?=
BENCH_ARGS ?=
bench: setup
	@shopt -s nullglob; ran=0; \
	for b in $(if $(BENCH),benchmarks/$(BENCH).py,benchmarks/*.py); do \
	    echo "== $$b"; $(VENV)/bin/python "$$b" $(BENCH_ARGS); ran=1; done; \
	if [[ $$ran == 0 ]]; then echo "bench: no benchmark found" >&2; exit 1; fi

# Build products and caches of the repo; the venv and the VM lane's kernels stay (see distclean).
clean:
	rm -rf build dist .pytest_cache .mypy_cache .ruff_cache .cache .vm/runs .vm/cache
	find . -path ./.venv -prune -o -path ./.vm -prune -o -name __pycache__ -type d -print0 | xargs -0 rm -rf

distclean: clean
	rm -rf .venv .vm
