"""Builders: the objects a task or a sweep needs, from the composed config (the model
host, probe sets, statistics settings and statistics, selection arguments, the
evaluator). The tasks (:mod:`neva_sweep.cli`) and the sweep use the same ones."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from .config import CapabilityConfig, JudgeConfig, StatsConfig
from .data import load_probes

if TYPE_CHECKING:  # the model stack (torch, transformers) loads inside the builders, so
    # that the command line answers at once
    from .data import ProbeSet
    from .evaluation.evaluator import Evaluator
    from .models.host import ModelHost
    from .neurons.stats import NeuronStats


def host_from_config(cfg: DictConfig) -> ModelHost:
    from .models.host import load_model

    return load_model(cfg.model)


def identify_probes(cfg: DictConfig) -> ProbeSet:
    """The statistics pass's texts: the identify probes of ``data.probes`` and the gate part
    of ``data.neutral`` (the value-relevance gate's neutral class); with
    ``stats.resample_seed``, a bootstrap resample of the probes per value."""
    probes = load_probes(cfg.data.probes, split="identify", neutral=cfg.data.neutral or True)
    seed = cfg.stats.get("resample_seed")
    return probes if seed is None else probes.resample(int(seed))


def stats_settings(cfg: DictConfig) -> tuple[ProbeSet, StatsConfig, Path | None]:
    """The statistics pass's probes, settings and cache directory (None: no cache)."""
    cache = Path(cfg.cache_dir) / "stats" if cfg.cache_dir else None
    settings = StatsConfig(**OmegaConf.to_container(cfg.stats))
    if needs_attribution(cfg):  # the attribution score reads the pairs' gradients
        settings.attribution = True
    return identify_probes(cfg), settings, cache


def needs_attribution(cfg: DictConfig) -> bool:
    """Whether a configured score (``edit.score``, ``search.space.scores``) is attribution."""
    scores = {cfg.edit.get("score"), *(cfg.search.space.get("scores") or [])}
    return "attribution" in scores


def stats_from_config(cfg: DictConfig, host: ModelHost) -> NeuronStats:
    """Identification statistics for ``host``, from the cache when possible."""
    from .neurons.stats import cached_stats

    return cached_stats(host, *stats_settings(cfg), progress=cfg.progress)


def selection_kwargs(cfg: DictConfig) -> dict:
    e = cfg.edit
    window = list(e.layer_window) if e.layer_window is not None else None
    return dict(sparsity=e.sparsity, score=e.score, layer_window=window, exclusive=e.exclusive,
                polarity=e.polarity)


def evaluator_from_config(cfg: DictConfig, host: ModelHost) -> Evaluator:
    from .evaluation.evaluator import Evaluator

    judge = JudgeConfig(**OmegaConf.to_container(cfg.judge))
    cap = CapabilityConfig(**OmegaConf.to_container(cfg.capability))
    cache = Path(cfg.cache_dir) / "eval" if cfg.cache_dir else None
    return Evaluator(host, judge, cap, cfg.data, cache, progress=cfg.progress,
                     split=cfg.split)
