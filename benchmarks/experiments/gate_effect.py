"""What the context gate buys: the same edits gated and ungated, on value-laden scenarios,
neutral text and multiple-choice questions.

For each value and method (neva, caa), the edit with the given parameters (the method's
defaults unless ``--params`` names a JSON file of {"<value>/<method>": {params}}, e.g.
the best trials of a sweep) is evaluated twice in one batched pass, with ``gate=none`` and
``gate=context``: alignment on the sweep's forced-choice scenarios (the gate is near 1
on them, so the two alignments should match), KL on the neutral texts of the capability
split (never seen by the gate's probe), and MC accuracy on every built-in question
(a distribution the probe never saw either), and KL on the value-laden replies where a
gate opens (``kl_value``). Also the mean gate value on each input set. ``--gates`` picks
the gates (e.g. ``none context value``), ``--split test`` the held-out scenarios and
neutral texts (chosen edits of a sweep, scored where the search never looked).

    OMP_NUM_THREADS=1 python benchmarks/experiments/gate_effect.py
        [--values power tradition benevolence] [--params best.json]
        [--json gate_effect.json] [override ...]

``--gate-only`` measures the gate alone (no edits): its held-out accuracy on the validate
probes vs the capability neutral texts, plain and chat-wrapped, and its mean g on the
scenario prompts, MC questions and neutral texts (plain and chat-wrapped); e.g.
``--gate-only stats.gate_chat=false`` for a probe trained on plain texts only. With
``--gate-only`` also the value gate (``gate=value``) of each of ``--values``: its mean g on
the scenario prompts and the chat-wrapped neutral texts.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import torch

import neva_sweep as nv
from neva_sweep.builders import stats_from_config
from neva_sweep.config import compose_config
from neva_sweep.evaluation.capability import mc_prompt
from neva_sweep.methods import METHODS
from neva_sweep.neurons.gate import gate_accuracy, gate_of, text_gates
from neva_sweep.sweep.run import eval_setup


@torch.inference_mode()
def mean_gate(host, gate, texts: list[str]) -> float:
    return float(text_gates(host, gate, texts, max_length=512).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--values", nargs="+", default=["power", "tradition", "benevolence"])
    ap.add_argument("--methods", nargs="+", default=["neva", "caa"])
    ap.add_argument("--params", default=None, help="JSON {value/method: params}")
    ap.add_argument("--mc", type=int, default=None, help="MC questions (default: all)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--gate-only", action="store_true", help="the gate's figures, no edits")
    ap.add_argument("--gates", nargs="+", default=["none", "context"],
                    help="each edit under these gates (default: none context)")
    ap.add_argument("--split", default="search", choices=("search", "test"),
                    help="the scenarios and neutral texts scored (default: search)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the sweep config")
    args = ap.parse_args()

    cfg = compose_config("capability.mc_limit=null", *args.overrides)
    host = nv.load_model(cfg.model)
    stats = stats_from_config(cfg, host)
    setup = eval_setup(cfg)
    setup.capability.mc_limit = args.mc  # every question unless --mc
    setup = replace(setup, split=args.split)
    ev = setup.evaluator(host)
    gate = gate_of(stats, "context")
    prompts, _ = ev.judge.prompts(host)
    g = {"scenarios": mean_gate(host, gate, prompts),
         "neutral": mean_gate(host, gate, ev.neutral),
         "neutral_chat": mean_gate(host, gate, [host.chat_prompt(t) for t in ev.neutral]),
         "mc": mean_gate(host, gate, [mc_prompt(q)[0] for q in ev.questions])}
    print(f"mean g: scenario prompts {g['scenarios']:.3f}, MC questions {g['mc']:.3f}, "
          f"neutral texts {g['neutral']:.3f} (chat-wrapped {g['neutral_chat']:.3f}); "
          f"{len(ev.questions)} MC questions")
    if args.gate_only:
        acc = gate_accuracy(stats, host)
        print(json.dumps(acc, indent=1))
        # the value gate (gate=value) of each value on the same inputs: where it opens
        by_value = {v: {"scenarios": mean_gate(host, gate_of(stats, "value", v), prompts),
                        "neutral_chat": mean_gate(host, gate_of(stats, "value", v),
                                                  [host.chat_prompt(t) for t in ev.neutral])}
                    for v in args.values}
        print("| value | value gate: mean g on the scenario prompts | on chat-wrapped neutral |")
        print("|---|---|---|")
        for v, r in by_value.items():
            print(f"| {v} | {r['scenarios']:.3f} | {r['neutral_chat']:.3f} |")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"mean_gate": g, "accuracy": acc, "value_gate": by_value}, f,
                          indent=2)
        return
    given = json.load(open(args.params)) if args.params else {}
    edits, labels = [], []
    for v in args.values:
        for m in args.methods:
            params = {**METHODS[m].defaults, **given.get(f"{v}/{m}", {})}
            for gate in args.gates:
                edits.append((v, nv.make_edit(stats, v, m, **{**params, "gate": gate})))
                labels.append((v, m, gate, params))
    recs = ev.evaluate(edits)
    if recs[0]["accuracy_base"] is not None:
        print(f"base MC accuracy {recs[0]['accuracy_base']:.3f}")
    print("| value | method | gate | alignment [95% CI] | NLR | KL | KL on value-laden replies "
          "| MC accuracy drop |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for (v, m, gate_name, params), r in zip(labels, recs):
        lo, hi = r["ci"]["alignment"]
        drop = "-" if r["accuracy_drop"] is None else f"{r['accuracy_drop']:+.3f}"
        klv = "-" if r["kl_value"] is None else f"{r['kl_value']:.4f}"
        print(f"| {v} | {m} | {gate_name} | {r['alignment']:+.4f} [{lo:+.4f}, {hi:+.4f}] | "
              f"{r['nlr']:.2f} | {r['kl']:.4f} | {klv} | {drop} |")
        rows.append({"value": v, "method": m, "gate": gate_name, "params": params,
                     **{k: r[k] for k in ("alignment", "nlr", "kl", "kl_value",
                                          "accuracy_drop", "accuracy_edited", "acquiescence")},
                     "alignment_ci": [lo, hi], "alignment_rows": r["alignment_rows"]})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"mean_gate": g, "n_mc": len(ev.questions), "split": args.split,
                       "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
