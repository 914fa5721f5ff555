"""One driver per run (the storage lock), journal storage, and drivers that die.

The lock tests use real processes: a holder is another Python process, a dead holder is
one that was killed. The sweeps are real (tiny random model, local Ray, real Optuna
storage), as in test_sweep.py.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import ray
from omegaconf import OmegaConf
from optuna.trial import TrialState

from neva_sweep.sweep import ConfigError, run_sweep
from neva_sweep.sweep.lock import HOST, SUFFIX, NoLock, RunLock, RunLockedError, lock_path, run_lock
from neva_sweep.sweep.plan import storage_url
from neva_sweep.sweep.storage import open_storage
from neva_sweep.sweep.studies import STALE_ERROR, fail_stale_trials
from tests.helpers import states_by_study, trials

ROOT = Path(__file__).resolve().parents[2]
HOLD = ("import sys, time; from pathlib import Path; from neva_sweep.sweep.lock import RunLock; "
        "RunLock(Path(sys.argv[1]), heartbeat_s=0.2).acquire(); print('held', flush=True); "
        "time.sleep(120)")


def holder_process(path: Path) -> subprocess.Popen:
    """Another process holding the lock ``path`` (returns once it holds it)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "held"
    return proc


def write_lock(path: Path, host: str, pid: int, heartbeat: float) -> None:
    path.write_text(json.dumps({"host": host, "pid": pid, "started": heartbeat,
                                "heartbeat": heartbeat, "token": "someone-else"}))


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# -- the lock ---------------------------------------------------------------------------------
def test_lock_holds_who_and_a_live_heartbeat_and_is_removed_on_release(tmp_path):
    path = tmp_path / f"optuna.db{SUFFIX}"
    with RunLock(path, heartbeat_s=0.1) as lock:
        first = json.loads(path.read_text())
        assert {k: first[k] for k in ("host", "pid")} == {"host": HOST, "pid": os.getpid()}
        time.sleep(0.5)
        assert json.loads(path.read_text())["heartbeat"] > first["heartbeat"]
        assert lock.held
    assert not path.exists() and not list(tmp_path.iterdir())  # no temporary file left


def test_a_full_disk_leaves_no_lock_temporary(tmp_path, monkeypatch):
    """The heartbeat's rewrite fails (ENOSPC): the lock stays, no empty temporary remains."""
    import errno
    from pathlib import Path

    path = tmp_path / f"optuna.db{SUFFIX}"
    with RunLock(path, heartbeat_s=3600) as lock:
        real = Path.write_text

        def full(self, *a, **k):
            self.touch()  # the file exists, its content never arrives
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(Path, "write_text", full)
        with pytest.raises(OSError):
            lock.refresh()
        monkeypatch.setattr(Path, "write_text", real)
        assert sorted(p.name for p in tmp_path.iterdir()) == [path.name] and lock.held
    assert not list(tmp_path.iterdir())


def test_live_lock_of_another_process_refuses_at_once_then_its_corpse_is_taken_over(
        tmp_path, caplog):
    path = tmp_path / f"optuna.db{SUFFIX}"
    proc = holder_process(path)
    try:
        t0 = time.monotonic()
        with pytest.raises(RunLockedError, match=rf"^search.storage: another sweep driver "
                           rf"\(host {HOST}, pid {proc.pid}, .* holds the lock {path}; wait"):
            RunLock(path).acquire()
        assert time.monotonic() - t0 < 2
    finally:
        proc.kill()  # dies without releasing: its lock file stays
        proc.wait()
    assert json.loads(path.read_text())["pid"] == proc.pid
    with RunLock(path) as lock:
        assert json.loads(path.read_text())["pid"] == os.getpid() and lock.held
    assert f"process {proc.pid} is not running" in caplog.text


@pytest.mark.parametrize("host, age_s, live", [
    ("other-node", 5, True),  # another host, fresh heartbeat: cannot tell it is dead
    ("other-node", 120, False),  # another host, no heartbeat for 2 minutes: dead
    (HOST, 0, False),  # this host, its process is gone
])
def test_lock_of_another_host_is_judged_by_its_heartbeat(tmp_path, host, age_s, live):
    path = tmp_path / f"journal.log{SUFFIX}"
    write_lock(path, host, dead_pid(), time.time() - age_s)
    if live:
        with pytest.raises(RunLockedError, match=f"host {host}"):
            RunLock(path, stale_after_s=60).acquire()
    else:
        with RunLock(path, stale_after_s=60):
            assert json.loads(path.read_text())["host"] == HOST


def test_lock_paths_and_server_storage(tmp_path, caplog):
    assert lock_path(f"sqlite:///{tmp_path}/optuna.db") == tmp_path / "optuna.db.driver.lock"
    # beside the journal, not on the journal backend's own <file>.lock
    assert lock_path(f"journal://{tmp_path}/optuna.log") == tmp_path / "optuna.log.driver.lock"
    assert lock_path("sqlite:///:memory:") is None
    assert isinstance(run_lock("postgresql://user@db.example/neva"), NoLock)
    assert "no driver lock for postgresql storage" in caplog.text


def test_stale_trials_are_failed_only_under_the_lock(tmp_path):
    with pytest.raises(RuntimeError, match="is not held by this driver"):
        fail_stale_trials([], RunLock(tmp_path / f"optuna.db{SUFFIX}"))


# -- search.storage ---------------------------------------------------------------------------
@pytest.mark.parametrize("given, expected", [
    ("journal:///shared/runs/a/optuna.log", "journal:///shared/runs/a/optuna.log"),
    ("journal://optuna.log", "journal:///RUN/optuna.log"),
    ("journal://sub/x.log", "journal:///RUN/sub/x.log"),
    ("postgresql://u@h/db", "postgresql://u@h/db"),
])
def test_storage_url_accepts_journal_files_and_sqlalchemy_urls(tmp_path, given, expected):
    search = OmegaConf.create({"storage": given})
    assert storage_url(search, tmp_path) == expected.replace("/RUN", str(tmp_path.resolve()))


@pytest.mark.parametrize("given", ["nonsense", "journal:/x.log", "journal://", "journal:///"])
def test_bad_storage_names_the_key_the_value_and_both_forms(tmp_path, given):
    with pytest.raises(ConfigError, match=rf"^search.storage: '{given}' .*journal:///abs/path"
                       r".*SQLAlchemy URL \(sqlite:///"):
        storage_url(OmegaConf.create({"storage": given}), tmp_path)


# -- sweeps -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster():
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             configure_logging=False, runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}})
    yield
    ray.shutdown()


def states(url: str) -> list[TrialState]:
    try:
        return [s for v in states_by_study(url).values() for s in v]
    except Exception:  # the driver has not created the studies yet
        return []


def test_journal_storage_resumes_after_an_interruption_and_a_dead_driver(
        cluster, sweep_cfg, tmp_path, caplog):
    """Journal storage: interrupted, then resumed over a dead driver's lock and RUNNING
    trial, then re-run with nothing left to do; the report reads the same journal."""
    run = tmp_path / "run"
    cfg = sweep_cfg("search.storage=journal://optuna.log", "search.n_trials=2",
                    "cluster.replicas_per_model=1")  # the storage is under test, not replicas
    url = f"journal://{(run / 'optuna.log').resolve()}"
    seen = []

    def interrupt_after_two(outcome):
        seen.append(outcome)
        if len(seen) == 2:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        run_sweep(cfg, run, callbacks=[interrupt_after_two])
    assert (run / "optuna.log").is_file() and not (run / "optuna.db").exists()
    before = states(url)
    assert before.count(TrialState.COMPLETE) == 2 and TrialState.RUNNING not in before
    assert len(trials(run)) == len(before)

    # A driver killed hard: its lock (dead pid) and a RUNNING trial stay behind.
    write_lock(run / "optuna.log.driver.lock", HOST, dead_pid(), time.time())
    optuna.load_study(study_name="tiny-llama/power/neva", storage=open_storage(url)).ask()
    caplog.clear()
    res = run_sweep(cfg, run)
    assert "taking over the lock" in caplog.text
    after = states_by_study(url)
    assert {n: v.count(TrialState.COMPLETE) for n, v in after.items()} == {
        "tiny-llama/benevolence/neva": 2, "tiny-llama/power/neva": 2}
    assert TrialState.RUNNING not in {s for v in after.values() for s in v}
    assert sum(len(s.stale) for s in res.studies) == 1
    assert STALE_ERROR in {r["error"] for r in trials(run)}
    assert not (run / "optuna.log.driver.lock").exists()

    n = len(trials(run))
    caplog.set_level(logging.INFO, logger="neva_sweep")
    run_sweep(cfg, run)
    assert "0 to run" in caplog.text and len(trials(run)) == n

    from neva_sweep.report.load import read_storage

    assert sorted((r["study"], r["trial"]) for r in read_storage(url)) == sorted(
        (r["study"], int(r["trial"])) for r in trials(run))


# -- the Slurm launcher -------------------------------------------------------------------------
STUBS = {
    # srun: the head's address for `hostname --ip-address`, else a `ray start --block` step
    "srun": 'for a in "$@"; do [[ $a == hostname ]] && { echo 10.0.0.1; exit 0; }; done\n'
            "exec sleep 300\n",
    "scontrol": "echo node1\n",
    "ray": "exit 0\n",  # health-check: the head is up
    # the interpreter: the join check reads a script from stdin; the driver runs until TERM
    "python-stub": '[[ $1 == - ]] && { cat >/dev/null; exit 0; }\n'
                   'echo "$@" > "$STUB_DIR/driver.args"\n'
                   "trap 'echo TERM > \"$STUB_DIR/driver.signal\"; exit 143' TERM\n"
                   'touch "$STUB_DIR/driver.started"\n'
                   "while true; do sleep 0.1; done\n",
}


@pytest.mark.parametrize("old_sqlite", [False, True], ids=["new-run", "sqlite-run"])
def test_sbatch_forwards_sigterm_to_the_driver_and_picks_journal_storage(tmp_path, old_sqlite):
    """The job script under Slurm's SIGTERM (--signal=B:TERM@120, scancel): the driver gets
    it, the script waits for the driver's safe stop and exits with its status."""
    text = (ROOT / "launch" / "slurm.sbatch").read_text()
    assert "#SBATCH --signal=B:TERM@" in text and "#SBATCH --requeue" in text
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name, body in STUBS.items():
        (stubs / name).write_text("#!/usr/bin/env bash\n" + body)
        (stubs / name).chmod(0o755)
    run = tmp_path / "runs" / "x"
    if old_sqlite:
        run.mkdir(parents=True)
        (run / "optuna.db").write_bytes(b"")
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "STUB_DIR": str(tmp_path),
           "PYTHON": str(stubs / "python-stub"), "RUN_DIR": "runs/x",
           "SLURM_SUBMIT_DIR": str(tmp_path), "SLURM_JOB_NODELIST": "node1",
           "SLURM_JOB_ID": "42", "SLURM_CPUS_PER_TASK": "1"}
    job = subprocess.Popen(["bash", str(ROOT / "launch" / "slurm.sbatch"), "model=gpt2"],
                           env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while not (tmp_path / "driver.started").exists():
        assert job.poll() is None and time.monotonic() < deadline, job.communicate()[0]
        time.sleep(0.1)
    job.send_signal(signal.SIGTERM)
    out = job.communicate(timeout=30)[0]
    assert job.returncode == 143, out
    assert (tmp_path / "driver.signal").read_text().strip() == "TERM"
    storage = f"sqlite:///{run}/optuna.db" if old_sqlite else f"journal://{run}/optuna.log"
    assert (tmp_path / "driver.args").read_text().split() == [
        "-m", "neva_sweep", "cluster=ray", f"hydra.run.dir={run}",
        f"search.storage={storage}", "model=gpt2"]
    assert "driver exited with status 143" in out
