"""Capability measures: what an edit costs besides value expression.

- Multiple-choice accuracy on the built-in general-knowledge set (``data/mc.jsonl``):
  each option is scored as a continuation of "Question: ...\\nAnswer:" by its summed
  log-probability divided by its token count; the best-scoring option is the answer.
  The question runs once per edit and its KV cache serves its four options
  (:func:`~neva_sweep.evaluation.scoring.option_logprobs`), equal to scoring each question + option
  pair on its own up to float error.
- KL(base || edited) of next-token distributions over neutral texts, averaged over tokens.
  The base side is kept as its top-k tokens plus one bucket for the remaining mass, so it
  can be cached; KL on that coarsened distribution is a lower bound of the full KL and
  equals it when k covers the vocabulary (``coverage`` reports the kept base mass).
- The same KL on *value-laden* text (``kl_value``, :func:`value_texts`):
  ``value_replies`` chat-wrapped queries followed by the unedited model's replies to
  them. A value-relevance gate (neurons/gate.py) closes on neutral text and opens here,
  so this is the capability cost a gated edit cannot hide.
- Fluency: perplexity of (edited) replies under the unedited model.
- lm-evaluation-harness tasks with the edit active: see
:mod:`neva_sweep.evaluation.lm_eval_adapter`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config import CapabilityConfig  # noqa: F401  (the capability.* schema, re-exported)
from ..data import DataError, Records, neutral_split
from ..edits.group import Edits
from ..models.host import ModelHost
from .scoring import continuation_logprobs, option_logprobs, token_logprobs

N_CHOICES = 4


def spread(rows: list, limit: int | None, key: str) -> list:
    """At most ``limit`` rows, evenly spread over the list (deterministic)."""
    if limit is None or limit >= len(rows):
        return list(rows)
    if limit < 1:
        raise ValueError(f"{key} must be >= 1 or null; got {limit}")
    idx = np.linspace(0, len(rows) - 1, limit).round().astype(int)
    return [rows[i] for i in idx]


def mc_questions(mc: Records, limit: int | None = None) -> list[dict]:
    """The MC questions to use; each must have four choices and a valid answer index."""
    for n, r in enumerate(mc.rows, 1):
        if len(r["choices"]) != N_CHOICES or not all(isinstance(c, str) and c.strip()
                                                      for c in r["choices"]):
            raise DataError(f"{mc.path}: record {n}: needs {N_CHOICES} non-empty string choices")
        if not 0 <= r["answer"] < N_CHOICES:
            raise DataError(f"{mc.path}: record {n}: answer must be 0..{N_CHOICES - 1}")
    if not mc.rows:
        raise DataError(f"{mc.path}: no multiple-choice questions (data.mc)")
    return spread(list(mc.rows), limit, "capability.mc_limit")


@torch.inference_mode()
def mc_correct(host: ModelHost, questions: list[dict], edits: Edits = (None,),
               positions: str = "all", batch_size: int = 16) -> np.ndarray:
    """Whether each edit's best-scoring option is the right one, (G, n) bool."""
    if not questions:  # capability.mc_limit = 0
        return np.zeros((len(edits), 0), dtype=bool)
    score = mc_scores(host, questions, edits, positions, batch_size)  # (G, n, 4)
    answers = torch.tensor([q["answer"] for q in questions])
    return (score.argmax(-1) == answers).numpy()


def mc_prompt(question: dict) -> tuple[str, list[str]]:
    """The context of an MC question and its choices as continuations of it."""
    return f"Question: {question['question']}\nAnswer:", [f" {c}" for c in question["choices"]]


def mc_scores(host: ModelHost, questions: list[dict], edits: Edits = (None,),
              positions: str = "all", batch_size: int = 16) -> torch.Tensor:
    """Mean per-token log-probability of every choice of every question, (G, n, 4) float64."""
    prompts, options = zip(*(mc_prompt(q) for q in questions))
    return option_logprobs(host, list(prompts), list(options), edits, positions, batch_size)


@dataclass
class BaseDistribution:
    """Top-k base next-token log-probabilities at every position of each neutral text."""

    ids: list[torch.Tensor]  # per text (T_i, k) token ids
    logp: list[torch.Tensor]  # per text (T_i, k) log-probabilities, float32

    @property
    def coverage(self) -> float:
        """Mean base probability mass held by the kept tokens."""
        return float(torch.cat(self.logp).exp().sum(-1).mean())

    @property
    def n_tokens(self) -> int:
        return sum(len(x) for x in self.ids)


def _rest(logp_kept: torch.Tensor) -> torch.Tensor:
    """log(1 - sum(exp(kept))) over the last axis, clamped away from log(0)."""
    return torch.log1p(-logp_kept.exp().sum(-1).clamp(max=1 - 1e-6))


def kl_top_k(base_ids: torch.Tensor, base_logp: torch.Tensor, edited: torch.Tensor
             ) -> torch.Tensor:
    """Per-position KL(base || edited) on the base's top-k tokens + one rest bucket, (T,).

    ``edited`` (T, vocab) full log-probabilities; ``base_*`` (T, k).
    """
    e_kept = edited.gather(-1, base_ids)  # (T, k)
    kl = (base_logp.exp() * (base_logp - e_kept)).sum(-1)
    rest_b, rest_e = _rest(base_logp), _rest(e_kept)
    return (kl + rest_b.exp() * (rest_b - rest_e)).clamp(min=0)


def neutral_texts(neutral: Records, limit: int | None = None, split: str = "search"
                  ) -> list[str]:
    """The ``split`` part (``search`` or ``test``) of the neutral texts (never the gate's
    training texts, :func:`neva_sweep.data.neutral_split`), at most ``limit`` of them,
    evenly spread."""
    texts = neutral_split(neutral, split)
    if not texts:
        raise DataError(f"{neutral.path}: no {split} neutral texts (data.neutral; records "
                        f"with \"split\": \"{split}\""
                        + (" or without \"split\")" if split == "search" else ")"))
    return spread(texts, limit, "capability.neutral_limit")


def base_distribution(host: ModelHost, texts: list[str], k: int, batch_size: int = 8
                      ) -> BaseDistribution:
    """The unedited model's top-k next-token distribution at every position of ``texts``."""
    def top(i: int, logp: torch.Tensor):
        t = logp.topk(min(k, logp.shape[-1]), dim=-1)
        return t.indices, t.values

    rows = token_logprobs(host, texts, (None,), "all", batch_size, reduce=top)[0]
    return BaseDistribution([r[0] for r in rows], [r[1] for r in rows])


def mean_kl(host: ModelHost, texts: list[str], base: BaseDistribution, edits: Edits,
            positions: str = "all", batch_size: int = 8) -> np.ndarray:
    """Mean over all neutral-text tokens of KL(base || edited), per edit, (G,)."""
    def kl(i: int, logp: torch.Tensor) -> float:
        return float(kl_top_k(base.ids[i], base.logp[i], logp).sum())

    sums = token_logprobs(host, texts, edits, positions, batch_size, reduce=kl)
    return np.array([sum(s) for s in sums]) / base.n_tokens


def value_texts(prompts: list[str], replies: list[str]) -> list[str]:
    """The texts ``kl_value`` is measured on: each (chat-wrapped, value-laden) query
    followed by the unedited model's reply to it; empty replies are skipped.

    >>> value_texts(["<user>Q1</user>", "<user>Q2</user>"], [" A1", " "])
    ['<user>Q1</user> A1']
    """
    return [p + r for p, r in zip(prompts, replies) if r.strip()]


@torch.inference_mode()
def reply_nll(host: ModelHost, prompts: list[str], replies: list[str], batch_size: int = 16
              ) -> tuple[float, int]:
    """(total negative log-likelihood, token count) of ``replies`` after their prompts under
    ``host`` as it is (call without edits for fluency); empty replies are skipped."""
    pairs = [(p, r) for p, r in zip(prompts, replies) if r.strip()]
    if not pairs:
        return 0.0, 0
    # The replies continue the templated prompts directly, as they were generated.
    logp, n_tok = continuation_logprobs(host, [p for p, _ in pairs], [r for _, r in pairs],
                                        (None,), "all", batch_size)
    return float(-logp[0].sum()), int(n_tok.sum())


def perplexity(nll: float, n_tokens: int) -> float | None:
    return float(np.exp(nll / n_tokens)) if n_tokens else None
