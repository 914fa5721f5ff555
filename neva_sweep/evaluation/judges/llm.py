"""``llm``: greedy replies, then a judge model asked per value whether the reply puts it
first."""

from __future__ import annotations

from pathlib import Path

from ...config import JudgeConfig
from ...data import Records
from ...edits.group import Edits
from ...models.host import ModelHost, load_model
from ...values import DEFINITIONS, DISPLAY_NAMES, N_VALUES, VALUES
from ..scoring import greedy_generate
from .base import (
    JUDGES,
    Judgement,
    answer_prompt,
    pick_queries,
    yes_probability,
)


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


JUDGES.register("llm", LLMJudge)
