"""Why NeVA wins or loses: every edit variant at one matched KL, scored on the test split.

    python benchmarks/experiments/dose_decomposition.py [--tiny] [--model smollm2-135m]
        [--values power tradition benevolence hedonism] [--kls 0.01 0.02 0.05]
        [--variants NAME ...] [--texts 8] [--nulls 2] [--steps 4]
        [--json PATH] [--figure PATH]
    python benchmarks/experiments/dose_decomposition.py --merge A.json B.json [--json PATH]

Each variant below is one edit of one method with its other settings fixed; only its
dose (the scaled ``strength``, neva_sweep/methods/strength.py) is set, by bisection (the sweep's
calibration, neva_sweep/sweep/calibrate.py), so that its mean KL(base || edited) on
``--texts`` neutral texts of the *search* split equals each ``--kls`` budget. At that dose
it is scored on the *test* split (scenarios and neutral texts no search saw) beside
``--nulls`` dose-matched random-direction edits (neva_sweep/methods/nulls.py: same layers, same
neuron count, same residual push): the z-score says whether the edit beats an edit of
the same size that targets nothing. Comparing variants at one KL then separates what
each part of NeVA contributes:

- selection: ``neva_add`` vs ``dense_all`` (every neuron's mean difference) and the
  dose-matched null (random neurons, random signs, equal push);
  ``neva_pairs_d`` / ``neva_attribution``: selection by stance pairs or by attribution;
- layers: ``neva_no_last3`` (NeVA without the last three blocks);
- subspace: ``diffmean_1`` / ``diffmean_all`` (the residual-stream mean difference at
  one block / every block) against the neuron edits;
- the steering rival: ``caa_pairs`` (contrastive-pair CAA at the answer token);
- input dependence: ``neva_scale``, ``neva_set``, ``neva_gate_neuron`` (rules that act
  on the current activation) against ``neva_add`` (a constant push).

The table gives, per value, KL budget and variant: the test alignment with its 95%
interval, its z against the nulls, NLR (leakage) and the KL it reached on the test
split's neutral texts. The summary counts, per budget, the values on which the best
NeVA variant is >= the best steering rival (diffmean, caa_pairs) with lower NLR and beats
its own dose-matched nulls (z >= 2).

``--merge`` joins the rows of earlier ``--json`` outputs (runs of other values with the
same settings; a later file's row replaces an earlier one for the same value, budget and
variant), prints the verdict per value and budget, and writes them with the summary.

All variants of one (value, budget) bisect in lock-step (one batched KL pass per round) and
are scored in one batched evaluation per edit positions.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections import defaultdict

import numpy as np

import neva_sweep as nv
from neva_sweep.config import JudgeConfig, StatsConfig
from neva_sweep.data import load_records
from neva_sweep.evaluation.capability import (
    CapabilityConfig,
    base_distribution,
    mean_kl,
    neutral_texts,
)
from neva_sweep.evaluation.evaluator import Evaluator
from neva_sweep.evaluation.heldout import heldout_record
from neva_sweep.methods import METHODS
from neva_sweep.methods.nulls import dose_matched_nulls, edit_push
from neva_sweep.neurons.stats import cached_stats
from neva_sweep.sweep.calibrate import bisect_dose

RIVALS = ("diffmean_1", "diffmean_all", "caa_pairs")  # steering methods, not NeVA
Z_NULL = 2.0  # an edit "beats its null" when its test z against dose-matched nulls >= this


def variants(n_layers: int) -> dict[str, tuple[str, dict, float]]:
    """name -> (method, fixed params, bisection start) for a model of ``n_layers`` blocks."""
    return {
        "neva_add": ("neva", {}, 16.0),
        "neva_no_last3": ("neva", {"layer_window": f"0-{max(1, n_layers - 3)}"}, 16.0),
        # every neuron: polarity both, as positive keeps only the neurons scoring > 0 (the
        # anti-specific ones move down along their negative mean difference, as add does)
        "dense_all": ("neva", {"sparsity": 0.999, "polarity": "both"}, 16.0),
        "neva_pairs_d": ("neva", {"score": "pairs_d"}, 16.0),
        "neva_attribution": ("neva", {"score": "attribution"}, 16.0),
        "neva_scale": ("neva", {"rule": "scale"}, 16.0),
        "neva_set": ("neva", {"rule": "set"}, 16.0),
        "neva_gate_neuron": ("neva", {"rule": "gate_neuron"}, 16.0),
        "diffmean_1": ("diffmean", {"layer_frac": 0.5, "n_layers": 1}, 1.0),
        "diffmean_all": ("diffmean", {"layer_frac": 0.0, "n_layers": n_layers}, 0.1),
        "caa_pairs": ("caa_pairs", {"layer_frac": 0.5, "n_layers": 1}, 0.1),
    }


def bisection(budget: float, start: float, steps: int):
    """:func:`~neva_sweep.sweep.calibrate.bisect_dose` as a generator: yields the next dose,
    is sent its KL, returns the Calibration, so that many variants bisect in lock-step and
    share one batched KL pass per round."""
    known: list[float] = []  # the KLs of the doses asked so far, in order
    while True:  # bisect_dose is deterministic: replay it up to the first unknown dose
        try:
            return bisect_dose(replay(known), budget, start, steps)
        except _NeedKL as need:
            known.append((yield need.dose))


class _NeedKL(Exception):
    def __init__(self, dose: float):
        self.dose = dose


def replay(known: list[float]):
    """A kl_at for bisect_dose that answers from ``known`` in order and stops (raising
    _NeedKL) at the first dose it does not know yet."""
    it = iter(known)

    def f(dose: float) -> float:
        try:
            return next(it)
        except StopIteration:
            raise _NeedKL(dose) from None
    return f


def calibrate_all(host, stats, texts, base, value, specs: dict, budget: float, steps: int
                  ) -> dict[str, tuple]:
    """name -> (edit at the bisected dose, Calibration) for every variant in ``specs``
    (name -> (method, params, start)); each round evaluates every variant's next dose in one
    mean_kl call per edit positions."""
    full = {n: {**METHODS[m].defaults, **p} for n, (m, p, _) in specs.items()}
    gens = {n: bisection(budget, start, steps) for n, (_, _, start) in specs.items()}
    pending = {n: next(g) for n, g in gens.items()}  # name -> dose to evaluate
    done: dict[str, tuple] = {}

    def edit_at(name: str, dose: float):
        method = specs[name][0]
        return nv.make_edit(stats, value, method, **{**full[name], "strength": dose})

    while pending:
        by_pos: dict[str, list[str]] = defaultdict(list)
        for n in pending:
            by_pos[full[n].get("positions") or "all"].append(n)
        kls: dict[str, float] = {}
        for positions, names in by_pos.items():
            edits = [edit_at(n, pending[n]) for n in names]
            for n, k in zip(names, mean_kl(host, texts, base, edits, positions, 8)):
                kls[n] = float(k)
        for n in list(pending):
            try:
                pending[n] = gens[n].send(kls[n])
            except StopIteration as stop:
                cal = stop.value
                done[n] = (edit_at(n, cal.dose), cal)
                del pending[n]
    return done


def score_all(ev: Evaluator, host, stats, value, edits: dict, n_nulls: int, seed: int
              ) -> dict[str, dict]:
    """name -> held-out record of each edit beside its dose-matched nulls on the evaluator's
    (test) split, all edits of one positions in one batched evaluation (no nulls for an edit
    that leaves no other neurons to draw them from, such as ``dense_all``)."""
    groups: dict[str, list] = defaultdict(list)  # positions -> [(name, edit, nulls)]
    for name, edit in edits.items():
        try:
            nulls = dose_matched_nulls(host, edit, stats, n_nulls, seed)
        except ValueError:  # every neuron of a layer edited: no random others of equal count
            nulls = []
        groups[edit.positions or "all"].append((name, edit, nulls))
    out = {}
    for positions, items in groups.items():
        flat = [(value, e) for _, edit, nulls in items for e in (edit, *nulls)]
        recs = iter(ev.evaluate(flat, positions))
        for name, edit, nulls in items:
            own = next(recs)
            null_recs = [next(recs) for _ in nulls]
            rec = heldout_record(own, null_recs, edit_push(host, edit, stats), "test")
            out[name] = {k: rec[k] for k in ("alignment", "ci", "z", "nlr", "kl", "push",
                                             "null")}
    return out


def summary(rows: list[dict], kls: list[float]) -> dict:
    """Per budget: on how many values the best NeVA variant (by test alignment) is >= the
    best rival, with lower NLR, and beats its own dose-matched nulls (z >= 2): a NeVA
    variant that does not beat an edit of its size that targets nothing wins nothing."""
    out = {}
    for kl in kls:
        by_value = defaultdict(dict)
        for r in rows:
            if r["budget"] == kl and r.get("alignment") is not None:
                by_value[r["value"]][r["variant"]] = r
        wins, detail = 0, {}
        for value, vs in by_value.items():
            ours = [r for n, r in vs.items() if n not in RIVALS]
            rivals = [r for n, r in vs.items() if n in RIVALS]
            if not ours or not rivals:
                continue
            a = max(ours, key=lambda r: r["alignment"])
            b = max(rivals, key=lambda r: r["alignment"])
            beats_null = a["z"] is not None and a["z"] >= Z_NULL
            win = a["alignment"] >= b["alignment"] and a["nlr"] < b["nlr"] and beats_null
            wins += win
            detail[value] = {"neva": a["variant"], "rival": b["variant"], "win": bool(win),
                             "neva_beats_null": bool(beats_null),
                             "rival_beats_null": b["z"] is not None and b["z"] >= Z_NULL}
        out[str(kl)] = {"wins": wins, "values": len(detail), "detail": detail}
    return out


def verdicts(rows: list[dict], kl: float) -> list[dict]:
    """Per value at budget ``kl``: the best NeVA variant and the best rival by test
    alignment, each with its 95% interval, z and NLR, and the verdict: ``NeVA ahead`` /
    ``rival ahead`` when the intervals do not overlap, else ``overlap`` (per-edit
    intervals, not paired: a conservative reading)."""
    by_value: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r.get("budget") == kl and r.get("alignment") is not None:
            by_value[r["value"]].append(r)
    out = []
    for value, rs in by_value.items():
        ours = [r for r in rs if r["variant"] not in RIVALS]
        rivals = [r for r in rs if r["variant"] in RIVALS]
        if not ours or not rivals:
            continue
        a = max(ours, key=lambda r: r["alignment"])
        b = max(rivals, key=lambda r: r["alignment"])
        (alo, ahi), (blo, bhi) = a["ci"]["alignment"], b["ci"]["alignment"]
        verdict = ("NeVA ahead" if alo > bhi else "rival ahead" if blo > ahi else "overlap")
        out.append({"value": value, "neva": a, "rival": b, "verdict": verdict})
    return out


def print_verdicts(rows: list[dict], kls: list[float]) -> None:
    for kl in kls:
        print(f"\nKL {kl}: best NeVA variant against the best rival (test alignment [95% CI],"
              " z, NLR)")
        for v in verdicts(rows, kl):
            cells = []
            for side in ("neva", "rival"):
                r = v[side]
                lo, hi = r["ci"]["alignment"]
                z = "n/a" if r["z"] is None else f"{r['z']:+.1f}"
                cells.append(f"{r['variant']} {r['alignment']:+.4f} [{lo:+.4f}, {hi:+.4f}] "
                             f"z {z} NLR {r['nlr']:.2f}")
            print(f"  {v['value']:<15}{cells[0]:<62}{cells[1]:<62}{v['verdict']}")


def merge(paths: list[str]) -> list[dict]:
    """The rows of several --json outputs; later files win on (value, budget, variant)."""
    rows: dict[tuple, dict] = {}
    for path in paths:
        with open(path) as f:
            for r in json.load(f)["rows"]:
                rows[(r["value"], r.get("budget"), r["variant"])] = r
    return list(rows.values())


def figure(rows: list[dict], kls: list[float], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({r["variant"] for r in rows})
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, name in enumerate(names):
        xs, ys, es = [], [], []
        for kl in kls:
            al = [r["alignment"] for r in rows if r["variant"] == name and r["budget"] == kl
                  and r.get("alignment") is not None]
            if al:
                xs.append(kl)
                ys.append(float(np.mean(al)))
                es.append(float(np.std(al, ddof=1) / math.sqrt(len(al))) if len(al) > 1
                          else 0.0)
        style = "--" if name in RIVALS else "-"
        ax.errorbar(xs, ys, yerr=es, label=name, linestyle=style, marker="o", capsize=2,
                    color=plt.cm.tab20(i % 20))  # 11 variants: more than the 10-colour cycle
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("KL budget on neutral search texts (nats/token)")
    ax.set_ylabel("test alignment (mean over values, +- s.e.)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tiny", action="store_true",
                    help="tiny-llama, 2 values, one budget, 3 scenarios, 2 nulls")
    ap.add_argument("--values", nargs="+",
                    default=["power", "tradition", "benevolence", "hedonism"])
    ap.add_argument("--kls", nargs="+", type=float, default=[0.01, 0.02, 0.05])
    ap.add_argument("--variants", nargs="+", default=None, help="default: all")
    ap.add_argument("--texts", type=int, default=8, help="neutral search texts for the KL")
    ap.add_argument("--nulls", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--scenarios", type=int, default=None,
                    help="test scenarios judged (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default=os.environ.get(
        "NEVA_SWEEP_CACHE", os.path.expanduser("~/.cache/neva_sweep")),
                    help="the sweep's cache directory (statistics, unedited side); '' = none")
    ap.add_argument("--json", default=None)
    ap.add_argument("--figure", default=None)
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="join earlier --json outputs and print the verdicts (no model runs)")
    args = ap.parse_args()
    if args.merge:
        rows = merge(args.merge)
        kls = sorted({r["budget"] for r in rows if r.get("budget") is not None}, reverse=True)
        print_verdicts(rows, kls)
        summ = summary(rows, kls)
        for kl, s in summ.items():
            print(f"  KL {kl}: {s['wins']}/{s['values']} values won by NeVA "
                  "(>= best rival, lower NLR, z >= 2)")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"args": {"merge": args.merge}, "rows": rows, "summary": summ,
                           "verdicts": {str(kl): [{"value": v["value"],
                                                   "neva": v["neva"]["variant"],
                                                   "rival": v["rival"]["variant"],
                                                   "verdict": v["verdict"]}
                                                  for v in verdicts(rows, kl)]
                                        for kl in kls}}, f, indent=2)
        if args.figure:
            figure(rows, kls, args.figure)
        return
    args.cache_dir = args.cache_dir or None
    if args.tiny:
        args.model, args.values, args.kls = "tiny-llama", args.values[:2], [2e-5]
        args.texts, args.nulls, args.steps, args.scenarios = 3, 2, 2, 3
    t0 = time.perf_counter()
    names = args.variants or list(variants(1))
    unknown = sorted(set(names) - set(variants(1)))
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; valid choices: "
                         f"{', '.join(variants(1))}")
    host = nv.load_model(args.model)
    # the attribution variant reads the stance pairs' gradients (a pass of its own)
    stats = cached_stats(host, nv.load_probes(split="identify"),
                         StatsConfig(attribution="neva_attribution" in names),
                         args.cache_dir and os.path.join(args.cache_dir, "stats"),
                         progress=False)
    specs = variants(len(stats.layer_sizes))
    texts = neutral_texts(load_records("neutral"), args.texts, "search")
    base = base_distribution(host, texts, 64, 4)
    ev = Evaluator(host, JudgeConfig(scenarios_limit=args.scenarios, n_boot=200),
                   CapabilityConfig(mc_limit=0, fluency_queries=0, value_replies=0), split="test",
                   cache_dir=args.cache_dir and os.path.join(args.cache_dir, "eval"))
    rows = []
    print(f"{args.model}: {len(names)} variants x {len(args.values)} values x budgets "
          f"{args.kls}; KL on {len(texts)} neutral search texts, scored on the test split")
    print(f"{'value':<13}{'KL':>6} {'variant':<18}{'dose':>9}{'A test':>10}{'95% CI':>22}"
          f"{'z':>7}{'NLR':>7}{'test KL':>9}")
    for value in args.values:
        buildable = {}
        for name in names:  # a variant this version or these statistics cannot build
            method, params, start = specs[name]
            try:
                nv.make_edit(stats, value, method, **{**params, "strength": start})
                buildable[name] = specs[name]
            except (KeyError, ValueError) as e:
                rows.append({"value": value, "variant": name, "method": method,
                             "params": params, "error": str(e).splitlines()[0]})
                print(f"{value:<13}{'':>6} {name:<18} skipped: {rows[-1]['error']}")
        for kl in args.kls:
            t1 = time.perf_counter()
            edits = calibrate_all(host, stats, texts, base, value, buildable, kl, args.steps)
            scores = score_all(ev, host, stats, value, {n: e for n, (e, _) in edits.items()},
                               args.nulls, args.seed)
            for name in buildable:
                method, params, _ = specs[name]
                edit, cal = edits[name]
                row = {"value": value, "budget": kl, "variant": name, "method": method,
                       "params": params, "dose": cal.dose, "search_kl": cal.kl,
                       "bracketed": cal.bracketed, "n_neurons": edit.n_neurons,
                       **scores[name]}
                rows.append(row)
                lo, hi = row["ci"]["alignment"]
                z = "n/a" if row["z"] is None else f"{row['z']:+.1f}"
                print(f"{value:<13}{kl:>6g} {name:<18}{row['dose']:>9.3g}"
                      f"{row['alignment']:>+10.4f}   [{lo:+.4f}, {hi:+.4f}]{z:>7}"
                      f"{row['nlr']:>7.2f}{row['kl']:>9.3f}"
                      + ("" if row["bracketed"] else "  (budget not bracketed)"))
            print(f"  ({value}, KL {kl}: {time.perf_counter() - t1:.0f} s)", flush=True)
    print_verdicts(rows, args.kls)
    summ = summary(rows, args.kls)
    print("\nbest NeVA variant >= best rival (diffmean, caa_pairs), lower NLR, z >= 2:")
    for kl, s in summ.items():
        print(f"  KL {kl}: {s['wins']}/{s['values']} values "
              + ", ".join(f"{v}: {d['neva']} vs {d['rival']}{' (win)' if d['win'] else ''}"
                          for v, d in s["detail"].items()))
    print(f"{time.perf_counter() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows, "summary": summ}, f, indent=2)
    if args.figure:
        figure(rows, args.kls, args.figure)


if __name__ == "__main__":
    main()
