"""benchmarks/experiments/gate_points.py: how far a gate factor interpolated from k points is
from the factor measured at the points left out, on a synthetic pareto.json."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "experiments" / "gate_points.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gate_points", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_interpolation_error_at_the_points_left_out(tmp_path, monkeypatch, capsys):
    # factors 2^0 .. 2^4 over five layers, one dead point: log-linear between layers 0.2
    # and 0.5, then a jump at 0.65 that only a point there sees
    factors = [1.0, 2.0, 4.0, 32.0, None]
    points = [{"params": {"layer_frac": x, "gate": "value"}, "factor": f}
              for x, f in zip((0.2, 0.35, 0.5, 0.65, 0.8), factors)]
    study = {"value": "power", "method": "diffmean",
             "calibration": {"gates": {"value": {**points[2], "points": points}}}}
    run = tmp_path / "run"
    run.mkdir()
    (run / "pareto.json").write_text(json.dumps({"studies": [study]}))
    out = tmp_path / "gp.json"
    monkeypatch.setattr(sys, "argv", ["gate_points.py", "--dirs", str(run), "--k", "1", "3",
                                      "--json", str(out)])
    load_script().main()
    row = json.loads(out.read_text())["studies"]["power/diffmean/value"]
    # k=1: the middle factor 4 everywhere; against 1, 2 and 32 (the dead point is skipped)
    assert row["k1"]["ratios"] == pytest.approx([4.0, 2.0, 0.125])
    assert row["k1"]["worst"] == pytest.approx(0.125)
    # k=3 (layers 0.2, 0.5, 0.8; 0.8 dead, so flat at 4 beyond 0.5): exact at 0.35, 8x
    # under at 0.65
    assert row["k3"]["ratios"] == pytest.approx([1.0, 0.125])
    assert "power/diffmean" in capsys.readouterr().out
