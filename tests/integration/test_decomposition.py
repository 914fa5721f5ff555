"""benchmarks/experiments/dose_decomposition.py --tiny: every variant at one bisected KL,
scored on the test split beside dose-matched nulls (a subprocess, as users run it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "experiments" / "dose_decomposition.py"


def test_dose_decomposition_on_a_tiny_model(tmp_path):
    out = tmp_path / "dd.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny",
         "--values", "power", "--variants", "neva_add", "dense_all", "diffmean_1",
         "caa_pairs", "--json", str(out), "--cache-dir", ""],
        capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads(out.read_text())
    rows = {r["variant"]: r for r in rep["rows"]}
    assert set(rows) == {"neva_add", "dense_all", "diffmean_1", "caa_pairs"}
    for name, r in rows.items():
        assert "error" not in r, (name, r.get("error"))
        assert r["budget"] == 2e-5 and r["bracketed"], name
        # the bisected dose stays within the budget on the search texts
        assert 0 < r["search_kl"] <= 2e-5 and r["dose"] > 0, name
        lo, hi = r["ci"]["alignment"]
        assert lo <= r["alignment"] <= hi
    # a neuron edit is compared with nulls of its push; dense edits leave no other neurons
    assert rows["neva_add"]["null"]["n"] == 2 and rows["neva_add"]["z"] is not None
    assert rows["dense_all"]["null"]["n"] == 0
    assert rows["dense_all"]["n_neurons"] > 0.99 * 192  # tiny-llama: 192 MLP neurons
    s = rep["summary"]["2e-05"]
    assert s["values"] == 1 and s["detail"]["power"]["rival"] in ("diffmean_1", "caa_pairs")

    # --merge: another run's rows join these (a later file wins on the same key), and the
    # verdict per value is recomputed from the joined rows, with no model loaded
    other = dict(rep, rows=[dict(r, value="tradition") for r in rep["rows"]])
    (tmp_path / "other.json").write_text(json.dumps(other))
    merged_path = tmp_path / "merged.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--merge",
         str(out), str(tmp_path / "other.json"), "--json", str(merged_path)],
        capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    merged = json.loads(merged_path.read_text())
    assert len(merged["rows"]) == 2 * len(rep["rows"])
    assert merged["summary"]["2e-05"]["values"] == 2
    verdicts = {v["value"]: v for v in merged["verdicts"]["2e-05"]}
    assert set(verdicts) == {"power", "tradition"}
    assert verdicts["power"]["verdict"] in ("NeVA ahead", "rival ahead", "overlap")
    assert verdicts["power"]["neva"] in ("neva_add", "dense_all")
    assert "power" in proc.stdout and "tradition" in proc.stdout


def test_lock_step_bisection_equals_one_by_one(tiny_host, tiny_stats):
    """The benchmark bisects every variant in lock-step (batched KL passes): the doses are
    the ones bisect_dose finds for each variant alone."""
    import importlib.util

    import neva_sweep as nv
    from neva_sweep.data import load_records
    from neva_sweep.evaluation.capability import base_distribution, mean_kl, neutral_texts
    from neva_sweep.sweep.calibrate import bisect_dose

    spec = importlib.util.spec_from_file_location("dd", SCRIPT)
    dd = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dd)
    texts = neutral_texts(load_records("neutral"), 3, "search")
    base = base_distribution(tiny_host, texts, 64, 4)
    specs = {k: v for k, v in dd.variants(2).items() if k in ("neva_add", "diffmean_1")}
    together = dd.calibrate_all(tiny_host, tiny_stats, texts, base, "power", specs, 2e-5, 3)
    for name, (method, params, start) in specs.items():
        full = {**dd.METHODS[method].defaults, **params}

        def kl_at(dose, method=method, full=full):
            edit = nv.make_edit(tiny_stats, "power", method, **{**full, "strength": dose})
            return float(mean_kl(tiny_host, texts, base, [edit], "all", 8)[0])

        alone = bisect_dose(kl_at, 2e-5, start, 3)
        got = together[name][1].steps  # [[dose, kl], ...] in the order evaluated
        assert [d for d, _ in got] == [d for d, _ in alone.steps]
        # the same KLs, from batched passes instead of one edit at a time
        assert [k for _, k in got] == pytest.approx([k for _, k in alone.steps], rel=1e-4)
        assert together[name][1].dose == alone.dose
