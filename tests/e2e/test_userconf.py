"""The user's own configs (./conf or $NEVA_SWEEP_CONF) come before the packaged ones."""

from __future__ import annotations

import subprocess
import sys

import pytest

from neva_sweep.config import ConfigError, compose_config
from neva_sweep.userconf import user_conf_dir


@pytest.fixture
def user_conf(tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    (conf / "model").mkdir(parents=True)
    (conf / "experiment").mkdir()
    (conf / "judge").mkdir()
    (conf / "model" / "my_model.yaml").write_text(
        "name: tiny-llama\nshort_name: mine_tiny\ndtype: float32\ndevice: cpu\n")
    (conf / "experiment" / "mine.yaml").write_text(
        "# @package _global_\nsweep:\n  values: [power]\nsearch:\n  n_trials: 3\n")
    # a packaged name: replaces neva_sweep/conf/judge/forced_choice.yaml
    (conf / "judge" / "forced_choice.yaml").write_text("name: forced_choice\nbatch_size: 3\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NEVA_SWEEP_CONF", raising=False)
    return conf


def test_conf_in_the_working_directory_adds_and_replaces_options(user_conf):
    assert user_conf_dir() == user_conf.resolve()
    cfg = compose_config("model=my_model", "experiment=mine")
    assert cfg.model.short_name == "mine_tiny" and cfg.model.name == "tiny-llama"
    assert list(cfg.sweep["values"]) == ["power"] and cfg.search.n_trials == 3
    assert cfg.judge.batch_size == 3  # the user's file won over the packaged one


def test_without_a_conf_directory_only_the_packaged_configs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NEVA_SWEEP_CONF", raising=False)
    assert user_conf_dir() is None
    assert compose_config().judge.batch_size == 16
    with pytest.raises(Exception, match="my_model"):
        compose_config("model=my_model")


def test_env_variable_points_elsewhere_and_a_wrong_one_is_named(user_conf, tmp_path,
                                                                monkeypatch):
    other = tmp_path / "elsewhere"
    (other / "model").mkdir(parents=True)
    (other / "model" / "theirs.yaml").write_text("name: tiny-gpt2\n")
    monkeypatch.setenv("NEVA_SWEEP_CONF", str(other))
    assert compose_config("model=theirs").model.name == "tiny-gpt2"
    with pytest.raises(Exception, match="my_model"):  # ./conf is not read when the env is set
        compose_config("model=my_model")
    monkeypatch.setenv("NEVA_SWEEP_CONF", str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="NEVA_SWEEP_CONF=.*no such directory"):
        user_conf_dir()


def test_cli_uses_the_users_configs_with_no_flag(user_conf):
    run = subprocess.run([sys.executable, "-m", "neva_sweep", "model=my_model",
                          "experiment=mine", "--cfg", "job"],
                         capture_output=True, text=True, cwd=user_conf.parent)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "short_name: mine_tiny" in run.stdout and "n_trials: 3" in run.stdout
    bad = subprocess.run([sys.executable, "-m", "neva_sweep", "model=their_model"],
                         capture_output=True, text=True, cwd=user_conf.parent)
    assert bad.returncode == 2
    assert "model: unknown option 'their_model'" in bad.stderr
    assert "./conf/model/their_model.yaml" in bad.stderr
