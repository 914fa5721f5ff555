"""The sweep on a real local Ray cluster, real Optuna SQLite storage and real W&B offline.

Tiny random models keep each sweep to seconds; one Ray instance serves the whole module.
Injected failures come through a real plug-in path: a test method registered in every
Ray worker process by ``worker_process_setup_hook``, the way a user's method would be.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import sys
from pathlib import Path

import optuna
import psutil
import pytest
import ray
from hydra import compose, initialize_config_dir
from optuna.trial import TrialState
from ray import cloudpickle

import neva_sweep as nv
from neva_sweep.config import register_configs
from neva_sweep.sweep import ConfigError, load_best_edit, run_sweep
from neva_sweep.sweep.methods import NeVA
from neva_sweep.sweep.plan import ModelEntry, Resources, make_plan, replica_counts
from neva_sweep.sweep.run import eval_setup
from neva_sweep.sweep.studies import STALE_ERROR, open_storage
from neva_sweep.sweep.worker import run_trials
from neva_sweep.tasks import run as run_task

cloudpickle.register_pickle_by_value(sys.modules[__name__])

CONF = str(Path(__file__).resolve().parents[1] / "conf")
FAST = ["model=tiny_llama", "sweep.values=[benevolence,power]", "search.n_trials=3",
        "search.n_startup_trials=2", "sweep.capability.mc_limit=8",
        "sweep.capability.neutral_limit=4", "sweep.capability.fluency_queries=0",
        "judge.n_boot=50", "logger=none", "progress=false",
        "cluster.replicas_per_model=2", "cluster.num_cpus_per_actor=1"]


def config(*overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


class Explode(NeVA):
    """NeVA whose edit cannot be built when the magnitude is above 4 (a failing trial)."""

    name = "explode"

    def build(self, stats, value, params):
        if params["magnitude"] > 4.0:
            raise ValueError(f"exploding on magnitude {params['magnitude']:.2f}")
        return super().build(stats, value, params)


def register_test_methods() -> None:
    # Imported here: sent by value, a global would be a copy of the registry, not the module's.
    from neva_sweep.sweep.methods import METHODS

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


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """Statistics and unedited sides shared by the module's sweeps."""
    return tmp_path_factory.mktemp("cache")


def sweep_cfg(cache: Path, *overrides: str):
    return config(*FAST, f"cache_dir={cache}", *overrides)


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


# -- configuration: errors name the key, before any actor starts -----------------------------
@pytest.mark.parametrize("override, key", [
    ("search.space.sparsity=[0.0,0.5]", "search.space.sparsity"),
    ("search.space.sparsity=[0.01,1.5]", "search.space.sparsity"),
    ("sweep.values=[kindness]", "sweep.values"),
    ("sweep.methods=[telepathy]", "sweep.methods"),
    ("search.space.rules=[push]", "search.space.rules"),
    ("search.space.scores=[vibes]", "search.space.scores"),
    ("search.sampler=random", "search.sampler"),
    ("judge.name=oracle", "judge.name"),
    ("search.n_trials=0", "search.n_trials"),
    ("+search.objectives.fun=maximize", "search.objectives"),
    ("models=[tiny_llama,no_such_model]", "models"),
    ("cluster.kind=slurm", "cluster.kind"),
    ("logger.kind=mlflow", "logger.kind"),
    ("search.storage=nonsense", "search.storage"),
    ("model.tp_size=3", "model.tp_size"),
])
def test_config_errors_name_the_key(tmp_path, override, key):
    assert not ray.is_initialized()
    cfg = config(*FAST, "cluster.num_cpus=2", override)
    with pytest.raises(ConfigError, match=f"^{key}"):
        run_sweep(cfg, tmp_path)
    assert not ray.is_initialized()  # nothing was started


def test_unknown_model_lists_the_available_ones(tmp_path):
    with pytest.raises(ConfigError, match="available: .*smollm2_135m.*tiny_llama"):
        make_plan(config(*FAST, "models=[nope]"), tmp_path)


def test_launcher_entrypoint_is_a_valid_sweep(tmp_path, monkeypatch):
    """The KubeRay entrypoint's overrides compose and pass every check that needs no cluster."""
    monkeypatch.setenv("WANDB_API_KEY", "not-a-key")  # logger=wandb checks that one is set
    import shlex

    import yaml

    docs = yaml.safe_load_all((Path(CONF).parent / "launch" / "kuberay-rayjob.yaml").read_text())
    (job,) = [d for d in docs if d and d.get("kind") == "RayJob"]
    args = shlex.split(job["spec"]["entrypoint"])[3:]  # after python -m neva_sweep
    plan = make_plan(config(*[a for a in args if not a.startswith("hydra.")]), tmp_path)
    assert plan.studies and all(m.on_gpu for m in plan.models)


def test_replica_counts_fill_the_cluster_or_fail():
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
def test_sweep_writes_its_files_and_steer_loads_the_best_edit(cluster, cache, tmp_path, capsys):
    run = tmp_path / "run"
    run_sweep(sweep_cfg(cache, "logger=wandb_offline", "search.trials_per_batch=2"), run)
    rows = trials(run)
    assert len(rows) == 6 and {r["state"] for r in rows} == {"COMPLETE"}
    for col in ("model", "value", "method", "trial", "state", "sparsity", "magnitude", "rule",
                "alignment", "nlr", "nglr", "cwl", "accuracy_drop", "kl", "duration_s",
                "csr_power", "replica", "feasible"):
        assert col in rows[0]
    assert {r["replica"] for r in rows} <= {"tiny-llama#0", "tiny-llama#1"}
    pareto = json.loads((run / "pareto.json").read_text())
    assert [s["study"] for s in pareto["studies"]] == ["tiny-llama/benevolence/neva",
                                                      "tiny-llama/power/neva"]
    assert all(s["n_complete"] == 3 and s["pareto"] for s in pareto["studies"])
    assert (run / "optuna.db").is_file()
    assert list((run / "wandb").glob("offline-run-*/run-*.wandb"))

    with pytest.raises(KeyError, match="2 edits in .* match .* set value="):
        load_best_edit(run / "best_edits.json")
    entry = load_best_edit(run / "best_edits.json", value="power")
    assert entry["model"] == "tiny-llama" and 0 < entry["sparsity"] < 1
    assert Path(entry["neurons"]).is_file()
    capsys.readouterr()
    run_task(config("task=steer", f"best_edits={run / 'best_edits.json'}", "value=power",
                    "max_new_tokens=4", "progress=false", f"cache_dir={cache}"), tmp_path)
    assert "edited toward power" in capsys.readouterr().out

    # Re-running finds nothing to do and starts no actor.
    run_sweep(sweep_cfg(cache, "logger=wandb_offline"), run)
    assert len(trials(run)) == 6
    assert "0 to run" in capsys.readouterr().out


def test_failing_trials_are_recorded_and_the_sweep_goes_on(cluster, cache, tmp_path):
    run = tmp_path / "run"
    # Random sampling (Optuna's samplers ignore FAIL trials, so TPE would keep proposing
    # the failing region until search.max_failures stops the study).
    run_sweep(sweep_cfg(cache, "sweep.methods=[explode]", "sweep.values=[power]",
                        "search.n_trials=4", "search.n_startup_trials=1000",
                        "search.max_failures=50", "search.space.magnitude=[1.0,8.0]"), run)
    rows = trials(run)
    failed = [r for r in rows if r["state"] == "FAIL"]
    assert sum(r["state"] == "COMPLETE" for r in rows) == 4
    assert failed and all("ValueError: exploding on magnitude" in r["error"] for r in failed)
    assert all(float(r["magnitude"]) > 4 for r in failed)


def shard_pids() -> list[int]:
    """Shard actor processes of this test's Ray instance (its raylet is our child)."""
    return [p.pid for p in psutil.Process().children(recursive=True)
            if (p.cmdline() or [""])[0].startswith("ray::ShardActor")]


def test_killed_actor_is_restarted_and_its_trial_retried(cluster, cache, tmp_path):
    killed: list[int] = []

    def kill_one_shard(outcome):  # at the first result, the other replica is mid-trial
        if not killed:
            pid = shard_pids()[0]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    run = tmp_path / "run"
    res = run_sweep(sweep_cfg(cache, "search.n_trials=4"), run, callbacks=[kill_one_shard])
    assert killed
    rows = trials(run)
    assert all(s.complete == 4 for s in res.studies)
    assert sum(r["state"] == "COMPLETE" for r in rows) == 8
    retried = [t for s in res.studies for t in s.study.get_trials(deepcopy=False)
               if t.user_attrs.get("retried")]
    assert retried and all(t.state == TrialState.COMPLETE for t in retried)


def test_interrupt_then_resume_neither_loses_nor_duplicates(cluster, cache, tmp_path):
    run = tmp_path / "run"
    cfg = sweep_cfg(cache, "search.n_trials=4")
    seen = []

    def interrupt_after_three(outcome):  # a real SIGINT, as from Ctrl-C
        seen.append(outcome)
        if len(seen) == 3:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        run_sweep(cfg, run, callbacks=[interrupt_after_three])
    url = f"sqlite:///{run / 'optuna.db'}"
    before = states_by_study(url)
    assert TrialState.RUNNING not in {s for v in before.values() for s in v}
    done_before = {n: v.count(TrialState.COMPLETE) for n, v in before.items()}
    assert sum(done_before.values()) == 3
    complete_numbers = {(r["study"], r["trial"]) for r in trials(run) if r["state"] == "COMPLETE"}

    # A driver killed hard leaves a RUNNING trial: the resumed run marks it FAIL.
    storage = open_storage(url)
    optuna.load_study(study_name="tiny-llama/power/neva", storage=storage).ask()

    res = run_sweep(cfg, run)
    after = states_by_study(url)
    assert {n: v.count(TrialState.COMPLETE) for n, v in after.items()} == {
        "tiny-llama/benevolence/neva": 4, "tiny-llama/power/neva": 4}
    assert TrialState.RUNNING not in {s for v in after.values() for s in v}
    rows = trials(run)
    assert complete_numbers <= {(r["study"], r["trial"]) for r in rows
                                if r["state"] == "COMPLETE"}
    errors = {r["error"] for r in rows if r["state"] == "FAIL"}
    assert STALE_ERROR in errors and any(e.startswith("interrupted") for e in errors)
    assert sum(len(s.stale) for s in res.studies) == 1


def test_two_models_get_their_own_studies(cluster, cache, tmp_path):
    run = tmp_path / "run"
    run_sweep(sweep_cfg(cache, "models=[tiny_llama,tiny_qwen2]", "sweep.values=[security]",
                        "search.n_trials=2", "cluster.replicas_per_model=1"), run)
    rows = trials(run)
    assert {(r["study"], r["state"]) for r in rows} == {
        ("tiny-llama/security/neva", "COMPLETE"), ("tiny-qwen2/security/neva", "COMPLETE")}
    assert len(rows) == 4
    assert {r["replica"] for r in rows} == {"tiny-llama#0", "tiny-qwen2#0"}
    best = json.loads((run / "best_edits.json").read_text())
    assert {e["model"] for e in best["edits"]} == {"tiny-llama", "tiny-qwen2"}


def test_methods_get_their_own_studies(cluster, cache, tmp_path):
    run = tmp_path / "run"
    run_sweep(sweep_cfg(cache, "sweep.methods=[neva,caa,prompt,random_neurons]",
                        "sweep.values=[security]", "search.n_trials=1",
                        "search.n_startup_trials=1", "cluster.replicas_per_model=1"), run)
    rows = trials(run)
    assert {(r["study"], r["state"]) for r in rows} == {
        (f"tiny-llama/security/{m}", "COMPLETE") for m in ("neva", "caa", "prompt",
                                                           "random_neurons")}
    best = json.loads((run / "best_edits.json").read_text())
    assert {e["method"] for e in best["edits"]} == {"neva", "caa", "prompt", "random_neurons"}
    caa = next(r for r in rows if r["method"] == "caa")
    assert caa["coefficient"] and caa["layer_frac"] and caa["n_neurons"] in ("0", 0)


def test_tensor_parallel_sweep_matches_tp1(cluster, cache, tmp_path):
    """tp_size=2 (two shard actors, DeepSpeed AutoTP over gloo) reproduces tp_size=1: the
    seeded sampler proposes the same trials, and their metrics agree."""
    rows = {}
    for tp in (1, 2):
        cfg = sweep_cfg(cache, f"model.tp_size={tp}", "sweep.values=[power]",
                        "search.n_trials=2", "cluster.replicas_per_model=1")
        run_sweep(cfg, tmp_path / f"tp{tp}")
        rows[tp] = trials(tmp_path / f"tp{tp}")
    assert [r["replica"] for r in rows[2]] == ["tiny-llama#0"] * 2
    for a, b in zip(rows[1], rows[2]):
        assert a["state"] == b["state"] == "COMPLETE"
        assert (a["sparsity"], a["magnitude"]) == (b["sparsity"], b["magnitude"])
        for k in ("alignment", "nlr", "kl", "accuracy_edited", "csr_power"):
            assert float(a[k]) == pytest.approx(float(b[k]), abs=1e-4), k


# -- trial batching ----------------------------------------------------------------------------
def test_batched_trials_equal_one_by_one(cluster, cache, tiny_host, small_probes):
    stats = nv.collect_stats(tiny_host, small_probes, progress=False)
    box = [ray.put(stats)]
    setup = eval_setup(sweep_cfg(cache))
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


def test_pareto_and_best_edit_rule():
    from neva_sweep.sweep.outputs import choose_best, feasibility, pareto_front

    trials = [frozen(0, 0.30, 2.0), frozen(1, 0.20, 0.5), frozen(2, 0.10, 0.4),
              frozen(3, 0.05, 0.9), frozen(4, 0.40, 0.1, drop=0.5)]
    ok = feasibility(config().search)  # max_accuracy_drop 0.1
    feasible = [t for t in trials if ok(t)]
    assert [t.number for t in feasible] == [0, 1, 2, 3]
    front = pareto_front(feasible, [1.0, -1.0])
    assert sorted(t.number for t in front) == [0, 1, 2]  # 3 is dominated by 1
    assert choose_best(front, max_nlr=1.0).number == 1  # 0 leaks more than it aligns
    assert choose_best(front, max_nlr=0.1).number == 2  # none that clean: the lowest NLR
    assert choose_best([], max_nlr=1.0) is None
