"""The two rungs of a pruned trial, as the evaluator sees them (sweep/pruning.py decides
whether a trial goes on).

Rung 0 first measures the capability costs read on fixed texts (MC accuracy, KL on the
neutral texts and on the value-laden replies: :data:`FIXED_TEXT_BUDGETS`), in full and
cheapest first; an edit over one of their budgets is settled there, infeasible whatever
its scenarios say, and is not judged at all. The others are judged on an evenly spread
share (``search.fidelity``) of the rows the full trial judges. Rung 1 *continues* it: it judges
only the rows rung 0 did not, merges them with rung 0's in the full trial's order, and
takes rung 0's capability measures as they are (the same edit on the same texts gives
the same numbers). A trial that survives rung 0 therefore costs what an unpruned trial
costs, not rung 0 on top of a full evaluation.

A judge reads a subset of its rows through ``judge.subset(rows)`` (positions in
``range(judge.n_rows)``; forced_choice has both). A judge without them is read whole at
both rungs, and rung 1 evaluates in full.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .capability import spread
from .judges.base import Judge, Judgement

# The judgement's per-row arrays (Q, V) that rung 1 merges; ``replies`` are not carried
# (generating judges have no subset).
ROW_FIELDS = ("E", "raw", "hard")
# The capability measures of an edit that rung 1 takes from rung 0 (Evaluator._fixed_text
# and Evaluator._fluency).
CAPABILITY_KEYS = ("accuracy_edited", "accuracy_ci", "kl", "kl_value", "ppl_edited")
# The budgets (``search.max_<name>``) on measures read on the same texts at both rungs, in
# the order rung 0 measures them: KL on the neutral texts before KL on the value-laden
# replies, which costs about twice as much on SmolLM2 (1.9 s against 3.4 s an edit).
FIXED_TEXT_BUDGETS = ("accuracy_drop", "kl", "kl_value")


def over_budget(measures: Mapping[str, Any], budgets: Mapping[str, float]) -> str | None:
    """Why ``measures`` break one of ``budgets`` ({name: limit}), or None; a measure that
    is missing or not finite breaks nothing.

    >>> over_budget({"kl": 0.2, "accuracy_drop": None}, {"kl": 0.1, "accuracy_drop": 0.05})
    'kl 0.2 over the budget search.max_kl=0.1'
    >>> over_budget({"kl": 0.05}, {"kl": 0.1}) is None
    True
    """
    for name, limit in budgets.items():
        value = measures.get(name)
        if value is not None and math.isfinite(float(value)) and float(value) > float(limit):
            return f"{name} {float(value):.4g} over the budget search.max_{name}={limit:g}"
    return None


def first_rung_rows(n: int, fidelity: float) -> list[int]:
    """Positions among a trial's ``n`` judge rows that rung 0 reads: ``ceil(fidelity * n)``
    of them, evenly spread (the same for every trial).

    >>> first_rung_rows(24, 0.34)
    [0, 3, 6, 9, 12, 14, 17, 20, 23]
    >>> first_rung_rows(3, 0.1)
    [1]
    """
    if not 0 < fidelity <= 1:
        raise ValueError(f"search.fidelity: must be in (0, 1], got {fidelity}")
    k = max(1, math.ceil(fidelity * n))
    if k == 1:
        return [n // 2]
    return spread(list(range(n)), k, "search.fidelity")


def rest_rows(n: int, done: Sequence[int]) -> list[int]:
    """The positions of ``range(n)`` not in ``done``, in order.

    >>> rest_rows(5, [0, 3])
    [1, 2, 4]
    """
    skip = set(done)
    return [i for i in range(n) if i not in skip]


def splittable(judge: Judge) -> int | None:
    """How many rows ``judge`` reads, when it can read a subset of them
    (``judge.subset``); None when it cannot."""
    if callable(getattr(judge, "subset", None)) and getattr(judge, "n_rows", None) is not None:
        return int(judge.n_rows)
    return None


def carry(rows: Sequence[int], n: int, judgement: Judgement, capability: dict) -> dict:
    """What rung 1 needs of rung 0 (JSON-able: it travels through the driver): the rows
    judged (positions among ``n``), their per-row arrays and the capability measures."""
    out = {"rows": list(rows), "n": int(n),
           "capability": {k: capability.get(k) for k in CAPABILITY_KEYS}}
    for f in ROW_FIELDS:
        a = getattr(judgement, f)
        out[f] = None if a is None else np.asarray(a).tolist()
    return out


def merge(first: dict, rest: Sequence[int], judgement: Judgement) -> Judgement:
    """Rung 0's rows (``first``, from :func:`carry`) and the ``rest`` judged now
    (``judgement``, its rows in ``rest`` order) as one judgement in the full trial's row
    order. A field that only one side has is dropped (None)."""
    done, n = first["rows"], first["n"]
    if sorted([*done, *rest]) != list(range(n)):
        raise ValueError(f"rung 1: rows {list(rest)} do not complete rung 0's {done} to {n}")
    out = {}
    for f in ROW_FIELDS:
        a, b = first.get(f), getattr(judgement, f)
        if a is None or b is None:
            out[f] = None
            continue
        b = np.asarray(b)
        merged = np.empty((n, *b.shape[1:]), dtype=b.dtype)
        merged[done], merged[list(rest)] = np.asarray(a, dtype=b.dtype), b
        out[f] = merged
    return Judgement(E=out["E"], raw=out["raw"], hard=out["hard"])
