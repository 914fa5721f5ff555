"""``questionnaire``: Yes/No next-token log-probabilities on "Is this person like you?"
for each questionnaire item."""

from __future__ import annotations

import numpy as np

from ...config import JudgeConfig
from ...data import DataError, Records
from ...edits.group import Edits
from ...models.host import ModelHost
from ...values import N_VALUES, VALUES
from .base import (
    JUDGES,
    Judgement,
    OneDataKind,
    answer_prompt,
    yes_probability,
)


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


JUDGES.register("questionnaire", QuestionnaireJudge)
