"""Integration on the embedded SmolLM2-135M-Instruct model (tier 3)."""

import pytest
import torch

import neva_sweep as nv
from neva_sweep.likelihood import mean_token_logprob

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm():
    return nv.load_model("smollm2-135m")


def test_embedded_model_shape(smollm):
    assert type(smollm.model).__name__ == "LlamaForCausalLM"
    assert smollm.n_layers == 30 and smollm.layer_sizes[0] == 1536 and smollm.n_neurons == 46080


def test_steering_makes_held_out_value_text_more_likely(smollm):
    """Default settings toward universalism raise its validation texts' likelihood relative
    to the other values', and more than the same number of random neurons do."""
    stats = nv.collect_stats(smollm, nv.load_probes(split="identify"), progress=False)
    val = nv.load_probes(split="validate")
    labels = torch.tensor(val.labels)
    value = "universalism"
    t = nv.VALUES.index(value)
    nmap = nv.select_neurons(stats, value)
    base = mean_token_logprob(smollm, list(val.texts))

    def effect(neurons):
        with nv.edit(smollm, nv.NeuronMap({value: neurons}, nmap.layer_sizes)):
            d = mean_token_logprob(smollm, list(val.texts)) - base
        per_value = torch.stack([d[labels == j].mean() for j in range(10)])
        return float(per_value[t] - (per_value.sum() - per_value[t]) / 9)

    neva = effect(nmap[value])
    rand = effect(nv.random_neurons(stats, value, len(nmap[value]), seed=0))
    assert neva > 0.05 and neva > 5 * abs(rand)
