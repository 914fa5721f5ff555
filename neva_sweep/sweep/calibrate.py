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

A *gated* edit (``search.space.gates`` other than ``none``, neurons/gate.py) is scaled by
its gate, which is closed on the neutral texts KL is measured on: at any dose its KL
there stays near 0, so the anchors' doses say nothing about it. Each gate the space
searches is therefore calibrated again, at ``search.calibration.gate_points`` of the
points with that gate (spread evenly like the anchors), on the first budget to bind of
KL on neutral text and KL on value-laden replies (``kl_value``, where the gate opens; its
budget ``search.max_kl_value``, else the KL budget): its dose over the ungated point's is
the gate's *factor* there, and a gated trial's budget dose is the ungated one times the
factor interpolated at its layout (:func:`gate_factor`). With
``search.max_kl_value`` set, every anchor is bisected to that first binding budget too.

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
    # KL at that dose (nats/token); with a value budget, the binding cost in the units of
    # ``budget``: max(KL on neutral text, kl_value x budget / value_budget)
    kl: float
    budget: float  # the KL aimed at (on neutral text)
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
    value_budget: float | None = None  # the budget on kl_value bisected to, if any
    kl_value: float | None = None  # kl_value at ``dose`` (nats/token), when measured
    # per gate searched (:func:`gate_factor`): the middle gated point's Calibration dict
    # with its ``factor``, its dose over the ungated point's (None: it never met a budget),
    # and ``points``, every gated point's dict with its factor, in layout order
    gates: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        return cls(**{k: d[k] for k in ("dose", "kl", "budget", "bracketed", "steps",
                                        "range", "params", "anchors", "relative",
                                        "value_budget", "kl_value", "gates")
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


def is_gated(params: dict[str, Any] | None) -> bool:
    """Whether a setting's edit is gated (``gate`` other than ``none``)."""
    return (params or {}).get("gate", "none") != "none"


def gated_params(method: str, space: Any, anchors: list[dict[str, Any]], n: int = 1
                 ) -> list[dict[str, Any]]:
    """The gated settings a study is calibrated at besides its ``anchors``: ``n`` of them,
    spread evenly (:func:`spread_indices`; 1: the middle one), with each gate
    ``search.space.gates`` searches (none for a method without a gate)."""
    if "gate" not in anchors[0]:
        return []
    points = [anchors[i] for i in spread_indices(len(anchors), n)]
    return [{**p, "gate": g} for g in space.get("gates") or [] if g != "none" for p in points]


def _layout_key(params: dict[str, Any] | None) -> tuple:
    """A setting without its gate, to match a gated point with its ungated one."""
    return tuple(sorted((k, repr(v)) for k, v in (params or {}).items() if k != "gate"))


def combine(cals: list[Calibration], span: tuple[float, float], configured: list[float],
            relative: bool = False, gated: list[Calibration] | None = None) -> Calibration:
    """One study's calibration from its anchors' (in layout order): the middle anchor's
    fields, the anchors themselves, and the strength box over the anchors that met the
    budget: ``[smallest dose x span[0], largest dose x span[1]]``, or, ``relative``,
    ``span`` itself, a multiple of :func:`edge_dose`. When no anchor met the budget (a dead
    edit everywhere) the box stays ``configured`` and the strength absolute: every dose in
    it is within budget. ``gated``: the calibrations of :func:`gated_params`, kept per
    gate with their factor over the middle anchor's dose (an absolute box then spans their
    doses too).

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
    ungated = {_layout_key(c.params): c for c in cals}
    by_gate: dict[str, list[dict[str, Any]]] = {}
    for g in gated or []:
        u = ungated.get(_layout_key(g.params), mid)
        ok = g.reached and u.reached
        by_gate.setdefault(g.params["gate"], []).append(
            {**g.to_dict(), "factor": g.dose / u.dose if ok else None})
    gates = {gate: {**pts[len(pts) // 2], "points": pts} for gate, pts in by_gate.items()}
    doses = [c.dose for c in reached] + [g.dose for g in gated or [] if g.reached]
    if relative:
        box = [float(span[0]), float(span[1])]
    elif reached:
        box = [min(doses) * float(span[0]), max(doses) * float(span[1])]
    else:
        box = [float(x) for x in configured]
    anchors = [{k: v for k, v in c.to_dict().items() if k not in ("anchors", "gates")}
               for c in cals]
    return Calibration(mid.dose, mid.kl, mid.budget, mid.bracketed, mid.steps, box,
                       mid.params, anchors, relative, mid.value_budget, mid.kl_value, gates)


def gate_factor(cal: dict[str, Any], gate: str | None, method: str | None = None,
                params: dict[str, Any] | None = None) -> float:
    """How many times the ungated budget dose a ``gate``-gated edit of a study reaches its
    budget at (its stored calibration's ``gates``): with ``method`` and ``params``, the
    log of the gated points' factors interpolated linearly at ``params``' layout (as
    :func:`edge_dose` interpolates doses; flat beyond the outer points), else the middle
    point's. 1 for an ungated edit, a gate not calibrated (an earlier calibration) or one
    that never met a budget; a point that met none takes no part.

    >>> gate_factor({"gates": {"context": {"factor": 1.5}}}, "context")
    1.5
    >>> gate_factor({"gates": {"value": {"factor": None}}}, "value"), gate_factor({}, "none")
    (1.0, 1.0)
    >>> pts = [{"params": {"layer_frac": x}, "factor": f} for x, f in ((0.2, 2.0), (0.8, 8.0))]
    >>> round(gate_factor({"gates": {"value": {"factor": 2.0, "points": pts}}}, "value",
    ...                   "diffmean", {"layer_frac": 0.5}), 6)
    4.0
    """
    g = (cal.get("gates") or {}).get(gate or "none") or {}
    layout = layout_of(method) if method is not None and params is not None else None
    points = [(p["params"], p["factor"]) for p in g.get("points") or []
              if p.get("factor")] if layout else []
    if len(points) > 1:
        return _log_interp(layout, points, params)
    factor = points[0][1] if points else g.get("factor")
    return float(factor) if factor else 1.0


def _coordinate(layout: Layout, x: float) -> float:
    """Where the budget dose is interpolated linearly: log sparsity, the layer fraction."""
    return math.log(x) if layout.log else float(x)


def _log_interp(layout: Layout, points: list[tuple[dict[str, Any], float]],
                params: dict[str, Any]) -> float:
    """A positive quantity at ``params``' layout from ``points`` ((setting, quantity)
    pairs): its log interpolated linearly in the layout coordinate (:func:`_coordinate`),
    flat beyond the outer points."""
    xs, ys = zip(*sorted((_coordinate(layout, p[layout.axis]), math.log(q)) for p, q in points))
    return math.exp(float(np.interp(_coordinate(layout, params[layout.axis]), xs, ys)))


def edge_dose(cal: dict[str, Any], method: str, params: dict[str, Any]) -> float:
    """The strength at which ``params``' layout meets the budget, from a study's stored
    calibration: the log of the anchors' doses interpolated linearly in the layout
    coordinate (log sparsity, layer fraction), flat beyond the outer anchors, times the
    :func:`gate_factor` of ``params``' gate. Anchors that never reached the budget take no
    part.

    >>> cal = {"anchors": [{"params": {"layer_frac": 0.2}, "dose": 1.0, "bracketed": True},
    ...                    {"params": {"layer_frac": 0.6}, "dose": 4.0, "bracketed": True}]}
    >>> [edge_dose(cal, "diffmean", {"layer_frac": x}) for x in (0.1, 0.4, 0.9)]
    [1.0, 2.0, 4.0]
    """
    layout = layout_of(method)
    if layout is None:
        raise ValueError(f"method {method!r} declares no layout: it has no calibrated dose")
    points = [(a["params"], a["dose"]) for a in (cal.get("anchors") or []) if met_budget(a)]
    if not points:
        raise ValueError(f"calibration of {method} has no anchor that met the budget")
    return _log_interp(layout, points, params) * gate_factor(cal, params.get("gate"), method,
                                                             params)


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


def value_budget_of(search: Any, gated: bool) -> float | None:
    """The budget on ``kl_value`` a calibration also bisects to: ``search.max_kl_value``;
    unset, :func:`budget_of` for a gated edit (whose KL on neutral text its gate hides) and
    none for an ungated one."""
    if search.get("max_kl_value") is not None:
        return float(search.max_kl_value)
    return budget_of(search) if gated else None


def calibration_job(method: str, value: str, search: Any,
                    params: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the actors need to calibrate ``method`` at one setting (``params``; default
    :func:`reference_params`) (:func:`neva_sweep.sweep.worker.calibrate`)."""
    lo, hi = strength_range(search.space, method)
    if params is None:
        params = reference_params(method, search.space)
    job = {"value": value, "method": method, "params": params,
           "budget": budget_of(search), "texts": search.calibration.texts,
           "steps": int(search.calibration.steps), "start": math.sqrt(lo * hi)}
    value_budget = value_budget_of(search, is_gated(params))
    if value_budget is not None:  # absent otherwise: earlier jobs' cache keys still hold
        job["value_budget"] = value_budget
    return job


def calibration_jobs(method: str, value: str, search: Any) -> list[dict[str, Any]]:
    """One :func:`calibration_job` per anchor (:func:`anchor_params`) of a study, then
    ``search.calibration.gate_points`` per gate it searches (:func:`gated_params`)."""
    c = search.calibration
    n = max(int(c.get("anchors", CalibrationConfig.anchors)),
            int(c.get("points", CalibrationConfig.points)))
    anchors = anchor_params(method, search.space, n)
    gated = gated_params(method, search.space, anchors,
                         int(c.get("gate_points", CalibrationConfig.gate_points)))
    return [calibration_job(method, value, search, p) for p in anchors + gated]


def calibrate_edit(host: Any, stats: Any, texts: list[str], cap: Any, job: dict[str, Any],
                   value_texts: list[str] | None = None) -> Calibration:
    """Bisect one job's dose on ``host`` (:func:`calibration_job` describes the job): the
    strength at which the method's edit moves ``texts`` by the job's KL budget, or, when
    the job has a ``value_budget``, the first at which it moves ``texts`` by the budget or
    ``value_texts`` (value-laden replies, capability.value_texts) by the value budget."""
    from ..evaluation.capability import base_distribution, mean_kl

    value_budget = job.get("value_budget")
    if value_budget is not None and not value_texts:
        raise ValueError("a calibration with a value budget (search.max_kl_value, or a "
                         "gated edit) needs value-laden replies: capability.fluency_queries"
                         " >= 1")
    batch = max(1, cap.batch_size // 2)
    base = base_distribution(host, texts, cap.kl_top_k, batch)
    base_v = (None if value_budget is None
              else base_distribution(host, value_texts, cap.kl_top_k, batch))
    method, params = METHODS[job["method"]], dict(job["params"])
    positions = params.get("positions", "all")
    on_value: dict[float, float] = {}  # dose -> kl_value

    def kl_at(dose: float) -> float:
        edit = method.build(stats, job["value"], {**params, "strength": dose})
        kl = float(mean_kl(host, texts, base, [edit], positions, batch)[0])
        if base_v is None:
            return kl
        on_value[dose] = float(mean_kl(host, value_texts, base_v, [edit], positions, batch)[0])
        return max(kl, on_value[dose] * job["budget"] / value_budget)  # in budget units

    cal = bisect_dose(kl_at, job["budget"], job["start"], job["steps"])
    cal.params = params
    cal.value_budget = value_budget
    cal.kl_value = on_value.get(cal.dose)
    return cal
