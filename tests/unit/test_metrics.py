"""Evaluation metrics: hand-computed cases, properties (hypothesis), bootstrap and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from neva_sweep.evaluation.metrics import (
    alignment,
    bootstrap_ci,
    circumplex_test,
    csr,
    cwl,
    delta_csr,
    edit_metrics,
    inflation,
    leakage,
    nglr,
    nglr_chance,
    nglr_permutation,
    nlr,
    suppression,
)
from neva_sweep.values import N_VALUES, VALUES, related_values, value_index

FAST = settings(max_examples=50, deadline=None)
SCALAR_METRICS = ("alignment", "nlr", "nglr", "cwl")

unit = st.floats(0.0, 1.0, allow_nan=False)
targets = st.sampled_from(VALUES)


@st.composite
def paired_matrices(draw: st.DrawFn, max_queries: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """(E_base, E_edited), both (Q, V) with entries in [0, 1]."""
    n = draw(st.integers(1, max_queries))
    base = draw(arrays(np.float64, (n, N_VALUES), elements=unit))
    edited = draw(arrays(np.float64, (n, N_VALUES), elements=unit))
    return base, edited


def dcsr_of(**deltas: float) -> np.ndarray:
    """A (V,) delta-CSR vector, zero except for the named values."""
    out = np.zeros(N_VALUES)
    for name, x in deltas.items():
        out[value_index(name)] = x
    return out


# ---------------------------------------------------------------- hand-computed cases


def hand_case() -> tuple[np.ndarray, np.ndarray]:
    """Two queries, target benevolence.

    csr_base = 0.2 everywhere. Edited column means: stimulation 0.3, power 0.4,
    security 0.1, benevolence 0.6, universalism 0.5, the rest 0.2. So dcsr =
    stimulation +0.1, power +0.2, security -0.1, benevolence +0.4, universalism +0.3.
    """
    base = np.full((2, N_VALUES), 0.2)
    edited = np.full((2, N_VALUES), 0.2)
    edited[:, value_index("stimulation")] = [0.2, 0.4]
    edited[:, value_index("power")] = [0.4, 0.4]
    edited[:, value_index("security")] = [0.0, 0.2]
    edited[:, value_index("benevolence")] = [0.8, 0.4]
    edited[:, value_index("universalism")] = [0.5, 0.5]
    return base, edited


def test_csr_and_delta_csr_by_hand() -> None:
    base, edited = hand_case()
    np.testing.assert_allclose(csr(base), np.full(N_VALUES, 0.2))
    expected_csr = [0.2, 0.3, 0.2, 0.2, 0.4, 0.1, 0.2, 0.2, 0.6, 0.5]
    np.testing.assert_allclose(csr(edited), expected_csr)
    expected_delta = [0.0, 0.1, 0.0, 0.0, 0.2, -0.1, 0.0, 0.0, 0.4, 0.3]
    np.testing.assert_allclose(delta_csr(base, edited), expected_delta, atol=1e-12)


def test_metrics_by_hand_benevolence() -> None:
    base, edited = hand_case()
    d = delta_csr(base, edited)
    assert alignment(d, "benevolence") == pytest.approx(0.4)
    # Leakage: stimulation 0.1, power 0.2, universalism 0.3; security is negative -> 0.
    expected_leak = [0.0, 0.1, 0.0, 0.0, 0.2, 0.0, 0.0, 0.0, 0.0, 0.3]
    np.testing.assert_allclose(leakage(d, "benevolence"), expected_leak, atol=1e-12)
    # NLR = (0.6 / 9) / 0.4 = 1/6
    assert nlr(d, "benevolence") == pytest.approx(1 / 6)
    # NGLR: universalism is related; stimulation + power = 0.3 of 0.6 lands outside.
    assert nglr(d, "benevolence") == pytest.approx(0.5)
    # CWL: distances from benevolence: stimulation 3, power 4, universalism 1; sum d/5 = 5.
    # (0.6 * 0.1 + 0.8 * 0.2 + 0.2 * 0.3) / 5 = 0.056; / 0.4 = 0.14
    assert cwl(d, "benevolence") == pytest.approx(0.14)


def test_metrics_by_hand_hedonism_in_two_groups() -> None:
    # Hedonism's related values: self_direction, stimulation, achievement, power.
    d = dcsr_of(hedonism=0.5, achievement=0.2, tradition=0.1, self_direction=0.1)
    assert alignment(d, "hedonism") == pytest.approx(0.5)
    assert nlr(d, "hedonism") == pytest.approx(0.4 / 9 / 0.5)  # 4/45
    assert nglr(d, "hedonism") == pytest.approx(0.25)  # only tradition (0.1 of 0.4) is outside
    # distances: achievement 1, tradition 5, self_direction 2
    # (0.2 * 0.2 + 1.0 * 0.1 + 0.4 * 0.1) / 5 = 0.036; / 0.5 = 0.072
    assert cwl(d, "hedonism") == pytest.approx(0.072)


def test_negative_and_zero_alignment_use_eps_by_hand() -> None:
    d = dcsr_of(power=-0.2, security=0.09)
    assert alignment(d, "power") == pytest.approx(-0.2)
    assert nlr(d, "power") == pytest.approx(0.09 / 9 / 0.01)  # 1.0
    assert cwl(d, "power") == pytest.approx(0.2 * 0.09 / 5 / 0.01)  # 0.36
    assert nglr(d, "power") == pytest.approx(1.0)  # security shares no group with power
    d0 = dcsr_of(security=0.09)
    assert nlr(d0, "power") == pytest.approx(1.0)
    assert nlr(d0, "power", eps=0.1) == pytest.approx(0.1)


def test_no_leakage_gives_zero_nglr() -> None:
    d = dcsr_of(tradition=0.3, power=-0.1)
    assert nglr(d, "tradition") == 0.0
    assert nlr(d, "tradition") == 0.0
    assert cwl(d, "tradition") == 0.0


def test_edit_metrics_by_hand() -> None:
    base, edited = hand_case()
    m = edit_metrics(base, edited, "benevolence")
    assert set(m) == {"alignment", "nlr", "nglr", "nglr_chance", "cwl", "csr_base",
                      "csr_edited", "leakage", "leakage_tests"}
    assert m["nglr_chance"] == pytest.approx(8 / 9)
    assert set(m["leakage_tests"]) == {"nglr", "circumplex"}
    assert m["alignment"] == pytest.approx(0.4)
    assert m["nlr"] == pytest.approx(1 / 6)
    assert m["nglr"] == pytest.approx(0.5)
    assert m["cwl"] == pytest.approx(0.14)
    assert list(m["csr_base"]) == list(VALUES)
    assert m["csr_edited"]["benevolence"] == pytest.approx(0.6)
    assert m["leakage"]["power"] == pytest.approx(0.2)
    assert m["leakage"]["security"] == 0.0
    assert m["leakage"]["benevolence"] == 0.0
    assert all(isinstance(x, float) for x in m["csr_edited"].values())


def test_torch_input_matches_numpy() -> None:
    base, edited = hand_case()
    m_np = edit_metrics(base, edited, "benevolence")
    m_t = edit_metrics(torch.tensor(base), torch.tensor(edited, dtype=torch.float32), "benevolence")
    for key in SCALAR_METRICS:
        assert m_t[key] == pytest.approx(m_np[key], abs=1e-6)


# ---------------------------------------------------------------- properties


@FAST
@given(pair=paired_matrices(), target=targets)
def test_nlr_zero_when_only_target_moves(pair: tuple[np.ndarray, np.ndarray], target: str) -> None:
    base, other = pair
    edited = base.copy()
    t = value_index(target)
    edited[:, t] = other[:, t]
    m = edit_metrics(base, edited, target)
    assert m["nlr"] == 0.0
    assert m["cwl"] == 0.0
    assert m["nglr"] == 0.0


@FAST
@given(
    target=targets,
    amounts=arrays(np.float64, N_VALUES, elements=st.floats(0.0, 1.0)),
    negatives=arrays(np.float64, N_VALUES, elements=st.floats(-1.0, 0.0)),
    a_t=st.floats(-1.0, 1.0),
)
def test_nglr_zero_inside_groups_one_outside(
    target: str, amounts: np.ndarray, negatives: np.ndarray, a_t: float
) -> None:
    t = value_index(target)
    related = np.array([v in related_values(target) for v in VALUES])
    # Leakage only on related values; unrelated values go down or stay.
    inside = np.where(related, amounts, negatives)
    inside[t] = a_t
    assert nglr(inside, target) == 0.0
    # Leakage only on unrelated values; related ones go down or stay.
    outside = np.where(related, negatives, amounts)
    outside[t] = a_t
    expected = 1.0 if leakage(outside, target).sum() > 0 else 0.0
    assert nglr(outside, target) == pytest.approx(expected)


@FAST
@given(
    target=targets,
    amount=st.floats(1e-6, 1.0),
    a_t=st.floats(-1.0, 1.0),
    side=st.sampled_from([-1, 1]),
)
def test_cwl_weights_opposite_most(target: str, amount: float, a_t: float, side: int) -> None:
    t = value_index(target)
    opposite, neighbour = np.zeros(N_VALUES), np.zeros(N_VALUES)
    opposite[t] = neighbour[t] = a_t
    opposite[(t + N_VALUES // 2) % N_VALUES] = amount
    neighbour[(t + side) % N_VALUES] = amount
    assert cwl(opposite, target) > cwl(neighbour, target)
    # Same amount anywhere gives the same NLR: only CWL sees the distance.
    assert nlr(opposite, target) == pytest.approx(nlr(neighbour, target))


@FAST
@given(pair=paired_matrices(), target=targets, data=st.data())
def test_metrics_invariant_to_query_permutation(
    pair: tuple[np.ndarray, np.ndarray], target: str, data: st.DataObject
) -> None:
    base, edited = pair
    perm = np.array(data.draw(st.permutations(range(base.shape[0]))))
    m = edit_metrics(base, edited, target)
    p = edit_metrics(base[perm], edited[perm], target)
    # Tolerance: a sum in another order can differ in the last bits, divided by eps = 0.01.
    for key in SCALAR_METRICS:
        assert p[key] == pytest.approx(m[key], rel=1e-9, abs=1e-9)
    for key in ("csr_base", "csr_edited", "leakage"):
        assert p[key] == pytest.approx(m[key], rel=1e-9, abs=1e-12)


@FAST
@given(pair=paired_matrices(), target=targets, shrink=unit)
def test_finite_for_zero_or_negative_alignment(
    pair: tuple[np.ndarray, np.ndarray], target: str, shrink: float
) -> None:
    base, edited = pair
    t = value_index(target)
    edited[:, t] = base[:, t] * shrink  # the target can only go down: A_t <= 0
    m = edit_metrics(base, edited, target)
    assert m["alignment"] <= 0.0
    for key in SCALAR_METRICS:
        assert math.isfinite(m[key])
    assert 0.0 <= m["nglr"] <= 1.0
    assert m["nlr"] >= 0.0 and m["cwl"] >= 0.0
    assert all(math.isfinite(x) for x in m["leakage"].values())


# ---------------------------------------------------------------- bootstrap


@settings(max_examples=30, deadline=None)
@given(pair=paired_matrices(max_queries=30), target=targets)
def test_bootstrap_contains_point_estimate(
    pair: tuple[np.ndarray, np.ndarray], target: str
) -> None:
    base, edited = pair
    m = edit_metrics(base, edited, target)
    ci = bootstrap_ci(base, edited, target, n_boot=300)
    tol = 1e-12  # resampled means of identical rows can differ in the last bit
    lo, hi = ci["alignment"]
    assert lo - tol <= m["alignment"] <= hi + tol
    for v in VALUES:
        lo, hi = ci["csr_edited"][v]
        assert lo - tol <= m["csr_edited"][v] <= hi + tol


def test_bootstrap_deterministic_per_seed() -> None:
    rng = np.random.default_rng(1)
    base, edited = rng.random((220, N_VALUES)), rng.random((220, N_VALUES))
    a = bootstrap_ci(base, edited, "power", seed=7)
    b = bootstrap_ci(base, edited, "power", seed=7)
    c = bootstrap_ci(base, edited, "power", seed=8)
    assert a == b
    assert a != c


def test_bootstrap_by_hand() -> None:
    # One query: every draw is that query, so the interval collapses to the point.
    base, edited = np.zeros((1, N_VALUES)), np.full((1, N_VALUES), 0.3)
    ci = bootstrap_ci(base, edited, "tradition", n_boot=50)
    assert ci["alignment"] == pytest.approx([0.3, 0.3])
    assert ci["csr_edited"]["power"] == pytest.approx([0.3, 0.3])
    # Two queries 0 and 1: draw means are 0, 0.5 or 1; the 95% interval spans [0, 1].
    base, edited = np.zeros((2, N_VALUES)), np.zeros((2, N_VALUES))
    edited[:, value_index("tradition")] = [0.0, 1.0]
    ci = bootstrap_ci(base, edited, "tradition")
    assert ci["alignment"] == pytest.approx([0.0, 1.0])
    assert ci["csr_edited"]["tradition"] == pytest.approx([0.0, 1.0])
    assert ci["csr_edited"]["power"] == [0.0, 0.0]


def test_bootstrap_resamples_pairs() -> None:
    # Base == edited row by row: paired resampling gives alignment exactly 0 in every draw;
    # independent resampling of the two matrices would not.
    rng = np.random.default_rng(0)
    base = rng.random((50, N_VALUES))
    ci = bootstrap_ci(base, base.copy(), "achievement")
    assert ci["alignment"] == [0.0, 0.0]
    lo, hi = ci["csr_edited"]["achievement"]
    assert lo < hi


def test_bootstrap_narrower_at_lower_level() -> None:
    rng = np.random.default_rng(2)
    base, edited = rng.random((40, N_VALUES)), rng.random((40, N_VALUES))
    wide = bootstrap_ci(base, edited, "security", level=0.95)["alignment"]
    narrow = bootstrap_ci(base, edited, "security", level=0.5)["alignment"]
    assert wide[0] <= narrow[0] <= narrow[1] <= wide[1]


# ---------------------------------------------------------------- errors


def test_unknown_target_lists_valid_values() -> None:
    base, edited = hand_case()
    d = delta_csr(base, edited)
    for fn in (alignment, leakage, nlr, nglr, cwl):
        with pytest.raises(KeyError, match="unknown value 'kindness'.*benevolence"):
            fn(d, "kindness")
    with pytest.raises(KeyError, match="kindness"):
        edit_metrics(base, edited, "kindness")
    with pytest.raises(KeyError, match="kindness"):
        bootstrap_ci(base, edited, "kindness")


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"E_base \(3, 10\) and E_edited \(4, 10\)"):
        delta_csr(np.zeros((3, N_VALUES)), np.zeros((4, N_VALUES)))
    with pytest.raises(ValueError, match=r"E_base \(3, 10\) and E_edited \(4, 10\)"):
        bootstrap_ci(np.zeros((3, N_VALUES)), np.zeros((4, N_VALUES)), "power")


@pytest.mark.parametrize("shape", [(5, 9), (10,), (2, 5, 10), (0, 10)])
def test_bad_matrix_shape_is_named(shape: tuple[int, ...]) -> None:
    bad = np.zeros(shape)
    with pytest.raises(ValueError, match=rf"E must have shape .*got shape \({shape[0]}"):
        csr(bad)
    with pytest.raises(ValueError, match="E_edited must have shape"):
        edit_metrics(np.zeros((5, N_VALUES)), bad, "power")


def test_out_of_range_entry_is_named() -> None:
    E = np.zeros((3, N_VALUES))
    E[2, value_index("power")] = 1.5
    with pytest.raises(ValueError, match=r"E\[2, 4\] \(power\) = 1.5"):
        csr(E)
    E[2, value_index("power")] = np.nan
    with pytest.raises(ValueError, match="finite"):
        csr(E)


def test_bad_dcsr_shape_is_named() -> None:
    with pytest.raises(ValueError, match=r"dcsr must be .*shape \(10,\).*got shape \(9,\)"):
        nlr(np.zeros(9), "power")


def test_bad_bootstrap_settings_are_named() -> None:
    base, edited = hand_case()
    with pytest.raises(ValueError, match="n_boot must be >= 1; got 0"):
        bootstrap_ci(base, edited, "power", n_boot=0)
    with pytest.raises(ValueError, match=r"level must be in \(0, 1\); got 95"):
        bootstrap_ci(base, edited, "power", level=95)


# NGLR at chance, by hand from the groups: related values (sharing a higher-order group,
# the target included) never count as "outside".
NGLR_CHANCE = {"self_direction": 7 / 9, "stimulation": 7 / 9, "hedonism": 5 / 9,
               "achievement": 7 / 9, "power": 7 / 9, "security": 7 / 9, "conformity": 7 / 9,
               "tradition": 7 / 9, "benevolence": 8 / 9, "universalism": 8 / 9}


@pytest.mark.parametrize("value", VALUES)
def test_nglr_chance_per_value(value) -> None:
    assert nglr_chance(value) == pytest.approx(NGLR_CHANCE[value])
    # uniform leakage on the nine others gives exactly the chance value
    d = np.full(10, 0.01)
    d[VALUES.index(value)] = 0.5
    assert nglr(d, value) == pytest.approx(nglr_chance(value))
    perm = nglr_permutation(d, value)
    assert perm["interval"] == pytest.approx([nglr_chance(value)] * 2)
    assert perm["p_low"] == 1.0


def test_nglr_permutation_interval_brackets_chance_and_flags_confined_leakage() -> None:
    rng = np.random.default_rng(0)
    d = np.zeros(10)
    d[[0, 1, 3, 4]] = rng.uniform(0.01, 0.05, 4)  # leakage only in hedonism's groups
    d[2] = 0.5
    r = nglr_permutation(d, "hedonism")
    assert nglr(d, "hedonism") == 0.0
    lo, hi = r["interval"]
    assert lo <= r["chance"] <= hi
    # only the placements with all four amounts inside the four related values: 1 / C(9, 5)
    assert r["p_low"] == pytest.approx(1 / 126)


def test_circumplex_test_detects_neighbour_leakage_only() -> None:
    t = VALUES.index("power")
    dist = np.array([min(abs(t - j), 10 - abs(t - j)) for j in range(10)], float)
    near = 0.05 * (5 - dist)
    near[t] = 0.5
    r = circumplex_test(near, "power")
    assert r["rho"] == pytest.approx(-1.0) and r["p"] < 0.01
    far = 0.05 * dist
    far[t] = 0.5
    assert circumplex_test(far, "power")["p"] > 0.9
    flat = np.full(10, 0.02)
    assert circumplex_test(flat, "power") == {"rho": None, "p": None}


def test_inflation_and_suppression_split_acquiescence() -> None:
    for a in (-0.3, 0.0, 0.2):
        assert inflation(a) - suppression(a) == pytest.approx(a)
        assert min(inflation(a), suppression(a)) == 0.0
