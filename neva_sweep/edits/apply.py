"""``apply``: install one edit of any kind for every row; hooks removed on exit."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..models.host import ModelHost
from .kind import EditKind

__all__ = ["Applied", "apply", "check_edit"]

if TYPE_CHECKING:
    from .group import EditGroup


def check_edit(edit: object, where: str) -> None:
    """A TypeError saying what was passed where an edit was expected (a value name, a map)."""
    if isinstance(edit, str):
        raise TypeError(f"{where} takes an edit, not the string {edit!r}; build one with "
                        f"nv.make_edit(stats, {edit!r}, method=...) or nv.NeuronEdit(...)")
    if not callable(getattr(edit, "install", None)) or not hasattr(edit, "positions"):
        raise TypeError(f"{where} takes an edit (nv.make_edit, nv.NeuronEdit, ResidualEdit or "
                        f"PromptEdit), not a {type(edit).__name__}")


def apply(host: ModelHost, edit: EditKind, positions: str | None = None) -> Applied:
    """Install ``edit`` for every row of every batch; hooks are removed on exit.

    ``positions``: ``all`` or ``response``; by default the edit's own positions, else
    ``all``. A prompt edit installs no hooks: it acts through its prompt, which the
    scoring functions of :mod:`neva_sweep.evaluation.scoring` put into the system turn of
    chat-templated sequences and before any other sequence when given the edit
    (:meth:`~neva_sweep.edits.group.EditGroup.with_prompt`); with a plain ``host.model(...)``
    call, pass each sequence's ids through ``group.with_prompt(0, ids)``. The
    returned object may be entered again after its block ends (each ``with`` installs
    the edit anew); entering it inside its own block raises.
    """
    check_edit(edit, "nv.apply")
    return Applied(host, edit, positions or edit.positions or "all")


class Applied:
    """The context manager :func:`apply` returns: installs on enter, removes on exit."""

    def __init__(self, host: ModelHost, edit: EditKind, positions: str):
        self.host, self.edit, self.positions = host, edit, positions
        self._active = None

    def __enter__(self) -> EditGroup:
        from .group import grouped

        if self._active is not None:
            raise RuntimeError("this nv.apply(...) block is already active: entering it again "
                               "inside itself would install the edit twice; end the block "
                               "first, or call nv.apply again for a second edit")
        cm = grouped(self.host, [self.edit], self.positions)
        group = cm.__enter__()
        self._active = cm
        group.set_rows([0])  # one row group: every row of any batch
        return group

    def __exit__(self, *exc) -> bool | None:
        cm, self._active = self._active, None
        return cm.__exit__(*exc)
