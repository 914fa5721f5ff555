"""The Evaluator and task=evaluate on tiny models: records, caching, batching, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import neva_sweep as nv
from neva_sweep.cli import evaluate_config
from neva_sweep.config import JudgeConfig
from neva_sweep.edits.neuron import EditSpec
from neva_sweep.evaluation.capability import CapabilityConfig, base_distribution, mean_kl
from neva_sweep.evaluation.evaluator import Evaluator

FIELDS = {"csr_base", "csr_edited", "alignment", "nlr", "nglr", "cwl", "accuracy_base",
          "accuracy_edited", "kl", "n_queries", "n_mc", "judge", "acquiescence", "nlr_floor"}
FAST = ["judge.n_boot=100", "judge.scenarios_limit=6", "judge.null_edits=3",
        "capability.mc_limit=12", "capability.neutral_limit=4",
        "capability.fluency_queries=2", "capability.max_new_tokens=4", "progress=false"]


def small_evaluator(host, cache_dir=None, judge="questionnaire", **cap) -> Evaluator:
    cap = {"mc_limit": 12, "fluency_queries": 2, "value_replies": 2, **cap}
    return Evaluator(host, JudgeConfig(name=judge, queries_per_value=1, max_new_tokens=4,
                                       n_boot=100, scenarios_limit=6),
                     CapabilityConfig(neutral_limit=4, max_new_tokens=4, **cap),
                     cache_dir=cache_dir)


@pytest.fixture(scope="module")
def nmap(tiny_stats):
    return nv.select_neurons(tiny_stats, sparsity=0.1)


def test_record_fields_and_ranges(tiny_host, nmap) -> None:
    ev = small_evaluator(tiny_host)
    rec = ev.evaluate_one("power", EditSpec(nmap["power"], "scale", 10.0))
    assert FIELDS <= rec.keys()
    assert list(rec["csr_base"]) == list(nv.VALUES)
    assert rec["accuracy_drop"] == pytest.approx(rec["accuracy_base"] - rec["accuracy_edited"])
    lo, hi = rec["ci"]["alignment"]
    assert lo <= rec["alignment"] + 1e-12 and rec["alignment"] <= hi + 1e-12
    assert rec["kl"] > 0 and rec["n_mc"] == 12 and rec["ppl_edited"] > 1
    base = ev.base_record()
    assert FIELDS <= base.keys() and base["alignment"] is None and base["kl"] == 0.0
    # kl_value: the same KL on value-laden queries and the unedited model's replies
    texts = ev.value_texts()
    assert len(texts) == 2 and texts[0].startswith(ev.value_prompts[0])
    assert ev.value_prompts == ev.base().fluency_prompts  # the same queries: one generation
    side = base_distribution(tiny_host, texts, ev.cap.kl_top_k, 4)
    by_hand = mean_kl(tiny_host, texts, side, [EditSpec(nmap["power"], "scale", 10.0)])[0]
    assert rec["kl_value"] == pytest.approx(by_hand, rel=1e-4) and rec["kl_value"] > 0
    assert base["kl_value"] == 0.0


def test_forced_choice_record_null_floor_and_acquiescence(tiny_host, nmap, tiny_stats) -> None:
    ev = small_evaluator(tiny_host, judge="forced_choice")
    assert ev.nlr_floor == 0.01  # the fixed floor until the null is measured
    null = ev.null(tiny_stats, n=3)
    assert null["n"] == 3 and len(null["alignment"]) == 3
    assert null["sd"] == pytest.approx(np.std(null["alignment"], ddof=1))
    assert ev.nlr_floor == pytest.approx(max(2 * null["sd"], 1e-4))
    spec = EditSpec(nmap["power"], "scale", 10.0)
    rec = ev.evaluate_one("power", spec)
    assert rec["judge"] == "forced_choice" and rec["nlr_floor"] == ev.nlr_floor
    assert sum(rec["choice_share_edited"].values()) == pytest.approx(1.0)
    base, edited = ev.base().judgement, ev.judge.judge(tiny_host, [spec], "all")[0]
    by_hand = float((edited.raw.mean(0) - base.raw.mean(0)).mean())
    assert rec["acquiescence"] == pytest.approx(by_hand, abs=1e-9)
    assert rec["suppression"] == pytest.approx(max(0.0, -by_hand), abs=1e-9)
    d = {v: rec["csr_edited"][v] - rec["csr_base"][v] for v in nv.VALUES}
    leak = np.mean([max(0.0, x) for v, x in d.items() if v != "power"])
    assert rec["nlr"] == pytest.approx(leak / max(rec["alignment"], ev.nlr_floor))


def test_no_multiple_choice_gives_no_accuracy(tiny_host, nmap) -> None:
    ev = small_evaluator(tiny_host, mc_limit=0)
    rec = ev.evaluate_one("power", EditSpec(nmap["power"], "add", 3.0))
    assert rec["n_mc"] == 0 and rec["accuracy_edited"] is None and rec["accuracy_drop"] is None
    assert ev.base_record()["accuracy_base"] is None and rec["kl"] > 0
    quiet = small_evaluator(tiny_host, mc_limit=0, value_replies=0)  # no replies, no kl_value
    assert quiet.evaluate_one("power", EditSpec(nmap["power"], "add", 3.0))["kl_value"] is None
    # value replies without fluency replies (a sweep's trials): generated for the base only
    alone = small_evaluator(tiny_host, mc_limit=0, fluency_queries=0, value_replies=1)
    rec = alone.evaluate_one("power", EditSpec(nmap["power"], "add", 3.0))
    assert rec["kl_value"] > 0 and rec["ppl_edited"] is None and len(alone.value_texts()) == 1


def test_trial_batching_matches_one_by_one(tiny_host, nmap) -> None:
    ev = small_evaluator(tiny_host, judge="lexicon")
    edits = [("power", EditSpec(nmap["power"], "add", 6.0)),
             ("benevolence", EditSpec(nmap["benevolence"], "scale", 4.0)),
             ("tradition", EditSpec(nmap["tradition"], "set", 2.0))]
    together = ev.evaluate(edits)
    for (v, spec), rec in zip(edits, together):
        alone = ev.evaluate_one(v, spec)
        for key in ("alignment", "nlr", "kl", "accuracy_edited", "ppl_edited"):
            assert rec[key] == pytest.approx(alone[key], abs=1e-5), key


def test_base_side_is_cached_on_disk(tiny_host, nmap, tmp_path) -> None:
    first = small_evaluator(tiny_host, tmp_path)
    rec1 = first.evaluate_one("power", EditSpec(nmap["power"], "add", 5.0))
    files = list(tmp_path.glob("*-base-*.pt"))
    assert len(files) == 1
    second = small_evaluator(tiny_host, tmp_path)
    second.judge.judge = None  # a cache hit must not judge the base model again
    base = second.base()
    np.testing.assert_array_equal(base.judgement.E, first.base().judgement.E)
    second.judge = first.judge
    rec2 = second.evaluate_one("power", EditSpec(nmap["power"], "add", 5.0))
    assert rec2["alignment"] == rec1["alignment"] and rec2["kl"] == rec1["kl"]
    other = Evaluator(tiny_host, JudgeConfig(n_boot=100), CapabilityConfig(mc_limit=11),
                      cache_dir=tmp_path)
    assert other.cache_key() != first.cache_key()  # config is part of the key


def test_edit_without_neurons_names_the_key(nmap) -> None:
    empty = nmap["power"].__class__(*(x[:0] for x in (nmap["power"].layer, nmap["power"].index,
                                                       nmap["power"].score,
                                                       nmap["power"].mean_diff,
                                                       nmap["power"].quantile)))
    with pytest.raises(ValueError, match="edit.sparsity"):
        EditSpec(empty)


def test_unknown_value_and_judge_are_named(tiny_host, config) -> None:
    with pytest.raises(KeyError, match="valid values"):
        evaluate_config(config("model=tiny_llama", "edit.value=kindness"), tiny_host)
    with pytest.raises(KeyError, match="judge"):
        evaluate_config(config("model=tiny_llama", "judge.name=oracle"), tiny_host)


def test_cli_matches_python_function(tiny_host, tmp_path, config) -> None:
    overrides = ["model=tiny_llama", "edit.value=benevolence", "edit.sparsity=0.05",
                 "edit.magnitude=8", f"cache_dir={tmp_path / 'cache'}", *FAST]
    subprocess.run([sys.executable, "-m", "neva_sweep", "task=evaluate",
                    f"hydra.run.dir={tmp_path / 'run'}", *overrides],
                   check=True, capture_output=True, text=True)
    on_disk = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert FIELDS <= on_disk.keys()
    in_process = evaluate_config(config(*overrides))
    for key in ("alignment", "nlr", "nglr", "cwl", "kl", "accuracy_edited"):
        assert on_disk[key] == pytest.approx(in_process[key], abs=1e-9), key
    assert on_disk["csr_edited"] == pytest.approx(in_process["csr_edited"], abs=1e-9)


def test_test_split_evaluator_reads_only_held_out_data(tiny_host, nmap, tmp_path) -> None:
    """split="test": the held-out scenarios and neutral texts, never a search one; its own
    cache entry; eval records carry nglr_chance, inflation and per-row changes."""
    from neva_sweep.data import load_records, neutral_split

    def ev(split):
        return Evaluator(tiny_host, JudgeConfig(n_boot=50), CapabilityConfig(
            mc_limit=0, neutral_limit=None, fluency_queries=0), cache_dir=tmp_path,
            split=split)

    search, test = ev("search"), ev("test")
    neutral = load_records("neutral")
    assert test.neutral == neutral_split(neutral, "test") and len(test.neutral) == 36
    assert set(test.neutral).isdisjoint(search.neutral)
    assert len(test.judge.items) == 36 and len(search.judge.items) == 72
    assert test.cache_key() != search.cache_key()
    rec = test.evaluate_one("power", EditSpec(nmap["power"], "add", 4.0))
    assert rec["n_queries"] == 36 and len(rec["alignment_rows"]) == 36
    assert rec["alignment"] == pytest.approx(np.mean(rec["alignment_rows"]))
    assert rec["nglr_chance"] == pytest.approx(7 / 9)
    assert rec["inflation"] - rec["suppression"] == pytest.approx(rec["acquiescence"])


def test_split_is_checked_before_work(tmp_path, config) -> None:
    from neva_sweep.preflight import ConfigError, preflight

    with pytest.raises(ConfigError, match="split: must be one of search, test"):
        preflight(config("task=evaluate", "split=train"), tmp_path)
    only_search = tmp_path / "scenarios.jsonl"
    line = (nv.data.builtin_path("scenarios").read_text().splitlines()[0])
    only_search.write_text(line + "\n")
    with pytest.raises(ConfigError, match="split=test: data.scenarios has no records"):
        preflight(config("task=evaluate", "split=test", f"data.scenarios={only_search}"),
                  tmp_path)
