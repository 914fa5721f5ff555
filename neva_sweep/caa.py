"""Contrastive activation addition (CAA) on the residual stream, a steering-vector baseline.

For value t and layer l the steering vector is the difference of mean residual-stream
outputs (the decoder block's output hidden state) between t's probes and the rest,
with the rest pooled over the other nine values with equal weight, exactly as the
neuron statistics pool them:

    v_t(l) = mean_t(l) - (1/9) sum_{j != t} mean_j(l)          (H,)

The means come from the same streaming pass as the neuron statistics (every non-pad
token of every identify probe). An edit adds ``coefficient * v_t(l)`` to the output of
each chosen layer, at ``all`` positions or at ``response`` positions; a gated edit
(``gate``, neva_sweep/gate.py) adds ``g * coefficient * v_t(l)`` with g the row's value
relevance.

The ``steering-vectors`` package reads one token per text (``read_token_index``, the last
by default) from paired (positive, negative) texts and averages the pair differences;
with one-token texts and negatives drawn equally from the other nine values the two
definitions coincide, which tests/test_caa.py checks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from .edit import HookedEdit, RowEditor, check_positions
from .gate import Gate
from .models.arch import residual_sites
from .models.host import ModelHost
from .models.identity import ModelId, check_model
from .prompting import PROMPT_STRENGTHS, PromptEdit, prompt_edit
from .stats import NeuronStats
from .values import N_VALUES, value_index

# The prompting baseline lives in neva_sweep/prompting.py; its former names stay importable.
PromptSpec, prompt_spec = PromptEdit, prompt_edit
__all__ = ["PROMPT_STRENGTHS", "PromptEdit", "PromptSpec", "ResidualEdit", "ResidualEditor",
           "ResidualSpec", "caa_edit", "caa_spec", "caa_vectors", "prompt_edit", "prompt_spec"]


def caa_vectors(stats: NeuronStats, value: str) -> torch.Tensor:
    """Steering vectors of ``value`` for every layer, (L, H) float32."""
    mean = stats.resid_mean  # (V, L, H)
    t = value_index(value)
    rest = (mean.sum(0) - mean[t]) / (N_VALUES - 1)
    return (mean[t] - rest).float()


@dataclass(frozen=True)
class ResidualEdit(HookedEdit):
    """Add ``coefficient * vectors[i]`` to the output of layer ``layers[i]``.

    ``positions`` (optional) is where the edit was meant to apply (a sweep trial's
    ``positions``); :func:`neva_sweep.edits.apply` uses it when not told otherwise.
    ``gate`` (optional) scales each row's addition by its value relevance
    (:mod:`neva_sweep.gate`). ``model`` is the model whose statistics gave the vectors
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
                             "layer (method.caa layer settings)")
        if not math.isfinite(self.coefficient):
            raise ValueError(f"CAA coefficient must be finite, got {self.coefficient}")
        if self.positions is not None:
            check_positions(self.positions)

    def describe(self) -> dict:
        return {"kind": self.kind, "layers": list(self.layers),
                "coefficient": self.coefficient,
                **(self.gate.describe() if self.gate is not None else {})}

    def title(self) -> str:
        gated = ", context-gated" if self.gate is not None else ""
        return f"CAA on layers {list(self.layers)}, x{self.coefficient:g}{gated}"



ResidualSpec = ResidualEdit  # the former name, kept for scripts


def caa_edit(stats: NeuronStats, value: str, layers: Sequence[int], coefficient: float,
             positions: str | None = None, gate: Gate | None = None) -> ResidualEdit:
    """The CAA edit toward ``value`` on ``layers`` (indices into the model's blocks);
    ``gate``: see :mod:`neva_sweep.gate` (:func:`neva_sweep.gate.gate_of`)."""
    vectors = caa_vectors(stats, value)
    n = vectors.shape[0]
    bad = [layer for layer in layers if not 0 <= layer < n]
    if bad:
        raise ValueError(f"CAA layers {bad} outside the model's 0..{n - 1}")
    return ResidualEdit(vectors[list(layers)], tuple(int(x) for x in layers), float(coefficient),
                        positions, gate, ModelId.from_meta(stats.meta))


caa_spec = caa_edit  # the former name, kept for scripts


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
                self._hook(add.to(host.device))))
        self.install_gates([s.gate if s.coefficient != 0.0 else None for s in specs])

    def _hook(self, add: torch.Tensor):
        def hook(module, args, output):
            if self.suspended():
                return None
            h = output[0] if isinstance(output, tuple) else output  # (B, S, H)
            bsz, seq = h.shape[0], h.shape[1]
            delta = add[self.rows_of(bsz)][:, None, :].to(h.dtype)  # (B, 1, H)
            gate = self.row_gate(bsz)
            if gate is not None:  # g * delta; exactly delta at g = 1
                gb = gate.to(h.device)[:, None, None]  # (B, 1, 1)
                delta = delta * gb.to(h.dtype)
            pos = self._position_mask(bsz, seq, h.device)
            new = h + (delta if pos is None else delta * pos)
            if gate is not None:
                new = torch.where(gb > 0, new, h)  # g = 0: the block's output, bitwise
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return hook


ResidualEdit.editor = ResidualEditor
