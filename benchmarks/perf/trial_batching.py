"""Trial batching on the embedded model: trials per minute with trials_per_batch=4 vs 1.

The same trials (NeVA edits over several values, sparsities and magnitudes) are evaluated
one call per trial and four trials per call, alternating the two modes so that machine
load affects both alike; the metrics must agree. Evaluation settings are the sweep's
defaults (neva_sweep/conf/experiment/default.yaml).

    python benchmarks/perf/trial_batching.py [--trials 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

import neva_sweep as nv
from neva_sweep.builders import stats_from_config
from neva_sweep.config import compose_config
from neva_sweep.evaluation.evaluator import Evaluator
from neva_sweep.methods import METHODS
from neva_sweep.sweep.run import eval_setup

VALUES = ("benevolence", "power", "tradition", "stimulation")


def trial_params(n: int) -> list[tuple[str, dict]]:
    return [(VALUES[i % len(VALUES)],
             {"sparsity": 1e-3 * (1 + i % 3), "magnitude": 2.0 + i % 4, "rule": "add",
              "score": "mean_diff", "positions": "all", "layer_window": "all"})
            for i in range(n)]


def run(ev: Evaluator, stats, trials: list[tuple[str, dict]], per_call: int
        ) -> tuple[float, list[dict]]:
    t0, out = time.time(), []
    for i in range(0, len(trials), per_call):
        chunk = trials[i : i + per_call]
        edits = [(v, METHODS["neva"].build(stats, v, p)) for v, p in chunk]
        out += ev.evaluate(edits)
    return time.time() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=8, help="trials per mode (multiple of 4)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = compose_config("progress=false")
    host = nv.load_model(cfg.model)
    stats = stats_from_config(cfg, host)
    setup = eval_setup(cfg)
    ev = setup.evaluator(host)
    ev.base()  # the unedited side is shared by both modes: not timed
    trials = trial_params(args.trials)
    times = {1: 0.0, 4: 0.0}
    results: dict[int, list[dict]] = {1: [], 4: []}
    for i in range(0, len(trials), 4):  # alternate: 4 single calls, then one call of 4
        for per_call in (1, 4):
            dt, recs = run(ev, stats, trials[i : i + 4], per_call)
            times[per_call] += dt
            results[per_call] += recs
    diff = max(abs(a[k] - b[k]) for a, b in zip(results[1], results[4])
               for k in ("alignment", "nlr", "kl", "accuracy_edited"))
    rate = {k: 60 * len(trials) / t for k, t in times.items()}
    print(f"{host.name}, {args.threads} threads, {len(trials)} trials per mode, judge "
          f"{setup.judge.name}, mc_limit {setup.capability.mc_limit}")
    print(f"trials_per_batch=1: {rate[1]:.2f} trials/min ({times[1]:.0f} s)")
    print(f"trials_per_batch=4: {rate[4]:.2f} trials/min ({times[4]:.0f} s)")
    print(f"ratio 4 vs 1: {rate[4] / rate[1]:.2f}x; largest metric difference {diff:.2e}")


if __name__ == "__main__":
    main()
