"""Stage 3 of the report: tables (written as CSV, shown in the HTML) from a :class:`Run`.

- ``chosen_edits.csv``: per (model, value, method) the chosen edit, its parameters, every
  metric and the bootstrap intervals the sweep recorded (``<metric>_ci_lo``/``_ci_hi``);
  studies without an edit are listed with the reason.
- ``model_comparison.csv`` and ``model_comparison_by_value.csv`` (several models only).
- ``steered_replies.csv``: the chosen edits' steered replies (prompt, unedited reply,
  edited reply) from best_edits.json's ``samples``; the page shows the first
  :data:`SAMPLES_SHOWN` of each edit.
- ``studies.csv``: trial counts by state, feasible trials, front size, best alignment and
  the last error of every study.

In a comparison of runs (``task=compare``) every table starts with a ``run`` column.
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..evaluation.metrics import scalar_metrics
from .load import Run, feasible, is_complete, num

PARAMS = ("sparsity", "magnitude", "rule", "score", "positions", "layer_window")
# From the metric schema: the chosen-edit table's metrics, and the headline ones among them
# (always shown; averaged in the model comparison).
METRICS = tuple(m.name for m in scalar_metrics() if m.report or m.headline)
SUMMARY = tuple(m.name for m in scalar_metrics() if m.headline)


@dataclass
class Table:
    id: str
    title: str
    intro: str
    columns: list[str]
    rows: list[list[Any]]  # raw values, as in the CSV
    csv: Path
    notes: list[str] = field(default_factory=list)
    ci: dict[str, str] = field(default_factory=dict)  # column -> its CI column prefix


def fmt(x: Any) -> str:
    """A cell for people: 3 decimals, scientific when tiny, '—' when missing.

    >>> fmt(0.12345), fmt(5e-4), fmt(None), fmt(3), fmt(True)
    ('0.123', '5.00e-04', '—', '3', 'yes')
    """
    if x is None or x == "":
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return f"{x:.2e}" if x != 0 and abs(x) < 1e-2 else f"{x:.3f}"
    return str(x)


def _write(path: Path, columns: list[str], rows: list[list[Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        w.writerows([["" if x is None else x for x in r] for r in rows])


HELDOUT = ("alignment", "z", "nlr", "nglr", "nglr_chance", "kl", "suppression")


Z_NULL = 2.0  # a chosen edit "beats its null" when its test z against dose-matched nulls >= this


def edit_warnings(e: dict) -> list[str]:
    """Why a chosen edit should not be read as steering toward its value (empty: no reason):
    alignment <= 0 where it was chosen, or, on the held-out test split, alignment <= 0 or a
    z-score against its dose-matched nulls below :data:`Z_NULL`.

    >>> edit_warnings({"alignment": 0.01, "test": {"alignment": 0.002, "z": 0.7}})
    ['does not beat its dose-matched nulls on the test split (z = 0.7 < 2)']
    """
    out = []
    a = e.get("alignment")
    if a is not None and a <= 0:
        out.append(f"alignment {a:+.4f} <= 0 on the search split: it moves the target down")
    test = e.get("test") or {}
    if test.get("alignment") is not None and test["alignment"] <= 0:
        out.append(f"test alignment {test['alignment']:+.4f} <= 0")
    elif test.get("z") is not None and test["z"] < Z_NULL:
        out.append(f"does not beat its dose-matched nulls on the test split "
                   f"(z = {test['z']:.1f} < {Z_NULL:g})")
    return out


def model_columns(run: Run) -> list[str]:
    """The tables' leading columns naming a model: ``model``, and ``run`` before it when
    the report compares several runs (``task=compare``)."""
    return ["run", "model"] if run.origins else ["model"]


def model_cells(run: Run, model: str) -> list[str]:
    """The cells of :func:`model_columns` for ``model`` (a merged label in a comparison)."""
    return list(run.origins[model]) if run.origins else [model]


def chosen_warnings(run: Run) -> list[str]:
    """One line per chosen edit with :func:`edit_warnings`, for the page's Warnings."""
    return [f"{'/'.join(k)}: {'; '.join(w)}" for k in run.keys() if k in run.chosen
            for w in [edit_warnings(run.chosen[k])] if w]


def chosen_table(run: Run, out: Path) -> Table:
    edits = [run.chosen[k] for k in run.keys() if k in run.chosen]
    params = [p for p in PARAMS if any(p in e["params"] for e in edits)]
    params += sorted({p for e in edits for p in e["params"]} - set(params))
    columns = [*model_columns(run), "value", "method", "trial", *params]
    ci: dict[str, str] = {}
    # the headline metrics always; the others (perplexity, ...) when some edit has them
    metrics = [m for m in METRICS if m in SUMMARY or any(e.get(m) is not None for e in edits)]
    for m in metrics:
        columns.append(m)
        if any(isinstance(e["ci"].get(m), list | tuple) for e in edits):
            columns += [f"{m}_ci_lo", f"{m}_ci_hi"]
            ci[m] = m
    # held-out scores on the test split (sweep/rescore.py), when the sweep made them
    tests = [c for c in HELDOUT if any((e.get("test") or {}).get(c) is not None
                                       for e in edits)]
    columns += [f"test_{c}" for c in tests]
    columns += ["chosen_by", "note"]
    rows = []
    for k in run.keys():
        e = run.chosen.get(k)
        study = [*model_cells(run, k[0]), *k[1:]]
        if e is None:
            reason = run.no_edit.get(k, "no chosen edit")
            rows.append([*study, *[None] * (len(columns) - len(study) - 1), reason])
            continue
        row = [*study, e.get("trial"), *[e["params"].get(p) for p in params]]
        for m in metrics:
            row.append(e.get(m))
            if m in ci:
                lo_hi = e["ci"].get(m)
                row += list(lo_hi)[:2] if isinstance(lo_hi, list | tuple) else [None, None]
        row += [(e.get("test") or {}).get(c) for c in tests]
        row += [e.get("source"), "; ".join(edit_warnings(e)) or None]
        rows.append(row)
    notes = [] if edits else ["no chosen edits (no study has a feasible COMPLETE trial)."]
    if edits and not ci:
        notes.append("no confidence intervals recorded (best_edits.json without 'ci', or the "
                     "edits were chosen from trials.csv).")
    path = out / "chosen_edits.csv"
    _write(path, columns, rows)
    return Table("chosen", "Chosen edits",
                 "The chosen edit of each (model, value, method) study: parameters, alignment "
                 "(ΔCSR of the target), leakage ratios (NLR, NGLR, CWL), capability cost "
                 "(accuracy drop, KL) and 95% bootstrap intervals where recorded, all on the "
                 "search split the edit was chosen on; test_* columns: the same edit "
                 "re-scored on the held-out test split, with z against dose-matched nulls.",
                 columns, rows, path, notes, ci)


def _mean(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def comparison_tables(run: Run, out: Path) -> list[Table]:
    """Model comparison tables; none when the sweep has a single model."""
    if len(run.models) < 2:
        return []
    columns = [*model_columns(run), "method", "values", "edits",
               *(f"mean_{m}" for m in SUMMARY), "max_accuracy_drop"]
    rows = []
    for model in run.models:
        for method in run.methods:
            keys = [k for k in run.keys() if k[0] == model and k[2] == method]
            if not keys:
                continue
            edits = [run.chosen[k] for k in keys if k in run.chosen]
            drops = [num(e.get("accuracy_drop")) for e in edits]
            rows.append([*model_cells(run, model), method, len(keys), len(edits),
                         *(_mean([num(e.get(m)) for e in edits]) for m in SUMMARY),
                         max((d for d in drops if d is not None), default=None)])
    path = out / "model_comparison.csv"
    _write(path, columns, rows)
    overall = Table("models", "Model comparison",
                    "Per model and method: how many values have a chosen edit, and the mean "
                    "metrics of those edits.", columns, rows, path)
    by_value_cols = ["value", "method", *(f"{m}:{k}" for m in run.models
                                          for k in ("alignment", "nlr", "accuracy_drop"))]
    by_value = []
    for value in run.values:
        for method in run.methods:
            cells = [num(run.chosen.get((m, value, method), {}).get(k)) for m in run.models
                     for k in ("alignment", "nlr", "accuracy_drop")]
            if any(c is not None for c in cells):
                by_value.append([value, method, *cells])
    path2 = out / "model_comparison_by_value.csv"
    _write(path2, by_value_cols, by_value)
    return [overall, Table("models_by_value", "Model comparison by value",
                           "The chosen edits' alignment, NLR and accuracy drop, side by side "
                           "per model.", by_value_cols, by_value, path2)]


SAMPLES_SHOWN = 3  # steered replies per chosen edit on the page (the CSV has all)


def samples_table(run: Run, out: Path) -> Table:
    """The chosen edits' steered replies, unedited beside edited: what an edit does to text,
    which no score shows. Read from best_edits.json (``samples`` of each entry); the report
    runs no model, so a sweep that saved none gets a note."""
    columns = [*model_columns(run), "value", "method", "prompt", "unedited", "edited"]
    rows, shown = [], []
    for k in run.keys():
        samples = (run.chosen.get(k) or {}).get("samples") or []
        for i, s in enumerate(samples):
            row = [*model_cells(run, k[0]), *k[1:], s["prompt"], s["unedited"], s["edited"]]
            rows.append(row)
            if i < SAMPLES_SHOWN:
                shown.append(row)
    path = out / "steered_replies.csv"
    _write(path, columns, rows)
    notes = [] if rows or not run.chosen else [
        "no steered replies: the chosen edits in best_edits.json carry no 'samples' "
        "([{prompt, unedited, edited}]); the report runs no model to make them."]
    return Table("samples", "Steered replies",
                 f"Up to {SAMPLES_SHOWN} replies per chosen edit (the CSV has all of them): "
                 "the prompt, the unedited model's reply and the edited model's.",
                 columns, shown, path, notes)


def studies_table(run: Run, out: Path) -> Table:
    columns = [*model_columns(run), "value", "method", "trials", "complete", "pruned",
               "failed", "other",
               "feasible", "pareto", "best_alignment", "median_duration_s", "last_error"]
    rows = []
    for k in run.keys():
        trials = run.trials(k)
        done = [r for r in trials if is_complete(r)]
        failed = [r for r in trials if r.get("state") == "FAIL"]
        pruned = [r for r in trials if r.get("state") == "PRUNED"]
        within = [r for r in done if feasible(r, run.constraints)]  # a chosen edit's pool
        aligns = [a for r in within if (a := num(r.get("alignment"))) is not None]
        durations = [d for r in done if (d := num(r.get("duration_s"))) is not None]
        errors = [str(r["error"]) for r in sorted(failed, key=lambda r: r["trial"])
                  if r.get("error")]  # a pruned trial's reason is not an error
        rows.append([*model_cells(run, k[0]), *k[1:], len(trials), len(done), len(pruned),
                     len(failed),
                     len(trials) - len(done) - len(pruned) - len(failed),
                     len(within),
                     len(run.fronts.get(k, [])), max(aligns, default=None),
                     statistics.median(durations) if durations else None,
                     errors[-1][:300] if errors else None])
    path = out / "studies.csv"
    _write(path, columns, rows)
    notes = [] if rows else ["no studies found."]
    return Table("studies", "Studies",
                 "Every Optuna study: trials by state (PRUNED: stopped after the first rung "
                 "of a pruned sweep; other = RUNNING or WAITING), "
                 "trials within the budgets, Pareto front size, the best alignment within the "
                 "budgets and the last "
                 "error message.", columns, rows, path, notes)


def make_tables(run: Run, out: Path) -> list[Table]:
    """Every table, written as CSV under ``out``."""
    return [chosen_table(run, out), *comparison_tables(run, out), samples_table(run, out),
            studies_table(run, out)]
