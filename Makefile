# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Each creates the pinned virtual environment in .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED ?= ../shared
MODEL ?=
# The suite runs on this many worker processes (pytest-xdist), in work units of whole test modules
# (conftest.py). (Not xdist's --dist loadgroup: under pytest 9 its group names are ignored.)
TEST_WORKERS ?= 2
PYTEST_PARALLEL := -n $(TEST_WORKERS)

$(VENV)/.installed: requirements.txt requirements-xla.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

.PHONY: venv test test-fast test-xla lint demo
venv: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest -q $(PYTEST_PARALLEL)

# The same without the tests marked slow (network graphs, training steps): under a minute, for quick edits.
test-fast: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest -q -m "not slow" $(PYTEST_PARALLEL)

# The XLA export / TF-free runner tests alone (also part of `make test`): about a minute, mostly export and compilation.
test-xla: $(VENV)/.installed
	$(PY) -m pytest -q -m xla

lint: $(VENV)/.installed
	$(PY) -m ruff check .

demo: $(VENV)/.installed
	$(PY) scripts/demo.py --shared $(SHARED) $(if $(MODEL),--model $(MODEL))
