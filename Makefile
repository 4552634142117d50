# Two entry points, both idempotent: `make demo` and `make test` (each creates .venv and installs first).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test test-fast clean-venv

install:
	@bash tools/install.sh

demo: install
	$(PY) -m rad_megatron generate

test: install
	$(PY) -m pytest -q tests

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

clean-venv:
	rm -rf $(VENV)
