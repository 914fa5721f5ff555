"""The value-relevance gate (neva_sweep/neurons/gate.py) on tiny random models: its probe, the
pre-pass, and gated neuron and residual edits through every scoring path."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import neva_sweep as nv
from neva_sweep.config import ConfigError
from neva_sweep.data import load_records, neutral_split
from neva_sweep.edits.residual import caa_edit
from neva_sweep.evaluation.scoring import (
    continuation_logprobs,
    greedy_generate,
    next_token_logprobs,
    option_logprobs,
)
from neva_sweep.models.arch import residual_sites
from neva_sweep.neurons.gate import (
    _SUSPENDED,
    GATE_VALUE,
    Gate,
    fit_gate,
    fit_value_gate,
    gate_accuracy,
    gate_layer,
    gate_of,
    prompt_mask,
    row_values,
    value_gate_accuracy,
)
from neva_sweep.neurons.stats import NEUTRAL, NeuronStats, merge
from neva_sweep.values import N_VALUES, VALUES

PROMPTS = ["I always help my neighbours when they need it.", "Paris is in France.",
           "What should I do this weekend with my family and friends?"]
CANDIDATES = torch.arange(200)


def forced(gate: Gate, bias: float) -> Gate:
    """The same probe with g pinned to 0 (bias -1e4) or 1 (bias +1e4) for every row."""
    return dataclasses.replace(gate, bias=bias)


@pytest.fixture(scope="module")
def edits(tiny_stats):
    """(neuron edit, residual edit), strong and ungated."""
    neuron = nv.make_edit(tiny_stats, "power", "neva", sparsity=0.05, magnitude=6.0)
    residual = caa_edit(tiny_stats, "power", [1], 8.0)
    return neuron, residual


def logits(host, batch, edit=None):
    if edit is None:
        return host.model(**batch).logits
    with nv.apply(host, edit):
        return host.model(**batch).logits


def test_statistics_train_a_gate_on_the_gate_part_of_the_neutral_texts(tiny_stats, tiny_host,
                                                                       small_probes) -> None:
    gate = tiny_stats.gate
    hidden = tiny_host.model.config.hidden_size
    assert gate.layer == gate_layer(tiny_host.n_layers, 0.5) == 1
    assert gate.weight.shape == gate.mean.shape == gate.std.shape == (hidden,)
    n_val, n_neu = len(small_probes), len(small_probes.neutral)
    # tiny-llama's tokenizer has a chat template: every text once plain, once chat-wrapped
    assert tiny_stats.gate_features.shape == (2 * (n_val + n_neu), hidden)
    assert int((tiny_stats.gate_labels == NEUTRAL).sum()) == 2 * n_neu > 0
    # training and held-out neutral texts never overlap
    neutral = load_records("neutral")
    train, held_out = neutral_split(neutral, "gate"), neutral_split(neutral, "capability")
    assert set(small_probes.neutral) <= set(train) and not set(train) & set(held_out)
    # deterministic: the same rows give the same probe, bitwise
    again = fit_gate(tiny_stats.gate_features, tiny_stats.gate_labels != NEUTRAL, 1)
    assert torch.equal(again.weight, gate.weight) and again.bias == gate.bias


def test_fit_gate_separates_separable_classes() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, generator=g)
    y = x[:, 0] + 0.5 * x[:, 1] > 0.3  # imbalanced, linearly separable
    gate = fit_gate(x * 5 + 2, y, layer=0)
    p = gate.probability(x * 5 + 2)
    assert ((p > 0.5) == y).float().mean() > 0.97
    with pytest.raises(ValueError, match="neutral"):
        fit_gate(x, torch.ones(200, dtype=torch.bool), layer=0)


def test_gate_values_lie_in_zero_one_and_share_nothing_between_rows(tiny_host, tiny_stats,
                                                                     edits) -> None:
    gated = dataclasses.replace(edits[0], gate=tiny_stats.gate)
    batch = tiny_host.tokenize(PROMPTS)
    # transformers keeps its own output-capturing hooks on the blocks once any test asked
    # for hidden states: compare against what was there before, not against none
    before = [dict(b._forward_hooks) for b in residual_sites(tiny_host.model)]
    with nv.apply(tiny_host, gated) as group:
        tiny_host.model(**batch)
        values = group.editors[0][0].gate_pass.values[0]
    assert values.shape == (len(PROMPTS),)
    assert ((values >= 0) & (values <= 1)).all() and values.std() > 0
    one = []
    for p in PROMPTS:
        with nv.apply(tiny_host, gated) as group:
            tiny_host.model(**tiny_host.tokenize([p]))
            one.append(group.editors[0][0].gate_pass.values[0, 0])
    torch.testing.assert_close(torch.stack(one), values, atol=1e-5, rtol=0)
    # the pre-pass leaves no hook behind and no model suspended
    assert not _SUSPENDED
    assert [dict(b._forward_hooks) for b in residual_sites(tiny_host.model)] == before


@pytest.mark.parametrize("name", ["context", "value"])
@pytest.mark.parametrize("kind", [0, 1], ids=["neurons", "residual"])
def test_gate_zero_is_bitwise_unedited_and_gate_one_is_the_ungated_edit(kind, name, tiny_host,
                                                                        tiny_stats, edits,
                                                                        batch) -> None:
    edit = edits[kind]
    gate = gate_of(tiny_stats, name, "power")
    base, plain = logits(tiny_host, batch), logits(tiny_host, batch, edit)
    assert (plain - base).abs().max() > 1e-4  # the edit acts
    off = dataclasses.replace(edit, gate=forced(gate, -1e4))
    on = dataclasses.replace(edit, gate=forced(gate, 1e4))
    assert torch.equal(logits(tiny_host, batch, off), base)
    assert torch.equal(logits(tiny_host, batch, on), plain)
    gated = dataclasses.replace(edit, gate=gate)  # somewhere in between
    assert gated.describe()["gate"] == name and "gate" not in edit.describe()
    mid = logits(tiny_host, batch, gated)
    assert (mid - base).abs().max() > 0


@pytest.mark.parametrize("kind", [0, 1], ids=["neurons", "residual"])
def test_per_row_gates_in_one_batch_match_one_by_one(kind, tiny_host, tiny_stats, edits
                                                     ) -> None:
    gated = dataclasses.replace(edits[kind], gate=tiny_stats.gate)
    mixed = [gated, edits[kind], None]  # gated, ungated and unedited rows in one batch
    together = next_token_logprobs(tiny_host, PROMPTS, CANDIDATES, mixed)
    for g, e in enumerate(mixed):
        for i, p in enumerate(PROMPTS):
            alone = next_token_logprobs(tiny_host, [p], CANDIDATES, [e])[0, 0]
            torch.testing.assert_close(together[g, i], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-gpt2", "tiny-opt"])
def test_option_scores_equal_continuation_scores_when_gated(arch, small_probes) -> None:
    """The gate pools over the prompt only, so the cached option forward (gates reused,
    repeated per option) equals full prompt + option forwards."""
    host = nv.load_model(arch)
    stats = nv.collect_stats(host, small_probes.shard(0, 3), progress=False)
    gated = [nv.make_edit(stats, "power", "neva", sparsity=0.1, magnitude=4.0, gate="context"),
             nv.make_edit(stats, "power", "caa", coefficient=6.0, gate="context"), None]
    prompts = [host.chat_prompt("You find a wallet on the street."),
               host.chat_prompt("A friend asks to borrow money.\n\nWhat do you do?")]
    opts = [["I keep it.", "I hand it in at the police station nearby.", "I call my mum."],
            ["I lend it gladly.", "No.", "I ask why they need it so badly today."]]
    for positions in ("all", "response"):
        cached = option_logprobs(host, prompts, opts, gated, positions, batch_size=6)
        ctx = [p for p, os_ in zip(prompts, opts) for _ in os_]
        lp, n = continuation_logprobs(host, ctx, [o for os_ in opts for o in os_], gated,
                                      positions, batch_size=5)
        torch.testing.assert_close(cached, (lp / n).view(len(gated), 2, 3), atol=1e-4, rtol=0)
        assert (cached[0] - cached[2]).abs().max() > 1e-5  # the gated edits act


def test_greedy_generation_with_a_gated_edit(tiny_host, tiny_stats, edits) -> None:
    prompts = [tiny_host.chat_prompt(p) for p in PROMPTS[:2]]
    neuron, residual = edits
    out = greedy_generate(tiny_host, prompts, [
        None, dataclasses.replace(neuron, gate=forced(tiny_stats.gate, -1e4)),
        dataclasses.replace(residual, gate=forced(tiny_stats.gate, 1e4)), residual,
        dataclasses.replace(neuron, gate=tiny_stats.gate)], max_new_tokens=6)
    assert out[1] == out[0]  # g = 0 at every step: the unedited replies
    assert out[2] == out[3]  # g = 1: the ungated edit's replies
    assert all(isinstance(r, str) for r in out[4])


def test_kv_cache_rows_must_be_a_multiple_of_the_prompt_rows(tiny_host, tiny_stats, edits
                                                             ) -> None:
    gated = dataclasses.replace(edits[1], gate=tiny_stats.gate)
    batch = tiny_host.tokenize(PROMPTS[:2])
    with nv.apply(tiny_host, gated) as group:
        res = tiny_host.model(**batch, use_cache=True)
        editor = group.editors[0][0]
        assert editor.row_gate(4).shape == (4,)  # k-fold repeats reuse the prompt's gates
        torch.testing.assert_close(editor.row_gate(4),
                                   editor.gate_pass.values[0].repeat_interleave(2))
        with pytest.raises(ValueError, match="multiple of the 2 rows"):
            editor.row_gate(3)
        assert res.past_key_values is not None


def test_prompt_mask_stops_at_the_response_and_falls_back_to_the_text() -> None:
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    m = prompt_mask(mask, torch.tensor([3, 0]))  # row 1: no prompt token before its start
    assert m.tolist() == [[False, True, True, False], [True, True, True, True]]
    assert prompt_mask(mask, None).tolist() == mask.bool().tolist()


def test_stats_round_trip_keep_the_gate_and_old_files_load(tiny_stats, tmp_path) -> None:
    tiny_stats.save(tmp_path / "s.safetensors")
    back = NeuronStats.load(tmp_path / "s.safetensors")
    for name in ("weight", "mean", "std"):
        assert torch.equal(getattr(back.gate, name), getattr(tiny_stats.gate, name))
    assert back.gate.bias == tiny_stats.gate.bias and back.gate.layer == tiny_stats.gate.layer
    assert torch.equal(back.gate_features, tiny_stats.gate_features)
    assert torch.equal(back.gate_labels, tiny_stats.gate_labels)
    # a file without a gate (an older neva_sweep) loads; only asking for a gate fails
    old = dataclasses.replace(tiny_stats, gate=None, gate_features=None, gate_labels=None)
    old.save(tmp_path / "old.safetensors")
    old = NeuronStats.load(tmp_path / "old.safetensors")
    assert old.gate is None
    nv.make_edit(old, "power", "neva")
    for name in ("context", "value"):
        with pytest.raises(ValueError, match=f"gate '{name}' needs statistics with a gate"):
            nv.make_edit(old, "power", "neva", gate=name)


def test_merged_shards_fit_the_same_gate(tiny_host, probes) -> None:
    part = probes.shard(0, 12)
    whole = nv.collect_stats(tiny_host, part, progress=False)
    a, b = (nv.collect_stats(tiny_host, part.shard(r, 2), progress=False) for r in (0, 1))
    merged = merge(a, b)
    assert merged.gate_features.shape == whole.gate_features.shape
    torch.testing.assert_close(merged.gate.weight, whole.gate.weight, atol=1e-4, rtol=1e-3)


def test_gate_parameter_of_the_methods(tiny_stats) -> None:
    for method in ("neva", "random_neurons", "caa"):
        edit = nv.make_edit(tiny_stats, "power", method, gate="context")
        assert edit.gate is tiny_stats.gate and edit.describe()["gate"] == "context"
        assert nv.make_edit(tiny_stats, "power", method).gate is None
        edit = nv.make_edit(tiny_stats, "tradition", method, gate="value")
        assert edit.gate is gate_of(tiny_stats, "value", "tradition")
        assert edit.describe()["gate"] == "value" and edit.describe()["gate_value"] == "tradition"
    with pytest.raises(KeyError, match="unknown gate 'always'.*valid choices: none, context, "
                                       "value"):
        nv.make_edit(tiny_stats, "power", "caa", gate="always")
    for name in ("context", "value"):
        with pytest.raises(TypeError, match="method 'prompt' takes no gate"):
            nv.make_edit(tiny_stats, "power", "prompt", gate=name)
    assert nv.make_edit(tiny_stats, "power", "prompt", gate="none").prefix


def test_gate_accuracy_reports_both_classes(tiny_host, tiny_stats) -> None:
    val = nv.load_probes(split="validate", neutral=False).shard(0, 12)
    acc = gate_accuracy(tiny_stats, tiny_host, val, ["The river is wide.", "Snow fell."])
    assert acc["n_value"] == len(val) and acc["n_neutral"] == 2 and acc["layer"] == 1
    assert 0 <= acc["accuracy"] <= 1 and 0 <= acc["mean_g_neutral"] <= 1


# -- the value gate: one-vs-rest per value, no neutral rows ----------------------------------


def synthetic_rows(n_per_value: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 16) features whose first ten dimensions hold a one-hot of the row's value (+6,
    over unit noise), and (n,) the value of each row: the answer is known."""
    g = torch.Generator().manual_seed(seed)
    values = torch.arange(N_VALUES).repeat_interleave(n_per_value)
    x = torch.randn(len(values), 16, generator=g)
    x[torch.arange(len(values)), values] += 6.0
    return x, values


def test_value_gate_separates_its_value_and_ignores_neutral_rows() -> None:
    x, v = synthetic_rows(20, seed=0)
    chat_x, chat_v = synthetic_rows(20, seed=1)
    neutral = torch.randn(30, 16, generator=torch.Generator().manual_seed(2)) * 10 + 5
    features = torch.cat([x, chat_x, neutral])
    labels = torch.cat([v, GATE_VALUE + chat_v, torch.full((30,), NEUTRAL)])
    assert torch.equal(row_values(labels), torch.cat([v, chat_v, torch.full((30,), -1)]))
    test_x, test_v = synthetic_rows(20, seed=3)
    for t, value in enumerate(VALUES):
        gate = fit_value_gate(features, labels, 4, value)
        assert (gate.name, gate.value, gate.layer) == ("value", value, 4)
        p = gate.probability(test_x)  # held-out rows
        assert ((p > 0.5) == (test_v == t)).float().mean() > 0.95
        assert p[test_v == t].min() > p[test_v != t].median()
    # neutral rows take no part in the fit, and a chat-wrapped row counts as its value
    gate = fit_value_gate(features, labels, 4, "power")
    alone = fit_value_gate(torch.cat([x, chat_x]), torch.cat([v, chat_v]), 4, "power")
    for name in ("weight", "mean", "std"):
        assert torch.equal(getattr(gate, name), getattr(alone, name))
    assert gate.bias == alone.bias
    with pytest.raises(ValueError, match="value gate of 'power' needs gate rows of 'power'"):
        fit_value_gate(x[v != 4], v[v != 4], 4, "power")


def test_value_gate_ranks_its_values_training_rows_first(tiny_stats) -> None:
    v = row_values(tiny_stats.gate_labels)
    for t, value in enumerate(VALUES):
        gate = gate_of(tiny_stats, "value", value)
        assert gate.layer == tiny_stats.gate.layer and gate is not tiny_stats.gate
        p = gate.probability(tiny_stats.gate_features)
        pos, neg = p[v == t], p[(v >= 0) & (v != t)]  # plain and chat-wrapped rows
        assert len(pos) == 12 and len(neg) == 108  # 6 probes per value, twice
        auc = (pos[:, None] > neg[None, :]).float().mean()
        assert auc > 0.95 and pos.mean() > 0.5 > neg.mean(), value


def test_value_gate_fit_is_cached_per_statistics_and_value(tiny_stats) -> None:
    a = gate_of(tiny_stats, "value", "power")
    assert gate_of(tiny_stats, "value", "power") is a
    assert gate_of(tiny_stats, "value", "tradition") is not a
    copy = dataclasses.replace(tiny_stats)  # another statistics object: its own fit, equal
    b = gate_of(copy, "value", "power")
    assert b is not a and torch.equal(b.weight, a.weight) and b.bias == a.bias
    assert gate_of(copy, "value", "power") is b


def test_value_gate_errors_name_the_key_and_the_choices(tiny_stats) -> None:
    with pytest.raises(ValueError, match=r"gate 'value' \(edit.gate / search.space.gates\) "
                                         r"needs the edit's target value.*self_direction"):
        gate_of(tiny_stats, "value")
    with pytest.raises(KeyError, match="unknown value 'kindness'; valid choices: "
                                       "self_direction, stimulation"):
        gate_of(tiny_stats, "value", "kindness")
    with pytest.raises(KeyError, match=r"unknown gate 'values' \(edit.gate / "
                                       r"search.space.gates\); valid choices: none, context, "
                                       r"value"):
        gate_of(tiny_stats, "values", "power")
    assert gate_of(tiny_stats, "context") is tiny_stats.gate  # the value is not needed
    assert gate_of(tiny_stats, "none", "power") is None


def test_value_gate_accuracy_per_value_and_macro(tiny_host, tiny_stats) -> None:
    val = nv.load_probes(split="validate", neutral=False).shard(0, 12)
    acc = value_gate_accuracy(tiny_stats, tiny_host, val, ["The river is wide.", "Snow fell."])
    per = acc["per_value"]
    assert acc["layer"] == 1 and set(per) == {VALUES[t] for t in set(val.labels)}
    for value, r in per.items():
        n = sum(lab == VALUES.index(value) for lab in val.labels)
        assert (r["n_value"], r["n_rest"], r["n_neutral"]) == (n, len(val) - n, 2)
        assert r["balanced_accuracy"] == (r["value_recall"] + r["rest_recall"]) / 2
        assert 0 <= r["mean_g_neutral"] <= 1
    for key in ("accuracy", "balanced_accuracy", "mean_g_neutral"):
        assert acc["macro"][key] == pytest.approx(sum(r[key] for r in per.values()) / len(per))
    assert set(acc["chat"]) == {"per_value", "macro"}  # tiny-llama has a chat template


def test_preflight_names_the_gate_keys(config, tmp_path) -> None:
    from neva_sweep.preflight import preflight

    with pytest.raises(ConfigError, match=r"edit.gate: unknown choice 'always'; valid "
                                          r"choices: none, context, value"):
        preflight(config("task=steer", "value=power", "edit.gate=always"), tmp_path)
    with pytest.raises(ConfigError, match=r"search.space.gates: unknown entry 'always'"):
        preflight(config("search.space.gates=[none,always]"), tmp_path)
    with pytest.raises(ConfigError, match=r"stats.gate_depth: must be in \[0, 1\]"):
        preflight(config("task=identify", "stats.gate_depth=2"), tmp_path)
    no_gate = tmp_path / "neutral.jsonl"
    no_gate.write_text('{"text": "The river is wide."}\n')
    with pytest.raises(ConfigError, match="edit.gate: a gate needs neutral texts"):
        preflight(config("task=steer", "value=power", "edit.gate=context",
                         f"data.neutral={no_gate}"), tmp_path)


def test_neutral_split_is_validated(tmp_path) -> None:
    from neva_sweep.data import DataError

    bad = tmp_path / "neutral.jsonl"
    bad.write_text('{"text": "Snow fell.", "split": "train"}\n')
    with pytest.raises(DataError, match=r"neutral.jsonl:1: split must be one of "
                                        r"\['search', 'test', 'gate'\]"):
        load_records("neutral", bad)
    plain = tmp_path / "plain.jsonl"
    plain.write_text('{"text": "Snow fell."}\n')
    assert neutral_split(load_records("neutral", plain), "capability") == ["Snow fell."]
    assert nv.load_probes(neutral=plain).neutral == ()  # no gate texts: no gate


CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def test_chat_wrapped_rows_train_the_gate_and_leave_the_neuron_statistics_alone(
        small_probes, monkeypatch) -> None:
    """With a chat template, every probe and neutral text reaches the gate a second time as
    a user turn (the form scenarios and MC questions have); the neuron statistics do not see
    those rows."""
    from neva_sweep.config import StatsConfig

    host = nv.load_model("tiny-llama")
    # monkeypatch restores the template: the tokenizer object is shared with other hosts
    monkeypatch.setattr(host.tokenizer, "chat_template", CHAT_TEMPLATE)
    chat = nv.collect_stats(host, small_probes, progress=False)
    plain = nv.collect_stats(host, small_probes, StatsConfig(gate_chat=False), progress=False)
    n_p, n_n = len(small_probes), len(small_probes.neutral)
    labels = chat.gate_labels
    assert int((labels >= GATE_VALUE).sum()) == n_p and int((labels == NEUTRAL).sum()) == 2 * n_n
    # a chat-wrapped probe keeps its value (GATE_VALUE + t), in the plain rows' order
    assert torch.equal(labels[labels >= GATE_VALUE] - GATE_VALUE, labels[labels < N_VALUES])
    assert len(plain.gate_labels) == n_p + n_n
    monkeypatch.setattr(host.tokenizer, "chat_template", None)  # no template: nothing to wrap
    assert len(nv.collect_stats(host, small_probes, progress=False).gate_labels) == n_p + n_n
    monkeypatch.setattr(host.tokenizer, "chat_template", CHAT_TEMPLATE)
    for name in ("count", "mean", "m2", "positive", "hist", "resid_sum"):
        assert torch.equal(getattr(chat, name), getattr(plain, name)), name
    # the chat rows are the plain rows' texts wrapped: their features differ
    wrapped = chat.gate_features[labels >= GATE_VALUE]
    assert not torch.allclose(wrapped, chat.gate_features[labels < N_VALUES])
    acc = gate_accuracy(chat, host, small_probes.shard(0, 12), ["The river is wide."])
    assert set(acc["chat"]) == set(acc) - {"layer", "chat"}
    assert acc["chat"]["n_value"] == acc["n_value"]
