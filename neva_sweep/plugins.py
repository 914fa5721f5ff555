"""Plugins without forking: the user's modules, imported wherever work runs.

``plugins=[my_pkg.my_module]`` names importable modules that register their own plug-ins
when imported, through the same registries neva_sweep's own use (``METHODS``, ``RULES``,
``SCORES``, judges, model architectures...)::

    # my_pkg/my_module.py
    from neva_sweep.methods.base import METHODS, NeVA

    class Louder(NeVA):
        name = "louder"
        ...

    METHODS.register("louder", Louder())

The driver imports them before it checks the config (so ``sweep.methods=[louder]`` is
valid), and every Ray actor imports them before it loads its model: their names travel in
the actors' environment (:data:`ENV`), and the modules must be importable there too (an
installed package, or ``PYTHONPATH`` that the cluster's workers share).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence

ENV = "NEVA_SWEEP_PLUGINS"  # comma-separated module names, for the actors


def load_plugins(names: Sequence[str]) -> list[str]:
    """Import every module of ``names`` (once; a module already imported is not re-run).

    A module that cannot be imported raises a ``ConfigError`` naming it and the cause.
    """
    from .config import ConfigError

    loaded = []
    for name in names:
        name = str(name).strip()
        if not name:
            continue
        try:
            importlib.import_module(name)
        except Exception as e:
            raise ConfigError(f"plugins: cannot import {name!r} ({type(e).__name__}: {e}); a "
                              "plugin is an importable module (installed, or on PYTHONPATH "
                              "here and on every worker)") from e
        loaded.append(name)
    return loaded


def plugins_env(names: Sequence[str]) -> dict[str, str]:
    """The environment that makes an actor import ``names`` (:func:`load_env_plugins`)."""
    return {ENV: ",".join(str(n) for n in names)} if names else {}


def load_env_plugins() -> list[str]:
    """Import the plugins named in ``$NEVA_SWEEP_PLUGINS`` (on an actor, at start)."""
    return load_plugins(os.environ.get(ENV, "").split(","))
