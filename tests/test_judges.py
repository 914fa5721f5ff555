"""Judge contract (tier 2): every judge on a tiny model, plus scoring primitives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import neva_sweep as nv
from neva_sweep.data import load_records
from neva_sweep.edit import EditSpec
from neva_sweep.judges import JUDGES, JudgeConfig, LexiconJudge, make_judge
from neva_sweep.scoring import continuation_logprobs, encode, greedy_generate, next_token_logprobs


def judge(name: str, **kw):
    cfg = JudgeConfig(name=name, queries_per_value=1, max_new_tokens=6, **kw)
    return make_judge(cfg, load_records("questionnaire"), load_records("queries"))


@pytest.fixture(scope="module")
def edits(tiny_stats):
    nmap = nv.select_neurons(tiny_stats, sparsity=0.1)
    return [None, EditSpec(nmap["power"], "scale", 20.0), EditSpec(nmap["power"], "add", 0.0)]


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
        assert np.isfinite(o.E).all() and (o.E >= 0).all() and (o.E <= 1).all()
        if name != "questionnaire":
            assert o.replies is not None and len(o.replies) == q
    again = j.judge(tiny_host, edits, "all")
    for a, b in zip(out, again):  # deterministic for a fixed config
        np.testing.assert_array_equal(a.E, b.E)
    # Magnitude 0 reproduces the unedited judgement (up to batch-composition rounding).
    np.testing.assert_allclose(out[2].E, out[0].E, atol=1e-5)
    if name == "questionnaire":  # a strong edit moves the answer probabilities
        assert np.abs(out[1].E - out[0].E).max() > 1e-4


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
        make_judge(JudgeConfig(name="lexicon"), load_records("questionnaire"),
                   load_records("queries", path))


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
