"""Ray actors hosting model shards: one :class:`Replica` = ``tp_size`` :class:`ShardActor` s.

SPMD contract. A replica's shards form one torch.distributed group (gloo on CPU, NCCL
on GPU) and one DeepSpeed AutoTP model (:mod:`neva_sweep.models.tp`). Every shard must
run the same forward passes in the same order, because the down-projections all-reduce
across shards. So a replica is driven only through :meth:`Replica.call` /
:meth:`Replica.call_all`, which send the *same* ``fn(host, *args, **kwargs)`` to every
shard; Ray runs each actor's calls one at a time in submission order, which keeps the
shards in step as long as a single driver process drives the replica.

What ``fn`` sees: ``host`` is the shard's :class:`~neva_sweep.models.host.ModelHost`.
Forward passes return full logits on every rank; neuron hooks (statistics, edits) see
only the rank's ``host.neuron_slices``. ``fn`` must be a picklable module-level function
and must not branch on the rank around forward passes. Results: :meth:`Replica.call`
gives rank 0's (every rank's result is fetched to check for errors, so keep results of
ranks > 0 small, e.g. return None when ``host.meta.get("rank")``); :meth:`call_all`
gives every rank's. If one rank raises while the others wait in a collective, the call
fails at once but the replica is stuck: :meth:`Replica.restart` it.

Example (needs a Ray cluster; tests/integration/test_tp.py runs it)::

    ray.init(num_cpus=4)
    rep = Replica({"name": "tiny-llama"}, tp_size=2)
    stats = rep.collect_stats(nv.load_probes())           # NeuronStats over all 192 neurons
    logits = ray.get(rep.call(my_forward, texts))         # def my_forward(host, texts): ...
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable, Mapping
from typing import Any

import ray
import torch
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ..data import ProbeSet
from ..models.host import ModelHost
from ..models.tp import init_process_group, load_tp_host
from ..neurons.stats import NeuronStats, StatsConfig, collect_stats, concat
from ..plugins import load_env_plugins

_START_ERROR = "cannot start shard"


# ping runs in its own thread, so a shard busy with a long call still answers alive().
@ray.remote(concurrency_groups={"health": 1})
class ShardActor:
    """One rank of a replica: joins the process group and loads its shard at creation.

    Torch uses as many threads as the actor has CPUs (its ``num_cpus`` option).
    Environment variables come through the actor's ``runtime_env`` (see :class:`Replica`),
    so that they are set before the process imports anything.
    """

    def __init__(self, model_cfg: dict, rank: int, tp_size: int, master_addr: str,
                 master_port: int):
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        torch.set_num_threads(max(1, int(cpus)))
        self.rank = rank
        # The actor's stderr reaches the driver's terminal (log_to_driver): warnings yes,
        # the weight-loading progress bars of every replica no.
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        try:
            load_env_plugins()  # the user's plugins register here too (plugins=[...])
            if tp_size > 1:
                init_process_group(rank, tp_size, master_addr, master_port)
            self.host = load_tp_host(model_cfg, tp_size)
        except Exception as e:
            raise RuntimeError(
                f"{_START_ERROR} {rank}/{tp_size} of model {model_cfg.get('name')!r} "
                f"(model.name, model.tp_size): {type(e).__name__}: {e}"
            ) from e

    def call(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
        """``fn(host, *args, **kwargs)`` on this shard."""
        return fn(self.host, *args, **kwargs)

    @ray.method(concurrency_group="health")
    def ping(self) -> int:
        return self.rank


class Replica:
    """A model replica on a Ray cluster: ``tp_size`` shard actors in one placement group.

    Args:
        model_cfg: a model config (``neva_sweep.config.ModelConfig`` fields, as a dict,
            dataclass or OmegaConf node) or a model name; ``device: cuda`` puts every
            shard on its own GPU (placement ``STRICT_PACK``, one node), CPU shards are
            placed with ``PACK``.
        tp_size: shards (tensor-parallel ranks); 1 = the whole model in one actor.
        num_cpus: CPUs per shard; also its torch thread count.
        num_gpus: GPUs per shard when the model is on ``cuda`` (a fraction shares a GPU).
        env: environment variables for the shard processes, set before they start (some
            are read at import time: ``HF_HUB_OFFLINE``, ``DS_ACCELERATOR``, ``NCCL_*``).
            ``DS_ACCELERATOR`` defaults to ``cpu`` or ``cuda`` from the model's device.
        startup_timeout_s: how long placing the shards and loading the model may take.

    Ray must be initialised (``ray.init``) before. See the module docstring for the
    SPMD contract of :meth:`call`.
    """

    def __init__(self, model_cfg: Any, tp_size: int = 1, num_cpus: float = 1,
                 env: dict[str, str] | None = None, startup_timeout_s: float = 600.0,
                 num_gpus: float = 1):
        if tp_size < 1:
            raise ValueError(f"model.tp_size must be >= 1, got {tp_size}")
        self.model_cfg = _as_dict(model_cfg)
        self.tp_size = tp_size
        self.num_cpus = num_cpus
        self.use_gpu = str(self.model_cfg.get("device", "cpu")).startswith("cuda")
        self.num_gpus = num_gpus if self.use_gpu else 0
        self.env = {"DS_ACCELERATOR": "cuda" if self.use_gpu else "cpu", **(env or {})}
        self.startup_timeout_s = startup_timeout_s
        self.actors: list[ray.actor.ActorHandle] = []
        self.pg: PlacementGroup | None = None
        self._start()

    @property
    def name(self) -> str:
        return self.model_cfg.get("short_name") or self.model_cfg["name"]

    def _start(self) -> None:
        bundle = {"CPU": self.num_cpus, **({"GPU": self.num_gpus} if self.use_gpu else {})}
        # GPU shards all-reduce after every MLP: keep them on one node.
        self.pg = placement_group([bundle] * self.tp_size,
                                  strategy="STRICT_PACK" if self.use_gpu else "PACK")
        ready, _ = ray.wait([self.pg.ready()], timeout=self.startup_timeout_s)
        if not ready:
            self.kill()
            raise RuntimeError(
                f"cannot place {self.tp_size} shard(s) of {bundle} for model {self.name!r} "
                f"within {self.startup_timeout_s:.0f} s; the cluster has "
                f"{ray.cluster_resources()}. Lower model.tp_size or the CPUs per shard, or "
                "give the cluster more resources (cluster.*)"
            )
        addr, port = "", 0
        if self.tp_size > 1:  # rank 0 hosts the rendezvous, on its own node
            addr, port = ray.get(_free_address.options(
                scheduling_strategy=self._on_bundle(0)).remote())
        self.actors = [
            ShardActor.options(num_cpus=self.num_cpus, num_gpus=self.num_gpus,
                               scheduling_strategy=self._on_bundle(rank),
                               runtime_env={"env_vars": self.env})
            .remote(self.model_cfg, rank, self.tp_size, addr, port)
            for rank in range(self.tp_size)
        ]
        try:
            get_all([a.ping.remote() for a in self.actors], timeout_s=self.startup_timeout_s)
        except Exception as e:
            self.kill()
            msg = str(e)
            if isinstance(e, ray.exceptions.RayActorError) and _START_ERROR in msg:
                # Ray's message is the whole traceback chain; lead with the shard's own error.
                raise RuntimeError(msg[msg.rfind(_START_ERROR):]) from e
            raise

    def _on_bundle(self, index: int) -> PlacementGroupSchedulingStrategy:
        return PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=index)

    def call(self, fn: Callable[..., Any], *args, **kwargs) -> ray.ObjectRef:
        """Run ``fn(host, *args, **kwargs)`` on every shard; a ref to rank 0's result.

        The ref fails as soon as any rank fails, with that rank's error.
        """
        refs = self.call_all(fn, *args, **kwargs)
        if len(refs) == 1:
            return refs[0]
        return _rank0_result.remote(refs)  # refs inside a list: passed, not resolved

    def call_all(self, fn: Callable[..., Any], *args, **kwargs) -> list[ray.ObjectRef]:
        """Run ``fn(host, *args, **kwargs)`` on every shard; refs to each rank's result."""
        if not self.actors:
            raise RuntimeError(f"replica of {self.name!r} was killed; call restart() first")
        return [a.call.remote(fn, *args, **kwargs) for a in self.actors]

    def collect_stats(self, probes: ProbeSet, config: StatsConfig | None = None) -> NeuronStats:
        """:func:`neva_sweep.neurons.stats.collect_stats` on every shard, joined over the
        neurons."""
        stats = concat(get_all(self.call_all(_collect_stats, probes, config)))
        stats.meta.update(neuron_slices=[[0, w] for w in stats.layer_sizes],
                          tp_size=self.tp_size)
        return stats

    def alive(self, timeout_s: float = 30.0) -> bool:
        """Whether every shard answers a ping within ``timeout_s``."""
        if not self.actors:
            return False
        try:
            get_all([a.ping.remote() for a in self.actors], timeout_s=timeout_s)
        except (ray.exceptions.RayError, TimeoutError):
            return False
        return True

    def kill(self) -> None:
        """Kill the shard actors and free their placement group."""
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []
        if self.pg is not None:
            remove_placement_group(self.pg)
            self.pg = None

    def restart(self) -> None:
        """Kill and re-create all shards (new process group, model reloaded)."""
        self.kill()
        self._start()


def get_all(refs: list[ray.ObjectRef], timeout_s: float | None = None) -> list[Any]:
    """``ray.get(refs)``, but raising the first error as soon as it arrives.

    Plain ``ray.get`` waits for every ref, which never happens when a failed rank leaves
    the others blocked in a collective.
    """
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1, timeout=timeout_s)
        if not done:
            raise TimeoutError(f"{len(pending)} of {len(refs)} shards did not answer within "
                               f"{timeout_s} s")
        ray.get(done)  # raises that rank's error
    return ray.get(refs)


@ray.remote(num_cpus=0)
def _rank0_result(refs: list[ray.ObjectRef]) -> Any:
    return get_all(refs)[0]


@ray.remote(num_cpus=0)
def _free_address() -> tuple[str, int]:
    """(IP, free TCP port) of the node this runs on."""
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    return ray.util.get_node_ip_address(), port


def _collect_stats(host: ModelHost, probes: ProbeSet, config: StatsConfig | None) -> NeuronStats:
    return collect_stats(host, probes, config, progress=False)


def _as_dict(model_cfg: Any) -> dict:
    """A plain dict of model config fields (picklable, no OmegaConf in the actors)."""
    if isinstance(model_cfg, str):
        return {"name": model_cfg}
    if dataclasses.is_dataclass(model_cfg):
        return dataclasses.asdict(model_cfg)
    if isinstance(model_cfg, Mapping):
        return {str(k): v for k, v in model_cfg.items()}
    raise TypeError(f"model config must be a name, dict or dataclass, got {type(model_cfg)}")
