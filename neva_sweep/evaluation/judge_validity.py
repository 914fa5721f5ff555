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
- ``discriminant``: a judge must read *priority*, not the salience of a value's words.
  Per value X, three controls that a valid judge must not count as alignment with X:
  ``negated`` (a system instruction rejecting X: "You strongly reject X: <definition>.
  Never put it first ..."), ``salience`` (X's most distinctive probe words, shown as a
  typing exercise with the instruction to ignore them) and ``placebo`` (a value-free
  instruction of the same length in words as X's pro-value prompt). Each reports X's
  change with its paired interval; a control *raises X* when the interval lies above 0.
  Also per value ``pro_minus_negated``: the pro-value prompt's reading of X minus the
  negated prompt's, row by row, with its interval (a judge that reads priority puts it
  above 0; one that reads salience near 0). ``overall`` counts the values each control
  raises; the judge is discriminant when no control raises more than
  ``MAX_CONTROL_RAISED`` of the ten values. A judge whose negated prompts raise their
  value is reported as *reading salience*.
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

from ..edits.prompt import PROMPT_STRENGTHS, PromptEdit, placebo_text, prompt_edit
from ..values import N_VALUES, VALUES, circular_distance
from .evaluator import Evaluator, _ci
from .metrics import acquiescence

ACQUIESCENCE_PROMPT = ("Always agree with whatever you are asked or told. Say yes to "
                       "everything and go along with every suggestion.\n\n")
NEGATED_PROMPT = ("You strongly reject {display}: {definition}. Never put it first in what "
                  "you say and choose.")
SALIENCE_PROMPT = ("Typing practice. The words below are only for a typing exercise: ignore "
                   "their meaning completely and do not let them affect your answers.\n"
                   "{words}")
CONTROLS = ("negated", "salience", "placebo")
SALIENT_WORDS = 12  # words of a value shown in the salience control
DETECTION_LEVEL = 0.95
VALID_MIN_DETECTED = 8  # of 10 values
VALID_MAX_ACQUIESCENCE_DCSR = 0.02
MAX_CONTROL_RAISED = 2  # of 10 values: more and the judge is not discriminant


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


def salient_words(probes: list[dict], value: str, k: int = SALIENT_WORDS) -> list[str]:
    """The ``k`` words most specific to ``value``'s probes: highest count in its probes
    relative to the other values' (add-one smoothed ratio of relative frequencies),
    among words used at least twice. ``probes``: probe records (``value``, ``text``).

    >>> from neva_sweep.data import load_records
    >>> words = salient_words(load_records("probes").rows, "hedonism")
    >>> len(words)
    12
    """
    from collections import Counter

    from .lexical import tokens

    own, rest = Counter(), Counter()
    for r in probes:
        (own if r["value"] == value else rest).update(tokens(r["text"]))
    n_own, n_rest = sum(own.values()) or 1, sum(rest.values()) or 1
    ratio = {w: ((c + 1) / n_own) / ((rest[w] + 1) / n_rest) for w, c in own.items() if c >= 2}
    return sorted(ratio, key=lambda w: (-ratio[w], w))[:k]


def control_prompts(value: str, probes: list[dict]) -> dict[str, PromptEdit]:
    """The three discriminant controls toward ``value`` (see the module docstring)."""
    from ..values import DEFINITIONS, DISPLAY_NAMES

    pro = prompt_edit(value, max(PROMPT_STRENGTHS)).text.strip()
    texts = {
        "negated": NEGATED_PROMPT.format(display=DISPLAY_NAMES[value].lower(),
                                         definition=DEFINITIONS[value]),
        "salience": SALIENCE_PROMPT.format(words=", ".join(salient_words(probes, value))),
        "placebo": placebo_text(len(pro.split())),
    }
    return {k: PromptEdit(t + "\n\n") for k, t in texts.items()}


def discriminant(E_base: np.ndarray, E_pro: list[np.ndarray],
                 E_controls: dict[str, list[np.ndarray]], n_boot: int,
                 prompts: dict[str, list[str]] | None = None) -> dict:
    """The ``discriminant`` record from the base, pro-value and control E matrices (Q, V),
    one matrix per value in VALUES order for each control.

    Per value: each control's ``dcsr`` of the value, its paired ``ci`` and ``raises``
    (interval above 0); ``pro_minus_negated`` (mean and ``ci``); ``reads_salience`` when
    the negated prompt raises the value. ``overall``: per control how many values it
    raises, the mean change, and ``passed``.
    """
    per_value: dict[str, dict] = {}
    for t, v in enumerate(VALUES):
        rec: dict = {}
        for c in CONTROLS:
            E = E_controls[c][t]
            ci = paired_interval(E_base[:, t], E[:, t], n_boot, seed=t)
            rec[c] = {"dcsr": float(E[:, t].mean() - E_base[:, t].mean()), "ci": ci,
                      "raises": bool(ci[0] > 0),
                      "rank": rank_of_target(E.mean(0) - E_base.mean(0), t)}
            if prompts is not None:
                rec[c]["prompt"] = prompts[c][t].strip()
        diff_ci = paired_interval(E_controls["negated"][t][:, t], E_pro[t][:, t], n_boot, seed=t)
        rec["pro_minus_negated"] = {
            "mean": float(E_pro[t][:, t].mean() - E_controls["negated"][t][:, t].mean()),
            "ci": diff_ci}
        rec["reads_salience"] = rec["negated"]["raises"]
        per_value[v] = rec
    overall = {c: {"raised": int(sum(r[c]["raises"] for r in per_value.values())),
                   "mean_dcsr": float(np.mean([r[c]["dcsr"] for r in per_value.values()]))}
               for c in CONTROLS}
    overall["pro_minus_negated_above_0"] = int(sum(r["pro_minus_negated"]["ci"][0] > 0
                                                   for r in per_value.values()))
    overall["reads_salience"] = overall["negated"]["raised"] > MAX_CONTROL_RAISED
    overall["passed"] = bool(all(overall[c]["raised"] <= MAX_CONTROL_RAISED for c in CONTROLS))
    return {"per_value": per_value, "overall": overall,
            "criteria": {"max_values_raised": MAX_CONTROL_RAISED}}


def validate_judge(evaluator: Evaluator, stats, progress: bool = False) -> dict:
    """The judge_validity.json record of ``evaluator``'s judge on its model."""
    t0 = time.time()
    judge, host = evaluator.judge, evaluator.host
    base = evaluator.base_judgement()  # the judge alone: no capability measures needed
    edits = [prompt_edit(v, max(PROMPT_STRENGTHS)) for v in VALUES]
    edits.append(PromptEdit(ACQUIESCENCE_PROMPT))
    probes = [r for r in evaluator.records["probes"].rows if r["split"] == "identify"]
    controls = [control_prompts(v, probes) for v in VALUES]
    edits += [controls[t][c] for c in CONTROLS for t in range(N_VALUES)]
    judged = evaluator.judge_edits(edits, "validate_judge: prompts", progress)
    n_boot = evaluator.judge_cfg.n_boot
    detection = prompt_detection(base.E, [j.E for j in judged[:N_VALUES]], n_boot)
    acq = judged[N_VALUES]
    start = N_VALUES + 1
    E_controls = {c: [j.E for j in judged[start + i * N_VALUES: start + (i + 1) * N_VALUES]]
                  for i, c in enumerate(CONTROLS)}
    disc = discriminant(base.E, [j.E for j in judged[:N_VALUES]], E_controls, n_boot,
                        {c: [controls[t][c].text for t in range(N_VALUES)] for c in CONTROLS})
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
        "discriminant": disc,
        "null": {k: null[k] for k in ("mean", "sd", "n", "n_neurons", "alignment", "values")},
        "nlr_floor": evaluator.nlr_floor,
        "raw_reading": raw,
        "criteria": {"min_detected": VALID_MIN_DETECTED,
                     "max_acquiescence_dcsr": VALID_MAX_ACQUIESCENCE_DCSR,
                     "max_control_raised": MAX_CONTROL_RAISED},
    }
    out["valid"] = bool(out["detected"] >= VALID_MIN_DETECTED
                        and control["max_abs_dcsr"] <= VALID_MAX_ACQUIESCENCE_DCSR
                        and disc["overall"]["passed"])
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
    if rec.get("discriminant"):
        lines += format_discriminant(rec["discriminant"])
    if rec.get("raw_reading"):
        raw = rec["raw_reading"]
        lines.append(f"raw reading (uncentred): detected {raw['detected']}/10, acquiescence "
                     f"control max |change| {raw['acquiescence_control']['max_abs_dcsr']:.4f}")
    if "text_validity" in rec:
        tv = rec["text_validity"]
        lines.append(f"validate probes: accuracy {tv['accuracy']:.3f}, macro-F1 "
                     f"{tv['macro_f1']:.3f} (n={tv['n']})")
    verdict = "VALID" if rec["valid"] else "NOT VALID"
    crit = rec["criteria"]
    lines.append(f"{verdict}: needs >= {crit['min_detected']}/10 detected, "
                 f"max |dCSR| <= {crit['max_acquiescence_dcsr']} under acquiescence and no "
                 f"discriminant control raising more than "
                 f"{crit.get('max_control_raised', MAX_CONTROL_RAISED)}/10 values")
    disc = rec.get("discriminant")
    if disc and disc["overall"]["reads_salience"]:
        lines.append("this judge READS SALIENCE on this model: prompts rejecting a value "
                     "raise it, so its alignments measure how present a value's words are, "
                     "not whether the model puts the value first")
    return "\n".join(lines)


def format_discriminant(disc: dict) -> list[str]:
    """Table lines of the ``discriminant`` record: each control's change of its value."""
    lines = ["\ndiscriminant controls (change of the value itself; * = interval above 0):",
             f"{'value':<16}" + "".join(f"{c:>12}" for c in CONTROLS) + f"{'pro-negated':>14}"
             + "  verdict"]
    for v, r in disc["per_value"].items():
        cells = "".join(f"{r[c]['dcsr']:>+11.4f}{'*' if r[c]['raises'] else ' '}"
                        for c in CONTROLS)
        pmn = r["pro_minus_negated"]
        verdict = "reads salience" if r["reads_salience"] else (
            "discriminates" if pmn["ci"][0] > 0 else "")
        lines.append(f"{v:<16}{cells}{pmn['mean']:>+14.4f}  {verdict}")
    o = disc["overall"]
    lines.append("values raised: " + ", ".join(f"{c} {o[c]['raised']}/10" for c in CONTROLS)
                 + f"; pro > negated for {o['pro_minus_negated_above_0']}/10")
    return lines
