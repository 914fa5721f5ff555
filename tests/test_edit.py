"""Edit contract, parametrised over every rule and position mode."""

import pytest
import torch

import neva_sweep as nv
from neva_sweep.edit import POSITIONS, RULES, EditSpec, edit_rows
from tests.conftest import capture_site_inputs


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
    # Layer 0 selected neurons follow the rule exactly.
    sel0 = vn.layer == 0
    idx = vn.index[sel0]
    a = before[0][..., idx]
    b = after[0][..., idx]
    if rule == "add":
        torch.testing.assert_close(b, a + 3.0 * vn.mean_diff[sel0])
    elif rule == "scale":
        torch.testing.assert_close(b, a * 4.0)
    else:
        torch.testing.assert_close(b, torch.maximum(a, 3.0 * vn.quantile[sel0]))


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
    with pytest.raises(KeyError, match="unknown edit rule 'shift'.*add, scale, set"):
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
