"""Unit tier: tiny random models in this process only. A test here that starts a process,
a Ray cluster or a torch.distributed process group fails with a message saying where it
belongs (tests/integration or tests/e2e), so `make test-fast` stays fast."""

from __future__ import annotations

import subprocess

import pytest


def _refuse(what: str):
    def refuse(*args, **kwargs):
        raise RuntimeError(f"a unit test started {what}: move it to tests/integration "
                           "(Ray, DeepSpeed, benchmark scripts) or tests/e2e (the command "
                           "line, the wheel, a browser)")

    return refuse


@pytest.fixture(autouse=True)
def _in_process_only(monkeypatch):
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse("a process"))
    monkeypatch.setattr("torch.distributed.init_process_group", _refuse("a process group"))
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a dependency
        return
    monkeypatch.setattr(ray, "init", _refuse("a Ray cluster"))
