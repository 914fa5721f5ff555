"""neva_sweep: neuron-level value alignment (NeVA) as a research instrument.

The public API: ``load_model`` -> ``collect_stats`` -> ``select_neurons`` -> ``edit``, or
for any method ``make_edit`` -> ``apply`` (see README.md; :func:`neva_sweep.edit.edit` and
:func:`neva_sweep.edits.make_edit` carry runnable examples).

The names below are imported on first use (PEP 562 ``__getattr__``), not by ``import
neva_sweep``: most of them need torch and transformers (seconds to import), and
``python -m neva_sweep --help`` or a mistyped task should answer at once.
"""

from __future__ import annotations

import sys
from importlib import import_module
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the same names, eagerly, for type checkers and IDEs
    from .caa import ResidualEdit, ResidualSpec
    from .data import DataError, load_probes, load_records
    from .edit import DEFAULT_MAGNITUDE, DEFAULT_RULE, RULES, EditSpec, NeuronEdit, edit, edit_rows
    from .edits import EditKind, apply, make_edit
    from .models import ModelHost, embedded_model_path, load_model
    from .prompting import PromptEdit
    from .select import SCORES, NeuronMap, ValueNeurons, random_neurons, select_neurons
    from .stats import NeuronStats, StatsConfig, collect_stats
    from .values import GROUPS, VALUES, circular_distance

__version__ = "0.1.0"

# public name -> the submodule defining it
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["ResidualEdit", "ResidualSpec"], "caa"),
    **dict.fromkeys(["DataError", "load_probes", "load_records"], "data"),
    **dict.fromkeys(["DEFAULT_MAGNITUDE", "DEFAULT_RULE", "RULES", "EditSpec", "NeuronEdit",
                     "edit", "edit_rows"], "edit"),
    **dict.fromkeys(["EditKind", "apply", "make_edit"], "edits"),
    **dict.fromkeys(["ModelHost", "embedded_model_path", "load_model"], "models"),
    "PromptEdit": "prompting",
    **dict.fromkeys(["SCORES", "NeuronMap", "ValueNeurons", "random_neurons",
                     "select_neurons"], "select"),
    **dict.fromkeys(["NeuronStats", "StatsConfig", "collect_stats"], "stats"),
    **dict.fromkeys(["GROUPS", "VALUES", "circular_distance"], "values"),
}


def __getattr__(name: str) -> Any:
    """A public name (imported from its submodule, then cached here) or a submodule."""
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    try:
        return import_module(f".{name}", __name__)  # nv.stats.merge without importing it
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":  # a missing dependency of an existing submodule
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


class _Package(ModuleType):
    """``nv.edit`` is the function :func:`neva_sweep.edit.edit`, as with an eager package.

    Importing a submodule sets the package attribute of its name to the module, so a later
    ``import neva_sweep.edit`` (anywhere) would turn ``nv.edit`` into the module; the
    function is kept instead. ``from neva_sweep.edit import ...`` is unaffected.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if (isinstance(value, ModuleType) and _EXPORTS.get(name) == name
                and value.__name__ == f"{__name__}.{name}"):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

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
