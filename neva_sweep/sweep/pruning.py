"""Multi-fidelity trials: score an edit on a slice of the scenarios first, finish it only
if it is promising.

With ``search.pruner`` other than ``none`` every trial runs in two rungs:

1. **rung 0**: the edit's costs on fixed texts are measured in full first (MC accuracy,
   KL on the neutral texts, KL on the value-laden replies); an edit over one of their
   budgets (``search.max_accuracy_drop``, ``max_kl``, ``max_kl_value``) is pruned there,
   unjudged: the full evaluation reads the same texts, so it could not become feasible.
   The others are judged on ``search.fidelity`` of the judge rows a full trial reads (an
   evenly spread subset of them, the same for every trial);
2. **rung 1**: the rest of the full evaluation. It judges only the rows rung 0 did not,
   merges them with rung 0's, and keeps rung 0's capability measures
   (neva_sweep/evaluation/rungs.py), so a trial that survives rung 0 costs what an
   unpruned trial costs and its result is the unpruned result. A judge that cannot read
   a subset of its rows (only forced_choice can) is read whole at both rungs.

After rung 0 the trial is pruned (told PRUNED, never a best edit) when it is over one of
those budgets, or when the configured pruner says so: from its rung-0 alignment
``median`` (:class:`optuna.pruners.MedianPruner`), ``sha``
(:class:`optuna.pruners.SuccessiveHalvingPruner`, reduction factor 1 / fidelity) or
``hyperband`` (:class:`optuna.pruners.HyperbandPruner`); from all its rung-0 objectives
``front`` (sweep/front_pruner.py: only a trial that another trial past rung 0 dominates,
so the low-leakage end of the front is kept).
The warm starts (sweep/warm.py, the enqueued trials) are pruned only over budget, never
by the pruner: they are the search's floor, and a rung-0 alignment on a third of the
scenarios is too noisy a verdict to drop one (the median pruner dropped 3 of 12 starts
before this rule).

Optuna's pruners read single-objective studies (``Trial.report`` is refused in
multi-objective ones, and the sweep's studies have two or more objectives), so every
study has a *rung study* beside it, ``<study name>:rungs``, maximising alignment: each
trial has a twin there that carries its rung-0 alignment (``report`` at step 1) and its
final alignment, and whose ``should_prune()`` decides. The main trial records its twin's
number (``rung_trial``) and its rung-0 scores (``rung0_kl``; ``rung0_alignment`` when it
was judged). A trial pruned over budget reports nothing to its twin, which changes no
pruner's verdict: the median pruner reads finished trials only, and successive halving
and Hyperband the trials they were asked about.

A pruned trial counts toward ``search.n_trials`` (the budget is trials started, so pruning
saves time instead of adding trials) and is counted in the progress bar, the summary and
``pareto.json`` (``n_pruned``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from omegaconf import DictConfig

from ..evaluation.rungs import FIXED_TEXT_BUDGETS
from ..registry import Registry

if TYPE_CHECKING:  # optuna loads with the sweep; the report only needs is_rung_study
    import optuna

# search.pruner -> builder of the Optuna pruner (factor: the rungs' reduction factor);
# "none" builds nothing: trials run whole. A new pruner is one builder here.
PRUNERS: Registry = Registry("pruner")
PRUNERS.register("none", None)
RUNG_SUFFIX = ":rungs"
FIRST_RUNG_STEP, LAST_RUNG_STEP = 1, 3  # resource units of rung 0 and of the full trial


def rung_study_name(name: str) -> str:
    """The rung study of study ``name``."""
    return f"{name}{RUNG_SUFFIX}"


def is_rung_study(name: str) -> bool:
    return name.endswith(RUNG_SUFFIX)


def enabled(search: DictConfig) -> bool:
    return str(search.get("pruner", "none")) != "none"


@PRUNERS.add("median")
def _median(search: DictConfig, factor: int) -> optuna.pruners.BasePruner:
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=int(search.n_startup_trials),
                                       n_warmup_steps=0)


@PRUNERS.add("front")
def _front(search: DictConfig, factor: int) -> optuna.pruners.BasePruner:
    from .front_pruner import FrontPruner

    return FrontPruner(search.objectives, n_startup_trials=int(search.n_startup_trials))


@PRUNERS.add("sha")
def _successive_halving(search: DictConfig, factor: int) -> optuna.pruners.BasePruner:
    import optuna

    return optuna.pruners.SuccessiveHalvingPruner(min_resource=FIRST_RUNG_STEP,
                                                  reduction_factor=factor)


@PRUNERS.add("hyperband")
def _hyperband(search: DictConfig, factor: int) -> optuna.pruners.BasePruner:
    import optuna

    return optuna.pruners.HyperbandPruner(min_resource=FIRST_RUNG_STEP,
                                          max_resource=FIRST_RUNG_STEP * factor,
                                          reduction_factor=factor)


def make_pruner(search: DictConfig) -> optuna.pruners.BasePruner:
    """The Optuna pruner ``search.pruner`` names (rung 0 is step 1, the full trial step
    1 / fidelity rounded)."""
    kind = str(search.pruner)
    if kind not in PRUNERS or PRUNERS[kind] is None:
        raise ValueError(f"search.pruner: no pruner {kind!r} to build; valid choices: "
                         f"{', '.join(n for n in PRUNERS.names() if PRUNERS[n] is not None)}")
    return PRUNERS[kind](search, max(2, round(1.0 / float(search.fidelity))))


def open_rung_study(storage, name: str, search: DictConfig) -> optuna.Study:
    """The rung study of ``name`` (created when absent). Its sampler is never asked for
    parameters: the twins carry none."""
    import optuna

    return optuna.create_study(storage=storage, study_name=rung_study_name(name),
                               direction="maximize", pruner=make_pruner(search),
                               sampler=optuna.samplers.RandomSampler(seed=0),
                               load_if_exists=True)


def rung0_budgets(search: DictConfig) -> dict[str, float]:
    """The budgets rung 0 settles (evaluation/rungs.py ``FIXED_TEXT_BUDGETS``, those set):
    sent with every rung-0 request, so that an edit over one is not judged."""
    return {name: float(search[f"max_{name}"]) for name in FIXED_TEXT_BUDGETS
            if search.get(f"max_{name}") is not None}
