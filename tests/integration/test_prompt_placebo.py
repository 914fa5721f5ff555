"""benchmarks/experiments/prompt_placebo.py --tiny: a value prompt and placebo prompts of
its length, evaluated as sweep trials (a subprocess, as users run it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "experiments" / "prompt_placebo.py"


def test_prompt_placebo_on_a_tiny_model(tmp_path):
    out = tmp_path / "pp.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--values", "power", "--strengths", "3",
         "--placebos", "2", "--json", str(out), "--override", f"cache_dir={tmp_path}"],
        capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["edit"] for r in rows] == ["prompt", "placebo0", "placebo1"]
    assert len({r["words"] for r in rows}) == 1 and len({r["text"] for r in rows}) == 3
    assert "power" in rows[0]["text"].lower() and "power" not in rows[1]["text"].lower()
    assert all(r["kl"] > 0 for r in rows)  # any prefix moves the neutral texts
