"""model.device_map: one replica spread over devices by accelerate gives what one device gives.

Without GPUs the honest stand-in is accelerate's disk offload: the mapped model's input
embedding and layer 1 keep their weights on ``meta`` (loaded from an offload folder for each
forward) and compute on the CPU, so any hook that places its tensors by a parameter's
device fails here. With a GPU (marker ``gpu``) a second map really computes on two devices:
the embedding and layer 1 on the CPU, layer 0 and the head on cuda:0, so a hook that
assumes one device for the whole model fails there.
"""

from __future__ import annotations

import pytest
import torch
from accelerate import dispatch_model

import neva_sweep as nv
from neva_sweep.config import ConfigError, ModelConfig
from neva_sweep.edits.neuron import NeuronEdit
from neva_sweep.edits.residual import caa_edit
from neva_sweep.evaluation.scoring import next_token_logprobs
from neva_sweep.methods.nulls import edit_push
from neva_sweep.models.host import check_placement, host_from_model, load_model, module_device
from neva_sweep.models.registry import tiny_model
from neva_sweep.models.tp import load_tp_host
from neva_sweep.neurons.gate import gate_of
from neva_sweep.preflight import preflight

OFFLOADED = {"model.embed_tokens": "disk", "model.layers.0": "cpu", "model.layers.1": "disk",
             "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
PROMPTS = ["I help my neighbour carry boxes.", "Win the match at any cost.", "Hello"]


# Computes on cpu and cuda:0 (accelerate's main device "cpu": no offload, two devices).
SPLIT = {"model.embed_tokens": "cpu", "model.layers.0": 0, "model.layers.1": "cpu",
         "model.norm": 0, "model.rotary_emb": 0, "lm_head": 0}
GPU = [pytest.mark.gpu,
       pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module", params=["offload", pytest.param("split", marks=GPU)])
def mapped(request) -> tuple[nv.ModelHost, float]:
    """(a device-mapped tiny-llama, the tolerance of its results against one device's)."""
    if request.param == "offload":
        return load_model(ModelConfig(name="tiny-llama", device_map=OFFLOADED)), 1e-6
    model, tok = tiny_model("tiny-llama")
    model = dispatch_model(model, device_map=SPLIT, main_device="cpu")
    return host_from_model(model, tok, "tiny-llama", {"spec": "tiny-llama"}), 1e-4  # MKL/cuBLAS


@pytest.fixture(scope="module")
def mapped_stats(mapped, small_probes) -> nv.NeuronStats:
    return nv.collect_stats(mapped[0], small_probes, progress=False)


def test_mapped_model_is_spread_and_gives_the_same_logits(mapped, tiny_host) -> None:
    host, tol = mapped
    devices = {str(module_device(s)) for s in host.sites}
    assert host.device == torch.device("cpu")
    if torch.cuda.is_available() and "cuda:0" in devices:
        assert devices == {"cpu", "cuda:0"}  # layers really compute on two devices
    else:
        assert host.sites[1].weight.device.type == "meta"  # really offloaded
        assert devices == {"cpu"}
    assert host.meta["fingerprint"] == tiny_host.meta["fingerprint"]  # shares caches
    batch = tiny_host.tokenize(PROMPTS)
    torch.testing.assert_close(host.model(**host.tokenize(PROMPTS)).logits.cpu(),
                               tiny_host.model(**batch).logits, atol=tol, rtol=0)


def test_edits_give_the_same_logits(mapped, tiny_host, tiny_stats) -> None:
    nmap = nv.select_neurons(tiny_stats, sparsity=0.05)
    gate = gate_of(tiny_stats, "context")
    edits = [None, NeuronEdit(nmap["power"], "add", 3.0),
             NeuronEdit(nmap["benevolence"], "scale", 2.0, gate=gate),
             caa_edit(tiny_stats, "power", [0, 1], 4.0),
             caa_edit(tiny_stats, "security", [1], 4.0, gate=gate)]
    cand = torch.arange(200)
    host, tol = mapped
    ours = next_token_logprobs(host, PROMPTS, cand, edits)  # (G, n, C)
    ref = next_token_logprobs(tiny_host, PROMPTS, cand, edits)
    torch.testing.assert_close(ours, ref, atol=tol, rtol=0)
    assert (ref[1:] - ref[:1]).abs().amax(dim=(1, 2)).min() > 1e-3  # every edit acts
    assert edit_push(host, edits[1], tiny_stats) == pytest.approx(
        edit_push(tiny_host, edits[1], tiny_stats), rel=tol)


def test_statistics_are_the_same(mapped, mapped_stats, tiny_stats) -> None:
    fields = {k: v for k, v in vars(tiny_stats).items() if isinstance(v, torch.Tensor)}
    assert {"mean", "m2", "hist", "resid_sum", "gate_features", "pair_sum"} <= set(fields)
    tol = mapped[1]
    for name, ref in fields.items():
        if name == "hist" and tol > 1e-6:  # a value at a bin edge may fall either side
            assert (mapped_stats.hist - ref).abs().sum() <= ref.sum() * 1e-4
            continue
        torch.testing.assert_close(getattr(mapped_stats, name), ref, atol=tol, rtol=0,
                                   msg=lambda m, name=name: f"{name}: {m}")
    assert mapped_stats.gate is not None


def test_device_map_with_tensor_parallelism_is_refused(config, tmp_path) -> None:
    both = "model.device_map, model.tp_size"
    with pytest.raises(ConfigError, match=both):
        load_model(ModelConfig(name="tiny-llama", device_map="auto", tp_size=2))
    with pytest.raises(ConfigError, match=both):  # before any process group is needed
        load_tp_host({"name": "tiny-llama", "device_map": {"lm_head": 0}}, tp_size=2)
    with pytest.raises(ConfigError, match=both):
        preflight(config("model=tiny_llama", "task=identify", "model.device_map=balanced",
                         "model.tp_size=2"), tmp_path)
    with pytest.raises(ConfigError, match="model.device_map: 'everywhere'.*auto, balanced"):
        check_placement({"device_map": "everywhere"})
    with pytest.raises(ConfigError, match="module 'lm_head' on 'gpu1'"):
        check_placement({"device_map": {"lm_head": "gpu1"}})
    check_placement({"device_map": {"model.layers.0": 0, "lm_head": "cuda:1"}})


def test_exported_hooks_follow_the_device_map(mapped, tiny_host, tiny_stats, tmp_path) -> None:
    """task=export's standalone loader places each hook's tensors where its module computes
    (accelerate's execution device), not by a weight's device, which is ``meta`` when
    offloaded: on the mapped model the exported edits give nv.apply's logits."""
    from neva_sweep import export
    from neva_sweep.exporting import export_edit

    host, tol = mapped
    neurons = nv.select_neurons(tiny_stats, "power", sparsity=0.05)["power"]
    gate = gate_of(tiny_stats, "value", "power")
    entry = {"model": "tiny-llama", "value": "power", "method": "neva"}
    batch = tiny_host.tokenize(PROMPTS)
    for i, edit in enumerate([NeuronEdit(neurons, "gate_neuron", 6.0, gate=gate),
                              caa_edit(tiny_stats, "power", [0, 1], 4.0)]):
        path, _ = export_edit(tiny_host, edit, entry, "hooks", tmp_path / str(i))
        with torch.no_grad(), nv.apply(tiny_host, edit):
            ref = tiny_host.model(**batch).logits
        with torch.no_grad(), export.install(host.model, path):
            got = host.model(**host.tokenize(PROMPTS)).logits.cpu()
        with torch.no_grad():
            base = tiny_host.model(**batch).logits
        assert (ref - base).abs().max() > 1e-3  # the edit acts
        torch.testing.assert_close(got, ref, atol=max(tol, 1e-5), rtol=0)
