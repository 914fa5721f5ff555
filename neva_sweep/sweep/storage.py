"""The sweep's Optuna storages, and its one door to Optuna's internals.

:func:`open_storage` turns ``search.storage`` into an Optuna storage. The other functions
do what Optuna's public API does, faster or where the public API has no handle, through
Optuna's private names (``._`` modules and attributes); no other module of ``neva_sweep``
touches them (tests/unit/test_storage_contract.py checks it).

Each use of an internal sits in a function named ``_fast_*``, with the public route
beside it: the route taken when the storage is not a kind the fast path knows (InMemory,
another wrapper), or when the internal names are gone (``AttributeError`` or
``ImportError``: a newer Optuna). Nothing is written before the fast path has found every
name it needs, so falling back never writes twice, and the sweep keeps working, only
slower. pyproject pins ``optuna<6``: on a major upgrade, re-check the ``_fast_*``
functions here (the contract test runs every function on each storage, fast and public).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial

from .plan import JOURNAL

__all__ = ["distribution_contains", "open_storage", "set_stale_user_attr", "set_user_attrs"]

_MOVED = (AttributeError, ImportError)  # what a renamed or removed Optuna internal raises
Writer = Callable[[Any, int, dict, dict], None]  # (storage, trial id, user attrs, system attrs)


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


# -- a finished trial's attributes, in one write ------------------------------------------------
def set_user_attrs(trial: optuna.Trial, attrs: dict, constraints: dict | None = None) -> None:
    """``trial.set_user_attr(k, v)`` for every item of ``attrs`` and
    ``trial.set_constraint(k, v)`` for every item of ``constraints``, in one storage write
    where the storage allows it: one transaction for SQL storages, one appended (and
    fsynced) block for the journal file.

    Why the internals: one public call per attribute costs a commit (an fsync) each, and a
    finished trial has some twenty; with hundreds of replicas those, not Optuna's sampling,
    limit the driver. Other storages, or an Optuna whose internals differ, take the public
    route, one call per attribute (same result, same errors).
    """
    constraints = constraints or {}
    if attrs or constraints:
        try:
            if _fast_set_user_attrs(trial, attrs, constraints):
                return
        except _MOVED:  # nothing written: the public route below
            pass
    for k, v in constraints.items():
        trial.set_constraint(k, v)
    for k, v in attrs.items():
        trial.set_user_attr(k, v)


def _fast_set_user_attrs(trial: optuna.Trial, attrs: dict, constraints: dict) -> bool:
    """:func:`set_user_attrs` in one write; False (nothing written) where the public
    calls should do it. Internals: ``Trial._trial_id``, ``Trial._cached_frozen_trial``
    (the Trial's own copy of its attributes, which ``set_user_attr`` and
    ``set_constraint`` update too) and those of :func:`_constraint_attrs` and the writers."""
    found = _fast_writer(trial.storage)
    if found is None:
        return False
    cached = trial._cached_frozen_trial
    system = _constraint_attrs(cached, constraints)
    if system is None:
        return False
    storage, write = found
    write(storage, trial._trial_id, attrs, system)
    cached.user_attrs.update(attrs)
    cached.system_attrs.update(system)
    return True


def _fast_writer(storage: BaseStorage) -> tuple[BaseStorage, Writer] | None:
    """(the storage to write to, its one-write function), or None for other storages.

    Optuna wraps an RDBStorage in its ``_CachedStorage`` (``._backend``), whose attribute
    writes go straight to the RDBStorage; a JournalStorage's own ``._backend`` is its file.
    """
    if isinstance(storage, JournalStorage):
        return storage, _journal_write
    inner = getattr(storage, "_backend", storage)
    return (inner, _rdb_write) if isinstance(inner, RDBStorage) else None


def _constraint_attrs(cached: FrozenTrial, constraints: dict) -> dict | None:
    """The system attributes ``Trial.set_constraint`` writes (``_CONSTRAINTS_KEY``), or
    None where a constraint is one the public call handles itself: not a finite float
    (``set_constraint`` raises) or set already (it warns and ignores it)."""
    from optuna.trial._trial import _CONSTRAINTS_KEY

    out = {}
    for k, v in constraints.items():
        key = f"{_CONSTRAINTS_KEY}:{k}"
        if not isinstance(v, int | float) or math.isnan(v) or key in cached.system_attrs:
            return None
        out[key] = float(v)
    return out


def _rdb_write(storage: RDBStorage, trial_id: int, attrs: dict, system: dict) -> None:
    """What ``RDBStorage.set_trial_user_attr`` (and ``_system_attr``) do per key, in one
    transaction (its ``_create_scoped_session``, ``_set_trial_attr_without_commit`` and
    ORM models; each call still checks that the trial is not finished)."""
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
    does, if the trial is finished already. Internals: ``JournalOperation``, the storage's
    ``_thread_lock``, ``_replay_result``, ``_backend`` and ``_sync_with_backend``."""
    from optuna.storages.journal._storage import JournalOperation

    op = JournalOperation
    with storage._thread_lock:
        worker_id = storage._replay_result.worker_id
        backend, sync = storage._backend, storage._sync_with_backend  # all found: then write
        logs = [{"op_code": op.SET_TRIAL_SYSTEM_ATTR, "system_attr": {k: v}}
                for k, v in system.items()]
        logs += [{"op_code": op.SET_TRIAL_USER_ATTR, "user_attr": {k: v}}
                 for k, v in attrs.items()]
        backend.append_logs([{**log, "worker_id": worker_id, "trial_id": trial_id}
                             for log in logs])
        sync()


# -- a user attribute of another process's trial ----------------------------------------------
def set_stale_user_attr(study: optuna.Study, trial: FrozenTrial, key: str, value: Any,
                        storage: BaseStorage | None = None) -> None:
    """``trial.set_user_attr(key, value)`` for a trial this process holds no ``Trial``
    for: a FrozenTrial read from the storage (a dead driver's RUNNING trial).

    Why the internals: the public API has no handle on another process's trial; the
    storage API writes to it by its internal id, which ``Study._storage`` and
    ``FrozenTrial._trial_id`` give. The public route finds the id from the study's name
    and the trial's number through ``storage`` (the one the study was opened in), two
    more reads.
    """
    try:
        target, trial_id = _fast_trial_id(study, trial)
    except _MOVED:
        if storage is None:
            raise RuntimeError(f"study {study.study_name!r}: this Optuna has no Study._storage "
                               "or FrozenTrial._trial_id; pass the storage the study was "
                               "opened in") from None
        study_id = storage.get_study_id_from_name(study.study_name)
        target = storage
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
    target.set_trial_user_attr(trial_id, key, value)


def _fast_trial_id(study: optuna.Study, trial: FrozenTrial) -> tuple[BaseStorage, int]:
    """The study's storage and the trial's id there (``_storage``, ``_trial_id``)."""
    return study._storage, trial._trial_id


def enqueued_params(study: optuna.Study, trial: optuna.Trial) -> dict | None:
    """The parameters ``trial`` (just asked) was enqueued with by ``study.enqueue_trial``
    (a warm start, sweep/warm.py); None for a sampled trial.

    Optuna marks such a trial with the ``fixed_params`` system attribute and exposes no
    public reader of a live trial's system attributes, hence the storage call."""
    attrs = study._storage.get_trial_system_attrs(trial._trial_id)
    return attrs.get("fixed_params")


# -- search spaces ----------------------------------------------------------------------------
def distribution_contains(dist: BaseDistribution, value: Any) -> bool:
    """Whether ``value`` (a parameter's external value) can be sampled from ``dist``:
    inside its range and on its step, or among its choices. Raises ``ValueError`` where
    ``dist.to_internal_repr`` does (a value of the wrong type, a choice not among them).

    Why the internals: Optuna's own test is ``BaseDistribution._contains``. The public
    route repeats it from the distributions' public fields; a distribution it does not
    know contains nothing (a warm start skips a value rather than guess).
    """
    internal = dist.to_internal_repr(value)
    try:
        return _fast_contains(dist, internal)
    except _MOVED:
        pass
    if isinstance(dist, CategoricalDistribution):
        return 0 <= int(internal) < len(dist.choices)
    if isinstance(dist, IntDistribution):
        return dist.low <= internal <= dist.high and (internal - dist.low) % dist.step == 0
    if isinstance(dist, FloatDistribution):
        if dist.step is None:
            return dist.low <= internal <= dist.high
        k = (internal - dist.low) / dist.step
        return dist.low <= internal <= dist.high and abs(k - round(k)) < 1.0e-8
    return False


def _fast_contains(dist: BaseDistribution, internal: float) -> bool:
    """``dist._contains`` on the internal representation."""
    return dist._contains(internal)
