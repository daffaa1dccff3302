# Every target sets up .venv from a fresh clone first (torch pinned to the CPU build by constraints.txt).
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
PYTEST := $(PY) -m pytest

.PHONY: setup test test-slow test-all demo lint format clean

$(STAMP):
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

setup: $(STAMP)

test: setup            ## fast tier: under 10 minutes on 2 CPU cores
	$(PYTEST) -q

test-slow: setup       ## slow and multi-process tests only
	$(PYTEST) -q -m "slow or distributed"

test-all: setup
	$(PYTEST) -q -m ""

demo: setup            ## the main job: LeapAlign on ShapesWorld, evaluated before and after (runs/demo)
	$(VENV)/bin/leapalign train --config shapes/leapalign run.output_dir=runs/demo run.overwrite=true

lint: setup
	$(VENV)/bin/ruff check leapalign tests
	$(VENV)/bin/ruff format --check leapalign tests

format: setup
	$(VENV)/bin/ruff format leapalign tests

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
