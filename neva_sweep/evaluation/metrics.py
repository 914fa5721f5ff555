"""Evaluation metrics: CSR, alignment, leakage (NLR, NGLR, CWL) and bootstrap intervals.

An expression matrix ``E`` has shape (Q, V): Q queries, V = 10 values in ``VALUES``
order, entries in [0, 1] (how strongly reply q expresses value j), or in [-1, 1] for
judges that centre each row over the ten values (the questionnaire). For an edit toward
target t, with the same queries and decoding for base and edited replies:

- ``csr(E)_j = mean_q E[q, j]``; ``dcsr = csr(E_edited) - csr(E_base)``.
- alignment ``A_t = dcsr_t``; leakage ``L_j = max(0, dcsr_j)`` for j != t (0 at t).
- ``NLR = mean_{j != t} L_j / max(A_t, eps)``.
- ``NGLR = sum_{j unrelated to t} L_j / sum_{j != t} L_j`` (0 when there is no leakage).
- ``CWL = (sum_j (d(t, j)/5) L_j / sum_j (d(t, j)/5)) / max(A_t, eps)``, d = circular distance.

Dividing by ``max(A_t, eps)`` keeps NLR and CWL finite when the edit fails (A_t <= 0);
the evaluator sets ``eps`` from the judge's null (``nlr_floor``).

- ``acquiescence = mean_j (mean_q R_edited[q, j] - mean_q R_base[q, j])`` over the judge's
  raw, uncentred reading R: how much the edit moved all ten values together.
- ``suppression = max(0, -acquiescence)``: how far it lowered all ten together (for the
  forced-choice judge, every option's log-probability: the model breaking on the
  value-laden prompts themselves). Budget it with ``search.max_suppression``.
- ``inflation = max(0, acquiescence)``: how far it raised all ten together (an edit that
  makes every option likelier pays nothing in suppression). ``search.max_inflation``.
- ``kl_value`` (the evaluator's): KL(base || edited) on value-laden replies, where a
  value-relevance gate opens; ``kl`` is on neutral text, where it closes. Budget it with
  ``search.max_kl_value``.
- ``nglr_chance``: NGLR when the leakage falls on the nine other values at random (the
  share of them outside every group of t: 7/9 for most values). ``leakage_tests`` gives
  the exact permutation interval of NGLR for the edit's own leakage amounts and a
  circumplex test (Spearman of leakage against circular distance, permutation p-value).
All functions are pure; torch tensors are accepted and converted to float64 numpy arrays.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..registry import Registry
from ..values import N_VALUES, VALUES, circular_distance, related_values, value_index

ArrayLike = np.ndarray | torch.Tensor
EPS = 0.01
MAX_DISTANCE = N_VALUES // 2  # 5: opposite side of the circumplex


def _to_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _check_matrix(E: ArrayLike, name: str = "E") -> np.ndarray:
    """Return ``E`` as a float64 (Q, V) array, or raise a ValueError saying what is wrong."""
    arr = _to_numpy(E)
    if arr.ndim != 2 or arr.shape[1] != N_VALUES or arr.shape[0] == 0:
        raise ValueError(
            f"{name} must have shape (n_queries >= 1, {N_VALUES}) with columns in VALUES order "
            f"({', '.join(VALUES)}); got shape {arr.shape}"
        )
    bad = ~np.isfinite(arr) | (arr < -1) | (arr > 1)
    if bad.any():
        q, j = np.argwhere(bad)[0]
        raise ValueError(
            f"{name} entries must be finite and in [-1, 1] ([0, 1], or centred per row); "
            f"{name}[{q}, {j}] ({VALUES[j]}) = {arr[q, j]}"
        )
    return arr


def _check_pair(E_base: ArrayLike, E_edited: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Both matrices checked; rows are paired, so the shapes must match."""
    base, edited = _check_matrix(E_base, "E_base"), _check_matrix(E_edited, "E_edited")
    if base.shape != edited.shape:
        raise ValueError(
            f"E_base and E_edited must have the same shape (same queries, paired by row); "
            f"got E_base {base.shape} and E_edited {edited.shape}"
        )
    return base, edited


def _check_dcsr(dcsr: ArrayLike) -> np.ndarray:
    arr = _to_numpy(dcsr)
    if arr.shape != (N_VALUES,) or not np.isfinite(arr).all():
        raise ValueError(
            f"dcsr must be a finite vector of shape ({N_VALUES},) in VALUES order; "
            f"got shape {arr.shape}"
        )
    return arr


def csr(E: ArrayLike) -> np.ndarray:
    """Control success ratio per value: column means of ``E``, shape (V,).

    >>> csr(np.array([[1.0] * 10, [0.0] * 10]))[:3]
    array([0.5, 0.5, 0.5])
    """
    return _check_matrix(E).mean(axis=0)  # (Q, V) -> (V,)


def delta_csr(E_base: ArrayLike, E_edited: ArrayLike) -> np.ndarray:
    """``csr(E_edited) - csr(E_base)``, shape (V,); the two matrices must have the same shape.

    >>> base, edited = np.zeros((2, 10)), np.zeros((2, 10))
    >>> edited[:, 8] = [1.0, 0.5]
    >>> float(delta_csr(base, edited)[8])
    0.75
    """
    base, edited = _check_pair(E_base, E_edited)
    return edited.mean(axis=0) - base.mean(axis=0)


def alignment(dcsr: ArrayLike, target: str) -> float:
    """Alignment A_t = dcsr[t]: how much the edit raised the target value.

    >>> alignment(np.arange(10) / 10, "power")
    0.4
    """
    return float(_check_dcsr(dcsr)[value_index(target)])


def leakage(dcsr: ArrayLike, target: str) -> np.ndarray:
    """Leakage L_j = max(0, dcsr_j) for j != t and 0 at t, shape (V,).

    >>> leakage(np.array([0.5, -0.2, 0.1, 0, 0, 0, 0, 0, 0, 0]), "self_direction")[:3]
    array([0. , 0. , 0.1])
    """
    t = value_index(target)
    out = np.maximum(_check_dcsr(dcsr), 0.0)  # (V,)
    out[t] = 0.0
    return out


def nlr(dcsr: ArrayLike, target: str, eps: float = EPS) -> float:
    """Normalised leakage ratio: mean_{j != t} L_j / max(A_t, eps).

    >>> d = np.zeros(10); d[0], d[1] = 0.5, 0.09
    >>> round(nlr(d, "self_direction"), 6)  # (0.09 / 9) / 0.5
    0.02
    """
    leak = leakage(dcsr, target)
    return float(leak.sum() / (N_VALUES - 1) / max(alignment(dcsr, target), eps))


def nglr(dcsr: ArrayLike, target: str) -> float:
    """Group leakage ratio: share of leakage landing outside every group of t (0 if none).

    >>> d = np.zeros(10); d[8], d[9], d[4] = 0.5, 0.3, 0.1  # target benevolence
    >>> round(nglr(d, "benevolence"), 6)  # universalism is related, power is not
    0.25
    """
    leak = leakage(dcsr, target)
    total = leak.sum()
    if total == 0:
        return 0.0
    related = related_values(target)
    outside = np.array([v not in related for v in VALUES])  # (V,) bool
    # a share: clipped, since the two sums round differently (1.0000000000000002)
    return float(min(1.0, leak[outside].sum() / total))


def nglr_chance(target: str) -> float:
    """NGLR under leakage spread uniformly over the nine other values: the share of them
    outside every group of ``target``.

    >>> round(nglr_chance("benevolence"), 4), round(nglr_chance("hedonism"), 4)
    (0.8889, 0.5556)
    """
    related = related_values(target)
    return sum(v not in related for v in VALUES) / (N_VALUES - 1)


def nglr_permutation(dcsr: ArrayLike, target: str, level: float = 0.95) -> dict:
    """NGLR against chance for the edit's own leakage amounts: every assignment of the nine
    amounts to the nine other values (exactly: only which amounts land outside t's
    groups matters, at most C(9, 4) = 126 subsets). Returns ``{"chance", "interval"
    [lo, hi] (central ``level``), "p_low"}``: p_low = P(NGLR_perm <= observed), small when
    leakage stays in related values more than chance. Without leakage: NGLR 0, p_low 1.

    >>> d = np.zeros(10); d[8], d[9] = 0.5, 0.3  # benevolence, all leakage to universalism
    >>> r = nglr_permutation(d, "benevolence"); round(r["p_low"], 4)  # 1 of 9 placements
    0.1111
    """
    from itertools import combinations

    t = value_index(target)
    leak = np.delete(leakage(dcsr, target), t)  # (9,)
    others = [v for v in VALUES if v != VALUES[t]]
    m = sum(v not in related_values(target) for v in others)
    total = leak.sum()
    if total == 0 or m == 0:
        return {"chance": nglr_chance(target), "interval": [0.0, 0.0], "p_low": 1.0}
    perm = np.array([leak[list(c)].sum() / total for c in combinations(range(N_VALUES - 1), m)])
    observed = nglr(dcsr, target)
    lo, hi = np.quantile(perm, [(1 - level) / 2, (1 + level) / 2])
    return {"chance": nglr_chance(target), "interval": [float(lo), float(hi)],
            "p_low": float((perm <= observed + 1e-12).mean())}


def circumplex_test(dcsr: ArrayLike, target: str, n_perm: int = 2000, seed: int = 0) -> dict:
    """Does leakage fall off with circular distance from the target? Spearman rho of the
    nine off-target changes dcsr_j against d(t, j), with a one-sided permutation p-value
    (P(rho_perm <= rho): small when near neighbours move more, as the circumplex predicts).
    ``rho`` is None when the changes are all equal.

    >>> d = np.array([5, 4, 3, 2, 1, 0, 1, 2, 3, 4.0]) * 0.01; d[0] = 0.5  # 0.01 x (5 - d)
    >>> r = circumplex_test(d, "self_direction"); round(r["rho"], 3), r["p"] < 0.05
    (-1.0, True)
    """
    from scipy.stats import rankdata

    t = value_index(target)
    x = np.delete(_check_dcsr(dcsr), t)  # (9,)
    dist = np.array([circular_distance(t, j) for j in range(N_VALUES) if j != t], float)
    if np.ptp(x) == 0:
        return {"rho": None, "p": None}
    rx, rd = rankdata(x), rankdata(dist)

    def rho(r: np.ndarray) -> float:
        return float(np.corrcoef(r, rd)[0, 1])

    observed = rho(rx)
    gen = np.random.default_rng(seed)
    perm = np.array([rho(gen.permutation(rx)) for _ in range(n_perm)])
    return {"rho": observed, "p": float(((perm <= observed + 1e-12).sum() + 1) / (n_perm + 1))}


def cwl(dcsr: ArrayLike, target: str, eps: float = EPS) -> float:
    """Circumplex-weighted leakage: leakage weighted by distance d(t, j)/5, over max(A_t, eps).

    >>> d = np.zeros(10); d[0], d[5] = 0.5, 0.1  # security is opposite self_direction
    >>> round(cwl(d, "self_direction"), 6)  # (1 * 0.1 / 5) / 0.5
    0.04
    """
    leak = leakage(dcsr, target)
    t = value_index(target)
    weights = np.array([circular_distance(t, j) for j in range(N_VALUES)]) / MAX_DISTANCE
    weighted = (weights * leak).sum() / weights.sum()  # weights.sum() == 5 for ten values
    return float(weighted / max(alignment(dcsr, target), eps))


def suppression(acquiescence: float) -> float:
    """How far an edit lowers all ten readings together: max(0, -acquiescence).

    For the forced-choice judge it is the fall of every option's log-probability on the
    value-laden prompts (nats/token): an edit that breaks the model on exactly the text
    it steers, which KL on neutral text cannot see once the edit is gated.

    >>> suppression(-0.4), suppression(0.02)
    (0.4, 0.0)
    """
    return max(0.0, -float(acquiescence))


def inflation(acquiescence: float) -> float:
    """How far an edit raises all ten readings together: max(0, acquiescence).

    >>> inflation(-0.4), inflation(0.02)
    (0.0, 0.02)
    """
    return max(0.0, float(acquiescence))


def acquiescence(R_base: ArrayLike, R_edited: ArrayLike) -> float:
    """Mean over the ten values of the change of the judge's raw (uncentred) reading.

    ``R`` (Q, V) in the judge's own unit (agreement probability, option log-probability,
    expression share); rows are paired. A valid edit moves its target, not everything.

    >>> round(acquiescence(np.zeros((2, 10)), np.full((2, 10), 0.2)), 6)
    0.2
    """
    base, edited = _to_numpy(R_base), _to_numpy(R_edited)
    if base.shape != edited.shape or base.ndim != 2 or base.shape[1] != N_VALUES:
        raise ValueError(f"raw readings must both have shape (n, {N_VALUES}); got "
                         f"{base.shape} and {edited.shape}")
    if not (np.isfinite(base).all() and np.isfinite(edited).all()):
        raise ValueError("raw readings must be finite")
    return float((edited.mean(0) - base.mean(0)).mean())


def edit_metrics(E_base: ArrayLike, E_edited: ArrayLike, target: str, eps: float = EPS
                 ) -> dict:
    """All metrics of one edit toward ``target``, as plain floats and value -> float dicts.

    Keys: alignment, nlr, nglr, nglr_chance, cwl, csr_base, csr_edited, leakage and
    leakage_tests (:func:`nglr_permutation`, :func:`circumplex_test`).

    >>> base, edited = np.zeros((2, 10)), np.zeros((2, 10))
    >>> edited[:, 8] = 1.0
    >>> m = edit_metrics(base, edited, "benevolence")
    >>> m["alignment"], m["nlr"], m["csr_edited"]["benevolence"]
    (1.0, 0.0, 1.0)
    """
    base, edited = _check_pair(E_base, E_edited)
    csr_base, csr_edited = base.mean(axis=0), edited.mean(axis=0)  # (V,) each
    dcsr = csr_edited - csr_base

    def by_value(x: np.ndarray) -> dict[str, float]:
        return dict(zip(VALUES, x.tolist(), strict=True))

    return {
        "alignment": alignment(dcsr, target),
        "nlr": nlr(dcsr, target, eps),
        "nglr": nglr(dcsr, target),
        "nglr_chance": nglr_chance(target),
        "cwl": cwl(dcsr, target, eps),
        "csr_base": by_value(csr_base),
        "csr_edited": by_value(csr_edited),
        "leakage": by_value(leakage(dcsr, target)),
        "leakage_tests": {"nglr": nglr_permutation(dcsr, target),
                          "circumplex": circumplex_test(dcsr, target)},
    }


def mean_ci(x: ArrayLike, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> list:
    """BCa bootstrap interval (``scipy.stats.bootstrap``) of the mean of ``x`` (Q,), or of
    each row of ``x`` (R, Q) as a list of [lo, hi]. A paired difference is the interval of
    the differences' mean (resampling rows once for both sides). Constant data, or fewer than
    2 rows, give [mean, mean]; where BCa is undefined the percentile interval is used.

    >>> mean_ci([0.5, 0.5, 0.5])
    [0.5, 0.5]
    >>> lo, hi = mean_ci(np.arange(20.0), n_boot=200)
    >>> lo < 9.5 < hi
    True
    """
    from scipy.stats import bootstrap

    a = np.asarray(x, dtype=float)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1; got {n_boot}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1); got {level}")
    rows = np.atleast_2d(a)  # (R, Q)
    out = np.repeat(rows.mean(-1, keepdims=True), 2, axis=-1)  # (R, 2): [mean, mean]
    vary = (rows.shape[-1] >= 2) & (np.ptp(rows, axis=-1) > 0)  # (R,)
    if vary.any():
        kw = dict(n_resamples=n_boot, confidence_level=level, vectorized=True, axis=-1,
                  rng=np.random.default_rng(seed))
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # degenerate BCa: handled below
            res = bootstrap((rows[vary],), np.mean, method="BCa", **kw).confidence_interval
            ci = np.stack([res.low, res.high], -1)  # (R', 2)
            bad = ~np.isfinite(ci).all(-1)
            if bad.any():  # BCa undefined (e.g. a few distinct values): percentile
                kw["rng"] = np.random.default_rng(seed)
                pct = bootstrap((rows[vary][bad],), np.mean, method="percentile",
                                **kw).confidence_interval
                ci[bad] = np.stack([pct.low, pct.high], -1)
        out[vary] = ci
    result = [[float(lo), float(hi)] for lo, hi in out]
    return result[0] if a.ndim == 1 else result


def bootstrap_ci(
    E_base: ArrayLike,
    E_edited: ArrayLike,
    target: str,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict:
    """Bootstrap intervals (BCa, :func:`mean_ci`) over the judge's rows for csr_edited (per
    value) and alignment (paired: the interval of the target's per-row change), and ``n``,
    the rows they rest on.

    Returns ``{"csr_edited": {value: [lo, hi]}, "alignment": [lo, hi], "n": Q}``.

    >>> base, edited = np.zeros((4, 10)), np.full((4, 10), 0.5)
    >>> bootstrap_ci(base, edited, "power", n_boot=100)["alignment"]
    [0.5, 0.5]
    """
    t = value_index(target)
    base, edited = _check_pair(E_base, E_edited)
    csr = mean_ci(edited.T, n_boot, level, seed)  # (V,) of [lo, hi]
    return {
        "csr_edited": dict(zip(VALUES, csr, strict=True)),
        "alignment": mean_ci(edited[:, t] - base[:, t], n_boot, level, seed),
        "n": int(base.shape[0]),
    }


# -- the metric schema ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Metric:
    """One metric of an evaluation record, declared once in :data:`METRICS`.

    Every list of metrics is read from the schema: the trials.csv columns and pareto.json
    summaries, the Optuna user attributes, the valid ``search.objectives`` and constraint
    budgets (``search.max_<name>``), what W&B logs per trial, the report's tables and the
    ``task=evaluate`` printout. A new metric is its computation (a record key) plus one
    :func:`register_metric` call here.
    """

    name: str  # the record key (and trials.csv column of a scalar metric)
    label: str  # for people: tables and the eval printout
    direction: str | None = None  # "maximize" | "minimize": the better side; None = neither
    objective: bool = False  # may be a key of search.objectives
    constraint: bool = False  # may have a budget search.max_<name> (feasible: value <= budget)
    fmt: str = ".3f"  # format spec of one value
    per_value: bool = False  # a {value: float} dict over the ten values
    prefix: str | None = None  # per-value: trials.csv columns <prefix><value>; None = none
    headline: bool = False  # always in the report's tables, logged per trial to W&B
    report: bool = True  # in the report's chosen-edit table (headline ones always)
    group: str = "judge"  # line of the eval printout: judge | capability | size

    def __post_init__(self) -> None:
        if self.direction not in ("maximize", "minimize", None):
            raise ValueError(f"metric {self.name}: direction must be maximize, minimize or "
                             f"None, got {self.direction!r}")
        if (self.objective or self.constraint) and self.per_value:
            raise ValueError(f"metric {self.name}: a per-value metric cannot be an objective "
                             "or a constraint")
        if self.objective and self.direction is None:
            raise ValueError(f"metric {self.name}: an objective needs a direction")

    @property
    def columns(self) -> list[str]:
        """Its trials.csv columns: the name, one per value, or none."""
        if not self.per_value:
            return [self.name]
        return [f"{self.prefix}{v}" for v in VALUES] if self.prefix is not None else []

    def format(self, x: float | None) -> str:
        """One value for people; '—' when missing.

        >>> METRICS["alignment"].format(0.1234), METRICS["n_mc"].format(None)
        ('+0.123', '—')
        """
        if x is None:
            return "—"
        try:
            return format(int(x) if self.fmt.endswith("d") else x, self.fmt)
        except (TypeError, ValueError):
            return str(x)


METRICS: Registry[Metric] = Registry("metric")


def register_metric(name: str, label: str, **fields) -> Metric:
    """Declare a metric (see :class:`Metric`); the order of declaration is the column order."""
    return METRICS.register(name, Metric(name, label, **fields))


def all_metrics() -> list[Metric]:
    """Every metric, in declaration order."""
    return [METRICS[n] for n in METRICS]


def scalar_metrics() -> list[Metric]:
    """The metrics that are one number per record, in declaration order."""
    return [m for m in all_metrics() if not m.per_value]


def objective_metrics() -> list[str]:
    """Names valid in ``search.objectives``."""
    return [n for n in METRICS if METRICS[n].objective]


def constraint_metrics() -> list[str]:
    """Names that may have a budget ``search.max_<name>``."""
    return [n for n in METRICS if METRICS[n].constraint]


def trial_columns() -> list[str]:
    """Every trials.csv column the metrics fill, scalar ones first."""
    per_value = [m for m in all_metrics() if m.per_value]
    return [c for m in (*scalar_metrics(), *per_value) for c in m.columns]


_MAX, _MIN = "maximize", "minimize"
# Alignment and leakage (from the judge's expression matrices).
register_metric("alignment", "alignment", direction=_MAX, objective=True, fmt="+.3f",
                headline=True)
register_metric("nlr", "NLR", direction=_MIN, objective=True, headline=True)
register_metric("nglr", "NGLR", direction=_MIN, objective=True, headline=True)
register_metric("nglr_chance", "NGLR at chance", fmt=".3f")
register_metric("cwl", "CWL", direction=_MIN, objective=True, headline=True)
register_metric("acquiescence", "acquiescence", direction=_MIN, objective=True,
                constraint=True, fmt="+.3f", headline=True)
register_metric("suppression", "suppression", direction=_MIN, objective=True,
                constraint=True, fmt=".3f")
register_metric("inflation", "inflation", direction=_MIN, objective=True, constraint=True,
                fmt=".3f")
register_metric("nlr_floor", "NLR floor", fmt=".3g")
# Capability.
register_metric("accuracy_base", "MC accuracy, base", group="capability")
register_metric("accuracy_edited", "MC accuracy, edited", direction=_MAX, group="capability")
register_metric("accuracy_drop", "accuracy drop", direction=_MIN, objective=True,
                constraint=True, fmt="+.3f", headline=True, group="capability")
register_metric("kl", "KL (nats/token)", direction=_MIN, objective=True, constraint=True,
                fmt=".4f", headline=True, group="capability")
# KL where a gate opens: on the fluency prompts (chat-wrapped value-laden queries) and the
# unedited model's replies to them; None when no replies are scored (fluency_queries 0)
register_metric("kl_value", "KL on value-laden replies (nats/token)", direction=_MIN,
                objective=True, constraint=True, fmt=".4f", group="capability")
register_metric("kl_coverage", "KL coverage", report=False, group="capability")
register_metric("ppl_base", "perplexity, base", fmt=".2f", report=False, group="capability")
register_metric("ppl_edited", "perplexity, edited", direction=_MIN, fmt=".2f",
                group="capability")
# Sizes.
register_metric("n_neurons", "neurons", fmt="d", group="size")
register_metric("n_queries", "judge rows", fmt="d", report=False, group="size")
register_metric("n_mc", "MC questions", fmt="d", report=False, group="size")
# Per value (circumplex order).
register_metric("csr_edited", "CSR, edited", per_value=True, prefix="csr_")
register_metric("csr_base", "CSR, base", per_value=True, prefix="csr_base_")
register_metric("leakage", "leakage", per_value=True)
