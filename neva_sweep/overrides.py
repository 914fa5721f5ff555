"""Command-line overrides checked before Hydra runs: one line naming the key, exit 2.

Hydra reports its own composition errors (a mistyped key, an unknown group option, a value
of the wrong type) in 5-20 lines with its search path, exits 1, and for a mistyped key
suggests ``+key=...``, which would *add* the typo to the config. :func:`check_overrides`
composes the config as Hydra will and turns such an error into a :class:`ConfigError`
whose message starts with the key and says what is valid ("did you mean ...").
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .config import ConfigError, compose_config


def dotted_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Every key of ``cfg`` as a dotted path (``search.space.sparsity``), nested ones too."""
    out = []
    for k in cfg:
        path = f"{prefix}{k}"
        out.append(path)
        node = OmegaConf.select(cfg, str(k), throw_on_missing=False)
        if isinstance(node, DictConfig):
            out += dotted_keys(node, f"{path}.")
    return out


def free_dicts(cfg: DictConfig, prefix: str = "") -> set[str]:
    """The dotted keys of ``cfg`` whose nodes take keys of the user's choosing (typed
    ``dict``, e.g. ``sweep.capability``, ``search.test_capability``), not a schema's."""
    out = set()
    for k in cfg:
        node = OmegaConf.select(cfg, str(k), throw_on_missing=False)
        if isinstance(node, DictConfig):
            path = f"{prefix}{k}"
            if OmegaConf.get_type(node) is dict:
                out.add(path)
            out |= free_dicts(node, f"{path}.")
    return out


def _override_key(text: str) -> str | None:
    m = re.search(r"Could not override '([^']+)'", text) or re.search(
        r"Error merging override ([^=\s]+)=", text) or re.search(r"full_key: (\S+)", text)
    return m[1] if m else None


def explain(e: Exception, keys: list[str], free: set[str] = frozenset()) -> str:
    """One line for a Hydra composition error ``e``; ``keys``: the valid dotted keys;
    ``free``: those that take keys of the user's choosing (:func:`free_dicts`), which are
    added with a leading ``+``."""
    text = "\n".join(str(x) for x in (e, e.__cause__) if x is not None)
    missing = re.search(r"Could not find '([^'/]+)/([^']+)'", text)
    if missing:  # an unknown option of a config group (model=..., judge=...)
        group, option = missing[1], missing[2]
        choices = re.findall(r"^\t(\S+)$", text.split("Available options", 1)[-1], re.M)
        own = f" (add your own as ./conf/{group}/{option}.yaml or under $NEVA_SWEEP_CONF)"
        return (f"{group}: unknown option {option!r}; valid choices: {', '.join(choices)}{own}"
                if choices else f"{group}: unknown option {option!r}{own}")
    key = _override_key(text)
    append = re.search(r"To append to your config use (.+)$", text, re.M)
    if key and append and (key in free or key.rpartition(".")[0] in free):
        where = "a dict" if key in free else f"in the dict {key.rpartition('.')[0]}"
        return (f"{key}: {where}, whose keys are added with a leading +: "
                f"{append[1].strip()}")
    if key and ("not in" in text or "Could not override" in text):
        close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        return f"{key}: no such key{hint} (python -m neva_sweep --cfg job lists every key)"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()
             and not ln.strip().startswith(("full_key", "object_type", "reference_type",
                                            "Error merging override"))]
    detail = lines[0] if lines else type(e).__name__
    return f"{key}: {detail}" if key else detail


def check_creatable(key: str, path: Path) -> None:
    """``path`` exists as a writable directory or can be created: its nearest existing
    ancestor is a writable directory (nothing is created here; Hydra creates the run
    directory, and without this check fails with a bare OSError)."""
    probe = path.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{key}: {probe} is a file, so {path} cannot be a directory; choose "
                          "another run directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}: cannot write to {probe} (permission denied), so {path} "
                          "cannot be created; choose a writable run directory")


def check_overrides(args: list[str]) -> None:
    """Compose the config with ``args`` (the command line's overrides); a composition error
    raises a one-line :class:`ConfigError`, as does a run directory that cannot be created
    (``hydra.run.dir``, else ``runs/`` here). Hydra's own flags (``--help``, ``-m``,
    ``--cfg``...) are left to Hydra: with any of them nothing is checked here."""
    if any(a.startswith("-") for a in args):
        return
    run_dir = next((a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir=")), None)
    check_creatable("hydra.run.dir", Path(run_dir) if run_dir else Path("runs"))
    try:
        compose_config(*args)
    except Exception as e:
        if type(e).__module__.split(".")[0] not in ("hydra", "omegaconf"):
            raise
        base = compose_config()
        raise ConfigError(explain(e, dotted_keys(base), free_dicts(base))) from None
