"""NeVA: the top-k value neurons by a specificity score, edited with one rule."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..config import EditConfig
from ..edits.neuron import NeuronEdit
from ..neurons.gate import gate_of
from ..neurons.selection import select_neurons
from ..neurons.stats import NeuronStats
from .base import (
    METHODS,
    Layout,
    choose,
    parse_window,
    polarities_for,
    resolve_magnitude,
    strength_or_magnitude,
    window_label,
)

if TYPE_CHECKING:  # optuna and the config schema load with the sweep, not with the API
    import optuna

    from ..config import SearchSpace


class NeVA:
    """Top-k value neurons by a specificity score, edited with one rule.

    The dose is ``strength`` (scaled, neva_sweep/methods/strength.py) or ``magnitude`` (raw); a
    given strength wins over the magnitude. The defaults are ``edit.*``'s
    (:class:`~neva_sweep.config.EditConfig`, declared once there), so ``task=steer`` and
    ``nv.make_edit(stats, value)`` build the same edit.
    """

    name = "neva"
    defaults: dict[str, Any] = {
        "sparsity": EditConfig.sparsity, "magnitude": EditConfig.magnitude,
        "strength": None,  # None: the magnitude is the dose
        "rule": EditConfig.rule, "score": EditConfig.score, "polarity": EditConfig.polarity,
        "positions": EditConfig.positions,
        "layer_window": window_label(EditConfig.layer_window), "gate": EditConfig.gate,
    }

    # the neuron count moves the budget dose up to 2x (docs/results.md 0d): calibrated
    # at settings evenly in log sparsity
    layout = Layout(strength="strength", axis="sparsity", axis_range="sparsity", log=True)

    def reference(self, space: SearchSpace) -> dict[str, Any]:
        return {"rule": space.rules[0], "score": space.scores[0],
                "polarity": space.polarities[0], "positions": space.positions[0],
                "layer_window": window_label((space.layer_windows or [None])[0])}

    def suggest(self, trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
        windows = [window_label(w) for w in (space.layer_windows or [None])]
        sparsity = trial.suggest_float("sparsity", *space.sparsity, log=True)
        dose = strength_or_magnitude(trial, space)
        rule = choose(trial, "rule", list(space.rules))
        score = choose(trial, "score", list(space.scores))
        return {
            "sparsity": sparsity,
            **dose,
            "rule": rule,
            "score": score,
            # searched only where both are buildable: a conditional parameter
            "polarity": choose(trial, "polarity",
                               polarities_for(rule, score, list(space.polarities))),
            "positions": choose(trial, "positions", list(space.positions)),
            "layer_window": choose(trial, "layer_window", windows),
            "gate": choose(trial, "gate", list(space.gates)),
        }

    def build(self, stats: NeuronStats, value: str, params: dict[str, Any]) -> NeuronEdit:
        nmap = select_neurons(stats, value, sparsity=params["sparsity"], score=params["score"],
                              layer_window=parse_window(params["layer_window"]),
                              polarity=params.get("polarity", "positive"))
        neurons = nmap[value]
        return NeuronEdit(neurons, params["rule"], resolve_magnitude(stats, neurons, params),
                          params.get("positions"),
                          gate=gate_of(stats, params.get("gate", "none"), value))


METHODS.register("neva", NeVA())
