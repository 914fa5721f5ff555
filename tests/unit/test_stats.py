"""Statistics against a brute-force computation; merge/concat against one-shot results."""

import math

import pytest
import torch

import neva_sweep as nv
from neva_sweep.neurons.stats import (
    StatsConfig,
    cached_stats,
    concat,
    histogram_quantile,
    length_sorted_batches,
    merge,
    rest_stats,
    select_columns,
    softsign_bins,
)
from neva_sweep.values import N_VALUES
from tests.helpers import capture_site_inputs


def brute_force(host, probes, cfg: StatsConfig):
    """Every non-pad token's activations, with value label and position in its text."""
    acts, labels, positions = [], [], []
    for idx in length_sorted_batches(probes, cfg.batch_size):
        enc = host.tokenize([probes.texts[i] for i in idx], max_length=cfg.max_length)
        seen = capture_site_inputs(host, lambda enc=enc: host.model(**enc))
        full = torch.cat(seen, dim=-1)  # (B, S, N)
        for row, i in enumerate(idx):
            n = int(enc.attention_mask[row].sum())
            acts.append(full[row, :n].double())
            labels += [probes.labels[i]] * n
            positions += list(range(n))
    return torch.cat(acts), torch.tensor(labels), torch.tensor(positions)


def test_statistics_equal_brute_force(tiny_host, small_probes, tiny_stats):
    cfg = StatsConfig()
    acts, labels, positions = brute_force(tiny_host, small_probes, cfg)
    for v in range(N_VALUES):
        a = acts[labels == v]  # (T_v, N)
        assert tiny_stats.count[v] == a.shape[0]
        torch.testing.assert_close(tiny_stats.mean[v], a.mean(0), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(tiny_stats.var[v], a.var(0), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(tiny_stats.prob[v], (a > 0).double().mean(0))
        sub = acts[(labels == v) & (positions % cfg.hist_stride == 0)].float()
        bins = softsign_bins(sub.clone(), cfg.bins, cfg.hist_scale)  # (T, N)
        expected = torch.stack([torch.bincount(bins[:, i], minlength=cfg.bins)
                                for i in range(sub.shape[1])])
        assert torch.equal(tiny_stats.hist[v], expected.to(torch.int32))
        # The histogram quantile lies in the bin of the order statistic of rank ceil(q * n)
        # (or on its upper edge).
        rank = math.ceil(cfg.quantile * sub.shape[0]) - 1
        exact = sub.sort(0).values[rank]
        approx = tiny_stats.quantile()[v].float()
        gap = softsign_bins(approx, cfg.bins, cfg.hist_scale) - softsign_bins(
            exact, cfg.bins, cfg.hist_scale)
        assert gap.min() >= 0 and gap.max() <= 1
        assert torch.all(approx[exact <= 0] == 0)


def test_merge_of_data_shards_equals_one_shot(tiny_host, small_probes):
    cfg = StatsConfig(batch_size=1)  # no padding: identical activations in every run
    one_shot = nv.collect_stats(tiny_host, small_probes, cfg, progress=False)
    parts = [nv.collect_stats(tiny_host, small_probes.shard(r, 3), cfg, progress=False)
             for r in range(3)]
    merged = merge(merge(parts[0], parts[1]), parts[2])
    assert torch.equal(merged.count, one_shot.count)
    assert torch.equal(merged.hist, one_shot.hist)
    assert torch.equal(merged.positive, one_shot.positive)
    torch.testing.assert_close(merged.mean, one_shot.mean, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(merged.m2, one_shot.m2, atol=1e-12, rtol=1e-9)


def test_concat_of_uneven_neuron_shards_equals_one_shot(tiny_stats):
    # Three tensor-parallel-like shards with uneven widths per layer (96 = 40 + 31 + 25).
    cuts = [(0, 40), (40, 71), (71, 96)]
    shards = [select_columns(tiny_stats, [c] * 2) for c in cuts]
    assert shards[1].layer_sizes == [31, 31]
    joined = concat(shards)
    assert joined.layer_sizes == tiny_stats.layer_sizes
    for name in ("mean", "m2", "positive", "hist"):
        assert torch.equal(getattr(joined, name), getattr(tiny_stats, name))


def test_merge_rejects_different_neurons(tiny_stats):
    with pytest.raises(ValueError, match="different neurons"):
        merge(tiny_stats, select_columns(tiny_stats, [(0, 10), (0, 10)]))


def test_rest_statistics_are_balanced(tiny_stats):
    mean_rest, var_rest, prob_rest = rest_stats(tiny_stats)
    t = 3
    others = [j for j in range(N_VALUES) if j != t]
    torch.testing.assert_close(mean_rest[t], tiny_stats.mean[others].mean(0))
    torch.testing.assert_close(prob_rest[t], tiny_stats.prob[others].mean(0))
    mixture = (tiny_stats.var[others] + tiny_stats.mean[others] ** 2).mean(0) - mean_rest[t] ** 2
    torch.testing.assert_close(var_rest[t], mixture)


def test_histogram_quantile_on_known_data():
    scale, bins = 0.2, 32
    x = torch.linspace(-0.5, 2.0, 10001)
    counts = torch.bincount(softsign_bins(x.clone(), bins, scale), minlength=bins)
    q = histogram_quantile(counts[None].int(), 0.95, scale)
    exact = torch.quantile(x, 0.95)
    assert abs(float(q) - float(exact)) < 0.1  # bins near 1.9 are ~0.7 wide


def test_save_load_and_cache(tmp_path, tiny_host, small_probes, tiny_stats):
    path = tmp_path / "s.safetensors"
    tiny_stats.save(path)
    back = nv.NeuronStats.load(path)
    assert back.layer_sizes == tiny_stats.layer_sizes
    assert back.meta["data_hash"] == small_probes.sha256 and back.meta["model"] == "tiny-llama"
    for name in ("count", "mean", "m2", "positive", "hist"):
        assert torch.equal(getattr(back, name), getattr(tiny_stats, name))
    cfg = StatsConfig()
    first = cached_stats(tiny_host, small_probes, cfg, tmp_path / "cache", progress=False)
    files = list((tmp_path / "cache").iterdir())
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    again = cached_stats(tiny_host, small_probes, cfg, tmp_path / "cache", progress=False)
    assert files[0].stat().st_mtime_ns == mtime and torch.equal(again.mean, first.mean)
    # Another statistics config is another cache entry.
    cached_stats(tiny_host, small_probes, StatsConfig(bins=16), tmp_path / "cache", progress=False)
    assert len(list((tmp_path / "cache").iterdir())) == 2
