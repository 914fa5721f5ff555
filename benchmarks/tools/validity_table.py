"""Markdown tables from judge_validity.json files (task=validate_judge), for docs/results.md.

    python benchmarks/tools/validity_table.py runs/validity/*/judge_validity.json

First one row per file (judge, rows, detected k/10, acquiescence control, null, text
validity, the discriminant controls: values each raises and pro > negated, verdict), then
per file the per-value detection (alignment, 95% CI, rank) and, for files that have them,
the discriminant controls per value (* = interval above 0).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from neva_sweep.values import VALUES


def label(rec: dict, path: Path) -> str:
    return f"{rec['judge']} ({path.parent.name})"


def summary(recs: list[tuple[Path, dict]]) -> str:
    lines = ["| judge (run) | rows | detected | acquiescence max abs dCSR | raw acquiescence | "
             "null mean (sd), n | Spearman(leak, distance) | validate probes acc / F1 | "
             "negated / salience / placebo raise | pro > negated | valid |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for path, r in recs:
        acq, null = r["acquiescence_control"], r["null"]
        rho = r["prompt_detection"]["spearman_leakage_distance"]
        tv = r.get("text_validity")
        lines.append(
            f"| {label(r, path)} | {r['n_rows']} | {r['detected']}/10 | "
            f"{acq['max_abs_dcsr']:.4f} | {acq['acquiescence']:+.4f} | "
            f"{null['mean']:+.4f} ({null['sd']:.4f}), {null['n']} | "
            + ("–" if rho is None else f"{rho:+.2f}") + " | "
            + (f"{tv['accuracy']:.3f} / {tv['macro_f1']:.3f}" if tv else "–")
            + f" | {discriminant_cells(r)} | {'yes' if r['valid'] else 'no'} |")
    return "\n".join(lines)


def discriminant_cells(r: dict) -> str:
    """``a/10, b/10, c/10 | k/10`` of the discriminant controls (– for older files)."""
    d = r.get("discriminant")
    if not d:
        return "– | –"
    o = d["overall"]
    return (", ".join(f"{o[c]['raised']}/10" for c in ("negated", "salience", "placebo"))
            + f" | {o['pro_minus_negated_above_0']}/10")


def discriminant_detail(r: dict) -> list[str]:
    d = r.get("discriminant")
    if not d:
        return []
    det = r["prompt_detection"]["per_value"]
    lines = ["", "| value | pro prompt | negated | salience | placebo | pro - negated [95% CI] "
             "| verdict |", "|---|---|---|---|---|---|---|"]
    for v in VALUES:
        x, p = d["per_value"][v], d["per_value"][v]["pro_minus_negated"]
        cell = {c: f"{x[c]['dcsr']:+.4f}" + ("*" if x[c]["raises"] else "")
                for c in ("negated", "salience", "placebo")}
        verdict = ("reads salience" if x["reads_salience"] else
                   "discriminates" if p["ci"][0] > 0 else "–")
        lines.append(f"| {v} | {det[v]['alignment']:+.4f} | {cell['negated']} | "
                     f"{cell['salience']} | {cell['placebo']} | {p['mean']:+.4f} "
                     f"[{p['ci'][0]:+.4f}, {p['ci'][1]:+.4f}] | {verdict} |")
    return lines


def detail(path: Path, r: dict) -> str:
    per = r["prompt_detection"]["per_value"]
    lines = [f"{label(r, path)}:", "",
             "| value | alignment | 95% CI | rank | acquiescence |", "|---|---|---|---|---|"]
    for v in VALUES:
        x = per[v]
        lines.append(f"| {v} | {x['alignment']:+.4f} | [{x['ci'][0]:+.4f}, {x['ci'][1]:+.4f}]"
                     f" | {x['rank']} | {x.get('acquiescence', float('nan')):+.4f} |")
    return "\n".join(lines + discriminant_detail(r))


def main(paths: list[str]) -> None:
    recs = [(Path(p), json.loads(Path(p).read_text())) for p in paths]
    print(summary(recs))
    for path, r in recs:
        print()
        print(detail(path, r))


if __name__ == "__main__":
    main(sys.argv[1:])
