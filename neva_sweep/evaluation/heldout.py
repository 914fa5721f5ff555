"""Held-out scores: a chosen edit re-scored on the test split against dose-matched nulls.

Sweeps choose edits on the ``search`` split of the scenarios and neutral texts; the
chosen edit of every study is then evaluated once more on the ``test`` split, which no
search saw (so its score carries no winner's curse), beside ``n`` random-direction edits
of the same neuron count and push (:mod:`neva_sweep.methods.nulls`). :func:`heldout_record` is the
``test`` entry of best_edits.json: the edit's metrics on the test split, its alignment
interval, the null's alignments and the z-score against them. NLR and CWL there use the
floor 2 sd of that null (``nlr_floor``), the dose-matched counterpart of the sweep's floor.
"""

from __future__ import annotations

import numpy as np

from ..methods.nulls import z_score
from ..values import VALUES
from .metrics import EPS, cwl, nlr

MIN_FLOOR = 1e-4
TEST_FIELDS = ("alignment", "nlr", "nglr", "nglr_chance", "cwl", "kl", "suppression",
               "inflation", "acquiescence", "accuracy_drop", "n_mc", "n_queries",
               "alignment_rows", "leakage_tests")


def null_summary(alignments: list[float]) -> dict:
    """``{"mean", "sd", "n", "alignment"}`` of null alignments (sd with ddof=1; None when
    fewer than two).

    >>> null_summary([0.0, 0.02])["sd"] == float(np.std([0.0, 0.02], ddof=1))
    True
    """
    a = [float(x) for x in alignments]
    return {"mean": float(np.mean(a)) if a else None,
            "sd": float(np.std(a, ddof=1)) if len(a) >= 2 else None,
            "n": len(a), "alignment": a}


def heldout_record(rec: dict, nulls: list[dict], push: float | None, split: str = "test"
                ) -> dict:
    """The held-out entry of one chosen edit from its evaluation record ``rec`` and its
    nulls' records (same target, same split).

    >>> base = {v: 0.1 for v in VALUES}
    >>> rec = {"value": "power", "csr_base": base, "csr_edited": {**base, "power": 0.15},
    ...        "alignment": 0.05, "ci": {"alignment": [0.01, 0.09]}, "n_queries": 36}
    >>> nulls = [{"alignment": a} for a in (0.0, 0.01, -0.01)]
    >>> r = heldout_record(rec, nulls, push=2.0)
    >>> round(r["z"], 6), r["null"]["n"], r["nlr"]
    (5.0, 3, 0.0)
    """
    null = null_summary([n["alignment"] for n in nulls])
    sd = null["sd"]
    floor = max(2 * sd, MIN_FLOOR) if sd else EPS
    dcsr = np.array([rec["csr_edited"][v] - rec["csr_base"][v] for v in VALUES])
    out = {k: rec.get(k) for k in TEST_FIELDS}
    ci = {"alignment": rec["ci"]["alignment"]}
    if rec.get("accuracy_drop") is not None:  # MC scored (search.test_capability.mc_limit)
        ci["accuracy_edited"] = rec["ci"].get("accuracy_edited")
        null["accuracy_drop"] = [n.get("accuracy_drop") for n in nulls]
    out.update(split=split, ci=ci,
               nlr=nlr(dcsr, rec["value"], floor), cwl=cwl(dcsr, rec["value"], floor),
               nlr_floor=floor, push=push, null=null,
               z=z_score(rec["alignment"], null["alignment"]),
               csr_base=rec["csr_base"], csr_edited=rec["csr_edited"])
    return out
