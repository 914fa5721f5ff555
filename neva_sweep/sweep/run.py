"""``task=sweep``: plan -> studies -> replicas -> statistics -> scheduler -> files and W&B.

Everything that can be checked without a cluster is checked first (plan.py); then the
driver takes the run's lock (lock.py: one driver per storage) and only then fails trials a
dead driver left RUNNING. From there on the files and the W&B run are written and closed,
and the lock released, whatever happens (Ctrl-C and SIGTERM included).
"""

from __future__ import annotations

import json
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
import ray
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from ..builders import stats_settings
from ..config import DataConfig, JudgeConfig, check_layer_window
from ..evaluation.capability import CapabilityConfig
from ..neurons.stats import stats_inputs_hash
from ..redact import redact
from .calibration_pass import calibrate_studies
from .cluster import ReplicaWorker, model_stats, ray_session, start_replicas
from .identity import check_identity
from .lock import run_lock
from .outputs import Outputs
from .phases import phase
from .plan import (
    Resources,
    SweepPlan,
    make_plan,
    replica_counts,
    trial_capability,
    trial_judge,
)
from .rescore import has_test_split, pending, rescore
from .scheduler import Interrupted, Scheduler, reclaim_sigterm, sigterm_stops
from .storage import open_storage
from .studies import StudyState, fail_stale_trials, open_studies
from .tracking import SweepLogger, make_logger
from .warm import warm_start
from .worker import EvalSetup

log = logging.getLogger(__name__)


@dataclass
class SweepResult:
    run_dir: Path
    studies: list[StudyState]
    paths: dict[str, Path]


def run_sweep(cfg: DictConfig, run_dir: str | Path, callbacks=(),
              report: Callable[[Path], Path] | None = None,
              plan: SweepPlan | None = None) -> SweepResult:
    """Run (or resume) the sweep ``cfg`` describes, writing its files into ``run_dir``.

    ``plan``: the checked plan of ``cfg`` (``task=sweep`` passes the one its preflight
    built, :func:`neva_sweep.preflight.preflight`); None builds and checks it here, as a
    call from Python needs.

    ``callbacks`` get every told trial (:class:`~neva_sweep.sweep.scheduler.Outcome`).
    ``report(run_dir)``: a view of the written files (``task=sweep`` passes
    :func:`neva_sweep.report.build_report`), built before the logger closes so that it
    is logged too; its failure is a warning, never the sweep's.
    Ctrl-C raises :class:`~neva_sweep.sweep.scheduler.Interrupted` (a KeyboardInterrupt)
    after the files are written; SIGTERM takes the same path and ends in
    ``SystemExit(143)``, as a terminated process should. Another live driver on the same
    storage raises :class:`~neva_sweep.sweep.lock.RunLockedError` before anything starts.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if plan is None:
        plan = make_plan(cfg, run_dir)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar reports trials
    if cfg.cluster.kind == "local" and not ray.is_initialized():
        replica_counts(plan.models, cfg.cluster, local_resources(cfg.cluster))  # fail early
    try:
        with sigterm_stops(), run_lock(plan.storage) as lock:
            check_identity(cfg, run_dir)  # another setup in this directory: refused here
            states = open_studies(plan.studies, open_storage(plan.storage), cfg.search)
            stale = fail_stale_trials(states, lock)  # only now: no live driver owns them
            if stale:
                log.warning("marked %d trial(s) left RUNNING by a stopped driver as FAIL", stale)
            paths = _drive(cfg, plan, run_dir, states, callbacks, report)
    except Interrupted as e:
        if e.signum != signal.SIGTERM:
            raise
        log.warning("sweep stopped by %s: trials in flight were marked FAIL; run the same "
                    "command (same run directory and search.storage) to resume", e)
        raise SystemExit(e.exit_code) from None
    print(summary(states))
    for p in paths.values():
        log.info("wrote %s", p)
    bad = failed_studies(states)
    if bad:
        raise SweepFailed(f"{len(bad)} of {len(states)} studies failed ({'; '.join(bad)}); "
                          f"every trial is in {paths.get('trials', run_dir / 'trials.csv')}")
    return SweepResult(run_dir, states, paths)


class SweepFailed(RuntimeError):
    """The sweep ran but some study has no COMPLETE trial, or more than half of its trials
    failed in this run: a failed search (the files are written). Exit status 1."""

    exit_code = 1


def failed_studies(states: list[StudyState]) -> list[str]:
    """``"<study>: <why>, first failure: <its error>"`` for each failed study."""
    out = []
    for s in states:
        if s.complete and s.failed * 2 <= s.target:
            continue
        why = ("no COMPLETE trial" if not s.complete else
               f"{s.failed} of {s.target} trials failed")
        first = next((t.user_attrs.get("error") for t in s.study.get_trials(deepcopy=False)
                      if t.state == optuna.trial.TrialState.FAIL
                      and t.user_attrs.get("error")), None)
        name = f"{s.key.model}/{s.key.value}/{s.key.method}"
        out.append(f"{name}: {why}" + (f", first failure: {first}" if first else ""))
    return out


def _drive(cfg: DictConfig, plan: SweepPlan, run_dir: Path, states: list[StudyState],
           callbacks, report: Callable[[Path], Path] | None) -> dict[str, Path]:
    """Run the missing trials; the files and the logger are finished however it ends."""
    outputs = Outputs(run_dir, states, plan.models, cfg.search)
    # W&B gets the config with secrets masked (storage passwords, keys named like tokens)
    logger = make_logger(cfg.logger, run_dir, redact(OmegaConf.to_container(cfg, resolve=True)))
    exit_code = 1
    try:
        missing = sum(s.missing for s in states)
        done = sum(s.complete for s in states)
        log.info("sweep: %d studies in %s storage, %d trials complete, %d to run",
                 len(states), plan.storage.split("://")[0], done, missing)
        # models whose chosen edits still lack a held-out score (a resumed sweep); None:
        # no held-out pass (search.heldout=false, or data without a test split)
        unscored = ({k.model for k in pending(outputs)}
                    if cfg.search.heldout and has_test_split(cfg.data) else None)
        if missing or unscored:
            _run_trials(cfg, plan, states, outputs, [logger.log_trial, *callbacks], unscored)
        exit_code = 0
    except KeyboardInterrupt as e:
        exit_code = getattr(e, "exit_code", 130)
        raise
    finally:
        paths = _finish(outputs, logger, exit_code, report)
    return paths


def _finish(outputs: Outputs, logger: SweepLogger, exit_code: int,
            report: Callable[[Path], Path] | None) -> dict[str, Path]:
    """Write the files, then close the logger even if writing failed."""
    paths: dict[str, Path] = {}
    try:
        paths = outputs.write()
        warn_infeasible(paths.get("best_edits"))
        try:  # the report is a view of the files: never let it fail the sweep
            if report is not None:
                paths["report"] = report(outputs.run_dir)
        except Exception as e:
            log.warning("report not written: %s: %s", type(e).__name__, e)
    finally:
        logger.finish(outputs.rows(), {**outputs.paths(), **paths}, exit_code)
    return paths


def warn_infeasible(best_edits: Path | None) -> None:
    """A study without a feasible trial is a failed search, not a blank row: say which and
    why (best_edits.json ``missing``)."""
    if best_edits is None or not best_edits.is_file():
        return
    for m in json.loads(best_edits.read_text()).get("missing", []):
        log.warning("no best edit for %s/%s/%s: %s; run more trials, or check the budgets "
                    "(search.max_*) and the study's calibration (pareto.json)", m["model"],
                    m["value"], m["method"], m["reason"])


def local_resources(cluster: DictConfig) -> Resources:
    gpus = torch.cuda.device_count()
    return Resources(float(cluster.num_cpus or os.cpu_count()), float(gpus), float(gpus))


def eval_setup(cfg: DictConfig) -> EvalSetup:
    return EvalSetup(
        judge=JudgeConfig(**trial_judge(cfg)),
        capability=CapabilityConfig(**trial_capability(cfg)),
        data=DataConfig(**OmegaConf.to_container(cfg.data, resolve=True)),
        cache_dir=str(Path(cfg.cache_dir) / "eval") if cfg.cache_dir else None,
    )


def _run_trials(cfg: DictConfig, plan: SweepPlan, states: list[StudyState], outputs: Outputs,
                callbacks: list, unscored: set[str] | None) -> None:
    """Run the missing trials, then the held-out pass (``unscored`` None: the data have
    no test split, no held-out pass)."""
    probes, stats_cfg, stats_cache = stats_settings(cfg)
    setup = eval_setup(cfg)
    # Only models with trials or held-out scores left get replicas (a resumed sweep).
    models = [m for m in plan.models if m.label in (unscored or ())
              or any(s.missing for s in states if s.key.model == m.label)]
    with ray_session(cfg.cluster) as resources:
        reclaim_sigterm()  # ray.init installed its own SIGTERM handler (exit 1, no safe stop)
        counts = replica_counts(models, cfg.cluster, resources)
        log.info("replicas: %s", ", ".join(f"{m} x{n}" for m, n in counts.items()))
        with phase(f"starting {sum(counts.values())} replica(s) (model loading)"):
            replicas = start_replicas(models, counts, cfg.cluster,
                                      list(cfg.get("plugins") or []))
        try:
            workers: list[ReplicaWorker] = []
            model_keys: dict[str, str] = {}
            for m in models:
                with phase(f"{m.label}: statistics ({len(probes)} probe texts on "
                           f"{len(replicas[m.label])} replica(s), or the cache)"):
                    stats = model_stats(replicas[m.label], probes, stats_cfg, stats_cache)
                if m.n_layers is None:  # the plan could not read its layer count
                    for w in cfg.search.space.layer_windows or []:
                        check_layer_window("search.space.layer_windows", w,
                                           len(stats.layer_sizes), m.label)
                outputs.stats[m.label] = stats
                model_keys[m.label] = f"{m.label}:{stats_inputs_hash(stats)}"
                box = [ray.put(stats)]  # one copy in the object store, fetched once per actor
                workers += [ReplicaWorker(m, i, r, box, setup)
                            for i, r in enumerate(replicas[m.label])]
            with phase("unedited side and the judge's null on every replica"):
                prepare(workers)
            # strength boxes around the KL budget, then first trials from what worked
            calibrate_studies(states, workers, cfg.search, setup, model_keys, cfg.progress)
            warm_start(states, cfg.search)
            Scheduler(states, workers, cfg.search, callbacks=callbacks,
                      checkpoint=outputs.write, progress=cfg.progress).run()
            if unscored is not None:
                with phase("held-out pass: chosen edits on the test split"):
                    rescore(outputs, workers, cfg.search, setup, cfg.progress)
        finally:
            for reps in replicas.values():
                for r in reps:
                    r.kill()


def prepare(workers: list[ReplicaWorker]) -> None:
    """Build every replica's evaluator. The first replica of each model goes first, so the
    others read its unedited side from the disk cache instead of recomputing it."""
    first: dict[str, ReplicaWorker] = {}
    for w in workers:
        first.setdefault(w.model, w)
    for group in (list(first.values()), [w for w in workers if w not in first.values()]):
        refs = [w.prepare() for w in group]
        for w, rec in zip(group, ray.get(refs)):
            if w in first.values():
                acc = rec["accuracy_base"]
                acc = "no MC" if acc is None else f"MC accuracy {acc:.3f}"
                tqdm.write(f"{w.model}: unedited side ready ({acc}, {rec['n_queries']} judge "
                           f"rows, {rec['n_mc']} MC questions, nlr_floor "
                           f"{rec['nlr_floor']:.4f} from the judge's null)")


def summary(states: list[StudyState]) -> str:
    lines = [f"{'study':<44}{'complete':>10}{'pruned':>8}{'failed':>8}{'best feasible A':>16}"]
    for s in states:
        best = f"{s.best_alignment:+.4f}" if s.best_alignment is not None else "-"
        name = f"{s.key.model}/{s.key.value}/{s.key.method}"
        lines.append(f"{name:<44}{s.complete:>6}/{s.target:<3}{s.pruned:>8}{s.failed:>8}"
                     f"{best:>16}")
    return "\n".join(lines)

