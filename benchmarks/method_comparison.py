"""Method comparison from a sweep's trials.csv: best alignment, and leakage at matched alignment.

    python -m neva_sweep "sweep.methods=[neva,random_neurons,caa,prompt]" search.n_trials=3 \\
        logger=none hydra.run.dir=runs/methods
    python benchmarks/method_comparison.py runs/methods/trials.csv

For every (value, method): the best alignment among COMPLETE trials that meet the sweep's
capability constraints (the ``feasible`` column), with its NLR and NGLR; then, at a
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


def load(path: str) -> dict[tuple[str, str], list[dict]]:
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in csv.DictReader(open(path)):
        if r["state"] == "COMPLETE" and r.get("feasible") in ("True", "true", "1"):
            groups[(r["value"], r["method"])].append(
                {k: float(r[k]) for k in ("alignment", "nlr", "nglr")})
    return groups


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
