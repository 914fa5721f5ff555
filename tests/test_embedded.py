"""Integration on the embedded SmolLM2-135M-Instruct model (tier 3)."""

import numpy as np
import pytest
import torch

import neva_sweep as nv
from neva_sweep.capability import mc_correct, mc_questions
from neva_sweep.data import load_records
from neva_sweep.edit import EditSpec
from neva_sweep.evaluate import _ci
from neva_sweep.judges import JUDGES, JudgeConfig, make_judge
from neva_sweep.likelihood import mean_token_logprob

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm():
    return nv.load_model("smollm2-135m")


@pytest.fixture(scope="module")
def stats(smollm):
    return nv.collect_stats(smollm, nv.load_probes(split="identify"), progress=False)


def test_embedded_model_shape(smollm):
    assert type(smollm.model).__name__ == "LlamaForCausalLM"
    assert smollm.n_layers == 30 and smollm.layer_sizes[0] == 1536 and smollm.n_neurons == 46080


def test_steering_makes_held_out_value_text_more_likely(smollm, stats):
    """Default settings toward universalism raise its validation texts' likelihood relative
    to the other values', and more than the same number of random neurons do."""
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


def test_mc_accuracy_clearly_above_chance(smollm):
    correct = mc_correct(smollm, mc_questions(load_records("mc")))[0].astype(float)
    lo, hi = _ci(correct, n_boot=2000)
    assert lo > 0.40, (correct.mean(), lo, hi)  # chance is 0.25; measured 0.600 [0.53, 0.67]


@pytest.mark.parametrize("name", list(JUDGES))
def test_judges_on_embedded_model(smollm, stats, name):
    cfg = JudgeConfig(name=name, queries_per_value=1, max_new_tokens=24)
    judge = make_judge(cfg, load_records("questionnaire"), load_records("queries"))
    nmap = nv.select_neurons(stats, "benevolence")
    base, edited = judge.judge(smollm, [None, EditSpec(nmap["benevolence"])], "all")
    for j in (base, edited):
        assert j.E.shape[1] == 10 and ((j.E >= 0) & (j.E <= 1)).all()
    if name == "questionnaire":
        # The default edit raises agreement with benevolence items (measured +0.25 on the
        # eight forms; it raises the other values' items almost as much: see docs/results.md).
        b = nv.VALUES.index("benevolence")
        assert edited.E[:, b].mean() - base.E[:, b].mean() > 0.05
    else:
        assert any(r.strip() for r in edited.replies)
        assert edited.replies != base.replies
        assert np.isfinite(edited.E).all()
