"""Stage 1 of the report, from an Optuna storage: each study's searched parameters.

Only a storage knows a study's search space (the distributions of ``trial.suggest_*``:
log scale, categorical choices), so this part of the report needs one: the run's
``optuna.db`` or ``storage=``. Per study, :func:`param_study` keeps its COMPLETE trials'
parameters and first objective (the parallel-coordinates figure) and ranks the parameters
that varied by how much of that objective's variance they explain (the importance bars):
Optuna's fANOVA (:class:`optuna.importance.FanovaImportanceEvaluator`, random forests
built in Optuna, no scikit-learn) with a fixed seed and 32 trees, so the same trials give
the same bars and a study of hundreds of trials takes well under a second.

A study with fewer than :data:`MIN_TRIALS` COMPLETE trials, or fewer than two parameters
that varied, gets a note instead: fANOVA on a handful of points, or on one parameter
(whose importance is 1 by definition), says nothing.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

MIN_TRIALS = 4  # COMPLETE trials a study needs for importances
N_TREES, SEED = 32, 0  # fANOVA: deterministic, and cheap enough for every study of a sweep


@dataclass
class ParamStudy:
    """One study's searched parameters, for the importance and parallel-coordinates figure.

    ``params``: the parameters that varied, most important first; ``trials``: per COMPLETE
    trial its parameters and first objective; ``importances``: parameter -> share of the
    objective's variance (sums to 1); empty, with ``note`` saying why, when the study is not
    eligible (:data:`MIN_TRIALS`, two varying parameters).
    """

    key: tuple[str, str, str]  # (model, value, method)
    objective: str  # the first objective's name (the importances' target)
    maximize: bool
    params: list[str] = field(default_factory=list)
    importances: dict[str, float] = field(default_factory=dict)
    trials: list[tuple[dict[str, Any], float]] = field(default_factory=list)
    log: frozenset[str] = frozenset()  # parameters searched on a log scale
    choices: dict[str, list[Any]] = field(default_factory=dict)  # categorical -> its choices
    note: str | None = None


def _varying(trials: list[optuna.trial.FrozenTrial]) -> list[str]:
    """Parameters every trial has, whose distribution has several values and which took
    more than one of them (in the first trial's order)."""
    first = trials[0].distributions
    return [p for p, d in first.items()
            if all(p in t.params for t in trials) and not d.single()
            and len({repr(t.params[p]) for t in trials}) > 1]


def param_study(key: tuple[str, str, str], study: optuna.Study,
                objective: str | None = None) -> ParamStudy:
    """The :class:`ParamStudy` of ``study``; ``objective`` names its first objective when
    the study has no metric names (``study.set_metric_names``; the sweep sets them)."""
    import optuna  # here: the report imports without Optuna until it reads a storage
    from optuna.distributions import CategoricalDistribution
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    with warnings.catch_warnings():  # metric_names is experimental in some Optuna versions
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        names = study.metric_names
    out = ParamStudy(key, (names or [objective or "objective 0"])[0],
                     study.directions[0] == StudyDirection.MAXIMIZE)
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.values and math.isfinite(t.values[0])]
    if len(done) < MIN_TRIALS:
        out.note = (f"{len(done)} COMPLETE trial{'s' if len(done) != 1 else ''}; parameter "
                    f"importances need {MIN_TRIALS}.")
        return out
    varying = _varying(done)
    if len(varying) < 2:
        which = f"only {varying[0]!r} varied" if varying else "no parameter varied"
        out.note = f"{which}: no importances to rank."
        return out
    if len({t.values[0] for t in done}) < 2:
        out.note = f"{out.objective} is the same in every COMPLETE trial: nothing to explain."
        return out
    evaluator = optuna.importance.FanovaImportanceEvaluator(n_trees=N_TREES, seed=SEED)
    imp = optuna.importance.get_param_importances(
        study, evaluator=evaluator, params=varying, target=lambda t: t.values[0])
    out.importances = {p: float(x) for p, x in imp.items()}
    out.params = sorted(varying, key=lambda p: -out.importances.get(p, 0.0))
    dists = done[0].distributions
    out.log = frozenset(p for p in varying if getattr(dists[p], "log", False))
    out.choices = {p: list(dists[p].choices) for p in varying
                   if isinstance(dists[p], CategoricalDistribution)}
    out.trials = [({p: t.params[p] for p in varying}, float(t.values[0])) for t in done]
    return out


__all__ = ["MIN_TRIALS", "ParamStudy", "param_study"]
