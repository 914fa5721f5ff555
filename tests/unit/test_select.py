import math
from dataclasses import replace

import pytest
import torch

import neva_sweep as nv
from neva_sweep.neurons.selection import NeuronMap, lape_score, mean_diff_score, prob_diff_score
from neva_sweep.neurons.stats import NeuronStats
from neva_sweep.values import N_VALUES, VALUES


def synthetic_stats() -> NeuronStats:
    """Two layers of 3 neurons; neuron (layer 1, index 2) is specific to `power` (t = 4)."""
    s = NeuronStats.zeros([3, 3], bins=8)
    s.count[:] = 101.0
    s.m2[:] = 100.0  # var = 1 for every value and neuron
    s.positive[:] = 50.5  # p = 0.5
    s.mean[4, 5] = 2.0
    s.positive[4, 5] = 101.0  # p = 1 for power
    s.mean[8, 0] = 1.0  # a weaker benevolence neuron
    return s


def test_mean_diff_is_cohens_d_against_balanced_rest():
    s = synthetic_stats()
    d = mean_diff_score(s)
    # rest of power at neuron 5: mean 0, var 1 -> d = 2 / sqrt((1 + 1) / 2) = 2
    assert d[4, 5].item() == pytest.approx(2.0)
    # any other value at neuron 5: mean 0 vs rest mean 2/9, rest var = 1 + mean of m^2 - m_rest^2
    rest_mean = 2.0 / 9
    rest_var = 1 + 4.0 / 9 - rest_mean**2
    assert d[0, 5].item() == pytest.approx(-rest_mean / math.sqrt((1 + rest_var) / 2))


def test_prob_diff_and_lape():
    s = synthetic_stats()
    p = prob_diff_score(s)
    assert p[4, 5].item() == pytest.approx(1.0 - 0.5)
    lape = lape_score(s)
    assert lape[4, 5] == lape[:, 5].max() and torch.isfinite(lape[4, 5])
    assert torch.isneginf(lape[:, 0]).all() or lape[:, 0].max() < lape[4, 5]


def test_top_k_by_sparsity_window_and_exclusivity(tiny_stats):
    n = tiny_stats.n_neurons  # 192
    nmap = nv.select_neurons(tiny_stats, sparsity=0.05)
    k = math.ceil(0.05 * n)
    assert all(len(nmap[v]) == k for v in VALUES)
    scores = mean_diff_score(tiny_stats)
    best = scores[VALUES.index("power")].topk(k).indices
    assert set(zip(nmap["power"].layer.tolist(), nmap["power"].index.tolist())) == {
        (int(i) // 96, int(i) % 96) for i in best}
    windowed = nv.select_neurons(tiny_stats, sparsity=0.05, layer_window=[1, 2])
    assert all((windowed[v].layer == 1).all() for v in VALUES)
    excl = nv.select_neurons(tiny_stats, sparsity=0.05, exclusive=True)
    ids = [excl.ids(v) for v in VALUES]
    assert sum(len(a) for a in ids) == len(set().union(*ids))
    assert all(excl.jaccard()[a][b] == 0 for a in VALUES for b in VALUES if a != b)
    assert all(excl.jaccard()[v][v] == 1 for v in VALUES)


def test_edit_quantities_carried_by_the_map(tiny_stats):
    from neva_sweep.neurons.stats import rest_stats

    vn = nv.select_neurons(tiny_stats, "security", sparsity=0.05)["security"]
    t = VALUES.index("security")
    cols = vn.layer * 96 + vn.index
    mean_rest = rest_stats(tiny_stats)[0]
    expected = (tiny_stats.mean[t, cols] - mean_rest[t, cols]).float()
    torch.testing.assert_close(vn.mean_diff, expected)
    torch.testing.assert_close(vn.mean_ref, mean_rest[t, cols].float())  # gate_neuron's
    torch.testing.assert_close(vn.quantile, tiny_stats.quantile()[t, cols].float())
    rand = nv.random_neurons(tiny_stats, "security", 10, seed=1)
    torch.testing.assert_close(rand.mean_ref, mean_rest[t, rand.layer * 96 + rand.index].float())


def test_map_save_load_and_summary(tmp_path, tiny_stats):
    nmap = nv.select_neurons(tiny_stats, ["power", "universalism"], sparsity=0.02)
    nmap.save(tmp_path / "m.safetensors")
    back = NeuronMap.load(tmp_path / "m.safetensors")
    assert back.values == ["power", "universalism"] and back.meta == nmap.meta
    for v in back.values:
        for f in ("layer", "index", "score", "mean_diff", "quantile", "std", "mean_ref"):
            assert torch.equal(getattr(back[v], f), getattr(nmap[v], f))
    summary = nmap.summary(top=3)
    assert sum(summary["values"]["power"]["per_layer"]) == len(nmap["power"])
    assert len(summary["values"]["power"]["top"]) == 3
    with pytest.raises(KeyError, match="holds: power, universalism"):
        nmap["security"]


def test_random_neurons_are_seeded(tiny_stats):
    a = nv.random_neurons(tiny_stats, "power", 10, seed=1)
    b = nv.random_neurons(tiny_stats, "power", 10, seed=1)
    c = nv.random_neurons(tiny_stats, "power", 10, seed=2)
    assert torch.equal(a.index, b.index) and not torch.equal(a.index, c.index)


@pytest.mark.parametrize("kwargs, message", [
    (dict(sparsity=0.0), "sparsity must be in \\(0, 1\\) \\(edit.sparsity\\)"),
    (dict(sparsity=1.5), "edit.sparsity"),
    (dict(score="cosine"), "unknown score 'cosine'; valid choices: mean_diff, contrast_d, "
                           "prob_diff, pairs_d, lape"),
    (dict(polarity="negative"), "unknown polarity 'negative' \\(edit.polarity\\); valid "
                                "choices: positive, both"),
    (dict(polarity="both", score="lape"), "polarity=both needs a signed score"),
    (dict(value="kindness"), "unknown value 'kindness'"),
    (dict(layer_window=[1, 5]), "layer_window must be"),
])
def test_selection_errors(tiny_stats, kwargs, message):
    with pytest.raises((ValueError, KeyError), match=message):
        nv.select_neurons(tiny_stats, **kwargs)


def test_all_scores_select_for_every_value(tiny_stats):
    # attribution reads the pairs' gradients (stats.attribution): a stand-in here, the score
    # itself is checked against a real gradient pass in tests/unit/test_attribution.py
    grad = torch.randn(tiny_stats.mean.shape, generator=torch.Generator().manual_seed(0),
                       dtype=torch.float64)
    stats = replace(tiny_stats, pair_grad=grad)
    for score in nv.SCORES:
        nmap = nv.select_neurons(stats, sparsity=0.05, score=score)
        assert len(nmap.values) == N_VALUES


def test_contrast_d_is_cohens_d_against_the_circumplex_opposites():
    s = synthetic_stats()
    # power (t = 4) is opposed by self_direction, benevolence and universalism; give
    # neuron 1 a high mean for benevolence only: power's rest mean is 3/9, its opposites' 1
    s.mean[8, 1] = 3.0
    d = nv.SCORES["contrast_d"](s)
    opp_var = 1 + 9.0 / 3 - 1.0**2  # mixture of (0, 0, 3) with unit variances
    assert d[4, 1].item() == pytest.approx(-1.0 / math.sqrt((1 + opp_var) / 2))
    # neuron 5 is power's: its opposites all have mean 0, var 1, so d = 2 as for the rest
    assert d[4, 5].item() == pytest.approx(2.0)
    # the add direction is taken against the same reference
    vn = nv.select_neurons(s, "power", sparsity=0.2, score="contrast_d",
                           polarity="both")["power"]
    assert set(zip(vn.index.tolist(), vn.score.sign().tolist())) == {(2, 1.0), (1, -1.0)}
    assert vn.mean_diff[vn.index == 1].item() == pytest.approx(-1.0)


def test_polarity_both_keeps_the_largest_abs_scores(tiny_stats):
    pos = nv.select_neurons(tiny_stats, "power", sparsity=0.05)["power"]
    both = nv.select_neurons(tiny_stats, "power", sparsity=0.05, polarity="both")["power"]
    assert len(both) == len(pos) and (pos.score > 0).all()
    assert (both.score < 0).any()  # anti-specific neurons are chosen too
    d = nv.SCORES["mean_diff"](tiny_stats)[VALUES.index("power")]
    assert both.score.abs().min() >= d.abs().topk(len(both)).values.min() - 1e-6
    # the add direction of an anti-specific neuron points down: the edit damps it
    assert ((both.mean_diff < 0) == (both.score < 0)).all()


def test_positive_polarity_never_picks_anti_specific_neurons(tiny_stats):
    """Past the neurons scoring > 0, top-k stops: a large sparsity gives fewer neurons,
    never anti-specific ones (rule set would refuse them)."""
    d = nv.SCORES["mean_diff"](tiny_stats)[VALUES.index("power")]
    wide = nv.select_neurons(tiny_stats, "power", sparsity=0.9)["power"]
    assert (wide.score > 0).all() and len(wide) == int((d > 0).sum())
    assert len(wide) < math.ceil(0.9 * tiny_stats.n_neurons)
    nv.make_edit(tiny_stats, "power", "neva", sparsity=0.9, rule="set")  # builds
