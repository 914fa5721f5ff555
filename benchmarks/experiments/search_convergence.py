"""Does the default search find each method's best edit within the budgets users run?

    python benchmarks/experiments/search_convergence.py
        [--values power tradition hedonism benevolence] [--methods neva caa] [--seeds 0 1 2]
        [--budgets 6 12 24 48] [--pruners none sha]
        [--run-dir runs/convergence] [--json PATH] [--figure PATH] [--fronts-figure PATH]
        [--tiny]
        [--grid-from PATH] [--references-from PATH ...] [--override KEY=VALUE ...]
    python benchmarks/experiments/search_convergence.py --pool A.json B.json [--json PATH]

**Reference.** Per (value, method) a dense grid scored in this process with the sweep's
own trial settings (judge, capability texts, budgets): for NeVA five sparsities spread
log-uniformly over ``search.space.sparsity``, for CAA five layer fractions over
``search.space.diffmean.layer_frac``; at each, the strength is bisected to the KL budget
(neva_sweep/sweep/calibrate.py) and the edit scored at 0.5, 0.75 and 1.0 times that
edge. The reference is the best feasible alignment (every ``search.max_<metric>`` budget
met) of the grid and of every search run below (so regret is never negative).
``--grid-from`` reuses the grid of an earlier ``--json`` output (more seeds later);
``--references-from`` raises each reference to the best that earlier outputs' runs found
(so that runs of other seeds or spaces are all measured against one reference).

**Searches.** One sweep per (pruner, seed) with the default search
(``python -m neva_sweep experiment=default``, the values and methods above,
``search.n_trials`` = the largest budget, ``search.pruner``, ``search.seed``); the best
feasible alignment after the first k finished trials (COMPLETE or PRUNED, in trial order)
gives the regret curve at every budget k: best-so-far / reference (1 = found). CPU time is
the sum of the trials' evaluation times (``duration_s``: both rungs of a promoted trial,
rung 0 of a pruned one); trials per hour follow from it.

Printed per (method, pruner, budget): the mean ratio over values and seeds, how many
(value, seed) pairs reach 90% of the reference, and the CPU seconds to reach 90% (median
over the pairs that reach it); the JSON's ``summary`` adds, per (method, pruner), the
ratio per value and seed at the largest budget, the trials finished, pruned (and of those,
pruned over a budget at rung 0) and complete but over a budget, where the sampled trials
(all but the warm starts) went (``sampled``: gated, ungated below 0.7 of the budget dose,
over a budget, better than their study's best start, and in how many studies; also
printed), and with ``none`` among the pruners each one's CPU time over the unpruned run's,
over all seeds (``cpu_vs_none``) and per seed (``cpu_vs_none_per_seed``, from
``cpu_s_per_seed``). It also gives each study's front over its feasible COMPLETE trials
(alignment up, NLR down): the trials on it per seed (``front_trials_per_seed``) and its
hypervolume, the area it dominates above alignment 0 and below NLR ``search.best_max_nlr``
(``hypervolume_per_seed``, and ``hypervolume_vs_none_per_seed`` against the unpruned run):
a pruner that keeps the best edit but stops the low-leakage trials loses front, not
regret. ``--fronts-figure`` draws each pruner's feasible trials and front for the first
seed. ``--tiny`` runs the same code on a tiny random model in a few minutes (the test
suite runs it). ``--pool A.json B.json`` runs nothing and adds up earlier outputs on other
values (same methods and pruners) over the seeds they all ran: each pruner's CPU time over
the unpruned run's per seed and in all, and the front trials, over all their values.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

TINY = ["model=tiny_llama", "sweep.judge.scenarios_limit=6", "sweep.judge.null_edits=2",
        "sweep.capability.neutral_limit=4", "search.max_kl=2e-5", "stats.batch_size=8",
        "capability.value_replies=2", "capability.max_new_tokens=8"]
GRID_FRACTIONS = (0.5, 0.75, 1.0)  # of the bisected KL edge
GRID_POINTS = 5


def sweep_overrides(run_dir: Path, values: list[str], methods: list[str], n_trials: int,
                    pruner: str, seed: int, tiny: bool, extra: list[str]) -> list[str]:
    return ["experiment=default", f"sweep.values=[{','.join(values)}]",
            f"sweep.methods=[{','.join(methods)}]", f"search.n_trials={n_trials}",
            f"search.pruner={pruner}", f"search.seed={seed}", "search.heldout=false",
            "logger=none", "progress=false", f"hydra.run.dir={run_dir}",
            *(TINY if tiny else []), *extra]


def run_search(run_dir: Path, overrides: list[str]) -> float:
    """Run (or resume) one sweep; returns its wall time (0 when already complete)."""
    t0 = time.perf_counter()
    print(f"python -m neva_sweep {' '.join(overrides)}", flush=True)
    subprocess.run([sys.executable, "-m", "neva_sweep", *overrides], check=True)
    return time.perf_counter() - t0


def read_trials(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def curve(rows: list[dict], budgets: list[int]) -> tuple[list[float | None], list[float]]:
    """Best feasible alignment after the first k finished trials, and the CPU seconds spent
    by then, for every k in ``budgets`` (rows of one study)."""
    done = sorted((r for r in rows if r["state"] in ("COMPLETE", "PRUNED")),
                  key=lambda r: int(r["trial"]))
    best, cpu, bests, cpus = None, 0.0, [], []
    for r in done:
        cpu += float(r["duration_s"] or 0.0)
        if r["state"] == "COMPLETE" and r["feasible"] == "True" and r["alignment"]:
            a = float(r["alignment"])
            best = a if best is None else max(best, a)
        bests.append(best)
        cpus.append(cpu)
    return ([bests[min(k, len(bests)) - 1] if bests else None for k in budgets],
            [cpus[min(k, len(cpus)) - 1] if cpus else 0.0 for k in budgets])


def first_reaching(rows: list[dict], target: float) -> float | None:
    """CPU seconds until a feasible trial reaches ``target`` alignment (None: never)."""
    cpu = 0.0
    for r in sorted((r for r in rows if r["state"] in ("COMPLETE", "PRUNED")),
                    key=lambda r: int(r["trial"])):
        cpu += float(r["duration_s"] or 0.0)
        if (r["state"] == "COMPLETE" and r["feasible"] == "True" and r["alignment"]
                and float(r["alignment"]) >= target):
            return cpu
    return None


LOW_DOSE = 0.7  # a sampled ungated trial below this multiple of its budget dose is "low"


def sampled_trials(rows: list[dict]) -> dict:
    """Where one study's sampled trials (all but the warm starts) went, against its starts:
    finished, value- or context-gated, ungated below ``LOW_DOSE`` of the budget dose
    (``edge_frac``), over a budget (complete but infeasible, or pruned on a budget), and
    better than the best feasible start (feasible, higher alignment); with the best
    feasible alignment of each kind (None: none feasible).

    >>> row = lambda n, warm, a, gate="none", frac="1.0", feasible="True": {
    ...     "trial": str(n), "state": "COMPLETE", "warm_start": warm, "alignment": a,
    ...     "gate": gate, "edge_frac": frac, "feasible": feasible, "error": ""}
    >>> s = sampled_trials([row(0, "True", "0.02"), row(1, "False", "0.03"),
    ...                     row(2, "False", "0.01", gate="value"),
    ...                     row(3, "False", "0.01", frac="0.5"),
    ...                     row(4, "False", "0.05", feasible="False")])
    >>> s["sampled"], s["gated"], s["low_dose"], s["over_budget"], s["beat_starts"]
    (4, 1, 1, 1, 1)
    >>> s["best_start"], s["best_sampled"]
    (0.02, 0.03)
    """
    done = [r for r in rows if r["state"] in ("COMPLETE", "PRUNED")]

    def best(rs: list[dict]) -> float | None:
        a = [float(r["alignment"]) for r in rs if r["state"] == "COMPLETE"
             and r["feasible"] == "True" and r["alignment"]]
        return max(a) if a else None

    starts = [r for r in done if r.get("warm_start") == "True"]
    sampled = [r for r in done if r.get("warm_start") != "True"]
    gated = [r for r in sampled if r.get("gate") not in (None, "", "none")]
    bar = best(starts)
    return {
        "starts": len(starts), "sampled": len(sampled), "gated": len(gated),
        "low_dose": sum(r not in gated and bool(r.get("edge_frac"))
                        and float(r["edge_frac"]) < LOW_DOSE for r in sampled),
        "over_budget": sum((r["state"] == "COMPLETE" and r["feasible"] != "True")
                           or "over the budget" in (r.get("error") or "") for r in sampled),
        "beat_starts": sum(r["state"] == "COMPLETE" and r["feasible"] == "True"
                           and bool(r["alignment"]) and bar is not None
                           and float(r["alignment"]) > bar for r in sampled),
        "best_start": bar, "best_sampled": best(sampled)}


def feasible_points(rows: list[dict]) -> list[tuple[float, float]]:
    """(alignment, NLR) of a study's feasible COMPLETE trials: what its front is made of."""
    return [(float(r["alignment"]), float(r["nlr"])) for r in rows
            if r["state"] == "COMPLETE" and r["feasible"] == "True" and r["alignment"]
            and r["nlr"]]


def front_of(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point dominates (alignment up, NLR down), by NLR; equal points
    are all kept (two trials that score the same are both on the front).

    >>> front_of([(0.02, 0.1), (0.01, 0.05), (0.01, 0.2), (0.03, 0.3), (0.02, 0.1)])
    [(0.01, 0.05), (0.02, 0.1), (0.02, 0.1), (0.03, 0.3)]
    """
    from neva_sweep.sweep.front import dominates

    signs = (1.0, -1.0)  # alignment maximised, NLR minimised
    return sorted((p for p in points if not any(dominates(q, p, signs) for q in points)),
                  key=lambda p: p[1])


def hypervolume(points: list[tuple[float, float]], max_nlr: float) -> float:
    """Area of the (alignment, NLR) plane the front dominates, above alignment 0 and below
    NLR ``max_nlr`` (search.best_max_nlr): one number for a whole front, which a
    search that finds the best edit but drops the low-leakage trials loses part of.

    >>> hypervolume([(0.02, 0.1), (0.01, 0.05)], 1.0)  # 0.01 x 0.05 + 0.02 x 0.9
    0.0185
    """
    fr = [p for p in front_of(points) if p[0] > 0 and p[1] < max_nlr]
    edges = [n for _, n in fr[1:]] + [max_nlr]
    return round(sum(a * (nxt - n) for (a, n), nxt in zip(fr, edges)), 12)


def grid_reference(cfg, values: list[str], methods: list[str], n_points: int = GRID_POINTS
                   ) -> dict:
    """(value, method) -> the grid's points and best feasible alignment (module docstring)."""
    from neva_sweep.builders import host_from_config, stats_from_config
    from neva_sweep.evaluation.capability import spread
    from neva_sweep.methods import METHODS
    from neva_sweep.sweep.calibrate import calibrate_edit, calibration_job
    from neva_sweep.sweep.front import budgets, is_feasible
    from neva_sweep.sweep.run import eval_setup

    host = host_from_config(cfg)
    stats = stats_from_config(cfg, host)
    ev = eval_setup(cfg).evaluator(host)
    ev.null(stats)
    limits = budgets(cfg.search)
    space = cfg.search.space
    out = {}
    for value in values:
        for method in methods:
            job = calibration_job(method, value, cfg.search)
            if method == "caa":
                lo, hi = space.diffmean.layer_frac
                axis = [("layer_frac", lo + (hi - lo) * i / (n_points - 1))
                        for i in range(n_points)]
            else:
                lo, hi = space.sparsity
                axis = [("sparsity", lo * (hi / lo) ** (i / (n_points - 1)))
                        for i in range(n_points)]
            points, t0 = [], time.perf_counter()
            for name, x in axis:
                params = {**job["params"], name: x}
                texts = spread(ev.neutral, cfg.search.calibration.texts, "texts")
                cal = calibrate_edit(host, stats, texts, ev.cap, {**job, "params": params})
                edits = [(value, METHODS[method].build(stats, value,
                                                       {**params, "strength": cal.dose * f}))
                         for f in GRID_FRACTIONS]
                for f, rec in zip(GRID_FRACTIONS, ev.evaluate(edits, params["positions"])):
                    points.append({name: x, "strength": cal.dose * f,
                                   "alignment": rec["alignment"], "kl": rec["kl"],
                                   "feasible": is_feasible(rec, limits)})
            feasible = [p["alignment"] for p in points if p["feasible"]]
            out[(value, method)] = {"points": points, "best": max(feasible, default=None),
                                    "seconds": time.perf_counter() - t0}
            best = out[(value, method)]["best"]
            print(f"grid {value}/{method}: {len(points)} edits, best feasible "
                  f"{'-' if best is None else format(best, '+.4f')} "
                  f"({out[(value, method)]['seconds']:.0f} s)", flush=True)
    return out


def table(runs: dict, ref: dict, values, methods, pruners, seeds, budgets,
          max_nlr: float = 1.0) -> dict:
    """Per (method, pruner): ratio at every budget, pairs at >= 90%, CPU to 90%, and the
    fronts (trials on them, hypervolume)."""
    summary = {}
    print(f"\n{'method':<8}{'pruner':<10}" + "".join(f"{'@' + str(k):>9}" for k in budgets)
          + f"{'>=90% @' + str(budgets[-1]):>12}{'CPU s to 90%':>14}{'trials/h':>10}")
    for method in methods:
        for pruner in pruners:
            ratios = {k: [] for k in budgets}
            reach, to90, cpu_total, n_trials = 0, [], 0.0, 0
            pairs, per_value, cpu_seed = 0, {}, dict.fromkeys(seeds, 0.0)
            # every value, rated or not; pruned_over_budget: pruned on a budget at rung 0,
            # not by the pruner
            counts = {"trials": 0, "pruned": 0, "pruned_over_budget": 0, "infeasible": 0}
            # the sampled trials (all but the starts) over every value and seed, and the
            # studies where one of them beat the best start
            sampled = dict.fromkeys(("sampled", "gated", "low_dose", "over_budget",
                                     "beat_starts", "studies_beaten"), 0)
            fronts = {seed: 0 for seed in seeds}  # Pareto-front trials, all values
            volumes: dict = {seed: {} for seed in seeds}  # seed -> value -> hypervolume
            for value in values:
                for seed in seeds:
                    rows = [x for x in runs[(pruner, seed)]
                            if x["value"] == value and x["method"] == method]
                    points = feasible_points(rows)
                    fronts[seed] += len(front_of(points))
                    where = sampled_trials(rows)
                    for k in sampled:
                        sampled[k] += where.get(k, 0)
                    sampled["studies_beaten"] += where["beat_starts"] > 0
                    volumes[seed][value] = hypervolume(points, max_nlr)
                    counts["trials"] += sum(x["state"] in ("COMPLETE", "PRUNED") for x in rows)
                    counts["pruned"] += sum(x["state"] == "PRUNED" for x in rows)
                    counts["pruned_over_budget"] += sum(
                        x["state"] == "PRUNED" and "over the budget" in (x.get("error") or "")
                        for x in rows)
                    counts["infeasible"] += sum(x["state"] == "COMPLETE"
                                                and x["feasible"] != "True" for x in rows)
                r = ref[(value, method)]
                if r is None or r <= 0:
                    continue
                for seed in seeds:
                    rows = [x for x in runs[(pruner, seed)]
                            if x["value"] == value and x["method"] == method]
                    bests, cpus = curve(rows, budgets)
                    pairs += 1
                    for k, b in zip(budgets, bests):
                        ratios[k].append(0.0 if b is None else max(0.0, b) / r)
                    # ratio at the largest budget, one per seed
                    per_value.setdefault(value, []).append(ratios[budgets[-1]][-1])
                    reach += bool(bests[-1] is not None and bests[-1] >= 0.9 * r)
                    t = first_reaching(rows, 0.9 * r)
                    if t is not None:
                        to90.append(t)
                    cpu_total += cpus[-1]
                    cpu_seed[seed] += cpus[-1]
                    n_trials += sum(x["state"] in ("COMPLETE", "PRUNED") for x in rows)
            mean = {k: statistics.fmean(v) if v else None for k, v in ratios.items()}
            med90 = statistics.median(to90) if to90 else None
            per_hour = n_trials / (cpu_total / 3600) if cpu_total else None
            summary[f"{method}/{pruner}"] = {"ratio": mean, "reach90": reach, "pairs": pairs,
                                             "cpu_to_90_s": med90, "cpu_s": cpu_total,
                                             "cpu_s_per_seed": cpu_seed,
                                             "trials_per_hour": per_hour,
                                             "per_value": per_value, **counts,
                                             "sampled": sampled,
                                             "front_trials_per_seed": fronts,
                                             "hypervolume_per_seed": volumes}
            cells = "".join(f"{'-' if mean[k] is None else format(mean[k], '.2f'):>9}"
                            for k in budgets)
            print(f"{method:<8}{pruner:<10}{cells}{f'{reach}/{pairs}':>12}"
                  f"{'-' if med90 is None else format(med90, '.0f'):>14}"
                  f"{'-' if per_hour is None else format(per_hour, '.0f'):>10}")
    print()
    for method in methods:
        for pruner in pruners:
            x = summary[f"{method}/{pruner}"]["sampled"]
            print(f"{method} {pruner}: {x['sampled']} sampled trials: {x['gated']} gated, "
                  f"{x['low_dose']} ungated below {LOW_DOSE} of the budget dose, "
                  f"{x['over_budget']} over a budget; {x['beat_starts']} beat their study's "
                  f"best start, in {x['studies_beaten']} of "
                  f"{len(values) * len(seeds)} studies")
    if "none" in pruners:  # the pruners' CPU time against the unpruned run's, same seeds
        print()
        for method in methods:
            base = summary[f"{method}/none"]["cpu_s"]
            for pruner in pruners:
                row = summary[f"{method}/{pruner}"]
                row["cpu_vs_none"] = row["cpu_s"] / base if base else None
                per_seed = summary[f"{method}/none"]["cpu_s_per_seed"]
                row["cpu_vs_none_per_seed"] = {
                    seed: c / per_seed[seed] if per_seed[seed] else None
                    for seed, c in row["cpu_s_per_seed"].items()}
                none_hv = summary[f"{method}/none"]["hypervolume_per_seed"]
                row["hypervolume_vs_none_per_seed"] = {
                    seed: {v: h / none_hv[seed][v] if none_hv[seed][v] else None
                           for v, h in hv.items()}
                    for seed, hv in row["hypervolume_per_seed"].items()}
                if pruner != "none" and base:
                    seeds_x = ", ".join(f"{x:.2f}" for x in row["cpu_vs_none_per_seed"].values()
                                        if x is not None)
                    hv_x = [x for hv in row["hypervolume_vs_none_per_seed"].values()
                            for x in hv.values() if x is not None]
                    hv_range = f"{min(hv_x):.2f}-{max(hv_x):.2f}" if hv_x else "-"
                    n_front = {p: "/".join(str(n) for n in summary[f"{method}/{p}"]
                                           ["front_trials_per_seed"].values())
                               for p in (pruner, "none")}
                    print(f"{method} {pruner}: {row['cpu_s']:.0f} CPU s, "
                          f"{row['cpu_vs_none']:.2f}x the unpruned {base:.0f} "
                          f"(per seed: {seeds_x}); front trials per seed {n_front[pruner]} "
                          f"(unpruned {n_front['none']}), hypervolume {hv_range} of the "
                          f"unpruned")
    return summary


def pool(summaries: list[dict]) -> dict:
    """The CPU time and front trials of several outputs' ``summary`` (other values, the same
    methods and pruners) added up over the seeds they all ran: per ``method/pruner``,
    ``cpu_s_per_seed`` and ``front_trials_per_seed`` summed, and each pruner's CPU time
    over the unpruned run's, per seed (``cpu_vs_none_per_seed``) and over all seeds
    (``cpu_vs_none``).

    >>> one = {"neva/none": {"cpu_s_per_seed": {"0": 100.0}, "front_trials_per_seed": {"0": 4}},
    ...        "neva/front": {"cpu_s_per_seed": {"0": 70.0}, "front_trials_per_seed": {"0": 3}}}
    >>> two = {"neva/none": {"cpu_s_per_seed": {"0": 300.0}, "front_trials_per_seed": {"0": 5}},
    ...        "neva/front": {"cpu_s_per_seed": {"0": 130.0}, "front_trials_per_seed": {"0": 5}}}
    >>> pool([one, two])["neva/front"]["cpu_vs_none_per_seed"]
    {'0': 0.5}
    >>> three = {k: {f: {**v, "1": 1} for f, v in r.items()} for k, r in two.items()}
    >>> pool([one, three])["neva/front"]["front_trials_per_seed"]  # seed 1: not in one
    {'0': 8}
    """
    keys = [k for k in summaries[0] if all(k in s for s in summaries)]
    out: dict = {}
    for key in keys:
        row = out[key] = {}
        for field in ("cpu_s_per_seed", "front_trials_per_seed"):
            row[field] = {seed: sum(s[key][field][seed] for s in summaries)
                          for seed in summaries[0][key][field]
                          if all(seed in s[key][field] for s in summaries)}
        row["cpu_s"] = sum(row["cpu_s_per_seed"].values())
    for key, row in out.items():
        base = out.get(key.split("/")[0] + "/none")
        if base is None:
            continue
        row["cpu_vs_none"] = row["cpu_s"] / base["cpu_s"] if base["cpu_s"] else None
        row["cpu_vs_none_per_seed"] = {
            seed: c / base["cpu_s_per_seed"][seed] if base["cpu_s_per_seed"][seed] else None
            for seed, c in row["cpu_s_per_seed"].items()}
    return out


def print_pool(pooled: dict, paths: list[str]) -> None:
    print(f"pooled over {', '.join(paths)}:")
    for key, row in pooled.items():
        if key.endswith("/none") or row.get("cpu_vs_none") is None:
            continue
        base = pooled[key.split("/")[0] + "/none"]
        per_seed = ", ".join("-" if x is None else f"{x:.2f}"
                             for x in row["cpu_vs_none_per_seed"].values())
        fronts = "/".join(str(n) for n in row["front_trials_per_seed"].values())
        none_fronts = "/".join(str(n) for n in base["front_trials_per_seed"].values())
        print(f"{key}: {row['cpu_vs_none']:.2f}x the unpruned CPU time (per seed: {per_seed});"
              f" front trials per seed {fronts} (unpruned {none_fronts})")


def figure(runs, ref, values, methods, pruners, seeds, budgets, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(methods), figsize=(5 * len(methods), 3.6), squeeze=False)
    ks = list(range(1, budgets[-1] + 1))
    for ax, method in zip(axes[0], methods):
        for pruner in pruners:
            for value in values:
                r = ref[(value, method)]
                if r is None or r <= 0:
                    continue
                ys = []
                for seed in seeds:
                    rows = [x for x in runs[(pruner, seed)]
                            if x["value"] == value and x["method"] == method]
                    bests, _ = curve(rows, ks)
                    ys.append([0.0 if b is None else max(0.0, b) / r for b in bests])
                mean = [statistics.fmean(col) for col in zip(*ys)]
                ax.plot(ks, mean, ls="-" if pruner == "none" else "--",
                        label=f"{value} ({pruner})")
        ax.axhline(0.9, color="grey", lw=0.8)
        ax.set(title=method, xlabel="finished trials", ylabel="best so far / reference",
               ylim=(0, 1.05))
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"figure: {out}")


def fronts_figure(runs, values, methods, pruners, seed, out: str) -> None:
    """Per (value, method) the feasible trials of one seed and each pruner's front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(methods), len(values), squeeze=False,
                             figsize=(3.6 * len(values), 3.2 * len(methods)))
    for row, method in zip(axes, methods):
        for ax, value in zip(row, values):
            for i, pruner in enumerate(pruners):
                rows = [x for x in runs[(pruner, seed)]
                        if x["value"] == value and x["method"] == method]
                pts, fr = feasible_points(rows), front_of(feasible_points(rows))
                line, = ax.plot([n for _, n in fr], [a for a, _ in fr], marker="osD^v"[i % 5],
                                ms=5 - i, ls=("-", "--", ":", "-.")[i % 4],
                                drawstyle="steps-post", label=f"{pruner} ({len(fr)})")
                ax.scatter([n for _, n in pts], [a for a, _ in pts], s=6 + 4 * i,
                           color=line.get_color(), alpha=0.35)
            ax.set(title=f"{value} / {method}", xlabel="NLR (lower: less leakage)",
                   ylabel="alignment")
            ax.legend(fontsize=7, title="front trials", title_fontsize=7)
    fig.suptitle(f"feasible trials and Pareto fronts, seed {seed}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"fronts figure: {out}")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--values", nargs="+",
                    default=["power", "tradition", "hedonism", "benevolence"])
    ap.add_argument("--methods", nargs="+", default=["neva", "caa"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--budgets", nargs="+", type=int, default=[6, 12, 24, 48])
    ap.add_argument("--pruners", nargs="+", default=["none", "sha"])
    ap.add_argument("--run-dir", default="runs/convergence")
    ap.add_argument("--json", default=None)
    ap.add_argument("--fronts-figure", default=None,
                    help="a figure of each pruner's feasible trials and front, first seed")
    ap.add_argument("--figure", default=None)
    ap.add_argument("--grid-points", type=int, default=None,
                    help=f"reference grid points per method (default {GRID_POINTS}, --tiny 2)")
    ap.add_argument("--grid-from", default=None,
                    help="reuse the reference grid of an earlier --json output (values it "
                    "does not cover are measured)")
    ap.add_argument("--references-from", nargs="*", default=[],
                    help="earlier --json outputs (same model and trial settings) whose "
                    "references also bound this one: regret against the best any run found")
    ap.add_argument("--tiny", action="store_true", help="a tiny random model (minutes)")
    ap.add_argument("--override", nargs="*", default=[], help="more sweep overrides")
    ap.add_argument("--pool", nargs="+", default=None, metavar="JSON",
                    help="run nothing: add up the CPU time and front trials of earlier "
                    "--json outputs on other values (same methods and pruners), over the "
                    "seeds they all ran")
    args = ap.parse_args(argv)
    if args.pool:
        pooled = pool([json.loads(Path(p).read_text())["summary"] for p in args.pool])
        print_pool(pooled, args.pool)
        result = {"args": vars(args), "pooled": pooled}
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2, default=str))
        return result
    budgets = sorted(args.budgets)
    run_dir = Path(args.run_dir)
    runs, wall = {}, {}
    for pruner in args.pruners:
        for seed in args.seeds:
            d = run_dir / f"{pruner}-seed{seed}"
            wall[f"{pruner}/{seed}"] = run_search(d, sweep_overrides(
                d, args.values, args.methods, budgets[-1], pruner, seed, args.tiny,
                args.override))
            runs[(pruner, seed)] = read_trials(d / "trials.csv")

    from neva_sweep.config import compose_config

    d0 = run_dir / f"{args.pruners[0]}-seed{args.seeds[0]}"
    cfg = compose_config(*[o for o in sweep_overrides(d0, args.values, args.methods,
                                                       budgets[-1], args.pruners[0],
                                                       args.seeds[0], args.tiny, args.override)
                           if not o.startswith("hydra.")])
    grid: dict = {}
    if args.grid_from:  # the grid of an earlier run of this benchmark (same model, data)
        saved = json.loads(Path(args.grid_from).read_text())["grid"]
        grid = {tuple(k.split("/")): g for k, g in saved.items()
                if tuple(k.split("/")) in {(v, m) for v in args.values for m in args.methods}}
    missing = [v for v in args.values if any((v, m) not in grid for m in args.methods)]
    if missing:  # values the saved grid does not cover are measured here
        grid.update(grid_reference(cfg, missing, args.methods,
                                   args.grid_points or (2 if args.tiny else GRID_POINTS)))
    earlier_refs: dict[str, float] = {}
    for path in args.references_from:
        for k, r in json.loads(Path(path).read_text())["reference"].items():
            if r is not None:
                earlier_refs[k] = max(r, earlier_refs.get(k, r))
    ref = {}
    for key, g in grid.items():
        found = [float(x["alignment"]) for rows in runs.values() for x in rows
                 if (x["value"], x["method"]) == key and x["state"] == "COMPLETE"
                 and x["feasible"] == "True" and x["alignment"]]
        earlier = [earlier_refs.get("/".join(key))]
        cands = [a for a in [g["best"], *found, *earlier] if a is not None]
        ref[key] = max(cands) if cands else None
        shown = "-" if ref[key] is None else format(ref[key], "+.4f")
        grid_best = "-" if g["best"] is None else format(g["best"], "+.4f")
        print(f"reference {key[0]}/{key[1]}: {shown} (grid {grid_best})")
    summary = table(runs, ref, args.values, args.methods, args.pruners, args.seeds, budgets,
                    float(cfg.search.best_max_nlr))
    if args.fronts_figure:
        fronts_figure(runs, args.values, args.methods, args.pruners, args.seeds[0],
                      args.fronts_figure)
    if args.figure:
        figure(runs, ref, args.values, args.methods, args.pruners, args.seeds, budgets,
               args.figure)
    result = {"args": vars(args), "reference": {f"{v}/{m}": r for (v, m), r in ref.items()},
              "grid": {f"{v}/{m}": g for (v, m), g in grid.items()}, "summary": summary,
              "wall_s": wall}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
