"""Baseline steering methods, searched, evaluated and logged exactly like NeVA.

- ``random_neurons``: as many neurons as NeVA would select at the trial's sparsity, drawn
  uniformly at random (seed recorded in the trial's params), with NeVA's edit rule: the
  control that tells whether *selection* matters.
- ``caa``: contrastive activation addition on the residual stream (neva_sweep/caa.py);
  searched over the layer (as a fraction of depth, so one space fits every model), the
  number of consecutive layers and the coefficient.
- ``prompt``: a prefix asking the model to prioritise the value, at one of three
  strengths (the no-internals baseline; neva_sweep/prompting.py).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ..caa import ResidualEdit, caa_edit
from ..edit import NeuronEdit
from ..gate import gate_of
from ..prompting import DEFAULT_STRENGTH, PromptEdit, prompt_edit
from ..select import random_neurons
from ..stats import NeuronStats
from .methods import METHODS, NeVA, choose, parse_window, resolve_magnitude

if TYPE_CHECKING:
    import optuna

    from ..config import SearchSpace


class RandomNeurons(NeVA):
    """NeVA's count, rule and magnitude on uniformly drawn neurons."""

    name = "random_neurons"
    defaults: dict[str, Any] = {**{k: v for k, v in NeVA.defaults.items()
                                   if k not in ("score", "polarity")}, "seed": 0}

    def suggest(self, trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
        params = super().suggest(trial, space)
        params.pop("score")  # no selection score: the neurons are random
        params.pop("polarity")  # and no sign: random neurons have no anti-specific side
        params["seed"] = int(trial.number)  # recorded, so the edit can be rebuilt
        return params

    def build(self, stats: NeuronStats, value: str, params: dict[str, Any]) -> NeuronEdit:
        k = math.ceil(float(params["sparsity"]) * stats.n_neurons)
        neurons = random_neurons(stats, value, k, seed=int(params["seed"]),
                                 layer_window=parse_window(params["layer_window"]))
        return NeuronEdit(neurons, params["rule"], resolve_magnitude(stats, neurons, params),
                          params.get("positions"),
                          gate=gate_of(stats, params.get("gate", "none")))


class CAA:
    """Residual-stream steering vectors (mean difference of value vs rest activations).

    The dose is ``strength`` (searched log-uniformly and calibrated when
    ``search.space.scaled``; for CAA the coefficient itself, see neva_sweep/strength.py)
    or ``coefficient`` (uniform); a given strength wins. Defaults: one layer at the middle
    of the depth, coefficient 2 (a starting point, not a tuned value).
    """

    name = "caa"
    defaults: dict[str, Any] = {"layer_frac": 0.5, "n_layers": 1, "coefficient": 2.0,
                                "strength": None, "positions": "all", "gate": "none"}

    def suggest(self, trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
        dose = ({"strength": trial.suggest_float("strength", *space.caa_strength, log=True)}
                if space.scaled else
                {"coefficient": trial.suggest_float("coefficient", *space.caa_coefficient)})
        return {
            "layer_frac": trial.suggest_float("layer_frac", *space.caa_layer),
            "n_layers": choose(trial, "n_layers", list(space.caa_n_layers)),
            **dose,
            "positions": choose(trial, "positions", list(space.positions)),
            "gate": choose(trial, "gate", list(space.gates)),
        }

    def build(self, stats: NeuronStats, value: str, params: dict[str, Any]) -> ResidualEdit:
        frac, count = float(params["layer_frac"]), params["n_layers"]
        if not 0.0 <= frac <= 1.0:
            raise ValueError(f"caa: layer_frac is the first layer as a fraction of depth, in "
                             f"[0, 1]; got {frac}")
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"caa: n_layers is a number of consecutive layers >= 1; got "
                             f"{count!r}")
        n = len(stats.layer_sizes)
        first = min(n - 1, max(0, round(float(params["layer_frac"]) * (n - 1))))
        layers = list(range(first, min(n, first + int(params["n_layers"]))))
        dose = params["strength"] if params.get("strength") is not None \
            else params["coefficient"]
        return caa_edit(stats, value, layers, float(dose), params.get("positions"),
                        gate_of(stats, params.get("gate", "none")))


class Prompt:
    """A system-style prefix asking the model to put the value first."""

    name = "prompt"
    defaults: dict[str, Any] = {"strength": DEFAULT_STRENGTH, "positions": "all"}

    def suggest(self, trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
        return {"strength": choose(trial, "strength", list(space.prompt_strengths)),
                "positions": "all"}

    def build(self, stats: NeuronStats, value: str, params: dict[str, Any]) -> PromptEdit:
        if params.get("gate", "none") != "none":
            raise ValueError("method prompt takes no gate: a prompt edit acts through tokens, "
                             "not hooks (gate applies to neva, random_neurons and caa)")
        return prompt_edit(value, int(params["strength"]))


METHODS.register("random_neurons", RandomNeurons())
METHODS.register("caa", CAA())
METHODS.register("prompt", Prompt())
