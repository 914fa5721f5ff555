"""Neuron selection: value-specificity scores, top-k by sparsity, and the NeuronMap type.

Scores are (V, N) matrices computed for all values at once; higher = more specific
to the value. ``k = ceil(sparsity * total MLP neurons)`` neurons are kept per value.

Each score contrasts value t with a *reference*: the other nine values pooled with equal
weight ("the rest"), or, for ``contrast_d``, only t's circumplex opposites (the values
4 or 5 steps away around Schwartz's circle, e.g. power and achievement for
universalism), which separates a value from what it is in tension with rather than from
everything else. The edit quantities of a selected neuron (``mean_diff``, ``std``) are
taken against the same reference.

``polarity="both"`` (sign-aware selection) keeps the k neurons with the largest |score|:
the most value-specific ones (raised by the edit rules) and the most *anti*-specific ones
(damped: ``add`` moves them along their negative mean difference, ``scale`` divides them
by 1 + magnitude, ``add_sd`` lowers them by magnitude standard deviations).

``pairs_d`` reads judgements instead of words: the paired Cohen's d (d_z) over value t's
contrastive stance pairs (neurons/pairs.py) of a neuron's reply-token mean activation difference
pro - anti, two replies to one situation in the same topic words that differ in stance
only. Probe scores reward neurons that fire on value *words*; this one, neurons that
separate acting on the value from rejecting it. Its reference is the pair's other reply,
so the ``add`` direction (``mean_diff``) of a neuron it selects is the mean difference pro -
anti over t's pairs (the stance direction); ``std`` stays the pooled sd against the rest.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..config import DEFAULT_SCORE, DEFAULT_SPARSITY
from ..files import load_tensors, save_tensors
from ..models.identity import ModelId
from ..registry import Registry
from ..values import N_VALUES, VALUES, check_value, circular_distance
from .stats import NeuronStats, rest_stats

ScoreFn = Callable[[NeuronStats], torch.Tensor]
SCORES: Registry[ScoreFn] = Registry("score")
LAPE_MIN_PROB = 0.05
POLARITIES = ("positive", "both")
# scores whose sign means "anti"
SIGNED_SCORES = ("mean_diff", "prob_diff", "contrast_d", "pairs_d")
PAIRS_SD_FLOOR = 1e-8  # pairs_d: floor of the sd of the pair differences
OPPOSITE_DISTANCE = 4  # circumplex steps (of at most 5) from which a value is an opposite


def opposite_weights() -> torch.Tensor:
    """(V, V) weights of each value's circumplex opposites, rows summing to 1.

    Row t weights equally the values at least OPPOSITE_DISTANCE steps from t (three
    values each in the ten-value circle).
    """
    far = torch.tensor([[float(circular_distance(i, j) >= OPPOSITE_DISTANCE)
                         for j in range(N_VALUES)] for i in range(N_VALUES)])
    return far / far.sum(1, keepdim=True)


def reference_stats(stats: NeuronStats, score: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean_ref, var_ref), each (V, N): what ``score`` contrasts each value with.

    The circumplex opposites for ``contrast_d``, the balanced rest for every other score;
    the variance is that of the equal-weight mixture of the reference values.
    """
    if score != "contrast_d":
        mean_rest, var_rest, _ = rest_stats(stats)
        return mean_rest, var_rest
    w = opposite_weights().to(stats.mean.dtype)  # (V, V)
    mean_ref = w @ stats.mean  # (V, N)
    second = w @ (stats.var + stats.mean**2)
    return mean_ref, (second - mean_ref**2).clamp(min=0)


def pooled_sd(stats: NeuronStats, var_ref: torch.Tensor) -> torch.Tensor:
    """(V, N) pooled standard deviation of each value and its reference: the denominator
    of Cohen's d and the unit of the ``add_sd`` rule."""
    return ((stats.var + var_ref) / 2).sqrt()


def cohens_d(stats: NeuronStats, score: str) -> torch.Tensor:
    """(mu_t - mu_ref) / pooled sd against ``score``'s reference (:func:`reference_stats`)."""
    mean_ref, var_ref = reference_stats(stats, score)
    return (stats.mean - mean_ref) / pooled_sd(stats, var_ref).clamp(min=1e-8)


@SCORES.add("mean_diff")
def mean_diff_score(stats: NeuronStats) -> torch.Tensor:
    """Cohen's d of value t against the balanced rest: (mu_t - mu_rest) / pooled std."""
    return cohens_d(stats, "mean_diff")


@SCORES.add("contrast_d")
def contrast_d_score(stats: NeuronStats) -> torch.Tensor:
    """Cohen's d of value t against its circumplex opposites (see the module docstring)."""
    return cohens_d(stats, "contrast_d")


@SCORES.add("prob_diff")
def prob_diff_score(stats: NeuronStats) -> torch.Tensor:
    """p_t - p_rest with p = P(a > 0)."""
    _, _, prob_rest = rest_stats(stats)
    return stats.prob - prob_rest


@SCORES.add("pairs_d")
def pairs_d_score(stats: NeuronStats) -> torch.Tensor:
    """Paired Cohen's d (d_z) of the reply-token difference pro - anti over value t's stance
    pairs: mean / sd of the differences, the sd floored at PAIRS_SD_FLOOR (module docstring).

    Needs statistics collected with stance pairs, at least two per value.
    """
    mean = stats.pair_mean  # (V, N); raises when the statistics hold no pairs
    few = (stats.pair_count < 2).nonzero().flatten().tolist()
    if few:
        raise ValueError(f"score pairs_d needs at least two stance pairs per value; the "
                         f"statistics have fewer for {', '.join(VALUES[t] for t in few)} "
                         "(add pairs to the pairs file, load_probes(pairs=...))")
    return mean / stats.pair_var.sqrt().clamp(min=PAIRS_SD_FLOOR)


@SCORES.add("lape")
def lape_score(stats: NeuronStats) -> torch.Tensor:
    """Low activation-probability entropy, weighted by the value's share.

    With share_t = p_t / sum_j p_j over the ten values and H the entropy of ``share``:
    score_t = (log V - H) * V * share_t. Only neurons where share_t > 1/V and
    p_t >= LAPE_MIN_PROB are eligible for t; the others score -inf and are never selected.
    """
    p = stats.prob  # (V, N)
    share = p / p.sum(0, keepdim=True).clamp(min=1e-12)
    entropy = -(share * share.clamp(min=1e-12).log()).sum(0)  # (N,)
    score = (math.log(N_VALUES) - entropy) * N_VALUES * share  # (V, N)
    eligible = (share > 1.0 / N_VALUES) & (p >= LAPE_MIN_PROB)
    return torch.where(eligible, score, torch.full_like(score, -math.inf))


@SCORES.add("attribution")
def attribution_score(stats: NeuronStats) -> torch.Tensor:
    """delta_i * G[t, i]: the first-order effect of the ``add`` edit's move of neuron i
    (delta = mu_t - mu_rest) on the pro-minus-anti log-likelihood margin of value t's stance
    pairs (attribution patching, neva_sweep/neurons/attribution.py). Needs statistics collected with
    ``stats.attribution`` (on by itself when a configured score is attribution)."""
    if stats.pair_grad is None or stats.pair_count is None:
        raise ValueError("score attribution needs the stance pairs' gradients, and these "
                         "statistics hold none: collect them with stats.attribution=true "
                         "(a gradient pass over the pairs; tp_size=1)")
    mean_rest, _, _ = rest_stats(stats)
    grad = stats.pair_grad / stats.pair_count.clamp(min=1)[:, None]  # (V, N) mean G
    return (stats.mean - mean_rest) * grad


@dataclass
class ValueNeurons:
    """The neurons selected for one value, with what the edit rules need (all shape (k,)).

    A negative ``score`` marks an anti-specific neuron (sign-aware selection), which the
    rules damp instead of raising.
    """

    layer: torch.Tensor  # int64
    index: torch.Tensor  # int64, index within the layer (global across shards)
    score: torch.Tensor  # float32
    mean_diff: torch.Tensor  # float32, mu_t - mu_ref: direction of the `add` rule
    quantile: torch.Tensor  # float32, q_t: floor of the `set` rule
    model: ModelId | None = None  # the model they were selected on; None = unknown
    std: torch.Tensor | None = None  # float32, pooled sd of (t, ref): unit of `add_sd`
    mean_ref: torch.Tensor | None = None  # float32, mu_ref: `gate_neuron`'s midpoint

    FIELDS = ("layer", "index", "score", "mean_diff", "quantile")
    OPTIONAL = ("std", "mean_ref")  # saved when present; older maps load without them

    def __len__(self) -> int:
        return self.layer.numel()


def check_neurons(neurons: ValueNeurons, layer_sizes: list[int], what: str) -> None:
    """Every (layer, index) of ``neurons`` exists in a model of ``layer_sizes``; else a
    ValueError naming the first bad layer or index and the valid range.

    Out-of-range ids would otherwise be dropped silently when an edit is installed.
    """
    n_layers = len(layer_sizes)
    layer, index = neurons.layer.long(), neurons.index.long()
    first = lambda bad: int(bad.nonzero()[0]) if bad.any() else None  # noqa: E731
    if (i := first((layer < 0) | (layer >= n_layers))) is not None:
        raise ValueError(f"{what}: layer {int(layer[i])} does not exist (the model has "
                         f"{n_layers} layers, 0..{n_layers - 1}); was it built for another "
                         "model?")
    width = torch.tensor(layer_sizes, dtype=torch.long)[layer]
    if (i := first((index < 0) | (index >= width))) is not None:
        raise ValueError(f"{what}: neuron index {int(index[i])} of layer {int(layer[i])} is "
                         f"outside its MLP width {int(width[i])} (valid 0..{int(width[i]) - 1});"
                         " was it built for another model?")


@dataclass
class NeuronMap:
    """Selected neurons per value, for one model.

    >>> import torch
    >>> vn = ValueNeurons(*(torch.tensor([0, 1]) for _ in range(5)))
    >>> NeuronMap({"power": vn}, layer_sizes=[4, 4]).layer_counts("power")
    [1, 1]
    """

    neurons: dict[str, ValueNeurons]
    layer_sizes: list[int]
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Check every neuron id against ``layer_sizes``; one model id for map and neurons
        (the meta's when recorded, else the neurons')."""
        for v, vn in self.neurons.items():
            check_neurons(vn, self.layer_sizes, f"neuron map, value {v}")
        built_for = ModelId.from_meta(self.meta) or next(
            (vn.model for vn in self.neurons.values() if vn.model is not None), None)
        if built_for is not None:
            self.meta.update(built_for.describe())
            self.neurons = {v: vn if vn.model is not None else replace(vn, model=built_for)
                            for v, vn in self.neurons.items()}

    @property
    def built_for(self) -> ModelId | None:
        """The model the map was selected on (None for maps of unknown origin)."""
        return ModelId.from_meta(self.meta)

    def __getitem__(self, value: str) -> ValueNeurons:
        check_value(value)
        if value not in self.neurons:
            raise KeyError(
                f"value {value!r} has no selected neurons in this map; "
                f"it holds: {', '.join(self.neurons) or 'nothing'}"
            )
        return self.neurons[value]

    @property
    def values(self) -> list[str]:
        return list(self.neurons)

    def only(self, value: str) -> NeuronMap:
        return NeuronMap({value: self[value]}, self.layer_sizes, dict(self.meta))

    def layer_counts(self, value: str) -> list[int]:
        """Selected neurons per layer for ``value``."""
        return torch.bincount(self[value].layer, minlength=len(self.layer_sizes)).tolist()

    def ids(self, value: str) -> set[tuple[int, int]]:
        vn = self[value]
        return set(zip(vn.layer.tolist(), vn.index.tolist()))

    def jaccard(self) -> dict[str, dict[str, float]]:
        """Jaccard overlap |A & B| / |A | B| between every pair of values' neuron sets."""
        sets = {v: self.ids(v) for v in self.neurons}
        return {
            a: {b: len(sa & sb) / max(1, len(sa | sb)) for b, sb in sets.items()}
            for a, sa in sets.items()
        }

    def summary(self, top: int = 20) -> dict:
        """JSON-ready description: per value counts per layer and top neurons; Jaccard."""
        per_value = {}
        for v, vn in self.neurons.items():
            order = vn.score.argsort(descending=True)[:top]
            per_value[v] = {
                "n_neurons": len(vn),
                "per_layer": self.layer_counts(v),
                "top": [
                    {"layer": int(vn.layer[i]), "index": int(vn.index[i]),
                     "score": round(float(vn.score[i]), 5),
                     "mean_diff": round(float(vn.mean_diff[i]), 5)}
                    for i in order
                ],
            }
        return {"meta": self.meta, "layer_sizes": self.layer_sizes, "values": per_value,
                "jaccard": self.jaccard()}

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"{v}.{f}": getattr(vn, f).contiguous()
                   for v, vn in self.neurons.items()
                   for f in ValueNeurons.FIELDS + ValueNeurons.OPTIONAL
                   if getattr(vn, f) is not None}
        meta = {"layer_sizes": self.layer_sizes, "values": list(self.neurons), **self.meta}
        save_tensors(path, tensors, meta)

    @classmethod
    def load(cls, path: str | Path) -> NeuronMap:
        t, meta = load_tensors(path)
        values = meta.pop("values")
        sizes = meta.pop("layer_sizes")
        neurons = {v: ValueNeurons(*(t[f"{v}.{f}"] for f in ValueNeurons.FIELDS),
                                   **{f: t.get(f"{v}.{f}") for f in ValueNeurons.OPTIONAL})
                   for v in values}
        return cls(neurons, sizes, meta)


def _check_window(window: tuple[int, int] | list[int] | None, n_layers: int) -> tuple[int, int]:
    if window is None:
        return 0, n_layers
    if len(window) != 2 or not 0 <= window[0] < window[1] <= n_layers:
        raise ValueError(
            f"layer_window must be [start, stop) with 0 <= start < stop <= {n_layers}, "
            f"got {list(window)}"
        )
    return int(window[0]), int(window[1])


def select_neurons(
    stats: NeuronStats,
    value: str | list[str] | None = None,
    sparsity: float = DEFAULT_SPARSITY,
    score: str = DEFAULT_SCORE,
    layer_window: tuple[int, int] | list[int] | None = None,
    exclusive: bool = False,
    polarity: str = "positive",
) -> NeuronMap:
    """Top ``ceil(sparsity * N)`` neurons per value by ``score``.

    Args:
        stats: statistics of the whole model (all layers, all shards joined).
        value: one value, a list, or None for all ten.
        sparsity: fraction of all MLP neurons to select, in (0, 1).
        score: one of ``SCORES`` (mean_diff, contrast_d, prob_diff, pairs_d, lape).
        layer_window: optional [start, stop) layers to select from.
        exclusive: a neuron belongs to at most one value (the one it scores highest for).
        polarity: ``positive`` (the most value-specific neurons: with a signed score, only
            those scoring > 0, so a large sparsity can give fewer than ``k``) or ``both``
            (the largest |score|: anti-specific neurons too, to be damped; signed scores
            only).

    >>> import neva_sweep as nv
    >>> stats = nv.collect_stats(nv.load_model("tiny-llama"), nv.load_probes(), progress=False)
    >>> len(select_neurons(stats, "power", sparsity=0.05)["power"])
    10
    """
    if not 0 < sparsity < 1:
        raise ValueError(f"sparsity must be in (0, 1) (edit.sparsity), got {sparsity}")
    values = list(VALUES) if value is None else [value] if isinstance(value, str) else list(value)
    for v in values:
        check_value(v)
    if (stats.count <= 1).any():
        empty = [VALUES[i] for i in (stats.count <= 1).nonzero().flatten().tolist()]
        raise ValueError(f"statistics have no probe tokens for values {empty}; check the probes")
    if polarity not in POLARITIES:
        raise ValueError(f"unknown polarity {polarity!r} (edit.polarity); valid choices: "
                         f"{', '.join(POLARITIES)}")
    if polarity == "both" and score not in SIGNED_SCORES:
        raise ValueError(f"polarity=both needs a signed score ({', '.join(SIGNED_SCORES)}); "
                         f"{score!r} has no anti-specific side (edit.score)")
    scores = SCORES[score](stats).float()  # (V, N)
    start, stop = _check_window(layer_window, len(stats.layer_sizes))
    layer = stats.layer_of()
    candidates = (layer >= start) & (layer < stop)  # (N,)
    owner = scores.argmax(0) if exclusive else None
    k = math.ceil(sparsity * stats.n_neurons)
    mean_ref, var_ref = reference_stats(stats, score)
    std = pooled_sd(stats, var_ref)  # (V, N), the unit of add_sd
    # The add direction: against the reference, or for pairs_d the stance direction.
    diff = stats.pair_mean if score == "pairs_d" else stats.mean - mean_ref  # (V, N)
    quant = stats.quantile()
    index = stats.index_in_layer()
    built_for = ModelId.from_meta(stats.meta)
    chosen = {}
    for v in values:
        t = VALUES.index(v)
        s = scores[t]  # (N,)
        allowed = candidates if owner is None else candidates & (owner == t)
        if polarity == "positive" and score in SIGNED_SCORES:
            # A neuron that fires less for the value is not value-specific: past the
            # positive ones, top-k would hand anti-specific neurons to rules (set) that
            # only raise activations.
            allowed = allowed & (s > 0)
        rank = (s.abs() if polarity == "both" else s).masked_fill(~allowed, -math.inf)
        top = rank.topk(min(k, int(candidates.sum()))).indices
        top = top[torch.isfinite(rank[top])]
        chosen[v] = ValueNeurons(
            layer[top].clone(), index[top].clone(), s[top].clone(),
            diff[t, top].float(), quant[t, top].float(), built_for,
            std[t, top].float(), mean_ref[t, top].float(),
        )
    meta = {"score": score, "sparsity": sparsity, "k": k, "layer_window": [start, stop],
            "exclusive": exclusive, "polarity": polarity, "model": stats.meta.get("model"),
            "fingerprint": stats.meta.get("fingerprint"),
            "data_hash": stats.meta.get("data_hash")}
    return NeuronMap(chosen, list(stats.layer_sizes), meta)


def random_neurons(
    stats: NeuronStats, value: str, k: int, seed: int = 0,
    layer_window: tuple[int, int] | list[int] | None = None,
) -> ValueNeurons:
    """``k`` neurons drawn uniformly at random (seeded), with ``value``'s edit quantities.

    The control for selection: same count, same rule, no specificity.
    """
    t = VALUES.index(check_value(value))
    start, stop = _check_window(layer_window, len(stats.layer_sizes))
    layer = stats.layer_of()
    pool = ((layer >= start) & (layer < stop)).nonzero().flatten()
    gen = torch.Generator().manual_seed(seed)
    top = pool[torch.randperm(pool.numel(), generator=gen)[:k]]
    mean_rest, var_rest, _ = rest_stats(stats)
    return ValueNeurons(
        layer[top].clone(), stats.index_in_layer()[top].clone(), torch.zeros(top.numel()),
        (stats.mean[t, top] - mean_rest[t, top]).float(), stats.quantile()[t, top].float(),
        ModelId.from_meta(stats.meta), pooled_sd(stats, var_rest)[t, top].float(),
        mean_rest[t, top].float(),
    )
