"""Dose-matched null edits: random-direction controls with the same size as an edit.

A control for an edit should differ from it in *direction* only: the same number of
neurons in the same layers and the same total push on the residual stream. The
random-neuron control of :func:`neva_sweep.neurons.selection.random_neurons` gives each random
neuron
the target value's own mean difference (a subset of the same direction), and its push is
typically several times smaller than NeVA's; the nulls built here match both.

**Push.** The push of a neuron edit is the norm of its expected change of the residual
stream, summed over layers in quadrature::

    push = sqrt( sum_l || W_l[:, S_l] @ delta_l ||^2 )

with ``W_l`` (H, I) layer l's MLP down-projection weight (GPT-2's ``Conv1D`` stores it
transposed, (I, H); it is read as (H, I)), ``S_l`` the edited neurons of layer l and
``delta_l`` their expected activation change over the probe tokens, from the edit's
per-neuron terms of a' = max(a (1 + s) + b, f) where d (a - t) > 0, else a
(:meth:`neva_sweep.edits.neuron.NeuronEdit.coefficients`):

- linear, always-on neurons (``add``, ``add_sd``, ``scale``: f = -inf, t = -inf):
  delta = s * mu(i) + b, exactly in expectation (b alone for s = 0, no statistics needed);
- every other neuron (``set``, ``gate_neuron``: a floor or a condition):
  delta = E[rule(a) - a] over the neuron's activation distribution, from the statistics'
  histograms (:func:`activation_quadrature`): ``set`` gives E[max(0, f - a); a > 0],
  ``gate_neuron`` b * P(d (a - t) > 0).

Both average over all probe tokens with the ten values weighted equally: ``mu(i)`` is the
mean over values of ``stats.mean``, the distribution the equal-weight mixture of the values'
histograms. A magnitude of 0 has zero push (the edit is masked out entirely). The push of
a :class:`~neva_sweep.edits.residual.ResidualEdit` is ``sqrt(sum_l ||coefficient * v_l||^2)``. Gates
are ignored: the push is that of the ungated edit (a gate only scales each row's edit by g
in [0, 1]). Edit positions are ignored too (the change per edited token).

**Tensor parallelism.** On a sharded host (:mod:`neva_sweep.models.tp`) each rank's
down-projection holds the input columns of its own slice of neurons
(``host.neuron_slices``); every rank computes ``W_local @ delta_local`` for its own
neurons and the per-layer (H,) vectors are summed over ranks with one
``torch.distributed.all_reduce``. Every rank must call :func:`edit_push`,
:func:`residual_change` and :func:`dose_matched` with the same arguments in the same order
(the SPMD contract); the seeded draws are the same on every rank.

**Nulls** (:func:`dose_matched`): for a neuron edit, random neurons in the same layers
(the same count per layer, none of the edit's own), edited by the ``add`` rule with
magnitude 1, whose deltas are the edit's expected |delta| permuted within each layer with
random signs, times one scalar that makes the null's push equal the edit's; for a residual
edit, a Gaussian vector per layer rescaled to the norm of ``coefficient * v_l``; for a
prompt edit, which has no push, a value-free instruction of the same number of words
(:meth:`~neva_sweep.edits.prompt.PromptEdit.placebo`: the dose of a prompt is its length).
:func:`z_score` places an edit's result among its nulls' results.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import replace

import torch
import torch.nn as nn

from ..edits.neuron import NeuronEdit
from ..edits.prompt import PromptEdit
from ..edits.residual import ResidualEdit
from ..models.host import ModelHost, module_device
from ..models.identity import ModelId
from ..neurons.selection import ValueNeurons, check_neurons
from ..neurons.stats import NeuronStats, layer_offsets

LayerChange = dict[int, tuple[torch.Tensor, torch.Tensor]]


def _check_kind(edit) -> None:
    if isinstance(edit, (NeuronEdit, ResidualEdit)):
        return
    if getattr(edit, "kind", None) == "prompt":
        raise TypeError("a prompt edit has no push: it touches no activations (its "
                        "dose-matched null is a placebo prompt of the same length, "
                        "dose_matched)")
    raise TypeError(f"no push or dose-matched null for {type(edit).__name__}; expected a "
                    "NeuronEdit or a ResidualEdit")


def mean_activation(stats: NeuronStats) -> torch.Tensor:
    """mu(i): every neuron's mean activation over all probe tokens, the ten values weighted
    equally: ``stats.mean.mean(0)``, (N,) float32 (columns layer-major, as in ``stats``)."""
    return stats.mean.mean(0).float()


QUAD_PER_BIN = 4  # quadrature points per positive histogram bin, uniform in softsign y
QUAD_NEGATIVE = 8  # quadrature points of each value's negative side (a <= 0)
QUAD_CHUNK = 4096  # neurons per quadrature call: (chunk, P) float64 temporaries stay small


def activation_quadrature(stats: NeuronStats, columns: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted points standing for the activation distribution of neurons ``columns``.

    The distribution is the equal-weight mixture over the ten values (as in
    :func:`mean_activation`). A value's positive side is its histogram on the softsign grid
    (:func:`neva_sweep.neurons.stats.softsign_bins`), each bin's mass spread over QUAD_PER_BIN
    points uniform in y = a / (a + c) inside the bin, mapped back to a = c y / (1 - y). The
    grid does not resolve a <= 0 (bin 0), so that mass is an exponential on (-inf, 0] whose
    mean makes the value's points reproduce its recorded mean activation (``stats.mean``)
    exactly: MLP activations below zero pile up near 0 and thin out below (SwiGLU's
    silu(g) u). This is the approximate part: on tiny-llama a log-normal fitted to two
    moments did worse (tests/unit/test_rules.py measures the whole against captured activations).

    Args:
        stats: statistics of the whole model (all layers, all shards joined).
        columns: (k,) int64 neuron columns of ``stats`` (layer-major).

    Returns:
        ``(a, w)``, each (k, P) float64: points and weights summing to 1 per neuron, with
        P = (B - 1) * QUAD_PER_BIN + V * QUAD_NEGATIVE.
    """
    scale = stats.hist_scale
    hist = stats.hist[:, columns].double()  # (V, k, B)
    n_bins = hist.shape[-1]
    total = hist.sum(-1)  # (V, k)
    prob = hist / total.clamp(min=1)[..., None]  # (V, k, B)
    has = (total > 0).double()
    value_w = has / has.sum(0).clamp(min=1)  # (V, k): equal weight per value with counts
    # Positive side, the same points for every neuron: bin b >= 1 holds y in (b-1, b] / (B-1).
    sub = (torch.arange(QUAD_PER_BIN, dtype=torch.float64) + 0.5) / QUAD_PER_BIN
    y = (torch.arange(n_bins - 1, dtype=torch.float64)[:, None] + sub) / (n_bins - 1)
    a_bin = scale * y / (1 - y)  # (B-1, m)
    positive_part = prob[..., 1:] @ a_bin.mean(-1)  # (V, k): E[a; a > 0] per value
    w_pos = (value_w[..., None] * prob[..., 1:]).sum(0)  # (k, B-1) pooled
    # Negative side of each value: Exp(1) quantile points scaled to the mean it must have.
    e = -torch.log1p(-(torch.arange(QUAD_NEGATIVE, dtype=torch.float64) + 0.5) / QUAD_NEGATIVE)
    e = e / e.mean()  # unit mean, so the points' mean is exactly the scale below
    p_neg = prob[..., 0]  # (V, k)
    mean_neg = ((stats.mean[:, columns].double() - positive_part) / p_neg.clamp(min=1e-12)
                ).clamp(max=0)  # (V, k): E[a | a <= 0]
    k = columns.numel()
    a_neg = (mean_neg.T[..., None] * e).flatten(1)  # (k, V n)
    w_neg = (value_w * p_neg).T.repeat_interleave(QUAD_NEGATIVE, -1) / QUAD_NEGATIVE
    a = torch.cat([a_bin.flatten().expand(k, -1), a_neg], -1)  # (k, P)
    w = torch.cat([w_pos.repeat_interleave(QUAD_PER_BIN, -1) / QUAD_PER_BIN, w_neg], -1)
    return a, w


def expected_change(edit: NeuronEdit, stats: NeuronStats | None = None) -> LayerChange:
    """The expected activation change of every edited neuron, per layer.

    Args:
        edit: a neuron edit of any rule.
        stats: statistics of the whole model (all layers, all shards joined); needed for
            every rule but ``add`` and ``add_sd`` (mu(i) and the histograms, see the module
            docstring).

    Returns:
        ``{layer: (index, delta)}`` over the layers holding edited neurons, in layer
        order: ``index`` (k_l,) int64 neuron indices within the layer (global across
        shards), ``delta`` (k_l,) float32 their expected change (all zero at magnitude 0).

    >>> import torch
    >>> vn = ValueNeurons(torch.tensor([1, 0, 1]), torch.tensor([5, 2, 7]), torch.ones(3),
    ...                   torch.tensor([0.5, -1.0, 2.0]), torch.zeros(3))
    >>> expected_change(NeuronEdit(vn, "add", 2.0))
    {0: (tensor([2]), tensor([-2.])), 1: (tensor([5, 7]), tensor([1., 4.]))}
    """
    _check_kind(edit)
    if not isinstance(edit, NeuronEdit):
        raise TypeError(f"expected_change takes a NeuronEdit, not {type(edit).__name__}")
    vn = edit.neurons
    layer, index = vn.layer.long(), vn.index.long()
    coef = edit.coefficients()  # (k,) each
    s, b = coef.scale.float(), coef.shift.float()
    linear = torch.isneginf(coef.floor) & ~coef.conditioned()  # (k,): s mu + b is exact
    if edit.magnitude == 0.0:
        delta = torch.zeros(len(vn))
    elif linear.all() and torch.all(s == 0):  # add, add_sd
        delta = b.clone()
    else:
        if stats is None:
            raise ValueError(f"the push of a {edit.rule!r} edit needs the statistics (the "
                             "neurons' activation distributions); pass stats")
        check_neurons(vn, stats.layer_sizes, "edit vs statistics")
        offsets = torch.tensor(layer_offsets(stats.layer_sizes), dtype=torch.long)
        columns = offsets[layer] + index  # (k,)
        delta = s * mean_activation(stats)[columns] + b
        for part in (~linear).nonzero().flatten().split(QUAD_CHUNK):
            # a floor or a condition: E[rule(a) - a] from the histograms (float64: small b)
            a, w = activation_quadrature(stats, columns[part])  # (chunk, P) each
            c = coef.take((part, None))  # (chunk, 1) each
            change = torch.where(c.on(a), c.moved(a) - a, 0.0)
            delta[part] = (w * change).sum(-1).float()
    out: LayerChange = {}
    for lay in sorted(layer.unique().tolist()):
        sel = layer == lay
        out[int(lay)] = (index[sel].clone(), delta[sel].clone())
    return out


def down_weight(site: nn.Module) -> torch.Tensor:
    """The down-projection weight of a neuron site as (H, I_local) (a view, not a copy).

    ``nn.Linear`` and DeepSpeed's ``LinearAllreduce`` store (out, in) = (H, I_local);
    GPT-2's ``Conv1D`` stores (in, out) = (I, H) and is transposed.
    """
    w = site.weight
    return w.t() if type(site).__name__ == "Conv1D" else w


def is_sharded(host: ModelHost) -> bool:
    """Whether ``host`` holds one tensor-parallel shard (not every neuron of some layer)."""
    if int(host.meta.get("tp_size", 1)) > 1:
        return True
    return any((start, stop) != (0, size)
               for (start, stop), size in zip(host.neuron_slices, host.layer_sizes))


def _all_reduce(vectors: torch.Tensor) -> torch.Tensor:
    """Sum (L, H) over tensor-parallel ranks, in place on its own device."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("a sharded host needs its torch.distributed process group to sum "
                           "the ranks' partial residual changes (init_process_group)")
    dist.all_reduce(vectors, op=dist.ReduceOp.SUM)
    return vectors


def residual_change(host: ModelHost, edit, stats: NeuronStats | None = None
                    ) -> dict[int, torch.Tensor]:
    """The expected change of the residual stream that ``edit`` adds at each layer.

    For a neuron edit ``W_l[:, S_l] @ delta_l`` (:func:`expected_change`), summed over
    tensor-parallel ranks on a sharded host (a collective: every rank must call it); for a
    residual edit ``coefficient * v_l``. Gates are ignored.

    Returns:
        ``{layer: (H,) float32 CPU tensor}``, in layer order.
    """
    from accelerate.utils import align_module_device

    _check_kind(edit)
    if isinstance(edit, ResidualEdit):
        vectors = edit.coefficient * edit.vectors.float().cpu()  # (k, H)
        return {int(lay): vectors[i] for i, lay in enumerate(edit.layers)}
    check_neurons(edit.neurons, host.layer_sizes, f"edit on {host.name!r}")
    change = expected_change(edit, stats)
    layers = list(change)
    hidden = down_weight(host.sites[layers[0]]).shape[0]
    device = module_device(host.sites[layers[0]])  # a shard's own GPU, for the all-reduce
    out = torch.zeros(len(layers), hidden, device=device)  # (L_edit, H)
    with torch.no_grad():
        for row, lay in enumerate(layers):
            index, delta = change[lay]
            start, stop = host.neuron_slices[lay]
            mine = (index >= start) & (index < stop)
            if mine.any():  # on the site's own device (model.device_map), its weight
                with align_module_device(host.sites[lay]):  # loaded if offloaded
                    w = down_weight(host.sites[lay])
                    local = (index[mine] - start).to(w.device)
                    out[row] = (w[:, local].float() @ delta[mine].to(w.device)).to(device)
    if is_sharded(host):
        out = _all_reduce(out)
    out = out.cpu()
    return {lay: out[row] for row, lay in enumerate(layers)}


def push_of(change: dict[int, torch.Tensor]) -> float:
    """sqrt(sum_l ||change[l]||^2) of per-layer (H,) residual changes."""
    return math.sqrt(sum(float(v.double().pow(2).sum()) for v in change.values()))


def edit_push(host: ModelHost, edit, stats: NeuronStats | None = None) -> float:
    """The push of ``edit`` on ``host`` (see the module docstring): the norm of its
    expected residual-stream change, summed over layers in quadrature.

    ``stats`` (the whole model's statistics) are needed for neuron edits of every rule
    but ``add`` and ``add_sd``. A collective on a sharded host. A prompt edit raises
    TypeError.
    """
    return push_of(residual_change(host, edit, stats))


def _null_neurons(host: ModelHost, edit: NeuronEdit, stats: NeuronStats | None,
                  gen: torch.Generator) -> ValueNeurons:
    """Random neurons and unscaled deltas (before matching the push) of a neuron edit's
    null, as ``ValueNeurons`` of the ``add`` rule (k,)."""
    change = expected_change(edit, stats)
    own = {}
    for lay, idx in zip(edit.neurons.layer.tolist(), edit.neurons.index.tolist()):
        own.setdefault(lay, set()).add(idx)
    layers, indices, deltas = [], [], []
    for lay, (index, delta) in change.items():
        k = index.numel()
        size = host.layer_sizes[lay]
        taken = torch.zeros(size, dtype=torch.bool)
        taken[torch.tensor(sorted(own[lay]), dtype=torch.long)] = True
        pool = (~taken).nonzero().flatten()  # (size - |own|,)
        if pool.numel() < k:
            raise ValueError(f"no dose-matched null: layer {lay} has {size} neurons, the edit "
                             f"takes {int(taken.sum())} of them and the null needs {k} others")
        chosen = pool[torch.randperm(pool.numel(), generator=gen)[:k]]
        magnitude = delta.abs()[torch.randperm(k, generator=gen)]
        sign = torch.randint(0, 2, (k,), generator=gen).float() * 2 - 1
        layers.append(torch.full((k,), lay, dtype=torch.long))
        indices.append(chosen)
        deltas.append(magnitude * sign)
    k = sum(x.numel() for x in layers)
    model = ModelId.from_meta(stats.meta) if stats is not None else edit.neurons.model
    vn = ValueNeurons(torch.cat(layers), torch.cat(indices), torch.zeros(k), torch.cat(deltas),
                      torch.zeros(k), model, torch.ones(k))
    return vn


def _null_edit(edit: NeuronEdit, neurons: ValueNeurons) -> NeuronEdit:
    return NeuronEdit(neurons, "add", 1.0, positions=edit.positions,
                      allow_other_model=edit.allow_other_model, gate=edit.gate)


def _dose_matched(host: ModelHost, edit, stats: NeuronStats | None, seed: int,
                  target: float):
    gen = torch.Generator().manual_seed(int(seed))
    if isinstance(edit, ResidualEdit):
        hidden = edit.vectors.shape[-1]
        norms = (edit.coefficient * edit.vectors.float().cpu()).norm(dim=-1)  # (k,)
        raw = torch.randn(len(edit.layers), hidden, generator=gen)  # (k, H)
        vectors = raw / raw.norm(dim=-1, keepdim=True).clamp(min=1e-12) * norms[:, None]
        return ResidualEdit(vectors, tuple(edit.layers), 1.0, edit.positions, edit.gate,
                            edit.model, edit.allow_other_model)
    neurons = _null_neurons(host, edit, stats, gen)
    raw = edit_push(host, _null_edit(edit, neurons))
    if target == 0.0:
        scale = 0.0
    elif raw == 0.0:
        raise ValueError("no dose-matched null: the random neurons' down-projection columns "
                         "give no push (zero weights)")
    else:
        scale = target / raw
    return _null_edit(edit, replace(neurons, mean_diff=neurons.mean_diff * scale))


def dose_matched(host: ModelHost, edit, stats: NeuronStats | None, seed: int = 0):
    """A random-direction null of ``edit`` with the same neuron count per layer and the same
    push (:func:`edit_push`), an edit of the same kind.

    - :class:`~neva_sweep.edits.neuron.NeuronEdit`: for every layer the edit touches, as many
      neurons drawn at random (seeded ``torch.Generator``) from that layer's others (never
      one of the edit's own); edited by rule ``add`` with magnitude 1 (same positions,
      gate and ``allow_other_model``): neuron j of layer l is moved by
      ``c * sign_j * |delta_l|[perm(j)]``, the edit's expected |delta| of that layer
      (:func:`expected_change`) in random order with random signs, and ``c`` the one
      scalar that makes the null's push equal the edit's. Its ``ValueNeurons`` hold
      ``mean_diff`` = those deltas (k,), ``score`` and ``quantile`` zeros, ``std`` ones
      and the statistics' model id.
    - :class:`~neva_sweep.edits.residual.ResidualEdit`: the same layers; per layer a seeded Gaussian
      (H,) vector rescaled to the norm of ``coefficient * v_l``;
      ``ResidualEdit(vectors (k, H), layers, coefficient=1.0, positions, gate)``.
    - :class:`~neva_sweep.edits.prompt.PromptEdit`: a placebo, a value-free instruction of
      as many words placed the same way (``edit.placebo(seed)``); no push is needed.

    An edit with zero push gives a null with zero push. ``stats`` (whole-model statistics)
    are needed for neuron edits of every rule but ``add`` and ``add_sd``. A collective on a sharded
    host; the same ``seed`` gives the same null on every rank and every call.
    """
    if isinstance(edit, PromptEdit):
        return edit.placebo(seed)
    _check_kind(edit)
    return _dose_matched(host, edit, stats, seed, edit_push(host, edit, stats))


def dose_matched_nulls(host: ModelHost, edit, stats: NeuronStats | None, n: int,
                       seed: int = 0) -> list:
    """``n`` dose-matched nulls of ``edit`` (:func:`dose_matched`), seeds ``seed`` ..
    ``seed + n - 1``."""
    if n < 0:
        raise ValueError(f"the number of nulls must be >= 0, got {n}")
    if isinstance(edit, PromptEdit):  # no push to match: dose_matched's placebos
        return [dose_matched(host, edit, stats, seed + i) for i in range(n)]
    _check_kind(edit)
    target = edit_push(host, edit, stats)
    return [_dose_matched(host, edit, stats, seed + i, target) for i in range(n)]


def z_score(alignment: float, null_alignments: Sequence[float]) -> float | None:
    """(alignment - mean) / sd of the nulls' alignments (sd with ddof = 1); None with fewer
    than two nulls or when their sd is 0 (or not finite).

    >>> z_score(3.0, [1.0, 2.0, 3.0])
    1.0
    >>> z_score(3.0, [1.0]) is None, z_score(3.0, [2.0, 2.0]) is None
    (True, True)
    """
    values = [float(x) for x in null_alignments]
    if len(values) < 2:
        return None
    sd = statistics.stdev(values)
    if sd == 0 or not math.isfinite(sd):
        return None
    return (float(alignment) - statistics.fmean(values)) / sd
