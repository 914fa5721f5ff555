"""Attribution patching: the gradient of the pro-vs-anti reply margin w.r.t. each neuron.

For every value t (rows, circumplex order of :data:`neva_sweep.values.VALUES`) and MLP
neuron i (columns, layer-major global ids as in neurons/stats.py) :func:`pair_gradients` returns::

    G[t, i] = mean over t's pairs k of  g(situation_k, pro_k)(i) - g(situation_k, anti_k)(i)
    g(s, r)(i) = sum over positions p of  d log P(r | s) / d a_i(p)

where ``a_i(p)`` is neuron i's activation (the input of its layer's down-projection) at
position p of the text ``s + " " + r``, and ``log P(r | s)`` is the summed log-probability
of the reply's tokens only (the situation is context). A contrastive stance pair
(``neva_sweep/data/pairs.jsonl``: {"value", "situation", "pro", "anti"}) holds one
situation and two replies, one acting on the value and one rejecting it.

**Why.** The ``add`` edit moves neuron i by ``alpha * delta_i`` at every position (delta =
mu_t - mu_rest from the statistics); to first order it changes the pro-minus-anti
log-likelihood margin of value t's pairs by ``alpha * sum_i delta_i * G[t, i]``. That is
attribution patching (Nanda 2023, "Attribution patching: activation patching at
industrial scale"; Syed, Rager & Conmy 2023, "Attribution patching outperforms automated
circuit discovery"): a linear estimate of the planned intervention's effect from one
gradient, instead of one patched forward pass per neuron. Scoring neurons by
``delta_i * G[t, i]`` (neurons/selection.py) targets neurons whose planned move shifts the model's
*judgements* towards the value, not neurons that merely fire on value words.

**Cost.** One forward and one backward pass per text (two texts per pair), batched;
model parameters take no gradient (their ``requires_grad`` is off during the pass, and
only the activations are differentiated). Memory is that of one training step at
``batch_size`` without optimiser state, plus the (B, S, vocab) float32 logits.

**Conventions.** Texts are right-padded (pad positions are masked out of attention, so
their gradient is exactly zero, and out of the reply mask); rows are independent, so one
backward of the batch's summed log-probabilities gives every row's own gradients. A text
longer than ``max_length`` tokens is cut to its first ``max_length`` (with a warning): its
reply is scored on the tokens that remain. The reply's tokens are those after the longest
common prefix of the tokenisations of ``situation`` and of the whole text, so a token that
merges across the boundary counts as reply. (In G the situation's own tokens would cancel
anyway: causal attention makes their log-probabilities the same in the pro and anti text.)
A value without pairs gets a row of zeros (and a warning); :func:`pair_counts` gives the
number of pairs per value, which callers record beside G. Tensor-parallel shards are
refused: DeepSpeed's all-reduce has no backward, so statistics for this score must be
collected on one device (``tp_size=1``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
from tqdm.auto import tqdm

from ..models.host import ModelHost
from ..values import N_VALUES, VALUES
from .pairs import common_prefix, reply_mask

FIELDS = ("value", "situation", "pro", "anti")


def pair_counts(pairs: Sequence[Mapping]) -> torch.Tensor:
    """Number of pairs per value, (V,) int64 in :data:`VALUES` order.

    >>> pair_counts([{"value": "power", "situation": "s", "pro": "p", "anti": "a"}])[4]
    tensor(1)
    """
    counts = torch.zeros(N_VALUES, dtype=torch.int64)
    for k, rec in enumerate(pairs):
        counts[_value_index(rec, k)] += 1
    return counts


def _value_index(rec: Mapping, k: int) -> int:
    missing = [f for f in FIELDS if f not in rec]
    if missing:
        raise ValueError(f"pair {k} lacks field(s) {', '.join(missing)}; a pair record holds "
                         f"{', '.join(FIELDS)}")
    if rec["value"] not in VALUES:
        raise ValueError(f"pair {k}: unknown value {rec['value']!r}; valid values: "
                         f"{', '.join(VALUES)}")
    return VALUES.index(rec["value"])


def _reply_lengths(host: ModelHost, situations: list[str], texts: list[str],
                   max_length: int) -> list[int]:
    """Number of reply tokens of each text (within ``max_length``); see the module docstring."""
    tok = host.tokenizer
    full = tok(texts, truncation=True, max_length=max_length).input_ids
    context = tok(situations, truncation=True, max_length=max_length).input_ids
    return [len(f) - common_prefix(f, c) for f, c in zip(full, context)]


def _check_host(host: ModelHost) -> None:
    sliced = any((start, stop) != (0, size)
                 for (start, stop), size in zip(host.neuron_slices, host.layer_sizes))
    tp = int(host.meta.get("tp_size", 1))
    if tp > 1 or sliced:
        raise ValueError(f"the attribution score needs tp_size=1 (model {host.name!r} holds "
                         f"one tensor-parallel shard of its neurons): gradients cannot flow "
                         "back through DeepSpeed's all-reduce; collect statistics on one device")


def pair_gradients(
    host: ModelHost,
    pairs: Sequence[Mapping],
    batch_size: int = 8,
    max_length: int = 128,
    progress: bool = False,
) -> torch.Tensor:
    """G, (V, N) float64: per value, the mean over its pairs of the pro-minus-anti gradient
    of the reply log-probability w.r.t. every neuron, summed over positions (module
    docstring). Rows of values without pairs are zero.

    >>> import neva_sweep as nv
    >>> host = nv.load_model("tiny-llama")
    >>> pair = {"value": "benevolence", "situation": "A friend is ill.",
    ...         "pro": "I bring soup.", "anti": "I stay home."}
    >>> pair_gradients(host, [pair]).shape
    torch.Size([10, 192])
    """
    _check_host(host)
    counts = pair_counts(pairs)
    if (counts == 0).any():
        logging.getLogger(__name__).warning(
            "no attribution pairs for value(s) %s: their rows of G are zero",
            ", ".join(v for v, n in zip(VALUES, counts.tolist()) if n == 0))
    # One row per text: (value index, weight = +-1 / n_pairs(value), situation, text).
    rows = []
    for k, rec in enumerate(pairs):
        t = _value_index(rec, k)
        for sign, reply in ((1.0, rec["pro"]), (-1.0, rec["anti"])):
            rows.append((t, sign / float(counts[t]), rec["situation"],
                         f"{rec['situation']} {reply}"))
    n_reply = _reply_lengths(host, [r[2] for r in rows], [r[3] for r in rows], max_length)
    _check_lengths(host, rows, n_reply, max_length)

    order = sorted(range(len(rows)), key=lambda i: len(rows[i][3]))  # little padding
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    acts: list[torch.Tensor | None] = [None] * host.n_layers

    def make_hook(layer: int):
        def hook(module, args):
            x = args[0]
            if not x.requires_grad:  # the first site: its input becomes the graph's root
                x = x.detach().requires_grad_()
            acts[layer] = x
            return (x, *args[1:])

        return hook

    model = host.model
    was_training = model.training
    params = [p for p in model.parameters() if p.requires_grad]
    handles = []
    try:
        model.eval()
        for p in params:
            p.requires_grad_(False)
        handles = [site.register_forward_pre_hook(make_hook(layer))
                   for layer, site in enumerate(host.sites)]
        bar = tqdm(batches, desc=f"attribution {host.name}", unit="batch", disable=not progress)
        # Also when called under inference mode, whose tensors cannot be saved for backward.
        with torch.inference_mode(False), torch.enable_grad():
            out = torch.zeros(N_VALUES, host.n_neurons, dtype=torch.float64)  # (V, N)
            for idx in bar:
                _accumulate(host, [rows[i] for i in idx], [n_reply[i] for i in idx],
                            max_length, acts, out)
    finally:
        for h in handles:
            h.remove()
        for p in params:
            p.requires_grad_(True)
        model.train(was_training)
    return out


def _accumulate(host: ModelHost, rows: list, n_reply: list[int], max_length: int,
                acts: list, out: torch.Tensor) -> None:
    """One forward and backward pass over a batch of texts; adds each row's weighted
    position-summed neuron gradients to its value's row of ``out`` (V, N)."""
    enc = host.tokenize([r[3] for r in rows], padding_side="right", max_length=max_length)
    bsz, seq = enc.input_ids.shape
    reply = reply_mask(enc.attention_mask, torch.tensor(n_reply))
    logits = host.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                        use_cache=False).logits
    logits = _at_least_float32(logits[:, :-1])  # (B, S-1, vocab)
    tok_lp = (logits.gather(-1, enc.input_ids[:, 1:, None]).squeeze(-1)
              - logits.logsumexp(-1))  # (B, S-1) log-probabilities of the next tokens
    # Position p's token is predicted at p - 1; a reply token at position 0 (empty
    # situation, no BOS) has no prediction and is context only.
    per_text = (tok_lp * reply[:, 1:]).sum(1)  # (B,) log P(reply | situation)
    # Rows are independent, so the gradient of the sum holds each row's own gradients.
    grads = torch.autograd.grad(per_text.sum(), acts)
    value = torch.tensor([r[0] for r in rows])
    weight = torch.tensor([r[1] for r in rows], dtype=torch.float64)[:, None]  # (B, 1)
    offset = 0
    for g in grads:
        g = g.reshape(bsz, seq, -1)  # (B, S, I); OPT's site sees (B*S, I)
        g = _at_least_float32(g).sum(1).double().cpu()  # (B, I)
        out[:, offset : offset + g.shape[1]].index_add_(0, value, g * weight)
        offset += g.shape[1]
    acts[:] = [None] * len(acts)


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, or in float64 when it already is (half-precision sums drift)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _check_lengths(host: ModelHost, rows: list, n_reply: list[int], max_length: int) -> None:
    """Refuse texts whose reply has no token within ``max_length`` or that the model's context
    cannot hold; warn about texts cut to ``max_length``."""
    empty = [i for i, n in enumerate(n_reply) if n == 0]
    if empty:
        i = empty[0]
        raise ValueError(f"{len(empty)} attribution text(s) have no reply token within "
                         f"max_length={max_length} tokens (first: {rows[i][3][:80]!r}); raise "
                         "max_length or shorten the situations")
    lengths = [len(ids) for ids in host.tokenizer([r[3] for r in rows]).input_ids]
    cut = sum(n > max_length for n in lengths)
    if cut:
        logging.getLogger(__name__).warning(
            "%d of %d attribution texts are longer than max_length=%d tokens: their replies "
            "are scored on the tokens that remain", cut, len(lengths), max_length)
    longest, limit = min(max(lengths, default=0), max_length), host.context_length
    if limit is not None and longest > limit:
        raise ValueError(f"max_length={max_length}: attribution texts of {longest} tokens "
                         f"exceed the {limit}-token context of model {host.name!r}")
