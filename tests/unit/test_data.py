import json
import re

import pytest

import neva_sweep as nv
from neva_sweep.data import DataError, load_probes, load_records
from neva_sweep.values import VALUES


def test_builtin_files_meet_minimum_sizes():
    probes = load_records("probes")
    for v in VALUES:
        rows = probes.by_value(v)
        assert len(rows) >= 40
        assert {r["split"] for r in rows} == {"identify", "validate"}
        assert len(load_records("queries").by_value(v)) >= 20
        assert len(load_records("questionnaire").by_value(v)) >= 6
    assert len(load_records("neutral").rows) >= 60
    mc = load_records("mc")
    assert len(mc.rows) >= 150 and all(len(r["choices"]) == 4 for r in mc.rows)


def test_builtin_texts_are_unique_and_splits_disjoint():
    rows = load_records("probes").rows
    texts = [r["text"] for r in rows]
    assert len(set(texts)) == len(texts)
    ident, val = load_probes(split="identify"), load_probes(split="validate")
    assert not set(ident.texts) & set(val.texts)
    assert ident.sha256 != val.sha256


def write(tmp_path, lines, name="probes.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return p


GOOD = json.dumps({"value": "power", "split": "identify", "text": "I like being in charge."})


@pytest.mark.parametrize(
    "bad, message",
    [
        ('{"value": "power", "split": "identify", "text": "x"', "invalid JSON"),
        ('{"value": "power", "text": "x"}', "missing ['split']"),
        ('{"value": "power", "split": "identify", "text": "x", "id": 3}', "unexpected ['id']"),
        ('{"value": "kindness", "split": "identify", "text": "x"}', "unknown value 'kindness'"),
        ('{"value": "power", "split": "train", "text": "x"}', "split must be one of"),
        ('{"value": "power", "split": "identify", "text": "  "}', "'text' is empty"),
        ('{"value": "power", "split": "identify", "text": 7}', "'text' must be str"),
        ('[1, 2]', "expected a JSON object"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path, bad, message):
    p = write(tmp_path, [GOOD, "", bad])
    with pytest.raises(DataError, match=re.escape(message)) as e:
        load_records("probes", p)
    assert f"{p}:3:" in str(e.value)


def test_bad_mc_answer(tmp_path):
    rec = {"subject": "x", "question": "q?", "choices": ["a", "b", "c", "d"], "answer": 4}
    p = write(tmp_path, [json.dumps(rec)], "mc.jsonl")
    with pytest.raises(DataError, match=r"mc.jsonl:1: 'answer' must index 'choices' \(0..3\)"):
        load_records("mc", p)


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(DataError, match="empty"):
        load_records("queries", write(tmp_path, [""], "queries.jsonl"))
    with pytest.raises(DataError, match="not found"):
        load_records("queries", tmp_path / "nope.jsonl")


def test_user_file_hash_and_missing_values(tmp_path):
    lines = [json.dumps({"value": v, "split": "identify", "text": f"text for {v}"})
             for v in VALUES]
    a = load_probes(write(tmp_path, lines))
    assert len(a) == 10 and a.of_value("power") == ["text for power"]
    b = load_probes(write(tmp_path, lines[:-1] + [lines[-1].replace("text for", "words for")]))
    assert a.sha256 != b.sha256
    with pytest.raises(DataError, match=r"no identify probes for values \['universalism'\]"):
        load_probes(write(tmp_path, lines[:-1]))


def test_probe_shards_partition(probes):
    shards = [probes.shard(r, 3) for r in range(3)]
    assert sum(len(s) for s in shards) == len(probes)
    assert sorted(t for s in shards for t in s.texts) == sorted(probes.texts)
    assert nv.load_probes().sha256 == probes.sha256
