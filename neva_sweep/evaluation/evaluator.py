"""Evaluation of edits: value expression (judge), alignment/leakage metrics, capability cost.

:class:`Evaluator` holds one model's unedited side (base judgement, base MC answers, base
next-token distributions on neutral texts, base reply perplexity), computed once and
cached on disk keyed by (model, data, judge and capability config). ``evaluate`` then
scores any number of edits in shared, trial-batched forward passes and returns one record
per edit with the fields of ``eval.json`` (docs/guide.md, "Evaluating an edit").

The judge's *null* (:meth:`Evaluator.null`) is the alignment of random-neuron edits of the
default size, one per value: what the judge reports for an edit that targets nothing.
Twice its standard deviation is the floor on NLR's and CWL's denominator
(``nlr_floor``), so an alignment inside the judge's noise never makes leakage look small.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import JudgeConfig
from ..data import DataError, Records, load_records, split_rows
from ..edits.kind import EditKind
from ..edits.neuron import NeuronEdit
from ..files import atomic_path, load_or_heal, write_text_atomic
from ..models.host import ModelHost
from ..values import VALUES, check_value
from .capability import (
    BaseDistribution,
    CapabilityConfig,
    base_distribution,
    mc_correct,
    mc_questions,
    mean_kl,
    neutral_texts,
    perplexity,
    reply_nll,
    spread,
    value_texts,
)
from .judges.base import Judge, Judgement, make_judge, pick_queries
from .metrics import EPS, acquiescence, bootstrap_ci, edit_metrics, inflation, mean_ci, suppression
from .rungs import carry, first_rung_rows, merge, over_budget, rest_rows, splittable
from .scoring import greedy_generate

log = logging.getLogger(__name__)

CACHE_VERSION = 3  # 3: the base distribution on value-laden replies (kl_value)
DATA_KINDS = ("scenarios", "questionnaire", "queries", "neutral", "mc", "probes")
MIN_NLR_FLOOR = 1e-4  # the floor when the null has no spread (e.g. a judge that never moves)


@dataclass
class BaseSide:
    """Everything about the unedited model that edited runs are compared with."""

    judgement: Judgement
    mc_correct: np.ndarray  # (n_mc,) bool
    neutral: BaseDistribution
    fluency_prompts: list[str]
    fluency_replies: list[str]
    ppl: float | None
    # the value-laden replies kl_value reads (capability.value_texts) and the top-k
    # next-token distributions on them
    value_texts: list[str] = field(default_factory=list)
    value: BaseDistribution | None = None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        j = self.judgement
        blob = {
            "E": torch.from_numpy(j.E),
            "raw": None if j.raw is None else torch.from_numpy(j.raw),
            "hard": None if j.hard is None else torch.from_numpy(j.hard),
            "replies": j.replies,
            "mc_correct": torch.from_numpy(self.mc_correct),
            "neutral_ids": self.neutral.ids,
            "neutral_logp": self.neutral.logp,
            "fluency_prompts": self.fluency_prompts,
            "fluency_replies": self.fluency_replies,
            "ppl": self.ppl,
            "value_texts": self.value_texts,
            "value_ids": None if self.value is None else self.value.ids,
            "value_logp": None if self.value is None else self.value.logp,
        }
        with atomic_path(path) as tmp:  # concurrent evaluators never read half a file
            torch.save(blob, tmp)

    @classmethod
    def load(cls, path: Path) -> BaseSide:
        b = torch.load(path, weights_only=True)  # errors: see Evaluator._load_base

        def arr(key: str) -> np.ndarray | None:
            return None if b.get(key) is None else b[key].numpy()

        value = (None if b.get("value_ids") is None
                 else BaseDistribution(b["value_ids"], b["value_logp"]))
        return cls(Judgement(b["E"].numpy(), b["replies"], arr("raw"), arr("hard")),
                   b["mc_correct"].numpy(),
                   BaseDistribution(b["neutral_ids"], b["neutral_logp"]),
                   b["fluency_prompts"], b["fluency_replies"], b["ppl"],
                   b.get("value_texts") or [], value)


def of_split(records: Records, split: str) -> Records:
    """The records of one split, hashed as file + split (so caches tell splits apart); the
    search split of a file without any ``split`` keys is the file itself."""
    rows = tuple(split_rows(records, split))
    if not rows:
        raise DataError(f"{records.path}: no {records.kind} records of split {split!r} "
                        f"(records carry \"split\": \"search\" or \"test\"; absent = search)")
    if len(rows) == len(records.rows):
        return records
    tag = hashlib.sha256(f"{records.sha256}:{split}".encode()).hexdigest()
    return Records(records.kind, records.path, rows, tag)


def _null_summary(rec: object) -> dict:
    """A cached null as read back, checked for the keys :meth:`Evaluator.null` uses."""
    if not isinstance(rec, dict) or not {"mean", "sd", "n"} <= set(rec):
        raise ValueError("expected a JSON object with mean, sd and n")
    return rec


def describe_edit(spec: EditKind) -> dict:
    """The JSON-able description of an edit of any kind (its own ``describe()``)."""
    return spec.describe()


def _ci(x: np.ndarray, n_boot: int, seed: int = 0, level: float = 0.95) -> list[float]:
    """BCa bootstrap interval of the mean of ``x``
    (:func:`~neva_sweep.evaluation.metrics.mean_ci`)."""
    return mean_ci(x, n_boot, level, seed)


class Evaluator:
    """One model's evaluation: a judge, capability measures and the cached unedited side."""

    def __init__(
        self,
        host: ModelHost,
        judge: JudgeConfig | None = None,
        capability: CapabilityConfig | None = None,
        data=None,
        cache_dir: str | Path | None = None,
        judge_host: ModelHost | None = None,
        progress: bool = False,
        split: str = "search",
        fidelity: float = 1.0,
    ):
        self.host = host
        self.split = split
        self.fidelity = fidelity
        self.judge_cfg = judge or JudgeConfig()
        self.cap = capability or CapabilityConfig()
        path = (lambda kind: getattr(data, kind, None)) if data is not None else (lambda k: None)
        # Loading validates every file before any model work (errors name file:line).
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.records = {k: load_records(k, path(k)) for k in DATA_KINDS}
        # The judge reads the scenarios of this split only (search: what sweeps choose
        # edits on; test: held out, for re-scoring the chosen ones).
        self.records["scenarios"] = of_split(self.records["scenarios"], split)
        self.judge: Judge = make_judge(self.judge_cfg, self.records, judge_host, self.cache_dir)
        # rung 0 of a pruned sweep: an evenly spread share of the judge's rows
        # (evaluation/rungs.py); None when the judge is read whole
        self.first_rows: list[int] | None = None
        self.n_rows = splittable(self.judge) if fidelity < 1 else None
        if self.n_rows is not None:
            self.first_rows = first_rung_rows(self.n_rows, fidelity)
            self.judge = self.judge.subset(self.first_rows)
        self._rest_judges: dict[tuple[int, ...], Judge] = {}  # rung 1: the rows rung 0 left
        # capability.mc_limit = 0: no multiple choice (accuracy fields are None)
        self.questions = (mc_questions(self.records["mc"], self.cap.mc_limit)
                          if self.cap.mc_limit != 0 else [])
        self.neutral = neutral_texts(self.records["neutral"], self.cap.neutral_limit, split)
        queries = pick_queries(self.records["queries"], None)
        self.fluency_prompts = [host.chat_prompt(r["text"]) for r in
                                spread(queries, self.cap.fluency_queries, "capability."
                                       "fluency_queries")] if self.cap.fluency_queries else []
        # kl_value's prompts: value-laden queries, replied to once by the unedited model
        self.value_prompts = [host.chat_prompt(r["text"]) for r in
                              spread(queries, self.cap.value_replies, "capability."
                                     "value_replies")] if self.cap.value_replies else []
        self.progress = progress
        self._base: BaseSide | None = None
        self._base_judgement: Judgement | None = None  # the judge's part, when computed alone
        self.null_summary: dict | None = None  # set by null(): {"mean", "sd", "n", ...}

    # -- the unedited side -------------------------------------------------------------
    def cache_key(self) -> str:
        blob = json.dumps({
            "version": CACHE_VERSION,
            "model": self.host.meta.get("spec", self.host.name),
            "dtype": self.host.meta.get("dtype"),
            "judge": self.judge.key(),
            "capability": {k: v for k, v in asdict(self.cap).items()
                           if not k.startswith("lm_eval")},
            "data": {k: self.records[k].sha256 for k in ("neutral", "mc")},
            **({"split": self.split} if self.split != "search" else {}),
        }, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def _base_path(self) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{self.host.name}-base-{self.cache_key()}.pt"

    def base(self) -> BaseSide:
        """The unedited side: from memory, else from the disk cache, else computed."""
        if self._base is not None:
            return self._base
        path = self._base_path()
        self._base = self._load_base(path)
        if self._base is not None:
            return self._base
        t0 = time.time()
        judgement = self._base_judgement or self.judge.judge(self.host, (None,), "all")[0]
        correct = mc_correct(self.host, self.questions, (None,), "all", self.cap.batch_size)[0]
        neutral = base_distribution(self.host, self.neutral, self.cap.kl_top_k,
                                    max(1, self.cap.batch_size // 2))
        prompts, replies = self._fluency_replies(judgement)
        if replies is None:
            replies = greedy_generate(self.host, prompts, (None,), "all",
                                      self.cap.max_new_tokens, self.cap.batch_size)[0]
        ppl = perplexity(*reply_nll(self.host, prompts, replies, self.cap.batch_size))
        texts = self._value_texts(prompts, replies)
        value = (base_distribution(self.host, texts, self.cap.kl_top_k,
                                   max(1, self.cap.batch_size // 2)) if texts else None)
        self._base = BaseSide(judgement, correct, neutral, prompts, replies, ppl, texts, value)
        if path is not None:
            self._base.save(path)
        log.info("unedited side of %s: %.1f s", self.host.name, time.time() - t0)
        return self._base

    @staticmethod
    def _load_base(path: Path | None) -> BaseSide | None:
        """The cached unedited side; None when absent or unreadable (a corrupt file is moved
        aside with a warning and recomputed)."""
        return load_or_heal(path, BaseSide.load, "evaluation cache (unedited side)")

    def base_judgement(self) -> Judgement:
        """The unedited model's judgement alone (no capability measures unless cached)."""
        if self._base is not None:
            return self._base.judgement
        path = self._base_path()
        if path is not None and path.is_file():
            self._base = self._load_base(path)  # None when corrupt: judged below
            if self._base is not None:
                return self._base.judgement
        if self._base_judgement is None:
            self._base_judgement = self.judge.judge(self.host, (None,), "all")[0]
        return self._base_judgement

    def _fluency_replies(self, judgement: Judgement) -> tuple[list[str], list[str] | None]:
        """Prompts whose replies are scored for fluency, and the replies when already made."""
        if judgement.replies is not None:  # generating judges: reuse their replies
            rows = self.judge.rows or []
            return [self.host.chat_prompt(r["text"]) for r in rows], judgement.replies
        return self.fluency_prompts, None

    def _value_texts(self, prompts: list[str], replies: list[str]) -> list[str]:
        """The unedited model's replies to the ``value_prompts`` (those of the fluency
        ``prompts`` / ``replies`` when the same, else generated) as value_texts."""
        if not self.value_prompts:
            return []
        if self.value_prompts != prompts:
            replies = greedy_generate(self.host, self.value_prompts, (None,), "all",
                                      self.cap.max_new_tokens, self.cap.batch_size)[0]
        return value_texts(self.value_prompts, replies)

    def value_texts(self) -> list[str]:
        """The value-laden texts ``kl_value`` is measured on (capability.value_texts:
        ``capability.value_replies`` chat-wrapped queries and the unedited model's replies;
        [] when it is 0)."""
        return self.base().value_texts

    def base_record(self) -> dict:
        """The eval.json record of the unedited model."""
        base = self.base()
        csr = dict(zip(VALUES, base.judgement.E.mean(0).tolist()))
        acc = float(base.mc_correct.mean()) if self.questions else None
        extra = {}
        if base.judgement.hard is not None:
            share = dict(zip(VALUES, base.judgement.hard.mean(0).tolist()))
            extra = {"choice_share_base": share, "choice_share_edited": share}
        return {
            "edit": None, "judge": self.judge.name,
            "csr_base": csr, "csr_edited": csr, **extra,
            "alignment": None, "nlr": None, "nglr": None, "cwl": None, "acquiescence": 0.0,
            "suppression": 0.0, "inflation": 0.0,
            "nlr_floor": self.nlr_floor,
            "accuracy_base": acc, "accuracy_edited": acc,
            "accuracy_drop": 0.0 if self.questions else None, "kl": 0.0,
            "kl_value": None if base.value is None else 0.0,
            "kl_coverage": base.neutral.coverage, "ppl_base": base.ppl, "ppl_edited": base.ppl,
            "n_queries": int(base.judgement.E.shape[0]), "n_mc": len(self.questions),
            "n_neutral_tokens": base.neutral.n_tokens,
            "ci": {"accuracy_base": _ci(base.mc_correct.astype(float), self.judge_cfg.n_boot)
                   if self.questions else None,
                   "csr_base": {v: _ci(base.judgement.E[:, j], self.judge_cfg.n_boot)
                                for j, v in enumerate(VALUES)}},
        }

    def judge_edits(self, edits: list, desc: str, progress: bool = False) -> list[Judgement]:
        """The judge's Judgement of every edit (all positions); with ``progress``, one edit
        per call under a progress bar (on CPU batching edits saves nothing)."""
        if not progress:
            return self.judge.judge(self.host, edits, "all")  # shared forward passes
        from tqdm.auto import tqdm

        return [self.judge.judge(self.host, [e], "all")[0]
                for e in tqdm(edits, desc=desc, unit="edit")]

    # -- the judge's null ----------------------------------------------------------------
    @property
    def nlr_floor(self) -> float:
        """Floor on NLR's and CWL's denominator: 2 sd of the judge's null once measured
        (:meth:`null`), else the fixed ``metrics.EPS``."""
        if self.null_summary is None:
            return EPS
        return max(2.0 * self.null_summary["sd"], MIN_NLR_FLOOR)

    def null(self, stats, n: int | None = None, seed: int = 0, progress: bool = False) -> dict:
        """Alignment of ``n`` random-neuron edits (``judge.null_edits``; default size,
        rule and magnitude; edit i targets value i mod 10, seed ``seed + i``): what the
        judge reports for edits that target nothing. Cached on disk beside the unedited
        side. Returns ``{"mean", "sd", "n", "alignment": [...], "values": [...]}`` and
        sets :attr:`nlr_floor`.
        """

        from ..edits.neuron import DEFAULT_MAGNITUDE, DEFAULT_RULE
        from ..neurons.selection import DEFAULT_SPARSITY, random_neurons

        n = self.judge_cfg.null_edits if n is None else n
        if n < 2:
            raise ValueError(f"judge.null_edits must be >= 2 (a spread needs two); got {n}")
        stats_key = json.dumps({k: v for k, v in stats.meta.items() if k != "progress"},
                               sort_keys=True, default=str)
        tag = hashlib.sha256(f"{self.cache_key()}:{stats_key}:{n}:{seed}".encode()
                             ).hexdigest()[:16]
        path = self.cache_dir / f"{self.host.name}-null-{tag}.json" if self.cache_dir else None
        cached = load_or_heal(path, lambda p: _null_summary(json.loads(p.read_text())),
                              "judge null cache")
        if cached is not None:
            self.null_summary = cached
            return cached
        k = math.ceil(DEFAULT_SPARSITY * stats.n_neurons)
        values = [VALUES[i % len(VALUES)] for i in range(n)]
        specs = [NeuronEdit(random_neurons(stats, v, k, seed=seed + i), DEFAULT_RULE,
                          DEFAULT_MAGNITUDE) for i, v in enumerate(values)]
        base = self.base_judgement()
        t0 = time.time()
        judgements = self.judge_edits(specs, "judge null", progress)
        align = [float(j.E[:, VALUES.index(v)].mean() - base.E[:, VALUES.index(v)].mean())
                 for j, v in zip(judgements, values)]
        self.null_summary = {"mean": float(np.mean(align)), "sd": float(np.std(align, ddof=1)),
                             "n": n, "n_neurons": k, "rule": DEFAULT_RULE,
                             "magnitude": DEFAULT_MAGNITUDE, "seed": seed,
                             "alignment": align, "values": values}
        if path is not None:
            write_text_atomic(path, json.dumps(self.null_summary, indent=2))
        log.info("judge null of %s (%d random edits): %.1f s, sd %.4f", self.host.name, n,
                 time.time() - t0, self.null_summary["sd"])
        return self.null_summary

    # -- edited runs ---------------------------------------------------------------------
    def evaluate(self, edits: Sequence[tuple[str, object]], positions: str = "all",
                 first: Sequence[dict] | None = None,
                 budgets: Mapping[str, float] | None = None) -> list[dict]:
        """One record per (target value, edit); all edits share batched forward passes.

        An edit is any :class:`~neva_sweep.edits.EditKind`: a
        :class:`~neva_sweep.edits.neuron.NeuronEdit` (neurons), a
        :class:`~neva_sweep.edits.residual.ResidualEdit` (steering vectors) or a
        :class:`~neva_sweep.edits.prompt.PromptEdit` (a prompt).

        ``first``: per edit, its rung-0 record's ``first_rung`` (a pruned trial's rung 1,
        evaluation/rungs.py): only the judge rows rung 0 did not read are judged, and the
        capability measures are rung 0's. A rung-0 evaluator (``fidelity`` < 1 on a judge
        with subsets) adds ``first_rung`` to its records.

        ``budgets``: ``{measure: limit}`` on the measures read on fixed texts
        (rungs.FIXED_TEXT_BUDGETS; a pruned trial's rung 0). They are measured first, in
        that order, and an edit over one is neither measured further nor judged: its record
        holds the measures taken, ``over_budget`` (why) and no judge metrics.
        """
        if not edits:
            return []
        targets = [check_value(v) for v, _ in edits]
        specs = [s for _, s in edits]
        n = len(specs)
        base = self.base()
        t0 = time.time()
        why: list[str | None] = [None] * n
        if first is None:
            caps, why, spent = self._fixed_text(specs, positions, budgets or {})
            live = [g for g in range(n) if why[g] is None]
            live_specs = [specs[g] for g in live]
            t1 = time.time()
            judged = self.judge.judge(self.host, live_specs, positions) if live else []
            judgements: list[Judgement | None] = [None] * n
            for g, j, ppl in zip(live, judged, self._fluency(live_specs, positions, judged)):
                judgements[g], caps[g]["ppl_edited"] = j, ppl
            if live:  # batched: each judged edit's share of the judge's time
                spent[live] += (time.time() - t1) / len(live)
        else:
            if len(first) != n:
                raise ValueError(f"rung 1: {len(first)} rung-0 records for {n} edits")
            judgements = self._continue(first, specs, positions)
            caps = [dict(f["capability"]) for f in first]
            spent = np.full(n, (time.time() - t0) / n)
        out = []
        for g, (value, spec) in enumerate(zip(targets, specs)):
            rec = self._capability_fields(value, spec, positions, caps[g])
            if why[g] is not None:  # settled at rung 0 on its costs alone
                out.append({**rec, "over_budget": why[g], "duration_s": float(spent[g])})
                continue
            E = judgements[g].E
            rec = {"value": value, "judge": self.judge.name,
                   **edit_metrics(base.judgement.E, E, value, eps=self.nlr_floor),
                   "acquiescence": acquiescence(base.judgement.reading, judgements[g].reading),
                   "nlr_floor": self.nlr_floor, **rec}
            rec["suppression"] = suppression(rec["acquiescence"])
            rec["inflation"] = inflation(rec["acquiescence"])
            if judgements[g].hard is not None:
                rec["choice_share_base"] = dict(zip(VALUES, base.judgement.hard.mean(0).tolist()))
                rec["choice_share_edited"] = dict(zip(VALUES,
                                                      judgements[g].hard.mean(0).tolist()))
            ci = bootstrap_ci(base.judgement.E, E, value, n_boot=self.judge_cfg.n_boot)
            rec.update(
                n_queries=int(E.shape[0]),
                # the target's change per judge row (Q,): paired comparisons of edits
                alignment_rows=(E[:, VALUES.index(value)]
                                - base.judgement.E[:, VALUES.index(value)]).tolist(),
                ci={**ci, "accuracy_edited": caps[g]["accuracy_ci"]},
                duration_s=float(spent[g]),
            )
            if not np.isfinite([rec["alignment"], rec["nlr"], rec["kl"]]).all():
                raise FloatingPointError(f"non-finite metrics for the edit toward {value}: "
                                         f"alignment={rec['alignment']}, kl={rec['kl']}")
            if self.first_rows is not None:  # rung 0: what rung 1 continues from
                rec["first_rung"] = carry(self.first_rows, self.n_rows, judgements[g], caps[g])
            out.append(rec)
        return out

    def _capability_fields(self, value: str, spec, positions: str, cap: dict) -> dict:
        """A record's edit description and capability fields from ``cap``
        (rungs.CAPABILITY_KEYS; ``ppl_edited`` may be missing: not measured)."""
        base = self.base()
        about = describe_edit(spec)
        return dict(
            value=value, edit={"value": value, "positions": positions, **about},
            n_neurons=about.get("n_neurons", 0),
            accuracy_base=self._accuracy_base(), accuracy_edited=cap["accuracy_edited"],
            accuracy_drop=self._accuracy_drop(cap["accuracy_edited"]),
            kl=cap["kl"], kl_coverage=base.neutral.coverage, kl_value=cap["kl_value"],
            ppl_base=base.ppl, ppl_edited=cap.get("ppl_edited"),
            n_mc=len(self.questions), n_neutral_tokens=base.neutral.n_tokens)

    def _fixed_text(self, specs: list, positions: str, budgets: Mapping[str, float]
                    ) -> tuple[list[dict], list[str | None], np.ndarray]:
        """Per edit, the capability measures read on fixed texts (MC accuracy and its
        interval, KL on the neutral and on the value-laden texts), why it is over one of
        ``budgets`` (None: it is not), and the seconds spent on it. Measured in the order of
        rungs.FIXED_TEXT_BUDGETS; an edit over a budget is not measured further (its later
        measures stay None)."""
        n = len(specs)
        caps = [dict.fromkeys(("accuracy_edited", "accuracy_ci", "kl", "kl_value"))
                for _ in range(n)]
        why: list[str | None] = [None] * n
        spent = np.zeros(n)
        for stage in (self._accuracy, self._kl, self._kl_value):
            live = [g for g in range(n) if why[g] is None]
            if not live:
                break
            t = time.time()
            measured = stage([specs[g] for g in live], positions)
            spent[live] += (time.time() - t) / len(live)  # batched: each edit's share
            for g, m in zip(live, measured):
                caps[g].update(m)
                why[g] = over_budget({"accuracy_drop": self._accuracy_drop(
                                          caps[g]["accuracy_edited"]),
                                      "kl": caps[g]["kl"], "kl_value": caps[g]["kl_value"]},
                                     budgets)
        return caps, why, spent

    def _accuracy_base(self) -> float | None:
        return float(self.base().mc_correct.mean()) if self.questions else None

    def _accuracy_drop(self, accuracy: float | None) -> float | None:
        return None if accuracy is None else self._accuracy_base() - accuracy

    def _accuracy(self, specs: list, positions: str) -> list[dict]:
        if not self.questions:  # capability.mc_limit = 0
            return [{"accuracy_edited": None, "accuracy_ci": None} for _ in specs]
        correct = mc_correct(self.host, self.questions, specs, positions, self.cap.batch_size)
        return [{"accuracy_edited": float(c.mean()),
                 "accuracy_ci": _ci(c.astype(float), self.judge_cfg.n_boot)} for c in correct]

    def _kl(self, specs: list, positions: str) -> list[dict]:
        kl = mean_kl(self.host, self.neutral, self.base().neutral, specs, positions,
                     max(1, self.cap.batch_size // 2))
        return [{"kl": float(x)} for x in kl]

    def _kl_value(self, specs: list, positions: str) -> list[dict]:
        base = self.base()
        if base.value is None:  # capability.value_replies = 0
            return [{"kl_value": None} for _ in specs]
        kl = mean_kl(self.host, self.value_texts(), base.value, specs, positions,
                     max(1, self.cap.batch_size // 2))
        return [{"kl_value": float(x)} for x in kl]

    def _fluency(self, specs: list, positions: str, judgements: list[Judgement]
                 ) -> list[float | None]:
        """Per edit, the perplexity of its replies under the unedited model: a generating
        judge's replies, else the fluency prompts'."""
        if not specs:
            return []
        base = self.base()
        if judgements[0].replies is not None:
            replies = [j.replies for j in judgements]
        elif base.fluency_prompts:
            replies = greedy_generate(self.host, base.fluency_prompts, specs, positions,
                                      self.cap.max_new_tokens, self.cap.batch_size)
        else:
            replies = [[] for _ in specs]
        # Fluency is judged by the unedited model: no edit is installed here.
        return [perplexity(*reply_nll(self.host, base.fluency_prompts, r, self.cap.batch_size))
                for r in replies]

    def _continue(self, first: Sequence[dict], specs: list, positions: str) -> list[Judgement]:
        """Rung 1: judge the rows each edit's rung 0 left, merged with rung 0's."""
        n = int(self.base().judgement.E.shape[0])
        done = first[0]["rows"]
        if any(f["rows"] != done or f["n"] != n for f in first):
            raise ValueError(f"rung 1: rung-0 records of other rows than {done} of {n} "
                             f"(a different search.fidelity or judge)")
        rest = rest_rows(n, done)
        key = tuple(rest)
        if key not in self._rest_judges:
            if splittable(self.judge) is None:
                raise ValueError(f"rung 1: the {self.judge.name} judge cannot read a subset "
                                 f"of its rows, so no rung 0 can be continued")
            self._rest_judges[key] = self.judge.subset(rest)
        none = np.empty((0, len(VALUES)))  # rung 0 read every row: nothing left to judge
        judged = (self._rest_judges[key].judge(self.host, specs, positions) if rest else
                  [Judgement(E=none, raw=none, hard=none) for _ in specs])
        return [merge(f, rest, j) for f, j in zip(first, judged)]

    def evaluate_one(self, value: str, spec: EditKind, positions: str = "all") -> dict:
        return self.evaluate([(value, spec)], positions)[0]
