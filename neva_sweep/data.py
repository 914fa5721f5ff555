"""Value data: probes, queries, questionnaire items, neutral texts, multiple-choice set,
forced-choice scenarios, contrastive stance pairs.

Every file is JSON Lines, one record per line, with exactly the keys of its schema
(see ``SCHEMAS`` and docs/data.md). Loading validates each line and raises
:class:`DataError` naming ``file:line`` and the problem; each loaded set carries a
SHA-256 hash of its content, used as a cache key for statistics.

>>> probes = load_probes(split="identify")
>>> len(probes.texts) == len(probes.labels)
True
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import NamedTuple

from .values import VALUES

# kind -> (required keys and their types). ``value`` keys must name one of VALUES.
SCHEMAS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "probes": {"value": str, "split": str, "text": str},
    "queries": {"value": str, "text": str},
    "questionnaire": {"value": str, "text": str},
    "neutral": {"text": str},
    "mc": {"subject": str, "question": str, "choices": list, "answer": int},
    # ``options`` is an object keyed by value: one first-person continuation per value.
    "scenarios": {"id": str, "scenario": str, "options": dict},
    # A first-person situation and two replies to it: ``pro`` acts on the value, ``anti``
    # rejects or deprioritises it in the same topic words (the pair differs in stance only).
    "pairs": {"value": str, "situation": str, "pro": str, "anti": str},
}
# kind -> keys a record may add to its schema's.
OPTIONAL: dict[str, dict[str, type]] = {"neutral": {"split": str},
                                         "scenarios": {"split": str}}
SPLITS = ("identify", "validate")
# Evaluation splits: edits are chosen on ``search`` and re-scored on ``test``, which no
# search sees (scenarios, and the neutral texts KL reads). A record without ``split`` is
# ``search``.
EVAL_SPLITS = ("search", "test")
# Neutral texts: ``search`` / ``test`` (KL of next-token distributions; ``search`` is also
# the classifier judge's "none" class) or ``gate`` (training the value-relevance gate,
# neva_sweep/neurons/gate.py); the parts never share a text. ``capability`` is the former name of
# ``search`` and still accepted in files.
NEUTRAL_SPLITS = (*EVAL_SPLITS, "gate")
NEUTRAL_ALIASES = {"capability": "search"}


class DataError(ValueError):
    """A data file is malformed; the message names file:line and what to fix."""


def builtin_path(kind: str) -> Path:
    """Path of the data file shipped with neva_sweep for ``kind``."""
    if kind not in SCHEMAS:
        raise KeyError(f"unknown data kind {kind!r}; valid kinds: {', '.join(SCHEMAS)}")
    return Path(str(files("neva_sweep") / "data" / f"{kind}.jsonl"))


@dataclass(frozen=True)
class Records:
    """Validated records of one data file plus its content hash."""

    kind: str
    path: Path
    rows: tuple[dict, ...]
    sha256: str

    def by_value(self, value: str) -> list[dict]:
        return [r for r in self.rows if r.get("value") == value]


def _check_record(kind: str, rec: object, where: str) -> dict:
    schema = SCHEMAS[kind]
    optional = OPTIONAL.get(kind, {})
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    missing = [k for k in schema if k not in rec]
    extra = [k for k in rec if k not in schema and k not in optional]
    if missing or extra:
        also = f" (optionally {list(optional)})" if optional else ""
        raise DataError(
            f"{where}: {kind} records need exactly the keys {list(schema)}{also}"
            + (f"; missing {missing}" if missing else "")
            + (f"; unexpected {extra}" if extra else "")
        )
    for key, typ in {**schema, **{k: t for k, t in optional.items() if k in rec}}.items():
        if not isinstance(rec[key], typ) or isinstance(rec[key], bool):
            name = "an object keyed by value" if typ is dict else typ.__name__
            raise DataError(f"{where}: key {key!r} must be {name}, got {rec[key]!r}")
        if isinstance(rec[key], str) and not rec[key].strip():
            raise DataError(f"{where}: key {key!r} is empty")
    if "value" in rec and rec["value"] not in VALUES:
        raise DataError(
            f"{where}: unknown value {rec['value']!r}; valid values: {', '.join(VALUES)}"
        )
    if kind == "probes" and rec["split"] not in SPLITS:
        raise DataError(f"{where}: split must be one of {list(SPLITS)}, got {rec['split']!r}")
    if kind == "neutral" and record_split(rec) not in NEUTRAL_SPLITS:
        raise DataError(f"{where}: split must be one of {list(NEUTRAL_SPLITS)} (or absent: "
                        f"search), got {rec['split']!r}")
    if kind == "scenarios" and record_split(rec) not in EVAL_SPLITS:
        raise DataError(f"{where}: split must be one of {list(EVAL_SPLITS)} (or absent: "
                        f"search), got {rec['split']!r}")
    if kind == "mc":
        choices = rec["choices"]
        if len(choices) < 2 or not all(isinstance(c, str) and c.strip() for c in choices):
            raise DataError(f"{where}: 'choices' must be at least two non-empty strings")
        if len(set(choices)) != len(choices):
            raise DataError(f"{where}: 'choices' contains duplicates")
        if not 0 <= rec["answer"] < len(choices):
            raise DataError(
                f"{where}: 'answer' must index 'choices' (0..{len(choices) - 1}), "
                f"got {rec['answer']}"
            )
    if kind == "scenarios":
        rec["options"] = _check_options(rec["options"], where)
    if kind == "pairs" and rec["pro"].strip() == rec["anti"].strip():
        raise DataError(f"{where}: 'pro' and 'anti' are the same text; a pair needs two "
                        "replies of opposite stance")
    return rec


def _check_options(options: dict, where: str) -> dict:
    """One non-empty string per value; returned in circumplex order."""
    unknown = [k for k in options if k not in VALUES]
    if unknown:
        raise DataError(
            f"{where}: unknown value {', '.join(map(repr, unknown))} in 'options'; "
            f"valid values: {', '.join(VALUES)}"
        )
    missing = [v for v in VALUES if v not in options]
    if missing:
        raise DataError(f"{where}: 'options' lacks the value(s) {', '.join(missing)}")
    for v in VALUES:
        if not isinstance(options[v], str):
            raise DataError(f"{where}: option {v!r} must be str, got {options[v]!r}")
        if not options[v].strip():
            raise DataError(f"{where}: option {v!r} is empty")
    return {v: options[v] for v in VALUES}


def load_records(kind: str, path: str | Path | None = None) -> Records:
    """Read and validate a JSON Lines file of ``kind`` (the built-in file when ``path`` is None).

    Blank lines are allowed; any other malformed line raises :class:`DataError`.
    """
    p = Path(path) if path is not None else builtin_path(kind)
    if kind not in SCHEMAS:
        raise KeyError(f"unknown data kind {kind!r}; valid kinds: {', '.join(SCHEMAS)}")
    if not p.is_file():
        raise DataError(f"{p}: {kind} file not found")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        lineno = raw[: e.start].count(b"\n") + 1
        raise DataError(
            f"{p}:{lineno}: not UTF-8 text (invalid byte at offset {e.start})"
        ) from None
    rows = []
    first_line: dict[str, int] = {}  # id -> line of its first occurrence (kinds with ids)
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{p}:{lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
        rec = _check_record(kind, rec, where)
        if "id" in SCHEMAS[kind]:
            if rec["id"] in first_line:
                raise DataError(
                    f"{where}: duplicate id {rec['id']!r} (first used on line "
                    f"{first_line[rec['id']]})"
                )
            first_line[rec["id"]] = lineno
        rows.append(rec)
    if not rows:
        raise DataError(f"{p}: no {kind} records (the file is empty)")
    return Records(kind, p, tuple(rows), hashlib.sha256(raw).hexdigest())


def record_split(rec: dict) -> str:
    """A scenario's or neutral text's split: its ``split`` (aliases resolved), else ``search``.

    >>> record_split({"text": "x"}), record_split({"text": "x", "split": "capability"})
    ('search', 'search')
    """
    split = rec.get("split", "search")
    return NEUTRAL_ALIASES.get(split, split)


def split_rows(records: Records, split: str) -> list[dict]:
    """The records of one split (``search``: also those without ``split``)."""
    valid = NEUTRAL_SPLITS if records.kind == "neutral" else EVAL_SPLITS
    split = NEUTRAL_ALIASES.get(split, split)
    if split not in valid:
        raise KeyError(f"unknown {records.kind} split {split!r}; valid splits: "
                       f"{', '.join(valid)}")
    return [r for r in records.rows if record_split(r) == split]


def neutral_split(neutral: Records, split: str) -> list[str]:
    """The texts of one part of a neutral file: ``search`` (records without ``split``
    too), ``test`` or ``gate``.

    >>> a, b = (neutral_split(load_records("neutral"), s) for s in ("search", "gate"))
    >>> len(a) == len(b) == 72 and not set(a) & set(b)
    True
    """
    return [r["text"] for r in split_rows(neutral, split)]


def load_scenarios(path: str | Path | None = None) -> Records:
    """Load forced-choice scenarios (built-in or ``path``).

    Each row has a unique ``id``, a second-person ``scenario`` and ``options``: one
    first-person continuation per value, in circumplex order.

    >>> s = load_scenarios()
    >>> list(s.rows[0]["options"]) == list(VALUES)
    True
    """
    return load_records("scenarios", path)


def load_pairs(path: str | Path | None = None) -> Records:
    """Load contrastive stance pairs (built-in or ``path``).

    Each row has a ``value``, an everyday first-person ``situation`` and two one-sentence
    replies to it: ``pro`` acts on the value, ``anti`` rejects or deprioritises it with the
    same topic words, so that the pair differs in stance rather than in topic or value
    vocabulary (neurons/stats.py reads neuron and residual differences from them).

    >>> p = load_pairs()
    >>> len(p.by_value("power")), sorted(p.rows[0])
    (12, ['anti', 'pro', 'situation', 'value'])
    """
    return load_records("pairs", path)


class Pair(NamedTuple):
    """One stance pair as the statistics read it: ``label`` indexes VALUES."""

    label: int
    situation: str
    pro: str
    anti: str


@dataclass(frozen=True)
class ProbeSet:
    """Probe texts with their value labels (indices into VALUES), for one split or all,
    plus the neutral texts the statistics pass trains the value-relevance gate on
    (``neutral``; empty = no gate) and the contrastive stance pairs it reads reply-token and
    answer-letter differences from (``pairs``; empty = none, and the statistics hold none)."""

    texts: tuple[str, ...]
    labels: tuple[int, ...]
    sha256: str
    split: str | None
    path: Path
    neutral: tuple[str, ...] = ()
    pairs: tuple[Pair, ...] = ()

    def __len__(self) -> int:
        return len(self.texts)

    def of_value(self, value: str) -> list[str]:
        i = VALUES.index(value)
        return [t for t, lab in zip(self.texts, self.labels) if lab == i]

    def resample(self, seed: int) -> ProbeSet:
        """A bootstrap resample: per value, as many texts drawn with replacement (seeded)
        as the value has, so statistics can be repeated over probe samples
        (``stats.resample_seed``); the stance pairs likewise, per value. The hash covers
        the seed.

        >>> p = load_probes(neutral=False)
        >>> r = p.resample(1)
        >>> len(r) == len(p) and r.labels == p.labels and r.sha256 != p.sha256
        True
        >>> r.texts == p.resample(1).texts != p.resample(2).texts
        True
        """
        import random

        gen = random.Random(seed)
        texts = list(self.texts)
        for label in sorted(set(self.labels)):
            idx = [i for i, lab in enumerate(self.labels) if lab == label]
            for i, j in zip(idx, gen.choices(idx, k=len(idx))):
                texts[i] = self.texts[j]
        pairs = list(self.pairs)  # drawn after the texts: their draws stay as they were
        for label in sorted({p.label for p in self.pairs}):
            idx = [i for i, p in enumerate(self.pairs) if p.label == label]
            for i, j in zip(idx, gen.choices(idx, k=len(idx))):
                pairs[i] = self.pairs[j]
        key = hashlib.sha256(f"{self.sha256}:resample:{seed}".encode()).hexdigest()
        return ProbeSet(tuple(texts), self.labels, key, self.split, self.path, self.neutral,
                        tuple(pairs))

    def shard(self, rank: int, world: int) -> ProbeSet:
        """Every ``world``-th text (neutral text, pair) starting at ``rank`` (data-parallel
        statistics)."""
        idx = range(rank, len(self.texts), world)
        return ProbeSet(
            tuple(self.texts[i] for i in idx),
            tuple(self.labels[i] for i in idx),
            self.sha256,
            self.split,
            self.path,
            self.neutral[rank::world],
            self.pairs[rank::world],
        )


def load_probes(path: str | Path | None = None, split: str | None = "identify",
                neutral: str | Path | bool = True, pairs: str | Path | bool = True
                ) -> ProbeSet:
    """Load probe texts (built-in or ``path``), keeping one split (``None`` = all).

    Every value must have at least one probe in the kept split. ``neutral``: where the
    gate's neutral texts come from, the ``gate`` part of a neutral file (``True``: the
    built-in one; a path, as ``data.neutral``; ``False``: none, and the statistics get no
    gate). ``pairs``: where the contrastive stance pairs come from, likewise (``True``: the
    built-in file; a path; ``False``: none; see :func:`load_pairs`). Both enter the set's
    hash, so statistics caches follow them.

    >>> p = load_probes(split="validate")
    >>> sorted(set(p.labels)) == list(range(10))
    True
    """
    recs = load_records("probes", path)
    if split is not None and split not in SPLITS:
        raise KeyError(f"unknown probe split {split!r}; valid splits: {', '.join(SPLITS)}")
    kept = [r for r in recs.rows if split is None or r["split"] == split]
    missing = [v for v in VALUES if not any(r["value"] == v for r in kept)]
    if missing:
        raise DataError(f"{recs.path}: no {split or 'any'} probes for values {missing}")
    gate: tuple[str, ...] = ()
    tag = f"{recs.sha256}:{split}"
    if neutral is not False:
        records = load_records("neutral", None if neutral is True else neutral)
        gate = tuple(neutral_split(records, "gate"))
        if gate:  # a file without gate texts hashes as none at all
            tag += f":gate:{hashlib.sha256(json.dumps(gate).encode()).hexdigest()}"
    stance: tuple[Pair, ...] = ()
    if pairs is not False:
        records = load_pairs(None if pairs is True else pairs)
        stance = tuple(Pair(VALUES.index(r["value"]), r["situation"], r["pro"], r["anti"])
                       for r in records.rows)
        tag += f":pairs:{records.sha256}"
    key = hashlib.sha256(tag.encode()).hexdigest()
    return ProbeSet(
        tuple(r["text"] for r in kept),
        tuple(VALUES.index(r["value"]) for r in kept),
        key,
        split,
        recs.path,
        gate,
        stance,
    )
