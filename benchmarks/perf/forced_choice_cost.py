"""Cost of the forced-choice judge: prefix-cached option scoring vs naive full forwards.

Naive: every (scenario, option) pair runs as one full sequence (prompt + option), ten per
scenario. Cached: the scenario prompt runs once, its KV cache is repeated for the ten
options, which run as one batch. Prints the tokens each computes, the wall time of each
(same process, same edits, alternating order) and the largest difference of the scores.

    python benchmarks/perf/forced_choice_cost.py                     # SmolLM2, 24 scenarios
    python benchmarks/perf/forced_choice_cost.py --model tiny-llama --scenarios 8
    python benchmarks/perf/forced_choice_cost.py --mc 40             # MC capability questions

With ``--mc N`` the same comparison runs on N multiple-choice questions (each question
once, its cache serving the four choices: neva_sweep.evaluation.capability.mc_scores) instead of the
scenarios.
"""

from __future__ import annotations

import argparse
import time

import torch

import neva_sweep as nv
from neva_sweep.config import JudgeConfig
from neva_sweep.data import load_records
from neva_sweep.evaluation.judges.forced_choice import ForcedChoiceJudge
from neva_sweep.evaluation.scoring import continuation_logprobs, option_logprobs, option_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--scenarios", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--mc", type=int, default=None, help="MC questions instead of scenarios")
    args = ap.parse_args()

    host = nv.load_model(args.model)
    if args.mc:
        from neva_sweep.evaluation.capability import mc_prompt, mc_questions

        prompts, options = map(list, zip(*(mc_prompt(q) for q in mc_questions(
            load_records("mc"), args.mc))))
    else:
        judge = ForcedChoiceJudge(JudgeConfig(scenarios_limit=args.scenarios),
                                  load_records("scenarios"))
        prompts, options = judge.prompts(host)
    ctx, opts = option_rows(host, prompts, options)
    n_opt = len(opts[0])
    tokens_cached = sum(len(c) for c in ctx) + sum(len(o) for os_ in opts for o in os_)
    tokens_naive = sum(len(c) + len(o) for c, os_ in zip(ctx, opts) for o in os_)
    flat_ctx = [p for p in prompts for _ in range(n_opt)]
    flat_opt = [o for os_ in options for o in os_]

    def cached() -> torch.Tensor:
        return option_logprobs(host, prompts, options, (None,), "all", args.batch_size)

    def naive() -> torch.Tensor:
        lp, n = continuation_logprobs(host, flat_ctx, flat_opt, (None,), "all",
                                      args.batch_size)
        return (lp / n).view(1, len(prompts), n_opt)

    times = {"cached": [], "naive": []}
    results = {}
    for _ in range(args.repeats):
        for name, fn in (("cached", cached), ("naive", naive)):
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
    diff = float((results["cached"] - results["naive"]).abs().max())
    t_c, t_n = min(times["cached"]), min(times["naive"])
    what = "MC questions" if args.mc else "scenarios"
    print(f"model {host.name}, {len(prompts)} {what} x {n_opt} options, "
          f"batch size {args.batch_size}, torch threads {torch.get_num_threads()}")
    print(f"{'':<8}{'tokens':>10}{'wall s (best of ' + str(args.repeats) + ')':>24}")
    print(f"{'naive':<8}{tokens_naive:>10}{t_n:>24.2f}")
    print(f"{'cached':<8}{tokens_cached:>10}{t_c:>24.2f}")
    print(f"cached / naive: tokens {tokens_cached / tokens_naive:.2f}x, "
          f"wall time {t_c / t_n:.2f}x; max |score difference| {diff:.2e} nats/token")


if __name__ == "__main__":
    main()
