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

# setuptools >= 77 in the venv too: the wheel test (tests/test_wheel.py) builds without build isolation (offline)
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet "setuptools>=77"
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

# make bench [BENCH_ARGS=--quick]: peers side by side (benchmarks/README.md). numbalsoda builds from source and
# needs gfortran: installed here with apt-get when missing and possible; without it numbalsoda is skipped.
bench: $(STAMP)
	@command -v gfortran >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& apt-get update -qq && apt-get install -y -qq gfortran >/dev/null; } \
		|| echo "bench: gfortran unavailable; numbalsoda will be skipped"
	$(BIN)/python -m pip install --quiet -e ".[bench]" || $(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(OUT)
