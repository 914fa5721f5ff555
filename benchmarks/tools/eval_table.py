"""Markdown table of task=evaluate results: one row per run directory's eval.json.

    for v in none benevolence tradition stimulation power; do
      python -m neva_sweep task=evaluate $( [ $v = none ] || echo edit.value=$v ) \\
          hydra.run.dir=runs/eval/$v
    done
    python benchmarks/tools/eval_table.py runs/eval/*
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from neva_sweep.values import VALUES

SHORT = {"self_direction": "SD", "stimulation": "ST", "hedonism": "HE", "achievement": "AC",
         "power": "PO", "security": "SE", "conformity": "CO", "tradition": "TR",
         "benevolence": "BE", "universalism": "UN"}


def row(rec: dict) -> str:
    edit = rec.get("edit")
    name = "base" if not edit else edit["value"]
    csr = " | ".join(f"{rec['csr_edited'][v]:.3f}" for v in VALUES)
    if edit:
        lo, hi = rec["ci"]["alignment"]
        metrics = (f"{rec['alignment']:+.3f} [{lo:+.3f}, {hi:+.3f}] | {rec['nlr']:.2f} | "
                   f"{rec['nglr']:.2f} | {rec['cwl']:.2f}")
    else:
        metrics = "– | – | – | –"
    ci = rec["ci"].get("accuracy_edited", rec["ci"].get("accuracy_base"))
    acc = (f"{rec['accuracy_edited']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] | "
           f"{rec['accuracy_drop']:+.3f} | {rec['kl']:.4f}")
    ppl = f"{rec['ppl_edited']:.2f}" if rec.get("ppl_edited") else "–"
    return f"| {name} | {csr} | {metrics} | {acc} | {ppl} | {rec['duration_s']:.0f} |"


def main(dirs: list[str]) -> None:
    head = ("| edit | " + " | ".join(SHORT[v] for v in VALUES) +
            " | alignment [95% CI] | NLR | NGLR | CWL | MC acc [95% CI] | acc drop | KL | ppl"
            " | eval s |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for d in dirs:
        path = Path(d) / "eval.json"
        if path.is_file():
            print(row(json.loads(path.read_text())))


if __name__ == "__main__":
    main(sys.argv[1:])
