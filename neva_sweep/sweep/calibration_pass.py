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

from ..config import SearchSpace
from ..files import write_text_atomic
from .calibrate import (
    CALIBRATION_ATTR,
    Calibration,
    budget_of,
    calibration_job,
    is_scaled,
    searched_range,
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
        elif search.calibrate and not s.study.get_trials(deepcopy=False):
            todo.append(s)
    by_model: dict[str, list] = {}
    for w in workers:
        by_model.setdefault(w.model, []).append(w)
    refs, done = [], 0
    for i, s in enumerate(todo):
        job = calibration_job(s.key.method, s.key.value, search)
        path = cache_path(setup, model_keys.get(s.key.model, s.key.model), job)
        if path is not None and path.is_file():
            _store(s, Calibration.from_dict(_read_json(path)), search, span, None)
            done += 1
            continue
        reps = by_model.get(s.key.model)
        if reps:
            w = reps[i % len(reps)]
            refs.append((s, path, w.replica.call(calibrate, w.box, setup, [job])))
    bar = tqdm(total=len(refs), desc="calibration", unit="study", disable=not progress)
    for s, path, ref in refs:
        rec = ray.get(ref)[0]
        bar.update()
        if "error" in rec:
            log.warning("calibration of %s failed (%s); it searches the configured box",
                        s.key.name(""), rec["error"])
            continue
        _store(s, Calibration.from_dict(rec), search, span, path)
        done += 1
    bar.close()
    if done:
        log.info("calibration: %d stud%s centred on the KL budget %.3g", done,
                 "y" if done == 1 else "ies", budget_of(search))
    return done


def _read_json(path: Any) -> dict:
    return json.loads(path.read_text())


def _store(state: Any, cal: Calibration, search: Any, span: tuple, path: Any) -> None:
    """Keep ``cal`` on the study and set its box. Unbracketed: an edit that never reaches the
    budget keeps the configured box (every dose in it is within budget); one over the
    budget at the smallest dose is searched around that dose (and warned about: no trial
    of it may be feasible)."""
    key = strength_key(state.key.method)
    if cal.bracketed or cal.kl > cal.budget:
        cal.range = searched_range(cal, span)
    else:
        cal.range = strength_range(search.space, state.key.method)
    state.study.set_user_attr(CALIBRATION_ATTR, cal.to_dict())
    state.space = space_with(search.space, state.key.method, cal.range)
    if not cal.bracketed:
        lo, hi = min(d for d, _ in cal.steps), max(d for d, _ in cal.steps)
        what = ("stays under" if cal.kl <= cal.budget else "is over")
        log.warning("calibration of %s: KL %s the budget %.3g at every strength tried "
                    "(%.3g to %.3g); searching search.space.%s=[%.3g, %.3g]",
                    state.key.name(""), what, cal.budget, lo, hi, key, *cal.range)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(cal.to_dict(), indent=2))
