"""Contrastive stance pairs: the data file, the pair statistics against direct forward passes,
their merge/concat/save, and the ``pairs_d`` score."""

import json
import math
import re
from pathlib import Path

import pytest
import torch

import neva_sweep as nv
from neva_sweep.data import DataError, Pair, ProbeSet, load_pairs, load_probes, load_records
from neva_sweep.models import TINY_CONFIGS
from neva_sweep.models.arch import residual_sites
from neva_sweep.neurons.pairs import PAIR_FIELDS, PairAccumulator, answer_texts, pair_batches
from neva_sweep.neurons.stats import (
    NeuronStats,
    StatsConfig,
    concat,
    forward_kwargs,
    merge,
    select_columns,
)
from neva_sweep.values import N_VALUES, VALUES
from tests.helpers import capture_site_inputs

# Pro and anti of different lengths: the shorter row is padded within its batch.
PAIR = Pair(VALUES.index("benevolence"), "My friend is ill and lives alone.",
            "I'll bring her soup every day.",
            "I won't bring her soup; her welfare is not a concern of mine at all.")


def probe_set(pairs: tuple[Pair, ...]) -> ProbeSet:
    """One short probe per value, no gate texts, and ``pairs``."""
    texts = tuple(f"A short text about {v.replace('_', ' ')}." for v in VALUES)
    return ProbeSet(texts, tuple(range(N_VALUES)), "crafted", None, Path("crafted"), (), pairs)


@pytest.fixture(scope="module")
def one_pair_stats(tiny_host) -> NeuronStats:
    return nv.collect_stats(tiny_host, probe_set((PAIR,)), progress=False)


def test_builtin_pairs_have_twelve_distinct_pairs_per_value():
    rows = load_pairs().rows
    assert [sum(r["value"] == v for r in rows) for v in VALUES] == [12] * N_VALUES
    texts = [r[k] for r in rows for k in ("situation", "pro", "anti")]
    assert len(set(texts)) == len(texts)
    others = {r["text"] for r in load_records("probes").rows}
    others |= {t for r in load_records("scenarios").rows
               for t in (r["scenario"], *r["options"].values())}
    assert not others & set(texts)
    # similar lengths: the pair differs in stance, not in length
    ratios = [len(r["anti"].split()) / len(r["pro"].split()) for r in rows]
    assert 0.6 < min(ratios) and max(ratios) < 1.6


GOOD = {"value": "power", "situation": "I'm offered the lead.", "pro": "I take charge.",
        "anti": "I let someone else take charge."}


@pytest.mark.parametrize("change, message", [
    ({"anti": None}, "missing ['anti']"),
    ({"value": "kindness"}, "unknown value 'kindness'"),
    ({"pro": "  "}, "'pro' is empty"),
    ({"anti": "I take charge."}, "'pro' and 'anti' are the same text"),
    ({"split": "search"}, "unexpected ['split']"),
])
def test_bad_pair_records_name_file_and_line(tmp_path, change, message):
    bad = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=re.escape(message)) as e:
        load_pairs(path)
    assert f"{path}:3:" in str(e.value)


def test_probe_sets_carry_pairs_in_their_hash(tmp_path, probes):
    assert len(probes.pairs) == 120 and probes.pairs[0].label == 0
    without = load_probes(pairs=False)
    assert without.pairs == () and without.sha256 != probes.sha256
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(GOOD) + "\n")
    own = load_probes(pairs=path)
    assert own.pairs == (Pair(4, *list(GOOD.values())[1:]),)
    assert own.sha256 not in (probes.sha256, without.sha256)
    assert sum(len(probes.shard(r, 7).pairs) for r in range(7)) == 120
    drawn = probes.resample(3)
    assert [p.label for p in drawn.pairs] == [p.label for p in probes.pairs]
    assert drawn.pairs != probes.pairs and set(drawn.pairs) <= set(probes.pairs)


def test_reply_token_differences_equal_a_direct_forward(tiny_host, one_pair_stats):
    tok = tiny_host.tokenizer
    situation = tok(PAIR.situation).input_ids
    diff = 0
    for sign, reply in ((1, PAIR.pro), (-1, PAIR.anti)):
        enc = tiny_host.tokenize([f"{PAIR.situation} {reply}"])  # alone: no padding
        assert enc.input_ids[0, : len(situation)].tolist() == situation
        seen = capture_site_inputs(tiny_host, lambda enc=enc: tiny_host.model(**enc))
        acts = torch.cat(seen, dim=-1)[0].double()  # (S, N)
        diff = diff + sign * acts[len(situation):].mean(0)  # the reply's tokens only
    t = PAIR.label
    assert one_pair_stats.pair_count.tolist() == [float(v == t) for v in range(N_VALUES)]
    torch.testing.assert_close(one_pair_stats.pair_sum[t], diff, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(one_pair_stats.pair_sumsq[t], diff**2, atol=1e-6, rtol=1e-5)
    others = [v for v in range(N_VALUES) if v != t]
    assert not one_pair_stats.pair_sum[others].any()
    torch.testing.assert_close(one_pair_stats.pair_mean[t], diff, atol=1e-6, rtol=1e-5)


def test_answer_letter_residuals_equal_a_direct_forward(tiny_host, one_pair_stats):
    texts = answer_texts(tiny_host, PAIR)
    assert [t[-1] for t in texts] == ["A", "B", "B", "A"]  # pro letter, anti letter, twice
    assert texts[0].startswith(tiny_host.chat_prompt(
        f"{PAIR.situation}\nWhich reply is closer to what you would do?\n(A) {PAIR.pro}\n"
        f"(B) {PAIR.anti}"))
    assert texts[0].endswith("Answer: (A") and f"(A) {PAIR.anti}" in texts[2]
    blocks = residual_sites(tiny_host.model)
    letter = torch.zeros(4, len(blocks), 64, dtype=torch.float64)
    for row, text in enumerate(texts):
        enc = tiny_host.tokenize([text])

        def grab(layer, row=row):
            def hook(module, args, output):
                h = output[0] if isinstance(output, tuple) else output
                letter[row, layer] = h[0, -1].double()

            return hook

        handles = [b.register_forward_hook(grab(i)) for i, b in enumerate(blocks)]
        try:
            tiny_host.model(**enc)
        finally:
            for h in handles:
                h.remove()
    t = PAIR.label
    expected = (letter[0] - letter[1]) + (letter[2] - letter[3])  # (L, H)
    torch.testing.assert_close(one_pair_stats.pair_resid_sum[t], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one_pair_stats.pair_resid_mean[t], expected / 2, atol=1e-5,
                               rtol=1e-5)
    assert one_pair_stats.pair_resid_count[t] == 2 and one_pair_stats.pair_resid_count.sum() == 2
    torch.testing.assert_close(one_pair_stats.pair_resid_norm, letter.norm(dim=-1).mean(0),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_shared_prompts_read_the_residuals_of_the_whole_rows(name):
    """Several pairs of different lengths per answer batch (so prompts are padded): the
    prompts-then-letters pass folds the same fields as the four whole rows per pair."""
    host = nv.load_model(name)
    pairs = [Pair(t, *(load_pairs().by_value(VALUES[t])[k][f]
                       for f in ("situation", "pro", "anti")))
             for t in (1, 8) for k in range(3)]
    batches = [b for b in pair_batches(host, pairs, batch_size=12) if b.kind == "answer"]
    assert [len(b.texts) for b in batches] == [12, 12]
    assert all(b.letter_ids is not None for b in batches)  # the letters split off here
    whole, shared = PairAccumulator(host), PairAccumulator(host)
    whole.shared_prompts = False
    kwargs = forward_kwargs(host)
    with torch.inference_mode():
        n_whole = sum(whole.step(b, kwargs) for b in batches)
        n_shared = sum(shared.step(b, kwargs) for b in batches)
    assert shared.shared_prompts and n_shared < 0.6 * n_whole  # half the rows, plus letters
    for field, a in whole.fields().items():
        torch.testing.assert_close(shared.fields()[field], a, atol=1e-5, rtol=1e-5,
                                   msg=f"{name}: {field}")


def test_a_letter_that_merges_runs_the_whole_rows(tiny_host, monkeypatch):
    """When "(" and the letter tokenise as one token the prompts cannot be shared: the batch
    keeps its whole rows, and the statistics are those of the direct forward (above)."""
    tok = tiny_host.tokenizer
    real = type(tok).__call__

    def merging(self, text, *args, **kwargs):  # "(A" as "[A": the prompt's "(" is gone
        if isinstance(text, list):
            text = [t[:-2] + "[" + t[-1] if t.endswith(("(A", "(B")) else t for t in text]
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(type(tok), "__call__", merging)
    batch, = [b for b in pair_batches(tiny_host, [PAIR], 8) if b.kind == "answer"]
    assert batch.letter_ids is None and batch.prompts is None and len(batch.texts) == 4


def test_answer_texts_without_a_chat_template(tiny_host, monkeypatch):
    monkeypatch.setattr(tiny_host.tokenizer, "chat_template", None)
    first, *_, last = answer_texts(tiny_host, PAIR)
    assert first == (f"{PAIR.situation}\nWhich reply is closer to what you would do?\n"
                     f"(A) {PAIR.pro}\n(B) {PAIR.anti}\nAnswer: (A")
    assert last.endswith(f"(A) {PAIR.anti}\n(B) {PAIR.pro}\nAnswer: (A")


def test_pairs_leave_the_probe_statistics_alone(tiny_host, one_pair_stats):
    plain = nv.collect_stats(tiny_host, probe_set(()), progress=False)
    assert all(getattr(plain, name) is None for name in PAIR_FIELDS)
    for name in ("count", "mean", "m2", "positive", "hist", "resid_sum"):
        assert torch.equal(getattr(plain, name), getattr(one_pair_stats, name)), name
    with pytest.raises(ValueError, match="no stance pairs .*load_probes\\(pairs=False\\)"):
        plain.pair_resid_mean  # noqa: B018


def test_merge_of_two_halves_equals_the_whole(tiny_host):
    pairs = tuple(Pair(t, *(load_pairs().by_value(VALUES[t])[k][f]
                             for f in ("situation", "pro", "anti")))
                  for t in (0, 4) for k in range(3))
    probes = probe_set(pairs)
    cfg = StatsConfig(batch_size=4)
    whole = nv.collect_stats(tiny_host, probes, cfg, progress=False)
    halves = [nv.collect_stats(tiny_host, probes.shard(r, 2), cfg, progress=False)
              for r in (0, 1)]
    merged = merge(*halves)
    assert merged.pair_count[[0, 4]].tolist() == [3, 3]
    for name in PAIR_FIELDS:
        torch.testing.assert_close(getattr(merged, name), getattr(whole, name), atol=1e-5,
                                   rtol=1e-5, msg=name)
    # a shard that drew no pairs adds nothing
    empty = NeuronStats.zeros(whole.layer_sizes, cfg.bins)
    assert merge(empty, whole).pair_sum is whole.pair_sum


def test_concat_select_columns_save_and_load_keep_pair_fields(tmp_path, tiny_stats):
    cuts = [(0, 40), (40, 71), (71, 96)]
    shards = [select_columns(tiny_stats, [c] * 2) for c in cuts]
    assert shards[1].pair_sum.shape == (N_VALUES, 62)
    torch.testing.assert_close(shards[1].pair_sumsq[:, 31:], tiny_stats.pair_sumsq[:, 96 + 40:
                                                                                   96 + 71])
    joined = concat(shards)
    for name in PAIR_FIELDS:
        assert torch.equal(getattr(joined, name), getattr(tiny_stats, name)), name
    tiny_stats.save(tmp_path / "s.safetensors")
    back = NeuronStats.load(tmp_path / "s.safetensors")
    for name in PAIR_FIELDS:
        assert torch.equal(getattr(back, name), getattr(tiny_stats, name)), name
    bare = NeuronStats.zeros([3], bins=4)
    bare.save(tmp_path / "bare.safetensors")
    assert NeuronStats.load(tmp_path / "bare.safetensors").pair_sum is None


def crafted_pair_stats() -> NeuronStats:
    """Two layers of 3 neurons, four pairs per value; for power (t = 4) neuron 5's
    differences are 1, 2, 3, 2 and neuron 1's are -1, -1, -1, -2; every other difference 0.1
    or -0.1 (mean 0)."""
    s = NeuronStats.zeros([3, 3], bins=8)
    s.count[:] = 101.0
    s.m2[:] = 100.0
    s.mean[4, 0] = 5.0  # probe statistics favour neuron 0, the pairs do not
    diffs = torch.tensor([0.1, -0.1, 0.1, -0.1], dtype=torch.float64)[None, None].repeat(
        N_VALUES, 6, 1)  # (V, N, pairs)
    diffs[4, 5] = torch.tensor([1.0, 2.0, 3.0, 2.0])
    diffs[4, 1] = torch.tensor([-1.0, -1.0, -1.0, -2.0])
    s.pair_count = torch.full((N_VALUES,), 4.0, dtype=torch.float64)
    s.pair_sum, s.pair_sumsq = diffs.sum(-1), (diffs**2).sum(-1)
    return s


def test_pairs_d_is_the_paired_cohens_d():
    s = crafted_pair_stats()
    d = nv.SCORES["pairs_d"](s)
    assert d.shape == (N_VALUES, 6)
    assert d[4, 5].item() == pytest.approx(2.0 / math.sqrt(2.0 / 3))  # mean 2, var 2/3
    assert d[4, 1].item() == pytest.approx(-1.25 / math.sqrt(0.25))  # mean -1.25, var 1/4
    assert d[4, 0].item() == pytest.approx(0.0)
    vn = nv.select_neurons(s, "power", sparsity=0.3, score="pairs_d", polarity="both")["power"]
    assert set(zip(vn.layer.tolist(), vn.index.tolist())) == {(1, 2), (0, 1)}
    # the add direction is the mean pro - anti difference, not the probe mean difference
    assert sorted(vn.mean_diff.tolist()) == pytest.approx([-1.25, 2.0])


def test_pairs_d_errors():
    s = crafted_pair_stats()
    s.pair_count[7] = 1.0
    with pytest.raises(ValueError, match="at least two stance pairs per value.*tradition"):
        nv.SCORES["pairs_d"](s)
    s.pair_count = s.pair_sum = s.pair_sumsq = None
    with pytest.raises(ValueError, match="no stance pairs"):
        nv.select_neurons(s, "power", sparsity=0.3, score="pairs_d")
