"""CAA steering vectors and prompt prefixes: definition, cross-check, edit contract."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import neva_sweep as nv
from neva_sweep.data import ProbeSet
from neva_sweep.edits.prompt import prompt_edit
from neva_sweep.edits.residual import ResidualEdit, caa_edit, caa_vectors
from neva_sweep.evaluation.scoring import next_token_logprobs

# Three one-token words per value (no BOS with the embedded tokenizer), so that the mean
# over all tokens (ours) equals the last-token reading of steering-vectors.
WORDS = [["free", "choose", "create"], ["risk", "bold", "new"], ["fun", "joy", "party"],
         ["success", "win", "skill"], ["power", "rich", "status"], ["safe", "order", "home"],
         ["rules", "law", "duty"], ["faith", "custom", "earth"], ["help", "care", "friend"],
         ["equal", "justice", "nature"]]


@pytest.fixture(scope="module")
def word_stats(tiny_host):
    texts = tuple(w for ws in WORDS for w in ws)
    labels = tuple(j for j, ws in enumerate(WORDS) for _ in ws)
    for t in texts:
        assert len(tiny_host.tokenizer(t).input_ids) == 1, t
    probes = ProbeSet(texts, labels, "words", None, Path("words"))
    return nv.collect_stats(tiny_host, probes, progress=False)


def residuals(host, batch) -> list[torch.Tensor]:
    out = host.model(**batch, output_hidden_states=True)
    return list(out.hidden_states[1:])  # block outputs, (B, S, H) each


def test_residual_means_match_hidden_states(tiny_host, word_stats) -> None:
    t = nv.VALUES.index("power")
    batch = tiny_host.tokenize(WORDS[t])
    hs = residuals(tiny_host, batch)
    for layer, h in enumerate(hs[:-1]):  # the last hidden state is after the final norm
        torch.testing.assert_close(word_stats.resid_mean[t, layer].float(), h[:, 0].mean(0),
                                   atol=1e-5, rtol=1e-4)


def test_vectors_and_steered_logits_match_steering_vectors(tiny_host, word_stats) -> None:
    sv_mod = pytest.importorskip("steering_vectors", reason="pip install --no-deps "
                                 "steering-vectors (the test extra installs it)")
    value = "benevolence"
    t = nv.VALUES.index(value)
    pairs = [(WORDS[t][i], WORDS[j][i]) for j in range(10) if j != t for i in range(3)]
    sv = sv_mod.train_steering_vector(tiny_host.model, tiny_host.tokenizer, pairs,
                                      layers=[0], read_token_index=-1, batch_size=9)
    ours = caa_vectors(word_stats, value)  # (L, H)
    torch.testing.assert_close(sv.layer_activations[0].float(), ours[0], atol=1e-5, rtol=1e-4)

    spec = caa_edit(word_stats, value, [0], 3.0)
    prompts = ["I help my neighbour.", "The river is long."]
    cand = torch.arange(50)
    mine = next_token_logprobs(tiny_host, prompts, cand, [spec])[0]
    with sv.apply(tiny_host.model, multiplier=3.0):
        theirs = next_token_logprobs(tiny_host, prompts, cand, [None])[0]
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)
    assert (mine - next_token_logprobs(tiny_host, prompts, cand)[0]).abs().max() > 1e-3


def test_zero_coefficient_is_identity_and_edit_stays_at_its_layer(tiny_host, word_stats
                                                                   ) -> None:
    prompts = ["We should protect the forest.", "Win the match."]
    cand = torch.arange(100)
    base = next_token_logprobs(tiny_host, prompts, cand)
    zero = next_token_logprobs(tiny_host, prompts, cand, [caa_edit(word_stats, "power", [1],
                                                                   0.0)])
    torch.testing.assert_close(zero, base, atol=0, rtol=0)
    # An edit on layer 1 leaves the layer-0 residual untouched and changes layer 1's.
    from neva_sweep.edits.group import grouped

    batch = tiny_host.tokenize(prompts)
    before = residuals(tiny_host, batch)
    with grouped(tiny_host, [caa_edit(word_stats, "power", [1], 5.0)], "all") as g:
        g.set_rows([0, 0])
        after = residuals(tiny_host, batch)
    torch.testing.assert_close(after[0], before[0], atol=0, rtol=0)
    assert (after[1] - before[1]).abs().max() > 1e-3


def test_bad_residual_layers_are_named(word_stats) -> None:
    with pytest.raises(ValueError, match="outside"):
        caa_edit(word_stats, "power", [7], 1.0)
    with pytest.raises(ValueError, match="layer"):
        ResidualEdit(torch.zeros(0, 64), (), 1.0)


def test_prompt_prefix_changes_only_edited_rows(tiny_host) -> None:
    prompts = ["Is this person like you?"]
    cand = torch.arange(20)
    out = next_token_logprobs(tiny_host, prompts, cand, [None, prompt_edit("tradition", 3)])
    assert (out[0] - out[1]).abs().max() > 1e-4
    torch.testing.assert_close(out[0], next_token_logprobs(tiny_host, prompts, cand)[0])
    assert "tradition" in prompt_edit("tradition", 1).text.lower()
    with pytest.raises(ValueError, match="strength"):
        prompt_edit("tradition", 9)


def test_prompt_joins_the_default_system_prompt_unless_replacing(tiny_host) -> None:
    """Chat-templated rows get the instruction after the template's default system prompt
    (only the instruction differs from unedited rows); replace_system drops the default."""
    from neva_sweep.edits.group import EditGroup, default_system_prompt

    default = default_system_prompt(tiny_host)
    assert default.startswith("You are a helpful AI assistant")
    ids = tiny_host.tokenizer.encode(tiny_host.chat_prompt("Hello"))
    edits = [nv.PromptEdit("Value tradition.\n\n"),
             nv.PromptEdit("Value tradition.\n\n", replace_system=True)]
    group = EditGroup(tiny_host, edits, "all")
    appended, replaced = (tiny_host.tokenizer.decode(group.with_prompt(g, ids)) for g in (0, 1))
    assert f"{default}\n\nValue tradition." in appended and appended.endswith(
        tiny_host.chat_prompt("Hello").split(default)[1])
    assert default not in replaced and "Value tradition." in replaced
    assert edits[1].describe()["replace_system"] and "replace_system" not in edits[0].describe()


def test_former_names_are_the_edit_kinds() -> None:
    """Scripts that use the public API's former names keep working."""
    assert nv.EditSpec is nv.NeuronEdit and nv.ResidualSpec is nv.ResidualEdit
    assert prompt_edit("power", 0) == nv.PromptEdit("")
