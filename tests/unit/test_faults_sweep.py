"""A sweep that fails says so, and settings a sweep cannot use are refused before work."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

import neva_sweep as nv
from neva_sweep.sweep.plan import StudyKey


def test_a_study_without_complete_trials_or_mostly_failed_fails_the_sweep(config, monkeypatch,
                                                                          capsys):
    from neva_sweep import cli as tasks
    from neva_sweep.sweep.run import SweepFailed, failed_studies
    from neva_sweep.sweep.studies import StudyState

    def state(value, complete, failed, error="ValueError: no edit"):
        study = optuna.create_study(directions=["maximize", "minimize"])
        for _ in range(failed):
            t = study.ask()
            t.set_user_attr("error", error)
            study.tell(t, state=TrialState.FAIL)
        for _ in range(complete):
            study.tell(study.ask(), [0.1, 0.1])
        s = StudyState(StudyKey("m", value, "neva"), study, target=4, max_failures=4)
        s.complete, s.failed = complete, failed
        return s

    ok, none, most = state("power", 4, 2), state("tradition", 0, 4), state("hedonism", 4, 3)
    assert failed_studies([ok]) == []
    assert failed_studies([ok, none, most]) == [
        "m/tradition/neva: no COMPLETE trial, first failure: ValueError: no edit",
        "m/hedonism/neva: 3 of 4 trials failed, first failure: ValueError: no edit"]

    def run(cfg, out):
        raise SweepFailed("1 of 1 studies failed (m/tradition/neva: no COMPLETE trial)")

    monkeypatch.setattr(tasks, "run", run)
    with pytest.raises(SystemExit) as exit_:
        tasks.run_cli(config(), ".")
    assert exit_.value.code == 1
    assert "error: 1 of 1 studies failed" in capsys.readouterr().err


def test_caa_layers_outside_the_model_are_refused(tiny_stats):
    with pytest.raises(ValueError, match="layer_frac is the first layer as a fraction of "
                                         r"depth, in \[0, 1\]; got 5.0"):
        nv.make_edit(tiny_stats, "power", "caa", layer_frac=5)
    with pytest.raises(ValueError, match="n_layers is a number of consecutive layers >= 1"):
        nv.make_edit(tiny_stats, "power", "caa", n_layers=0)


def test_a_storage_that_refuses_writes_is_one_line(config, monkeypatch, capsys):
    """Optuna's StorageInternalError (here: SQLite's disk full) ends the run in one line."""
    import sqlite3

    from neva_sweep import cli as tasks

    def run(cfg, out):
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError as e:
            raise optuna.exceptions.StorageInternalError("An exception is raised during the "
                                                         "commit.") from e

    monkeypatch.setattr(tasks, "run", run)
    with pytest.raises(SystemExit) as exit_:
        tasks.run_cli(config(), ".")
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and err.startswith(
        "error: search.storage: the storage refused a write (database or disk is full)")


@pytest.mark.parametrize("override, key", [
    ("search.space.diffmean.layer_frac=[0.9,1.5]", "search.space.diffmean.layer_frac"),
    ("search.space.caa_pairs.layer_frac=[-0.1,0.5]", "search.space.caa_pairs.layer_frac"),
    ("search.space.diffmean.n_layers=[0]", "search.space.diffmean.n_layers"),
    ("search.space.caa_pairs.n_layers=[]", "search.space.caa_pairs.n_layers"),
    ("search.space.diffmean.coefficient=[6.0,0.5]", "search.space.diffmean.coefficient"),
    ("search.space.caa_pairs.strength=[0.0,1.0]", "search.space.caa_pairs.strength"),
    ("search.space.prompt.strength=[5,9]", "search.space.prompt.strength"),
    # a deprecated key is checked under its new name (after a deprecation warning)
    ("search.space.caa_layer=[0.9,1.5]", "search.space.diffmean.layer_frac"),
])
def test_method_settings_outside_their_range_are_refused_before_any_work(config, override,
                                                                         key):
    from neva_sweep.sweep.plan import ConfigError, check_search

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        check_search(config(override).search)
