"""Warm starts of fresh studies (neva_sweep/sweep/warm.py), on real in-memory Optuna studies."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from neva_sweep.methods import METHODS
from neva_sweep.sweep.plan import StudyKey
from neva_sweep.sweep.studies import StudyState
from neva_sweep.sweep.warm import fit_space, warm_start


@pytest.fixture
def search(config):
    # the raw magnitude (scaled strengths: test_scaled_defaults_start_at_the_calibrated_dose)
    return config("search.space.rules=[add,scale]", "search.space.scaled=false").search


def state(value: str, method: str = "neva") -> StudyState:
    study = optuna.create_study(directions=["maximize", "minimize"])
    return StudyState(StudyKey("m", value, method), study, target=4, max_failures=4)


def finish(s: StudyState, space, params: dict, alignment: float, kl: float) -> None:
    """A COMPLETE trial of ``s`` with ``params`` and the metrics a trial records."""
    s.study.enqueue_trial(params)
    trial = s.study.ask()
    METHODS[s.key.method].suggest(trial, space)
    trial.set_user_attr("alignment", alignment)
    trial.set_user_attr("kl", kl)
    s.study.tell(trial, [alignment, 0.1])
    s.best_alignment = max(alignment, s.best_alignment or alignment)


def asked_params(s: StudyState, space) -> list[dict]:
    """The parameters of the study's waiting (enqueued) trials, as the scheduler asks them."""
    out = []
    for _ in s.study.get_trials(states=(TrialState.WAITING,)):
        trial = s.study.ask()
        METHODS[s.key.method].suggest(trial, space)
        out.append(trial.params)
    return out


def test_fit_space_keeps_searched_parameters_inside_the_space(search):
    defaults = METHODS["neva"].defaults
    fitted = fit_space("neva", search.space, dict(defaults))
    # sparsity, magnitude, rule and gate (search.space.gates: none, value) are searched here;
    # score, positions... have one choice
    assert fitted == {"sparsity": defaults["sparsity"], "magnitude": defaults["magnitude"],
                      "rule": "add", "gate": "none"}
    assert fit_space("neva", search.space, {**defaults, "magnitude": 80.0}) is None
    assert fit_space("neva", search.space, {**defaults, "rule": "set"}) is None
    assert fit_space("neva", search.space, {"magnitude": 4.0}) is None  # sparsity missing


def test_fresh_study_starts_from_another_values_best_feasible_then_defaults(search):
    done, fresh, caa = state("power"), state("benevolence"), state("security", "caa")
    good = {"sparsity": 0.004, "magnitude": 6.0, "rule": "scale", "gate": "value"}
    finish(done, search.space, good, alignment=0.02, kl=0.05)
    finish(done, search.space, {"sparsity": 0.008, "magnitude": 7.5, "rule": "add",
                                "gate": "none"},
           alignment=0.05, kl=0.5)  # higher alignment but over the KL budget: not a donor
    assert warm_start([done, fresh, caa], search) == 3
    defaults = fit_space("neva", search.space, dict(METHODS["neva"].defaults))
    assert asked_params(fresh, search.space) == [good, defaults]
    # the caa study (diffmean's former name) has no donor of its method: its defaults only
    assert asked_params(caa, search.space) == [
        fit_space("caa", search.space, dict(METHODS["caa"].defaults))]
    assert len(done.study.get_trials()) == 2  # a study with trials gets nothing


def test_warm_start_can_be_turned_off(config):
    s = state("power")
    assert warm_start([s], config("search.warm_start=false").search) == 0
    assert s.study.get_trials() == []


def test_caa_pairs_starts_at_its_calibrated_dose_else_its_default_strength(config):
    search = config().search
    fresh, uncalibrated = state("power", "caa_pairs"), state("tradition", "caa_pairs")
    fresh.study.set_user_attr("calibration", {"dose": 0.3, "bracketed": True})
    fresh.space = uncalibrated.space = None
    assert warm_start([fresh, uncalibrated], search) == 2
    (params,) = asked_params(fresh, search.space)
    assert params["strength"] == 0.3 and params["gate"] == "none"
    assert params["layer_frac"] == pytest.approx(sum(search.space.caa_pairs.layer_frac) / 2)
    (first,) = asked_params(uncalibrated, search.space)
    assert first["strength"] == METHODS["caa_pairs"].defaults["strength"]


def test_scaled_defaults_start_at_the_calibrated_dose(config):
    search = config().search  # scaled strengths, the default
    fresh, uncalibrated = state("power"), state("tradition")
    fresh.study.set_user_attr("calibration", {"dose": 12.0, "bracketed": True})
    fresh.space = uncalibrated.space = None
    assert warm_start([fresh, uncalibrated], search) == 2
    (params,) = asked_params(fresh, search.space)
    lo, hi = search.space.sparsity  # the calibration's reference setting, at its dose
    assert params["strength"] == 12.0 and params["sparsity"] == pytest.approx((lo * hi) ** 0.5)
    # the rule is searched by default; the reference (and so the first trial) stays add
    assert list(search.space.rules) == ["add", "scale", "set", "gate_neuron"]
    assert params["rule"] == "add"
    lo, hi = search.space.strength  # no calibration: the defaults, mid-range strength
    (first,) = asked_params(uncalibrated, search.space)
    assert first["sparsity"] == METHODS["neva"].defaults["sparsity"]
    assert first["strength"] == pytest.approx((lo * hi) ** 0.5)


def test_a_calibrated_study_starts_at_each_anchor_that_met_the_budget(config):
    search = config().search
    fresh = state("power", "diffmean")
    at = [{"layer_frac": 0.2, "dose": 1.5, "bracketed": True},
          {"layer_frac": 0.5, "dose": 0.4, "bracketed": True},
          {"layer_frac": 0.8, "dose": 1e4, "bracketed": False}]  # a dead edit: no start
    ref = {"layer_frac": 0.5, "n_layers": 1}
    fresh.study.set_user_attr("calibration", {
        "dose": 0.4, "bracketed": True, "range": [0.1, 3.0],
        "anchors": [{"params": {**ref, "layer_frac": a["layer_frac"]}, "dose": a["dose"],
                     "bracketed": a["bracketed"]} for a in at]})
    # the study's own space: its box from the calibration (sweep/calibration_pass.py)
    fresh.space = space = config("search.space.diffmean.strength=[0.1,3.0]").search.space
    assert warm_start([fresh], search) == 2
    started = [(p["layer_frac"], p["strength"]) for p in asked_params(fresh, space)]
    assert started == [(0.2, 1.5), (0.5, 0.4)]


def test_a_gated_space_starts_gated_at_the_calibrated_doses(config):
    """Calibration measures the edits ungated; a space that searches only gated edits
    (``search.space.gates=[context,value]``) starts from the same settings and doses, with
    the first gate searched."""
    search = config("search.space.gates=[context,value]").search
    fresh = state("power", "diffmean")
    fresh.study.set_user_attr("calibration", {
        "dose": 0.4, "bracketed": True, "range": [0.1, 3.0],
        "anchors": [{"params": {"layer_frac": x, "n_layers": 1, "gate": "none"}, "dose": d,
                     "bracketed": True} for x, d in ((0.2, 1.5), (0.5, 0.4))]})
    fresh.space = space = config("search.space.gates=[context,value]",
                                 "search.space.diffmean.strength=[0.1,3.0]").search.space
    assert warm_start([fresh], search) == 2
    started = [(p["layer_frac"], p["strength"], p["gate"]) for p in asked_params(fresh, space)]
    assert started == [(0.2, 1.5, "context"), (0.5, 0.4, "context")]


def test_a_study_gets_no_more_starts_than_trials_it_will_run(config):
    search = config().search
    small = StudyState(StudyKey("m", "power", "diffmean"),
                       optuna.create_study(directions=["maximize", "minimize"]),
                       target=2, max_failures=2)
    small.study.set_user_attr("calibration", {
        "dose": 0.4, "bracketed": True, "range": [0.1, 3.0],
        "anchors": [{"params": {"layer_frac": x, "n_layers": 1}, "dose": 0.4,
                     "bracketed": True} for x in (0.2, 0.5, 0.8)]})
    small.space = space = config("search.space.diffmean.strength=[0.1,3.0]").search.space
    assert warm_start([small], search) == 2
    assert [p["layer_frac"] for p in asked_params(small, space)] == [0.2, 0.5]
