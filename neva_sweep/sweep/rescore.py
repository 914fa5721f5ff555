"""The held-out pass: every study's chosen edit re-scored on the test split.

After the search, each study's chosen trial (:meth:`~.outputs.Outputs.chosen`) that has
no held-out score yet is evaluated on the ``test`` split of the scenarios and neutral
texts, with ``search.test_nulls`` dose-matched random edits beside it
(:func:`~.worker.score_heldout`, :mod:`neva_sweep.evaluation.heldout`). Scores go to the study's
user attributes (``test:<trial>``), so a resumed sweep re-scores only a chosen edit that
changed, and best_edits.json (``test``) and trials.csv (``test_<metric>``) are written
from the storage like everything else.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import ray
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial
from tqdm.auto import tqdm

from ..data import load_records, split_rows
from .cluster import ReplicaWorker
from .outputs import Outputs
from .plan import StudyKey
from .studies import heldout_attr
from .worker import EvalSetup, score_heldout

log = logging.getLogger(__name__)


def heldout_setup(setup: EvalSetup, capability: dict | None = None) -> EvalSetup:
    """The trials' evaluation setup on the test split, with every test scenario (the
    trials' ``judge.scenarios_limit`` thins the search split only) and ``capability``
    (``search.test_capability``) over the trials' capability settings."""
    return replace(setup, judge=replace(setup.judge, scenarios_limit=None), split="test",
                   capability=replace(setup.capability, **(capability or {})))


def has_test_split(data) -> bool:
    """Whether ``data.scenarios`` and ``data.neutral`` both have a ``test`` split (if not,
    says so: the sweep then skips its held-out pass)."""
    if all(split_rows(load_records(kind, getattr(data, kind)), "test")
           for kind in ("scenarios", "neutral")):
        return True
    log.warning("no held-out scores: data.scenarios or data.neutral has no records with "
                "\"split\": \"test\" (docs/data.md)")
    return False


def pending(outputs: Outputs) -> dict[StudyKey, FrozenTrial]:
    """The chosen trials that have no held-out score yet."""
    states = {s.key: s for s in outputs.states}
    return {k: t for k, t in outputs.chosen().items()
            if heldout_attr(t.number) not in states[k].study.user_attrs}


def rescore(outputs: Outputs, workers: list[ReplicaWorker], search: DictConfig,
            setup: EvalSetup, progress: bool = True) -> int:
    """Score every pending chosen edit on the test split; returns how many were scored.

    Jobs go round-robin to the replicas of their model; a failed job is logged and left
    pending (the next run tries again), never stored as a score. The data must have a
    test split (:func:`has_test_split`, checked by the caller).
    """
    todo = pending(outputs)
    if not todo:
        return 0
    test = heldout_setup(setup, OmegaConf.to_container(search.test_capability, resolve=True))
    by_model: dict[str, list[ReplicaWorker]] = {}
    for w in workers:
        by_model.setdefault(w.model, []).append(w)
    states = {s.key: s for s in outputs.states}
    refs = []
    for i, (key, t) in enumerate(todo.items()):
        reps = by_model.get(key.model)
        if not reps:
            continue
        w = reps[i % len(reps)]
        job = {"value": key.value, "method": key.method,
               "params": dict(t.user_attrs.get("params") or t.params),
               "n_nulls": int(search.test_nulls), "seed": int(search.seed)}
        refs.append((key, t, w.replica.call(score_heldout, w.box, test, [job])))
    done = 0
    bar = tqdm(total=len(refs), desc="held-out test split", unit="edit", disable=not progress)
    for key, t, ref in refs:
        rec = ray.get(ref)[0]
        bar.update()
        if "error" in rec:
            log.warning("held-out score of %s trial %d failed: %s", key.name(""), t.number,
                        rec["error"])
            continue
        states[key].study.set_user_attr(heldout_attr(t.number), rec)
        done += 1
    bar.close()
    log.info("held-out test split: %d chosen edit(s) scored", done)
    return done
