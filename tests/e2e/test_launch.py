"""Cluster launchers (launch/) and the large-model configs (neva_sweep/conf/model/): static
checks only."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from neva_sweep.config import ModelConfig

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = ROOT / "launch"
SBATCH = LAUNCH / "slurm.sbatch"
RAYJOB = LAUNCH / "kuberay-rayjob.yaml"
RAY_CLUSTER = LAUNCH / "ray-cluster.yaml"
LAUNCH_YAMLS = sorted(LAUNCH.glob("*.yaml"))
# every shell script users or CI run: the launcher, the GPU check's wrapper, the CI entry
SHELL_SCRIPTS = [SBATCH, ROOT / "benchmarks" / "tools" / "gpu_check.sh", ROOT / ".ci" / "run"]

# name -> (hub id, dtype, tp_size)
BIG_MODELS = {
    "llama3_8b_instruct": ("meta-llama/Meta-Llama-3-8B-Instruct", "bfloat16", 1),
    "qwen2_5_7b": ("Qwen/Qwen2.5-7B", "bfloat16", 1),
    "llama2_13b": ("meta-llama/Llama-2-13b-chat-hf", "bfloat16", 2),
    "mistral_7b": ("mistralai/Mistral-7B-Instruct-v0.3", "bfloat16", 1),
    "gpt2": ("openai-community/gpt2", "float32", 1),
    "llama3_70b_instruct": ("meta-llama/Meta-Llama-3-70B-Instruct", "bfloat16", 8),
}
MODEL_KEYS = {"name", "short_name", "dtype", "device", "trust_remote_code", "tp_size"}
DTYPES = {"float32", "bfloat16", "float16"}
# W&B keys are 40 hex characters (86 with a host prefix); HF tokens start with hf_.
SECRET = re.compile(r"\b[0-9a-f]{40}\b|\bhf_[A-Za-z0-9]{30,}|WANDB_API_KEY\s*[=:]\s*['\"]?\w{20,}")


def load_yaml(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def rayjob() -> dict:
    (job,) = [d for d in load_yaml(RAYJOB) if d.get("kind") == "RayJob"]
    return job


def test_sbatch_bash_syntax():
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)


# make install-system installs shellcheck (apt-get, as root)
@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shell_scripts_pass_shellcheck(script):
    result = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_sbatch_contract():
    text = SBATCH.read_text()
    assert text.startswith("#!/usr/bin/env bash")
    assert "set -euo pipefail" in text
    for directive in ("--nodes", "--gpus-per-task", "--cpus-per-task", "--time"):
        assert re.search(rf"^#SBATCH {directive}=", text, re.M), directive
    assert "ray start --head" in text and "--block &" in text
    assert "trap cleanup EXIT" in text
    assert re.search(r'-m neva_sweep cluster=ray hydra\.run\.dir="\$RUN_DIR" "\$@"', text)


@pytest.mark.parametrize("path", LAUNCH_YAMLS, ids=lambda p: p.name)
def test_launch_yaml_parses(path):
    assert load_yaml(path)


def test_launchers_run_the_sweep_on_ray():
    entrypoint = rayjob()["spec"]["entrypoint"]
    for text in (entrypoint, SBATCH.read_text(), RAY_CLUSTER.read_text()):
        assert "python -m neva_sweep" in text and "cluster=ray" in text
    assert entrypoint.startswith("python -m neva_sweep cluster=ray")


def test_rayjob_spec():
    job = rayjob()
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    (workers,) = cluster["workerGroupSpecs"]
    worker = workers["template"]["spec"]
    gpu_limit = worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    assert int(gpu_limit) >= 1
    claims = {d["kind"]: d for d in load_yaml(RAYJOB)}["PersistentVolumeClaim"]["metadata"]
    for pod in (head, worker):
        (container,) = pod["containers"]
        assert container["image"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["runs"]["persistentVolumeClaim"]["claimName"] == claims["name"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert spec["entrypoint"].split("hydra.run.dir=")[1].startswith(mounts["runs"])
        env = {e["name"]: e for e in container["env"]}
        key = env["WANDB_API_KEY"]
        assert "value" not in key and key["valueFrom"]["secretKeyRef"]["key"] == "WANDB_API_KEY"


def test_ray_cluster_launcher():
    cfg = load_yaml(RAY_CLUSTER)[0]
    assert cfg["head_node_type"] in cfg["available_node_types"]
    assert any(t["resources"].get("GPU", 0) > 0 for t in cfg["available_node_types"].values())
    assert any("make install" in c or "pip install -e" in c for c in cfg["setup_commands"])


@pytest.mark.parametrize("path", [*LAUNCH.iterdir()], ids=lambda p: p.name)
def test_no_literal_secrets(path):
    assert not SECRET.search(path.read_text()), f"{path} seems to contain a secret"


@pytest.mark.parametrize("name", BIG_MODELS)
def test_big_model_config(name):
    path = ROOT / "neva_sweep" / "conf" / "model" / f"{name}.yaml"
    (cfg,) = load_yaml(path)
    assert set(cfg) <= MODEL_KEYS, f"{path}: unknown keys {set(cfg) - MODEL_KEYS}"
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    ModelConfig(**{k: v for k, v in cfg.items() if k in fields})  # types/names accepted
    hub_id, dtype, tp_size = BIG_MODELS[name]
    assert cfg["name"] == hub_id
    assert cfg["dtype"] == dtype and cfg["dtype"] in DTYPES
    assert cfg["device"] == "cuda"
    assert cfg["tp_size"] == tp_size
    assert cfg["short_name"] and "/" not in cfg["short_name"]
