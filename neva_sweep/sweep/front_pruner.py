"""``search.pruner=front``: prune a trial whose rung-0 point is dominated on the study's
objectives by the rung-0 point of a trial that went on.

The median pruner ranks trials by rung-0 alignment alone, so it stops the weaker, less
leaky trials that make the low-NLR end of a study's Pareto front (docs/results.md 0d: 5
front trials on four studies against 10-20 unpruned). This pruner keeps every trial that
could still be on the front: it compares the trial's rung-0 ``search.objectives``
(alignment and NLR by default) with those of the trials past rung 0 (finished, or running
their full rung) and prunes it only when one of them is at least as good on every
objective and better on one. All rung-0 points are read on the same judge rows (an evenly
spread subset, the same for every trial: evaluation/rungs.py), so the comparison is
paired: the scenarios' own noise is common to both points.

It runs in the study's rung study like the Optuna pruners (sweep/pruning.py): the
scheduler stores each twin's rung-0 objectives as its user attribute ``rung0_point``
before asking ``should_prune``.
"""

from __future__ import annotations

from collections.abc import Mapping

import optuna
from optuna.trial import TrialState

from .front import dominates

RUNG0_POINT = "rung0_point"  # a twin's rung-0 objectives, {metric: value}
_PAST_RUNG_0 = (TrialState.COMPLETE, TrialState.RUNNING)


class FrontPruner(optuna.pruners.BasePruner):
    """Prunes a trial whose rung-0 point another trial past rung 0 dominates on
    ``objectives`` (``{metric: maximize | minimize}``); never before ``n_startup_trials``
    such trials exist, nor a trial without a complete point."""

    def __init__(self, objectives: Mapping[str, str], n_startup_trials: int = 0):
        self.objectives = dict(objectives)
        self.signs = [1.0 if d == "maximize" else -1.0 for d in self.objectives.values()]
        self.n_startup_trials = int(n_startup_trials)

    def point(self, trial: optuna.trial.FrozenTrial) -> list[float] | None:
        """The trial's rung-0 objectives in ``objectives`` order, None when it has none or
        lacks one."""
        stored = trial.user_attrs.get(RUNG0_POINT) or {}
        p = [stored.get(k) for k in self.objectives]
        return None if any(x is None for x in p) else [float(x) for x in p]

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        mine = self.point(trial)
        if mine is None:
            return False
        # A RUNNING twin with a point has passed rung 0 (a pruned one is PRUNED), so it is
        # on the rung-0 front of the trials that went on, or dominated by one that is.
        others = [p for t in study.get_trials(deepcopy=False, states=_PAST_RUNG_0)
                  if t.number != trial.number and (p := self.point(t)) is not None]
        if len(others) < self.n_startup_trials:
            return False
        return any(dominates(p, mine, self.signs) for p in others)
