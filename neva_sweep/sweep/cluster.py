"""The Ray side of a sweep: the Ray instance, model replicas, statistics once per model.

``cluster=local`` starts a private Ray instance in this process (``address="local"``,
never joining another process's cluster); ``cluster=ray`` connects to a running one.
Each model gets ``replicas_per_model`` :class:`~neva_sweep.sweep.replica.Replica` s; the
scheduler sees each as a :class:`ReplicaWorker`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import ray
from omegaconf import DictConfig

from ..data import ProbeSet
from ..neurons.stats import NeuronStats, StatsConfig, cache_key, load_cached, merge
from ..plugins import plugins_env
from .plan import ModelEntry, Resources
from .replica import Replica
from .worker import EvalSetup, StatsBox, prepare, run_trials

# Environment the shard processes need from the driver's (read at import time there).
FORWARDED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "HF_HUB_CACHE",
                 "NEVA_SWEEP_CACHE")


@contextmanager
def ray_session(cluster: DictConfig) -> Iterator[Resources]:
    """Ray for the sweep: reuses an initialised one (tests), else starts or joins one."""
    started = False
    if not ray.is_initialized():
        if cluster.kind == "local":
            # log_to_driver: the actors' warnings and errors reach this terminal, prefixed
            # with the actor; their full logs stay in Ray's session directory.
            ray.init(address="local", num_cpus=cluster.num_cpus or os.cpu_count(),
                     include_dashboard=False, log_to_driver=True, configure_logging=False)
        else:
            ray.init(address=cluster.address or "auto", log_to_driver=True,
                     configure_logging=False)
        started = True
    try:
        yield cluster_resources()
    finally:
        if started:
            ray.shutdown()


def cluster_resources() -> Resources:
    total = ray.cluster_resources()
    per_node = [n["Resources"].get("GPU", 0) for n in ray.nodes() if n.get("Alive")]
    return Resources(total.get("CPU", 0), total.get("GPU", 0), max(per_node, default=0))


class ReplicaWorker:
    """One model replica as the scheduler drives it."""

    def __init__(self, model: ModelEntry, index: int, replica: Replica, box: StatsBox,
                 setup: EvalSetup):
        self.model, self.name, self.replica = model.label, f"{model.label}#{index}", replica
        self.tp_size = model.tp_size
        self.box, self.setup = box, setup

    def prepare(self) -> ray.ObjectRef:
        """Fetch statistics, build the evaluator and its unedited side on the actors."""
        return self.replica.call(prepare, self.box, self.setup)

    def submit(self, trials: list[dict]) -> ray.ObjectRef:
        """Evaluate ``trials`` in one batched call; resolves to one result dict per trial."""
        return self.replica.call(run_trials, self.box, self.setup, trials)

    def restart(self) -> None:
        self.replica.restart()
        ray.get(self.prepare())

    def kill(self) -> None:
        self.replica.kill()


def actor_env(plugins: list[str] | None = None) -> dict[str, str]:
    """The shard processes' environment: :data:`FORWARDED_ENV` from the driver's, and the
    ``plugins`` to import (neva_sweep/plugins.py)."""
    return {**{k: os.environ[k] for k in FORWARDED_ENV if k in os.environ},
            **plugins_env(plugins or [])}


def start_replicas(models: list[ModelEntry], counts: dict[str, int], cluster: DictConfig,
                   plugins: list[str] | None = None) -> dict[str, list[Replica]]:
    """Every model's replicas, started in parallel (model loading dominates); each shard
    imports ``plugins`` (``plugins=[...]``) before it loads its model."""
    jobs = [(m, i) for m in models for i in range(counts[m.label])]

    def start(job: tuple[ModelEntry, int]) -> Replica:
        m, _ = job
        return Replica(m.config, tp_size=m.tp_size, num_cpus=cluster.num_cpus_per_actor,
                       num_gpus=cluster.num_gpus_per_actor, env=actor_env(plugins))

    out: dict[str, list[Replica]] = {m.label: [] for m in models}
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = [(job, pool.submit(start, job)) for job in jobs]
        errors = []
        for (m, _), fut in futures:
            try:
                out[m.label].append(fut.result())
            except Exception as e:  # keep going so that every started replica is returned
                errors.append(e)
    if errors:
        for reps in out.values():
            for r in reps:
                r.kill()
        raise errors[0]
    return out


def _host_info(host) -> dict:
    return {"name": host.name, "meta": {k: host.meta.get(k) for k in ("spec", "dtype")},
            "layer_sizes": list(host.layer_sizes)}


def stats_path(replica: Replica, probes: ProbeSet, cfg: StatsConfig, cache_dir: Path) -> Path:
    """Where ``cached_stats`` keeps this model's statistics (the same file as task=identify).

    The key is that of an unsharded host, whatever the replica's tp_size.
    """
    info = ray.get(replica.call(_host_info))
    full = SimpleNamespace(name=info["name"], meta=info["meta"],
                           neuron_slices=[(0, w) for w in info["layer_sizes"]])
    return cache_dir / f"{info['name']}-{cache_key(full, probes, cfg)}.safetensors"


def model_stats(replicas: list[Replica], probes: ProbeSet, cfg: StatsConfig,
                cache_dir: Path | None) -> NeuronStats:
    """Statistics of one model: from the cache, else the probes split across its replicas."""
    path = stats_path(replicas[0], probes, cfg, cache_dir) if cache_dir else None
    cached = load_cached(path) if path is not None else None
    if cached is not None:
        return cached
    n = len(replicas)
    with ThreadPoolExecutor(max_workers=n) as pool:
        parts = list(pool.map(lambda r: replicas[r].collect_stats(probes.shard(r, n), cfg),
                              range(n)))
    stats = parts[0]
    for part in parts[1:]:
        stats = merge(stats, part)
    if path is not None:
        stats.save(path)
    return stats
