"""Steering methods: what a sweep searches and how its parameters become an edit.

:data:`METHODS` holds one :class:`Method` per name (base.py): NeVA (neva.py) and its
controls (baselines.py: random_neurons, diffmean, caa_pairs, prompt), each registering
itself on import (every module of this package is imported, so a new method is a new
module); :func:`make_edit` builds any of them from its parameters. The dose of
a neuron edit (strength.py) and the dose-matched nulls (nulls.py) live here too.
"""

from ..registry import import_package
from .base import METHODS, Method
from .make import make_edit
from .neva import NeVA

# neva registered above, first; then every other module registers its methods
# (baselines, yours), in name order
import_package(__name__, __path__)

__all__ = ["METHODS", "Method", "NeVA", "make_edit"]
