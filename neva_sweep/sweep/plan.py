"""What a sweep will run, checked before any actor starts.

:func:`make_plan` resolves the models (``model`` or ``models=[...]``), the values and
methods, and validates every sweep setting; :func:`replica_counts` checks the models
against the cluster's resources. Every error is a :class:`ConfigError` whose message
starts with the config key to fix and says what is valid.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, get_type_hints

from omegaconf import DictConfig, OmegaConf
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from ..config import (
    GATES,
    CapabilityConfig,
    ClusterConfig,
    ConfigError,
    JudgeConfig,
    ModelConfig,
    ResidualSpace,
    SearchSpace,
    check_layer_window,
    load_group_option,
    only_gated,
    upgrade_search_space,
)
from ..edits.neuron import ONE_SIDED_RULES, POSITIONS, RULES
from ..edits.prompt import PROMPT_STRENGTHS
from ..evaluation.judges.base import JUDGES
from ..evaluation.metrics import METRICS, constraint_metrics, objective_metrics
from ..methods.base import METHODS
from ..models.host import check_placement
from ..models.registry import model_n_layers
from ..neurons.selection import POLARITIES, SCORES, SIGNED_SCORES
from ..values import VALUES
from . import samplers  # the registry: a new sampler is one builder there
from .pruning import PRUNERS
from .tracking import check_logger

DIRECTIONS = ("maximize", "minimize")


@dataclass(frozen=True)
class ModelEntry:
    """One model of the sweep: its label (study and file names), its config fields and,
    once the plan checked layer windows against it, its layer count (None: not needed, or
    not readable without loading the model; the sweep then checks after the load)."""

    label: str
    config: dict[str, Any]
    n_layers: int | None = None

    @property
    def tp_size(self) -> int:
        return int(self.config.get("tp_size", 1))

    @property
    def on_gpu(self) -> bool:
        return str(self.config.get("device", "cpu")).startswith("cuda")


@dataclass(frozen=True)
class StudyKey:
    model: str
    value: str
    method: str

    def name(self, prefix: str = "") -> str:
        return f"{prefix}{self.model}/{self.value}/{self.method}"


@dataclass
class SweepPlan:
    models: list[ModelEntry]
    values: list[str]
    methods: list[str]
    storage: str

    @property
    def studies(self) -> list[StudyKey]:
        """Every (model, value, method), values interleaved across models."""
        return [StudyKey(m.label, v, meth) for v in self.values for m in self.models
                for meth in self.methods]


def model_label(config: dict[str, Any]) -> str:
    """The name a model goes by in study names and files (as ``load_model`` names it)."""
    return config.get("short_name") or Path(str(config["name"])).name.removesuffix(".gguf")


def resolve_models(cfg: DictConfig) -> list[ModelEntry]:
    """``models=[a, b]`` loads the packaged neva_sweep/conf/model/{a,b}.yaml; otherwise the
    single ``model``."""
    if not cfg.get("models"):
        configs = [OmegaConf.to_container(cfg.model, resolve=True)]
    else:
        configs = []
        for name in cfg.models:
            try:
                option = load_group_option("model", str(name))
            except KeyError as e:
                raise ConfigError(f"models: {e.args[0]} (neva_sweep/conf/model/)") from None
            node = OmegaConf.merge(OmegaConf.structured(ModelConfig), option)
            configs.append(OmegaConf.to_container(node, resolve=True))
    entries = [ModelEntry(model_label(c), c) for c in configs]
    labels = [e.label for e in entries]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise ConfigError(f"models: several models are named {dupes}; give them distinct "
                          "short_name fields")
    for e in entries:
        check_placement(e.config, f"model.* of {e.label!r}")
    return entries


def with_layer_counts(models: list[ModelEntry], windows: Any) -> list[ModelEntry]:
    """``search.space.layer_windows`` checked against every model's layer count, read from
    its config (no weights); the models come back with the count they were checked
    against. Without windows nothing is read."""
    if not windows:
        return models
    out = []
    for m in models:
        n_layers = model_n_layers(m.config)
        for w in windows:
            check_layer_window("search.space.layer_windows", w, n_layers, m.label)
        out.append(replace(m, n_layers=n_layers))
    return out


def _choices(key: str, given: Any, valid: Any) -> list:
    given = list(given or [])
    if not given:
        raise ConfigError(f"{key}: needs at least one entry; valid choices: {', '.join(valid)}")
    for x in given:
        if x not in valid:
            raise ConfigError(f"{key}: unknown entry {x!r}; valid choices: {', '.join(valid)}")
    if len(set(given)) != len(given):
        raise ConfigError(f"{key}: entries repeat: {given}")
    return given


def _range(key: str, pair: Any, lo_min: float, hi_max: float, open_: bool) -> None:
    vals = list(pair or [])
    if len(vals) != 2 or not all(isinstance(v, int | float) and math.isfinite(v) for v in vals):
        raise ConfigError(f"{key}: must be [lo, hi] (two finite numbers), got {vals}")
    lo, hi = vals
    inside = (lo_min < lo and hi < hi_max) if open_ else (lo_min <= lo and hi <= hi_max)
    if not inside or lo > hi:
        interval = f"({lo_min}, {hi_max})" if open_ else f"[{lo_min}, {hi_max}]"
        raise ConfigError(f"{key}: [lo, hi] must satisfy lo <= hi inside {interval}, got {vals}")


def _at_least(key: str, x: Any, minimum: float, optional: bool = False) -> None:
    if x is None and optional:
        return
    if x is None or not x >= minimum:
        extra = " or null" if optional else ""
        raise ConfigError(f"{key}: must be >= {minimum}{extra}, got {x}")


def searched_ranges(schema: type = SearchSpace, prefix: str = "") -> Iterator[tuple[str, tuple]]:
    """``(dotted key under search.space, bounds)`` of every searched range the schema
    declares (:func:`~neva_sweep.config.searched`), the methods' own dataclasses included."""
    types = get_type_hints(schema)  # the annotations are strings (postponed evaluation)
    for f in fields(schema):
        if "bounds" in f.metadata:
            yield prefix + f.name, f.metadata["bounds"]
        elif is_dataclass(types[f.name]):
            yield from searched_ranges(types[f.name], f"{prefix}{f.name}.")


def check_space_ranges(sp: DictConfig) -> None:
    """Every searched range in ``search.space`` (:func:`searched_ranges`), the residual
    methods' layer counts and prompt's wordings. A range ``[lo, hi]`` with lo == hi fixes
    the parameter (Optuna draws that one value)."""
    for key, (lo_min, hi_max, open_) in searched_ranges():
        _range(f"search.space.{key}", OmegaConf.select(sp, key), lo_min, hi_max, open_)
    for name, kind in get_type_hints(SearchSpace).items():
        if isinstance(kind, type) and issubclass(kind, ResidualSpace):
            counts = list(sp[name].n_layers or [])
            if not counts or any(not isinstance(n, int) or n < 1 for n in counts):
                raise ConfigError(f"search.space.{name}.n_layers: each entry is a number "
                                  f"of consecutive layers >= 1 (one entry at least), got {counts}")
    strengths = list(sp.prompt.strength or [])
    if not strengths or any(x not in PROMPT_STRENGTHS for x in strengths):
        raise ConfigError(f"search.space.prompt.strength: got {strengths}; valid entries: "
                          f"{', '.join(str(k) for k in PROMPT_STRENGTHS)}")


# budgets a gate cannot hide: measured on value-laden text or the MC questions
GATE_BUDGETS = ("max_kl_value", "max_suppression", "max_inflation", "max_acquiescence",
                "max_accuracy_drop")


def warn_unbounded_gates(s: DictConfig) -> bool:
    """Whether the search draws gated edits only (``search.space.gates`` without ``none``)
    with no budget a gate cannot hide (:data:`GATE_BUDGETS`); logged as a warning. A gate
    closed on neutral text keeps a gated edit's KL near 0 at any strength, so the KL budget
    and its calibration do not bound it: the top of the strength box decides the chosen
    edit (docs/results.md, section 0c, measured with the value gate)."""
    gates = only_gated(s.space.gates)
    if not gates or any(s.get(k) is not None for k in GATE_BUDGETS):
        return False
    logging.getLogger(__name__).warning(
        "search.space.gates=%s: every edit is gated and no budget binds a gated edit "
        "(KL on neutral text stays near 0 under a gate), so the strength box, not a "
        "budget, decides the best edit; set one of %s (e.g. search.max_kl_value=0.1)",
        gates, ", ".join(f"search.{k}" for k in GATE_BUDGETS))
    return True


def check_search(s: DictConfig) -> None:
    """Every ``search.*`` key, after mapping the deprecated ``search.space`` keys onto
    their new names (in place, :func:`~neva_sweep.config.upgrade_search_space`)."""
    upgrade_search_space(s)
    _at_least("search.n_trials", s.n_trials, 1)

    if s.sampler not in samplers.SAMPLERS:
        raise ConfigError(f"search.sampler: unknown sampler {s.sampler!r}; valid choices: "
                          f"{', '.join(samplers.SAMPLERS.names())}")
    _at_least("search.n_startup_trials", s.n_startup_trials, 0)
    _at_least("search.population_size", s.population_size, 2)
    sp = s.space
    check_space_ranges(sp)
    if s.pruner not in PRUNERS:
        raise ConfigError(f"search.pruner: unknown pruner {s.pruner!r}; valid choices: "
                          f"{', '.join(PRUNERS)}")
    if not 0 < s.fidelity < 1:
        raise ConfigError(f"search.fidelity: the share of the scenarios a trial's first rung "
                          f"judges must be in (0, 1), got {s.fidelity}")
    c = s.calibration
    if not c.kl > 0:
        raise ConfigError(f"search.calibration.kl: must be > 0 nats/token, got {c.kl}")
    _range("search.calibration.span", c.span, 0.0, math.inf, open_=True)
    _at_least("search.calibration.texts", c.texts, 1, optional=True)
    _at_least("search.calibration.steps", c.steps, 0)
    if not isinstance(c.anchors, int) or c.anchors < 1:
        raise ConfigError(f"search.calibration.anchors: the number of calibrated settings a "
                          f"study starts from, an integer >= 1; got {c.anchors}")
    if not isinstance(c.points, int) or c.points < c.anchors:
        raise ConfigError(f"search.calibration.points: the number of settings a study is "
                          f"calibrated at, an integer >= search.calibration.anchors "
                          f"({c.anchors}); got {c.points}")
    if not isinstance(c.gate_points, int) or c.gate_points < 1:
        raise ConfigError(f"search.calibration.gate_points: the number of settings each gate "
                          f"is calibrated at, an integer >= 1; got {c.gate_points}")
    if s.calibrate and s.max_kl is not None and not s.max_kl > 0:
        raise ConfigError("search.max_kl: calibration bisects the strength to this budget, "
                          f"which must be > 0 (or set search.calibrate=false); got {s.max_kl}")
    _choices("search.space.rules", sp.rules, RULES)
    _choices("search.space.scores", sp.scores, SCORES.names())
    _choices("search.space.polarities", sp.polarities, POLARITIES)
    if "positive" not in sp.polarities:
        one_sided = sorted(set(sp.rules) & ONE_SIDED_RULES)
        unsigned = [x for x in sp.scores if x not in SIGNED_SCORES]
        if one_sided or unsigned:
            raise ConfigError(f"search.space.polarities: [both] alone cannot be built with "
                              f"rules {one_sided} or unsigned scores {unsigned} (both damps "
                              f"anti-specific neurons); add positive, or drop those from "
                              f"search.space.rules / search.space.scores")
    _choices("search.space.positions", sp.positions, POSITIONS)
    _choices("search.space.gates", sp.gates, GATES)
    for w in sp.layer_windows or []:  # against each model's layers: with_layer_counts
        check_layer_window("search.space.layer_windows", w, None)
    check_objectives(s)
    check_constraints(s)
    _at_least("search.best_max_nlr", s.best_max_nlr, 0.0)
    _at_least("search.trials_per_batch", s.trials_per_batch, 1)
    _at_least("search.max_in_flight", s.max_in_flight, 1, optional=True)
    _at_least("search.max_failures", s.max_failures, 0, optional=True)
    warn_unbounded_gates(s)


def check_objectives(s: DictConfig) -> None:
    """``search.objectives``: metrics the schema lets be objectives, each with a direction."""
    valid = objective_metrics()
    if not s.objectives:
        raise ConfigError("search.objectives: needs at least one metric")
    for metric, direction in s.objectives.items():
        if metric not in valid:
            listed = ", ".join(f"{m} ({METRICS[m].direction})" for m in valid)
            raise ConfigError(f"search.objectives: unknown metric {metric!r}; valid choices "
                              f"(usual direction): {listed}")
        if direction not in DIRECTIONS:
            raise ConfigError(f"search.objectives.{metric}: {direction!r}; valid choices: "
                              f"{', '.join(DIRECTIONS)}")


def check_constraints(s: DictConfig) -> None:
    """Budgets ``search.max_<metric>`` (>= 0 or null), only for metrics that can be constraints."""
    valid = constraint_metrics()
    for key in s:
        metric = str(key).removeprefix("max_")
        if key.startswith("max_") and metric in METRICS and metric not in valid:
            raise ConfigError(f"search.{key}: {metric} cannot be a constraint; metrics with a "
                              f"budget search.max_<metric>: {', '.join(valid)}")
    for metric in valid:
        _at_least(f"search.max_{metric}", s.get(f"max_{metric}"), 0.0, optional=True)


def trial_section(cfg: DictConfig, section: str) -> dict:
    """``<section>.*`` (capability or judge) with the sweep's own overrides
    (``sweep.<section>``) on top: what the sweep's trials are evaluated with."""
    base = OmegaConf.to_container(cfg[section], resolve=True)
    extra = OmegaConf.to_container(cfg.sweep[section], resolve=True) or {}
    unknown = sorted(set(extra) - set(base))
    if unknown:
        raise KeyError(f"sweep.{section}: unknown keys {unknown}; valid keys: "
                       f"{', '.join(base)}")
    return {**base, **extra}


def trial_capability(cfg: DictConfig) -> dict:
    """``capability.*`` with ``sweep.capability`` on top."""
    return trial_section(cfg, "capability")


def trial_judge(cfg: DictConfig) -> dict:
    """``judge.*`` with ``sweep.judge`` on top."""
    return trial_section(cfg, "judge")


MIN_MC_FOR_CONSTRAINT = 100  # fewer questions give accuracy intervals wider than any budget


def check_evaluation(cfg: DictConfig) -> None:
    if cfg.judge.name not in JUDGES:
        raise ConfigError(f"judge.name: unknown judge {cfg.judge.name!r}; valid choices: "
                          f"{', '.join(JUDGES.names())}")
    try:
        cap = OmegaConf.create(trial_capability(cfg))
        judge = OmegaConf.create(trial_judge(cfg))
    except KeyError as e:
        raise ConfigError(str(e).strip('"')) from None
    if judge.name not in JUDGES:
        raise ConfigError(f"sweep.judge.name: unknown judge {judge.name!r}; valid choices: "
                          f"{', '.join(JUDGES.names())}")
    if cfg.split != "search":
        raise ConfigError(f"split: a sweep searches on the search split and re-scores its "
                          f"chosen edits on the test split by itself (best_edits.json "
                          f"'test'); leave split at search (got {cfg.split!r})")
    if cfg.search.test_nulls == 1 or cfg.search.test_nulls < 0:
        raise ConfigError(f"search.test_nulls: 0 (the chosen edit alone) or >= 2 (a null "
                          f"needs a spread); got {cfg.search.test_nulls}")
    ends = JUDGES["forced_choice"].ENDS
    for key, j in (("judge", cfg.judge), ("sweep.judge", judge)):
        if j.get("ends", JudgeConfig.ends) not in ends:
            raise ConfigError(f"{key}.ends: must be one of {', '.join(ends)}; got "
                              f"{j.get('ends')!r}")
    _at_least("capability.mc_limit", cap.mc_limit, 0, optional=True)
    test_cap = OmegaConf.to_container(cfg.search.test_capability, resolve=True) or {}
    unknown = sorted(set(test_cap) - set(cap))
    if unknown:
        raise ConfigError(f"search.test_capability: unknown keys {unknown}; valid keys: "
                          f"{', '.join(cap)}")
    _at_least("search.test_capability.mc_limit", test_cap.get("mc_limit", 0), 0,
              optional=True)
    _at_least("capability.neutral_limit", cap.neutral_limit, 1, optional=True)
    _at_least("judge.scenarios_limit", judge.get("scenarios_limit"), 1, optional=True)
    _at_least("judge.null_edits", judge.get("null_edits"), 2)
    n_mc = cap.mc_limit if cap.mc_limit is not None else MIN_MC_FOR_CONSTRAINT
    if cfg.search.get("max_accuracy_drop") is not None and n_mc < MIN_MC_FOR_CONSTRAINT:
        raise ConfigError(
            f"search.max_accuracy_drop: an accuracy budget needs >= {MIN_MC_FOR_CONSTRAINT} "
            f"MC questions per trial (sweep.capability.mc_limit is {cap.mc_limit}; 40 "
            "questions give +-0.15 intervals); raise it, or constrain search.max_kl instead")
    _at_least("capability.fluency_queries", cap.fluency_queries, 0)
    replies = cap.get("value_replies", CapabilityConfig.value_replies)
    _at_least("capability.value_replies", replies, 0)
    if cfg.search.get("max_kl_value") is not None and replies == 0:
        raise ConfigError(
            "search.max_kl_value: KL on value-laden replies needs replies to read; "
            "capability.value_replies is 0: set it >= 1 "
            f"({CapabilityConfig.value_replies} by default), or drop the budget")
    _at_least("capability.batch_size", cap.batch_size, 1)
    _at_least("judge.batch_size", cfg.judge.batch_size, 1)


def check_cluster(c: DictConfig) -> None:
    if c.kind not in ("local", "ray"):
        raise ConfigError(f"cluster.kind: unknown kind {c.kind!r}; valid choices: local, ray")
    _at_least("cluster.num_cpus", c.num_cpus, 1, optional=True)
    _at_least("cluster.replicas_per_model", c.replicas_per_model, 1, optional=True)
    if not c.num_cpus_per_actor > 0:
        raise ConfigError(f"cluster.num_cpus_per_actor: must be > 0, got {c.num_cpus_per_actor}")
    if not c.num_gpus_per_actor > 0:
        raise ConfigError(f"cluster.num_gpus_per_actor: must be > 0, got {c.num_gpus_per_actor}")


JOURNAL = "journal://"
STORAGE_FORMS = ("journal:///abs/path/optuna.log (Optuna's journal file; journal://name.log "
                 "is in the run directory) or an SQLAlchemy URL (sqlite:///runs/x/optuna.db, "
                 "postgresql://user@host/db)")


def storage_url(search: DictConfig, run_dir: Path) -> str:
    """``search.storage``, defaulting to SQLite in the run directory; checked for syntax.

    Journal files (``journal:///abs/path``, for shared filesystems where SQLite's locking
    is unreliable) come back with an absolute path: a relative ``journal://name.log`` is
    resolved against the run directory, so a resumed run finds the same file from any
    working directory.
    """
    url = search.storage
    if url is None:
        return f"sqlite:///{(run_dir / 'optuna.db').resolve()}"
    url = str(url)
    if url.startswith("journal:"):
        rest = url.removeprefix(JOURNAL)
        if rest == url or not rest.strip("/") or rest.endswith("/"):
            raise ConfigError(f"search.storage: {url!r} names no journal file; valid forms: "
                              f"{STORAGE_FORMS}")
        return f"{JOURNAL}{(run_dir / rest).resolve()}"  # an absolute rest stays as it is
    try:
        make_url(url)
    except ArgumentError:
        raise ConfigError(f"search.storage: {url!r} is not a storage URL; valid forms: "
                          f"{STORAGE_FORMS}") from None
    return url


def storage_file(url: str) -> Path | None:
    """The file holding storage ``url`` (SQLite database or journal file), or None for
    server databases and in-memory SQLite."""
    if url.startswith(JOURNAL):
        return Path(url.removeprefix(JOURNAL))
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:" and not database.startswith("file:"):
            return Path(database)
    return None


def make_plan(cfg: DictConfig, run_dir: Path) -> SweepPlan:
    """Everything checked that can be checked without a cluster, each key once: the
    models (placement, and layer windows against their layer counts), values, methods,
    search, evaluation, cluster and logger settings. ``task=sweep`` builds it in its
    preflight and hands it to :func:`~neva_sweep.sweep.run.run_sweep`."""
    models = resolve_models(cfg)
    values = _choices("sweep.values", cfg.sweep["values"], VALUES)  # .values is DictConfig.values()
    methods = _choices("sweep.methods", cfg.sweep.methods, METHODS.names())
    check_search(cfg.search)
    models = with_layer_counts(models, cfg.search.space.layer_windows)
    check_evaluation(cfg)
    check_cluster(cfg.cluster)
    check_logger(cfg.logger)
    return SweepPlan(models, values, methods, storage_url(cfg.search, run_dir))


@dataclass(frozen=True)
class Resources:
    cpus: float
    gpus: float
    gpus_per_node: float


def replica_counts(models: list[ModelEntry], cluster: ClusterConfig | DictConfig,
                   res: Resources) -> dict[str, int]:
    """Replicas per model that fit ``res`` (``cluster.replicas_per_model``, or as many as fit).

    >>> m = [ModelEntry("a", {"tp_size": 1, "device": "cpu"})]
    >>> replica_counts(m, ClusterConfig(), Resources(cpus=2, gpus=0, gpus_per_node=0))
    {'a': 2}
    """
    cpu_per, gpu_per = float(cluster.num_cpus_per_actor), float(cluster.num_gpus_per_actor)
    for m in models:
        if m.on_gpu:
            if res.gpus == 0:
                raise ConfigError(f"model.device: cuda for {m.label!r} but the cluster has no GPUs")
            if m.tp_size * gpu_per > res.gpus_per_node:
                raise ConfigError(f"model.tp_size: {m.tp_size} for {m.label!r} needs "
                                  f"{m.tp_size * gpu_per:g} GPUs on one node; nodes have at most "
                                  f"{res.gpus_per_node:g}")
            if res.gpus % m.tp_size:
                raise ConfigError(f"model.tp_size: {m.tp_size} for {m.label!r} does not divide "
                                  f"the {res.gpus:g} visible GPUs")
        elif m.tp_size * cpu_per > res.cpus:
            raise ConfigError(f"model.tp_size: {m.tp_size} shards of {cpu_per:g} CPUs for "
                              f"{m.label!r} need more than the cluster's {res.cpus:g} CPUs "
                              "(lower model.tp_size or cluster.num_cpus_per_actor)")
    cpus = sum(m.tp_size * cpu_per for m in models)  # one replica of each model
    gpus = sum(m.tp_size * gpu_per for m in models if m.on_gpu)
    if cluster.replicas_per_model is None:
        fit = min(res.cpus // cpus if cpus else math.inf, res.gpus // gpus if gpus else math.inf)
        n = int(max(1, fit))
    else:
        n = int(cluster.replicas_per_model)
    if n * cpus > res.cpus or n * gpus > res.gpus:
        raise ConfigError(
            f"cluster.replicas_per_model: {n} replicas of each model need {n * cpus:g} CPUs and "
            f"{n * gpus:g} GPUs; the cluster has {res.cpus:g} CPUs and {res.gpus:g} GPUs "
            "(lower it, cluster.num_cpus_per_actor or model.tp_size)")
    return {m.label: n for m in models}
