"""neva_sweep: neuron-level value alignment (NeVA) as a research instrument.

The public API: ``load_model`` -> ``collect_stats`` -> ``select_neurons`` -> ``edit``
(see README.md; :func:`neva_sweep.edit.edit` carries the runnable example).
"""

from .data import DataError, load_probes, load_records
from .edit import DEFAULT_MAGNITUDE, DEFAULT_RULE, EditSpec, edit, edit_rows
from .models import ModelHost, embedded_model_path, load_model
from .select import SCORES, NeuronMap, ValueNeurons, random_neurons, select_neurons
from .stats import NeuronStats, StatsConfig, collect_stats
from .values import GROUPS, VALUES, circular_distance

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MAGNITUDE",
    "DEFAULT_RULE",
    "GROUPS",
    "SCORES",
    "VALUES",
    "DataError",
    "EditSpec",
    "ModelHost",
    "NeuronMap",
    "NeuronStats",
    "StatsConfig",
    "ValueNeurons",
    "circular_distance",
    "collect_stats",
    "edit",
    "edit_rows",
    "embedded_model_path",
    "load_model",
    "load_probes",
    "load_records",
    "random_neurons",
    "select_neurons",
]
