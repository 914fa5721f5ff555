"""Half precision (bfloat16, float16) on CPU: edits, statistics, judge, metrics, one trial.

Large models run in bfloat16 on GPUs; these tests pin down on CPU, with tiny random
models of two architectures, that half precision changes nothing it must not change
(magnitude-0 edits stay bitwise the unedited model; statistics accumulate in float32)
and moves the rest only by rounding. The reference is the same model in float32: the
half-precision weights cast up, which is exact, so the only difference left is the
precision of the arithmetic.

Tolerances are stated per quantity in units of the dtype's machine epsilon
(``torch.finfo(dtype).eps``: 2**-7 for bfloat16, 2**-10 for float16), with a margin of
about four over what these models show, and each is far below what a real precision bug
(a log-softmax or a statistics sum kept in half precision) produces; see each test.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import neva_sweep as nv
from neva_sweep.config import JudgeConfig, compose_config
from neva_sweep.data import ProbeSet
from neva_sweep.edits.neuron import RULES, NeuronEdit, edit_rows
from neva_sweep.evaluation.capability import CapabilityConfig
from neva_sweep.evaluation.evaluator import Evaluator
from neva_sweep.models.host import DTYPES, ModelHost, host_from_model
from neva_sweep.neurons.stats import StatsConfig, collect_stats
from neva_sweep.sweep import worker
from neva_sweep.sweep.run import eval_setup
from tests.helpers import StatsRef

ARCHS = ("tiny-llama", "tiny-qwen2")
HALF = ("bfloat16", "float16")
TEXTS = ["I help my neighbour carry boxes.", "Power and wealth matter most.", "Hi"]


def eps(dtype: str) -> float:
    return torch.finfo(DTYPES[dtype]).eps


class Pair:
    """A half-precision host and its float32 twin (the same weights, cast up exactly)."""

    def __init__(self, arch: str, dtype: str):
        self.arch, self.dtype, self.eps = arch, dtype, eps(dtype)
        self.half = nv.load_model(arch, dtype=dtype)
        self.full = host_from_model(copy.deepcopy(self.half.model).float(),
                                    self.half.tokenizer, self.half.name,
                                    meta=dict(self.half.meta, dtype="float32"))


@pytest.fixture(scope="module", params=[(a, d) for a in ARCHS for d in HALF],
                ids=lambda p: f"{p[0]}-{p[1]}")
def pair(request) -> Pair:
    return Pair(*request.param)


@pytest.fixture(scope="module")
def full_stats(pair, small_probes) -> nv.NeuronStats:
    return collect_stats(pair.full, small_probes, progress=False)


@pytest.fixture(scope="module")
def nmap(full_stats) -> nv.NeuronMap:
    return nv.select_neurons(full_stats, sparsity=0.25)


def test_twin_has_the_same_weights(pair):
    for (name, a), (_, b) in zip(pair.half.model.state_dict().items(),
                                 pair.full.model.state_dict().items()):
        assert a.dtype in (DTYPES[pair.dtype], torch.int64, torch.bool), name
        assert b.dtype != DTYPES[pair.dtype], name
        assert torch.equal(a.to(b.dtype), b), name


# --- magnitude 0 is the unedited model, bitwise -------------------------------------------


@pytest.mark.parametrize("positions", ["all", "response"])
@pytest.mark.parametrize("rule", list(RULES))
@torch.inference_mode()
def test_zero_magnitude_is_bitwise_identity(pair, nmap, rule, positions):
    host = pair.half
    batch = host.tokenize(TEXTS)
    base = host.model(**batch).logits  # (B, S, vocab) in the half dtype
    assert base.dtype == DTYPES[pair.dtype] and torch.isfinite(base).all()
    specs = [NeuronEdit(nmap["power"], rule, 0.0), NeuronEdit(nmap["power"], rule, 20.0)]
    # Row 0: magnitude 0; row 1: a live edit in the same batch; row 2: no edit.
    with edit_rows(host, specs, torch.tensor([0, 1, -1]), positions):
        out = host.model(**batch).logits
    assert torch.equal(out[0], base[0]) and torch.equal(out[2], base[2])
    assert not torch.equal(out[1], base[1])  # the hooks were live


def test_zero_magnitude_judge_is_bitwise_unedited(pair, nmap):
    """The whole scoring path (KV-cached option scoring, left padding) in half precision."""
    ev = Evaluator(pair.half, JudgeConfig(scenarios_limit=2))
    base = ev.judge.judge(pair.half, (None,), "all")[0]
    zero = ev.judge.judge(pair.half, [NeuronEdit(nmap["power"], "add", 0.0)], "all")[0]
    assert np.isfinite(base.raw).all()
    assert np.array_equal(zero.raw, base.raw) and np.array_equal(zero.E, base.E)


# --- statistics -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", HALF)
def test_statistics_accumulate_in_float32(dtype):
    """Activations 64 and 64.5 (exact in both half dtypes) on alternate positions.

    Every sum the accumulator forms is then exact in float32 (multiples of 1/4 below
    2**24), so mean and variance must come out exact. Kept in the model dtype the sums
    would be rounded (bfloat16: 8 significant bits, ~0.2% of a sum near 1e4, the mean off
    by ~0.1 against a standard deviation of 0.25; float16: the sum of squares, ~6.6e5,
    overflows to inf).
    """
    host = nv.load_model("tiny-llama", dtype=dtype)
    text = "I help my neighbour carry boxes to the new house."
    probes = ProbeSet((text,) * 16, (3,) * 16, "crafted", "identify", None)  # no padding
    seen: list[torch.Tensor] = []

    def craft(module, args):
        x = args[0]  # (B, S, I) activations entering the down-projection
        pos = torch.arange(x.shape[1]) % 2  # (S,)
        y = (64 + 0.5 * pos)[None, :, None].expand_as(x).to(x.dtype).contiguous()
        seen.append(y.double())
        return (y, *args[1:])

    # Registered before collect_stats' own hooks, so they see the crafted activations.
    handle = host.sites[0].register_forward_pre_hook(craft)
    try:
        stats = collect_stats(host, probes, StatsConfig(batch_size=8), progress=False)
    finally:
        handle.remove()
    assert len(seen) == 2  # two batches: the cross-batch (Chan) update is exercised
    acts = torch.cat([s.reshape(-1, s.shape[-1]) for s in seen])  # (T, I) float64
    width = host.layer_sizes[0]
    assert stats.count[3] == acts.shape[0]
    torch.testing.assert_close(stats.mean[3, :width], acts.mean(0), rtol=1e-12, atol=0)
    torch.testing.assert_close(stats.var[3, :width], acts.var(0), rtol=1e-9, atol=0)
    assert (stats.prob[3, :width] == 1).all()


def test_statistics_match_float32(pair, small_probes, full_stats):
    """Half-precision statistics against the float32 twin's on the same probes.

    Each activation carries rounding errors of a few eps of its size (two layers of
    half-precision arithmetic); averaged over tokens these move a neuron's mean by well
    under one eps standard deviation (measured: <= 0.42 eps) and its variance by under
    1.5 eps relative. P(a > 0) moves where activations within rounding of 0 flip sign:
    at most one or two tokens of a value's ~40-100 (measured <= 0.031). The quantile
    moves by at most one histogram bin (bins are 1/31 wide in y = a / (a + 0.2)).
    """
    half = collect_stats(pair.half, small_probes, progress=False)
    full, e = full_stats, pair.eps
    assert torch.equal(half.count, full.count) and half.mean.dtype == torch.float64
    sd = full.var.sqrt()
    assert ((half.mean - full.mean).abs() <= 2 * e * sd + 1e-9).all()
    assert ((half.var - full.var).abs() <= 4 * e * full.var + 1e-12).all()
    assert (half.prob - full.prob).abs().max() <= 0.05
    scale = full.meta["config"]["hist_scale"]
    y_half, y_full = (q / (q + scale) for q in (half.quantile(), full.quantile()))
    assert (y_half - y_full).abs().max() <= 1 / 31 + 1e-9
    resid = full.resid_mean
    assert ((half.resid_mean - resid).abs() <= 2 * e * resid.abs().max()).all()


# --- the judge and the metrics ----------------------------------------------------------------


def trial_evaluator(host: ModelHost) -> Evaluator:
    """The sweep's trial settings (forced choice, no MC, KL on neutral texts), fewer items."""
    return Evaluator(host, JudgeConfig(scenarios_limit=3, n_boot=50),
                     CapabilityConfig(mc_limit=0, neutral_limit=2, fluency_queries=0))


def test_judge_and_metrics_match_float32(pair, nmap):
    """Forced-choice readings, E, alignment and KL within stated tolerances of float32.

    ``raw`` (mean per-token option log-probability, about -10.8 here): within eps/4
    (measured <= 0.06 eps). A log-softmax taken in half precision would round each
    log-probability of size ~10.8 by up to 10.8 * eps / 2 = 5.4 eps, twenty times more.
    E (a softmax over ten options, each ~0.1): a change d of the readings moves E by at
    most ~0.2 d, so eps/20. The change of every value's CSR (edited - unedited mean of
    E; alignment and leakage are made of these): within eps/50 (measured <= 0.007 eps),
    and the largest float32 change must exceed four times that, so that a real signal is
    compared. Acquiescence, a mean change of the readings: within 2 x eps/4. KL: within
    2% relative (measured <= 0.1%); log-probabilities rounded in half precision would add
    ~(5 eps)**2 per token, more than the KL of this edit.
    """
    e = pair.eps
    ev_half, ev_full = trial_evaluator(pair.half), trial_evaluator(pair.full)
    # a rule continuous in a: set's switch (a > 0) flips where half precision lands a
    # near-zero activation on the other side of 0, a jump of magnitude x q_t each time
    edit = [("power", NeuronEdit(nmap["power"], "add", 40.0))]
    rec_half, rec_full = ev_half.evaluate(edit)[0], ev_full.evaluate(edit)[0]
    base_half, base_full = ev_half.base().judgement, ev_full.base().judgement
    assert np.abs(base_half.raw - base_full.raw).max() <= e / 4
    assert np.abs(base_half.E - base_full.E).max() <= e / 20
    for key in ("alignment", "nlr", "nglr", "cwl", "acquiescence", "kl"):
        assert np.isfinite(rec_half[key]), key
    d_half, d_full = (np.array([r["csr_edited"][v] - r["csr_base"][v] for v in nv.VALUES])
                      for r in (rec_half, rec_full))  # (V,) change of every value
    assert np.abs(d_full).max() > 4 * e / 50
    assert np.abs(d_half - d_full).max() <= e / 50
    assert abs(rec_half["alignment"] - rec_full["alignment"]) <= e / 50
    assert abs(rec_half["acquiescence"] - rec_full["acquiescence"]) <= e / 2
    assert rec_full["kl"] > 0
    assert rec_half["kl"] == pytest.approx(rec_full["kl"], rel=0.02)


# --- one sweep trial --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", HALF)
def test_sweep_trial_runs(dtype, small_probes, tmp_path, monkeypatch):
    """worker.run_trials, as a replica calls it, on a half-precision model: the default
    sweep's trial settings (fewer scenarios and neutral texts), one NeVA trial."""
    cfg = compose_config("model=tiny_llama", f"model.dtype={dtype}", f"cache_dir={tmp_path}",
                         "sweep.judge.scenarios_limit=4", "sweep.capability.neutral_limit=2",
                         "progress=false")
    host = nv.load_model(cfg.model)
    assert host.model.dtype == DTYPES[dtype]
    stats = collect_stats(host, small_probes, progress=False)
    monkeypatch.setattr(worker, "_STATS", {StatsRef().hex(): stats})
    monkeypatch.setattr(worker, "_EVALUATORS", {})
    params = {"sparsity": 0.1, "magnitude": 8.0, "rule": "add", "score": "mean_diff",
              "positions": "all", "layer_window": "all"}
    setup = eval_setup(cfg)
    assert setup.capability.mc_limit == 0  # the sweep's trial settings, not task=evaluate's
    (rec,) = worker.run_trials(host, [StatsRef()], setup,
                               [{"value": "power", "method": "neva", "params": params}])
    assert "error" not in rec, rec.get("error")
    assert rec["judge"] == "forced_choice" and rec["n_neurons"] > 0
    assert np.isfinite([rec["alignment"], rec["nlr"], rec["kl"], rec["acquiescence"]]).all()
    assert rec["kl"] > 0
