"""benchmarks/dose_decomposition.py --tiny: every variant at one bisected KL, scored on the
test split beside dose-matched nulls (a subprocess, as users run it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_dose_decomposition_on_a_tiny_model(tmp_path):
    out = tmp_path / "dd.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "dose_decomposition.py"), "--tiny",
         "--values", "power", "--variants", "neva_add", "dense_all", "diffmean_1",
         "caa_pairs", "--json", str(out)],
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
