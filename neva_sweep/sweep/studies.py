"""Optuna studies: one per (model, value, method), all in one storage.

Trials are driven with ask/tell by the scheduler. A finished trial carries every metric
of the schema (:data:`neva_sweep.evaluation.metrics.METRICS`: ``alignment``, ``nlr``,
``csr_edited``,
``kl``, ...) as user attributes, plus ``ci``, ``judge``, ``params``, ``replica`` and
``duration_s``; a failed one carries ``error``. The objective values are the configured
metrics (``search.objectives``); the constraints (each budgeted metric against its
``search.max_<metric>``) are set on the trial before it is told
(``Trial.set_constraint``), where every Optuna sampler reads them.

The storages (``search.storage``) and every use of Optuna's internals are in
:mod:`.storage`; the samplers (``search.sampler``) in :mod:`.samplers`.
"""

from __future__ import annotations

import math
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Any

import optuna
from omegaconf import DictConfig
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from ..evaluation.metrics import METRICS
from . import pruning
from .front import budgets, constraint_values, is_feasible
from .lock import NoLock, RunLock
from .plan import StudyKey
from .samplers import make_sampler
from .storage import set_stale_user_attr, set_user_attrs

TEST_ATTR = "test:{trial}"  # study user attribute: a chosen trial's held-out score
TEST_COLUMNS = ("alignment", "nlr", "nglr", "kl", "suppression", "z")  # test_<name> columns
STALE_ERROR = "stale: the driver stopped before this trial finished (marked FAIL on resume)"


def study_seed(seed: int, name: str) -> int:
    """A per-study seed, so studies do not all draw the same first trials."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**31


@dataclass
class StudyState:
    """A study and the scheduler's bookkeeping for this run of the driver."""

    key: StudyKey
    study: optuna.Study
    target: int  # finished trials wanted (COMPLETE or PRUNED)
    max_failures: int
    complete: int = 0  # COMPLETE in storage (all runs)
    pruned: int = 0  # PRUNED in storage (all runs)
    running: int = 0  # asked in this run, not yet told
    failed: int = 0  # FAIL in this run
    best_alignment: float | None = None  # the best within the budgets (best_alignment)
    stale: list[int] = field(default_factory=list)  # trial numbers failed as stale on open
    stopped: str | None = None  # why no more trials are asked in this run (None: not stopped)
    rungs: optuna.Study | None = None  # the rung study when pruning (sweep/pruning.py)
    space: Any = None  # the searched space when calibrated (sweep/calibrate.py); None: search.space
    # the study's calibration when its strength is searched relative to the budget's edge
    # (sweep/calibrate.py, edge_dose); None: the strength is searched as it is
    edge: dict | None = None
    storage: BaseStorage | None = None  # the storage open_studies opened the study in

    @property
    def missing(self) -> int:
        return max(0, self.target - self.complete - self.pruned)

    def wants_more(self) -> bool:
        """Whether asking another trial is useful now."""
        return (self.stopped is None and self.complete + self.pruned + self.running < self.target
                and self.failed < self.max_failures)


def open_studies(keys: list[StudyKey], storage: BaseStorage, search: DictConfig
                 ) -> list[StudyState]:
    """Create or load every study. Their RUNNING trials are left alone: only the driver
    holding the run's lock may take them for a dead driver's (:func:`fail_stale_trials`)."""
    directions = list(search.objectives.values())
    max_failures = search.n_trials if search.max_failures is None else search.max_failures
    states = []
    for key in keys:
        name = key.name(search.study_prefix)
        study = optuna.create_study(storage=storage, study_name=name, directions=directions,
                                    sampler=make_sampler(search, study_seed(search.seed, name)),
                                    load_if_exists=True)
        _check_directions(study, directions, name)
        with warnings.catch_warnings():  # experimental since Optuna 3.2, still stable
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(search.objectives))
        for attr, v in (("model", key.model), ("value", key.value), ("method", key.method)):
            study.set_user_attr(attr, v)
        state = StudyState(key, study, int(search.n_trials), int(max_failures), storage=storage)
        state.complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        state.pruned = len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))
        if pruning.enabled(search):
            state.rungs = pruning.open_rung_study(storage, name, search)
        state.best_alignment = best_alignment(study, budgets(search))
        states.append(state)
    return states


def _check_directions(study: optuna.Study, directions: list[str], name: str) -> None:
    have = [d.name.lower() for d in study.directions]
    if have != directions:
        raise ValueError(f"search.objectives: study {name!r} in the storage has directions "
                         f"{have}, the config asks {directions}; use another run directory, "
                         "search.storage or search.study_prefix")


def fail_stale_trials(states: list[StudyState], lock: RunLock | NoLock) -> int:
    """Mark every study's RUNNING trials FAIL (``state.stale``); returns how many.

    Only the holder of the run's lock may: without it, the RUNNING trials could be a live
    driver's, and failing them would corrupt its studies.
    """
    if not lock.held:
        raise RuntimeError(f"the run's lock {lock.path} is not held by this driver; "
                           "take it (lock.run_lock(storage)) before failing stale trials")
    for s in states:
        s.stale = fail_stale(s.study, s.storage)
        if s.rungs is not None:
            fail_stale(s.rungs, s.storage)
    return sum(len(s.stale) for s in states)


def fail_stale(study: optuna.Study, storage: BaseStorage | None = None) -> list[int]:
    """Mark RUNNING trials FAIL (one driver per storage: they belong to a dead driver);
    ``storage``: the one the study was opened in (see :func:`.storage.set_stale_user_attr`).

    A stale warm start (an enqueued trial, sweep/warm.py) is enqueued again: the starts
    are the search's floor, and a kill must not cost one."""
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        set_stale_user_attr(study, t, "error", STALE_ERROR, storage)
        study.tell(t.number, state=TrialState.FAIL)
        if t.system_attrs.get("fixed_params"):
            study.enqueue_trial(t.system_attrs["fixed_params"])
    return [t.number for t in stale]


def best_feasible_trial(study: optuna.Study, limits: dict[str, float]
                        ) -> optuna.trial.FrozenTrial | None:
    """The study's COMPLETE trial of highest alignment within ``limits`` (front.budgets of
    the search), or None: a trial over a capability budget is never the sweep's edit."""
    trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
              if t.user_attrs.get("alignment") is not None
              and is_feasible(t.user_attrs, limits)]
    return max(trials, key=lambda t: t.user_attrs["alignment"], default=None)


def best_alignment(study: optuna.Study, limits: dict[str, float]) -> float | None:
    """The alignment of :func:`best_feasible_trial` (what the bar and summary show)."""
    best = best_feasible_trial(study, limits)
    return None if best is None else best.user_attrs["alignment"]


def objective_values(metrics: dict, objectives: DictConfig) -> list[float]:
    """The trial's values in ``search.objectives`` order; raises on a non-finite one."""
    out = []
    for name in objectives:
        v = metrics.get(name)
        if v is None or not math.isfinite(float(v)):
            raise FloatingPointError(f"objective {name} is {v} (not a finite number)")
        out.append(float(v))
    return out


# Record keys copied to user attributes: every metric of the schema, its intervals, the judge.
ATTR_KEYS = (*METRICS, "ci", "judge")


def record_attrs(trial: optuna.Trial, metrics: dict, extra: dict, search: DictConfig) -> None:
    """User attributes and constraints of a finished trial (before it is told)."""
    attrs = {k: metrics[k] for k in ATTR_KEYS if k in metrics}
    set_user_attrs(trial, {**attrs, **extra},
                   constraint_values(metrics, budgets(search)))


def repeated_trial(study: optuna.Study, params: dict[str, Any]
                   ) -> optuna.trial.FrozenTrial | None:
    """The study's first COMPLETE trial whose searched parameters (Optuna's ``params``)
    equal ``params``, or None. A trial's evaluation is a deterministic function of the
    (value, method, parameters) it runs, so the scheduler tells such a repeat the earlier
    result instead of running it again: a finite space (the ``prompt`` method's three
    wordings) is then evaluated once per setting however many trials its study asks.
    PRUNED trials are not reused (they were judged on part of the rows only)."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.params == params and "alignment" in t.user_attrs:
            return t
    return None


def heldout_attr(trial: int) -> str:
    """The study user attribute holding trial ``trial``'s held-out score (a COMPLETE
    trial's own attributes can no longer be written, a study's can)."""
    return TEST_ATTR.format(trial=trial)


def heldout_columns(test: dict | None) -> dict:
    """trials.csv's ``test_<metric>`` cells of a held-out score (None, a blank cell,
    without one).

    >>> [heldout_columns(t)["test_alignment"] for t in (None, {"alignment": 0.1})]
    [None, 0.1]
    """
    test = test or {}
    return {f"test_{k}": test.get(k) for k in TEST_COLUMNS}
