"""The contract of neva_sweep/sweep/storage.py, the sweep's one door to Optuna internals.

Every function gives the same result, read back through Optuna's public API, on each
storage: RDB (an SQLite file), Journal, InMemory, and SQLite by the public route (every
``_fast_*`` function raising ``AttributeError``, as with an Optuna whose internals
moved). Persistent storages are read back by a fresh storage object (the journal replays
its log). The ``routes`` fixture records which route each call took, so a fast path that
silently stopped being taken shows here too. Real Optuna storages, no mocks of storage.py.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import BaseStorage, InMemoryStorage, JournalStorage, RDBStorage
from optuna.trial import TrialState
from sqlalchemy import event

from neva_sweep.sweep import storage as sweep_storage
from neva_sweep.sweep.storage import (
    distribution_contains,
    open_storage,
    set_stale_user_attr,
    set_user_attrs,
)
from neva_sweep.sweep.studies import STALE_ERROR, fail_stale

optuna.logging.set_verbosity(optuna.logging.WARNING)
PACKAGE = Path(__file__).resolve().parents[2] / "neva_sweep"
ATTRS = {"alignment": 0.25, "csr_edited": {"power": 0.5}, "replica": "a#0", "retried": False,
         "duration_s": None, "ci": [0.1, 0.3]}
CONSTRAINTS = {"kl": -0.09, "accuracy_drop": 0.2}
FAST = sorted(n for n in vars(sweep_storage) if n.startswith("_fast_"))
MOVED = "moved"  # a routes entry: the fast path raised AttributeError (the public route ran)


@dataclass
class Case:
    kind: str  # sqlite | journal | memory | public (SQLite by the public route)
    url: str | None  # None: in memory
    storage: BaseStorage

    def reload(self, name: str) -> optuna.Study:
        """Study ``name`` as a new reader sees it: a fresh storage object when persistent."""
        storage = self.storage if self.url is None else open_storage(self.url)
        return optuna.load_study(study_name=name, storage=storage)

    def study(self, name: str = "s") -> optuna.Study:
        return optuna.create_study(storage=self.storage, study_name=name,
                                   directions=["maximize"])


def _moved(*args):
    raise AttributeError("a future Optuna: the internal name is gone")


@pytest.fixture(params=["sqlite", "journal", "memory", "public"])
def case(request, tmp_path, monkeypatch) -> Case:
    url = {"sqlite": f"sqlite:///{tmp_path}/optuna.db", "public": f"sqlite:///{tmp_path}/optuna.db",
           "journal": f"journal:///{tmp_path}/optuna.log", "memory": None}[request.param]
    if request.param == "public":
        for name in FAST:
            monkeypatch.setattr(sweep_storage, name, _moved)
    return Case(request.param, url, InMemoryStorage() if url is None else open_storage(url))


@pytest.fixture
def routes(case, monkeypatch) -> dict[str, list]:
    """``{fast function: [what each call returned, or MOVED]}`` for the calls a test makes."""
    taken: dict[str, list] = {name: [] for name in FAST}

    def spy(name, real):
        def call(*args):
            try:
                out = real(*args)
            except (AttributeError, ImportError):
                taken[name].append(MOVED)
                raise
            taken[name].append(out)
            return out
        return call

    for name in FAST:
        monkeypatch.setattr(sweep_storage, name, spy(name, getattr(sweep_storage, name)))
    return taken


def test_the_fast_paths_are_the_ones_this_contract_knows():
    assert FAST == ["_fast_contains", "_fast_set_user_attrs", "_fast_trial_id", "_fast_writer"]


def test_every_function_of_storage_py_has_its_contract_here():
    covered = {"open_storage", "set_user_attrs", "set_stale_user_attr", "distribution_contains"}
    assert set(sweep_storage.__all__) == covered, "a new storage.py function needs its contract"


# -- open_storage ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", [RDBStorage, JournalStorage])
def test_open_storage_reads_back_what_was_written(kind, tmp_path):
    url = (f"sqlite:///{tmp_path}/optuna.db" if kind is RDBStorage
           else f"journal:///{tmp_path}/optuna.log")
    storage = open_storage(url)
    assert isinstance(storage, kind)
    study = optuna.create_study(storage=storage, study_name="m/v/neva",
                                directions=["maximize", "minimize"])
    study.set_user_attr("value", "v")
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    study.tell(trial, [1.0, 2.0])
    again = optuna.load_study(study_name="m/v/neva", storage=open_storage(url))
    assert [d.name for d in again.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert again.user_attrs == {"value": "v"}
    (t,) = again.get_trials()
    assert t.state == TrialState.COMPLETE and t.values == [1.0, 2.0]
    assert t.params == trial.params


# -- set_user_attrs ----------------------------------------------------------------------------
def test_set_user_attrs_stores_what_one_public_call_per_attribute_stores(case, routes):
    study = case.study()
    batched, single = study.ask(), study.ask()
    set_user_attrs(batched, ATTRS, CONSTRAINTS)
    for k, v in CONSTRAINTS.items():
        single.set_constraint(k, v)
    for k, v in ATTRS.items():
        single.set_user_attr(k, v)
    assert batched.user_attrs == single.user_attrs == ATTRS  # the Trial's own copy
    study.tell(batched, [1.0])
    study.tell(single, [1.0])
    a, b = case.reload("s").get_trials()
    assert a.user_attrs == b.user_attrs == ATTRS
    assert a.system_attrs == b.system_attrs and a.constraints == b.constraints == CONSTRAINTS
    assert a.state == b.state == TrialState.COMPLETE
    # one write on the storages the fast path knows; one call per attribute elsewhere
    fast = {"sqlite": True, "journal": True, "memory": False, "public": MOVED}[case.kind]
    assert routes["_fast_set_user_attrs"] == [fast]


def test_set_user_attrs_is_one_transaction_in_sqlite(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path}/optuna.db")
    trial = optuna.create_study(storage=storage, study_name="s").ask()
    commits = []
    event.listen(storage.engine, "commit", lambda conn: commits.append(1))
    set_user_attrs(trial, ATTRS, CONSTRAINTS)
    assert len(commits) == 1


def test_set_user_attrs_with_nothing_to_set_writes_nothing(case, routes):
    study = case.study()
    trial = study.ask()
    set_user_attrs(trial, {})
    assert routes["_fast_set_user_attrs"] == []
    (t,) = case.reload("s").get_trials()
    assert t.user_attrs == {} and t.system_attrs == {}


def test_set_user_attrs_on_a_finished_trial_raises_as_set_user_attr_does(case):
    study = case.study()
    trial = study.ask()
    study.tell(trial, [1.0])
    with pytest.raises(RuntimeError):
        trial.set_user_attr("x", 1)
    with pytest.raises(RuntimeError):
        set_user_attrs(trial, {"x": 1, "y": 2}, {"kl": 0.1})
    (t,) = case.reload("s").get_trials()
    assert t.user_attrs == {} and t.system_attrs == {}


def test_bad_constraints_raise_as_set_constraint_does(case):
    trial = case.study().ask()
    with pytest.raises(ValueError, match="NaN is not allowed"):
        set_user_attrs(trial, ATTRS, {"kl": float("nan")})
    with pytest.raises(TypeError, match="supposed to be a float"):
        set_user_attrs(trial, ATTRS, {"kl": "high"})


def test_a_constraint_set_twice_keeps_its_first_value_as_set_constraint_does(case):
    study = case.study()
    trial = study.ask()
    set_user_attrs(trial, {"a": 1}, {"kl": 0.5})
    with pytest.warns(UserWarning, match="already set"):
        set_user_attrs(trial, {"a": 2}, {"kl": 0.7})
    study.tell(trial, [1.0])
    (t,) = case.reload("s").get_trials()
    assert t.user_attrs == {"a": 2} and t.constraints == {"kl": 0.5}


# -- set_stale_user_attr -----------------------------------------------------------------------
def test_set_stale_user_attr_writes_to_another_drivers_running_trial(case, routes):
    dead = case.study()
    dead.ask({"x": FloatDistribution(0.0, 1.0)})
    dead.ask()
    dead.tell(1, [1.0])
    # the new driver sees the dead one's trial only as a FrozenTrial read from the storage
    storage = case.storage if case.url is None else open_storage(case.url)
    study = optuna.load_study(study_name="s", storage=storage)
    (running,) = study.get_trials(states=(TrialState.RUNNING,))
    set_stale_user_attr(study, running, "error", "stale", storage)
    study.tell(running.number, state=TrialState.FAIL)
    a, b = case.reload("s").get_trials()
    assert (a.state, a.user_attrs) == (TrialState.FAIL, {"error": "stale"})
    assert (b.state, b.user_attrs) == (TrialState.COMPLETE, {})
    (route,) = routes["_fast_trial_id"]
    assert (route == MOVED) == (case.kind == "public")


def test_fail_stale_marks_running_trials_failed_with_the_stale_error(case):
    study = case.study()
    study.ask()
    assert fail_stale(case.reload("s"), case.storage) == [0]
    (t,) = case.reload("s").get_trials()
    assert (t.state, t.user_attrs) == (TrialState.FAIL, {"error": STALE_ERROR})


def test_fail_stale_enqueues_a_stale_warm_start_again(case):
    study = case.study()
    study.enqueue_trial({"x": 0.25})
    study.ask({"x": FloatDistribution(0.0, 1.0)})  # the start, killed mid-flight
    study.ask({"x": FloatDistribution(0.0, 1.0)})  # a sampled trial, killed too
    assert fail_stale(case.reload("s"), case.storage) == [0, 1]
    trials = case.reload("s").get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL, TrialState.WAITING]
    assert trials[2].system_attrs["fixed_params"] == {"x": 0.25}  # only the start comes back


def test_the_public_route_of_set_stale_user_attr_needs_the_storage(monkeypatch, tmp_path):
    monkeypatch.setattr(sweep_storage, "_fast_trial_id", _moved)
    storage = open_storage(f"sqlite:///{tmp_path}/optuna.db")
    study = optuna.create_study(storage=storage, study_name="s")
    study.ask()
    (running,) = study.get_trials()
    with pytest.raises(RuntimeError, match="pass the storage"):
        set_stale_user_attr(study, running, "error", "stale")


# -- distribution_contains ---------------------------------------------------------------------
INSIDE = [
    (FloatDistribution(0.0, 1.0), 0.5, True),
    (FloatDistribution(0.0, 1.0), 1.0, True),
    (FloatDistribution(0.0, 1.0), 1.5, False),
    (FloatDistribution(1e-4, 1.0, log=True), 1e-5, False),
    (FloatDistribution(0.0, 1.0, step=0.25), 0.75, True),
    (FloatDistribution(0.0, 1.0, step=0.25), 0.3, False),
    (IntDistribution(1, 9, step=2), 5, True),
    (IntDistribution(1, 9, step=2), 4, False),
    (IntDistribution(1, 9), 10, False),
    (CategoricalDistribution(["pos", "both", None]), "both", True),
    (CategoricalDistribution(["pos", "both", None]), None, True),
]


def test_distribution_contains_agrees_with_optuna(case, routes):
    for dist, value, inside in INSIDE:
        assert distribution_contains(dist, value) is inside, (dist, value)
    for dist, value in ((CategoricalDistribution(["pos"]), "neg"),
                        (FloatDistribution(0.0, 1.0), "half"),
                        (FloatDistribution(1e-4, 1.0, log=True), 0.0)):
        with pytest.raises(ValueError):
            distribution_contains(dist, value)
    calls = routes["_fast_contains"]
    assert len(calls) == len(INSIDE)
    assert all(c == MOVED for c in calls) if case.kind == "public" else MOVED not in calls


# -- nothing else touches Optuna internals -----------------------------------------------------
def _private_uses(tree: ast.AST) -> list[str]:
    """Optuna private imports and private attributes (but of self/cls) in one module."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("optuna"):
            parts = [*node.module.split("."), *(a.name for a in node.names)]
            out += [f"from {node.module} import _" for p in parts if p.startswith("_")][:1]
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names
                    if a.name.startswith("optuna") and "._" in a.name]
        elif isinstance(node, ast.Attribute) and _private(node.attr) \
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
            out.append(f"{ast.unparse(node)} (line {node.lineno})")
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("getattr",
                                                                                "setattr"):
            name = node.args[1] if len(node.args) > 1 else None
            if isinstance(name, ast.Constant) and _private(str(name.value)):
                out.append(f"{ast.unparse(node)} (line {node.lineno})")
    return out


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _imports_optuna(tree: ast.AST) -> bool:
    return any(isinstance(n, ast.Import) and any(a.name.split(".")[0] == "optuna"
                                                 for a in n.names)
               or isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == "optuna"
               for n in ast.walk(tree))


def test_no_module_but_storage_py_touches_optuna_internals():
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        if path.name != "storage.py" and _imports_optuna(tree) and (uses := _private_uses(tree)):
            found[str(path.relative_to(PACKAGE))] = uses
    assert not found, f"Optuna internals outside neva_sweep/sweep/storage.py: {found}"
    assert _private_uses(ast.parse((PACKAGE / "sweep" / "storage.py").read_text()))


def test_the_checker_sees_the_kinds_of_private_use():
    src = ("import optuna.storages._rdb.models\nfrom optuna.trial._trial import X\n"
           "from optuna.trial import _Y\nstudy._storage\ngetattr(s, '_backend', s)\n"
           "self._ok\nx.__class__\n")
    assert len(_private_uses(ast.parse(src))) == 5
