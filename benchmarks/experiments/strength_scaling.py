"""Does one scaled strength mean one capability cost whatever the neuron count?

    python benchmarks/experiments/strength_scaling.py [--model smollm2-135m] [--tiny]
        [--values power tradition hedonism benevolence] [--kl 0.05]
        [--sparsities 5e-4 2e-3 1e-2 5e-2] [--rule add] [--texts 8] [--json PATH]

For each value and sparsity, the NeVA edit's dose is bisected (the sweep's calibration,
neva_sweep/sweep/calibrate.py) until its mean KL(base || edited) on ``--texts`` neutral
texts equals ``--kl``, once in the raw magnitude and once in the scaled strength
(neva_sweep/methods/strength.py); the residual-stream push of the edit at that dose
(neva_sweep/methods/nulls.py) is printed beside them. A parametrisation that means the same dose
at every count has a budget dose that does not move with the sparsity: the *spread*
(largest / smallest budget dose over the sparsities) is 1 for a perfect one. CAA's strength
is checked the same way across layers (``--caa-layers``).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import neva_sweep as nv
from neva_sweep.data import load_records
from neva_sweep.evaluation.capability import base_distribution, mean_kl, neutral_texts
from neva_sweep.methods.nulls import edit_push
from neva_sweep.sweep.calibrate import bisect_dose


def kl_function(host, texts, base, stats, value, method, params, dose_key):
    def kl_at(dose: float) -> float:
        edit = nv.make_edit(stats, value, method, **{**params, dose_key: dose})
        return float(mean_kl(host, texts, base, [edit], "all", 4)[0])
    return kl_at


def spread(xs: list[float]) -> float:
    return max(xs) / min(xs) if xs and min(xs) > 0 else math.inf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tiny", action="store_true", help="tiny-llama, 2 values, 2 sparsities")
    ap.add_argument("--values", nargs="+",
                    default=["power", "tradition", "hedonism", "benevolence"])
    ap.add_argument("--sparsities", nargs="+", type=float, default=[5e-4, 2e-3, 1e-2, 5e-2])
    ap.add_argument("--caa-layers", nargs="+", type=float, default=[0.2, 0.5, 0.8])
    ap.add_argument("--rule", default="add")
    ap.add_argument("--kl", type=float, default=0.05)
    ap.add_argument("--texts", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.tiny:
        args.model, args.values, args.sparsities = "tiny-llama", args.values[:2], [0.01, 0.1]
    t0 = time.perf_counter()
    host = nv.load_model(args.model)
    stats = nv.collect_stats(host, nv.load_probes(split="identify"), progress=False)
    texts = neutral_texts(load_records("neutral"), args.texts)
    base = base_distribution(host, texts, 64, 4)
    rows = []
    print(f"{args.model}: budget KL {args.kl} on {len(texts)} neutral texts, rule {args.rule}")
    print(f"{'value':<14}{'sparsity':>10}{'k':>7}{'magnitude*':>12}{'strength*':>11}"
          f"{'push*':>9}")
    for value in args.values:
        for sp in args.sparsities:
            params = {"sparsity": sp, "rule": args.rule}
            raw = bisect_dose(kl_function(host, texts, base, stats, value, "neva", params,
                                          "magnitude"), args.kl, 4.0, args.steps)
            scaled = bisect_dose(kl_function(host, texts, base, stats, value, "neva", params,
                                             "strength"), args.kl, 4.0, args.steps)
            edit = nv.make_edit(stats, value, "neva", **params, magnitude=raw.dose)
            push = edit_push(host, edit, stats)
            rows.append({"value": value, "method": "neva", "sparsity": sp,
                         "k": edit.n_neurons, "magnitude": raw.dose, "strength": scaled.dose,
                         "push": push, "bracketed": raw.bracketed and scaled.bracketed})
            print(f"{value:<14}{sp:>10g}{edit.n_neurons:>7}{raw.dose:>12.3g}"
                  f"{scaled.dose:>11.3g}{push:>9.3g}")
        for frac in args.caa_layers:
            params = {"layer_frac": frac}
            raw = bisect_dose(kl_function(host, texts, base, stats, value, "caa", params,
                                          "coefficient"), args.kl, 1.0, args.steps)
            scaled = bisect_dose(kl_function(host, texts, base, stats, value, "caa", params,
                                             "strength"), args.kl, 0.1, args.steps)
            rows.append({"value": value, "method": "caa", "layer_frac": frac,
                         "coefficient": raw.dose, "strength": scaled.dose,
                         "bracketed": raw.bracketed and scaled.bracketed})
            print(f"{value:<14}{'caa@' + format(frac, 'g'):>10}{'':>7}{raw.dose:>12.3g}"
                  f"{scaled.dose:>11.3g}")
    print("\nspread of the budget dose (largest / smallest; 1 = one dose fits all)")
    summary = {}
    for value in args.values:
        nv_rows = [r for r in rows if r["value"] == value and r["method"] == "neva"]
        caa_rows = [r for r in rows if r["value"] == value and r["method"] == "caa"]
        summary[value] = {
            "neva_magnitude": spread([r["magnitude"] for r in nv_rows]),
            "neva_strength": spread([r["strength"] for r in nv_rows]),
            "neva_push": spread([r["push"] for r in nv_rows]),
            "caa_coefficient": spread([r["coefficient"] for r in caa_rows]),
            "caa_strength": spread([r["strength"] for r in caa_rows])}
        s = summary[value]
        print(f"{value:<14} neva: magnitude x{s['neva_magnitude']:.1f}, strength "
              f"x{s['neva_strength']:.1f}, push x{s['neva_push']:.1f}; caa: coefficient "
              f"x{s['caa_coefficient']:.1f}, strength x{s['caa_strength']:.1f}")
    print(f"{time.perf_counter() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows, "spread": summary}, f, indent=2)


if __name__ == "__main__":
    main()
