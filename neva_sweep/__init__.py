"""neva_sweep: neuron-level value alignment (NeVA) as a research instrument.

>>> import neva_sweep as nv
>>> host = nv.load_model("tiny-llama")
>>> stats = nv.collect_stats(host, nv.load_probes(), progress=False)
>>> nmap = nv.select_neurons(stats, value="benevolence", sparsity=0.05)
>>> with nv.edit(host, nmap, magnitude=2.0, rule="add"):
...     out = host.model(**host.tokenize(["I help my neighbour."]))
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
