"""Scheduler overhead: N fake replicas that sleep a fixed time per batch.

A perfect driver keeps every replica busy, so N replicas that each run ``batches``
batches of ``duration`` seconds finish in ``batches * duration`` seconds; this reports
that ideal time over the measured wall time (the fraction of the ideal throughput
``N * trials_per_batch / duration`` trials/s), with the real Scheduler, real Optuna
studies (TPE) in a real storage (SQLite, or Optuna's journal file) and real Ray object
refs; only the model is fake.

The studies are a full sweep's: 10 values x 4 methods x 3 models (120 studies), the N
replicas split over the 3 models as evenly as they go, and each model given exactly
``batches`` batches per replica of trials, spread over its 40 studies.

The N replicas live in ONE async Ray actor, so N = 256 does not need 256 processes: a
replica is a name, its batches run one at a time behind a per-replica lock (as a real
replica, a max_concurrency=1 actor, queues them) and each takes ``duration`` seconds of
``asyncio.sleep``. The actor's own CPU (Ray's per-call cost) competes with the driver for
the machine's cores, as a real replica's process would not.

    OMP_NUM_THREADS=1 python benchmarks/perf/sweep_scheduler.py [--replicas 16 64 256]
        [--duration 20] [--batches 6] [--trials-per-batch 1] [--storage sqlite|journal]
        [--repeats 1] [--profile PREFIX]

``--profile PREFIX`` writes cProfile stats of the driver's main thread per N
(``PREFIX-<N>.prof``) and prints the top entries.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import resource
import tempfile
import time
from pathlib import Path

import ray

from neva_sweep.config import compose_config
from neva_sweep.sweep.plan import StudyKey
from neva_sweep.sweep.scheduler import Scheduler
from neva_sweep.sweep.storage import open_storage
from neva_sweep.sweep.studies import open_studies
from neva_sweep.values import VALUES

MODELS = ("fake-a", "fake-b", "fake-c")
METHODS = ("neva", "random_neurons", "caa", "prompt")


@ray.remote(num_cpus=0)
class Replicas:
    """Every fake replica: each answers its batches in order, ``duration`` seconds apiece."""

    def __init__(self, duration: float):
        self.duration = duration
        self.locks: dict[str, asyncio.Lock] = {}
        self.first: dict[str, float] = {}  # when each replica started its first batch

    async def run(self, replica: str, trials: list[dict]) -> list[dict]:
        lock = self.locks.setdefault(replica, asyncio.Lock())
        async with lock:  # one batch at a time per replica, the next one queued behind
            self.first.setdefault(replica, time.time())
            await asyncio.sleep(self.duration)
        return [_metrics(t, self.duration / len(trials)) for t in trials]

    def first_starts(self) -> dict[str, float]:
        return dict(self.first)


def _metrics(t: dict, duration_s: float) -> dict:
    """Plausible metrics: every objective and budgeted metric, finite."""
    p = t["params"]
    x = float(p.get("magnitude", p.get("coefficient", p.get("strength", 1.0))))
    return {"alignment": 0.01 * x, "nlr": 10.0 * float(p.get("sparsity", 0.001)),
            "nglr": 0.2, "cwl": 0.1, "accuracy_drop": 0.0, "kl": 0.01,
            "csr_edited": dict.fromkeys(VALUES, 0.5), "n_neurons": 10,
            "duration_s": duration_s}


class FakeWorker:
    """One fake replica of ``model``: a name on the shared :class:`Replicas` actor."""

    tp_size = 1

    def __init__(self, model: str, i: int, actor):
        self.model, self.name, self.actor = model, f"{model}#{i}", actor

    def submit(self, trials: list[dict]):
        return self.actor.run.remote(self.name, trials)

    def restart(self) -> None:
        raise RuntimeError("fake replicas do not die")


def split(total: int, parts: int) -> list[int]:
    """``total`` spread over ``parts``, the first ones one larger."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def measure(n: int, args: argparse.Namespace, cfg, tmp: Path, run: int) -> dict:
    """One sweep with ``n`` fake replicas; its fraction of the ideal and the driver's CPU."""
    tpb = args.trials_per_batch
    per_model = dict(zip(MODELS, split(n, len(MODELS))))
    keys = [StudyKey(m, v, meth) for v in VALUES for m in MODELS for meth in METHODS]
    url = (f"journal:///{tmp}/bench-{n}-{run}.log" if args.storage == "journal"
           else f"sqlite:///{tmp}/bench-{n}-{run}.db")
    states = open_studies(keys, open_storage(url), cfg.search)
    for m, reps in per_model.items():  # exactly `batches` full batches per replica
        mine = [s for s in states if s.key.model == m]
        for s, target in zip(mine, split(reps * args.batches * tpb, len(mine))):
            s.target = target
    actor = Replicas.options(max_concurrency=max(1000, 4 * n)).remote(args.duration)
    ray.get(actor.__ray_ready__.remote())
    workers = [FakeWorker(m, i, actor) for m, reps in per_model.items() for i in range(reps)]
    sched = Scheduler(states, workers, cfg.search, progress=False)
    prof = cProfile.Profile() if args.profile else None
    cpu0, t0, start = _cpu_s(), time.perf_counter(), time.time()
    if prof:
        prof.enable()
    sched.run()
    if prof:
        prof.disable()
    wall, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
    first = ray.get(actor.first_starts.remote())
    ray.kill(actor)
    trials = sum(s.complete for s in states)
    assert trials == n * args.batches * tpb, (trials, n * args.batches * tpb)
    if prof:
        path = f"{args.profile}-{n}.prof"
        prof.dump_stats(path)
        print(f"driver profile, N = {n} ({path}):")
        pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
    ideal = args.batches * args.duration
    return {"n": n, "trials": trials, "wall": wall, "frac": ideal / wall,
            "ramp": max(first.values()) - start,
            "cpu": cpu,
            "cpu_per_trial_ms": 1000 * cpu / trials}


def _cpu_s() -> float:
    """CPU seconds of this process (the driver, with Ray's threads in it)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--replicas", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per fake batch")
    ap.add_argument("--batches", type=int, default=6, help="batches per replica")
    ap.add_argument("--trials-per-batch", type=int, default=1)
    ap.add_argument("--storage", choices=("sqlite", "journal"), default="sqlite")
    ap.add_argument("--repeats", type=int, default=1, help="runs per N")
    ap.add_argument("--profile", metavar="PREFIX", help="cProfile the driver to PREFIX-<N>.prof")
    args = ap.parse_args()
    cfg = compose_config(f"search.trials_per_batch={args.trials_per_batch}")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"storage {args.storage}, {args.duration:g} s per batch, {args.batches} batches per "
          f"replica, {args.trials_per_batch} trial(s) per batch, 120 studies")
    print(f"{'replicas':>8}{'trials':>8}{'wall s':>9}{'of ideal':>10}{'last start s':>14}"
          f"{'driver CPU s':>14}{'ms/trial':>10}")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for n in args.replicas:
                for run in range(args.repeats):
                    r = measure(n, args, cfg, Path(tmp), run)
                    print(f"{r['n']:>8}{r['trials']:>8}{r['wall']:>9.1f}{r['frac']:>10.1%}"
                          f"{r['ramp']:>14.1f}{r['cpu']:>14.1f}{r['cpu_per_trial_ms']:>10.1f}",
                          flush=True)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
