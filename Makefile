# Every target works on a fresh clone of a fresh machine: it creates .venv and installs what it needs.
# A CPU build of torch is pinned here (plain "torch" pulls a multi-GB CUDA build); override with
#   make test TORCH_SPEC='torch==2.5.1' or TORCH_SPEC=torch (CUDA) on a GPU machine.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ptychosteer-installed

.PHONY: install test test-fast demo bench reference clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# Pty-chi (the independent engine ours is checked against) in an environment of its own: its torchvision needs the
# torch build it was compiled with, PyPI's (CUDA; runs on a CPU too), not the CPU build pinned above. "===" takes
# exactly that release, not a local "+cpu" build. Then: $(REF_VENV)/bin/python -m pytest tests/trainer/test_reference.py
# and $(REF_VENV)/bin/python scripts/bench_reconstruct.py --reference
REF_VENV ?= .venv-reference
reference:
	test -x $(REF_VENV)/bin/python || $(PYTHON) -m venv $(REF_VENV)
	$(REF_VENV)/bin/python -m pip install -q "torch===2.13.0" -e ".[dev,reference]"

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

demo: $(STAMP)
	$(VENV)/bin/ptychosteer demo

bench: $(STAMP)
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) scripts/bench_ingest.py
	$(PY) scripts/bench_buffer.py
	$(PY) scripts/bench_classification.py
	$(PY) scripts/bench_continual.py

clean:
	rm -rf $(VENV) build dist *.egg-info runs
