"""Calibrated search ranges: where a method's edit reaches the capability budget.

Before a study's first trial, the actors of its model bisect the method's *dose* (its
scaled ``strength``, neva_sweep/methods/strength.py) at a reference setting of the other
parameters until the edit's mean KL(base || edited) on the trials' neutral texts equals the
budget (``search.max_kl``, or ``search.calibration.kl`` when that is unset). The study then
searches ``strength`` log-uniformly in ``[d* x span[0], d* x span[1]]`` around that dose
d*: a box that holds the feasible edge whatever the model, value and method, instead of a
hand-set box that holds it for some of them.

The result is stored as the study's user attribute ``calibration`` (the range of a
resumed study never moves) and in the run's cache directory
(``<cache_dir>/eval/calibration/``), keyed by model, statistics, capability and data
settings, value, method, budget and reference setting: a second sweep on the same model
does not repeat it.

The bisection (:func:`bisect_dose`) is in log dose: first it doubles (or halves) from the
start until the budget is bracketed, then halves the bracket ``steps`` times. KL grows
with the dose for every edit kind; a dose range that never reaches the budget (a dead
edit) or that exceeds it at the smallest dose tried is reported as unbracketed, with a
warning: the first keeps the configured box, the second is searched around the smallest
dose (sweep/calibration_pass.py).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..methods.base import METHODS, window_label

log = logging.getLogger(__name__)

MIN_DOSE, MAX_DOSE = 1e-4, 1e4  # the bracket search gives up outside these
# Methods with a strength to calibrate (registered names; an alias counts as its method).
SCALED_METHODS = ("neva", "random_neurons", "diffmean", "caa_pairs")
# The search-space key of each method's strength range (absent: ``strength``, the neuron
# methods'); a dotted path: the methods with a space of their own keep it under their name.
STRENGTH_KEYS = {"diffmean": "diffmean.strength", "caa_pairs": "caa_pairs.strength"}


@dataclass
class Calibration:
    """Where one method's edit reaches the KL budget."""

    dose: float  # the strength at which KL is closest to the budget from below
    kl: float  # KL at that dose (nats/token)
    budget: float  # the KL aimed at
    bracketed: bool  # False: the budget was not reached (or exceeded at MIN_DOSE)
    steps: list[list[float]] = field(default_factory=list)  # [dose, kl] evaluated, in order
    range: list[float] | None = None  # the searched strength range derived from it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        return cls(**{k: d[k] for k in ("dose", "kl", "budget", "bracketed", "steps",
                                        "range") if k in d})


def bisect_dose(kl_at: Callable[[float], float], budget: float, start: float = 1.0,
                steps: int = 6) -> Calibration:
    """The largest dose whose ``kl_at(dose)`` stays within ``budget``, by log bisection.

    >>> c = bisect_dose(lambda d: 0.01 * d * d, budget=0.04, steps=12)
    >>> round(c.dose, 2), c.bracketed
    (2.0, True)
    """
    if not budget > 0:
        raise ValueError(f"the calibration budget must be > 0 nats/token, got {budget}")
    trace: list[list[float]] = []

    def f(d: float) -> float:
        kl = float(kl_at(d))
        trace.append([d, kl])
        return kl

    lo = hi = None  # lo: within the budget, hi: over it
    d = start
    if f(d) <= budget:
        lo = d
        while hi is None and d < MAX_DOSE:
            d *= 2
            if f(d) <= budget:
                lo = d
            else:
                hi = d
    else:
        hi = d
        while lo is None and d > MIN_DOSE:
            d /= 2
            if f(d) <= budget:
                lo = d
            else:
                hi = d
    if lo is None or hi is None:  # never reached, or over the budget even at MIN_DOSE
        d, kl = trace[-1]
        return Calibration(d, kl, budget, False, trace)
    for _ in range(steps):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if f(mid) <= budget else (lo, mid)
    kl = next(k for d, k in reversed(trace) if d == lo)
    return Calibration(lo, kl, budget, True, trace)


def searched_range(cal: Calibration, span: tuple[float, float]) -> list[float]:
    """``[dose x span[0], dose x span[1]]``, the strength box of a calibrated study."""
    return [cal.dose * float(span[0]), cal.dose * float(span[1])]


def reference_params(method: str, space: Any) -> dict[str, Any]:
    """The setting a method is calibrated at: the geometric middle of the sparsity range,
    the middle layer fraction, and the first choice of every categorical parameter
    (caa_pairs keeps its ``response`` positions: it searches no others)."""
    params = dict(METHODS[method].defaults)
    method = METHODS.canonical(method)
    if method in ("neva", "random_neurons"):
        lo, hi = space.sparsity
        params.update(sparsity=math.sqrt(lo * hi), rule=space.rules[0],
                      layer_window=window_label((space.layer_windows or [None])[0]))
        if "score" in params:
            params.update(score=space.scores[0], polarity=space.polarities[0])
    elif method in ("diffmean", "caa_pairs"):
        own = space[method]  # search.space.<method>: its layers
        params.update(layer_frac=sum(own.layer_frac) / 2, n_layers=own.n_layers[0])
    if method != "caa_pairs":
        params.update(positions=space.positions[0])
    params.update(gate="none")
    return params


CALIBRATION_ATTR = "calibration"  # study user attribute: the Calibration dict with its range


def is_scaled(method: str) -> bool:
    """Whether ``method`` (a registered name or alias) has a strength to calibrate."""
    return METHODS.canonical(method) in SCALED_METHODS


def strength_key(method: str) -> str:
    """The search-space key of ``method``'s strength range (``method``: a name or alias),
    dotted below ``search.space``: ``strength`` or ``diffmean.strength``."""
    return STRENGTH_KEYS.get(METHODS.canonical(method), "strength")


def strength_range(space: Any, method: str) -> list[float] | None:
    """``method``'s strength range in ``space`` (a config or a plain dict), or None when
    the space holds none.

    >>> strength_range({"strength": [4, 64], "diffmean": {"strength": [0.25, 4]}}, "caa")
    [0.25, 4.0]
    """
    node = space
    for part in strength_key(method).split("."):
        node = node.get(part) if node is not None else None
    return None if node is None else [float(x) for x in node]


def space_with(space: Any, method: str, strength_range: list[float]) -> Any:
    """``space`` with ``method``'s strength range replaced (a copy)."""
    from omegaconf import OmegaConf

    *parents, leaf = strength_key(method).split(".")
    patch: dict[str, Any] = {leaf: list(strength_range)}
    for part in reversed(parents):
        patch = {part: patch}
    return OmegaConf.merge(space, patch)


def budget_of(search: Any) -> float:
    """The KL a calibration aims at: ``search.max_kl``, else ``search.calibration.kl``."""
    return float(search.max_kl if search.get("max_kl") is not None else search.calibration.kl)


def calibration_job(method: str, value: str, search: Any) -> dict[str, Any]:
    """What the actors need to calibrate one study (:func:`neva_sweep.sweep.worker.calibrate`)."""
    lo, hi = strength_range(search.space, method)
    return {"value": value, "method": method, "params": reference_params(method, search.space),
            "budget": budget_of(search), "texts": search.calibration.texts,
            "steps": int(search.calibration.steps), "start": math.sqrt(lo * hi)}


def calibrate_edit(host: Any, stats: Any, texts: list[str], cap: Any, job: dict[str, Any]
                   ) -> Calibration:
    """Bisect one job's dose on ``host`` (:func:`calibration_job` describes the job): the
    strength at which the method's edit moves ``texts`` by the job's KL budget."""
    from ..evaluation.capability import base_distribution, mean_kl

    batch = max(1, cap.batch_size // 2)
    base = base_distribution(host, texts, cap.kl_top_k, batch)
    method, params = METHODS[job["method"]], dict(job["params"])
    positions = params.get("positions", "all")

    def kl_at(dose: float) -> float:
        edit = method.build(stats, job["value"], {**params, "strength": dose})
        return float(mean_kl(host, texts, base, [edit], positions, batch)[0])

    return bisect_dose(kl_at, job["budget"], job["start"], job["steps"])
