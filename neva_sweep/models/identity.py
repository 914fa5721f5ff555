"""Which model a neuron map or edit was built for: its name and an architecture fingerprint.

A neuron id (layer, index) means something only in the model it was selected on; applied
to another model it silently edits unrelated neurons (or, past a layer's width, none). So
statistics, neuron maps and neuron edits carry the :class:`ModelId` of their model, and
installing an edit on a host whose id differs is refused unless asked for explicitly
(``allow_other_model=True``, ``edit.allow_other_model=true``).

The fingerprint is a short hash of what neuron ids depend on: the layer count, hidden size,
MLP width of every layer, vocabulary size and the shape of every weight. Two checkpoints of
one architecture (a base model and its fine-tune) share it, so the names are compared too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

ALLOW_HINT = "pass allow_other_model=True (edit.allow_other_model=true) to apply it anyway"


def fingerprint(model: nn.Module, layer_sizes: list[int]) -> str:
    """12 hex digits of SHA-256 over the architecture's sizes and every weight's shape.

    Computed on the full (unsharded) model; tensor-parallel shards inherit it.
    """
    cfg = getattr(model, "config", None)
    arch: dict[str, Any] = {
        "model_type": getattr(cfg, "model_type", None),
        "n_layers": len(layer_sizes),
        "hidden_size": getattr(cfg, "hidden_size", None),
        "mlp_widths": list(layer_sizes),
        "vocab_size": getattr(cfg, "vocab_size", None),
        "shapes": [[name, list(p.shape)] for name, p in model.named_parameters()],
    }
    blob = json.dumps(arch, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ModelId:
    """A model's name (``host.name``) and fingerprint (None when recorded by an older
    neva_sweep: then only the names are compared)."""

    name: str
    fingerprint: str | None = None

    def __str__(self) -> str:
        return f"{self.name!r} (fingerprint {self.fingerprint or 'unknown'})"

    def describe(self) -> dict[str, str | None]:
        """The metadata keys it is stored under (statistics, neuron map files)."""
        return {"model": self.name, "fingerprint": self.fingerprint}

    @classmethod
    def from_meta(cls, meta: dict) -> ModelId | None:
        """The id recorded in a statistics or neuron-map ``meta``; None when it has none."""
        name = meta.get("model")
        return cls(str(name), meta.get("fingerprint")) if name else None

    @classmethod
    def of_host(cls, host: Any) -> ModelId:
        return cls(host.name, host.meta.get("fingerprint"))

    def matches(self, other: ModelId) -> bool:
        if self.name != other.name:
            return False
        return self.fingerprint is None or other.fingerprint is None or (
            self.fingerprint == other.fingerprint)


def check_model(built_for: ModelId | None, host: Any, what: str, allow: bool = False) -> None:
    """Refuse to apply ``what`` (built for ``built_for``) to ``host`` when they differ.

    Nothing is checked when ``allow`` or when the origin is unknown (hand-built neurons).
    """
    if allow or built_for is None:
        return
    here = ModelId.of_host(host)
    if not built_for.matches(here):
        raise ValueError(f"{what} was built for another model: {built_for}, not {here}; use "
                         f"one built for {here.name!r} or {ALLOW_HINT}")
