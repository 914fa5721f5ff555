"""Tensor-parallel loading with no full copy of the model per rank.

The plain way to shard (``model.tp_load=full``) loads the whole model on every rank and
lets DeepSpeed AutoTP keep a slice: each rank's host memory peaks at the full model, so a
70B model on one 8-GPU node needs about 8 x 140 GB at once. Here (``model.tp_load=sharded``,
the default where a safetensors checkpoint exists):

1. the model is built on the ``meta`` device from its config (parameters take no memory;
   buffers such as the rotary frequencies are real, they are not in checkpoints);
2. DeepSpeed AutoTP shards that empty model, as in the plain path, so which rank holds
   which slice stays DeepSpeed's decision (its layers allocate each slice uninitialised);
3. every rank reads from the safetensors files only what its slices need: a slice of the
   first dimension is read alone (``os.pread`` of its bytes), any other slice through one
   full tensor at a time. A rank's peak is its shard plus the largest single tensor.

Which slice a parameter holds follows from the shapes alone: the one dimension where its
local shape differs from the checkpoint's is the split one, and ranks hold consecutive
slices in rank order (as ``tp.shard_slices`` assumes for the neurons), so the offset is
the sum of the lower ranks' sizes, gathered once for every parameter.

GGUF models (the embedded SmolLM2 or a ``.gguf`` path) are converted once to a
safetensors checkpoint in ``$NEVA_SWEEP_CACHE/checkpoints`` (models/gguf.py; rank 0 loads
the full model for that one conversion, the other ranks wait), then loaded as above.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

# safetensors dtype codes (the header's "dtype") -> torch dtypes
ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
TP_LOADS = ("auto", "sharded", "full")


class SafetensorsIndex:
    """Where every tensor of a safetensors checkpoint (one file or an indexed set) lies.

    Reads headers only; :meth:`read` reads a tensor, or a slice of its first dimension,
    straight from the file with ``os.pread`` (no memory map, so nothing but the bytes asked
    for enters the process).
    """

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        files = sorted(self.dir.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{self.dir}: no *.safetensors file")
        # name -> (file, dtype, shape, first byte)
        self.entries: dict[str, tuple[Path, torch.dtype, tuple[int, ...], int]] = {}
        for path in files:
            with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                if info["dtype"] not in ST_DTYPES:
                    raise ValueError(f"{path}: tensor {name!r} has dtype {info['dtype']}, "
                                     f"which sharded loading cannot read (model.tp_load=full)")
                self.entries[name] = (path, ST_DTYPES[info["dtype"]], tuple(info["shape"]),
                                      8 + n + info["data_offsets"][0])

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name][2]

    def read(self, name: str, start: int = 0, stop: int | None = None,
             out: torch.Tensor | None = None) -> torch.Tensor:
        """Tensor ``name`` (rows ``start:stop`` of its first dimension). Read straight into
        ``out`` where it is a contiguous CPU tensor of the file's dtype (no second copy),
        else into a new tensor of the file's dtype that is copied into ``out``."""
        path, dtype, shape, first = self.entries[name]
        rows = shape or (1,)  # a 0-d tensor is read as one element
        stop = rows[0] if stop is None else stop
        row = dtype.itemsize * int(torch.Size(rows[1:]).numel())
        direct = (out is not None and out.dtype == dtype and out.is_contiguous()
                  and out.device.type == "cpu")
        buf = out if direct else torch.empty((stop - start, *rows[1:]), dtype=dtype)
        view = memoryview(buf.view(torch.uint8).numpy().reshape(-1)) if buf.numel() else b""
        fd = os.open(path, os.O_RDONLY)
        try:
            done, size = 0, len(view)
            while done < size:  # preadv may return less than asked for
                got = os.preadv(fd, [view[done:]], first + start * row + done)
                if got <= 0:
                    raise OSError(f"{path}: truncated while reading {name!r}")
                done += got
        finally:
            os.close(fd)
        if out is not None and not direct:
            with torch.no_grad():
                out.copy_(buf.reshape(out.shape))
            return out
        return buf if shape else buf.reshape(())


def checkpoint_dir(spec: str) -> Path | None:
    """The local directory of ``spec``'s safetensors checkpoint, None when it has none.

    A local directory with ``config.json`` and ``*.safetensors`` files is one; a Hugging
    Face id is looked up in (or, online, downloaded to) the Hugging Face cache.
    """
    path = Path(spec)
    if path.is_dir():
        ok = (path / "config.json").is_file() and any(path.glob("*.safetensors"))
        return path if ok else None
    if path.suffix or spec.count("/") != 1 or path.exists():
        return None
    try:
        from huggingface_hub import snapshot_download

        snap = Path(snapshot_download(spec, allow_patterns=["*.json", "*.safetensors",
                                                            "*.model", "*.txt"]))
    except Exception:  # noqa: BLE001  (offline, unknown id: the full path names the error)
        return None
    return checkpoint_dir(str(snap))


def convert_once(directory: Path, save: Any) -> Path:
    """Run ``save(tmp_dir)`` on rank 0 if ``directory`` does not exist yet, then rename it
    into place (never a half-written checkpoint; another replica's rank 0 converting at the
    same time is fine: the first rename wins). Every rank returns once it exists, or raises
    when rank 0's conversion failed (no rank is left waiting)."""
    error: list[str | None] = [None]
    if dist.get_rank() == 0 and not directory.is_dir():
        tmp = directory.with_name(f"{directory.name}.tmp{os.getpid()}")
        try:
            tmp.mkdir(parents=True, exist_ok=True)
            save(tmp)
            os.replace(tmp, directory)
        except Exception as e:  # noqa: BLE001  (reported to every rank below)
            if not directory.is_dir():
                error[0] = f"{type(e).__name__}: {e}"
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    dist.broadcast_object_list(error, src=0)
    if error[0]:
        raise RuntimeError(f"converting the model to a safetensors checkpoint in {directory} "
                           f"failed on rank 0: {error[0]} (model.tp_load=full loads it "
                           "without converting)")
    return directory


def slice_offsets(
    local: dict[str, tuple[int, ...]],
    every_rank: list[dict[str, tuple[int, ...]]],
    full: dict[str, tuple[int, ...]],
    rank: int,
) -> dict[str, tuple[int, int, int] | None]:
    """Per tensor name: None when this rank holds it whole, else (dim, start, stop).

    >>> ranks = [{"w": (64, 8), "b": (8,)}, {"w": (32, 8), "b": (8,)}]
    >>> slice_offsets(ranks[1], ranks, {"w": (96, 8), "b": (8,)}, rank=1)
    {'w': (0, 64, 96), 'b': None}
    """
    out: dict[str, tuple[int, int, int] | None] = {}
    for name, shape in local.items():
        whole = full[name]
        dims = [d for d, (a, b) in enumerate(zip(shape, whole)) if a != b]
        if len(shape) != len(whole) or len(dims) > 1:
            raise ValueError(f"{name}: shard shape {shape} does not split checkpoint shape "
                             f"{whole} along one dimension; use model.tp_load=full")
        if not dims:
            out[name] = None
            continue
        d = dims[0]
        sizes = [r[name][d] for r in every_rank]
        if sum(sizes) != whole[d]:
            raise ValueError(f"{name}: the ranks' slices ({sizes}) do not add up to the "
                             f"checkpoint's {whole[d]}; use model.tp_load=full")
        start = sum(sizes[:rank])
        out[name] = (d, start, start + shape[d])
    return out


def empty_model(directory: Path, dtype: torch.dtype, trust_remote_code: bool) -> nn.Module:
    """The model of ``directory``'s config with parameters on ``meta`` and real buffers."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(str(directory), trust_remote_code=trust_remote_code)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype,
                                                 trust_remote_code=trust_remote_code)
    model.tie_weights()  # on meta the output embedding is not tied to the input one yet
    return model.eval()


def fill_from_checkpoint(module: nn.Module, index: SafetensorsIndex, tied: dict[str, str]) -> int:
    """Copy every parameter (and checkpointed buffer) of this rank's ``module`` from the
    checkpoint, reading only its slice; returns the bytes read. Collective: all ranks."""
    tensors = dict(module.named_parameters(remove_duplicate=False))
    tensors.update((n, b) for n, b in module.named_buffers() if n in index)
    keys = {n: n if n in index else tied.get(n, n) for n in tensors}
    missing = sorted(n for n, k in keys.items() if k not in index)
    if missing:
        more = "..." if len(missing) > 3 else ""
        raise KeyError(f"{index.dir}: no tensor for {missing[:3]}{more} in the checkpoint; "
                       "use model.tp_load=full")
    local = {n: tuple(t.shape) for n, t in tensors.items()}
    every: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(every, local)
    offsets = slice_offsets(local, every, {n: index.shape(keys[n]) for n in tensors},
                            dist.get_rank())
    read = 0
    for name, t in tensors.items():
        if name in tied and tied[name] in tensors and offsets[tied[name]] is None:
            continue  # a view of the input embedding, set below
        cut = offsets[name]
        if cut is None:
            index.read(keys[name], out=t.data)
        elif cut[0] == 0:  # rows: read only this rank's bytes
            index.read(keys[name], cut[1], cut[2], out=t.data)
        else:  # another dimension: one full tensor, transiently
            with torch.no_grad():
                t.data.copy_(index.read(keys[name]).narrow(cut[0], cut[1], cut[2] - cut[1]))
        read += t.numel() * t.element_size()
    for out_name, in_name in tied.items():  # one copy of a tied embedding per rank
        if out_name in tensors and in_name in tensors and offsets[in_name] is None:
            cut, weight = offsets[out_name], tensors[in_name]
            view = weight if cut is None else weight.narrow(cut[0], cut[1], cut[2] - cut[1])
            owner, _, attr = out_name.rpartition(".")
            module.get_submodule(owner)._parameters[attr] = nn.Parameter(view, requires_grad=False)
    return read


def tied_names(model: nn.Module) -> dict[str, str]:
    """Output-embedding parameter name -> input-embedding name, for a model whose config
    ties them (its checkpoint then stores only the input embedding)."""
    cfg = getattr(model, "config", None)
    if not getattr(cfg, "tie_word_embeddings", False):
        return {}
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    names = {id(m): n for n, m in model.named_modules()}
    if inp is None or out is None or id(inp) not in names or id(out) not in names:
        return {}
    return {f"{names[id(out)]}.weight": f"{names[id(inp)]}.weight"}
