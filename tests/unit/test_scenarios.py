"""The forced-choice scenarios: built-in content rules and loader errors."""

import json
import re
import statistics
from collections import Counter
from pathlib import Path

import pytest

from neva_sweep.data import DataError, builtin_path, load_records, load_scenarios, split_rows
from neva_sweep.values import VALUES

DOMAINS = ("work", "family", "money", "leisure", "health", "neighbourhood", "study",
           "travel", "civic")
# Value names and their obvious word forms (whole words or stems), never used in options.
FORBIDDEN = re.compile(
    r"\b(self[- ]direct\w*|stimulat\w*|hedonis\w*|achievement\w*|power\w*|securit\w*"
    r"|conformit\w*|tradition\w*|benevolen\w*|universalis\w*)",
    re.IGNORECASE,
)
LENGTH_TOLERANCE = 0.30  # every option within +-30% of its scenario's median length (tokens)


@pytest.fixture(scope="module")
def scenarios():
    return load_scenarios()


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("\u2019", "'")).split()


def ngrams(text: str, n: int = 8) -> set[tuple[str, ...]]:
    w = words(text)
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def test_builtin_file_loads_with_all_values_and_unique_ids(scenarios):
    assert scenarios.kind == "scenarios" and scenarios.path == builtin_path("scenarios")
    assert len(scenarios.rows) >= 60
    ids = [r["id"] for r in scenarios.rows]
    assert len(set(ids)) == len(ids)
    for r in scenarios.rows:
        assert list(r["options"]) == list(VALUES), r["id"]
    assert load_records("scenarios").sha256 == scenarios.sha256


def test_builtin_file_lists_options_in_circumplex_order():
    for line in builtin_path("scenarios").read_text().splitlines():
        if line.strip():
            assert list(json.loads(line)["options"]) == list(VALUES)


def test_builtin_scenarios_cover_every_domain(scenarios):
    """Search ids are ``<domain>-NN``, test ids ``test-<domain>-NN``; each split covers
    every domain."""
    for split, prefix, least in (("search", "", 6), ("test", "test-", 4)):
        ids = [r["id"] for r in split_rows(scenarios, split)]
        assert all(re.fullmatch(rf"{prefix}[a-z]+-\d\d", i) for i in ids), (split, ids)
        counts = Counter(i.removeprefix(prefix).rsplit("-", 1)[0] for i in ids)
        assert set(counts) == set(DOMAINS), (split, counts)
        assert all(counts[d] >= least for d in DOMAINS), (split, counts)


def test_builtin_texts_follow_the_prompt_format(scenarios):
    for r in scenarios.rows:
        assert 20 <= len(r["scenario"].split()) <= 50, r["id"]
        assert re.search(r"\byou(r)?\b", r["scenario"], re.IGNORECASE), r["id"]
        for v, text in r["options"].items():
            # One first-person sentence: it continues the assistant's reply as it stands.
            assert text.startswith("I ") and text.endswith("."), (r["id"], v)
            assert text.count(". ") == 0 and "\n" not in text, (r["id"], v)


def test_no_option_names_a_value(scenarios):
    bad = [(r["id"], v, m.group()) for r in scenarios.rows for v, t in r["options"].items()
           if (m := FORBIDDEN.search(t))]
    assert not bad


def test_options_share_no_8_word_sequence_with_other_value_texts(scenarios):
    other: set[tuple[str, ...]] = set()
    for kind in ("probes", "queries", "questionnaire"):
        for row in load_records(kind).rows:
            other |= ngrams(row["text"])
    shared = [(r["id"], v) for r in scenarios.rows for v, t in r["options"].items()
              if ngrams(t) & other]
    assert not shared


HELD_OUT = sorted((Path(__file__).parents[2] / "benchmarks" / "experiments" / "data")
                  .glob("heldout_scenarios*.jsonl"))


def texts_of(rows) -> list[tuple[str, str, str]]:
    """(id, key, text) of every scenario and option."""
    return [(r["id"], key, t) for r in rows
            for key, t in [("scenario", r["scenario"]), *r["options"].items()]]


def test_scenario_sets_share_no_8_word_sequence(scenarios):
    """The built-in scenarios and each held-out benchmark set were written apart; no text
    of one may repeat an 8-word sequence of another's."""
    if not HELD_OUT:
        pytest.skip("benchmarks/experiments/data/heldout_scenarios*.jsonl not present "
                    "(source checkouts only)")
    sets = {"built-in": scenarios.rows,
            **{p.name: load_scenarios(str(p)).rows for p in HELD_OUT}}
    assert len(sets) >= 3  # the built-in set and the two held-out sets
    for name, rows in sets.items():
        other: set[tuple[str, ...]] = set()
        for other_name, other_rows in sets.items():
            if other_name != name:
                for _, _, t in texts_of(other_rows):
                    other |= ngrams(t)
        shared = [(i, key) for i, key, t in texts_of(rows) if ngrams(t) & other]
        assert not shared, (name, shared)


def test_option_lengths_match_within_each_scenario(scenarios):
    registry = pytest.importorskip("neva_sweep.models.registry")
    try:
        tok = registry.embedded_tokenizer()
    except FileNotFoundError as e:
        pytest.skip(f"the embedded model's tokenizer is unavailable: {e}")
    off = []
    for r in scenarios.rows:
        n = {v: len(tok(t, add_special_tokens=False)["input_ids"])
             for v, t in r["options"].items()}
        median = statistics.median(n.values())
        off += [(r["id"], v, n[v], median) for v in VALUES
                if abs(n[v] / median - 1) > LENGTH_TOLERANCE]
    assert not off, f"options outside +-{LENGTH_TOLERANCE:.0%} of the median: {off}"


# ---------------------------------------------------------------- loader errors

def record(id="work-01", scenario="Your manager asks you something.", **options) -> dict:
    opts = {v: f"I choose the {v} option." for v in VALUES}
    opts.update(options)
    return {"id": id, "scenario": scenario, "options": opts}


def write(tmp_path, lines, name="scenarios.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return p


GOOD = json.dumps(record())


def without(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


@pytest.mark.parametrize(
    "bad, message",
    [
        ('{"id": "x", "scenario": "s", "options": {', "invalid JSON"),
        (json.dumps(without(record("b"), "scenario")), "missing ['scenario']"),
        (json.dumps({**record("b"), "domain": "work"}), "unexpected ['domain']"),
        (json.dumps({**record("b"), "options": without(record()["options"], "tradition")}),
         "lacks the value(s) tradition"),
        (json.dumps({**record("b"), "options": {**without(record()["options"], "power"),
                                                "kindness": "I am kind."}}),
         "unknown value 'kindness' in 'options'; valid values: " + ", ".join(VALUES)),
        (json.dumps(record("")), "key 'id' is empty"),
        (json.dumps(record("b", scenario="  ")), "key 'scenario' is empty"),
        (json.dumps(record("b", hedonism=" ")), "option 'hedonism' is empty"),
        (json.dumps(record("b", power=3)), "option 'power' must be str, got 3"),
        (json.dumps(record(7)), "key 'id' must be str, got 7"),
        (json.dumps({**record("b"), "options": ["I stay."]}),
         "key 'options' must be an object keyed by value"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_bad_line_names_file_line_and_problem(tmp_path, bad, message):
    p = write(tmp_path, [GOOD, "", bad])
    with pytest.raises(DataError, match=re.escape(message)) as e:
        load_scenarios(p)
    assert f"{p}:3:" in str(e.value)


def test_duplicate_id_names_the_id_and_its_first_line(tmp_path):
    p = write(tmp_path, [GOOD, json.dumps(record("work-02")), json.dumps(record("work-01"))])
    message = "duplicate id 'work-01' (first used on line 1)"
    with pytest.raises(DataError, match=re.escape(message)) as e:
        load_scenarios(p)
    assert f"{p}:3:" in str(e.value)


def test_empty_file_is_an_error(tmp_path):
    p = write(tmp_path, ["", "  "])
    with pytest.raises(DataError, match="no scenarios records") as e:
        load_scenarios(p)
    assert str(p) in str(e.value)


def test_invalid_utf8_is_a_data_error_naming_the_file(tmp_path):
    p = tmp_path / "scenarios.jsonl"
    p.write_bytes(GOOD.encode() + b"\n\xff\xfe\x00garbage\x9c\n")
    with pytest.raises(DataError, match="not UTF-8") as e:
        load_scenarios(p)
    assert f"{p}:2:" in str(e.value)


def test_valid_file_loads_in_circumplex_order(tmp_path):
    shuffled = {v: f"I pick {v}." for v in reversed(VALUES)}
    p = write(tmp_path, [json.dumps({"id": "a", "scenario": "You wait.", "options": shuffled})])
    recs = load_scenarios(p)
    assert recs.path == p and len(recs.sha256) == 64
    assert list(recs.rows[0]["options"]) == list(VALUES)
    assert load_records("scenarios", p).rows == recs.rows
