"""A run directory refuses another sweep setup (named keys), resumes its own, and
+resume=force overrides."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from neva_sweep.config import ConfigError, compose_config
from neva_sweep.sweep.identity import IDENTITY_FILE, check_identity


def test_same_setup_resumes_other_setup_is_refused_with_the_keys_named(tmp_path):
    check_identity(compose_config("model=tiny_llama"), tmp_path)
    first = json.loads((tmp_path / IDENTITY_FILE).read_text())
    assert first["model.name"] == "tiny-llama"
    # how the sweep runs may change: more trials, another seed, another logger
    check_identity(compose_config("model=tiny_llama", "search.n_trials=50", "search.seed=3",
                                  "logger=none"), tmp_path)
    with pytest.raises(ConfigError) as e:
        check_identity(compose_config("model=tiny_gpt2", "sweep.values=[power]"), tmp_path)
    msg = str(e.value)
    assert "2 key(s) differ" in msg and "model.name: 'tiny-llama' -> 'tiny-gpt2'" in msg
    assert "sweep.values" in msg and "+resume=force" in msg
    assert json.loads((tmp_path / IDENTITY_FILE).read_text()) == first  # nothing changed


def test_resume_force_adopts_the_new_setup(tmp_path):
    check_identity(compose_config("model=tiny_llama"), tmp_path)
    forced = compose_config("model=tiny_gpt2", "+resume=force")
    check_identity(forced, tmp_path)
    assert json.loads((tmp_path / IDENTITY_FILE).read_text())["model.name"] == "tiny-gpt2"
    check_identity(compose_config("model=tiny_gpt2"), tmp_path)  # now its own setup
    with pytest.raises(ConfigError, match="resume: unknown value 'yes'"):
        check_identity(compose_config("model=tiny_gpt2", "+resume=yes"), tmp_path)


def test_cli_refuses_another_model_in_a_run_directory_before_any_trial(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    check_identity(compose_config("model=tiny_llama"), run_dir)
    proc = subprocess.run([sys.executable, "-m", "neva_sweep", "model=tiny_gpt2",
                           f"hydra.run.dir={run_dir}", "logger=none"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "holds a sweep with another setup" in proc.stderr
    assert "model.name: 'tiny-llama' -> 'tiny-gpt2'" in proc.stderr
    assert not (run_dir / "trials.csv").exists()
