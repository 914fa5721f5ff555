"""What the user typed, checked before Hydra runs: one line naming the key, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from neva_sweep.config import ConfigError
from neva_sweep.overrides import check_overrides


@pytest.mark.parametrize("args, message", [
    (["serch.n_trials=2"], "serch.n_trials: no such key; did you mean search.n_trials"),
    (["search.space.sparcity=[0.1,0.2]"],
     "search.space.sparcity: no such key; did you mean search.space.sparsity"),
    (["model=nosuch"], "model: unknown option 'nosuch'; valid choices: gpt2, "),
    (["judge=oracle"], "judge: unknown option 'oracle'; valid choices: "),
    (["search.n_trials=abc"],
     "search.n_trials: Value 'abc' of type 'str' could not be converted to Integer"),
    # a dict's keys (not a schema's) are added with +: the line says how
    (["search.test_capability={mc_limit: null}"], "search.test_capability: a dict, whose keys "
     "are added with a leading +: +search.test_capability={mc_limit: null}"),
    (["sweep.judge.ends=least"], "sweep.judge.ends: in the dict sweep.judge, whose keys are "
     "added with a leading +: +sweep.judge.ends=least"),
])
def test_composition_errors_are_one_line_naming_the_key(args, message):
    with pytest.raises(ConfigError) as e:
        check_overrides(args)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
    assert "+serch" not in str(e.value)  # never the hint that would add the typo


def test_valid_overrides_and_hydra_flags_pass():
    check_overrides(["model=tiny_llama", "search.n_trials=3", "hydra.run.dir=/tmp/x"])
    check_overrides(["serch.n_trials=2", "--cfg", "job"])  # Hydra's own flags: Hydra decides


def test_the_command_exits_2_with_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "neva_sweep", "serch.n_trials=2",
                          f"hydra.run.dir={tmp_path}"], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.splitlines()[0].startswith("error: serch.n_trials: no such key; did "
                                                 "you mean search.n_trials")


def test_a_run_directory_that_cannot_be_created_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match=f"hydra.run.dir: {blocker} is a file"):
        check_overrides([f"hydra.run.dir={blocker / 'run'}"])
    check_overrides([f"hydra.run.dir={tmp_path / 'new' / 'run'}"])  # creatable: fine
    assert not (tmp_path / "new").exists()  # nothing created by the check


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_a_read_only_parent_is_named(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    with pytest.raises(ConfigError, match=f"hydra.run.dir: cannot write to {ro}"):
        check_overrides([f"hydra.run.dir={ro / 'run'}"])
