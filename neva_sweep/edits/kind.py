"""The edit-kind protocol (:class:`EditKind`), on its own so that the stages that take
edits of any kind (scoring, methods) import it without importing :mod:`neva_sweep.edits`,
whose :func:`~neva_sweep.methods.make_edit` and :func:`~neva_sweep.edits.apply` use them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Protocol

import torch

from ..models.host import ModelHost
from .neuron import RowEditor


class EditKind(Protocol):
    """An edit of any kind (see :mod:`neva_sweep.edits`)."""

    kind: ClassVar[str]  # "neurons", "residual", "prompt": the ``kind`` of describe()

    @property
    def positions(self) -> str | None: ...

    @property
    def prefix(self) -> str: ...

    @property
    def n_neurons(self) -> int: ...

    def describe(self) -> dict[str, Any]: ...

    def title(self) -> str: ...

    @classmethod
    def install(cls, host: ModelHost, edits: Sequence[Any], row_groups: torch.Tensor,
                positions: str = "all") -> RowEditor: ...
