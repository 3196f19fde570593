# Two commands do all set-up on a fresh machine: `make train` and `make test`.
# Both create .venv on first use and (re)install when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install train test test-fast bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(PY) train.py $(ARGS)

# The suite runs in TEST_WORKERS pytest-xdist processes (one per core on the 2-core CI
# machine), a test file per worker at a time (module fixtures are built once);
# tests/conftest.py gives each worker one thread and builds the session fixtures once for
# all workers. TEST_WORKERS=0 runs the suite in this process.
TEST_WORKERS ?= 2
XDIST = -n $(TEST_WORKERS) --dist loadfile

test: $(STAMP)
	$(PY) -m pytest $(XDIST) $(ARGS)

# development tier: everything but the end-to-end runs marked slow
test-fast: $(STAMP)
	$(PY) -m pytest $(XDIST) -m "not slow" $(ARGS)

bench: $(STAMP)
	$(PY) -m benchmarks $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) outputs logs data/shapes data/shapes_instances data/cache
