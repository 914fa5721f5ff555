"""Paired held-out comparisons: Holm by hand, the two-level bootstrap, and
benchmarks/experiments/method_comparison.py --seeds on a tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from neva_sweep.evaluation.paired import compare_values, holm, p_two_sided, paired_bootstrap
from tests.helpers import small_scenarios

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = ROOT / "benchmarks" / "experiments"


def test_holm_by_hand() -> None:
    # sorted p: 0.01 (x3), 0.02 (x2), 0.04 (x1); monotone step-down
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])


def test_bootstrap_covers_seed_disagreement() -> None:
    rng = np.random.default_rng(0)
    rows = rng.normal(0, 0.01, 36)
    agree = np.stack([0.02 + rows] * 3)  # every seed found the same edit
    disagree = np.stack([0.06 + rows, -0.02 + rows, 0.02 + rows])  # same mean, seeds differ
    w_agree = np.ptp(np.quantile(paired_bootstrap(agree, 1000), [0.025, 0.975]))
    w_disagree = np.ptp(np.quantile(paired_bootstrap(disagree, 1000), [0.025, 0.975]))
    assert w_disagree > 3 * w_agree


def test_wins_need_the_holm_interval_to_exclude_zero() -> None:
    rng = np.random.default_rng(1)
    diffs = {"clear": 0.03 + rng.normal(0, 0.01, (3, 36)),
             "none": rng.normal(0, 0.01, (3, 36)),
             "rival": -0.03 + rng.normal(0, 0.01, (3, 36))}
    out = compare_values(diffs)
    assert [out[v]["win"] for v in diffs] == [1, 0, -1]
    for r in out.values():
        assert r["p_holm"] >= r["p"] and r["level"] >= 0.95
        assert (r["ci"][0] > 0 or r["ci"][1] < 0) == (r["win"] != 0)
    assert p_two_sided(paired_bootstrap(diffs["none"])) > 0.05


def test_each_seed_has_its_own_search_seed_and_probe_resample(config) -> None:
    sys.path.insert(0, str(EXPERIMENTS))
    try:
        from method_comparison import seed_overrides
    finally:
        sys.path.pop(0)
    for s in range(3):
        overrides = seed_overrides(s, Path(f"/tmp/cmp/seed{s}"), ["neva", "caa"], ["power"],
                                   True, ["search.n_trials=3"])
        cfg = config(*[o for o in overrides if not o.startswith("hydra.")])
        assert cfg.search.seed == s and cfg.stats.resample_seed == s
        assert list(cfg.sweep.methods) == ["neva", "caa"] and cfg.model.name == "tiny-llama"
        assert cfg.search.n_trials == 3  # extra overrides win over the tiny preset


@pytest.mark.slow
def test_method_comparison_seeds_on_a_tiny_model(tmp_path) -> None:
    """A tiny two-method sweep compared on the held-out test split (one seed: the seed
    axis is the overrides above; each seed is one more sweep like this one)."""
    report = tmp_path / "report.json"
    scenarios = small_scenarios(tmp_path / "scenarios.jsonl")  # 8 test scenarios of 36
    proc = subprocess.run(
        [sys.executable, str(EXPERIMENTS / "method_comparison.py"), "--seeds", "1",
         "--tiny", "--values", "power", "--run-dir", str(tmp_path / "cmp"), "--json",
         str(report), "--override", f"cache_dir={tmp_path / 'cache'}",
         f"data.scenarios={scenarios}"],
        capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads(report.read_text())
    assert rep["methods"] == ["neva", "caa"] and rep["n_seeds"] == 1
    cfg = (tmp_path / "cmp" / "seed0" / ".hydra" / "overrides.yaml").read_text()
    assert "search.seed=0" in cfg and "stats.resample_seed=0" in cfg
    paired = rep["paired"]["power"]
    assert paired["n_seeds"] == 1 and paired["n_rows"] == 8  # every test scenario
    assert paired["ci"][0] <= paired["mean"] <= paired["ci"][1]
    assert paired["win"] in (-1, 0, 1) and 0 <= paired["p"] <= paired["p_holm"] <= 1
    assert rep["values"]["power"]["neva"]["nglr_chance"] == pytest.approx(7 / 9)
    assert "neva - caa [Holm CI]" in proc.stdout
    # --dirs: the same comparison of a sweep already run, no sweep started
    again = tmp_path / "again.json"
    proc = subprocess.run(
        [sys.executable, str(EXPERIMENTS / "method_comparison.py"), "--dirs",
         str(tmp_path / "cmp" / "seed0"), "--json", str(again)],
        capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(again.read_text()) == rep


def test_method_comparison_dirs_needs_held_out_scores(tmp_path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "best_edits.json").write_text(json.dumps(
        {"edits": [{"value": "power", "method": "neva", "metrics": {"alignment": 0.01}}],
         "missing": []}))
    for d, why in ((tmp_path / "absent", "run the sweep first"),
                   (run, "search.heldout=true")):
        proc = subprocess.run(
            [sys.executable, str(EXPERIMENTS / "method_comparison.py"), "--dirs", str(d)],
            capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode == 2 and why in proc.stderr, proc.stderr[-2000:]


def test_method_comparison_joins_a_seeds_sweeps_given_with_commas(tmp_path) -> None:
    """--dirs A,B: NeVA's edits from one sweep, prompt's from another, paired per seed."""
    def edit(method, rows, z):
        test = {"alignment": float(np.mean(rows)), "alignment_rows": rows, "z": z,
                "nglr": 0.5, "nglr_chance": 7 / 9, "push": None if z is None else 1.0}
        return {"value": "power", "method": method, "metrics": {"alignment": 0.02},
                "test": test}

    for name, edits, missing in (
            ("neva", [edit("neva", [0.03, 0.01, 0.02, 0.04], 3.0)], []),
            ("prompt", [edit("prompt", [0.01, 0.0, 0.01, 0.02], None)],
             [{"value": "tradition", "method": "prompt"}])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "best_edits.json").write_text(
            json.dumps({"edits": edits, "missing": missing}))
    out = tmp_path / "rep.json"
    proc = subprocess.run(
        [sys.executable, str(EXPERIMENTS / "method_comparison.py"), "--dirs",
         f"{tmp_path / 'neva'},{tmp_path / 'prompt'}", "--methods", "neva", "prompt",
         "--json", str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads(out.read_text())
    assert rep["n_seeds"] == 1 and rep["both_reach"] == ["power"]
    assert rep["paired"]["power"]["mean"] == pytest.approx(0.015)  # 0.06 / 4 rows
    assert rep["values"]["power"]["prompt"]["z"] is None
    assert rep["values"]["tradition"]["prompt"]["n_seeds"] == 0  # listed, not reached
