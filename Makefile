# Every target sets up .venv from a fresh clone first (torch pinned to the CPU build by constraints.txt).
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
PYTEST := $(PY) -m pytest

.PHONY: setup test test-slow test-research test-all demo lint format clean
.PHONY: bench-layout-methods bench-layout-ablations bench-methods bench-ablations bench-cost bench-cost-gpu bench-fidelity bench-snr bench-report

$(STAMP):
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

setup: $(STAMP)

test: setup            ## fast tier (incl. the import-layer contracts): under 5 minutes on 2 CPU cores
	$(PYTEST) -q

test-slow: setup       ## slow and multi-process (2-process DDP) tests only
	$(PYTEST) -q -m "slow or distributed"

test-research: setup   ## the reward-research tools outside the package (research/)
	$(PYTEST) -q -m "" research/tests

test-all: setup test-research
	$(PYTEST) -q -m ""

demo: setup            ## the main job: LeapAlign on ShapesWorld, evaluated before and after (runs/demo)
	$(VENV)/bin/leapalign train --config shapes/leapalign run.output_dir=runs/demo run.overwrite=true

# Benchmarks (issue 4; docs/benchmarks.md). One torch thread per process by default; the sweeps are resumable:
# stop them at any time and run the same target again. Preload jemalloc for honest CPU memory (apt libjemalloc2).
BENCH := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m benchmarks

LAYOUT := --protocol benchmarks/protocol_layout.yaml --results-dir benchmarks/results/layout --runs-dir benchmarks/runs/layout

bench-layout-methods: setup   ## the layout study: every method x 5 seeds on ShapesLayout -> benchmarks/results/layout/methods.json
	$(BENCH).sweep --suite methods $(LAYOUT)

bench-layout-ablations: setup ## its Figure 4 ablations of LeapAlign x 3 seeds -> benchmarks/results/layout/ablations.json
	$(BENCH).sweep --suite ablations $(LAYOUT)

bench-methods: setup   ## the learned-preference study (ShapesScore): every method x 3 seeds -> benchmarks/results/methods.json
	$(BENCH).sweep --suite methods

bench-ablations: setup ## the paper's Figure 4 ablations of LeapAlign -> benchmarks/results/ablations.json
	$(BENCH).sweep --suite ablations

bench-cost: setup      ## seconds per iteration and peak memory vs T on the CPU -> benchmarks/results/cost.json
	$(BENCH).cost

bench-cost-gpu: setup  ## the same at full size (FLUX.2, Qwen-Image, Z-Image, FLUX.1, SD3.5), one H100/H200, <= 8 min -> results/cost_gpu.json
	$(PY) -m benchmarks.cost_gpu

bench-fidelity: setup  ## LeapAlign / ReFL / DRTune gradients vs full backprop -> results/grad_fidelity.json
	$(BENCH).grad_fidelity

bench-snr: setup       ## signal and noise of each method's update at the base (layout study) -> results/layout/grad_snr.json
	$(BENCH).grad_snr

bench-report: setup    ## docs/benchmarks.md and its figures from the result files
	$(BENCH).report

lint: setup
	$(VENV)/bin/ruff check leapalign tests benchmarks research
	$(VENV)/bin/ruff format --check leapalign tests benchmarks research
	$(VENV)/bin/lint-imports --no-cache

format: setup
	$(VENV)/bin/ruff format leapalign tests benchmarks research

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
