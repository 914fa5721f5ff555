"""Model hosting: loading, architecture table, tokenisation."""

from .arch import ARCHITECTURES, UnsupportedArchitecture, neuron_sites
from .host import ModelHost, host_from_model, load_model
from .registry import MODELS, TINY_CONFIGS, embedded_model_path

__all__ = [
    "ARCHITECTURES",
    "MODELS",
    "TINY_CONFIGS",
    "ModelHost",
    "UnsupportedArchitecture",
    "embedded_model_path",
    "host_from_model",
    "load_model",
    "neuron_sites",
]
