"""Does editing a value's neurons make held-out text of that value more likely?

    python benchmarks/experiments/steering_effect.py [--model smollm2-135m] [--sparsity S]
        [--magnitude M] [--rule add] [--score mean_diff] [--seed 0]

Neurons are selected on the ``identify`` probes; the measurement uses the held-out
``validate`` probes. For an edit toward value t, with d_j = mean over value-j validation
texts of (edited - unedited) mean per-token log-likelihood:

    effect_t = d_t - mean_{j != t} d_j     (nats per token)

The same is computed for the same number of randomly chosen neurons with the same rule
(the control). Defaults are neva_sweep's default selection and edit settings.
"""

from __future__ import annotations

import argparse
import time

import torch

import neva_sweep as nv
from neva_sweep.evaluation.scoring import mean_token_logprob
from neva_sweep.neurons.selection import NeuronMap


def relative_effect(delta: torch.Tensor, labels: torch.Tensor, t: int) -> float:
    """d_t - mean_{j != t} d_j from per-text deltas and their value labels."""
    d = torch.stack([delta[labels == j].mean() for j in range(len(nv.VALUES))])
    return float(d[t] - (d.sum() - d[t]) / (len(d) - 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--sparsity", type=float, default=nv.neurons.selection.DEFAULT_SPARSITY)
    ap.add_argument("--magnitude", type=float, default=nv.DEFAULT_MAGNITUDE)
    ap.add_argument("--rule", default=nv.DEFAULT_RULE)
    ap.add_argument("--score", default=nv.neurons.selection.DEFAULT_SCORE)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    t0 = time.perf_counter()
    host = nv.load_model(args.model)
    stats = nv.collect_stats(host, nv.load_probes(split="identify"), progress=False)
    val = nv.load_probes(split="validate")
    texts, labels = list(val.texts), torch.tensor(val.labels)
    nmap = nv.select_neurons(stats, sparsity=args.sparsity, score=args.score)
    base = mean_token_logprob(host, texts)
    k = len(nmap[nv.VALUES[0]])
    print(f"model {args.model}: {host.n_neurons} neurons, k = {k} per value "
          f"(sparsity {args.sparsity}), rule {args.rule}, magnitude {args.magnitude}, "
          f"score {args.score}; {len(texts)} validation texts")
    print(f"{'value':<16}{'neva':>10}{'random':>10}")
    wins = beats_random = 0
    rows = []
    for t, value in enumerate(nv.VALUES):
        rand = nv.random_neurons(stats, value, len(nmap[value]), seed=args.seed + t)
        effects = []
        for neurons in (nmap[value], rand):
            one = NeuronMap({value: neurons}, nmap.layer_sizes)
            with nv.edit(host, one, magnitude=args.magnitude, rule=args.rule):
                edited = mean_token_logprob(host, texts)
            effects.append(relative_effect(edited - base, labels, t))
        rows.append(effects)
        wins += effects[0] > 0
        beats_random += effects[0] > effects[1]
        print(f"{value:<16}{effects[0]:>+10.4f}{effects[1]:>+10.4f}")
    neva = torch.tensor([r[0] for r in rows])
    rnd = torch.tensor([r[1] for r in rows])
    print(f"{'mean':<16}{neva.mean():>+10.4f}{rnd.mean():>+10.4f}")
    print(f"positive for {wins}/10 values; above the random control for {beats_random}/10; "
          f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
