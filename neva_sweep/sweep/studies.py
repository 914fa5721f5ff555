"""Optuna studies: one per (model, value, method), all in one storage.

Trials are driven with ask/tell by the scheduler. A finished trial carries every metric
of the schema (:data:`neva_sweep.evaluation.metrics.METRICS`: ``alignment``, ``nlr``,
``csr_edited``,
``kl``, ...) as user attributes, plus ``ci``, ``judge``, ``params``, ``replica`` and
``duration_s``; a failed one carries ``error``. The objective values are the configured
metrics (``search.objectives``); the constraints (each budgeted metric against its
``search.max_<metric>``) are set on the trial before it is told
(``Trial.set_constraint``), where every Optuna sampler reads them.
"""

from __future__ import annotations

import math
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Any

import optuna
from omegaconf import DictConfig
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from ..evaluation.metrics import METRICS
from . import pruning
from .front import budgets, constraint_values
from .lock import NoLock, RunLock
from .plan import JOURNAL, StudyKey

TEST_ATTR = "test:{trial}"  # study user attribute: a chosen trial's held-out score
TEST_COLUMNS = ("alignment", "nlr", "nglr", "kl", "suppression", "z")  # test_<name> columns
STALE_ERROR = "stale: the driver stopped before this trial finished (marked FAIL on resume)"


def open_storage(url: str) -> BaseStorage:
    """The storage at ``url`` (as :func:`~.plan.storage_url` returns it).

    ``journal:///path``: Optuna's journal file (append-only, with its own lock file
    ``<path>.lock``; safe on NFS and Lustre, where SQLite's locking is not). Anything else
    is an SQLAlchemy URL; SQLite waits for locks instead of failing at once.
    """
    if url.startswith(JOURNAL):
        return JournalStorage(JournalFileBackend(url.removeprefix(JOURNAL)))
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return RDBStorage(url, engine_kwargs=kwargs)


def make_sampler(search: DictConfig, seed: int) -> optuna.samplers.BaseSampler:
    """The configured sampler; all of them read the trials' constraints (set_constraint)."""
    if search.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=search.population_size, seed=seed)
    if search.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=search.n_startup_trials)
    # constant_liar: trials asked but not yet told (batches, parallel replicas) count as
    # bad results, so parallel asks spread out instead of piling on one point.
    # group: polarity is conditional (methods.polarities_for); group=True models each
    # set of co-occurring parameters jointly instead of falling back to independent TPE.
    with warnings.catch_warnings():  # multivariate, group: experimental, stable since 2.2/2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(multivariate=True, group=True, constant_liar=True,
                                          seed=seed, n_startup_trials=search.n_startup_trials)


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
    best_alignment: float | None = None
    stale: list[int] = field(default_factory=list)  # trial numbers failed as stale on open
    stopped: str | None = None  # why no more trials are asked in this run (None: not stopped)
    rungs: optuna.Study | None = None  # the rung study when pruning (sweep/pruning.py)
    space: Any = None  # the searched space when calibrated (sweep/calibrate.py); None: search.space

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
        state = StudyState(key, study, int(search.n_trials), int(max_failures))
        state.complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        state.pruned = len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))
        if pruning.enabled(search):
            state.rungs = pruning.open_rung_study(storage, name, search)
        state.best_alignment = best_alignment(study)
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
        s.stale = fail_stale(s.study)
        if s.rungs is not None:
            fail_stale(s.rungs)
    return sum(len(s.stale) for s in states)


def fail_stale(study: optuna.Study) -> list[int]:
    """Mark RUNNING trials FAIL (one driver per storage: they belong to a dead driver)."""
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        # Storage API: a Trial object for another process's trial needs its internal id.
        study._storage.set_trial_user_attr(t._trial_id, "error", STALE_ERROR)
        study.tell(t.number, state=TrialState.FAIL)
    return [t.number for t in stale]


def best_alignment(study: optuna.Study) -> float | None:
    values = [t.user_attrs.get("alignment") for t in
              study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    values = [v for v in values if v is not None]
    return max(values) if values else None


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


def set_user_attrs(trial: optuna.Trial, attrs: dict, constraints: dict | None = None) -> None:
    """``trial.set_user_attr(k, v)`` for every item of ``attrs`` and
    ``trial.set_constraint(k, v)`` for every item of ``constraints``, in one storage write
    where the storage allows it: one transaction for SQL storages, one appended (and
    fsynced) block for the journal file. One call per attribute costs a commit (an fsync)
    each, and a finished trial has some twenty: with hundreds of replicas those, not
    Optuna's sampling, limit the driver. Other storages, or an Optuna whose internals
    differ, take the public route, one call per attribute."""
    constraints = constraints or {}
    storage = getattr(trial.storage, "_backend", trial.storage)  # RDB behind Optuna's cache
    write = (_rdb_write if isinstance(storage, RDBStorage) else
             _journal_write if isinstance(storage, JournalStorage) else None)
    if write is not None and (attrs or constraints):
        try:
            system = _constraint_attrs(trial, constraints)
            write(storage, trial._trial_id, attrs, system)
        except (AttributeError, ImportError, _PublicRoute):  # nothing written: public route
            pass
        else:  # the Trial's own copy, as set_user_attr and set_constraint keep it
            trial._cached_frozen_trial.user_attrs.update(attrs)
            trial._cached_frozen_trial.system_attrs.update(system)
            return
    for k, v in constraints.items():
        trial.set_constraint(k, v)
    for k, v in attrs.items():
        trial.set_user_attr(k, v)


class _PublicRoute(Exception):
    """A case the public calls handle themselves (their errors and warnings)."""


def _constraint_attrs(trial: optuna.Trial, constraints: dict) -> dict:
    """The system attributes ``Trial.set_constraint`` writes."""
    from optuna.trial._trial import _CONSTRAINTS_KEY

    out = {}
    for k, v in constraints.items():
        key = f"{_CONSTRAINTS_KEY}:{k}"
        # Not a finite float (set_constraint raises) or set already (it warns, ignores).
        if (not isinstance(v, int | float) or math.isnan(v)
                or key in trial._cached_frozen_trial.system_attrs):
            raise _PublicRoute(k)
        out[key] = float(v)
    return out


def _rdb_write(storage: RDBStorage, trial_id: int, attrs: dict, system: dict) -> None:
    """What ``RDBStorage.set_trial_user_attr`` (and ``_system_attr``) do per key, in one
    transaction."""
    from optuna.storages._rdb.models import TrialSystemAttributeModel, TrialUserAttributeModel
    from optuna.storages._rdb.storage import _create_scoped_session

    with _create_scoped_session(storage.scoped_session, True) as session:
        for model, items in ((TrialSystemAttributeModel, system),
                             (TrialUserAttributeModel, attrs)):
            for k, v in items.items():
                storage._set_trial_attr_without_commit(session, model, trial_id, k, v)


def _journal_write(storage: JournalStorage, trial_id: int, attrs: dict, system: dict) -> None:
    """The log lines ``JournalStorage.set_trial_user_attr`` (and ``_system_attr``) append
    per key, appended together (one lock, one fsync); replaying them raises, as one call
    does, if the trial is finished already."""
    from optuna.storages.journal._storage import JournalOperation

    op = JournalOperation
    with storage._thread_lock:
        worker_id = storage._replay_result.worker_id
        logs = [{"op_code": op.SET_TRIAL_SYSTEM_ATTR, "system_attr": {k: v}}
                for k, v in system.items()]
        logs += [{"op_code": op.SET_TRIAL_USER_ATTR, "user_attr": {k: v}}
                 for k, v in attrs.items()]
        storage._backend.append_logs([{**log, "worker_id": worker_id, "trial_id": trial_id}
                                      for log in logs])
        storage._sync_with_backend()


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
