"""Tensor-parallel model shards with DeepSpeed AutoTP (inference only, no kernel injection).

SPMD contract: every rank of a process group of size ``tp_size`` runs the *same* code
on the *same* inputs in the same order. Each rank holds a contiguous slice of every
layer's MLP neurons (``host.neuron_slices``) and of the attention heads; the
down-projections all-reduce their outputs, so every rank ends a forward pass with the
full hidden states and full logits. Statistics hooks and edit hooks on a rank only see
(and only touch) that rank's neurons; :func:`neva_sweep.neurons.stats.concat` joins per-rank
statistics, and :mod:`neva_sweep.edits.neuron` maps global neuron ids to local ones through
``neuron_slices``. A rank that skips or reorders a forward pass deadlocks the others.

Shard widths may be uneven (DeepSpeed splits MLP widths in grains of 64 and gives the
remainder to the last rank: tiny-llama's 96 neurons become 64 + 32 on 2 ranks), so
slices are computed from the gathered widths of all ranks, never from ``width // tp_size``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from ..config import ConfigError
from .arch import neuron_sites, site_width
from .gguf import drop_gguf_quantizer, gguf_cache_dir
from .host import DTYPES, ModelHost, check_device_map, load_model
from .identity import fingerprint
from .registry import gguf_file
from .sharded import (
    TP_LOADS,
    SafetensorsIndex,
    checkpoint_dir,
    convert_once,
    empty_model,
    fill_from_checkpoint,
    tied_names,
)

# Architectures DeepSpeed AutoTP cannot shard (GPT-2's Conv1D projections).
NOT_SHARDABLE = ("gpt2",)


def init_process_group(
    rank: int, world_size: int, master_addr: str, master_port: int, backend: str | None = None
) -> str:
    """Join the torch.distributed group of one model replica; returns the backend used.

    gloo on CPU, nccl when CUDA is available (``backend`` overrides). The usual env
    variables are set too, because DeepSpeed reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``.
    One process per rank; every rank must call this with the same address and port.
    """
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR=master_addr,
                      MASTER_PORT=str(master_port))
    # Ray gives each shard actor exactly one visible GPU, so the local device is always 0.
    os.environ.setdefault("LOCAL_RANK", "0")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend, init_method=f"tcp://{master_addr}:{master_port}",
                            rank=rank, world_size=world_size)
    return backend


def load_tp_host(
    model_cfg_or_spec: str | Any,
    tp_size: int,
    dtype: str = "float32",
    device: str = "cpu",
    name: str | None = None,
) -> ModelHost:
    """This rank's shard of a model, inside an initialised process group of size ``tp_size``.

    ``model_cfg_or_spec`` is what :func:`~neva_sweep.models.host.load_model` accepts; a
    model config's fields override ``dtype``/``device``/``name``. ``tp_size == 1`` is
    plain :func:`load_model` (no process group needed). Otherwise DeepSpeed AutoTP shards
    the model and the host's ``neuron_slices`` say which global neurons this rank holds.
    How it is loaded is ``model.tp_load``: ``sharded`` builds it empty and reads only this
    rank's slices from a safetensors checkpoint (:mod:`neva_sweep.models.sharded`; GGUF
    models are converted once), ``full`` loads the full model on every rank first, and
    ``auto`` (the default) is ``sharded`` wherever a checkpoint allows it.
    ``host.model`` is the sharded transformers module (``engine.module``): hooks
    registered on it fire, and its forward pass runs the all-reduces, so call it on every
    rank (see the module docstring).
    """
    spec, dtype, device, name, trust = _resolve(model_cfg_or_spec, dtype, device, name)
    device_map = _field(model_cfg_or_spec, "device_map")
    check_device_map(device_map, tp_size)
    if tp_size == 1:
        return load_model(spec, dtype=dtype, device=device, trust_remote_code=trust, name=name,
                          device_map=device_map)
    if tp_size < 1:
        raise ValueError(f"model.tp_size must be >= 1, got {tp_size}")
    if not dist.is_initialized() or dist.get_world_size() != tp_size:
        size = dist.get_world_size() if dist.is_initialized() else "no group"
        raise RuntimeError(
            f"load_tp_host needs an initialised process group of size model.tp_size={tp_size} "
            f"(found: {size}); call init_process_group on every rank first"
        )
    if dtype not in DTYPES:
        raise KeyError(f"unknown dtype {dtype!r} (model.dtype); valid choices: {', '.join(DTYPES)}")
    source = sharded_source(spec, dtype, _field(model_cfg_or_spec, "tp_load") or "auto")
    if source is None:  # every rank loads the full model; AutoTP keeps a slice
        full = load_model(spec, dtype=dtype, device="cpu", trust_remote_code=trust, name=name)
        model, tokenizer, layer_sizes = full.model, full.tokenizer, full.layer_sizes
        meta = dict(full.meta, tp_load="full")
    else:  # an empty model; each rank reads its own slices after AutoTP has cut it
        model = empty_model(source, DTYPES[dtype], trust)
        layer_sizes = [site_width(s) for s in neuron_sites(model)]
        meta = {"spec": spec, "dtype": dtype, "fingerprint": fingerprint(model, layer_sizes),
                "tp_load": "sharded", "checkpoint": str(source)}
        tokenizer = _tokenizer(source, trust)
    model_type = model.config.model_type
    if model_type in NOT_SHARDABLE:
        raise ValueError(f"model {spec!r} ({model_type}) cannot be sharded by DeepSpeed AutoTP; "
                         "set model.tp_size=1")
    tied = tied_names(model)
    # init_inference allocates an empty model's buffers uninitialised too (``to_empty``);
    # they are not in checkpoints (the rotary frequencies), so they are put back
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()} if source else {}
    module = _autotp(model, tp_size, DTYPES[dtype], device)
    if source is not None:
        _vocab_parallel(module, tied)
        _materialize(module, torch.device(device))
        _restore_buffers(module, buffers)
        fill_from_checkpoint(module, SafetensorsIndex(source), tied)
    sites = neuron_sites(module)
    widths = [_local_width(s) for s in sites]
    slices, sizes = shard_slices(_all_gather_widths(widths), dist.get_rank())
    if sizes != layer_sizes:
        raise ValueError(
            f"model {spec!r} ({model_type}): DeepSpeed AutoTP did not split the MLP neurons "
            f"(shard widths sum to {sizes[:2]}..., the model has {layer_sizes[:2]}...); "
            "set model.tp_size=1"
        )
    short = name or Path(spec).name.removesuffix(".gguf")
    meta = dict(meta, tp_size=tp_size, rank=dist.get_rank())
    return ModelHost(module, tokenizer, short, sites, slices, sizes, meta)


def sharded_source(spec: str, dtype: str, tp_load: str) -> Path | None:
    """The safetensors checkpoint each rank reads its slices from (``model.tp_load``), or
    None to load the full model on every rank. A GGUF model is converted once to a cached
    checkpoint (rank 0 converts, the others wait); a registry model built from a config
    (the tiny test models) has no checkpoint."""
    if tp_load not in TP_LOADS:
        raise ConfigError(f"model.tp_load: {tp_load!r}; valid choices: {', '.join(TP_LOADS)}")
    if tp_load == "full":
        return None
    gguf = gguf_file(spec)
    if gguf is not None:
        return convert_once(gguf_cache_dir(spec, gguf, dtype),
                            lambda tmp: _save_checkpoint(spec, dtype, tmp))
    source = checkpoint_dir(spec)
    if source is None and tp_load == "sharded":
        raise ConfigError(
            f"model.tp_load=sharded: model {spec!r} (model.name) has no safetensors checkpoint "
            "to read slices from (a local directory with config.json and *.safetensors, a "
            "Hugging Face id, or a GGUF model); use model.tp_load=auto or full")
    return source


def _save_checkpoint(spec: str, dtype: str, directory: Path) -> None:
    """Load ``spec`` in full and save it as a safetensors checkpoint with its tokenizer."""
    host = load_model(spec, dtype=dtype, device="cpu")
    drop_gguf_quantizer(host.model, DTYPES[dtype])
    host.model.save_pretrained(str(directory), safe_serialization=True)
    host.tokenizer.save_pretrained(str(directory))


def _tokenizer(directory: Path, trust_remote_code: bool):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _restore_buffers(module: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """Put back the buffers ``saved`` from the model before sharding (same name and shape)."""
    for name, buf in module.named_buffers():
        if name in saved and buf.shape == saved[name].shape:
            buf.data = saved[name].to(buf.device)


def _vocab_parallel(module: nn.Module, tied: dict[str, str]) -> None:
    """Split the input embedding by vocabulary rows over the ranks too (DeepSpeed's
    ``VocabParallelEmbedding``: each rank looks up its rows, an all-reduce joins them);
    AutoTP alone leaves a full copy of it on every rank, a quarter of a small model. When
    the output head is tied to it, the head becomes DeepSpeed's ``VocabParallelLinear`` on
    the same rows (one copy per rank) with its logits gathered, so every rank still ends a
    forward pass with the full logits. Embeddings with their own forward are left whole."""
    try:
        from deepspeed.module_inject.layers import VocabParallelEmbedding, VocabParallelLinear
    except ImportError:  # an older DeepSpeed: the embedding stays whole on every rank
        return
    ref = next((m for m in module.modules() if getattr(m, "mp_group", None) is not None), None)
    embed = module.get_input_embeddings()
    if ref is None or type(embed) is not nn.Embedding:
        return
    head = None
    out_name = next(iter(tied), "").removesuffix(".weight")
    if out_name:
        vocab, hidden = embed.weight.shape
        head = VocabParallelLinear(nn.Linear(hidden, vocab, bias=False, device="meta"),
                                   ref.mp_group, name="lm_head", tp_meta=ref.tp_meta)
        head.gather_output = True  # full logits on every rank, as the unsplit head gives
        owner, _, attr = out_name.rpartition(".")
        setattr(module.get_submodule(owner) if owner else module, attr, head)
    module.set_input_embeddings(VocabParallelEmbedding(
        embed, ref.mp_group, tied_vocab_parallel_linear=head, tp_meta=ref.tp_meta))


def _materialize(module: nn.Module, device: torch.device) -> None:
    """Give every parameter or buffer still on ``meta`` (AutoTP leaves some there) an
    uninitialised tensor on ``device``, to be filled from the checkpoint; a parameter two
    modules share (a tied embedding) stays shared."""
    done: dict[int, nn.Parameter] = {}
    for mod in module.modules():
        for key, p in list(mod._parameters.items()):
            if p is not None and p.is_meta:
                if id(p) not in done:
                    done[id(p)] = nn.Parameter(torch.empty_like(p, device=device),
                                               requires_grad=False)
                mod._parameters[key] = done[id(p)]
        for key, b in list(mod._buffers.items()):
            if b is not None and b.is_meta:
                mod._buffers[key] = torch.empty_like(b, device=device)


def shard_slices(
    widths: list[list[int]], rank: int
) -> tuple[list[tuple[int, int]], list[int]]:
    """(this rank's per-layer (start, stop), global per-layer sizes) from every rank's widths.

    ``widths[r][layer]`` is rank r's local width; ranks hold consecutive slices in rank order.

    >>> shard_slices([[64, 64], [32, 32]], rank=1)  # tiny-llama (96 neurons) over 2 ranks
    ([(64, 96), (64, 96)], [96, 96])
    """
    sizes = [sum(ws) for ws in zip(*widths)]
    starts = [sum(w[layer] for w in widths[:rank]) for layer in range(len(sizes))]
    slices = [(s, s + w) for s, w in zip(starts, widths[rank])]
    return slices, sizes


def _resolve(spec: str | Any, dtype: str, device: str, name: str | None):
    """(spec, dtype, device, name, trust_remote_code), a model config overriding the kwargs."""
    if isinstance(spec, (str, Path)):
        return str(spec), dtype, device, name, False
    if isinstance(spec, Mapping):
        spec = SimpleNamespace(**spec)
    return (spec.name, getattr(spec, "dtype", dtype), getattr(spec, "device", device),
            name or getattr(spec, "short_name", None), getattr(spec, "trust_remote_code", False))


def _field(spec: str | Any, key: str) -> Any:
    """``spec``'s field ``key`` (a model config object or mapping), None for a plain name."""
    if isinstance(spec, (str, Path)):
        return None
    return spec.get(key) if isinstance(spec, Mapping) else getattr(spec, key, None)


def _local_width(site: nn.Module) -> int:
    """Input width of a (possibly DeepSpeed-replaced) down-projection on this rank."""
    if isinstance(site, nn.Linear) or type(site).__name__ == "Conv1D":
        return site_width(site)
    # DeepSpeed's LinearAllreduce keeps the Linear weight layout (out, in_local).
    return site.weight.shape[-1]


def _all_gather_widths(widths: list[int]) -> list[list[int]]:
    """Every rank's per-layer widths, in rank order."""
    out: list[list[int]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(out, widths)
    return out


def _autotp(model: nn.Module, tp_size: int, dtype: torch.dtype, device: str) -> nn.Module:
    """Shard ``model`` with DeepSpeed AutoTP and return the sharded transformers module."""
    on_cpu = device == "cpu"
    # Read at DeepSpeed's first import; a process can only use one accelerator.
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if on_cpu else "cuda")
    try:
        import deepspeed
    except ModuleNotFoundError as e:  # an optional dependency (the extra "tp")
        raise ModuleNotFoundError(f"model.tp_size={tp_size} shards the model with DeepSpeed, "
                                  "which is not installed: pip install 'neva_sweep[tp]' (or "
                                  "model.tp_size=1)") from e
    from deepspeed.accelerator import get_accelerator

    accel = get_accelerator().device_name()
    if accel != ("cpu" if on_cpu else "cuda"):
        raise RuntimeError(f"DeepSpeed was initialised for {accel!r} in this process but "
                           f"model.device is {device!r}; set DS_ACCELERATOR before importing it")
    if on_cpu:
        _disable_shm_allreduce()
    drop_gguf_quantizer(model, dtype)
    float32_buffers = {n: b.detach().clone() for n, b in model.named_buffers()
                       if b.dtype == torch.float32}
    engine = deepspeed.init_inference(
        model,
        tensor_parallel={"tp_size": tp_size},
        # Kernel injection replaces the HF MLP modules, so neuron hooks would never fire.
        replace_with_kernel_inject=False,
        dtype=dtype,  # init_inference defaults to fp16
    )
    _restore_float32_buffers(engine.module, float32_buffers)
    return engine.module.eval()


def _restore_float32_buffers(module: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """Undo init_inference's cast of float32 buffers to a half dtype.

    transformers keeps the rotary frequencies (``inv_freq``) in float32 in half-precision
    models; rounded to bfloat16 they move every rotary angle, so the engine's logits
    drifted from the unsharded model's (by up to 1.1 on SmolLM2's logits of ~30).
    """
    for name, buf in module.named_buffers():
        if name in saved and buf.dtype != torch.float32 and buf.shape == saved[name].shape:
            buf.data = saved[name].to(buf.device)


def _disable_shm_allreduce() -> None:
    """Make DeepSpeed use gloo all-reduce on CPU: its shared-memory op segfaults here.

    ``import deepspeed.comm.torch`` binds the name to PyTorch (``deepspeed.comm`` has a
    ``torch`` attribute), so the module is patched through ``sys.modules``.
    """
    import deepspeed.comm  # noqa: F401  (registers deepspeed.comm.torch in sys.modules)

    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
