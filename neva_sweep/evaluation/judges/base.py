"""What every judge shares: the :data:`JUDGES` registry, the :class:`Judge` protocol, the
:class:`Judgement` record, the query helpers, Yes/No scoring and :func:`make_judge`.

A judge lives in a module of its own (forced_choice.py, questionnaire.py, lexicon.py,
llm.py, evaluation/judges/classifier.py) that registers it here; :mod:`neva_sweep.evaluation.judges`
imports them all."""


from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ...config import JudgeConfig
from ...data import DataError, Records
from ...edits.group import Edits
from ...models.host import ModelHost
from ...registry import Registry
from ..scoring import next_token_logprobs

JUDGES: Registry[type] = Registry("judge")


@dataclass
class Judgement:
    """One edit's judgement.

    E (Q, V): value expression, what the metrics read. ``raw`` (Q, V): the uncentred,
    unnormalised reading E came from (None = E itself); the mean change of ``raw`` over
    the ten values is the edit's ``acquiescence``. ``hard`` (Q, V): one-hot choices, for
    judges that pick one value per row. ``replies``: generated replies, for judges that
    generate.
    """

    E: np.ndarray
    replies: list[str] | None = None
    raw: np.ndarray | None = None
    hard: np.ndarray | None = None

    @property
    def reading(self) -> np.ndarray:
        return self.E if self.raw is None else self.raw


def split_sentences(text: str) -> list[str]:
    """The non-blank sentences of ``text`` (split after . ! ? and at line breaks)."""
    return [s for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip()]


def pick_queries(queries: Records, per_value: int | None) -> list[dict]:
    """The first ``per_value`` queries of each value (all when None), in file order."""
    if not queries.rows:
        raise DataError(f"{queries.path}: no queries (data.queries); the judge needs at least one")
    if per_value is None:
        return list(queries.rows)
    if per_value < 1:
        raise ValueError(f"judge.queries_per_value must be >= 1 or null; got {per_value}")
    seen: dict[str, int] = {}
    out = []
    for r in queries.rows:
        if seen.get(r["value"], 0) < per_value:
            seen[r["value"]] = seen.get(r["value"], 0) + 1
            out.append(r)
    return out


YES = ("Yes", " Yes", "yes", " yes", "YES")
NO = ("No", " No", "no", " no", "NO")


class Judge(Protocol):
    """A value judge. Built with ``JUDGES[name].from_config(cfg, records, judge_host)``,
    where ``records`` maps data kinds (``scenarios``, ``questionnaire``, ``queries``,
    ``neutral``, ``probes``) to loaded :class:`~neva_sweep.data.Records`."""

    name: str
    rows: list[dict] | None  # the queries whose replies a generating judge makes; else None

    def key(self) -> dict:
        """Everything that determines the outputs besides the model (a cache key part)."""

    def judge(self, host: ModelHost, edits: Edits, positions: str) -> list[Judgement]:
        """One :class:`Judgement` per edit, in order."""


class OneDataKind:
    """Mixin: judges built from their config and one data file (``data_kind``)."""

    data_kind: str

    @classmethod
    def from_config(cls, cfg: JudgeConfig, records: dict[str, Records],
                    judge_host: ModelHost | None = None, cache_dir: Path | None = None):
        return cls(cfg, records[cls.data_kind])


def answer_prompt(host: ModelHost, text: str) -> str:
    """``text`` as a user turn awaiting the assistant's first token."""
    if host.has_chat_template:
        return host.chat_prompt(text)
    return f"{text}\nAnswer:"


def first_token_ids(host: ModelHost, words: tuple[str, ...]) -> torch.Tensor:
    """Distinct first token ids of ``words`` (the ways an answer can start)."""
    ids = {host.tokenizer(w, add_special_tokens=False).input_ids[0] for w in words}
    return torch.tensor(sorted(ids))


def yes_probability(host: ModelHost, prompts: list[str], edits: Edits, positions: str,
                    batch_size: int) -> np.ndarray:
    """P(Yes) / (P(Yes) + P(No)) of the next token after each prompt, (G, n)."""
    yes, no = first_token_ids(host, YES), first_token_ids(host, NO)
    if set(yes.tolist()) & set(no.tolist()):
        raise ValueError(f"{host.name}: the tokenizer maps Yes and No answers to shared tokens")
    logp = next_token_logprobs(host, prompts, torch.cat([yes, no]), edits, positions,
                               batch_size)  # (G, n, C)
    lse_yes = torch.logsumexp(logp[..., : len(yes)], -1)
    lse_no = torch.logsumexp(logp[..., len(yes) :], -1)
    return torch.sigmoid(lse_yes - lse_no).numpy()  # (G, n)


def make_judge(cfg: JudgeConfig, records: dict[str, Records],
               judge_host: ModelHost | None = None, cache_dir: Path | None = None
                    ) -> Judge:
    """The judge named by ``cfg.name`` (``judge.name``), validated before any work.

    ``cache_dir``: where judges keep what they train (the classifier's head)."""
    return JUDGES[cfg.name].from_config(cfg, records, judge_host, cache_dir=cache_dir)

