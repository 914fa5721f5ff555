"""neva_sweep: neuron-level value alignment (NeVA) as a research instrument.

The public API: ``load_model`` -> ``collect_stats`` -> ``select_neurons`` -> ``edit``, or
for any method ``make_edit`` -> ``apply`` (see README.md; :func:`neva_sweep.edit.edit` and
:func:`neva_sweep.edits.make_edit` carry runnable examples).
"""

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
