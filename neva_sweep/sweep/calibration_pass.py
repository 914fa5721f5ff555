"""The calibration pass of a sweep: every fresh study's strength box, centred on the dose
where its edit reaches the KL budget (the maths and the measurement: calibrate.py).

Runs on the driver after the replicas are ready and before the first trial; jobs go
round-robin to the replicas of their model, as the held-out pass's (rescore.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import ray
from tqdm.auto import tqdm

from ..config import CalibrationConfig, SearchSpace
from ..files import write_text_atomic
from .calibrate import (
    CALIBRATION_ATTR,
    Calibration,
    budget_of,
    calibration_jobs,
    combine,
    is_gated,
    is_scaled,
    space_with,
    strength_key,
    strength_range,
)
from .worker import calibrate

log = logging.getLogger(__name__)


def cache_path(setup: Any, model_key: str, job: dict[str, Any]) -> Path | None:
    """Where a calibration is cached on disk (None without a cache directory): keyed by
    the model and its statistics, the trials' capability and data settings (which neutral
    texts) and the job."""
    if not setup.cache_dir:
        return None
    blob = json.dumps({"model": model_key, "capability": repr(setup.capability),
                       "data": repr(setup.data), **job}, sort_keys=True, default=str)
    tag = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return Path(setup.cache_dir) / "calibration" / f"{job['method']}-{job['value']}-{tag}.json"


def calibrate_studies(states: list, workers: list, search: Any, setup: Any,
                      model_keys: dict[str, str], progress: bool = True) -> int:
    """Give every study of a scaled method (``search.space.scaled``) its strength range.

    A study's stored ``calibration`` attribute is used as it is (a resumed study keeps its
    box). A fresh study (no trials yet) is calibrated on a replica of its model when
    ``search.calibrate`` (or read from the disk cache); a study with trials but no stored
    calibration keeps the configured box. Returns how many studies were calibrated now.
    ``model_keys``: model label -> a key of the model and its statistics (cache key).
    """
    if not search.space.get("scaled", SearchSpace.scaled):
        return 0
    span = tuple(search.calibration.span)
    todo = []
    for s in states:
        if not is_scaled(s.key.method):
            continue
        stored = s.study.user_attrs.get(CALIBRATION_ATTR)
        if stored and stored.get("range"):
            s.space = space_with(search.space, s.key.method, stored["range"])
            s.edge = stored if stored.get("relative") else None
        elif search.calibrate and not s.study.get_trials(deepcopy=False):
            todo.append(s)
    by_model: dict[str, list] = {}
    for w in workers:
        by_model.setdefault(w.model, []).append(w)
    # per study: its anchors' jobs, cache files and Calibrations (None: still to measure)
    pending, done, sent = [], 0, 0
    for s in todo:
        jobs = calibration_jobs(s.key.method, s.key.value, search)
        paths = [cache_path(setup, model_keys.get(s.key.model, s.key.model), j) for j in jobs]
        cals = [_cached(p, j) for p, j in zip(paths, jobs)]
        missing = [k for k, c in enumerate(cals) if c is None]
        reps = by_model.get(s.key.model)
        if missing and not reps:
            continue
        refs = []  # one call per anchor, round-robin over the model's replicas
        for k in missing:
            w = reps[sent % len(reps)]
            refs.append(w.replica.call(calibrate, w.box, setup, [jobs[k]]))
            sent += 1
        pending.append((s, jobs, paths, cals, missing, refs))
    bar = tqdm(total=sent, desc="calibration", unit="anchor", disable=not progress)
    ungated_gates: dict[str, str] = {}  # study -> why its gates were not calibrated
    for s, jobs, paths, cals, missing, refs in pending:
        recs = []
        for ref in refs:
            recs.extend(ray.get(ref))
            bar.update()
        failed = [r["error"] for k, r in zip(missing, recs)
                  if "error" in r and not is_gated(jobs[k]["params"])]
        if failed:
            log.warning("calibration of %s failed (%s); it searches the configured box",
                        s.key.name(""), failed[0])
            continue
        for k, rec in zip(missing, recs):
            if "error" in rec:  # a gate: its edits keep the ungated doses (factor 1)
                ungated_gates[s.key.name("")] = rec["error"]
                continue
            cals[k] = _with_setting(Calibration.from_dict(rec), jobs[k])
            if paths[k] is not None:
                paths[k].parent.mkdir(parents=True, exist_ok=True)
                write_text_atomic(paths[k], json.dumps(rec, indent=2))
        _store(s, [c for c in cals if c is not None], search, span)
        done += 1
    bar.close()
    if ungated_gates:
        name, why = next(iter(ungated_gates.items()))
        log.warning("gated edits of %d stud%s (e.g. %s) were not calibrated (%s): they are "
                    "searched at the ungated doses", len(ungated_gates),
                    "y" if len(ungated_gates) == 1 else "ies", name, why)
    if done:
        log.info("calibration: %d stud%s centred on the KL budget %.3g", done,
                 "y" if done == 1 else "ies", budget_of(search))
    return done


def _cached(path: Path | None, job: dict[str, Any]) -> Calibration | None:
    """The cached calibration of ``job``, or None when there is none."""
    if path is None or not path.is_file():
        return None
    return _with_setting(Calibration.from_dict(json.loads(path.read_text())), job)


def _with_setting(cal: Calibration, job: dict[str, Any]) -> Calibration:
    """``cal`` with the setting it was bisected at (a calibration cached by an earlier
    version does not record it)."""
    if cal.params is None:
        cal.params = dict(job["params"])
    return cal


def _store(state: Any, cals: list[Calibration], search: Any, span: tuple) -> None:
    """Keep the study's calibration (its anchors' and its gates',
    :func:`~.calibrate.combine`; ``cals`` in :func:`~.calibrate.calibration_jobs` order)
    and set its box (with ``search.calibration.relative``: a multiple of the budget dose).
    An anchor that never reaches the budget adds nothing to the box (every dose in the
    configured one is within budget there); one over the budget at the smallest dose adds
    that dose (no trial of that setting may be feasible); a gate that meets no budget
    keeps the ungated doses. All are warned about."""
    key = strength_key(state.key.method)
    relative = bool(search.calibration.get("relative", CalibrationConfig.relative))
    gated = [c for c in cals if is_gated(c.params)]
    cal = combine([c for c in cals if not is_gated(c.params)], span,
                  strength_range(search.space, state.key.method), relative, gated)
    state.study.set_user_attr(CALIBRATION_ATTR, cal.to_dict())
    state.space = space_with(search.space, state.key.method, cal.range)
    state.edge = cal.to_dict() if cal.relative else None
    box = (f"{cal.range[0]:.3g} to {cal.range[1]:.3g} x the budget dose" if cal.relative
           else f"search.space.{key}=[{cal.range[0]:.3g}, {cal.range[1]:.3g}]")
    for gate, g in cal.gates.items():
        points = g.get("points") or [g]
        dead = [p for p in points if p["factor"] is None]
        if dead:
            rest = ("its gated edits are searched at the ungated doses" if len(dead) == len(points)
                    else "its factor there is interpolated from the other points")
            log.warning("calibration of %s with gate=%s met no budget at %s; %s",
                        state.key.name(""), gate,
                        "; ".join(_setting(p["params"]) for p in dead), rest)
    for a in cals:
        if not a.bracketed and not is_gated(a.params):
            lo, hi = min(d for d, _ in a.steps), max(d for d, _ in a.steps)
            what = ("stays under" if a.kl <= a.budget else "is over")
            log.warning("calibration of %s at %s: KL %s the budget %.3g at every strength "
                        "tried (%.3g to %.3g); searching %s", state.key.name(""),
                        _setting(a.params), what, a.budget, lo, hi, box)


def _setting(params: dict | None) -> str:
    """The layout of an anchor, for messages: ``sparsity=0.01`` or ``layer_frac=0.5``."""
    shown = {k: v for k, v in (params or {}).items() if k in ("sparsity", "layer_frac")}
    return ", ".join(f"{k}={v:.3g}" for k, v in shown.items()) or "the reference setting"
