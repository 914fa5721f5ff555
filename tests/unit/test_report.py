"""The sweep report from fabricated run directories (no model, no Ray, a few seconds)."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import optuna
import pytest
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution

from neva_sweep.report import build_report, load_run
from neva_sweep.values import VALUES
from tests.helpers import (
    METHODS,
    MODELS,
    SWEPT,
    assert_offline,
    assert_self_contained,
    fabricate_run,
    referenced_files,
)


@pytest.fixture(scope="module")
def full_report(tmp_path_factory) -> Path:
    run_dir = fabricate_run(tmp_path_factory.mktemp("sweep"))
    return build_report(run_dir)


def test_report_from_a_synthetic_sweep(full_report):
    report = full_report.parent
    page = full_report.read_text()
    assert full_report == report.parent / "report" / "index.html"
    assert "<title>neva_sweep report: sweep" in page
    figures = {p.stem for p in (report / "figures").glob("*.png")}
    assert {p.stem for p in (report / "figures").glob("*.svg")} == figures
    assert {f"pareto_{v}" for v in SWEPT} <= figures
    assert {f"{kind}_{m}_{k}" for kind in ("leakage", "profiles") for m in MODELS
            for k in METHODS} <= figures
    assert {"history_tiny-a", "history_tiny-b"} <= figures
    assert sum(f.startswith("neurons_") for f in figures) == 2  # identify json + chosen files
    assert page.count('<img src="data:image/png;base64,') == len(figures)
    for section in ("chosen", "models", "pareto", "leakage", "profiles", "neurons", "params",
                    "history", "samples", "studies", "config", "versions", "reproduce"):
        assert f'<section id="{section}"' in page
    assert "python -m neva_sweep task=report run_dir=" in page
    assert "python -m neva_sweep experiment=smoke hydra.run.dir=" in page
    assert "matplotlib" in page and "max_accuracy_drop: 0.1" in page


def test_every_referenced_file_exists_and_no_external_urls(full_report):
    assert_self_contained(full_report)


def test_tables(full_report):
    tables = full_report.parent / "tables"
    with (tables / "chosen_edits.csv").open() as f:
        chosen = list(csv.DictReader(f))
    assert len(chosen) == len(MODELS) * len(METHODS) * len(SWEPT)
    edited = [r for r in chosen if r["trial"]]
    assert edited and all(r["alignment_ci_lo"] <= r["alignment"] for r in edited)
    assert {"nlr", "nglr", "cwl", "accuracy_drop", "kl", "sparsity"} <= set(chosen[0])
    assert all(r["acquiescence"] and r["nlr_floor"] == "0.01" for r in edited
               if r["method"] == "neva")
    assert all(r["acquiescence"] == r["nlr_floor"] == "" for r in chosen
               if r["method"] == "random")
    with (tables / "model_comparison.csv").open() as f:
        comparison = list(csv.DictReader(f))
    assert {(r["model"], r["method"]) for r in comparison} == {
        (m, k) for m in MODELS for k in METHODS}
    assert all(bool(r["mean_acquiescence"]) == (r["method"] == "neva") for r in comparison)
    with (tables / "studies.csv").open() as f:
        studies = list(csv.DictReader(f))
    assert all(r["failed"] == "1" and "out of memory" in r["last_error"] for r in studies)
    # best alignment within the budget (max_accuracy_drop 0.1), which the stronger, better
    # aligned trials exceed
    run = load_run(full_report.parent.parent)
    done = [[r for r in run.trials(k) if r.get("state") == "COMPLETE"] for k in run.keys()]
    best = [max((float(r["alignment"]) for r in d if float(r["accuracy_drop"]) <= 0.1),
                default=None) for d in done]
    assert sorted(float(r["best_alignment"]) for r in studies if r["best_alignment"]) == \
        pytest.approx(sorted(b for b in best if b is not None))
    assert any(b is None or b < max(float(r["alignment"]) for r in d)
               for b, d in zip(best, done))


def test_base_csr_and_leakage_from_the_trials(tmp_path):
    run = load_run(fabricate_run(tmp_path, neuron_files=False))
    assert set(run.base_csr["tiny-a"]) == set(VALUES)  # csr_base_<value> columns
    e = run.chosen["tiny-a", "power", "neva"]
    dcsr = run.dcsr("tiny-a", e["csr_edited"])
    assert dcsr["power"] == pytest.approx(e["alignment"])
    assert not any("unedited CSR" in m for m in run.missing)


def test_base_csr_of_trials_without_base_columns(tmp_path):
    """Only the swept values' unedited CSR is derivable (csr_t - alignment)."""
    run_dir = fabricate_run(tmp_path, neuron_files=False)
    rows = _rewrite_trials(run_dir, lambda k: not k.startswith("csr_base_"))
    assert rows and "csr_power" in rows[0]
    best = json.loads((run_dir / "best_edits.json").read_text())
    for e in best["edits"]:
        del e["metrics"]["csr_base"]
    (run_dir / "best_edits.json").write_text(json.dumps(best))
    run = load_run(run_dir)
    assert set(run.base_csr["tiny-a"]) == set(SWEPT)
    e = run.chosen["tiny-a", "power", "neva"]
    assert run.dcsr("tiny-a", e["csr_edited"])["power"] == pytest.approx(e["alignment"])
    assert any("unedited CSR of tiny-a is unknown" in m for m in run.missing)


def _rewrite_trials(run_dir: Path, keep) -> list[dict]:
    """Rewrite trials.csv with only the columns ``keep(name)`` accepts; returns the rows."""
    path = run_dir / "trials.csv"
    with path.open() as f:
        rows = list(csv.DictReader(f))
    fields = [k for k in rows[0] if keep(k)]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return [{k: r[k] for k in fields} for r in rows]


def test_empty_run_dir_says_what_is_missing(tmp_path):
    page = build_report(tmp_path).read_text()
    assert "What is missing" in page and "no trials.csv" in page
    assert "no .hydra/config.yaml" in page
    for ref in referenced_files(page):
        assert (tmp_path / "report" / ref).is_file(), ref
    assert_offline(page)


SMALL = {"models": ("tiny-a",), "methods": ("neva",), "values": ("power", "benevolence")}


def test_all_failed_sweep(tmp_path):
    page = build_report(fabricate_run(tmp_path, fail_all=True, **SMALL)).read_text()
    assert "What is missing" in page and "no COMPLETE trial" in page
    assert "Pareto fronts: alignment vs leakage" in page
    assert "<img" in page  # the history still shows the failed trials
    for ref in referenced_files(page):
        assert (tmp_path / "report" / ref).is_file(), ref


def test_missing_pareto_and_best_edits_are_recomputed(tmp_path):
    run_dir = fabricate_run(tmp_path, **SMALL)
    with_files = load_run(run_dir)
    (run_dir / "pareto.json").unlink()
    (run_dir / "best_edits.json").unlink()
    page = build_report(run_dir).read_text()
    assert "pareto.json is missing" in page and "best_edits.json is missing" in page
    run = load_run(run_dir)
    assert run.fronts == with_files.fronts
    assert {k: e["trial"] for k, e in run.chosen.items()} == {
        k: e["trial"] for k, e in with_files.chosen.items()}
    assert all(e["params"]["sparsity"] == with_files.chosen[k]["params"]["sparsity"]
               for k, e in run.chosen.items())


def test_missing_columns_are_named(tmp_path):
    run_dir = fabricate_run(tmp_path, **SMALL)
    (run_dir / "best_edits.json").unlink()
    _rewrite_trials(run_dir, lambda k: not k.startswith("csr_") and k != "accuracy_drop")
    page = build_report(run_dir).read_text()
    assert "no csr_&lt;value&gt; columns" in page and "no &#x27;accuracy_drop&#x27;" in page


def test_trials_from_an_optuna_storage(tmp_path):
    import optuna

    url = f"sqlite:///{tmp_path / 'other.db'}"
    study = optuna.create_study(storage=url, study_name="tiny-a/power/neva",
                                directions=["maximize", "minimize"])
    for attr, v in (("model", "tiny-a"), ("value", "power"), ("method", "neva")):
        study.set_user_attr(attr, v)
    base = {v: 0.2 for v in VALUES}
    for i in range(3):
        t = study.ask()
        t.suggest_float("magnitude", 1, 8)
        edited = {**base, "power": 0.2 + 0.1 * (i + 1), "achievement": 0.25}
        for k, x in {"alignment": 0.1 * (i + 1), "nlr": 0.05, "accuracy_drop": 0.0,
                     "csr_base": base, "csr_edited": edited}.items():
            t.set_user_attr(k, x)
        study.tell(t, [0.1 * (i + 1), 0.05])
    page = build_report(tmp_path, storage=url).read_text()
    run = load_run(tmp_path, storage=url)
    assert len(run.rows) == 3 and run.fronts[("tiny-a", "power", "neva")] == [2]
    assert run.chosen["tiny-a", "power", "neva"]["trial"] == 2
    assert run.dcsr("tiny-a", run.chosen["tiny-a", "power", "neva"]["csr_edited"])[
        "achievement"] == pytest.approx(0.05)
    assert "leakage_tiny-a_neva.png" in page and "search.storage=sqlite:&#47;&#47;" in page


def test_chosen_edits_that_do_not_beat_their_null_are_warned_about(tmp_path):
    run_dir = fabricate_run(tmp_path, neuron_files=False, **SMALL)
    best = json.loads((run_dir / "best_edits.json").read_text())
    for e in best["edits"]:  # power: z below 2 on the test split; benevolence: clear
        z = 0.7 if e["value"] == "power" else 9.0
        e["test"] = {"alignment": 0.004, "z": z, "nlr": 0.3}
    (run_dir / "best_edits.json").write_text(json.dumps(best))
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    cfg.sweep = {"capability": {"mc_limit": 0}}  # the preset measures no accuracy
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    page = build_report(run_dir).read_text()
    warnings = page.split('<section id="warnings"', 1)[1].split("</section>", 1)[0]
    assert "tiny-a/power/neva: does not beat its dose-matched nulls on the test split " \
           "(z = 0.7 &lt; 2)" in warnings
    assert "benevolence" not in warnings
    with (run_dir / "report" / "tables" / "chosen_edits.csv").open() as f:
        notes = {r["value"]: r["note"] for r in csv.DictReader(f)}
    assert "z = 0.7" in notes["power"] and notes["benevolence"] == ""
    assert "no accuracy_drop values" not in page  # by the preset's design, not missing


FIGURE_SECTIONS = ("pareto", "leakage", "profiles", "neurons", "params", "history")


def _section_html(page: str, sid: str) -> str:
    return page.split(f'<section id="{sid}"', 1)[1].split("</section>", 1)[0]


def test_one_value_one_method_figures_are_whole(tmp_path, monkeypatch):
    """A run of one value, model and method: every figure section draws, no figure is too
    small for its title, legend and colour bar, and nothing sticks out of a figure."""
    from matplotlib.figure import Figure
    from matplotlib.image import imread

    save, laid_out = Figure.savefig, {}

    def checked_savefig(fig, fname, **kw):  # the layout as drawn, before "tight" saving
        if str(fname).endswith(".png"):
            fig.draw_without_rendering()
            box = fig.get_tightbbox(fig._get_renderer())  # inches
            w, h = fig.get_size_inches()
            panels = [a.get_position().size * (w, h) for a in fig.axes
                      if a.get_visible() and a.get_label() != "<colorbar>"]
            laid_out[Path(fname).stem] = (box.x0 >= -0.01 and box.y0 >= -0.01
                                          and box.x1 <= w + 0.01 and box.y1 <= h + 0.01,
                                          min(min(p) for p in panels))
        return save(fig, fname, **kw)

    monkeypatch.setattr(Figure, "savefig", checked_savefig)
    run_dir = fabricate_run(tmp_path, models=("tiny-a",), methods=("neva",), values=("power",),
                            n_trials=6, storage=True)
    page = build_report(run_dir).read_text()
    figures = {p.stem: p for p in (tmp_path / "report" / "figures").glob("*.png")}
    assert set(figures) == {"pareto_power", "leakage_tiny-a_neva", "profiles_tiny-a_neva",
                            "neurons_0_tiny-a", "neurons_1_tiny-a___neva",
                            "params_tiny-a_power_neva", "history_tiny-a"}
    for name, path in figures.items():
        height, width = imread(path).shape[:2]
        assert height >= 300 and width >= 400, (name, height, width)
        inside, smallest_panel = laid_out[name]
        assert inside, f"{name}: an artist lies outside the figure"
        assert smallest_panel >= 1.2, f"{name}: a panel of {smallest_panel:.2f} inch"
    for sid in FIGURE_SECTIONS:
        section = _section_html(page, sid)
        assert '<p class="note">' not in section and "<img" in section, sid
    # the one-value neuron map of the chosen edit: counts only, no 1 × 1 overlap matrix
    assert "One value: no overlap between values to show." in _section_html(page, "neurons")


def _study(url: str, value: str, objective, n: int = 0, magnitudes=()) -> None:
    """A study over sparsity (log), magnitude and rule with what the report reads of a
    sweep's trials: ``n`` random trials scored ``objective(sparsity, magnitude)``, then
    one per magnitude of ``magnitudes`` at a fixed sparsity and rule."""
    study = optuna.create_study(storage=url, study_name=f"tiny-a/{value}/neva",
                                directions=["maximize", "minimize"])
    with warnings.catch_warnings():  # experimental in Optuna, and what the sweep does
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["alignment", "nlr"])
    for attr, v in (("model", "tiny-a"), ("value", value), ("method", "neva")):
        study.set_user_attr(attr, v)
    space = {"sparsity": FloatDistribution(1e-4, 1e-2, log=True),
             "magnitude": FloatDistribution(1, 8), "rule": CategoricalDistribution(["add", "mul"])}
    rng = np.random.default_rng(n)
    params = [{"sparsity": float(10 ** rng.uniform(-4, -2)), "magnitude": float(rng.uniform(1, 8)),
               "rule": ["add", "mul"][i % 2]} for i in range(n)]
    params += [{"sparsity": 1e-3, "magnitude": m, "rule": "add"} for m in magnitudes]
    trials = []
    for p in params:
        a = objective(p["sparsity"], p["magnitude"]) + float(rng.normal(0, 1e-3))
        attrs = {"alignment": a, "nlr": 0.1, "csr_base": {v: 0.2 for v in VALUES}}
        trials.append(optuna.trial.create_trial(values=[a, 0.1], params=p, distributions=space,
                                                user_attrs=attrs))
    study.add_trials(trials)


def test_parameter_importances_per_study(tmp_path):
    """One figure per study with enough COMPLETE trials and two varying parameters; the
    parameter that drives the objective ranks first, the same on every build."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    _study(url, "power", lambda s, m: 0.1 * np.log10(s) + 0.001 * m, n=12)  # sparsity matters
    _study(url, "benevolence", lambda s, m: m, n=3)  # too few trials
    _study(url, "hedonism", lambda s, m: m / 10, magnitudes=(1, 2, 3, 4, 5))  # one varies
    page = build_report(tmp_path).read_text()
    figures = {p.stem for p in (tmp_path / "report" / "figures").glob("params_*.png")}
    assert figures == {"params_tiny-a_power_neva"}
    section = _section_html(page, "params")
    assert section.count("<img") == 1
    assert "tiny-a/benevolence/neva: 3 COMPLETE trials; parameter importances need 4." in section
    assert "tiny-a/hedonism/neva: only &#x27;magnitude&#x27; varied" in section
    first, again = (load_run(tmp_path).param_studies for _ in range(2))
    power = next(p for p in first if p.key == ("tiny-a", "power", "neva"))
    assert power.objective == "alignment" and power.params[0] == "sparsity"
    assert set(power.importances) == {"sparsity", "magnitude", "rule"}
    assert sum(power.importances.values()) == pytest.approx(1.0)
    assert power.log == {"sparsity"} and power.choices == {"rule": ["add", "mul"]}
    assert [p.importances for p in first] == [p.importances for p in again]  # seeded


def test_steered_replies(tmp_path):
    from neva_sweep.report.tables import samples_table

    run_dir = fabricate_run(tmp_path, neuron_files=False, **SMALL)
    none = samples_table(load_run(run_dir), tmp_path / "tables")
    assert not none.rows and none.notes[0].startswith("no steered replies: the chosen edits")
    best = json.loads((run_dir / "best_edits.json").read_text())
    for e in best["edits"]:
        if e["value"] == "power":
            e["samples"] = [{"prompt": f"Q{i}?", "unedited": f"calm {i}",
                             "edited": f"<b>I lead</b> {i}"} for i in range(5)]
            e["samples"].append({"prompt": "no reply"})  # malformed: left out
    (run_dir / "best_edits.json").write_text(json.dumps(best))
    page = build_report(run_dir).read_text()
    section = _section_html(page, "samples")
    assert "no steered replies" not in page
    assert section.count("<tr>") == 1 + 3  # header, the first 3 of the 5 replies
    assert "&lt;b&gt;I lead&lt;/b&gt; 0" in section and "calm 2" in section
    assert "calm 3" not in section
    with (run_dir / "report" / "tables" / "steered_replies.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["value"], r["prompt"], r["edited"]) for r in rows] == [
        ("power", f"Q{i}?", f"<b>I lead</b> {i}") for i in range(5)]
    assert page.index('<section id="history"') < page.index('<section id="samples"') \
        < page.index('<section id="studies"')
