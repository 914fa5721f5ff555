"""What a prompt's KL budget measures: each value prompt beside placebo prompts of its length.

    python benchmarks/experiments/prompt_placebo.py --values tradition power \\
        --strengths 1 3 --placebos 2 --json docs/prompt_placebo.json

The ``prompt`` method puts an instruction before every sequence, the neutral texts whose
KL is the sweep's capability budget included. Every edit here is evaluated as a sweep
trial is (``experiment=default``'s trial settings, the search split): the value prompt
at each wording, and ``--placebos`` value-free instructions of the same number of words
(``PromptEdit.placebo(seed)``, the prompt's dose-matched nulls on the test split). Where
the placebos cost the same KL as the prompt, the budget prices the prefix, not the value.
``--tiny`` runs the same code on a tiny random model (the test suite runs it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import neva_sweep as nv
from neva_sweep.config import compose_config
from neva_sweep.edits.prompt import PROMPT_STRENGTHS, prompt_edit
from neva_sweep.sweep.run import eval_setup
from neva_sweep.values import VALUES

TINY = ["model=tiny_llama", "sweep.judge.scenarios_limit=4",
        "sweep.capability.neutral_limit=2"]


def measure(values: list[str], strengths: list[int], placebos: int, overrides: list[str]
            ) -> list[dict]:
    """One row per (value, wording, edit): the prompt, then its placebos (seeds 0..n-1)."""
    cfg = compose_config("experiment=default", "progress=false", *overrides)
    host = nv.load_model(cfg.model)
    ev = eval_setup(cfg).evaluator(host)
    rows = []
    for value in values:
        for s in strengths:
            prompt = prompt_edit(value, s)
            edits = [prompt] + [prompt.placebo(seed) for seed in range(placebos)]
            recs = ev.evaluate([(value, e) for e in edits], "all")  # one shared pass
            for i, (e, r) in enumerate(zip(edits, recs)):
                rows.append({"value": value, "strength": s,
                             "edit": "prompt" if i == 0 else f"placebo{i - 1}",
                             "words": len(e.text.split()), "text": e.text.strip(),
                             "kl": r["kl"], "alignment": r["alignment"], "nlr": r["nlr"]})
                print(f"{value:15s} wording {s} {rows[-1]['edit']:9s} "
                      f"{rows[-1]['words']:3d} words  KL {r['kl']:.3f}  "
                      f"alignment {r['alignment']:+.4f}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--values", nargs="+", default=["tradition", "power"], choices=VALUES)
    ap.add_argument("--strengths", nargs="+", type=int, default=[1, 3],
                    choices=sorted(s for s in PROMPT_STRENGTHS if s))
    ap.add_argument("--placebos", type=int, default=2, help="placebo prompts per wording")
    ap.add_argument("--tiny", action="store_true", help="a tiny random model (minutes)")
    ap.add_argument("--override", nargs="*", default=[], help="more config overrides")
    ap.add_argument("--json", default=None, help="write the rows here")
    args = ap.parse_args()
    if args.placebos < 1:
        ap.error("--placebos: at least 1")
    rows = measure(args.values, args.strengths, args.placebos,
                   (TINY if args.tiny else []) + list(args.override))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows}, indent=2))


if __name__ == "__main__":
    main()
