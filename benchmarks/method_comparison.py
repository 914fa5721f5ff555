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

With ``--budgets 0.02 0.05`` (and any number of trials.csv files, e.g. an ungated and a
gated sweep) it prints instead, per value, the comparison at matched capability cost:
for each method (``+gate`` when the trial's ``gate`` parameter is ``context``) and KL
budget, the best alignment among COMPLETE trials with KL <= budget (nats/token on
neutral text; the highest point of the method's alignment-KL front below the budget),
its 95% bootstrap interval, NLR, NGLR and acquiescence (the mean change of every option's
log-probability on the scenarios: a strongly negative value means the edit makes the
model less fluent on value-laden prompts, which KL on neutral text cannot see once a gate
spares neutral text) there, and z = alignment / null sd; then each
method's mean z over the values. ``--max-acq-drop A`` also requires acquiescence >= -A, a
fluency budget on the scenarios themselves. ``--figure PATH`` draws alignment against KL per method
for up to three values.

    python benchmarks/method_comparison.py --budgets 0.02 0.05 --figure docs/method_kl.png \
        runs/methods/trials.csv runs/methods_gated/trials.csv
"""

from __future__ import annotations

import argparse
import csv
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


def label(r: dict) -> str:
    """The method of a trials.csv row, ``+gate`` when its edit was gated."""
    return r["method"] + ("+gate" if r.get("gate") == "context" else "")


def load_kl(paths: list[str]) -> dict[tuple[str, str], list[dict]]:
    """COMPLETE trials with a KL, per (value, method label), from every file."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    keys = ("alignment", "nlr", "nglr", "alignment_ci_lo", "alignment_ci_hi", "nlr_floor",
            "kl", "trial", "acquiescence", "n_neurons")
    for path in paths:
        for r in csv.DictReader(open(path)):
            if r["state"] == "COMPLETE" and r.get("kl") not in (None, ""):
                groups[(r["value"], label(r))].append({k: num(r, k) for k in keys})
    return groups


MAX_ACQ_DROP = None  # --max-acq-drop: also require acquiescence >= -this


def in_budget(p: dict, budget: float) -> bool:
    """KL <= budget (and, with --max-acq-drop, option log-probabilities on the scenarios
    lowered by at most that much)."""
    return p["kl"] <= budget and (MAX_ACQ_DROP is None or p["acquiescence"] >= -MAX_ACQ_DROP)


def best_within(points: list[dict], budget: float) -> dict | None:
    """The highest-alignment trial within the budgets (None if none is)."""
    ok = [p for p in points if in_budget(p, budget)]
    return max(ok, key=lambda p: p["alignment"]) if ok else None


def budget_tables(paths: list[str], budgets: list[float]) -> None:
    groups = load_kl(paths)
    methods = sorted({m for _, m in groups})
    print("| value | method | trials | " + " | ".join(
        f"A @ KL<={b:g} [95% CI] | NLR | NGLR | acq. | z" for b in budgets) + " |")
    print("|---|---|---|" + "---|---|---|---|---|" * len(budgets))
    zs: dict[tuple[str, float], list[float]] = defaultdict(list)
    for v in VALUES:
        for m in methods:
            pts = groups.get((v, m))
            if not pts:
                continue
            cells = []
            for b in budgets:
                best = best_within(pts, b)
                if best is None:
                    cells.append("– | – | – | – | –")
                    continue
                z = best["alignment"] / (best["nlr_floor"] / 2)  # nlr_floor = 2 null sd
                zs[(m, b)].append(z)
                n = best["n_neurons"]  # 0 for residual edits (caa), none for old files
                neurons = f" ({n:.0f} n.)" if n > 0 else ""
                cells.append(f"{best['alignment']:+.4f} [{best['alignment_ci_lo']:+.4f}, "
                             f"{best['alignment_ci_hi']:+.4f}]{neurons} | {best['nlr']:.2f} | "
                             f"{best['nglr']:.2f} | {best['acquiescence']:+.3f} | {z:+.1f}")
            print(f"| {v} | {m} | {len(pts)} | " + " | ".join(cells) + " |")
    print()
    print("| method | " + " | ".join(f"mean z @ KL<={b:g} (values reached)" for b in budgets)
          + " |")
    print("|---|" + "---|" * len(budgets))
    for m in methods:
        print(f"| {m} | " + " | ".join(
            f"{np.mean(zs[(m, b)]):+.1f} ({len(zs[(m, b)])})" if zs[(m, b)] else "–"
            for b in budgets) + " |")


def goal_table(paths: list[str], budgets: list[float], method: str = "neva",
               rival: str = "caa", control: str = "random_neurons") -> None:
    """The acceptance test, per gate setting and KL budget: on how many values ``method``'s
    best alignment is >= ``rival``'s with an NLR no higher (and on how many the alignment
    alone is), and ``method``'s mean best alignment over ``control``'s (values where both
    were run)."""
    groups = load_kl(paths)
    print(f"| gate | KL budget | {method} >= {rival} (A and NLR) | {method} >= {rival} (A) | "
          f"values | {rival} without a point in budget | mean A {method} / {control} |")
    print("|---|---|---|---|---|---|---|")
    for gate in ("", "+gate"):
        for b in budgets:
            both = alone = n = none = 0
            ratio_m, ratio_c = [], []
            for v in VALUES:
                m = best_within(groups.get((v, method + gate), []), b)
                r = best_within(groups.get((v, rival + gate), []), b)
                c = best_within(groups.get((v, control + gate), []), b)
                if groups.get((v, method + gate)) and groups.get((v, rival + gate)):
                    n += 1
                    none += r is None
                    # a win needs a point of its own: the rival's having none is no tie
                    win = m is not None and (r is None or m["alignment"] >= r["alignment"])
                    alone += win
                    both += win and (r is None or m["nlr"] <= r["nlr"])
                if groups.get((v, control + gate)) and groups.get((v, method + gate)):
                    ratio_m.append(m["alignment"] if m else 0.0)
                    ratio_c.append(c["alignment"] if c else 0.0)
            if not n:
                continue
            ratio = (f"{np.mean(ratio_m) / np.mean(ratio_c):.1f}x ({len(ratio_m)} values)"
                     if ratio_c and np.mean(ratio_c) > 0 else "–")
            print(f"| {gate[1:] or 'none'} | {b:g} | {both} / {n} | {alone} / {n} | {n} | "
                  f"{none} | {ratio} |")


def convergence_table(paths: list[str], budget: float, within: float = 0.9) -> None:
    """When each study's best alignment within the budgets was reached: the number of
    COMPLETE trials (in trial order) until the running best first came within ``within``
    of the final best, and until it reached it. Many studies reaching it only in their
    last trials means the search has not converged at this budget."""
    groups = load_kl(paths)
    print(f"| value | method | trials | best A @ KL<={budget:g} | trials to {within:.0%} of it "
          "| trials to it |")
    print("|---|---|---|---|---|---|")
    late = total = 0
    for v in VALUES:
        for m in sorted({k[1] for k in groups}):
            pts = sorted(groups.get((v, m), []), key=lambda p: p["trial"])
            ok = [p["alignment"] if in_budget(p, budget) else -np.inf for p in pts]
            if not pts or max(ok) <= 0:
                continue
            run = np.maximum.accumulate(ok)
            best = run[-1]
            near = int(np.argmax(run >= within * best)) + 1
            at = int(np.argmax(run >= best)) + 1
            total += 1
            late += at > len(pts) * 2 // 3
            print(f"| {v} | {m} | {len(pts)} | {best:+.4f} | {near} | {at} |")
    print(f"\n{late} of {total} studies found their best in the last third of their trials")


def figure(paths: list[str], out: str, budgets: list[float],
           values: list[str] | None = None) -> None:
    """Alignment against KL, one panel per value (``values``, default the first three
    run), one colour per method, each method's front (best alignment at or below each
    KL) drawn as a step line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = load_kl(paths)
    values = values or [v for v in VALUES if any(k[0] == v for k in groups)][:3]
    methods = sorted({m for _, m in groups})
    fig, axes = plt.subplots(1, len(values), figsize=(4.2 * len(values), 3.6), sharey=True,
                             squeeze=False)
    for ax, v in zip(axes[0], values):
        for i, m in enumerate(methods):
            pts = sorted(groups.get((v, m), []), key=lambda p: p["kl"])
            if not pts:
                continue
            kl = np.array([p["kl"] for p in pts])
            a = np.array([p["alignment"] for p in pts])
            colour = f"C{i}"
            ax.scatter(kl, a, s=14, color=colour, alpha=0.6, label=m)
            ax.step(kl, np.maximum.accumulate(a), where="post", color=colour, lw=1.2)
        for b in budgets:
            ax.axvline(b, color="grey", lw=0.8, ls=":")
        ax.set_xscale("symlog", linthresh=1e-3)
        ax.set_xlim(left=0)
        ax.axhline(0, color="black", lw=0.5)
        ax.set_title(v)
        ax.set_xlabel("KL on neutral text (nats/token)")
    axes[0][0].set_ylabel("alignment (target choice-probability rise)")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"figure: {out}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trials", nargs="*", default=["runs/methods/trials.csv"])
    ap.add_argument("--budgets", nargs="+", type=float, default=None,
                    help="KL budgets (nats/token): compare methods at matched capability cost")
    ap.add_argument("--figure", default=None, help="PNG of alignment vs KL per method")
    ap.add_argument("--figure-values", nargs="+", default=None, choices=VALUES,
                    help="the figure's panels (default: the first three values run)")
    ap.add_argument("--max-acq-drop", type=float, default=None,
                    help="also require acquiescence >= -this (nats/token): a fluency budget "
                         "on the value-laden prompts themselves")
    args = ap.parse_args()
    MAX_ACQ_DROP = args.max_acq_drop
    if args.budgets:
        budget_tables(args.trials, args.budgets)
        print()
        goal_table(args.trials, args.budgets)
        print()
        convergence_table(args.trials, max(args.budgets))
        if args.figure:
            figure(args.trials, args.figure, args.budgets, args.figure_values)
    else:
        main(args.trials[0])
