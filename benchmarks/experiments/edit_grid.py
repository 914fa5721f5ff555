"""Edits on a grid of method parameters, evaluated as a sweep trial is: alignment (with
its 95% bootstrap interval), NLR, KL on neutral text and suppression, one row per
(value, edit), in batched passes.

For questions a sweep answers only slowly: does NeVA gain from more neurons at a smaller
magnitude, from a layer window, from the gate? Each grid entry is ``[method, {params}]``;
missing parameters take the method's defaults.

    OMP_NUM_THREADS=1 python benchmarks/experiments/edit_grid.py --values power tradition \\
        --grid '[["neva", {"sparsity": 0.1, "magnitude": 1}],
                 ["neva", {"sparsity": 0.1, "magnitude": 1, "layer_window": "8-22"}],
                 ["caa", {"caa_coefficient": 1.0}]]' [--json out.json] [override ...]

Overrides are Hydra overrides of the sweep config; ``experiment=methods`` is applied
first, so rows are comparable with that preset's trials.
"""

from __future__ import annotations

import argparse
import json

import neva_sweep as nv
from neva_sweep.builders import stats_from_config
from neva_sweep.config import compose_config
from neva_sweep.methods import METHODS
from neva_sweep.sweep.run import eval_setup

FIELDS = ("alignment", "nlr", "kl", "suppression", "n_neurons")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--values", nargs="+", default=["power", "tradition"], choices=nv.VALUES)
    ap.add_argument("--grid", required=True, help="JSON list of [method, {params}]")
    ap.add_argument("--batch", type=int, default=8, help="edits per batched evaluation")
    ap.add_argument("--json", default=None)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the sweep config")
    args = ap.parse_args()
    grid = json.loads(args.grid)
    unknown = sorted({m for m, _ in grid} - set(METHODS))
    if unknown:
        ap.error(f"--grid: unknown method(s) {unknown}; valid choices: {', '.join(METHODS)}")

    cfg = compose_config("experiment=methods", *args.overrides)
    host = nv.load_model(cfg.model)
    stats = stats_from_config(cfg, host)
    setup = eval_setup(cfg)
    ev = setup.evaluator(host)
    todo = [(v, m, p) for v in args.values for m, p in grid]
    print("| value | method | params | alignment [95% CI] | NLR | KL | suppression | neurons |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for start in range(0, len(todo), args.batch):
        chunk = todo[start:start + args.batch]
        edits = [(v, METHODS[m].build(stats, v, {**METHODS[m].defaults, **p}))
                 for v, m, p in chunk]
        for (v, m, p), r in zip(chunk, ev.evaluate(edits)):
            lo, hi = r["ci"]["alignment"]
            print(f"| {v} | {m} | {json.dumps(p)} | {r['alignment']:+.4f} [{lo:+.4f}, "
                  f"{hi:+.4f}] | {r['nlr']:.2f} | {r['kl']:.4f} | {r['suppression']:.3f} | "
                  f"{r['n_neurons']} |", flush=True)
            rows.append({"value": v, "method": m, "params": p, "alignment_ci": [lo, hi],
                         **{k: r[k] for k in FIELDS}})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
