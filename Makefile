# Two commands: `make demo` and `make test`.  Each sets up what it needs on a fresh Debian machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_USER ?= aiogaol-test
PYTEST_ARGS ?=

.PHONY: all demo test test-here test-unprivileged bench typecheck docs deps clean

all: demo

# Debian packages: compiler and Python headers for the cffi build, venv, libseccomp for the filters,
# bubblewrap for the side-by-side comparisons.  Only installed when missing, and only as root.
deps:
	@bash .ci/debian-deps.sh

$(STAMP): pyproject.toml setup.py $(wildcard aiogaol/_native/*.c aiogaol/_native/*.h) aiogaol/_native/build_native.py
	@$(MAKE) --no-print-directory deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

# The whole suite as the invoking user, then (when that is root) again as an unprivileged user.
test: $(STAMP)
	$(PY) -m mypy
	$(PY) -m pytest $(PYTEST_ARGS)
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) --no-print-directory test-unprivileged; fi

test-here: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-unprivileged:
	@bash tests/run-unprivileged.sh $(TEST_USER)

typecheck: $(STAMP)
	$(PY) -m mypy

bench: $(STAMP)
	$(PY) benchmarks/spawn.py
	$(PY) benchmarks/service.py

docs: $(STAMP)
	$(PY) -m mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) build *.egg-info aiogaol/_native/*.so aiogaol/_native/aiogaol-jail
