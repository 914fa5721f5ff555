"""A run directory's identity: what a sweep in it measured, so that another sweep never
resumes it by mistake.

A sweep writes ``sweep_identity.json`` into its run directory: the resolved settings that
decide *what* its trials measure (:data:`IDENTITY_KEYS`: the model, the values and
methods, the judge, capability and data settings, the search space, objectives and
budgets). Running again in the same directory compares them first. The same setup
resumes (trials are topped up to ``search.n_trials``; settings of *how* it runs, such as
``search.n_trials``, the cluster, the logger or the seed, may change). Another setup is
refused before any trial starts, with the differing keys named: its trials would land in
the same Optuna studies and overwrite trials.csv and best_edits.json. ``+resume=force``
resumes anyway and records the new setup.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..config import ConfigError, current_space
from ..files import write_text_atomic

log = logging.getLogger(__name__)

IDENTITY_FILE = "sweep_identity.json"
IDENTITY_KEYS = (
    "model.name", "model.dtype", "models", "sweep.values", "sweep.methods", "sweep.judge",
    "sweep.capability", "judge", "capability", "data", "stats", "search.study_prefix",
    "search.space", "search.objectives", "search.max_kl", "search.max_suppression",
    "search.max_inflation", "search.max_accuracy_drop", "search.max_kl_value", "search.calibrate",
    "search.calibration", "search.pruner", "search.fidelity",
)
FORCE = "force"  # +resume=force
# search.calibration.anchors, .points, .relative and .gate_points: how the search proceeds,
# not what it measures
RUN_ONLY_CALIBRATION_KEYS = ("anchors", "points", "relative", "gate_points")


def identity(cfg: DictConfig) -> dict[str, Any]:
    """The resolved values of :data:`IDENTITY_KEYS` in ``cfg`` (absent keys are None), the
    search space in the current layout (:func:`current_layout`)."""
    out = {}
    for key in IDENTITY_KEYS:
        node = OmegaConf.select(cfg, key, default=None)
        out[key] = (OmegaConf.to_container(node, resolve=True)
                    if OmegaConf.is_config(node) else node)
    if isinstance(out.get("search.calibration"), dict):
        # where a fresh study is calibrated and how its strength is drawn steer the search
        # (its box and first trials), as the sampler does; a resumed study keeps its stored
        # calibration
        for k in RUN_ONLY_CALIBRATION_KEYS:
            out["search.calibration"].pop(k, None)
    return current_layout(out)


def current_layout(ident: dict[str, Any]) -> dict[str, Any]:
    """``ident`` with its ``search.space`` as the current schema lays it out: a run
    directory recorded with the former flat keys (``caa_layer``, ...) resumes with the
    same space given under the new ones (:func:`neva_sweep.config.current_space`)."""
    space = ident.get("search.space")
    if not isinstance(space, dict):
        return ident
    return {**ident, "search.space": current_space(space)}


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``"key: old -> new"`` for every key whose value differs.

    >>> differences({"model.name": "a", "models": None}, {"model.name": "b", "models": None})
    ["model.name: 'a' -> 'b'"]
    """
    keys = sorted(set(old) | set(new), key=lambda k: (k not in IDENTITY_KEYS, k))
    return [f"{k}: {_short(old.get(k))} -> {_short(new.get(k))}" for k in keys
            if old.get(k) != new.get(k)]


def _short(x: Any, limit: int = 80) -> str:
    text = repr(x)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_identity(cfg: DictConfig, run_dir: Path) -> None:
    """Refuse to resume ``run_dir`` with another setup (see the module docstring); record
    the setup of a new run directory (or of a forced resume)."""
    path = Path(run_dir) / IDENTITY_FILE
    new = identity(cfg)
    resume = cfg.get("resume")
    if resume not in (None, FORCE):
        raise ConfigError(f"resume: unknown value {resume!r}; valid choices: {FORCE} "
                          "(+resume=force)")
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"{path}: unreadable ({e}); delete it to adopt this run "
                              "directory's setup, or use another hydra.run.dir") from None
        diff = differences(current_layout(old), new)
        if not diff:
            return
        if resume != FORCE:
            raise ConfigError(
                f"hydra.run.dir: {run_dir} holds a sweep with another setup "
                f"({len(diff)} key(s) differ: {'; '.join(diff)}); use another "
                "hydra.run.dir, or add +resume=force to resume this one with the new setup")
        log.warning("+resume=force: resuming %s with another setup (%s)", run_dir,
                    "; ".join(diff))
    write_text_atomic(path, json.dumps(new, indent=2, sort_keys=True) + "\n")
