"""Steering methods a sweep can search: a registry, so baselines plug in beside NeVA.

A method has two halves that run in different processes:

- ``suggest(trial, space)`` on the driver: draws the trial's parameters from Optuna;
- ``build(stats, value, params)`` on the model's actors: turns them into an edit (an
  :class:`~neva_sweep.edits.EditKind`) for the shared, trial-batched evaluation.

Parameters are a plain JSON-able dict (they are stored as Optuna params and written to
trials.csv and best_edits.json); ``params["positions"]`` says where the edit applies.
``defaults`` holds every parameter of the method with its documented default, which
:func:`neva_sweep.make_edit` fills in for absent ones.

A renamed method keeps its former name for a release as an alias
(:meth:`~neva_sweep.registry.Registry.alias`: the same object, a deprecation warning on
first use; ``caa`` is ``diffmean``); a study keeps the name its config gave it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..edits.kind import EditKind
from ..edits.neuron import ONE_SIDED_RULES
from ..neurons.selection import SIGNED_SCORES
from ..neurons.stats import NeuronStats
from ..registry import Registry
from .strength import neuron_magnitude

if TYPE_CHECKING:  # optuna and the config schema load with the sweep, not with the API
    import optuna

    from ..config import SearchSpace


@dataclass(frozen=True)
class Layout:
    """What the sweep's calibration (neva_sweep/sweep/calibrate.py) reads of a method whose
    dose it bisects to the KL budget: where its strength range lies in ``search.space``,
    and the parameter that moves its budget dose most (its *layout*: the neuron count, the
    edited layer), over whose range the calibrated settings are spread."""

    strength: str  # search.space key of the strength range, dotted: "diffmean.strength"
    axis: str  # the layout parameter: "sparsity", "layer_frac"
    axis_range: str  # search.space key of its [lo, hi], dotted: "diffmean.layer_frac"
    log: bool  # settings evenly in log (a share of neurons) or linearly (a depth)


class Method(Protocol):
    name: str
    defaults: dict[str, Any]  # every parameter, with its default
    # a strength the sweep calibrates (search.space.scaled), or None: searched as it is
    layout: Layout | None

    def suggest(self, trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
        """The trial's parameters (``trial.suggest_*`` for searched ones)."""

    def build(self, stats: NeuronStats, value: str, params: dict[str, Any]) -> EditKind:
        """The edit toward ``value`` that ``params`` describe."""

    def reference(self, space: SearchSpace) -> dict[str, Any]:
        """With a ``layout``: the setting calibrated at, but the layout parameter (the
        first choice of each categorical parameter the method searches)."""

    # Optional: ``starts(space) -> list[dict]``, the settings a fresh study runs first in
    # place of its defaults (sweep/warm.py), for a method whose space is a few settings
    # (``prompt``: each wording once).


def choose(trial: optuna.Trial, name: str, choices: list) -> Any:
    """A categorical parameter when there are several choices, else the only one."""
    if len(choices) == 1:
        return choices[0]
    return trial.suggest_categorical(name, list(choices))


def polarities_for(rule: str, score: str, polarities: list[str]) -> list[str]:
    """The searched polarities a trial with ``rule`` and ``score`` can build: ``both``
    needs a signed score and a rule that can damp (not ``set``), so the space never
    samples an edit the method refuses.

    >>> polarities_for("set", "mean_diff", ["positive", "both"])
    ['positive']
    >>> polarities_for("add", "mean_diff", ["positive", "both"])
    ['positive', 'both']
    """
    return [p for p in polarities
            if p != "both" or (score in SIGNED_SCORES and rule not in ONE_SIDED_RULES)]


def window_label(window: list[int] | None) -> str:
    """Layer windows as categorical choices: ``"0-15"`` (Optuna choices must be scalars)."""
    return "all" if window is None else f"{window[0]}-{window[1]}"


def parse_window(label: str | list[int] | None) -> list[int] | None:
    """Inverse of :func:`window_label` (a ``[start, stop]`` list passes through).

    >>> parse_window("10-30"), parse_window("all"), parse_window([2, 4])
    ([10, 30], None, [2, 4])
    """
    if label in (None, "all"):
        return None
    if isinstance(label, list | tuple):
        return [int(label[0]), int(label[1])]
    start, stop = label.split("-")
    return [int(start), int(stop)]


def strength_or_magnitude(trial: optuna.Trial, space: SearchSpace) -> dict[str, float]:
    """The searched dose of a neuron edit: ``strength`` (log-uniform in
    ``space.strength``, neva_sweep/methods/strength.py) when ``space.scaled``, else the raw
    ``magnitude`` (uniform in ``space.magnitude``)."""
    if space.scaled:
        return {"strength": trial.suggest_float("strength", *space.strength, log=True)}
    return {"magnitude": trial.suggest_float("magnitude", *space.magnitude)}


def resolve_magnitude(stats: NeuronStats, neurons, params: dict[str, Any]) -> float:
    """The raw magnitude of a neuron edit: from ``params["strength"]`` when given (not
    None), else ``params["magnitude"]``."""
    if params.get("strength") is not None:
        return neuron_magnitude(neurons, params["rule"], float(params["strength"]), stats)
    return float(params["magnitude"])


METHODS: Registry[Method] = Registry("method")
