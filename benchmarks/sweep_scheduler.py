"""Scheduler overhead: N fake replicas that sleep a fixed time per batch.

A perfect driver completes N * trials_per_batch / duration trials per second; this
reports the measured fraction of that for N = 1, 4, 16, with the real Scheduler, real
Optuna studies in SQLite (TPE sampler) and real Ray actors; only the model is fake.

    python benchmarks/sweep_scheduler.py [--duration 2.0] [--batches 6]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import ray

from neva_sweep.config import compose_config
from neva_sweep.sweep.plan import StudyKey
from neva_sweep.sweep.scheduler import Scheduler
from neva_sweep.sweep.studies import open_storage, open_studies
from neva_sweep.values import VALUES


@ray.remote(num_cpus=0)
class Sleeper:
    """Answers every batch after ``duration`` seconds with plausible metrics."""

    def __init__(self, duration: float):
        self.duration = duration

    def run(self, trials: list[dict]) -> list[dict]:
        time.sleep(self.duration)
        out = []
        for t in trials:
            m = t["params"]["magnitude"]
            out.append({"alignment": 0.01 * m, "nlr": 0.1 * t["params"]["sparsity"] * 100,
                        "nglr": 0.2, "cwl": 0.1, "accuracy_drop": 0.0, "kl": 0.01,
                        "csr_edited": dict.fromkeys(VALUES, 0.5), "n_neurons": 10,
                        "duration_s": self.duration / len(trials)})
        return out


class FakeWorker:
    tp_size = 1

    def __init__(self, i: int, duration: float):
        self.model, self.name = "fake", f"fake#{i}"
        self.actor = Sleeper.remote(duration)

    def submit(self, trials: list[dict]):
        return self.actor.run.remote(trials)

    def restart(self) -> None:
        raise RuntimeError("fake replicas do not die")


def measure(n: int, duration: float, batches: int, tpb: int, tmp: Path) -> float:
    """Fraction of the ideal throughput reached with ``n`` fake replicas."""
    trials_total = n * batches * tpb
    cfg = compose_config(f"search.n_trials={trials_total // len(VALUES) + 1}",
                         f"search.trials_per_batch={tpb}")
    keys = [StudyKey("fake", v, "neva") for v in VALUES]
    states = open_studies(keys, open_storage(f"sqlite:///{tmp / f'bench-{n}.db'}"), cfg.search)
    for s in states:  # exactly trials_total trials over the ten studies
        s.target = trials_total // len(VALUES) + (VALUES.index(s.key.value) <
                                                  trials_total % len(VALUES))
    workers = [FakeWorker(i, duration) for i in range(n)]
    ray.get([w.actor.__ray_ready__.remote() for w in workers])
    t0 = time.time()
    Scheduler(states, workers, cfg.search, progress=False).run()
    wall = time.time() - t0
    ideal = trials_total / (n * tpb / duration)
    return ideal / wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=2.0, help="seconds per fake batch")
    ap.add_argument("--batches", type=int, default=6, help="batches per replica")
    ap.add_argument("--trials-per-batch", type=int, default=1)
    args = ap.parse_args()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'replicas':>8}{'trials':>8}{'of ideal throughput':>22}")
        for n in (1, 4, 16):
            frac = measure(n, args.duration, args.batches, args.trials_per_batch, Path(tmp))
            print(f"{n:>8}{n * args.batches * args.trials_per_batch:>8}{frac:>21.1%}")
    ray.shutdown()


if __name__ == "__main__":
    main()
