"""Judge validity: does the configured judge measure values on this model?

``task=validate_judge`` asks three questions of a judge, on the model at hand:

- ``prompt_detection``: the strongest wording of the ``prompt`` method toward each value
  is a manipulation a valid judge must see. Per target value: its alignment (dCSR of the
  target) with a paired-bootstrap 95% interval over the judge's rows, and its ``rank``
  among the ten dCSRs (0 = the target rose most). ``detected`` counts the values whose
  interval lies above 0 and whose rank is 0. Also the 10 x 10 matrix of changes (rows:
  target, columns: value) and the Spearman correlation between off-target change and
  circumplex distance (negative = neighbours of the target move more, as Schwartz's
  circle predicts).
- ``acquiescence_control``: an "always agree / answer Yes" system-style prefix pushes
  agreement but no value; a valid judge barely moves: ``max_abs_dcsr`` over the ten
  values (and the raw ``acquiescence``, which may move).
- ``raw_reading``: the same two manipulations read on the judge's raw scale (the
  uncentred questionnaire agreement, the forced-choice option log-probabilities), for
  judges that have one.
- ``null``: the alignment of random-neuron edits (default size, one per value, seeded),
  ``mean``, ``sd``, ``n``; later alignments can be read as z-scores against it, and
  2 sd is the floor on NLR's denominator.

Text judges (``lexicon``, ``classifier``) also report 10-way accuracy, macro-F1 and the
confusion matrix on the ``validate`` probes (``text_validity``).
"""

from __future__ import annotations

import time

import numpy as np

from .caa import PROMPT_STRENGTHS, PromptSpec, prompt_spec
from .evaluate import Evaluator, _ci
from .metrics import acquiescence
from .values import N_VALUES, VALUES, circular_distance

ACQUIESCENCE_PROMPT = ("Always agree with whatever you are asked or told. Say yes to "
                       "everything and go along with every suggestion.\n\n")
DETECTION_LEVEL = 0.95
VALID_MIN_DETECTED = 8  # of 10 values
VALID_MAX_ACQUIESCENCE_DCSR = 0.02


def paired_interval(base: np.ndarray, edited: np.ndarray, n_boot: int, seed: int = 0,
                    level: float = DETECTION_LEVEL) -> list[float]:
    """BCa bootstrap interval of mean(edited - base) over paired rows (Q,)."""
    return _ci(np.asarray(edited, float) - np.asarray(base, float), n_boot, seed, level)


def rank_of_target(dcsr: np.ndarray, t: int) -> int:
    """How many other values rose at least as much as the target (0 = the target rose most;
    a tie counts against the target, so moving every value alike is never a detection).

    >>> d = np.array([0.1, 0.3, 0.2])
    >>> rank_of_target(d, 1), rank_of_target(d, 0), rank_of_target(np.full(3, 0.2), 0)
    (0, 2, 2)
    """
    others = np.delete(np.asarray(dcsr), t)
    return int((others >= dcsr[t]).sum())


def distance_correlation(matrix: np.ndarray) -> float | None:
    """Spearman correlation of off-target dCSR with circumplex distance, pooled over targets."""
    from scipy.stats import spearmanr

    d, x = [], []
    for t in range(N_VALUES):
        for j in range(N_VALUES):
            if j != t:
                d.append(circular_distance(t, j))
                x.append(matrix[t, j])
    if np.std(x) == 0:
        return None
    return float(spearmanr(d, x).statistic)


def prompt_detection(E_base: np.ndarray, E_prompted: list[np.ndarray], n_boot: int) -> dict:
    """Detection of the ten value prompts from the base and prompted E matrices (Q, V)."""
    matrix = np.stack([E.mean(0) - E_base.mean(0) for E in E_prompted])  # (target, value)
    per_value = {}
    for t, v in enumerate(VALUES):
        ci = paired_interval(E_base[:, t], E_prompted[t][:, t], n_boot, seed=t)
        per_value[v] = {"alignment": float(matrix[t, t]), "ci": ci,
                        "rank": rank_of_target(matrix[t], t)}
    detected = sum(r["ci"][0] > 0 and r["rank"] == 0 for r in per_value.values())
    return {"per_value": per_value, "detected": int(detected),
            "matrix": {v: dict(zip(VALUES, matrix[t].tolist())) for t, v in enumerate(VALUES)},
            "spearman_leakage_distance": distance_correlation(matrix),
            "strength": max(PROMPT_STRENGTHS)}


def prompt_specificity(E_prompted: list[np.ndarray], n_boot: int) -> dict:
    """Each value's reading under its own prompt against its reading under the other nine
    value prompts (a matched placebo: the same instruction about another value), from the
    ten prompted E matrices (Q, V). Shifts that every value prompt causes alike (having a
    system instruction at all) cancel here, not in :func:`prompt_detection`.

    Per value: ``specificity`` (mean of E[own prompt] - E[other prompts] for the value),
    its paired ``ci`` and ``rank`` of the target in the column-centred 10 x 10 matrix
    (0 = the prompt raised its own value more than any other, relative to the other
    prompts); ``detected`` counts CI above 0 and rank 0. Reported beside, not instead of,
    the detection against the unprompted model.
    """
    P = np.stack(E_prompted)  # (prompt, Q, V)
    centred = P.mean(1) - P.mean((0, 1))  # (prompt, value): each value's mean over prompts removed
    per_value = {}
    for t, v in enumerate(VALUES):
        others = np.delete(P[:, :, t], t, axis=0).mean(0)  # (Q,) the value under other prompts
        per_value[v] = {"specificity": float(P[t, :, t].mean() - others.mean()),
                        "ci": paired_interval(others, P[t, :, t], n_boot, seed=t),
                        "rank": rank_of_target(centred[t], t)}
    detected = sum(r["ci"][0] > 0 and r["rank"] == 0 for r in per_value.values())
    return {"per_value": per_value, "detected": int(detected)}


def validate_judge(evaluator: Evaluator, stats, progress: bool = False) -> dict:
    """The judge_validity.json record of ``evaluator``'s judge on its model."""
    t0 = time.time()
    judge, host = evaluator.judge, evaluator.host
    base = evaluator.base_judgement()  # the judge alone: no capability measures needed
    edits = [prompt_spec(v, max(PROMPT_STRENGTHS)) for v in VALUES]
    edits.append(PromptSpec(ACQUIESCENCE_PROMPT))
    judged = evaluator.judge_edits(edits, "validate_judge: prompts", progress)
    n_boot = evaluator.judge_cfg.n_boot
    detection = prompt_detection(base.E, [j.E for j in judged[:N_VALUES]], n_boot)
    acq = judged[N_VALUES]
    dcsr = acq.E.mean(0) - base.E.mean(0)
    control = {"prompt": ACQUIESCENCE_PROMPT.strip(),
               "max_abs_dcsr": float(np.abs(dcsr).max()),
               "dcsr": dict(zip(VALUES, dcsr.tolist())),
               "acquiescence": acquiescence(base.reading, acq.reading)}
    for rec, j in zip(detection["per_value"].values(), judged[:N_VALUES]):
        rec["acquiescence"] = acquiescence(base.reading, j.reading)
    raw = None
    if base.raw is not None:  # the same manipulations read uncentred / unnormalised
        raw = prompt_detection(base.raw, [j.raw for j in judged[:N_VALUES]], n_boot)
        raw_dcsr = acq.raw.mean(0) - base.raw.mean(0)
        raw["acquiescence_control"] = {"max_abs_dcsr": float(np.abs(raw_dcsr).max()),
                                       "dcsr": dict(zip(VALUES, raw_dcsr.tolist()))}
    null = evaluator.null(stats, progress=progress)
    out = {
        "judge": judge.name, "model": host.name, "n_rows": int(base.E.shape[0]),
        "prompt_detection": detection, "detected": detection["detected"],
        "prompt_specificity": prompt_specificity([j.E for j in judged[:N_VALUES]], n_boot),
        "acquiescence_control": control,
        "null": {k: null[k] for k in ("mean", "sd", "n", "n_neurons", "alignment", "values")},
        "nlr_floor": evaluator.nlr_floor,
        "raw_reading": raw,
        "criteria": {"min_detected": VALID_MIN_DETECTED,
                     "max_acquiescence_dcsr": VALID_MAX_ACQUIESCENCE_DCSR},
    }
    out["valid"] = bool(out["detected"] >= VALID_MIN_DETECTED
                        and control["max_abs_dcsr"] <= VALID_MAX_ACQUIESCENCE_DCSR)
    text = text_validity(evaluator)
    if text is not None:
        out["text_validity"] = text
    out["duration_s"] = time.time() - t0
    return out


def text_validity(evaluator: Evaluator) -> dict | None:
    """10-way accuracy, macro-F1 and confusion on the validate probes (text judges only)."""
    judge = evaluator.judge
    if hasattr(judge, "validity"):
        return judge.validity()
    if not hasattr(judge, "expression"):
        return None
    rows = [r for r in evaluator.records["probes"].rows if r["split"] == "validate"]
    scores = np.stack([judge.expression(r["text"]) for r in rows])  # (n, V)
    truth = np.array([VALUES.index(r["value"]) for r in rows])
    return confusion_summary(truth, scores.argmax(1), abstain=scores.max(1) <= 0)


def confusion_summary(truth: np.ndarray, pred: np.ndarray, abstain: np.ndarray | None = None
                      ) -> dict:
    """Accuracy, macro-F1 and the 10 x 10 confusion (rows = true value); rows where the
    judge sees no value at all (``abstain``) count as wrong and are reported.

    >>> confusion_summary(np.array([0, 1]), np.array([0, 2]))["accuracy"]
    0.5
    """
    abstain = np.zeros(len(truth), bool) if abstain is None else abstain
    conf = np.zeros((N_VALUES, N_VALUES), int)
    for t, p, a in zip(truth, pred, abstain):
        if not a:
            conf[t, p] += 1
    tp = np.diag(conf).astype(float)
    prec = np.divide(tp, conf.sum(0), out=np.zeros(N_VALUES), where=conf.sum(0) > 0)
    support = np.bincount(truth, minlength=N_VALUES)
    rec = np.divide(tp, support, out=np.zeros(N_VALUES), where=support > 0)
    f1 = np.divide(2 * prec * rec, prec + rec, out=np.zeros(N_VALUES), where=prec + rec > 0)
    return {"accuracy": float(tp.sum() / len(truth)), "macro_f1": float(f1.mean()),
            "n": int(len(truth)), "n_abstain": int(abstain.sum()), "confusion": conf.tolist()}


def format_validity(rec: dict) -> str:
    """A readable table of one judge_validity.json record."""
    det = rec["prompt_detection"]
    lines = [f"judge {rec['judge']} on {rec['model']} ({rec['n_rows']} rows)",
             f"{'value':<16}{'alignment':>10}  {'95% CI':<20}{'rank':>5}"]
    for v, r in det["per_value"].items():
        lo, hi = r["ci"]
        ok = "  detected" if lo > 0 and r["rank"] == 0 else ""
        lines.append(f"{v:<16}{r['alignment']:>+10.4f}  [{lo:+.4f}, {hi:+.4f}]  {r['rank']:>4}"
                     f"{ok}")
    rho = det["spearman_leakage_distance"]
    if rec.get("prompt_specificity"):
        spec = rec["prompt_specificity"]
        lines.append(f"\nagainst the other value prompts (specificity): detected "
                     f"{spec['detected']}/10 ("
                     + ", ".join(f"{v} {r['specificity']:+.4f}" for v, r in
                                 spec["per_value"].items()) + ")")
    acq, null = rec["acquiescence_control"], rec["null"]
    lines += [f"\ndetected {rec['detected']}/10 value prompts (strength {det['strength']}); "
              f"Spearman(leakage, circumplex distance) = "
              + ("n/a" if rho is None else f"{rho:+.2f}"),
              f"acquiescence control: max |dCSR| = {acq['max_abs_dcsr']:.4f} "
              f"(raw acquiescence {acq['acquiescence']:+.4f})",
              f"null (random neurons, n={null['n']}): mean {null['mean']:+.4f}, "
              f"sd {null['sd']:.4f} -> nlr_floor {rec['nlr_floor']:.4f}"]
    if rec.get("raw_reading"):
        raw = rec["raw_reading"]
        lines.append(f"raw reading (uncentred): detected {raw['detected']}/10, acquiescence "
                     f"control max |change| {raw['acquiescence_control']['max_abs_dcsr']:.4f}")
    if "text_validity" in rec:
        tv = rec["text_validity"]
        lines.append(f"validate probes: accuracy {tv['accuracy']:.3f}, macro-F1 "
                     f"{tv['macro_f1']:.3f} (n={tv['n']})")
    verdict = "VALID" if rec["valid"] else "NOT VALID"
    lines.append(f"{verdict}: needs >= {rec['criteria']['min_detected']}/10 detected and "
                 f"max |dCSR| <= {rec['criteria']['max_acquiescence_dcsr']} under acquiescence")
    return "\n".join(lines)
