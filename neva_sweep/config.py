"""Typed configuration: dataclass schemas registered in Hydra's ConfigStore.

The YAML groups in ``conf/`` mirror these classes; ``conf/config.yaml`` composes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from .capability import CapabilityConfig
from .edit import DEFAULT_MAGNITUDE, DEFAULT_RULE
from .judges import JudgeConfig
from .select import DEFAULT_SCORE, DEFAULT_SPARSITY


@dataclass
class ModelConfig:
    """Which model to host (``conf/model/*.yaml``)."""

    name: str = MISSING  # registry name (smollm2-135m, tiny-llama, ...), HF id or local path
    short_name: str | None = None  # used in output file names; defaults to the last path part
    dtype: str = "float32"  # float32 | bfloat16 | float16
    device: str = "cpu"
    trust_remote_code: bool = False
    tp_size: int = 1  # tensor-parallel degree: GPUs (or CPU processes) per model replica


@dataclass
class DataConfig:
    """Value data files; None = the files shipped with neva_sweep (docs/data.md)."""

    probes: str | None = None
    queries: str | None = None
    questionnaire: str | None = None
    neutral: str | None = None
    mc: str | None = None


@dataclass
class StatsSection:
    """Mirrors :class:`neva_sweep.stats.StatsConfig`."""

    batch_size: int = 16
    max_length: int = 128
    bins: int = 32
    hist_scale: float = 0.2
    hist_stride: int = 3
    quantile: float = 0.95


@dataclass
class EditConfig:
    """Neuron selection and edit settings (``edit.*``)."""

    value: str | None = None
    sparsity: float = DEFAULT_SPARSITY
    magnitude: float = DEFAULT_MAGNITUDE
    rule: str = DEFAULT_RULE
    score: str = DEFAULT_SCORE
    positions: str = "all"
    layer_window: list[int] | None = None
    exclusive: bool = False


@dataclass
class Config:
    task: str = "sweep"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    stats: StatsSection = field(default_factory=StatsSection)
    edit: EditConfig = field(default_factory=EditConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    capability: CapabilityConfig = field(default_factory=CapabilityConfig)
    value: str | None = None  # shorthand for edit.value
    prompt: str = "My friend asked me to help them move house this weekend. What should I do?"
    max_new_tokens: int = 60
    cache_dir: str | None = "${oc.env:NEVA_SWEEP_CACHE,${oc.env:HOME,.}/.cache/neva_sweep}"
    progress: bool = True


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="neva_sweep_schema", node=Config)
