"""The sweep driver: an ask/tell loop that keeps every model replica busy.

Per iteration it (1) hands the least-loaded worker a batch of up to ``trials_per_batch``
trials of its model, asked round-robin from that model's studies (so values advance
together), until ``max_in_flight`` trials are asked but not told (default: two batches
per worker, one running and one queued behind it, so a replica never idles while the
driver talks to the storage); (2) waits for any batch to finish and tells Optuna.
Workers hand back a handle per batch that a :class:`Backend` waits on: Ray object refs
(:class:`RayBackend`, the default), or anything else a test or another executor provides.

A trial whose searched parameters repeat a COMPLETE trial's is told that result at once
and never sent to a replica (``repeat_of``; evaluation is deterministic).

Failures are data: a trial whose evaluation raised or returned a non-finite objective is
told FAIL with the reason in its ``error`` user attribute. A worker whose actor died is
restarted and its trials are retried once (on whichever replica of the model is free
first); a second death fails them. A worker that cannot be restarted is dropped (and with
it, unless ``search.max_in_flight`` is set, its share of the trials in flight); a model
left without workers stops its studies for this run. Ctrl-C (SIGINT) and SIGTERM (what
Slurm sends at the time limit and on scancel, and what ``kill`` sends) stop at the next
safe point (never in the middle of a storage write): trials in flight are told FAIL, so
the storage holds no RUNNING trials, and re-running the same command asks only the
missing ones. The loop then raises :class:`Interrupted` (a ``KeyboardInterrupt``).
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import optuna
import ray
from omegaconf import DictConfig
from tqdm.auto import tqdm

from ..methods.base import METHODS
from . import pruning
from .calibrate import absolute_params
from .front import budgets, is_feasible
from .front_pruner import RUNG0_POINT
from .plan import StudyKey
from .storage import enqueued_params, set_user_attrs
from .studies import (
    ATTR_KEYS,
    StudyState,
    objective_values,
    record_attrs,
    repeated_trial,
)

POLL_S = 0.2  # how often a waiting driver looks at Ctrl-C and the checkpoint timer
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # both stop the driver at a safe point
DEAD = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
        ray.exceptions.ObjectLostError)


class Worker(Protocol):
    """What the scheduler needs from a model replica (see cluster.ReplicaWorker)."""

    model: str  # the label of the model it hosts
    name: str  # unique, recorded as the trial's ``replica`` user attribute
    tp_size: int

    def submit(self, trials: list[dict]) -> Any:
        """Evaluate trials ``{"value", "method", "params"}``; a handle (for the scheduler's
        :class:`Backend`) to one dict per trial."""

    def restart(self) -> None:
        """Replace dead actors (blocking)."""


class Interrupted(KeyboardInterrupt):
    """The driver was asked to stop by signal ``signum`` (SIGINT: Ctrl-C; SIGTERM: Slurm's
    time limit or scancel, ``kill``). A ``KeyboardInterrupt``, so code written for Ctrl-C
    handles both; ``exit_code`` is the shell's 128 + signal number (130, 143)."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        super().__init__(signal.Signals(self.signum).name)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def reason(self) -> str:
        """What the trials told FAIL on the way out record."""
        what = "Ctrl-C" if self.signum == signal.SIGINT else signal.Signals(self.signum).name
        return f"interrupted ({what}); re-run the same command to resume"


# A stop signal has arrived in this process (signal handlers are process-wide, so is this).
_stopping = threading.Event()


@contextmanager
def sigterm_stops() -> Iterator[None]:
    """While inside (a whole sweep), the first SIGTERM raises :class:`Interrupted` where the
    main thread is, as SIGINT raises KeyboardInterrupt: by default SIGTERM kills the process
    before any ``finally`` runs (no files, the lock left behind). Later SIGTERMs are
    ignored, so a repeated one (Slurm signals the job script, which forwards it, and the
    driver) cannot cut the way out short. Code that installs its own handler (``ray.init``)
    must be followed by :func:`reclaim_sigterm`. A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _stopping.clear()
    previous = signal.signal(signal.SIGTERM, _sigterm_raises)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def reclaim_sigterm() -> None:
    """Put :func:`sigterm_stops`'s handler back (``ray.init`` installs one that exits 1)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _sigterm_raises)


def _sigterm_raises(signum, frame) -> None:
    if _stopping.is_set():
        return
    _stopping.set()
    raise Interrupted(signum)


class Backend(Protocol):
    """How the scheduler waits on the workers' handles."""

    def wait(self, handles: list, timeout: float) -> list:
        """The handles that are done, waiting up to ``timeout`` seconds for the first."""

    def get(self, handle: Any) -> Any:
        """The handle's result; raises what the work raised (Ray's exceptions for Ray)."""


class RayBackend:
    """Handles are Ray object refs."""

    def wait(self, handles: list, timeout: float) -> list:
        done, _ = ray.wait(handles, num_returns=1, timeout=timeout)
        if done:  # and whatever else is ready already
            done, _ = ray.wait(handles, num_returns=len(handles), timeout=0)
        return done

    def get(self, handle: Any) -> Any:
        return ray.get(handle)


@dataclass
class Pending:
    """A trial asked from its study and not yet told.

    With pruning (sweep/pruning.py) it runs twice: ``rung`` 0 on ``fidelity`` of the
    scenarios (unjudged when over one of ``budgets``), then, unless pruned, rung 1 on the
    rest of them, continuing from ``first_rung`` (rung 0's rows and capability measures,
    evaluation/rungs.py); ``twin`` is its trial in the study's rung study."""

    state: StudyState
    trial: optuna.Trial
    params: dict[str, Any]
    retried: bool = False
    twin: optuna.Trial | None = None
    fidelity: float = 1.0
    rung: int = 0
    rung0_s: float = 0.0  # rung 0's evaluation time
    first_rung: dict | None = None  # what rung 1 continues from (None: it runs in full)
    # an enqueued warm start's parameters (None: a sampled trial): the pruner never prunes
    # it, and an interrupted one is enqueued again
    fixed: dict | None = None
    budgets: dict[str, float] = field(default_factory=dict)  # what rung 0 settles

    def request(self) -> dict:
        req = {"value": self.state.key.value, "method": self.state.key.method,
               "params": self.params}
        if self.twin is not None and self.rung == 0:
            req["fidelity"] = self.fidelity
            req["budgets"] = self.budgets
        elif self.first_rung is not None:
            req["first_rung"] = self.first_rung
        return req


@dataclass
class Outcome:
    """A told trial, as callbacks (logger, tests) see it."""

    key: StudyKey
    number: int
    state: str  # COMPLETE | PRUNED | FAIL
    params: dict[str, Any]
    metrics: dict[str, Any] | None
    error: str | None
    worker: str


@dataclass
class _Batch:
    worker: Worker
    generation: int  # the worker's restart count when submitted
    trials: list[Pending]
    started: float = field(default_factory=time.time)


class Scheduler:
    """Runs the missing trials of ``studies`` on ``workers`` (see the module docstring)."""

    def __init__(self, studies: list[StudyState], workers: list[Worker], search: DictConfig,
                 callbacks: list[Callable[[Outcome], None]] = (),
                 checkpoint: Callable[[], None] | None = None, checkpoint_every_s: float = 30.0,
                 progress: bool = True, backend: Backend | None = None):
        self.studies, self.workers, self.search = studies, list(workers), search
        self.tpb = int(search.trials_per_batch)
        self.rung0_budgets = pruning.rung0_budgets(search)  # the same for every trial
        self.limits = budgets(search)  # a trial over one is never shown as a study's best
        self.backend = backend or RayBackend()
        self.callbacks, self.checkpoint = list(callbacks), checkpoint
        self.checkpoint_every_s, self.progress = checkpoint_every_s, progress
        self.inflight: dict[Any, _Batch] = {}
        self.n_inflight = 0  # trials in self.inflight (kept, not summed: hundreds of batches)
        self.retry: dict[str, deque[Pending]] = {w.model: deque() for w in self.workers}
        self.outstanding = {w.name: 0 for w in self.workers}
        self.generation = {w.name: 0 for w in self.workers}
        self._rr_worker = 0
        self._rr_study = {w.model: 0 for w in self.workers}
        self._interrupted: int | None = None  # the stop signal received, if any
        self.bar: tqdm | None = None

    @property
    def max_in_flight(self) -> int:
        """``search.max_in_flight``; by default one batch running and one queued per worker
        (of those still alive), so that no replica waits while the driver tells results and
        asks new trials."""
        return int(self.search.max_in_flight or 2 * len(self.workers) * self.tpb)

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> None:
        last_checkpoint = time.time()
        total = sum(s.missing for s in self.studies)
        with tqdm(total=total, desc="trials", unit="trial", disable=not self.progress,
                  dynamic_ncols=True) as self.bar, self._sigint_deferred():
            self._postfix()
            try:
                while True:
                    self._check_interrupt()
                    self._fill()
                    if not self.inflight:
                        break
                    done = self.backend.wait(list(self.inflight), POLL_S)
                    for ref in done:
                        self._check_interrupt()
                        self._collect(ref)
                    if self.checkpoint and time.time() - last_checkpoint > self.checkpoint_every_s:
                        self.checkpoint()
                        last_checkpoint = time.time()
            except BaseException as e:
                # Ctrl-C, SIGTERM, or a bug: leave no RUNNING trial behind.
                if isinstance(e, Interrupted):
                    reason = e.reason
                elif isinstance(e, KeyboardInterrupt):
                    reason = Interrupted(signal.SIGINT).reason
                else:
                    reason = f"driver error: {e!r}"
                self._abandon(reason)
                raise

    def _check_interrupt(self) -> None:
        if self._interrupted is not None:
            raise Interrupted(self._interrupted)

    @contextmanager
    def _sigint_deferred(self) -> Iterator[None]:
        """First SIGINT or SIGTERM: stop at the next safe point. A second Ctrl-C: stop now; a
        second SIGTERM is ignored (schedulers repeat it; SIGKILL is their hard stop)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self._interrupted is not None:
                if signum == signal.SIGINT:
                    raise Interrupted(signum)
                return
            self._interrupted = signum
            _stopping.set()

        previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    # -- handing out work ----------------------------------------------------------------
    def _has_work(self, model: str) -> bool:
        return bool(self.retry[model]) or any(
            s.wants_more() for s in self.studies if s.key.model == model)

    def _next_worker(self) -> Worker | None:
        """The least-loaded worker with work for its model; ties go round-robin."""
        n = len(self.workers)
        # Once per model, not per worker: hundreds of replicas share a few models.
        work = {m: self._has_work(m) for m in dict.fromkeys(w.model for w in self.workers)}
        best, best_load = None, None
        for i in range(n):
            j = (self._rr_worker + i) % n
            w = self.workers[j]
            if work[w.model] and (best_load is None or self.outstanding[w.name] < best_load):
                best, best_load = j, self.outstanding[w.name]  # the first of the ties
        if best is None:
            return None
        self._rr_worker = (best + 1) % n
        return self.workers[best]

    def _fill(self) -> None:
        while (room := self.max_in_flight - self.n_inflight) > 0:
            worker = self._next_worker()
            if worker is None:
                return
            batch = self._take(worker.model, min(self.tpb, room))
            if batch:  # empty when every trial asked repeated a finished one
                self._submit(worker, batch)

    def _take(self, model: str, n: int) -> list[Pending]:
        """Up to ``n`` trials of ``model``: retries first, then new asks round-robin."""
        batch: list[Pending] = []
        queue = self.retry[model]
        while queue and len(batch) < n:
            batch.append(queue.popleft())
        mine = [s for s in self.studies if s.key.model == model]
        while len(batch) < n:
            state = self._next_study(model, mine)
            if state is None:
                break
            pending = self._ask(state)
            if pending is not None:
                batch.append(pending)
        return batch

    def _next_study(self, model: str, mine: list[StudyState]) -> StudyState | None:
        for i in range(len(mine)):
            state = mine[(self._rr_study[model] + i) % len(mine)]
            if state.wants_more():
                self._rr_study[model] = (self._rr_study[model] + i + 1) % len(mine)
                return state
        return None

    def _ask(self, state: StudyState) -> Pending | None:
        """Ask ``state``'s study for a trial to run; None when the trial repeats a COMPLETE
        one and was told its result at once (:meth:`_repeat`)."""
        trial = state.study.ask()
        params = METHODS[state.key.method].suggest(trial, state.space or self.search.space)
        extra = {}
        if state.edge is not None:  # a multiple of the budget dose at this layout was drawn
            params, extra["edge_frac"] = absolute_params(state.edge, state.key.method, params)
        fixed = enqueued_params(state.study, trial)
        if fixed is not None:
            extra["warm_start"] = True
        same = repeated_trial(state.study, trial.params)
        if same is not None:
            self._repeat(state, trial, params, extra, same)
            return None
        twin = state.rungs.ask() if state.rungs is not None else None
        if twin is not None:
            extra["rung_trial"] = twin.number
        set_user_attrs(trial, {"params": params, **extra})
        state.running += 1
        return Pending(state, trial, params, twin=twin,
                       fidelity=float(self.search.get("fidelity", 1.0)), fixed=fixed,
                       budgets=self.rung0_budgets if twin is not None else {})

    def _submit(self, worker: Worker, batch: list[Pending]) -> None:
        try:
            ref = worker.submit([p.request() for p in batch])
        except Exception as e:  # e.g. the replica was killed and could not be restarted
            self._died(worker, self.generation[worker.name], batch, e)
            return
        self.inflight[ref] = _Batch(worker, self.generation[worker.name], batch)
        self.n_inflight += len(batch)
        self.outstanding[worker.name] += 1

    # -- results ---------------------------------------------------------------------------
    def _collect(self, ref: Any) -> None:
        b = self.inflight.pop(ref)
        self.n_inflight -= len(b.trials)
        self.outstanding[b.worker.name] -= 1
        try:
            results = self.backend.get(ref)
        except DEAD as e:
            self._died(b.worker, b.generation, b.trials, e)
            return
        except ray.exceptions.RayError as e:  # the trial function itself raised
            for p in b.trials:
                self._fail(p, _first_line(e), b.worker)
            if b.worker.tp_size > 1:  # another rank may be stuck in a collective
                self._restart(b.worker, b.generation)
            return
        for p, res in zip(b.trials, results):
            if not isinstance(res, dict) or "error" in res:
                err = res.get("error") if isinstance(res, dict) else f"no result ({res!r})"
                self._fail(p, err, b.worker)
            elif p.twin is not None and p.rung == 0:
                self._first_rung(p, res, b.worker, time.time() - b.started)
            else:
                self._complete(p, res, b.worker, time.time() - b.started)

    def _first_rung(self, p: Pending, metrics: dict, worker: Worker, wall_s: float) -> None:
        """Rung 0 is back: prune the trial, or queue its full evaluation first in line."""
        set_user_attrs(p.trial, {"rung0_kl": metrics.get("kl")})
        # Over a budget on fixed texts: measured and settled at rung 0, never judged
        # (evaluation/rungs.py), so the twin has no alignment to report.
        reason = metrics.get("over_budget")
        if reason is None:
            a = metrics.get("alignment")
            if a is None or not math.isfinite(float(a)):
                self._fail(p, f"rung 0: alignment is {a} (not a finite number)", worker)
                return
            set_user_attrs(p.trial, {"rung0_alignment": float(a),
                                     "rung0_queries": metrics.get("n_queries")})
            p.twin.report(float(a), pruning.FIRST_RUNG_STEP)
            point = rung0_point(metrics, self.search.objectives)
            p.twin.set_user_attr(RUNG0_POINT, point)
            # A warm start is measured in full whatever its rung-0 alignment: the starts
            # are the search's floor (results.md 0d), and a few rung-0 rows are a noisy
            # verdict.
            if p.fixed is None and p.twin.should_prune():
                scores = ", ".join(f"{k} {v:+.4f}" for k, v in point.items())
                reason = (f"search.pruner={self.search.pruner}: rung-0 {scores} on "
                          f"{metrics.get('n_queries')} judge rows")
        if reason is not None:
            self._prune(p, metrics, worker, reason, wall_s)
            return
        p.rung, p.rung0_s = 1, float(metrics.get("duration_s") or 0.0)
        p.first_rung = metrics.get("first_rung")
        self.retry[p.state.key.model].appendleft(p)  # taken before any new ask

    def _prune(self, p: Pending, metrics: dict, worker: Worker, reason: str,
               wall_s: float) -> None:
        """Tell the trial PRUNED: its rung-0 metrics stay as attributes, it never becomes a
        best edit, and it counts toward the study's trials."""
        record_attrs(p.trial, metrics, {"replica": worker.name, "pruned": reason,
                                        "duration_s": metrics.get("duration_s"),
                                        "batch_wall_s": wall_s}, self.search)
        p.state.study.tell(p.trial, state=optuna.trial.TrialState.PRUNED)
        p.state.rungs.tell(p.twin, state=optuna.trial.TrialState.PRUNED)
        s = p.state
        s.running -= 1
        s.pruned += 1
        self.bar.update(1)
        self._told(Outcome(s.key, p.trial.number, "PRUNED", p.params, metrics, reason,
                           worker.name))

    def _complete(self, p: Pending, metrics: dict, worker: Worker, wall_s: float) -> None:
        try:
            values = objective_values(metrics, self.search.objectives)
        except FloatingPointError as e:
            self._fail(p, str(e), worker)
            return
        duration = metrics.get("duration_s")
        if duration is not None and p.rung0_s:  # both rungs' evaluation time
            duration = float(duration) + p.rung0_s
        record_attrs(p.trial, metrics, {"replica": worker.name, "retried": p.retried,
                                        "duration_s": duration, "batch_wall_s": wall_s,
                                        "raw": raw_dose(metrics)}, self.search)
        p.state.study.tell(p.trial, values)
        if p.twin is not None:
            p.state.rungs.tell(p.twin, float(metrics["alignment"]))
        s = p.state
        s.running -= 1
        s.complete += 1
        a = metrics.get("alignment")
        if a is not None and is_feasible(metrics, self.limits) and (
                s.best_alignment is None or a > s.best_alignment):
            s.best_alignment = a
        self.bar.update(1)
        self._told(Outcome(s.key, p.trial.number, "COMPLETE", p.params, metrics, None,
                           worker.name))

    def _repeat(self, state: StudyState, trial: optuna.Trial, params: dict[str, Any],
                extra: dict[str, Any], same: optuna.trial.FrozenTrial) -> None:
        """Tell ``trial`` the result of ``same``, a COMPLETE trial with the same searched
        parameters (evaluation is deterministic: running it again would cost a trial's
        time for the same numbers). It counts as a COMPLETE trial of zero duration, with
        ``repeat_of`` (trials.csv) naming the trial that measured it."""
        a = same.user_attrs
        metrics = {k: a[k] for k in ATTR_KEYS if k in a}
        set_user_attrs(trial, {"params": params, **extra})
        record_attrs(trial, metrics, {"replica": a.get("replica"), "repeat_of": same.number,
                                      "duration_s": 0.0, "raw": a.get("raw")}, self.search)
        state.study.tell(trial, objective_values(metrics, self.search.objectives))
        state.complete += 1
        self.bar.update(1)
        self._told(Outcome(state.key, trial.number, "COMPLETE", params, metrics, None,
                           "repeat"))

    def _fail(self, p: Pending, error: str, worker: Worker | None) -> None:
        attrs = {"error": str(error)[:2000]}
        if worker is not None:
            attrs["replica"] = worker.name
        set_user_attrs(p.trial, attrs)
        p.state.study.tell(p.trial, state=optuna.trial.TrialState.FAIL)
        if p.twin is not None:
            p.state.rungs.tell(p.twin, state=optuna.trial.TrialState.FAIL)
        p.state.running -= 1
        p.state.failed += 1
        self._told(Outcome(p.state.key, p.trial.number, "FAIL", p.params, None, str(error),
                           worker.name if worker else ""))

    def _told(self, outcome: Outcome) -> None:
        self._postfix()
        for cb in self.callbacks:
            cb(outcome)

    # -- dead actors -------------------------------------------------------------------------
    def _died(self, worker: Worker, generation: int, trials: list[Pending], e: Exception) -> None:
        self._restart(worker, generation)
        for p in trials:
            if p.retried:
                self._fail(p, f"actor died twice: {_first_line(e)}", worker)
            else:
                p.retried = True
                self.retry[p.state.key.model].append(p)
        self._orphans(worker.model)

    def _restart(self, worker: Worker, generation: int) -> None:
        """Restart once per death (its other batches fail with the same death)."""
        if worker not in self.workers or generation != self.generation[worker.name]:
            return
        self.generation[worker.name] += 1
        tqdm.write(f"replica {worker.name} died or got stuck; restarting it")
        try:
            worker.restart()
        except Exception as e:
            tqdm.write(f"replica {worker.name} could not be restarted ({_first_line(e)}); "
                       "going on without it")
            self.workers.remove(worker)  # the default max_in_flight shrinks with it

    def _orphans(self, model: str) -> None:
        """A model left without replicas: its retries cannot run, and no more trials are asked."""
        if any(w.model == model for w in self.workers):
            return
        while self.retry[model]:
            self._fail(self.retry[model].popleft(), "no replica of the model is left", None)
        for s in self.studies:
            if s.key.model == model:
                s.stopped = "no replica of the model is left"

    def _abandon(self, reason: str) -> None:
        """Tell every trial in flight or waiting for a retry FAIL with ``reason``; a warm
        start among them is enqueued again, so the next run of the same command runs it
        first (the starts are the search's floor, results.md 0d: a stop must not cost one,
        as a dead driver's does not, sweep/studies.py fail_stale)."""
        pending = [p for b in self.inflight.values() for p in b.trials]
        pending += [p for q in self.retry.values() for p in q]
        self.inflight.clear()
        self.n_inflight = 0
        for q in self.retry.values():
            q.clear()
        for p in pending:
            try:
                self._fail(p, reason, None)
                if p.fixed is not None:
                    p.state.study.enqueue_trial(p.fixed)
            except Exception as e:  # keep failing the others
                tqdm.write(f"could not mark trial {p.trial.number} FAIL: {e!r}")

    # -- display -------------------------------------------------------------------------------
    def _postfix(self) -> None:
        if self.bar is None or self.bar.disable:
            return
        best: dict[str, float] = {}
        for s in self.studies:
            if s.best_alignment is not None:
                v = s.key.value
                best[v] = max(best.get(v, -1e9), s.best_alignment)
        failed = sum(s.failed for s in self.studies)
        pruned = sum(s.pruned for s in self.studies)
        parts = [f"failed={failed}"] + ([f"pruned={pruned}"] if pruned else [])
        parts += [f"{v[:5]}={a:+.3f}" for v, a in best.items()]
        self.bar.set_postfix_str(" ".join(parts), refresh=False)


def rung0_point(metrics: dict, objectives: dict) -> dict[str, float]:
    """Rung 0's finite objectives, which the front pruner compares (sweep/front_pruner.py).

    >>> rung0_point({"alignment": 0.02, "nlr": float("nan")}, {"alignment": "maximize",
    ...             "nlr": "minimize"})
    {'alignment': 0.02}
    """
    out = {}
    for k in objectives:
        v = metrics.get(k)
        if v is not None and math.isfinite(float(v)):
            out[k] = float(v)
    return out


def raw_dose(metrics: dict) -> dict[str, Any]:
    """The raw setting an edit ran at (``magnitude``, ``coefficient``), from its record's
    edit description: what a scaled ``strength`` came to (trials.csv columns)."""
    edit = metrics.get("edit") or {}
    return {k: edit[k] for k in ("magnitude", "coefficient") if k in edit}


def _first_line(e: BaseException) -> str:
    """A Ray error's own message (its str() is the whole remote traceback)."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}"
