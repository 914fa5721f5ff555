"""The front pruner (neva_sweep/sweep/front_pruner.py) on a real Optuna study: it prunes a
trial only when a trial past rung 0 dominates its rung-0 objectives."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from neva_sweep.sweep.front_pruner import RUNG0_POINT, FrontPruner
from neva_sweep.sweep.pruning import make_pruner

OBJECTIVES = {"alignment": "maximize", "nlr": "minimize"}


def rung_study(points: list[tuple[dict | None, TrialState]]) -> optuna.Study:
    """A rung study holding twins with these rung-0 points and states."""
    study = optuna.create_study(direction="maximize")
    for point, state in points:
        attrs = {RUNG0_POINT: point} if point is not None else {}
        study.add_trial(optuna.trial.create_trial(
            state=state, value=0.0 if state == TrialState.COMPLETE else None,
            intermediate_values={1: 0.0}, user_attrs=attrs))
    return study


def verdict(pruner: FrontPruner, study: optuna.Study, point: dict | None) -> bool:
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.RUNNING, intermediate_values={1: 0.0},
        user_attrs={RUNG0_POINT: point} if point is not None else {}))
    return pruner.prune(study, study.get_trials()[-1])


def test_a_dominated_rung_zero_point_is_pruned_and_a_front_point_kept():
    past = [({"alignment": 0.02, "nlr": 0.5}, TrialState.COMPLETE),
            ({"alignment": 0.01, "nlr": 0.2}, TrialState.RUNNING)]  # in its full rung
    pruner = FrontPruner(OBJECTIVES)
    cases = {(0.015, 0.6): True,  # worse than the first on both
             (0.005, 0.3): True,  # worse than the second on both
             (0.01, 0.2): False,  # equal to the second: not dominated
             (0.005, 0.1): False,  # weaker but less leaky: the front's low end
             (0.03, 0.9): False}  # leakier but stronger: the front's high end
    for (a, nlr), pruned in cases.items():
        assert verdict(pruner, rung_study(past), {"alignment": a, "nlr": nlr}) is pruned


def test_only_trials_past_rung_zero_with_a_full_point_are_compared():
    strong = {"alignment": 0.05, "nlr": 0.0}  # would dominate everything
    weak = {"alignment": 0.0, "nlr": 1.0}
    for state in (TrialState.PRUNED, TrialState.FAIL):  # never went on
        assert not verdict(FrontPruner(OBJECTIVES), rung_study([(strong, state)]), weak)
    assert not verdict(FrontPruner(OBJECTIVES),
                       rung_study([({"alignment": 0.05}, TrialState.COMPLETE)]), weak)
    # a trial without a complete point (its NLR was not finite) is never pruned
    assert not verdict(FrontPruner(OBJECTIVES), rung_study([(strong, TrialState.COMPLETE)]),
                       {"alignment": 0.0})
    assert verdict(FrontPruner(OBJECTIVES), rung_study([(strong, TrialState.COMPLETE)]), weak)


def test_no_pruning_before_the_startup_trials_and_objectives_follow_the_config(config):
    past = [({"alignment": 0.05, "nlr": 0.0, "kl": 0.09}, TrialState.COMPLETE)] * 2
    weak = {"alignment": 0.0, "nlr": 1.0, "kl": 0.01}
    assert not verdict(FrontPruner(OBJECTIVES, n_startup_trials=3), rung_study(past), weak)
    assert verdict(FrontPruner(OBJECTIVES, n_startup_trials=2), rung_study(past), weak)
    # search.pruner=front builds it on search.objectives: with KL an objective the weak
    # but cheap trial is on the front
    search = config("search.pruner=front", "search.n_startup_trials=0",
                    "+search.objectives.kl=minimize").search
    pruner = make_pruner(search)
    assert isinstance(pruner, FrontPruner) and list(pruner.objectives) == ["alignment", "nlr",
                                                                           "kl"]
    assert not verdict(pruner, rung_study(past), weak)
