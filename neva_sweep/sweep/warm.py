"""Warm starts: the first trials of a fresh study come from what already worked.

A study with no trials yet (a new sweep, or a value, method or model added to a resumed
one) gets a few enqueued trials (``optuna.Study.enqueue_trial``) before its sampler
takes over:

1. the best feasible trial (highest alignment within the capability budgets) among the
   studies of the same model and method for the *other* values, when any has one: a
   setting that worked for a neighbouring value is a better first guess than a random
   draw;
2. the method's documented defaults (``METHODS[method].defaults``), or each of its own
   ``starts(space)`` where it has them (``prompt``: every wording); in a calibrated study
   ``search.calibration.anchors`` of its calibrated settings instead, spread evenly over
   the method's layout, each at its calibrated strength (sweep/calibrate.py): edits
   measured at the KL budget across the sparsities or layers.

Only the parameters the method searches are enqueued, and only values inside the current
search space (a donor trial from a wider space, or a default outside a narrowed one, is
skipped), so a warm start never changes what can be sampled. TPE counts enqueued trials
among its ``n_startup_trials``. ``search.warm_start=false`` turns it off.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import optuna
from omegaconf import DictConfig

from ..config import CalibrationConfig, SearchConfig, SearchSpace, only_gated
from ..methods.base import METHODS
from .calibrate import (
    CALIBRATION_ATTR,
    gate_factor,
    reference_params,
    strength_range,
    warm_settings,
)
from .front import budgets
from .storage import distribution_contains
from .studies import StudyState, best_feasible_trial

log = logging.getLogger(__name__)


def fit_space(method: str, space: Any, params: dict[str, Any]) -> dict[str, Any] | None:
    """``params`` restricted to what ``method`` searches in ``space``, or None when a
    searched parameter is missing or outside its range or choices.

    A dry run of the method's ``suggest`` on a throwaway in-memory study with ``params``
    enqueued gives the searched names and their distributions.
    """
    study = optuna.create_study()
    study.enqueue_trial(params)
    trial = study.ask()
    try:
        with warnings.catch_warnings():  # Optuna warns of out-of-range fixed values
            warnings.simplefilter("ignore", UserWarning)
            METHODS[method].suggest(trial, space)
    except ValueError:  # a categorical value not among the choices
        return None
    out = {}
    for name, dist in trial.distributions.items():
        if name not in params:
            return None
        try:
            inside = distribution_contains(dist, params[name])
        except ValueError:
            return None
        if not inside:
            return None
        out[name] = params[name]
    return out


def start_settings(state: StudyState, params: dict[str, Any], space: Any,
                   n_anchors: int | None = None) -> list[dict[str, Any]]:
    """The method's own starting edits: ``params`` (its defaults) with a strength when the
    space searches one. A calibrated study starts where its calibration measured: each
    anchor's setting (sweep/calibrate.py) at its calibrated dose, edits at the KL budget on
    the trials' own texts spread over the method's layout; otherwise the default's own
    strength (caa_pairs has one), else the middle of the strength range."""
    starts = getattr(METHODS[state.key.method], "starts", None)
    if starts is not None:  # a method of few settings starts at each (prompt's wordings)
        return [{**params, **s} for s in starts(space)]
    box = strength_range(space, state.key.method)
    if not space.get("scaled", SearchSpace.scaled) or box is None or "strength" not in params:
        return [params]
    cal = state.study.user_attrs.get(CALIBRATION_ATTR) or {}
    ref = reference_params(state.key.method, space)
    calibrated = [{**params, **ref, **s} for s in warm_settings(cal, n_anchors)]
    # calibrated with the gate off; a space that searches gated edits only starts gated
    # (its first gate), else no start fits, at the gate's own budget dose: a relative
    # study's edge_dose holds the gate's factor, an absolute one's doses are scaled here
    gates = only_gated(space.get("gates"))
    if gates:
        def k(c: dict[str, Any]) -> float:
            return (1.0 if cal.get("relative")
                    else gate_factor(cal, gates[0], state.key.method, c))

        calibrated = [{**c, "gate": gates[0], "strength": c["strength"] * k(c)}
                      if "gate" in c else c for c in calibrated]
    if calibrated:
        return calibrated
    if params.get("strength") is not None:
        return [params]
    lo, hi = box
    return [{**params, "strength": math.sqrt(lo * hi)}]


def best_feasible(state: StudyState, limits: dict[str, float]) -> tuple[float, dict] | None:
    """(alignment, Optuna parameters) of the study's best feasible COMPLETE trial."""
    best = best_feasible_trial(state.study, limits)
    return None if best is None else (best.user_attrs["alignment"], dict(best.params))


def warm_start(states: list[StudyState], search: DictConfig) -> int:
    """Enqueue the starting trials of every fresh study; returns how many were enqueued."""
    if not search.get("warm_start", SearchConfig.warm_start):
        return 0
    limits = budgets(search)
    n_anchors = int(search.calibration.get("anchors", CalibrationConfig.anchors))
    enqueued = 0
    for s in states:
        if s.study.get_trials(deepcopy=False):  # not fresh: its own trials guide it
            continue
        donors = [o for o in states if o is not s and o.key.model == s.key.model
                  and o.key.method == s.key.method]
        found = [b for o in donors if (b := best_feasible(o, limits)) is not None]
        candidates = [max(found, key=lambda b: b[0])[1]] if found else []
        candidates += start_settings(s, dict(METHODS[s.key.method].defaults),
                                     s.space or search.space, n_anchors)
        seen: list[dict] = []
        for params in candidates:
            if len(seen) >= s.target:  # never more starts than the study will run
                break
            fitted = fit_space(s.key.method, s.space or search.space, params)
            if fitted is None or fitted in seen:
                continue
            s.study.enqueue_trial(fitted, skip_if_exists=True)
            seen.append(fitted)
            enqueued += 1
    if enqueued:
        log.info("warm start: %d trial(s) enqueued in fresh studies", enqueued)
    return enqueued
