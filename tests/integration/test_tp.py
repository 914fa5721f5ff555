"""Tensor parallelism on a real local Ray cluster with real DeepSpeed AutoTP (gloo, CPU).

tiny-llama has 96 neurons per layer; AutoTP over 2 ranks splits them 64 + 32 (grains of
64, remainder to the last rank), so these tests run with uneven shards.
"""

from __future__ import annotations

import sys
import time

import pytest
import ray
import torch
from ray import cloudpickle

import neva_sweep as nv
from neva_sweep.edits.neuron import EditSpec, edit_rows
from neva_sweep.models.tp import load_tp_host
from neva_sweep.neurons.selection import ValueNeurons
from neva_sweep.neurons.stats import StatsConfig
from neva_sweep.sweep.replica import Replica

# The shard actors cannot import this test module: send its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

MODEL = {"name": "tiny-llama"}
ENV = {"HF_HUB_OFFLINE": "1"}  # unknown model names fail at once instead of retrying the hub
TEXTS = ["I help my neighbour carry boxes.", "Power and wealth matter most.", "Hi"]


@pytest.fixture(scope="module")
def cluster():
    # address="local": always a fresh cluster, never one another process started here.
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tp1(cluster) -> Replica:
    rep = Replica(MODEL, tp_size=1, env=ENV)
    yield rep
    rep.kill()


@pytest.fixture(scope="module")
def tp2(cluster) -> Replica:
    rep = Replica(MODEL, tp_size=2, env=ENV)
    yield rep
    rep.kill()


@pytest.fixture
def tp2_sharded(cluster, tmp_path_factory) -> Replica:
    """tiny-llama saved as a safetensors checkpoint, each rank reading only its slices
    (killed after its test: the cluster's 4 CPUs are then free for the later replicas)."""
    from neva_sweep.models.registry import MODELS

    directory = tmp_path_factory.mktemp("checkpoint") / "tiny-llama"
    model, tok = MODELS["tiny-llama"](torch.float32)
    model.save_pretrained(directory, safe_serialization=True)
    tok.save_pretrained(directory)
    rep = Replica({"name": str(directory), "tp_load": "sharded"}, tp_size=2, num_cpus=0.5,
                  env=ENV)
    yield rep
    rep.kill()


@pytest.fixture(scope="module")
def specs() -> list[EditSpec]:
    """Edits on neurons 3, 40 (rank 0) and 70, 95 (rank 1) of both layers."""
    layer = torch.tensor([0, 0, 0, 1, 1, 1])
    index = torch.tensor([3, 40, 70, 3, 70, 95])
    gen = torch.Generator().manual_seed(0)
    mean_diff = torch.randn(6, generator=gen)
    quantile = torch.rand(6, generator=gen) + 0.5
    neurons = ValueNeurons(layer, index, torch.ones(6), mean_diff, quantile)
    return [EditSpec(neurons, "add", 3.0), EditSpec(neurons, "set", 2.0)]


# --- functions run on every shard (SPMD) -------------------------------------------------


def _layout(host: nv.ModelHost) -> tuple[list[tuple[int, int]], list[int]]:
    return host.neuron_slices, host.layer_sizes


def _logits(host: nv.ModelHost, specs: list[EditSpec], texts: list[str]) -> torch.Tensor:
    """(G + 1, B, S, V): unedited logits, then the logits under each edit."""
    enc = host.tokenize(texts)
    out = [host.model(**enc).logits]
    for g in range(len(specs)):
        with edit_rows(host, specs, torch.full((len(texts),), g)):
            out.append(host.model(**enc).logits)
    return torch.stack(out)


def _loaded(host: nv.ModelHost) -> tuple[dict, str, int]:
    """(host.meta, host.name, bytes of the distinct tensor storages this rank holds)."""
    seen = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes()
            for p in host.model.parameters()}
    return host.meta, host.name, sum(seen.values())


def _boom(host: nv.ModelHost) -> None:
    raise ValueError(f"boom on {host.name}")


# --- tests --------------------------------------------------------------------------------


def test_shards_partition_layers_unevenly(tp1, tp2):
    (full_slices, sizes), = ray.get(tp1.call_all(_layout))
    (s0, sizes0), (s1, sizes1) = ray.get(tp2.call_all(_layout))
    assert sizes0 == sizes1 == sizes == [96, 96] and full_slices == [(0, 96), (0, 96)]
    for (a0, b0), (a1, b1), size in zip(s0, s1, sizes):
        assert a0 == 0 and b0 == a1 and b1 == size
        assert b0 - a0 != b1 - a1  # uneven (64 + 32)


@torch.inference_mode()
def test_edited_logits_match_tp1(tp1, tp2, specs):
    ref = ray.get(tp1.call(_logits, specs, TEXTS))
    out = ray.get(tp2.call(_logits, specs, TEXTS))
    assert not torch.allclose(ref[0], ref[1]) and not torch.allclose(ref[0], ref[2])
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)


@torch.inference_mode()
def test_sharded_loading_matches_tp1(tp1, tp2_sharded, specs):
    """model.tp_load=sharded: each rank built the model empty and read only its slices of the
    checkpoint (the vocabulary split too); same name, fingerprint and edited logits as tp=1,
    and no tensor held by both ranks: their bytes add up to tp=1's (AutoTP alone keeps a
    full embedding on each rank: 1.5x here)."""
    (ref_meta, ref_name, ref_bytes), = ray.get(tp1.call_all(_loaded))
    loaded = ray.get(tp2_sharded.call_all(_loaded))
    for meta, name, nbytes in loaded:
        assert meta["tp_load"] == "sharded" and name == ref_name == "tiny-llama"
        assert meta["fingerprint"] == ref_meta["fingerprint"]
        assert nbytes < ref_bytes
    assert sum(nbytes for _, _, nbytes in loaded) <= 1.01 * ref_bytes
    ref = ray.get(tp1.call(_logits, specs, TEXTS))
    out = ray.get(tp2_sharded.call(_logits, specs, TEXTS))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)


def test_collect_stats_matches_tp1(tp1, tp2, small_probes):
    probes = small_probes.shard(0, 3)  # two texts per value
    cfg = StatsConfig(batch_size=8, max_length=32)
    ref, got = tp1.collect_stats(probes, cfg), tp2.collect_stats(probes, cfg)
    assert got.layer_sizes == ref.layer_sizes == [96, 96]
    assert ref.count.min() > 0
    torch.testing.assert_close(got.count, ref.count)
    for name in ("mean", "m2", "positive"):
        torch.testing.assert_close(getattr(got, name), getattr(ref, name), atol=1e-4, rtol=1e-4)
    # Histogram bins may differ where an activation sits on a bin edge (rounding).
    assert (got.hist != ref.hist).float().mean() < 1e-3
    assert ref.pair_count.sum() > 0  # each rank reads every pair: its columns, the residuals
    for name in ("pair_count", "pair_sum", "pair_sumsq", "pair_resid_sum", "pair_resid_norm"):
        torch.testing.assert_close(getattr(got, name), getattr(ref, name), atol=1e-4, rtol=1e-4)


def test_call_error_carries_message(tp2):
    with pytest.raises(ray.exceptions.RayTaskError, match="boom on tiny-llama"):
        ray.get(tp2.call(_boom))
    assert tp2.alive()  # every rank raised before any collective: still usable


def test_startup_error_names_the_model(cluster):
    with pytest.raises(RuntimeError) as err:
        Replica({"name": "no-such-model"}, tp_size=1, num_cpus=0.5, env=ENV)
    head = str(err.value).splitlines()[0]
    assert head.startswith("cannot start shard 0/1 of model 'no-such-model' (model.name")
    assert "OSError: cannot load model 'no-such-model' (model.name)" in head


def _load_gpt2(host: nv.ModelHost) -> None:
    load_tp_host("tiny-gpt2", tp_size=2)  # inside the shard's process group


def test_gpt2_is_not_shardable(tp2):
    with pytest.raises(ray.exceptions.RayTaskError, match=r"set model\.tp_size=1"):
        ray.get(tp2.call(_load_gpt2))


def test_restart_after_killed_shard(tp2, specs):
    ray.kill(tp2.actors[1], no_restart=True)
    deadline = time.monotonic() + 60  # ray.kill is asynchronous: a ping may still get through
    while tp2.alive(timeout_s=5) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not tp2.alive(timeout_s=5)
    tp2.restart()
    assert tp2.alive()
    out = ray.get(tp2.call(_logits, specs[:1], TEXTS[:1]))
    assert out.shape[0] == 2 and torch.isfinite(out).all()


def test_sharding_without_deepspeed_names_the_extra(monkeypatch):
    """DeepSpeed is the optional extra "tp": without it, tp_size > 1 says what to install."""
    from neva_sweep.models.tp import _autotp

    monkeypatch.setitem(sys.modules, "deepspeed", None)  # `import deepspeed` fails
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    with pytest.raises(ModuleNotFoundError,
                       match=r"model.tp_size=2 .*pip install 'neva_sweep\[tp\]'"):
        _autotp(torch.nn.Linear(2, 2), 2, torch.float32, "cpu")


def _push_and_null(host, edit, stats):
    from neva_sweep.methods.nulls import dose_matched, edit_push

    null = dose_matched(host, edit, stats, seed=4)
    return edit_push(host, edit, stats), null.neurons.index, edit_push(host, null, stats)


def test_push_and_dose_matched_null_match_tp1(tp1, tp2, specs, tiny_stats):
    """nulls.edit_push sums each rank's part of the residual change (one all-reduce) and
    dose_matched draws the same neurons on every rank: tp=2 (64 + 32) equals tp=1."""
    from neva_sweep.edits.neuron import NeuronEdit

    for edit in (specs[0], NeuronEdit(specs[0].neurons, "scale", 2.0)):
        (ref_push, ref_idx, ref_null), = ray.get(tp1.call_all(_push_and_null, edit, tiny_stats))
        assert ref_push > 0 and ref_null == pytest.approx(ref_push, rel=1e-4)
        for push, idx, null_push in ray.get(tp2.call_all(_push_and_null, edit, tiny_stats)):
            assert push == pytest.approx(ref_push, abs=1e-4)
            assert torch.equal(idx, ref_idx)
            assert null_push == pytest.approx(ref_push, abs=1e-4)
