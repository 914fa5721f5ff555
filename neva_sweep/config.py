"""Typed configuration: dataclass schemas registered in Hydra's ConfigStore.

The YAML groups in ``neva_sweep/conf/`` mirror these classes; ``neva_sweep/conf/config.yaml``
composes them. The YAML files ship inside the package (as package data), so an installed
wheel finds them wherever it runs: read them through :func:`packaged_configs` or
:func:`compose_config`, never through a path relative to a checkout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from omegaconf import MISSING, DictConfig, OmegaConf

from .values import VALUES

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

CONFIG_PACKAGE = "neva_sweep.conf"  # the YAML configs, shipped as package data

# Edit defaults, shared by the schema and the Python API (neva_sweep.edits.neuron,
# neva_sweep.neurons.selection
# re-export them). They live here, with every schema, because this module must import
# without torch: `python -m neva_sweep --help` and a mistyped task answer in a second.
DEFAULT_RULE = "add"
DEFAULT_MAGNITUDE = 4.0  # chosen with benchmarks/steering_effect.py on the embedded model
DEFAULT_SPARSITY = 2e-3  # 93 of SmolLM2's 46,080 neurons (benchmarks/steering_effect.py)
DEFAULT_SCORE = "mean_diff"  # lape ignores neurons that fire for less than 5% of the value's tokens
# Value-relevance gates (neva_sweep/neurons/gate.py): none = every row fully edited; context = each
# row's edit scaled by a probe's P(value-laden prompt); value = by a probe's P(prompt about
# the edit's own value) (one-vs-rest over the ten values, no neutral texts).
GATES = ("none", "context", "value")


class ConfigError(ValueError):
    """An invalid configuration; the message starts with the key (or file) to fix."""


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


@dataclass
class SearchSpace:
    """What Optuna searches per (model, value, method) (``search.space.*``).

    A list with one entry is fixed; with several entries it is searched categorically.
    """

    sparsity: list[float] = field(default_factory=lambda: [5e-4, 1e-2])  # [lo, hi], log-uniform
    # scaled: search the dose as a strength (neva_sweep/methods/strength.py), log-uniform in
    # ``strength`` (neuron methods) and ``caa_strength`` (diffmean), recentred by the
    # calibration (search.calibrate); false: the raw magnitude and coefficient below, uniform
    scaled: bool = True
    strength: list[float] = field(default_factory=lambda: [4.0, 64.0])
    caa_strength: list[float] = field(default_factory=lambda: [0.25, 4.0])
    # caa_pairs: fraction of the residual norm added, always log-uniform (calibrated when
    # scaled); see conf/search/default.yaml for how the box was chosen
    caa_pairs_strength: list[float] = field(default_factory=lambda: [0.05, 1.0])
    magnitude: list[float] = field(default_factory=lambda: [1.0, 8.0])  # [lo, hi], uniform
    # edit rules (edits/neuron.py; also add_sd), searched; the first is the calibration reference
    rules: list[str] = field(
        default_factory=lambda: [DEFAULT_RULE, "scale", "set", "gate_neuron"])
    scores: list[str] = field(default_factory=lambda: [DEFAULT_SCORE])  # mean_diff | ...
    polarities: list[str] = field(default_factory=lambda: ["positive"])  # positive | both
    positions: list[str] = field(default_factory=lambda: ["all"])  # all | response
    # none | context | value (neurons/gate.py); the prompt method takes no gate
    gates: list[str] = field(default_factory=lambda: ["none", "value"])
    layer_windows: list[list[int]] | None = None  # [[start, stop], ...]; None = all layers
    # methods diffmean and caa_pairs: first layer as a fraction of depth [lo, hi],
    # consecutive layers; diffmean, scaled: false: its coefficient
    caa_layer: list[float] = field(default_factory=lambda: [0.2, 0.8])
    caa_n_layers: list[int] = field(default_factory=lambda: [1])
    caa_coefficient: list[float] = field(default_factory=lambda: [0.5, 6.0])
    prompt_strengths: list[int] = field(default_factory=lambda: [1, 2, 3])  # method prompt


@dataclass
class CalibrationConfig:
    """How a study's strength range is calibrated (``search.calibration.*``)."""

    kl: float = 0.1  # the KL aimed at when search.max_kl is null (nats/token)
    span: list[float] = field(default_factory=lambda: [0.25, 2.0])  # range = dose* x span
    # neutral texts the KL is measured on: null = the trials' own (sweep.capability),
    # so the calibrated dose meets the budget the trials are held to
    texts: int | None = None
    steps: int = 5  # bisection steps once the budget is bracketed


@dataclass
class SearchConfig:
    """Optuna studies, sampler, objectives, constraints and trial scheduling (``search.*``)."""

    storage: str | None = None  # SQLAlchemy URL or journal:///path; None = <run dir>/optuna.db
    study_prefix: str = ""  # study names: {study_prefix}{model}/{value}/{method}
    sampler: str = "tpe"  # tpe (multivariate, multi-objective) | nsga2 | gp
    seed: int = 0
    # finished (COMPLETE or PRUNED) trials per study; re-running tops studies up to it. 24:
    # NeVA's best feasible edit reached 93% of a dense grid's by 24 trials, 72% by 12
    # (benchmarks/search_convergence.py, docs/results.md section 0d)
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
    # dose-matched random edits scored with each chosen edit on the test split
    # (best_edits.json "test", neva_sweep/evaluation/heldout.py); 0 = the edit alone
    test_nulls: int = 4
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
    # multi-fidelity trials (neva_sweep/sweep/pruning.py): none | median | sha | hyperband;
    # a trial is first scored on ``fidelity`` of the scenarios and continues only if promising
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
