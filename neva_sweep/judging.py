"""What every judge shares: the :class:`Judgement` record, the :data:`JUDGES` registry and
the query helpers, apart from the judges themselves (:mod:`neva_sweep.judges`) so that a
judge in its own module (:mod:`neva_sweep.classifier`) registers itself without importing
the module that imports it."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .data import DataError, Records
from .registry import Registry

JUDGES: Registry[type] = Registry("judge")


@dataclass
class Judgement:
    """One edit's judgement.

    E (Q, V): value expression, what the metrics read. ``raw`` (Q, V): the uncentred,
    unnormalised reading E came from (None = E itself); the mean change of ``raw`` over
    the ten values is the edit's ``acquiescence``. ``hard`` (Q, V): one-hot choices, for
    judges that pick one value per row. ``replies``: generated replies, for judges that
    generate.
    """

    E: np.ndarray
    replies: list[str] | None = None
    raw: np.ndarray | None = None
    hard: np.ndarray | None = None

    @property
    def reading(self) -> np.ndarray:
        return self.E if self.raw is None else self.raw


def split_sentences(text: str) -> list[str]:
    """The non-blank sentences of ``text`` (split after . ! ? and at line breaks)."""
    return [s for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip()]


def pick_queries(queries: Records, per_value: int | None) -> list[dict]:
    """The first ``per_value`` queries of each value (all when None), in file order."""
    if not queries.rows:
        raise DataError(f"{queries.path}: no queries (data.queries); the judge needs at least one")
    if per_value is None:
        return list(queries.rows)
    if per_value < 1:
        raise ValueError(f"judge.queries_per_value must be >= 1 or null; got {per_value}")
    seen: dict[str, int] = {}
    out = []
    for r in queries.rows:
        if seen.get(r["value"], 0) < per_value:
            seen[r["value"]] = seen.get(r["value"], 0) + 1
            out.append(r)
    return out
