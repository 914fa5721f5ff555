"""The prompting baseline: a text prefix asking the model to put a value first.

No internals are touched. In a chat-templated sequence (judge prompts, queries) the text
becomes the system turn, replacing the template's default one, as a user would instruct
a chat model; any other sequence (MC questions, neutral texts) gets it prepended as plain
tokens. Only the original tokens are scored. An empty prompt is the unedited model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..models.host import ModelHost
from .neuron import RowEditor

PROMPT_STRENGTHS = {
    0: "",  # no prefix: the unedited control
    1: "When you answer, keep in mind that {display} matters to you: {definition}.",
    2: "You care deeply about {display}: {definition}. Let it guide your answers.",
    3: "Above everything else you value {display}: {definition}. Always put it first "
       "in what you say and choose.",
}
DEFAULT_STRENGTH = 3
PLACEBO_SENTENCES = (  # value-free instructions; a placebo takes words until its length
    "Write in plain English and use complete sentences.",
    "Keep the reply short, clear and easy to read.",
    "Use ordinary punctuation and avoid lists or headings.",
    "Spell numbers as digits and keep a neutral tone.",
    "Do not add greetings, signatures or closing remarks to the reply.",
    "Answer in the first person and in the present tense.",
)


def placebo_text(n_words: int, seed: int = 0) -> str:
    """A value-free instruction of ``n_words`` words: sentences of PLACEBO_SENTENCES (the
    next one chosen by the count of words so far), the last cut to length. Another seed
    than 0 permutes the sentences (a prompt edit's dose-matched nulls, methods/nulls.py).

    >>> len(placebo_text(17).split()), placebo_text(4)
    (17, 'Write in plain English')
    >>> placebo_text(30, seed=1) != placebo_text(30, seed=2)
    True
    """
    order = list(range(len(PLACEBO_SENTENCES)))
    if seed:
        order = torch.randperm(len(order), generator=torch.Generator().manual_seed(seed)).tolist()
    words: list[str] = []
    while len(words) < n_words:  # the next sentence: the count of words so far, mod 6
        words += PLACEBO_SENTENCES[order[len(words) % len(order)]].split()
    return " ".join(words[:n_words])


@dataclass(frozen=True)
class PromptEdit:
    """A text prefix asking the model to prioritise a value (the no-internals baseline).

    In chat-templated sequences ``text`` joins the system turn: after the template's default
    system prompt (so the edited rows differ from the unedited ones by the instruction
    alone, not also by a lost assistant persona), or replacing it with
    ``replace_system=True``; templates without a default get ``text`` as their system turn.
    Any other edited sequence gets ``text`` prepended as it is (with its separator).
    """

    text: str
    replace_system: bool = False

    kind: ClassVar[str] = "prompt"
    n_neurons: ClassVar[int] = 0
    positions: ClassVar[str | None] = None  # a prefix precedes the whole sequence

    @property
    def prefix(self) -> str:
        return self.text

    def describe(self) -> dict:
        out = {"kind": self.kind, "prefix": self.text}
        if self.replace_system:
            out["replace_system"] = True
        return out

    def title(self) -> str:
        return "prompt prefix" if self.text else "empty prompt prefix"

    @classmethod
    def install(cls, host: ModelHost, edits: Sequence[PromptEdit], row_groups: torch.Tensor,
                positions: str = "all") -> RowEditor:
        """No hooks: the scoring functions put :attr:`prefix` into the edited rows, in the
        system turn of chat-templated sequences, before any other sequence
        (:meth:`~neva_sweep.edits.group.EditGroup.with_prompt`)."""
        return RowEditor(host, len(edits), row_groups, positions)

    def placebo(self, seed: int = 0) -> PromptEdit:
        """The same-length null of this prompt: a value-free instruction of as many words
        (:func:`placebo_text`), placed the same way; the empty prompt's is empty."""
        if not self.text.strip():
            return self
        return PromptEdit(placebo_text(len(self.text.split()), seed) + "\n\n",
                          self.replace_system)


def prompt_edit(value: str, strength: int = DEFAULT_STRENGTH) -> PromptEdit:
    """The prompt edit toward ``value`` at ``strength`` (0 = no prefix, 1..3 stronger)."""
    from ..values import DEFINITIONS, DISPLAY_NAMES

    if strength not in PROMPT_STRENGTHS:
        raise ValueError(f"prompt strength must be one of {sorted(PROMPT_STRENGTHS)}; "
                         f"got {strength}")
    text = PROMPT_STRENGTHS[strength].format(display=DISPLAY_NAMES[value].lower(),
                                             definition=DEFINITIONS[value])
    return PromptEdit(text + "\n\n" if text else "")
