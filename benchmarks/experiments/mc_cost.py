"""What chosen edits cost on multiple-choice questions: accuracy drop with paired intervals.

    python benchmarks/experiments/mc_cost.py --dirs runs/prompt10 runs/prompt10_free \\
        --methods neva prompt --json docs/mc_cost.json

KL on neutral text prices a prompt's prefix, not its value (prompt_placebo.py): a
value-free instruction of the same length costs the same KL. Accuracy on the built-in
multiple-choice questions (every one, capability.mc_limit=null) is a capability measure
every method pays in the same units. For each chosen edit of ``--methods`` in the run
directories' best_edits.json (the first directory's edit where several chose one for a
(value, method)), this scores the questions with the edit and without, and prints per
value: each method's test-split alignment (best_edits.json ``test``, when scored), its
accuracy drop (unedited minus edited accuracy) with a 95% bootstrap interval paired over
the questions, and the difference of the two methods' drops, paired over the questions
(A's drop minus B's; an interval above 0: A costs more). ``--placebo`` also scores each
prompt edit's same-length placebo (``PromptEdit.placebo(0)``): what the prefix alone costs.
The model is the one the sweep recorded (best_edits.json ``model_config``; ``--model`` picks
one where the runs hold several); ``--override`` sets other config keys, e.g.
``capability.mc_limit=40`` for the questions a sweep's trials scored.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

import neva_sweep as nv
from neva_sweep.builders import stats_from_config
from neva_sweep.cli import stats_inputs_hash_of
from neva_sweep.config import compose_config
from neva_sweep.data import load_records
from neva_sweep.evaluation.capability import mc_correct, mc_questions
from neva_sweep.evaluation.paired import paired_bootstrap
from neva_sweep.sweep.outputs import best_edit_spec, read_best_edits
from neva_sweep.values import VALUES


def chosen_entries(dirs: list[str], methods: list[str], values: list[str],
                   model: str | None = None) -> dict:
    """{(value, method): best_edits entry} of one model: the first directory's where several
    chose one."""
    out: dict[tuple[str, str], dict] = {}
    models: set[str] = set()
    for d in dirs:
        path = Path(d) / "best_edits.json"
        if not path.is_file():
            sys.exit(f"--dirs: {path} does not exist (run the sweep first)")
        for e in read_best_edits(path):
            models.add(e["model"])
            if model is not None and e["model"] != model:
                continue
            key = (e["value"], e["method"])
            if e["method"] in methods and e["value"] in values and key not in out:
                if e.get("neurons"):  # saved next to best_edits.json
                    e = {**e, "neurons": str((path.parent / e["neurons"]).resolve())}
                out[key] = e
    if model is None and len(models) > 1:
        sys.exit(f"--model: the run directories hold edits of {sorted(models)}; name one")
    return out


def drop_ci(base: np.ndarray, edited: np.ndarray) -> dict:
    """Accuracy drop (base - edited) and its 95% interval, paired over the questions."""
    d = base.astype(float) - edited.astype(float)  # (n,) in {-1, 0, 1}
    lo, hi = np.quantile(paired_bootstrap(d), [0.025, 0.975])
    return {"drop": float(d.mean()), "ci": [float(lo), float(hi)],
            "accuracy": float(edited.mean())}


def measure(dirs: list[str], methods: list[str], values: list[str], placebo: bool,
            overrides: list[str], model: str | None = None) -> dict:
    cfg = compose_config("capability.mc_limit=null", "progress=false", *overrides)
    entries = chosen_entries(dirs, methods, values, model)
    if not entries:
        sys.exit(f"--dirs: no chosen edit of {methods} for {values} in {dirs}")
    host = nv.load_model(OmegaConf.create(next(iter(entries.values()))["model_config"]))
    questions = mc_questions(load_records("mc", cfg.data.mc), cfg.capability.mc_limit)
    base = mc_correct(host, questions)[0]  # (n,) bool
    print(f"{host.name}: {len(questions)} MC questions, unedited accuracy {base.mean():.3f}",
          flush=True)
    stats = None

    def get_stats():  # only edits built from statistics (DiffMean, gated ones) need them
        nonlocal stats
        stats = stats or stats_from_config(cfg, host)
        return stats

    inputs_hash = stats_inputs_hash_of(cfg)  # what the sweep's statistics were built from
    rows: dict[str, dict] = {}
    order = lambda kv: (VALUES.index(kv[0][0]), methods.index(kv[0][1]))  # noqa: E731
    for (value, method), entry in sorted(entries.items(), key=order):
        edit = best_edit_spec(entry, stats=get_stats, inputs_hash=inputs_hash)
        positions = getattr(edit, "positions", None) or "all"
        correct = mc_correct(host, questions, (edit,), positions)[0]
        test = entry.get("test") or {}
        row = {"params": entry["params"], "test_alignment": test.get("alignment"),
               "test_kl": test.get("kl"), "correct": correct.astype(int).tolist(),
               **drop_ci(base, correct)}
        if placebo and edit.kind == "prompt":
            fake = mc_correct(host, questions, (edit.placebo(0),), positions)[0]
            row["placebo"] = drop_ci(base, fake)
        rows.setdefault(value, {})[method] = row
        print(f"{value:15s} {method:15s} accuracy drop {row['drop']:+.3f} "
              f"[{row['ci'][0]:+.3f}, {row['ci'][1]:+.3f}]", flush=True)
    if len(methods) == 2:  # drop A - drop B = correct B - correct A, question by question
        for by in rows.values():
            if all(m in by for m in methods):
                a, b = (np.array(by[m]["correct"]) for m in methods)
                d = drop_ci(b, a)
                by["paired"] = {"drop_a_minus_b": d["drop"], "ci": d["ci"]}
    return {"model": host.name, "n_questions": len(questions),
            "base_accuracy": float(base.mean()), "base_correct": base.astype(int).tolist(),
            "methods": methods, "values": rows}


def report(rep: dict) -> str:
    """The table: per value, each method's test alignment and MC accuracy drop, and (two
    methods) the difference of their drops, paired over the questions."""
    methods = rep["methods"]
    ci = lambda r: f"{r['drop']:+.3f} [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]"  # noqa: E731
    cols = ["value"] + [f"{m} {c}" for m in methods for c in ("test A", "MC drop [95% CI]")]
    if len(methods) == 2:
        cols.append(f"drop {methods[0]} - {methods[1]} [95% CI]")
    lines = [f"{rep['model']}: {rep['n_questions']} MC questions, unedited accuracy "
             f"{rep['base_accuracy']:.3f}", "", "| " + " | ".join(cols) + " |",
             "|" + "---|" * len(cols)]
    for value, by in rep["values"].items():
        cells = [value]
        for m in methods:
            r = by.get(m)
            a = r and r["test_alignment"]
            cells += ["–" if a is None else f"{a:+.4f}", ci(r) if r else "–"]
        if len(methods) == 2:
            p = by.get("paired")
            cells.append(ci({"drop": p["drop_a_minus_b"], "ci": p["ci"]}) if p else "–")
        lines.append("| " + " | ".join(cells) + " |")
    placebos = [(v, r["placebo"]) for v, by in rep["values"].items()
                for r in by.values() if "placebo" in r]
    if placebos:
        lines += ["", "placebo prefixes (value-free, same length) MC drop: "
                  + "; ".join(f"{v} {ci(p)}" for v, p in placebos)]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dirs", nargs="+", required=True, help="sweep run directories")
    ap.add_argument("--methods", nargs="+", default=["neva", "prompt"])
    ap.add_argument("--values", nargs="+", default=list(VALUES), choices=VALUES)
    ap.add_argument("--model", default=None, help="the model's edits, when the runs hold "
                    "several models' (best_edits.json \"model\")")
    ap.add_argument("--placebo", action="store_true", help="also each prompt's placebo")
    ap.add_argument("--override", nargs="*", default=[], help="more config overrides")
    ap.add_argument("--json", default=None, help="write the report here")
    args = ap.parse_args()
    rep = measure(args.dirs, args.methods, args.values, args.placebo,
                  list(args.override), args.model)
    print(report(rep))
    if args.json:
        Path(args.json).write_text(json.dumps(rep, indent=1))


if __name__ == "__main__":
    main()
