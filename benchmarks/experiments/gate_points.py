"""How many layout points a gate's calibration needs (``search.calibration.gate_points``).

Reads a sweep whose gates were calibrated at every point (``search.calibration.gate_points``
= ``search.calibration.points``; the factors are in pareto.json, ``calibration.gates``)
and asks, per study and gate: had the gate been calibrated at only ``k`` of those points
(spread evenly, as the sweep spreads them), how far would the factor interpolated at the
other points (sweep/calibrate.py, ``gate_factor``) be from the one measured there? A
ratio above 1 is a gated edit drawn at ``edge_frac`` 1 that is that many times stronger
than its budget dose (it overshoots the budget), below 1 one that is weaker.

    python benchmarks/experiments/gate_points.py --dirs runs/gp13 [--k 1 3 5]
        [--json gate_points.json]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from neva_sweep.sweep.calibrate import gate_factor, layout_of, spread_indices


def errors(gate: dict, method: str, k: int) -> list[float]:
    """The interpolated over the measured factor at every point left out of ``k``."""
    points = gate.get("points") or []
    chosen = set(spread_indices(len(points), k))
    kept = {**gate, "points": [p for i, p in enumerate(points) if i in chosen]}
    return [gate_factor({"gates": {"g": kept}}, "g", method, p["params"]) / p["factor"]
            for i, p in enumerate(points) if i not in chosen and p.get("factor")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dirs", nargs="+", required=True, help="sweep run directories")
    ap.add_argument("--k", nargs="+", type=int, default=[1, 3, 5],
                    help="gate points to compare (default: 1 3 5)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    out: dict = {"k": args.k, "studies": {}}
    print(f"{'study':28s} {'gate':8s} {'factors (layout order)':40s} "
          + " ".join(f"{'k=' + str(k) + ' worst':>11s}" for k in args.k))
    for d in args.dirs:
        for st in json.loads((Path(d) / "pareto.json").read_text())["studies"]:
            method, cal = st["method"], st.get("calibration") or {}
            axis = layout_of(method).axis
            for gate, g in (cal.get("gates") or {}).items():
                points = g.get("points") or []
                if len(points) < 2:
                    continue
                row = {"points": [[p["params"][axis], p["factor"]] for p in points]}
                worst = {}
                for k in args.k:
                    e = errors(g, method, k)
                    # the worst over- or undershoot, as a ratio (1 = exact)
                    worst[k] = max(e, key=lambda r: abs(math.log(r))) if e else None
                    row[f"k{k}"] = {"ratios": e, "worst": worst[k]}
                name = f"{st['value']}/{method}"
                out["studies"][f"{name}/{gate}"] = row
                shown = " ".join(f"{f:.2g}" if f else "-" for _, f in row["points"])
                print(f"{name:28s} {gate:8s} {shown:40s} "
                      + " ".join(f"{w:11.2f}" if w else f"{'-':>11s}" for w in worst.values()))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
