"""The sweep report: a run directory -> ``report/index.html`` with figures and tables.

Stages, one file each: ``load`` (trials.csv or an Optuna storage, pareto.json,
best_edits.json, neuron maps, the Hydra config -> a :class:`Run` that lists what is
missing), ``params`` (per study of an Optuna storage: its searched parameters and their
fANOVA importances), ``figures`` (Pareto fronts, leakage matrices, value profiles, neuron
maps, parameter importances with parallel coordinates, optimisation history; PNG + SVG),
``tables`` (chosen edits, model comparison, steered replies, studies; CSV), ``html``
(one self-contained page) and ``build`` (:func:`build_report`).
``compare`` (:func:`compare_runs`, ``task=compare``) merges several runs into one report.
"""

from .build import build_report
from .compare import compare_runs
from .load import Run, load_run

__all__ = ["Run", "build_report", "compare_runs", "load_run"]
