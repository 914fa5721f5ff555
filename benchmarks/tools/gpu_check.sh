#!/usr/bin/env bash
# GPU check of neva_sweep on one large GPU, offline, in at most 8 minutes.
#
#   benchmarks/tools/gpu_check.sh [--tiny] [JSON_PATH]
#
# Writes one JSON file of figures (default: $OUT/gpu_check.json when $OUT is set, else
# ./gpu_check.json) and prints where it is. Sections and fields: benchmarks/tools/gpu_check.py.
# --tiny runs the same code on CPU with a 2-layer model (what tests/integration/test_gpu_check.py runs).
# Exit status: 0 when every section succeeded, 1 when one failed (its error is in the
# JSON), 124 when the 480 s timeout cut the run (the sections done are in the JSON).
set -u
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out=""
flags=()
for arg in "$@"; do
    case "$arg" in
        --*) flags+=("$arg") ;;
        *) out="$arg" ;;
    esac
done
if [ -z "$out" ]; then
    if [ -n "${OUT:-}" ]; then out="$OUT/gpu_check.json"; else out="$PWD/gpu_check.json"; fi
fi
mkdir -p "$(dirname "$out")"

# No network: every model is built from a config or shipped in an installed package.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 WANDB_MODE=disabled
# The package from this checkout, also when it is not installed.
export PYTHONPATH="$here/../..${PYTHONPATH:+:$PYTHONPATH}"

# The Python side starts no section (and no trial-batching run) after 420 s; the
# timeout is the hard limit.
timeout --kill-after=15 480 "${PYTHON:-python}" "$here/gpu_check.py" \
    ${flags[@]+"${flags[@]}"} --out "$out" --budget-s 420
rc=$?
if [ -f "$out" ]; then
    echo "gpu_check: exit status $rc; figures in $out"
else
    echo "gpu_check: exit status $rc; no figures written ($out)"
fi
exit "$rc"
