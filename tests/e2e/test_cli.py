"""The Hydra CLI: composed configs in-process, and one real `python -m neva_sweep` run."""

import json
import subprocess
import sys

import pytest

from neva_sweep.cli import format_eval, run
from neva_sweep.values import VALUES


def test_default_config_is_the_embedded_model(config):
    cfg = config()
    assert cfg.model.name == "smollm2-135m" and cfg.task == "sweep"
    assert cfg.sweep["values"] == VALUES and cfg.judge.name == "forced_choice"
    # trials: no MC (40 questions give +-0.15 intervals), a KL budget instead
    assert cfg.sweep.capability.mc_limit == 0 and cfg.search.max_kl == 0.1
    assert cfg.search.max_accuracy_drop is None and cfg.sweep.judge.scenarios_limit == 24


def test_experiment_presets_and_one_stats_schema(config):
    smoke = config("experiment=smoke", "stats.batch_size=8")
    assert list(smoke.sweep["values"]) == ["benevolence", "power"]
    assert smoke.search.trials_per_batch == 2 and smoke.stats.batch_size == 8
    with pytest.raises(Exception, match="batch_size"):
        config("stats.batch_size=many")


def test_identify_writes_statistics_and_summary(tmp_path, config):
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


def test_unknown_task_and_value_errors(tmp_path, config):
    with pytest.raises(KeyError, match="unknown task 'train'; valid choices: "
                                       "identify, steer, evaluate, .*sweep, report"):
        run(config("task=train"), tmp_path)
    with pytest.raises(ValueError, match="value: unknown value 'kindness'"):
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


def test_report_task_on_an_empty_run_dir_fails_and_writes_nothing(tmp_path, config):
    from neva_sweep.report.build import ReportError

    with pytest.raises(ReportError, match="no trials.csv and no Optuna storage"):
        run(config("task=report", f"run_dir={tmp_path}"), tmp_path / "report_run")
    assert not (tmp_path / "report").exists()


def test_format_eval_shows_every_metric_the_record_has():
    rec = {"edit": {"value": "power"}, "csr_base": dict.fromkeys(VALUES, 0.5),
           "csr_edited": {**dict.fromkeys(VALUES, 0.5), "power": 0.6}, "alignment": 0.1,
           "nlr": 0.2, "acquiescence": 0.012, "accuracy_base": 0.5, "accuracy_edited": 0.45,
           "accuracy_drop": 0.05, "kl": 0.0123, "ppl_base": None, "n_mc": 40,
           "ci": {"alignment": [0.05, 0.15], "csr_base": {}}}
    text = format_eval(rec)
    assert "power                0.500       0.600   +0.100  <- target" in text
    assert "alignment +0.100 (95% CI +0.050..+0.150)" in text
    assert "acquiescence +0.012" in text and "KL (nats/token) 0.0123" in text
    assert "MC questions 40" in text
    assert "NGLR" not in text and "perplexity" not in text  # not in the record: not shown


# -- start-up: the command line answers without the model stack -----------------------------
# `python -m neva_sweep` in a process where `import torch` fails: a run that passes needed
# none of the model stack (torch, transformers, Ray all import torch) to answer.
WITHOUT_TORCH = ("import runpy, sys; sys.modules['torch'] = None; sys.argv[0] = 'neva-sweep'; "
                 "runpy.run_module('neva_sweep', run_name='__main__', alter_sys=True)")


def cli_without_torch(cwd, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_TORCH, *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_unknown_task_names_the_valid_ones_without_the_model_stack(tmp_path):
    from neva_sweep.cli import TASKS

    out = cli_without_torch(tmp_path, "task=train")
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"unknown task 'train'; valid choices: {', '.join(TASKS.names())}" in out.stderr
    assert "Traceback" not in out.stderr


def test_help_names_every_task_and_group_without_the_model_stack(tmp_path):
    from neva_sweep.cli import TASKS

    out = cli_without_torch(tmp_path, "--help")
    assert out.returncode == 0, out.stderr[-2000:]
    usage = next(line for line in out.stdout.splitlines() if line.startswith("Usage:"))
    assert usage.startswith("Usage: neva-sweep task=<" + "|".join(TASKS.names()) + ">"), usage
    assert "model: " in out.stdout and "tiny_llama" in out.stdout  # the packaged groups
    assert not (tmp_path / "runs").exists()  # help runs no task


def test_default_run_dir_is_fixed_per_task_and_experiment(tmp_path):
    """The same command twice uses the same run directory (resume); see config.run_name."""
    for args, run_dir in [(["task=nope"], "runs/nope"),
                          (["task=nope", "experiment=smoke"], "runs/nope"),
                          (["task=nope", "hydra.run.dir=elsewhere"], "elsewhere")]:
        out = cli_without_torch(tmp_path, *args)
        assert out.returncode == 2 and (tmp_path / run_dir / ".hydra").is_dir(), out.stderr
    from neva_sweep.config import run_name

    assert run_name("sweep", "default", "smollm2_135m") == "default/smollm2_135m"
    assert run_name("sweep", "smoke", "tiny_llama") == "smoke/tiny_llama"
    assert run_name("identify", "smoke", "tiny_llama") == "identify"


def test_package_import_loads_no_model_stack():
    code = ("import sys, neva_sweep, neva_sweep.config, neva_sweep.cli, neva_sweep.__main__; "
            "print(sorted({'torch', 'transformers', 'ray', 'pyvalues'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr[-2000:] + out.stdout


def test_public_api_names_are_their_modules_objects():
    import importlib

    import neva_sweep as nv

    assert set(nv.__all__) == set(nv._EXPORTS)
    for name in nv.__all__:
        module = importlib.import_module(f"neva_sweep.{nv._EXPORTS[name]}")
        assert getattr(nv, name) is getattr(module, name), name
    assert nv.edit is sys.modules["neva_sweep.edits.neuron"].edit  # the function, not the module
    # submodules on demand
    assert nv.neurons.stats.merge is sys.modules["neva_sweep.neurons.stats"].merge
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        nv.nope  # noqa: B018
