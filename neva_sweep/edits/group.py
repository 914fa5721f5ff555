"""Edits of any kind installed together on one model: :class:`EditGroup` (one row of a
batch, one edit) and the prompt prefixes of prompt edits (:meth:`EditGroup.with_prompt`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from ..models.host import ModelHost
from .kind import EditKind
from .neuron import RowEditor

Edits = Sequence[EditKind | None]  # None = unedited


def encode(host: ModelHost, text: str, special: bool = True, max_length: int | None = None
           ) -> list[int]:
    ids = host.tokenizer(text, add_special_tokens=special).input_ids
    return ids[-max_length:] if max_length else ids  # keep the end: it is what gets scored


def default_system_prompt(host: ModelHost) -> str:
    """The system prompt the chat template puts in when none is given ("" when it puts
    none, or the model has no chat template)."""
    if not host.has_chat_template:
        return ""
    mark = "\x00"
    plain = host.chat_prompt(mark).split(mark)[0]  # the head with the default system turn
    head, tail = host.chat_prompt(mark, system=mark).split(mark)[:2]  # around the system text
    if plain.startswith(head) and tail and tail in plain[len(head):]:
        return plain[len(head):plain.index(tail, len(head))]
    return ""


class EditGroup:
    """G edits of any kind installed at once; each batch row picks one (or none).

    Each kind installs its own edits (``type(e).install``, one editor per kind, with the
    kind's edits indexed locally). Edits with a ``prefix`` (prompt edits) change the
    tokens of their rows, see :meth:`with_prompt`.
    """

    def __init__(self, host: ModelHost, edits: Edits, positions: str):
        self.editors: list[tuple[RowEditor, list[int]]] = []  # (editor, local group or -1)
        for kind in dict.fromkeys(type(e) for e in edits if e is not None):
            local, mine = [], []
            for e in edits:
                local.append(len(mine) if type(e) is kind else -1)
                if type(e) is kind:
                    mine.append(e)
            self.editors.append((kind.install(host, mine, torch.full((1,), -1), positions),
                                 local))
        self.prefixes = [encode(host, e.prefix, special=False) if e is not None and e.prefix
                         else [] for e in edits]
        # Chat-templated sequences get the prompt in their system turn instead: the token
        # ids of the template's head (up to the user text) with the default system turn,
        # and with the default system prompt followed by edit g's prompt (or the prompt
        # alone: PromptEdit.replace_system, or a template without a default).
        self.heads: list[tuple[list[int], list[int]] | None] = [None] * len(edits)
        if host.has_chat_template:
            mark = "\x00"
            default = encode(host, host.chat_prompt(mark).split(mark)[0])
            base = default_system_prompt(host)
            for g, e in enumerate(edits):
                if e is not None and e.prefix:
                    text = e.prefix.strip()
                    if base and not getattr(e, "replace_system", False):
                        text = f"{base}\n\n{text}"
                    system = host.chat_prompt(mark, system=text).split(mark)[0]
                    self.heads[g] = (default, encode(host, system))

    def with_prompt(self, g: int, ids: list[int]) -> list[int]:
        """``ids`` as edit g's rows see them: a chat-templated sequence gets edit g's prompt
        as its system turn (replacing the default one), any other sequence gets the prompt
        prepended as plain tokens; unchanged for edits without a prompt."""
        head = self.heads[g]
        if head is not None and ids[: len(head[0])] == head[0]:
            return head[1] + ids[len(head[0]):]
        return self.prefixes[g] + ids
    def set_rows(self, groups: list[int]) -> None:
        for editor, local in self.editors:
            editor.set_rows(torch.tensor([local[g] for g in groups]))

    def set_response_start(self, start: torch.Tensor | None) -> None:
        for editor, _ in self.editors:
            editor.response_start = start

    def remove(self) -> None:
        for editor, _ in self.editors:
            editor.remove()


@contextmanager
def grouped(host: ModelHost, edits: Edits, positions: str) -> Iterator[EditGroup]:
    """Install ``edits`` (None = unedited); hooks are removed on exit."""
    group = EditGroup(host, list(edits), positions)
    try:
        yield group
    finally:
        group.remove()
