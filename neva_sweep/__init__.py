"""neva_sweep: neuron-level value alignment (NeVA) as a research instrument.

The public API: ``load_model`` -> ``collect_stats`` -> ``select_neurons`` -> ``edit``, or
for any method ``make_edit`` -> ``apply`` (see README.md; :func:`neva_sweep.edits.neuron.edit` and
:func:`neva_sweep.methods.make_edit` carry runnable examples).

The names below are imported on first use (PEP 562 ``__getattr__``), not by ``import
neva_sweep``: most of them need torch and transformers (seconds to import), and
``python -m neva_sweep --help`` or a mistyped task should answer at once.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the same names, eagerly, for type checkers and IDEs
    from .data import DataError, load_probes, load_records
    from .edits.apply import apply
    from .edits.kind import EditKind
    from .edits.neuron import (
        DEFAULT_MAGNITUDE,
        DEFAULT_RULE,
        RULES,
        EditSpec,
        NeuronEdit,
        edit,
        edit_rows,
    )
    from .edits.prompt import PromptEdit
    from .edits.residual import ResidualEdit, ResidualSpec
    from .methods.make import make_edit
    from .models import ModelHost, embedded_model_path, load_model
    from .neurons.selection import SCORES, NeuronMap, ValueNeurons, random_neurons, select_neurons
    from .neurons.stats import NeuronStats, StatsConfig, collect_stats
    from .values import GROUPS, VALUES, circular_distance

__version__ = "0.1.0"

# public name -> the submodule defining it
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["ResidualEdit", "ResidualSpec"], "edits.residual"),
    **dict.fromkeys(["DataError", "load_probes", "load_records"], "data"),
    **dict.fromkeys(["DEFAULT_MAGNITUDE", "DEFAULT_RULE", "RULES", "EditSpec", "NeuronEdit",
                     "edit", "edit_rows"], "edits.neuron"),
    **dict.fromkeys(["EditKind", "apply"], "edits"),
    "make_edit": "methods",
    **dict.fromkeys(["ModelHost", "embedded_model_path", "load_model"], "models"),
    "PromptEdit": "edits.prompt",
    **dict.fromkeys(["SCORES", "NeuronMap", "ValueNeurons", "random_neurons",
                     "select_neurons"], "neurons.selection"),
    **dict.fromkeys(["NeuronStats", "StatsConfig", "collect_stats"], "neurons.stats"),
    **dict.fromkeys(["GROUPS", "VALUES", "circular_distance"], "values"),
}


def __getattr__(name: str) -> Any:
    """A public name (imported from its submodule, then cached here) or a submodule."""
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    try:
        return import_module(f".{name}", __name__)  # nv.neurons, nv.sweep... without importing them
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":  # a missing dependency of an existing submodule
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = [
    "DEFAULT_MAGNITUDE",
    "DEFAULT_RULE",
    "GROUPS",
    "RULES",
    "SCORES",
    "VALUES",
    "DataError",
    "EditKind",
    "EditSpec",
    "ModelHost",
    "NeuronEdit",
    "NeuronMap",
    "NeuronStats",
    "PromptEdit",
    "ResidualEdit",
    "ResidualSpec",
    "StatsConfig",
    "ValueNeurons",
    "apply",
    "circular_distance",
    "collect_stats",
    "edit",
    "edit_rows",
    "embedded_model_path",
    "load_model",
    "load_probes",
    "load_records",
    "make_edit",
    "random_neurons",
    "select_neurons",
]
