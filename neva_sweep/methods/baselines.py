"""Baseline steering methods, searched, evaluated and logged exactly like NeVA.

- ``random_neurons``: as many neurons as NeVA would select at the trial's sparsity, drawn
  uniformly at random, with NeVA's edit rule: the control that tells whether *selection*
  matters. A study draws one random order of the neurons (seed 0, recorded in the
  trial's params) and takes its first k, as NeVA takes its k best: sparsities share
  neurons, and the dose calibrated at a sparsity is the dose of the trial's own draw.
- ``diffmean``: a residual-stream steering vector, the difference of mean residuals of the
  value's probes and the rest over all probe tokens (ActAdd-style; neva_sweep/edits/residual.py);
  searched over the layer (as a fraction of depth, so one space fits every model), the
  number of consecutive layers and the coefficient. ``caa`` is its former name, kept as a
  deprecated alias for one release (same object; studies keep the configured name).
- ``caa_pairs``: contrastive activation addition as published (Rimsky et al. 2024): the
  mean residual difference of stance pairs at the answer letter, scaled to the residual
  norm, added after the prompt; searched over the same layers and the strength.
- ``prompt``: a prefix asking the model to prioritise the value, at one of three
  strengths (the no-internals baseline; neva_sweep/edits/prompt.py).

A method with parameters of its own searches them in ``search.space.<method>.<parameter>``
(the parameter's own name: ``search.space.diffmean.layer_frac``); ``random_neurons``
searches NeVA's keys at the top of ``search.space``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ..edits.neuron import NeuronEdit
from ..edits.prompt import DEFAULT_STRENGTH, PromptEdit, prompt_edit
from ..edits.residual import ResidualEdit, caa_edit, caa_pairs_edit, depth_layers
from ..neurons.gate import gate_of
from ..neurons.selection import random_neurons
from ..neurons.stats import NeuronStats
from .base import METHODS, Layout, choose, parse_window, resolve_magnitude
from .neva import NeVA

if TYPE_CHECKING:
    import optuna

    from ..config import ResidualSpace, SearchSpace


class RandomNeurons(NeVA):
    """NeVA's count, rule and magnitude on uniformly drawn neurons."""

    name = "random_neurons"
    defaults: dict[str, Any] = {**{k: v for k, v in NeVA.defaults.items()
                                   if k not in ("score", "polarity")}, "seed": 0}

    def reference(self, space: SearchSpace) -> dict[str, Any]:
        ref = super().reference(space)
        del ref["score"], ref["polarity"]
        return ref

    def suggest(self, trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
        params = super().suggest(trial, space)
        params.pop("score")  # no selection score: the neurons are random
        params.pop("polarity")  # and no sign: random neurons have no anti-specific side
        # One draw per study, the one its calibration measured (calibration jobs use the
        # defaults' seed). A draw per trial (the trial number, before) put the calibrated
        # starts off their budget: KL 0.05-0.14 at 0.1 and up to 6.9 at sparsity 0.045
        # (docs/results.md 0c, controls). Recorded, so the edit can be rebuilt.
        params["seed"] = int(self.defaults["seed"])
        return params

    def build(self, stats: NeuronStats, value: str, params: dict[str, Any]) -> NeuronEdit:
        k = math.ceil(float(params["sparsity"]) * stats.n_neurons)
        neurons = random_neurons(stats, value, k, seed=int(params["seed"]),
                                 layer_window=parse_window(params["layer_window"]))
        return NeuronEdit(neurons, params["rule"], resolve_magnitude(stats, neurons, params),
                          params.get("positions"),
                          gate=gate_of(stats, params.get("gate", "none"), value))


def layer_params(trial: optuna.Trial, own: ResidualSpace) -> dict[str, Any]:
    """The searched layers of a residual method, from its own space (``own``:
    ``search.space.<method>``): ``layer_frac`` (uniform in ``own.layer_frac``) and
    ``n_layers`` (from ``own.n_layers``)."""
    return {"layer_frac": trial.suggest_float("layer_frac", *own.layer_frac),
            "n_layers": choose(trial, "n_layers", list(own.n_layers))}


def chosen_layers(stats: NeuronStats, params: dict[str, Any]) -> list[int]:
    """The blocks a residual method's ``layer_frac`` and ``n_layers`` name
    (:func:`neva_sweep.edits.residual.depth_layers`)."""
    return depth_layers(len(stats.layer_sizes), float(params["layer_frac"]), params["n_layers"])


class DiffMean:
    """Residual steering vectors from the difference of mean residuals over *all* probe
    tokens, value vs the rest (ActAdd / mean-difference style; neva_sweep/edits/residual.py). Not
    published CAA, which reads contrastive pairs at the answer token: that is ``caa_pairs``.
    Registered as ``diffmean`` and, for one release, under its former name ``caa``.

    The dose is ``strength`` (searched log-uniformly in ``search.space.diffmean.strength``
    and calibrated when ``search.space.scaled``; the coefficient itself, see
    neva_sweep/methods/strength.py) or ``coefficient`` (uniform in
    ``search.space.diffmean.coefficient``); a given strength wins. Its layers are searched
    in ``search.space.diffmean.layer_frac`` and ``.n_layers``. Defaults: one layer at the
    middle of the depth, coefficient 2 (a starting point, not a tuned value).
    """

    name = "diffmean"
    defaults: dict[str, Any] = {"layer_frac": 0.5, "n_layers": 1, "coefficient": 2.0,
                                "strength": None, "positions": "all", "gate": "none"}
    # the edited layer moves the budget dose up to 7x on SmolLM2 (docs/results.md 0d)
    layout = Layout(strength="diffmean.strength", axis="layer_frac",
                    axis_range="diffmean.layer_frac", log=False)

    def reference(self, space: SearchSpace) -> dict[str, Any]:
        return {"n_layers": space.diffmean.n_layers[0], "positions": space.positions[0]}

    def suggest(self, trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
        own = space.diffmean
        dose = ({"strength": trial.suggest_float("strength", *own.strength, log=True)}
                if space.scaled else
                {"coefficient": trial.suggest_float("coefficient", *own.coefficient)})
        return {
            **layer_params(trial, own),
            **dose,
            "positions": choose(trial, "positions", list(space.positions)),
            "gate": choose(trial, "gate", list(space.gates)),
        }

    def build(self, stats: NeuronStats, value: str, params: dict[str, Any]) -> ResidualEdit:
        dose = params["strength"] if params.get("strength") is not None \
            else params["coefficient"]
        return caa_edit(stats, value, chosen_layers(stats, params), float(dose),
                        params.get("positions"),
                        gate_of(stats, params.get("gate", "none"), value))


class CaaPairs:
    """Contrastive activation addition as published (Rimsky et al. 2024): the mean
    residual difference of stance pairs (a reply acting on the value vs one rejecting it,
    read at the A/B answer letter), rescaled to the typical residual norm and added after
    the prompt (neva_sweep/edits/residual.py :func:`~neva_sweep.edits.residual.pair_vectors`).

    ``strength`` is the fraction of the residual norm added on each chosen layer; it is
    always searched log-uniformly in ``search.space.caa_pairs.strength`` (there is no raw
    coefficient: the vector's own norm carries no meaning), recentred by the calibration
    when ``search.space.scaled``; its layers in ``search.space.caa_pairs.layer_frac`` and
    ``.n_layers``. ``positions`` is ``response`` (not searched: published CAA
    adds after the instruction); ``nv.make_edit`` may still set ``all``. Needs statistics
    with stance pairs (``stats.pair_resid_mean``).
    """

    name = "caa_pairs"
    # strength 0.2: KL 0.06-0.10 on SmolLM2's neutral text at every layer measured, at the
    # default budget (search.max_kl 0.1); CaaPairsSpace (config.py) gives the measurement
    defaults: dict[str, Any] = {"layer_frac": 0.5, "n_layers": 1, "strength": 0.2,
                                "positions": "response", "gate": "none"}
    layout = Layout(strength="caa_pairs.strength", axis="layer_frac",
                    axis_range="caa_pairs.layer_frac", log=False)

    def reference(self, space: SearchSpace) -> dict[str, Any]:
        return {"n_layers": space.caa_pairs.n_layers[0]}  # positions: response, its own

    def suggest(self, trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
        own = space.caa_pairs
        return {
            **layer_params(trial, own),
            "strength": trial.suggest_float("strength", *own.strength, log=True),
            "positions": "response",
            "gate": choose(trial, "gate", list(space.gates)),
        }

    def build(self, stats: NeuronStats, value: str, params: dict[str, Any]) -> ResidualEdit:
        return caa_pairs_edit(stats, value, chosen_layers(stats, params),
                              float(params["strength"]), params.get("positions"),
                              gate_of(stats, params.get("gate", "none"), value))


class Prompt:
    """A system-style prefix asking the model to put the value first, at a wording
    ``strength`` searched among ``search.space.prompt.strength``."""

    name = "prompt"
    defaults: dict[str, Any] = {"strength": DEFAULT_STRENGTH, "positions": "all"}
    layout = None  # a wording, not a dose: nothing to calibrate

    def suggest(self, trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
        return {"strength": choose(trial, "strength", list(space.prompt.strength)),
                "positions": "all"}

    def starts(self, space: SearchSpace) -> list[dict[str, Any]]:
        """A study's first trials (sweep/warm.py): every searched wording once, strongest
        first, since three settings are cheaper to run than to sample."""
        return [{"strength": s, "positions": "all"}
                for s in sorted(space.prompt.strength, reverse=True)]

    def build(self, stats: NeuronStats, value: str, params: dict[str, Any]) -> PromptEdit:
        if params.get("gate", "none") != "none":
            raise ValueError("method prompt takes no gate: a prompt edit acts through tokens, "
                             "not hooks (gate applies to neva, random_neurons, diffmean and "
                             "caa_pairs)")
        return prompt_edit(value, int(params["strength"]))


METHODS.register("random_neurons", RandomNeurons())
METHODS.register("diffmean", DiffMean())
METHODS.register("caa_pairs", CaaPairs())
METHODS.alias("caa", "diffmean", "it is now called diffmean (the difference of mean residuals "
              "over all probe tokens, not published CAA; published CAA is caa_pairs): set "
              "sweep.methods / method=diffmean")
METHODS.register("prompt", Prompt())
