"""Steering methods a sweep can search: a registry, so baselines plug in beside NeVA.

A method has two halves that run in different processes:

- ``suggest(trial, space)`` on the driver: draws the trial's parameters from Optuna;
- ``build(stats, value, params)`` on the model's actors: turns them into an
  :class:`~neva_sweep.edit.EditSpec` for the shared, trial-batched evaluation.

Parameters are a plain JSON-able dict (they are stored as Optuna params and written to
trials.csv and best_edits.json); ``params["positions"]`` says where the edit applies.
"""

from __future__ import annotations

from typing import Any, Protocol

import optuna

from ..config import SearchSpace
from ..edit import EditSpec
from ..registry import Registry
from ..select import select_neurons
from ..stats import NeuronStats


class Method(Protocol):
    name: str

    def suggest(self, trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
        """The trial's parameters (``trial.suggest_*`` for searched ones)."""

    def build(self, stats: NeuronStats, value: str, params: dict[str, Any]) -> EditSpec:
        """The edit toward ``value`` that ``params`` describe."""


def choose(trial: optuna.Trial, name: str, choices: list) -> Any:
    """A categorical parameter when there are several choices, else the only one."""
    if len(choices) == 1:
        return choices[0]
    return trial.suggest_categorical(name, list(choices))


def window_label(window: list[int] | None) -> str:
    """Layer windows as categorical choices: ``"0-15"`` (Optuna choices must be scalars)."""
    return "all" if window is None else f"{window[0]}-{window[1]}"


def parse_window(label: str | None) -> list[int] | None:
    """Inverse of :func:`window_label`.

    >>> parse_window("10-30"), parse_window("all")
    ([10, 30], None)
    """
    if label in (None, "all"):
        return None
    start, stop = label.split("-")
    return [int(start), int(stop)]


class NeVA:
    """Top-k value neurons by a specificity score, edited with one rule (DESIGN.md 3)."""

    name = "neva"

    def suggest(self, trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
        windows = [window_label(w) for w in (space.layer_windows or [None])]
        return {
            "sparsity": trial.suggest_float("sparsity", *space.sparsity, log=True),
            "magnitude": trial.suggest_float("magnitude", *space.magnitude),
            "rule": choose(trial, "rule", list(space.rules)),
            "score": choose(trial, "score", list(space.scores)),
            "positions": choose(trial, "positions", list(space.positions)),
            "layer_window": choose(trial, "layer_window", windows),
        }

    def build(self, stats: NeuronStats, value: str, params: dict[str, Any]) -> EditSpec:
        nmap = select_neurons(stats, value, sparsity=params["sparsity"], score=params["score"],
                              layer_window=parse_window(params["layer_window"]))
        return EditSpec(nmap[value], params["rule"], float(params["magnitude"]))


METHODS: Registry[Method] = Registry("method")
METHODS.register("neva", NeVA())
