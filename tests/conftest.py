"""Shared fixtures: composed configs, tiny random models and the built-in probes.

The tests come in three tiers, one folder each, marked by it: ``unit`` (tiny random
models in this process: no process, Ray or process group, which tests/unit/conftest.py
refuses; ``make test-fast``), ``integration`` (real Ray, DeepSpeed AutoTP on gloo, the
benchmark scripts, the embedded model) and ``e2e`` (the command line as users run it,
the wheel, a real browser). The package's doctests count as unit tests; those that load
a model are also marked ``loads_model``."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

import neva_sweep as nv
from neva_sweep.config import compose_config
from tests.helpers import SWEEP_FAST


@pytest.fixture(scope="session")
def config() -> Callable[..., DictConfig]:
    """``config(*overrides)``: a composed config (see :func:`compose_config`)."""
    return compose_config


@pytest.fixture(scope="session")
def probes() -> nv.data.ProbeSet:
    return nv.load_probes(split="identify")


@pytest.fixture(scope="session")
def small_probes(probes) -> nv.data.ProbeSet:
    """Six texts per value: enough for statistics, fast on a tiny model."""
    return probes.shard(0, 6)


@pytest.fixture(scope="session")
def tiny_host() -> nv.ModelHost:
    return nv.load_model("tiny-llama")


@pytest.fixture(scope="session")
def tiny_stats(tiny_host, small_probes) -> nv.NeuronStats:
    return nv.collect_stats(tiny_host, small_probes, progress=False)


@pytest.fixture
def batch(tiny_host):
    return tiny_host.tokenize(["I help my neighbour carry boxes.", "The capital is Paris."])


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """Statistics and unedited sides shared by one module's sweeps."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def sweep_cfg(config, cache):
    """``sweep_cfg(*overrides)``: a fast sweep on tiny-llama (``SWEEP_FAST``)
    sharing the module's cache."""
    return lambda *overrides: config(*SWEEP_FAST, f"cache_dir={cache}", *overrides)


TIERS = ("unit", "integration", "e2e")


def pytest_configure(config) -> None:
    """Under pytest-xdist (``make test`` runs ``-n 2``) each worker gets its share of the
    cores, for torch here and for the processes its tests start (OMP_NUM_THREADS): torch
    takes every core by default, and two workers that each spin on both cores made the
    unit tier slower in parallel (245 s) than serial (141 s); with the share it took 102 s."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        share = max(1, (os.cpu_count() or 1) // workers)
        torch.set_num_threads(share)
        os.environ["OMP_NUM_THREADS"] = str(share)


def pytest_collection_modifyitems(config, items) -> None:
    """Mark each test with its tier (its folder); doctests are unit tests, and the ones
    that load a model are also ``loads_model``."""
    for item in items:
        parts = Path(str(item.path)).parts
        tier = next((t for t in TIERS if "tests" in parts and t in parts), "unit")
        item.add_marker(tier)
        if isinstance(item, pytest.DoctestItem) and "load_model(" in "".join(
                str(ex.source) for ex in item.dtest.examples):
            item.add_marker("loads_model")
