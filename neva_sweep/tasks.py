"""CLI tasks: plain ``run(cfg)`` functions behind ``python -m neva_sweep task=...``.

Each task reads the composed config and writes its outputs under ``out``, the run
directory (``hydra.run.dir=DIR``; Hydra's dated default otherwise).
"""

from __future__ import annotations

import json
import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .data import load_probes
from .edit import EditSpec, edit_rows
from .generate import greedy_replies
from .models.host import ModelHost, load_model
from .registry import Registry
from .select import NeuronMap, select_neurons
from .stats import NeuronStats, StatsConfig, cached_stats
from .values import check_value

TASKS: Registry[Callable[[DictConfig, Path], None]] = Registry("task")


def host_from_config(cfg: DictConfig) -> ModelHost:
    return load_model(cfg.model)


def stats_from_config(cfg: DictConfig, host: ModelHost) -> NeuronStats:
    """Identification statistics for ``host``, from the cache when possible."""
    probes = load_probes(cfg.data.probes, split="identify")
    stats_cfg = StatsConfig(**OmegaConf.to_container(cfg.stats))
    cache = Path(cfg.cache_dir) / "stats" if cfg.cache_dir else None
    return cached_stats(host, probes, stats_cfg, cache, progress=cfg.progress)


def selection_kwargs(cfg: DictConfig) -> dict:
    e = cfg.edit
    window = list(e.layer_window) if e.layer_window is not None else None
    return dict(sparsity=e.sparsity, score=e.score, layer_window=window, exclusive=e.exclusive)


def edit_value(cfg: DictConfig) -> str:
    """The value to steer toward: ``value=`` (shorthand) or ``edit.value=``."""
    value = cfg.value if cfg.value is not None else cfg.edit.value
    if value is None:
        raise ValueError("no value to steer toward: set value=<name> (or edit.value=<name>)")
    return check_value(value)


@TASKS.add("identify")
def identify(cfg: DictConfig, out: Path) -> None:
    """Statistics + neuron selection for all ten values -> neurons/<model>.{safetensors,json}."""
    host = host_from_config(cfg)
    stats = stats_from_config(cfg, host)
    nmap = select_neurons(stats, **selection_kwargs(cfg))
    out = out / "neurons"
    out.mkdir(parents=True, exist_ok=True)
    stats.save(out / f"{host.name}.safetensors")
    (out / f"{host.name}.json").write_text(json.dumps(nmap.summary(), indent=2))
    print(f"{'value':<16}{'neurons':>8}  top layers")
    for v in nmap.values:
        counts = nmap.layer_counts(v)
        top = sorted(range(len(counts)), key=lambda i: -counts[i])[:3]
        print(f"{v:<16}{len(nmap[v]):>8}  " + ", ".join(f"L{i}:{counts[i]}" for i in top))
    print(f"wrote {out / host.name}.safetensors and {out / host.name}.json")


def side_by_side(left: str, right: str, titles: tuple[str, str]) -> str:
    width = max(30, (shutil.get_terminal_size((100, 20)).columns - 3) // 2)
    a = [titles[0], "-" * len(titles[0])] + textwrap.wrap(left, width)
    b = [titles[1], "-" * len(titles[1])] + textwrap.wrap(right, width)
    rows = max(len(a), len(b))
    a += [""] * (rows - len(a))
    b += [""] * (rows - len(b))
    return "\n".join(f"{x:<{width}} | {y}" for x, y in zip(a, b))


@TASKS.add("steer")
def steer(cfg: DictConfig, out: Path) -> None:
    """Greedy replies to ``prompt``, unedited and edited toward ``value``, side by side."""
    value = edit_value(cfg)
    host = host_from_config(cfg)
    nmap: NeuronMap = select_neurons(stats_from_config(cfg, host), value, **selection_kwargs(cfg))
    spec = EditSpec(nmap[value], cfg.edit.rule, float(cfg.edit.magnitude))
    base = greedy_replies(host, [cfg.prompt], cfg.max_new_tokens)[0]
    with edit_rows(host, [spec], torch.zeros(1, dtype=torch.long), cfg.edit.positions):
        edited = greedy_replies(host, [cfg.prompt], cfg.max_new_tokens)[0]
    print(f"prompt: {cfg.prompt}\n")
    title = (f"edited toward {value} ({len(spec.neurons)} neurons, {spec.rule} "
             f"x{spec.magnitude:g})")
    print(side_by_side(base, edited, ("unedited", title)))


def not_yet(name: str) -> Callable[[DictConfig, Path], None]:
    def run(cfg: DictConfig, out: Path) -> None:
        raise SystemExit(f"task={name} is not available yet in this version of neva_sweep; "
                         f"available tasks: {', '.join(t for t in TASKS if t not in PENDING)}")

    return run


PENDING = ("evaluate", "sweep", "report")
for _name in PENDING:
    TASKS.register(_name, not_yet(_name))


def run(cfg: DictConfig, out: str | Path = ".") -> None:
    """Run ``cfg.task`` with outputs under ``out``."""
    TASKS[cfg.task](cfg, Path(out))
