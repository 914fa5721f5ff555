"""task=compare: one report over several fabricated sweeps (no model, no Ray)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from neva_sweep.cli import run
from neva_sweep.config import ConfigError
from neva_sweep.report.compare import compare_runs, judge_differences, run_names
from neva_sweep.report.load import load_run
from tests.helpers import assert_self_contained, fabricate_run, referenced_files

TINY = {"models": ("tiny-a",), "values": ("power",), "n_trials": 3, "neuron_files": False}


def _csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _set_judge(run_dir: Path, judge: dict, sweep_judge: dict | None = None) -> None:
    """Give the run's saved config a judge (fabricate_run's config has none)."""
    path = run_dir / ".hydra" / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["judge"] = judge
    cfg["sweep"] = {"judge": sweep_judge or {}}
    path.write_text(yaml.safe_dump(cfg))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two sweeps with different models and methods; both have a model called tiny-a."""
    root = tmp_path_factory.mktemp("runs")
    a = fabricate_run(root / "first" / "sweep", models=("tiny-a",), methods=("neva",),
                      values=("power", "benevolence"), n_trials=4, neuron_files=False)
    b = fabricate_run(root / "second" / "sweep", models=("tiny-a", "tiny-b"),
                      methods=("random",), values=("power",), n_trials=4, seed=1)
    for d in (a, b):
        _set_judge(d, {"name": "forced_choice", "scenarios_limit": None},
                   {"scenarios_limit": 24})
    return a, b


@pytest.fixture(scope="module")
def page(runs, tmp_path_factory) -> Path:
    return compare_runs(runs, tmp_path_factory.mktemp("compare"))


def test_run_names_tell_same_named_directories_apart(runs):
    assert run_names(runs) == ["first/sweep", "second/sweep"]


def test_compare_page_shows_both_runs_side_by_side(page):
    report = page.parent
    text = page.read_text()
    assert page.name == "index.html" and report.name == "report"
    assert "<title>neva_sweep comparison: first/sweep vs second/sweep</title>" in text
    chosen = _csv(report / "tables" / "chosen_edits.csv")
    assert list(chosen[0])[:4] == ["run", "model", "value", "method"]
    assert {(r["run"], r["model"], r["value"], r["method"]) for r in chosen} == {
        ("first/sweep", "tiny-a", "power", "neva"),
        ("first/sweep", "tiny-a", "benevolence", "neva"),
        ("second/sweep", "tiny-a", "power", "random"),
        ("second/sweep", "tiny-b", "power", "random")}
    assert all(r["trial"] and r["alignment"] for r in chosen)
    studies = _csv(report / "tables" / "studies.csv")
    assert [(r["run"], r["model"]) for r in studies] == [
        (r["run"], r["model"]) for r in chosen]
    assert all(r["failed"] == "1" for r in studies)  # each run's own trials
    models = _csv(report / "tables" / "model_comparison.csv")
    assert {(r["run"], r["model"], r["method"]) for r in models} == {
        ("first/sweep", "tiny-a", "neva"), ("second/sweep", "tiny-a", "random"),
        ("second/sweep", "tiny-b", "random")}
    figures = {p.stem for p in (report / "figures").glob("*.png")}
    assert {"pareto_power", "pareto_benevolence", "leakage_first_sweep_tiny-a_neva",
            "leakage_second_sweep_tiny-a_random", "leakage_second_sweep_tiny-b_random"
            } <= figures
    assert '<section id="warnings"' not in text  # same judge, same search settings
    assert "task=compare &#x27;run_dirs=[" in text  # the reproduce command
    assert "# first/sweep: " in text and "# second/sweep: " in text  # both configs


def test_compare_page_references_only_its_own_files(page):
    assert_self_contained(page)  # the configs' wandb URL and the trials' error URL escaped


def test_merged_pareto_series_are_one_per_run_model_and_method(runs):
    from neva_sweep.report.compare import merge_runs
    from neva_sweep.report.figures import _series

    merged = merge_runs([load_run(d) for d in runs], run_names(runs), Path("unused"))
    labels = {_series(merged)[m, k][0] for m, k in
              {(key[0], key[2]) for key in merged.keys()}}
    assert labels == {"first/sweep/tiny-a · neva", "second/sweep/tiny-a · random",
                      "second/sweep/tiny-b · random"}


def test_different_judges_are_refused_naming_runs_and_keys(tmp_path):
    a = fabricate_run(tmp_path / "a", methods=("neva",), **TINY)
    b = fabricate_run(tmp_path / "b", methods=("neva",), **TINY)
    _set_judge(a, {"name": "forced_choice", "scenarios_limit": 24}, {"scenarios_limit": 24})
    _set_judge(b, {"name": "lexicon", "scenarios_limit": 24},
               {"scenarios_limit": "${judge.scenarios_limit}"})  # resolved: 24, as a's
    assert judge_differences([load_run(a), load_run(b)], ["a", "b"]) == [
        "judge.name (a: 'forced_choice', b: 'lexicon')"]
    with pytest.raises(ConfigError, match=r"run_dirs: the judges of a, b differ.*"
                       r"judge\.name \(a: 'forced_choice', b: 'lexicon'\).*"
                       r"\+compare_judges=any"):
        compare_runs([a, b], tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before writing anything


def test_bad_run_dirs_are_refused_naming_the_key(runs, tmp_path, config):
    with pytest.raises(ConfigError, match="run_dirs: task=compare needs two or more"):
        run(config("task=compare", f"run_dirs=[{runs[0]}]"), tmp_path / "out")
    with pytest.raises(ConfigError, match="run_dirs: no such directory"):
        run(config("task=compare", f"run_dirs=[{runs[0]},{tmp_path / 'nope'}]"), tmp_path)
    with pytest.raises(ConfigError, match="run_dirs: .* is given twice"):
        compare_runs([runs[0], runs[0]], tmp_path)
    with pytest.raises(ConfigError, match="compare_judges: unknown value 'some'"):
        run(config("task=compare", f"run_dirs=[{runs[0]},{runs[1]}]", "+compare_judges=some"),
            tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"run_dirs: \S*empty has no trials: no trials.csv "
                                          "and no Optuna storage"):
        run(config("task=compare", f"run_dirs=[{runs[0]},{tmp_path / 'empty'}]"),
            tmp_path / "out")
    assert not (tmp_path / "out" / "report").exists()


def test_cli_compares_different_judges_with_a_warning(runs, tmp_path):
    """python -m neva_sweep task=compare ... +compare_judges=any: the page warns."""
    other = fabricate_run(tmp_path / "lexicon", methods=("neva",), **TINY)
    _set_judge(other, {"name": "lexicon"})
    out = tmp_path / "cmp"
    cmd = [sys.executable, "-m", "neva_sweep", "task=compare",
           f"run_dirs=[{runs[0]},{other}]", "+compare_judges=any", f"hydra.run.dir={out}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = (out / "report" / "index.html").read_text()
    warnings = text.split('<section id="warnings"', 1)[1].split("</section>", 1)[0]
    assert "judges differ (+compare_judges=any)" in warnings
    assert "judge.name (sweep: &#x27;forced_choice&#x27;, lexicon: &#x27;lexicon&#x27;)" in \
        warnings
    assert "sweep.judge.scenarios_limit (sweep: 24, lexicon: unset)" in warnings
    chosen = _csv(out / "report" / "tables" / "chosen_edits.csv")
    assert {r["run"] for r in chosen} == {"sweep", "lexicon"}
    for ref in referenced_files(text):
        assert (out / "report" / ref).is_file(), ref
