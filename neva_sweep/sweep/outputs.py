"""The sweep's plain files, always rewritten from the Optuna storage (so a resumed run
regenerates them from every trial of its studies):

- ``trials.csv``: one row per trial (model, value, method, study, trial, state, the
  method's parameters, every metric of the schema in :mod:`neva_sweep.evaluation.metrics`,
  csr_<value> and csr_base_<value>, feasibility, duration, replica, error).
- ``pareto.json``: per (model, value, method) the Pareto-optimal COMPLETE trials among
  those meeting the constraints (``search.max_<metric>`` budgets: ``max_accuracy_drop``,
  ``max_kl``, ...), for the objectives ``search.objectives``.
- ``best_edits.json``: per (model, value, method) the chosen edit (see below), with the
  parameters ``task=steer``/``task=evaluate`` need (``best_edits=PATH``), its metrics,
  and its selected neurons saved under ``best_edits/<model>/<value>-<method>.safetensors``.
  Each edit records what it was built from, so that loading it reproduces it or says why
  not: ``stats_hash`` (:func:`neva_sweep.neurons.stats.inputs_hash` of the probe data and the
  statistics config) and ``neurons_sha256`` (of its neurons file, when it has one).

Feasibility, the Pareto front, the best-edit rule and the rows are those of
:mod:`neva_sweep.sweep.front` (the report applies the same). A study without a feasible
COMPLETE trial has no best edit and is listed under ``missing`` with the reason.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState

from ..config import ConfigError
from ..edits.kind import EditKind
from ..edits.neuron import NeuronEdit
from ..files import atomic_path, sha256_file, write_text_atomic
from ..methods.base import METHODS, resolve_magnitude
from ..neurons.gate import gate_of
from ..neurons.selection import NeuronMap
from ..neurons.stats import NeuronStats, stats_inputs_hash
from .front import (
    BEST_RULE,
    budgets,
    choose_best,
    closest_misses,
    constraint_settings,
    is_feasible,
    pareto_front,
    trial_row,
    trial_summary,
)
from .plan import ModelEntry, StudyKey
from .studies import StudyState, heldout_attr, heldout_columns


def _attrs(t: FrozenTrial) -> dict[str, Any]:
    return t.user_attrs


log = logging.getLogger(__name__)
BEST_EDITS_SHAPE = ("a sweep's best_edits.json: a JSON object with an 'edits' list whose "
                    "entries have model, value, method and params")


def _atomic_write(path: Path, text: str) -> None:
    write_text_atomic(path, text)


class Outputs:
    """Writes trials.csv, pareto.json and best_edits.json (+ neuron maps) into ``run_dir``."""

    def __init__(self, run_dir: Path, states: list[StudyState], models: list[ModelEntry],
                 search: DictConfig):
        self.run_dir, self.states, self.search = run_dir, states, search
        self.models = {m.label: m for m in models}
        self.stats: dict[str, NeuronStats] = {}  # per model label, when this run has them
        self.objectives = dict(search.objectives)
        self.budgets = budgets(search)  # today's, if they changed on resume
        self.trials: dict[StudyKey, list[FrozenTrial]] = {}
        self._recorded: dict[tuple, str] = {}  # stats_hash per edit of the file on disk

    def paths(self) -> dict[str, Path]:
        d = self.run_dir
        return {"trials": d / "trials.csv", "pareto": d / "pareto.json",
                "best_edits": d / "best_edits.json"}

    def rows(self) -> list[dict[str, Any]]:
        """trials.csv rows of every trial of the studies, read from the storage."""
        self._snapshot()
        return self._rows()

    def write(self) -> dict[str, Path]:
        """Rewrite every file from the storage; returns their paths."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._snapshot()
        paths = self.paths()
        self._write_csv(paths["trials"], self._rows())
        fronts = self._fronts()
        self._recorded = _recorded_stats_hashes(paths["best_edits"])
        _atomic_write(paths["pareto"], json.dumps(self._pareto(fronts), indent=2))
        _atomic_write(paths["best_edits"], json.dumps(self._best(fronts), indent=2))
        return paths

    def _snapshot(self) -> None:
        """Every study's trials, read once per write."""
        self.trials = {s.key: s.study.get_trials(deepcopy=False) for s in self.states}

    def _rows(self) -> list[dict[str, Any]]:
        out = []
        for s in self.states:
            name = s.key.name(self.search.study_prefix)
            key = (s.key.model, s.key.value, s.key.method)
            tests = s.study.user_attrs
            for t in self.trials[s.key]:
                row = trial_row(key, name, t, self.budgets)
                # the chosen edits' held-out scores (sweep/rescore.py), blank elsewhere
                row.update(heldout_columns(tests.get(heldout_attr(t.number))))
                out.append(row)
        return out

    def _feasible_complete(self, s: StudyState) -> list[FrozenTrial]:
        return [t for t in self.trials[s.key]
                if t.state == TrialState.COMPLETE and is_feasible(t.user_attrs, self.budgets)]

    def _write_csv(self, path: Path, rows: list[dict[str, Any]]) -> None:
        fields: list[str] = []
        for r in rows:
            fields += [k for k in r if k not in fields]
        if not fields:
            fields = ["model", "value", "method", "study", "trial", "state"]
        with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    def _pareto(self, fronts: dict[StudyKey, list[FrozenTrial]]) -> dict:
        studies = []
        for s in self.states:
            trials = self.trials[s.key]
            studies.append({
                "model": s.key.model, "value": s.key.value, "method": s.key.method,
                "study": s.key.name(self.search.study_prefix),
                "n_trials": len(trials),
                "n_complete": sum(t.state == TrialState.COMPLETE for t in trials),
                "n_pruned": sum(t.state == TrialState.PRUNED for t in trials),
                "calibration": s.study.user_attrs.get("calibration"),
                "n_feasible": len(self._feasible_complete(s)),
                "pareto": [trial_summary(t)
                           for t in sorted(fronts[s.key], key=lambda t: t.number)],
            })
        return {"objectives": OmegaConf.to_container(self.search.objectives),
                "constraints": self._constraints(), "studies": studies}

    def _constraints(self) -> dict:
        return constraint_settings(self.search)

    def chosen(self) -> dict[StudyKey, FrozenTrial]:
        """Each study's chosen trial (studies without one left out), from the storage."""
        self._snapshot()
        return {k: t for k, t in self._chosen(self._fronts()).items() if t is not None}

    def _fronts(self) -> dict[StudyKey, list[FrozenTrial]]:
        return {s.key: pareto_front(self._feasible_complete(s), self.objectives, _attrs)
                for s in self.states}

    def _chosen(self, fronts: dict[StudyKey, list[FrozenTrial]]
                ) -> dict[StudyKey, FrozenTrial | None]:
        return {s.key: choose_best(fronts[s.key], self.search.best_max_nlr, _attrs)
                for s in self.states}

    def _best(self, fronts: dict[StudyKey, list[FrozenTrial]]) -> dict:
        edits, missing = [], []
        chosen = self._chosen(fronts)
        for s in self.states:
            best = chosen[s.key]
            if best is None:
                n = len(self._feasible_complete(s))
                done = [t.user_attrs for t in self.trials[s.key]
                        if t.state == TrialState.COMPLETE]
                why = closest_misses(done, self.budgets) if done and not n else ""
                missing.append({"model": s.key.model, "value": s.key.value,
                                "method": s.key.method,
                                "reason": "no COMPLETE trial" if not done else
                                f"no COMPLETE trial meets the constraints ({n} feasible"
                                + (f"; {why})" if why else ")")})
                continue
            edits.append(self._edit_entry(s, best))
        return {"rule": BEST_RULE, "best_max_nlr": self.search.best_max_nlr,
                "constraints": self._constraints(), "edits": edits, "missing": missing}

    def _edit_entry(self, s: StudyState, t: FrozenTrial) -> dict[str, Any]:
        params = dict(t.user_attrs.get("params") or t.params)
        entry = {"model": s.key.model, "model_config": self.models[s.key.model].config,
                 "value": s.key.value, "method": s.key.method,
                 "study": s.key.name(self.search.study_prefix), "trial": t.number,
                 **params, "params": params, "metrics": trial_summary(t)}
        if t.user_attrs.get("raw"):  # the magnitude or coefficient a strength came to
            entry["raw"] = t.user_attrs["raw"]
        test = s.study.user_attrs.get(heldout_attr(t.number))
        if test is not None:
            entry["test"] = {k: v for k, v in test.items() if k != "samples"}
            if test.get("samples"):  # steered replies, unedited vs edited (the report's)
                entry["samples"] = test["samples"]
        neurons = self._save_neurons(s, t, params)
        if neurons is not None:
            entry["neurons"] = str(neurons.relative_to(self.run_dir))
            entry["neurons_sha256"] = sha256_file(neurons)
        stats = self.stats.get(s.key.model)  # None on a resume with nothing left to run
        built_from = (stats_inputs_hash(stats) if stats is not None else
                      self._recorded.get((s.key.model, s.key.value, s.key.method, t.number)))
        if built_from is not None:
            entry["stats_hash"] = built_from
        return entry

    def _save_neurons(self, s: StudyState, t: FrozenTrial, params: dict) -> Path | None:
        """The edit's neurons as a NeuronMap file (kept from an earlier run if it matches)."""
        name = f"{s.key.value}-{s.key.method}.safetensors"
        path = self.run_dir / "best_edits" / s.key.model / name
        if path.is_file() and NeuronMap.load(path).meta.get("trial") == t.number:
            return path
        stats = self.stats.get(s.key.model)
        if stats is None:
            return None
        edit = METHODS[s.key.method].build(stats, s.key.value, params)
        if edit.n_neurons == 0:  # no neurons to save (e.g. steering vectors, a prompt)
            return None
        meta = {"trial": t.number, "study": s.key.name(self.search.study_prefix), **params}
        NeuronMap({s.key.value: edit.neurons}, list(stats.layer_sizes), meta).save(path)
        return path


def _recorded_stats_hashes(path: Path) -> dict[tuple, str]:
    """``stats_hash`` per (model, value, method, trial) of an existing best_edits.json, kept
    when a resumed run holds no statistics of a model (it had nothing left to run)."""
    try:
        return {(e["model"], e["value"], e["method"], e["trial"]): e["stats_hash"]
                for e in json.loads(path.read_text())["edits"] if "stats_hash" in e}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


# -- reading best_edits.json (task=steer / task=evaluate) ---------------------------------------
def read_best_edits(path: Path) -> list[dict[str, Any]]:
    """The ``edits`` of a best_edits.json; a malformed file raises a one-line ValueError
    naming it and what is expected."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"best_edits: {path} is not UTF-8 text; expected "
                         f"{BEST_EDITS_SHAPE}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"best_edits: {path} is not valid JSON ({e.msg} at line {e.lineno}, "
                         f"column {e.colno}); expected {BEST_EDITS_SHAPE}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("edits"), list):
        raise ValueError(f"best_edits: {path} has no 'edits' list; expected {BEST_EDITS_SHAPE}")
    for i, e in enumerate(doc["edits"]):
        missing = [k for k in ("model", "value", "method", "params")
                   if not isinstance(e, dict) or k not in e]
        if missing:
            raise ValueError(f"best_edits: {path}: edit {i} lacks {', '.join(missing)}; "
                             f"expected {BEST_EDITS_SHAPE}")
    return doc["edits"]


def load_best_edit(path: str | Path, value: str | None = None, model: str | None = None,
                   method: str | None = None) -> dict[str, Any]:
    """The one entry of a sweep's ``best_edits.json`` matching the filters.

    ``model`` is only used to break ties (a sweep of one model needs no ``model=``).
    The entry's ``neurons`` path is made absolute.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"best_edits: {path} does not exist (a sweep writes "
                                "<run dir>/best_edits.json)")
    entries = read_best_edits(path)
    picked = [e for e in entries if (value is None or e["value"] == value)
              and (method is None or e["method"] == method)]
    if len({e["model"] for e in picked}) > 1 and model is not None:
        picked = [e for e in picked if e["model"] == model]
    if len(picked) != 1:
        have = ", ".join(f"{e['model']}/{e['value']}/{e['method']}" for e in entries) or "none"
        want = "; ".join(f"{k}={v}" for k, v in (("value", value), ("model", model),
                                                  ("method", method)) if v) or "no filter"
        raise KeyError(f"best_edits: {len(picked)} edits in {path} match ({want}); set value= "
                       f"(and model=/method= when several match). Edits in the file: {have}")
    entry = dict(picked[0])
    if entry.get("neurons"):
        entry["neurons"] = str((path.parent / entry["neurons"]).resolve())
    return entry


def best_edit_problems(entry: dict[str, Any], inputs_hash: str | None = None) -> list[str]:
    """Why a best_edits entry would not reproduce the sweep's edit: its neurons file missing
    or changed (``neurons_sha256``), or statistics from other inputs (``inputs_hash``, of the
    current data.probes and stats.*, differs from the recorded ``stats_hash``)."""
    out = []
    path = entry.get("neurons")
    if path and not Path(path).is_file():
        out.append(f"its neurons file {path} is missing")
    elif path and entry.get("neurons_sha256"):
        now = sha256_file(path)
        if now != entry["neurons_sha256"]:
            out.append(f"its neurons file {path} changed since the sweep (sha256 {now[:12]}, "
                       f"recorded {entry['neurons_sha256'][:12]})")
    recorded = entry.get("stats_hash")
    if recorded and inputs_hash and recorded != inputs_hash:
        out.append(f"the sweep built it from other data or statistics settings (data.probes "
                   f"and stats.* hash to {inputs_hash}, recorded {recorded})")
    return out


def _magnitude(entry: dict[str, Any], params: dict[str, Any], neurons,
               stats: Callable[[], NeuronStats] | None) -> float:
    """A saved neuron edit's raw magnitude: as the sweep recorded it (``raw``), else from its
    strength (the ``add`` rules need only the neurons; ``scale`` and ``set`` the
    statistics), else its ``magnitude`` parameter."""
    raw = (entry.get("raw") or {}).get("magnitude")
    if raw is not None:
        return float(raw)
    if params.get("strength") is None:
        return float(params["magnitude"])
    if params["rule"] in ("add", "add_sd"):
        return resolve_magnitude(None, neurons, params)
    if stats is None:
        raise FileNotFoundError(f"best_edits: the {entry['model']}/{entry['value']}/"
                                f"{entry['method']} edit's strength needs statistics for "
                                f"rule {params['rule']!r}; none were given")
    return resolve_magnitude(stats(), neurons, params)


def best_edit_spec(entry: dict[str, Any], stats: Callable[[], NeuronStats] | None = None,
                   inputs_hash: str | None = None, rebuild: bool = False,
                   allow_other_model: bool = False) -> EditKind:
    """The edit of a best_edits entry: a neuron edit from its saved neurons, else built from
    statistics (``stats()`` is called only then). Parameters an older entry lacks take the
    method's defaults (``METHODS[method].defaults``).

    An entry that would not reproduce the sweep's edit (:func:`best_edit_problems`) raises a
    ValueError saying why, unless ``rebuild``: then the edit is rebuilt from ``stats()`` and
    ``entry["rebuilt"]`` says why. An entry without hashes (an older sweep) loads with a
    warning, unchecked.
    """
    value, method = entry["value"], entry["method"]
    params = {**METHODS[method].defaults, **entry["params"]}
    name = f"{entry['model']}/{value}/{method}"
    if "stats_hash" not in entry or (entry.get("neurons") and "neurons_sha256" not in entry):
        log.warning("best_edits: the %s edit records no hashes of its inputs (written by an "
                    "older neva_sweep); loading it unchecked", name)
    problems = best_edit_problems(entry, inputs_hash)
    if problems and not rebuild:  # a ConfigError: one line at the command line
        raise ConfigError(f"best_edits: the {name} edit would not be the sweep's: "
                         f"{'; '.join(problems)}; restore them, or pass rebuild_edits=true to "
                         "rebuild it from the current statistics")
    if problems:
        entry["rebuilt"] = "; ".join(problems)
    elif entry.get("neurons"):
        try:
            neurons = NeuronMap.load(entry["neurons"])[value]
        except ValueError as e:  # e.g. a neuron index past its layer's width
            raise ConfigError(f"best_edits: the {name} edit's neurons file "
                              f"{entry['neurons']}: {e}") from None
        gate = None
        if params.get("gate", "none") != "none":  # the probe lives with the statistics
            if stats is None:
                raise FileNotFoundError(f"best_edits: the {name} edit is gated and needs "
                                        "statistics for its gate; none were given")
            gate = gate_of(stats(), params["gate"], value)
        return NeuronEdit(neurons, params["rule"], _magnitude(entry, params, neurons, stats),
                          params.get("positions"), allow_other_model=allow_other_model,
                          gate=gate)
    if stats is None:
        raise FileNotFoundError(f"best_edits: the {name} edit needs statistics to be built "
                                "and none were given")
    return METHODS[method].build(stats(), value, params)
