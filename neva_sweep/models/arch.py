"""The one place that knows architectures: where each model keeps its MLP neurons.

A neuron site is the module whose *input* is the MLP neuron activation vector
(the down-projection). Reading and editing happen in a forward pre-hook there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn


@dataclass(frozen=True)
class Arch:
    layers: str  # dotted path from the CausalLM module to the list of blocks
    site: str  # dotted path from one block to the down-projection module


_DECODER = Arch(layers="model.layers", site="mlp.down_proj")

# model_type (config.model_type) -> where the neurons live.
ARCHITECTURES: dict[str, Arch] = {
    "llama": _DECODER,
    "mistral": _DECODER,
    "qwen2": _DECODER,
    "qwen3": _DECODER,
    "gemma": _DECODER,
    "gemma2": _DECODER,
    "gemma3_text": _DECODER,
    "phi3": _DECODER,
    "gpt2": Arch(layers="transformer.h", site="mlp.c_proj"),
    "gpt_neox": Arch(layers="gpt_neox.layers", site="mlp.dense_4h_to_h"),
    "opt": Arch(layers="model.decoder.layers", site="fc2"),
}


class UnsupportedArchitecture(KeyError):
    pass


def arch_of(model: nn.Module) -> Arch:
    """The :class:`Arch` entry for a transformers model, or an error listing the supported ones."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        raise UnsupportedArchitecture(
            f"model_type {model_type!r} ({type(model).__name__}) has no neuron site in "
            f"neva_sweep.models.arch.ARCHITECTURES; supported: {', '.join(ARCHITECTURES)}"
        )
    return ARCHITECTURES[model_type]


def neuron_sites(model: nn.Module) -> list[nn.Module]:
    """The down-projection module of every layer, in layer order."""
    arch = arch_of(model)
    blocks = model.get_submodule(arch.layers)
    return [block.get_submodule(arch.site) for block in blocks]


def residual_sites(model: nn.Module) -> list[nn.Module]:
    """The decoder blocks, in layer order: their outputs are the residual stream."""
    model = getattr(model, "module", model)  # a DeepSpeed engine wraps the HF module
    return list(model.get_submodule(arch_of(model).layers))


def site_width(site: nn.Module) -> int:
    """Number of neurons entering a down-projection (its input features, local to a shard)."""
    if isinstance(site, nn.Linear):
        return site.in_features
    # GPT-2's Conv1D stores weight as (in_features, out_features).
    if type(site).__name__ == "Conv1D":
        return site.weight.shape[0]
    raise TypeError(f"cannot read the input width of neuron site {type(site).__name__}")
