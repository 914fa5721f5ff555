"""The Hydra CLI: composed configs in-process, and one real `python -m neva_sweep` run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from neva_sweep.config import register_configs
from neva_sweep.tasks import run

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def config(*overrides):
    register_configs()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_default_config_is_the_embedded_model():
    cfg = config()
    assert cfg.model.name == "smollm2-135m" and cfg.task == "sweep"


def test_identify_writes_statistics_and_summary(tmp_path):
    cfg = config("task=identify", "model=tiny_llama", "edit.sparsity=0.05",
                 f"cache_dir={tmp_path / 'cache'}", "progress=false")
    run(cfg, tmp_path)
    summary = json.loads((tmp_path / "neurons" / "tiny-llama.json").read_text())
    assert set(summary["values"]) >= {"power", "universalism"}
    assert summary["values"]["power"]["n_neurons"] == 10
    assert len(summary["values"]["power"]["per_layer"]) == 2
    assert summary["jaccard"]["power"]["power"] == 1.0
    import neva_sweep as nv

    stats = nv.NeuronStats.load(tmp_path / "neurons" / "tiny-llama.safetensors")
    assert stats.meta["model"] == "tiny-llama" and stats.mean.shape == (10, 192)


def test_unknown_task_and_value_errors(tmp_path):
    with pytest.raises(KeyError, match="unknown task 'train'; valid choices: identify, steer"):
        run(config("task=train"), tmp_path)
    with pytest.raises(KeyError, match="unknown value 'kindness'"):
        run(config("task=steer", "model=tiny_llama", "value=kindness"), tmp_path)
    with pytest.raises(Exception, match="sparsity"):
        config("edit.sparsity=lots")


def test_steer_from_the_command_line(tmp_path):
    cmd = [sys.executable, "-m", "neva_sweep", "task=steer", "model=tiny_llama", "value=power",
           "edit.sparsity=0.05", "max_new_tokens=5", "progress=false",
           f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "unedited" in out.stdout and "edited toward power (10 neurons, add x4)" in out.stdout


def test_report_task_on_an_empty_run_dir_says_what_is_missing(tmp_path):
    run(config("task=report", f"run_dir={tmp_path}"), tmp_path / "report_run")
    html = (tmp_path / "report" / "index.html").read_text()
    assert "trials.csv" in html and "missing" in html.lower()


def test_unknown_task_lists_choices(tmp_path):
    with pytest.raises(KeyError, match="identify.*steer.*evaluate.*sweep.*report"):
        run(config("task=train"), tmp_path)
