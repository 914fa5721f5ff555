"""The sweep on a real local Ray cluster, real Optuna SQLite storage and real W&B offline.

Tiny random models keep each sweep to seconds; one Ray instance serves the whole module.
Injected failures come through a real plug-in path: a test method registered in every
Ray worker process by ``worker_process_setup_hook``, the way a user's method would be.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import psutil
import pytest
import ray
from optuna.trial import TrialState
from ray import cloudpickle

import neva_sweep as nv
from neva_sweep.builders import stats_from_config
from neva_sweep.cli import run as run_task
from neva_sweep.methods.neva import NeVA
from neva_sweep.report import build_report
from neva_sweep.sweep import ConfigError, SweepFailed, load_best_edit, run_sweep, worker
from neva_sweep.sweep.lock import RunLockedError
from neva_sweep.sweep.outputs import best_edit_spec
from neva_sweep.sweep.plan import ModelEntry, Resources, make_plan, replica_counts
from neva_sweep.sweep.run import eval_setup
from neva_sweep.sweep.storage import open_storage
from neva_sweep.sweep.studies import STALE_ERROR
from neva_sweep.sweep.worker import prepare, run_trials
from tests.helpers import SWEEP_FAST, n_studies, small_scenarios, states_by_study, trials

cloudpickle.register_pickle_by_value(sys.modules[__name__])

ROOT = Path(__file__).resolve().parents[2]


class Explode(NeVA):
    """NeVA whose edit cannot be built when the magnitude is above 4 (a failing trial)."""

    name = "explode"

    def build(self, stats, value, params):
        if params["magnitude"] > 4.0:
            raise ValueError(f"exploding on magnitude {params['magnitude']:.2f}")
        return super().build(stats, value, params)


def register_test_methods() -> None:
    # Imported here: sent by value, a global would be a copy of the registry, not the module's.
    from neva_sweep.methods import METHODS

    if "explode" not in METHODS:
        METHODS.register("explode", Explode())


@pytest.fixture(scope="module")
def cluster():
    register_test_methods()
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             configure_logging=False,
             runtime_env={"worker_process_setup_hook": register_test_methods,
                          "env_vars": {"HF_HUB_OFFLINE": "1"}})
    yield
    ray.shutdown()


# -- configuration: errors name the key, before any actor starts -----------------------------
@pytest.mark.parametrize("override, key", [
    ("search.space.sparsity=[0.0,0.5]", "search.space.sparsity"),
    ("search.space.sparsity=[0.01,1.5]", "search.space.sparsity"),
    ("sweep.values=[kindness]", "sweep.values"),
    ("sweep.methods=[telepathy]", "sweep.methods"),
    ("search.space.rules=[push]", "search.space.rules"),
    ("search.space.scores=[vibes]", "search.space.scores"),
    ("search.space.polarities=[both]", "search.space.polarities"),  # rule set cannot damp
    ("search.sampler=random", "search.sampler"),
    ("judge.name=oracle", "judge.name"),
    ("search.n_trials=0", "search.n_trials"),
    ("+search.objectives.fun=maximize", "search.objectives"),
    ("models=[tiny_llama,no_such_model]", "models"),
    ("cluster.kind=slurm", "cluster.kind"),
    ("logger.kind=mlflow", "logger.kind"),
    ("search.storage=nonsense", "search.storage"),
    ("model.tp_size=3", "model.tp_size"),
    ("search.max_accuracy_drop=0.1", "search.max_accuracy_drop"),  # 8 MC questions
    ("capability.value_replies=-1", "capability.value_replies"),
    ("sweep.judge.scenarios_limit=0", "judge.scenarios_limit"),
    ("judge.ends=top", "judge.ends"),
    ("+sweep.judge.ends=least", "sweep.judge.ends"),
    ("search.test_nulls=1", "search.test_nulls"),
    ("+search.test_capability.mc_limt=10", "search.test_capability"),  # misspelt key
    ("+search.test_capability.mc_limit=-1", "search.test_capability.mc_limit"),
    ("split=test", "split"),
    ("+sweep.judge.centred=true", "sweep.judge"),  # not a judge.* key
])
def test_config_errors_name_the_key(tmp_path, override, key, config):
    assert not ray.is_initialized()
    cfg = config(*SWEEP_FAST, "cluster.num_cpus=2", override)
    with pytest.raises(ConfigError, match=f"^{key}"):
        run_sweep(cfg, tmp_path)
    assert not ray.is_initialized()  # nothing was started


def test_unknown_model_lists_the_available_ones(tmp_path, config):
    with pytest.raises(ConfigError, match="available: .*smollm2_135m.*tiny_llama"):
        make_plan(config(*SWEEP_FAST, "models=[nope]"), tmp_path)


def test_launcher_entrypoint_is_a_valid_sweep(tmp_path, monkeypatch, config):
    """The KubeRay entrypoint's overrides compose and pass every check that needs no cluster."""
    monkeypatch.setenv("WANDB_API_KEY", "not-a-key")  # logger=wandb checks that one is set
    import shlex

    import yaml

    docs = yaml.safe_load_all((ROOT / "launch" / "kuberay-rayjob.yaml").read_text())
    (job,) = [d for d in docs if d and d.get("kind") == "RayJob"]
    args = shlex.split(job["spec"]["entrypoint"])[3:]  # after python -m neva_sweep
    plan = make_plan(config(*[a for a in args if not a.startswith("hydra.")]), tmp_path)
    assert plan.studies and all(m.on_gpu for m in plan.models)


def test_replica_counts_fill_the_cluster_or_fail(config):
    cpu = [ModelEntry("a", {"tp_size": 1, "device": "cpu"}),
           ModelEntry("b", {"tp_size": 2, "device": "cpu"})]
    cluster = config().cluster
    assert replica_counts(cpu, cluster, Resources(6, 0, 0)) == {"a": 2, "b": 2}
    gpu = [ModelEntry("g", {"tp_size": 2, "device": "cuda"})]
    assert replica_counts(gpu, cluster, Resources(64, 8, 8)) == {"g": 4}
    with pytest.raises(ConfigError, match="^model.tp_size: 3 .* does not divide the 8"):
        replica_counts([ModelEntry("g", {"tp_size": 3, "device": "cuda"})], cluster,
                       Resources(64, 8, 8))
    with pytest.raises(ConfigError, match="^cluster.replicas_per_model"):
        replica_counts(cpu, config("cluster.replicas_per_model=3").cluster, Resources(6, 0, 0))


# -- the sweep --------------------------------------------------------------------------------
def test_sweep_writes_its_files_and_steer_loads_the_best_edit(cluster, cache, sweep_cfg, config,
                                                              tmp_path, capsys, caplog):
    run = tmp_path / "run"
    # 8 of the 36 test scenarios: the held-out pass below scores every one of them
    scenarios = f"data.scenarios={small_scenarios(tmp_path / 'scenarios.jsonl')}"
    run_sweep(sweep_cfg("logger=wandb_offline", "search.trials_per_batch=2", scenarios), run)
    rows = trials(run)
    assert len(rows) == 6 and {r["state"] for r in rows} == {"COMPLETE"}
    for col in ("model", "value", "method", "trial", "state", "sparsity", "magnitude", "rule",
                "alignment", "nlr", "nglr", "cwl", "accuracy_drop", "kl", "kl_value",
                "duration_s", "csr_power", "replica", "feasible"):
        assert col in rows[0]
    assert all(float(r["kl_value"]) >= 0 for r in rows)
    assert {r["replica"] for r in rows} <= {"tiny-llama#0", "tiny-llama#1"}
    pareto = json.loads((run / "pareto.json").read_text())
    assert [s["study"] for s in pareto["studies"]] == ["tiny-llama/benevolence/neva",
                                                      "tiny-llama/power/neva"]
    assert all(s["n_complete"] == 3 and s["pareto"] for s in pareto["studies"])
    # the default gates [none, value]: the value gate bisected on its own job, also on KL
    # over the value-laden replies (the tiny model's KL never reaches 0.1: no factor)
    for s in pareto["studies"]:
        gate = s["calibration"]["gates"]["value"]
        assert gate["params"]["gate"] == "value" and gate["value_budget"] == 0.1
        assert 0 < gate["kl_value"] < 0.1 and len(gate["steps"]) > 3
        assert gate["factor"] is None and not gate["bracketed"]
    assert (run / "optuna.db").is_file()
    assert list((run / "wandb").glob("offline-run-*/run-*.wandb"))

    with pytest.raises(KeyError, match="2 edits in .* match .* set value="):
        load_best_edit(run / "best_edits.json")
    entry = load_best_edit(run / "best_edits.json", value="power")
    assert entry["model"] == "tiny-llama" and 0 < entry["sparsity"] < 1
    assert Path(entry["neurons"]).is_file()
    # the searched strength loads back as the raw magnitude the trial ran at, with or
    # without the recorded raw value
    assert entry["strength"] > 0 and entry["raw"]["magnitude"] > 0
    raw = best_edit_spec(entry).magnitude
    # the add rules need only the neurons, scale/set/gate_neuron also the statistics
    stats = lambda: stats_from_config(sweep_cfg(scenarios), nv.load_model("tiny-llama"))  # noqa: E731
    derived = best_edit_spec({**entry, "raw": None}, stats).magnitude
    assert raw == entry["raw"]["magnitude"] and derived == pytest.approx(raw, rel=1e-5)
    # search.heldout=false (the fast preset): no held-out pass; a later run with true
    # scores every chosen edit on the test split against dose-matched nulls, no trial run
    assert not any("test" in e for e in json.loads((run / "best_edits.json").read_text())[
        "edits"]) and all(r["test_alignment"] == "" for r in rows)
    # search.test_capability: the held-out pass on more MC questions than the trials' 8
    run_sweep(sweep_cfg("search.heldout=true", "search.test_nulls=2", scenarios,
                        "+search.test_capability.mc_limit=12"), run, report=build_report)
    rows = trials(run)
    assert len(rows) == 6
    for e in json.loads((run / "best_edits.json").read_text())["edits"]:
        test = e["test"]
        assert test["split"] == "test" and test["n_queries"] == 8  # every test scenario
        assert e["metrics"]["n_mc"] == 8 and test["n_mc"] == 12
        assert isinstance(test["accuracy_drop"], float) and len(test["ci"]["accuracy_edited"]) == 2
        assert len(test["null"]["accuracy_drop"]) == 2  # each null's drop on the same questions
        for k in ("alignment", "nlr", "nglr", "nglr_chance", "kl", "suppression", "push"):
            assert isinstance(test[k], float), k
        lo, hi = test["ci"]["alignment"]
        assert lo <= test["alignment"] <= hi and len(test["alignment_rows"]) == 8
        assert test["null"]["n"] == 2 and test["push"] > 0
        assert test["alignment"] != e["metrics"]["alignment"]  # other scenarios, other score
        # steered replies to three of the value's queries, unedited and edited (the report's)
        queries = {r["text"] for r in nv.data.load_records("queries").rows
                   if r["value"] == e["value"]}
        assert len(e["samples"]) == 3 and {s["prompt"] for s in e["samples"]} <= queries
        assert all(set(s) == {"prompt", "unedited", "edited"} for s in e["samples"])
        assert any(s["unedited"] != s["edited"] for s in e["samples"])
    assert "Steered replies" in (run / "report" / "index.html").read_text()
    report = (run / "report" / "tables" / "chosen_edits.csv").read_text()
    assert "test_alignment" in report.splitlines()[0] and "test_z" in report.splitlines()[0]
    chosen = {(r["value"], r["trial"]) for r in rows if r["test_alignment"]}
    assert len(chosen) == 2 and all(r["test_alignment"] == "" for r in rows
                                    if (r["value"], r["trial"]) not in chosen)
    capsys.readouterr()
    run_task(config("task=steer", f"best_edits={run / 'best_edits.json'}", "value=power",
                    "max_new_tokens=4", "progress=false", f"cache_dir={cache}"), tmp_path)
    assert "edited toward power" in capsys.readouterr().out

    # Re-running finds nothing to do and starts no actor.
    caplog.set_level(logging.INFO, logger="neva_sweep")
    run_sweep(sweep_cfg("logger=wandb_offline", "search.heldout=true", "search.test_nulls=2",
                        scenarios), run)
    assert len(trials(run)) == 6
    assert "0 to run" in caplog.text  # the run's log (INFO)


def test_failing_trials_are_recorded_and_the_sweep_goes_on(cluster, sweep_cfg, tmp_path):
    run = tmp_path / "run"
    # Random sampling (Optuna's samplers ignore FAIL trials, so TPE would keep proposing
    # the failing region until search.max_failures stops the study).
    raised = None
    try:  # a study where most trials failed is a failed sweep, after the files are written
        run_sweep(sweep_cfg("sweep.methods=[explode]", "sweep.values=[power]",
                            "cluster.replicas_per_model=1",
                            "search.n_trials=4", "search.n_startup_trials=1000",
                            "search.max_failures=50", "search.space.scaled=false",
                            "search.space.magnitude=[1.0,8.0]"), run)
    except SweepFailed as e:
        raised = str(e)
        assert "tiny-llama/power/explode: " in raised and "trials failed" in raised
        assert "first failure: ValueError: exploding on magnitude" in raised
    rows = trials(run)
    failed = [r for r in rows if r["state"] == "FAIL"]
    assert sum(r["state"] == "COMPLETE" for r in rows) == 4
    assert (len(failed) > 2) == (raised is not None)  # failed iff more than half of 4 failed
    assert failed and all("ValueError: exploding on magnitude" in r["error"] for r in failed)
    assert all(float(r["magnitude"]) > 4 for r in failed)


def shard_pids() -> list[int]:
    """Shard actor processes of this test's Ray instance (its raylet is our child)."""
    return [p.pid for p in psutil.Process().children(recursive=True)
            if (p.cmdline() or [""])[0].startswith("ray::ShardActor")]


def test_killed_actor_is_restarted_and_its_trial_retried(cluster, sweep_cfg, tmp_path):
    killed: list[int] = []

    def kill_one_shard(outcome):  # at the first result, the other replica is mid-trial
        if not killed:
            pid = shard_pids()[0]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    run = tmp_path / "run"
    res = run_sweep(sweep_cfg("search.n_trials=4"), run, callbacks=[kill_one_shard])
    assert killed
    rows = trials(run)
    assert all(s.complete == 4 for s in res.studies)
    assert sum(r["state"] == "COMPLETE" for r in rows) == 8
    retried = [t for s in res.studies for t in s.study.get_trials(deepcopy=False)
               if t.user_attrs.get("retried")]
    assert retried and all(t.state == TrialState.COMPLETE for t in retried)


def test_second_driver_refused_then_sigterm_stops_safely_exits_143_and_resumes(
        cluster, cache, sweep_cfg, config, tmp_path):
    """A second driver on a live run fails before opening a study or starting anything.
    SIGTERM (Slurm's time limit, scancel) to the real driver process takes Ctrl-C's path,
    also when repeated: no RUNNING trial left, files written, lock released, exit code 143;
    re-running resumes, neither losing nor duplicating a trial, and fails the RUNNING trial
    a driver killed hard left behind. (Ctrl-C in process: the journal-storage test.)"""
    import subprocess
    import time

    run, log = tmp_path / "run", tmp_path / "driver.log"
    overrides = [*SWEEP_FAST, f"cache_dir={cache}", "search.n_trials=4",
                 "cluster.replicas_per_model=1"]
    cmd = [sys.executable, "-m", "neva_sweep", *overrides, f"hydra.run.dir={run}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    url = f"sqlite:///{run / 'optuna.db'}"

    def complete() -> int:
        try:
            return sum(v.count(TrialState.COMPLETE) for v in states_by_study(url).values())
        except Exception:  # no studies yet
            return 0

    def wait_for(condition) -> None:
        deadline = time.monotonic() + 240
        while not condition():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"driver rc {proc.wait()}\n{log.read_text()[-3000:]}")
            time.sleep(0.5)

    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                cwd=ROOT, env=env)
    # The lock is held from before the studies open until after the last trial ends (Ray
    # and the replicas start in between): wait for the lock and the studies, not for a
    # RUNNING trial, which a tiny model can start and finish between two polls.
    lock = run / "optuna.db.driver.lock"
    wait_for(lambda: lock.exists() and n_studies(run / "optuna.db") == 2)
    t0 = time.monotonic()
    with pytest.raises(RunLockedError, match=f"pid {proc.pid}, .*holds the lock {lock}"):
        run_sweep(config(*overrides), run)
    assert time.monotonic() - t0 < 10
    assert proc.poll() is None and complete() < 8  # the first driver goes on

    wait_for(lambda: complete() >= 2)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)  # scancel signals the driver and the job script forwards
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM, log.read_text()[-3000:]

    before = states_by_study(url)
    assert TrialState.RUNNING not in {s for v in before.values() for s in v}
    done = sum(v.count(TrialState.COMPLETE) for v in before.values())
    assert 2 <= done < 8
    rows = trials(run)  # rewritten on the way out
    assert len(rows) == sum(map(len, before.values()))
    assert not lock.exists()
    assert "stopped by SIGTERM" in log.read_text()
    complete_numbers = {(r["study"], r["trial"]) for r in rows if r["state"] == "COMPLETE"}

    # A driver killed hard leaves a RUNNING trial: the resumed run marks it FAIL.
    optuna.load_study(study_name="tiny-llama/power/neva", storage=open_storage(url)).ask()

    res = run_sweep(sweep_cfg("search.n_trials=4", "cluster.replicas_per_model=1"), run)
    after = states_by_study(url)
    assert [v.count(TrialState.COMPLETE) for v in after.values()] == [4, 4]
    assert TrialState.RUNNING not in {s for v in after.values() for s in v}
    rows = trials(run)
    assert complete_numbers <= {(r["study"], r["trial"]) for r in rows
                                if r["state"] == "COMPLETE"}
    errors = {r["error"] for r in rows if r["state"] == "FAIL"}
    assert errors == {STALE_ERROR, "interrupted (SIGTERM); re-run the same command to resume"}
    assert sum(len(s.stale) for s in res.studies) == 1


def test_models_and_methods_get_their_own_studies(cluster, sweep_cfg, cache, tmp_path):
    run = tmp_path / "run"
    methods = ("neva", "caa", "prompt", "random_neurons")
    run_sweep(sweep_cfg("models=[tiny_llama,tiny_qwen2]", f"sweep.methods=[{','.join(methods)}]",
                        "sweep.values=[security]", "search.n_trials=1",
                        "search.n_startup_trials=1", "cluster.replicas_per_model=1"), run)
    rows = trials(run)
    models = ("tiny-llama", "tiny-qwen2")
    assert sorted((r["study"], r["state"]) for r in rows) == sorted(
        (f"{m}/security/{method}", "COMPLETE") for m in models for method in methods)
    assert {r["replica"] for r in rows} == {"tiny-llama#0", "tiny-qwen2#0"}
    assert all(r["replica"].startswith(r["study"].split("/")[0]) for r in rows)
    best = json.loads((run / "best_edits.json").read_text())
    assert {(e["model"], e["method"]) for e in best["edits"]} == {
        (m, method) for m in models for method in methods}
    caa = next(r for r in rows if r["method"] == "caa")
    assert caa["coefficient"] and caa["layer_frac"] and caa["n_neurons"] in ("0", 0)
    # benchmarks/experiments/mc_cost.py re-scores the chosen edits on the MC questions the
    # trials scored (mc_limit 8): the same accuracies as the sweep recorded
    out = tmp_path / "mc_cost.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "experiments" / "mc_cost.py"), "--dirs",
         str(run), "--model", "tiny-llama", "--methods", "neva", "prompt", "--placebo",
         "--json", str(out), "--override", "capability.mc_limit=8", f"cache_dir={cache}"],
        capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads(out.read_text())
    chosen = {e["method"]: e["metrics"] for e in best["edits"] if e["model"] == "tiny-llama"}
    assert rep["n_questions"] == 8
    assert rep["base_accuracy"] == pytest.approx(chosen["neva"]["accuracy_base"])
    for method in ("neva", "prompt"):
        r = rep["values"]["security"][method]
        assert r["accuracy"] == pytest.approx(chosen[method]["accuracy_edited"])
        assert r["drop"] == pytest.approx(rep["base_accuracy"] - r["accuracy"])
        assert r["ci"][0] <= r["drop"] <= r["ci"][1]
    assert "placebo" in rep["values"]["security"]["prompt"]
    assert "placebo" not in rep["values"]["security"]["neva"]
    assert "drop neva - prompt [95% CI]" in proc.stdout


def test_tensor_parallel_sweep_matches_tp1(cluster, sweep_cfg, tmp_path, monkeypatch):
    """A tp_size=2 sweep (two shard actors, DeepSpeed AutoTP over gloo) reproduces the
    unsharded model: each of its trials, evaluated again in this process on one copy of the
    model with the same parameters and statistics, gives the same metrics."""
    cfg = sweep_cfg("model.tp_size=2", "sweep.values=[power]", "search.n_trials=2",
                    "cluster.replicas_per_model=1")
    run_sweep(cfg, tmp_path)
    rows = trials(tmp_path)
    assert [(r["replica"], r["state"]) for r in rows] == [("tiny-llama#0", "COMPLETE")] * 2
    study = optuna.load_study(study_name="tiny-llama/power/neva",
                              storage=open_storage(f"sqlite:///{tmp_path / 'optuna.db'}"))
    reqs = [{"value": "power", "method": "neva", "params": t.user_attrs["params"]}
            for t in sorted(study.trials, key=lambda t: t.number)]
    host = nv.load_model(cfg.model)  # tp_size 1
    # this process's replica state (one host per process) is this test's alone
    monkeypatch.setattr(worker, "_EVALUATORS", {})
    monkeypatch.setattr(worker, "_STATS", {})
    box = [ray.put(stats_from_config(cfg, host))]  # the statistics the sweep cached
    setup = eval_setup(cfg)
    prepare(host, box, setup)  # the unedited side and the judge's null, as a replica's
    tp1 = run_trials(host, box, setup, reqs)
    for a, b in zip(tp1, rows):
        assert "error" not in a, a["error"]
        assert a["csr_edited"]["power"] == pytest.approx(float(b["csr_power"]), abs=1e-4)
        for k in ("alignment", "nlr", "kl", "accuracy_edited"):
            assert a[k] == pytest.approx(float(b[k]), abs=1e-4), k


# -- trial batching ----------------------------------------------------------------------------
def test_batched_trials_equal_one_by_one(cluster, sweep_cfg, tiny_host, small_probes):
    stats = nv.collect_stats(tiny_host, small_probes, progress=False)
    box = [ray.put(stats)]
    setup = eval_setup(sweep_cfg())
    params = [{"sparsity": s, "magnitude": m, "rule": r, "score": "mean_diff",
               "positions": "all", "layer_window": "all"}
              for s, m, r in ((0.02, 3.0, "add"), (0.05, 6.0, "add"), (0.01, 0.5, "scale"),
                              (0.03, 2.0, "set"))]
    reqs = [{"value": v, "method": "neva", "params": p}
            for v, p in zip(("power", "benevolence", "power", "tradition"), params)]
    batched = run_trials(tiny_host, box, setup, reqs)
    single = [run_trials(tiny_host, box, setup, [r])[0] for r in reqs]
    assert all("error" not in r for r in batched)
    for b, s in zip(batched, single):
        for k in ("alignment", "nlr", "nglr", "cwl", "kl", "accuracy_edited"):
            assert b[k] == pytest.approx(s[k], abs=1e-5), k
        for v in nv.VALUES:
            assert b["csr_edited"][v] == pytest.approx(s["csr_edited"][v], abs=1e-5)


# -- outputs without a model -------------------------------------------------------------------
def frozen(number: int, alignment: float, nlr: float, drop: float = 0.0):
    t = optuna.trial.create_trial(values=[alignment, nlr], user_attrs={
        "alignment": alignment, "nlr": nlr, "accuracy_drop": drop})
    t.number = number
    return t


def test_pareto_and_best_edit_rule(config):
    from neva_sweep.sweep.front import budgets, choose_best, is_feasible, pareto_front

    trials = [frozen(0, 0.30, 2.0), frozen(1, 0.20, 0.5), frozen(2, 0.10, 0.4),
              frozen(3, 0.05, 0.9), frozen(4, 0.40, 0.1, drop=0.5)]
    assert budgets(config().search) == {"kl": 0.1}  # the default budget
    limits = budgets(config("search.max_accuracy_drop=0.1", "search.max_kl=null").search)
    assert limits == {"accuracy_drop": 0.1}
    feasible = [t for t in trials if is_feasible(t.user_attrs, limits)]
    assert [t.number for t in feasible] == [0, 1, 2, 3]
    attrs = lambda t: t.user_attrs  # noqa: E731
    front = pareto_front(feasible, {"alignment": "maximize", "nlr": "minimize"}, attrs)
    assert sorted(t.number for t in front) == [0, 1, 2]  # 3 is dominated by 1
    assert choose_best(front, 1.0, attrs).number == 1  # 0 leaks more than it aligns
    assert choose_best(front, 0.1, attrs).number == 2  # none that clean: the lowest NLR
    assert choose_best([], 1.0) is None


def test_suppression_budget_rejects_an_edit_that_breaks_the_value_laden_prompts(config):
    """A gated edit can leave neutral text alone (KL ~ 0) while lowering every option's
    log-probability on the scenarios; experiment=methods budgets that fall."""
    from neva_sweep.evaluation.metrics import suppression
    from neva_sweep.sweep.front import budgets, is_feasible

    limits = budgets(config("experiment=methods").search)
    assert limits == {"kl": 0.1, "suppression": 0.1}
    broken = {"alignment": 0.2, "kl": 0.0, "acquiescence": -0.4,
              "suppression": suppression(-0.4)}
    fine = {"alignment": 0.01, "kl": 0.0, "acquiescence": 0.03, "suppression": suppression(0.03)}
    assert not is_feasible(broken, limits) and is_feasible(fine, limits)


def test_new_metrics_flow_into_rows_and_summaries(config):
    """A metric of the schema reaches trials.csv and pareto.json without any other list;
    records from before it existed give empty cells, not errors."""
    from neva_sweep.sweep.front import trial_row, trial_summary

    new = optuna.trial.create_trial(values=[0.2, 0.1], user_attrs={
        "alignment": 0.2, "nlr": 0.1, "acquiescence": 0.03, "nlr_floor": 0.01,
        "csr_base": dict.fromkeys(nv.VALUES, 0.4), "params": {"magnitude": 2.0}})
    old = frozen(1, 0.1, 0.3)
    key = ("m", "power", "neva")
    row, old_row = (trial_row(key, "m/power/neva", t, {"accuracy_drop": 0.1})
                    for t in (new, old))
    assert row["acquiescence"] == 0.03 and row["nlr_floor"] == 0.01
    assert row["csr_base_power"] == 0.4 and row["csr_power"] is None
    assert row["magnitude"] == 2.0 and row["feasible"] is True
    assert [k for k in row if k != "magnitude"] == list(old_row)  # same columns
    assert old_row["acquiescence"] is None and old_row["nlr_floor"] is None
    assert trial_summary(new)["acquiescence"] == 0.03
    assert trial_summary(old)["nlr_floor"] is None


@pytest.mark.parametrize("override, message", [
    ("+search.objectives.acquiescence=minimize", None),
    ("+search.max_acquiescence=0.05", None),
    ("+search.max_acquiescence=-1", "^search.max_acquiescence: must be >= 0.0"),
    ("search.max_suppression=0.1", None),
    ("search.max_suppression=-0.1", "^search.max_suppression: must be >= 0.0"),
    ("+search.max_alignment=0.5", "^search.max_alignment: alignment cannot be a constraint"),
    ("+search.objectives.nlr_floor=minimize", "^search.objectives: unknown metric 'nlr_floor'"),
])
def test_objectives_and_constraints_come_from_the_metric_schema(config, override, message):
    from neva_sweep.sweep.plan import check_search

    search = config(override).search
    if message is None:
        check_search(search)
    else:
        with pytest.raises(ConfigError, match=message):
            check_search(search)


# -- the scheduler with in-process workers (no Ray) ------------------------------------------
class FutureBackend:
    """Handles are concurrent futures, already done when submitted."""

    def wait(self, handles, timeout):
        done, _ = concurrent.futures.wait(handles, timeout=timeout,
                                          return_when=concurrent.futures.FIRST_COMPLETED)
        return [h for h in handles if h in done]

    def get(self, handle):
        return handle.result()


def dose(params: dict) -> float:
    """A trial's searched dose: its strength (scaled space), else its magnitude."""
    return params["strength"] if params.get("strength") is not None else params["magnitude"]


class FakeWorker:
    """Scores a batch in-process: alignment = dose / 10, NLR = sparsity * 100.

    ``die`` (a list of booleans, consumed per batch) makes a batch fail as a dead actor;
    ``restartable=False`` makes the restart fail too.
    """

    tp_size = 1

    def __init__(self, model: str, i: int, die=(), restartable: bool = True, bad=()):
        self.model, self.name = model, f"{model}#{i}"
        self.die, self.restartable, self.bad = list(die), restartable, set(bad)
        self.batches: list[list[dict]] = []
        self.restarts = 0

    def submit(self, trials: list[dict]) -> concurrent.futures.Future:
        self.batches.append(trials)
        fut: concurrent.futures.Future = concurrent.futures.Future()
        if self.die and self.die.pop(0):
            fut.set_exception(ray.exceptions.RayActorError())
            return fut
        fut.set_result([self._score(t) for t in trials])
        return fut

    def _score(self, t: dict) -> dict:
        if t["value"] in self.bad:
            return {"error": f"ValueError: no edit for {t['value']}"}
        p = t["params"]
        return {"alignment": dose(p) / 10, "nlr": p["sparsity"] * 100,
                "accuracy_drop": 0.0, "kl": 0.01, "acquiescence": 0.001,
                "csr_edited": dict.fromkeys(nv.VALUES, 0.5), "duration_s": 0.0}

    def restart(self) -> None:
        self.restarts += 1
        if not self.restartable:
            raise RuntimeError("no resources left")


def fake_sweep(config, workers, values=("power", "benevolence"), *overrides: str):
    from neva_sweep.sweep.plan import StudyKey
    from neva_sweep.sweep.scheduler import Scheduler
    from neva_sweep.sweep.studies import open_studies

    search = config("search.n_startup_trials=100", *overrides).search
    keys = [StudyKey(m, v, "neva") for m in dict.fromkeys(w.model for w in workers)
            for v in values]
    states = open_studies(keys, optuna.storages.InMemoryStorage(), search)
    told = []
    sched = Scheduler(states, workers, search, callbacks=[told.append], progress=False,
                      backend=FutureBackend())
    sched.run()
    return states, told, sched


def test_scheduler_runs_every_trial_round_robin_in_batches(config):
    workers = [FakeWorker("a", 0), FakeWorker("a", 1)]
    states, told, sched = fake_sweep(config, workers, ("power", "benevolence", "tradition"),
                                     "search.n_trials=4", "search.trials_per_batch=3")
    assert all(s.complete == 4 and s.running == 0 for s in states)
    assert [o.state for o in told] == ["COMPLETE"] * 12
    batches = [b for w in workers for b in w.batches]
    assert all(len(b) <= 3 for b in batches) and sum(map(len, batches)) == 12
    first = workers[0].batches[0]  # values advance together
    assert [t["value"] for t in first] == ["power", "benevolence", "tradition"]
    t = states[0].study.get_trials()[0]
    assert t.user_attrs["acquiescence"] == 0.001 and t.user_attrs["replica"] in ("a#0", "a#1")
    assert sched.max_in_flight == 2 * 2 * 3


def test_scheduler_records_failures_and_stops_at_max_failures(config):
    workers = [FakeWorker("a", 0, bad={"benevolence"})]
    states, told, _ = fake_sweep(config, workers, ("power", "benevolence"),
                                 "search.n_trials=3", "search.max_failures=2")
    power, bene = states
    assert power.complete == 3 and bene.complete == 0 and bene.failed == 2
    assert not bene.wants_more() and bene.stopped is None  # max_failures, not a stop
    errors = [o.error for o in told if o.state == "FAIL"]
    assert errors == ["ValueError: no edit for benevolence"] * 2


def test_scheduler_retries_trials_of_a_dead_worker_once(config):
    # The first batch dies (retried), the retry dies again (FAIL), then all is well.
    workers = [FakeWorker("a", 0, die=[True, True])]
    states, told, _ = fake_sweep(config, workers, ("power",), "search.n_trials=1",
                                 "search.max_failures=5")
    assert workers[0].restarts == 2
    assert states[0].complete == 1
    failed = [o for o in told if o.state == "FAIL"]
    assert len(failed) == 1 and failed[0].error.startswith("actor died twice")
    (t,) = states[0].study.get_trials(states=(TrialState.FAIL,))
    assert t.user_attrs["error"].startswith("actor died twice: RayActorError")


def test_scheduler_drops_a_worker_that_cannot_restart(config):
    """Its model's studies stop (no replica left); the other model's go on, and a
    max_in_flight the user set is kept."""
    gone = FakeWorker("a", 0, die=[True] * 9, restartable=False)
    workers = [gone, FakeWorker("b", 0)]
    states, told, sched = fake_sweep(config, workers, ("power",), "search.n_trials=3",
                                     "search.max_in_flight=5")
    a, b = states
    assert sched.workers == [workers[1]] and sched.max_in_flight == 5
    assert a.stopped == "no replica of the model is left" and a.complete == 0
    assert a.max_failures == 3  # the stop is its own flag, not a changed budget
    assert b.complete == 3
    assert {o.error for o in told if o.state == "FAIL"} == {"no replica of the model is left"}
    states, _, sched = fake_sweep(config, [FakeWorker("a", 0, die=[True] * 9, restartable=False),
                                           FakeWorker("b", 0), FakeWorker("b", 1)],
                                  ("power",), "search.n_trials=2")
    assert sched.max_in_flight == 2 * 2  # the default follows the workers left


def test_an_interrupted_warm_start_runs_again_when_the_sweep_resumes(config):
    """Ctrl-C or SIGTERM with a warm start in flight: the start is told FAIL (interrupted)
    and enqueued again, so re-running the same command runs it (the starts are the
    search's floor; a dead driver's stale start is enqueued again the same way)."""
    from neva_sweep.sweep.plan import StudyKey
    from neva_sweep.sweep.scheduler import Scheduler
    from neva_sweep.sweep.studies import open_studies
    from neva_sweep.sweep.warm import warm_start

    search = config("search.n_startup_trials=100", "search.n_trials=2").search
    keys = [StudyKey("a", v, "neva") for v in ("power", "benevolence")]
    storage = optuna.storages.InMemoryStorage()
    states = open_studies(keys, storage, search)
    assert warm_start(states, search) == 2  # one start per study
    starts = {s.key.value: s.study.get_trials(deepcopy=False)[0].system_attrs["fixed_params"]
              for s in states}

    told = []

    def stop(outcome):  # Ctrl-C once the first trial is told; the other is in flight
        told.append(outcome)
        if len(told) == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Scheduler(states, [FakeWorker("a", 0)], search, callbacks=[stop], progress=False,
                  backend=FutureBackend()).run()
    failed = {s.key.value: s.study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
              for s in states}
    (value,) = [v for v, f in failed.items() if f]  # the start that was in flight
    assert failed[value][0].user_attrs["error"].startswith("interrupted (Ctrl-C)")
    study = states[[s.key.value for s in states].index(value)].study
    (waiting,) = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert waiting.system_attrs["fixed_params"] == starts[value]

    resumed = open_studies(keys, storage, search)
    Scheduler(resumed, [FakeWorker("a", 0)], search, progress=False,
              backend=FutureBackend()).run()
    for s in resumed:
        done = s.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        assert len(done) == 2
        assert starts[s.key.value] in [t.system_attrs.get("fixed_params") for t in done]
        assert not s.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
