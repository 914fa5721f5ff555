"""``forced_choice`` (the default judge): per scenario, ten first-person options, one per
value, each scored as a continuation of the scenario prompt."""

from __future__ import annotations

import numpy as np

from ...config import JudgeConfig
from ...data import Records, record_split, split_rows
from ...edits.group import Edits
from ...models.host import ModelHost
from ...values import N_VALUES, VALUES
from ..scoring import option_logprobs
from .base import (
    JUDGES,
    Judgement,
    OneDataKind,
    answer_prompt,
)


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

    def __init__(self, cfg: JudgeConfig, scenarios: Records, picked: list[int] | None = None):
        from ..capability import spread

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
        # a pruned trial's rung reads some of these rows only (evaluation/rungs.py)
        self.picked = None if picked is None else [int(i) for i in picked]
        if self.picked is not None:
            if any(not 0 <= i < len(self.items) for i in self.picked):
                raise ValueError(f"forced_choice: rows {self.picked} out of its "
                                 f"{len(self.items)} scenarios")
            self.items = [self.items[i] for i in self.picked]

    @property
    def n_rows(self) -> int:
        """The rows (scenarios) it judges: the range of :meth:`subset`'s positions."""
        return len(self.items)

    def subset(self, rows: list[int]) -> ForcedChoiceJudge:
        """This judge reading only its scenarios ``rows`` (positions in its own rows)."""
        if self.picked is not None:
            rows = [self.picked[i] for i in rows]
        return type(self)(self.cfg, self.scenarios, rows)

    def key(self) -> dict:
        key = {"judge": self.name, "scenarios": self.scenarios.sha256,
               "limit": self.cfg.scenarios_limit, "question": self.QUESTION}
        if self.picked is not None:
            key["rows"] = self.picked
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


JUDGES.register("forced_choice", ForcedChoiceJudge)
