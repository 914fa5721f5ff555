"""Integration on the embedded SmolLM2-135M-Instruct model (tier 3)."""

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

import neva_sweep as nv
from neva_sweep.config import JudgeConfig
from neva_sweep.data import load_records
from neva_sweep.edits.neuron import NeuronEdit
from neva_sweep.edits.prompt import prompt_edit
from neva_sweep.evaluation.capability import mc_correct, mc_questions
from neva_sweep.evaluation.evaluator import DATA_KINDS, _ci
from neva_sweep.evaluation.judges.base import JUDGES, make_judge
from neva_sweep.evaluation.scoring import mean_token_logprob

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm():
    return nv.load_model("smollm2-135m")


@pytest.fixture(scope="module")
def stats(smollm):
    # no neutral texts and no stance pairs: these tests use no gate and no pair score, so
    # the statistics pass needs neither (the pairs' forced-choice rows would be 5/6 of its
    # time); a third of the identify probes (120 of 360) select neurons good enough for
    # every test here (the steering effect: 0.19 with 120 texts, 0.21 with 180; with 90 the
    # questionnaire's benevolence agreement no longer rises)
    probes = nv.load_probes(split="identify", neutral=False, pairs=False).shard(0, 3)
    return nv.collect_stats(smollm, probes, progress=False)


def test_embedded_model_shape(smollm):
    assert type(smollm.model).__name__ == "LlamaForCausalLM"
    assert smollm.n_layers == 30 and smollm.layer_sizes[0] == 1536 and smollm.n_neurons == 46080


def test_steering_makes_held_out_value_text_more_likely(smollm, stats):
    """Default settings toward universalism raise its validation texts' likelihood relative
    to the other values', and more than the same number of random neurons do."""
    val = nv.load_probes(split="validate").shard(0, 2)  # 60 texts, six per value
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
    assert neva > 0.05 and neva > 5 * abs(rand)  # measured 0.19 and 0.004


def test_mc_accuracy_clearly_above_chance(smollm):
    correct = mc_correct(smollm, mc_questions(load_records("mc"), 100))[0].astype(float)
    lo, hi = _ci(correct, n_boot=2000)
    # chance is 0.25; measured 0.600 [0.50, 0.69] on these 100 (0.600 [0.53, 0.67] on all 180)
    assert lo > 0.40, (correct.mean(), lo, hi)


@pytest.mark.parametrize("name", list(JUDGES))
def test_judges_on_embedded_model(smollm, stats, name):
    cfg = JudgeConfig(name=name, queries_per_value=1, max_new_tokens=12, scenarios_limit=12)
    records = {k: load_records(k) for k in DATA_KINDS}
    if name == "llm":  # two values' queries: the judge model asks ten questions per reply
        q = records["queries"]
        records["queries"] = replace(q, rows=tuple(r for r in q.rows
                                                   if r["value"] in nv.VALUES[:2]))
    if name == "questionnaire":  # the first two of the eight forms (items per value)
        q = records["questionnaire"]
        records["questionnaire"] = replace(q, rows=tuple(
            r for v in nv.VALUES for r in [r for r in q.rows if r["value"] == v][:2]))
    judge = make_judge(cfg, records)
    nmap = nv.select_neurons(stats, "benevolence")
    edits = [None, NeuronEdit(nmap["benevolence"])]
    if name == "forced_choice":  # an explicit value prompt instead of the neuron edit
        edits[1] = prompt_edit("tradition", 3)
    out = judge.judge(smollm, edits, "all")
    base, edited = out[0], out[1]
    b = nv.VALUES.index("benevolence")
    for j in out:
        low = -1 if name == "questionnaire" else 0  # centred per form
        assert j.E.shape[1] == 10 and ((j.E >= low) & (j.E <= 1)).all()
    if name == "questionnaire":
        # The default edit raises the raw agreement with benevolence items (measured +0.088
        # on these two forms, +0.082 on four) and every other value's almost as much
        # (+0.073 on average): see docs/results.md.
        assert edited.raw[:, b].mean() - base.raw[:, b].mean() > 0.05
    elif name == "forced_choice":
        # The judge sees an explicit tradition prompt: tradition rises most (measured
        # +0.011 on the 72 built-in scenarios and on these 12, the next value +0.0025; the
        # null's sd is 0.0006; docs/results.md).
        d = edited.E.mean(0) - base.E.mean(0)
        t = nv.VALUES.index("tradition")
        assert d.argmax() == t and d[t] > 0.003, d
    else:
        assert any(r.strip() for r in edited.replies)
        assert edited.replies != base.replies
        assert np.isfinite(edited.E).all()


def test_gguf_is_dequantized_once_then_read_from_the_cache(smollm, tmp_path, monkeypatch):
    """The first load of the embedded GGUF model dequantizes it and caches a safetensors
    checkpoint (models/gguf.py); the next load reads that checkpoint: the same weights and
    logits, in a fraction of the time. Neither is marked quantized (transformers marks a
    GGUF model so though its weights are dequantized, and DeepSpeed's cast `.float()`
    refused it, so the embedded model could not run at tp_size > 1)."""
    import time

    monkeypatch.setenv("NEVA_SWEEP_CACHE", str(tmp_path))
    t0 = time.perf_counter()
    first = nv.load_model("smollm2-135m")  # from the GGUF file
    t_gguf = time.perf_counter() - t0
    [ckpt] = (tmp_path / "checkpoints").iterdir()  # no temporary directory left
    assert ckpt.name.startswith("smollm2-135m-float32-") and (ckpt / "config.json").is_file()
    assert list(ckpt.glob("*.safetensors")) and (ckpt / "tokenizer.json").is_file()
    t0 = time.perf_counter()
    again = nv.load_model("smollm2-135m")  # from the checkpoint
    t_cached = time.perf_counter() - t0
    assert t_cached < t_gguf  # the point of the cache (docs/performance.md has the ratio)
    ids = first.tokenizer("Tradition matters to me because", return_tensors="pt").input_ids
    for host in (again, smollm):  # the module's model: cached or dequantized before
        sd = host.model.state_dict()
        assert all(torch.equal(v, sd[k]) for k, v in first.model.state_dict().items())
        with torch.inference_mode():
            assert torch.equal(first.model(ids).logits, host.model(ids).logits)
        assert host.meta["fingerprint"] == first.meta["fingerprint"]
    for host in (first, again):
        assert not getattr(host.model, "is_quantized", False)
        model = copy.deepcopy(host.model)
        assert model.float() is model  # what init_inference does
