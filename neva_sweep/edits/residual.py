"""Residual-stream steering vectors: the ``diffmean`` and ``caa_pairs`` methods' edits.

Both methods add a vector per chosen layer to that decoder block's output hidden state (the
residual stream); they differ in where the vector comes from. The module keeps its
historical name ``caa`` (scripts import :func:`caa_vectors` and :func:`caa_edit` from it).

**diffmean** (:func:`caa_vectors`, :func:`caa_edit`): the difference of mean residuals
over *every* probe token, value t against the rest, ActAdd / mean-difference style (not
published CAA, which reads contrastive pairs at one token; the method was called ``caa``
before, a name it keeps as a deprecated alias). The rest pools the other nine values with
equal weight, exactly as the neuron statistics pool them:

    v_t(l) = mean_t(l) - (1/9) sum_{j != t} mean_j(l)          (H,)

The means come from the same streaming pass as the neuron statistics (every non-pad token
of every identify probe). An edit adds ``coefficient * v_t(l)``.

**caa_pairs** (:func:`pair_vectors`, :func:`caa_pairs_edit`): contrastive activation
addition as published (Rimsky et al. 2024, "Steering Llama 2 via Contrastive Activation
Addition"). The statistics hold stance pairs: one situation with a reply acting on value t
and one rejecting it, asked as an A/B question and read at the answer-letter token
(``stats.pair_resid_mean`` (V, L, H): mean over t's pairs, both A/B orders, of
resid(pro answer) - resid(anti answer)). The vector is that difference rescaled to the
typical residual norm at the answer position (``stats.pair_resid_norm`` (L,)):

    u_t(l) = d_t(l) / ||d_t(l)|| * mean ||resid(l)||           (H,)

and an edit adds ``strength * u_t(l)`` at the positions after the prompt
(``positions="response"``, as published CAA adds after the instruction), so ``strength``
is the fraction of the residual norm added: one scale for every layer and model.

Either edit applies at ``all`` or ``response`` positions; a gated edit (``gate``,
neva_sweep/neurons/gate.py) adds ``g * coefficient * v`` with g the row's value relevance.

The ``steering-vectors`` package reads one token per text (``read_token_index``, the last
by default) from paired (positive, negative) texts and averages the pair differences;
with one-token texts and negatives drawn equally from the other nine values that equals
the diffmean vector, which tests/unit/test_caa.py checks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..export import add_gated
from ..models.arch import residual_sites
from ..models.host import ModelHost, module_device
from ..models.identity import ModelId, check_model
from ..neurons.gate import Gate
from ..neurons.stats import NeuronStats
from ..values import N_VALUES, value_index
from .neuron import HookedEdit, RowEditor, check_positions

__all__ = ["ResidualEdit", "ResidualEditor", "ResidualSpec", "caa_edit", "caa_pairs_edit",
           "caa_vectors", "depth_layers", "pair_vectors"]

NO_PAIRS = ("these statistics hold no stance pairs, which method caa_pairs reads (collected "
            "with load_probes(pairs=False) or by an older neva_sweep): delete the cached "
            "statistics file to recollect them with the pairs (load_probes' default), or "
            "search method diffmean instead")


def caa_vectors(stats: NeuronStats, value: str) -> torch.Tensor:
    """diffmean steering vectors of ``value`` for every layer, (L, H) float32: its mean
    residual over all probe tokens minus the other values' (module docstring)."""
    mean = stats.resid_mean  # (V, L, H)
    t = value_index(value)
    rest = (mean.sum(0) - mean[t]) / (N_VALUES - 1)
    return (mean[t] - rest).float()


def pair_vectors(stats: NeuronStats, value: str) -> torch.Tensor:
    """caa_pairs steering vectors of ``value`` for every layer, (L, H) float32: the mean
    pro-minus-anti answer residual of its stance pairs, rescaled so that row l's norm is
    the mean residual norm at the answer position, ``stats.pair_resid_norm[l]``.

    Rescaling makes the dose a fraction of the residual stream it is added to, whatever
    the layer, so one strength box fits every layer and model (the raw difference's norm
    varies with how separable the pairs are, not only with the layer's scale).
    """
    if stats.pair_resid_sum is None or stats.pair_resid_norm is None:
        raise ValueError(NO_PAIRS)
    diff = stats.pair_resid_mean[value_index(value)]  # (L, H) float64
    norm = diff.norm(dim=-1, keepdim=True)  # (L, 1)
    if not (norm > 0).all():
        zero = torch.nonzero(norm[:, 0] == 0).flatten().tolist()
        raise ValueError(f"caa_pairs: the stance pairs of {value!r} give a zero difference at "
                         f"layers {zero} (no pairs of that value in the statistics?)")
    return (diff / norm * stats.pair_resid_norm.to(diff)[:, None]).float()


def depth_layers(n: int, layer_frac: float, n_layers: int) -> list[int]:
    """Blocks ``first .. first + n_layers - 1`` (cut at the last) of an ``n``-block model,
    ``first`` = ``layer_frac`` of the depth rounded: one search box fits every depth.

    >>> depth_layers(30, 0.5, 3), depth_layers(30, 1.0, 3)
    ([14, 15, 16], [29])
    """
    if not 0.0 <= layer_frac <= 1.0:
        raise ValueError(f"layer_frac is the first layer as a fraction of depth, in [0, 1]; "
                         f"got {layer_frac} (search.space.<method>.layer_frac)")
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        raise ValueError(f"n_layers is a number of consecutive layers >= 1; got {n_layers!r} "
                         f"(search.space.<method>.n_layers)")
    first = min(n - 1, max(0, round(layer_frac * (n - 1))))
    return list(range(first, min(n, first + n_layers)))


@dataclass(frozen=True)
class ResidualEdit(HookedEdit):
    """Add ``coefficient * vectors[i]`` to the output of layer ``layers[i]``.

    ``positions`` (optional) is where the edit was meant to apply (a sweep trial's
    ``positions``); :func:`neva_sweep.edits.apply` uses it when not told otherwise.
    ``gate`` (optional) scales each row's addition by its value relevance
    (:mod:`neva_sweep.neurons.gate`). ``model`` is the model whose statistics gave the vectors
    (:func:`caa_edit` sets it): installing the edit on another model raises unless
    ``allow_other_model``, as for neuron edits (a vector of the right width means nothing
    in another model's residual stream).
    """

    vectors: torch.Tensor  # (k, H)
    layers: tuple[int, ...]
    coefficient: float
    positions: str | None = None
    gate: Gate | None = None
    model: ModelId | None = None  # None: unknown origin (hand-built vectors), not checked
    allow_other_model: bool = False

    kind: ClassVar[str] = "residual"
    prefix: ClassVar[str] = ""  # no token prefix: the edit is hooks
    n_neurons: ClassVar[int] = 0

    def __post_init__(self) -> None:
        if len(self.layers) == 0 or self.vectors.shape[0] != len(self.layers):
            raise ValueError("a residual edit needs one vector per layer and at least one "
                             "layer (layer_frac, n_layers of methods diffmean and caa_pairs)")
        if not math.isfinite(self.coefficient):
            raise ValueError(f"a residual edit's coefficient (its strength) must be finite, "
                             f"got {self.coefficient}")
        if self.positions is not None:
            check_positions(self.positions)

    def describe(self) -> dict:
        return {"kind": self.kind, "layers": list(self.layers),
                "coefficient": self.coefficient,
                **(self.gate.describe() if self.gate is not None else {})}

    def title(self) -> str:
        gated = ", context-gated" if self.gate is not None else ""
        return f"steering vector on layers {list(self.layers)}, x{self.coefficient:g}{gated}"



ResidualSpec = ResidualEdit  # the former name, public as nv.ResidualSpec


def residual_edit(stats: NeuronStats, vectors: torch.Tensor, layers: Sequence[int],
                  coefficient: float, positions: str | None, gate: Gate | None) -> ResidualEdit:
    """``coefficient * vectors[l]`` (``vectors`` (L, H), one row per block) added on
    ``layers``, marked as an edit of the model ``stats`` come from."""
    n = vectors.shape[0]
    bad = [layer for layer in layers if not 0 <= layer < n]
    if bad:
        raise ValueError(f"residual edit layers {bad} outside the model's 0..{n - 1}")
    return ResidualEdit(vectors[list(layers)], tuple(int(x) for x in layers), float(coefficient),
                        positions, gate, ModelId.from_meta(stats.meta))


def caa_edit(stats: NeuronStats, value: str, layers: Sequence[int], coefficient: float,
             positions: str | None = None, gate: Gate | None = None) -> ResidualEdit:
    """The diffmean edit toward ``value`` on ``layers`` (indices into the model's blocks):
    ``coefficient`` times :func:`caa_vectors`; ``gate``: see :mod:`neva_sweep.neurons.gate`
    (:func:`neva_sweep.neurons.gate.gate_of`)."""
    return residual_edit(stats, caa_vectors(stats, value), layers, coefficient, positions, gate)


def caa_pairs_edit(stats: NeuronStats, value: str, layers: Sequence[int], strength: float,
                   positions: str | None = "response", gate: Gate | None = None
                   ) -> ResidualEdit:
    """The caa_pairs edit toward ``value`` on ``layers``: ``strength`` times
    :func:`pair_vectors`, i.e. that fraction of the residual norm, added after the prompt
    (``positions="response"``) as published CAA adds it; ``gate`` as for :func:`caa_edit`."""
    return residual_edit(stats, pair_vectors(stats, value), layers, strength, positions, gate)




class ResidualEditor(RowEditor):
    """Forward hooks adding each row's steering vectors to the chosen blocks' outputs."""

    def __init__(self, host: ModelHost, specs: Sequence[ResidualEdit],
                 row_groups: torch.Tensor, positions: str = "all"):
        super().__init__(host, len(specs), row_groups, positions)
        for s in specs:  # before any hook: an edit of another model installs nothing
            check_model(s.model, host, "residual (CAA) edit", s.allow_other_model)
        blocks = residual_sites(host.model)
        layers = sorted({layer for s in specs for layer in s.layers})
        if layers and layers[-1] >= len(blocks):
            raise ValueError(f"residual edit on layer {layers[-1]} but the model has "
                             f"{len(blocks)}")
        hidden = specs[0].vectors.shape[-1] if specs else 0
        for layer in layers:
            # (G + 1, H): row g is edit g's addition at this layer, the last row is zero.
            add = torch.zeros(len(specs) + 1, hidden)
            for g, s in enumerate(specs):
                if layer in s.layers and s.coefficient != 0.0:
                    add[g] = s.coefficient * s.vectors[s.layers.index(layer)]
            self.handles.append(blocks[layer].register_forward_hook(
                self._hook(add.to(module_device(blocks[layer])))))
        self.install_gates([s.gate if s.coefficient != 0.0 else None for s in specs])

    def _hook(self, add: torch.Tensor):
        def hook(module, args, output):
            if self.suspended():
                return None
            h = output[0] if isinstance(output, tuple) else output  # (B, S, H)
            bsz, seq = h.shape[0], h.shape[1]
            delta = add[self.rows_of(bsz).to(add.device)][:, None, :].to(h)  # (B, 1, H)
            new = add_gated(h, delta, self.row_gate(bsz), self._position_mask(bsz, seq, h.device))
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return hook


ResidualEdit.editor = ResidualEditor
