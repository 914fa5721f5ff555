"""neva_sweep.evaluation.lexical, and the independence of the built-in evaluation splits."""

from pathlib import Path

import numpy as np
import pytest

from neva_sweep.data import load_probes, load_records, load_scenarios, split_rows
from neva_sweep.evaluation.lexical import (
    NEIGHBOUR_THRESHOLD,
    max_cross_similarity,
    naive_bayes_leak,
    scenario_text,
    tfidf_matrix,
    tokens,
)
from neva_sweep.values import VALUES

HELD_OUT = sorted((Path(__file__).parents[2] / "benchmarks" / "experiments" / "data")
                  .glob("heldout_scenarios*.jsonl"))

# ---------------------------------------------------------------- the functions


def test_tokens_lowercase_and_drop_stop_words():
    assert tokens("The Cat and THE dog, it's 3 o'clock!") == ["cat", "dog", "clock"]
    assert tokens("I am the one who is") == []


def test_identical_docs_have_cosine_one_and_disjoint_docs_zero():
    sim = max_cross_similarity(["Red apples grow on trees.", "Snow covers the hills."],
                               ["red apples grow on trees", "a quiet harbour town"])
    assert sim[0] == pytest.approx(1.0)
    assert sim[1] == 0.0


def test_cross_similarity_is_the_row_maximum():
    a = ["river boats carry grain", "mountain goats climb rocks"]
    b = ["grain boats", "river fish", "goats"]
    m = tfidf_matrix([*a, *b])
    assert np.allclose(max_cross_similarity(a, b), (m[:2] @ m[2:].T).max(axis=1))
    with pytest.raises(ValueError):
        max_cross_similarity(a, [])


def test_tfidf_rows_are_unit_length_and_an_empty_doc_is_zero():
    m = tfidf_matrix(["alpha beta beta", "beta gamma", "the of and"])
    assert np.allclose(np.linalg.norm(m[:2], axis=1), 1.0)
    assert not m[2].any()


def test_tfidf_matches_scikit_learn_defaults():
    text = pytest.importorskip("sklearn.feature_extraction.text")
    docs = [r["scenario"] for r in load_scenarios().rows[:30]]
    ref = text.TfidfVectorizer(analyzer=tokens).fit_transform(docs).toarray()
    assert np.allclose(tfidf_matrix(docs), ref)


def test_naive_bayes_on_a_separable_toy_set():
    probes = ["sunny beach holiday", "beach sand sunny", "tax form deadline",
              "deadline tax office"]
    labels = ["hedonism", "hedonism", "conformity", "conformity"]
    rows = [{"options": {"hedonism": "I go to the beach.", "conformity": "I file the tax form."}},
            {"options": {"hedonism": "I lie in sunny sand.", "conformity": "I meet the deadline."}}]
    r = naive_bayes_leak(probes, labels, rows)
    assert r["accuracy"] == 1.0 and r["n"] == 4 and r["chance"] == 0.1
    assert r["per_value"] == {"hedonism": 1.0, "conformity": 1.0}
    by_index = naive_bayes_leak(probes, [VALUES.index(v) for v in labels], rows)
    assert by_index == r


def test_naive_bayes_confuses_swapped_options():
    probes = ["beach sand", "tax deadline"]
    rows = [{"options": {"hedonism": "I meet the tax deadline.", "conformity": "I lie on sand."}}]
    r = naive_bayes_leak(probes, ["hedonism", "conformity"], rows)
    assert r["accuracy"] == 0.0


def test_scenario_text_is_the_situation_only():
    row = load_scenarios().rows[0]
    assert scenario_text(row) == row["scenario"]


# ---------------------------------------------------------------- the built-in data


@pytest.fixture(scope="module")
def scenarios():
    s = load_scenarios()
    return {split: split_rows(s, split) for split in ("search", "test")}


def test_test_split_has_no_near_neighbour_in_the_search_split(scenarios):
    sim = max_cross_similarity([scenario_text(r) for r in scenarios["test"]],
                               [scenario_text(r) for r in scenarios["search"]])
    assert len(sim) >= 36
    near = [(r["id"], round(float(s), 2)) for r, s in zip(scenarios["test"], sim)
            if s > NEIGHBOUR_THRESHOLD]
    assert not near


@pytest.mark.parametrize("path", HELD_OUT, ids=lambda p: p.name)
def test_test_split_has_no_near_neighbour_in_the_benchmark_sets(scenarios, path):
    other = load_scenarios(path).rows
    sim = max_cross_similarity([scenario_text(r) for r in scenarios["test"]],
                               [scenario_text(r) for r in other])
    near = [(r["id"], round(float(s), 2)) for r, s in zip(scenarios["test"], sim)
            if s > NEIGHBOUR_THRESHOLD]
    assert not near


def test_benchmark_sets_are_present_in_source_checkouts():
    if not HELD_OUT:
        pytest.skip("benchmarks/experiments/data/heldout_scenarios*.jsonl not present "
                    "(source checkouts only)")
    assert len(HELD_OUT) >= 2


def test_splits_share_no_id_and_no_situation(scenarios):
    search, test = scenarios["search"], scenarios["test"]
    assert not {r["id"] for r in search} & {r["id"] for r in test}
    assert not {r["scenario"] for r in search} & {r["scenario"] for r in test}
    options = {t for r in search for t in r["options"].values()}
    assert not options & {t for r in test for t in r["options"].values()}


def test_test_neutral_texts_are_new():
    neutral = load_records("neutral")
    test = [r["text"] for r in split_rows(neutral, "test")]
    rest = [r["text"] for r in split_rows(neutral, "search") + split_rows(neutral, "gate")]
    assert len(test) >= 36
    sim = max_cross_similarity(test, rest)
    assert not [(t, round(float(s), 2)) for t, s in zip(test, sim) if s > NEIGHBOUR_THRESHOLD]


def test_test_split_leaks_less_probe_vocabulary_than_the_search_split(scenarios):
    """A naive Bayes on the identify probes' words reads the test options' values clearly
    less often than the search options' (docs/data.md: figures)."""
    probes = load_probes(split="identify", neutral=False)
    leak = {split: naive_bayes_leak(probes.texts, probes.labels, rows)
            for split, rows in scenarios.items()}
    assert leak["test"]["n"] == 10 * len(scenarios["test"])
    assert leak["test"]["accuracy"] <= 0.40
    assert leak["test"]["accuracy"] < leak["search"]["accuracy"] - 0.1
