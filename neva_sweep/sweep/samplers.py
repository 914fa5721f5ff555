"""The Optuna samplers ``search.sampler`` names: one registered builder each.

A builder takes the ``search`` config and the study's seed and returns a fresh sampler;
every one of them reads the trials' constraints (``Trial.set_constraint``, see
:mod:`.studies`). Adding a sampler is one builder here: the config check
(:func:`.plan.check_search`) takes its valid choices from :data:`SAMPLERS`.

Optuna is imported inside the builders, so that checking a config does not load it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from ..registry import Registry

if TYPE_CHECKING:
    import optuna

SamplerBuilder = Callable[[DictConfig, int], "optuna.samplers.BaseSampler"]
SAMPLERS: Registry[SamplerBuilder] = Registry("sampler")


@SAMPLERS.add("tpe")
def tpe(search: DictConfig, seed: int) -> optuna.samplers.BaseSampler:
    """Multi-objective TPE, the default."""
    import optuna

    # constant_liar: trials asked but not yet told (batches, parallel replicas) count as
    # bad results, so parallel asks spread out instead of piling on one point.
    # group: polarity is conditional (methods.polarities_for); group=True models each
    # set of co-occurring parameters jointly instead of falling back to independent TPE.
    with warnings.catch_warnings():  # multivariate, group: experimental, stable since 2.2/2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(multivariate=True, group=True, constant_liar=True,
                                          seed=seed, n_startup_trials=search.n_startup_trials)


@SAMPLERS.add("nsga2")
def nsga2(search: DictConfig, seed: int) -> optuna.samplers.BaseSampler:
    """NSGA-II, generations of ``search.population_size`` trials."""
    import optuna

    return optuna.samplers.NSGAIISampler(population_size=search.population_size, seed=seed)


@SAMPLERS.add("gp")
def gp(search: DictConfig, seed: int) -> optuna.samplers.BaseSampler:
    """Gaussian-process Bayesian optimisation."""
    import optuna

    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=search.n_startup_trials)


def make_sampler(search: DictConfig, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler ``search.sampler`` names, seeded with ``seed``."""
    name = str(search.sampler)
    if name not in SAMPLERS:
        raise ValueError(f"search.sampler: unknown sampler {name!r}; valid choices: "
                         f"{', '.join(SAMPLERS.names())}")
    return SAMPLERS[name](search, seed)
