"""Sharded loading's parts that need no process group: reading slices of a safetensors
checkpoint, finding which slice a rank holds, choosing the source, converting once.
(Loading at tp=2 for real, against tp=1:
tests/integration/test_tp.py::test_sharded_loading_matches_tp1.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from neva_sweep.config import ConfigError
from neva_sweep.models.host import check_placement
from neva_sweep.models.sharded import SafetensorsIndex, checkpoint_dir, slice_offsets
from neva_sweep.models.tp import sharded_source


@pytest.fixture
def checkpoint(tmp_path):
    gen = torch.Generator().manual_seed(0)
    tensors = {"w": torch.randn(6, 4, generator=gen), "h": torch.randn(5, 3).to(torch.bfloat16),
               "s": torch.tensor(2.5)}
    save_file({"w": tensors["w"]}, tmp_path / "model-00001-of-00002.safetensors")
    save_file({"h": tensors["h"], "s": tensors["s"]}, tmp_path / "model-00002-of-00002.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return tmp_path, tensors


def test_reads_whole_tensors_and_row_slices_across_files(checkpoint):
    directory, tensors = checkpoint
    index = SafetensorsIndex(directory)
    for name, t in tensors.items():
        assert index.shape(name) == tuple(t.shape)
        got = index.read(name)
        assert got.dtype == t.dtype and torch.equal(got, t)
    torch.testing.assert_close(index.read("w", 2, 5), tensors["w"][2:5], rtol=0, atol=0)
    assert index.read("h", 4, 4).shape == (0, 3)


def test_reads_into_a_parameter_directly_or_through_a_copy(checkpoint):
    directory, tensors = checkpoint
    index = SafetensorsIndex(directory)
    out = torch.empty(3, 4)
    ptr = out.data_ptr()
    assert index.read("w", 3, 6, out=out) is out and out.data_ptr() == ptr  # no second copy
    assert torch.equal(out, tensors["w"][3:])
    wide = torch.empty(2, 3)  # bfloat16 in the file, float32 wanted: converted
    index.read("h", 0, 2, out=wide)
    assert torch.equal(wide, tensors["h"][:2].float())


def test_truncated_file_and_missing_checkpoint_are_named(checkpoint, tmp_path_factory):
    directory, _ = checkpoint
    path = directory / "model-00001-of-00002.safetensors"
    index = SafetensorsIndex(directory)
    os.truncate(path, path.stat().st_size - 8)
    with pytest.raises(OSError, match="truncated while reading 'w'"):
        index.read("w")
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors file"):
        SafetensorsIndex(empty)


def test_slice_offsets_follow_rank_order_on_any_dimension():
    ranks = [{"down": (8, 64), "up": (64, 8), "norm": (8,)},
             {"down": (8, 32), "up": (32, 8), "norm": (8,)}]
    full = {"down": (8, 96), "up": (96, 8), "norm": (8,)}
    assert slice_offsets(ranks[0], ranks, full, 0) == {"down": (1, 0, 64), "up": (0, 0, 64),
                                                       "norm": None}
    assert slice_offsets(ranks[1], ranks, full, 1) == {"down": (1, 64, 96), "up": (0, 64, 96),
                                                       "norm": None}
    with pytest.raises(ValueError, match="along one dimension; use model.tp_load=full"):
        slice_offsets({"x": (2, 2)}, [{"x": (2, 2)}], {"x": (4, 4)}, 0)
    with pytest.raises(ValueError, match=r"slices \(\[2, 2\]\) do not add up"):
        slice_offsets({"x": (2,)}, [{"x": (2,)}, {"x": (2,)}], {"x": (5,)}, 0)


def test_source_follows_tp_load(checkpoint, monkeypatch):
    directory, _ = checkpoint
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert checkpoint_dir(str(directory)) == directory
    assert checkpoint_dir(str(directory / "config.json")) is None
    assert checkpoint_dir("no-such-org/no-such-model") is None  # offline, not in the cache
    assert sharded_source(str(directory), "float32", "auto") == directory
    assert sharded_source(str(directory), "float32", "full") is None
    assert sharded_source("tiny-llama", "float32", "auto") is None  # built from a config
    with pytest.raises(ConfigError, match="model.tp_load=sharded: model 'tiny-llama'"):
        sharded_source("tiny-llama", "float32", "sharded")
    with pytest.raises(ConfigError,
                       match="model.tp_load: 'lazy'; valid choices: auto, sharded, full"):
        sharded_source("tiny-llama", "float32", "lazy")
    with pytest.raises(ConfigError, match="model.tp_load: 'lazy'.*valid choices"):
        check_placement({"tp_load": "lazy"})


def test_conversion_runs_once_and_never_leaves_half_a_checkpoint(tmp_path):
    """convert_once in a real one-rank gloo group (its own process): the first call writes
    through a temporary folder renamed into place, the second finds it and writes nothing;
    a failed conversion leaves no checkpoint behind."""
    script = textwrap.dedent(f"""
        import pathlib, torch.distributed as dist
        from neva_sweep.models.sharded import convert_once
        dist.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
        target, calls = pathlib.Path({str(tmp_path)!r}) / "ckpt", []
        def save(tmp):
            calls.append(tmp)
            (tmp / "model.safetensors").write_bytes(b"x")
        assert convert_once(target, save) == target and len(calls) == 1
        convert_once(target, save)
        assert len(calls) == 1 and (target / "model.safetensors").read_bytes() == b"x"
        def fail(tmp):
            raise RuntimeError("disk full")
        try:
            convert_once(target.with_name("other"), fail)
            raise AssertionError("no error")
        except RuntimeError as e:
            assert "failed on rank 0: RuntimeError: disk full" in str(e), e
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # nothing half-written left
