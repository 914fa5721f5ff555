"""The search itself: scaled strengths, calibrated ranges and multi-fidelity (pruned) trials.

Tiny models and in-process workers keep these to seconds; the real-Ray sweep with a
pruner is in test_sweep.py.
"""

from __future__ import annotations

import concurrent.futures
import csv
import json
import math
import subprocess
import sys
from dataclasses import astuple
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

import neva_sweep as nv
from neva_sweep.config import CalibrationConfig
from neva_sweep.data import load_records
from neva_sweep.evaluation.capability import (
    CapabilityConfig,
    base_distribution,
    mean_kl,
    neutral_texts,
    value_texts,
)
from neva_sweep.evaluation.rungs import over_budget
from neva_sweep.methods.strength import neuron_magnitude, neuron_strength
from neva_sweep.sweep.calibrate import (
    Calibration,
    bisect_dose,
    calibrate_edit,
    calibration_job,
    calibration_jobs,
    combine,
    edge_dose,
    is_scaled,
    reference_params,
    space_with,
    spread_indices,
    strength_key,
)
from neva_sweep.sweep.front import DEFAULT_OBJECTIVES, pareto_front
from neva_sweep.sweep.lock import NoLock
from neva_sweep.sweep.outputs import Outputs
from neva_sweep.sweep.plan import ConfigError, ModelEntry, StudyKey, check_search
from neva_sweep.sweep.pruning import RUNG_SUFFIX
from neva_sweep.sweep.scheduler import Scheduler
from neva_sweep.sweep.storage import open_storage
from neva_sweep.sweep.studies import fail_stale_trials, open_studies

optuna.logging.set_verbosity(optuna.logging.WARNING)
ROOT = Path(__file__).resolve().parents[2]


# --- scaled strength ---------------------------------------------------------------------
@pytest.mark.parametrize("method,rule", [("neva", "add"), ("neva", "add_sd"), ("neva", "scale"),
                                         ("neva", "set"), ("neva", "gate_neuron"),
                                         ("random_neurons", "add"),
                                         ("random_neurons", "gate_neuron")])
def test_strength_gives_the_edit_of_the_raw_magnitude_it_records(tiny_stats, method, rule):
    scaled = nv.make_edit(tiny_stats, "power", method, sparsity=0.05, rule=rule, strength=3.0)
    raw = nv.make_edit(tiny_stats, "power", method, sparsity=0.05, rule=rule,
                       magnitude=scaled.describe()["magnitude"])
    for a, b in zip(astuple(scaled.coefficients()), astuple(raw.coefficients())):
        torch.testing.assert_close(a, b)
    assert neuron_strength(scaled.neurons, rule, scaled.magnitude, tiny_stats) == \
        pytest.approx(3.0, rel=1e-3)


def test_strength_is_linear_in_the_magnitude_and_grows_with_the_count(tiny_stats):
    few = nv.make_edit(tiny_stats, "power", "neva", sparsity=0.01, magnitude=2.0)
    many = nv.make_edit(tiny_stats, "power", "neva", sparsity=0.2, magnitude=2.0)
    s_few = neuron_strength(few.neurons, "add", 2.0)
    assert neuron_strength(few.neurons, "add", 4.0) == pytest.approx(2 * s_few)
    assert neuron_strength(many.neurons, "add", 2.0) > s_few  # more neurons, more push
    # one strength: a smaller magnitude on more neurons
    assert neuron_magnitude(many.neurons, "add", 5.0) < neuron_magnitude(few.neurons, "add", 5.0)


def test_diffmean_strength_is_its_coefficient(tiny_stats):
    a = nv.make_edit(tiny_stats, "power", "diffmean", strength=1.5)
    assert a.describe()["coefficient"] == 1.5


def test_residual_methods_calibrate_their_own_strength_box(config):
    space = config().search.space
    keys = {m: strength_key(m) for m in ("neva", "diffmean", "caa", "caa_pairs", "prompt")}
    assert keys == {"neva": "strength", "diffmean": "diffmean.strength",
                    "caa": "diffmean.strength", "caa_pairs": "caa_pairs.strength",
                    "prompt": None}
    assert [is_scaled(m) for m in ("diffmean", "caa", "caa_pairs", "prompt")] == [
        True, True, True, False]
    ref = reference_params("caa_pairs", space)  # its own positions, not search.space's
    assert ref["positions"] == "response"
    assert ref["layer_frac"] == sum(space.caa_pairs.layer_frac) / 2
    assert reference_params("caa", space) == reference_params("diffmean", space)


# --- calibration ---------------------------------------------------------------------------
def test_bisection_finds_the_budget_dose_and_reports_what_it_cannot_bracket():
    c = bisect_dose(lambda d: 0.01 * d ** 2, budget=0.09, start=1.0, steps=10)
    assert c.bracketed and c.dose == pytest.approx(3.0, rel=0.01) and c.kl <= 0.09
    dead = bisect_dose(lambda d: 1e-9, budget=0.1)  # never reaches the budget
    assert not dead.bracketed and dead.kl <= 0.1
    wild = bisect_dose(lambda d: 5.0, budget=0.1)  # over it at every dose
    assert not wild.bracketed and wild.kl > 0.1
    with pytest.raises(ValueError, match="budget must be > 0"):
        bisect_dose(lambda d: d, budget=0.0)


@pytest.mark.parametrize("method", ["neva", "diffmean", "caa_pairs"])
def test_calibration_brackets_the_kl_budget_on_a_tiny_model(config, tiny_host, tiny_stats,
                                                            method):
    budget = 2e-5  # the tiny random model's KL saturates near 1e-3
    search = config("model=tiny_llama", f"search.max_kl={budget}").search
    job = calibration_job(method, "power", search)
    texts = neutral_texts(load_records("neutral"), 4)
    cal = calibrate_edit(tiny_host, tiny_stats, texts, CapabilityConfig(), job)
    assert cal.bracketed and cal.budget == budget and len(cal.steps) > job["steps"]
    base = base_distribution(tiny_host, texts, CapabilityConfig().kl_top_k, 4)

    def kl(dose):
        edit = nv.make_edit(tiny_stats, "power", method, **{**job["params"], "strength": dose})
        return float(mean_kl(tiny_host, texts, base, [edit], "all", 4)[0])

    # below the budget at the dose, above it one bisection bracket further (2^(1/32) x)
    assert kl(cal.dose) <= budget < kl(cal.dose * 2 ** (1 / 2 ** job["steps"]) * 1.001)


@pytest.mark.parametrize("gates,max_kl_value", [("[none]", 1e-5), ("[context]", None)])
def test_calibration_brackets_the_first_budget_to_bind_on_a_tiny_model(
        config, tiny_host, tiny_stats, gates, max_kl_value):
    """With a budget on KL over value-laden replies (search.max_kl_value), or for a gated
    edit (whose gate may close on neutral text), the dose is where the first of the two
    KLs reaches its budget."""
    budget = 2e-5
    search = config("model=tiny_llama", f"search.max_kl={budget}", "search.calibration.points=1",
                    f"search.space.gates={gates}",
                    *([f"search.max_kl_value={max_kl_value}"] if max_kl_value else [])).search
    job = calibration_jobs("neva", "power", search)[-1]  # the gated job, or the one anchor
    value_budget = max_kl_value or budget  # a gated edit: the KL budget on both texts
    assert job["value_budget"] == value_budget
    texts = neutral_texts(load_records("neutral"), 4)
    queries = [r["text"] for r in load_records("queries").rows[::60]]
    replies = [" I would weigh what matters most to me and decide calmly."] * len(queries)
    value = value_texts([tiny_host.chat_prompt(q) for q in queries], replies)
    with pytest.raises(ValueError, match="needs value-laden replies"):
        calibrate_edit(tiny_host, tiny_stats, texts, CapabilityConfig(), job)
    cal = calibrate_edit(tiny_host, tiny_stats, texts, CapabilityConfig(), job, value)
    assert cal.bracketed and cal.value_budget == value_budget and cal.kl_value is not None
    cap = CapabilityConfig()
    bases = [base_distribution(tiny_host, t, cap.kl_top_k, 4) for t in (texts, value)]

    def costs(dose):  # (KL on neutral text / its budget, on the value-laden replies / its)
        edit = nv.make_edit(tiny_stats, "power", "neva", **{**job["params"], "strength": dose})
        return [float(mean_kl(tiny_host, t, b, [edit], "all", 4)[0]) / bud
                for t, b, bud in zip((texts, value), bases, (budget, value_budget))]

    assert max(costs(cal.dose)) <= 1 + 1e-6
    assert max(costs(cal.dose * 2 ** (1 / 2 ** job["steps"]) * 1.001)) > 1
    assert cal.kl_value == pytest.approx(costs(cal.dose)[1] * value_budget, rel=1e-5)
    # on this model both settings bind on the value-laden replies first (the ungated edit
    # reaches KL 2e-5 on neutral text at dose 32, beyond this one)
    assert cal.kl == pytest.approx(cal.kl_value * budget / value_budget)
    assert costs(cal.dose)[0] < costs(cal.dose)[1]


def test_bad_search_settings_are_refused_before_any_work(config):
    for override, key in (("search.pruner=asha", "search.pruner"),
                          ("search.fidelity=1.0", "search.fidelity"),
                          ("search.calibration.span=[2.0,1.0]", "search.calibration.span"),
                          ("search.calibration.anchors=0", "search.calibration.anchors"),
                          ("search.calibration.gate_points=0",
                           "search.calibration.gate_points"),
                          ("search.space.strength=[0.0,4.0]", "search.space.strength"),
                          ("search.space.caa_pairs.strength=[0.0,1.0]",
                           "search.space.caa_pairs.strength"),
                          ("search.space.diffmean.strength=[-1.0,1.0]",
                           "search.space.diffmean.strength")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            check_search(config(override).search)


# --- multi-fidelity trials -------------------------------------------------------------------
class DoneBackend:
    def wait(self, handles, timeout):
        return list(handles)

    def get(self, handle):
        return handle.result()


class RungWorker:
    """In-process scores: alignment = strength / 100 (a slice reads it 0.01 lower), KL =
    strength / 1000; a slice over its request's ``budgets`` is not judged (as the
    evaluator leaves it); a slice's record carries what the full rung continues from
    (``first_rung``), and the full rungs' requests are kept (``continued``);
    ``stop_after`` batches, then Ctrl-C (a killed driver). NLR is 0.1, or ``nlr(strength)``."""

    tp_size = 1

    def __init__(self, model="a", i=0, stop_after=None, nlr=lambda s: 0.1):
        self.model, self.name, self.nlr = model, f"{model}#{i}", nlr
        self.fidelities: list[float] = []
        self.continued: list[tuple[float, dict | None]] = []  # (strength, first_rung)
        self.budgets: list[dict] = []  # the rung-0 requests' budgets
        self.stop_after, self.batches = stop_after, 0

    def submit(self, trials):
        self.batches += 1
        if self.stop_after is not None and self.batches > self.stop_after:
            raise KeyboardInterrupt
        fut = concurrent.futures.Future()
        out = []
        for t in trials:
            f = t.get("fidelity", 1.0)
            self.fidelities.append(f)
            s = t["params"]["strength"]
            if f < 1:
                self.budgets.append(t["budgets"])
                why = over_budget({"kl": s / 1000}, t["budgets"])
                if why:
                    out.append({"kl": s / 1000, "over_budget": why})
                    continue
            out.append({"alignment": s / 100 - (0.01 if f < 1 else 0.0), "nlr": self.nlr(s),
                        "kl": s / 1000, "n_queries": 8 if f < 1 else 24,
                        "edit": {"kind": "neurons", "magnitude": s / 7}})
            if f < 1:
                out[-1]["first_rung"] = {"rows": [0, 3], "of": s}
            else:
                self.continued.append((s, t.get("first_rung")))
        fut.set_result(out)
        return fut

    def restart(self):
        raise RuntimeError("no restarts here")


def rung_sweep(config, storage, workers, *overrides):
    search = config("search.pruner=sha", "search.n_trials=9", "search.n_startup_trials=3",
                    "search.max_kl=0.03", *overrides).search
    keys = [StudyKey("a", v, "neva") for v in ("power", "tradition")]
    states = open_studies(keys, storage, search)
    told = []
    sched = Scheduler(states, workers, search, callbacks=[told.append], progress=False,
                      backend=DoneBackend())
    return search, states, told, sched


def test_pruned_trials_are_stored_pruned_counted_and_never_chosen(config, tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path}/o.db")
    w = RungWorker()
    search, states, told, sched = rung_sweep(config, storage, [w])
    sched.run()
    for s in states:
        trials = s.study.get_trials()
        pruned = [t for t in trials if t.state == TrialState.PRUNED]
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        assert len(trials) == 9 and len(pruned) == s.pruned > 0 and len(complete) == s.complete
        assert s.complete + s.pruned == 9 and s.missing == 0
        for t in pruned:  # why, and its rung-0 scores (over budget: never judged)
            over = t.user_attrs["rung0_kl"] > 0.03
            assert ("over the budget search.max_kl" in t.user_attrs["pruned"]) == over
            assert ("rung0_alignment" in t.user_attrs) != over
        for t in complete:  # both rungs ran; the full result is what was told
            assert t.user_attrs["alignment"] == pytest.approx(t.params["strength"] / 100)
            assert t.user_attrs["raw"] == {"magnitude": t.params["strength"] / 7}
        # every trial has a twin in the rung study carrying the same outcome
        twins = optuna.load_study(study_name=s.study.study_name + RUNG_SUFFIX, storage=storage)
        states_of = {t.number: t.state for t in twins.get_trials()}
        assert [states_of[t.user_attrs["rung_trial"]] for t in trials] == [t.state for t in trials]
    assert sum(o.state == "PRUNED" for o in told) == sum(s.pruned for s in states)
    # rung 0 at the fidelity, rung 1 in full: one full evaluation per COMPLETE trial
    assert w.fidelities.count(search.fidelity) == 18 and w.budgets == [{"kl": 0.03}] * 18
    assert any(t.user_attrs["rung0_kl"] > 0.03 for s in states for t in s.study.get_trials())
    assert w.fidelities.count(1.0) == sum(s.complete for s in states)
    # each full rung continues its own rung 0 (its rows and capability measures)
    assert w.continued and all(first == {"rows": [0, 3], "of": s} for s, first in w.continued)
    out = Outputs(tmp_path, states, [ModelEntry("a", {"name": "a"})], search)
    out.write()
    best = json.loads((tmp_path / "best_edits.json").read_text())
    pareto = json.loads((tmp_path / "pareto.json").read_text())
    for e in best["edits"]:
        st = next(s for s in states if s.key.value == e["value"])
        assert st.study.trials[e["trial"]].state == TrialState.COMPLETE
    assert [p["n_pruned"] for p in pareto["studies"]] == [s.pruned for s in states]
    rows = (tmp_path / "trials.csv").read_text().splitlines()
    assert sum(",PRUNED," in r for r in rows) == sum(s.pruned for s in states)


def test_warm_starts_are_pruned_over_budget_only(config, tmp_path):
    """The enqueued starts run in full however poor their rung 0 (the median pruner would
    drop the weak ones: two earlier trials reached 0.5), unless over the KL budget."""
    storage = open_storage(f"sqlite:///{tmp_path}/o.db")
    search, states, _, sched = rung_sweep(config, storage, [RungWorker()], "search.pruner=median",
                                          "search.n_startup_trials=1")
    s = states[0]
    for _ in range(2):  # finished trials whose rung 0 read 0.5: the median to beat
        s.rungs.add_trial(optuna.trial.create_trial(value=0.5, intermediate_values={1: 0.5}))
    starts = {4.5: "COMPLETE", 5.0: "COMPLETE", 40.0: "PRUNED"}  # KL 0.04 > max_kl 0.03
    for strength in starts:
        s.study.enqueue_trial({"sparsity": 0.01, "strength": strength})
    sched.run()
    by_start = {t.params["strength"]: t for t in s.study.get_trials()
                if t.user_attrs.get("warm_start")}
    assert {k: t.state.name for k, t in by_start.items()} == starts
    assert "kl" in by_start[40.0].user_attrs["pruned"]
    sampled = [t for t in s.study.get_trials() if not t.user_attrs.get("warm_start")]
    assert len(sampled) == 6 and any("median" in (t.user_attrs.get("pruned") or "")
                                     for t in sampled)  # the pruner still prunes the rest
    Outputs(tmp_path, states, [ModelEntry("a", {"name": "a"})], search).write()
    with (tmp_path / "trials.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["value"] == s.key.value]
    assert sorted(float(r["strength"]) for r in rows if r["warm_start"] == "True") == [4.5, 5, 40]


def test_a_relative_study_evaluates_the_strength_its_multiple_stands_for(config, tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path}/o.db")
    w = RungWorker()
    search, states, _, sched = rung_sweep(config, storage, [w], "search.pruner=none")
    cal = combine([Calibration(10.0, 0.03, 0.03, True, params={"sparsity": 5e-4}),
                   Calibration(20.0, 0.03, 0.03, True, params={"sparsity": 0.2})],
                  (0.25, 2.0), [4.0, 64.0], relative=True).to_dict()
    for s in states:  # as the calibration pass leaves a relative study
        s.edge, s.space = cal, space_with(search.space, "neva", cal["range"])
    sched.run()
    for s in states:
        trials = s.study.get_trials(states=(TrialState.COMPLETE,))
        assert len(trials) == 9
        for t in trials:
            frac, params = t.params["strength"], t.user_attrs["params"]  # drawn, evaluated
            assert 0.25 <= frac <= 2.0 and t.user_attrs["edge_frac"] == frac
            assert params["strength"] == pytest.approx(frac * edge_dose(cal, "neva", params))
            assert t.user_attrs["alignment"] == pytest.approx(params["strength"] / 100)
    Outputs(tmp_path, states, [ModelEntry("a", {"name": "a"})], search).write()
    with (tmp_path / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 18 and all(
        float(r["strength"]) == pytest.approx(
            float(r["edge_frac"]) * edge_dose(cal, "neva", {"sparsity": float(r["sparsity"])}))
        for r in rows)


def test_resume_after_a_kill_with_pruned_trials_in_storage(config, tmp_path):
    url = f"sqlite:///{tmp_path}/o.db"
    search, states, _, sched = rung_sweep(config, open_storage(url), [RungWorker(stop_after=7)])
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C mid-sweep
        sched.run()
    before = {s.key: (s.complete, s.pruned) for s in states}
    assert any(p for _, p in before.values())  # pruned trials stored before the kill
    # a fresh driver on the same storage: stale trials (main and rung studies) failed, then
    # only the missing trials run
    search, states, _, sched = rung_sweep(config, open_storage(url), [RungWorker()])
    assert {s.key: (s.complete, s.pruned) for s in states} == before
    fail_stale_trials(states, NoLock())
    sched.run()
    for s in states:
        assert s.complete + s.pruned == 9
        twins = optuna.load_study(study_name=s.study.study_name + RUNG_SUFFIX,
                                  storage=open_storage(url))
        assert not twins.get_trials(states=(TrialState.RUNNING,))
        assert not s.study.get_trials(states=(TrialState.RUNNING,))


def test_median_and_hyperband_pruners_run_through_the_scheduler(config, tmp_path):
    for pruner in ("median", "hyperband"):
        storage = open_storage(f"sqlite:///{tmp_path}/{pruner}.db")
        _, states, _, sched = rung_sweep(config, storage, [RungWorker()],
                                         f"search.pruner={pruner}", "search.max_kl=null")
        sched.run()
        assert all(s.complete + s.pruned == 9 and s.complete >= 1 for s in states)
        assert math.isfinite(max(s.best_alignment for s in states))


def test_front_pruner_keeps_the_rung_zero_front_and_prunes_the_dominated(config, tmp_path):
    """search.pruner=front: with NLR rising with the strength every rung-0 point is on the
    front, so none is pruned; with NLR flat, exactly the trials some trial past rung 0
    dominated (a higher rung-0 alignment) are."""
    for name, nlr, prunes in (("rising", lambda s: s / 50, False), ("flat", lambda s: 0.1, True)):
        storage = open_storage(f"sqlite:///{tmp_path}/{name}.db")
        _, states, _, sched = rung_sweep(config, storage, [RungWorker(nlr=nlr)],
                                         "search.pruner=front", "search.max_kl=null",
                                         "search.n_startup_trials=1", "search.max_in_flight=1")
        sched.run()  # one trial at a time: the trials that went on before each are exact
        for s in states:
            trials = sorted(s.study.get_trials(), key=lambda t: t.datetime_complete)
            assert s.complete + s.pruned == 9 and s.complete >= 1
            assert (s.pruned > 0) is prunes
            for t in trials:  # each verdict against the trials that went on before it
                before = [u.user_attrs["rung0_alignment"] for u in trials
                          if u.state == TrialState.COMPLETE
                          and u.datetime_complete < t.datetime_complete]
                dominated = prunes and len(before) >= 1 and \
                    max(before) > t.user_attrs["rung0_alignment"]
                assert (t.state == TrialState.PRUNED) is dominated, (name, t.number)
                if dominated:  # the reason names the rung-0 objectives compared
                    assert t.user_attrs["pruned"].startswith(
                        "search.pruner=front: rung-0 alignment ")
                    assert "nlr +0.1000 on 8 judge rows" in t.user_attrs["pruned"]
            # the twins carry the rung-0 objectives the pruner compared
            twins = optuna.load_study(study_name=s.study.study_name + RUNG_SUFFIX,
                                      storage=storage)
            assert all(set(t.user_attrs["rung0_point"]) == {"alignment", "nlr"}
                       for t in twins.get_trials())


# --- the convergence benchmark, end to end on a tiny model -------------------------------------
@pytest.mark.slow
def test_search_convergence_benchmark_on_a_tiny_model(tmp_path):
    """A calibrated, pruned sweep on real actors (a subprocess, as users run it) and the
    grid reference: the files say what was calibrated and pruned, pruned trials are never
    chosen, and regret is measured against a reference no search beats."""
    out = tmp_path / "conv.json"
    run_dir = tmp_path / "conv"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "experiments" / "search_convergence.py"),
         "--tiny",
         "--values", "power", "--seeds", "0", "--budgets", "2", "6", "--pruners", "sha",
         "--run-dir", str(run_dir), "--json", str(out),
         "--fronts-figure", str(tmp_path / "fronts.png"),
         # one replica: the two cores are shared with the other test worker
         "--override", f"cache_dir={tmp_path / 'cache'}", "cluster.replicas_per_model=1"],
        capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads(out.read_text())
    sweep = run_dir / "sha-seed0"
    pareto = json.loads((sweep / "pareto.json").read_text())
    with (sweep / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    for st in pareto["studies"]:
        cal = st["calibration"]
        assert cal["bracketed"] and cal["budget"] == 2e-5
        # the default settings over the layout calibrated (search.calibration.points),
        # each at the budget; the anchors among them (search.calibration.anchors) start
        # the study, as many as it runs trials
        points = cal["anchors"]
        axis = "sparsity" if st["method"] == "neva" else "layer_frac"
        n_points, n_anchors = CalibrationConfig.points, CalibrationConfig.anchors
        assert len(points) == n_points and all(a["bracketed"] for a in points)
        assert len({a["params"][axis] for a in points}) == n_points
        anchors = [points[i] for i in spread_indices(n_points, n_anchors)]
        # the strength is searched as a multiple of the budget dose at the trial's layout
        # (search.calibration.relative), in search.calibration.span
        assert cal["relative"] and cal["range"] == [0.25, 2.0]
        mine = sorted((r for r in rows if r["method"] == st["method"]),
                      key=lambda r: int(r["trial"]))
        assert len(mine) == 6 and st["n_complete"] + st["n_pruned"] == 6
        for r in mine:
            frac = float(r["edge_frac"])
            assert 0.25 <= frac <= 2.0
            assert float(r["strength"]) == pytest.approx(
                frac * edge_dose(cal, st["method"], {axis: float(r[axis])}))
        # the study starts at its anchors, each at its calibrated dose
        started = [(float(r[axis]), float(r["strength"])) for r in mine[:len(anchors)]]
        assert started == [pytest.approx((a["params"][axis], a["dose"])) for a in anchors]
        raw = "magnitude" if st["method"] == "neva" else "coefficient"
        assert all(float(r[raw]) > 0 for r in mine if r["state"] == "COMPLETE")
    best = json.loads((sweep / "best_edits.json").read_text())
    chosen = {(e["method"], e["trial"]) for e in best["edits"]}
    assert all(r["state"] == "COMPLETE" for r in rows if (r["method"], int(r["trial"])) in chosen)
    for method in ("neva", "caa"):
        ref = rep["reference"][f"power/{method}"]
        grid = rep["grid"][f"power/{method}"]
        assert len(grid["points"]) == 6 and (grid["best"] is None or grid["best"] <= ref)
        found = [float(r["alignment"]) for r in rows if r["method"] == method
                 and r["feasible"] == "True"]
        assert all(a <= ref for a in found)
        summary = rep["summary"][f"{method}/sha"]
        ratio = summary["ratio"]
        mine = [r for r in rows if r["method"] == method]
        assert summary["trials"] == len(mine) == 6
        assert summary["pruned"] == sum(r["state"] == "PRUNED" for r in mine)
        assert summary["pruned_over_budget"] == sum(
            r["state"] == "PRUNED" and "over the budget search.max_" in r["error"] for r in mine)
        assert "cpu_vs_none" not in summary  # no unpruned run to compare with
        assert sum(summary["cpu_s_per_seed"].values()) == pytest.approx(summary["cpu_s"])
        assert summary["infeasible"] == sum(r["state"] == "COMPLETE" and r["feasible"] != "True"
                                            for r in mine)
        # the sampled trials are all but the starts (trials.csv's warm_start), none of
        # them counted better than the best start unless it is
        where = summary["sampled"]
        assert where["sampled"] == sum(r["warm_start"] != "True" for r in mine) >= 1
        best_start = max((float(r["alignment"]) for r in mine if r["warm_start"] == "True"
                          and r["state"] == "COMPLETE" and r["feasible"] == "True"),
                         default=None)
        assert where["beat_starts"] == sum(
            best_start is not None and r["warm_start"] != "True" and r["state"] == "COMPLETE"
            and r["feasible"] == "True" and float(r["alignment"]) > best_start for r in mine)
        assert where["studies_beaten"] == (where["beat_starts"] > 0)
        # the study's front, as the outputs' own Pareto code finds it
        feasible = [{k: float(r[k]) for k in ("alignment", "nlr")} for r in mine
                    if r["state"] == "COMPLETE" and r["feasible"] == "True"]
        assert summary["front_trials_per_seed"] == {
            "0": len(pareto_front(feasible, DEFAULT_OBJECTIVES))}
        hv = summary["hypervolume_per_seed"]["0"]["power"]
        assert hv >= 0 and (hv > 0) == any(x["alignment"] > 0 and x["nlr"] < 1
                                           for x in feasible)
        if ref is not None and ref > 0:  # regret needs a positive reference
            assert all(0 <= ratio[k] <= 1 for k in ("2", "6")) and ratio["2"] <= ratio["6"]
            assert summary["per_value"] == {"power": [pytest.approx(ratio["6"])]}
        else:
            assert ratio == {"2": None, "6": None}
    assert "CPU s to 90%" in proc.stdout and "beat their study's best start" in proc.stdout
    assert (tmp_path / "fronts.png").stat().st_size > 0
