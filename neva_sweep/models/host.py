"""ModelHost: a loaded model, its tokenizer, and where its neurons are.

A host may hold a full model (``tp_size = 1``) or one tensor-parallel shard; in the
latter case ``neuron_slices[layer]`` says which global neuron ids this shard sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from transformers import AutoModelForCausalLM, AutoTokenizer, BatchEncoding

from .arch import neuron_sites, site_width
from .identity import fingerprint
from .registry import MODELS

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ModelHost:
    """A model ready for statistics and edits.

    Attributes:
        model: the (possibly DeepSpeed-wrapped) torch module used for forward passes.
        tokenizer: its tokenizer (a pad token is always set).
        name: short name used in file names (``neurons/<name>.safetensors``).
        sites: the down-projection module of each layer, whose input is the neuron vector.
        neuron_slices: per layer, the (start, stop) global neuron ids held by this host.
        layer_sizes: per layer, the global number of neurons (sum over shards).
    """

    model: nn.Module
    tokenizer: object
    name: str
    sites: list[nn.Module]
    neuron_slices: list[tuple[int, int]]
    layer_sizes: list[int]
    meta: dict = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return len(self.sites)

    @property
    def n_neurons(self) -> int:
        """Total MLP neurons of the whole model (all layers, all shards)."""
        return sum(self.layer_sizes)

    @property
    def context_length(self) -> int | None:
        """The longest sequence the model accepts: its config's ``max_position_embeddings``
        (gpt2's ``n_positions``), None when the config does not say. Models with learned
        position tables fail with an IndexError past it."""
        cfg = getattr(getattr(self.model, "module", self.model), "config", None)
        limit = getattr(cfg, "max_position_embeddings", None)
        return limit if isinstance(limit, int) and limit > 0 else None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(
        self, texts: list[str], padding_side: str = "right", max_length: int | None = None
    ) -> BatchEncoding:
        """Batch-tokenise ``texts`` with padding on ``padding_side`` ("left" for generation)."""
        tok = self.tokenizer
        old = tok.padding_side
        tok.padding_side = padding_side
        try:
            enc = tok(
                list(texts),
                return_tensors="pt",
                padding=True,
                truncation=max_length is not None,
                max_length=max_length,
            )
        finally:
            tok.padding_side = old
        return enc.to(self.device)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))  # None or "": none

    def chat_prompt(self, user_text: str, system: str | None = None) -> str:
        """``user_text`` wrapped in the model's chat template (plain text when it has none)."""
        if not self.has_chat_template:
            return user_text if system is None else f"{system}\n\n{user_text}"
        msgs = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user_text}
        ]
        return self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)


def host_from_model(model: nn.Module, tokenizer, name: str, meta: dict | None = None) -> ModelHost:
    """Wrap an already-loaded full (unsharded) transformers model."""
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    sites = neuron_sites(model)
    widths = [site_width(s) for s in sites]
    slices = [(0, w) for w in widths]
    meta = {**(meta or {}), "fingerprint": fingerprint(model, widths)}  # see identity.py
    return ModelHost(model, tokenizer, name, sites, slices, widths, meta)


def load_model(
    spec: str | Any,
    dtype: str = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
    name: str | None = None,
) -> ModelHost:
    """Load a model by registry name, Hugging Face id, local path, or model config.

    A model config is any object with the fields of ``neva_sweep.config.ModelConfig``
    (``name``, ``dtype``, ``device``, ``trust_remote_code``, ``short_name``); its fields
    override the keyword arguments. Registry names: ``smollm2-135m`` (the embedded GGUF
    model) and ``tiny-<arch>`` random models for tests (see ``neva_sweep.models.registry.MODELS``).

    >>> host = load_model("tiny-llama")
    >>> host.n_layers, host.layer_sizes
    (2, [96, 96])
    """
    if not isinstance(spec, (str, Path)):
        return load_model(spec.name, dtype=spec.dtype, device=spec.device,
                          trust_remote_code=spec.trust_remote_code,
                          name=getattr(spec, "short_name", None))
    spec = str(spec)
    if dtype not in DTYPES:
        raise KeyError(f"unknown dtype {dtype!r} (model.dtype); valid choices: {', '.join(DTYPES)}")
    torch_dtype = DTYPES[dtype]
    if spec in MODELS:
        model, tok = MODELS[spec](torch_dtype)
    else:
        path = Path(spec)
        gguf = None
        if path.suffix == ".gguf":
            path, gguf = path.parent, path.name
        try:
            kwargs = dict(dtype=torch_dtype, trust_remote_code=trust_remote_code, gguf_file=gguf)
            tok = AutoTokenizer.from_pretrained(str(path), **{k: v for k, v in kwargs.items()
                                                              if k != "dtype"})
            model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
        except (OSError, ValueError) as e:
            raise OSError(
                f"cannot load model {spec!r} (model.name): not a registry name "
                f"({', '.join(MODELS.names())}), and loading it as a Hugging Face id or local "
                f"path failed: {e}"
            ) from e
    model.to(device)
    short = name or Path(spec).name.removesuffix(".gguf")
    return host_from_model(model, tok, short, meta={"spec": spec, "dtype": dtype})
