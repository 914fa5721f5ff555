"""Stage 1 of the report: read a sweep's run directory (or its Optuna storage) into a :class:`Run`.

Every input is optional. A missing file, column or study becomes a sentence in
``Run.missing`` (shown at the top of the report) instead of an exception, so a running,
empty or partly failed sweep still gets a report that says what it lacks.

Sources, the files a sweep writes (:mod:`neva_sweep.sweep.outputs`):

- trials: ``trials.csv`` (default) or an Optuna storage URL (``storage=``; also used when
  the run directory has ``optuna.db`` but no ``trials.csv``);
- Pareto fronts: ``pareto.json``, else recomputed from the trials;
- chosen edits: ``best_edits.json``, else chosen from the fronts with the sweep's rule
  (feasibility, fronts, the rule and the rows read from a storage are those of
  :mod:`neva_sweep.sweep.front`, the sweep's own);
- neuron maps: ``neurons/<model>.json`` (``task=identify``) and the chosen edits' neuron
  files (``best_edits/<model>/<value>-<method>.safetensors``);
- searched parameters and their importances, per study (:mod:`.params`): from the Optuna
  storage only (it alone keeps the search space);
- steered replies: the ``samples`` of best_edits.json's entries (``[{"prompt", "unedited",
  "edited"}]``), when the sweep saved some;
- the run's config: ``.hydra/config.yaml`` and ``.hydra/overrides.yaml``.
"""

from __future__ import annotations

import csv
import json
import re
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..evaluation.metrics import METRICS as SCHEMA
from ..evaluation.metrics import scalar_metrics
from ..neurons.selection import NeuronMap
from ..sweep.front import (
    DEFAULT_BEST_MAX_NLR,
    DEFAULT_OBJECTIVES,
    budgets,
    choose_best,
    is_feasible,
    num,
    pareto_front,
    per_value_columns,
    trial_row,
)
from ..sweep.pruning import is_rung_study
from ..values import VALUES
from .params import ParamStudy, param_study

if TYPE_CHECKING:
    import optuna

Key = tuple[str, str, str]  # (model, value, method): one Optuna study
# The scalar metrics of the schema, plus the trial's duration (trials.csv, chosen edits).
METRICS = (*(m.name for m in scalar_metrics()), "duration_s")
CSR_PREFIX = SCHEMA["csr_edited"].prefix  # csr_<value>: the edited model's CSR
BASE_PREFIX = SCHEMA["csr_base"].prefix  # csr_base_<value>: the unedited model's CSR
# trials.csv columns that are neither parameters nor metrics
ROW_FIELDS = frozenset({"model", "value", "method", "study", "trial", "state", "feasible",
                        "replica", "error", "datetime_start", "datetime_complete", "ci"})


def _cell(s: str) -> Any:
    """A trials.csv cell as Python: '' -> None, 'True' -> True, '3' -> 3, '0.5' -> 0.5."""
    if s == "":
        return None
    if s in ("True", "False"):
        return s == "True"
    if re.fullmatch(r"-?\d+", s):
        return int(s)
    f = num(s)
    return s if f is None else f


def value_order(v: str) -> int:
    return VALUES.index(v) if v in VALUES else len(VALUES)


@dataclass
class NeuronCounts:
    """Selected neurons per layer per value, and the Jaccard overlap of the values' sets."""

    title: str
    source: str
    layer_counts: dict[str, list[int]]
    jaccard: dict[str, dict[str, float]]


@dataclass
class Run:
    """Everything the report shows, read defensively from one run directory."""

    run_dir: Path
    source: str = "nothing"  # where the trials came from
    storage: str | None = None  # the Optuna storage URL the trials were read from
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per trial
    fronts: dict[Key, list[int]] = field(default_factory=dict)  # Pareto trial numbers
    chosen: dict[Key, dict[str, Any]] = field(default_factory=dict)  # flat: params + metrics
    no_edit: dict[Key, str] = field(default_factory=dict)  # study -> why it has no edit
    base_csr: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> value -> CSR
    neuron_maps: list[NeuronCounts] = field(default_factory=list)
    # per study, its searched parameters (params.py); None: no storage was read
    param_studies: list[ParamStudy] | None = None
    objectives: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_OBJECTIVES))
    constraints: dict[str, float | None] = field(default_factory=dict)
    config: dict[str, Any] | None = None
    config_text: str | None = None
    overrides: list[str] | None = None
    missing: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # problems that make the report wrong
    # task=compare (report/compare.py): merged model label -> (run name, the run's own model
    # label), for the tables' run column; empty for one run
    origins: dict[str, tuple[str, str]] = field(default_factory=dict)
    _by_key: dict[Key, list[dict[str, Any]]] | None = field(default=None, repr=False)
    _indexed: int = field(default=0, repr=False)

    def error(self, text: str) -> None:
        """A problem that makes the report incomplete or wrong (``task=report`` fails on it);
        shown in the page too."""
        self.errors.append(text)
        self.missing.append(text)

    def keys(self) -> list[Key]:
        """Every study seen anywhere, ordered by model, circumplex value, method."""
        seen = {(r["model"], r["value"], r["method"]) for r in self.rows}
        seen |= set(self.fronts) | set(self.chosen) | set(self.no_edit)
        models, methods = self._first_seen("model"), self._first_seen("method")
        return sorted(seen, key=lambda k: (_index(models, k[0]), value_order(k[1]),
                                           _index(methods, k[2])))

    def _first_seen(self, field_: str) -> list[str]:
        pos = {"model": 0, "value": 1, "method": 2}[field_]
        out: list[str] = []
        for r in self.rows:
            if r[field_] not in out:
                out.append(r[field_])
        for k in (*self.fronts, *self.chosen, *self.no_edit):
            if k[pos] not in out:
                out.append(k[pos])
        return out

    @property
    def models(self) -> list[str]:
        return self._first_seen("model")

    @property
    def methods(self) -> list[str]:
        return self._first_seen("method")

    @property
    def values(self) -> list[str]:
        return sorted({k[1] for k in self.keys()}, key=value_order)

    def trials(self, key: Key) -> list[dict[str, Any]]:
        """The study's trials (indexed once: reports of large sweeps ask for them often)."""
        if self._by_key is None or self._indexed != len(self.rows):
            self._by_key, self._indexed = {}, len(self.rows)
            for r in self.rows:
                self._by_key.setdefault((r["model"], r["value"], r["method"]), []).append(r)
        return self._by_key.get(key, [])

    def dcsr(self, model: str, csr_edited: dict[str, float | None]) -> dict[str, float | None]:
        """dCSR per value of an edit of ``model``; None where either side is unknown."""
        base = self.base_csr.get(model, {})
        return {v: None if csr_edited.get(v) is None or base.get(v) is None
                else csr_edited[v] - base[v] for v in VALUES}


def _index(seq: list[str], x: str) -> int:
    return seq.index(x) if x in seq else len(seq)


def csr_of(row: dict[str, Any], prefix: str = CSR_PREFIX) -> dict[str, float | None]:
    """CSR per value from a trials row's ``csr_<value>`` columns (``prefix=BASE_PREFIX``:
    the unedited model's, ``csr_base_<value>``)."""
    return {v: num(row.get(f"{prefix}{v}")) for v in VALUES}


def is_complete(row: dict[str, Any]) -> bool:
    return row.get("state") == "COMPLETE"


# -- trials -------------------------------------------------------------------------------------
def read_trials_csv(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="") as f:
        rows = [{k: _cell(v or "") for k, v in r.items() if k is not None}
                for r in csv.DictReader(f)]
    return [r for r in rows if r.get("model") is not None]


def storage_studies(url: str) -> Iterator[tuple[Key, str, optuna.Study]]:
    """(key, name, study) of every study of edits in an Optuna storage; the key from the
    study's user attributes (the sweep sets them), else its name ``<model>/<value>/<method>``."""
    import optuna

    from ..sweep.storage import open_storage  # SQLAlchemy URLs and journal:///path

    storage = open_storage(url)
    for name in optuna.study.get_all_study_names(storage=storage):
        if is_rung_study(name):  # a pruner's bookkeeping, not a study of edits
            continue
        study = optuna.load_study(study_name=name, storage=storage)
        parts = name.rsplit("/", 2)
        ua = study.user_attrs
        key = tuple(ua.get(k) or (parts[i] if len(parts) == 3 else name)
                    for i, k in enumerate(("model", "value", "method")))
        yield key, name, study


def read_storage(url: str) -> list[dict[str, Any]]:
    """trials.csv rows (the sweep's own row builder, plus ``ci``) of every study in an Optuna
    storage."""
    rows = []
    for key, name, study in storage_studies(url):
        for t in study.get_trials(deepcopy=False):
            # feasibility: from the budgets, once they are known (_load_fronts_and_edits)
            row = trial_row(key, name, t, budgets=None)
            row["ci"] = t.user_attrs.get("ci")
            rows.append(row)
    return rows


def base_csr_from_storage(url: str) -> dict[str, dict[str, float]]:
    """model -> value -> unedited CSR, from the first COMPLETE trial of each study."""
    from optuna.trial import TrialState

    out: dict[str, dict[str, float]] = {}
    for (model, _, _), _, study in storage_studies(url):
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            base = {v: x for v, x in (t.user_attrs.get("csr_base") or {}).items()
                    if v in VALUES and num(x) is not None}
            if base:
                out.setdefault(model, {}).update(base)
                break
    return out


def _load_trials(run: Run, storage: str | None) -> None:
    """The trials, from the storage when there is one (the source of truth; the run's
    ``optuna.db`` by default), else from trials.csv. Problems that make the report wrong
    (no trials anywhere, an unreadable storage, a trials.csv that disagrees with the
    storage) go to ``run.errors`` as well as the page."""
    csv_path = run.run_dir / "trials.csv"
    db = run.run_dir / "optuna.db"
    if storage is None and db.is_file():
        storage = f"sqlite:///{db.resolve()}"
    csv_rows = None
    if csv_path.is_file():
        try:
            csv_rows = read_trials_csv(csv_path)
        except (csv.Error, UnicodeDecodeError, OSError) as e:
            run.error(f"{csv_path} is unreadable ({type(e).__name__}: {e}).")
    if storage is not None:
        # File storages must exist: opening a missing journal would create an empty one.
        file = next((storage.removeprefix(p) for p in ("sqlite:///", "journal://")
                     if storage.startswith(p)), None)
        if file is not None and not Path(file).is_file():
            run.error(f"the Optuna storage {storage} does not exist.")
        else:
            try:
                run.rows, run.source = read_storage(storage), f"Optuna storage {storage}"
                run.storage = storage
            except Exception as e:  # any storage error: report it, fall back to trials.csv
                first = (str(e).strip().splitlines() or [""])[0]
                run.error(f"could not read the Optuna storage {storage} ({type(e).__name__}: "
                          f"{first}); if it is corrupt, move it aside and re-run the sweep.")
    if run.source == "nothing" and csv_rows is not None:
        run.rows, run.source = csv_rows, str(csv_path)
        if storage is None and not csv_rows:
            run.missing.append("trials.csv has no trials yet (a sweep writes it when it starts "
                               "and after every trial).")
    elif csv_rows is not None and run.source != "nothing":
        finished = {(r["study"], r["trial"]) for r in run.rows if r.get("state") != "RUNNING"}
        in_csv = {(r.get("study"), r.get("trial")) for r in csv_rows
                  if r.get("state") != "RUNNING"}
        if finished != in_csv:
            run.error(f"trials.csv ({len(in_csv)} finished trials) disagrees with "
                      f"{run.source} ({len(finished)}); this report shows the storage's trials. "
                      "Re-run the sweep command to rewrite trials.csv from the storage.")
    if run.source == "nothing":
        run.error(f"no trials.csv and no Optuna storage in {run.run_dir}: no trials to show. "
                  "Run a sweep into this directory first "
                  f"(python -m neva_sweep hydra.run.dir={run.run_dir}).")
        return
    for col in ("alignment", "nlr", "accuracy_drop", "kl"):
        if run.rows and all(r.get(col) is None for r in run.rows):
            run.missing.append(f"trials.csv has no {col!r} values.")
    if run.rows and all(v is None for r in run.rows for v in csr_of(r).values()):
        run.missing.append("trials.csv has no csr_<value> columns: no leakage matrices or "
                           "value profiles.")


# -- fronts and chosen edits ------------------------------------------------------------------
def _read_json(run: Run, name: str) -> dict | None:
    path = run.run_dir / name
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, OSError) as e:
        run.missing.append(f"{name} is unreadable ({e}); it was ignored.")
        return None


def _key(d: dict) -> Key:
    return d.get("model"), d.get("value"), d.get("method")


def feasible(row: dict[str, Any], constraints: dict[str, float | None]) -> bool:
    """The sweep's feasibility: its ``feasible`` column, else the budgets ``constraints``
    (pareto.json's ``{max_<metric>: budget}``)."""
    if isinstance(row.get("feasible"), bool):
        return row["feasible"]
    return is_feasible(row, budgets(constraints))


def pareto_trials(rows: list[dict[str, Any]], objectives: dict[str, str]) -> list[int]:
    """Trial numbers of the rows on the Pareto front (the sweep's rule).

    >>> rows = [{"trial": 0, "alignment": 0.2, "nlr": 0.5}, {"trial": 1, "alignment": 0.1,
    ...         "nlr": 0.9}, {"trial": 2, "alignment": 0.3, "nlr": 0.8}]
    >>> pareto_trials(rows, {"alignment": "maximize", "nlr": "minimize"})
    [0, 2]
    """
    return sorted(r["trial"] for r in pareto_front(rows, objectives))


def params_of(row: dict[str, Any]) -> dict[str, Any]:
    """A trials row's search parameters: the columns that are neither bookkeeping nor metrics.

    >>> params_of({"model": "m", "trial": 3, "sparsity": 0.001, "nlr": 0.2, "csr_power": 0.5})
    {'sparsity': 0.001}
    """
    return {k: v for k, v in row.items() if k not in ROW_FIELDS and k not in METRICS
            and not k.startswith(per_value_columns())}


def _flat_edit(entry: dict[str, Any], source: str) -> dict[str, Any]:
    """A best_edits.json entry (or a trials row) as one flat dict."""
    metrics = entry.get("metrics") or entry
    params = entry.get("params") or metrics.get("params") or params_of(entry)
    out = {"model": entry.get("model"), "value": entry.get("value"),
           "method": entry.get("method"), "trial": entry.get("trial"), "source": source,
           "params": dict(params or {}), "ci": metrics.get("ci") or {},
           "neurons": entry.get("neurons"), "test": entry.get("test"),
           "samples": samples_of(entry)}
    out.update({k: metrics.get(k) for k in METRICS})
    csr = metrics.get("csr_edited")
    out["csr_edited"] = ({v: num(csr.get(v)) for v in VALUES} if isinstance(csr, dict)
                         else csr_of(entry))
    if isinstance(metrics.get("csr_base"), dict):
        out["csr_base"] = {v: num(metrics["csr_base"].get(v)) for v in VALUES}
    return out


def samples_of(entry: dict[str, Any]) -> list[dict[str, str]]:
    """A best_edits.json entry's steered replies: its ``samples``, the well-formed ones
    (``{"prompt", "unedited", "edited"}``, text each) as strings.

    >>> samples_of({"samples": [{"prompt": "Hi", "unedited": "Hello", "edited": "Rule!"},
    ...                         {"prompt": "no replies"}]})
    [{'prompt': 'Hi', 'unedited': 'Hello', 'edited': 'Rule!'}]
    """
    samples = entry.get("samples")
    if not isinstance(samples, list):
        return []
    fields = ("prompt", "unedited", "edited")
    return [{k: str(s[k]) for k in fields} for s in samples
            if isinstance(s, dict) and all(s.get(k) is not None for k in fields)]


def _load_fronts_and_edits(run: Run) -> None:
    pareto, best = _read_json(run, "pareto.json"), _read_json(run, "best_edits.json")
    cfg_search = (run.config or {}).get("search") or {}
    run.objectives = dict((pareto or {}).get("objectives") or cfg_search.get("objectives")
                          or DEFAULT_OBJECTIVES)
    run.constraints = dict((pareto or {}).get("constraints") or (best or {}).get("constraints")
                           or {k: cfg_search.get(k) for k in ("max_accuracy_drop", "max_kl")})
    keys = {(r["model"], r["value"], r["method"]) for r in run.rows}
    if pareto is not None:
        for s in pareto.get("studies") or []:
            run.fronts[_key(s)] = sorted(e["trial"] for e in s.get("pareto") or []
                                         if e.get("trial") is not None)
    elif run.rows:
        run.missing.append("pareto.json is missing: Pareto fronts were recomputed from the "
                           f"trials (objectives {run.objectives}, constraints "
                           f"{run.constraints}).")
        for key in keys:
            ok = [r for r in run.trials(key) if is_complete(r) and feasible(r, run.constraints)]
            run.fronts[key] = pareto_trials(ok, run.objectives)
    if best is not None:
        for e in best.get("edits") or []:
            run.chosen[_key(e)] = _flat_edit(e, "best_edits.json")
        for m in best.get("missing") or []:
            run.no_edit[_key(m)] = str(m.get("reason") or "no chosen edit")
        return
    max_nlr = num(cfg_search.get("best_max_nlr")) or DEFAULT_BEST_MAX_NLR
    if run.rows:
        run.missing.append("best_edits.json is missing: the chosen edits below were picked by "
                           f"the report with the sweep's rule (best_max_nlr={max_nlr:g}).")
    for key in sorted(keys | set(run.fronts)):
        front = [r for r in run.trials(key) if r["trial"] in set(run.fronts.get(key, []))]
        pick = choose_best(front, max_nlr)
        if pick is None:
            run.no_edit[key] = "no feasible COMPLETE trial"
        else:
            run.chosen[key] = _flat_edit(pick, "chosen by the report")


def _estimate_base_csr(run: Run) -> None:
    """The unedited model's CSR per value (same for every trial of a model).

    From the ``csr_base_<v>`` columns when the trials have them, else from each study's
    own target (``csr_t - alignment``: only the swept values), and for the values still
    unknown from the run directory's ``optuna.db`` when it has one.
    """
    seen: dict[str, dict[str, list[float]]] = {}
    samples = [(r["model"], csr_of(r), csr_of(r, BASE_PREFIX), r.get("value"),
                r.get("alignment")) for r in run.rows if is_complete(r)]
    samples += [(e["model"], e["csr_edited"], e.get("csr_base") or {}, e["value"],
                 e.get("alignment")) for e in run.chosen.values()]
    for model, edited, base_csr, target, a in samples:
        for v in VALUES:
            csr, base = num(edited.get(v)), num(base_csr.get(v))
            if base is None and v == target and csr is not None and num(a) is not None:
                base = csr - num(a)
            if base is not None:
                seen.setdefault(model, {}).setdefault(v, []).append(base)
    run.base_csr = {m: {v: statistics.median(x) for v, x in per.items()} for m, per in
                    seen.items()}
    db = run.run_dir / "optuna.db"
    gaps = any(len(run.base_csr.get(m, {})) < len(VALUES) for m in run.models)
    if gaps and db.is_file() and not run.source.startswith("Optuna storage"):
        try:  # the sweep's storage keeps the unedited CSR of every value
            for m, base in base_csr_from_storage(f"sqlite:///{db.resolve()}").items():
                run.base_csr.setdefault(m, {}).update(base)
        except Exception as e:  # then the gaps stay, and are reported below
            run.missing.append(f"optuna.db is unreadable ({type(e).__name__}: {e}).")
    for m in run.models:
        unknown = [v for v in VALUES if v not in run.base_csr.get(m, {})]
        if unknown and any(r["model"] == m and is_complete(r) for r in run.rows):
            run.missing.append(
                f"unedited CSR of {m} is unknown for {', '.join(unknown)} (the trials carry "
                "no csr_base_<value> columns and there is no optuna.db, so it is "
                "only known for swept values): those cells of the leakage matrix and value "
                "profile are blank.")


# -- neuron maps ----------------------------------------------------------------------------------
def _load_neuron_maps(run: Run) -> None:
    for path in sorted((run.run_dir / "neurons").glob("*.json")):
        try:
            s = json.loads(path.read_text())
            counts = {v: list(d["per_layer"]) for v, d in s["values"].items()}
            run.neuron_maps.append(NeuronCounts(
                f"{path.stem}: neurons selected by task=identify", str(path.name),
                counts, s.get("jaccard") or {}))
        except (OSError, ValueError, KeyError, TypeError) as e:
            run.missing.append(f"neurons/{path.name} is unreadable ({type(e).__name__}: {e}).")
    groups: dict[tuple[str, str], list[dict]] = {}
    for e in run.chosen.values():
        if e.get("neurons"):
            groups.setdefault((e["model"], e["method"]), []).append(e)
    for (model, method), edits in groups.items():
        neurons, layer_sizes = {}, None
        for e in sorted(edits, key=lambda e: value_order(e["value"])):
            try:
                nmap = NeuronMap.load(run.run_dir / e["neurons"])
                neurons[e["value"]] = nmap[e["value"]]
                layer_sizes = layer_sizes or nmap.layer_sizes
            except Exception as err:  # a missing or foreign file: say so, keep going
                run.missing.append(f"neurons of the chosen {model}/{e['value']}/{method} edit "
                                   f"({e['neurons']}) are unreadable: {type(err).__name__}")
        if neurons:  # one map of the chosen edits: counts and Jaccard as task=identify's
            chosen = NeuronMap(neurons, list(layer_sizes))
            run.neuron_maps.append(NeuronCounts(
                f"{model} / {method}: neurons of the chosen edits",
                f"{len(neurons)} files under best_edits/{model}/",
                {v: chosen.layer_counts(v) for v in neurons}, chosen.jaccard()))
    if not run.neuron_maps:
        run.missing.append("no neuron maps: no neurons/<model>.json (task=identify) and no "
                           "readable neuron files of chosen edits (best_edits/<model>/).")


# -- searched parameters ---------------------------------------------------------------------
def _load_param_studies(run: Run) -> None:
    """Each study's searched parameters and their importances (:mod:`.params`), when the
    trials came from an Optuna storage; a study that fails gets a note, not an exception."""
    if run.storage is None:
        return
    objective = next(iter(run.objectives), None)
    studies = []
    try:
        for key, _, study in storage_studies(run.storage):
            try:
                studies.append(param_study(key, study, objective))
            except Exception as e:  # one odd study: say so, keep the others
                studies.append(ParamStudy(key, objective or "objective 0", True,
                                          note=f"importances failed ({type(e).__name__}: {e})."))
    except Exception as e:  # the storage read a moment ago: it changed or went away
        run.missing.append(f"could not read the studies' parameters from {run.storage} "
                           f"({type(e).__name__}).")
    order = {k: i for i, k in enumerate(run.keys())}
    run.param_studies = sorted(studies, key=lambda p: order.get(p.key, len(order)))


# -- config ---------------------------------------------------------------------------------------
def _load_config(run: Run) -> None:
    path = run.run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        run.missing.append("no .hydra/config.yaml: the run's config is unknown.")
        return
    from omegaconf import OmegaConf

    run.config_text = path.read_text()
    try:
        run.config = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as e:  # shown as text anyway
        run.missing.append(f".hydra/config.yaml could not be parsed ({type(e).__name__}).")
    if (run.config or {}).get("task") == "report":
        run.missing.append(".hydra/config.yaml is a task=report config (the report was run "
                           "with hydra.run.dir= this directory), not the sweep's.")
    overrides = run.run_dir / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        try:
            run.overrides = [str(o) for o in OmegaConf.load(overrides)]
        except Exception:  # the overrides are a nicety
            run.overrides = None


def load_run(run_dir: str | Path, storage: str | None = None) -> Run:
    """Read everything the report needs from ``run_dir`` (see the module docstring).

    >>> run = load_run("/nonexistent")
    >>> run.rows, run.missing[0].startswith("no .hydra/config.yaml")
    ([], True)
    """
    run = Run(Path(run_dir))
    _load_config(run)
    _load_trials(run, storage)
    _load_fronts_and_edits(run)
    _estimate_base_csr(run)
    _load_neuron_maps(run)
    _load_param_studies(run)
    return run
