"""``lexicon``: greedy replies labelled sentence by sentence with pyvalues' English value
dictionary."""

from __future__ import annotations

import numpy as np

from ...config import JudgeConfig
from ...data import Records
from ...edits.group import Edits
from ...models.host import ModelHost
from ...values import N_VALUES, VALUES
from ..scoring import greedy_generate
from .base import (
    JUDGES,
    Judgement,
    OneDataKind,
    pick_queries,
    split_sentences,
)


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


JUDGES.register("lexicon", LexiconJudge)
