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

test: $(STAMP)
	$(PY) -m pytest $(ARGS)

# development tier: everything but the end-to-end runs marked slow
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(ARGS)

bench: $(STAMP)
	$(PY) -m benchmarks $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) outputs logs data/shapes data/shapes_instances data/cache
