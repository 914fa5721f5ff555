"""Paired comparisons of two methods over scenarios and seeds, Holm-corrected across values.

For one value, ``D[s, q]`` is method A's change of the target on test scenario q minus
method B's, in repeat s (a search seed with its own probe resample): both edits were
chosen by their own search and scored on the same held-out scenarios against the same
unedited model, so the rows pair. The mean difference gets an interval from a two-level
bootstrap (seeds resampled, then scenarios), so it covers both the search's and the
scenarios' variation. Across values, :func:`holm` controls the family-wise error: a
method *wins* on a value only when its Holm-adjusted interval excludes 0.
"""

from __future__ import annotations

import numpy as np


def paired_bootstrap(D: np.ndarray, n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """Bootstrap means of ``D`` (S, Q): seeds resampled with replacement, then scenarios
    (the same scenario draw for every seed, keeping the pairing), (n_boot,).

    >>> D = np.full((3, 5), 0.2)
    >>> bool(np.allclose(paired_bootstrap(D, 50), 0.2))
    True
    """
    D = np.atleast_2d(np.asarray(D, float))
    S, Q = D.shape
    gen = np.random.default_rng(seed)
    si = gen.integers(0, S, (n_boot, S))  # (B, S)
    qi = gen.integers(0, Q, (n_boot, Q))  # (B, Q)
    return D[si[:, :, None], qi[:, None, :]].mean((1, 2))  # (B,)


def p_two_sided(boot: np.ndarray) -> float:
    """Two-sided bootstrap p-value of mean 0: twice the smaller tail (at most 1).

    >>> p_two_sided(np.array([0.1, 0.2, 0.3, -0.1]))
    0.5
    """
    lo, hi = (boot <= 0).mean(), (boot >= 0).mean()
    return float(min(1.0, 2 * min(lo, hi)))


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone), in the input order.

    >>> holm([0.01, 0.04, 0.03])
    [0.03, 0.06, 0.06]
    """
    p = np.asarray(pvalues, float)
    m = len(p)
    order = np.argsort(p)
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adj[i] = running
    return [round(float(x), 12) for x in adj]


def compare_values(diffs: dict[str, np.ndarray], alpha: float = 0.05, n_boot: int = 2000,
                   seed: int = 0) -> dict[str, dict]:
    """Per value: ``mean`` difference, raw and Holm-adjusted ``p``, the interval at the
    Holm-adjusted level (1 - alpha / (m - rank), the level at which that value is tested)
    and ``win``: ``+1`` (A above B), ``-1`` (B above A) or 0 (not distinguished).

    >>> out = compare_values({"a": np.full((3, 8), 0.1) + np.arange(8) * 1e-3,
    ...                       "b": np.zeros((3, 8)) + np.linspace(-1, 1, 8) * 1e-3})
    >>> out["a"]["win"], out["b"]["win"]
    (1, 0)
    """
    names = list(diffs)
    boots = {v: paired_bootstrap(diffs[v], n_boot, seed) for v in names}
    raw = [p_two_sided(boots[v]) for v in names]
    adj = holm(raw)
    m = len(names)
    rank = {names[i]: r for r, i in enumerate(np.argsort(raw))}
    out = {}
    for v, p, pa in zip(names, raw, adj):
        level = 1 - alpha / (m - rank[v])
        lo, hi = np.quantile(boots[v], [(1 - level) / 2, (1 + level) / 2])
        D = np.atleast_2d(diffs[v])  # (S, Q)
        mean = float(D.mean())
        win = 0 if pa > alpha or lo <= 0 <= hi else (1 if mean > 0 else -1)
        out[v] = {"mean": mean, "ci": [float(lo), float(hi)], "level": float(level),
                  "p": p, "p_holm": pa, "win": win, "n_seeds": D.shape[0],
                  "n_rows": D.shape[1]}
    return out
