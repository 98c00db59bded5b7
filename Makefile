# Usage: make serve | make test | make test-fast | make clean
# Both serve and test create/refresh .venv and install everything they need first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# The CPU wheel keeps installs small on machines without a GPU; on a CUDA machine use
# `make serve TORCH=torch` to let pip pick the CUDA build.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: install serve test test-fast clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

DEMO := studio-data/models/demo/config.json

$(DEMO): | $(STAMP)
	$(VENV)/bin/ftstudio demo-model studio-data/models/demo

serve: $(STAMP) $(DEMO)
	$(VENV)/bin/ftstudio serve

# the fast tier (plain pytest), then the slow and e2e tiers (real training runs, browsers)
test: $(STAMP)
	$(PY) -m pytest -q
	$(PY) -m pytest -q -m "slow or e2e"

test-fast: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
