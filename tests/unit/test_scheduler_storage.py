"""A finished trial's attributes reach the storage in one write (storage.set_user_attrs),
and the scheduler's bookkeeping for many replicas (no Ray, no timing)."""

from __future__ import annotations

import concurrent.futures

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy import event

from neva_sweep.sweep import storage as sweep_storage
from neva_sweep.sweep.plan import StudyKey
from neva_sweep.sweep.scheduler import Scheduler
from neva_sweep.sweep.storage import open_storage, set_user_attrs
from neva_sweep.sweep.studies import open_studies

ATTRS = {"alignment": 0.25, "csr_edited": {"power": 0.5}, "replica": "a#0", "retried": False,
         "duration_s": None, "ci": [0.1, 0.3]}
CONSTRAINTS = {"kl": -0.09, "accuracy_drop": 0.2}


@pytest.fixture(params=["memory", "sqlite", "journal"])
def url(request, tmp_path):
    return {"memory": None, "sqlite": f"sqlite:///{tmp_path}/o.db",
            "journal": f"journal:///{tmp_path}/o.log"}[request.param]


def _study(url):
    storage = optuna.storages.InMemoryStorage() if url is None else open_storage(url)
    return optuna.create_study(storage=storage, study_name="s", directions=["maximize"])


def test_set_user_attrs_stores_what_one_call_per_attribute_stores(url):
    study = _study(url)
    batched, single = study.ask(), study.ask()
    set_user_attrs(batched, ATTRS, CONSTRAINTS)
    for k, v in CONSTRAINTS.items():
        single.set_constraint(k, v)
    for k, v in ATTRS.items():
        single.set_user_attr(k, v)
    assert batched.user_attrs == single.user_attrs == ATTRS  # the Trial's own copy too
    assert batched._cached_frozen_trial.system_attrs == single._cached_frozen_trial.system_attrs
    study.tell(batched, [1.0])
    study.tell(single, [1.0])
    if url is not None:  # read back by a fresh storage object (the journal replays its log)
        study = optuna.load_study(study_name="s", storage=open_storage(url))
    a, b = study.get_trials()
    assert a.user_attrs == b.user_attrs == ATTRS
    assert a.system_attrs == b.system_attrs and a.constraints == b.constraints == CONSTRAINTS


def test_set_user_attrs_on_a_finished_trial_raises_as_set_user_attr_does(url):
    study = _study(url)
    trial = study.ask()
    study.tell(trial, [1.0])
    with pytest.raises(RuntimeError):
        trial.set_user_attr("x", 1)
    with pytest.raises(RuntimeError):
        set_user_attrs(trial, {"x": 1, "y": 2})


def test_a_nan_constraint_raises_as_set_constraint_does(url):
    trial = _study(url).ask()
    with pytest.raises(ValueError, match="NaN is not allowed"):
        set_user_attrs(trial, ATTRS, {"kl": float("nan")})


def test_set_user_attrs_is_one_transaction_in_sqlite(tmp_path):
    study = _study(f"sqlite:///{tmp_path}/o.db")
    trial = study.ask()
    commits = []
    event.listen(study._storage._backend.engine, "commit", lambda conn: commits.append(1))
    set_user_attrs(trial, ATTRS, CONSTRAINTS)
    assert len(commits) == 1


def test_set_user_attrs_takes_the_public_route_when_optuna_internals_differ(tmp_path,
                                                                            monkeypatch):
    def moved(*args):
        raise AttributeError("'RDBStorage' object has no attribute 'scoped_session'")

    monkeypatch.setattr(sweep_storage, "_rdb_write", moved)
    study = _study(f"sqlite:///{tmp_path}/o.db")
    trial = study.ask()
    set_user_attrs(trial, ATTRS, CONSTRAINTS)
    (t,) = study.get_trials()
    assert t.user_attrs == ATTRS and t.constraints == CONSTRAINTS


# -- the scheduler with many replicas of few models, on a real SQLite storage ----------------
class DoneBackend:
    """Handles are concurrent futures, done when submitted."""

    def wait(self, handles, timeout):
        return [h for h in handles if h.done()]

    def get(self, handle):
        return handle.result()


class Replica:
    tp_size = 1

    def __init__(self, model: str, i: int):
        self.model, self.name, self.batches = model, f"{model}#{i}", 0

    def submit(self, trials):
        self.batches += 1
        fut = concurrent.futures.Future()
        fut.set_result([{"alignment": t["params"]["strength"] / 10, "nlr": 0.1, "kl": 0.01}
                        if t["value"] != "power" else {"error": "ValueError: no edit"}
                        for t in trials])
        return fut

    def restart(self):
        raise RuntimeError("no restarts here")


def test_scheduler_with_many_replicas_stores_every_trial_with_its_attributes(config, tmp_path):
    search = config("search.n_trials=3", "search.max_failures=2").search
    keys = [StudyKey(m, v, "neva") for m in ("a", "b") for v in ("power", "tradition")]
    states = open_studies(keys, open_storage(f"sqlite:///{tmp_path}/o.db"), search)
    workers = [Replica(m, i) for m in ("a", "b") for i in range(4)]
    sched = Scheduler(states, workers, search, progress=False, backend=DoneBackend())
    sched.run()
    assert sched.n_inflight == 0 and not sched.inflight
    assert all(w.batches for w in workers)  # ties go round-robin: every replica had a turn
    for s in states:
        trials = s.study.get_trials()
        if s.key.value == "power":
            assert trials and all(t.state == TrialState.FAIL for t in trials)
            assert all(t.user_attrs["error"] == "ValueError: no edit" and
                       t.user_attrs["replica"].startswith(s.key.model) for t in trials)
        else:
            assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
            for t in trials:
                assert {"alignment", "kl", "params", "replica", "retried", "batch_wall_s"} <= \
                    set(t.user_attrs)
                assert t.user_attrs["alignment"] == t.params["strength"] / 10
