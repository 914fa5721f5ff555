"""The user's own configs: a ``conf/`` directory searched before the packaged one.

A directory laid out like ``neva_sweep/conf/`` (``model/``, ``experiment/``, ``cluster/``,
``search/``, ``judge/``, ``logger/``) holds the user's configs: new names are added to
the groups (``conf/model/my_model.yaml`` -> ``model=my_model``) and a file with a packaged
name replaces the packaged one. It is found, in this order:

1. ``$NEVA_SWEEP_CONF`` when set (an error when it names no directory);
2. ``./conf`` in the working directory, when it exists.

Hydra reads it through a search-path plugin (``hydra_plugins/neva_sweep_conf``) that puts
it *first* on the search path of neva_sweep's configs (and of no other Hydra app), so
``python -m neva_sweep``, ``neva-sweep`` and :func:`neva_sweep.config.compose_config` all
see the same configs. This module imports nothing heavy: the plugin loads it in every
Hydra start.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "NEVA_SWEEP_CONF"
PACKAGED = Path(__file__).resolve().parent / "conf"


def user_conf_dir() -> Path | None:
    """The user's config directory (see the module docstring), or None."""
    env = os.environ.get(ENV)
    if env:
        path = Path(env).expanduser().resolve()
        if not path.is_dir():
            from .config import ConfigError

            raise ConfigError(f"{ENV}={env}: no such directory; point it at a directory of "
                              "config groups (model/, experiment/, ...) or unset it")
        return path
    path = Path("conf").resolve()
    if path.is_dir() and path != PACKAGED:
        return path
    return None
