# The front door. Each target creates .venv if missing and installs what it needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# Stamps record that an install matches the current pyproject.toml.
RUN_STAMP  := $(VENV)/.stamp-run
TEST_STAMP := $(VENV)/.stamp-test
BENCH_STAMP := $(VENV)/.stamp-bench
GPU_STAMP  := $(VENV)/.stamp-gpu
PYTEST_ARGS ?=
DEMO_DIR ?= demo_out
# Numba's OpenMP threads spin while waiting; on a shared 2-core machine that stalls whole runs.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: demo test test-gpu bench bench-gpu clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(RUN_STAMP): pyproject.toml | $(PY)
	$(PIP) install -q -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(PY)
	$(PIP) install -q -e ".[test,peers,dist]"
	touch $@ $(RUN_STAMP)

$(BENCH_STAMP): pyproject.toml | $(PY)
	$(PIP) install -q -e ".[test,peers,dist]"
	touch $@ $(RUN_STAMP)

# CUDA 13 by default; for a CUDA 12 driver: make test-gpu GPU_PKGS="cupy-cuda12x numba-cuda[cu12]"
GPU_PKGS ?=
comma := ,
$(GPU_STAMP): pyproject.toml | $(PY)
	$(PIP) install -q -e ".[test$(if $(GPU_PKGS),,$(comma)gpu)]" $(GPU_PKGS)
	touch $@ $(RUN_STAMP)

demo: $(RUN_STAMP)
	$(VENV)/bin/tomostrain demo -o $(DEMO_DIR)

# CPU suite + every kernel compiled to PTX, then every kernel in Numba's CUDA simulator
# against its CPU twin (a separate process: the simulator must be set before numba imports).
test: $(TEST_STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not sim" $(PYTEST_ARGS) tests
	NUMBA_ENABLE_CUDASIM=1 $(PY) -m pytest -q -m sim $(PYTEST_ARGS) tests

# On a GPU machine: the tests that need a real device.
test-gpu: $(GPU_STAMP)
	$(PY) -m pytest -q -m gpu $(PYTEST_ARGS) tests

bench: $(BENCH_STAMP)
	$(PY) -m benchmarks.run --out benchmarks/results

# On a GPU machine: the GPU tables (JSON in benchmarks/results/gpu/, the device named inside).
bench-gpu: $(GPU_STAMP)
	$(PY) -m benchmarks.run --backend gpu --out benchmarks/results

clean:
	rm -rf $(VENV) $(DEMO_DIR) build src/*.egg-info
