"""Helpers shared by tests of several tiers (imported as ``tests.helpers``; test modules
never import each other): capturing what neuron sites receive, comparing edits exactly,
counting hooks, the fast sweep overrides and readers of a run's files, and a fabricated
run directory for the report."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import optuna
import torch
import yaml
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from neva_sweep.config import SearchConfig
from neva_sweep.data import load_records
from neva_sweep.evaluation.metrics import cwl, nglr, nlr
from neva_sweep.sweep.outputs import Outputs
from neva_sweep.sweep.plan import ModelEntry, StudyKey
from neva_sweep.sweep.storage import open_storage
from neva_sweep.sweep.studies import open_studies
from neva_sweep.values import VALUES, related_values


def capture_site_inputs(host, fn) -> list[torch.Tensor]:
    """Run ``fn()`` and return what each neuron site received (after any edit hooks)."""
    seen: list[torch.Tensor] = [None] * host.n_layers

    def make(layer):
        def hook(module, args):
            seen[layer] = args[0].detach().clone()

        return hook

    # Registered last, so it sees the input after edit hooks installed earlier.
    handles = [s.register_forward_pre_hook(make(i)) for i, s in enumerate(host.sites)]
    try:
        fn()
    finally:
        for h in handles:
            h.remove()
    return seen

def same(a, b) -> bool:
    """Equal field by field, tensors compared exactly (values, dtype and shape)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if dataclasses.is_dataclass(a):
        return all(same(getattr(a, f.name), getattr(b, f.name))
                   for f in dataclasses.fields(a))
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b

def n_hooks(host) -> int:
    """Forward hooks of every module (transformers may keep its own: compare counts)."""
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in host.model.modules())

SWEEP_FAST = ["model=tiny_llama", "sweep.values=[benevolence,power]", "search.n_trials=3",
        "search.n_startup_trials=2", "sweep.capability.mc_limit=8",
        "sweep.judge.scenarios_limit=4", "sweep.judge.null_edits=2",
        "sweep.capability.neutral_limit=4", "sweep.capability.fluency_queries=0",
        "capability.value_replies=2", "capability.max_new_tokens=8",
        "judge.n_boot=50", "logger=none", "progress=false",
        "cluster.replicas_per_model=2", "cluster.num_cpus_per_actor=1",
        "search.calibration.points=3", "search.calibration.anchors=2", "search.heldout=false"]

def trials(run_dir: Path) -> list[dict]:
    with (run_dir / "trials.csv").open() as f:
        return list(csv.DictReader(f))

def states_by_study(storage_url: str) -> dict[str, list[TrialState]]:
    storage = open_storage(storage_url)
    out = {}
    for s in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=s.study_name, storage=storage)
        out[s.study_name] = [t.state for t in study.get_trials(deepcopy=False)]
    return out

def n_studies(db: Path) -> int:
    """Studies in an SQLite storage, read-only: opening it through Optuna while a driver
    creates it races on the schema's creation (both insert alembic's version row)."""
    import sqlite3
    from contextlib import closing

    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
            return c.execute("SELECT COUNT(*) FROM studies").fetchone()[0]
    except sqlite3.Error:  # not there yet, or its tables not yet created
        return 0

MODELS = ("tiny-a", "tiny-b")

METHODS = ("neva", "random")

SWEPT = ("hedonism", "power", "benevolence")

CONFIG = """task: sweep
search:
  storage: null
  objectives: {alignment: maximize, nlr: minimize}
  max_accuracy_drop: 0.1
  max_kl: null
  best_max_nlr: 1.0
logger:
  kind: wandb_offline
  base_url: https://api.wandb.ai
"""

def _trial(rng, value: str, method: str, base: np.ndarray):
    """One plausible COMPLETE trial (as the scheduler stores it): stronger edits align
    more, leak more and cost more."""
    sparsity = float(10 ** rng.uniform(-3.3, -2))
    magnitude = float(rng.uniform(1, 8))
    strength = magnitude * sparsity * 120 * (1.0 if method == "neva" else 0.4)
    t = VALUES.index(value)
    dcsr = rng.normal(0, 0.01, len(VALUES))  # (V,)
    dcsr[t] = 0.25 * np.tanh(strength) + rng.normal(0, 0.02)
    near = [VALUES.index(v) for v in related_values(value) if v != value]
    dcsr[near] += 0.3 * dcsr[t] * rng.uniform(0, 1, len(near))
    edited = np.clip(base + dcsr, 0, 1)
    d = edited - base
    a = float(d[t])
    attrs = {"params": {"sparsity": sparsity, "magnitude": magnitude, "rule": "add",
                        "score": "mean_diff", "positions": "all", "layer_window": "all"},
             "alignment": a, "nlr": nlr(d, value), "nglr": nglr(d, value),
             "cwl": cwl(d, value), "accuracy_base": 0.5, "accuracy_edited": 0.5 - strength / 20,
             "accuracy_drop": strength / 20, "kl": strength / 10,
             "n_neurons": int(sparsity * 4608), "duration_s": float(rng.uniform(1, 3)),
             "csr_base": dict(zip(VALUES, base.tolist())),
             "csr_edited": dict(zip(VALUES, edited.tolist())), "replica": "tiny#0",
             "ci": {"alignment": [a - 0.03, a + 0.03], "accuracy_edited": [0.4, 0.5]}}
    if method == "neva":  # a newer metric: the other method's records predate it
        attrs.update(acquiescence=float(d.mean()), nlr_floor=0.01)
    # the searched parameters with their search space, as trial.suggest_* records them
    space = {"sparsity": FloatDistribution(5e-4, 1e-2, log=True),
             "magnitude": FloatDistribution(1, 8), "rule": CategoricalDistribution(["add"])}
    return optuna.trial.create_trial(values=[a, attrs["nlr"]], user_attrs=attrs,
                                     params={p: attrs["params"][p] for p in space},
                                     distributions=space)

def fabricate_run(run_dir: Path, models=MODELS, methods=METHODS, values=SWEPT,
                  n_trials: int = 8, fail_all: bool = False, neuron_files: bool = True,
                  seed: int = 0, storage: bool = False) -> Path:
    """A run directory like a finished sweep's, written by the sweep's own writer from
    Optuna studies: trials.csv, pareto.json, best_edits.json, .hydra/config.yaml,
    neurons/<first model>.json and (optionally) the neuron files of the last model's
    chosen neva edits. Every study has n_trials COMPLETE trials (none with ``fail_all``)
    and one FAIL trial. ``storage``: the studies live in the run's ``optuna.db`` (as a
    sweep's do), not in memory."""
    rng = np.random.default_rng(seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search = OmegaConf.merge(OmegaConf.structured(SearchConfig),
                             yaml.safe_load(CONFIG)["search"])  # the config below
    keys = [StudyKey(m, v, k) for m in models for v in values for k in methods]
    run_dir.mkdir(parents=True, exist_ok=True)
    store = (optuna.storages.RDBStorage(f"sqlite:///{run_dir / 'optuna.db'}") if storage
             else optuna.storages.InMemoryStorage())
    states = open_studies(keys, store, search)
    bases = {m: rng.uniform(0.1, 0.5, len(VALUES)) for m in models}  # unedited CSR per model
    for state in states:
        model, value, method = state.key.model, state.key.value, state.key.method
        trials = [] if fail_all else [_trial(rng, value, method, bases[model])
                                      for _ in range(n_trials)]
        for t in [*trials, _failed()]:
            state.study.add_trial(t)
        state.complete = len(trials)
    outputs = Outputs(run_dir, states, [ModelEntry(m, {"name": m}) for m in models], search)
    outputs.write()
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    (run_dir / ".hydra" / "config.yaml").write_text(CONFIG)
    (run_dir / ".hydra" / "overrides.yaml").write_text("- experiment=smoke\n")
    edits = json.loads((run_dir / "best_edits.json").read_text())["edits"]
    _neurons(run_dir, rng, models, edits if neuron_files else [])
    outputs.write()  # picks up the chosen edits' neuron files
    return run_dir

def referenced_files(page: str) -> list[str]:
    """Every src/href of the page that is not an in-page anchor or a data URI."""
    refs = re.findall(r'(?:src|href)="([^"]*)"', page)
    return [r for r in refs if not r.startswith(("#", "data:"))]

def assert_offline(page: str) -> None:
    assert not re.search(r"https?://", page, re.IGNORECASE)
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert not re.search(r'(?:src|href)="//', page)

def assert_self_contained(page_path: Path) -> None:
    """The page references figures and CSVs that all exist beside it, and nothing online."""
    page = page_path.read_text()
    refs = referenced_files(page)
    assert any(r.endswith(".svg") for r in refs) and any(r.endswith(".csv") for r in refs)
    for ref in refs:
        assert (page_path.parent / ref).is_file(), ref
    assert_offline(page)  # the config's wandb URL and the error's URL are escaped


def _failed():
    return optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={
        "params": {"sparsity": 0.001, "magnitude": 2.0}, "replica": "tiny#0",
        "error": "RuntimeError: CUDA out of memory (see https://example.org)"})


def _neurons(run_dir: Path, rng, models, edits: list[dict]) -> None:
    """neurons/<first model>.json as task=identify writes it, and the neuron files of the
    last model's chosen neva edits (where the sweep keeps them)."""
    import torch

    from neva_sweep import NeuronMap, ValueNeurons

    sets = {v: {(int(rng.integers(4)), int(rng.integers(40))) for _ in range(12)}
            for v in VALUES}
    per_value = {v: {"n_neurons": len(s), "per_layer": [sum(li == i for li, _ in s)
                                                         for i in range(4)], "top": []}
                 for v, s in sets.items()}
    jac = {a: {b: len(sets[a] & sets[b]) / len(sets[a] | sets[b]) for b in VALUES}
           for a in VALUES}
    (run_dir / "neurons").mkdir(exist_ok=True)
    (run_dir / "neurons" / f"{models[0]}.json").write_text(json.dumps(
        {"meta": {}, "layer_sizes": [40] * 4, "values": per_value, "jaccard": jac}))
    for e in edits:
        if e["model"] != models[-1] or e["method"] != "neva":
            continue
        ids = sorted(sets[e["value"]])
        n = len(ids)
        vn = ValueNeurons(torch.tensor([i for i, _ in ids]), torch.tensor([j for _, j in ids]),
                          torch.ones(n), torch.ones(n), torch.ones(n))
        path = run_dir / "best_edits" / e["model"] / f"{e['value']}-neva.safetensors"
        NeuronMap({e["value"]: vn}, [40] * 4, {"trial": e["trial"]}).save(path)


def small_scenarios(path: Path, search: int = 8, test: int = 8) -> Path:
    """A scenario file (``data.scenarios``) holding the first ``search`` search-split and
    ``test`` test-split scenarios of the built-in file: a held-out pass scores every test
    scenario, and 8 of the 36 keep a tiny sweep's pass to seconds."""
    rows = load_records("scenarios").rows
    kept = ([r for r in rows if r.get("split") != "test"][:search]
            + [r for r in rows if r.get("split") == "test"][:test])
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    return path


class StatsRef:
    """Stands in for the Ray object reference of a replica's statistics in a direct call of
    a worker function (worker._stats reads ``.hex()``; tests set ``worker._STATS``)."""

    def __init__(self, key: str = "test-stats"):
        self.key = key

    def hex(self) -> str:
        return self.key
