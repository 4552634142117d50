# Two entry points, both idempotent: `make demo` and `make test` (each creates .venv and installs first).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test test-fast clean-venv

install:
	@bash tools/install.sh

# a fresh, timestamped run folder each time: nothing from an earlier run is overwritten
demo: install
	$(VENV)/bin/torchrun --nproc-per-node 2 -m rad_megatron pipeline --config configs/demo_smollm2.yaml \
		--out runs/demo_smollm2-$$(date +%Y%m%d-%H%M%S)

test: install
	$(PY) -m pytest -q tests

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

clean-venv:
	rm -rf $(VENV)
