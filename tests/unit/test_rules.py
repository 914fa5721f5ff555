"""Input-dependent edit rules (set, gate_neuron): the hook against hand computations on
captured activations, and their expected change and strength from the histograms."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

import neva_sweep as nv
from neva_sweep.config import StatsConfig
from neva_sweep.edits.neuron import POSITIONS, NeuronEdit, edit_rows
from neva_sweep.methods.nulls import activation_quadrature, expected_change, mean_activation
from neva_sweep.methods.strength import neuron_magnitude, neuron_strength
from neva_sweep.neurons.gate import gate_of
from neva_sweep.neurons.selection import ValueNeurons
from neva_sweep.neurons.stats import layer_offsets
from tests.helpers import capture_site_inputs

CONDITIONED = ("set", "gate_neuron")
TEXTS = ["I help my friends.", "Rules keep order and tradition.", "Taste every dish.",
         "Plain text about the weather."]


@pytest.fixture(scope="module")
def nmap(tiny_stats):
    return nv.select_neurons(tiny_stats, sparsity=0.1)


def by_formula(a: torch.Tensor, c, edited: torch.Tensor) -> torch.Tensor:
    """a' written out: max(a (1 + s) + b, f) where ``edited`` and d (a - t) > 0, else a."""
    on = (c.direction * (a - c.threshold) > 0) & edited
    return torch.where(on, torch.maximum(a * (1 + c.scale) + c.shift, c.floor), a)


@pytest.mark.parametrize("positions", POSITIONS)
def test_rows_of_conditioned_and_plain_rules_follow_the_formula(tiny_host, nmap, positions):
    """Per row its own rule, edited positions only, on-neurons only; the rest bitwise a."""
    specs = [NeuronEdit(nmap["power"], "set", 3.0), NeuronEdit(nmap["power"], "gate_neuron", 4.0),
             NeuronEdit(nmap["power"], "add", 2.0)]
    groups = torch.tensor([0, 1, 2, -1])
    enc = tiny_host.tokenize(TEXTS, padding_side="left")
    before = capture_site_inputs(tiny_host, lambda: tiny_host.model(**enc))[0]  # (B, S, 96)
    with edit_rows(tiny_host, specs, groups, positions):
        after = capture_site_inputs(tiny_host, lambda: tiny_host.model(**enc))[0]
    vn = nmap["power"]
    sel = vn.layer == 0  # layer 0: nothing upstream is edited, so a is what the hook saw
    idx = vn.index[sel]
    assert sel.any()
    untouched = torch.ones(96, dtype=torch.bool)
    untouched[idx] = False
    assert torch.equal(after[..., untouched], before[..., untouched])
    seq = before.shape[1]
    edited = torch.ones(seq, 1, dtype=torch.bool)
    if positions == "response":  # one multi-token forward: its last position only
        edited = (torch.arange(seq) == seq - 1)[:, None]
    for row, g in enumerate(groups.tolist()):
        a = before[row][..., idx]  # (S, k)
        if g < 0:
            assert torch.equal(after[row][..., idx], a)
            continue
        c = specs[g].coefficients().take(sel)
        expected = by_formula(a, c, edited)
        assert torch.equal(after[row][..., idx], expected), specs[g].rule  # bitwise
        if specs[g].rule in CONDITIONED:  # both sides of the condition occur
            on = (c.direction * (a - c.threshold) > 0) & edited
            assert on.any() and (~on).any()


def test_set_leaves_silent_positions_silent(tiny_host, nmap):
    vn = nmap["hedonism"]
    enc = tiny_host.tokenize(TEXTS)
    before = capture_site_inputs(tiny_host, lambda: tiny_host.model(**enc))[0]
    with nv.edit(tiny_host, nmap, magnitude=5.0, rule="set", value="hedonism"):
        after = capture_site_inputs(tiny_host, lambda: tiny_host.model(**enc))[0]
    idx = vn.index[vn.layer == 0]
    a, edited = before[..., idx], after[..., idx]  # (B, S, k)
    floor = 5.0 * vn.quantile[vn.layer == 0]
    silent = a <= 0
    assert silent.any() and (~silent).any()
    assert torch.equal(edited[silent], a[silent])  # a <= 0: never switched on
    assert torch.equal(edited, torch.where(silent, a, torch.maximum(a, floor)))
    assert (edited[~silent] >= floor.expand_as(a)[~silent]).all()


def test_gate_neuron_pushes_a_negative_neuron_down_below_its_midpoint(tiny_host):
    """Two hand-made neurons of layer 0: one with mean_diff > 0, one < 0, each with its
    midpoint at the median of its own activations."""
    enc = tiny_host.tokenize(TEXTS)
    before = capture_site_inputs(tiny_host, lambda: tiny_host.model(**enc))[0]
    idx = torch.tensor([3, 40])
    a = before[enc.attention_mask.bool()][:, idx]  # (tokens, 2)
    median = a.median(0).values
    mean_diff = torch.tensor([0.02, -0.03])
    vn = ValueNeurons(torch.zeros(2, dtype=torch.long), idx, torch.tensor([1.0, -1.0]),
                      mean_diff, torch.zeros(2), std=torch.ones(2),
                      mean_ref=median - mean_diff / 2)
    c = NeuronEdit(vn, "gate_neuron", 2.0).coefficients()
    torch.testing.assert_close(c.threshold, median)  # the midpoint of mu_ref and mu_t
    assert c.direction.tolist() == [1.0, -1.0]
    t = c.threshold
    one = torch.zeros(1, dtype=torch.long)
    with edit_rows(tiny_host, [NeuronEdit(vn, "gate_neuron", 2.0)], one):
        after = capture_site_inputs(tiny_host, lambda: tiny_host.model(**enc))[0]
    b = after[enc.attention_mask.bool()][:, idx]
    up, down = a[:, 0] > t[0], a[:, 1] < t[1]
    assert up.any() and (~up).any() and down.any() and (~down).any()
    assert torch.equal(b[up, 0], a[up, 0] + 2.0 * 0.02) and torch.equal(b[~up, 0], a[~up, 0])
    assert torch.equal(b[down, 1], a[down, 1] - 2.0 * 0.03)  # lowered where a < midpoint
    assert torch.equal(b[~down, 1], a[~down, 1])


def test_gated_conditioned_edit_scales_on_neurons_only(tiny_host, tiny_stats, nmap):
    gate = gate_of(tiny_stats, "context")
    spec = NeuronEdit(nmap["power"], "gate_neuron", 4.0, gate=gate)
    enc = tiny_host.tokenize(TEXTS)
    before = capture_site_inputs(tiny_host, lambda: tiny_host.model(**enc))[0]
    with edit_rows(tiny_host, [spec], torch.zeros(len(TEXTS), dtype=torch.long)) as editor:
        after = capture_site_inputs(tiny_host, lambda: tiny_host.model(**enc))[0]
        g = editor.row_gate(len(TEXTS))[:, None, None]  # (B, 1, 1)
    sel = nmap["power"].layer == 0
    c = spec.coefficients().take(sel)
    a = before[..., nmap["power"].index[sel]]
    on = c.direction * (a - c.threshold) > 0
    torch.testing.assert_close(after[..., nmap["power"].index[sel]],
                               torch.where(on, a + g * c.shift, a))
    assert torch.equal(after[..., nmap["power"].index[sel]][~on], a[~on])


# -- expected change and strength from the histograms -------------------------------------


@pytest.fixture(scope="module")
def fine(tiny_host, small_probes):
    """Statistics on a fine histogram grid over every token, and each value's captured
    activations (T_v, N) over the same tokens."""
    cfg = StatsConfig(bins=128, hist_scale=0.02, hist_stride=1)
    probes = replace(small_probes, neutral=[])  # no gate: the neuron statistics only
    stats = nv.collect_stats(tiny_host, probes, cfg, progress=False)
    acts = []
    for label in range(10):
        enc = tiny_host.tokenize([t for t, v in zip(probes.texts, probes.labels) if v == label])
        seen = capture_site_inputs(tiny_host, lambda e=enc: tiny_host.model(**e))
        acts.append(torch.cat(seen, -1)[enc.attention_mask.bool()].double())  # (T_v, N)
    torch.testing.assert_close(torch.stack([x.mean(0) for x in acts]), stats.mean.double(),
                               atol=1e-6, rtol=1e-4)  # the same tokens as the statistics
    return stats, acts


def direct_change(rule: str, edit: NeuronEdit, stats, acts) -> torch.Tensor:
    """(k,) E[rule(a) - a] written out on the captured activations, ten values equal."""
    vn = edit.neurons
    cols = torch.tensor(layer_offsets(stats.layer_sizes))[vn.layer] + vn.index
    c = edit.coefficients()
    per_value = []
    for x in acts:
        a = x[:, cols]  # (T_v, k)
        if rule == "set":
            change = (torch.maximum(a, c.floor.double()) - a) * (a > 0)
        else:  # gate_neuron: the shift where the neuron sits beyond its midpoint
            on = torch.where(c.direction > 0, a > c.threshold, a < c.threshold)
            change = c.shift.double() * on
        per_value.append(change.mean(0))
    return torch.stack(per_value).mean(0)


def in_neuron_order(change: dict, vn: ValueNeurons) -> torch.Tensor:
    out = torch.empty(len(vn))
    for layer, (index, delta) in change.items():
        pos = (vn.layer == layer).nonzero().flatten()
        assert torch.equal(vn.index[pos], index)
        out[pos] = delta
    return out


@pytest.mark.parametrize("rule,magnitude", [("set", 1.0), ("set", 2.5), ("gate_neuron", 1.0)])
def test_expected_change_from_histograms_matches_captured_activations(fine, rule, magnitude):
    stats, acts = fine
    vn = nv.select_neurons(stats, "power", sparsity=0.1)["power"]
    edit = NeuronEdit(vn, rule, magnitude)
    got = in_neuron_order(expected_change(edit, stats), vn).double()
    want = direct_change(rule, edit, stats, acts)
    assert want.abs().sum() > 0
    c = edit.coefficients()
    resolved = c.threshold >= 0  # the grid resolves a > 0; a <= 0 is a fitted exponential
    assert resolved.any()
    torch.testing.assert_close(got[resolved], want[resolved], rtol=0.02,
                               atol=1e-3 * float(want.abs().max()))
    # thresholds below zero lean on the exponential model of the negative side
    assert (got - want).norm() <= 0.1 * want.norm()


def test_quadrature_points_are_a_distribution_with_each_neurons_mean(tiny_stats):
    cols = torch.arange(tiny_stats.n_neurons)
    a, w = activation_quadrature(tiny_stats, cols)  # (N, P)
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(len(cols), dtype=torch.float64))
    # E[a] = mu exactly, but where a value's subsampled histogram alone overshoots its mean
    # (its negative side would need a mean > 0) or holds no a <= 0 to absorb the difference
    mean = (w * a).sum(-1)
    mu = mean_activation(tiny_stats).double()
    exact = (mean - mu).abs() <= 1e-6 * mu.abs().max()
    assert exact.float().mean() > 0.9
    torch.testing.assert_close(mean, mu, rtol=0, atol=0.05 * float(mu.abs().max()))


@pytest.mark.parametrize("rule", CONDITIONED)
def test_strength_round_trips_for_conditioned_rules(tiny_stats, rule):
    vn = nv.select_neurons(tiny_stats, "power", sparsity=0.05)["power"]
    unit = neuron_strength(vn, rule, 1.0, tiny_stats)
    linear = math.isclose(neuron_strength(vn, rule, 2.0, tiny_stats), 2 * unit, rel_tol=1e-6)
    assert linear == (rule == "gate_neuron")  # gate_neuron by division, set by bisection
    for strength in (0.5 * unit, 3.0 * unit):
        magnitude = neuron_magnitude(vn, rule, strength, tiny_stats)
        assert neuron_strength(vn, rule, magnitude, tiny_stats) == pytest.approx(strength,
                                                                                 rel=1e-3)
    if rule == "gate_neuron":
        assert neuron_magnitude(vn, rule, 3.0 * unit, tiny_stats) == pytest.approx(3.0,
                                                                                   rel=1e-9)


def test_conditioned_rules_need_statistics(nmap):
    with pytest.raises(ValueError, match="needs the statistics"):
        expected_change(NeuronEdit(nmap["power"], "gate_neuron", 2.0))
    old = replace(nmap["power"], mean_ref=None)
    with pytest.raises(ValueError, match="select the neurons again"):
        expected_change(NeuronEdit(old, "gate_neuron", 2.0))
