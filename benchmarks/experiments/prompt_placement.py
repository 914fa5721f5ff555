"""Where the value instruction goes, and what the forced-choice judge then sees.

A prompt edit's instruction goes into the system turn of chat-templated sequences. If it
*replaced* the chat template's default system prompt, two things would change at once:
the value instruction arrives, and the default assistant persona leaves. This benchmark
scores the same ten value prompts and the acquiescence prompt two ways,

- ``replace``: the instruction is the system turn (``PromptEdit(..., replace_system=True)``;
  neva_sweep's behaviour before this measurement);
- ``append``: the default system prompt, then the instruction (only the value changes;
  neva_sweep's default since),

and reads each with the library's own validity maths: detection against the unprompted
model (:func:`neva_sweep.evaluation.judge_validity.prompt_detection`), specificity against the
other nine
value prompts (:func:`neva_sweep.evaluation.judge_validity.prompt_specificity`), the acquiescence
control,
and the shift every value prompt causes alike.

    python benchmarks/experiments/prompt_placement.py \
        --scenarios benchmarks/experiments/data/heldout_scenarios.jsonl
    python benchmarks/experiments/prompt_placement.py --model tiny-llama --limit 4  # a quick check
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import neva_sweep as nv
from neva_sweep.config import JudgeConfig
from neva_sweep.data import load_records
from neva_sweep.edits.group import default_system_prompt
from neva_sweep.edits.prompt import PromptEdit, prompt_edit
from neva_sweep.evaluation.judge_validity import (
    ACQUIESCENCE_PROMPT,
    prompt_detection,
    prompt_specificity,
)
from neva_sweep.evaluation.judges.forced_choice import ForcedChoiceJudge
from neva_sweep.evaluation.scoring import option_logprobs
from neva_sweep.values import VALUES


def softmax(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def read(E: list[np.ndarray], n_boot: int) -> dict:
    """E: base, ten value prompts, acquiescence; each (Q, V)."""
    base, prompted, acq = E[0], E[1:11], E[11]
    det = prompt_detection(base, prompted, n_boot)
    spec = prompt_specificity(prompted, n_boot)
    common = np.mean([p.mean(0) for p in prompted], 0) - base.mean(0)
    return {"detected": det["detected"], "specificity_detected": spec["detected"],
            "acquiescence_max_abs": float(np.abs(acq.mean(0) - base.mean(0)).max()),
            "common_shift_max_abs": float(np.abs(common).max()),
            "mean_target_shift": float(np.mean([det["per_value"][v]["alignment"]
                                                for v in VALUES])),
            "missed": [v for v, r in det["per_value"].items()
                       if not (r["ci"][0] > 0 and r["rank"] == 0)],
            "missed_specificity": [v for v, r in spec["per_value"].items()
                                   if not (r["ci"][0] > 0 and r["rank"] == 0)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--scenarios", default=None, help="scenarios JSONL (default: built-in)")
    ap.add_argument("--limit", type=int, default=None, help="scenarios used (default: all)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args()

    host = nv.load_model(args.model)
    judge = ForcedChoiceJudge(JudgeConfig(scenarios_limit=args.limit),
                              load_records("scenarios", args.scenarios))
    prompts, options = judge.prompts(host)
    default = default_system_prompt(host)
    texts = [prompt_edit(v, 3).text for v in VALUES] + [ACQUIESCENCE_PROMPT]
    placements = {"replace": [PromptEdit(t, replace_system=True) for t in texts],
                  "append": [PromptEdit(t) for t in texts]}  # neva_sweep's default
    t0 = time.time()
    edits = [None] + [e for p in placements.values() for e in p]
    scores = option_logprobs(host, prompts, options, edits, "all", args.batch_size).numpy()
    E = [softmax(s) for s in scores]  # (Q, V) each: base, 11 replace, 11 append
    out = {"model": host.name, "scenarios": args.scenarios or "built-in",
           "n_rows": len(prompts), "default_system_prompt": default,
           "seconds": round(time.time() - t0, 1)}
    for i, name in enumerate(placements):
        out[name] = read([E[0], *E[1 + 11 * i: 12 + 11 * i]], args.n_boot)
    print(f"{out['model']}, {out['n_rows']} scenarios ({out['scenarios']}), "
          f"{out['seconds']} s; default system prompt: {default!r}")
    print(f"{'placement':<10}{'detected':>9}{'specific':>9}{'acq max':>9}{'common max':>11}"
          f"{'target':>9}  missed (vs unprompted / vs other prompts)")
    for name in placements:
        r = out[name]
        print(f"{name:<10}{r['detected']:>7}/10{r['specificity_detected']:>7}/10"
              f"{r['acquiescence_max_abs']:>9.4f}{r['common_shift_max_abs']:>11.4f}"
              f"{r['mean_target_shift']:>+9.4f}  {', '.join(r['missed']) or '-'} / "
              f"{', '.join(r['missed_specificity']) or '-'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
