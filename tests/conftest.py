"""Shared fixtures: composed configs, tiny random models (tier 1) and the built-in probes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

import neva_sweep as nv
from neva_sweep.config import compose_config


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


def capture_site_inputs(host, fn) -> list[torch.Tensor]:
    """Run ``fn()`` and return what each neuron site received (after any edit hooks)."""
    seen: list[torch.Tensor] = [None] * host.n_layers

    def make(layer):
        def hook(module, args):
            seen[layer] = args[0].detach().clone()

        return hook

    # Registered last, so it sees the input after edit hooks installed earlier.
    handles = [s.register_forward_pre_hook(make(i)) for i, s in enumerate(host.sites)]
    try:
        fn()
    finally:
        for h in handles:
            h.remove()
    return seen


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """Statistics and unedited sides shared by one module's sweeps."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def sweep_cfg(config, cache):
    """``sweep_cfg(*overrides)``: a fast sweep on tiny-llama (tests/test_sweep.py's FAST)
    sharing the module's cache."""
    from tests.test_sweep import FAST

    return lambda *overrides: config(*FAST, f"cache_dir={cache}", *overrides)
