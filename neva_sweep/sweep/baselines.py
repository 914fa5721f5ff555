"""Baseline steering methods, searched, evaluated and logged exactly like NeVA.

- ``random_neurons``: as many neurons as NeVA would select at the trial's sparsity, drawn
  uniformly at random (seed recorded in the trial's params), with NeVA's edit rule: the
  control that tells whether *selection* matters.
- ``caa``: contrastive activation addition on the residual stream (neva_sweep/caa.py);
  searched over the layer (as a fraction of depth, so one space fits every model), the
  number of consecutive layers and the coefficient.
- ``prompt``: a prefix asking the model to prioritise the value, at one of three
  strengths (the no-internals baseline).
"""

from __future__ import annotations

import math
from typing import Any

import optuna

from ..caa import PromptSpec, ResidualSpec, caa_spec, prompt_spec
from ..config import SearchSpace
from ..edit import EditSpec
from ..select import random_neurons
from ..stats import NeuronStats
from .methods import METHODS, NeVA, choose, parse_window


class RandomNeurons(NeVA):
    """NeVA's count, rule and magnitude on uniformly drawn neurons."""

    name = "random_neurons"

    def suggest(self, trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
        params = super().suggest(trial, space)
        params.pop("score")  # no selection score: the neurons are random
        params["seed"] = int(trial.number)  # recorded, so the edit can be rebuilt
        return params

    def build(self, stats: NeuronStats, value: str, params: dict[str, Any]) -> EditSpec:
        k = math.ceil(float(params["sparsity"]) * stats.n_neurons)
        neurons = random_neurons(stats, value, k, seed=int(params["seed"]),
                                 layer_window=parse_window(params["layer_window"]))
        return EditSpec(neurons, params["rule"], float(params["magnitude"]))


class CAA:
    """Residual-stream steering vectors (mean difference of value vs rest activations)."""

    name = "caa"

    def suggest(self, trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
        return {
            "layer_frac": trial.suggest_float("layer_frac", *space.caa_layer),
            "n_layers": choose(trial, "n_layers", list(space.caa_n_layers)),
            "coefficient": trial.suggest_float("coefficient", *space.caa_coefficient),
            "positions": choose(trial, "positions", list(space.positions)),
        }

    def build(self, stats: NeuronStats, value: str, params: dict[str, Any]) -> ResidualSpec:
        n = len(stats.layer_sizes)
        first = min(n - 1, max(0, round(float(params["layer_frac"]) * (n - 1))))
        layers = list(range(first, min(n, first + int(params["n_layers"]))))
        return caa_spec(stats, value, layers, float(params["coefficient"]))


class Prompt:
    """A system-style prefix asking the model to put the value first."""

    name = "prompt"

    def suggest(self, trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
        return {"strength": choose(trial, "strength", list(space.prompt_strengths)),
                "positions": "all"}

    def build(self, stats: NeuronStats, value: str, params: dict[str, Any]) -> PromptSpec:
        return prompt_spec(value, int(params["strength"]))


METHODS.register("random_neurons", RandomNeurons())
METHODS.register("caa", CAA())
METHODS.register("prompt", Prompt())
