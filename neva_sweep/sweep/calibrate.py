"""Calibrated search ranges: where a method's edit reaches the capability budget.

Before a study's first trial, the actors of its model bisect the method's *dose* (its
scaled ``strength``, neva_sweep/methods/strength.py) at a reference setting of the other
parameters until the edit's mean KL(base || edited) on the trials' neutral texts equals the
budget (``search.max_kl``, or ``search.calibration.kl`` when that is unset). The study then
searches ``strength`` log-uniformly in ``[d* x span[0], d* x span[1]]`` around that dose
d*: a box that holds the feasible edge whatever the model, value and method, instead of a
hand-set box that holds it for some of them.

One dose is not enough across a method's *layout*: the edited layer moves a steering
vector's budget dose up to 7x, the neuron count a neuron edit's up to 2x
(docs/results.md, section 0d). So each study is calibrated at ``search.calibration.points``
settings spread over its layout parameter, which the method declares
(:class:`~neva_sweep.methods.base.Layout`; :func:`anchor_params`: the sparsity, evenly in
log, for the neuron methods; the layer fraction, evenly, for the residual ones; the ends of
the range included). With ``search.calibration.relative`` a trial searches a multiple of
the budget dose interpolated at its own layout (:func:`edge_dose`); otherwise the strength
box spans every point's dose (:func:`combine`). ``search.calibration.anchors`` of the
points, each at its dose, are warm-start trials (sweep/warm.py): the study starts from
edits measured at the budget across its whole layout, where the best edits of every
method measured lie.

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

import numpy as np

from ..config import CalibrationConfig, value_at
from ..methods.base import METHODS, Layout

log = logging.getLogger(__name__)

MIN_DOSE, MAX_DOSE = 1e-4, 1e4  # the bracket search gives up outside these


@dataclass
class Calibration:
    """Where one method's edit reaches the KL budget."""

    dose: float  # the strength at which KL is closest to the budget from below
    kl: float  # KL at that dose (nats/token)
    budget: float  # the KL aimed at
    bracketed: bool  # False: the budget was not reached (or exceeded at MIN_DOSE)
    steps: list[list[float]] = field(default_factory=list)  # [dose, kl] evaluated, in order
    range: list[float] | None = None  # the searched strength range derived from it
    params: dict[str, Any] | None = None  # the setting bisected (the method's parameters)
    # a study's calibration (:func:`combine`): every anchor's own Calibration dict; the
    # fields above are then the middle anchor's, and ``range`` spans them all
    anchors: list[dict[str, Any]] = field(default_factory=list)
    # True: the study searches its strength as a multiple of :func:`edge_dose`, and
    # ``range`` is that multiple's box
    relative: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        return cls(**{k: d[k] for k in ("dose", "kl", "budget", "bracketed", "steps",
                                        "range", "params", "anchors", "relative")
                   if k in d})

    @property
    def reached(self) -> bool:
        """:func:`met_budget` of this calibration."""
        return met_budget(self.to_dict())


def met_budget(cal: dict[str, Any]) -> bool:
    """Whether a (stored) calibration met the budget: bracketed, or exceeded at the
    smallest dose tried (then the dose is that smallest one). False: a dead edit, under the
    budget at every dose tried."""
    return bool(cal.get("bracketed")) or cal.get("kl", 0.0) > cal.get("budget", math.inf)


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


def layout_of(method: str) -> Layout | None:
    """How ``method`` (a registered name or alias) is calibrated, or None: it has no
    strength to calibrate (:class:`~neva_sweep.methods.base.Layout`, declared by the
    method)."""
    return getattr(METHODS[method], "layout", None)


def reference_params(method: str, space: Any) -> dict[str, Any]:
    """The setting a method is calibrated at: its defaults with the middle of its layout
    range (geometric for a log layout: the sparsity; arithmetic: the layer fraction), the
    first choice of every categorical parameter it searches (its ``reference``) and the
    gate off."""
    params = dict(METHODS[method].defaults)
    layout = layout_of(method)
    if layout is not None:
        lo, hi = (float(x) for x in value_at(space, layout.axis_range))
        params.update(METHODS[method].reference(space))
        params[layout.axis] = math.sqrt(lo * hi) if layout.log else (lo + hi) / 2
    if "gate" in params:
        params["gate"] = "none"
    return params


def anchor_params(method: str, space: Any, n: int) -> list[dict[str, Any]]:
    """``n`` settings to calibrate ``method`` at: :func:`reference_params` with its layout
    parameter spread over the searched range, both ends included: evenly in log for a log
    layout (the sparsity), evenly otherwise (the layer fraction). ``n = 1``, a method
    without a layout, or a range with one value give the reference setting alone.

    >>> from omegaconf import OmegaConf
    >>> from neva_sweep.config import SearchSpace
    >>> space = OmegaConf.structured(SearchSpace)
    >>> [round(p["sparsity"], 4) for p in anchor_params("neva", space, 3)]
    [0.0005, 0.01, 0.2]
    >>> [p["layer_frac"] for p in anchor_params("diffmean", space, 3)]
    [0.2, 0.5, 0.8]
    """
    ref = reference_params(method, space)
    layout = layout_of(method)
    if n <= 1 or layout is None:
        return [ref]
    lo, hi = (float(x) for x in value_at(space, layout.axis_range))
    if layout.log:
        xs = [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]
    else:
        xs = [lo + (hi - lo) * i / (n - 1) for i in range(n)]
    xs = [float(round(x, 12)) for x in xs]  # 0.5, not 0.49999999999999994
    return [{**ref, layout.axis: x} for x in dict.fromkeys(xs)]  # a fixed range: one anchor


def combine(cals: list[Calibration], span: tuple[float, float], configured: list[float],
            relative: bool = False) -> Calibration:
    """One study's calibration from its anchors' (in layout order): the middle anchor's
    fields, the anchors themselves, and the strength box over the anchors that met the
    budget: ``[smallest dose x span[0], largest dose x span[1]]``, or, ``relative``,
    ``span`` itself, a multiple of :func:`edge_dose`. When no anchor met the budget (a dead
    edit everywhere) the box stays ``configured`` and the strength absolute: every dose in
    it is within budget.

    >>> a = Calibration(2.0, 0.1, 0.1, True, params={"sparsity": 0.01})
    >>> b = Calibration(8.0, 0.1, 0.1, True, params={"sparsity": 0.2})
    >>> combine([a, b], (0.5, 2.0), [1.0, 4.0]).range
    [1.0, 16.0]
    >>> combine([a, b], (0.5, 2.0), [1.0, 4.0], relative=True).range
    [0.5, 2.0]
    """
    mid = cals[len(cals) // 2]
    reached = [c for c in cals if c.reached]
    relative = relative and bool(reached)
    if relative:
        box = [float(span[0]), float(span[1])]
    elif reached:
        box = [min(c.dose for c in reached) * float(span[0]),
               max(c.dose for c in reached) * float(span[1])]
    else:
        box = [float(x) for x in configured]
    anchors = [{k: v for k, v in c.to_dict().items() if k != "anchors"} for c in cals]
    return Calibration(mid.dose, mid.kl, mid.budget, mid.bracketed, mid.steps, box,
                       mid.params, anchors, relative)


def _coordinate(layout: Layout, x: float) -> float:
    """Where the budget dose is interpolated linearly: log sparsity, the layer fraction."""
    return math.log(x) if layout.log else float(x)


def edge_dose(cal: dict[str, Any], method: str, params: dict[str, Any]) -> float:
    """The strength at which ``params``' layout meets the budget, from a study's stored
    calibration: the log of the anchors' doses interpolated linearly in the layout
    coordinate (log sparsity, layer fraction), flat beyond the outer anchors. Anchors that
    never reached the budget take no part.

    >>> cal = {"anchors": [{"params": {"layer_frac": 0.2}, "dose": 1.0, "bracketed": True},
    ...                    {"params": {"layer_frac": 0.6}, "dose": 4.0, "bracketed": True}]}
    >>> [edge_dose(cal, "diffmean", {"layer_frac": x}) for x in (0.1, 0.4, 0.9)]
    [1.0, 2.0, 4.0]
    """
    layout = layout_of(method)
    if layout is None:
        raise ValueError(f"method {method!r} declares no layout: it has no calibrated dose")
    axis = layout.axis
    points = sorted((_coordinate(layout, a["params"][axis]), math.log(a["dose"]))
                    for a in (cal.get("anchors") or []) if met_budget(a))
    if not points:
        raise ValueError(f"calibration of {method} has no anchor that met the budget")
    xs, ys = zip(*points)
    return math.exp(float(np.interp(_coordinate(layout, params[axis]), xs, ys)))


def absolute_params(cal: dict[str, Any], method: str, params: dict[str, Any]
                    ) -> tuple[dict[str, Any], float]:
    """``params`` whose ``strength`` is a multiple of the budget dose (a relative study's
    draw) with the strength it stands for, and that multiple."""
    frac = float(params["strength"])
    return {**params, "strength": frac * edge_dose(cal, method, params)}, frac


def spread_indices(n_points: int, n: int) -> list[int]:
    """``n`` indices spread evenly over ``range(n_points)``, both ends included.

    >>> spread_indices(7, 3), spread_indices(3, 3), spread_indices(5, 1)
    ([0, 3, 6], [0, 1, 2], [2])
    """
    if n >= n_points:
        return list(range(n_points))
    if n == 1:
        return [n_points // 2]
    return sorted({round(i * (n_points - 1) / (n - 1)) for i in range(n)})


def warm_settings(cal: dict[str, Any], n: int | None = None) -> list[dict[str, Any]]:
    """The edits a calibrated study starts from (a stored ``calibration`` attribute): ``n``
    of its calibrated settings spread evenly over the layout (all when None), those that
    were bracketed, each at its dose (in a relative study, at 1 x the budget dose). A
    calibration stored before anchors existed gives its one dose, without a setting (the
    caller adds the reference setting)."""
    points = cal.get("anchors") or [cal]
    chosen = [points[i] for i in spread_indices(len(points), n or len(points))]
    rel = bool(cal.get("relative"))
    return [{**(a.get("params") or {}), "strength": 1.0 if rel else a["dose"]}
            for a in chosen if a.get("bracketed") and a.get("dose") is not None]


CALIBRATION_ATTR = "calibration"  # study user attribute: the Calibration dict with its range


def is_scaled(method: str) -> bool:
    """Whether ``method`` (a registered name or alias) has a strength to calibrate."""
    return layout_of(method) is not None


def strength_key(method: str) -> str | None:
    """The search-space key of ``method``'s strength range (``method``: a name or alias),
    dotted below ``search.space``: ``strength`` or ``diffmean.strength``; None for a
    method without a calibrated strength."""
    layout = layout_of(method)
    return None if layout is None else layout.strength


def strength_range(space: Any, method: str) -> list[float] | None:
    """``method``'s strength range in ``space`` (a config or a plain dict), or None when
    the method has none or the space holds none.

    >>> strength_range({"strength": [4, 64], "diffmean": {"strength": [0.25, 4]}}, "caa")
    [0.25, 4.0]
    """
    key = strength_key(method)
    node = None if key is None else value_at(space, key)
    return None if node is None else [float(x) for x in node]


def space_with(space: Any, method: str, strength_range: list[float]) -> Any:
    """``space`` with ``method``'s strength range replaced (a copy)."""
    from omegaconf import OmegaConf

    key = strength_key(method)
    if key is None:
        raise ValueError(f"method {method!r} declares no layout: it has no strength range")
    *parents, leaf = key.split(".")
    patch: dict[str, Any] = {leaf: list(strength_range)}
    for part in reversed(parents):
        patch = {part: patch}
    return OmegaConf.merge(space, patch)


def budget_of(search: Any) -> float:
    """The KL a calibration aims at: ``search.max_kl``, else ``search.calibration.kl``."""
    return float(search.max_kl if search.get("max_kl") is not None else search.calibration.kl)


def calibration_job(method: str, value: str, search: Any,
                    params: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the actors need to calibrate ``method`` at one setting (``params``; default
    :func:`reference_params`) (:func:`neva_sweep.sweep.worker.calibrate`)."""
    lo, hi = strength_range(search.space, method)
    if params is None:
        params = reference_params(method, search.space)
    return {"value": value, "method": method, "params": params,
            "budget": budget_of(search), "texts": search.calibration.texts,
            "steps": int(search.calibration.steps), "start": math.sqrt(lo * hi)}


def calibration_jobs(method: str, value: str, search: Any) -> list[dict[str, Any]]:
    """One :func:`calibration_job` per anchor (:func:`anchor_params`) of a study."""
    c = search.calibration
    n = max(int(c.get("anchors", CalibrationConfig.anchors)),
            int(c.get("points", CalibrationConfig.points)))
    return [calibration_job(method, value, search, p)
            for p in anchor_params(method, search.space, n)]


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

    cal = bisect_dose(kl_at, job["budget"], job["start"], job["steps"])
    cal.params = params
    return cal
