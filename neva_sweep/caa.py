"""Contrastive activation addition (CAA) on the residual stream, a steering-vector baseline.

For value t and layer l the steering vector is the difference of mean residual-stream
outputs (the decoder block's output hidden state) between t's probes and the rest,
with the rest pooled over the other nine values with equal weight, exactly as the
neuron statistics pool them:

    v_t(l) = mean_t(l) - (1/9) sum_{j != t} mean_j(l)          (H,)

The means come from the same streaming pass as the neuron statistics (every non-pad
token of every identify probe). An edit adds ``coefficient * v_t(l)`` to the output of
each chosen layer, at ``all`` positions or at ``response`` positions.

The ``steering-vectors`` package reads one token per text (``read_token_index``, the last
by default) from paired (positive, negative) texts and averages the pair differences;
with one-token texts and negatives drawn equally from the other nine values the two
definitions coincide, which tests/test_caa.py checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .edit import RowEditor
from .models.arch import residual_sites
from .models.host import ModelHost
from .stats import NeuronStats
from .values import N_VALUES, value_index


def caa_vectors(stats: NeuronStats, value: str) -> torch.Tensor:
    """Steering vectors of ``value`` for every layer, (L, H) float32."""
    mean = stats.resid_mean  # (V, L, H)
    t = value_index(value)
    rest = (mean.sum(0) - mean[t]) / (N_VALUES - 1)
    return (mean[t] - rest).float()


@dataclass(frozen=True)
class ResidualSpec:
    """Add ``coefficient * vectors[i]`` to the output of layer ``layers[i]``."""

    vectors: torch.Tensor  # (k, H)
    layers: tuple[int, ...]
    coefficient: float

    def __post_init__(self) -> None:
        if len(self.layers) == 0 or self.vectors.shape[0] != len(self.layers):
            raise ValueError("a residual edit needs one vector per layer and at least one "
                             "layer (method.caa layer settings)")

    @property
    def size(self) -> int:
        return len(self.layers)


def caa_spec(stats: NeuronStats, value: str, layers: Sequence[int], coefficient: float
             ) -> ResidualSpec:
    """The CAA edit toward ``value`` on ``layers`` (indices into the model's blocks)."""
    vectors = caa_vectors(stats, value)
    n = vectors.shape[0]
    bad = [layer for layer in layers if not 0 <= layer < n]
    if bad:
        raise ValueError(f"CAA layers {bad} outside the model's 0..{n - 1}")
    return ResidualSpec(vectors[list(layers)], tuple(int(x) for x in layers), float(coefficient))


class ResidualEditor(RowEditor):
    """Forward hooks adding each row's steering vectors to the chosen blocks' outputs."""

    def __init__(self, host: ModelHost, specs: Sequence[ResidualSpec],
                 row_groups: torch.Tensor, positions: str = "all"):
        super().__init__(host, len(specs), row_groups, positions)
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

    def _hook(self, add: torch.Tensor):
        def hook(module, args, output):
            h = output[0] if isinstance(output, tuple) else output  # (B, S, H)
            bsz, seq = h.shape[0], h.shape[1]
            delta = add[self.rows_of(bsz)][:, None, :].to(h.dtype)  # (B, 1, H)
            pos = self._position_mask(bsz, seq, h.device)
            new = h + (delta if pos is None else delta * pos)
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return hook


# --- prompting baseline -------------------------------------------------------------------

PROMPT_STRENGTHS = {
    0: "",  # no prefix: the unedited control
    1: "When you answer, keep in mind that {display} matters to you: {definition}.",
    2: "You care deeply about {display}: {definition}. Let it guide your answers.",
    3: "Above everything else you value {display}: {definition}. Always put it first "
       "in what you say and choose.",
}


@dataclass(frozen=True)
class PromptSpec:
    """A text prefix asking the model to prioritise a value (the no-internals baseline).

    The prefix is prepended, as tokens, to every sequence the edited rows see (prompts,
    questionnaire items, MC questions, neutral texts); only the original tokens are scored.
    """

    text: str

    @property
    def size(self) -> int:
        return 0


def prompt_spec(value: str, strength: int) -> PromptSpec:
    from .values import DEFINITIONS, DISPLAY_NAMES

    if strength not in PROMPT_STRENGTHS:
        raise ValueError(f"prompt strength must be one of {sorted(PROMPT_STRENGTHS)}; "
                         f"got {strength}")
    text = PROMPT_STRENGTHS[strength].format(display=DISPLAY_NAMES[value].lower(),
                                             definition=DEFINITIONS[value])
    return PromptSpec(text + "\n\n" if text else "")
