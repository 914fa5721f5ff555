"""Faults a user meets: bad keys and files caught before any work, reports that fail loudly.

Each case is one row of docs/reliability.md. Storage locking and signals are in
test_faults_storage.py; edits, chosen edits and caches in test_faults_edits.py.
"""

from __future__ import annotations

import csv
import subprocess
import sys

import optuna
import pytest

from neva_sweep.cli import run
from neva_sweep.models.registry import model_n_layers
from neva_sweep.preflight import preflight
from neva_sweep.report.build import ReportError
from neva_sweep.sweep.plan import ConfigError
from neva_sweep.values import VALUES


# -- validation before work ---------------------------------------------------------------
def test_bad_edit_key_fails_on_a_cold_cache_before_any_model_load(tmp_path):
    """The CLI's first stderr line names the key; no statistics were computed (cold cache)."""
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "neva_sweep", "task=steer", "value=power", "edit.sparsity=0",
           f"cache_dir={cache}", f"hydra.run.dir={tmp_path / 'run'}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "edit.sparsity: must be in (0, 1)" in out.stderr.strip().splitlines()[0]
    assert not cache.exists()


@pytest.mark.parametrize("overrides, message", [
    (["task=steer"], "value: no value to steer toward"),
    (["task=steer", "value=kindness"], "value: unknown value 'kindness'"),
    (["task=evaluate", "value=power", "edit.rule=double"], "edit.rule: unknown choice 'double'"),
    (["task=evaluate", "value=power", "edit.positions=last"], "edit.positions: unknown choice"),
    (["task=identify", "edit.score=best"], "edit.score: unknown choice 'best'"),
    (["task=identify", "edit.magnitude=inf"], "edit.magnitude: must be a finite number"),
    (["task=identify", "edit.layer_window=[1,3]"],
     r"edit.layer_window: window \[1, 3\] reaches past the 2 layers of model 'tiny-llama'"),
    (["task=identify", "edit.layer_window=[2,1]"], r"edit.layer_window: a layer window is"),
    (["task=steer", "value=power", "max_new_tokens=0"], "max_new_tokens: must be >= 1"),
    (["task=steer", "value=power", "prompt=  "], "prompt: task=steer needs a prompt"),
    (["task=steer", "value=power", "model.device=tpu"],
     "model.device: 'tpu'; valid choices: cpu, cuda"),
    (["task=identify", "edit.score=lape", "edit.polarity=both"],
     "edit.polarity: both needs a signed score"),
    (["task=sweep", "search.space.layer_windows=[[0,4]]"],
     r"search.space.layer_windows: window \[0, 4\] reaches past the 2 layers"),
])
def test_config_errors_name_the_key(tmp_path, config, overrides, message):
    with pytest.raises(ConfigError, match=message):
        preflight(config("model=tiny_llama", *overrides), tmp_path)


def test_layer_count_is_read_without_weights():
    assert model_n_layers({"name": "smollm2-135m"}) == 30  # the GGUF header only
    assert model_n_layers({"name": "tiny-gpt2"}) == 2
    assert model_n_layers({"name": "/no/such/model"}) is None  # the load itself will say


def test_bad_data_files_name_the_file_and_line(tmp_path, config):
    bad = tmp_path / "scenarios.jsonl"
    bad.write_text('{"id": "a", "scenario": "x", "options": {}}\n')
    with pytest.raises(ConfigError, match=rf"data.scenarios: {bad}:1: 'options' lacks"):
        preflight(config("task=evaluate", "model=tiny_llama", f"data.scenarios={bad}"),
                  tmp_path)
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match=rf"{bad}:1: not UTF-8"):
        preflight(config("task=evaluate", "model=tiny_llama", f"data.scenarios={bad}"),
                  tmp_path)
    probes = tmp_path / "probes.jsonl"  # identify probes for one value only
    probes.write_text('{"text": "I help.", "value": "benevolence", "split": "identify"}\n')
    with pytest.raises(ConfigError, match=r"data.probes: .* no identify probes for values "
                                          r"\['self_direction'"):
        preflight(config("task=identify", "model=tiny_llama", f"data.probes={probes}"),
                  tmp_path)
    with pytest.raises(ConfigError, match="data.mc: no such file"):
        preflight(config("task=evaluate", "model=tiny_llama", f"data.mc={tmp_path}/no.jsonl"),
                  tmp_path)


def test_malformed_best_edits_is_one_clear_line(tmp_path, config):
    path = tmp_path / "best_edits.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=rf"best_edits: {path} is not valid JSON"):
        preflight(config("task=steer", f"best_edits={path}"), tmp_path)
    path.write_text('{"chosen": []}')
    with pytest.raises(ConfigError, match="has no 'edits' list"):
        preflight(config("task=evaluate", f"best_edits={path}"), tmp_path)


def test_unwritable_run_dir(tmp_path, config):
    blocker = tmp_path / "file"
    blocker.write_text("")  # a file where the run directory's parent should be
    with pytest.raises(ConfigError, match="hydra.run.dir: cannot write to"):
        preflight(config("task=identify", "model=tiny_llama"), blocker / "run")


def test_storage_problems_are_named_before_ray_starts(tmp_path, config):
    sweep = ("task=sweep", "model=tiny_llama")
    with pytest.raises(ConfigError, match="search.storage: the directory of .* does not exist"):
        preflight(config(*sweep, f"search.storage=sqlite:///{tmp_path}/no/dir/optuna.db"),
                  tmp_path)
    garbage = tmp_path / "optuna.db"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(ConfigError, match=f"search.storage: {garbage} is not an SQLite"):
        preflight(config(*sweep), tmp_path)  # the default storage: the run dir's optuna.db
    # a real database cut short (a copy interrupted, a full disk): its own integrity check
    import optuna

    optuna.create_study(storage=f"sqlite:///{garbage}.full", study_name="s").optimize(
        lambda t: t.suggest_float("x", 0, 1), n_trials=40)
    data = (tmp_path / "optuna.db.full").read_bytes()
    garbage.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match=f"search.storage: {garbage} is damaged "
                                          r"\(database disk image is malformed\)"):
        preflight(config(*sweep), tmp_path)
    garbage.unlink()
    with pytest.raises(ConfigError, match="search.storage: the directory of .* does not exist"):
        preflight(config(*sweep, f"search.storage=journal:///{tmp_path}/no/dir/x.log"),
                  tmp_path)  # refused like SQLite's, not created silently
    assert not (tmp_path / "no").exists()
    with pytest.raises(ConfigError, match="search.storage: unknown storage scheme 'foo'"):
        preflight(config(*sweep, "search.storage=foo://bar"), tmp_path)
    with pytest.raises(ConfigError, match="search.storage: the database driver for "
                                          "'postgresql' is not installed"):
        preflight(config(*sweep, "search.storage=postgresql://u:secret@127.0.0.1:9/db"),
                  tmp_path)


# -- reports that fail loudly -----------------------------------------------------------------
def test_report_on_a_missing_run_dir_fails_and_creates_nothing(tmp_path, config):
    missing = tmp_path / "typo"
    with pytest.raises(ConfigError, match=f"run_dir: no such directory {missing}"):
        run(config("task=report", f"run_dir={missing}"), tmp_path / "report_run")
    assert not missing.exists()


def test_report_on_a_corrupt_storage_fails(tmp_path, config):
    (tmp_path / "optuna.db").write_bytes(b"SQLite format 3\x00" + b"\x13" * 200)
    with pytest.raises(ReportError, match="could not read the Optuna storage"):
        run(config("task=report", f"run_dir={tmp_path}"), tmp_path / "report_run")


def _storage_with_trials(run_dir, n: int) -> None:
    url = f"sqlite:///{run_dir / 'optuna.db'}"
    study = optuna.create_study(storage=url, study_name="tiny-a/power/neva",
                                directions=["maximize", "minimize"])
    for attr, v in (("model", "tiny-a"), ("value", "power"), ("method", "neva")):
        study.set_user_attr(attr, v)
    base = dict.fromkeys(VALUES, 0.2)
    for i in range(n):
        t = study.ask()
        t.suggest_float("magnitude", 1, 8)
        for k, x in {"alignment": 0.1 * (i + 1), "nlr": 0.05, "csr_base": base,
                     "csr_edited": {**base, "power": 0.3}}.items():
            t.set_user_attr(k, x)
        study.tell(t, [0.1 * (i + 1), 0.05])


def test_report_reads_the_storage_and_fails_on_a_truncated_trials_csv(tmp_path, config):
    from neva_sweep.report.load import load_run, read_storage

    _storage_with_trials(tmp_path, 6)
    rows = read_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    with (tmp_path / "trials.csv").open("w", newline="") as f:  # a truncated copy: 2 of 6
        w = csv.DictWriter(f, fieldnames=["model", "value", "method", "study", "trial",
                                          "state", "alignment", "nlr"])
        w.writeheader()
        for r in rows[:2]:
            w.writerow({k: r[k] for k in w.fieldnames})
    run_ = load_run(tmp_path)
    assert len(run_.rows) == 6 and run_.source.startswith("Optuna storage")
    with pytest.raises(ReportError, match=r"trials.csv \(2 finished trials\) disagrees"):
        run(config("task=report", f"run_dir={tmp_path}"), tmp_path / "report_run")
    assert (tmp_path / "report" / "index.html").is_file()  # written from the storage


def test_report_reads_a_relative_journal_in_the_run_dir(tmp_path, config, monkeypatch):
    """``search.storage=journal://optuna.log`` means the run directory's journal, as in the
    sweep, whatever the working directory; a missing journal is an error, not a new file."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from neva_sweep.report.load import load_run

    storage = JournalStorage(JournalFileBackend(str(tmp_path / "optuna.log")))
    study = optuna.create_study(storage=storage, study_name="tiny-a/power/neva",
                                directions=["maximize", "minimize"])
    t = study.ask()
    t.suggest_float("magnitude", 1, 8)
    study.tell(t, [0.1, 0.05])
    monkeypatch.chdir(tmp_path.parent)  # not the run directory
    run(config("task=report", f"run_dir={tmp_path}", "search.storage=journal://optuna.log"),
        tmp_path / "report_run")
    assert (tmp_path / "report" / "index.html").is_file()
    missing = tmp_path / "other"
    missing.mkdir()
    assert any("does not exist" in e for e in load_run(
        missing, storage=f"journal://{missing / 'optuna.log'}").errors)
    assert not (missing / "optuna.log").exists()
