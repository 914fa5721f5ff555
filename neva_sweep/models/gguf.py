"""GGUF models, dequantized once: a safetensors copy in the cache makes later loads fast.

transformers reads a GGUF file by dequantizing every tensor: about 15 s for the embedded
SmolLM2-135M on 2 CPU cores, in every process that loads it (each replica of each sweep).
The first load therefore saves the dequantized weights, in the dtype asked for, with the
config and tokenizer, as a safetensors checkpoint in ``$NEVA_SWEEP_CACHE/checkpoints``
(default ``~/.cache/neva_sweep/checkpoints``, about 520 MB for SmolLM2 in float32); later
loads read that checkpoint instead (docs/performance.md, model loading). The tensors are
the same ones: the same dequantization, saved losslessly in that dtype.

The checkpoint is keyed by the GGUF file's path, size and modification time and the dtype
(:func:`gguf_cache_dir`), and written to a temporary directory that is renamed into place:
never a half-written checkpoint, and processes converting at once are fine (the first
rename wins). A cache that cannot be written costs a warning, not the load. The
tensor-parallel loader (models/tp.py) reads its slices from the same checkpoint.
``NEVA_SWEEP_GGUF_CACHE=0`` reads the GGUF file every time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

import torch
import torch.nn as nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

log = logging.getLogger(__name__)


def cache_root() -> Path:
    """``$NEVA_SWEEP_CACHE``, else ``~/.cache/neva_sweep`` (the default ``cache_dir``)."""
    return Path(os.environ.get("NEVA_SWEEP_CACHE", Path.home() / ".cache" / "neva_sweep"))


def gguf_cache_dir(spec: str, gguf_path: Path, dtype: str) -> Path:
    """Where the safetensors conversion of a GGUF model is cached: keyed by the file's
    path, size and modification time, and the dtype (``float32``, ``bfloat16``, ...)."""
    st = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{dtype}"
                         .encode()).hexdigest()[:12]
    return cache_root() / "checkpoints" / f"{Path(spec).name.removesuffix('.gguf')}-{dtype}-{key}"


def drop_gguf_quantizer(model: nn.Module, dtype: torch.dtype) -> None:
    """A model read from a GGUF file is marked quantized (transformers' GgufHfQuantizer)
    although its weights are already dequantized to ``dtype``; a cast (DeepSpeed's
    ``init_inference``) then refuses it ("`.float()` is not supported for quantized
    model"), and the checkpoint saved from it would carry the mark. Drop the mark, through
    transformers' own path, when every parameter really is plain ``dtype``."""
    quantizer = getattr(model, "hf_quantizer", None)
    if (getattr(model, "is_quantized", False) and type(quantizer).__name__ == "GgufHfQuantizer"
            and all(p.dtype == dtype for p in model.parameters())):
        quantizer.remove_quantization_config(model)


def save_checkpoint(model: nn.Module, tokenizer: PreTrainedTokenizerBase,
                    directory: Path) -> None:
    """Save ``model`` and ``tokenizer`` as a safetensors checkpoint at ``directory``,
    through a temporary directory renamed into place (an existing one is kept)."""
    tmp = directory.with_name(f"{directory.name}.tmp{os.getpid()}")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        try:
            os.replace(tmp, directory)
        except OSError:
            if not directory.is_dir():  # not another process's rename winning: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_gguf(spec: str, gguf_path: Path, dtype: torch.dtype,
              tokenizer: PreTrainedTokenizerBase | None = None,
              **kwargs) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """The model of ``gguf_path`` in ``dtype`` and its tokenizer (``tokenizer``, else the
    file's): from the cached checkpoint when there is one, else dequantized from the file
    and cached. ``kwargs`` go to ``from_pretrained`` (``trust_remote_code``)."""
    name = str(dtype).removeprefix("torch.")
    directory = gguf_cache_dir(spec, gguf_path, name)
    use_cache = os.environ.get("NEVA_SWEEP_GGUF_CACHE", "1") != "0"
    if use_cache and directory.is_dir():
        model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=dtype, **kwargs)
        return model, tokenizer or AutoTokenizer.from_pretrained(str(directory), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                 dtype=dtype, **kwargs)
    tok = tokenizer or AutoTokenizer.from_pretrained(str(gguf_path.parent),
                                                     gguf_file=gguf_path.name, **kwargs)
    drop_gguf_quantizer(model, dtype)
    if use_cache:
        try:
            save_checkpoint(model, tok, directory)
        except OSError as e:
            log.warning("could not cache the dequantized %s in %s (%s); it is read from the "
                        "GGUF file each time (set NEVA_SWEEP_CACHE to a writable directory)",
                        spec, directory, e)
    return model, tok
