"""A study's calibration at several settings of the method's layout (sweep/calibrate.py):
where the anchors sit, how their doses make the searched box, and what a run's identity
keeps of them."""

from __future__ import annotations

import optuna
import pytest

from neva_sweep.config import CalibrationConfig
from neva_sweep.methods import METHODS
from neva_sweep.sweep.calibrate import (
    Calibration,
    absolute_params,
    anchor_params,
    calibration_jobs,
    combine,
    edge_dose,
    reference_params,
    warm_settings,
)
from neva_sweep.sweep.identity import identity


def test_anchors_spread_over_the_layout_with_the_ends_included(config):
    space = config().search.space
    neva = anchor_params("neva", space, 5)
    lo, hi = space.sparsity
    assert [p["sparsity"] for p in neva] == pytest.approx(
        [lo * (hi / lo) ** (i / 4) for i in range(5)])
    # everything but the layout is the reference setting; the middle anchor is it
    ref = reference_params("neva", space)
    assert all({k: v for k, v in p.items() if k != "sparsity"} ==
               {k: v for k, v in ref.items() if k != "sparsity"} for p in neva)
    assert neva[2]["sparsity"] == pytest.approx(ref["sparsity"])
    layers = [p["layer_frac"] for p in anchor_params("caa_pairs", space, 4)]
    assert layers == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert all(p["positions"] == "response" for p in anchor_params("caa_pairs", space, 4))
    assert anchor_params("diffmean", space, 1) == [reference_params("diffmean", space)]


def test_a_fixed_layout_gives_one_anchor(config):
    space = config("search.space.diffmean.layer_frac=[0.4,0.4]").search.space
    assert [p["layer_frac"] for p in anchor_params("diffmean", space, 3)] == [0.4]


def test_one_job_per_anchor_each_at_its_setting_then_one_per_gate(config):
    search = config("search.calibration.anchors=3", "search.calibration.points=3",
                    "search.space.gates=[none,context,value]").search
    jobs = calibration_jobs("diffmean", "power", search)
    assert [(j["params"]["layer_frac"], j["params"]["gate"]) for j in jobs] == [
        (0.2, "none"), (0.5, "none"), (0.8, "none"), (0.5, "context"), (0.5, "value")]
    assert len({(j["budget"], j["start"], j["steps"]) for j in jobs}) == 1
    # a gated edit is also bisected on KL where its gate opens (value-laden replies), at
    # the KL budget unless search.max_kl_value sets one; an ungated one only with that set
    assert [j.get("value_budget") for j in jobs] == [None, None, None, 0.1, 0.1]
    budgeted = calibration_jobs("diffmean", "power", config(
        "search.calibration.points=3", "search.calibration.anchors=3",
        "search.max_kl_value=0.3").search)
    assert [j["value_budget"] for j in budgeted] == [0.3] * 4  # default gates [none, value]
    ungated = config("search.space.gates=[none]").search
    assert len(calibration_jobs("diffmean", "power", ungated)) == CalibrationConfig.points


def test_a_gated_edit_meets_its_budget_at_its_gates_factor_of_the_ungated_dose():
    def at(layer, dose, gate="none", reached=True):
        return Calibration(dose, 0.1, 0.1, reached, params={"layer_frac": layer, "gate": gate})

    anchors = [at(0.2, 1.0), at(0.5, 2.0), at(0.8, 4.0)]
    gated = [at(0.5, 6.0, "context"), at(0.5, 1e4, "value", reached=False)]
    cal = combine(anchors, (0.25, 2.0), [0.1, 1.0], relative=True, gated=gated).to_dict()
    assert cal["gates"]["context"]["factor"] == 3.0 and cal["gates"]["value"]["factor"] is None
    # the gate's factor scales the interpolated ungated dose at every layout
    assert edge_dose(cal, "diffmean", {"layer_frac": 0.8, "gate": "context"}) == 12.0
    assert edge_dose(cal, "diffmean", {"layer_frac": 0.8, "gate": "none"}) == 4.0
    assert edge_dose(cal, "diffmean", {"layer_frac": 0.8, "gate": "value"}) == 4.0  # dead
    assert not any("gates" in a for a in cal["anchors"])
    # an absolute box spans the gated dose too
    assert combine(anchors, (0.25, 2.0), [0.1, 1.0], gated=gated).range == [0.25, 12.0]


def test_gate_points_calibrate_each_gate_across_the_layout(config):
    """``search.calibration.gate_points`` gated points per gate, spread over the points;
    a gated trial's factor is interpolated between them (log factor, linear in the layout
    coordinate, flat beyond the ends), and a point that met no budget takes no part."""
    search = config("search.calibration.anchors=3", "search.calibration.points=5",
                    "search.calibration.gate_points=3",
                    "search.space.gates=[none,value]").search
    jobs = calibration_jobs("diffmean", "power", search)
    assert [(j["params"]["layer_frac"], j["params"]["gate"]) for j in jobs[5:]] == [
        (0.2, "value"), (0.5, "value"), (0.8, "value")]

    def at(layer, dose, gate="none", reached=True):
        return Calibration(dose, 0.1, 0.1, reached, params={"layer_frac": layer, "gate": gate})

    anchors = [at(0.2, 1.0), at(0.5, 2.0), at(0.8, 4.0)]
    gated = [at(0.2, 2.0, "value"), at(0.5, 8.0, "value"), at(0.8, 32.0, "value")]
    cal = combine(anchors, (0.25, 2.0), [0.1, 1.0], relative=True, gated=gated).to_dict()
    g = cal["gates"]["value"]
    assert [p["factor"] for p in g["points"]] == [2.0, 4.0, 8.0] and g["factor"] == 4.0
    # at a gated point the budget dose is that point's own gated dose
    for layer, dose in ((0.2, 2.0), (0.5, 8.0), (0.8, 32.0)):
        assert edge_dose(cal, "diffmean", {"layer_frac": layer, "gate": "value"}) == \
            pytest.approx(dose)
    # halfway between 0.2 and 0.5: ungated dose 2^0.5 times factor 2^1.5, both interpolated
    # in log
    assert edge_dose(cal, "diffmean", {"layer_frac": 0.35, "gate": "value"}) == \
        pytest.approx(4.0)
    assert edge_dose(cal, "diffmean", {"layer_frac": 0.1, "gate": "value"}) == pytest.approx(2.0)
    # a dead gated point is left out: the factor comes from the others
    gated[2] = at(0.8, 1e4, "value", reached=False)
    cal = combine(anchors, (0.25, 2.0), [0.1, 1.0], relative=True, gated=gated).to_dict()
    assert cal["gates"]["value"]["points"][2]["factor"] is None
    assert edge_dose(cal, "diffmean", {"layer_frac": 0.8, "gate": "value"}) == \
        pytest.approx(4.0 * 4.0)


def test_the_box_spans_the_anchors_that_met_the_budget():
    span, configured = (0.25, 2.0), [4.0, 64.0]
    low = Calibration(2.0, 0.09, 0.1, True, params={"sparsity": 0.2})
    mid = Calibration(5.0, 0.1, 0.1, True, params={"sparsity": 0.01})
    dead = Calibration(1e4, 0.01, 0.1, False, params={"sparsity": 5e-4})  # never reaches it
    hot = Calibration(1e-4, 0.5, 0.1, False, params={"sparsity": 0.2})  # over it at once
    cal = combine([dead, mid, low], span, configured)
    assert cal.range == [0.5, 10.0]  # the dead edit adds nothing
    assert cal.dose == 5.0 and cal.params == {"sparsity": 0.01}  # the middle anchor's
    assert [a["params"] for a in cal.anchors] == [{"sparsity": 5e-4}, {"sparsity": 0.01},
                                                  {"sparsity": 0.2}]
    assert combine([dead], span, configured).range == configured
    assert combine([hot, mid], span, configured).range == [0.25e-4, 10.0]
    # the warm start: the anchors that were bracketed, at their doses
    assert warm_settings(cal.to_dict()) == [{"sparsity": 0.01, "strength": 5.0},
                                            {"sparsity": 0.2, "strength": 2.0}]
    # a calibration stored before anchors existed: its one dose
    assert warm_settings({"dose": 3.0, "bracketed": True}) == [{"strength": 3.0}]


def test_the_anchor_count_is_not_part_of_a_runs_identity(config, tmp_path):
    a = identity(config("search.calibration.anchors=1", "search.calibration.relative=false",
                        "search.calibration.gate_points=3"))
    b = identity(config("search.calibration.anchors=5"))
    assert a == b and not {"anchors", "relative", "gate_points"} & set(a["search.calibration"])
    assert identity(config("search.calibration.steps=2")) != a


def test_a_relative_study_draws_a_multiple_of_the_budget_dose_at_its_layout():
    span = (0.25, 2.0)
    cals = [Calibration(8.0, 0.1, 0.1, True, params={"sparsity": 5e-4}),
            Calibration(2.0, 0.1, 0.1, True, params={"sparsity": 0.01}),
            Calibration(1e4, 0.01, 0.1, False, params={"sparsity": 0.2})]  # dead: no part
    cal = combine(cals, span, [4.0, 64.0], relative=True).to_dict()
    assert cal["relative"] and cal["range"] == [0.25, 2.0]
    # log dose, linear in log sparsity; flat past the last anchor that met the budget
    mid = (5e-4 * 0.01) ** 0.5
    assert edge_dose(cal, "neva", {"sparsity": mid}) == pytest.approx(4.0)
    assert edge_dose(cal, "neva", {"sparsity": 0.1}) == pytest.approx(2.0)
    params, frac = absolute_params(cal, "neva", {"sparsity": mid, "strength": 1.5})
    assert frac == 1.5 and params == {"sparsity": mid, "strength": pytest.approx(6.0)}
    # the first trials: each anchor that met the budget, at 1 x its dose
    assert warm_settings(cal) == [{"sparsity": 5e-4, "strength": 1.0},
                                  {"sparsity": 0.01, "strength": 1.0}]
    # no anchor met the budget: the configured box, absolute
    dead = combine(cals[2:], span, [4.0, 64.0], relative=True)
    assert not dead.relative and dead.range == [4.0, 64.0]
    with pytest.raises(ValueError, match="no anchor that met the budget"):
        edge_dose(dead.to_dict(), "neva", {"sparsity": 0.01})


def test_cached_calibrations_of_an_earlier_version_get_their_setting(config, tmp_path):
    """A cache file written before anchors recorded their setting still gives a study
    whose every anchor has one (a relative study interpolates between them)."""
    import json
    from types import SimpleNamespace

    import optuna

    from neva_sweep.sweep.calibration_pass import cache_path, calibrate_studies
    from neva_sweep.sweep.plan import StudyKey
    from neva_sweep.sweep.studies import StudyState

    search = config("search.calibration.points=3", "search.calibration.anchors=3",
                    "search.space.gates=[none]").search
    setup = SimpleNamespace(cache_dir=str(tmp_path), capability="cap", data="data")
    jobs = calibration_jobs("diffmean", "power", search)
    for dose, job in zip((1.5, 0.4, 0.8), jobs):
        path = cache_path(setup, "m", job)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"dose": dose, "kl": 0.098, "budget": 0.1,
                                    "bracketed": True, "steps": [[dose, 0.098]]}))
    s = StudyState(StudyKey("m", "power", "diffmean"),
                   optuna.create_study(directions=["maximize", "minimize"]), 4, 4)
    assert calibrate_studies([s], [], search, setup, {"m": "m"}, progress=False) == 1
    cal = s.study.user_attrs["calibration"]
    assert [a["params"]["layer_frac"] for a in cal["anchors"]] == [0.2, 0.5, 0.8]
    assert s.edge == cal and edge_dose(cal, "diffmean", {"layer_frac": 0.5}) == \
        pytest.approx(0.4)


def test_more_points_trace_the_budget_dose_but_only_the_anchors_start(config):
    search = config("search.calibration.points=7", "search.calibration.anchors=3",
                    "search.space.gates=[none]").search
    jobs = calibration_jobs("diffmean", "power", search)
    layers = [j["params"]["layer_frac"] for j in jobs]
    assert layers == pytest.approx([0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    cals = [Calibration(1.0 + i, 0.1, 0.1, True, params=j["params"])
            for i, j in enumerate(jobs)]
    cal = combine(cals, (0.25, 2.0), [0.25, 4.0], relative=True).to_dict()
    assert edge_dose(cal, "diffmean", {"layer_frac": 0.3}) == pytest.approx(2.0)
    starts = warm_settings(cal, 3)
    assert [s["layer_frac"] for s in starts] == pytest.approx([0.2, 0.5, 0.8])


def test_fewer_points_than_anchors_is_refused(config):
    from neva_sweep.sweep.plan import ConfigError, check_search

    with pytest.raises(ConfigError, match=r"search\.calibration\.points"):
        check_search(config("search.calibration.points=2", "search.calibration.anchors=3").search)


def test_gated_only_search_without_a_budget_a_gate_cannot_hide_is_warned(config, caplog):
    from neva_sweep.sweep.plan import check_search, warn_unbounded_gates

    with caplog.at_level("WARNING", logger="neva_sweep.sweep.plan"):
        check_search(config("search.space.gates=[value]").search)
    assert "search.max_kl_value" in caplog.text and "['value']" in caplog.text
    for ok in ([], ["search.space.gates=[none,value]"],
               ["search.space.gates=[value]", "search.max_suppression=0.1"],
               ["search.space.gates=[value]", "search.max_kl_value=0.1"]):
        assert not warn_unbounded_gates(config(*ok).search), ok


def test_a_budget_on_value_laden_replies_needs_replies_to_read(config):
    from neva_sweep.sweep.plan import ConfigError, check_evaluation

    check_evaluation(config("search.max_kl_value=0.1"))  # 8 value replies by default
    with pytest.raises(ConfigError, match=r"^search\.max_kl_value: .*value_replies is 0"):
        check_evaluation(config("search.max_kl_value=0.1", "capability.value_replies=0"))


def test_a_gated_point_that_met_no_budget_is_warned_about_and_left_out(config, tmp_path,
                                                                        caplog):
    """A study calibrated from its (cached) jobs: every gated point keeps its factor, a
    dead one (under every budget at every dose) none, with a warning naming its setting;
    the gated trial's budget dose there comes from the other points."""
    import json
    from types import SimpleNamespace

    import optuna

    from neva_sweep.sweep.calibration_pass import cache_path, calibrate_studies
    from neva_sweep.sweep.plan import StudyKey
    from neva_sweep.sweep.studies import StudyState

    search = config("search.calibration.points=3", "search.calibration.anchors=3",
                    "search.calibration.gate_points=3",
                    "search.space.gates=[none,value]").search
    setup = SimpleNamespace(cache_dir=str(tmp_path), capability="cap", data="data")
    jobs = calibration_jobs("diffmean", "power", search)
    assert [j["params"]["gate"] for j in jobs] == ["none"] * 3 + ["value"] * 3
    # ungated doses 1, 2, 4; gated 3, 8 and a dead one at layer 0.8
    for (dose, ok), job in zip(((1.0, True), (2.0, True), (4.0, True), (3.0, True),
                                (8.0, True), (1e4, False)), jobs):
        path = cache_path(setup, "m", job)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"dose": dose, "kl": 0.098 if ok else 0.01, "budget": 0.1,
                                    "bracketed": ok, "steps": [[dose, 0.098]],
                                    "params": job["params"]}))
    s = StudyState(StudyKey("m", "power", "diffmean"),
                   optuna.create_study(directions=["maximize", "minimize"]), 4, 4)
    with caplog.at_level("WARNING", logger="neva_sweep.sweep.calibration_pass"):
        assert calibrate_studies([s], [], search, setup, {"m": "m"}, progress=False) == 1
    gate = s.study.user_attrs["calibration"]["gates"]["value"]
    assert [p["factor"] for p in gate["points"]] == [3.0, 4.0, None]
    assert "gate=value met no budget at layer_frac=0.8" in caplog.text
    assert "interpolated from the other points" in caplog.text
    # flat beyond the last live point: 4 x the ungated dose at layer 0.8
    assert edge_dose(s.edge, "diffmean", {"layer_frac": 0.8, "gate": "value"}) == \
        pytest.approx(16.0)


def test_random_neuron_trials_draw_the_neurons_their_calibration_measured(config, tiny_stats):
    """A random-neuron study's starts are its calibrated anchors: each must run on the draw
    the calibration bisected, or its dose is another edit's (before, a draw per trial left
    the starts at KL 0.05 to 6.9 where the budget was 0.1). Sampled trials draw from the
    same order, so a sparsity between anchors takes neurons the anchors' draws share."""
    search = config("search.calibration.anchors=3", "search.calibration.points=3").search
    jobs = [j for j in calibration_jobs("random_neurons", "power", search)
            if j["params"]["gate"] == "none"]
    method = METHODS["random_neurons"]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for job in jobs:  # the warm start enqueues each anchor's searched parameters
        study.enqueue_trial({k: v for k, v in job["params"].items()
                             if k != "seed" and v is not None})
    ids = lambda e: set(zip(e.neurons.layer.tolist(), e.neurons.index.tolist()))  # noqa: E731
    for job in jobs:
        params = method.suggest(study.ask(), search.space)
        assert params["sparsity"] == job["params"]["sparsity"]
        assert params["seed"] == job["params"]["seed"]
        assert ids(method.build(tiny_stats, "power", params)) == ids(
            method.build(tiny_stats, "power", {**params, **job["params"]}))
    small, large = (method.build(tiny_stats, "power", {**jobs[0]["params"], "sparsity": s})
                    for s in (0.01, 0.05))
    sampled = method.suggest(study.ask(), search.space)  # not enqueued: drawn by the sampler
    assert sampled["seed"] == jobs[0]["params"]["seed"]
    assert ids(small) < ids(large)  # nested: the first k of one order
