"""The trial function that runs on a model's shard actors (SPMD, see neva_sweep.sweep.replica).

Each actor process keeps, in module-level caches, its model's statistics (fetched once
from the object store) and one :class:`~neva_sweep.evaluation.evaluator.Evaluator` per evaluation
setup (the unedited side computed once, or read from the disk cache). A call then only
selects neurons, builds the edits and scores all of them in shared forward passes.

Trial errors are data: :func:`run_trials` returns ``{"error": ...}`` for a trial whose
edit cannot be built or evaluated instead of raising, so one bad trial never fails the
others in its batch.
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import ray

from ..config import DataConfig, JudgeConfig
from ..edits.kind import EditKind
from ..evaluation.capability import CapabilityConfig, spread
from ..evaluation.evaluator import Evaluator
from ..methods.base import METHODS
from ..models.host import ModelHost
from ..neurons.stats import NeuronStats
from .calibrate import calibrate_edit

# Per actor process; a restarted actor starts empty and fills them again.
_STATS: dict[str, NeuronStats] = {}
_EVALUATORS: dict[EvalSetup, Evaluator] = {}

# Boxed in a list so that Ray passes the reference instead of resolving it on every call.
StatsBox = list  # [ray.ObjectRef] to NeuronStats


@dataclass(frozen=True)
class EvalSetup:
    """How trials are evaluated (the same on every replica of a sweep)."""

    judge: JudgeConfig
    capability: CapabilityConfig
    data: DataConfig
    cache_dir: str | None
    split: str = "search"  # the scenarios and neutral texts evaluated (data.EVAL_SPLITS)
    fidelity: float = 1.0  # share of the split's scenarios judged (a pruned sweep's rung 0)

    def __hash__(self) -> int:  # the configs are plain dataclasses (unhashable lists inside)
        return hash(repr(self))

    def evaluator(self, host: ModelHost) -> Evaluator:
        """An evaluator of ``host`` with these settings (a trial's, on a replica or alone)."""
        return Evaluator(host, self.judge, self.capability, self.data, self.cache_dir,
                         split=self.split, fidelity=self.fidelity)


def _stats(box: StatsBox) -> NeuronStats:
    ref = box[0]
    key = ref.hex()
    if key not in _STATS:
        _STATS.clear()  # one model per actor: keep only the current statistics
        _STATS[key] = ray.get(ref)
    return _STATS[key]


def _evaluator(host: ModelHost, setup: EvalSetup) -> Evaluator:
    if setup not in _EVALUATORS:
        _EVALUATORS[setup] = setup.evaluator(host)
    return _EVALUATORS[setup]


def _is_rank0(host: ModelHost) -> bool:
    return not host.meta.get("rank")


def prepare(host: ModelHost, box: StatsBox, setup: EvalSetup) -> dict | None:
    """Fetch the statistics and build the evaluator with its unedited side and the judge's
    null (which sets the trials' ``nlr_floor``) (warm-up; both are cached on disk)."""
    stats = _stats(box)
    ev = _evaluator(host, setup)
    ev.null(stats)
    record = ev.base_record()
    return record if _is_rank0(host) else None


def _error(e: BaseException) -> dict:
    tb = traceback.extract_tb(e.__traceback__)
    where = f" at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else ""
    return {"error": f"{type(e).__name__}: {e}{where}"}


def _evaluate(ev: Evaluator, edits: list[tuple[str, EditKind]], positions: str,
              first: list[dict] | None = None, budgets: dict | None = None) -> list[dict]:
    """All edits in one batched call; if that fails, one by one so errors stay per trial."""
    try:
        return ev.evaluate(edits, positions, first, budgets)
    except Exception:
        if len(edits) == 1:
            raise
    out = []
    for i, edit in enumerate(edits):
        try:
            out.append(ev.evaluate([edit], positions, None if first is None else [first[i]],
                                   budgets)[0])
        except Exception as e:
            out.append(_error(e))
    return out


def run_trials(host: ModelHost, box: StatsBox, setup: EvalSetup,
               trials: Sequence[dict[str, Any]]) -> list[dict] | None:
    """Evaluate ``trials`` (each ``{"value", "method", "params"}``) in shared forward passes.

    A trial with ``"fidelity": f`` (rung 0 of a pruned sweep) is judged on that share of
    the judge's rows only, and its record carries ``first_rung``; with ``"budgets"`` it is
    not judged at all when over one of them (its record says why: ``over_budget``). A
    trial with ``"first_rung"`` (its rung 1) judges the rows left and takes the rest from
    it (evaluation/rungs.py). Returns one dict per trial (the evaluator's record, or
    ``{"error": ...}``) on rank 0, None on the other ranks.
    """
    stats = _stats(box)
    results: list[dict | None] = [None] * len(trials)
    # (positions, fidelity, continues rung 0, budgets) -> edits evaluated together
    groups: dict[tuple, list[tuple[int, tuple[str, EditKind]]]] = {}
    for i, t in enumerate(trials):
        try:
            spec = METHODS[t["method"]].build(stats, t["value"], t["params"])
            group = (t["params"].get("positions", "all"), float(t.get("fidelity", 1.0)),
                     t.get("first_rung") is not None, tuple(sorted((t.get("budgets") or {})
                                                                   .items())))
            groups.setdefault(group, []).append((i, (t["value"], spec)))
        except Exception as e:
            results[i] = _error(e)
    for (positions, fidelity, continues, budgets), items in groups.items():
        try:
            ev = _evaluator(host, replace(setup, fidelity=fidelity))
            first = [trials[i]["first_rung"] for i, _ in items] if continues else None
            records = _evaluate(ev, [edit for _, edit in items], positions, first,
                                dict(budgets) or None)
        except Exception as e:
            records = [_error(e)] * len(items)
        for (i, _), rec in zip(items, records):
            results[i] = rec
    return results if _is_rank0(host) else None


def score_heldout(host: ModelHost, box: StatsBox, setup: EvalSetup,
                  jobs: Sequence[dict[str, Any]]) -> list[dict] | None:
    """Re-score chosen edits on ``setup``'s split (the test split) against dose-matched
    nulls: per job ``{"value", "method", "params", "n_nulls", "seed"}`` the edit and
    ``n_nulls`` random-direction edits of the same neuron count and push
    (:mod:`neva_sweep.methods.nulls`) are evaluated in shared passes. Returns one
    :func:`neva_sweep.evaluation.heldout.heldout_record` per job on rank 0 (``{"error"}`` for a job
    that failed), None on the other ranks.
    """
    from ..evaluation.heldout import heldout_record
    from ..methods.nulls import dose_matched_nulls, edit_push

    stats, ev = _stats(box), _evaluator(host, setup)
    out = []
    for job in jobs:
        try:
            edit = METHODS[job["method"]].build(stats, job["value"], job["params"])
            # a prompt's nulls are placebo prompts of its length (it has no push)
            nulls = dose_matched_nulls(host, edit, stats, job["n_nulls"], job["seed"])
            positions = job["params"].get("positions", "all")
            recs = ev.evaluate([(job["value"], e) for e in (edit, *nulls)], positions)
            push = None if edit.kind == "prompt" else edit_push(host, edit, stats)
            rec = heldout_record(recs[0], recs[1:], push, setup.split)
            rec["samples"] = steered_samples(host, ev, job["value"], edit, positions)
            out.append(rec)
        except Exception as e:
            out.append(_error(e))
    return out if _is_rank0(host) else None


SAMPLES, SAMPLE_TOKENS = 3, 40  # steered replies kept per chosen edit, and their length


def steered_samples(host: ModelHost, ev: Evaluator, value: str, edit: Any, positions: str
                    ) -> list[dict[str, str]]:
    """Greedy replies to :data:`SAMPLES` of ``value``'s queries (evenly spread), unedited
    and under ``edit``: what the report shows a reader beside the numbers."""
    from ..evaluation.scoring import greedy_generate

    rows = [r for r in ev.records["queries"].rows if r.get("value") == value]
    rows = spread(rows, SAMPLES, "samples")
    if not rows:
        return []
    prompts = [host.chat_prompt(r["text"]) for r in rows]
    base, edited = greedy_generate(host, prompts, [None, edit], positions, SAMPLE_TOKENS,
                                   ev.cap.batch_size)
    return [{"prompt": r["text"], "unedited": b, "edited": e}
            for r, b, e in zip(rows, base, edited)]


def calibrate(host: ModelHost, box: StatsBox, setup: EvalSetup,
              jobs: Sequence[dict[str, Any]]) -> list[dict] | None:
    """Bisect each job's dose to its KL budget on the trials' neutral texts (an evenly
    spread ``job["texts"]`` of them when that is not None), and, for a job with a value
    budget, on the value-laden replies ``kl_value`` reads (as many, evenly spread;
    :func:`neva_sweep.sweep.calibrate.calibrate_edit`). Returns one
    :class:`~.calibrate.Calibration` dict per job on rank 0 (``{"error"}`` for a job that
    failed), None on the other ranks.
    """
    stats, ev = _stats(box), _evaluator(host, setup)
    out = []
    for job in jobs:
        try:
            texts = spread(ev.neutral, job["texts"], "search.calibration.texts")
            value = (spread(ev.value_texts(), job["texts"], "search.calibration.texts")
                     if job.get("value_budget") is not None else None)
            out.append(calibrate_edit(host, stats, texts, ev.cap, job, value).to_dict())
        except Exception as e:
            out.append(_error(e))
    return out if _is_rank0(host) else None
