"""One declaration per default, one name per parameter.

The dataclass schemas of neva_sweep/config.py are the single source of every default: the
YAML group options set only what differs from them, and the code that needs a default
(NeVA's, the report's objectives) reads it from there. Search-space keys are the
methods' parameter names; the former flat keys still work for one release, with a
warning.
"""

from __future__ import annotations

import json
import logging

import pytest
from omegaconf import OmegaConf

from neva_sweep import config as schema
from neva_sweep.config import (
    ClusterConfig,
    ConfigError,
    EditConfig,
    JudgeConfig,
    LoggerConfig,
    SearchConfig,
    compose_config,
    group_options,
    load_group_option,
)
from neva_sweep.methods import METHODS
from neva_sweep.methods.base import window_label
from neva_sweep.sweep import front
from neva_sweep.sweep.identity import IDENTITY_FILE, check_identity, identity
from neva_sweep.sweep.plan import check_search, make_plan

# The key that says what a group option is (judge=lexicon sets name: lexicon), which may
# equal the schema's default: the option names itself, it does not restate a default.
IDENTIFYING = {"judge": "name", "logger": "kind", "cluster": "kind"}
SCHEMAS = {"search": SearchConfig, "logger": LoggerConfig, "cluster": ClusterConfig,
           "judge": JudgeConfig}
FAST = ["model=tiny_llama", "logger=none", "sweep.values=[power]"]


def flat(tree: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.mark.parametrize("group", sorted(SCHEMAS))
def test_group_options_set_only_what_differs_from_the_schema(group):
    """A group option restating a default would be a second declaration of it, free to
    drift from the schema (as search.space.sparsity once did: [5e-4, 1e-2] against
    [5e-4, 0.2])."""
    defaults = flat(OmegaConf.to_container(OmegaConf.structured(SCHEMAS[group])))
    for name in group_options(group):
        option = flat(OmegaConf.to_container(load_group_option(group, name)))
        unknown = sorted(set(option) - set(defaults))
        assert not unknown, f"conf/{group}/{name}.yaml: keys the schema lacks: {unknown}"
        restated = sorted(k for k, v in option.items()
                          if v == defaults[k] and k != IDENTIFYING.get(group))
        assert not restated, (f"conf/{group}/{name}.yaml restates the schema's defaults of "
                              f"{restated}: declare them once, in neva_sweep/config.py")


def test_the_composed_default_config_is_the_schema():
    """Without a preset, what `python -m neva_sweep` composes is the dataclasses' defaults."""
    cfg = compose_config("~experiment")
    for section, cls in (("search", SearchConfig), ("logger", LoggerConfig),
                         ("cluster", ClusterConfig), ("judge", JudgeConfig),
                         ("edit", EditConfig)):
        assert OmegaConf.to_container(cfg[section]) == OmegaConf.to_container(
            OmegaConf.structured(cls)), section
    assert list(cfg.search.space.sparsity) == [5e-4, 0.2]  # the value runs always used


def test_neva_defaults_are_the_edit_defaults():
    """nv.make_edit(stats, value) and task=steer (edit.*) build the same NeVA edit."""
    edit, neva = EditConfig(), METHODS["neva"].defaults
    for key in ("sparsity", "magnitude", "rule", "score", "polarity", "positions", "gate"):
        assert neva[key] == getattr(edit, key), key
    assert neva["layer_window"] == window_label(edit.layer_window)
    rand = METHODS["random_neurons"].defaults
    assert {k: v for k, v in rand.items() if k != "seed"} == {
        k: v for k, v in neva.items() if k not in ("score", "polarity")}


def test_report_defaults_are_the_search_defaults():
    assert front.DEFAULT_OBJECTIVES == dict(SearchConfig().objectives)
    assert front.DEFAULT_BEST_MAX_NLR == SearchConfig().best_max_nlr


def test_search_space_keys_are_the_methods_parameter_names(config):
    """Each method's own ranges sit under its name, with the names its params carry."""
    space = config().search.space
    assert set(space.diffmean) <= set(METHODS["diffmean"].defaults)
    assert set(space.caa_pairs) <= set(METHODS["caa_pairs"].defaults)
    assert set(space.prompt) <= set(METHODS["prompt"].defaults)


def test_every_searched_range_of_the_schema_declares_its_bounds(config):
    """A method's own [lo, hi] range is checked once it is declared with ``searched``: no
    two-number range of search.space (float ones; prompt.strength lists wordings) escapes
    the plan's check."""
    from neva_sweep.sweep.plan import searched_ranges

    def float_pairs(node, prefix=""):
        for k, v in node.items():
            if isinstance(v, dict):
                yield from float_pairs(v, f"{prefix}{k}.")
            elif isinstance(v, list) and len(v) == 2 and any(isinstance(x, float) for x in v):
                yield prefix + k

    space = OmegaConf.to_container(config().search.space)  # deprecated aliases stay "${..}"
    declared = dict(searched_ranges())
    assert set(float_pairs(space)) == set(declared)
    assert {"sparsity", "diffmean.layer_frac", "caa_pairs.strength"} <= set(declared)


# -- one check pipeline ------------------------------------------------------------------------
def test_a_sweep_is_planned_once_and_its_plan_reaches_run_sweep(tmp_path, monkeypatch, config):
    """task=sweep: the preflight builds and checks the plan; run_sweep gets it, not a
    second planning."""
    from neva_sweep import cli, sweep
    from neva_sweep.sweep import plan as plan_module

    planned, given = [], {}
    real = plan_module.make_plan
    monkeypatch.setattr(plan_module, "make_plan",
                        lambda cfg, run_dir: planned.append(run_dir) or real(cfg, run_dir))
    monkeypatch.setattr(sweep, "run_sweep", lambda cfg, out, report=None, plan=None:
                        given.update(plan=plan), raising=False)
    cli.run(config(*FAST, "search.space.layer_windows=[[0,2]]"), tmp_path)
    assert planned == [tmp_path]
    assert isinstance(given["plan"], plan_module.SweepPlan)
    assert [m.n_layers for m in given["plan"].models] == [2]  # windows checked against it


# -- deprecated keys (one release) -------------------------------------------------------------
@pytest.fixture
def fresh_warnings(monkeypatch):
    """Each deprecated key warns once per process: start from none warned."""
    monkeypatch.setattr(schema, "_warned_keys", set())


def test_an_old_space_key_still_works_with_a_warning(tmp_path, caplog, fresh_warnings, config):
    cfg = compose_config(*FAST, "sweep.methods=[diffmean,caa_pairs]",
                         "search.space.caa_layer=[0.3,0.6]", "search.space.caa_strength=[0.5,2.0]")
    with caplog.at_level(logging.WARNING, logger="neva_sweep.config"):
        make_plan(cfg, tmp_path)
        make_plan(cfg, tmp_path)  # planned again: nothing left to map, no second warning
    space = cfg.search.space
    assert list(space.diffmean.layer_frac) == list(space.caa_pairs.layer_frac) == [0.3, 0.6]
    assert list(space.diffmean.strength) == [0.5, 2.0]
    # until removed, the old keys read as their new ones (scripts that read them still work)
    assert list(space.caa_layer) == [0.3, 0.6] and list(space.caa_strength) == [0.5, 2.0]
    assert list(config(*FAST).search.space.caa_pairs_strength) == [0.05, 1.0]
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2, warned
    assert ("search.space.caa_layer is deprecated" in warned[0]
            and "search.space.diffmean.layer_frac and search.space.caa_pairs.layer_frac"
            in warned[0])
    assert "search.space.caa_strength" in warned[1] and "search.space.diffmean.strength" in \
        warned[1]


@pytest.mark.parametrize("old, new", [
    ("search.space.caa_n_layers=[2]", "search.space.caa_pairs.n_layers=[3]"),
    ("search.space.prompt_strengths=[1]", "search.space.prompt.strength=[2]"),
    ("search.space.caa_coefficient=[1.0,2.0]", "search.space.diffmean.coefficient=[1.0,3.0]"),
    ("search.space.caa_pairs_strength=[0.1,0.5]", "search.space.caa_pairs.strength=[0.1,0.4]"),
])
def test_an_old_and_a_new_key_together_are_refused_naming_both(old, new, fresh_warnings):
    cfg = compose_config(old, new)
    old_key, new_key = old.split("=")[0], new.split("=")[0]
    with pytest.raises(ConfigError, match=rf"^{old_key}, {new_key}: both given"):
        check_search(cfg.search)


def test_a_run_directory_recorded_with_the_old_keys_resumes(tmp_path, config):
    """sweep_identity.json written before the per-method spaces: the same space, given
    under the new keys, is the same setup; another space is refused."""
    cfg = config(*FAST)
    recorded = identity(cfg)
    space = recorded["search.space"]
    old = {k: v for k, v in space.items() if k not in ("diffmean", "caa_pairs", "prompt")}
    old.update(caa_layer=space["diffmean"]["layer_frac"],
               caa_n_layers=space["diffmean"]["n_layers"],
               caa_coefficient=space["diffmean"]["coefficient"],
               caa_strength=space["diffmean"]["strength"],
               caa_pairs_strength=space["caa_pairs"]["strength"],
               prompt_strengths=space["prompt"]["strength"])
    (tmp_path / IDENTITY_FILE).write_text(json.dumps({**recorded, "search.space": old}))
    check_identity(cfg, tmp_path)  # resumes
    (tmp_path / IDENTITY_FILE).write_text(json.dumps(
        {**recorded, "search.space": {**old, "caa_strength": [0.1, 1.0]}}))
    with pytest.raises(ConfigError, match="search.space"):
        check_identity(cfg, tmp_path)
