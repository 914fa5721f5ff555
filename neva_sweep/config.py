"""Typed configuration: dataclass schemas registered in Hydra's ConfigStore.

These classes are the single source of every default: the Python API
(``SearchConfig()``, ``EditConfig``) and Hydra's ConfigStore read them, and the YAML group
options in ``neva_sweep/conf/`` set only what differs from them (``judge=lexicon`` its
name, ``logger=wandb`` its mode; ``search=default`` nothing), which
``neva_sweep/conf/config.yaml`` composes over the schema; tests/unit/test_config_schema.py
refuses an option that restates a default. The YAML files ship inside the package (as
package data), so an installed wheel finds them wherever it runs: read them through
:func:`packaged_configs` or :func:`compose_config`, never through a path relative to a
checkout.

Search-space keys are the methods' parameter names; the former flat keys
(:data:`DEPRECATED_SPACE_KEYS`) are mapped onto them for one release
(:func:`upgrade_search_space`, run by the sweep's plan before any check).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from omegaconf import MISSING, DictConfig, OmegaConf

from .values import VALUES

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

log = logging.getLogger(__name__)

CONFIG_PACKAGE = "neva_sweep.conf"  # the YAML configs, shipped as package data

# Edit defaults, shared by the schema and the Python API (neva_sweep.edits.neuron,
# neva_sweep.neurons.selection
# re-export them). They live here, with every schema, because this module must import
# without torch: `python -m neva_sweep --help` and a mistyped task answer in a second.
DEFAULT_RULE = "add"
# chosen with benchmarks/experiments/steering_effect.py on the embedded model
DEFAULT_MAGNITUDE = 4.0
# 93 of SmolLM2's 46,080 neurons (benchmarks/experiments/steering_effect.py)
DEFAULT_SPARSITY = 2e-3
DEFAULT_SCORE = "mean_diff"  # lape ignores neurons that fire for less than 5% of the value's tokens
# Value-relevance gates (neva_sweep/neurons/gate.py): none = every row fully edited; context = each
# row's edit scaled by a probe's P(value-laden prompt); value = by a probe's P(prompt about
# the edit's own value) (one-vs-rest over the ten values, no neutral texts).
GATES = ("none", "context", "value")


def only_gated(gates: Any) -> list[str]:
    """``search.space.gates`` when every edit it allows is gated (no ``none``), else [].

    >>> only_gated(["context", "value"]), only_gated(["none", "value"])
    (['context', 'value'], [])
    """
    gates = list(gates or [])
    return [] if "none" in gates else gates


class ConfigError(ValueError):
    """An invalid configuration; the message starts with the key (or file) to fix."""


def check_layer_window(key: str, window: Any, n_layers: int | None, model: str = "") -> None:
    """The one check of a layer window ``[start, stop)`` (``edit.layer_window``, each of
    ``search.space.layer_windows``): well formed, and inside the model's ``n_layers`` when
    that is known (None: only the form is checked; the model's load checks the rest).

    >>> check_layer_window("edit.layer_window", [0, 2], 2, "tiny-llama")
    >>> check_layer_window("edit.layer_window", [1, 3], 2, "tiny-llama")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    neva_sweep.config.ConfigError: edit.layer_window: window [1, 3] reaches past the 2 layers...
    """
    if window is None:
        return
    w = list(window)
    if len(w) != 2 or not all(isinstance(x, int) for x in w) or not 0 <= w[0] < w[1]:
        raise ConfigError(f"{key}: a layer window is [start, stop) with 0 <= start < stop, "
                          f"got {w}")
    if n_layers is not None and w[1] > n_layers:
        raise ConfigError(f"{key}: window {w} reaches past the {n_layers} layers of model "
                          f"{model!r}; valid: 0 <= start < stop <= {n_layers}")


@dataclass
class StatsConfig:
    """How statistics are collected (part of the cache key); also the ``stats.*`` config
    schema (:class:`Config`)."""

    batch_size: int = 16
    max_length: int = 128
    bins: int = 32  # histogram bins on the softsign grid
    hist_scale: float = 0.2  # c in y = a / (a + c); bins uniform in y (see softsign_bins)
    hist_stride: int = 3  # histogram sees positions 0, stride, 2*stride, ...
    quantile: float = 0.95  # the high quantile q_t(i) used by the `set` rule
    # the gate probe's block: floor(gate_depth * n_layers) (neurons/gate.py)
    gate_depth: float = 0.5
    # the gate also trains on every probe and neutral gate text wrapped as a user turn of
    # the model's chat template (gate-only rows), so the template itself reads as neither
    gate_chat: bool = True
    # a bootstrap resample of the identify probes (per value, with replacement, seeded) so
    # that results can be repeated over probe samples; None = the probes as they are
    resample_seed: int | None = None
    # a gradient pass over the stance pairs for the attribution score (neurons/attribution.py;
    # tp_size=1 only); switched on by itself when a configured score is attribution
    attribution: bool = False


@dataclass
class JudgeConfig:
    """Judge settings (``judge.*``, ``neva_sweep/conf/judge/*.yaml``; see
    neva_sweep.evaluation.judges)."""

    name: str = "forced_choice"  # forced_choice | questionnaire | lexicon | classifier | llm
    batch_size: int = 16
    centre: bool = True  # questionnaire: subtract each form's mean over the ten values
    scenarios_limit: int | None = None  # forced_choice: at most this many scenarios (spread)
    # forced_choice: most = the options as replies to "What do you do?"; both = also as
    # replies to "What would you be least willing to do?", E from the difference
    ends: str = "most"
    null_edits: int = 10  # random-neuron edits (one per value) measuring the judge's null
    max_new_tokens: int = 48  # reply length for lexicon / llm
    queries_per_value: int | None = None  # None = every query (lexicon / llm)
    model: str | None = None  # llm judge model (registry name, HF id, path); None = same model
    model_dtype: str = "float32"
    n_boot: int = 1000  # bootstrap resamples (BCa, scipy.stats.bootstrap) for the intervals


@dataclass
class CapabilityConfig:
    """Capability settings (``capability.*``; see neva_sweep.evaluation.capability)."""

    mc_limit: int | None = None  # at most this many MC questions, evenly spread; 0 = no MC
    neutral_limit: int | None = None  # at most this many neutral texts for KL
    # base tokens kept per position for KL (see neva_sweep.evaluation.capability)
    kl_top_k: int = 256
    fluency_queries: int = 8  # replies generated for perplexity when the judge makes none
    # value-laden queries whose unedited replies kl_value reads (teacher-forced: one
    # generation for the unedited side, no generation per edit); 0 = no kl_value
    value_replies: int = 8
    max_new_tokens: int = 48
    batch_size: int = 16
    lm_eval_tasks: list[str] = field(default_factory=list)  # e.g. [mmlu, hellaswag]
    lm_eval_include: str | None = None  # directory of local lm-eval task YAMLs
    lm_eval_limit: int | None = None  # documents per lm-eval task


@dataclass
class ModelConfig:
    """Which model to host (``neva_sweep/conf/model/*.yaml``)."""

    name: str = MISSING  # registry name (smollm2-135m, tiny-llama, ...), HF id or local path
    short_name: str | None = None  # used in output file names; defaults to the last path part
    dtype: str = "float32"  # float32 | bfloat16 | float16
    device: str = "cpu"
    trust_remote_code: bool = False
    tp_size: int = 1  # tensor-parallel degree: GPUs (or CPU processes) per model replica
    # How a tp_size > 1 replica loads: sharded (each rank reads only its slices of a
    # safetensors checkpoint; GGUF converted once) | full (every rank loads the whole model
    # first) | auto (sharded wherever there is a checkpoint).
    tp_load: str = "auto"
    # One replica over several devices through accelerate (instead of model.device): auto |
    # balanced | balanced_low_0 | sequential | {module name: device}; not with tp_size > 1.
    device_map: Any = None


@dataclass
class DataConfig:
    """Value data files; None = the files shipped with neva_sweep (docs/data.md)."""

    probes: str | None = None
    queries: str | None = None
    questionnaire: str | None = None
    neutral: str | None = None
    mc: str | None = None
    scenarios: str | None = None  # forced_choice judge: JSONL {"id", "scenario", "options"}


@dataclass
class EditConfig:
    """Neuron selection and edit settings (``edit.*``)."""

    value: str | None = None
    sparsity: float = DEFAULT_SPARSITY
    magnitude: float = DEFAULT_MAGNITUDE
    rule: str = DEFAULT_RULE
    score: str = DEFAULT_SCORE
    positions: str = "all"
    layer_window: list[int] | None = None
    exclusive: bool = False
    gate: str = "none"  # none | context | value: scale each row's edit by its relevance
    polarity: str = "positive"  # positive | both (also damp the most anti-specific neurons)
    # apply neurons selected on another model (name or architecture fingerprint differ)
    allow_other_model: bool = False


# The bounds a searched [lo, hi] range must lie in, declared on its schema field so that a
# method's own ranges are one dataclass here (the sweep's plan checks every field that
# carries them): log-uniform ranges are open at 0 (lo > 0), fractions lie in [0, 1] (the
# sparsity in (0, 1): a log-uniform fraction), raw doses need only be finite.
LOG_DOSE = (0.0, float("inf"), True)  # log-uniform: 0 < lo <= hi
RAW_DOSE = (-float("inf"), float("inf"), True)  # uniform, any finite pair
LOG_FRACTION = (0.0, 1.0, True)  # log-uniform share: 0 < lo <= hi < 1
FRACTION = (0.0, 1.0, False)  # uniform share: 0 <= lo <= hi <= 1


def searched(default: list[float], bounds: tuple[float, float, bool]) -> Any:
    """A searched ``[lo, hi]`` schema field whose range must lie within ``bounds``
    (:data:`LOG_DOSE`, :data:`RAW_DOSE`, :data:`LOG_FRACTION`, :data:`FRACTION`)."""
    return field(default_factory=lambda: list(default), metadata={"bounds": bounds})


@dataclass
class ResidualSpace:
    """The searched layers of a residual steering method (``diffmean``, ``caa_pairs``)."""

    # the first edited layer as a fraction of depth [lo, hi], uniform (one space fits every
    # model); a fraction in [0, 1]
    layer_frac: list[float] = searched([0.2, 0.8], FRACTION)
    # consecutive layers edited; several entries = searched
    n_layers: list[int] = field(default_factory=lambda: [1])


@dataclass
class DiffMeanSpace(ResidualSpace):
    """diffmean's searched ranges (``search.space.diffmean.*``; its former name caa too)."""

    # search.space.scaled: the coefficient as a strength, log-uniform (recentred by the
    # calibration when search.calibrate)
    strength: list[float] = searched([0.25, 4.0], LOG_DOSE)
    coefficient: list[float] = searched([0.5, 6.0], RAW_DOSE)  # scaled: false; uniform


@dataclass
class CaaPairsSpace(ResidualSpace):
    """caa_pairs' searched ranges (``search.space.caa_pairs.*``)."""

    # the fraction of the residual norm added, log-uniform even when scaled: false
    # (calibrated when scaled). Measured on SmolLM2-135M, real pairs, 2 values x layers
    # 0.2/0.5/0.8: KL on neutral text 0.004-0.006 at 0.05, 0.06-0.10 at 0.2 (near max_kl),
    # 2.3-3.2 at 1.0, alike across layers; the tiny random model stays under KL 1e-4 at
    # every strength, so it cannot set the box
    strength: list[float] = searched([0.05, 1.0], LOG_DOSE)


@dataclass
class PromptSpace:
    """prompt's searched wordings (``search.space.prompt.*``)."""

    strength: list[int] = field(default_factory=lambda: [1, 2, 3])  # 0 = no prefix, up to 3


# The search.space keys of the flat layout, each moved under the method(s) it configured
# (keys equal to the methods' parameter names). Accepted for one release: mapped onto the
# new keys with a deprecation warning (upgrade_space).
DEPRECATED_SPACE_KEYS: dict[str, tuple[str, ...]] = {
    "caa_layer": ("diffmean.layer_frac", "caa_pairs.layer_frac"),
    "caa_n_layers": ("diffmean.n_layers", "caa_pairs.n_layers"),
    "caa_coefficient": ("diffmean.coefficient",),
    "caa_strength": ("diffmean.strength",),
    "caa_pairs_strength": ("caa_pairs.strength",),
    "prompt_strengths": ("prompt.strength",),
}
# Until removed, a deprecated key not given reads as its (first) new key: an interpolation,
# so a script that reads search.space.caa_layer still gets the layers searched.
SPACE_ALIASES = {old: f"${{.{new[0]}}}" for old, new in DEPRECATED_SPACE_KEYS.items()}


@dataclass
class SearchSpace:
    """What Optuna searches per (model, value, method) (``search.space.*``).

    A ``[lo, hi]`` pair is a searched range; a list of choices with one entry is fixed,
    with several entries it is searched categorically. The keys at the top are the neuron
    methods' (``neva``; ``random_neurons`` shares them but ``scores`` and ``polarities``)
    and the ones every method that takes them shares (``scaled``, ``positions``,
    ``gates``); a method with parameters of its own searches them under its name, with
    the parameter's own name: ``search.space.diffmean.layer_frac``,
    ``search.space.caa_pairs.strength``, ``search.space.prompt.strength``.
    """

    # fraction of the MLP neurons, (0, 1), log-uniform; the strength keeps one dose per count
    sparsity: list[float] = searched([5e-4, 0.2], LOG_FRACTION)
    # scaled: search the dose as a strength (neva_sweep/methods/strength.py), log-uniform in
    # ``strength`` (neuron methods: ||E[delta] / sd||_2 of the edited neurons) and in each
    # method's own strength range, recentred by the calibration (search.calibrate); false:
    # the raw ``magnitude`` (uniform) and diffmean's ``coefficient`` instead
    scaled: bool = True
    strength: list[float] = searched([4.0, 64.0], LOG_DOSE)
    magnitude: list[float] = searched([1.0, 8.0], RAW_DOSE)  # [lo, hi], uniform
    # edit rules (edits/neuron.py; also add_sd), searched; the first is the calibration reference
    rules: list[str] = field(
        default_factory=lambda: [DEFAULT_RULE, "scale", "set", "gate_neuron"])
    # mean_diff | contrast_d | prob_diff | lape | attribution
    scores: list[str] = field(default_factory=lambda: [DEFAULT_SCORE])
    # positive | both (also damps the most anti-specific neurons; drawn only with a signed
    # score and a rule other than set)
    polarities: list[str] = field(default_factory=lambda: ["positive"])
    positions: list[str] = field(default_factory=lambda: ["all"])  # all | response
    # none | context | value (neurons/gate.py); every method but prompt
    gates: list[str] = field(default_factory=lambda: ["none", "value"])
    layer_windows: list[list[int]] | None = None  # [[start, stop], ...]; None = all layers
    diffmean: DiffMeanSpace = field(default_factory=DiffMeanSpace)
    caa_pairs: CaaPairsSpace = field(default_factory=CaaPairsSpace)
    prompt: PromptSpace = field(default_factory=PromptSpace)
    # Deprecated (DEPRECATED_SPACE_KEYS), kept in the schema for one release so that
    # overrides and presets that set them still compose; not given, each reads as its new
    # key (SPACE_ALIASES). Typed Any: the value is checked under its new key.
    caa_layer: Any = SPACE_ALIASES["caa_layer"]
    caa_n_layers: Any = SPACE_ALIASES["caa_n_layers"]
    caa_coefficient: Any = SPACE_ALIASES["caa_coefficient"]
    caa_strength: Any = SPACE_ALIASES["caa_strength"]
    caa_pairs_strength: Any = SPACE_ALIASES["caa_pairs_strength"]
    prompt_strengths: Any = SPACE_ALIASES["prompt_strengths"]


_warned_keys: set[str] = set()  # deprecated keys already warned about in this process


def value_at(tree: Mapping[str, Any], dotted: str) -> Any:
    """``tree``'s entry at a dotted key (a plain dict or a config), or None when absent."""
    for part in dotted.split("."):
        if not isinstance(tree, Mapping) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _put(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def upgrade_space(space: dict[str, Any], warn: bool = True) -> dict[str, Any]:
    """A plain, unresolved ``search.space`` dict with the value of every deprecated key
    that is given (:data:`DEPRECATED_SPACE_KEYS`; not null, not its alias) moved onto its
    new key(s) and the old key reset to its alias; a copy. A new key that differs from its
    default counts as given too: both given is a :class:`ConfigError` naming both.
    ``warn``: log a deprecation warning naming the old and new keys, once per key and
    process.

    >>> new = upgrade_space({"caa_layer": [0.3, 0.6], "prompt": {"strength": [1, 2, 3]}},
    ...                     warn=False)
    >>> new["diffmean"]["layer_frac"], new["caa_pairs"]["layer_frac"], new["caa_layer"]
    ([0.3, 0.6], [0.3, 0.6], '${.diffmean.layer_frac}')
    >>> upgrade_space({"prompt_strengths": [1], "prompt": {"strength": [2]}},
    ...               warn=False)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    neva_sweep.config.ConfigError: search.space.prompt_strengths, search.space.prompt.strength: ...
    """
    import copy

    out = copy.deepcopy(space)
    defaults = OmegaConf.to_container(OmegaConf.structured(SearchSpace))
    for old, new_keys in DEPRECATED_SPACE_KEYS.items():
        value = out.get(old)
        if value is None or value == SPACE_ALIASES[old]:
            continue
        names = " and ".join(f"search.space.{n}" for n in new_keys)
        for new in new_keys:
            given = value_at(out, new)
            if given is not None and given != value_at(defaults, new):
                raise ConfigError(f"search.space.{old}, search.space.{new}: both given, and "
                                  f"{old} is the deprecated name of {names}; drop "
                                  f"search.space.{old} and give {names} instead")
        if warn and old not in _warned_keys:
            _warned_keys.add(old)
            log.warning("search.space.%s is deprecated and will be removed: it is now %s "
                        "(the parameter's own name, under its method)", old, names)
        for new in new_keys:
            _put(out, new, copy.deepcopy(value))
        out[old] = SPACE_ALIASES[old]
    return out


def current_space(space: dict[str, Any]) -> dict[str, Any]:
    """A resolved ``search.space`` dict as the current schema lays it out: deprecated keys
    that merely echo their new key (the alias, resolved) dropped, given ones upgraded
    (silently) and dropped. Compares a run directory's recorded setup with a new one
    whichever layout either was written in (sweep/identity.py)."""
    echo = {old for old, new in DEPRECATED_SPACE_KEYS.items()
            if old in space and space[old] == value_at(space, new[0])}
    plain = {k: v for k, v in space.items() if k not in echo}
    return {k: v for k, v in upgrade_space(plain, warn=False).items()
            if k not in DEPRECATED_SPACE_KEYS}


def upgrade_search_space(search: DictConfig) -> None:
    """Map the deprecated ``search.space`` keys given in ``search`` onto their new keys,
    in place (:func:`upgrade_space`); a no-op when none is given, so calling it twice is
    harmless. The sweep's plan does it first, so every later reader sees the new keys."""
    plain = OmegaConf.to_container(search.space, resolve=False)
    upgraded = upgrade_space(plain)
    if upgraded == plain:
        return
    for old, new_keys in DEPRECATED_SPACE_KEYS.items():
        if plain.get(old) != upgraded[old]:
            for new in new_keys:
                OmegaConf.update(search.space, new, value_at(upgraded, new), merge=False)
            search.space[old] = SPACE_ALIASES[old]


@dataclass
class CalibrationConfig:
    """How a study's strength range is calibrated (``search.calibration.*``)."""

    kl: float = 0.1  # the KL aimed at when search.max_kl is null (nats/token)
    # range = dose* x span. Kept at the budget's edge ([0.85, 1.15]) the sampled trials
    # beat no start within the budgets on four values (docs/results.md 0d); below the dose
    # they make the low-leakage end of each study's front
    span: list[float] = field(default_factory=lambda: [0.25, 2.0])
    # neutral texts the KL is measured on: null = the trials' own (sweep.capability),
    # so the calibrated dose meets the budget the trials are held to
    texts: int | None = None
    steps: int = 5  # bisection steps once the budget is bracketed
    # settings of the method's layout each study is calibrated at (sparsity or layer
    # fraction, spread over the searched range, ends included): the strength box spans
    # their doses and each is a first trial. One calibration at the middle layer left
    # DiffMean's box short of the dose its best layer needs and its search at 55-67% of
    # the reference; three starts (layers 0.2 / 0.5 / 0.8) missed its best layers
    # (0.34-0.36) unless TPE drew them: 0.72-0.99 on hedonism over seeds. 5 (layers 0.2 /
    # 0.35 / 0.5 / 0.65 / 0.8; sparsities 5e-4 to 0.2 a factor 4.5 apart): see
    # docs/results.md section 0d
    anchors: int = 5
    # settings calibrated in all (>= anchors; the anchors are spread evenly among them):
    # more points trace the budget dose across the layout that a relative study
    # interpolates, at a few seconds each, without spending trials on them. 13: a layer
    # fraction every 0.05 (SmolLM2's budget dose falls 3-7x between layers 0.3 and 0.4),
    # so that 5 anchors sit on points (docs/results.md section 0d)
    points: int = 13
    # search each trial's strength as a multiple of the budget dose at its layout,
    # interpolated between the anchors (sweep/calibrate.py, edge_dose): the searched
    # ``strength`` is then that multiple, in ``span``, and trials.csv records it as
    # ``edge_frac`` next to the strength it gave; false: the strength itself, in a box that
    # spans the anchors' doses
    relative: bool = True
    # points (of ``points``, spread evenly, ends included) each gate that
    # search.space.gates searches is calibrated at, at the first budget to bind of KL on
    # neutral text and kl_value; a gated trial's budget dose is the ungated one times the
    # gate's factor interpolated between them (sweep/calibrate.py, gate_factor). 5 (on
    # the anchors): the factor interpolated from them was within 0.84-1.08x of the one
    # measured at each of the other 8 points; from the middle point alone (1) up to 1.45x
    # (DiffMean's value gate, whose factor moves with the layer; docs/results.md 0c)
    gate_points: int = 5


@dataclass
class SearchConfig:
    """Optuna studies, sampler, objectives, constraints and trial scheduling (``search.*``)."""

    storage: str | None = None  # SQLAlchemy URL or journal:///path; None = <run dir>/optuna.db
    study_prefix: str = ""  # study names: {study_prefix}{model}/{value}/{method}
    sampler: str = "tpe"  # tpe (multivariate, multi-objective) | nsga2 | gp
    seed: int = 0
    # finished (COMPLETE or PRUNED) trials per study; re-running tops studies up to it. 24:
    # the five calibrated starts alone reach >= 90% of the best known feasible edit on
    # 10/10 values for DiffMean and 9/10 for NeVA, so 24 trials do for every seed; the
    # 19 sampled trials after them beat no start on ten values at seed 0, nor 43 of 48 on
    # hedonism (they fill the front below the budget; docs/results.md 0c, 0d)
    n_trials: int = 24
    n_startup_trials: int = 4  # random trials before tpe/gp model the results
    population_size: int = 8  # nsga2 generation size
    space: SearchSpace = field(default_factory=SearchSpace)
    # metric -> maximize | minimize; metrics: alignment, nlr, nglr, cwl, accuracy_drop, kl
    objectives: dict[str, str] = field(
        default_factory=lambda: {"alignment": "maximize", "nlr": "minimize"})
    max_accuracy_drop: float | None = None  # constraint; None = unconstrained; needs >= 100
    # MC questions per trial (40 questions give +-0.15 intervals)
    max_kl: float | None = 0.1  # constraint on mean KL(base || edited), nats/token
    # constraint on the fall of all ten readings together (max(0, -acquiescence); for the
    # forced-choice judge the options' log-probability on the scenarios, nats/token): what
    # a gated edit costs, which KL on neutral text cannot see
    max_suppression: float | None = None
    max_inflation: float | None = None  # constraint on the rise of all ten readings together
    # constraint on KL(base || edited) on value-laden replies (metric kl_value, nats/token):
    # where a value-relevance gate opens, so a budget a gated edit cannot hide; when set
    # (or for a gated edit) calibration bisects to the first of it and search.max_kl to
    # bind (sweep/calibrate.py). Needs capability.value_replies >= 1
    max_kl_value: float | None = None
    # after the search, score each chosen edit on the test split (best_edits.json "test");
    # false skips that pass (a benchmark of the search alone): a later run with true
    # scores the chosen edits that lack it, running no trial
    heldout: bool = True
    # dose-matched random edits scored with each chosen edit on the test split
    # (best_edits.json "test", neva_sweep/evaluation/heldout.py); 0 = the edit alone
    test_nulls: int = 4
    # capability settings of the held-out pass only, over the trials' (sweep.capability):
    # '+search.test_capability={mc_limit: null}' scores each chosen edit and its nulls on
    # every MC question (best_edits.json "test" accuracy_drop, null.accuracy_drop), a
    # cost every method pays in the same units, which trials skip for speed
    test_capability: dict[str, Any] = field(default_factory=dict)
    best_max_nlr: float = 1.0  # best edit: highest alignment among feasible Pareto trials
    # with nlr <= this (see neva_sweep/sweep/outputs.py)
    trials_per_batch: int = 1  # trials of one model evaluated in one batched call
    max_in_flight: int | None = None  # trials asked, not told; None = 2 x replicas x batch
    max_failures: int | None = None  # FAIL trials per study and run before giving it up;
    # None = n_trials
    # fresh studies first try the best feasible setting of the same method for another
    # value, then the method's defaults (neva_sweep/sweep/warm.py)
    warm_start: bool = True
    # calibrated ranges (neva_sweep/sweep/calibrate.py): before a study's first trial, bisect
    # the strength to the KL budget and search around it; needs search.space.scaled
    calibrate: bool = True
    calibration: CalibrationConfig = field(default_factory=lambda: CalibrationConfig())
    # multi-fidelity trials (neva_sweep/sweep/pruning.py): none | median | front | sha |
    # hyperband; a trial is first scored on ``fidelity`` of the scenarios and continues
    # only if promising (front: not dominated on the objectives at rung 0). none by
    # measurement (docs/results.md 0d, four values x three seeds): median keeps the best
    # edits at 0.44-0.47x the CPU time but thins the fronts; front keeps them at
    # 0.56-0.58x, over 0.6x on one seed
    pruner: str = "none"
    fidelity: float = 0.34


@dataclass
class ClusterConfig:
    """Where the model replicas run (``neva_sweep/conf/cluster/*.yaml``)."""

    kind: str = "local"  # local: a Ray instance started here | ray: an existing cluster
    address: str | None = None  # ray: Ray address; None = auto ($RAY_ADDRESS or this node's)
    num_cpus: int | None = None  # local: CPUs of the Ray instance; None = all of this machine
    replicas_per_model: int | None = None  # None = as many as the resources allow
    num_cpus_per_actor: float = 1  # per shard actor; also its torch thread count
    num_gpus_per_actor: float = 1  # per shard actor when model.device is cuda


@dataclass
class LoggerConfig:
    """Experiment tracking (``neva_sweep/conf/logger/*.yaml``); the plain files are always
    written."""

    kind: str = "wandb"  # wandb | none
    # offline (files under <run dir>/wandb) | online | disabled; $WANDB_MODE, when set, wins
    mode: str = "offline"
    project: str = "neva_sweep"
    entity: str | None = None
    group: str | None = None  # None = the run directory's name
    name: str | None = None  # the W&B run's name; None = W&B's own
    tags: list[str] = field(default_factory=list)


@dataclass
class SweepSection:
    """What the sweep covers (``neva_sweep/conf/experiment/*.yaml`` presets set this and
    more)."""

    values: list[str] = field(default_factory=lambda: list(VALUES))
    # neva | random_neurons | diffmean | caa_pairs | prompt (caa: diffmean's former name)
    methods: list[str] = field(default_factory=lambda: ["neva"])
    # Evaluation settings for the sweep's trials only, over ``capability.*`` (task=evaluate
    # keeps the full sets): e.g. {mc_limit: 40, neutral_limit: 16, fluency_queries: 0}.
    capability: dict[str, Any] = field(default_factory=dict)
    # Judge settings for the sweep's trials only, over ``judge.*``: e.g. {scenarios_limit: 36}.
    judge: dict[str, Any] = field(default_factory=dict)


@dataclass
class Config:
    task: str = "sweep"
    model: ModelConfig = field(default_factory=ModelConfig)
    models: list[str] | None = None  # conf/model/ names for a multi-model sweep; None = model
    # modules that register the user's own methods, rules, scores, judges... when imported,
    # on the driver and on every actor (neva_sweep/plugins.py)
    plugins: list[str] = field(default_factory=list)
    data: DataConfig = field(default_factory=DataConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    edit: EditConfig = field(default_factory=EditConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    capability: CapabilityConfig = field(default_factory=CapabilityConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    sweep: SweepSection = field(default_factory=SweepSection)
    # task=report / task=export: the sweep's run directory (report: None = this run's)
    run_dir: str | None = None
    # task=export: hooks | weights | steering_vector (neva_sweep/exporting.py)
    format: str = "hooks"
    # task=compare: two or more sweeps' run directories, compared in one report (add
    # +compare_judges=any to compare runs whose judges differ)
    run_dirs: list[str] | None = None
    # with best_edits= (or task=export's run_dir=): which method's edit (when several match)
    method: str | None = None
    best_edits: str | None = None  # steer/evaluate: a sweep's best_edits.json to load the edit
    # with best_edits=: rebuild an edit whose neurons file or data/statistics changed since the
    # sweep from the current statistics (reported as rebuilt) instead of refusing it
    rebuild_edits: bool = False
    value: str | None = None  # shorthand for edit.value
    # evaluate / validate_judge: the scenarios and neutral texts read (search | test); a
    # sweep searches on search and re-scores its chosen edits on test by itself
    split: str = "search"
    prompt: str = "My friend asked me to help them move house this weekend. What should I do?"
    max_new_tokens: int = 60
    cache_dir: str | None = "${oc.env:NEVA_SWEEP_CACHE,${oc.env:HOME,.}/.cache/neva_sweep}"
    progress: bool = True


def run_name(task: str, experiment: str | None, model: str | None = None,
             models: Any = None) -> str:
    """The default run directory's name (``hydra.run.dir=runs/<name>``, config.yaml): for a
    sweep the experiment preset and the model (``runs/default/smollm2_135m``, as ``make
    run``; the models joined by ``+`` for a multi-model sweep), so that sweeps of different
    models never share a directory; else the task (``runs/identify``). Fixed, not dated,
    so that the same command again resumes the same directory: a sweep tops its studies
    up, cached work is found.

    >>> run_name("sweep", "default", "smollm2_135m"), run_name("identify", "default")
    ('default/smollm2_135m', 'identify')
    >>> run_name("sweep", "methods", "tiny_llama", ["tiny_llama", "tiny_gpt2"])
    'methods/tiny_llama+tiny_gpt2'
    """
    if task != "sweep":
        return task
    name = str(experiment or "sweep")
    model_part = "+".join(str(m) for m in models) if models else model
    return f"{name}/{model_part}" if model_part else name


def register_configs() -> None:
    """Register :class:`Config` as ``neva_sweep_schema`` (the first default of config.yaml)
    and the resolver ``${neva_sweep.run_name:...}`` its ``hydra.run.dir`` uses."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="neva_sweep_schema", node=Config)
    OmegaConf.register_new_resolver("neva_sweep.run_name", run_name, replace=True)


def packaged_configs() -> Traversable:
    """``neva_sweep/conf/`` as installed: a checkout, an editable install or a wheel."""
    return files(CONFIG_PACKAGE)


def group_options(group: str) -> list[str]:
    """The option names of a config group (``model`` -> ``["gpt2", ..., "tiny_qwen2"]``)."""
    return sorted(p.name.removesuffix(".yaml") for p in (packaged_configs() / group).iterdir()
                  if p.name.endswith(".yaml"))


def load_group_option(group: str, name: str) -> DictConfig:
    """One option of a config group, e.g. ``conf/model/tiny_llama.yaml``, as loaded YAML.

    Raises a KeyError that lists the group's options when ``name`` is not one of them.
    """
    path = packaged_configs() / group / f"{name}.yaml"
    if not path.is_file():
        raise KeyError(f"unknown {group} config {name!r}; available: "
                       f"{', '.join(group_options(group))}")
    node = OmegaConf.create(path.read_text(encoding="utf-8"))
    assert isinstance(node, DictConfig), f"{CONFIG_PACKAGE}/{group}/{name}.yaml: not a mapping"
    return node


def compose_config(*overrides: str) -> DictConfig:
    """The config ``python -m neva_sweep <overrides>`` runs with (without ``hydra.*``)."""
    from hydra import compose, initialize_config_module

    register_configs()
    with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))
