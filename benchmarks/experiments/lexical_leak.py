"""Lexical leak and near-duplicates of the forced-choice scenario sets.

For each set (the built-in search and test splits, and the held-out benchmark sets),
prints one row of a markdown table:

- n: scenarios in the set;
- NB accuracy: a multinomial naive Bayes fitted on the words of the 360 ``identify``
  probes (neva_sweep/data/probes.jsonl) predicts the value of every option
  (neva_sweep.evaluation.lexical.naive_bayes_leak; chance 0.10): how much the options give their
  value away by sharing topic words with the probes;
- near search: share of the set's scenarios whose situation has a TF-IDF cosine above
  0.3 (neva_sweep.evaluation.lexical.NEIGHBOUR_THRESHOLD) to some built-in search scenario (for the
  search split itself: to another search scenario);
- max cos: the largest such cosine.

    python benchmarks/experiments/lexical_leak.py
    python benchmarks/experiments/lexical_leak.py --per-value       # also NB accuracy per value

numpy only, no model; about a second.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from neva_sweep.data import load_probes, load_scenarios, split_rows
from neva_sweep.evaluation.lexical import (
    NEIGHBOUR_THRESHOLD,
    naive_bayes_leak,
    scenario_text,
    tfidf_matrix,
)
from neva_sweep.values import VALUES

DATA = Path(__file__).parent / "data"


def nearest_search(rows: list[dict], search: list[dict]) -> np.ndarray:
    """Each row's highest cosine to a search scenario other than itself (same id)."""
    m = tfidf_matrix([scenario_text(r) for r in [*rows, *search]])
    sim = m[: len(rows)] @ m[len(rows):].T
    for i, r in enumerate(rows):
        for j, s in enumerate(search):
            if r["id"] == s["id"]:
                sim[i, j] = -1.0
    return sim.max(axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-value", action="store_true", help="NB accuracy per value")
    args = ap.parse_args()

    builtin = load_scenarios()
    search = split_rows(builtin, "search")
    sets = {"built-in search": search, "built-in test": split_rows(builtin, "test")}
    for path in sorted(DATA.glob("heldout_scenarios*.jsonl")):
        sets[f"benchmarks/experiments/data/{path.name}"] = list(load_scenarios(path).rows)
    probes = load_probes(split="identify", neutral=False)

    head = ["set", "n", "NB accuracy (chance 0.10)",
            f"near search (cos > {NEIGHBOUR_THRESHOLD})", "max cos"]
    if args.per_value:
        head += [v[:5] for v in VALUES]
    print(f"NB trained on {len(probes)} identify probes; near = TF-IDF cosine of the "
          "situation (scenario field) to a built-in search scenario\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for name, rows in sets.items():
        leak = naive_bayes_leak(probes.texts, probes.labels, rows)
        near = nearest_search(rows, search)
        cells = [name, str(len(rows)), f"{leak['accuracy']:.2f}",
                 f"{np.mean(near > NEIGHBOUR_THRESHOLD):.0%}", f"{near.max():.2f}"]
        if args.per_value:
            cells += [f"{leak['per_value'][v]:.2f}" for v in VALUES]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
