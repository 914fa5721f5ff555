"""Judge validity (task=validate_judge): detection maths by hand, the task on a tiny model."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from neva_sweep.config import JudgeConfig
from neva_sweep.data import load_records
from neva_sweep.evaluation.capability import CapabilityConfig
from neva_sweep.evaluation.evaluator import Evaluator
from neva_sweep.evaluation.judge_validity import (
    CONTROLS,
    MAX_CONTROL_RAISED,
    VALID_MIN_DETECTED,
    confusion_summary,
    control_prompts,
    discriminant,
    format_validity,
    prompt_detection,
    prompt_specificity,
    validate_judge,
)
from neva_sweep.values import N_VALUES, VALUES

rng = np.random.default_rng(0)


def noisy_base(q: int = 40) -> np.ndarray:
    return rng.uniform(0.05, 0.15, size=(q, N_VALUES))


def test_target_raised_most_is_detected() -> None:
    base = noisy_base()
    prompted = []
    for t in range(N_VALUES):
        e = base + rng.normal(0, 0.002, base.shape)
        e[:, t] += 0.03
        e[:, (t + 1) % N_VALUES] += 0.01  # a neighbour leaks a little
        prompted.append(e)
    det = prompt_detection(base, prompted, n_boot=200)
    assert det["detected"] == N_VALUES
    for v in VALUES:
        r = det["per_value"][v]
        assert r["rank"] == 0 and r["ci"][0] > 0
        assert r["alignment"] == pytest.approx(det["matrix"][v][v])
    assert det["spearman_leakage_distance"] < 0  # neighbours move more than opposites


def test_moving_every_value_alike_is_not_detected() -> None:
    base = rng.integers(1, 10, size=(32, N_VALUES)) / 64  # means exact in floating point
    prompted = [base + 1 / 16 for _ in range(N_VALUES)]  # pure acquiescence
    det = prompt_detection(base, prompted, n_boot=200)
    assert det["detected"] == 0  # ties count against the target
    assert all(r["rank"] == N_VALUES - 1 for r in det["per_value"].values())


def test_specificity_removes_a_shift_every_prompt_causes() -> None:
    """Every prompt raises value 4 by 0.05 (having an instruction at all) and its own value
    by 0.02: against the unprompted base only value 4 is detected; against the other nine
    prompts every value is, and acquiescence alone (no own-value rise) is not."""
    base = noisy_base()
    prompted = []
    for t in range(N_VALUES):
        e = base + rng.normal(0, 0.002, base.shape)
        e[:, 4] += 0.05
        e[:, t] += 0.02
        prompted.append(e)
    assert prompt_detection(base, prompted, n_boot=200)["detected"] == 1
    spec = prompt_specificity(prompted, n_boot=200)
    assert spec["detected"] == N_VALUES
    assert spec["per_value"]["power"]["specificity"] == pytest.approx(0.02, abs=0.002)
    common = [base + 0.05 for _ in range(N_VALUES)]
    assert prompt_specificity(common, n_boot=200)["detected"] == 0


def test_target_that_falls_is_not_detected() -> None:
    base = noisy_base()
    prompted = []
    for t in range(N_VALUES):
        e = base.copy()
        e[:, t] -= 0.02
        prompted.append(e)
    det = prompt_detection(base, prompted, n_boot=200)
    assert det["detected"] == 0
    assert all(r["ci"][1] < 0 for r in det["per_value"].values())


def controls_with(base: np.ndarray, negated_shift: float) -> dict[str, list[np.ndarray]]:
    """Control matrices: negated prompts move their own value by ``negated_shift``;
    salience and placebo prompts leave the judge's reading as noise around the base."""
    out = {c: [base + rng.normal(0, 0.002, base.shape) for _ in VALUES] for c in CONTROLS}
    for t, e in enumerate(out["negated"]):
        e[:, t] += negated_shift
    return out


def test_judge_that_reads_salience_fails_discriminant() -> None:
    """Pro and negated prompts both raise the value (what a salience reader does):
    the negated control raises 10/10, pro - negated is ~0, the judge reads salience."""
    base = noisy_base()
    pro = [base.copy() for _ in VALUES]
    for t, e in enumerate(pro):
        e[:, t] += 0.03
    disc = discriminant(base, pro, controls_with(base, +0.03), n_boot=200)
    assert disc["overall"]["negated"]["raised"] == N_VALUES
    assert disc["overall"]["reads_salience"] and not disc["overall"]["passed"]
    assert all(r["reads_salience"] for r in disc["per_value"].values())
    assert disc["overall"]["pro_minus_negated_above_0"] <= 1


def test_judge_that_reads_priority_passes_discriminant() -> None:
    base = noisy_base()
    pro = [base.copy() for _ in VALUES]
    for t, e in enumerate(pro):
        e[:, t] += 0.03
    disc = discriminant(base, pro, controls_with(base, -0.03), n_boot=200)
    assert disc["overall"]["negated"]["raised"] == 0
    assert not disc["overall"]["reads_salience"] and disc["overall"]["passed"]
    assert disc["overall"]["pro_minus_negated_above_0"] == N_VALUES
    for r in disc["per_value"].values():
        assert r["pro_minus_negated"]["mean"] == pytest.approx(0.06, abs=0.005)


def test_control_prompts_name_the_value_or_nothing() -> None:
    probes = [r for r in load_records("probes").rows if r["split"] == "identify"]
    for v in VALUES:
        p = {c: e.text for c, e in control_prompts(v, probes).items()}
        pro_words = len(validate_prompt_text(v).split())
        assert "reject" in p["negated"] and "Never put it first" in p["negated"]
        assert "ignore" in p["salience"] and len(p["salience"].split(",")) == 12
        assert len(p["placebo"].split()) == pro_words  # matched length, in words
        assert v.replace("_", " ") not in p["placebo"].lower()


def validate_prompt_text(value: str) -> str:
    from neva_sweep.edits.prompt import PROMPT_STRENGTHS, prompt_edit

    return prompt_edit(value, max(PROMPT_STRENGTHS)).text.strip()


def test_confusion_summary_by_hand() -> None:
    truth = np.array([0, 0, 1, 2])
    pred = np.array([0, 1, 1, 0])
    s = confusion_summary(truth, pred, abstain=np.array([False, False, False, True]))
    assert s["accuracy"] == 0.5 and s["n"] == 4 and s["n_abstain"] == 1
    assert s["confusion"][0][:2] == [1, 1] and s["confusion"][2][0] == 0  # abstained
    # F1: value 0: p=1, r=0.5 -> 2/3; value 1: p=0.5, r=1 -> 2/3; value 2: 0; others 0
    assert s["macro_f1"] == pytest.approx((2 / 3 + 2 / 3) / N_VALUES)


@pytest.mark.parametrize("judge", ["forced_choice", "lexicon"])
def test_validate_judge_record_on_tiny_model(judge, tiny_host, tiny_stats) -> None:
    ev = Evaluator(tiny_host, JudgeConfig(name=judge, scenarios_limit=6, null_edits=3,
                                          queries_per_value=1, max_new_tokens=4, n_boot=100),
                   CapabilityConfig(mc_limit=4, neutral_limit=2, fluency_queries=0))
    rec = validate_judge(ev, tiny_stats)
    assert rec["judge"] == judge and 0 <= rec["detected"] <= N_VALUES
    assert set(rec["prompt_detection"]["per_value"]) == set(VALUES)
    assert set(rec["prompt_specificity"]["per_value"]) == set(VALUES)
    assert 0 <= rec["prompt_specificity"]["detected"] <= N_VALUES
    assert rec["acquiescence_control"]["max_abs_dcsr"] >= 0
    assert rec["null"]["n"] == 3 and rec["nlr_floor"] == pytest.approx(
        max(2 * rec["null"]["sd"], 1e-4))
    disc = rec["discriminant"]
    assert set(disc["per_value"]) == set(VALUES)
    for r in disc["per_value"].values():  # each control recorded with its prompt and interval
        for c in CONTROLS:
            assert r[c]["ci"][0] <= r[c]["dcsr"] <= r[c]["ci"][1] + 1e-12
            assert r[c]["raises"] == (r[c]["ci"][0] > 0) and r[c]["prompt"]
        assert r["reads_salience"] == r["negated"]["raises"]
    assert disc["overall"]["passed"] == all(
        disc["overall"][c]["raised"] <= MAX_CONTROL_RAISED for c in CONTROLS)
    assert rec["valid"] == (rec["detected"] >= VALID_MIN_DETECTED and
                            rec["acquiescence_control"]["max_abs_dcsr"] <= 0.02
                            and disc["overall"]["passed"])
    if judge == "forced_choice":  # the raw reading: option log-probabilities
        assert rec["raw_reading"]["detected"] <= N_VALUES
    if judge == "lexicon":  # text judges: accuracy on the validate probes
        tv = rec["text_validity"]
        assert tv["n"] == 120 and 0 <= tv["accuracy"] <= 1
        assert sum(map(sum, tv["confusion"])) == tv["n"] - tv["n_abstain"]
    assert "detected" in format_validity(rec)
    json.dumps(rec)  # JSON-able as written


def test_validate_judge_task_writes_judge_validity(tmp_path) -> None:
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "neva_sweep", "task=validate_judge", "model=tiny_llama",
         f"hydra.run.dir={out}", f"cache_dir={tmp_path / 'cache'}", "progress=false",
         "judge.scenarios_limit=4", "judge.null_edits=2", "judge.n_boot=50",
         "capability.mc_limit=4", "capability.neutral_limit=2", "capability.fluency_queries=0"],
        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = json.loads((out / "judge_validity.json").read_text())
    for key in ("prompt_detection", "detected", "acquiescence_control", "discriminant", "null",
                "valid"):
        assert key in rec
    assert "discriminant controls" in proc.stdout
    assert "max |dCSR|" in proc.stdout and "judge_validity.json" in proc.stdout
