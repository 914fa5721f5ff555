"""Edit contract, parametrised over every rule and position mode, and over every edit kind."""

import json
from dataclasses import fields

import pytest
import torch

import neva_sweep as nv
from neva_sweep.edits.neuron import POSITIONS, RULES, EditSpec, NeuronEdit, edit_rows
from neva_sweep.edits.prompt import PromptEdit, prompt_edit
from neva_sweep.edits.residual import caa_edit
from neva_sweep.evaluation.scoring import next_token_logprobs
from tests.helpers import capture_site_inputs, n_hooks, same


@pytest.fixture(scope="module")
def nmap(tiny_stats):
    return nv.select_neurons(tiny_stats, sparsity=0.05)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("positions", POSITIONS)
def test_zero_magnitude_is_bitwise_identity(tiny_host, nmap, batch, rule, positions):
    base = tiny_host.model(**batch).logits
    with nv.edit(tiny_host, nmap, magnitude=0.0, rule=rule, positions=positions,
                 value="power"):
        zero = tiny_host.model(**batch).logits
    assert torch.equal(base, zero)


@pytest.mark.parametrize("rule", RULES)
def test_edit_changes_only_selected_neurons(tiny_host, nmap, batch, rule):
    before = capture_site_inputs(tiny_host, lambda: tiny_host.model(**batch))
    with nv.edit(tiny_host, nmap, magnitude=3.0, rule=rule, value="power"):
        after = capture_site_inputs(tiny_host, lambda: tiny_host.model(**batch))
    vn = nmap["power"]
    mask = batch.attention_mask.bool()
    for layer in range(tiny_host.n_layers):
        selected = torch.zeros(96, dtype=torch.bool)
        selected[vn.index[vn.layer == layer]] = True
        changed = (before[layer] != after[layer])[mask]  # (tokens, 96)
        if layer == 0:  # nothing upstream is edited: unselected neurons are untouched
            assert not changed[:, ~selected].any()
        if selected.any() and rule != "set":
            assert changed[:, selected].any()
    # Layer 0 selected neurons follow the rule's a' = max(a * (1 + s) + b, f) where
    # d * (a - t) > 0 exactly, and keep a bitwise where they are off.
    sel0 = vn.layer == 0
    idx = vn.index[sel0]
    a = before[0][..., idx]
    c = NeuronEdit(vn, rule, 3.0).coefficients().take(sel0)
    on = c.direction * (a - c.threshold) > 0
    torch.testing.assert_close(after[0][..., idx],
                               torch.where(on, torch.maximum(a * (1 + c.scale) + c.shift,
                                                             c.floor), a))
    assert torch.equal(after[0][..., idx][~on], a[~on])


def test_response_positions_edit_last_prompt_token_and_generation(tiny_host, nmap):
    enc = tiny_host.tokenize(["first prompt here", "second"], padding_side="left")
    layer = int(nmap["power"].layer[0])  # a layer holding edited neurons
    before = capture_site_inputs(tiny_host, lambda: tiny_host.model(**enc))
    with nv.edit(tiny_host, nmap, magnitude=5.0, rule="scale", positions="response",
                 value="power") as editor:
        after = capture_site_inputs(tiny_host, lambda: tiny_host.model(**enc))
        diff = (before[layer] != after[layer]).any(-1)  # (B, S)
        assert diff[:, -1].all() and not diff[:, :-1].any()
        # Teacher-forced scoring: response starts at position 2 for row 0, 3 for row 1.
        editor.response_start = torch.tensor([2, 3])
        after = capture_site_inputs(tiny_host, lambda: tiny_host.model(**enc))
        diff = (before[layer] != after[layer]).any(-1)
        assert diff[0, 1:].all() and not diff[0, :1].any()
        assert diff[1, 2:].all() and not diff[1, :2].any()


def test_hooks_removed_after_exception(tiny_host, nmap):
    with pytest.raises(RuntimeError, match="boom"):
        with nv.edit(tiny_host, nmap, value="power"):
            assert any(len(s._forward_pre_hooks) for s in tiny_host.sites)
            raise RuntimeError("boom")
    assert all(len(s._forward_pre_hooks) == 0 for s in tiny_host.sites)
    assert len(tiny_host.model._forward_pre_hooks) == 0


def test_per_row_edits_equal_one_by_one(tiny_host, nmap):
    texts = ["I help my friends.", "Rules keep order.", "Taste every dish.", "Plain text."]
    specs = [EditSpec(nmap["power"], "add", 4.0), EditSpec(nmap["benevolence"], "scale", 1.5),
             EditSpec(nmap["hedonism"], "set", 2.0)]
    groups = torch.tensor([0, 1, 2, -1])
    enc = tiny_host.tokenize(texts)
    with edit_rows(tiny_host, specs, groups):
        together = tiny_host.model(**enc).logits
    for row, g in enumerate(groups.tolist()):
        one = tiny_host.tokenize([texts[row]])
        n = one.input_ids.shape[1]
        if g < 0:
            alone = tiny_host.model(**one).logits
        else:
            with edit_rows(tiny_host, [specs[g]], torch.zeros(1, dtype=torch.long)):
                alone = tiny_host.model(**one).logits
        torch.testing.assert_close(together[row, :n], alone[0], atol=1e-5, rtol=1e-5)


def test_default_edit_and_errors(tiny_host, nmap, batch):
    base = tiny_host.model(**batch).logits
    with nv.edit(tiny_host, nmap.only("power")):  # the documented default rule and magnitude
        edited = tiny_host.model(**batch).logits
    assert not torch.equal(base, edited)
    with pytest.raises(ValueError, match="pass value="):
        with nv.edit(tiny_host, nmap):
            pass
    with pytest.raises(KeyError, match="unknown edit rule 'shift'.*add, add_sd, scale, set, "
                                       "gate_neuron"):
        with nv.edit(tiny_host, nmap, rule="shift", value="power"):
            pass
    with pytest.raises(KeyError, match="edit.positions"):
        with nv.edit(tiny_host, nmap, positions="prompt", value="power"):
            pass
    other = nv.load_model("tiny-gpt2")
    other.layer_sizes = [64, 64]
    with pytest.raises(ValueError, match="built for another model"):
        with nv.edit(other, nmap, value="power"):
            pass


# -- the contract of every edit kind (neurons, residual vectors, prompt prefixes) -------------
KIND_PROMPTS = ["I help my friends.", "Rules keep order.", "Plain text."]
KIND_CANDIDATES = torch.arange(128)


def _kinds(stats, nmap) -> dict[str, tuple]:
    """Per kind: (edit of strength x, rebuild(describe(), edit) -> an equal edit)."""
    return {
        "neurons": (lambda x: NeuronEdit(nmap["power"], "add", x, "all"),
                    lambda d, e: NeuronEdit(e.neurons, d["rule"], d["magnitude"], e.positions)),
        "residual": (lambda x: caa_edit(stats, "power", [1], x, "all"),
                     lambda d, e: caa_edit(stats, "power", d["layers"], d["coefficient"],
                                           e.positions)),
        "prompt": (lambda x: prompt_edit("power", int(x)) if x else PromptEdit(""),
                   lambda d, e: PromptEdit(d["prefix"])),
    }


KINDS = ("neurons", "residual", "prompt")


def test_every_edit_kind_is_covered(tiny_stats, nmap):
    kinds = _kinds(tiny_stats, nmap)
    assert set(kinds) == set(KINDS)
    assert {kinds[k][0](3).kind for k in KINDS} == set(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_edit_kind_contract(kind, tiny_host, tiny_stats, nmap):
    make, rebuild = _kinds(tiny_stats, nmap)[kind]
    strong, zero, other = make(3), make(0), make(2)

    # Size, title, description: JSON-able, and enough to rebuild the edit.
    assert strong.n_neurons == (len(nmap["power"]) if kind == "neurons" else 0)
    assert strong.title() and "\n" not in strong.title()
    about = json.loads(json.dumps(strong.describe()))
    assert about == strong.describe() and about["kind"] == kind
    assert same(rebuild(about, strong), strong)

    # Installs its hooks (prompt edits have none) and removes them on exit.
    before = n_hooks(tiny_host)
    with nv.apply(tiny_host, strong) as group:
        assert (n_hooks(tiny_host) > before) == (kind != "prompt")
        assert group.prefixes == [tiny_host.tokenizer(strong.prefix,
                                                      add_special_tokens=False).input_ids
                                  if strong.prefix else []]
    assert n_hooks(tiny_host) == before

    # Strength 0 (an empty prompt) is bitwise the unedited model; a strong edit is not.
    base = next_token_logprobs(tiny_host, KIND_PROMPTS, KIND_CANDIDATES, [None])[0]
    z = next_token_logprobs(tiny_host, KIND_PROMPTS, KIND_CANDIDATES, [zero])[0]
    s = next_token_logprobs(tiny_host, KIND_PROMPTS, KIND_CANDIDATES, [strong])[0]
    assert torch.equal(z, base)
    assert (s - base).abs().max() > 1e-4
    batch = tiny_host.tokenize(KIND_PROMPTS)
    plain = tiny_host.model(**batch).logits
    with nv.apply(tiny_host, zero):
        assert torch.equal(tiny_host.model(**batch).logits, plain)

    # Per-row groups: several edits of the kind (and none) in one batch, as one by one.
    together = next_token_logprobs(tiny_host, KIND_PROMPTS, KIND_CANDIDATES,
                                   [strong, None, other])
    for g, e in enumerate([strong, None, other]):
        alone = next_token_logprobs(tiny_host, KIND_PROMPTS, KIND_CANDIDATES, [e])[0]
        torch.testing.assert_close(together[g], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_apply_removes_hooks_after_exception(kind, tiny_host, tiny_stats, nmap):
    edit = _kinds(tiny_stats, nmap)[kind][0](3)
    before = n_hooks(tiny_host)
    with pytest.raises(RuntimeError, match="boom"):
        with nv.apply(tiny_host, edit):
            raise RuntimeError("boom")
    assert n_hooks(tiny_host) == before


def test_apply_positions_default_to_the_edit_s_own(tiny_host, nmap):
    enc = tiny_host.tokenize(["first prompt here", "second"], padding_side="left")
    layer = int(nmap["power"].layer[0])
    before = capture_site_inputs(tiny_host, lambda: tiny_host.model(**enc))
    response = NeuronEdit(nmap["power"], "scale", 5.0, "response")
    for positions, only_last in ((None, True), ("all", False)):
        with nv.apply(tiny_host, response, positions):
            after = capture_site_inputs(tiny_host, lambda: tiny_host.model(**enc))
        diff = (before[layer] != after[layer]).any(-1)  # (B, S)
        assert diff[:, -1].all() and diff[:, :-1].any() != only_last
    with nv.apply(tiny_host, NeuronEdit(nmap["power"], "scale", 5.0)) as group:
        assert group.editors[0][0].positions == "all"  # no positions of its own: all


def test_rules_are_a_registry_with_their_formula(nmap):
    vn = nmap["power"]
    k = len(vn)
    for rule in RULES:
        c = NeuronEdit(vn, rule, 2.0).coefficients()
        assert all(getattr(c, f.name).shape == (k,) for f in fields(c))
    neg_inf, zero, one = torch.full((k,), -torch.inf), torch.zeros(k), torch.ones(k)
    delta = vn.mean_diff.float()
    # (s, b, f, t, d) of a' = max(a (1 + s) + b, f) where d (a - t) > 0, else a
    expected = {"add": (zero, 2.0 * delta, neg_inf, neg_inf, one),  # a += 2 (mu_t - mu_rest)
                # a += 2 sd in the direction of mu_t - mu_rest
                "add_sd": (zero, 2.0 * delta.sign() * vn.std, neg_inf, neg_inf, one),
                "scale": (torch.full((k,), 2.0), zero, neg_inf, neg_inf, one),  # a *= 1 + 2
                "set": (zero, zero, 2.0 * vn.quantile.float(), zero, one),  # where a > 0
                # a += 2 delta where a is past the midpoint of mu_ref and mu_t, towards mu_t
                "gate_neuron": (zero, 2.0 * delta, neg_inf, vn.mean_ref + delta / 2,
                                torch.where(delta < 0, -1.0, 1.0))}
    assert set(expected) == set(RULES)  # every registered rule has its formula checked
    for rule, coef in expected.items():
        got = RULES[rule](vn, 2.0)
        assert all(torch.equal(getattr(got, f.name), x) for f, x in zip(fields(got), coef)), rule
        assert got.conditioned().any() == (rule in ("set", "gate_neuron")), rule
    with pytest.raises(KeyError, match=r"unknown edit rule 'shift' \(edit.rule\); valid "
                                       r"choices: add, add_sd, scale, set, gate_neuron"):
        NeuronEdit(vn, "shift")


def test_anti_specific_neurons_are_damped(tiny_stats, tiny_host, batch):
    vn = nv.select_neurons(tiny_stats, "power", sparsity=0.05, polarity="both")["power"]
    anti = vn.score < 0
    assert anti.any() and (~anti).any()
    s = NeuronEdit(vn, "scale", 3.0).coefficients().scale
    assert torch.allclose(1 + s[anti], torch.tensor(0.25)) and (s[~anti] == 3.0).all()
    b = NeuronEdit(vn, "add_sd", 2.0).coefficients().shift
    assert (b[anti] < 0).all() and (b[~anti] > 0).all()
    gate = NeuronEdit(vn, "gate_neuron", 2.0).coefficients()  # pushed down below the midpoint
    assert (gate.shift[anti] < 0).all() and (gate.direction[anti] == -1).all()
    with pytest.raises(ValueError, match="rule set only raises activations"):
        NeuronEdit(vn, "set", 2.0).coefficients()
    # magnitude 0 stays bitwise identical with damped neurons too
    base = tiny_host.model(**batch).logits
    with edit_rows(tiny_host, [NeuronEdit(vn, "scale", 0.0)], torch.zeros(1, dtype=torch.long)):
        assert torch.equal(tiny_host.model(**batch).logits, base)


@pytest.mark.parametrize("rule,field", [("add_sd", "std"), ("gate_neuron", "mean_ref")])
def test_rules_need_the_fields_of_newer_maps(nmap, rule, field):
    from dataclasses import replace

    old = replace(nmap["power"], **{field: None})  # as in maps saved before the field
    with pytest.raises(ValueError, match=f"rule {rule} needs .*select the neurons again"):
        NeuronEdit(old, rule, 2.0).coefficients()
