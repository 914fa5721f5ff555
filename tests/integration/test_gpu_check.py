"""benchmarks/tools/gpu_check.sh --tiny: the GPU check's code paths on CPU, and its JSON contract.

The GPU check is meant to be run later on a large GPU by someone else; this runs the same
script (the shell wrapper, then every section) on CPU with a 2-layer model, so that a
broken section is found here and not on the GPU machine. The fields listed below are
what docs/performance.md tells readers to look at: each must be present and finite.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "tools" / "gpu_check.sh"
KS = (1, 2)  # the tiny mode's trials per batch
NUMBERS = {
    "forward": ("n_parameters", "build_s", "n_tokens", "plain_tokens_per_s",
                "stats_tokens_per_s", "stats_over_plain", "edited_tokens_per_s",
                "edited_over_plain", "unedited_side_s", "trial_s", "trial_plain_s",
                "trial_over_plain", "trial_tokens", "trial_forward_calls", "peak_memory_gib"),
    "deepspeed": ("edit_max_abs_change", "unedited_max_abs_diff", "edited_max_abs_diff",
                  "logit_scale", "tolerance"),
    "sharded_load": ("save_s", "in_use_ratio", "storage_ratio", "params_ratio"),
    "trial_batching": tuple(
        f"{model}.{key}" for model in ("llama8b", "embedded") for variant in ("default", "scaled")
        for key in (*(f"{variant}_k{k}.{f}" for k in KS for f in ("trials_per_hour", "wall_s")),
                    f"{variant}_max_metric_diff", f"{variant}_speedup_k{KS[-1]}")),
}


def lookup(section: dict, dotted: str):
    value = section
    for part in dotted.split("."):
        assert isinstance(value, dict) and part in value, f"missing {dotted}"
        value = value[part]
    return value


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out_dir = tmp_path_factory.mktemp("gpu_check")
    # two threads, or the test worker's share of the cores (tests/conftest.py)
    env = {**os.environ, "OUT": str(out_dir),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
           "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(SCRIPT), "--tiny"],
                          cwd=out_dir, env=env, capture_output=True, text=True, timeout=600)
    path = out_dir / "gpu_check.json"  # the default: $OUT/gpu_check.json
    assert f"figures in {path}" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    result = json.loads(path.read_text())
    errors = {k: v.get("error") for k, v in result["sections"].items() if not v.get("ok")}
    assert proc.returncode == 0 and not errors, errors or proc.stderr[-3000:]
    return result


def test_every_section_ran(report):
    sections = report["sections"]
    assert list(sections) == ["environment", "forward", "deepspeed", "trial_batching",
                              "sharded_load"]
    for name, sec in sections.items():
        assert sec["ok"] is True and sec["error"] is None, name
        assert math.isfinite(sec["wall_s"]), name
    env = sections["environment"]
    assert env["mode"] == "tiny" and env["device"] == "cpu" and env["dtype"] == "bfloat16"


@pytest.mark.parametrize("section", list(NUMBERS))
def test_fields_present_and_finite(report, section):
    sec = report["sections"][section]
    for dotted in NUMBERS[section]:
        value = lookup(sec, dotted)
        assert isinstance(value, (int, float)) and not isinstance(value, bool), dotted
        assert math.isfinite(value), dotted


def test_figures_are_consistent(report):
    fwd = report["sections"]["forward"]
    assert fwd["n_tokens"] > 0 and fwd["trial_tokens"] > 0 and fwd["trial_forward_calls"] > 0
    for key in ("plain_tokens_per_s", "stats_tokens_per_s", "edited_tokens_per_s",
                "trial_over_plain", "peak_memory_gib"):
        assert fwd[key] > 0, key
    assert fwd["stats_tokens_per_s"] / fwd["plain_tokens_per_s"] == pytest.approx(
        fwd["stats_over_plain"])
    assert fwd["model"]["num_hidden_layers"] == 2  # the tiny config, not the 8B one
    tb = report["sections"]["trial_batching"]
    assert tb["ks"] == list(KS)
    for model in ("llama8b", "embedded"):
        assert tb[model]["skipped"] == []
        for variant in ("default", "scaled"):
            assert lookup(tb, f"{model}.{variant}_k{KS[-1]}.trials_per_hour") > 0
            # Batching trials changes only the batch composition: bfloat16 noise at most.
            assert lookup(tb, f"{model}.{variant}_max_metric_diff") < 1e-3
        scaled = tb[model][f"scaled_k{KS[-1]}"]
        assert scaled["judge_batch_size"] == KS[-1] * tb[model]["default_k1"]["judge_batch_size"]


def test_sharded_load_splits_the_model(report):
    sec = report["sections"]["sharded_load"]
    ranks = [r for r in sec["records"] if r["tp"] == 2]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["tp_load"] == "sharded" for r in ranks)
    assert sec["storage_ratio"] < 1  # each rank holds less than the whole model


def test_deepspeed_edits(report):
    ds = report["sections"]["deepspeed"]
    assert ds["zero_bitwise"] is True  # magnitude 0 on the engine: the unedited engine
    assert ds["edit_changes_logits"] is True and ds["edit_max_abs_change"] > ds["tolerance"]
    assert ds["matches_plain"] is True
    assert ds["bitwise_equal_plain"] is True  # on CPU; float32 buffers kept by tp._autotp
    assert max(ds["unedited_max_abs_diff"], ds["edited_max_abs_diff"]) <= ds["tolerance"]
