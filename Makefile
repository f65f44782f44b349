# The two set-up commands: `make demo` and `make test` (each creates .venv when missing).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: demo test bench install

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

install: $(PY)
	$(PY) -m pip install --quiet -e '.[test]'

demo: install
	$(VENV)/bin/onnxlens demo

test: $(PY)  # with the ray extra: tests/test_scale.py runs jobs on a local Ray cluster
	$(PY) -m pip install --quiet -e '.[test,ray]'
	$(PY) -m pytest -q

bench: $(PY)
	$(PY) -m pip install --quiet -e '.[bench,ray]'
	$(PY) -m pytest benchmarks -q --benchmark-columns=mean,ops --benchmark-sort=name
