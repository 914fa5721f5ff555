"""Dose-matched null edits (neva_sweep/methods/nulls.py) on tiny random models: tiny-llama
(nn.Linear down-projections) and tiny-gpt2 (Conv1D, weight stored transposed)."""

from __future__ import annotations

import math

import pytest
import torch

import neva_sweep as nv
from neva_sweep.edits.neuron import RULES, NeuronEdit
from neva_sweep.edits.prompt import prompt_edit
from neva_sweep.edits.residual import ResidualEdit, caa_edit
from neva_sweep.methods.nulls import (
    activation_quadrature,
    dose_matched,
    dose_matched_nulls,
    edit_push,
    expected_change,
    residual_change,
    z_score,
)
from neva_sweep.models.identity import ModelId
from neva_sweep.neurons.gate import gate_of
from neva_sweep.neurons.selection import ValueNeurons
from neva_sweep.neurons.stats import layer_offsets

VALUE = "power"
MAGNITUDE = 3.0


@pytest.fixture(scope="module")
def gpt2(small_probes):
    host = nv.load_model("tiny-gpt2")
    return host, nv.collect_stats(host, small_probes.shard(0, 3), progress=False)


@pytest.fixture(params=["llama", "gpt2"])
def model(request, tiny_host, tiny_stats):
    """(host, stats, value neurons of VALUE) on each tiny architecture."""
    host, stats = ((tiny_host, tiny_stats) if request.param == "llama"
                   else request.getfixturevalue("gpt2"))
    neurons = nv.select_neurons(stats, VALUE, sparsity=0.05)[VALUE]
    return host, stats, neurons


def make(kind: str, stats, neurons, magnitude: float = MAGNITUDE):
    """A neuron edit of rule ``kind``, or a residual edit on both layers (``residual``)."""
    if kind == "residual":
        return caa_edit(stats, VALUE, [0, 1], magnitude)
    return NeuronEdit(neurons, kind, magnitude)


def ids(edit: NeuronEdit) -> set[tuple[int, int]]:
    return set(zip(edit.neurons.layer.tolist(), edit.neurons.index.tolist()))


def summed(host, edit, stats) -> torch.Tensor:
    """(H,) the edit's residual change summed over layers."""
    return torch.stack(list(residual_change(host, edit, stats).values())).sum(0)


KINDS = [*RULES, "residual"]


@pytest.mark.parametrize("kind", KINDS)
def test_null_matches_count_and_push(model, kind):
    host, stats, neurons = model
    edit = make(kind, stats, neurons)
    null = dose_matched(host, edit, stats, seed=1)
    assert type(null) is type(edit) and null.positions == edit.positions
    target = edit_push(host, edit, stats)
    assert target > 0
    assert edit_push(host, null, stats) == pytest.approx(target, rel=1e-2)
    if kind == "residual":
        assert null.layers == edit.layers and null.coefficient == 1.0
        return
    assert null.rule == "add" and null.magnitude == 1.0
    n_layers = host.n_layers
    assert (torch.bincount(null.neurons.layer, minlength=n_layers).tolist()
            == torch.bincount(edit.neurons.layer, minlength=n_layers).tolist())
    assert len(ids(null)) == null.n_neurons == edit.n_neurons
    assert not ids(null) & ids(edit)
    # The add rule with magnitude 1 moves each neuron by exactly its stored delta; per
    # layer the |deltas| are the edit's own, permuted, times one common scale.
    scales = []
    for layer, (_, delta) in expected_change(edit, stats).items():
        got = null.neurons.mean_diff[null.neurons.layer == layer].abs().sort().values
        ref = delta.abs().sort().values
        scales.append(got[ref > 0] / ref[ref > 0])
    scales = torch.cat(scales)
    torch.testing.assert_close(scales, scales[:1].expand_as(scales), rtol=1e-4, atol=0)
    assert null.neurons.model == ModelId.from_meta(stats.meta)


def direct_delta(rule: str, neurons: ValueNeurons, stats, alpha: float) -> torch.Tensor:
    """(k,) expected activation change, written out per rule (not through the rules); the
    input-dependent rules over the histograms' points (tests/unit/test_rules.py checks those
    against captured activations)."""
    offsets = torch.tensor(layer_offsets(stats.layer_sizes))
    cols = offsets[neurons.layer] + neurons.index
    mu = stats.mean.mean(0).float()[cols]
    a, w = activation_quadrature(stats, cols)  # (k, P)
    floor = (alpha * neurons.quantile)[:, None]
    midpoint = (neurons.mean_ref + neurons.mean_diff / 2)[:, None]
    beyond = torch.where(neurons.mean_diff[:, None] < 0, a < midpoint, a > midpoint)
    return {"add": alpha * neurons.mean_diff,
            "add_sd": alpha * neurons.mean_diff.sign() * neurons.std,
            "scale": alpha * mu,  # positive polarity: every neuron is raised
            "set": (w * (a > 0) * (a.clamp(min=floor) - a)).sum(-1).float(),  # active only
            "gate_neuron": alpha * neurons.mean_diff * (w * beyond).sum(-1).float()}[rule]


@pytest.mark.parametrize("rule", RULES)
def test_push_equals_direct_computation(model, rule):
    host, stats, neurons = model
    delta = direct_delta(rule, neurons, stats, MAGNITUDE)
    total = 0.0
    for layer in range(host.n_layers):
        site = host.sites[layer]
        w = site.weight.detach()
        w = w.T if host.model.config.model_type == "gpt2" else w  # Conv1D: (I, H)
        assert w.shape == (64, 96)
        sel = neurons.layer == layer
        total += float((w[:, neurons.index[sel]] @ delta[sel]).pow(2).sum())
    got = edit_push(host, NeuronEdit(neurons, rule, MAGNITUDE), stats)
    assert got == pytest.approx(math.sqrt(total), rel=1e-5)


def test_residual_push_is_norm_of_scaled_vectors(model):
    host, stats, _ = model
    edit = caa_edit(stats, VALUE, [0, 1], 2.5)
    expected = math.sqrt(sum(float((2.5 * v).pow(2).sum()) for v in edit.vectors))
    assert edit_push(host, edit) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("kind", ["add", "scale", "residual"])
def test_seeds(tiny_host, tiny_stats, kind):
    neurons = nv.select_neurons(tiny_stats, VALUE, sparsity=0.05)[VALUE]
    edit = make(kind, tiny_stats, neurons)
    a, b = (dose_matched(tiny_host, edit, tiny_stats, seed=s) for s in (7, 7))
    c = dose_matched(tiny_host, edit, tiny_stats, seed=8)
    if kind == "residual":
        assert torch.equal(a.vectors, b.vectors) and not torch.allclose(a.vectors, c.vectors)
    else:
        assert ids(a) == ids(b) and torch.equal(a.neurons.mean_diff, b.neurons.mean_diff)
        assert ids(a) != ids(c)
    many = dose_matched_nulls(tiny_host, edit, tiny_stats, 3, seed=7)
    assert len(many) == 3
    for i, null in enumerate(many):
        one = dose_matched(tiny_host, edit, tiny_stats, seed=7 + i)
        field = "vectors" if kind == "residual" else "neurons"
        left, right = getattr(null, field), getattr(one, field)
        if kind == "residual":
            assert torch.equal(left, right)
        else:
            assert torch.equal(left.index, right.index)
            assert torch.equal(left.mean_diff, right.mean_diff)


@pytest.mark.parametrize("kind", KINDS)
def test_zero_edit_has_zero_push_and_zero_null(tiny_host, tiny_stats, kind):
    neurons = nv.select_neurons(tiny_stats, VALUE, sparsity=0.05)[VALUE]
    edit = make(kind, tiny_stats, neurons, magnitude=0.0)
    assert edit_push(tiny_host, edit, tiny_stats) == 0.0
    null = dose_matched(tiny_host, edit, tiny_stats, seed=3)
    assert edit_push(tiny_host, null, tiny_stats) == 0.0


@pytest.mark.parametrize("kind", ["add", "set", "residual"])
def test_applying_the_null_changes_the_logits(model, kind):
    host, stats, neurons = model
    null = dose_matched(host, make(kind, stats, neurons), stats, seed=2)
    batch = host.tokenize(["I help my neighbour carry boxes.", "The capital is Paris."])
    with torch.inference_mode():
        base = host.model(**batch).logits
        with nv.apply(host, null):
            edited = host.model(**batch).logits
    assert not torch.allclose(base, edited)


@pytest.mark.parametrize("kind", ["add", "scale", "residual"])
def test_null_direction_is_nearly_orthogonal(model, kind):
    host, stats, neurons = model
    edit = make(kind, stats, neurons)
    ref = summed(host, edit, stats)
    cos = [float(torch.nn.functional.cosine_similarity(
        ref, summed(host, null, stats), dim=0)) for null in
        dose_matched_nulls(host, edit, stats, 5, seed=0)]
    assert sum(abs(c) for c in cos) / len(cos) < 0.5


def test_gate_and_positions_are_carried(tiny_host, tiny_stats):
    neurons = nv.select_neurons(tiny_stats, VALUE, sparsity=0.05)[VALUE]
    gate = gate_of(tiny_stats, "context")
    edit = NeuronEdit(neurons, "add_sd", 2.0, positions="response", gate=gate)
    null = dose_matched(tiny_host, edit, tiny_stats)
    assert null.gate is gate and null.positions == "response"
    caa = caa_edit(tiny_stats, VALUE, [1], 2.0, positions="response", gate=gate)
    rnull = dose_matched(tiny_host, caa, tiny_stats)
    assert isinstance(rnull, ResidualEdit) and rnull.gate is gate
    assert rnull.positions == "response"
    # The push of a gated edit is that of the ungated one.
    ungated = NeuronEdit(neurons, "add_sd", 2.0)
    assert edit_push(tiny_host, edit) == edit_push(tiny_host, ungated)


def test_a_prompt_edits_nulls_are_placebos_of_its_length(tiny_host, tiny_stats):
    edit = prompt_edit(VALUE, 3)
    with pytest.raises(TypeError, match="prompt edit has no push"):
        edit_push(tiny_host, edit)
    nulls = dose_matched_nulls(tiny_host, edit, tiny_stats, 3, seed=5)
    assert nulls[0] == dose_matched(tiny_host, edit, tiny_stats, seed=5)
    assert len({n.text for n in nulls}) == 3  # one placebo per seed
    for n in nulls:
        assert n.kind == "prompt" and n.replace_system == edit.replace_system
        assert len(n.text.split()) == len(edit.text.split()) and n.text.endswith("\n\n")
        assert VALUE not in n.text.lower()  # value-free
    assert dose_matched(tiny_host, prompt_edit(VALUE, 0), tiny_stats).text == ""


def test_errors(tiny_host, tiny_stats):
    # every rule but add and add_sd needs the statistics (activation distributions)
    neurons = nv.select_neurons(tiny_stats, VALUE, sparsity=0.05)[VALUE]
    for rule in ("scale", "set", "gate_neuron"):
        with pytest.raises(ValueError, match="pass stats"):
            edit_push(tiny_host, NeuronEdit(neurons, rule, 1.0))
    # a layer without enough other neurons for the null
    k = 60
    big = ValueNeurons(torch.zeros(k, dtype=torch.long), torch.arange(k), torch.ones(k),
                       torch.ones(k), torch.zeros(k))
    with pytest.raises(ValueError, match="layer 0 has 96 neurons"):
        dose_matched(tiny_host, NeuronEdit(big, "add", 1.0), tiny_stats)


def test_z_score():
    assert z_score(3.0, [1.0, 2.0, 3.0]) == pytest.approx(1.0)
    assert z_score(0.0, [1.0, 3.0]) == pytest.approx(-2 / math.sqrt(2))
    assert z_score(1.0, []) is None and z_score(1.0, [2.0]) is None
    assert z_score(1.0, [2.0, 2.0, 2.0]) is None


# --- tensor parallelism: a real DeepSpeed AutoTP shard pair (gloo, CPU) via Ray --------------
