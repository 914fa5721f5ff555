"""Steering methods: what a sweep searches and how its parameters become an edit.

:data:`METHODS` holds one :class:`Method` per name (base.py): NeVA (neva.py) and its
controls (baselines.py: random_neurons, diffmean, caa_pairs, prompt), each registering
itself on import; :func:`make_edit` builds any of them from its parameters. The dose of
a neuron edit (methods/strength.py) and the dose-matched nulls (methods/nulls.py) live here too.
"""

from . import baselines, neva  # noqa: F401  (register the methods)
from .base import METHODS, Method
from .make import make_edit
from .neva import NeVA

__all__ = ["METHODS", "Method", "NeVA", "make_edit"]
