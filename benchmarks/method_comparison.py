"""Method comparison from a sweep's trials.csv: best alignment, and leakage at matched alignment.

    python -m neva_sweep "sweep.methods=[neva,random_neurons,caa,prompt]" search.n_trials=3 \\
        logger=none hydra.run.dir=runs/methods
    python benchmarks/method_comparison.py runs/methods/trials.csv

First, per (value, method) at matched capability cost (every feasible trial meets the same
budgets, e.g. KL <= 0.1): how many trials were feasible, the best feasible alignment with
its 95% bootstrap interval, its z-score against the judge's null (alignment / null sd,
where nlr_floor = 2 null sd), NLR, acquiescence and KL.

Then, for every (value, method): the best alignment among COMPLETE trials that meet the
sweep's capability constraints (the ``feasible`` column), with its NLR and NGLR; then, at a
matched alignment (the lowest positive best alignment among the methods for that value),
each method's NLR interpolated linearly along its feasible Pareto front of
(alignment up, NLR down); below the front's lowest alignment the NLR of that lowest point
is used. A method whose front does not reach that alignment gets "–".
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict

import numpy as np

from neva_sweep.values import VALUES


def num(r: dict, key: str) -> float:
    x = r.get(key)
    return float(x) if x not in (None, "") else float("nan")


def load(path: str, feasible_only: bool = True) -> dict[tuple[str, str], list[dict]]:
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    keys = ("alignment", "nlr", "nglr", "alignment_ci_lo", "alignment_ci_hi", "nlr_floor",
            "acquiescence", "kl")
    for r in csv.DictReader(open(path)):
        if r["state"] == "COMPLETE" and (not feasible_only or
                                         r.get("feasible") in ("True", "true", "1")):
            groups[(r["value"], r["method"])].append({k: num(r, k) for k in keys})
    return groups


def best_table(path: str) -> None:
    feasible, complete = load(path), load(path, feasible_only=False)
    print("| value | method | feasible / complete | best A [95% CI] | z vs null | NLR | "
          "acquiescence | KL |")
    print("|---|---|---|---|---|---|---|---|")
    for v, m in sorted(complete, key=lambda k: (VALUES.index(k[0]), k[1])):
        pts = feasible.get((v, m), [])
        n = f"{len(pts)} / {len(complete[(v, m)])}"
        if not pts:
            print(f"| {v} | {m} | {n} | – | – | – | – | – |")
            continue
        b = max(pts, key=lambda p: p["alignment"])
        z = b["alignment"] / (b["nlr_floor"] / 2)
        print(f"| {v} | {m} | {n} | {b['alignment']:+.4f} [{b['alignment_ci_lo']:+.4f}, "
              f"{b['alignment_ci_hi']:+.4f}] | {z:+.1f} | {b['nlr']:.2f} | "
              f"{b['acquiescence']:+.4f} | {b['kl']:.3f} |")


def front(points: list[dict]) -> list[dict]:
    """Pareto-optimal points (max alignment, min NLR), sorted by alignment."""
    out = [p for p in points if not any(
        q["alignment"] >= p["alignment"] and q["nlr"] <= p["nlr"] and q != p for q in points)]
    return sorted(out, key=lambda p: p["alignment"])


def nlr_at(points: list[dict], a: float) -> float | None:
    """NLR along the front at alignment ``a`` (linear between neighbours), None if unreached."""
    f = front(points)
    if not f or f[-1]["alignment"] < a:
        return None
    xs, ys = [p["alignment"] for p in f], [p["nlr"] for p in f]
    return float(np.interp(a, xs, ys)) if a >= xs[0] else ys[0]


def main(path: str) -> None:
    best_table(path)
    print()
    groups = load(path)
    methods = sorted({m for _, m in groups})
    print("| value | " + " | ".join(f"{m}: best A (NLR, NGLR)" for m in methods)
          + " | matched A | " + " | ".join(f"{m}: NLR" for m in methods) + " |")
    print("|---" * (2 + 2 * len(methods)) + "|")
    for v in VALUES:
        best = {}
        cells = []
        for m in methods:
            pts = groups.get((v, m), [])
            if pts:
                b = max(pts, key=lambda p: p["alignment"])
                best[m] = b["alignment"]
                cells.append(f"{b['alignment']:+.3f} ({b['nlr']:.2f}, {b['nglr']:.2f})")
            else:
                cells.append("–")
        if not best:
            continue
        positive = [b for b in best.values() if b > 0]
        matched = min(positive) if positive else 0.0
        if matched > 0:
            at = [nlr_at(groups.get((v, m), []), matched) for m in methods]
            matched_cells = [f"{x:.2f}" if x is not None else "–" for x in at]
            m_str = f"{matched:+.3f}"
        else:
            matched_cells, m_str = ["–"] * len(methods), "n/a (no method aligns)"
        print(f"| {v} | " + " | ".join(cells) + f" | {m_str} | " + " | ".join(matched_cells)
              + " |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/methods/trials.csv")
