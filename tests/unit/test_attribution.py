"""Attribution patching (neurons/attribution.py): G against finite differences, padding,
clean-up."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from neva_sweep.models.host import host_from_model
from neva_sweep.models.registry import tiny_model
from neva_sweep.neurons.attribution import pair_counts, pair_gradients, reply_mask
from neva_sweep.values import VALUES

PAIRS = [
    {"value": "benevolence", "situation": "Your neighbour is ill and alone.",
     "pro": "I bring her soup and sit with her for the evening.", "anti": "I ignore it."},
    {"value": "benevolence", "situation": "A friend asks for help moving.",
     "pro": "Of course, I will be there.", "anti": "No, I have better things to do today."},
    {"value": "power", "situation": "The team needs a leader.",
     "pro": "I take charge and tell everyone what to do.", "anti": "Someone else should."},
]


def _reply_logprob(host, situation: str, reply: str) -> float:
    """log P(reply | situation), one text at a time (an independent reference)."""
    tok = host.tokenizer
    context = tok(situation).input_ids
    ids = tok(f"{situation} {reply}", return_tensors="pt").input_ids
    assert ids[0, : len(context)].tolist() == context  # the boundary does not merge here
    with torch.no_grad():
        logp = torch.log_softmax(host.model(input_ids=ids).logits[0, :-1].double(), -1)
    targets = ids[0, 1:]
    return float(logp[torch.arange(len(targets)), targets][len(context) - 1 :].sum())


def _margin(host, pairs, layer: int, neuron: int, eps: float) -> float:
    """Mean pro-minus-anti reply log-prob with neuron ``neuron`` of ``layer`` moved by eps
    at every position."""

    def hook(module, args):
        x = args[0].clone()
        x[..., neuron] += eps  # (B, S, I), or OPT's (B*S, I)
        return (x,)

    handle = host.sites[layer].register_forward_pre_hook(hook)
    try:
        return sum(_reply_logprob(host, p["situation"], p["pro"])
                   - _reply_logprob(host, p["situation"], p["anti"]) for p in pairs) / len(pairs)
    finally:
        handle.remove()


# (arch, eps, rel): OPT (whose neuron site sees (B*S, I)) runs wholly in float64; its ReLUs
# need steps small enough not to cross a kink. Llama's RMSNorm computes in float32 even in a
# float64 model, so its margin is noisy at ~1e-7: a larger step (smooth SiLU, O(eps^2)
# error) and a looser match, still far tighter than any wrong weighting or offset.
FD_CASES = [("tiny-opt", 1e-4, 1e-6), ("tiny-llama", 1e-2, 1e-3)]


@pytest.mark.parametrize(("arch", "eps", "rel"), FD_CASES)
def test_gradient_matches_finite_difference(arch, eps, rel):
    model, tok = tiny_model(arch, torch.float64)
    host = host_from_model(model, tok, arch)
    g = pair_gradients(host, PAIRS, batch_size=2)  # batches mix values and lengths
    t = VALUES.index("benevolence")
    mine = [p for p in PAIRS if p["value"] == "benevolence"]
    for layer, neuron in [(0, 5), (1, 70)]:
        gid = sum(host.layer_sizes[:layer]) + neuron  # layer-major global id
        fd = (_margin(host, mine, layer, neuron, eps)
              - _margin(host, mine, layer, neuron, -eps)) / (2 * eps)
        assert g[t, gid].item() == pytest.approx(fd, rel=rel)
        assert abs(fd) > 1e-6  # a real signal, not 0 == 0


def test_shape_order_and_empty_values(tiny_host):
    g = pair_gradients(tiny_host, PAIRS)
    assert g.shape == (len(VALUES), tiny_host.n_neurons) and g.dtype == torch.float64
    used = {VALUES.index("benevolence"), VALUES.index("power")}
    for t in range(len(VALUES)):
        assert (g[t].abs().sum() > 0) == (t in used)  # values without pairs: zero rows
    assert pair_counts(PAIRS).tolist() == [2 if v == "benevolence" else v == "power"
                                           for v in VALUES]
    # Relabelling the pairs moves their row, unchanged.
    moved = pair_gradients(tiny_host, [{**p, "value": "tradition"} for p in PAIRS[:2]])
    assert torch.allclose(moved[VALUES.index("tradition")], g[VALUES.index("benevolence")],
                          rtol=1e-5, atol=1e-7)
    # Swapping pro and anti flips the sign.
    flipped = pair_gradients(tiny_host, [{**p, "pro": p["anti"], "anti": p["pro"]}
                                         for p in PAIRS[2:]])
    assert torch.allclose(flipped, -g * (torch.arange(len(VALUES)) == VALUES.index("power"))
                          .double()[:, None], rtol=1e-5, atol=1e-7)


def test_padding_invariance(tiny_host):
    alone = pair_gradients(tiny_host, PAIRS, batch_size=1)
    together = pair_gradients(tiny_host, PAIRS, batch_size=len(PAIRS) * 2)
    assert torch.allclose(alone, together, rtol=1e-4, atol=1e-6)


def test_reply_mask_left_and_right_padding(tiny_host):
    texts = ["Short one.", "A much longer text with many more tokens in it."]
    n_reply = torch.tensor([2, 4])
    picked = []
    for side in ("left", "right"):
        enc = tiny_host.tokenize(texts, padding_side=side)
        mask = reply_mask(enc.attention_mask, n_reply)
        assert mask.sum(1).tolist() == [2, 4]
        picked.append([enc.input_ids[b][mask[b]].tolist() for b in range(2)])
    ids = tiny_host.tokenizer(texts).input_ids
    assert picked[0] == picked[1] == [ids[0][-2:], ids[1][-4:]]


def test_no_parameter_grads_hooks_removed_and_state_restored(tiny_host):
    model = tiny_host.model
    hooks = [len(s._forward_pre_hooks) for s in tiny_host.sites]
    model.train()
    try:
        with torch.inference_mode():  # callers' inference mode does not stop the pass
            g = pair_gradients(tiny_host, PAIRS[:1])
        assert model.training
    finally:
        model.eval()
    assert g.abs().sum() > 0
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert [len(s._forward_pre_hooks) for s in tiny_host.sites] == hooks


def test_refuses_tensor_parallel_shards(tiny_host):
    with pytest.raises(ValueError, match="tp_size=1"):
        pair_gradients(replace(tiny_host, meta={**tiny_host.meta, "tp_size": 2}), PAIRS)
    half = [(0, size // 2) for size in tiny_host.layer_sizes]
    with pytest.raises(ValueError, match="tp_size=1"):
        pair_gradients(replace(tiny_host, neuron_slices=half), PAIRS)


def test_bad_records_and_lengths(tiny_host):
    with pytest.raises(ValueError, match="unknown value 'kindness'.*benevolence"):
        pair_gradients(tiny_host, [{**PAIRS[0], "value": "kindness"}])
    with pytest.raises(ValueError, match="lacks field.*anti"):
        pair_gradients(tiny_host, [{k: v for k, v in PAIRS[0].items() if k != "anti"}])
    with pytest.raises(ValueError, match="no reply token within max_length=4"):
        pair_gradients(tiny_host, PAIRS[:1], max_length=4)


# --- the attribution score, from statistics collected with stats.attribution -------------------
def test_attribution_score_from_collected_statistics(tiny_host, small_probes, tmp_path):
    import neva_sweep as nv
    from neva_sweep.config import StatsConfig
    from neva_sweep.neurons.selection import SCORES, select_neurons
    from neva_sweep.neurons.stats import NeuronStats, rest_stats
    from neva_sweep.values import VALUES

    stats = nv.collect_stats(tiny_host, small_probes, StatsConfig(attribution=True),
                             progress=False)
    records = [{"value": VALUES[p.label], "situation": p.situation, "pro": p.pro,
                "anti": p.anti} for p in small_probes.pairs]
    grad = pair_gradients(tiny_host, records, batch_size=8)
    assert torch.equal(stats.pair_count, pair_counts(records).double())
    mean = stats.pair_grad / stats.pair_count[:, None]
    assert torch.allclose(mean, grad, rtol=1e-5, atol=1e-9)
    score = SCORES["attribution"](stats)
    assert torch.allclose(score, (stats.mean - rest_stats(stats)[0]) * grad, rtol=1e-5,
                          atol=1e-12)
    t = VALUES.index("power")
    chosen = select_neurons(stats, "power", sparsity=0.05, score="attribution")["power"]
    offsets = torch.tensor([0, *torch.tensor(stats.layer_sizes).cumsum(0)[:-1].tolist()])
    ids = set((offsets[chosen.layer] + chosen.index).tolist())
    assert ids == set(score[t].float().topk(len(chosen)).indices.tolist())
    stats.save(tmp_path / "s.safetensors")
    assert torch.equal(NeuronStats.load(tmp_path / "s.safetensors").pair_grad, stats.pair_grad)
    with pytest.raises(ValueError, match="stats.attribution=true"):
        SCORES["attribution"](replace(stats, pair_grad=None))


def test_a_configured_attribution_score_switches_the_gradient_pass_on():
    from neva_sweep.builders import stats_settings
    from neva_sweep.config import compose_config

    assert not stats_settings(compose_config())[1].attribution
    cfg = compose_config("search.space.scores=[mean_diff,attribution]")
    assert stats_settings(cfg)[1].attribution
    assert stats_settings(compose_config("edit.score=attribution"))[1].attribution
