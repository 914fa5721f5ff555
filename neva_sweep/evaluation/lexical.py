"""Lexical checks of the evaluation data: near-duplicates and topic-word leaks.

Two questions about a set of forced-choice scenarios (docs/data.md, "Scenarios"):

- Is it independent of another set? :func:`max_cross_similarity` gives, for each
  scenario of one set, its highest TF-IDF cosine to any scenario of the other (on
  :func:`scenario_text`, the situation only); a cosine above
  :data:`NEIGHBOUR_THRESHOLD` counts as a near neighbour.
- Do its options give their value away by topic words alone? :func:`naive_bayes_leak`
  trains a multinomial naive Bayes on the probes' words and reads every option with it:
  accuracy far above chance (0.1) means the options share vocabulary with the probes,
  so an edit chosen on the probes could move the judge through words, not values.

numpy only (scikit-learn is a test dependency, not a core one); the TF-IDF follows
scikit-learn's ``TfidfVectorizer`` defaults (smooth idf, L2-normalised rows) on the
words of :func:`tokens`.

>>> round(float(max_cross_similarity(["the cat sat on the mat"], ["a cat sat on a mat"])[0]), 6)
1.0
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from ..values import VALUES

# A scenario of one set whose situation has a cosine above this to one of another set is
# its near neighbour (the two sets are then not independent).
NEIGHBOUR_THRESHOLD = 0.3

# A small English stop list: function words, pronouns, auxiliaries, common adverbs.
STOP_WORDS: frozenset[str] = frozenset("""
a about above after again against all also am an and any are as at be because been
before being below between both but by can could did do does doing done down during each
either even ever every few for from further get gets got had has have having he her here
hers herself him himself his how i if in into is it its itself just let me more most my
myself neither no nor not now of off on once only or other our ours ourselves out over
own same shall she should so some such than that the their theirs them themselves then
there these they this those through to too under until up upon us very was we were what
when where which while who whom whose why will with within without would you your yours
yourself yourselves one ones much many may might must still yet rather really quite
s t d ll m o re ve y don doesn didn isn wasn aren weren won wouldn shouldn couldn
""".split())

_WORD = re.compile(r"[^\W\d_]+")


def tokens(text: str) -> list[str]:
    """Lowercase words of ``text`` (runs of letters; apostrophes and digits split them),
    stop words removed.

    >>> tokens("I don't want THE café's 3 cats!")
    ['want', 'café', 'cats']
    """
    return [w for w in _WORD.findall(text.lower()) if w not in STOP_WORDS]


def _counts(docs: Sequence[str]) -> tuple[np.ndarray, dict[str, int]]:
    """Term counts (docs x vocabulary) and the vocabulary (word -> column, sorted)."""
    toks = [tokens(d) for d in docs]
    vocab = {w: i for i, w in enumerate(sorted({w for t in toks for w in t}))}
    counts = np.zeros((len(docs), len(vocab)))
    for row, t in enumerate(toks):
        for w, c in Counter(t).items():
            counts[row, vocab[w]] = c
    return counts, vocab


def tfidf_matrix(docs: Sequence[str]) -> np.ndarray:
    """TF-IDF of ``docs`` (rows) over their vocabulary: raw counts times the smooth idf
    ``log((1 + n) / (1 + df)) + 1``, each row L2-normalised (an empty row stays zero).

    >>> m = tfidf_matrix(["red apple", "red car", "blue sky"])
    >>> m.shape, [round(float(x), 3) for x in np.linalg.norm(m, axis=1)]
    ((3, 5), [1.0, 1.0, 1.0])
    """
    counts, _ = _counts(docs)
    n = counts.shape[0]
    df = (counts > 0).sum(axis=0)
    idf = np.log((1 + n) / (1 + df)) + 1
    m = counts * idf
    norm = np.linalg.norm(m, axis=1, keepdims=True)
    return np.divide(m, norm, out=np.zeros_like(m), where=norm > 0)


def max_cross_similarity(docs_a: Sequence[str], docs_b: Sequence[str]) -> np.ndarray:
    """For each doc of ``docs_a``, its highest TF-IDF cosine to any doc of ``docs_b``
    (vocabulary and idf fitted on both sets together).

    >>> [round(float(x), 2) for x in max_cross_similarity(["red apple", "blue sky"],
    ...                                                  ["red apple pie", "green sea"])]
    [0.74, 0.0]
    """
    if not len(docs_a) or not len(docs_b):
        raise ValueError("max_cross_similarity needs at least one doc on each side")
    m = tfidf_matrix([*docs_a, *docs_b])
    a, b = m[: len(docs_a)], m[len(docs_a):]
    return (a @ b.T).max(axis=1)


def scenario_text(row: dict) -> str:
    """The text of a scenario record compared between sets: its ``scenario`` field only
    (the situation; the options are written to fit it and to each value, so they are
    checked by :func:`naive_bayes_leak` instead).

    >>> scenario_text({"id": "x", "scenario": "You find a wallet.", "options": {}})
    'You find a wallet.'
    """
    return row["scenario"]


def naive_bayes_leak(probe_texts: Sequence[str], probe_labels: Sequence[int | str],
                     scenario_rows: Sequence[dict]) -> dict:
    """How well the probes' words alone give away the value of each scenario option.

    A multinomial naive Bayes (Laplace smoothing 1, class priors from the probe counts)
    is fitted on the bag of words (:func:`tokens`) of ``probe_texts`` with
    ``probe_labels`` (value names or indices into VALUES), then predicts the value of
    every option of every row of ``scenario_rows``. Returns ``accuracy`` over all
    options, ``n`` (options read), ``chance`` (0.1, ten values) and ``per_value``
    (accuracy on each value's options).

    >>> probes = ["grow the garden"] * 2 + ["fix the engine"] * 2
    >>> labels = ["benevolence"] * 2 + ["power"] * 2
    >>> row = {"options": {"benevolence": "I garden.", "power": "I fix it."}}
    >>> r = naive_bayes_leak(probes, labels, [row])
    >>> r["accuracy"], r["n"], r["per_value"]["power"]
    (1.0, 2, 1.0)
    """
    labels = [VALUES[x] if isinstance(x, (int, np.integer)) else x for x in probe_labels]
    classes = [v for v in VALUES if v in set(labels)]
    counts, vocab = _counts(probe_texts)
    y = np.array([classes.index(v) for v in labels])
    word_counts = np.stack([counts[y == k].sum(axis=0) for k in range(len(classes))])
    log_like = np.log(word_counts + 1) - np.log(
        (word_counts + 1).sum(axis=1, keepdims=True))
    log_prior = np.log(np.bincount(y, minlength=len(classes)) / len(y))
    hits: dict[str, list[bool]] = {v: [] for v in VALUES}
    for row in scenario_rows:
        for value, text in row["options"].items():
            score = log_prior.copy()
            for w in tokens(text):
                if w in vocab:  # words the probes never use carry no evidence
                    score = score + log_like[:, vocab[w]]
            hits[value].append(classes[int(np.argmax(score))] == value)
    every = [h for v in VALUES for h in hits[v]]
    return {
        "accuracy": float(np.mean(every)) if every else float("nan"),
        "n": len(every),
        "chance": 1 / len(VALUES),
        "per_value": {v: float(np.mean(h)) for v, h in hits.items() if h},
    }
