"""Streaming per-value neuron statistics: one pass over the probes, mergeable.

For every value t (rows, circumplex order) and neuron i (columns, layer-major:
global id = sum of earlier layer sizes + index within layer) we keep

- ``count[t]``        tokens seen for value t (non-pad tokens only),
- ``mean[t, i]``      running mean of the activation a_i,
- ``m2[t, i]``        sum of squared deviations (Welford/Chan; var = m2 / (count - 1)),
- ``positive[t, i]``  tokens with a_i > 0 (P(a > 0) = positive / count),
- ``hist[t, i, b]``   counts on a fixed grid (see softsign_bins), for the high quantile q_t(i).

The same pass also sums each layer's residual-stream output (the decoder block's output
hidden state) per value, ``resid_sum[t, l, h]``, from which the contrastive
activation-addition baseline (edits/residual.py) takes its steering vectors, and trains the
value-relevance gate (neurons/gate.py): the probes' neutral texts (``ProbeSet.neutral``) run in
the same pass as an eleventh, neutral class of rows (batches of their own, stopped at the
gate layer, since only that block's output is read), and every text's residual at the
gate layer, mean-pooled over its tokens, is kept (``gate_features``, ``gate_labels``) to
fit the probe (``gate``). Without neutral texts the statistics hold no gate. With
``stats.gate_chat`` (default) and a model that has a chat template, every probe and
neutral text also runs once more wrapped as the user turn of that template (gate-only
rows, label ``GATE_VALUE + t`` or neutral, never in the neuron statistics): prompts
reach the gate in both forms, so neither form alone can stand for "value-laden".

The probes' contrastive stance pairs (``ProbeSet.pairs``, neurons/pairs.py) run last in the same
pass, in batches of their own: per value, the sum and sum of squares over its pairs of
every neuron's reply-token mean difference pro - anti (``pair_count``, ``pair_sum``,
``pair_sumsq``), and the answer-letter residual differences of the forced-choice form
(``pair_resid_sum``, ``pair_resid_count``, ``pair_resid_norm``). Without pairs these
fields are None.

Memory is O(values x neurons x bins) and independent of the data size. Statistics from
data shards combine with :func:`merge`; statistics from tensor-parallel ranks (each
seeing a contiguous slice of every layer's neurons) combine with :func:`concat`.

The histogram uses every ``hist_stride``-th token of each text (position % stride == 0):
a deterministic subsample, so merges stay exact, at a fraction of the cost.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import StatsConfig
from ..data import ProbeSet
from ..files import load_or_heal, load_tensors, save_tensors
from ..models.arch import residual_sites
from ..models.host import ModelHost
from ..values import N_VALUES, VALUES
from .gate import GATE_VALUE, NEUTRAL, Gate, _GateStop, fit_gate, gate_layer, pool
from .pairs import PAIR_FIELDS, PairAccumulator, PairBatch, pair_batches

# Gate-only row labels (neurons/gate.py): NEUTRAL, a neutral text; GATE_VALUE + t, value t's probe
# chat-wrapped (the value gate reads its value; the context gate, only "value-laden").

STATS_VERSION = 4  # bump when the statistics' content changes (invalidates caches)


@dataclass
class NeuronStats:
    """Per-value statistics for a set of neurons; see the module docstring."""

    count: torch.Tensor  # (V,) float64
    mean: torch.Tensor  # (V, N) float64
    m2: torch.Tensor  # (V, N) float64
    positive: torch.Tensor  # (V, N) float64
    hist: torch.Tensor  # (V, N, B) int32
    layer_sizes: list[int]
    meta: dict = field(default_factory=dict)
    resid_sum: torch.Tensor | None = None  # (V, L, H) float64; same on every TP rank
    # The gate's training rows (neurons/gate.py): pooled gate-layer residual per text (n, H)
    # float32,
    # its label (n,) int64 (a value index, NEUTRAL, or GATE_VALUE + value index for a
    # chat-wrapped probe), and the context probe fitted on them.
    gate_features: torch.Tensor | None = None
    gate_labels: torch.Tensor | None = None
    gate: Gate | None = None
    # Contrastive stance pairs (neurons/pairs.py; all None without pairs). Per value: pairs, and the
    # sum and sum of squares over them of each neuron's reply-token mean difference pro - anti.
    pair_count: torch.Tensor | None = None  # (V,) float64
    pair_sum: torch.Tensor | None = None  # (V, N) float64
    pair_sumsq: torch.Tensor | None = None  # (V, N) float64
    # Answer-letter residual differences pro letter - anti letter, summed over each value's
    # pairs and both letter orders; their count; the letter residual's mean norm per layer.
    pair_resid_sum: torch.Tensor | None = None  # (V, L, H) float64; same on every TP rank
    pair_resid_count: torch.Tensor | None = None  # (V,) float64
    pair_resid_norm: torch.Tensor | None = None  # (L,) float64
    # With stats.attribution: per value, the sum over its pairs of the pro-minus-anti reply
    # log-likelihood gradient of every neuron (neurons/attribution.py), (V, N) float64; else None.
    pair_grad: torch.Tensor | None = None

    @classmethod
    def zeros(cls, layer_sizes: list[int], bins: int, meta: dict | None = None) -> NeuronStats:
        n = sum(layer_sizes)
        f = dict(dtype=torch.float64)
        return cls(
            torch.zeros(N_VALUES, **f),
            torch.zeros(N_VALUES, n, **f),
            torch.zeros(N_VALUES, n, **f),
            torch.zeros(N_VALUES, n, **f),
            torch.zeros(N_VALUES, n, bins, dtype=torch.int32),
            list(layer_sizes),
            dict(meta or {}),
        )

    @property
    def resid_mean(self) -> torch.Tensor:
        """Mean residual-stream output per value and layer, (V, L, H)."""
        if self.resid_sum is None:
            raise ValueError("these statistics hold no residual-stream sums (collected by an "
                             "older neva_sweep); delete the cached file to recollect")
        return self.resid_sum / self.count.clamp(min=1)[:, None, None]

    def _pairs(self, name: str) -> torch.Tensor:
        value = getattr(self, name)
        if value is None:
            raise ValueError("these statistics hold no stance pairs (collected with "
                             "load_probes(pairs=False), or by an older neva_sweep); collect "
                             "them with the pairs (load_probes' default; delete the cached "
                             "file to recollect)")
        return value

    @property
    def pair_mean(self) -> torch.Tensor:
        """Mean reply-token difference pro - anti per value and neuron, (V, N)."""
        return self._pairs("pair_sum") / self._pairs("pair_count").clamp(min=1)[:, None]

    @property
    def pair_var(self) -> torch.Tensor:
        """Unbiased variance of the reply-token difference over each value's pairs, (V, N)."""
        n = self._pairs("pair_count")[:, None]
        m2 = self._pairs("pair_sumsq") - self.pair_sum**2 / n.clamp(min=1)
        return m2.clamp(min=0) / (n - 1).clamp(min=1)

    @property
    def pair_resid_mean(self) -> torch.Tensor:
        """Mean answer-letter residual difference (pro letter - anti letter) per value and
        layer over pairs and letter orders, (V, L, H): the pairs' CAA steering vectors."""
        count = self._pairs("pair_resid_count").clamp(min=1)[:, None, None]
        return self._pairs("pair_resid_sum") / count

    @property
    def n_neurons(self) -> int:
        return self.mean.shape[1]

    @property
    def var(self) -> torch.Tensor:
        """Unbiased variance, (V, N)."""
        return self.m2 / (self.count[:, None] - 1).clamp(min=1)

    @property
    def prob(self) -> torch.Tensor:
        """P(a > 0), (V, N)."""
        return self.positive / self.count[:, None].clamp(min=1)

    @property
    def hist_scale(self) -> float:
        """c of the histogram's softsign grid (:func:`softsign_bins`) these were collected on."""
        return self.meta.get("config", {}).get("hist_scale", StatsConfig.hist_scale)

    def quantile(self, q: float | None = None) -> torch.Tensor:
        """High quantile per value and neuron from the histogram, (V, N)."""
        q = self.meta.get("config", {}).get("quantile", 0.95) if q is None else q
        return histogram_quantile(self.hist, q, self.hist_scale)

    def layer_of(self) -> torch.Tensor:
        """Layer of every neuron column, (N,)."""
        return torch.repeat_interleave(
            torch.arange(len(self.layer_sizes)), torch.tensor(self.layer_sizes)
        )

    def index_in_layer(self) -> torch.Tensor:
        """Index of every neuron column within its layer (local to this object), (N,)."""
        return torch.cat([torch.arange(w) for w in self.layer_sizes])

    def save(self, path: str | Path) -> None:
        """Write tensors and JSON metadata to a safetensors file."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        meta = {"layer_sizes": self.layer_sizes, "values": list(VALUES), **self.meta}
        tensors = {"count": self.count, "mean": self.mean, "m2": self.m2,
                   "positive": self.positive, "hist": self.hist}
        if self.resid_sum is not None:
            tensors["resid_sum"] = self.resid_sum
        if self.gate is not None:
            tensors.update(self.gate.tensors(), gate_features=self.gate_features,
                           gate_labels=self.gate_labels)
        tensors.update(pair_fields(self) if self.pair_count is not None else {})
        tensors.update({"pair_grad": self.pair_grad} if self.pair_grad is not None else {})
        save_tensors(path, tensors, meta)

    @classmethod
    def load(cls, path: str | Path) -> NeuronStats:
        t, meta = load_tensors(path)
        if meta.pop("values") != list(VALUES):
            raise ValueError(f"{path}: statistics were saved with a different value order")
        sizes = meta.pop("layer_sizes")
        return cls(t["count"], t["mean"], t["m2"], t["positive"], t["hist"], sizes, meta,
                   t.get("resid_sum"), t.get("gate_features"), t.get("gate_labels"),
                   Gate.from_tensors(t), **{name: t.get(name) for name in PAIR_FIELDS},
                   pair_grad=t.get("pair_grad"))


# --- pure maths -------------------------------------------------------------------------


def softsign_bins(x: torch.Tensor, bins: int, scale: float) -> torch.Tensor:
    """Histogram bin of each activation, int32 in [0, bins).

    Bin 0 holds a <= 0; bin b >= 1 holds y = a / (a + scale) in ((b-1)/(B-1), b/(B-1)],
    fine near a ~ scale and coarse in the far tail. High quantiles of MLP activations are
    positive, so the negative side needs no resolution.
    """
    y = x.clamp(min=0)
    y.div_(y + scale).mul_(bins - 1).ceil_()  # 0 for a <= 0, else 1..B-1 (a finite)
    return y.to(torch.int32)


def histogram_quantile(hist: torch.Tensor, q: float, scale: float) -> torch.Tensor:
    """Quantile ``q`` of each histogram (..., B), interpolated linearly (in y) within its bin.

    Quantiles in bin 0 are reported as 0; in the open-ended top bin, as its lower edge.
    """
    bins = hist.shape[-1]
    h = hist.to(torch.float64)
    total = h.sum(-1, keepdim=True)
    cum = h.cumsum(-1)
    target = q * total
    b = torch.searchsorted(cum, target).clamp(max=bins - 1)  # first bin with cum >= target
    below = torch.where(b > 0, cum.gather(-1, (b - 1).clamp(min=0)), torch.zeros_like(target))
    inside = h.gather(-1, b).clamp(min=1)
    frac = ((target - below) / inside).clamp(0, 1)
    frac = torch.where(b == bins - 1, torch.zeros_like(frac), frac)
    y = ((b - 1).clamp(min=0) + frac) / (bins - 1)  # [0, 1)
    x = torch.where(b > 0, scale * y / (1 - y), torch.zeros_like(y))
    return torch.where(total > 0, x, torch.zeros_like(x)).squeeze(-1)


def merge(a: NeuronStats, b: NeuronStats) -> NeuronStats:
    """Statistics of the union of two disjoint data shards (Chan et al. parallel update)."""
    if a.layer_sizes != b.layer_sizes or a.hist.shape != b.hist.shape:
        raise ValueError(
            f"cannot merge statistics over different neurons: layer sizes {a.layer_sizes} "
            f"vs {b.layer_sizes}"
        )
    n = a.count + b.count  # (V,)
    safe = n.clamp(min=1)[:, None]
    delta = b.mean - a.mean
    mean = a.mean + delta * (b.count[:, None] / safe)
    m2 = a.m2 + b.m2 + delta**2 * (a.count * b.count)[:, None] / safe
    resid = (a.resid_sum + b.resid_sum if a.resid_sum is not None and b.resid_sum is not None
             else None)
    gate_rows = merge_gate(a, b)
    return NeuronStats(n, mean, m2, a.positive + b.positive, a.hist + b.hist,
                       list(a.layer_sizes), dict(a.meta), resid, *gate_rows,
                       **merge_pairs(a, b), pair_grad=_add_or_either(a.pair_grad, b.pair_grad))


def _add_or_either(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    """a + b, or whichever is not None (a data shard with no pairs adds nothing)."""
    return b if a is None else a if b is None else a + b


def pair_fields(stats: NeuronStats) -> dict[str, torch.Tensor | None]:
    """The stance-pair fields (:data:`~neva_sweep.neurons.pairs.PAIR_FIELDS`) of ``stats``, by
    name."""
    return {name: getattr(stats, name) for name in PAIR_FIELDS}


def merge_pairs(a: NeuronStats, b: NeuronStats) -> dict[str, torch.Tensor | None]:
    """The stance-pair fields of two data shards: sums and counts add, the letter residual's
    mean norm is averaged over both shards' answer rows; a shard without pairs (fewer pairs
    than shards) adds nothing."""
    if a.pair_count is None or b.pair_count is None:
        return pair_fields(b if a.pair_count is None else a)
    out = {name: getattr(a, name) + getattr(b, name)
           for name in PAIR_FIELDS if name != "pair_resid_norm"}
    rows_a, rows_b = a.pair_resid_count.sum(), b.pair_resid_count.sum()  # proportional to rows
    out["pair_resid_norm"] = ((a.pair_resid_norm * rows_a + b.pair_resid_norm * rows_b)
                              / (rows_a + rows_b).clamp(min=1))
    return out


def merge_gate(a: NeuronStats, b: NeuronStats) -> tuple:
    """(features, labels, gate) of two data shards: their gate rows joined and the probe
    refitted (Newton converges to the unique optimum, so the shard order does not matter
    beyond float error); none when neither shard has a gate (a shard without neutral texts
    contributes no rows)."""
    parts = [s for s in (a, b) if s.gate is not None]
    if not parts:
        return None, None, None
    if len({s.gate.layer for s in parts}) > 1:
        raise ValueError(f"cannot merge statistics with gates on different layers "
                         f"({a.gate.layer} vs {b.gate.layer}; stats.gate_depth)")
    x = torch.cat([s.gate_features for s in parts])
    y = torch.cat([s.gate_labels for s in parts])
    return x, y, fit_gate(x, y != NEUTRAL, parts[0].gate.layer)


def concat(shards: list[NeuronStats]) -> NeuronStats:
    """Join neuron shards (tensor-parallel ranks, in rank order) into one object.

    Each shard holds a contiguous slice of every layer; the result is layer-major.
    """
    first = shards[0]
    if any(len(s.layer_sizes) != len(first.layer_sizes) for s in shards):
        raise ValueError("cannot concat statistics with different numbers of layers")
    if any(not torch.equal(s.count, first.count) for s in shards):
        raise ValueError("cannot concat statistics computed on different tokens (counts differ)")

    def join(name: str) -> torch.Tensor:
        per_layer = [getattr(s, name).split(s.layer_sizes, dim=1) for s in shards]
        return torch.cat([p for layer in zip(*per_layer) for p in layer], dim=1)

    sizes = [sum(ws) for ws in zip(*(s.layer_sizes for s in shards))]
    # The residual stream is replicated across ranks: every shard holds the same sums (and
    # the same gate, pair counts and answer-letter residuals).
    pairs = pair_fields(first)
    if first.pair_sum is not None:
        pairs.update(pair_sum=join("pair_sum"), pair_sumsq=join("pair_sumsq"))
    grad = join("pair_grad") if first.pair_grad is not None else None
    return NeuronStats(first.count.clone(), join("mean"), join("m2"), join("positive"),
                       join("hist"), sizes, dict(first.meta), first.resid_sum,
                       first.gate_features, first.gate_labels, first.gate, **pairs,
                       pair_grad=grad)


def layer_offsets(layer_sizes: list[int]) -> list[int]:
    """First column of each layer in the layer-major neuron layout."""
    return [sum(layer_sizes[:i]) for i in range(len(layer_sizes))]


def select_columns(stats: NeuronStats, slices: list[tuple[int, int]]) -> NeuronStats:
    """The statistics of neurons [start, stop) of every layer (a tensor-parallel shard's view)."""
    offsets = layer_offsets(stats.layer_sizes)
    cols = torch.cat([torch.arange(o + a, o + b) for o, (a, b) in zip(offsets, slices)])
    pairs = pair_fields(stats)
    if stats.pair_sum is not None:
        pairs.update(pair_sum=stats.pair_sum[:, cols], pair_sumsq=stats.pair_sumsq[:, cols])
    return NeuronStats(stats.count.clone(), stats.mean[:, cols], stats.m2[:, cols],
                       stats.positive[:, cols], stats.hist[:, cols],
                       [b - a for a, b in slices], dict(stats.meta), stats.resid_sum,
                       stats.gate_features, stats.gate_labels, stats.gate, **pairs,
                       pair_grad=None if stats.pair_grad is None else stats.pair_grad[:, cols])


def rest_stats(stats: NeuronStats) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Balanced "rest" statistics for every value: the other nine pooled with equal weight.

    Returns (mean_rest, var_rest, prob_rest), each (V, N). The variance is that of the
    equal-weight mixture: E[var_j + mu_j^2] - mu_rest^2.
    """
    v = N_VALUES
    mean, var, prob = stats.mean, stats.var, stats.prob
    mean_rest = (mean.sum(0, keepdim=True) - mean) / (v - 1)
    second = var + mean**2
    second_rest = (second.sum(0, keepdim=True) - second) / (v - 1)
    var_rest = (second_rest - mean_rest**2).clamp(min=0)
    prob_rest = (prob.sum(0, keepdim=True) - prob) / (v - 1)
    return mean_rest, var_rest, prob_rest


# --- the streaming pass (state at the edge) ----------------------------------------------


class _Accumulator:
    """Forward pre-hooks that fold each layer's neuron activations into NeuronStats."""

    def __init__(self, host: ModelHost, cfg: StatsConfig, gate: bool = False):
        widths = [b - a for a, b in host.neuron_slices]
        self.cfg = cfg
        self.stats = NeuronStats.zeros(widths, cfg.bins)
        self.offsets = layer_offsets(widths)
        self.handles = [
            site.register_forward_pre_hook(self._hook(layer))
            for layer, site in enumerate(host.sites)
        ]
        blocks = residual_sites(host.model)
        self.stats.resid_sum = None  # sized on the first block output (hidden size H)
        # The gate's block, and its pooled rows per batch: (B, H) float32 and (B,) labels.
        self.gate_layer = gate_layer(len(blocks), cfg.gate_depth) if gate else None
        self.gate_x: list[torch.Tensor] = []
        self.gate_y: list[torch.Tensor] = []
        self.handles += [block.register_forward_hook(self._resid_hook(layer, len(blocks)))
                         for layer, block in enumerate(blocks)]

    def set_batch(self, attention_mask: torch.Tensor, labels: torch.Tensor) -> None:
        """Prepare per-batch token weights. attention_mask (B, S), labels (B,) value ids
        (NEUTRAL, GATE_VALUE + t: rows that feed the gate only).

        Work in the hooks is restricted to the values present in the batch (usually one,
        since batches are grouped by value).
        """
        mask = attention_mask.bool()
        bsz, seq = mask.shape
        self.mask, self.labels = mask, labels
        self.present = labels[labels < N_VALUES].unique().cpu()  # (P,)
        rows_value = labels[:, None].expand(bsz, seq).reshape(-1)  # (B*S,)
        flat_mask = mask.reshape(-1)
        # w[p, row] = 1 for non-pad tokens of texts labelled present[p]; rows are B*S flattened.
        w = (rows_value[None, :] == self.present[:, None].to(labels.device)) & flat_mask[None, :]
        self.w = w.float()  # (P, B*S)
        self.batch_count = self.w.sum(1).to(torch.float64).cpu()[:, None]  # (P, 1)
        # Histogram rows: non-pad tokens at positions 0, stride, 2*stride ... within each text.
        pos = (mask.long().cumsum(1) - 1).reshape(-1)  # position within the text (any padding)
        sampled = flat_mask & (pos % self.cfg.hist_stride == 0)
        self.hist_rows = [(sampled & (rows_value == v)).nonzero().squeeze(1)
                          for v in self.present.tolist()]

    def _hook(self, layer: int):
        bins = self.cfg.bins

        def hook(module, args):
            if not len(self.present):  # a batch of neutral texts: the gate only
                return
            x = args[0]
            width = x.shape[-1]
            x2 = x.reshape(-1, width).float()  # (B*S, I)
            w = self.w.to(x2.device)  # a no-op unless model.device_map put this layer apart
            s = (w @ x2).double().cpu()  # (P, I) sums
            ss = (w @ (x2 * x2)).double().cpu()
            # gt into a float buffer is ~4x faster than (x2 > 0).float() on CPU.
            pos = (w @ torch.gt(x2, 0, out=torch.empty_like(x2))).double().cpu()
            st, o, vals = self.stats, self.offsets[layer], self.present
            cols = slice(o, o + width)
            n_a = st.count[vals][:, None]  # (P, 1)
            n_b = self.batch_count
            n = n_a + n_b
            mean_b = s / n_b
            m2_b = (ss - s * mean_b).clamp(min=0)
            mean_a = st.mean[vals, cols]
            delta = mean_b - mean_a
            st.mean[vals, cols] = mean_a + delta * n_b / n
            st.m2[vals, cols] += m2_b + delta**2 * n_a * n_b / n
            st.positive[vals, cols] += pos
            offsets = torch.arange(width, device=x2.device, dtype=torch.int32) * bins
            for v, rows in zip(vals.tolist(), self.hist_rows):
                b = softsign_bins(x2[rows.to(x2.device)], bins, self.cfg.hist_scale)  # (T_v, I)
                b += offsets
                counts = torch.bincount(b.view(-1), minlength=width * bins)
                st.hist[v, cols] += counts.view(width, bins).to(torch.int32).cpu()

        return hook

    def _resid_hook(self, layer: int, n_layers: int):
        def hook(module, args, output):
            h = output[0] if isinstance(output, tuple) else output  # (B, S, H)
            if layer == self.gate_layer:
                self.gate_x.append(pool(h, self.mask).cpu())  # (B, H)
                self.gate_y.append(self.labels.cpu())
                if not len(self.present):
                    raise _GateStop  # neutral rows need no deeper block
            h = h.reshape(-1, h.shape[-1]).float()  # (B*S, H)
            if self.stats.resid_sum is None:
                self.stats.resid_sum = torch.zeros(N_VALUES, n_layers, h.shape[-1],
                                                   dtype=torch.float64)
            self.stats.resid_sum[self.present, layer] += (
                self.w.to(h.device) @ h).double().cpu()  # (P, H)

        return hook

    def end_batch(self) -> None:
        self.stats.count[self.present] += self.batch_count[:, 0]

    def fit_gate(self) -> None:
        """Fit the gate on the pooled rows (value-laden = every label but NEUTRAL)."""
        if self.gate_layer is None or not self.gate_x:
            return
        x, y = torch.cat(self.gate_x), torch.cat(self.gate_y).long()
        self.stats.gate_features, self.stats.gate_labels = x, y
        self.stats.gate = fit_gate(x, y != NEUTRAL, self.gate_layer)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def forward_kwargs(host: ModelHost) -> dict:
    """Keyword arguments that keep the LM head to the last position when the model allows it."""
    return {"logits_to_keep": 1} if host.accepts("logits_to_keep") else {}


def length_sorted_batches(probes: ProbeSet, batch_size: int) -> list[list[int]]:
    """Indices grouped by value, then by length, so most batches hold one value (cheaper
    histograms) and little padding."""
    order = sorted(range(len(probes)), key=lambda i: (probes.labels[i], len(probes.texts[i])))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def neutral_batches(probes: ProbeSet, batch_size: int) -> list[list[int]]:
    """Indices into ``probes.neutral``, by length: the gate's neutral rows."""
    order = sorted(range(len(probes.neutral)), key=lambda i: len(probes.neutral[i]))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def collect_stats(
    host: ModelHost,
    probes: ProbeSet,
    config: StatsConfig | None = None,
    progress: bool = True,
) -> NeuronStats:
    """One streaming pass over ``probes``: per-value statistics of every neuron of ``host``,
    the value-relevance gate when ``probes.neutral`` holds neutral texts (neurons/gate.py), and the
    stance-pair fields when ``probes.pairs`` holds pairs (neurons/pairs.py).

    >>> import neva_sweep as nv
    >>> host = nv.load_model("tiny-llama")
    >>> stats = nv.collect_stats(host, nv.load_probes(), progress=False)
    >>> stats.mean.shape
    torch.Size([10, 192])
    """
    cfg = config or StatsConfig()
    check_lengths(host, probes, cfg.max_length)
    acc = _Accumulator(host, cfg, gate=bool(probes.neutral))
    kwargs = forward_kwargs(host)
    # (texts, labels) per batch: the value probes by value, then the neutral texts (label
    # NEUTRAL, read by the gate only), then both wrapped in the chat template (gate only).
    value = [([probes.texts[i] for i in idx], [probes.labels[i] for i in idx])
             for idx in length_sorted_batches(probes, cfg.batch_size)]
    neutral = [([probes.neutral[i] for i in idx], [NEUTRAL] * len(idx))
               for idx in neutral_batches(probes, cfg.batch_size)]
    batches = value + neutral
    if neutral and cfg.gate_chat and host.has_chat_template:
        batches += [([host.chat_prompt(t) for t in texts], [GATE_VALUE + v for v in labels])
                    for texts, labels in value]
        batches += [([host.chat_prompt(t) for t in texts], labels) for texts, labels in neutral]
    # Last, the stance pairs: batches of their own, read by their own hooks.
    pair_acc = PairAccumulator(host) if probes.pairs else None
    batches += pair_batches(host, probes.pairs, cfg.batch_size) if probes.pairs else []
    n_tokens = 0
    try:
        bar = tqdm(batches, desc=f"statistics {host.name}", unit="batch", disable=not progress)
        for batch in bar:
            if isinstance(batch, PairBatch):  # every probe batch is done: its hooks go
                acc.remove()
                n_tokens += pair_acc.step(batch, kwargs)
                bar.set_postfix(tokens=n_tokens, refresh=False)
                continue
            texts, labels = batch
            enc = host.tokenize(texts, max_length=cfg.max_length)
            labels = torch.tensor(labels, device=enc.input_ids.device)
            acc.set_batch(enc.attention_mask, labels)
            try:
                host.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                           **kwargs)
            except _GateStop:  # a neutral batch stops at the gate layer
                pass
            acc.end_batch()
            n_tokens += int(enc.attention_mask.sum())
            bar.set_postfix(tokens=n_tokens, refresh=False)
        acc.fit_gate()
    finally:
        acc.remove()
    stats = acc.stats
    for name, value in (pair_acc.fields() if pair_acc is not None else {}).items():
        setattr(stats, name, value)
    if cfg.attribution and probes.pairs:  # a gradient pass over the pairs (neurons/attribution.py)
        stats.pair_grad = pair_gradient_sums(host, probes, cfg, progress)
    stats.meta.update(
        model=host.name,
        fingerprint=host.meta.get("fingerprint"),  # the ModelId of maps selected from these
        model_meta=host.meta,
        data_hash=probes.sha256,
        neuron_slices=[list(s) for s in host.neuron_slices],
        config=asdict(cfg),
    )
    return stats


def pair_gradient_sums(host: ModelHost, probes: ProbeSet, cfg: StatsConfig,
                       progress: bool) -> torch.Tensor:
    """Per value, the sum over its pairs of the pro-minus-anti reply gradient of every
    neuron, (V, N) float64 (sums, so that data shards merge by adding)."""
    from .attribution import pair_counts, pair_gradients

    records = [{"value": VALUES[p.label], "situation": p.situation, "pro": p.pro,
                "anti": p.anti} for p in probes.pairs]
    mean = pair_gradients(host, records, max(1, cfg.batch_size // 2), cfg.max_length,
                          progress)
    return mean * pair_counts(records).to(mean.dtype)[:, None]


def inputs_hash(data_hash: str, config: dict) -> str:
    """Hash of what statistics are computed from besides the model: the probe data (its
    SHA-256) and the statistics config. best_edits.json records it per edit, so that an
    edit is never rebuilt from other statistics unknowingly."""
    blob = json.dumps({"data": data_hash, "config": config}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stats_inputs_hash(stats: NeuronStats) -> str | None:
    """:func:`inputs_hash` of collected statistics (None when their meta lacks it)."""
    meta = stats.meta
    if "data_hash" not in meta or "config" not in meta:
        return None
    return inputs_hash(meta["data_hash"], meta["config"])


def check_lengths(host: ModelHost, probes: ProbeSet, max_length: int) -> None:
    """Probes longer than ``stats.max_length`` are read up to it (their first tokens), with
    a warning; a length the model's context cannot hold is refused before any work (learned
    position tables would fail with an IndexError)."""
    lengths = [len(ids) for ids in host.tokenizer(list(probes.texts)).input_ids]
    cut = sum(n > max_length for n in lengths)
    if cut:
        logging.getLogger(__name__).warning(
            "%d of %d probes are longer than stats.max_length=%d tokens: statistics read "
            "their first %d tokens", cut, len(lengths), max_length, max_length)
    longest, limit = min(max(lengths, default=0), max_length), host.context_length
    if limit is not None and longest > limit:
        raise ValueError(f"stats.max_length={max_length}: probes of {longest} tokens exceed the "
                         f"{limit}-token context of model {host.name!r}; set stats.max_length "
                         f"<= {limit}")


def cache_key(host: ModelHost, probes: ProbeSet, cfg: StatsConfig) -> str:
    """Key of (model, data, statistics config) for the on-disk statistics cache."""
    blob = json.dumps(
        {"version": STATS_VERSION,
         "model": host.meta.get("spec", host.name), "dtype": host.meta.get("dtype"),
         "slices": host.neuron_slices, "data": probes.sha256, "config": asdict(cfg)},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached_stats(
    host: ModelHost, probes: ProbeSet, cfg: StatsConfig, cache_dir: str | Path | None,
    progress: bool = True,
) -> NeuronStats:
    """:func:`collect_stats`, reusing ``cache_dir/<model>-<key>.safetensors`` when present."""
    if cache_dir is None:
        return collect_stats(host, probes, cfg, progress)
    path = Path(cache_dir) / f"{host.name}-{cache_key(host, probes, cfg)}.safetensors"
    stats = load_cached(path)
    if stats is not None:
        return stats
    stats = collect_stats(host, probes, cfg, progress)
    try:
        stats.save(path)
    except OSError as e:  # a full or read-only cache: the computed statistics are not lost
        logging.getLogger(__name__).warning(
            "statistics not cached: %s; keeping them in memory for this run", e.strerror or e)
    return stats


def load_cached(path: Path) -> NeuronStats | None:
    """Cached statistics at ``path``; None when absent or unreadable (a truncated file is
    moved aside to ``<name>.corrupt`` with a warning, so that it is recollected)."""
    return load_or_heal(path, NeuronStats.load, "statistics cache")
