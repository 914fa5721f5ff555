"""Capability measures on tiny models: MC accuracy, KL to the base, perplexity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import neva_sweep as nv
from neva_sweep.data import DataError, load_records
from neva_sweep.edits.neuron import NeuronEdit
from neva_sweep.evaluation.capability import (
    base_distribution,
    kl_top_k,
    mc_correct,
    mc_questions,
    mean_kl,
    neutral_texts,
    reply_nll,
)
from neva_sweep.evaluation.scoring import token_logprobs


def test_builtin_mc_set_is_valid_and_mixed() -> None:
    qs = mc_questions(load_records("mc"))
    assert len(qs) >= 150
    assert len({q["subject"] for q in qs}) >= 5
    counts = np.bincount([q["answer"] for q in qs], minlength=4)
    assert counts.min() >= 0.15 * len(qs)  # answer positions are balanced


def test_mc_limit_spreads_questions() -> None:
    qs = mc_questions(load_records("mc"), limit=30)
    assert len(qs) == 30 and len({q["subject"] for q in qs}) >= 5


def test_bad_mc_record_is_named(tmp_path) -> None:
    path = tmp_path / "mc.jsonl"
    path.write_text('{"subject": "x", "question": "q?", "choices": ["a", "b"], "answer": 0}\n')
    with pytest.raises(DataError, match="mc.jsonl.*record 1.*4"):
        mc_questions(load_records("mc", path))


def test_random_tiny_model_is_near_chance() -> None:
    # A random-initialised model knows nothing: accuracy within a wide band around 1/4.
    accs = [mc_correct(nv.load_model(name), mc_questions(load_records("mc")))[0].mean()
            for name in ("tiny-llama", "tiny-gpt2")]
    for acc in accs:
        assert 0.12 <= acc <= 0.40, accs


def test_top_k_kl_equals_full_kl_when_k_covers_vocab() -> None:
    torch.manual_seed(0)
    base = torch.log_softmax(torch.randn(5, 50), -1)
    edited = torch.log_softmax(torch.randn(5, 50), -1)
    full = (base.exp() * (base - edited)).sum(-1)
    top = base.topk(50, -1)
    torch.testing.assert_close(kl_top_k(top.indices, top.values, edited), full, atol=1e-5,
                               rtol=1e-4)
    small = base.topk(5, -1)
    coarse = kl_top_k(small.indices, small.values, edited)
    assert (coarse <= full + 1e-6).all()  # coarsening never increases KL


def test_kl_zero_without_edit_positive_with(tiny_host, tiny_stats) -> None:
    texts = neutral_texts(load_records("neutral"), limit=6)
    base = base_distribution(tiny_host, texts, k=10**6)  # k >= vocab: exact KL
    assert base.coverage == pytest.approx(1.0, abs=1e-4)
    nmap = nv.select_neurons(tiny_stats, sparsity=0.1)
    edits = [NeuronEdit(nmap["power"], "add", 0.0), NeuronEdit(nmap["power"], "scale", 20.0)]
    kl = mean_kl(tiny_host, texts, base, edits)
    assert kl[0] == pytest.approx(0.0, abs=1e-6) and kl[1] > 1e-4
    # The same number computed from full distributions by hand.
    b = token_logprobs(tiny_host, texts)[0]
    e = token_logprobs(tiny_host, texts, [edits[1]])[0]
    ref = sum(float((x.exp() * (x - y)).sum()) for x, y in zip(b, e)) / base.n_tokens
    assert kl[1] == pytest.approx(ref, rel=1e-3)


def test_reply_nll_counts_reply_tokens_only(tiny_host) -> None:
    nll, n = reply_nll(tiny_host, ["Hello", "Hi"], ["there", ""])
    assert n == len(tiny_host.tokenizer("there", add_special_tokens=False).input_ids)
    assert nll > 0


@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-gpt2"])
def test_mc_scores_with_a_shared_question_equal_separate_pairs(arch, tiny_stats) -> None:
    """The question's KV cache serving its four choices gives the scores of scoring every
    question + choice pair on its own (left padding: questions of different lengths)."""
    from neva_sweep.evaluation.capability import mc_prompt, mc_scores
    from neva_sweep.evaluation.scoring import continuation_logprobs

    host = nv.load_model(arch)
    qs = mc_questions(load_records("mc"), limit=6)
    nmap = nv.select_neurons(nv.collect_stats(host, nv.load_probes().shard(0, 3),
                                              progress=False), sparsity=0.1)
    edits = [None, NeuronEdit(nmap["power"], "add", 3.0)]
    contexts, conts = [], []
    for q in qs:
        ctx, choices = mc_prompt(q)
        contexts += [ctx] * len(choices)
        conts += choices
    logp, n_tok = continuation_logprobs(host, contexts, conts, edits)
    naive = (logp / n_tok).reshape(len(edits), len(qs), 4)
    torch.testing.assert_close(mc_scores(host, qs, edits), naive, atol=1e-4, rtol=0)
