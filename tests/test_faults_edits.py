"""Faults in edits and derived files, on tiny models: edits that do not fit the model,
best edits whose inputs changed, corrupt or unwritable caches, over-long prompts."""

from __future__ import annotations

import errno
import logging

import numpy as np
import pytest
import torch

import neva_sweep as nv
from neva_sweep.capability import CapabilityConfig
from neva_sweep.data import DataError, load_records
from neva_sweep.evaluate import Evaluator
from neva_sweep.files import atomic_path
from neva_sweep.judges import JudgeConfig
from neva_sweep.stats import StatsConfig, cached_stats


def small_evaluator(host, cache_dir) -> Evaluator:
    """The questionnaire judge (no generation) and a few capability items: seconds."""
    return Evaluator(host, JudgeConfig(name="questionnaire", n_boot=20),
                     CapabilityConfig(mc_limit=4, neutral_limit=2, fluency_queries=0),
                     cache_dir=cache_dir)


def no_temporaries(directory) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if p.name.endswith(".tmp"))


# -- derived files that heal --------------------------------------------------------------
def test_truncated_statistics_cache_is_moved_aside_and_recomputed(tiny_host, small_probes,
                                                                   tmp_path, caplog):
    cfg = StatsConfig()
    first = cached_stats(tiny_host, small_probes, cfg, tmp_path, progress=False)
    (path,) = tmp_path.glob("*.safetensors")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a cut-off copy
    with caplog.at_level(logging.WARNING, logger="neva_sweep"):
        again = cached_stats(tiny_host, small_probes, cfg, tmp_path, progress=False)
    assert str(path) in caplog.text and "statistics cache" in caplog.text
    assert path.with_name(path.name + ".corrupt").is_file()
    torch.testing.assert_close(again.mean, first.mean)
    assert nv.NeuronStats.load(path).count.sum() == first.count.sum()  # rewritten whole


def test_corrupt_evaluation_caches_are_recomputed(tiny_host, tiny_stats, tmp_path, caplog):
    ev = small_evaluator(tiny_host, tmp_path)
    base = ev.base()
    null = ev.null(tiny_stats, n=2)
    (pt,) = tmp_path.glob("*-base-*.pt")
    (js,) = tmp_path.glob("*-null-*.json")
    pt.write_bytes(pt.read_bytes()[:100])  # a torch zip cut short
    js.write_text('{"mean": 0.1, "sd"')  # JSON cut short
    fresh = small_evaluator(tiny_host, tmp_path)
    with caplog.at_level(logging.WARNING, logger="neva_sweep"):
        again = fresh.base()
        null_again = fresh.null(tiny_stats, n=2)
    for path in (pt, js):
        assert str(path) in caplog.text
        assert path.with_name(path.name + ".corrupt").is_file() and path.is_file()
    np.testing.assert_allclose(again.judgement.E, base.judgement.E)
    assert null_again["alignment"] == pytest.approx(null["alignment"])
    assert no_temporaries(tmp_path) == []


def test_statistics_write_without_space_leaves_no_temporary(tiny_stats, tmp_path, monkeypatch):
    import neva_sweep.stats as stats_module

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as f:  # half a file, then the disk is full
            f.write(b"\0" * 64)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(stats_module, "save_file", full_disk)
    target = tmp_path / "cache" / "stats.safetensors"
    with pytest.raises(OSError, match=f"no space left on {target}"):
        tiny_stats.save(target)
    assert list(target.parent.iterdir()) == []


def test_evaluation_cache_write_without_space_leaves_no_temporary(tiny_host, tmp_path,
                                                                  monkeypatch):
    ev = small_evaluator(tiny_host, None)
    base = ev.base()

    def full_disk(obj, f, *args, **kwargs):
        open(f, "wb").close()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    target = tmp_path / "base.pt"
    with pytest.raises(OSError, match="no space left on"):
        base.save(target)
    assert list(tmp_path.iterdir()) == []


def test_failed_atomic_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old" and no_temporaries(tmp_path) == []


def test_binary_garbage_in_a_data_file_names_it(tmp_path):
    path = tmp_path / "probes.jsonl"
    path.write_bytes(b'{"value": "power", "split": "identify", "text": "a"}\n\xff\xfe\x00\n')
    with pytest.raises(DataError, match=f"^{path}:2: not UTF-8"):
        load_records("probes", path)


# -- edits that do not fit the model -------------------------------------------------------
def n_hooks(host) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in host.model.modules())


def neurons(layers: list[int], indices: list[int], model=None) -> nv.ValueNeurons:
    k = len(layers)
    return nv.ValueNeurons(torch.tensor(layers), torch.tensor(indices), torch.ones(k),
                           torch.ones(k), torch.ones(k), model)


@pytest.fixture(scope="module")
def nmap(tiny_stats) -> nv.NeuronMap:
    return nv.select_neurons(tiny_stats, sparsity=0.05)


@pytest.fixture(scope="module")
def other_host() -> nv.ModelHost:
    """Another model with the same layer sizes as tiny-llama (2 x 96 neurons)."""
    return nv.load_model("tiny-qwen2")


def test_neuron_index_beyond_a_layer_s_width_is_refused(tiny_host):
    hooks = n_hooks(tiny_host)
    wide = nv.NeuronEdit(neurons([0, 1], [3, 96]))  # layer 1 has neurons 0..95
    with pytest.raises(ValueError, match="neuron index 96 of layer 1 is outside its MLP width "
                                         r"96 \(valid 0..95\)"):
        with nv.apply(tiny_host, wide):
            pass
    deep = nv.NeuronEdit(neurons([2], [0]))
    with pytest.raises(ValueError, match=r"layer 2 does not exist \(the model has 2 layers"):
        with nv.edit_rows(tiny_host, [deep], torch.zeros(1, dtype=torch.long)):
            pass
    assert n_hooks(tiny_host) == hooks  # nothing installed
    with pytest.raises(ValueError, match="neuron map, value power: neuron index 96 of layer 1"):
        nv.NeuronMap({"power": neurons([0, 1], [3, 96])}, [96, 96])
    with pytest.raises(ValueError, match=r"\(layer 0, index -1\) is negative"):
        nv.NeuronEdit(neurons([0], [-1]))


def test_map_of_another_model_is_refused_unless_allowed(tiny_host, other_host, nmap, batch,
                                                        tmp_path):
    assert nmap.built_for == nv.models.identity.ModelId.of_host(tiny_host)
    with pytest.raises(ValueError, match="built for another model: 'tiny-llama' .*not "
                                         "'tiny-qwen2' .*allow_other_model=True"):
        with nv.edit(other_host, nmap, value="power"):
            pass
    enc = other_host.tokenize(["I help my neighbour carry boxes."])
    base = other_host.model(**enc).logits
    with nv.edit(other_host, nmap, value="power", allow_other_model=True):
        edited = other_host.model(**enc).logits
    assert not torch.equal(base, edited)

    nmap.save(tmp_path / "map.safetensors")  # the file records the model it was built for
    loaded = nv.NeuronMap.load(tmp_path / "map.safetensors")
    assert loaded["power"].model == nmap["power"].model == nmap.built_for
    with pytest.raises(ValueError, match="built for another model"):
        with nv.apply(other_host, nv.NeuronEdit(loaded["power"])):
            pass
    with nv.apply(other_host, nv.NeuronEdit(loaded["power"], allow_other_model=True)):
        pass


def test_same_name_other_architecture_is_refused(tiny_host, nmap):
    fake = nv.models.identity.ModelId("tiny-llama", "0123456789ab")
    moved = nv.NeuronMap({"power": nmap["power"]}, nmap.layer_sizes, {**nmap.meta,
                                                                      **fake.describe()})
    with pytest.raises(ValueError, match="fingerprint 0123456789ab.*fingerprint "
                                         f"{tiny_host.meta['fingerprint']}"):
        with nv.edit(tiny_host, moved, value="power"):
            pass


def test_statistics_file_records_model_and_fingerprint(tiny_host, tiny_stats, tmp_path):
    tiny_stats.save(tmp_path / "neurons.safetensors")  # what task=identify writes
    meta = nv.NeuronStats.load(tmp_path / "neurons.safetensors").meta
    assert meta["model"] == "tiny-llama"
    assert meta["fingerprint"] == tiny_host.meta["fingerprint"]
    assert len(meta["fingerprint"]) == 12
    assert nv.load_model("tiny-gpt2").meta["fingerprint"] != meta["fingerprint"]
