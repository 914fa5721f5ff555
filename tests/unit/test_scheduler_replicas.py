"""The scheduler's bookkeeping for many replicas of few models, on a real SQLite storage
(no Ray, no timing). What storage.set_user_attrs writes is storage.py's contract:
test_storage_contract.py."""

from __future__ import annotations

import concurrent.futures

from optuna.trial import TrialState

from neva_sweep.sweep.plan import StudyKey
from neva_sweep.sweep.scheduler import Scheduler
from neva_sweep.sweep.storage import open_storage
from neva_sweep.sweep.studies import open_studies


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


def test_a_study_s_best_alignment_is_its_best_within_the_budgets(config, tmp_path):
    """The bar's and the summary's best alignment: every other trial is over the KL budget
    (0.1) with the higher alignment; neither the scheduler nor a reopened study shows it."""
    search = config("search.n_trials=6", "search.trials_per_batch=1").search
    keys = [StudyKey("a", v, "neva") for v in ("tradition", "hedonism")]
    url = f"sqlite:///{tmp_path}/o.db"
    states = open_studies(keys, open_storage(url), search)

    seen: dict[str, int] = {}  # trials sent per value: every second one is over the budget

    class OverBudget(Replica):
        def submit(self, trials):
            out = []
            for t in trials:
                over = seen.setdefault(t["value"], 0) % 2 == 1
                seen[t["value"]] += 1
                out.append({"alignment": t["params"]["strength"] / 10 + (1.0 if over else 0.0),
                            "nlr": 0.1, "kl": 0.5 if over else 0.01})
            fut = concurrent.futures.Future()
            fut.set_result(out)
            return fut

    Scheduler(states, [OverBudget("a", 0)], search, progress=False,
              backend=DoneBackend()).run()
    reopened = {s.key: s.best_alignment for s in open_studies(keys, open_storage(url), search)}
    for s in states:
        done = s.study.get_trials(states=(TrialState.COMPLETE,))
        within = [t.user_attrs["alignment"] for t in done if t.user_attrs["kl"] <= 0.1]
        assert within and len(within) < len(done)
        assert s.best_alignment == reopened[s.key] == max(within)
        assert s.best_alignment < max(t.user_attrs["alignment"] for t in done)


def test_a_repeated_setting_is_told_its_earlier_result_not_run_again(config, tmp_path):
    """prompt searches three wordings: a study of 8 trials starts at each (warm start) and
    tells the later draws of a wording the first result; trials.csv names the source."""
    from neva_sweep.sweep.front import trial_row
    from neva_sweep.sweep.warm import warm_start

    search = config("search.n_trials=8", "search.trials_per_batch=1").search
    key = StudyKey("a", "tradition", "prompt")
    states = open_studies([key], open_storage(f"sqlite:///{tmp_path}/o.db"), search)
    assert warm_start(states, search) == 3
    evaluated = []  # the strengths the replica was sent, in order

    class Counting(Replica):
        def submit(self, trials):
            evaluated.extend(t["params"]["strength"] for t in trials)
            return super().submit(trials)

    replica = Counting("a", 0)
    Scheduler(states, [replica], search, progress=False, backend=DoneBackend()).run()

    trials = states[0].study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 8
    assert evaluated[:3] == [3, 2, 1]  # the starts, strongest first
    repeats = [t for t in trials if t.user_attrs.get("repeat_of") is not None]
    # in flight: at most 2 asked before their results are told, so at most 2 run twice
    assert len(evaluated) + len(repeats) == 8 and len(evaluated) <= 5 and len(repeats) >= 3
    for t in repeats:
        source = trials[t.user_attrs["repeat_of"]]
        assert "repeat_of" not in source.user_attrs and source.params == t.params
        assert t.values == source.values and t.user_attrs["alignment"] == t.params["strength"] / 10
        assert t.user_attrs["duration_s"] == 0.0
        assert trial_row(("a", "tradition", "prompt"), "s", t, None)["repeat_of"] == source.number
    assert trial_row(("a", "tradition", "prompt"), "s", trials[0], None)["repeat_of"] is None


def test_a_study_with_no_feasible_trial_says_which_budget_every_trial_broke(config, tmp_path):
    import json

    from neva_sweep.sweep.outputs import Outputs
    from neva_sweep.sweep.plan import ModelEntry

    class OverBudget(Replica):  # every edit costs KL 0.5 (the budget: search.max_kl 0.1)
        def submit(self, trials):
            fut = concurrent.futures.Future()
            fut.set_result([{"alignment": 0.01, "nlr": 0.1, "kl": 0.5 + t["params"]["strength"]}
                            for t in trials])
            return fut

    search = config("search.n_trials=2", "search.max_kl=0.1").search
    states = open_studies([StudyKey("a", "power", "prompt")],
                          open_storage(f"sqlite:///{tmp_path}/o.db"), search)
    Scheduler(states, [OverBudget("a", 0)], search, progress=False, backend=DoneBackend()).run()
    Outputs(tmp_path, states, [ModelEntry("a", {"name": "a"})], search).write()
    (missing,) = json.loads((tmp_path / "best_edits.json").read_text())["missing"]
    lowest = min(0.5 + t.params.get("strength", 3) for t in states[0].study.get_trials())
    assert missing["reason"] == ("no COMPLETE trial meets the constraints (0 feasible; "
                                 f"lowest kl {lowest:.3g} > search.max_kl 0.1)")
