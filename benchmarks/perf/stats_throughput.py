"""Statistics pass throughput vs a plain forward pass on the same texts, in one run.

    python benchmarks/perf/stats_throughput.py [--model smollm2-135m] [--repeats 3]
    python benchmarks/perf/stats_throughput.py --pairs [--repeats 2]

Both passes tokenise the identification probes in the same length-sorted batches and call
the model with the same arguments (``logits_to_keep=1``); the statistics pass adds the
neuron hooks (its probe part: no gate texts, no stance pairs). Prints tokens/s of each and
their ratio (target: >= 0.9). Passes alternate and the best of ``--repeats`` is kept for
each, so machine noise affects both alike.

``--pairs`` times the stance pairs' answer batches instead (neurons/pairs.py): their
prompts run once with the cache kept and the letters on it, against the four whole rows
per pair; prints tokens and wall time of each, their ratio, the largest difference of
the fields they fold, and the whole statistics pass's time with either.
"""

from __future__ import annotations

import argparse
import time

import torch

import neva_sweep as nv
from neva_sweep.neurons.pairs import PairAccumulator, pair_batches
from neva_sweep.neurons.stats import (
    StatsConfig,
    collect_stats,
    forward_kwargs,
    length_sorted_batches,
)


@torch.inference_mode()
def plain_pass(host, probes, cfg: StatsConfig) -> int:
    kwargs = forward_kwargs(host)
    n = 0
    for idx in length_sorted_batches(probes, cfg.batch_size):
        enc = host.tokenize([probes.texts[i] for i in idx], max_length=cfg.max_length)
        host.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, **kwargs)
        n += int(enc.attention_mask.sum())
    return n


@torch.inference_mode()
def answer_pass(host, batches, shared: bool) -> tuple[int, float, dict]:
    """Tokens, wall seconds and fields of the answer batches, shared prompts or not."""
    acc = PairAccumulator(host)
    acc.shared_prompts = shared
    kwargs = forward_kwargs(host)
    t = time.perf_counter()
    n = sum(acc.step(b, kwargs) for b in batches)
    return n, time.perf_counter() - t, acc.fields()


def compare_pairs(host, probes, cfg: StatsConfig, repeats: int) -> None:
    batches = [b for b in pair_batches(host, probes.pairs, cfg.batch_size)
               if b.kind == "answer"]
    n_split = sum(b.letter_ids is not None for b in batches)
    answer_pass(host, batches[:1], True)  # warm-up
    best = {True: float("inf"), False: float("inf")}
    tokens, fields = {}, {}
    for _ in range(repeats):
        for shared in (False, True):
            tokens[shared], wall, fields[shared] = answer_pass(host, batches, shared)
            best[shared] = min(best[shared], wall)
    diff = max(float((fields[True][k] - fields[False][k]).abs().max()) for k in fields[True])
    # relative to each field's largest magnitude: the fields are sums over the pairs, so
    # float32 rounding of another summation order grows with their scale
    rel = max(float((fields[True][k] - fields[False][k]).abs().max()
                    / fields[False][k].abs().max().clamp_min(1e-30)) for k in fields[True])
    t = time.perf_counter()
    collect_stats(host, probes, cfg, progress=False)  # the whole pass, shared prompts on
    whole_pass = time.perf_counter() - t
    print(f"model {host.name}, {len(probes.pairs)} pairs, {len(batches)} answer batches "
          f"({n_split} with shared prompts), batch {cfg.batch_size}, "
          f"{torch.get_num_threads()} threads, best of {repeats}")
    print(f"whole rows     : {tokens[False]:7d} tokens {best[False]:7.2f} s")
    print(f"shared prompts : {tokens[True]:7d} tokens {best[True]:7.2f} s")
    print(f"ratio          : {tokens[True] / tokens[False]:7.3f} tokens "
          f"{best[True] / best[False]:7.3f} time; max abs difference {diff:.2e} "
          f"({rel:.1e} of the field's largest value)")
    print(f"whole statistics pass (probes, gate texts, pairs): {whole_pass:.2f} s with shared "
          f"prompts, {whole_pass - best[True] + best[False]:.2f} s with whole rows")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--pairs", action="store_true",
                    help="time the stance pairs' answer batches, shared prompts vs whole rows")
    args = ap.parse_args()
    host = nv.load_model(args.model)
    cfg = StatsConfig(batch_size=args.batch_size)
    if args.pairs:
        compare_pairs(host, nv.load_probes(), cfg, args.repeats)
        return
    # The probe part of the pass alone: the gate's neutral texts and the stance pairs are
    # other texts, which the plain pass does not read.
    probes = nv.load_probes(neutral=False, pairs=False)
    n_tokens = plain_pass(host, probes, cfg)  # warm-up
    best_plain = best_stats = float("inf")
    for _ in range(args.repeats):
        t = time.perf_counter()
        plain_pass(host, probes, cfg)
        best_plain = min(best_plain, time.perf_counter() - t)
        t = time.perf_counter()
        collect_stats(host, probes, cfg, progress=False)
        best_stats = min(best_stats, time.perf_counter() - t)
    plain_tps, stats_tps = n_tokens / best_plain, n_tokens / best_stats
    print(f"model {args.model}, {len(probes)} texts, {n_tokens} tokens, "
          f"batch {cfg.batch_size}, {torch.get_num_threads()} threads")
    print(f"plain forward   : {plain_tps:8.1f} tokens/s")
    print(f"statistics pass : {stats_tps:8.1f} tokens/s")
    print(f"ratio           : {stats_tps / plain_tps:8.3f}  (target >= 0.9)")


if __name__ == "__main__":
    main()
