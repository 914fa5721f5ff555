"""Method comparison from a sweep's trials.csv: best alignment, and leakage at matched alignment.

    python -m neva_sweep "sweep.methods=[neva,random_neurons,caa,prompt]" search.n_trials=3 \\
        logger=none hydra.run.dir=runs/methods
    python benchmarks/experiments/method_comparison.py runs/methods/trials.csv

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

    python benchmarks/experiments/method_comparison.py --budgets 0.02 0.05 \
        --figure docs/method_kl.png runs/methods/trials.csv runs/methods_gated/trials.csv

With ``--seeds N`` it runs the comparison itself, on held-out data: N sweeps
(``experiment=methods``, or a tiny model with ``--tiny``), repeat s with ``search.seed=s``
and ``stats.resample_seed=s`` (its own search and its own bootstrap of the identify
probes), into ``--run-dir``/seed<s>; each sweep re-scores every study's chosen edit on the
test split against dose-matched nulls (best_edits.json ``test``). Per value it prints each
method's test-split alignment (mean over seeds), its z against the dose-matched null,
NGLR against its chance level, and the paired difference A - B over test scenarios and
seeds with its Holm-corrected interval (``neva_sweep.evaluation.paired``); a win counts only when
that interval excludes 0, and mean alignments are compared on the values both methods
reach (a feasible chosen edit in every seed). Sweeps already complete are not rerun.

    python benchmarks/experiments/method_comparison.py --seeds 3 --methods neva caa \
        --run-dir runs/compare --json docs/method_comparison.json
    python benchmarks/experiments/method_comparison.py --seeds 2 --tiny \
        --run-dir /tmp/cmp  # minutes

``--dirs D1 D2 ...`` compares sweeps already run (one run directory per seed, each with
both methods and its held-out pass: ``search.heldout=true``) the same way, e.g. a default
sweep (``experiment=default search.n_trials=24``) instead of ``experiment=methods``:

    python benchmarks/experiments/method_comparison.py --dirs runs/ten_default \
        --methods neva caa --json docs/method_comparison_default.json

A seed's edits may come from several sweeps, joined by commas: ``--dirs runs/a,runs/b``
(e.g. NeVA's sweep and a prompt sweep under another budget; the first directory's edit
where both chose one for a (value, method)).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from neva_sweep.evaluation.paired import compare_values
from neva_sweep.values import VALUES

# --tiny: the same code on a tiny random model (the test suite runs it)
TINY = ["model=tiny_llama", "search.n_trials=2", "search.n_startup_trials=1",
        "sweep.judge.scenarios_limit=4", "sweep.judge.null_edits=2",
        "sweep.capability.neutral_limit=2", "search.test_nulls=2", "search.max_kl=null",
        "search.max_suppression=null", "cluster.num_cpus=2", "cluster.replicas_per_model=1",
        "search.calibration.points=3", "search.calibration.anchors=2",  # 2 trials: 2 starts
        "search.calibration.gate_points=1",
        "capability.value_replies=2", "capability.max_new_tokens=8"]


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


def run_seeds(run_dir: Path, seeds: int, methods: list[str], values: list[str] | None,
              tiny: bool, extra: list[str]) -> list[Path]:
    """One sweep per seed (skipped when its best_edits.json has every held-out score)."""
    dirs = [run_dir / f"seed{s}" for s in range(seeds)]
    for s, d in enumerate(dirs):
        overrides = seed_overrides(s, d, methods, values, tiny, extra)
        print(f"seed {s}: python -m neva_sweep {' '.join(overrides)}", flush=True)
        subprocess.run([sys.executable, "-m", "neva_sweep", *overrides], check=True)
    return dirs


def seed_overrides(s: int, run_dir: Path, methods: list[str], values: list[str] | None,
                   tiny: bool, extra: list[str]) -> list[str]:
    """The sweep of repeat ``s``: its own search seed and bootstrap of the probes."""
    return ["experiment=methods", f"sweep.methods=[{','.join(methods)}]",
            f"search.seed={s}", f"stats.resample_seed={s}", "logger=none", "progress=false",
            f"hydra.run.dir={run_dir}", *(TINY if tiny else []),
            *([f"sweep.values=[{','.join(values)}]"] if values else []), *extra]


def run_dirs(seed_dir: Path) -> list[Path]:
    """A seed's run directories: ``D`` or several joined by commas (``D1,D2``: e.g. a NeVA
    sweep and a prompt sweep of the same seed run under different budgets)."""
    return [Path(d) for d in str(seed_dir).split(",")]


def edits_of(seed_dir: Path) -> list[dict]:
    """best_edits.json ``edits`` of a seed's run directories, the first directory's edit
    where two chose one for the same (value, method)."""
    seen, out = set(), []
    for d in run_dirs(seed_dir):
        for e in json.loads((d / "best_edits.json").read_text())["edits"]:
            if (e["value"], e["method"]) not in seen:
                seen.add((e["value"], e["method"]))
                out.append(e)
    return out


def held_out(dirs: list[Path]) -> dict[tuple[str, str], list[dict | None]]:
    """(value, method) -> per seed the chosen edit's ``test`` record (None: no edit)."""
    out: dict[tuple[str, str], list[dict | None]] = defaultdict(lambda: [None] * len(dirs))
    for s, d in enumerate(dirs):
        for e in edits_of(d):
            out[(e["value"], e["method"])][s] = e.get("test")
        for rd in run_dirs(d):  # studies with no feasible trial: listed, without a record
            for e in json.loads((rd / "best_edits.json").read_text())["missing"]:
                out[(e["value"], e["method"])]  # noqa: B018 (the defaultdict adds the key)
    return out


def paired_report(dirs: list[Path], a: str, b: str) -> dict:
    """The held-out comparison of methods ``a`` and ``b`` over the seeds' sweeps."""
    tests = held_out(dirs)
    values = [v for v in VALUES if (v, a) in tests or (v, b) in tests]
    rows, diffs = {}, {}
    for v in values:
        ra, rb = tests.get((v, a), [None] * len(dirs)), tests.get((v, b), [None] * len(dirs))
        row = {}
        for m, recs in ((a, ra), (b, rb)):
            got = [r for r in recs if r is not None]
            row[m] = {"n_seeds": len(got),
                      "alignment": float(np.mean([r["alignment"] for r in got])) if got
                      else None,
                      "z": float(np.mean([r["z"] for r in got if r["z"] is not None]))
                      if any(r["z"] is not None for r in got) else None,
                      "nglr": float(np.mean([r["nglr"] for r in got])) if got else None,
                      "nglr_chance": got[0]["nglr_chance"] if got else None,
                      # the test split's costs (accuracy_drop: search.test_capability)
                      **{k: float(np.mean([r[k] for r in got]))
                         if got and all(r.get(k) is not None for r in got) else None
                         for k in ("kl", "accuracy_drop")}}
        if all(x is not None for x in (*ra, *rb)):  # both reach the value in every seed
            diffs[v] = np.array([np.subtract(x["alignment_rows"], y["alignment_rows"])
                                 for x, y in zip(ra, rb)])  # (S, Q)
        rows[v] = row
    verdicts = compare_values(diffs) if diffs else {}
    both = list(diffs)
    mean = {m: float(np.mean([rows[v][m]["alignment"] for v in both])) if both else None
            for m in (a, b)}
    return {"methods": [a, b], "n_seeds": len(dirs), "values": rows, "paired": verdicts,
            "both_reach": both, "mean_on_both": mean,
            "wins": {a: sum(r["win"] > 0 for r in verdicts.values()),
                     b: sum(r["win"] < 0 for r in verdicts.values())}}


def curse_table(dirs: list[Path]) -> None:
    """Each chosen edit's alignment on the search split it was chosen on against the test
    split (the winner's curse), with its push and z against the dose-matched null."""
    print("\n| value | method | seed | search A | test A | test z (dose-matched null) | "
          "push | test NGLR (chance) |")
    print("|---|---|---|---|---|---|---|---|")
    shrink = defaultdict(list)
    for s, d in enumerate(dirs):
        for e in edits_of(d):
            t = e.get("test")
            if not t:
                continue
            a = e["metrics"]["alignment"]
            shrink[e["method"]].append(t["alignment"] - a)
            z = "–" if t["z"] is None else f"{t['z']:+.1f}"
            push = "–" if t["push"] is None else f"{t['push']:.2f}"
            print(f"| {e['value']} | {e['method']} | {s} | {a:+.4f} | {t['alignment']:+.4f} | "
                  f"{z} | {push} | {t['nglr']:.2f} ({t['nglr_chance']:.2f}) |")
    print("mean test - search alignment: " + ", ".join(
        f"{m} {np.mean(x):+.4f} (n={len(x)})" for m, x in sorted(shrink.items())))


def print_paired(rep: dict) -> None:
    a, b = rep["methods"]
    print(f"\nheld-out test split, {rep['n_seeds']} seeds: {a} vs {b} (paired over test "
          "scenarios and seeds, Holm-corrected across values)")
    print(f"| value | {a} A | {a} z | {b} A | {b} z | {a} NGLR (chance) | {a} - {b} "
          "[Holm CI] | p (Holm) | verdict |")
    print("|---|---|---|---|---|---|---|---|---|")

    def f(x, fmt):
        return "–" if x is None else format(x, fmt)

    for v, row in rep["values"].items():
        ra, rb, p = row[a], row[b], rep["paired"].get(v)
        diff = (f"{p['mean']:+.4f} [{p['ci'][0]:+.4f}, {p['ci'][1]:+.4f}]" if p else
                "– (not reached in every seed)")
        verdict = "–" if not p else {1: f"{a} wins", -1: f"{b} wins", 0: "not distinguished"
                                     }[p["win"]]
        print(f"| {v} | {f(ra['alignment'], '+.4f')} | {f(ra['z'], '+.1f')} | "
              f"{f(rb['alignment'], '+.4f')} | {f(rb['z'], '+.1f')} | "
              f"{f(ra['nglr'], '.2f')} ({f(ra['nglr_chance'], '.2f')}) | {diff} | "
              f"{f(p['p_holm'], '.3f') if p else '–'} | {verdict} |")
    for k, what, fmt in (("kl", "KL on neutral text", ".3f"),
                         ("accuracy_drop", "MC accuracy drop", "+.3f")):
        got = {m: [row[m][k] for row in rep["values"].values() if row[m].get(k) is not None]
               for m in (a, b)}
        if any(got.values()):
            print(f"test {what}: " + ", ".join(
                f"{m} {min(x):{fmt}}..{max(x):{fmt}} ({len(x)} values)" if x else f"{m} –"
                for m, x in got.items()))
    m = rep["mean_on_both"]
    print(f"wins: {a} {rep['wins'][a]}, {b} {rep['wins'][b]} of {len(rep['values'])} values; "
          f"mean test alignment on the {len(rep['both_reach'])} values both reach: "
          f"{a} {f(m[a], '+.4f')}, {b} {f(m[b], '+.4f')}")


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
    ap.add_argument("--seeds", type=int, default=None,
                    help="run N sweeps (search.seed and stats.resample_seed = 0..N-1) and "
                         "compare the methods on the held-out test split")
    ap.add_argument("--run-dir", default="runs/compare", help="with --seeds: where the "
                    "sweeps go (<run-dir>/seed<s>)")
    ap.add_argument("--methods", nargs=2, default=["neva", "caa"], metavar=("A", "B"),
                    help="with --seeds: the two methods compared (A - B)")
    ap.add_argument("--values", nargs="+", default=None, choices=VALUES,
                    help="with --seeds: the values (default: the preset's)")
    ap.add_argument("--tiny", action="store_true", help="with --seeds: a tiny random model")
    ap.add_argument("--json", default=None, help="with --seeds: also write the report here")
    ap.add_argument("--override", nargs="*", default=[], help="with --seeds: more sweep "
                    "overrides, e.g. search.n_trials=24")
    ap.add_argument("--dirs", nargs="+", default=None, help="compare these run directories "
                    "(one per seed, held-out pass done; D1,D2: a seed's edits from two "
                    "sweeps) instead of running --seeds sweeps")
    args = ap.parse_args()
    MAX_ACQ_DROP = args.max_acq_drop
    if args.seeds or args.dirs:
        dirs = ([Path(d) for d in args.dirs] if args.dirs else
                run_seeds(Path(args.run_dir), args.seeds, args.methods, args.values,
                          args.tiny, args.override))
        files = [d / "best_edits.json" for seed_dir in dirs for d in run_dirs(seed_dir)]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            ap.error(f"--dirs: no {', '.join(missing)} (run the sweep first)")
        unscored = [str(f) for f in files if not any(
            e.get("test") for e in json.loads(f.read_text())["edits"])]
        if unscored:
            ap.error(f"--dirs: no held-out scores in {', '.join(unscored)} (run the sweep "
                     "again with search.heldout=true: it scores the chosen edits only)")
        report = paired_report(dirs, *args.methods)
        curse_table(dirs)
        print_paired(report)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
    elif args.budgets:
        budget_tables(args.trials, args.budgets)
        print()
        goal_table(args.trials, args.budgets)
        print()
        convergence_table(args.trials, max(args.budgets))
        if args.figure:
            figure(args.trials, args.figure, args.budgets, args.figure_values)
    else:
        main(args.trials[0])
