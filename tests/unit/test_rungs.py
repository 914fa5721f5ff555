"""A pruned trial's rung 1 continues its rung 0 (neva_sweep/evaluation/rungs.py): it judges
only the rows rung 0 left and reuses rung 0's capability measures, and the result is the
full evaluation's."""

from __future__ import annotations

import numpy as np
import pytest

from neva_sweep.config import JudgeConfig
from neva_sweep.evaluation.capability import CapabilityConfig
from neva_sweep.evaluation.evaluator import Evaluator
from neva_sweep.evaluation.judges.base import Judgement
from neva_sweep.evaluation.judges.forced_choice import ForcedChoiceJudge
from neva_sweep.evaluation.rungs import carry, first_rung_rows, merge, rest_rows
from neva_sweep.methods import METHODS

N_SCENARIOS = 7  # the trial's judge rows on the tiny model
FIDELITY = 0.34


def evaluator(host, cache_dir, fidelity=1.0, **judge) -> Evaluator:
    return Evaluator(host, JudgeConfig(scenarios_limit=N_SCENARIOS, n_boot=20, **judge),
                     CapabilityConfig(mc_limit=3, neutral_limit=2, fluency_queries=2,
                                      max_new_tokens=4, value_replies=2),
                     cache_dir=cache_dir, fidelity=fidelity)


@pytest.fixture(scope="module")
def edits(tiny_stats):
    def neva(value, sparsity, magnitude):
        return value, METHODS["neva"].build(tiny_stats, value, {
            "sparsity": sparsity, "magnitude": magnitude, "rule": "add",
            "score": "mean_diff", "layer_window": "all"})

    return [neva("power", 0.05, 3.0), neva("tradition", 0.02, 2.0)]


@pytest.mark.parametrize("ends", ["most", "both"])
def test_rung_one_continuing_rung_zero_gives_the_full_evaluation(tiny_host, edits, tmp_path,
                                                                  monkeypatch, ends):
    full = evaluator(tiny_host, tmp_path, ends=ends)
    first = evaluator(tiny_host, tmp_path, FIDELITY, ends=ends)
    whole = full.evaluate(edits)
    rung0 = first.evaluate(edits)
    rows = first_rung_rows(N_SCENARIOS, FIDELITY)
    assert [r["n_queries"] for r in rung0] == [len(rows)] * 2 and len(rows) < N_SCENARIOS
    assert all(r["first_rung"]["rows"] == rows and r["first_rung"]["n"] == N_SCENARIOS
               for r in rung0)
    # rung 0's rows are the full trial's rows at those positions, judged alike
    for r0, w in zip(rung0, whole):
        assert r0["alignment_rows"] == pytest.approx([w["alignment_rows"][i] for i in rows],
                                                     abs=1e-5)
        assert r0["kl"] == pytest.approx(w["kl"], rel=1e-5)

    judged: list[int] = []  # rows judged at rung 1
    real = ForcedChoiceJudge.judge

    def counting(judge, host, specs, positions):
        judged.append(len(judge.items))
        return real(judge, host, specs, positions)

    monkeypatch.setattr(ForcedChoiceJudge, "judge", counting)
    for measure in ("_fixed_text", "_fluency"):
        monkeypatch.setattr(full, measure, lambda *a: pytest.fail("capability re-measured"))
    rung1 = full.evaluate(edits, first=[r["first_rung"] for r in rung0])
    assert judged == [N_SCENARIOS - len(rows)]  # one call: the rows rung 0 left
    for r1, w in zip(rung1, whole):
        assert r1["n_queries"] == N_SCENARIOS
        for k in ("alignment", "nlr", "nglr", "acquiescence", "kl", "kl_value", "ppl_edited",
                  "accuracy_edited"):
            assert r1[k] == pytest.approx(w[k], rel=1e-4, abs=1e-6), k
        assert r1["alignment_rows"] == pytest.approx(w["alignment_rows"], abs=1e-5)
        assert r1["choice_share_edited"] == pytest.approx(w["choice_share_edited"])
        assert "first_rung" not in r1 and "first_rung" not in w


def test_rung_zero_settles_the_fixed_text_budgets_before_judging(tiny_host, edits, tmp_path,
                                                                   monkeypatch):
    """An edit over a budget on fixed texts is neither judged nor measured further at
    rung 0; one within them gets the record it gets without budgets."""
    ev = evaluator(tiny_host, tmp_path, FIDELITY)
    plain = ev.evaluate(edits)
    kl = [r["kl"] for r in plain]
    assert kl[0] != kl[1]
    over, within = int(np.argmax(kl)), int(np.argmin(kl))
    calls: dict[str, list[int]] = {"judge": [], "kl": [], "kl_value": []}
    real_judge, real_kl, real_kl_value = ForcedChoiceJudge.judge, ev._kl, ev._kl_value

    def counted(name, real):
        def call(*args):
            calls[name].append(len(args[-2]))  # the edits passed: (..., specs, positions)
            return real(*args)
        return call

    monkeypatch.setattr(ForcedChoiceJudge, "judge", counted("judge", real_judge))
    monkeypatch.setattr(ev, "_kl", counted("kl", real_kl))
    monkeypatch.setattr(ev, "_kl_value", counted("kl_value", real_kl_value))
    recs = ev.evaluate(edits, budgets={"kl": sum(kl) / 2})
    assert calls == {"judge": [1], "kl": [2], "kl_value": [1]}  # the edit within budget
    out = recs[over]
    assert out["over_budget"] == f"kl {kl[over]:.4g} over the budget search.max_kl={sum(kl) / 2:g}"
    assert out["kl"] == pytest.approx(kl[over]) and out["kl_value"] is None
    assert "alignment" not in out and "first_rung" not in out and out["duration_s"] > 0
    ok = recs[within]
    assert "over_budget" not in ok
    assert ok["first_rung"]["rows"] == plain[within]["first_rung"]["rows"]
    for k in ("alignment", "nlr", "acquiescence", "kl", "kl_value", "ppl_edited",
              "accuracy_edited", "n_queries"):
        assert ok[k] == pytest.approx(plain[within][k], rel=1e-4, abs=1e-6), k
    # the MC accuracy comes first: over its budget (every drop is >= -1), nothing else runs
    calls.update(judge=[], kl=[], kl_value=[])
    recs = ev.evaluate(edits, budgets={"accuracy_drop": -2.0, "kl": 0.0})
    assert calls == {"judge": [], "kl": [], "kl_value": []}
    assert all(r["over_budget"].startswith("accuracy_drop ") and r["kl"] is None
               and r["accuracy_edited"] == p["accuracy_edited"] for r, p in zip(recs, plain))


def test_rung_one_refuses_rung_zero_rows_of_another_split(tiny_host, edits, tmp_path):
    full = evaluator(tiny_host, tmp_path)
    rung0 = evaluator(tiny_host, tmp_path, 0.5).evaluate(edits[:1])[0]["first_rung"]
    with pytest.raises(ValueError, match="rung 1: rung-0 records of other rows"):
        full.evaluate(edits[:1], first=[{**rung0, "n": N_SCENARIOS + 1}])
    with pytest.raises(ValueError, match="2 rung-0 records for 1 edits"):
        full.evaluate(edits[:1], first=[rung0, rung0])


def test_a_judge_without_subsets_is_read_whole_and_carries_nothing(tiny_host, edits, tmp_path):
    ev = Evaluator(tiny_host, JudgeConfig(name="questionnaire", n_boot=20),
                   CapabilityConfig(mc_limit=0, neutral_limit=2, fluency_queries=0),
                   cache_dir=tmp_path, fidelity=FIDELITY)
    rec = ev.evaluate(edits[:1])[0]
    assert ev.first_rows is None and "first_rung" not in rec


def test_merge_puts_rows_back_in_order_and_checks_they_complete():
    n, done = 5, [0, 3]
    E = np.arange(n * 2, dtype=float).reshape(n, 2)
    first = carry(done, n, Judgement(E=E[done], raw=-E[done], hard=None), {"kl": 0.1})
    assert first["capability"]["kl"] == 0.1 and first["hard"] is None
    rest = rest_rows(n, done)
    out = merge(first, rest, Judgement(E=E[rest], raw=-E[rest], hard=E[rest]))
    assert np.array_equal(out.E, E) and np.array_equal(out.raw, -E) and out.hard is None
    with pytest.raises(ValueError, match="do not complete"):
        merge(first, rest[:-1], Judgement(E=E[rest[:-1]]))
    with pytest.raises(ValueError, match="search.fidelity"):
        first_rung_rows(4, 0.0)
