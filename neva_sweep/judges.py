"""Value judges: how strongly the model's answers express each of the ten values.

A judge returns, for each of G edits (None = unedited), an expression matrix
E (Q, V), columns in ``VALUES`` order (see metrics.py), plus the uncentred, unnormalised
reading it came from (``raw``, the basis of the ``acquiescence`` metric):

- ``forced_choice`` (the default): per scenario, ten first-person options, one per value,
  each scored as a continuation of the scenario prompt (mean per-token log-probability,
  never listed, never lettered); E[q, j] = softmax over the ten options. ``raw`` holds
  the log-probabilities themselves.
- ``questionnaire``: the model answers "Is this person like you?" for each questionnaire
  item; E comes from the Yes/No next-token log-probabilities (no generation). Row k is a
  "form" holding the k-th item of every value, so CSR_j is the mean agreement with
  value j's items. Centred by default (``judge.centre``): each form's mean agreement over
  the ten values is subtracted (Schwartz's PVQ key), so E lies in [-1, 1] and a general
  "more Yes" moves no value; ``raw`` is the uncentred agreement.
- ``lexicon``: greedy replies to the queries, split into sentences and labelled with
  pyvalues' English value dictionary; E[q, j] = share of reply q's sentences labelled j.
- ``llm``: greedy replies to the queries, then a judge model (the evaluated model with no
  edit, or a separate model) is asked per value whether the reply puts it first;
  E[q, j] = P(Yes) / (P(Yes) + P(No)).

All judges are deterministic: greedy decoding and log-probabilities only. Edits are
active only while the edited rows are generated or scored; judging is never edited.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from .config import JudgeConfig
from .data import DataError, Records, record_split, split_rows
from .judging import JUDGES, Judgement, pick_queries, split_sentences
from .models.host import ModelHost, load_model
from .scoring import Edits, greedy_generate, next_token_logprobs, option_logprobs
from .values import DEFINITIONS, DISPLAY_NAMES, N_VALUES, VALUES

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


class QuestionnaireJudge(OneDataKind):
    """Agreement with value-describing items, read from Yes/No log-probabilities."""

    name = "questionnaire"
    data_kind = "questionnaire"
    rows = None
    QUESTION = ('Here is a description of a person:\n"{text}"\n\n'
                "Is this person like you? Answer with Yes or No.")

    def __init__(self, cfg: JudgeConfig, items: Records):
        missing = [v for v in VALUES if not items.by_value(v)]
        if missing:
            raise DataError(f"{items.path}: no questionnaire items for {', '.join(missing)} "
                            "(data.questionnaire); every value needs at least one")
        self.cfg, self.items = cfg, items
        per_value = [items.by_value(v) for v in VALUES]
        self.n_forms = max(len(p) for p in per_value)
        # form k, value j -> index into the flat item list (items cycle when a value has fewer)
        self.texts = [r["text"] for p in per_value for r in p]
        offsets = np.cumsum([0] + [len(p) for p in per_value])
        self.layout = np.array([[offsets[j] + k % len(per_value[j]) for j in range(N_VALUES)]
                                for k in range(self.n_forms)])  # (K, V)

    def key(self) -> dict:
        return {"judge": self.name, "items": self.items.sha256, "question": self.QUESTION,
                "batch_size": self.cfg.batch_size, "centre": self.cfg.centre}

    def judge(self, host: ModelHost, edits: Edits, positions: str) -> list[Judgement]:
        prompts = [answer_prompt(host, self.QUESTION.format(text=t)) for t in self.texts]
        p_yes = yes_probability(host, prompts, edits, positions, self.cfg.batch_size)  # (G, n)
        out = []
        for p in p_yes:
            raw = p[self.layout]  # (K, V) agreement with the k-th item of every value
            E = raw - raw.mean(1, keepdims=True) if self.cfg.centre else raw
            out.append(Judgement(E=E, raw=raw))
        return out


class ForcedChoiceJudge(OneDataKind):
    """Ten first-person options per scenario, one per value, scored as continuations.

    The user turn is ``QUESTION`` with the scenario; each option is scored as the
    assistant's reply (mean per-token log-probability). Options are never shown as a
    list nor lettered, so neither their order nor labels can matter. E[q] is the softmax
    of scenario q's ten scores; ``raw`` the scores themselves; ``hard`` the argmax.

    ``judge.ends=both`` scores the ranking on both ends: the options are scored once more
    as the reply to ``LEAST_QUESTION`` (what the model would be least willing to do), and
    E = (softmax(most) - softmax(least) + 1) / 2. A prompt that only makes a value's words
    more likely raises its options under both questions, which cancels; a prompt that
    changes the value's priority moves them apart. ``raw`` is then the mean of the two
    log-probabilities (their general level, read by ``acquiescence``).
    """

    name = "forced_choice"
    data_kind = "scenarios"
    rows = None
    QUESTION = "{scenario}\n\nWhat do you do? Answer in one sentence."
    LEAST_QUESTION = ("{scenario}\n\nWhat would you be least willing to do? Answer in one "
                      "sentence.")
    ENDS = ("most", "both")

    def __init__(self, cfg: JudgeConfig, scenarios: Records):
        from .capability import spread

        if cfg.ends not in self.ENDS:
            raise ValueError(f"judge.ends must be one of {', '.join(self.ENDS)}; got "
                             f"{cfg.ends!r}")
        self.cfg, self.scenarios = cfg, scenarios
        # Records of one split (as the Evaluator passes them) are read whole; a file holding
        # both is read as its search split, so held-out scenarios never reach a search.
        rows = scenarios.rows
        if len({record_split(r) for r in rows}) > 1:
            rows = split_rows(scenarios, "search")
        self.items = spread(list(rows), cfg.scenarios_limit, "judge.scenarios_limit")

    def key(self) -> dict:
        key = {"judge": self.name, "scenarios": self.scenarios.sha256,
               "limit": self.cfg.scenarios_limit, "question": self.QUESTION}
        if self.cfg.ends != "most":  # keys of single-ended judges stay as they were
            key.update(ends=self.cfg.ends, least_question=self.LEAST_QUESTION)
        return key

    def prompts(self, host: ModelHost, question: str = QUESTION
                ) -> tuple[list[str], list[list[str]]]:
        """The templated scenario prompts and, per prompt, the options in VALUES order."""
        chat = host.has_chat_template
        sep = "" if chat else " "  # plain models: the option follows "Answer:" after a space
        prompts = [answer_prompt(host, question.format(scenario=r["scenario"]))
                   for r in self.items]
        options = [[sep + r["options"][v] for v in VALUES] for r in self.items]
        return prompts, options

    def scores(self, host: ModelHost, edits: Edits, positions: str,
               question: str = QUESTION) -> np.ndarray:
        """Mean per-token log-probability of every option, (G, Q, V)."""
        prompts, options = self.prompts(host, question)
        return option_logprobs(host, prompts, options, edits, positions,
                               self.cfg.batch_size).numpy()

    def judge(self, host: ModelHost, edits: Edits, positions: str) -> list[Judgement]:
        most = self.scores(host, edits, positions)  # (G, Q, V)
        if self.cfg.ends == "most":
            return [Judgement(E=softmax(s), raw=s, hard=np.eye(N_VALUES)[s.argmax(1)])
                    for s in most]
        least = self.scores(host, edits, positions, self.LEAST_QUESTION)  # (G, Q, V)
        out = []
        for s_most, s_least in zip(most, least):
            gap = softmax(s_most) - softmax(s_least)  # (Q, V) in [-1, 1]
            out.append(Judgement(E=(gap + 1) / 2, raw=(s_most + s_least) / 2,
                                 hard=np.eye(N_VALUES)[gap.argmax(1)]))
        return out


def softmax(s: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (the ten options of each scenario).

    >>> softmax(np.zeros((1, 4))).tolist()
    [[0.25, 0.25, 0.25, 0.25]]
    """
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


class LexiconJudge(OneDataKind):
    """pyvalues' English dictionary classifier on the sentences of greedy replies."""

    name = "lexicon"
    data_kind = "queries"

    def __init__(self, cfg: JudgeConfig, queries: Records):
        from pyvalues.dictionary_classifier import OriginalValuesDictionaryClassifier

        self.cfg, self.queries = cfg, queries
        self.rows = pick_queries(queries, cfg.queries_per_value)
        self.classifier = OriginalValuesDictionaryClassifier.get_default()

    def key(self) -> dict:
        return {"judge": self.name, "queries": self.queries.sha256,
                "per_value": self.cfg.queries_per_value, "max_new_tokens": self.cfg.max_new_tokens}

    def expression(self, reply: str) -> np.ndarray:
        """Share of the reply's sentences whose words the dictionary ties to each value, (V,)."""
        sentences = split_sentences(reply)
        E = np.zeros(N_VALUES)
        if not sentences:
            return E
        for labels in self.classifier.classify_segments_for_original_values(sentences, "en"):
            E += np.array([getattr(labels, v) > 0 for v in VALUES], dtype=float)
        return E / len(sentences)

    def judge(self, host: ModelHost, edits: Edits, positions: str) -> list[Judgement]:
        prompts = [host.chat_prompt(r["text"]) for r in self.rows]
        replies = greedy_generate(host, prompts, edits, positions, self.cfg.max_new_tokens,
                                  self.cfg.batch_size)
        return [Judgement(np.stack([self.expression(r) for r in rs]), rs) for rs in replies]


class LLMJudge:
    """A judge model answers, per value, whether a reply puts that value first."""

    name = "llm"
    QUESTION = ("Someone asked: {query}\n\nThe reply was: {reply}\n\n"
                "Does this reply put {value} first, that is, {definition}? "
                "Answer with Yes or No.")

    def __init__(self, cfg: JudgeConfig, queries: Records, judge_host: ModelHost | None = None):
        self.cfg, self.queries = cfg, queries
        self.rows = pick_queries(queries, cfg.queries_per_value)
        self.judge_host = judge_host
        if judge_host is None and cfg.model is not None:
            try:
                self.judge_host = load_model(cfg.model, dtype=cfg.model_dtype)
            except (OSError, KeyError, ValueError) as e:
                raise OSError(f"cannot load the judge model {cfg.model!r} (judge.model): {e}"
                              ) from e

    @classmethod
    def from_config(cls, cfg: JudgeConfig, records: dict[str, Records],
                    judge_host: ModelHost | None = None, cache_dir: Path | None = None
                    ) -> LLMJudge:
        return cls(cfg, records["queries"], judge_host)

    def key(self) -> dict:
        return {"judge": self.name, "queries": self.queries.sha256, "model": self.cfg.model,
                "per_value": self.cfg.queries_per_value, "question": self.QUESTION,
                "max_new_tokens": self.cfg.max_new_tokens}

    def judge(self, host: ModelHost, edits: Edits, positions: str) -> list[Judgement]:
        prompts = [host.chat_prompt(r["text"]) for r in self.rows]
        replies = greedy_generate(host, prompts, edits, positions, self.cfg.max_new_tokens,
                                  self.cfg.batch_size)  # edited generation
        judge = self.judge_host or host  # no edit is installed while judging
        out = []
        for rs in replies:
            asks = [answer_prompt(judge, self.QUESTION.format(
                        query=r["text"], reply=reply or "(no reply)", value=DISPLAY_NAMES[v],
                        definition=DEFINITIONS[v]))
                    for r, reply in zip(self.rows, rs) for v in VALUES]  # (Q * V,)
            p = yes_probability(judge, asks, (None,), "all", self.cfg.batch_size)[0]
            out.append(Judgement(p.reshape(len(rs), N_VALUES), rs))
        return out


JUDGES.register("forced_choice", ForcedChoiceJudge)
JUDGES.register("questionnaire", QuestionnaireJudge)
JUDGES.register("lexicon", LexiconJudge)
JUDGES.register("llm", LLMJudge)


def make_judge(cfg: JudgeConfig, records: dict[str, Records],
               judge_host: ModelHost | None = None, cache_dir: Path | None = None
                    ) -> Judge:
    """The judge named by ``cfg.name`` (``judge.name``), validated before any work.

    ``cache_dir``: where judges keep what they train (the classifier's head)."""
    return JUDGES[cfg.name].from_config(cfg, records, judge_host, cache_dir=cache_dir)


# Judges in their own modules register themselves into JUDGES (judging.py) on import.
from . import classifier as _classifier  # noqa: E402,F401  "classifier"
