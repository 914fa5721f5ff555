"""Statistics pass throughput vs a plain forward pass on the same texts, in one run.

    python benchmarks/perf/stats_throughput.py [--model smollm2-135m] [--repeats 3]

Both passes tokenise the identification probes in the same length-sorted batches and call
the model with the same arguments (``logits_to_keep=1``); the statistics pass adds the
neuron hooks. Prints tokens/s of each and their ratio (target: >= 0.9). Passes alternate
and the best of ``--repeats`` is kept for each, so machine noise affects both alike.
"""

from __future__ import annotations

import argparse
import time

import torch

import neva_sweep as nv
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    host = nv.load_model(args.model)
    probes = nv.load_probes()
    cfg = StatsConfig(batch_size=args.batch_size)
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
