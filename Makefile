# Two commands for a fresh machine (Python >= 3.10 with venv and pip):
#   make run    creates .venv, installs tregpd, fits the bundled cohort, runs the scenario suite and
#               writes trajectories, tables and figures to out/
#   make test   creates .venv, installs tregpd with its test extras, runs the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
OUT    ?= out
STAMP   = $(VENV)/.installed

.PHONY: run demo test test-nojit bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test,sensitivity,mcmc]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/tregpd all --out $(OUT)

demo: $(STAMP)
	$(BIN)/tregpd simulate --out $(OUT)/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-nojit: $(STAMP)
	NUMBA_DISABLE_JIT=1 $(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) $(OUT)
