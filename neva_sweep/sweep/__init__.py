"""Distributed sweeps: Optuna studies per (model, value, method) on Ray model replicas.

Stages, one file each: ``plan`` (config checks, models, study keys), ``methods``
(what a trial searches and how it becomes an edit), ``studies`` (Optuna storage,
samplers, constraints), ``cluster`` (Ray, replicas, statistics once per model),
``worker`` (the trial function on the actors), ``scheduler`` (the ask/tell driver),
``outputs`` (trials.csv, pareto.json, best_edits.json), ``logging`` (W&B) and ``run``
(``task=sweep``).
"""

from . import baselines  # noqa: F401,I001  (registers random_neurons, caa and prompt)
from .methods import METHODS, Method
from .outputs import best_edit_spec, load_best_edit
from .plan import ConfigError, make_plan
from .run import SweepResult, run_sweep
from .scheduler import Outcome, Scheduler

__all__ = ["METHODS", "ConfigError", "Method", "Outcome", "Scheduler", "SweepResult",
           "best_edit_spec", "load_best_edit", "make_plan", "run_sweep"]
