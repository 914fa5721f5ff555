"""Method contract (tier 2), over every registered steering method on a tiny model."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

import neva_sweep as nv
from neva_sweep.edits.neuron import NeuronEdit
from neva_sweep.edits.prompt import PromptEdit
from neva_sweep.edits.residual import ResidualEdit
from neva_sweep.evaluation.scoring import next_token_logprobs
from neva_sweep.methods import METHODS
from neva_sweep.models.arch import residual_sites
from neva_sweep.neurons.gate import gate_of
from neva_sweep.sweep import best_edit_spec
from tests.helpers import StatsRef, same

# Per method: parameters of a strong edit, and the key that sets its strength to zero.
PARAMS = {
    "neva": ({"sparsity": 0.05, "magnitude": 6.0, "rule": "add_sd", "score": "contrast_d",
              "polarity": "both", "positions": "all", "layer_window": "all"}, "magnitude"),
    "random_neurons": ({"sparsity": 0.05, "magnitude": 6.0, "rule": "scale", "seed": 3,
                        "positions": "all", "layer_window": "all"}, "magnitude"),
    "diffmean": ({"layer_frac": 0.5, "n_layers": 1, "coefficient": 8.0, "positions": "all"},
                 "coefficient"),
    "caa_pairs": ({"layer_frac": 0.5, "n_layers": 1, "strength": 2.0, "positions": "response"},
                  "strength"),
    "prompt": ({"strength": 3, "positions": "all"}, "strength"),
}
ALIASES = {"caa": "diffmean"}  # deprecated names: the same method object
PROMPTS = ["Is this person like you?", "What should I do this weekend?"]
CANDIDATES = torch.arange(200)


def test_every_registered_method_is_covered() -> None:
    """Every method of the package (other tests may register their own: not counted)."""
    ours = {n for n in METHODS if type(METHODS[n]).__module__.startswith("neva_sweep.")}
    assert ours == set(PARAMS) | set(ALIASES)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_zero_strength_is_identity_and_strength_moves_logits(name, tiny_host, tiny_stats
                                                             ) -> None:
    params, knob = PARAMS[name]
    method = METHODS[name]
    strong = method.build(tiny_stats, "tradition", params)
    zero = method.build(tiny_stats, "tradition", {**params, knob: 0})
    assert isinstance(strong, (NeuronEdit, ResidualEdit, PromptEdit))
    # Same batch composition for each run, so any difference comes from the edit alone.
    base, z, s = (next_token_logprobs(tiny_host, PROMPTS, CANDIDATES, [e])[0]
                  for e in (None, zero, strong))
    torch.testing.assert_close(z, base, atol=0, rtol=0)
    assert (s - base).abs().max() > 1e-4


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_build_is_deterministic(name, tiny_stats) -> None:
    params, _ = PARAMS[name]
    a = METHODS[name].build(tiny_stats, "power", params)
    b = METHODS[name].build(tiny_stats, "power", params)
    assert same(a, b)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_a_calibrated_method_builds_at_every_setting_its_layout_names(name, tiny_stats
                                                                     ) -> None:
    """A method's ``layout`` is all the sweep's calibration reads of it: its keys exist in
    the search space and every calibrated setting builds (at a strength), for a plug-in
    method as for these."""
    from omegaconf import OmegaConf

    from neva_sweep.config import SearchSpace
    from neva_sweep.sweep.calibrate import anchor_params, strength_range

    method = METHODS[name]
    layout = method.layout
    space = OmegaConf.structured(SearchSpace)
    if layout is None:  # nothing to calibrate: searched as it is
        assert strength_range(space, name) is None
        return
    assert layout.axis in method.defaults
    assert set(method.reference(space)) <= set(method.defaults)
    lo, hi = strength_range(space, name)
    settings = anchor_params(name, space, 4)
    assert [p[layout.axis] for p in settings] == sorted({p[layout.axis] for p in settings})
    assert len(settings) == 4 and settings[0][layout.axis] == OmegaConf.select(
        space, layout.axis_range)[0]
    for params in settings:
        assert set(params) == set(method.defaults)
        method.build(tiny_stats, "power", {**params, "strength": (lo * hi) ** 0.5})


def test_same_compares_tensors_exactly(tiny_stats) -> None:
    params, _ = PARAMS["neva"]
    a = METHODS["neva"].build(tiny_stats, "power", params)
    b = METHODS["neva"].build(tiny_stats, "power", {**params, "magnitude": 5.0})
    nudged = a.neurons.mean_diff.clone()
    nudged[0] += 1e-6  # a change too small for a tensor's repr
    c = dataclasses.replace(a, neurons=dataclasses.replace(a.neurons, mean_diff=nudged))
    assert repr(c) == repr(a) and not same(a, c)
    assert not same(a, b) and same(a, dataclasses.replace(a))


def test_random_neurons_follow_the_seed_and_neva_count(tiny_stats) -> None:
    params, _ = PARAMS["random_neurons"]
    a = METHODS["random_neurons"].build(tiny_stats, "power", params)
    b = METHODS["random_neurons"].build(tiny_stats, "power", {**params, "seed": 4})
    neva = METHODS["neva"].build(tiny_stats, "power", PARAMS["neva"][0])
    assert len(a.neurons) == len(neva.neurons)  # same count at the same sparsity
    ids = lambda s: set(zip(s.neurons.layer.tolist(), s.neurons.index.tolist()))  # noqa: E731
    assert ids(a) != ids(b)


@pytest.mark.parametrize("name", ["diffmean", "caa_pairs"])
def test_residual_layer_fraction_maps_onto_depth(name, tiny_stats) -> None:
    build = METHODS[name].build
    first = build(tiny_stats, "power", {**PARAMS[name][0], "layer_frac": 0.0})
    last = build(tiny_stats, "power", {**PARAMS[name][0], "layer_frac": 1.0, "n_layers": 3})
    assert first.layers == (0,) and last.layers == (nv.load_model("tiny-llama").n_layers - 1,)


# -- caa_pairs: the vector, its positions; diffmean's former name --------------------------
def first_block_output(host, batch) -> torch.Tensor:
    """Block 0's output hidden state as the next block reads it (after any edit's hook),
    (B, S, H)."""
    seen = []
    handle = residual_sites(host.model)[0].register_forward_hook(
        lambda module, args, out: seen.append(out[0] if isinstance(out, tuple) else out))
    try:
        host.model(**batch)
    finally:
        handle.remove()
    return seen[0]


def test_caa_pairs_adds_strength_times_the_residual_norm_along_the_pair_difference(
        tiny_host, tiny_stats) -> None:
    """On the collected stance pairs of the tiny statistics."""
    t, strength = nv.VALUES.index("tradition"), 0.3
    edit = nv.make_edit(tiny_stats, "tradition", "caa_pairs", layer_frac=0.0,
                        strength=strength, positions="all")
    batch = tiny_host.tokenize(PROMPTS)
    base = first_block_output(tiny_host, batch)
    with nv.apply(tiny_host, edit):
        added = first_block_output(tiny_host, batch) - base  # (B, S, H)
    real = batch.attention_mask.bool()
    norms = added[real].double().norm(dim=-1)  # every token got the same vector
    expected = strength * float(tiny_stats.pair_resid_norm[0])
    torch.testing.assert_close(norms, torch.full_like(norms, expected), atol=1e-6, rtol=1e-5)
    direction = tiny_stats.pair_resid_mean[t, 0]  # (H,)
    cosine = torch.nn.functional.cosine_similarity(added[real].double(), direction[None], dim=-1)
    torch.testing.assert_close(cosine, torch.ones_like(cosine), atol=1e-5, rtol=0)


def test_caa_pairs_edits_the_response_only(tiny_host, tiny_stats) -> None:
    """Published CAA adds after the instruction: under positions="response" the logits of
    the prompt tokens before the last one stay bitwise the same, later ones all move (the
    last prompt token's output predicts the first response token)."""
    edit = nv.make_edit(tiny_stats, "power", "caa_pairs", strength=2.0)
    assert edit.positions == "response"
    batch = tiny_host.tokenize(["I help my neighbour carry boxes."])  # one row, no padding
    start = 4  # the response starts at token 4: tokens 0-3 are the prompt
    base = tiny_host.model(**batch).logits[0]  # (S, vocab)
    with nv.apply(tiny_host, edit) as group:
        group.set_response_start(torch.tensor([start]))
        edited = tiny_host.model(**batch).logits[0]
    torch.testing.assert_close(edited[: start - 1], base[: start - 1], atol=0, rtol=0)
    assert ((edited[start - 1:] - base[start - 1:]).abs().amax(-1) > 1e-5).all()


def test_caa_pairs_without_stance_pairs_says_how_to_recollect(tiny_stats) -> None:
    stats = copy.copy(tiny_stats)
    stats.pair_resid_sum = stats.pair_resid_count = stats.pair_resid_norm = None
    with pytest.raises(ValueError, match="hold no stance pairs.*delete the cached statistics"):
        nv.make_edit(stats, "power", "caa_pairs")
    nv.make_edit(stats, "power", "diffmean")  # the other residual method needs none


def test_caa_is_diffmean_under_its_former_name(tiny_stats, monkeypatch, caplog) -> None:
    monkeypatch.setattr(METHODS, "_warned", set())  # as in a fresh process
    with caplog.at_level("WARNING", logger="neva_sweep.registry"):
        assert METHODS["caa"] is METHODS["diffmean"] and METHODS["caa"] is METHODS["caa"]
    warnings = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert len(warnings) == 1 and "'caa'" in warnings[0] and "diffmean" in warnings[0]
    params, _ = PARAMS["diffmean"]
    assert same(nv.make_edit(tiny_stats, "power", "caa", **params),
                nv.make_edit(tiny_stats, "power", "diffmean", **params))
    assert METHODS.canonical("caa") == "diffmean" and "caa" in METHODS.names()


# -- nv.make_edit: every method, with its documented defaults or given parameters -----------
DEFAULTS = {
    # strength None: the raw magnitude or coefficient (a given strength wins over them)
    "neva": {"sparsity": 2e-3, "magnitude": 4.0, "strength": None, "rule": "add",
             "score": "mean_diff", "polarity": "positive", "positions": "all",
             "layer_window": "all", "gate": "none"},
    "random_neurons": {"sparsity": 2e-3, "magnitude": 4.0, "strength": None, "rule": "add",
                       "positions": "all", "layer_window": "all", "gate": "none", "seed": 0},
    "diffmean": {"layer_frac": 0.5, "n_layers": 1, "coefficient": 2.0, "strength": None,
                 "positions": "all", "gate": "none"},
    "caa_pairs": {"layer_frac": 0.5, "n_layers": 1, "strength": 0.2, "positions": "response",
                  "gate": "none"},
    "prompt": {"strength": 3, "positions": "all"},
}


def test_documented_defaults() -> None:
    assert {name: METHODS[name].defaults for name in PARAMS} == DEFAULTS


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_make_edit_with_defaults_and_with_params(name, tiny_stats) -> None:
    method = METHODS[name]
    default = nv.make_edit(tiny_stats, "power", name)
    assert same(default, method.build(tiny_stats, "power", DEFAULTS[name]))
    params, knob = PARAMS[name]
    given = nv.make_edit(tiny_stats, "power", name, **params)
    assert same(given, method.build(tiny_stats, "power", params))
    one = {knob: params[knob]}  # one parameter given, the rest defaults
    assert same(nv.make_edit(tiny_stats, "power", name, **one),
                method.build(tiny_stats, "power", {**DEFAULTS[name], **one}))
    assert given.positions in (params["positions"], None)
    assert given.describe()["kind"] == given.kind


def test_make_edit_errors_name_what_is_valid(tiny_stats) -> None:
    with pytest.raises(TypeError, match="magnitud .*'neva'.*valid: sparsity, magnitude, strength"):
        nv.make_edit(tiny_stats, "power", magnitud=3.0)
    with pytest.raises(KeyError, match="unknown method 'steer'; valid choices: neva"):
        nv.make_edit(tiny_stats, "power", "steer")
    with pytest.raises(KeyError, match="kindness"):
        nv.make_edit(tiny_stats, "kindness")
    neva = nv.make_edit(tiny_stats, "power", layer_window=[1, 2], sparsity=0.05)
    assert set(neva.neurons.layer.tolist()) == {1}  # a [start, stop) list works too


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_best_edit_entries_rebuild_with_defaults_for_absent_params(name, tiny_stats, tmp_path
                                                                    ) -> None:
    """An older best_edits.json entry that lacks some parameters still loads."""
    params, knob = PARAMS[name]
    entry = {"model": "tiny-llama", "value": "power", "method": name,
             "params": {knob: params[knob]}}
    edit = best_edit_spec(entry, stats=lambda: tiny_stats)
    assert same(edit, nv.make_edit(tiny_stats, "power", name, **entry["params"]))
    if edit.n_neurons:  # from the saved neurons, without statistics
        path = tmp_path / "power.safetensors"
        nv.NeuronMap({"power": edit.neurons}, list(tiny_stats.layer_sizes)).save(path)
        assert same(best_edit_spec({**entry, "neurons": str(path)}), edit)


# -- the hooked methods again, gated (neva_sweep/neurons/gate.py) ----------------------------------
GATED = ("neva", "random_neurons", "diffmean", "caa_pairs")  # prompt edits take no gate
GATES = ("context", "value")  # every gate but none


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("name", GATED)
def test_gated_zero_strength_is_identity_and_strength_moves_logits(name, gate, tiny_host,
                                                                   tiny_stats) -> None:
    params, knob = PARAMS[name]
    params = {**params, "gate": gate}
    method = METHODS[name]
    strong = method.build(tiny_stats, "tradition", params)
    zero = method.build(tiny_stats, "tradition", {**params, knob: 0})
    assert strong.gate is gate_of(tiny_stats, gate, "tradition")
    assert strong.describe()["gate"] == gate
    base, z, s = (next_token_logprobs(tiny_host, PROMPTS, CANDIDATES, [e])[0]
                  for e in (None, zero, strong))
    torch.testing.assert_close(z, base, atol=0, rtol=0)
    assert (s - base).abs().max() > 1e-4


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("name", GATED)
def test_gated_build_make_edit_and_best_edit_entries(name, gate, tiny_stats, tmp_path) -> None:
    params, knob = PARAMS[name]
    params = {**params, "gate": gate}
    a = METHODS[name].build(tiny_stats, "power", params)
    assert same(a, METHODS[name].build(tiny_stats, "power", params))
    assert same(nv.make_edit(tiny_stats, "power", name, **params), a)
    assert not same(a, METHODS[name].build(tiny_stats, "power", {**params, "gate": "none"}))
    entry = {"model": "tiny-llama", "value": "power", "method": name, "params": params}
    assert same(best_edit_spec(entry, stats=lambda: tiny_stats), a)
    if a.n_neurons:  # the saved neurons, with the gate from the statistics
        path = tmp_path / "power.safetensors"
        nv.NeuronMap({"power": a.neurons}, list(tiny_stats.layer_sizes)).save(path)
        assert same(best_edit_spec({**entry, "neurons": str(path)}, stats=lambda: tiny_stats),
                    a)
        with pytest.raises(FileNotFoundError, match="gated and needs statistics"):
            best_edit_spec({**entry, "neurons": str(path)})


def test_neva_search_space_never_samples_an_edit_it_refuses(tiny_stats) -> None:
    """polarity=both with rule set or an unsigned score is refused by make_edit, so the
    space draws polarity only where both is buildable; every sampled trial builds."""
    import optuna
    from omegaconf import OmegaConf

    from neva_sweep.config import SearchSpace
    from neva_sweep.sweep.samplers import make_sampler

    space = SearchSpace(sparsity=[0.01, 0.9], rules=["add", "set"], scores=["mean_diff", "lape"],
                        polarities=["positive", "both"], gates=["none"])
    search = OmegaConf.create({"sampler": "tpe", "n_startup_trials": 4})
    study = optuna.create_study(sampler=make_sampler(search, 0))
    seen = set()
    for i in range(16):
        trial = study.ask()
        params = METHODS["neva"].suggest(trial, space)
        seen.add((params["rule"], params["score"], params["polarity"]))
        nv.make_edit(tiny_stats, "power", "neva", **params)  # raises if refused
        study.tell(trial, float(i % 5))
    assert ("add", "mean_diff", "both") in seen or ("add", "mean_diff", "positive") in seen
    assert not {s for s in seen if s[2] == "both" and (s[0] == "set" or s[1] == "lape")}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_every_method_is_scored_on_the_test_split_against_its_nulls(
        name, tiny_host, tiny_stats, tmp_path, monkeypatch) -> None:
    """The held-out pass (worker.score_heldout) as a replica runs it: the edit and two
    dose-matched nulls (a prompt's: placebo prompts of its length) give a z-score."""
    from neva_sweep.config import compose_config
    from neva_sweep.sweep import worker
    from neva_sweep.sweep.rescore import heldout_setup
    from neva_sweep.sweep.run import eval_setup
    from tests.helpers import small_scenarios

    cfg = compose_config("model=tiny_llama", f"cache_dir={tmp_path}",
                         f"data.scenarios={small_scenarios(tmp_path / 's.jsonl', 2, 4)}",
                         "sweep.capability.neutral_limit=2", "progress=false")
    monkeypatch.setattr(worker, "_STATS", {StatsRef().hex(): tiny_stats})
    monkeypatch.setattr(worker, "_EVALUATORS", {})
    job = {"value": "power", "method": name, "params": PARAMS[name][0], "n_nulls": 2,
           "seed": 0}
    (rec,) = worker.score_heldout(tiny_host, [StatsRef()], heldout_setup(eval_setup(cfg)),
                                  [job])
    assert "error" not in rec, rec.get("error")
    assert rec["split"] == "test" and rec["n_queries"] == 4 and rec["null"]["n"] == 2
    assert rec["z"] is not None and (rec["push"] is None) == (name == "prompt")
