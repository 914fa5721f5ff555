"""Distributed sweeps: Optuna studies per (model, value, method) on Ray model replicas.

Stages, one file each: ``plan`` (config checks, models, study keys), ``studies``
(one Optuna study per key, constraints, trial records), ``storage`` (storage URLs and
every use of Optuna internals, each with a public-API fallback), ``samplers`` (the
sampler registry), ``cluster`` (Ray, replicas, statistics once per
model), ``replica`` (the Ray actor hosting a model shard),
``worker`` (the trial function on the actors), ``scheduler`` (the ask/tell driver),
``front`` (feasibility, Pareto fronts, the best-edit rule and trials rows, on plain data:
shared with the report), ``outputs`` (trials.csv, pareto.json, best_edits.json),
``tracking`` (W&B and the other loggers), ``warm`` (the first trials of fresh studies) and ``run``
(``task=sweep``).

What a trial searches and how it becomes an edit: :mod:`neva_sweep.methods`. The driver's
modules (and Ray) load on first use of the names below, so the report can use ``front``
without them.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..methods import METHODS, Method  # re-exported: plug-ins written for 0.1 import them here

_LAZY = {"ConfigError": "plan", "make_plan": "plan", "Outcome": "scheduler",
         "Scheduler": "scheduler", "SweepResult": "run", "SweepFailed": "run",
         "run_sweep": "run",
         "best_edit_spec": "outputs", "load_best_edit": "outputs"}

__all__ = ["METHODS", "ConfigError", "Method", "Outcome", "Scheduler", "SweepFailed",
           "SweepResult",
           "best_edit_spec", "load_best_edit", "make_plan", "run_sweep"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
