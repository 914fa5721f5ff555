"""benchmarks/experiments/search_convergence.py --pool: the CPU time and front trials of
outputs on other values, added up over the seeds they all ran."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = (Path(__file__).resolve().parents[2] / "benchmarks" / "experiments"
          / "search_convergence.py")


@pytest.fixture(scope="module")
def conv():
    spec = importlib.util.spec_from_file_location("search_convergence", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def summary(cpu: dict[str, dict[str, float]], fronts: dict[str, dict[str, int]]) -> dict:
    return {f"neva/{p}": {"cpu_s_per_seed": cpu[p], "front_trials_per_seed": fronts[p]}
            for p in cpu}


def test_pool_adds_up_cpu_and_fronts_over_the_common_seeds(conv, tmp_path, capsys):
    a = summary({"none": {"0": 100.0, "1": 200.0}, "front": {"0": 60.0, "1": 150.0}},
                {"none": {"0": 4, "1": 5}, "front": {"0": 3, "1": 4}})
    b = summary({"none": {"0": 300.0, "1": 100.0, "2": 9.0},
                 "front": {"0": 100.0, "1": 30.0, "2": 9.0}},
                {"none": {"0": 6, "1": 2, "2": 1}, "front": {"0": 6, "1": 1, "2": 1}})
    paths = []
    for name, s in (("a", a), ("b", b)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps({"summary": s}))
    out = tmp_path / "pooled.json"
    result = conv.main(["--pool", *map(str, paths), "--json", str(out)])
    front = result["pooled"]["neva/front"]
    # seed 2 is in b only: left out
    assert front["cpu_vs_none_per_seed"] == {"0": pytest.approx(160 / 400),
                                            "1": pytest.approx(180 / 300)}
    assert front["cpu_vs_none"] == pytest.approx(340 / 700)
    assert front["front_trials_per_seed"] == {"0": 9, "1": 5}
    assert result["pooled"]["neva/none"]["cpu_vs_none"] == 1.0
    assert json.loads(out.read_text())["pooled"]["neva/front"]["cpu_s"] == pytest.approx(340)
    printed = capsys.readouterr().out
    assert "neva/front: 0.49x the unpruned CPU time (per seed: 0.40, 0.60)" in printed
    assert "front trials per seed 9/5 (unpruned 10/7)" in printed


def row(n: int, warm: bool, alignment: str, *, state: str = "COMPLETE", gate: str = "none",
        frac: str = "1.0", feasible: str = "True", error: str = "") -> dict:
    return {"trial": str(n), "state": state, "warm_start": str(warm), "alignment": alignment,
            "gate": gate, "edge_frac": frac, "feasible": feasible, "error": error}


def test_sampled_trials_are_counted_against_the_best_feasible_start(conv):
    rows = [row(0, True, "0.02"), row(1, True, "0.09", feasible="False"),  # over budget
            row(2, False, "0.03"),  # beats the best feasible start (0.02)
            row(3, False, "0.01", gate="value"), row(4, False, "0.015", frac="0.5"),
            row(5, False, "", state="PRUNED", error="pruned: over the budget search.max_kl"),
            row(6, False, "0.05", feasible="False"), row(7, False, "", state="RUNNING")]
    s = conv.sampled_trials(rows)
    assert (s["starts"], s["sampled"], s["gated"], s["low_dose"]) == (2, 5, 1, 1)
    assert (s["over_budget"], s["beat_starts"]) == (2, 1)
    assert (s["best_start"], s["best_sampled"]) == (0.02, 0.03)
    # no feasible start: nothing can beat it, and nothing is counted as beating it
    s = conv.sampled_trials([row(0, True, "0.09", feasible="False"), row(1, False, "0.01")])
    assert s["best_start"] is None and s["beat_starts"] == 0 and s["best_sampled"] == 0.01
