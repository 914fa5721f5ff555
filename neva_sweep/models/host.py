"""ModelHost: a loaded model, its tokenizer, and where its neurons are.

A host may hold a full model (``tp_size = 1``) or one tensor-parallel shard; in the
latter case ``neuron_slices[layer]`` says which global neuron ids this shard sees.

``model.device_map`` spreads one full replica over several devices of one node through
accelerate (the simple alternative to tensor parallelism: no process group, layers run in
turn): ``auto``, ``balanced``, ``balanced_low_0``, ``sequential`` or a dict {module name:
device} (``0``, ``cuda:1``, ``cpu``, ``disk``). Then ``model.device`` is not used,
``host.device`` is where inputs go (the input embedding's device), and every hook keeps its
tensors on the device of the module it hooks (:func:`module_device`), so edits, statistics
and gates give what they give on one device.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from transformers import AutoModelForCausalLM, AutoTokenizer, BatchEncoding

from ..config import ConfigError, ModelConfig
from ..export import module_device  # one definition; export.py stays standalone
from .arch import neuron_sites, site_width
from .gguf import load_gguf
from .identity import fingerprint
from .registry import MODELS, dispatch
from .sharded import TP_LOADS

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# model.device_map strings, resolved by accelerate from the devices' free memory.
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
_MAP_DEVICE = re.compile(r"cpu|disk|cuda(:\d+)?")  # a dict's values, besides GPU indices


def check_device_map(device_map: Any, tp_size: int = 1, where: str = "") -> None:
    """Refuse a malformed ``model.device_map``, or one given with ``model.tp_size`` > 1 (a
    replica is either split by layers over devices or tensor-parallel, not both).

    >>> check_device_map({"model.layers.0": 0, "lm_head": "cpu"})
    >>> check_device_map("auto", tp_size=2)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    neva_sweep.config.ConfigError: model.device_map, model.tp_size: ...
    """
    if device_map is None:
        return
    at = f" ({where})" if where else ""
    if int(tp_size) > 1:
        raise ConfigError(f"model.device_map, model.tp_size: device_map={device_map!r} spreads "
                          f"one replica over devices, tp_size={tp_size} shards it: set one of "
                          f"them (model.device_map=null or model.tp_size=1){at}")
    valid = (f"valid choices: {', '.join(DEVICE_MAP_STRATEGIES)}, or a dict {{module name: "
             "device} with devices a GPU index, cuda:<index>, cpu or disk")
    if isinstance(device_map, str):
        if device_map not in DEVICE_MAP_STRATEGIES:
            raise ConfigError(f"model.device_map: {device_map!r}{at}; {valid}")
        return
    if not isinstance(device_map, Mapping) or not device_map:
        raise ConfigError(f"model.device_map: {device_map!r}{at}; {valid}")
    for name, dev in device_map.items():
        ok = (isinstance(dev, int) and not isinstance(dev, bool) and dev >= 0) or (
            isinstance(dev, str) and _MAP_DEVICE.fullmatch(dev))
        if not ok:
            raise ConfigError(f"model.device_map: module {name!r} on {dev!r}{at}; {valid}")


def check_placement(model: Mapping[str, Any], where: str = "") -> None:
    """The one check of a ``model.*`` config before its load (every task, every model of a
    sweep): ``tp_size`` >= 1, ``dtype``, ``device`` (cpu, cuda or cuda:<index>),
    ``device_map`` (well formed, not with ``tp_size`` > 1) and ``tp_load``. ``where`` names
    the model in a multi-model sweep. Absent keys take :class:`ModelConfig`'s defaults.

    >>> check_placement({"device": "tpu"})
    Traceback (most recent call last):
    ...
    neva_sweep.config.ConfigError: model.device: 'tpu'; valid choices: cpu, cuda, cuda:<index>
    """
    at = f" ({where})" if where else ""
    tp_size = model.get("tp_size", ModelConfig.tp_size)
    if not isinstance(tp_size, int) or tp_size < 1:
        raise ConfigError(f"model.tp_size: must be >= 1{at}, got {tp_size}")
    dtype = model.get("dtype", ModelConfig.dtype)
    if dtype not in DTYPES:
        raise ConfigError(f"model.dtype: unknown dtype {dtype!r}{at}; valid choices: "
                          f"{', '.join(DTYPES)}")
    device = str(model.get("device", ModelConfig.device))
    if device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", device):
        raise ConfigError(f"model.device: {device!r}{at}; valid choices: cpu, cuda, "
                          "cuda:<index>")
    check_device_map(model.get("device_map"), tp_size, where)
    tp_load = model.get("tp_load", ModelConfig.tp_load)
    if tp_load not in TP_LOADS:
        raise ConfigError(f"model.tp_load: {tp_load!r}{at}; valid choices: {', '.join(TP_LOADS)}")


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

    def accepts(self, name: str) -> bool:
        """Whether the model's forward takes the keyword argument ``name``."""
        model = getattr(self.model, "module", self.model)  # a DeepSpeed engine wraps it
        return name in inspect.signature(model.forward).parameters

    @property
    def cache_kwarg(self) -> str:
        """The forward's key-value cache argument: ``cache`` from transformers 5.2x on,
        ``past_key_values`` before."""
        return "cache" if self.accepts("cache") else "past_key_values"

    @staticmethod
    def returned_cache(out: Any) -> Any:
        """The key-value cache a forward with ``use_cache=True`` returned (``out.cache``
        from transformers 5.2x on, ``out.past_key_values`` before); None when there is
        none."""
        cache = getattr(out, "cache", None)
        return cache if cache is not None else getattr(out, "past_key_values", None)

    @property
    def device(self) -> torch.device:
        """Where inputs go: the input embedding's device (with ``model.device_map`` the
        blocks may sit on others; hooks use :func:`module_device` of what they hook)."""
        root = getattr(self.model, "module", self.model)  # a DeepSpeed engine wraps it
        embed = getattr(root, "get_input_embeddings", lambda: None)()
        return module_device(embed if embed is not None else root)

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
    device_map: Any = None,
) -> ModelHost:
    """Load a model by registry name, Hugging Face id, local path, or model config.

    A model config is any object with the fields of ``neva_sweep.config.ModelConfig``
    (``name``, ``dtype``, ``device``, ``trust_remote_code``, ``short_name``, optionally
    ``device_map`` and ``tp_size``); its fields override the keyword arguments. Registry
    names: ``smollm2-135m`` (the embedded GGUF model) and ``tiny-<arch>`` random models for
    tests (see ``neva_sweep.models.registry.MODELS``). ``device_map`` (see the module
    docstring) replaces ``device``: Hugging Face models get it in ``from_pretrained``,
    registry models are built on the CPU and dispatched by accelerate.

    >>> host = load_model("tiny-llama")
    >>> host.n_layers, host.layer_sizes
    (2, [96, 96])
    """
    if not isinstance(spec, (str, Path)):
        device_map = getattr(spec, "device_map", None)
        check_device_map(device_map, getattr(spec, "tp_size", 1))
        return load_model(spec.name, dtype=spec.dtype, device=spec.device,
                          trust_remote_code=spec.trust_remote_code,
                          name=getattr(spec, "short_name", None), device_map=device_map)
    spec = str(spec)
    check_device_map(device_map)
    if isinstance(device_map, Mapping):  # an OmegaConf DictConfig from the model config
        device_map = {str(k): v for k, v in device_map.items()}
    if dtype not in DTYPES:
        raise KeyError(f"unknown dtype {dtype!r} (model.dtype); valid choices: {', '.join(DTYPES)}")
    torch_dtype = DTYPES[dtype]
    if spec in MODELS:
        model, tok = MODELS[spec](torch_dtype)
        if device_map is not None:  # built on the CPU: accelerate places its modules
            model = dispatch(model, device_map)
    else:
        path = Path(spec)
        try:
            if path.suffix == ".gguf" and device_map is None:  # dequantized once, cached
                model, tok = load_gguf(spec, path, torch_dtype,
                                       trust_remote_code=trust_remote_code)
            else:
                gguf = path.name if path.suffix == ".gguf" else None
                kwargs = dict(trust_remote_code=trust_remote_code, gguf_file=gguf)
                folder = str(path.parent if gguf else path)
                tok = AutoTokenizer.from_pretrained(folder, **kwargs)
                model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype,
                                                             device_map=device_map, **kwargs)
        except (OSError, ValueError) as e:
            raise OSError(
                f"cannot load model {spec!r} (model.name): not a registry name "
                f"({', '.join(MODELS.names())}), and loading it as a Hugging Face id or local "
                f"path failed: {e}"
            ) from e
    if device_map is None:
        model.to(device)
    short = name or Path(spec).name.removesuffix(".gguf")
    return host_from_model(model, tok, short, meta={"spec": spec, "dtype": dtype})
