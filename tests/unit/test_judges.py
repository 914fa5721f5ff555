"""Judge contract (tier 2): every judge on a tiny model, plus scoring primitives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import neva_sweep as nv
from neva_sweep.config import JudgeConfig
from neva_sweep.data import load_records
from neva_sweep.edits.group import encode
from neva_sweep.edits.neuron import NeuronEdit
from neva_sweep.evaluation.evaluator import DATA_KINDS
from neva_sweep.evaluation.judges.base import JUDGES, make_judge
from neva_sweep.evaluation.judges.lexicon import LexiconJudge
from neva_sweep.evaluation.scoring import (
    continuation_logprobs,
    greedy_generate,
    next_token_logprobs,
    option_logprobs,
)

ARCHS = ["tiny-llama", "tiny-qwen2", "tiny-gpt2", "tiny-gptneox", "tiny-opt", "tiny-gemma2"]


def records(**paths) -> dict:
    return {k: load_records(k, paths.get(k)) for k in DATA_KINDS}


def judge(name: str, **kw):
    cfg = JudgeConfig(name=name, queries_per_value=1, max_new_tokens=6, scenarios_limit=6,
                      **kw)
    return make_judge(cfg, records())


@pytest.fixture(scope="module")
def edits(tiny_stats):
    nmap = nv.select_neurons(tiny_stats, sparsity=0.1)
    return [None, NeuronEdit(nmap["power"], "scale", 20.0), NeuronEdit(nmap["power"], "add", 0.0)]


@pytest.mark.parametrize("name", list(JUDGES))
def test_judge_contract(name, tiny_host, edits) -> None:
    j = judge(name)
    out = j.judge(tiny_host, edits, "all")
    assert len(out) == len(edits)
    shapes = {o.E.shape for o in out}
    assert len(shapes) == 1
    (q, v), = shapes
    assert v == 10 and q >= 1
    for o in out:
        low = -1 if name == "questionnaire" else 0  # centred per form by default
        assert np.isfinite(o.E).all() and (o.E >= low).all() and (o.E <= 1).all()
        assert o.reading.shape == (q, v) and np.isfinite(o.reading).all()
        if name not in ("questionnaire", "forced_choice"):
            assert o.replies is not None and len(o.replies) == q
    again = j.judge(tiny_host, edits, "all")
    for a, b in zip(out, again):  # deterministic for a fixed config
        np.testing.assert_array_equal(a.E, b.E)
    # Magnitude 0 reproduces the unedited judgement (up to batch-composition rounding).
    np.testing.assert_allclose(out[2].E, out[0].E, atol=1e-5)
    if name in ("questionnaire", "forced_choice"):  # a strong edit moves the scores
        assert np.abs(out[1].reading - out[0].reading).max() > 1e-4


def test_forced_choice_rows_are_softmax_of_option_scores(tiny_host, edits) -> None:
    j = judge("forced_choice")
    out = j.judge(tiny_host, edits[:2], "all")
    for o in out:
        np.testing.assert_allclose(o.E.sum(1), 1.0, atol=1e-9)
        e = np.exp(o.raw - o.raw.max(1, keepdims=True))
        np.testing.assert_allclose(o.E, e / e.sum(1, keepdims=True), atol=1e-12)
        assert (o.hard.sum(1) == 1).all() and (o.hard.argmax(1) == o.raw.argmax(1)).all()
        assert (o.raw < 0).all()  # mean per-token log-probabilities


def test_forced_choice_scores_do_not_depend_on_option_order(tiny_host, edits) -> None:
    j = judge("forced_choice")
    prompts, options = j.prompts(tiny_host)
    perm = np.random.default_rng(0).permutation(10)
    shuffled = [[opts[k] for k in perm] for opts in options]
    a = option_logprobs(tiny_host, prompts, options, edits[:2])
    b = option_logprobs(tiny_host, prompts, shuffled, edits[:2])
    torch.testing.assert_close(b, a[..., perm], atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("positions", ["all", "response"])
def test_prefix_cached_option_scores_equal_naive(arch, positions, small_probes) -> None:
    """One prompt forward + a cached batch of options == full prompt+option forwards, for
    every architecture, with left padding (prompts of different lengths) and per-row edits
    of every kind."""
    from neva_sweep.edits.prompt import prompt_edit

    host = nv.load_model(arch)
    nmap = nv.select_neurons(nv.collect_stats(host, small_probes.shard(0, 3), progress=False),
                             sparsity=0.1)
    edits = [None, NeuronEdit(nmap["power"], "add", 3.0), prompt_edit("power", 3)]
    prompts = [host.chat_prompt("You find a wallet on the street."),
               host.chat_prompt("A friend asks to borrow money.\n\nWhat do you do?")]
    opts = [["I keep it.", "I hand it in at the police station nearby.", "I call my mum."],
            ["I lend it gladly.", "No.", "I ask why they need it so badly today."]]
    cached = option_logprobs(host, prompts, opts, edits, positions, batch_size=6)
    ctx = [p for p, os_ in zip(prompts, opts) for _ in os_]
    lp, n = continuation_logprobs(host, ctx, [o for os_ in opts for o in os_], edits,
                                  positions, batch_size=5)
    torch.testing.assert_close(cached, (lp / n).view(len(edits), 2, 3), atol=1e-4, rtol=0)
    assert (cached[1] - cached[0]).abs().max() > 1e-4  # the edit acts


def test_questionnaire_centring(tiny_host, edits) -> None:
    centred = judge("questionnaire").judge(tiny_host, edits[:2], "all")
    raw = judge("questionnaire", centre=False).judge(tiny_host, edits[:2], "all")
    for c, r in zip(centred, raw):
        np.testing.assert_allclose(c.E.sum(1), 0.0, atol=1e-12)  # each form sums to 0
        np.testing.assert_allclose(c.E, r.E - r.E.mean(1, keepdims=True), atol=1e-12)
        np.testing.assert_array_equal(c.raw, r.E)


def test_questionnaire_forms_cover_every_value() -> None:
    j = judge("questionnaire")
    items = load_records("questionnaire")
    assert j.layout.shape == (8, 10)
    for col, v in enumerate(nv.VALUES):  # column j only holds value j's items
        assert {items.by_value(v)[0]["text"]} <= {j.texts[i] for i in j.layout[:, col]}
        assert all(j.texts[i] in {r["text"] for r in items.by_value(v)} for i in j.layout[:, col])


def test_lexicon_expression_by_hand() -> None:
    j = LexiconJudge(JudgeConfig(name="lexicon"), load_records("queries"))
    e = j.expression("I want to help my family. The weather is grey.")
    b = nv.VALUES.index("benevolence")
    assert e[b] == pytest.approx(0.5)  # one of two sentences
    assert j.expression("").sum() == 0


def test_unknown_judge_lists_choices() -> None:
    with pytest.raises(KeyError, match=r"^\"unknown judge 'oracle'; valid choices: "
                                       r".*\bquestionnaire\b.*\blexicon\b.*\bllm\b"):
        judge("oracle")


def test_judge_model_that_cannot_be_loaded_names_key() -> None:
    with pytest.raises(OSError, match="judge.model"):
        judge("llm", model="/nonexistent/judge-model")


def test_empty_query_file_is_named(tmp_path) -> None:
    path = tmp_path / "queries.jsonl"
    path.write_text("")
    with pytest.raises(nv.DataError, match="queries.jsonl"):
        make_judge(JudgeConfig(name="lexicon"), records(queries=path))


def test_continuation_logprobs_match_one_sequence_forward(tiny_host) -> None:
    ctx, conts = ["Question: capital of France?\nAnswer:", "Hi"], [" Paris", " there, friend"]
    lp, n = continuation_logprobs(tiny_host, ctx, conts)
    for i, (c, x) in enumerate(zip(ctx, conts)):
        ids = encode(tiny_host, c) + encode(tiny_host, x, special=False)
        k = len(encode(tiny_host, x, special=False))
        logp = tiny_host.model(input_ids=torch.tensor([ids])).logits.log_softmax(-1)[0]
        ref = sum(logp[len(ids) - k - 1 + t, ids[len(ids) - k + t]].item() for t in range(k))
        assert n[i] == k
        assert lp[0, i].item() == pytest.approx(ref, abs=1e-4)


def test_grouped_rows_equal_separate_runs(tiny_host, edits) -> None:
    prompts = ["Is this person like you?", "A much longer question about helping a friend move."]
    cand = torch.tensor([10, 20, 30])
    together = next_token_logprobs(tiny_host, prompts, cand, edits[:2])
    for g, e in enumerate(edits[:2]):
        alone = next_token_logprobs(tiny_host, prompts, cand, [e])
        torch.testing.assert_close(together[g], alone[0], atol=1e-5, rtol=0)
    assert (together[0] - together[1]).abs().max() > 1e-4


def test_greedy_generate_per_row_edits(tiny_host, edits) -> None:
    prompts = [tiny_host.chat_prompt("Hello"), tiny_host.chat_prompt("What should I do?")]
    together = greedy_generate(tiny_host, prompts, edits[:2], max_new_tokens=5)
    for g, e in enumerate(edits[:2]):
        assert together[g] == greedy_generate(tiny_host, prompts, [e], max_new_tokens=5)[0]


def test_forced_choice_on_both_ends(tiny_host, edits) -> None:
    """ends=both: E = (softmax(most) - softmax(least) + 1) / 2 from the two questions'
    option scores; a shift of a value's options under both questions alike cancels."""
    from neva_sweep.evaluation.judges.forced_choice import ForcedChoiceJudge, softmax

    both, most = judge("forced_choice", ends="both"), judge("forced_choice")
    assert both.key() != most.key() and "least_question" in both.key()
    out = both.judge(tiny_host, edits, "all")
    s_most = both.scores(tiny_host, edits, "all")  # (G, Q, V)
    s_least = both.scores(tiny_host, edits, "all", ForcedChoiceJudge.LEAST_QUESTION)
    assert not np.allclose(s_most, s_least)  # two different questions
    for o, a, b in zip(out, s_most, s_least):
        np.testing.assert_allclose(o.E, (softmax(a) - softmax(b) + 1) / 2, atol=1e-12)
        np.testing.assert_allclose(o.E.sum(1), 5.0)  # the gap sums to 0 per scenario
        np.testing.assert_allclose(o.raw, (a + b) / 2)
    # pure salience: value 4's options 1 nat likelier under both questions
    shifted_a, shifted_b = s_most[0].copy(), s_least[0].copy()
    shifted_a[:, 4] += 1.0
    shifted_b[:, 4] += 1.0
    gap = softmax(shifted_a) - softmax(shifted_b)
    base_gap = softmax(s_most[0]) - softmax(s_least[0])
    assert abs(gap[:, 4].mean() - base_gap[:, 4].mean()) < abs(
        softmax(shifted_a)[:, 4].mean() - softmax(s_most[0])[:, 4].mean())
    with pytest.raises(ValueError, match="judge.ends must be one of most, both"):
        judge("forced_choice", ends="least")


def test_forced_choice_reads_one_split(tiny_host) -> None:
    """The built-in file holds both splits: a judge given the whole file reads the search
    split; the evaluator passes one split's records."""
    from neva_sweep.data import split_rows
    from neva_sweep.evaluation.evaluator import of_split

    recs = records()
    j = make_judge(JudgeConfig(name="forced_choice"), recs)
    search = split_rows(recs["scenarios"], "search")
    assert [r["id"] for r in j.items] == [r["id"] for r in search]
    test = of_split(recs["scenarios"], "test")
    assert test.sha256 != recs["scenarios"].sha256
    j_test = make_judge(JudgeConfig(name="forced_choice"), {**recs, "scenarios": test})
    assert {r["id"] for r in j_test.items}.isdisjoint(r["id"] for r in search)
    assert len(j_test.items) == 36
