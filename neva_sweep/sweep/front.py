"""The sweep's rules on plain data: feasibility, Pareto fronts, the chosen edit, trials rows.

One implementation for the sweep's files (:mod:`neva_sweep.sweep.outputs`, reading the
Optuna storage) and for the report (:mod:`neva_sweep.report.load`, reading those files or
the storage), so the two always agree. Nothing here imports torch or Optuna: a trial is
read through the attributes every Optuna ``FrozenTrial`` has (``number``, ``state.name``,
``params``, ``user_attrs``, ``values``, ``datetime_start``, ``datetime_complete``), and
metrics are plain mappings (a trial's user attributes, a trials.csv row, an eval record).

- **Feasible**: every constrained metric within its budget. Budgets are the search
  config's ``max_<metric>`` entries for the metrics the schema lets be constraints
  (:func:`neva_sweep.evaluation.metrics.constraint_metrics`; ``search.max_accuracy_drop``,
  ``search.max_kl``, ...); a metric that was not measured constrains nothing.
- **Pareto front**: the items no other item dominates on ``search.objectives``.
- **Best edit**: among a study's feasible Pareto trials, the one with the highest
  alignment whose NLR is at most ``search.best_max_nlr`` (default 1: mean leakage into
  other values no larger than the gain on the target); if no Pareto trial is that clean,
  the one with the lowest NLR.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from ..config import SearchConfig
from ..evaluation.metrics import all_metrics, constraint_metrics, scalar_metrics
from ..values import VALUES

T = TypeVar("T")
Metrics = Mapping[str, Any]
BEST_RULE = ("highest alignment among the feasible Pareto trials with nlr <= best_max_nlr; "
             "if none, the feasible Pareto trial with the lowest nlr")
# search.objectives and search.best_max_nlr when a run's config lacks them (the report of
# an older run): the schema's defaults, declared once in neva_sweep/config.py
DEFAULT_OBJECTIVES: dict[str, str] = dict(SearchConfig().objectives)
DEFAULT_BEST_MAX_NLR: float = SearchConfig.best_max_nlr


def num(x: Any) -> float | None:
    """A finite float, or None for anything else (missing, text, NaN).

    >>> num("0.5"), num(None), num(float("nan")), num("add")
    (0.5, None, None, None)
    """
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _same(x: T) -> T:
    return x


# -- feasibility ---------------------------------------------------------------------------------
def constraint_settings(search: Mapping[str, Any]) -> dict[str, Any]:
    """The ``max_<metric>`` entries of a search config (as pareto.json records them).

    >>> constraint_settings({"max_kl": None, "max_accuracy_drop": 0.1, "max_failures": 3})
    {'max_accuracy_drop': 0.1, 'max_kl': None}
    """
    return {f"max_{m}": search.get(f"max_{m}") for m in constraint_metrics()
            if f"max_{m}" in search}


def budgets(search: Mapping[str, Any]) -> dict[str, float]:
    """``{metric: budget}`` of a search config or of pareto.json's ``constraints`` (None:
    unconstrained, left out).

    >>> budgets({"max_accuracy_drop": 0.1, "max_kl": None})
    {'accuracy_drop': 0.1}
    """
    return {k.removeprefix("max_"): float(b) for k, b in constraint_settings(search).items()
            if b is not None}


def constraint_values(metrics: Metrics, budgets: Mapping[str, float]) -> dict[str, float]:
    """Optuna constraints (<= 0 is feasible): each budgeted metric minus its budget.

    >>> constraint_values({"accuracy_drop": 0.3}, {"accuracy_drop": 0.1, "kl": 1.0})
    {'accuracy_drop': 0.19999999999999998, 'kl': -1.0}
    """
    return {k: (num(metrics.get(k)) or 0.0) - float(b) for k, b in budgets.items()}


def is_feasible(metrics: Metrics, budgets: Mapping[str, float]) -> bool:
    """Whether every budgeted metric is within its budget (unmeasured ones are)."""
    return all(c <= 0 for c in constraint_values(metrics, budgets).values())


def closest_misses(metrics: Sequence[Metrics], budgets: Mapping[str, float]) -> str:
    """Why no trial is feasible, said with numbers: per budget that every trial broke, the
    lowest value any reached against its budget.

    >>> closest_misses([{"kl": 0.6, "accuracy_drop": 0.0}, {"kl": 0.7}],
    ...                {"kl": 0.1, "accuracy_drop": 0.1})
    'lowest kl 0.6 > search.max_kl 0.1'
    """
    out = []
    for k, b in budgets.items():
        seen = [num(m.get(k)) or 0.0 for m in metrics]
        if seen and min(seen) > b:
            out.append(f"lowest {k} {min(seen):.3g} > search.max_{k} {b:g}")
    return ", ".join(out)


# -- Pareto front and the chosen edit -------------------------------------------------------------
def dominates(a: Sequence[float], b: Sequence[float], signs: Sequence[float]) -> bool:
    """Whether a is at least as good as b everywhere and better somewhere (signs: +1 = max).

    >>> dominates([0.5, 0.1], [0.4, 0.1], [1, -1]), dominates([0.5, 0.3], [0.4, 0.1], [1, -1])
    (True, False)
    """
    ge = all(s * x >= s * y for x, y, s in zip(a, b, signs))
    return ge and any(s * x > s * y for x, y, s in zip(a, b, signs))


def pareto_front(items: Sequence[T], objectives: Mapping[str, str],
                 metrics: Callable[[T], Metrics] = _same) -> list[T]:
    """The items no other item dominates on ``objectives`` (``{metric: direction}``), in
    their order; items with an objective unmeasured are left out.

    >>> rows = [{"trial": 0, "alignment": 0.2, "nlr": 0.5}, {"trial": 1, "alignment": 0.1,
    ...         "nlr": 0.9}, {"trial": 2, "alignment": 0.3, "nlr": 0.8}]
    >>> [r["trial"] for r in pareto_front(rows, DEFAULT_OBJECTIVES)]
    [0, 2]
    """
    signs = [1.0 if d == "maximize" else -1.0 for d in objectives.values()]
    points = []
    for item in items:
        m = metrics(item)
        p = [num(m.get(k)) for k in objectives]
        if all(x is not None for x in p):
            points.append((item, p))
    return [item for item, p in points
            if not any(dominates(q, p, signs) for other, q in points if other is not item)]


def choose_best(front: Sequence[T], max_nlr: float,
                metrics: Callable[[T], Metrics] = _same) -> T | None:
    """The chosen edit of a feasible Pareto front (see the module docstring); None if empty.

    >>> choose_best([{"alignment": 0.1, "nlr": 0.0}, {"alignment": 0.3, "nlr": 2.0}], 1.0)
    {'alignment': 0.1, 'nlr': 0.0}
    """
    measured = [x for x in front if num(metrics(x).get("alignment")) is not None]

    def nlr(x: T) -> float:
        v = num(metrics(x).get("nlr"))
        return math.inf if v is None else v

    clean = [x for x in measured if nlr(x) <= max_nlr]
    if clean:
        return max(clean, key=lambda x: num(metrics(x)["alignment"]))
    return min(measured, key=nlr) if measured else None


# -- trials.csv rows and pareto.json entries ------------------------------------------------------
def metric_fields(attrs: Metrics) -> dict[str, Any]:
    """A record's metrics as trials.csv columns: scalars by name, per-value metrics as
    ``<prefix><value>`` (missing ones empty)."""
    out: dict[str, Any] = {m.name: attrs.get(m.name) for m in scalar_metrics()}
    for m in all_metrics():
        if m.per_value and m.prefix is not None:
            d = attrs.get(m.name) or {}
            out.update({f"{m.prefix}{v}": d.get(v) for v in VALUES})
    return out


def per_value_columns() -> tuple[str, ...]:
    """The column prefixes of per-value metrics (``csr_``, ``csr_base_``)."""
    return tuple(m.prefix for m in all_metrics() if m.per_value and m.prefix is not None)


def trial_params(trial: Any) -> dict[str, Any]:
    """The method's parameters (as the scheduler recorded them, else Optuna's)."""
    return dict(trial.user_attrs.get("params") or trial.params)


def trial_row(key: Sequence[str], study: str, trial: Any,
              budgets: Mapping[str, float] | None) -> dict[str, Any]:
    """One trials.csv row of ``trial`` (an Optuna FrozenTrial) of study ``key`` =
    (model, value, method): bookkeeping, parameters under their own names, every metric,
    feasibility (None when not COMPLETE or ``budgets`` is None), duration, replica, error."""
    a = trial.user_attrs
    model, value, method = key
    complete = trial.state.name == "COMPLETE"
    row: dict[str, Any] = {"model": model, "value": value, "method": method, "study": study,
                           "trial": trial.number, "state": trial.state.name}
    row.update(trial_params(trial))
    for k, v in (a.get("raw") or {}).items():  # what a scaled strength came to
        row.setdefault(k, v)
    if a.get("edge_frac") is not None:  # the searched multiple of the budget dose
        row["edge_frac"] = a["edge_frac"]
    row["warm_start"] = bool(a.get("warm_start"))  # an enqueued start, not a sampled trial
    # the trial whose result a repeat of its parameters was told (never run again); None
    row["repeat_of"] = a.get("repeat_of")
    row.update(metric_fields(a))
    lo, hi = ((a.get("ci") or {}).get("alignment") or [None, None])[:2]
    row.update(alignment_ci_lo=lo, alignment_ci_hi=hi)  # 95% bootstrap interval
    start, end = trial.datetime_start, trial.datetime_complete
    row.update(feasible=is_feasible(a, budgets) if complete and budgets is not None else None,
               duration_s=a.get("duration_s"), replica=a.get("replica"),
               error=a.get("error") or a.get("pruned"),
               datetime_start=start.isoformat() if start else None,
               datetime_complete=end.isoformat() if end else None)
    return row


def trial_summary(trial: Any) -> dict[str, Any]:
    """A trial as pareto.json and best_edits.json describe it: number, parameters, objective
    values, scalar metrics, CSR per value and bootstrap intervals."""
    a = trial.user_attrs
    out = {"trial": trial.number, "params": trial_params(trial), "values": list(trial.values)}
    out.update({m.name: a.get(m.name) for m in scalar_metrics()})
    out.update({m.name: a.get(m.name) for m in all_metrics()
                if m.per_value and m.prefix is not None})
    out["ci"] = a.get("ci")
    return out
